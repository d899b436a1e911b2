"""Every PV-IOMMU sub-op and error path, and the machine they act on (DMA,
faults, p2m types, quarantine) through control requests: in process (the
`local` fixture: the engine the daemon drives, the clients' helpers), and
through the daemon's sockets where they are what a test is about (a domain's
socket going away, the control socket, `xenemu ctl`, calls racing DMA on two
connections). Both fixtures check the invariants and replay the trace after
each test."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scenarios
from support import assert_replays
from xenemu import abi
from xenemu.client import XenemuClient
from xenemu.ctl import ControlError
from xenemu.errno import XenErrno as E
from xenemu.inprocess import Local
from xenemu.machine import load_machine

NIC = "0000:00:03.0"
NIC_DEVFN = 3 << 3
GPU = "0000:00:02.0"


@pytest.fixture
def xen(local):
    """d0's client, in process."""
    return local.client(0)


def new_ctx(xen) -> int:
    res = xen.alloc_context()
    assert res.ret == 0, res.name
    return res.op.ctx_no


# -- alloc / free ---------------------------------------------------------------

def test_alloc_gives_lowest_free_ids_until_enospc(xen):
    ids = [new_ctx(xen) for _ in range(128)]
    assert ids == list(range(1, 129))
    full = xen.alloc_context()
    assert full.ret == -E.ENOSPC
    assert xen.free_context(57).ret == 0
    assert new_ctx(xen) == 57
    for ctx_no in ids:
        assert xen.free_context(ctx_no).ret == 0


def test_alloc_ignores_the_clone_flag_like_the_reference(xen):
    ctx = xen.alloc_context(abi.IOMMU_CREATE_clone).op.ctx_no
    assert xen.lookup_page(ctx, 0x100).ret == -E.ENOENT     # nothing cloned
    assert xen.free_context(ctx).ret == 0


def test_clone_is_honoured_when_the_daemon_is_told_to(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text("honour_clone = true\n[[domain]]\ndomid = 0\nhardware = true\n"
                   "memory_mib = 8\ncontexts = 2\n")
    trace = tmp_path / "trace.xt"
    with Local(dataclasses.replace(load_machine(cfg), check_iotlb=True), record=trace) as m:
        x = m.client(0)
        res = x.alloc_context(abi.IOMMU_CREATE_clone)
        assert res.ret == 0
        look = x.lookup_page(res.op.ctx_no, 0x7FF)
        assert (look.ret, look.op.lookup_page.gfn) == (0, 0x7FF)
        assert x.lookup_page(res.op.ctx_no, 0x800).ret == -E.ENOENT   # beyond 8 MiB
        assert x.free_context(res.op.ctx_no).ret == 0
        assert m.ctl("check")["consistent"]
    assert_replays(trace)


def test_free_context_errors(xen):
    assert xen.free_context(0).ret == -E.EINVAL
    assert xen.free_context(5).ret == -E.ENOENT
    assert xen.free_context(500).ret == -E.ENOENT
    ctx = new_ctx(xen)
    assert xen.free_context(ctx).ret == 0
    assert xen.free_context(ctx).ret == -E.ENOENT


def test_free_with_devices_is_ebusy_without_the_flag_and_reattaches_with_it(xen, local):
    ctx = new_ctx(xen)
    assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
    assert xen.free_context(ctx).ret == -E.EBUSY
    # Still a normal context after -EBUSY (see the divergences).
    assert xen.map_pages(ctx, 0x10, 0x10, 1).ret == 0
    assert xen.free_context(ctx, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
    contexts = local.ctl("contexts", domid=0)["contexts"]
    assert [c["ctx_no"] for c in contexts] == [0]
    assert NIC in contexts[0]["devices"]


# -- reattach ---------------------------------------------------------------------

def test_reattach_errors_and_same_context(xen):
    ctx = new_ctx(xen)
    assert xen.reattach_device(ctx, bus=1, devfn=0).ret == -E.ENOENT    # d1's device
    assert xen.reattach_device(ctx, bus=0, devfn=0x7F).ret == -E.ENOENT  # no such device
    assert xen.reattach_device(99, bus=0, devfn=NIC_DEVFN).ret == -E.ENOENT
    assert xen.reattach_device(0, bus=0, devfn=NIC_DEVFN).ret == 0      # already there
    assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
    assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
    assert xen.reattach_device(0, bus=0, devfn=NIC_DEVFN).ret == 0
    assert xen.free_context(ctx).ret == 0


# -- map / unmap / lookup -----------------------------------------------------------

def test_map_lookup_unmap(xen):
    ctx = new_ctx(xen)
    res = xen.map_pages(ctx, gfn=0x1000, dfn=0x80000, nr_pages=256)
    assert (res.ret, res.op.map_pages.mapped) == (0, 256)
    for off in (0, 100, 255):
        look = xen.lookup_page(ctx, 0x80000 + off)
        assert (look.ret, look.op.lookup_page.gfn) == (0, 0x1000 + off)
    res = xen.unmap_pages(ctx, 0x80000, 256)
    assert (res.ret, res.op.unmap_pages.unmapped) == (0, 256)
    assert xen.lookup_page(ctx, 0x80000).ret == -E.ENOENT
    assert xen.free_context(ctx).ret == 0


def test_map_limit_and_invalid_context(xen):
    ctx = new_ctx(xen)
    raw = abi.encode_op(abi.IOMMUOP_map_pages, ctx, 3, "map_pages", gfn=1, dfn=1, nr_pages=257,
                        mapped=0xDEAD)
    res = xen.iommu_op(raw)
    assert res.ret == -E.E2BIG and res.op.map_pages.mapped == 0xDEAD   # untouched, copied back
    assert xen.map_pages(77, 1, 1, 1).ret == -E.EINVAL
    assert xen.unmap_pages(77, 1, 1).ret == -E.EINVAL
    assert xen.lookup_page(77, 1).ret == -E.EINVAL
    assert xen.unmap_pages(ctx, 1, 257).ret == -E.E2BIG
    assert xen.map_pages(ctx, 1, 1, 1, flags=0).ret == -E.EINVAL
    assert xen.free_context(ctx).ret == 0


def test_map_stops_at_first_conflict_with_partial_count(xen):
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, 0x200, 0x305, 1).ret == 0
    res = xen.map_pages(ctx, 0x100, 0x300, 16)
    assert (res.ret, res.op.map_pages.mapped) == (-E.EADDRINUSE, 5)
    assert xen.lookup_page(ctx, 0x304).op.lookup_page.gfn == 0x104
    assert xen.lookup_page(ctx, 0x305).op.lookup_page.gfn == 0x200   # the old mapping stays
    assert xen.lookup_page(ctx, 0x306).ret == -E.ENOENT
    res = xen.unmap_pages(ctx, 0x300, 16)
    assert (res.ret, res.op.unmap_pages.unmapped) == (-E.ENOENT, 6)
    assert xen.free_context(ctx).ret == 0


def test_map_into_the_default_context_conflicts_with_its_identity_map(xen):
    res = xen.map_pages(0, 0x10, 0x10, 1)
    assert (res.ret, res.op.map_pages.mapped) == (-E.EADDRINUSE, 0)
    beyond = 0x40000 + 5                              # dom0 has 1 GiB: gfns below 0x40000
    assert xen.map_pages(0, 0x10, beyond, 1).ret == 0
    assert xen.lookup_page(0, beyond).op.lookup_page.gfn == 0x10
    assert xen.unmap_pages(0, beyond, 1).ret == 0


def test_map_gfn_not_backed_is_eperm_after_the_backed_pages(xen):
    ctx = new_ctx(xen)
    res = xen.map_pages(ctx, 0x40000 - 3, 0x10, 8)
    assert (res.ret, res.op.map_pages.mapped) == (-E.EPERM, 3)
    assert xen.unmap_pages(ctx, 0x10, 3).ret == 0
    assert xen.free_context(ctx).ret == 0


def test_dfn_above_the_address_width(xen):
    ctx = new_ctx(xen)
    last = (1 << 27) - 1                              # 39-bit width: dfns below 2^27
    res = xen.map_pages(ctx, 0x10, last - 1, 4)
    assert (res.ret, res.op.map_pages.mapped) == (-E.ERANGE, 2)
    assert xen.lookup_page(ctx, last + 1).ret == -E.ENOENT
    res = xen.unmap_pages(ctx, last - 1, 4)
    assert (res.ret, res.op.unmap_pages.unmapped) == (-E.ENOENT, 2)
    assert xen.free_context(ctx).ret == 0


@pytest.mark.parametrize("ptype,err", [("paged_out", E.EIO), ("shared", E.EINVAL),
                                       ("mmio", E.EPERM), ("invalid", E.EPERM)])
def test_p2m_types_fail_at_their_page(xen, local, caplog, ptype, err):
    caplog.set_level(logging.DEBUG, logger="xenemu")
    local.ctl("p2m_set", domid=0, gfn=0x503, type=ptype)
    ctx = new_ctx(xen)
    res = xen.map_pages(ctx, 0x500, 0x900, 8)
    assert (res.ret, res.op.map_pages.mapped) == (-err, 3)
    assert f"-{err.name}" in caplog.text
    assert xen.unmap_pages(ctx, 0x900, 3).ret == 0
    assert xen.free_context(ctx).ret == 0
    local.ctl("p2m_set", domid=0, gfn=0x503, type="ram")


def test_paged_out_gfn_is_paged_in_after_a_delay(xen, local):
    local.ctl("p2m_set", domid=0, gfn=0x600, type="paged_out")
    ctx = new_ctx(xen)
    asked = time.monotonic()
    assert xen.map_pages(ctx, 0x600, 0x600, 1).ret == -E.EIO
    now_type = local.ctl("p2m_get", domid=0, gfn=0x600)["type"]
    # Paging in, unless a loaded machine let the 10 ms delay pass already.
    assert now_type == "paging_in" or (now_type == "ram" and time.monotonic() - asked >= 0.010)
    deadline = time.monotonic() + 5
    while (ret := xen.map_pages(ctx, 0x600, 0x600, 1).ret) == -E.EIO:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert ret == 0 and local.ctl("p2m_get", domid=0, gfn=0x600)["type"] == "ram"
    assert xen.map_pages(0, 0x600, 0x600, 1).ret == -E.EADDRINUSE   # identity map is back
    assert xen.unmap_pages(ctx, 0x600, 1).ret == 0
    assert xen.free_context(ctx).ret == 0


def test_a_mapped_page_cannot_be_paged_out(xen, local):
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, 0x700, 0x700, 1).ret == 0
    with pytest.raises(ControlError, match="mapped in 1 other place"):
        local.ctl("p2m_set", domid=0, gfn=0x700, type="paged_out")
    assert xen.unmap_pages(ctx, 0x700, 1).ret == 0
    assert xen.free_context(ctx).ret == 0


def test_paging_leaves_a_dfn_the_guest_remapped_in_context_0_alone(xen, local):
    """Context 0 follows the p2m at dfn == gfn only while the guest has not
    taken that dfn over: dfn 0x710 remapped to gfn 0x711 survives gfn 0x710
    paging out and in."""
    assert xen.unmap_pages(0, 0x710, 1).ret == 0
    assert xen.map_pages(0, 0x711, 0x710, 1).ret == 0
    local.ctl("p2m_set", domid=0, gfn=0x710, type="paged_out")
    assert xen.lookup_page(0, 0x710).op.lookup_page.gfn == 0x711
    local.ctl("p2m_set", domid=0, gfn=0x710, type="ram")
    assert xen.lookup_page(0, 0x710).op.lookup_page.gfn == 0x711
    assert local.ctl("check")["consistent"]
    # Put the identity back, as the rest of the session expects.
    assert xen.unmap_pages(0, 0x710, 1).ret == 0
    assert xen.map_pages(0, 0x710, 0x710, 1).ret == 0
    with pytest.raises(ControlError, match="paging_in is entered, not set"):
        local.ctl("p2m_set", domid=0, gfn=0x710, type="paging_in")


# -- DMA end to end ---------------------------------------------------------------

def test_dma_through_a_context_then_fault_after_unmap(xen, local):
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, gfn=0x2000, dfn=0x10, nr_pages=2).ret == 0
    assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
    payload = bytes(range(256)) * 20                       # 5120 bytes: crosses a page
    out = local.ctl("dma", sbdf=NIC, addr=0x10 << 12 | 0x100, write=True, data=payload)
    assert (out["done"], out["faulted"]) == (len(payload), False)
    got = local.ctl("mem_read", domid=0, gfn=0x2000, offset=0x100, length=0xF00)["data"]
    assert got == payload[:0xF00]
    got = local.ctl("mem_read", domid=0, gfn=0x2001, offset=0, length=0x100)["data"]
    assert got == payload[0xF00:0x1000]
    # The device reads what the guest writes.
    local.ctl("mem_write", domid=0, gfn=0x2001, offset=0x800, data=b"from the guest")
    out = local.ctl("dma", sbdf=NIC, addr=(0x11 << 12) + 0x800, length=14)
    assert out["data"] == b"from the guest"

    assert xen.unmap_pages(ctx, 0x10, 2).ret == 0
    local.ctl("faults", clear=True)
    out = local.ctl("dma", sbdf=NIC, addr=0x10 << 12, write=True, data=b"x" * 8)
    assert out["faulted"] and out["done"] == 0
    assert out["fault"] == {"sbdf": NIC, "addr": 0x10 << 12, "kind": "NOT_PRESENT", "write": True}
    faults = local.ctl("faults")["faults"]
    assert faults == [out["fault"]]
    assert xen.free_context(ctx, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0


def test_read_only_mapping_faults_on_write(xen, local):
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, 0x30, 0x30, 1, flags=abi.IOMMU_OP_readable).ret == 0
    assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
    assert local.ctl("dma", sbdf=NIC, addr=0x30 << 12, length=8)["faulted"] is False
    out = local.ctl("dma", sbdf=NIC, addr=0x30 << 12, write=True, data=b"no")
    assert out["fault"]["kind"] == "WRITE"
    assert xen.free_context(ctx, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
    local.ctl("faults", clear=True)


def test_a_dma_reports_its_fault_even_when_the_fault_log_is_full(local):
    """The log keeps the first 256 faults, as VT-d's registers keep a few;
    the DMA request still learns why it stopped."""
    local.ctl("faults", clear=True)
    bad = 0x7F << 30                                       # beyond d0's memory: not present
    for i in range(256):
        local.ctl("dma", sbdf=GPU, addr=bad + (i << 12), length=1)
    out = local.ctl("dma", sbdf=GPU, addr=1 << 39, write=True, data=b"x")
    assert out["fault"] == {"sbdf": GPU, "addr": 1 << 39, "kind": "WIDTH", "write": True}
    log = local.ctl("faults")
    assert len(log["faults"]) == 256 and log["overflow"]
    assert out["fault"] not in log["faults"]
    local.ctl("faults", clear=True)


def test_default_context_dma_reaches_the_whole_domain(local):
    local.ctl("dma", sbdf=GPU, addr=0x1234 << 12, write=True, data=b"identity")
    assert local.ctl("mem_read", domid=0, gfn=0x1234, length=8)["data"] == b"identity"


def test_dma_under_reattach_between_two_contexts_never_faults(daemon):
    scenarios.reattach_under_dma(daemon, rounds=300)


# -- isolation ------------------------------------------------------------------------

def test_non_hardware_domain_gets_eperm_and_changes_nothing(xen, local):
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, 0x10, 0x10, 4).ret == 0
    before = (local.ctl("contexts", domid=0), local.ctl("dump", domid=0, ctx_no=ctx, count=64),
              local.ctl("contexts", domid=1), local.ctl("info"))
    with local.client(1) as guest:
        tries = [guest.alloc_context(), guest.free_context(ctx), guest.free_context(1),
                 guest.reattach_device(ctx, bus=0, devfn=NIC_DEVFN),
                 guest.reattach_device(0, bus=1, devfn=0),
                 guest.map_pages(ctx, 0x10, 0x20, 4), guest.map_pages(0, 0x10, 0x50000, 1),
                 guest.unmap_pages(ctx, 0x10, 4), guest.lookup_page(ctx, 0x10),
                 guest.query_capabilities(), guest.noop()]
    assert [r.ret for r in tries] == [-E.EPERM] * len(tries)
    after = (local.ctl("contexts", domid=0), local.ctl("dump", domid=0, ctx_no=ctx, count=64),
             local.ctl("contexts", domid=1), local.ctl("info"))
    assert before == after
    assert xen.free_context(ctx).ret == 0


# -- control plane ----------------------------------------------------------------------

def test_domain_lifecycle_and_quarantine(daemon):
    out = daemon.ctl("domain_create", domid=5, hardware=True, memory_mib=16, contexts=2,
                     devices=["0000:05:00.0"])
    with XenemuClient(out["socket"]) as x5:
        ctx = x5.alloc_context().op.ctx_no
        assert x5.map_pages(ctx, 0x10, 0x10, 2).ret == 0
        assert x5.reattach_device(ctx, bus=5, devfn=0).ret == 0
        daemon.ctl("device_deassign", sbdf="0000:05:00.0")
        assert "0000:05:00.0" in daemon.ctl("info")["quarantined"]
        assert x5.reattach_device(ctx, bus=5, devfn=0).ret == -E.ENOENT
        out = daemon.ctl("dma", sbdf="0000:05:00.0", addr=0x10 << 12, length=4)
        assert out["fault"]["kind"] == "NOT_PRESENT"          # quarantined: faults
        daemon.ctl("device_assign", sbdf="0000:05:00.0", domid=5)
        daemon.ctl("domain_destroy", domid=5)
        with pytest.raises(Exception):
            x5.noop()
    assert not (daemon.socket_dir / "dom5.sock").exists()
    assert "0000:05:00.0" in daemon.ctl("info")["quarantined"]
    daemon.ctl("faults", clear=True)


def test_control_refuses_bad_requests_clearly(daemon):
    for op, args, msg in [("nope", {}, "unknown op"),
                          ("domain_destroy", {"domid": 42}, "d42 does not exist"),
                          ("device_assign", {"sbdf": "0000:00:02.0", "domid": 1}, "assigned to d0"),
                          ("dma", {"sbdf": "zz", "addr": 0, "length": 1},
                           "dma: sbdf: bad PCI address 'zz'"),
                          ("mem_read", {"domid": 0, "gfn": 1, "offset": 4000, "length": 500},
                           "one 4 KiB page"),
                          ("mem_read", {"domid": 0, "gfn": 1, "length": 5000},
                           r"mem_read: length: expected int <= 4096"),
                          ("p2m_set", {"domid": 0, "gfn": 1, "type": "weird"}, "type must be"),
                          ("dump", {"domid": 0, "ctx_no": 3}, "not allocated"),
                          ("domain_create", {}, "domain_create: object missing required field domid"),
                          ("domain_create", {"domid": 5, "devices": [5]},
                           "domain_create: devices\\[0\\]: expected str, got int"),
                          ("snapshot", {"path": "a\0b"}, "snapshot: path: contains a NUL"),
                          ("mem_read", {"domid": 0, "gfn": 1, "length": 1, "lenght": 2},
                           "mem_read: object contains unknown field lenght")]:
        with pytest.raises(ControlError, match=msg):
            daemon.ctl(op, **args)


def test_ctl_command_line(daemon):
    xen = XenemuClient(daemon.socket(0))
    ctx = new_ctx(xen)
    assert xen.map_pages(ctx, 0x100, 0x200, 3).ret == 0

    def ctl(*args):
        xenemu = Path(sys.executable).parent / "xenemu"     # the installed command
        return subprocess.run([str(xenemu), "ctl", "--socket", daemon.control, *args],
                              capture_output=True, text=True)

    out = ctl("dump", "domid=0", f"ctx_no={ctx}", "dfn=0x1ff", "count=8")
    assert out.returncode == 0
    assert out.stdout.splitlines()[2].split() == ["0x200..0x202", "0x100..0x102", "rw", "3"]
    out = ctl("contexts", "domid=0")
    assert any(line.split()[:1] == [str(ctx)] and line.split()[4] == "3"     # pages mapped
               for line in out.stdout.splitlines())
    assert ctl("check").stdout.strip() == "consistent"
    bad = ctl("domain_destroy", "domid=9")
    assert bad.returncode == 1 and "d9 does not exist" in bad.stderr
    assert "dma" in ctl("help").stdout
    assert xen.free_context(ctx).ret == 0
    xen.close()
