"""Devices: registration, atomic attach, DMA, every fault kind, fault log."""
from array import array

import pytest

from xenemu.hw import PERM_R, PERM_RW, PERM_W, Fault, FaultRecord, HwError, \
    Status, sbdf

DEV = sbdf(0, 3, 0)

# (addr, write, kind) of a DMA by DEV through the `ctx` fixture's context as
# test_every_fault_kind maps it: one of each kind that a translation makes.
EVERY_FAULT = [
    (0x5000, False, Fault.NOT_PRESENT),
    (0x1000, True, Fault.WRITE),
    (0x2000, False, Fault.READ),
    (1 << 39, False, Fault.WIDTH),
    (0xFEE00000, True, Fault.INTR),
    (0xFEEFF000, False, Fault.INTR),
]


@pytest.fixture
def ctx(iommu):
    iommu.add_device(DEV)
    c = iommu.alloc_context()
    iommu.attach(DEV, c)
    return c


def test_registration(iommu):
    iommu.add_device(DEV)
    assert iommu.device_context(DEV) is None  # blocked until attached
    for call, st in ((lambda: iommu.add_device(DEV), Status.EXISTS),
                     (lambda: iommu.attach(DEV + 1, None), Status.NODEV),
                     (lambda: iommu.attach(DEV, 5), Status.NOCTX),
                     (lambda: iommu.dma_read(DEV + 1, 0, 1), Status.NODEV),
                     (lambda: iommu.remove_device(DEV + 1), Status.NODEV)):
        with pytest.raises(HwError) as e:
            call()
        assert e.value.status == st
    iommu.remove_device(DEV)
    with pytest.raises(HwError):
        iommu.device_context(DEV)


def test_device_table_full(hw_impl, memory):
    io = hw_impl.Iommu(memory, max_devices=2)
    io.add_device(1)
    io.add_device(2)
    with pytest.raises(HwError) as e:
        io.add_device(3)
    assert e.value.status == Status.NOSPC
    io.remove_device(1)
    io.add_device(3)


def test_dma_moves_bytes_across_pages(memory, iommu, ctx):
    f = memory.alloc(2, owner=1)
    iommu.map(ctx, 10, array("Q", [f[1], f[0]]), PERM_RW)
    data = bytes(range(256)) * 20  # 5120 bytes from offset 3000 of dfn 10
    assert iommu.dma_write(DEV, 10 << 12 | 3000, data) == len(data)
    assert memory.read(f[1] << 12 | 3000, 1096) == data[:1096]
    assert memory.read(f[0] << 12, 4024) == data[1096:]
    assert iommu.dma_read(DEV, 10 << 12 | 3000, len(data)) == data
    assert iommu.faults() == ([], False)


def test_dma_stops_at_first_fault(memory, iommu, ctx):
    iommu.map(ctx, 0, range(5, 6), PERM_RW)
    assert iommu.dma_write(DEV, 4000, b"x" * 200) == 96
    assert iommu.dma_read(DEV, 4000, 200) == b"x" * 96
    recs, overflow = iommu.faults()
    assert recs == [FaultRecord(DEV, 4096, Fault.NOT_PRESENT, True),
                    FaultRecord(DEV, 4096, Fault.NOT_PRESENT, False)]
    assert not overflow


@pytest.mark.parametrize("addr,write,kind", EVERY_FAULT)
def test_every_fault_kind(iommu, ctx, addr, write, kind):
    iommu.map(ctx, 1, range(1, 2), PERM_R)
    iommu.map(ctx, 2, range(2, 3), PERM_W)
    iommu.map(ctx, 0xFEE00, range(3, 0x103), PERM_RW)
    if write:
        assert iommu.dma_write(DEV, addr, b"z") == 0
    else:
        assert iommu.dma_read(DEV, addr, 1) == b""
    assert iommu.faults() == ([FaultRecord(DEV, addr, kind, write)], False)


def test_blocked_device_faults(iommu, ctx):
    iommu.map(ctx, 0, range(1, 2), PERM_RW)
    assert len(iommu.dma_read(DEV, 0, 4)) == 4
    iommu.attach(DEV, None)
    assert iommu.dma_read(DEV, 0, 4) == b""
    other = sbdf(0, 4, 0)
    iommu.add_device(other)  # never attached
    assert iommu.dma_write(other, 0, b"a") == 0
    assert [r.kind for r in iommu.faults()[0]] == [Fault.BLOCKED] * 2


def test_reattach_switches_translation_in_one_step(memory, iommu, ctx):
    other = iommu.alloc_context()
    iommu.map(ctx, 0, range(10, 11), PERM_RW)
    iommu.map(other, 0, range(20, 21), PERM_RW)
    memory.write(10 << 12, b"old")
    memory.write(20 << 12, b"new")
    assert iommu.dma_read(DEV, 0, 3) == b"old"
    iommu.attach(DEV, other)
    assert iommu.device_context(DEV) == other
    assert iommu.dma_read(DEV, 0, 3) == b"new"  # no stale IOTLB entry
    # the old context has no device any more: it may be torn down
    assert iommu.teardown(ctx, 512)[1]
    with pytest.raises(HwError) as e:
        iommu.teardown(other, 512)
    assert e.value.status == Status.BUSY
    iommu.attach(DEV, other)  # same context: nothing changes
    iommu.remove_device(DEV)
    assert iommu.teardown(other, 512)[1]


def test_fault_log_overflow_and_clear(iommu, ctx):
    for i in range(10):  # the fixture's log holds 8 records
        iommu.dma_read(DEV, i << 12, 1)
    recs, overflow = iommu.faults()
    assert [r.addr for r in recs] == [i << 12 for i in range(8)]
    assert overflow
    iommu.clear_faults()
    assert iommu.faults() == ([], False)
    iommu.dma_read(DEV, 0x9000, 1)
    assert iommu.faults()[0][0].addr == 0x9000


def test_dma_check_mode_stale(memory, iommu, ctx):
    iommu.map(ctx, 0, range(1, 2), PERM_RW)
    iommu.dma_read(DEV, 0, 1)
    iommu.unmap(ctx, 0, 1, flush=False)
    iommu.check = True
    with pytest.raises(HwError) as e:
        iommu.dma_read(DEV, 0, 1)
    assert e.value.status == Status.STALE
    assert iommu.faults() == ([], False)


# --- loading a fault log (a restored memory's) ---------------------------------

@pytest.mark.parametrize("addr,write,kind", EVERY_FAULT)
def test_a_loaded_fault_log_reads_back_as_the_dma_made_it(iommu, ctx, addr, write, kind):
    """Every fault a DMA records (test_every_fault_kind's) loads as it is,
    after what the log held, without touching the IOTLB or the counters."""
    iommu.dma_read(DEV, 0x7000, 1)
    before = iommu.counters()
    rec = FaultRecord(DEV, addr, kind, write)
    iommu.load_faults([rec, rec._replace(kind=Fault.BLOCKED)], False)
    assert iommu.faults() == ([rec, rec._replace(kind=Fault.BLOCKED)], False)
    assert iommu.counters() == before
    iommu.load_faults([], False)
    assert iommu.faults() == ([], False)


def test_a_full_loaded_log_keeps_its_overflow_flag(iommu, ctx):
    recs = [FaultRecord(DEV, i << 12, Fault.NOT_PRESENT, False) for i in range(8)]
    iommu.load_faults(recs, True)
    assert iommu.faults() == (recs, True)
    iommu.dma_read(DEV, 0x9000, 1)       # full: dropped, as a DMA's would be
    assert iommu.faults() == (recs, True)


@pytest.mark.parametrize("records,overflow,status,index", [
    ([(DEV, 1 << 39, Fault.READ, False)], False, Status.INVAL, 0),      # above the width
    ([(DEV, 0x1000, Fault.WIDTH, False)], False, Status.INVAL, 0),      # below it
    ([(DEV, 0x1000, Fault.INTR, True)], False, Status.INVAL, 0),        # not the window
    ([(DEV, 0xFEE00000, Fault.NOT_PRESENT, True)], False, Status.INVAL, 0),
    ([(DEV, 0, Fault.BLOCKED, False), (DEV, 0x1000, Fault.READ, True)], False,
     Status.INVAL, 1),                                                  # a write
    ([(DEV, 0x1000, Fault.WRITE, False)], False, Status.INVAL, 0),      # a read
    ([(DEV, 0x1000, Fault.NONE, False)], False, Status.INVAL, 0),
    ([(DEV, 0x1000, 9, False)], False, Status.INVAL, 0),       # no such kind
    ([(DEV, 0x1000, Fault.NOT_PRESENT, 2)], False, Status.INVAL, 0),
    ([(DEV, 0, Fault.BLOCKED, False), (DEV + 1, 0, Fault.BLOCKED, False)], False,
     Status.NODEV, 1),
    ([(DEV, 0, Fault.BLOCKED, False)], True, Status.INVAL, 1),          # room left
    ([(DEV, 0, Fault.BLOCKED, False)] * 9, True, Status.NOSPC, 9),      # more than it holds
])
def test_a_fault_log_the_iommu_cannot_make_is_refused_whole(iommu, ctx, records, overflow,
                                                            status, index):
    iommu.dma_read(DEV, 0x7000, 1)
    kept = iommu.faults()
    with pytest.raises(HwError) as e:
        iommu.load_faults(records, overflow)
    assert (e.value.status, e.value.index) == (status, index)
    assert iommu.faults() == kept
