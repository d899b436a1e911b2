"""Dirty tracking (issue 19, abi/NESTED.md) at the hardware layer: the
read-and-clear of a context's dirty bitmap over 1M pages (4 GiB of IOVA)
in the C layer, against the pure-Python reference over fewer pages (rates
are per page, so they compare), and what tracking costs DMA translation:
write hits and misses with tracking on against the same context's rates
with it off, in the same run. (That DMA without tracking costs nothing is
`--only hw` before and after the change: its translate rows.)
"""
import dataclasses
import time
from array import array

from xenemu.hw import PERM_RW, native, reference
from xenemu.hypercalls import iommu_op_dirty
from xenemu.inprocess import Local
from xenemu.machine import default_machine

from .util import medians, row

PAGES = 1 << 20
BASE = 1 << 21      # the first page: above 4 GiB, clear of the interrupt window


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _dirty_context(impl, pages: int):
    """A context tracking dirty pages, `pages` mapped (to a few frames:
    the mapping, not the memory, is what is read), every one written."""
    m = impl.Memory((pages // 256 + 4096) * 4096)
    io = impl.Iommu(m, width=48)
    ctx = io.alloc_context()
    frames = m.alloc(256, owner=1)
    for dfn in range(BASE, BASE + pages, 256):
        io.map(ctx, dfn, frames, PERM_RW)
    io.dirty_track(ctx, True)
    return io, ctx, array("Q", [d << 12 for d in range(BASE, BASE + pages)])


def read_clear_rates(impl, pages: int) -> tuple[float, float]:
    """Pages per second of read-and-clear with every page dirty, then of a
    read finding none dirty (the walk alone)."""
    io, ctx, addrs = _dirty_context(impl, pages)
    io.translate(ctx, addrs, write=True)
    t0 = time.perf_counter()
    _, _, n = io.read_dirty(ctx, BASE, pages, clear=True)
    t1 = time.perf_counter()
    io.read_dirty(ctx, BASE, pages, clear=True)
    t2 = time.perf_counter()
    assert n == pages
    return _rate(pages, t1 - t0), _rate(pages, t2 - t1)


def tracking_cost(n: int) -> dict:
    """Write translations per second, IOTLB hits and misses, with tracking
    off and on (C): medians of interleaved runs."""
    span = 16384
    io, ctx, _ = _dirty_context(native, span)
    hot = array("Q", [(BASE + i % 64) << 12 for i in range(4096)])
    cold = array("Q", [(BASE + i * 7 % span) << 12 for i in range(span)])

    def measure(on: bool):
        def go():
            io.dirty_track(ctx, on)
            io.translate(ctx, hot, write=True)
            t0 = time.perf_counter()
            for _ in range(max(1, n // len(hot))):
                io.translate(ctx, hot, write=True)
            t1 = time.perf_counter()
            for _ in range(max(1, n // 20 // span)):
                io.translate(ctx, cold, write=True)
            t2 = time.perf_counter()
            hits = max(1, n // len(hot)) * len(hot)
            misses = max(1, n // 20 // span) * span
            return _rate(hits, t1 - t0), _rate(misses, t2 - t1)
        return go
    return medians(5, {"off": measure(False), "on": measure(True)})


def subop_seconds(pages: int, repeats: int = 5) -> tuple[float, float]:
    """Seconds of sub-op 13 in process (the frame, the handler, the 128 KiB
    bitmap copied into the frame's region and back) reading and clearing
    `pages` pages all dirty, and reading them again clean: medians. d1's
    256 MiB are mapped over and over from dfn BASE; the harness dirties
    them through the hardware (a million DMA requests would measure the
    control socket)."""
    with Local(dataclasses.replace(default_machine(2), nested=True)) as m:
        xen = m.client(1)
        assert xen.init(2, 12).ok       # v7's init falls through: context 1 allocated
        ctx = xen.alloc_context(alloc_flags=iommu_op_dirty.ALLOC_dirty_tracking).op.ctx_no
        ram = 256 << 8
        for dfn in range(BASE, BASE + pages, ram):
            assert xen.map_pages(ctx, 0, dfn, min(ram, BASE + pages - dfn)).ok
        hw_id = m.hv.domains[1].context(ctx).hw_id
        addrs = array("Q", [d << 12 for d in range(BASE, BASE + pages)])
        dirty_all, clean = [], []
        for _ in range(repeats):
            m.hv.iommu.translate(hw_id, addrs, write=True)
            t0 = time.perf_counter()
            r = xen.read_dirty_bitmap(ctx, BASE, pages)
            t1 = time.perf_counter()
            xen.read_dirty_bitmap(ctx, BASE, pages)
            t2 = time.perf_counter()
            assert r.ok and r.op.nr_dirty == pages
            dirty_all.append(t1 - t0)
            clean.append(t2 - t1)
        return sorted(dirty_all)[repeats // 2], sorted(clean)[repeats // 2]


def run(smoke: bool) -> list[dict]:
    scale = 64 if smoke else 1
    c_clear, c_none = read_clear_rates(native, PAGES // scale)
    r_clear, r_none = read_clear_rates(reference, 65_536 // scale)
    pages = f"{PAGES // scale:,} pages"
    rows = [row(f"read-and-clear dirty bitmap, {pages} all dirty (ref: Python hw)", c_clear,
                "pages/s", r_clear),
            row(f"read dirty bitmap, {pages} none dirty (ref: Python hw)", c_none, "pages/s",
                r_none)]
    full, clean = subop_seconds(PAGES // scale)
    rows.append(row(f"read_dirty sub-op in process, {pages} all dirty (ref: none dirty)",
                    full * 1e3, "ms", clean * 1e3))
    cost = tracking_cost(4_000_000 // scale)
    rows.append(row("translate write, IOTLB hit, tracking on (ref: off)", cost["on"][0],
                    "addr/s", cost["off"][0]))
    rows.append(row("translate write, miss, tracking on (ref: off)", cost["on"][1], "addr/s",
                    cost["off"][1]))
    return rows
