"""Simulated hardware: the C layer (xenemu.hw) against the pure-Python
reference (xenemu.hw.reference) on map/unmap runs and translation, plus
page-table footprint and resident memory of a million mapped pages.

The reference runs fewer pages than C (it is ~100x slower); rates are per
page or per address, so the two compare directly.
"""
import os
import time
from array import array

from xenemu.hw import PERM_RW, native, reference

MILLION = 1 << 20


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _row(name, value, unit, ref=None):
    ratio = value / ref if ref else None
    return {"name": name, "value": value, "unit": unit, "ref": ref,
            "ratio": ratio}


def _rig(impl, frames: int):
    m = impl.Machine(frames * 4096)
    io = impl.Iommu(m, width=39)
    return m, io, io.alloc_context()


def map_unmap_rates(impl, run: int, pages: int) -> tuple[float, float]:
    """Pages per second mapping then unmapping `pages` in runs of `run`."""
    m, io, ctx = _rig(impl, pages + pages // 256 + 64)
    mfns = m.alloc(pages, owner=1)
    runs = [mfns[i:i + run] for i in range(0, pages, run)]
    t0 = time.perf_counter()
    for i, r in enumerate(runs):
        io.map(ctx, i * run, r, PERM_RW)
    t1 = time.perf_counter()
    for i in range(len(runs)):
        io.unmap(ctx, i * run, run)
    t2 = time.perf_counter()
    assert io.context_info(ctx).mapped == 0
    return _rate(pages, t1 - t0), _rate(pages, t2 - t1)


def translate_rates(impl, n: int) -> tuple[float, float]:
    """Addresses per second for IOTLB hits and for misses (a walk each)."""
    span = 16384  # pages cycled through, far more than the 1024 entries
    m, io, ctx = _rig(impl, span + 128)
    io.map(ctx, 0, range(0, span), PERM_RW)
    hot = array("Q", [(i % 64) << 12 for i in range(4096)])
    cold = array("Q", [(i * 7 % span) << 12 for i in range(span)])
    io.translate(ctx, hot)
    batches = max(1, n // 4096)
    h0 = io.counters().hits
    t0 = time.perf_counter()
    for _ in range(batches):
        io.translate(ctx, hot)
    t1 = time.perf_counter()
    assert io.counters().hits - h0 >= 0.99 * batches * len(hot)
    cold_batches = max(1, n // span)
    m0 = io.counters().misses
    t2 = time.perf_counter()
    for _ in range(cold_batches):
        io.translate(ctx, cold)
    t3 = time.perf_counter()
    assert io.counters().misses - m0 >= 0.9 * cold_batches * span
    return (_rate(batches * len(hot), t1 - t0),
            _rate(cold_batches * span, t3 - t2))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def million_pages(pages: int) -> list[dict]:
    """Table bytes per mapped page and RSS growth for `pages` mapped in
    runs of 256, then the time to tear the context down in slices."""
    rss0 = _rss()
    m, io, ctx = _rig(native, pages + pages // 256 + 64)
    mfns = m.alloc(pages, owner=1)
    m.get_refs(mfns)
    runs = [mfns[i:i + 256] for i in range(0, pages, 256)]
    rss1 = _rss()  # the frames' metadata is touched, not their memory
    for i, r in enumerate(runs):
        io.map(ctx, i * 256, r, PERM_RW)
    rss2 = _rss()
    info = io.context_info(ctx)
    leaves = -(-pages // 512)
    mids = -(-leaves // 512)
    hardware = (leaves + mids + 1) * 4096 / pages  # 3 levels, root included
    t0 = time.perf_counter()
    done = False
    while not done:
        freed, done = io.teardown(ctx, 65536)
        m.put_refs(freed)
    t1 = time.perf_counter()
    label = f"{pages >> 20}M" if pages >= MILLION else f"{pages // 1024}K"
    return [
        _row(f"table bytes/page, {label} mapped (ref: VT-d figure)",
             info.tables * 4096 / info.mapped, "B", hardware),
        _row(f"RSS growth, {label} frames allocated + referenced "
             "(incl. the bench's mfn arrays)", (rss1 - rss0) / 2**20, "MiB"),
        _row("RSS growth, mapping them (ref: their table pages)", (rss2 - rss1) / 2**20, "MiB",
             info.tables * 4096 / 2**20),
        _row(f"teardown {label} pages (slices of 64K)", _rate(pages, t1 - t0),
             "pages/s"),
    ]


def run(smoke: bool) -> list[dict]:
    scale = 50 if smoke else 1
    rows = []
    for run_len, c_pages, ref_pages in ((1, 500_000, 50_000),
                                        (256, 4 * MILLION, 65_536)):
        c_pages = max(run_len, c_pages // scale // run_len * run_len)
        ref_pages = max(run_len, ref_pages // scale // run_len * run_len)
        cm, cu = map_unmap_rates(native, run_len, c_pages)
        rm, ru = map_unmap_rates(reference, run_len, ref_pages)
        rows.append(_row(f"map, runs of {run_len}", cm, "pages/s", rm))
        rows.append(_row(f"unmap, runs of {run_len}", cu, "pages/s", ru))
    ch, cmiss = translate_rates(native, 20_000_000 // scale)
    rh, rmiss = translate_rates(reference, 200_000 // scale)
    rows.append(_row("translate, IOTLB hit", ch, "addr/s", rh))
    rows.append(_row("translate, IOTLB miss (3-level walk)", cmiss, "addr/s",
                     rmiss))
    rows.extend(million_pages(MILLION // scale))
    return rows
