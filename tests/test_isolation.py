"""Isolation: a domain reaches only its own memory, contexts and devices.

Two hardware domains share the machine: d0 (the default machine's) and d7
(created by the control op domain_create, 16 MiB, 4 contexts, its own device). d0 sets
up contexts, mappings and device attachments; then d7 tries every sub-op
with d0's context numbers, device addresses, frames and dfns. Each attempt
must get Xen's error (or act on d7's own state only), and after each, d0's
state (every context's mappings, table pages, devices, page references) is
exactly what it was.

Driven in process (the `local` fixture: the engine without a daemon), as
nothing here is about sockets.
"""

from __future__ import annotations

import logging

import pytest

from xenemu import abi
from xenemu.errno import XenErrno as E

NIC_DEVFN = 3 << 3          # 0000:00:03.0, d0's
D7_DEV = "0000:00:06.0"
D7_DEVFN = 6 << 3
D7_PAGES = 16 * 256         # d7's RAM: gfns 0..0xFFF


def d0_state(local) -> dict:
    """Everything of d0 another domain could disturb."""
    contexts = local.ctl("contexts", domid=0)["contexts"]
    dumps = {}
    for c in contexts:
        if c["ctx_no"]:
            dumps[c["ctx_no"]] = [local.ctl("dump", domid=0, ctx_no=c["ctx_no"], dfn=dfn,
                                             count=64) for dfn in (0, 0x100, 0x40000)]
    info = next(d for d in local.ctl("info")["domains"] if d["domid"] == 0)
    for c in contexts:
        c.pop("iotlb")      # counters move with any DMA or walk, not state
    return {"contexts": contexts, "dumps": dumps, "devices": info["devices"],
            "allocated": info["allocated"],
            "memory": local.ctl("mem_read", domid=0, gfn=0x100, length=64)["data"]}


@pytest.fixture
def two_domains(local):
    with local.client(0) as d0:
        a = d0.alloc_context().op.ctx_no
        b = d0.alloc_context().op.ctx_no
        assert d0.map_pages(a, gfn=0x100, dfn=0x100, nr_pages=64).ret == 0
        assert d0.map_pages(b, gfn=0x2000, dfn=0x40000, nr_pages=16).ret == 0
        assert d0.reattach_device(a, bus=0, devfn=NIC_DEVFN).ret == 0
        local.ctl("mem_write", domid=0, gfn=0x100, data=b"d0's secret" * 5)
        local.ctl("domain_create", domid=7, hardware=True, memory_mib=16, contexts=4,
                             devices=[D7_DEV])
        with local.client(7) as d7:
            yield d0, d7, (a, b)
        assert d0.reattach_device(0, bus=0, devfn=NIC_DEVFN).ret == 0
        for ctx in (a, b):
            assert d0.free_context(ctx).ret == 0
    local.ctl("domain_destroy", domid=7)


op = abi.encode_op
RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable

# d7 reaching for d0's things: (why, struct, expected return).
ATTEMPTS = [
    ("map into d0's context numbers (not allocated in d7)",
     op(5, 1, RW, "map_pages", gfn=0, dfn=0x100, nr_pages=1), -E.EINVAL),
    ("unmap d0's mappings by context number", op(6, 1, 0, "unmap_pages", dfn=0x100, nr_pages=64),
     -E.EINVAL),
    ("look up d0's mapping by context number", op(7, 1, 0, "lookup_page", dfn=0x100), -E.EINVAL),
    ("free d0's context", op(3, 2, 0), -E.ENOENT),
    ("free d0's context, reattaching its devices", op(3, 1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT),
     -E.ENOENT),
    ("steal d0's device into its own context 0",
     op(4, 0, 0, "reattach_device", dev=dict(seg=0, bus=0, devfn=NIC_DEVFN)), -E.ENOENT),
    ("steal d0's device into a context of its own",
     op(4, 1, 0, "reattach_device", dev=dict(seg=0, bus=0, devfn=NIC_DEVFN)), -E.ENOENT),
    ("move a device of another guest (d1's)",
     op(4, 0, 0, "reattach_device", dev=dict(seg=0, bus=1, devfn=0)), -E.ENOENT),
    ("map d0's frames: gfns beyond its own memory",
     op(5, 0, RW, "map_pages", gfn=0x2000, dfn=0x9000, nr_pages=4), -E.EPERM),
]


@pytest.mark.parametrize("why,raw,want", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_another_domain_cannot_touch_d0(local, two_domains, why, raw, want):
    d0, d7, _ = two_domains
    before = d0_state(local)
    assert d7.iommu_op(raw).ret == want, why
    assert d0_state(local) == before
    assert local.ctl("check")["consistent"]


def test_same_numbers_in_two_domains_are_two_things(local, two_domains):
    """d7's context 1 and dfn 0x100 are its own: mapping there leaves d0's alone,
    and a lookup in d7 never returns a d0 frame."""
    d0, d7, (a, _) = two_domains
    before = d0_state(local)
    assert d7.alloc_context().op.ctx_no == 1 == a
    assert d7.map_pages(1, gfn=0x10, dfn=0x100, nr_pages=64).ret == 0
    assert d7.lookup_page(1, 0x100).op.lookup_page.gfn == 0x10
    assert d0.lookup_page(a, 0x100).op.lookup_page.gfn == 0x100
    assert d7.reattach_device(1, bus=0, devfn=D7_DEVFN).ret == 0
    # d7's device DMAs its own memory; d0's device still sees d0's.
    local.ctl("dma", sbdf=D7_DEV, addr=0x100 << 12, write=True, data=b"d7 data")
    assert local.ctl("mem_read", domid=7, gfn=0x10, length=7)["data"] == b"d7 data"
    assert local.ctl("dma", sbdf="0000:00:03.0", addr=0x100 << 12,
                      length=11)["data"] == b"d0's secret"
    # The whole gfn range of d7, mapped at once, cannot reach past its memory.
    assert d7.map_pages(1, gfn=D7_PAGES - 2, dfn=0x9000, nr_pages=4).ret == -E.EPERM
    assert d7.unmap_pages(1, 0x9000, 2).ret == 0
    assert d7.unmap_pages(1, 0x100, 64).ret == 0
    assert d7.free_context(1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
    assert d0_state(local) == before


def test_a_guest_cannot_use_pv_iommu_at_all(local, two_domains):
    """d1, an ordinary guest, gets -EPERM for every sub-op and changes nothing."""
    before = d0_state(local)
    with local.client(1) as d1:
        for raw, _, in [(a[1], None) for a in ATTEMPTS] + [(op(1), None), (op(2), None)]:
            assert d1.iommu_op(raw).ret == -E.EPERM
    assert d0_state(local) == before


# -- page-table budget --------------------------------------------------------------

def test_page_table_budget_gives_enomem_at_its_edge(local, caplog):
    """d9 may hold 6 table pages in its PV-IOMMU contexts: a context's root,
    and 2 more per 1 GiB region of dfns first touched (a mid-level and a
    leaf table). At the edge map_pages stops with -ENOMEM and the count of
    pages it did map, as a spent arena does in Xen; freeing gives it back."""
    caplog.set_level(logging.DEBUG, logger="xenemu")
    local.ctl("domain_create", domid=9, hardware=True, memory_mib=16, contexts=4,
                         table_pages=6)
    gib = 1 << 18                               # dfns per GiB
    with local.client(9) as d9:
        a = d9.alloc_context().op.ctx_no       # 1 page
        assert d9.map_pages(a, gfn=0, dfn=0, nr_pages=4).ret == 0          # 3
        assert d9.map_pages(a, gfn=4, dfn=gib, nr_pages=4).ret == 0        # 5
        assert d9.map_pages(a, gfn=8, dfn=gib + 510, nr_pages=4).ret == 0  # a new leaf: 6
        # A run crossing into another new leaf: the pages before it map, then no table is left.
        res = d9.map_pages(a, gfn=12, dfn=gib + 1022, nr_pages=4)
        assert (res.ret, res.op.map_pages.mapped) == (-E.ENOMEM, 2)
        res = d9.map_pages(a, gfn=8, dfn=2 * gib + 0x200, nr_pages=1)
        assert (res.ret, res.op.map_pages.mapped) == (-E.ENOMEM, 0)
        assert d9.alloc_context().ret == -E.ENOMEM                        # no room for a root
        info = next(d for d in local.ctl("info")["domains"] if d["domid"] == 9)
        assert info["table_pages"] == {"used": 6, "limit": 6}
        # Another domain's budget is its own.
        with local.client(0) as d0:
            ctx = d0.alloc_context().op.ctx_no
            assert d0.map_pages(ctx, gfn=0, dfn=3 * gib, nr_pages=1).ret == 0
            assert d0.unmap_pages(ctx, 3 * gib, 1).ret == 0
            assert d0.free_context(ctx).ret == 0
        assert d9.unmap_pages(a, 0, 4).ret == 0
        assert d9.unmap_pages(a, gib, 4).ret == 0
        assert d9.unmap_pages(a, gib + 510, 4).ret == 0
        assert d9.unmap_pages(a, gib + 1022, 2).ret == 0
        assert d9.free_context(a).ret == 0
        info = next(d for d in local.ctl("info")["domains"] if d["domid"] == 9)
        assert info["table_pages"] == {"used": 0, "limit": 6}
        b = d9.alloc_context().op.ctx_no
        assert d9.map_pages(b, gfn=8, dfn=2 * gib, nr_pages=1).ret == 0
        assert d9.unmap_pages(b, 2 * gib, 1).ret == 0
        assert d9.free_context(b).ret == 0
    assert "page-table budget" in caplog.text
    local.ctl("domain_destroy", domid=9)


# -- reserved ranges (issue 15) -------------------------------------------------------

USB_DEVFN, RMRR_PFN = 4 << 3, 0xE8     # d0's 0000:00:04.0 and its RMRR (default machine)


def test_another_domain_cannot_reach_d0s_reserved_frames(local, two_domains):
    """d7 maps, unmaps, looks up and DMAs at the RMRR's numbers: it only
    ever meets its own frames and contexts; d0's device still reaches its
    reserved frames, and what d0's device wrote there stays."""
    d0, d7, _ = two_domains
    local.ctl("dma", sbdf="0000:00:04.0", addr=RMRR_PFN << 12, write=True, data=b"usb")
    before = (d0_state(local), local.ctl("dump", domid=0, ctx_no=0, dfn=RMRR_PFN, count=2),
              local.ctl("reserved_read", pfn=RMRR_PFN, length=16)["data"])
    assert d7.reattach_device(0, bus=0, devfn=USB_DEVFN).ret == -E.ENOENT
    ctx = d7.alloc_context().op.ctx_no
    assert d7.lookup_page(ctx, RMRR_PFN).ret == -E.ENOENT
    assert d7.unmap_pages(ctx, RMRR_PFN, 2).ret == -E.ENOENT
    assert d7.unmap_pages(0, RMRR_PFN, 2).ret == 0     # its own context 0's 1:1 pages
    # Its own gfn 0xE8 is its own RAM: mapped, its device writes d7's frame.
    assert d7.map_pages(ctx, gfn=RMRR_PFN, dfn=RMRR_PFN, nr_pages=2).ret == 0
    assert d7.lookup_page(ctx, RMRR_PFN).op.lookup_page.gfn == RMRR_PFN
    assert d7.reattach_device(ctx, bus=0, devfn=D7_DEVFN).ret == 0
    local.ctl("dma", sbdf=D7_DEV, addr=RMRR_PFN << 12, write=True, data=b"d7!")
    assert local.ctl("mem_read", domid=7, gfn=RMRR_PFN, length=3)["data"] == b"d7!"
    assert d7.free_context(ctx, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
    assert (d0_state(local), local.ctl("dump", domid=0, ctx_no=0, dfn=RMRR_PFN, count=2),
            local.ctl("reserved_read", pfn=RMRR_PFN, length=16)["data"]) == before
    assert local.ctl("dma", sbdf="0000:00:04.0", addr=RMRR_PFN << 12,
                     length=3)["data"] == b"usb"
    # memory_op tells any domain any device's ranges: Xen checks neither the
    # caller nor the device's owner (README, "memory_op").
    with local.client(1) as d1:
        r = d1.reserved_device_memory_map(0, 1, 4 << 3)
        assert (r.ret, r.entries) == (0, [(RMRR_PFN, 2)])
