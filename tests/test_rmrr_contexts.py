"""Reserved regions in IOMMU contexts (issue 15): a device's RMRRs are
identity-mapped in whatever context it is attached to (added as it arrives,
removed as it leaves, as VT-d's reattach does in both series), map and
unmap answer over them as each revision's code does, its DMA reaches the
reserved frames from every context, other devices' DMA there faults, the
MSI window stays an interrupt, and snapshots and traces keep all of it.

Driven in process (support.checked_local: every test ends with the
invariant check, which audits each identity range, and a replay of its
trace); the control op and `xenemu ctl` through a daemon at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from support import DaemonProcess, checked_local
from xenemu import snapshot
from xenemu.errno import XenErrno as E
from xenemu.machine import machine_from_dict
from xenemu.pci import parse_sbdf

USB, NIC, GPU = "0000:00:04.0", "0000:00:03.0", "0000:00:09.0"
GUEST_DEV = "0000:01:00.0"
RMRR_PFN, RMRR_ADDR = 0xE8, 0xE8 << 12


def machine(revision: int, semantics: str = "v7"):
    domain0 = {"domid": 0, "hardware": True, "memory_mib": 64,
               "devices": [NIC, USB, GPU]}
    if revision == 1:
        domain0["contexts"] = 4
    else:
        domain0["pv_iommu_init"] = {"max_ctx_no": 4, "arena_order": 10}
    return machine_from_dict({
        "pv_iommu_revision": revision, "rev2_semantics": semantics,
        "domain": [domain0, {"domid": 1, "memory_mib": 16, "devices": [GUEST_DEV]}],
        "rmrr": [{"sbdf": USB, "start_pfn": RMRR_PFN, "nr_pages": 2},
                 {"sbdf": GPU, "start_pfn": 0x3000, "nr_pages": 16},
                 {"sbdf": GPU, "start_pfn": 0x100, "nr_pages": 1}]})


@pytest.fixture(params=[1, 2], ids=["rev1", "rev2"])
def m(request, tmp_path):
    with checked_local(machine(request.param), tmp_path / "t.xt") as m:
        yield m


def reattach(xen, ctx: int, sbdf: str):
    dev = parse_sbdf(sbdf)
    return xen.reattach_device(ctx, dev >> 16, (dev >> 8) & 0xFF, dev & 0xFF)


def new_context(xen) -> int:
    r = xen.alloc_context()
    assert r.ok, r
    return r.op.ctx_no


def dma_write(m, sbdf: str, addr: int, data: bytes) -> dict:
    return m.ctl("dma", sbdf=sbdf, addr=addr, write=True, data=data)


def reserved(m, pfn: int = RMRR_PFN, length: int = 32) -> bytes:
    return m.ctl("reserved_read", pfn=pfn, length=length)["data"]


def saved(hv) -> dict:
    """A snapshot as a file holds it (msgpack's types)."""
    return msgpack.unpackb(msgpack.packb(snapshot.take(hv), use_bin_type=True), raw=False)


def count(result, field: str) -> int:
    """mapped / unmapped / gfn of a result, in either revision's struct."""
    op = result.op
    if hasattr(op, "subop_id"):      # revision 1: the union's member
        op = op[{"mapped": "map_pages", "unmapped": "unmap_pages", "gfn": "lookup_page"}[field]]
    return op[field]


def mapped_at(m, ctx: int, dfn: int, count: int = 2) -> list[int]:
    """The gfns context ctx maps at dfn.. (0 where nothing, as `dump` reads)."""
    r = m.ctl("dump", domid=0, ctx_no=ctx, dfn=dfn, count=count)
    return [int.from_bytes(r["gfns"][i * 8:i * 8 + 8], "little") if r["perms"][i] else None
            for i in range(count)]


def test_the_device_reaches_its_rmrr_in_every_context_it_is_attached_to(m):
    xen = m.client(0)
    first = dma_write(m, USB, RMRR_ADDR + 8, b"context 0")
    assert (first["done"], first["faulted"]) == (9, False)
    assert reserved(m)[8:17] == b"context 0"
    ctx = new_context(xen)
    assert reattach(xen, ctx, USB).ok
    assert mapped_at(m, ctx, RMRR_PFN) == [RMRR_PFN, RMRR_PFN + 1]   # identity, M2P 1:1
    second = dma_write(m, USB, RMRR_ADDR + 0x1000, b"context N")
    assert (second["done"], second["faulted"]) == (9, False)
    assert reserved(m, RMRR_PFN + 1)[:9] == b"context N"
    assert reattach(xen, 0, USB).ok
    assert mapped_at(m, ctx, RMRR_PFN) == [None, None]              # gone with the device
    assert dma_write(m, USB, RMRR_ADDR, b"home")["done"] == 4


def test_another_devices_dma_there_faults_unless_its_context_has_the_range(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, NIC).ok
    r = dma_write(m, NIC, RMRR_ADDR, b"x")
    assert r["faulted"] and r["fault"]["kind"] == "NOT_PRESENT"
    guest = dma_write(m, GUEST_DEV, RMRR_ADDR, b"guest")    # d1's context 0: its own RAM
    assert not guest["faulted"]
    assert reserved(m)[:5] != b"guest"
    assert m.ctl("mem_read", domid=1, gfn=RMRR_PFN, length=5)["data"] == b"guest"
    # In the USB controller's context, the range is the context's: NIC reaches it too.
    assert reattach(xen, ctx, USB).ok
    assert not dma_write(m, NIC, RMRR_ADDR, b"shared")["faulted"]
    assert reserved(m)[:6] == b"shared"


def test_context_0_gives_its_1to1_pages_to_the_range_and_takes_them_back(m):
    # d0's RAM gfn 0xE8 is not at dfn 0xE8 while the USB controller is in
    # context 0 (the RMRR is), and is again once it has left.
    assert mapped_at(m, 0, RMRR_PFN - 1, 4) == [RMRR_PFN - 1, RMRR_PFN, RMRR_PFN + 1,
                                                RMRR_PFN + 2]
    m.ctl("mem_write", domid=0, gfn=RMRR_PFN, data=b"ram")
    assert m.ctl("dma", sbdf=NIC, addr=RMRR_ADDR, length=3)["data"] != b"ram"
    m.ctl("device_deassign", sbdf=USB)
    assert m.ctl("dma", sbdf=NIC, addr=RMRR_ADDR, length=3)["data"] == b"ram"
    assert m.ctl("dma", sbdf=USB, addr=RMRR_ADDR, length=1)["faulted"]   # quarantined
    m.ctl("device_assign", sbdf=USB, domid=0)
    assert m.ctl("dma", sbdf=NIC, addr=RMRR_ADDR, length=3)["data"] != b"ram"


def test_reattach_into_a_context_where_the_range_is_taken_is_einval(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert xen.map_pages(ctx, 0x10, RMRR_PFN + 1, 1).ok
    r = reattach(xen, ctx, USB)
    assert r.ret == -E.EINVAL
    assert m.ctl("contexts", domid=0)["contexts"][0]["devices"] == [NIC, USB, GPU]
    assert mapped_at(m, ctx, RMRR_PFN) == [None, 0x10]         # nothing half-done
    assert xen.unmap_pages(ctx, RMRR_PFN + 1, 1).ok
    assert reattach(xen, ctx, USB).ok


def test_a_device_with_two_ranges_and_two_devices_sharing_a_context(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, GPU).ok and reattach(xen, ctx, USB).ok
    assert mapped_at(m, ctx, 0x100, 1) == [0x100]
    assert mapped_at(m, ctx, 0x300F, 2) == [0x300F, None]
    assert reattach(xen, 0, GPU).ok                 # USB's range stays, GPU's go
    assert mapped_at(m, ctx, 0x100, 1) == [None]
    assert mapped_at(m, ctx, RMRR_PFN) == [RMRR_PFN, RMRR_PFN + 1]
    assert not m.ctl("check")["problems"]


def test_free_with_reattach_default_brings_the_ranges_home(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, USB).ok
    flags = {"flags": 1} if m.hv.config.pv_iommu_revision == 1 else {"free_flags": 1}
    assert xen.free_context(ctx, **flags).ok
    assert dma_write(m, USB, RMRR_ADDR, b"ok")["done"] == 2


def test_destroying_the_domain_with_the_device_in_a_context(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, USB).ok
    m.ctl("domain_destroy", domid=0)
    assert m.hv.quarantined >= {parse_sbdf(USB)}


# -- map, unmap and lookup over a range: each revision's code ------------------------

@pytest.mark.parametrize("semantics", ["v7", "intended"])
def test_revision_2_map_and_unmap_over_an_identity_range(tmp_path, semantics):
    with checked_local(machine(2, semantics), tmp_path / "t.xt") as m:
        xen = m.client(0)
        ctx = new_context(xen)
        assert reattach(xen, ctx, USB).ok
        start = xen.map_pages(ctx, 0x10, RMRR_PFN, 1)        # the start dfn: §5.7 step 1
        assert (start.ret, count(start, "mapped")) == (-E.EADDRNOTAVAIL, 0)
        into = xen.map_pages(ctx, 0x10, RMRR_PFN - 2, 4)     # running into it
        # v7: the lookup finds the identity page (-EADDRINUSE); the header: -EADDRNOTAVAIL.
        want = -E.EADDRINUSE if semantics == "v7" else -E.EADDRNOTAVAIL
        assert (into.ret, count(into, "mapped")) == (want, 2)
        out = xen.unmap_pages(ctx, RMRR_PFN - 2, 4)          # v7 checks every dfn
        assert (out.ret, count(out, "unmapped")) == (-E.EADDRNOTAVAIL, 2)
        assert mapped_at(m, ctx, RMRR_PFN) == [RMRR_PFN, RMRR_PFN + 1]
        assert xen.unmap_pages(ctx, RMRR_PFN, 1).ret == -E.EADDRNOTAVAIL
        assert reattach(xen, 0, USB).ok                      # ordinary there again
        assert xen.map_pages(ctx, 0x10, RMRR_PFN, 2).ok


def test_revision_1_map_lookup_and_unmap_over_an_identity_range(tmp_path):
    with checked_local(machine(1), tmp_path / "t.xt") as m:
        xen = m.client(0)
        ctx = new_context(xen)
        assert reattach(xen, ctx, USB).ok
        # No identity check in the reference: the conflict check answers.
        start = xen.map_pages(ctx, 0x10, RMRR_PFN, 1)
        assert (start.ret, count(start, "mapped")) == (-E.EADDRINUSE, 0)
        into = xen.map_pages(ctx, 0x10, RMRR_PFN - 2, 4)
        assert (into.ret, count(into, "mapped")) == (-E.EADDRINUSE, 2)
        look = xen.lookup_page(ctx, RMRR_PFN + 1)            # mfn_to_gfn: 1:1
        assert (look.ret, count(look, "gfn")) == (0, RMRR_PFN + 1)
        # The reference would unmap and put_page DomIO's frame: a hazard.
        out = xen.unmap_pages(ctx, RMRR_PFN - 2, 4)
        assert (out.ret, count(out, "unmapped")) == (-E.EADDRNOTAVAIL, 2)
        assert m.ctl("info")["hazards"] == {"unmap_identity_page": 1}
        assert dma_write(m, USB, RMRR_ADDR, b"still")["done"] == 5


# -- the MSI window, the control op, snapshots ---------------------------------------

def test_the_msi_window_stays_an_interrupt_in_every_context(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, USB).ok
    for sbdf in (USB, NIC):
        r = dma_write(m, sbdf, 0xFEE00000, b"\x01")
        assert r["faulted"] and r["fault"]["kind"] == "INTR"


def test_reserved_regions_report_direct_ranges_and_the_msi_window(m):
    usb = m.ctl("reserved_regions", sbdf=USB)["regions"]
    assert usb == [{"start": 0xE8000, "end": 0xE9FFF, "kind": "direct"},
                   {"start": 0xFEE00000, "end": 0xFEEFFFFF, "kind": "msi"}]
    assert [r["kind"] for r in m.ctl("reserved_regions", sbdf=GPU)["regions"]] == \
        ["direct", "direct", "msi"]
    assert m.ctl("reserved_regions", sbdf=NIC)["regions"] == [
        {"start": 0xFEE00000, "end": 0xFEEFFFFF, "kind": "msi"}]
    refused = m.request("reserved_regions", sbdf="0000:07:00.0")
    assert not refused["ok"] and "no device" in refused["error"]
    outside = m.request("reserved_read", pfn=0x1000, length=1)
    assert not outside["ok"] and "no reserved range" in outside["error"]


def test_a_snapshot_keeps_the_ranges_where_the_devices_are(m):
    xen = m.client(0)
    ctx = new_context(xen)
    assert reattach(xen, ctx, USB).ok
    assert xen.map_pages(ctx, 0x20, RMRR_PFN - 1, 1).ok      # next to the range
    dma_write(m, USB, RMRR_ADDR, b"kept")
    restored = snapshot.restore(saved(m.hv))
    assert not restored.check_invariants()
    ctx_r = restored.domains[0].contexts[ctx]
    assert ctx_r.identity == [(RMRR_PFN, 2, 1)]
    assert restored.domains[0].contexts[0].identity == [(0x3000, 16, 1), (0x100, 1, 1)]
    assert restored.read_reserved(RMRR_PFN, 0, 4) == b"kept"
    assert restored.iommu.lookup(ctx_r.hw_id, RMRR_PFN - 1) is not None


@pytest.mark.parametrize("where", ["context 0", "context N"])
def test_a_snapshot_of_a_range_over_gfns_that_are_not_ram(m, where):
    # d0's gfn 0xE8 ballooned out while the range holds dfn 0xE8 in context 0:
    # the restore's p2m step leaves the identity page alone.
    m.ctl("p2m_set", domid=0, gfn=RMRR_PFN, type="invalid")
    if where == "context N":
        xen = m.client(0)
        assert reattach(xen, new_context(xen), USB).ok
        assert mapped_at(m, 0, RMRR_PFN) == [None, RMRR_PFN + 1]   # RAM only, 1:1
    restored = snapshot.restore(saved(m.hv))
    assert not restored.check_invariants()
    assert saved(restored)["domains"] == saved(m.hv)["domains"]
    done, _, fault = restored.dma(parse_sbdf(USB), RMRR_ADDR, data=b"dma")
    assert (done, fault) == (3, None)


def test_ctl_prints_a_devices_reserved_regions(tmp_path):
    d = DaemonProcess(tmp_path)
    try:
        xenemu = Path(sys.executable).parent / "xenemu"     # the installed command
        out = subprocess.run([str(xenemu), "ctl", "--socket", d.control, "reserved_regions",
                              f"sbdf={USB}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()]
        assert ["0x00000e8000", "0x00000e9fff", "direct"] in rows
        assert ["0x00fee00000", "0x00feefffff", "msi"] in rows
        as_json = subprocess.run([str(xenemu), "ctl", "--socket", d.control, "--json",
                                  "reserved_regions", f"sbdf={USB}"], capture_output=True,
                                 text=True, timeout=60)
        assert json.loads(as_json.stdout)["regions"][0] == \
            {"start": 0xE8000, "end": 0xE9FFF, "kind": "direct"}
    finally:
        assert d.stop() == 0
