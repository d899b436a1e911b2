"""__HYPERVISOR_memory_op's XENMEM_reserved_device_memory_map (issue 15),
every return path of xen/common/memory.c's case through the socket, on a
revision-1 and a revision-2 daemon, then the trace: `trace show` and replay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT, DaemonProcess, assert_replays, compile_c
from xenemu import abi
from xenemu.client import OP_GADDR, RDM_BUFFER_GADDR, RevisionTwoClient, XenemuClient, rdm_frame
from xenemu.errno import XenErrno as E
from xenemu.hypercalls import memory_op
from xenemu.pci import parse_sbdf
from xenemu.wire import Region

RDM = memory_op.XENMEM_reserved_device_memory_map
ALL = memory_op.XENMEM_RDM_ALL
USB, GPU, OTHER = (parse_sbdf(s) for s in ("0000:00:04.0", "0000:00:09.0", "0000:01:00.0"))

# Three ranges of two devices of d0, not in pfn order (Xen reports them in
# the DMAR table's order, the file's).
MACHINE = """pv_iommu_revision = {revision}
address_width = {width}
[[domain]]
domid = 0
hardware = true
memory_mib = 64
devices = ["0000:00:04.0", "0000:00:09.0"]
[[domain]]
domid = 1
memory_mib = 16
devices = ["0000:01:00.0"]
[[rmrr]]
sbdf = "0000:00:09.0"
start_pfn = 0x3000
nr_pages = 16
[[rmrr]]
sbdf = "0000:00:04.0"
start_pfn = 0xE8
nr_pages = 2
[[rmrr]]
sbdf = "0000:00:09.0"
start_pfn = 0x100
nr_pages = 1
"""
EVERY = [(0x3000, 16), (0xE8, 2), (0x100, 1)]


@pytest.fixture(params=[1, 2], ids=["rev1", "rev2"])
def served(request, tmp_path):
    revision = request.param
    cfg = tmp_path / "m.toml"
    cfg.write_text(MACHINE.format(revision=revision, width=48 if revision == 2 else 39))
    d = DaemonProcess(tmp_path, "--config", str(cfg))
    client = RevisionTwoClient if revision == 2 else XenemuClient
    try:
        with client(d.sockets[0]) as c0, client(d.sockets[1]) as c1:
            yield d, c0, c1
    finally:
        assert d.stop() == 0


def test_the_linux_drivers_two_calls_count_then_fetch(served):
    d, c0, _ = served
    count = c0.reserved_device_memory_map(0, 0, GPU)        # NULL buffer, nr_entries 0
    assert (count.ret, count.nr_entries) == (-E.ENOBUFS, 2)
    got = c0.reserved_device_memory_map(0, count.nr_entries, GPU)
    assert (got.ret, got.nr_entries, got.entries) == (0, 2, [(0x3000, 16), (0x100, 1)])
    one = c0.reserved_device_memory_map(0, 4, USB)           # more room than needed
    assert (one.ret, one.nr_entries, one.entries) == (0, 1, [(0xE8, 2)])


def test_every_range_with_rdm_all_and_a_buffer_too_small(served):
    _, c0, _ = served
    r = c0.reserved_device_memory_map(ALL, 3, 0xFFFF_FFFF)   # dev ignored
    assert (r.ret, r.nr_entries, r.entries) == (0, 3, EVERY)
    short = c0.reserved_device_memory_map(ALL, 2)
    # The entries that fit are written; nr_entries is the number there are.
    assert (short.ret, short.nr_entries) == (-E.ENOBUFS, 3)
    assert short.entries == EVERY[:2]


def test_a_device_without_ranges_and_one_of_another_domain(served):
    """Xen checks nothing of the device or the caller: any domain learns any
    device's ranges (none for a device without them)."""
    _, c0, c1 = served
    none = c0.reserved_device_memory_map(0, 4, OTHER)
    assert (none.ret, none.nr_entries, none.entries) == (0, 0, [])
    theirs = c1.reserved_device_memory_map(0, 1, USB)
    assert (theirs.ret, theirs.nr_entries, theirs.entries) == (0, 1, [(0xE8, 2)])


def test_refusals_before_any_range_is_walked(served):
    _, c0, _ = served
    for flags in (2, 0x80000000, ALL | 4):
        r = c0.reserved_device_memory_map(flags, 1, USB)
        assert (r.ret, r.nr_entries, r.entries) == (-E.EINVAL, 1, [(0, 0)])  # nothing written
    for extent in (1, 1 << 25, 1 << 40):                     # cmd >> MEMOP_EXTENT_SHIFT
        r = c0.reserved_device_memory_map(0, 1, USB, cmd=RDM | extent << 6)
        assert (r.ret, r.nr_entries) == (-E.EINVAL, 1)
    for cmd in (0, 2, 26, 28, 63, 2 | 1 << 6):               # not implemented: -ENOSYS
        r = c0.reserved_device_memory_map(0, 1, USB, cmd=cmd)
        assert (r.ret, r.nr_entries) == (-E.ENOSYS, 1)


def test_efault_paths(served):
    _, c0, _ = served
    # No struct at the handle: copy_from_guest fails.
    assert c0.hypercall(abi.HYPERVISOR_memory_op, (RDM, OP_GADDR), ()).ret == -E.EFAULT
    args, regions = rdm_frame(0, 1, USB, RDM)
    assert c0.hypercall(abi.HYPERVISOR_memory_op, args,
                        (Region(OP_GADDR, regions[0].data[:23]),)).ret == -E.EFAULT
    # A buffer missing: the entry's copy fails, nr_entries is what was counted so far.
    reply = c0.hypercall(abi.HYPERVISOR_memory_op, args, regions[:1])
    assert reply.ret == -E.EFAULT
    assert memory_op.ReservedDeviceMemoryMap.parse(reply.regions[0].data).nr_entries == 0
    # A buffer with room for one entry of the two the struct claims: the
    # first is written, the second fails.
    args, regions = rdm_frame(ALL, 2, 0, RDM)
    reply = c0.hypercall(abi.HYPERVISOR_memory_op, args,
                         (regions[0], Region(RDM_BUFFER_GADDR, bytes(16))))
    assert reply.ret == -E.EFAULT
    assert memory_op.ReservedDeviceMemoryMap.parse(reply.regions[0].data).nr_entries == 1
    assert memory_op.entries(reply.regions[1].data) == EVERY[:1]


def test_trace_show_prints_memory_op_and_the_trace_replays(served):
    d, c0, _ = served
    assert c0.reserved_device_memory_map(0, 0, GPU).ret == -E.ENOBUFS
    assert c0.reserved_device_memory_map(0, 2, GPU).ok
    assert c0.reserved_device_memory_map(0, 1, USB, cmd=5).ret == -E.ENOSYS
    c0.close()
    assert d.stop() == 0
    shown = subprocess.run([sys.executable, "-m", "xenemu.cli", "trace", "show", str(d.trace)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if "memory_op" in line]
    assert any("reserved_device_memory_map" in line and "dev=0000:00:09.0" in line
               and "-ENOBUFS" in line and "nr_entries=2" in line for line in lines), lines
    assert any("-ENOSYS" in line for line in lines), lines
    assert_replays(d.trace)


async def test_the_trio_client_and_the_in_process_one_on_the_default_machine(daemon, local):
    from xenemu.client import open_trio_client
    async with open_trio_client(daemon.sockets[0]) as c:
        count = await c.reserved_device_memory_map(0, 0, USB)
        got = await c.reserved_device_memory_map(0, count.nr_entries, USB)
    assert (count.ret, count.nr_entries, got.ret, got.entries) == (-E.ENOBUFS, 1, 0, [(0xE8, 2)])
    r = local.client(0).reserved_device_memory_map(ALL, 1)
    assert (r.ret, r.nr_entries, r.entries) == (0, 1, [(0xE8, 2)])


@pytest.fixture(scope="module")
def rdm_driver(c_build, tmp_path_factory):
    """tests/c/rdm_driver.c built against each revision's include roots."""
    out = tmp_path_factory.mktemp("c")
    return {rev: compile_c(ROOT / "tests" / "c" / "rdm_driver.c", out / f"rdm_driver{rev}",
                           str(c_build / "libxenemu.a"), abi_revision=rev) for rev in (1, 2)}


@pytest.mark.parametrize("built", [1, 2], ids=["abi", "abi-rev2"])
def test_the_c_client_makes_the_linux_drivers_two_calls(served, rdm_driver, built):
    d, _, _ = served

    def run(*argv):
        return subprocess.run([str(rdm_driver[built]), *argv], capture_output=True, text=True,
                              timeout=60, env={"XENEMU_SOCKET": str(d.sockets[0])})

    gpu = run("0", "0", str(0x09 << 3), "0")
    assert gpu.returncode == 0, gpu
    assert gpu.stdout.splitlines() == [f"count {-E.ENOBUFS} 2", "fetch 0 2",
                                       "0x3000 16", "0x100 1", f"other {-E.ENOSYS}"]
    every = run("0", "0", "0", "1")
    assert every.stdout.splitlines()[1:5] == ["fetch 0 3", "0x3000 16", "0xe8 2", "0x100 1"]
    none = run("0", "1", "0", "0")
    assert (none.returncode, none.stdout) == (0, "count 0 0\n")
    bad = run("0", "0", "0", "2")
    assert (bad.returncode, bad.stdout) == (1, f"count {-E.EINVAL} 0\n")


def test_the_debug_line_shows_the_inputs_and_names_other_commands(tmp_path, caplog):
    """One line per call saying what was asked (the struct as the guest gave
    it, though the handler copies it in itself) and, for a command xenemu
    does not serve, its public/memory.h name; remote_cmd likewise."""
    import logging

    from support import checked_local
    from xenemu.machine import default_machine
    caplog.set_level(logging.DEBUG, logger="xenemu")
    with checked_local(default_machine(2), tmp_path / "t.xt") as m:
        c = m.client(0)
        c.reserved_device_memory_map(0, 0, USB)
        c.reserved_device_memory_map(0, 4, USB, cmd=6)
        c.remote_cmd(1, 2)
    lines = [r.getMessage() for r in caplog.records if "d0:" in r.getMessage()]
    assert ("memory_op d0: reserved_device_memory_map flags=0x0 nr_entries=0 buffer=0x0 "
            "dev=0000:00:04.0 -> -ENOBUFS nr_entries=1 (1 entries, room for 0)") in lines
    assert ("memory_op d0: XENMEM_populate_physmap (6) -> -ENOSYS "
            "(xenemu does not implement it)") in lines
    assert any("remote_cmd domid=1 subop=2 arg=0x0 -> -EFAULT" in line for line in lines)
