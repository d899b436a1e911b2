"""Revision 2's p2m (../shared/reference/pv-iommu-rev2.md §6.1, v7's
get_paged_frame): foreign frames, MMIO, shared pages and paged-out gfns as
map_pages sees them, through the control socket's p2m_set and the
in-process client; revision 1's answers for the same types unchanged.

Every machine here is recorded and its trace replayed byte for byte
afterwards, with the invariant check (support.checked_local)."""

from __future__ import annotations

import dataclasses
from array import array
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from support import DaemonProcess, assert_replays, checked_local
from xenemu.client import RevisionTwoClient
from xenemu import snapshot
from xenemu.ctl import ControlError
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import DomainConfig, default_machine

DEV0 = "0000:00:02.0"                    # dom0's
DEV1 = "0000:01:00.0"                    # guest1's
DATA = b"owner's page \x01\x02"


def machine(revision: int = 2):
    base = default_machine(revision)
    return dataclasses.replace(base, domains=base.domains + (
        DomainConfig(domid=2, name="other", memory_mib=16),))


@pytest.fixture
def m(tmp_path):
    with checked_local(machine(), tmp_path / "p2m.xt") as local:
        yield local


def dma_read(m, sbdf: int, dfn: int, n: int = len(DATA)) -> bytes:
    got = m.ctl("dma", sbdf=sbdf, addr=dfn << 12, length=n)
    assert not got["faulted"], got
    return got["data"]


def test_foreign_frame_is_eperm_for_a_guest_and_the_owners_frame_for_dom0(m):
    d0, d1 = m.client(0), m.client(1)
    m.ctl("mem_write", domid=2, gfn=0x30, data=DATA)
    m.ctl("p2m_set", domid=0, gfn=0x100, type="foreign", owner=2, owner_gfn=0x30)
    m.ctl("p2m_set", domid=1, gfn=0x100, type="foreign", owner=2, owner_gfn=0x30)
    assert m.ctl("p2m_get", domid=0, gfn=0x100) == {"type": "foreign", "owner": 2,
                                                    "owner_gfn": 0x30}
    assert d0.init(4, 4).ok and d1.init(4, 4).ok                # context 1 each
    # A guest: -EPERM at the foreign page, the pages before it mapped (v7).
    r = d1.map_pages(1, 0xFE, 0x10, 4)
    assert (r.name, r.op.mapped) == ("-EPERM", 2)
    # Through remote_cmd the target is d1, not the hardware domain: -EPERM too.
    inner = v2.encode(v2.SUBOPS_BY_NUMBER[v2.IOMMU_map_pages], ctx_no=1, gfn=0x100,
                      dfn=0x30, nr_pages=1, map_flags=3)
    r = d0.remote_cmd(1, v2.IOMMU_map_pages, inner)
    assert (r.name, r.inner_op.mapped) == ("-EPERM", 0)
    # The hardware domain: the owner's frame, its DMA reaches the owner's page.
    r = d0.map_pages(1, 0xFF, 0x20, 2)
    assert (r.name, r.op.mapped) == ("0", 2)
    assert d0.reattach_device(1, 0, 0, 0x10).ok
    assert dma_read(m, DEV0, 0x21) == DATA
    assert m.ctl("check")["consistent"]
    # The check counts that reference on the owner (16 MiB: 4096 pages 1:1, and
    # the foreign one): one more is a leak it names.
    frame = array("Q", [m.hv.domains[2].p2m.mfns[0x30]])
    m.hv.memory.get_refs(frame)
    assert m.ctl("check")["problems"] == [
        "d2: 4098 page references for 4097 mappings (foreign: 1 lent, 0 borrowed)"]
    m.hv.memory.put_refs(frame)
    # The mapping holds a reference on the owner's frame: the owner can neither
    # page it out nor be destroyed while it is mapped.
    with pytest.raises(ControlError, match="mapped by d0 at gfn 0x100 .foreign."):
        m.ctl("p2m_set", domid=2, gfn=0x30, type="paged_out")
    with pytest.raises(ControlError, match="d2's frames hold 1 reference"):
        m.ctl("domain_destroy", domid=2)
    # A conflict on the foreign page: -EADDRINUSE, as for RAM.
    assert d0.map_pages(1, 0x100, 0x21, 1).name == "-EADDRINUSE"
    # Unmapped, the reference goes; the owner's destruction then revokes the
    # foreign entries pointing at it, and mapping them is -ENOENT (no frame).
    assert d0.unmap_pages(1, 0x20, 2).op.unmapped == 2
    assert m.ctl("check")["consistent"]
    m.ctl("domain_destroy", domid=2)
    assert m.ctl("p2m_get", domid=0, gfn=0x100) == {"type": "invalid"}
    assert d0.map_pages(1, 0x100, 0x20, 1).name == "-ENOENT"


def test_foreign_references_leave_with_the_mappers_context(m):
    d0 = m.client(0)
    m.ctl("p2m_set", domid=0, gfn=0x100, type="foreign", owner=2, owner_gfn=0x30)
    assert d0.init(4, 4).ok and d0.alloc_context().op.ctx_no == 2
    assert d0.map_pages(1, 0x100, 0x20, 1).ok and d0.map_pages(2, 0x100, 0x20, 1).ok
    assert d0.free_context(1).ok                        # its reference goes with it
    with pytest.raises(ControlError, match="d2's frames hold 1 reference"):
        m.ctl("domain_destroy", domid=2)
    # The foreign entry can go while mapped: the mapping keeps its reference.
    m.ctl("p2m_set", domid=0, gfn=0x100, type="ram")
    assert m.ctl("check")["consistent"]
    assert d0.free_context(2).ok
    m.ctl("domain_destroy", domid=2)


def test_p2m_set_foreign_is_refused_in_one_line(m):
    refused = {
        "owner d9 does not exist": dict(owner=9, owner_gfn=0),
        "owner d2 has no RAM frame at gfn 0x1000": dict(owner=2, owner_gfn=0x1000),
        "cannot map its own frame": dict(owner=1, owner_gfn=0),
        "needs both owner and owner_gfn": dict(owner=2),
    }
    for message, args in refused.items():
        with pytest.raises(ControlError, match=message):
            m.ctl("p2m_set", domid=1, gfn=0x10, type="foreign", **args)
    with pytest.raises(ControlError, match="go with type=foreign"):
        m.ctl("p2m_set", domid=1, gfn=0x10, type="ram", owner=2, owner_gfn=0)
    m.ctl("p2m_set", domid=2, gfn=0x31, type="paged_out")
    with pytest.raises(ControlError, match="no RAM frame at gfn 0x31"):
        m.ctl("p2m_set", domid=1, gfn=0x10, type="foreign", owner=2, owner_gfn=0x31)
    with pytest.raises(ControlError, match="owner_gfn"):
        m.ctl("p2m_set", domid=1, gfn=0x10, type="foreign", owner=2, owner_gfn=-1)
    assert m.ctl("p2m_get", domid=1, gfn=0x10) == {"type": "ram"}


def test_mmio_maps_and_shared_is_unshared_then_mapped(m):
    d1 = m.client(1)
    assert d1.init(4, 4).ok
    assert d1.reattach_device(1, 0, 1, 0).ok
    # MMIO (a passthrough BAR): mapped (revision 1: -EPERM), a run of it at once.
    m.ctl("p2m_set", domid=1, gfn=0x40, type="mmio")
    m.ctl("p2m_set", domid=1, gfn=0x41, type="mmio")
    assert d1.map_pages(1, 0x3F, 0x3F, 4).op.mapped == 4
    assert d1.map_pages(1, 0x41, 0x42, 1).name == "-EADDRINUSE"
    # Shared: unshared on map, the page becomes the domain's private RAM with
    # its content, then mapped.
    m.ctl("mem_write", domid=1, gfn=0x51, data=DATA)
    m.ctl("p2m_set", domid=1, gfn=0x51, type="shared")
    r = d1.map_pages(1, 0x50, 0x50, 3)
    assert (r.name, r.op.mapped) == ("0", 3)
    assert m.ctl("p2m_get", domid=1, gfn=0x51) == {"type": "ram"}
    assert dma_read(m, DEV1, 0x51) == DATA
    # Unsharing comes before the conflict check, as in get_paged_frame.
    m.ctl("p2m_set", domid=1, gfn=0x60, type="shared")
    assert d1.map_pages(1, 0x60, 0x50, 1).name == "-EADDRINUSE"
    assert m.ctl("p2m_get", domid=1, gfn=0x60) == {"type": "ram"}
    # Paged out: -ENOENT and no page-in (the type stays).
    m.ctl("p2m_set", domid=1, gfn=0x70, type="paged_out")
    assert d1.map_pages(1, 0x70, 0x70, 1).name == "-ENOENT"
    assert m.ctl("p2m_get", domid=1, gfn=0x70) == {"type": "paged_out"}
    assert d1.unmap_pages(1, 0x3F, 4).ok and d1.unmap_pages(1, 0x50, 3).ok


def test_revision_1_has_no_foreign_type(tmp_path):
    """Revision 1's map answers for mmio (-EPERM) and shared (-EINVAL) are
    test_hypervisor.py's test_map_stops_at_a_gfn_that_is_not_ram, unchanged."""
    with checked_local(machine(1), tmp_path / "rev1.xt") as m:
        with pytest.raises(ControlError, match="only a revision-2 machine"):
            m.ctl("p2m_set", domid=0, gfn=0x10, type="foreign", owner=1, owner_gfn=0)
        assert m.ctl("p2m_get", domid=0, gfn=0x10) == {"type": "ram"}
        snap = snapshot.take(m.hv)
    snap["domains"][1]["p2m"] = [[0x10, 1, "foreign"]]
    snap["domains"][1]["foreign"] = [[0x10, 0, 0x30]]
    with pytest.raises(snapshot.SnapshotError, match=r"domains\[1\].foreign: only a revision-2"):
        snapshot.restore(snap)


def test_foreign_entries_survive_a_snapshot(tmp_path):
    path = tmp_path / "p2m.xs"
    first = DaemonProcess(tmp_path / "first", "--abi-revision", "2")

    def ctl(*args):
        xenemu = Path(sys.executable).parent / "xenemu"     # the installed command
        return subprocess.run([str(xenemu), "ctl", "--socket", first.control, *args],
                              capture_output=True, text=True)

    try:
        # The command line: set, read back, and a refusal in one line, status 1.
        assert ctl("p2m_set", "domid=0", "gfn=0x100", "type=foreign", "owner=1",
                   "owner_gfn=0x30").returncode == 0
        out = ctl("p2m_get", "domid=0", "gfn=0x100")
        assert out.returncode == 0 and "foreign" in out.stdout and "48" in out.stdout
        bad = ctl("p2m_set", "domid=0", "gfn=0x101", "type=foreign", "owner=5", "owner_gfn=0")
        assert bad.returncode == 1 and bad.stderr.strip().endswith("owner d5 does not exist")
        assert len(bad.stderr.strip().splitlines()) == 1
        first.ctl("p2m_set", domid=1, gfn=0x40, type="mmio")
        first.ctl("p2m_set", domid=1, gfn=0x41, type="shared")
        # A mapping of another domain's frame cannot be saved: refused in one line.
        with RevisionTwoClient(first.socket(0)) as dom0:
            assert dom0.init(2, 2).ok
            assert dom0.map_pages(1, 0x100, 0x20, 1).ok
            with pytest.raises(ControlError, match=r"foreign: 1 of d1\) cannot be saved"):
                first.ctl("snapshot", path=str(path))
            assert dom0.unmap_pages(1, 0x20, 1).ok
        first.ctl("snapshot", path=str(path))
    finally:
        assert first.stop() == 0
    assert_replays(first.trace)
    again = DaemonProcess(tmp_path / "again", "--restore", str(path))
    try:
        assert again.ctl("p2m_get", domid=0, gfn=0x100) == {"type": "foreign", "owner": 1,
                                                            "owner_gfn": 0x30}
        assert again.ctl("p2m_get", domid=1, gfn=0x41)["type"] == "shared"
        with RevisionTwoClient(again.socket(0)) as dom0:
            assert dom0.map_pages(1, 0x100, 0x20, 1).ok      # context 1 restored
        assert again.ctl("check")["consistent"]
    finally:
        assert again.stop() == 0
    assert_replays(again.trace)


def test_a_snapshot_whose_foreign_rows_disagree_is_refused(tmp_path):
    with checked_local(machine(), tmp_path / "p2m.xt") as m:
        m.ctl("p2m_set", domid=1, gfn=0x10, type="foreign", owner=2, owner_gfn=0x30)
        good = snapshot.take(m.hv)
    assert good["domains"][1]["foreign"] == [[0x10, 2, 0x30]]
    for rows, message in (([], r"1 foreign gfns in the p2m runs, 0 in foreign"),
                          ([[0x11, 2, 0x30]], r"gfn 0x11 is not a foreign gfn"),
                          ([[0x10, 2, 1 << 40]], r"d2 has no RAM frame at gfn"),
                          ([[0x10, 7, 0]], r"d7 has no RAM frame")):
        bad = msgpack.unpackb(msgpack.packb(good))
        bad["domains"][1]["foreign"] = rows
        with pytest.raises(snapshot.SnapshotError, match=message):
            snapshot.restore(bad)
