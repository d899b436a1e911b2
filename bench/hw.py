"""3 and 4 at the hardware layer: the C layer (xenemu.hw) against the
pure-Python reference (xenemu.hw.reference) on map/unmap runs, and DMA
translation rates, IOTLB hits also against a plain C loop reading as many
entries from an array (floor_gather in bench/c/floor.c, built by `make
bench-tools` into build/libbench_floor.so: the memory's own limit; target:
hits within 4x of it). Nested translation (a guest's 4-level stage-1 table
walked through a 3-level stage 2) is measured against single-stage.

The reference runs fewer pages than C (it is ~100x slower); rates are per
page or per address, so the two compare directly. A first map pays for the
new table pages (the kernel's zero-fill of machine memory touched for the
first time); mapping again where tables exist shows the walk itself.
"""
import time
from array import array

from cffi import FFI

from xenemu.hw import PERM_RW, native, reference

from .serve import BUILD
from .util import row

# The floor's one declaration (bench/c/floor.c); loaded when first measured.
_floor = FFI()
_floor.cdef("int floor_gather(const uint64_t *table, uint64_t n_table,"
            " const uint64_t *addrs, uint64_t n, uint64_t *out);")


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _rig(impl, frames: int):
    m = impl.Memory(frames * 4096)
    io = impl.Iommu(m, width=39)
    return m, io, io.alloc_context()


def map_unmap_rates(impl, run: int, pages: int) -> tuple[float, float, float]:
    """Pages per second mapping `pages` in runs of `run` with new tables,
    mapping them again where the tables exist, and unmapping them."""
    m, io, ctx = _rig(impl, pages + pages // 256 + 64)
    mfns = m.alloc(pages, owner=1)
    runs = [mfns[i:i + run] for i in range(0, pages, run)]
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        for i, r in enumerate(runs):
            io.map(ctx, i * run, r, PERM_RW)
        t1 = time.perf_counter()
        for i in range(len(runs)):
            io.unmap(ctx, i * run, run)
        t2 = time.perf_counter()
        assert io.context_info(ctx).mapped == 0
        rates.append((_rate(pages, t1 - t0), _rate(pages, t2 - t1)))
    (cold, _), (warm, unmap) = rates
    return cold, warm, unmap


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
    floor = _floor_rate(hot, batches)
    cold_batches = max(1, n // span)
    m0 = io.counters().misses
    t2 = time.perf_counter()
    for _ in range(cold_batches):
        io.translate(ctx, cold)
    t3 = time.perf_counter()
    assert io.counters().misses - m0 >= 0.9 * cold_batches * span
    return (_rate(batches * len(hot), t1 - t0), _rate(cold_batches * span, t3 - t2), floor)


def nested_translate_rates(n: int) -> tuple[float, float]:
    """translate_rates for a nested context (C only): IOVA page i through a
    4-level stage-1 table the guest built in its memory, every table page
    and the output through a 3-level stage 2 (context 0 style, gfn = dfn)."""
    span, leaves = 16384, 16384 // 512
    tables = 3 + leaves                   # root, level 3, level 2, the leaves
    m, io, s2 = _rig(native, span + tables + 128)
    frames = m.alloc(span + tables, owner=1)
    io.map(s2, 0, frames, PERM_RW)
    root, l3, l2 = span, span + 1, span + 2

    def put(table, index, value):
        m.write(frames[table] * 4096 + 8 * index, value.to_bytes(8, "little"))
    put(root, 0, l3 << 12 | 3)
    put(l3, 0, l2 << 12 | 3)
    for leaf in range(leaves):
        put(l2, leaf, (span + 3 + leaf) << 12 | 3)
        m.write(frames[span + 3 + leaf] * 4096,
                array("Q", [(leaf * 512 + i) << 12 | 3 for i in range(512)]).tobytes())
    ctx, pasid = io.alloc_nested(s2, root), 1
    hot = array("Q", [(i % 64) << 12 for i in range(4096)])
    cold = array("Q", [(i * 7 % span) << 12 for i in range(span)])
    io.translate_nested(ctx, pasid, hot)
    batches, cold_batches = max(1, n // 4096), max(1, n // 20 // span)
    t0 = time.perf_counter()
    for _ in range(batches):
        io.translate_nested(ctx, pasid, hot)
    t1 = time.perf_counter()
    m0 = io.counters().misses
    for _ in range(cold_batches):
        _, faults = io.translate_nested(ctx, pasid, cold)
    t2 = time.perf_counter()
    assert io.counters().misses - m0 >= 0.9 * cold_batches * span and not any(faults)
    return _rate(batches * len(hot), t1 - t0), _rate(cold_batches * span, t2 - t1)


def _floor_rate(addrs: array, batches: int) -> float:
    """Addresses per second of floor_gather over a table as large as the
    IOTLB, called as translate is (one C call a batch, output allocated)."""
    lib = _floor.dlopen(str(BUILD / "libbench_floor.so"))
    ffi = _floor
    table = array("Q", range(1024))
    t0 = time.perf_counter()
    for _ in range(batches):
        out = array("Q", bytes(8 * len(addrs)))
        lib.floor_gather(ffi.from_buffer("uint64_t[]", table), len(table),
                         ffi.from_buffer("uint64_t[]", addrs), len(addrs),
                         ffi.from_buffer("uint64_t[]", out))
    return _rate(batches * len(addrs), time.perf_counter() - t0)


def run(smoke: bool) -> list[dict]:
    scale = 50 if smoke else 1
    rows = []
    for run_len, c_pages, ref_pages in ((1, 500_000, 50_000),
                                        (256, 4 << 20, 65_536)):
        c_pages = max(run_len, c_pages // scale // run_len * run_len)
        ref_pages = max(run_len, ref_pages // scale // run_len * run_len)
        c_new, c_again, c_unmap = map_unmap_rates(native, run_len, c_pages)
        r_new, r_again, r_unmap = map_unmap_rates(reference, run_len, ref_pages)
        rows.append(row(f"hw map, runs of {run_len}, new tables (ref: Python hw)", c_new,
                        "pages/s", r_new))
        rows.append(row(f"hw map, runs of {run_len}, tables present (ref: Python hw)", c_again,
                        "pages/s", r_again))
        rows.append(row(f"hw unmap, runs of {run_len} (ref: Python hw)", c_unmap, "pages/s",
                        r_unmap))
    hit, miss, floor = translate_rates(native, 20_000_000 // scale)
    r_hit, r_miss, _ = translate_rates(reference, 200_000 // scale)
    rows.append(row("translate, IOTLB hit (ref: C array loop)", hit, "addr/s", floor))
    rows.append(row("translate, IOTLB hit (ref: Python hw)", hit, "addr/s", r_hit))
    rows.append(row("translate, IOTLB miss, 3-level walk (ref: Python hw)", miss, "addr/s",
                    r_miss))
    n_hit, n_miss = nested_translate_rates(20_000_000 // scale)
    rows.append(row("translate nested, IOTLB hit (ref: single-stage hit)", n_hit, "addr/s", hit))
    rows.append(row("translate nested, miss, 4+3-level walk (ref: single-stage miss)", n_miss,
                    "addr/s", miss))
    return rows
