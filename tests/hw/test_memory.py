"""Machine memory: frame allocator, per-frame metadata, byte access."""
from array import array

import pytest

from xenemu.hw import GFN_INVALID, OWNER_NONE, HwError, Status


def test_size_validation(hw_impl):
    for bad in (0, 4095, 4097):
        with pytest.raises(ValueError):
            hw_impl.Machine(bad)


def test_default_machine_is_lazy(hw_impl):
    m = hw_impl.Machine()
    assert m.nframes == 1 << 20 and m.used == 0
    assert m.read(m.size - 8, 8) == bytes(8)


def test_alloc_watermark_then_lifo_reuse(machine):
    a = machine.alloc(3, owner=5)
    assert list(a) == [0, 1, 2] and machine.used == 3
    machine.free(array("Q", [1, 0]))
    assert list(machine.alloc(3, owner=5)) == [0, 1, 3]


def test_alloc_all_or_nothing(hw_impl):
    m = hw_impl.Machine(4 * 4096)
    with pytest.raises(HwError) as e:
        m.alloc(5, owner=1)
    assert e.value.status == Status.NOMEM and m.used == 0
    assert len(m.alloc(4, owner=1)) == 4
    with pytest.raises(HwError):
        m.alloc(1, owner=1)


def test_owner_and_refcounts(machine):
    f = machine.alloc(4, owner=7)
    assert list(machine.owners(f)) == [7] * 4
    assert list(machine.refcounts(f)) == [0] * 4
    machine.get_refs(f)
    machine.get_refs(range(f[0], f[0] + 2))
    assert list(machine.refcounts(f)) == [2, 2, 1, 1]
    machine.put_refs(array("Q", [f[3]]))
    assert list(machine.refcounts(f)) == [2, 2, 1, 0]
    machine.set_owner(f[:2], 9)
    assert list(machine.owners(f)) == [9, 9, 7, 7]


def test_refs_all_or_nothing(machine):
    f = machine.alloc(3, owner=1)
    machine.get_refs(f[:1])
    with pytest.raises(HwError) as e:
        machine.put_refs(f)  # f[1] has no reference to drop
    assert (e.value.status, e.value.index) == (Status.REFCOUNT, 1)
    assert list(machine.refcounts(f)) == [1, 0, 0]
    with pytest.raises(HwError) as e:
        machine.get_refs(array("Q", [f[0], machine.nframes]))
    assert (e.value.status, e.value.index) == (Status.BADFRAME, 1)
    with pytest.raises(HwError) as e:
        machine.get_refs(array("Q", [f[0], 100]))  # not allocated
    assert e.value.status == Status.BADFRAME
    assert list(machine.refcounts(f)) == [1, 0, 0]


def test_refcount_repeated_frame(machine):
    f = machine.alloc(1, owner=1)
    machine.get_refs(array("Q", [f[0]] * 3))
    assert machine.refcounts(f)[0] == 3
    with pytest.raises(HwError):
        machine.put_refs(array("Q", [f[0]] * 4))
    assert machine.refcounts(f)[0] == 3


def test_free_checks(machine):
    f = machine.alloc(2, owner=1)
    machine.get_refs(f[1:])
    with pytest.raises(HwError) as e:
        machine.free(f)
    assert (e.value.status, e.value.index) == (Status.REFCOUNT, 1)
    assert machine.used == 2
    machine.put_refs(f[1:])
    machine.free(f)
    assert machine.used == 0
    assert list(machine.owners(f)) == [OWNER_NONE] * 2
    with pytest.raises(HwError) as e:
        machine.free(f[:1])  # double free
    assert e.value.status == Status.BADFRAME


def test_freed_frames_come_back_zeroed(machine):
    f = machine.alloc(1, owner=1)
    machine.write(f[0] << 12, b"dirty")
    machine.free(f)
    g = machine.alloc(1, owner=1)
    assert g[0] == f[0] and machine.read(g[0] << 12, 5) == bytes(5)


def test_read_write_bounds(machine):
    machine.write(4094, b"abcd")
    assert machine.read(4094, 4) == b"abcd"
    machine.write(machine.size - 2, b"zz")
    for maddr, n in ((machine.size - 1, 2), (machine.size + 1, 0),
                     (1 << 63, 1)):
        with pytest.raises(HwError):
            machine.read(maddr, n)
        with pytest.raises(HwError):
            machine.write(maddr, bytes(n))


def test_metadata_bounds(machine):
    with pytest.raises(HwError) as e:
        machine.refcounts(array("Q", [0, machine.nframes]))
    assert e.value.index == 1
    with pytest.raises(TypeError):
        machine.refcounts(array("I", [0]))
    with pytest.raises(ValueError):
        machine.get_refs(range(0, 10, 2))


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_m2p_records_the_gfn_of_each_frame(impl):
    from xenemu.hw import native, reference
    Machine = native.Machine if impl == "native" else reference.Machine
    m = Machine(1 << 24)
    mfns = m.alloc(4, owner=3)
    m.set_m2p(mfns, 0x100)
    assert list(m.m2p(mfns)) == [0x100, 0x101, 0x102, 0x103]
    with pytest.raises(HwError) as info:
        m.set_m2p(array("Q", [mfns[0], m.nframes + 5]), 0)
    assert info.value.status == Status.BADFRAME and info.value.index == 1
    assert m.m2p(mfns[:1])[0] == 0x100    # all or nothing
    # Frames not in use (or outside the machine) have no gfn.
    assert list(m.m2p(array("Q", [m.nframes - 1, 1 << 50]))) == [GFN_INVALID] * 2


# --- fault injection (fail-nth) and references taken page by page -------------

def test_take_refs_keeps_the_prefix_and_names_why_it_stopped(hw_impl, machine):
    mfns = machine.alloc(4, owner=1)
    bad = array("Q", [mfns[0], mfns[1], machine.nframes + 5, mfns[2]])
    assert machine.take_refs(bad) == (2, hw_impl.Status.BADFRAME)
    assert list(machine.refcounts(mfns)) == [1, 1, 0, 0]
    assert machine.take_refs(range(mfns[3], mfns[3] + 1)) == (1, hw_impl.Status.OK)


def test_the_nth_reference_fails_once_then_the_injector_is_spent(hw_impl, machine):
    from xenemu.hw.common import InjectSite
    mfns = machine.alloc(8, owner=1)
    machine.inject(InjectSite.REF, 3)
    assert machine.take_refs(mfns[:2]) == (2, hw_impl.Status.OK)
    assert machine.take_refs(mfns[2:]) == (0, hw_impl.Status.INJECTED)
    state = machine.injection()
    assert (state.remaining, state.seen, state.fired) == (0, 3, InjectSite.REF)
    assert machine.take_refs(mfns[2:]) == (6, hw_impl.Status.OK)
    # The all-or-nothing form fails the same way and takes nothing.
    machine.put_refs(mfns)
    machine.inject(InjectSite.REF | InjectSite.TABLE, 5)
    with pytest.raises(hw_impl.HwError) as e:
        machine.get_refs(mfns)
    assert (e.value.status, e.value.index) == (hw_impl.Status.INJECTED, 4)
    assert list(machine.refcounts(mfns)) == [0] * 8
    # Other sites and dropping references are not events.
    machine.inject(InjectSite.TABLE, 1)
    machine.get_refs(mfns)
    machine.put_refs(mfns)
    assert machine.injection().seen == 0


def test_injector_arguments(hw_impl, machine):
    from xenemu.hw.common import InjectSite
    for sites in (0, 8, InjectSite.ALL | 16):
        with pytest.raises(hw_impl.HwError):
            machine.inject(sites, 1)
    machine.inject(0, 0)        # disarming takes any sites
    assert machine.injection() == (InjectSite(0), 0, 0, None)
