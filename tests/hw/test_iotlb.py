"""IOTLB: counters, coherence after unmap/teardown/reattach, invalidation
requests and the check mode that catches stale entries."""
from array import array

import pytest

from xenemu.hw import PERM_R, PERM_RW, PERM_W, Counters, Fault, HwError, \
    StaleIotlbError, Status


def addrs(*dfns):
    return array("Q", [d << 12 for d in dfns])


def test_miss_then_hit_and_walk_counts(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 7, range(100, 101), PERM_RW)
    ma, f = iommu.translate(ctx, array("Q", [7 << 12 | 0x123, 7 << 12, 8 << 12]))
    assert list(ma) == [100 << 12 | 0x123, 100 << 12, 0]
    assert list(f) == [Fault.NONE, Fault.NONE, Fault.NOT_PRESENT]
    # miss on 7 (3 entries read), hit on 7, miss on 8 (3 reads: same leaf)
    assert iommu.context_info(ctx).counters == Counters(1, 2, 6, 0, 0)
    iommu.translate(ctx, addrs(1 << 9))  # middle entry absent: 2 reads
    assert iommu.counters() == Counters(1, 3, 8, 0, 0)


def test_permission_faults_use_cached_entry(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 1, range(10, 11), PERM_R)
    iommu.map(ctx, 2, range(11, 12), PERM_W)
    for _ in range(2):  # miss, then hit: same answers
        assert list(iommu.translate(ctx, addrs(1, 2), write=True)[1]) == [
            Fault.WRITE, Fault.NONE]
        assert list(iommu.translate(ctx, addrs(1, 2), write=False)[1]) == [
            Fault.NONE, Fault.READ]
    assert iommu.context_info(ctx).counters.misses == 2


def test_width_and_interrupt_window_bypass_the_iotlb(hw_impl, memory):
    io = hw_impl.Iommu(memory, width=39)
    ctx = io.alloc_context()
    io.map(ctx, 0xFEE00, range(1, 2), PERM_RW)  # mapped, still interrupts
    a = array("Q", [0xFEE00000, 0xFEEFFFFF, 1 << 39, (1 << 64) - 1])
    assert list(io.translate(ctx, a, write=True)[1]) == [
        Fault.INTR, Fault.INTR, Fault.WIDTH, Fault.WIDTH]
    assert io.counters() == Counters(0, 0, 0, 0, 0)


def test_contexts_never_share_entries(iommu):
    a, b = iommu.alloc_context(), iommu.alloc_context()
    iommu.map(a, 5, range(50, 51), PERM_R)
    iommu.map(b, 5, range(60, 61), PERM_R)
    assert iommu.translate(a, addrs(5))[0][0] == 50 << 12
    assert iommu.translate(b, addrs(5))[0][0] == 60 << 12
    assert iommu.translate(a, addrs(5))[0][0] == 50 << 12
    assert iommu.context_info(a).counters.hits == 1


def test_unmap_invalidates(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(10, 20), PERM_RW)
    iommu.translate(ctx, addrs(*range(10)))
    assert iommu.unmap(ctx, 2, 3)[:2] == (3, Status.OK)
    f = iommu.translate(ctx, addrs(*range(10)))[1]
    assert list(f) == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert iommu.context_info(ctx).counters.invalidations == 1


def test_partial_unmap_invalidates_what_it_did(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(10, 12), PERM_RW)
    iommu.translate(ctx, addrs(0, 1))
    assert iommu.unmap(ctx, 0, 5)[:2] == (2, Status.NOTPRESENT)
    assert list(iommu.translate(ctx, addrs(0, 1))[1]) == [1, 1]


def test_remap_after_not_present_needs_no_flush(iommu):
    """Only present translations are cached: a miss leaves nothing behind."""
    ctx = iommu.alloc_context()
    iommu.check = True
    assert iommu.translate(ctx, addrs(3))[1][0] == Fault.NOT_PRESENT
    iommu.map(ctx, 3, range(30, 31), PERM_R)
    assert iommu.translate(ctx, addrs(3))[0][0] == 30 << 12
    iommu.unmap(ctx, 3, 1)
    iommu.map(ctx, 3, range(31, 32), PERM_W)
    assert iommu.translate(ctx, addrs(3), write=True)[0][0] == 31 << 12


def test_deferred_flush_is_stale_until_invalidated(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 4, range(40, 41), PERM_RW)
    iommu.translate(ctx, addrs(4))
    assert iommu.unmap(ctx, 4, 1, flush=False)[:2] == (1, Status.OK)
    # Like real hardware, the IOTLB still translates the old page...
    assert iommu.translate(ctx, addrs(4))[0][0] == 40 << 12
    # ...which check mode reports loudly.
    iommu.check = True
    with pytest.raises(StaleIotlbError) as e:
        iommu.translate(ctx, addrs(5, 4))
    assert e.value.done == 1 and e.value.status == Status.STALE
    assert iommu.counters().stale == 1
    assert iommu.context_info(ctx).counters.stale == 1
    iommu.invalidate_pages(ctx, 4, 1)
    assert iommu.translate(ctx, addrs(4))[1][0] == Fault.NOT_PRESENT


def test_raw_table_write_is_caught_by_check_mode(memory, iommu):
    ctx = iommu.alloc_context()
    f = memory.alloc(1, owner=1)
    iommu.map(ctx, 0, f, PERM_RW)
    iommu.translate(ctx, addrs(0))
    leaf = memory.used - 1  # the leaf table page was allocated last
    memory.write(leaf << 12, bytes(8))  # clear the PTE behind the IOTLB
    iommu.check = True
    with pytest.raises(StaleIotlbError):
        iommu.translate(ctx, addrs(0))


def test_invalidation_requests(iommu):
    a, b = iommu.alloc_context(), iommu.alloc_context()
    for c in (a, b):
        iommu.map(c, 0, range(1, 5), PERM_R)
    warm = lambda: [iommu.translate(c, addrs(0, 1, 2, 3)) for c in (a, b)]
    misses = lambda: iommu.counters().misses
    warm()
    m0 = misses()
    iommu.invalidate_pages(a, 1, 2)
    warm()
    assert misses() - m0 == 2
    iommu.invalidate_context(b)
    warm()
    assert misses() - m0 == 6
    iommu.invalidate_all()
    warm()
    assert misses() - m0 == 14
    assert iommu.counters().invalidations == 3
    assert iommu.context_info(a).counters.invalidations == 1
    with pytest.raises(HwError):
        iommu.invalidate_pages(99, 0, 1)


def test_large_invalidation_scans_whole_cache(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(1, 33), PERM_R)
    iommu.translate(ctx, addrs(*range(32)))
    iommu.invalidate_pages(ctx, 10, 1 << 30)  # more pages than entries
    assert list(iommu.translate(ctx, addrs(9, 10, 31))[0]) == [
        10 << 12, 11 << 12, 32 << 12]
    assert iommu.counters().hits == 1


def test_capacity_is_bounded(hw_impl, memory):
    io = hw_impl.Iommu(memory, iotlb_entries=8, iotlb_ways=2)
    ctx = io.alloc_context()
    io.map(ctx, 0, range(1, 101), PERM_R)
    io.translate(ctx, addrs(*range(100)))
    io.translate(ctx, addrs(*range(100)))
    assert io.counters().hits <= 8


def test_teardown_and_id_reuse_leave_nothing_stale(iommu):
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(100, 110), PERM_RW)
    iommu.translate(ctx, addrs(*range(10)))
    assert iommu.teardown(ctx, 1024)[1]
    again = iommu.alloc_context()
    assert again == ctx
    iommu.check = True
    iommu.map(again, 0, range(200, 205), PERM_RW)
    ma, f = iommu.translate(again, addrs(*range(10)))
    assert list(ma[:5]) == [d << 12 for d in range(200, 205)]
    assert list(f[5:]) == [Fault.NOT_PRESENT] * 5
    assert iommu.counters().stale == 0


def test_check_mode_passes_on_coherent_use(iommu):
    iommu.check = True
    assert iommu.check
    ctx = iommu.alloc_context()
    iommu.map(ctx, 0, range(1, 9), PERM_RW)
    for _ in range(3):
        iommu.translate(ctx, addrs(*range(8)))
    assert iommu.counters().hits == 16


def test_round_robin_replacement(hw_impl, memory):
    """A full set evicts its ways in turn (both implementations alike)."""
    from xenemu.hw.reference import _Iotlb
    io = hw_impl.Iommu(memory, iotlb_entries=16, iotlb_ways=2)
    ctx = io.alloc_context()
    io.map(ctx, 0, range(1, 201), PERM_R)
    same_set = [d for d in range(200) if _Iotlb(16, 2).set_of(ctx, d) == 0]
    a, b, c, d = same_set[:4]
    for dfn in (a, b, c, d):  # c evicts a (way 0), d evicts b (way 1)
        io.translate(ctx, addrs(dfn))
    io.translate(ctx, addrs(c, d))
    assert io.counters().hits == 2
    io.translate(ctx, addrs(a, b))
    assert io.counters().hits == 2
