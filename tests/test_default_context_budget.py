"""Context 0's page tables are bounded: its 1:1 map's plus the domain's table_pages.

A hardware domain may map any of its pages into its default context through
PV-IOMMU map_pages (ctx_no 0). Each far-apart page there costs up to three
table pages; before this bound a guest could take table pages until the
machine's memory was gone. Now context 0 has a pool of its own: what its 1:1
map took at creation plus the domain's table_pages budget; beyond it map_pages
stops with -ENOMEM and `mapped` = the pages before the one needing a table,
as at a PV-IOMMU context's budget.

The budget's semantics are tested in process (the `local` fixture); the
daemon's memory and a machine file at the domain bound through its sockets.
"""

from __future__ import annotations

import pytest
from soak import rss_kib
from support import DaemonProcess

from xenemu.client import XenemuClient
from xenemu.ctl import ControlError
from xenemu.errno import XenErrno as E
from xenemu.machine import MAX_DOMAINS

GIB = 1 << 18           # dfns per GiB: a new one costs a mid-level and a leaf table (39 bits)
LEAF = 512              # dfns per leaf table (2 MiB)
PAGES = 16 * 256        # the test domain's RAM: gfns 0..0xFFF, 1:1 in context 0
IDENTITY_TABLES = 1 + 1 + PAGES // LEAF   # root, one mid-level, 8 leaves


def default_tables(machine, domid: int) -> dict:
    """`machine`: the daemon or the in-process machine (both have ctl)."""
    info = next(d for d in machine.ctl("info")["domains"] if d["domid"] == domid)
    return info["default_table_pages"]


def test_default_context_tables_stop_at_the_budget_and_stay_usable(local):
    created = local.ctl("domain_create", domid=9, hardware=True, memory_mib=16, contexts=4,
                        table_pages=6)
    assert created["domain"]["default_table_pages"] == {
        "used": IDENTITY_TABLES, "limit": IDENTITY_TABLES + 6}
    # A new GiB costs a mid-level and a leaf table, a run into the next leaf one more.
    far = [GIB, GIB + LEAF - 2, 2 * GIB, 2 * GIB + LEAF - 2]      # 2 + 1 + 2 + 1 tables
    edge = 2 * GIB + 2 * LEAF - 2
    with local.client(9) as d9:
        for i, dfn in enumerate(far):
            assert d9.map_pages(0, gfn=4 * i, dfn=dfn, nr_pages=4).ret == 0
        # 6 spent: the run maps up to the page needing a new leaf, then -ENOMEM.
        res = d9.map_pages(0, gfn=16, dfn=edge, nr_pages=4)
        assert (res.ret, res.op.map_pages.mapped) == (-E.ENOMEM, 2)
        res = d9.map_pages(0, gfn=20, dfn=3 * GIB, nr_pages=1)
        assert (res.ret, res.op.map_pages.mapped) == (-E.ENOMEM, 0)
        assert default_tables(local, 9) == {"used": IDENTITY_TABLES + 6,
                                            "limit": IDENTITY_TABLES + 6}
        # Its PV-IOMMU contexts' budget is a separate one, and so is d0's context 0.
        ctx = d9.alloc_context().op.ctx_no
        assert d9.map_pages(ctx, gfn=20, dfn=3 * GIB, nr_pages=1).ret == 0
        assert d9.unmap_pages(ctx, 3 * GIB, 1).ret == 0
        assert d9.free_context(ctx).ret == 0
        with local.client(0) as d0:
            assert d0.map_pages(0, gfn=0, dfn=5 * GIB, nr_pages=1).ret == 0
            assert d0.unmap_pages(0, 5 * GIB, 1).ret == 0
        # The 1:1 map never needs a table again: a page-out and page-in still map.
        local.ctl("p2m_set", domid=9, gfn=0x20, type="paged_out")
        local.ctl("p2m_set", domid=9, gfn=0x20, type="ram")
        assert d9.lookup_page(0, 0x20).op.lookup_page.gfn == 0x20
        # Unmapped, the tables stay with context 0: the same dfns map again, new ones do not.
        for dfn, n in zip(far + [edge], (4, 4, 4, 4, 2)):
            assert d9.unmap_pages(0, dfn, n).ret == 0
        for gfn, dfn in enumerate(far):
            assert d9.map_pages(0, gfn=gfn, dfn=dfn, nr_pages=4).ret == 0
            assert d9.unmap_pages(0, dfn, 4).ret == 0
        assert d9.map_pages(0, gfn=20, dfn=3 * GIB, nr_pages=1).ret == -E.ENOMEM
    # Destroyed, the domain gives its tables and both pools back: a new d9 has it all.
    local.ctl("domain_destroy", domid=9)
    created = local.ctl("domain_create", domid=9, hardware=True, memory_mib=16, table_pages=6)
    assert created["domain"]["default_table_pages"]["used"] == IDENTITY_TABLES
    with local.client(9) as d9:
        assert d9.map_pages(0, gfn=20, dfn=3 * GIB, nr_pages=1).ret == 0
        assert d9.unmap_pages(0, 3 * GIB, 1).ret == 0
    local.ctl("domain_destroy", domid=9)


def test_table_pages_zero_still_bounds_context_0(local):
    """table_pages = 0 is "no limit" for the PV-IOMMU contexts only: context
    0 may still build 65536 table pages beyond its 1:1 map, no more."""
    created = local.ctl("domain_create", domid=9, hardware=True, memory_mib=16, table_pages=0)
    assert created["domain"]["table_pages"]["limit"] == 0
    assert created["domain"]["default_table_pages"] == {
        "used": IDENTITY_TABLES, "limit": IDENTITY_TABLES + 65536}
    local.ctl("domain_destroy", domid=9)


def test_a_guest_mapping_far_apart_pages_into_context_0_does_not_grow_the_daemon(tmp_path):
    """8,000 one-page maps, each needing a new leaf table (32 MiB of tables
    before the bound), refused past a 64-page budget: the daemon's RSS stays
    within a few MiB of where it was at the edge."""
    d = DaemonProcess(tmp_path, record=False, log_level="info")
    try:
        created = d.ctl("domain_create", domid=9, hardware=True, memory_mib=16, table_pages=64)
        with XenemuClient(created["socket"]) as d9:
            dfns = iter(range(GIB, 200 * GIB, LEAF))      # one new leaf each
            # 64 pages: one mid-level table and 63 leaves.
            results = [d9.map_pages(0, gfn=i, dfn=next(dfns), nr_pages=1) for i in range(64)]
            mapped = [r.op.map_pages.dfn for r in results if r.ret == 0]
            assert mapped == [r.op.map_pages.dfn for r in results[:63]]
            assert (results[63].ret, results[63].op.map_pages.mapped) == (-E.ENOMEM, 0)
            before = rss_kib(d.proc.pid)
            refused = sum(d9.map_pages(0, gfn=0, dfn=next(dfns), nr_pages=1).ret == -E.ENOMEM
                          for _ in range(8000))
            grown = rss_kib(d.proc.pid) - before
            assert refused == 8000
            assert grown < 8 << 10, f"RSS grew {grown} KiB past the budget"
            assert default_tables(d, 9)["used"] == IDENTITY_TABLES + 64
            for dfn in mapped:
                assert d9.unmap_pages(0, dfn, 1).ret == 0
        d.ctl("domain_destroy", domid=9)
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0


def test_the_largest_machine_has_two_page_table_pools_for_every_domain(tmp_path):
    """The machine schema allows MAX_DOMAINS domains, each taking two IOMMU
    pools (its PV-IOMMU contexts', its context 0's): a file at that bound is
    served, and a domain destroyed gives both back to its successor."""
    config = tmp_path / "many.toml"
    config.write_text("memory_mib = 2048\n" + "".join(
        f"[[domain]]\ndomid = {i}\nhardware = {str(i == 0).lower()}\nmemory_mib = 1\n"
        f"contexts = 1\ntable_pages = 8\n" for i in range(MAX_DOMAINS)))
    d = DaemonProcess(tmp_path, "--config", str(config), record=False, log_level="warning")
    try:
        assert len(d.sockets) == MAX_DOMAINS
        d.ctl("domain_destroy", domid=MAX_DOMAINS - 1)
        created = d.ctl("domain_create", domid=MAX_DOMAINS - 1, memory_mib=1, table_pages=8)
        assert created["domain"]["default_table_pages"]["limit"] == 1 + 1 + 1 + 8
        with pytest.raises(ControlError, match="no page-table budget left"):
            d.ctl("domain_create", domid=MAX_DOMAINS, memory_mib=1)
    finally:
        assert d.stop() == 0
