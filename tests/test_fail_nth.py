"""Fault injection through control requests, walked as iommufd's fail-nth tests do.

`fail_nth` arms the machine so that the nth page-table allocation, IOTLB
flush or page reference fails. The walk runs a driver-like scenario for
n = 1, 2, ... on a fresh domain each time, until a run completes with
nothing injected. For each n: every step before the failure answers as in
the clean run; the step where it fired returns what Xen's code returns for
that failure (or, for a flush, what it returns anyway: the reference only
prints "Flush operation failed"); the machine is consistent right after
it; and once the domain is destroyed, every frame and reference is back.

The tests drive the machine in process (the `local` fixture: the engine the
daemon drives, the clients' helpers); the sockets add nothing here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest

from xenemu import abi
from xenemu.client import XenemuClient
from xenemu.ctl import ControlError
from xenemu.errno import XenErrno as E

DOMID = 9
DEV = "0000:00:09.0"
DEVFN = 9 << 3
RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable

# What each sub-op may answer when an injected failure hits it, per site.
ALLOWED = {
    ("alloc_context", "table"): {-E.ENOMEM},
    ("map_pages", "table"): {-E.ENOMEM},
    ("map_pages", "ref"): {-E.EPERM},
    ("map_pages", "flush"): {0},
    ("unmap_pages", "flush"): {0},
}


class Session:
    """One run of the scenario on d9; `steps` are (name, outcome) pairs."""

    def __init__(self, local, guest: XenemuClient):
        self.local, self.guest = local, guest
        self.steps: list[tuple[str, object]] = []

    def call(self, name: str, result):
        """A hypercall's outcome: return value and the outputs a guest reads."""
        out = {"alloc_context": lambda o: o.ctx_no,
               "map_pages": lambda o: o.map_pages.mapped,
               "unmap_pages": lambda o: o.unmap_pages.unmapped,
               "lookup_page": lambda o: o.lookup_page.gfn}.get(name, lambda o: None)
        self.steps.append((name, (result.ret, out(result.op))))
        return result

    def dma(self, addr: int, **kw):
        reply = self.local.ctl("dma", sbdf=DEV, addr=addr, **kw)
        self.steps.append(("dma", (reply["done"], reply.get("data"), reply.get("fault"))))


def scenario(s: Session, stop) -> None:
    """A Linux-driver-shaped session; `stop()` after each step ends it early."""
    g = s.guest
    steps = [
        lambda: s.call("query_capabilities", g.query_capabilities()),
        lambda: s.call("alloc_context", g.alloc_context()),
        lambda: s.call("map_pages", g.map_pages(1, gfn=0x10, dfn=0x100, nr_pages=16)),
        # Across a leaf-table boundary (0x1fc..0x203): one more table page.
        lambda: s.call("map_pages", g.map_pages(1, gfn=0x40, dfn=0x1FC, nr_pages=8)),
        lambda: s.call("reattach_device", g.reattach_device(1, bus=0, devfn=DEVFN)),
        lambda: s.dma(0x100 << 12, write=True, data=b"fail-nth"),
        lambda: s.dma(0x100 << 12, length=8),
        lambda: s.call("lookup_page", g.lookup_page(1, 0x105)),
        lambda: s.call("unmap_pages", g.unmap_pages(1, 0x100, 16)),
        lambda: s.dma(0x100 << 12, length=8),
        lambda: s.call("alloc_context", g.alloc_context()),
        lambda: s.call("map_pages", g.map_pages(2, gfn=0x10, dfn=0x100, nr_pages=4)),
        lambda: s.call("free_context", g.free_context(1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT)),
        lambda: s.call("unmap_pages", g.unmap_pages(2, 0x100, 4)),
    ]
    for step in steps:
        step()
        if stop():
            return


def run(local, nth: int):
    """Run the scenario with the nth event failing (0: none). Returns the
    session, the injector's state and the problems `check` saw right after
    the failure."""
    local.ctl("domain_create", domid=DOMID, hardware=True, memory_mib=4, contexts=4,
              devices=[DEV])
    problems = []
    with local.client(DOMID) as guest:
        s = Session(local, guest)
        local.ctl("fail_nth", nth=nth)

        def fired():
            if local.ctl("fail_nth")["fired"] is None:
                return False
            problems.extend(local.ctl("check")["problems"])
            return True

        scenario(s, fired)
        state = local.ctl("fail_nth")
        local.ctl("fail_nth", nth=0)
    local.ctl("domain_destroy", domid=DOMID)
    return s, state, problems


def test_walking_nth_over_a_scenario_every_injected_failure_is_survived(local):
    baseline = local.ctl("info")["iommu"]["frames_used"]
    clean, state, _ = run(local, 0)
    assert state["fired"] is None
    assert local.ctl("info")["iommu"]["frames_used"] == baseline
    sites = Counter()
    nth = 0
    while True:
        nth += 1
        s, state, problems = run(local, nth)
        if state["fired"] is None:
            assert s.steps == clean.steps
            break
        site = state["fired"]
        sites[site] += 1
        assert state["seen"] == nth
        *before, (name, (ret, out)) = s.steps
        # Everything before the failure answered as in the clean run.
        assert before == clean.steps[:len(before)], nth
        clean_ret, clean_out = clean.steps[len(before)][1]
        assert ret in ALLOWED.get((name, site), ()), (nth, site, name, ret)
        if name == "map_pages" and site != "flush":
            assert out < clean_out          # stopped part way, `mapped` says where
        elif ret == clean_ret:
            assert out == clean_out
        # Consistent right after it: references match mappings, devices are
        # where their domain says. A failed flush may leave cached entries
        # of the pages it should have dropped, and nothing else.
        if site == "flush":
            assert all("IOTLB entr" in p for p in problems), problems
        else:
            assert problems == [], (nth, problems)
        # Destroying the domain gave back every frame and reference.
        assert local.ctl("check")["consistent"], nth
        assert local.ctl("info")["iommu"]["frames_used"] == baseline, nth
    # Every event of the scenario failed once: the table pages of context 1
    # (root, 2 for dfn 0x100, 1 past the leaf boundary at 0x200) and of
    # context 2 (root, 2), a reference per page mapped (16 + 8 + 4) and the
    # flush of each map and unmap.
    assert sites == {"table": 7, "ref": 28, "flush": 5}, sites
    assert nth - 1 == sum(sites.values())


def test_a_failed_unmap_flush_leaves_the_unmapped_pages_reachable(local, caplog):
    """The hazard a failed IOTLB flush is: the guest sees success while the
    IOTLB still holds the translation, and `check` names it until the
    context's entries are invalidated. (A DMA through it would reach the
    page; the local's check mode refuses that DMA as a stale hit.)"""
    local.ctl("domain_create", domid=DOMID, hardware=True, memory_mib=4, contexts=4,
              devices=[DEV])
    with local.client(DOMID) as g:
        assert g.alloc_context().ret == 0
        assert g.map_pages(1, gfn=0x10, dfn=0x100, nr_pages=2).ret == 0
        assert g.reattach_device(1, bus=0, devfn=DEVFN).ret == 0
        local.ctl("dma", sbdf=DEV, addr=0x100 << 12, write=True, data=b"cached")
        local.ctl("fail_nth", nth=1, sites=["flush"])
        unmap = g.unmap_pages(1, 0x100, 2)
        assert (unmap.ret, unmap.op.unmap_pages.unmapped) == (0, 2)
        assert local.ctl("fail_nth")["fired"] == "flush"
        check = local.ctl("check")
        assert check["problems"] == ["1 IOTLB entry disagree with the page tables "
                                     "(an invalidation was missed or failed)"]
        assert "Flush operation failed (-110)" in caplog.text
        # Freeing the context invalidates all its entries.
        assert g.free_context(1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
    assert local.ctl("check")["consistent"]
    local.ctl("domain_destroy", domid=DOMID)


@pytest.mark.parametrize("site,nth,why", [
    ("table", 2, "no machine memory left for I/O page tables"),
    ("ref", 100, "a page reference failed (injected)"),
])
def test_domain_creation_fails_cleanly_on_an_injected_failure(local, caplog, site, nth, why):
    caplog.set_level(logging.INFO, logger="xenemu")
    baseline = local.ctl("info")["iommu"]["frames_used"]
    local.ctl("fail_nth", nth=nth, sites=[site])
    with pytest.raises(ControlError, match="could not map its memory"):
        local.ctl("domain_create", domid=DOMID, hardware=True, memory_mib=4)
    assert why in caplog.text
    assert local.ctl("info")["iommu"]["frames_used"] == baseline
    assert local.ctl("check")["consistent"]
    assert local.ctl("domain_create", domid=DOMID, hardware=True, memory_mib=4)["domain"]


def test_fail_nth_arguments(local):
    for bad in ({"nth": -1}, {"nth": 1, "sites": []}, {"nth": 1, "sites": ["disk"]},
                {"nth": "1"}):
        with pytest.raises(ControlError, match="nth|sites"):
            local.ctl("fail_nth", **bad)
    assert local.ctl("fail_nth", nth=2, sites=["ref", "table"])["sites"] == ["table", "ref"]
    assert local.ctl("fail_nth", nth=0) == {"sites": [], "remaining": 0, "seen": 0,
                                            "fired": None}


def test_a_page_becoming_ram_again_is_refused_whole_when_its_reference_fails(local):
    local.ctl("p2m_set", domid=0, gfn=0x3000, type="paged_out")
    local.ctl("fail_nth", nth=1, sites=["ref"])
    with pytest.raises(ControlError, match="could not be mapped .* it stays paged_out"):
        local.ctl("p2m_set", domid=0, gfn=0x3000, type="ram")
    assert local.ctl("p2m_get", domid=0, gfn=0x3000)["type"] == "paged_out"
    assert local.ctl("check")["consistent"]
    local.ctl("p2m_set", domid=0, gfn=0x3000, type="ram")
    assert local.ctl("dump", domid=0, ctx_no=0, dfn=0x3000, count=1)["perms"] == b"\x03"


def test_a_page_in_waits_while_the_default_context_cannot_map_it(local, caplog):
    """The page-in completes at the first look once its delay is over; if
    the default context can't map the page then, it stays paging in and
    completes at the next look."""
    with local.client(0) as g:
        local.ctl("p2m_set", domid=0, gfn=0x3001, type="paged_out")
        ctx = g.alloc_context().op.ctx_no
        assert g.map_pages(ctx, gfn=0x3001, dfn=0x10, nr_pages=1).ret == -E.EIO
        time.sleep(0.3)                             # past page_in_delay_ms
        local.ctl("fail_nth", nth=1, sites=["ref"])
        assert local.ctl("p2m_get", domid=0, gfn=0x3001)["type"] == "paging_in"
        assert local.ctl("fail_nth")["fired"] == "ref"
        assert "page-in of gfn 0x3001 waits" in caplog.text
        assert local.ctl("check")["consistent"]
        assert local.ctl("p2m_get", domid=0, gfn=0x3001)["type"] == "ram"
        assert g.map_pages(ctx, gfn=0x3001, dfn=0x10, nr_pages=1).ret == 0
        assert g.unmap_pages(ctx, 0x10, 1).ret == 0
        assert g.free_context(ctx).ret == 0
