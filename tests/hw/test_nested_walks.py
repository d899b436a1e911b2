"""Nested translation in the hardware (both implementations): a stage-1
table in guest memory walked through stage 2, PASID bindings, the combined
IOTLB entry that stays until the guest flushes, and stage-2 invalidation
reaching nested children."""
from array import array

import pytest

from xenemu.hw import Fault, HwError, Status
from xenemu.hw.common import PERM_R, PERM_RW

DEV = 0x300
PASID = 5
# Guest frames (dfns of the stage-2 context): the stage-1 chain, then data.
ROOT, L3, L2, L1 = 1, 2, 3, 4
DATA = 16


class Guest:
    """A guest with its frames mapped at dfn = index in stage 2 and a
    stage-1 chain ROOT -> L3 -> L2 -> L1 mapping IOVA page i to DATA + i."""

    def __init__(self, memory, iommu, pages=4):
        self.m, self.io = memory, iommu
        self.frames = memory.alloc(64, owner=1)
        self.s2 = iommu.alloc_context()
        assert iommu.map(self.s2, 0, self.frames, PERM_RW) == (64, 0)
        for table, nxt in ((ROOT, L3), (L3, L2), (L2, L1)):
            self.entry(table, 0, nxt << 12 | 3)
        for i in range(pages):
            self.entry(L1, i, (DATA + i) << 12 | 3)
        self.ctx = iommu.alloc_nested(self.s2, ROOT)
        iommu.add_device(DEV)
        iommu.attach_pasid(DEV, PASID, self.ctx)

    def entry(self, table, index, value):
        self.m.write(self.frames[table] * 4096 + 8 * index, value.to_bytes(8, "little"))

    def data(self, page):
        return self.m.read(self.frames[DATA + page] * 4096, 8)


@pytest.fixture
def g(memory, iommu):
    return Guest(memory, iommu)


def test_dma_with_a_pasid_goes_through_both_stages(g):
    assert g.io.dma_write(DEV, 0x1008, b"nested!!", pasid=PASID) == 8
    assert g.m.read(g.frames[DATA + 1] * 4096 + 8, 8) == b"nested!!"
    assert g.io.dma_read(DEV, 0x1008, 8, pasid=PASID) == b"nested!!"
    # A 4-level stage 1 over 3-level stage 2: 4 entries + 5 stage-2 walks of 3.
    assert g.io.context_info(g.ctx).counters.walks == 4 + 5 * 3


def test_an_edit_without_flush_keeps_the_cached_translation(g):
    g.io.dma_write(DEV, 0, b"old", pasid=PASID)
    g.entry(L1, 0, (DATA + 2) << 12 | 3)           # the guest remaps page 0
    g.io.dma_write(DEV, 0, b"new", pasid=PASID)
    assert g.data(0)[:3] == b"new"                  # still the cached frame
    assert g.io.nested_stale_iotlb_entries() == 1
    assert g.io.stale_iotlb_entries() == 0          # not the emulator's bug
    g.io.invalidate_nested(g.ctx, PASID, 0, 1)
    g.io.dma_write(DEV, 0, b"now", pasid=PASID)
    assert g.data(2)[:3] == b"now"
    assert g.io.nested_stale_iotlb_entries() == 0


@pytest.mark.parametrize("flush", [
    lambda io, ctx: io.invalidate_nested(ctx),
    lambda io, ctx: io.invalidate_nested(ctx, PASID, 0, 1 << 36),
])
def test_flush_all_or_a_pasid(g, flush):
    g.io.dma_read(DEV, 0, 1, pasid=PASID)
    g.entry(L1, 0, 0)
    flush(g.io, g.ctx)
    assert g.io.dma_read(DEV, 0, 1, pasid=PASID) == b""
    assert g.io.dma_fault.kind == Fault.NOT_PRESENT


def test_a_range_flush_of_another_pasid_leaves_this_one(g):
    g.io.dma_read(DEV, 0, 1, pasid=PASID)
    g.entry(L1, 0, 0)
    g.io.invalidate_nested(g.ctx, PASID + 1, 0, 16)
    assert g.io.dma_read(DEV, 0, 1, pasid=PASID) == b"\0"


def test_stage2_invalidation_drops_nested_translations(g):
    g.io.dma_read(DEV, 0x2000, 1, pasid=PASID)
    done, _, _ = g.io.unmap(g.s2, DATA + 2, 1)      # the hypervisor's side, flushed
    assert done == 1
    assert g.io.dma_read(DEV, 0x2000, 1, pasid=PASID) == b""
    assert g.io.dma_fault.kind == Fault.NOT_PRESENT


def test_a_table_page_stage2_does_not_map_faults(g):
    g.io.unmap(g.s2, L2, 1)
    assert g.io.dma_read(DEV, 0, 1, pasid=PASID) == b""
    assert g.io.dma_fault.kind == Fault.S1_TABLE
    recs, _ = g.io.faults()
    assert recs[-1].kind == Fault.S1_TABLE


def test_both_permission_sets_apply(g):
    g.entry(L2, 0, L1 << 12 | 1)                    # read-only above the leaf
    g.io.unmap(g.s2, DATA + 1, 1)
    g.io.map(g.s2, DATA + 1, g.frames[DATA + 1:DATA + 2], PERM_R)
    assert g.io.dma_write(DEV, 0, b"x", pasid=PASID) == 0
    assert g.io.dma_fault.kind == Fault.WRITE
    _, faults = g.io.translate_nested(g.ctx, PASID, array("Q", [0x1000]))
    assert faults[0] == Fault.NONE                  # reads still go


def test_large_stage1_pages_fault(g):
    g.entry(L2, 0, L1 << 12 | 0x83)
    assert g.io.dma_read(DEV, 0, 1, pasid=PASID) == b""
    assert g.io.dma_fault.kind == Fault.S1_TABLE


def test_unbound_pasid_faults_and_bindings_are_checked(g):
    assert g.io.dma_read(DEV, 0, 1, pasid=PASID + 1) == b""
    assert g.io.dma_fault.kind == Fault.NO_PASID
    for args, status in [((DEV, PASID, g.ctx), Status.EXISTS), ((DEV, 0, g.ctx), Status.INVAL),
                         ((DEV, 1, g.s2), Status.INVAL), ((DEV + 1, 1, g.ctx), Status.NODEV),
                         ((DEV, 1, 99), Status.NOCTX)]:
        with pytest.raises(HwError) as e:
            g.io.attach_pasid(*args)
        assert e.value.status == status


def test_teardown_order_parent_refuses_children_and_bindings(g):
    with pytest.raises(HwError) as e:
        g.io.teardown(g.s2, 16)
    assert e.value.status == Status.BUSY
    with pytest.raises(HwError) as e:
        g.io.teardown(g.ctx, 16)
    assert e.value.status == Status.BUSY            # a PASID is bound
    g.io.detach_pasid(DEV, PASID)
    assert g.io.teardown(g.ctx, 16)[1]
    assert g.io.teardown(g.s2, 1 << 12)[1]


def test_nested_contexts_refuse_second_level_operations(g):
    for call in (lambda: g.io.map(g.ctx, 0, range(1, 2), PERM_RW)[1],
                 lambda: g.io.attach(DEV, g.ctx), lambda: g.io.lookup(g.ctx, 0),
                 lambda: g.io.alloc_nested(g.ctx, 0)):
        try:
            st = call()
        except HwError as e:
            st = e.status
        assert st == Status.INVAL


def test_removing_the_device_drops_its_bindings(g):
    g.io.remove_device(DEV)
    assert g.io.teardown(g.ctx, 16)[1]
