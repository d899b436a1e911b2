"""Contexts and I/O page tables: map, unmap, lookup, teardown, counts."""
import struct
from array import array

import pytest

from xenemu.hw import PERM_R, PERM_RW, PERM_W, HwError, Status
from xenemu.hw.common import MAX_POOLS

NO = 0xFFFFFFFF  # a context id that never exists


def test_geometry(hw_impl, memory):
    for width, levels in ((39, 3), (48, 4)):
        io = hw_impl.Iommu(memory, width=width)
        assert (io.levels, io.max_iova_addr) == (levels, 2**width - 1)
    with pytest.raises(ValueError):
        hw_impl.Iommu(memory, width=40)
    with pytest.raises(ValueError):
        hw_impl.Iommu(memory, iotlb_entries=48)


def test_map_array_and_lookup(memory, iommu):
    ctx = iommu.alloc_context()
    f = memory.alloc(3, owner=1)
    scattered = array("Q", [f[2], f[0], f[1]])
    assert iommu.map(ctx, 10, scattered, PERM_RW) == (3, Status.OK)
    assert [iommu.lookup(ctx, d) for d in (10, 11, 12)] == [
        (f[2], PERM_RW), (f[0], PERM_RW), (f[1], PERM_RW)]
    assert iommu.lookup(ctx, 13) is None
    assert iommu.context_info(ctx)[:2] == (3, 3)


def test_map_contiguous_run_across_leaf_tables(memory, iommu):
    ctx = iommu.alloc_context()
    assert iommu.map(ctx, 500, range(1000, 1600), PERM_R) == (600, 0)
    assert iommu.lookup(ctx, 500) == (1000, PERM_R)
    assert iommu.lookup(ctx, 1099) == (1599, PERM_R)
    # root + one middle table + leaf tables for dfn 500..1099 (0, 1, 2)
    assert iommu.context_info(ctx)[:2] == (600, 5)


def test_table_format_is_vtd_second_level(memory, iommu):
    """Tables live in memory frames, entries as VT-d SL PTEs."""
    ctx = iommu.alloc_context()
    dfn = (3 << 18) | (5 << 9) | 7
    assert iommu.map(ctx, dfn, range(42, 43), PERM_W) == (1, 0)
    used = memory.used
    pte = lambda table, i: struct.unpack(
        "<Q", memory.read(table << 12 | i * 8, 8))[0]
    root = used - 3  # root allocated first, then one table per level
    l2 = pte(root, 3)
    assert l2 & 3 == 3
    l1 = pte(l2 >> 12, 5)
    assert pte(l1 >> 12, 7) == 42 << 12 | PERM_W


def test_map_stops_at_present_entry(memory, iommu):
    ctx = iommu.alloc_context()
    assert iommu.map(ctx, 5, range(100, 101), PERM_R) == (1, 0)
    assert iommu.map(ctx, 2, range(200, 210), PERM_RW) == (3, Status.PRESENT)
    assert iommu.lookup(ctx, 5) == (100, PERM_R)  # untouched
    assert iommu.lookup(ctx, 4) == (202, PERM_RW)
    assert iommu.context_info(ctx).mapped == 4


def test_map_stops_at_width(hw_impl, memory):
    for width in (39, 48):
        io = hw_impl.Iommu(memory, width=width)
        ctx = io.alloc_context()
        last = io.max_iova_addr >> 12
        assert io.map(ctx, last - 1, range(1, 5), PERM_R) == (2, Status.RANGE)
        assert io.lookup(ctx, last) == (2, PERM_R)
        with pytest.raises(HwError) as e:
            io.lookup(ctx, last + 1)
        assert e.value.status == Status.RANGE


def test_map_stops_at_bad_frame(memory, iommu):
    ctx = iommu.alloc_context()
    mfns = array("Q", [1, 2, memory.nframes, 3])
    assert iommu.map(ctx, 0, mfns, PERM_R) == (2, Status.BADFRAME)
    run = range(memory.nframes - 1, memory.nframes + 1)
    assert iommu.map(ctx, 10, run, PERM_R) == (1, Status.BADFRAME)


def test_map_stops_when_no_frame_for_a_table(hw_impl):
    m = hw_impl.Memory(4 * 4096)
    io = hw_impl.Iommu(m)
    ctx = io.alloc_context()  # the root table
    m.alloc(1, owner=1)  # a guest frame
    # dfn 510..511 take a middle table and a leaf: the last 2 frames; dfn 512
    # needs a second leaf and finds none.
    assert io.map(ctx, 510, range(0, 5), PERM_R) == (2, Status.NOMEM)
    assert io.context_info(ctx)[:2] == (2, 3)
    with pytest.raises(HwError) as e:
        io.alloc_context()
    assert e.value.status == Status.NOMEM


def test_map_argument_errors(iommu):
    ctx = iommu.alloc_context()
    for perm in (0, 4, 7):
        assert iommu.map(ctx, 0, range(1, 2), perm) == (0, Status.INVAL)
    assert iommu.map(NO, 0, range(1, 2), PERM_R) == (0, Status.NOCTX)
    assert iommu.map(ctx + 1, 0, range(1, 2), PERM_R) == (0, Status.NOCTX)
    assert iommu.map(ctx, 0, range(1, 1), PERM_R) == (0, Status.OK)
    with pytest.raises(TypeError):
        iommu.map(ctx, 0, array("I", [1]), PERM_R)


def test_unmap_returns_frames_and_stops_at_hole(memory, iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, array("Q", [7, 9, 8]), PERM_RW)
    iommu.map(ctx, 4, range(20, 21), PERM_RW)
    done, st, mfns = iommu.unmap(ctx, 0, 5)
    assert (done, st, list(mfns)) == (3, Status.NOTPRESENT, [7, 9, 8])
    assert iommu.lookup(ctx, 0) is None
    assert iommu.lookup(ctx, 4) == (20, PERM_RW)
    assert iommu.unmap(ctx, 4, 1)[:2] == (1, Status.OK)
    assert iommu.unmap(ctx, 4, 1)[:2] == (0, Status.NOTPRESENT)
    assert iommu.unmap(ctx, 1 << 40, 1)[:2] == (0, Status.RANGE)
    assert iommu.unmap(NO, 0, 1)[:2] == (0, Status.NOCTX)
    assert iommu.context_info(ctx).mapped == 0


def test_unmap_in_untouched_region_is_a_hole(iommu):
    ctx = iommu.alloc_context()
    assert iommu.unmap(ctx, 123456, 3)[:2] == (0, Status.NOTPRESENT)


def test_teardown_in_slices_returns_every_frame(memory, iommu):
    ctx = iommu.alloc_context()
    base = memory.used
    iommu.map(ctx, 0, range(5000, 5700), PERM_R)
    iommu.map(ctx, 1 << 20, range(6000, 6001), PERM_W)
    assert memory.used == base + 1 + 2 + 2  # 2 leaves, 2 middles
    got = array("Q")
    slices = 0
    while True:
        mfns, finished = iommu.teardown(ctx, 300)
        assert len(mfns) <= 300
        got.extend(mfns)
        slices += 1
        if finished:
            break
        assert iommu.context_info(ctx).mapped == 701 - len(got)
    assert sorted(got) == list(range(5000, 5700)) + [6000]
    assert slices >= 4  # 1024 + 512 leaf slots examined in 300-slot steps
    assert memory.used == base - 1  # root freed too
    with pytest.raises(HwError) as e:
        iommu.context_info(ctx)
    assert e.value.status == Status.NOCTX


def test_dying_context_refuses_everything_but_teardown(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(1, 600), PERM_R)
    assert iommu.teardown(ctx, 10)[1] is False
    assert iommu.map(ctx, 700, range(1, 2), PERM_R) == (0, Status.BUSY)
    assert iommu.unmap(ctx, 100, 1)[:2] == (0, Status.BUSY)
    for call in (lambda: iommu.lookup(ctx, 100),
                 lambda: iommu.translate(ctx, array("Q", [0])),
                 lambda: iommu.invalidate_context(ctx),
                 lambda: iommu.add_device(1) or iommu.attach(1, ctx)):
        with pytest.raises(HwError) as e:
            call()
        assert e.value.status == Status.BUSY
    assert iommu.context_info(ctx).mapped == 589


def test_teardown_refuses_context_with_devices(iommu):
    ctx = iommu.alloc_context()
    iommu.add_device(0x300)
    iommu.attach(0x300, ctx)
    with pytest.raises(HwError) as e:
        iommu.teardown(ctx, 10)
    assert e.value.status == Status.BUSY
    iommu.attach(0x300, None)
    assert iommu.teardown(ctx, 10) == (array("Q"), True)


def test_teardown_errors(iommu):
    with pytest.raises(HwError) as e:
        iommu.teardown(0, 10)
    assert e.value.status == Status.NOCTX
    ctx = iommu.alloc_context()
    with pytest.raises(HwError) as e:
        iommu.teardown(ctx, 0)
    assert e.value.status == Status.INVAL


def test_context_ids_reused_with_fresh_state(hw_impl, memory):
    io = hw_impl.Iommu(memory, max_contexts=2)
    a, b = io.alloc_context(), io.alloc_context()
    assert (a, b) == (0, 1)
    with pytest.raises(HwError) as e:
        io.alloc_context()
    assert e.value.status == Status.NOSPC
    io.map(a, 0, range(1, 2), PERM_R)
    io.translate(a, array("Q", [0]))
    assert io.teardown(a, 512)[1]
    assert io.alloc_context() == a
    info = io.context_info(a)
    assert info.mapped == 0 and info.tables == 1 and info.counters.misses == 0
    assert io.lookup(a, 0) is None


def test_any_uint64_buffer_is_a_run(iommu):
    ctx = iommu.alloc_context()
    raw = array("Q", [4, 9]).tobytes()
    assert iommu.map(ctx, 0, memoryview(raw).cast("Q"), PERM_R) == (2, 0)
    assert iommu.lookup(ctx, 1) == (9, PERM_R)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_lookup_run_reads_a_range_without_touching_the_iotlb(impl):
    from xenemu.hw import native, reference
    mod = native if impl == "native" else reference
    m = mod.Memory(1 << 26)
    io = mod.Iommu(m, width=39)
    ctx = io.alloc_context()
    mfns = m.alloc(3, owner=1)
    assert io.map(ctx, 0x1FF, mfns, PERM_R)[0] == 3      # crosses a leaf table
    before = io.counters()
    got, perms = io.lookup_run(ctx, 0x1FE, 5)
    assert list(got) == [0, *mfns, 0] and list(perms) == [0, PERM_R, PERM_R, PERM_R, 0]
    assert io.counters() == before
    with pytest.raises(HwError) as info:
        io.lookup_run(ctx, io.max_iova_addr >> 12, 2)
    assert info.value.status == Status.RANGE


# -- table-page budgets (pools) ------------------------------------------------

def test_a_pool_limits_table_pages_across_its_contexts(hw_impl, memory, iommu):
    a, b = iommu.alloc_context(), iommu.alloc_context()
    iommu.set_pool_limit(3, 6)
    iommu.set_context_pool(a, 3)
    iommu.set_context_pool(b, 3)
    assert iommu.pool_usage(3) == (2, 6)                 # the two roots
    mfns = memory.alloc(8, owner=1)
    # Each dfn far from the others needs a new mid-level and leaf table: 2 pages.
    assert iommu.map(a, 0, mfns[:1], PERM_RW)[0] == 1
    assert iommu.map(b, 1 << 18, mfns[1:2], PERM_RW)[0] == 1
    assert iommu.pool_usage(3) == (6, 6)
    done, st = iommu.map(a, 2 << 18, mfns[2:3], PERM_RW)
    assert (done, Status(st)) == (0, Status.NOMEM)
    assert iommu.map(a, 1, mfns[3:4], PERM_RW)[0] == 1   # an existing table: fine
    assert iommu.pool_usage(3) == (6, 6)
    iommu.teardown(b, 1 << 20)
    assert iommu.pool_usage(3) == (3, 6)                 # b's root and two tables back
    assert iommu.map(a, 2 << 18, mfns[2:3], PERM_RW)[0] == 1
    assert iommu.pool_usage(3) == (5, 6)
    c, d = iommu.alloc_context(), iommu.alloc_context()  # in pool 0: no limit
    iommu.set_context_pool(c, 3)                         # its root fits: 6 of 6
    with pytest.raises(HwError):
        iommu.set_context_pool(d, 3)                     # its root does not
    assert iommu.pool_usage(3) == (6, 6)


def test_pool_zero_cannot_be_limited(hw_impl, iommu):
    with pytest.raises(HwError):
        iommu.set_pool_limit(0, 5)
    with pytest.raises(HwError):
        iommu.set_pool_limit(MAX_POOLS, 5)


def test_injected_table_failure_stops_a_map_like_a_spent_machine(hw_impl, memory, iommu):
    from xenemu.hw.common import InjectSite
    mfns = memory.alloc(4, owner=1)
    ctx = iommu.alloc_context()
    memory.inject(InjectSite.TABLE, 2)     # the map's 2nd table page (of 2)
    assert iommu.map(ctx, 0, mfns, PERM_RW) == (0, Status.NOMEM)
    assert memory.injection().fired == InjectSite.TABLE
    assert iommu.context_info(ctx).tables == 2      # root + the 1st, kept as Xen keeps them
    assert iommu.map(ctx, 0, mfns, PERM_RW) == (4, Status.OK)
    memory.inject(InjectSite.TABLE, 1)
    with pytest.raises(HwError) as e:
        iommu.alloc_context()
    assert e.value.status == Status.NOMEM


def test_injected_flush_failure_drops_nothing_and_the_audit_sees_it(hw_impl, memory, iommu):
    from xenemu.hw.common import InjectSite
    mfns = memory.alloc(4, owner=1)
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, mfns, PERM_RW)
    iommu.translate(ctx, array("Q", [0, 4096]))     # cache two translations
    assert iommu.stale_iotlb_entries() == 0
    assert iommu.unmap(ctx, 0, 4, flush=False)[0] == 4
    assert iommu.stale_iotlb_entries() == 2
    memory.inject(InjectSite.FLUSH, 1)
    with pytest.raises(HwError) as e:
        iommu.invalidate_pages(ctx, 0, 4)
    assert e.value.status == Status.INJECTED
    assert iommu.stale_iotlb_entries() == 2
    memory.inject(InjectSite.FLUSH, 1)
    with pytest.raises(HwError):
        iommu.invalidate_context(ctx)
    iommu.invalidate_pages(ctx, 0, 4)
    assert iommu.stale_iotlb_entries() == 0


def test_map_referenced_takes_a_reference_per_mapped_page_only(hw_impl, memory, iommu):
    from xenemu.hw.common import InjectSite
    mfns = memory.alloc(6, owner=1)
    ctx = iommu.alloc_context()
    assert iommu.map(ctx, 2, mfns[:1], PERM_RW) == (1, Status.OK)        # dfn 2 taken
    assert iommu.map_referenced(ctx, 0, mfns[:4], PERM_RW) == (2, Status.PRESENT)
    assert list(memory.refcounts(mfns)) == [1, 1, 0, 0, 0, 0]
    memory.inject(InjectSite.REF, 2)
    assert iommu.map_referenced(ctx, 8, mfns[2:], PERM_RW) == (1, Status.INJECTED)
    assert list(memory.refcounts(mfns)) == [1, 1, 1, 0, 0, 0]
    assert iommu.lookup(ctx, 9) is None
    memory.inject(InjectSite.TABLE, 1)     # dfn 512 needs a new leaf table
    assert iommu.map_referenced(ctx, 511, mfns[3:5], PERM_RW) == (1, Status.NOMEM)
    assert list(memory.refcounts(mfns)) == [1, 1, 1, 1, 0, 0]
    freed = memory.alloc(1, owner=1)
    memory.free(freed)
    assert iommu.map_referenced(ctx, 20, freed, PERM_RW) == (0, Status.BADFRAME)


def test_next_mapped_skips_empty_tables(hw_impl, memory):
    iommu = hw_impl.Iommu(memory, width=48)
    ctx = iommu.alloc_context()
    top = iommu.max_iova_addr >> 12
    assert iommu.next_mapped(ctx, 0) is None
    mfns = memory.alloc(3, owner=1)
    for dfn, mfn in ((5, mfns[0]), (0x40000, mfns[1]), (top, mfns[2])):
        assert iommu.map(ctx, dfn, range(mfn, mfn + 1), PERM_RW) == (1, Status.OK)
    assert iommu.next_mapped(ctx, 0) == 5
    assert iommu.next_mapped(ctx, 5) == 5
    assert iommu.next_mapped(ctx, 6) == 0x40000
    assert iommu.next_mapped(ctx, 0x40001) == top
    assert iommu.next_mapped(ctx, top + 1) is None
    assert iommu.unmap(ctx, top, 1)[0] == 1
    assert iommu.next_mapped(ctx, 0x40001) is None      # its tables stay, empty
    with pytest.raises(HwError):
        iommu.next_mapped(ctx + 1, 0)
