"""Machine memory: frame allocator, per-frame metadata, byte access."""
from array import array

import pytest

from xenemu.hw import GFN_INVALID, OWNER_NONE, HwError, Status


def test_size_validation(hw_impl):
    for bad in (0, 4095, 4097):
        with pytest.raises(ValueError):
            hw_impl.Memory(bad)


def test_default_machine_is_lazy(hw_impl):
    m = hw_impl.Memory()
    assert m.nframes == 1 << 20 and m.used == 0
    assert m.read(m.size - 8, 8) == bytes(8)


def test_alloc_watermark_then_lifo_reuse(memory):
    a = memory.alloc(3, owner=5)
    assert list(a) == [0, 1, 2] and memory.used == 3
    memory.free(array("Q", [1, 0]))
    assert list(memory.alloc(3, owner=5)) == [0, 1, 3]


def test_alloc_all_or_nothing(hw_impl):
    m = hw_impl.Memory(4 * 4096)
    with pytest.raises(HwError) as e:
        m.alloc(5, owner=1)
    assert e.value.status == Status.NOMEM and m.used == 0
    assert len(m.alloc(4, owner=1)) == 4
    with pytest.raises(HwError):
        m.alloc(1, owner=1)


def test_owner_and_refcounts(memory):
    f = memory.alloc(4, owner=7)
    assert list(memory.owners(f)) == [7] * 4
    assert list(memory.refcounts(f)) == [0] * 4
    memory.get_refs(f)
    memory.get_refs(range(f[0], f[0] + 2))
    assert list(memory.refcounts(f)) == [2, 2, 1, 1]
    memory.put_refs(array("Q", [f[3]]))
    assert list(memory.refcounts(f)) == [2, 2, 1, 0]
    memory.set_owner(f[:2], 9)
    assert list(memory.owners(f)) == [9, 9, 7, 7]


def test_refs_all_or_nothing(memory):
    f = memory.alloc(3, owner=1)
    memory.get_refs(f[:1])
    with pytest.raises(HwError) as e:
        memory.put_refs(f)  # f[1] has no reference to drop
    assert (e.value.status, e.value.index) == (Status.REFCOUNT, 1)
    assert list(memory.refcounts(f)) == [1, 0, 0]
    with pytest.raises(HwError) as e:
        memory.get_refs(array("Q", [f[0], memory.nframes]))
    assert (e.value.status, e.value.index) == (Status.BADFRAME, 1)
    with pytest.raises(HwError) as e:
        memory.get_refs(array("Q", [f[0], 100]))  # not allocated
    assert e.value.status == Status.BADFRAME
    assert list(memory.refcounts(f)) == [1, 0, 0]


def test_refcount_repeated_frame(memory):
    f = memory.alloc(1, owner=1)
    memory.get_refs(array("Q", [f[0]] * 3))
    assert memory.refcounts(f)[0] == 3
    with pytest.raises(HwError):
        memory.put_refs(array("Q", [f[0]] * 4))
    assert memory.refcounts(f)[0] == 3


def test_free_checks(memory):
    f = memory.alloc(2, owner=1)
    memory.get_refs(f[1:])
    with pytest.raises(HwError) as e:
        memory.free(f)
    assert (e.value.status, e.value.index) == (Status.REFCOUNT, 1)
    assert memory.used == 2
    memory.put_refs(f[1:])
    memory.free(f)
    assert memory.used == 0
    assert list(memory.owners(f)) == [OWNER_NONE] * 2
    with pytest.raises(HwError) as e:
        memory.free(f[:1])  # double free
    assert e.value.status == Status.BADFRAME


def test_freed_frames_come_back_zeroed(memory):
    f = memory.alloc(1, owner=1)
    memory.write(f[0] << 12, b"dirty")
    memory.free(f)
    g = memory.alloc(1, owner=1)
    assert g[0] == f[0] and memory.read(g[0] << 12, 5) == bytes(5)


def test_read_write_bounds(memory):
    memory.write(4094, b"abcd")
    assert memory.read(4094, 4) == b"abcd"
    memory.write(memory.size - 2, b"zz")
    for maddr, n in ((memory.size - 1, 2), (memory.size + 1, 0),
                     (1 << 63, 1)):
        with pytest.raises(HwError):
            memory.read(maddr, n)
        with pytest.raises(HwError):
            memory.write(maddr, bytes(n))


def test_metadata_bounds(memory):
    with pytest.raises(HwError) as e:
        memory.refcounts(array("Q", [0, memory.nframes]))
    assert e.value.index == 1
    with pytest.raises(TypeError):
        memory.refcounts(array("I", [0]))
    with pytest.raises(ValueError):
        memory.get_refs(range(0, 10, 2))


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_m2p_records_the_gfn_of_each_frame(impl):
    from xenemu.hw import native, reference
    Memory = native.Memory if impl == "native" else reference.Memory
    m = Memory(1 << 24)
    mfns = m.alloc(4, owner=3)
    m.set_m2p(mfns, 0x100)
    assert list(m.m2p(mfns)) == [0x100, 0x101, 0x102, 0x103]
    with pytest.raises(HwError) as info:
        m.set_m2p(array("Q", [mfns[0], m.nframes + 5]), 0)
    assert info.value.status == Status.BADFRAME and info.value.index == 1
    assert m.m2p(mfns[:1])[0] == 0x100    # all or nothing
    # Frames not in use (or outside the memory) have no gfn.
    assert list(m.m2p(array("Q", [m.nframes - 1, 1 << 50]))) == [GFN_INVALID] * 2


# --- fault injection (fail-nth) and references taken page by page -------------

def test_take_refs_keeps_the_prefix_and_names_why_it_stopped(hw_impl, memory):
    mfns = memory.alloc(4, owner=1)
    bad = array("Q", [mfns[0], mfns[1], memory.nframes + 5, mfns[2]])
    assert memory.take_refs(bad) == (2, hw_impl.Status.BADFRAME)
    assert list(memory.refcounts(mfns)) == [1, 1, 0, 0]
    assert memory.take_refs(range(mfns[3], mfns[3] + 1)) == (1, hw_impl.Status.OK)


def test_the_nth_reference_fails_once_then_the_injector_is_spent(hw_impl, memory):
    from xenemu.hw.common import InjectSite
    mfns = memory.alloc(8, owner=1)
    memory.inject(InjectSite.REF, 3)
    assert memory.take_refs(mfns[:2]) == (2, hw_impl.Status.OK)
    assert memory.take_refs(mfns[2:]) == (0, hw_impl.Status.INJECTED)
    state = memory.injection()
    assert (state.remaining, state.seen, state.fired) == (0, 3, InjectSite.REF)
    assert memory.take_refs(mfns[2:]) == (6, hw_impl.Status.OK)
    # The all-or-nothing form fails the same way and takes nothing.
    memory.put_refs(mfns)
    memory.inject(InjectSite.REF | InjectSite.TABLE, 5)
    with pytest.raises(hw_impl.HwError) as e:
        memory.get_refs(mfns)
    assert (e.value.status, e.value.index) == (hw_impl.Status.INJECTED, 4)
    assert list(memory.refcounts(mfns)) == [0] * 8
    # Other sites and dropping references are not events.
    memory.inject(InjectSite.TABLE, 1)
    memory.get_refs(mfns)
    memory.put_refs(mfns)
    assert memory.injection().seen == 0


def test_injector_arguments(hw_impl, memory):
    from xenemu.hw.common import InjectSite
    for sites in (0, 8, InjectSite.ALL | 16):
        with pytest.raises(hw_impl.HwError):
            memory.inject(sites, 1)
    memory.inject(0, 0)        # disarming takes any sites
    assert memory.injection() == (InjectSite(0), 0, 0, None)
