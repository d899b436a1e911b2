"""I/O page faults, xenemu's extension of revision 2 (abi/NESTED.md): a
nested context allocated with XENEMU_NESTED_PAGE_REQUESTS turns a DMA's
stage-1 not-present fault into a page request the guest reads (sub-op 14)
and answers (15); the DMA, retried on the control socket, then completes or
faults. Through the public interface, every machine's trace replayed
(support.checked_local)."""

from __future__ import annotations

import pytest

from support import checked_local
from test_nested import (DATA, L1, PASID, ROOT, build_stage1, dma, entry, fault_kind,
                         machine, put)
from xenemu.hypercalls import iommu_op_nested as nested
from xenemu.hypercalls import iommu_op_prq as prq
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import default_machine

UNMAPPED = 0x5000               # IOVA page 5: no stage-1 entry in build_stage1's table


@pytest.fixture
def m(tmp_path):
    with checked_local(machine(), tmp_path / "prq.xt") as local:
        yield local


@pytest.fixture
def guest(m):
    """d1's nested context with page requests, its device's PASID bound."""
    xen = m.client(1)
    assert xen.init(4, 4).ok
    build_stage1(m)
    r = xen.alloc_nested(ROOT, nested_flags=nested.NESTED_PAGE_REQUESTS)
    assert r.ok, r.name
    ctx = r.op.ctx_no
    assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
    return xen, ctx


def read(xen, ctx, max=prq.PRQ_MAX):
    r = xen.read_page_requests(ctx, max)
    assert r.ok, r.name
    return prq.entries(r.inner)[:r.op.count]


def respond(xen, ctx, group, code=0):
    return xen.page_response(ctx, group, code)


def test_a_page_fault_serviced_by_the_guest(m, guest):
    """The DMA waits, the guest reads the request, maps the page in its
    stage 1, flushes, answers success: the retried DMA completes. Nothing
    reaches the fault log."""
    xen, ctx = guest
    reply = dma(m, UNMAPPED + 0x10, data=b"paged")
    assert (reply["done"], reply["faulted"], reply["page_request"]) == (0, False, 1)
    assert dma(m, UNMAPPED + 0x10, data=b"paged")["page_request"] == 1     # the same request
    [req] = read(xen, ctx)
    assert (req.addr, req.pasid, req.group, req.flags) == (UNMAPPED + 0x10, PASID, 1,
                                                           prq.PAGE_REQUEST_WRITE)
    assert (req.dev.bus, req.dev.devfn) == (1, 0)
    assert read(xen, ctx) == []                     # read once
    put(m, L1, 5, entry(DATA + 5))
    assert xen.flush_nested(ctx, flush_type=nested.FLUSH_RANGE, pasid=PASID, dfn=5,
                            nr_pages=1).ok
    assert respond(xen, ctx, 1).ok
    assert respond(xen, ctx, 1).name == "-ENOENT"   # answered already
    reply = dma(m, UNMAPPED + 0x10, data=b"paged")
    assert (reply["done"], reply["faulted"], reply["page_request"]) == (5, False, None)
    assert m.ctl("mem_read", domid=1, gfn=DATA + 5, offset=0x10, length=5)["data"] == b"paged"
    assert m.ctl("faults")["faults"] == []


def test_a_dma_waits_after_the_bytes_before_the_page(m, guest):
    reply = dma(m, 0x4FF8, length=16)          # page 4 has no entry either
    assert (reply["done"], reply["page_request"]) == (0, 1)
    put(m, L1, 4, entry(DATA + 4))
    reply = dma(m, 0x4FF8, length=16)          # page 4 now translates (a fresh walk): page 5 waits
    assert (reply["done"], reply["page_request"]) == (8, 2)


@pytest.mark.parametrize("code", [1, 15])
def test_an_invalid_or_failure_answer_fails_the_dma(m, guest, code):
    xen, ctx = guest
    group = dma(m, UNMAPPED, length=4)["page_request"]
    put(m, L1, 5, entry(DATA + 5))             # mapped, yet the answer decides
    assert respond(xen, ctx, group, code).ok
    reply = dma(m, UNMAPPED, length=4)
    assert fault_kind(reply) == "NOT_PRESENT" and reply["page_request"] is None
    assert [f["kind"] for f in m.ctl("faults")["faults"]] == ["NOT_PRESENT"]
    assert dma(m, UNMAPPED, length=4)["done"] == 4     # the next DMA walks again


def test_success_without_a_mapping_is_a_non_recoverable_fault(m, guest):
    xen, ctx = guest
    assert respond(xen, ctx, dma(m, UNMAPPED, length=4)["page_request"]).ok
    assert fault_kind(dma(m, UNMAPPED, length=4)) == "NOT_PRESENT"
    assert len(m.ctl("faults")["faults"]) == 1
    assert dma(m, UNMAPPED, length=4)["page_request"] == 2     # a new fault, a new request


def test_only_stage_1_not_present_faults_are_requests(m, guest):
    put(m, L1, 6, entry(0x7FFFF))              # beyond d1's memory: stage 2 has no page
    assert fault_kind(dma(m, 0x6000, length=1)) == "NOT_PRESENT"
    assert fault_kind(dma(m, 0x1000, data=b"x")) == "WRITE"
    assert dma(m, 0x6000, length=1)["page_request"] is None
    assert len(m.ctl("faults")["faults"]) == 3


def test_the_queue_is_bounded_then_faults_are_not_recoverable(m, guest):
    xen, ctx = guest
    groups = [dma(m, (0x10 + i) << 12, length=1)["page_request"] for i in range(prq.PRQ_MAX)]
    assert groups == list(range(1, prq.PRQ_MAX + 1))
    full = dma(m, 0x80000, length=1)
    assert full["page_request"] is None and fault_kind(full) == "NOT_PRESENT"
    assert len(m.ctl("faults")["faults"]) == 1
    assert [r.group for r in read(xen, ctx, 3)] == [1, 2, 3]    # oldest first, `max` of them
    assert len(read(xen, ctx)) == prq.PRQ_MAX - 3
    assert respond(xen, ctx, 2).ok
    assert dma(m, 0x11000, length=1)["faulted"]        # group 2's retry: still no entry
    assert dma(m, 0x80000, length=1)["page_request"] == prq.PRQ_MAX + 1   # room again


def test_errors(m, guest):
    xen, ctx = guest
    group = dma(m, UNMAPPED, length=1)["page_request"]
    assert xen.read_page_requests(ctx, requests=0xDEAD0000).name == "-EFAULT"
    assert xen.read_page_requests(ctx, 0).op.count == 0
    assert [r.group for r in read(xen, ctx)] == [group]       # the -EFAULT lost nothing
    assert respond(xen, ctx, group, 2).name == "-EINVAL"       # not a response code
    assert respond(xen, ctx, group + 1).name == "-ENOENT"
    assert respond(xen, 9, group).name == "-ENOENT"            # no such context
    assert respond(xen, 0, group).name == "-EINVAL"            # not nested
    plain = xen.alloc_nested(ROOT).op.ctx_no
    assert xen.read_page_requests(plain).name == "-EINVAL"     # page requests off
    assert respond(xen, plain, group).name == "-EINVAL"
    for subop in (prq.IOMMU_read_page_requests, prq.IOMMU_page_response):
        assert xen.iommu_op_subop(subop, b"").name == "-EFAULT"
    assert xen.alloc_nested(ROOT, nested_flags=1 << 9).name == "-EINVAL"
    assert xen.alloc_nested(ROOT, nested_flags=nested.NESTED_PAGE_REQUESTS | 1).name == "-EINVAL"


def test_without_page_requests_the_fault_is_logged(m):
    xen = m.client(1)
    assert xen.init(4, 4).ok
    build_stage1(m)
    ctx = xen.alloc_nested(ROOT).op.ctx_no
    assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
    reply = dma(m, UNMAPPED, length=1)
    assert fault_kind(reply) == "NOT_PRESENT" and reply["page_request"] is None


def test_freeing_the_context_or_detaching_drops_its_requests(m, guest):
    xen, ctx = guest
    dma(m, UNMAPPED, length=1)
    assert xen.detach_pasid(PASID, 0, 1, 0).ok
    assert read(xen, ctx) == [] and respond(xen, ctx, 1).name == "-ENOENT"
    assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
    assert dma(m, UNMAPPED, length=1)["page_request"] == 2
    assert xen.free_context(ctx).name == "-EBUSY"
    assert xen.free_context(ctx, v2.IOMMU_FREE_reattach_default).ok
    assert xen.read_page_requests(ctx).name == "-ENOENT"
    assert fault_kind(dma(m, UNMAPPED, length=1)) == "NO_PASID"     # the waiting DMA's retry
    assert m.ctl("check")["consistent"]


def test_off_by_default_is_xens_eopnotsupp(tmp_path):
    with checked_local(default_machine(2), tmp_path / "off.xt") as m:
        xen = m.client(1)
        assert xen.read_page_requests(0).name == "-EOPNOTSUPP"
        assert xen.page_response(0, 1).name == "-EOPNOTSUPP"
        for subop in (prq.IOMMU_read_page_requests, prq.IOMMU_page_response):
            assert xen.iommu_op_subop(subop, b"").name == "-EOPNOTSUPP"   # arg untouched


def test_a_snapshot_carries_the_requests(m, guest, tmp_path):
    """Outstanding requests (queued, read, answered) and the option come back
    with a restore, and the DMAs waiting on them finish as they would have."""
    from xenemu import snapshot
    xen, ctx = guest
    for page in (5, 6, 7):
        dma(m, page << 12, data=b"abc")
    read(xen, ctx, 1)
    put(m, L1, 5, entry(DATA + 5))
    assert respond(xen, ctx, 1).ok
    assert respond(xen, ctx, 3, 1).ok
    snap = snapshot.take(m.hv)
    saved = next(c for c in snap["domains"][1]["contexts"] if "nested" in c)["nested"]
    assert [(r["group"], r["state"], r["code"]) for r in saved["requests"]] == [
        (1, "answered", 0), (2, "queued", 0), (3, "answered", 1)]
    back = restored(snap)
    xen = back.client(1)
    assert dma(back, 0x5000, data=b"abc")["done"] == 3
    assert [r.group for r in read(xen, ctx)] == [2]
    assert fault_kind(dma(back, 0x7000, data=b"abc")) == "NOT_PRESENT"
    assert dma(back, 0x8000, length=1)["page_request"] == 4     # the groups go on
    assert not back.hv.check_invariants()


def restored(snap):
    """An in-process machine restored from snap (not recorded)."""
    from xenemu import snapshot
    from xenemu.engine import Engine
    from xenemu.inprocess import Local
    back = Local(machine())
    back.hv = snapshot.restore(snap, check_iotlb=True)
    back.engine = Engine(back.hv, record=False)
    return back


@pytest.mark.parametrize("change,why", [
    (dict(group=2), "a group in use"), (dict(pasid=PASID + 1), "not bound"),
    (dict(code=1), "a code while not answered")])
def test_a_snapshot_with_a_bad_request_is_refused(m, guest, change, why):
    from xenemu import snapshot
    dma(m, 0x5000, length=1)
    dma(m, 0x6000, length=1)
    snap = snapshot.take(m.hv)
    nested_state = next(c for c in snap["domains"][1]["contexts"] if "nested" in c)["nested"]
    nested_state["requests"][0].update(state="queued", **change)
    with pytest.raises(snapshot.SnapshotError, match=r"nested\.requests\[\d\]: .*" + why):
        snapshot.restore(snap)


def test_the_header_matches_the_python_layout(tmp_path):
    """pv-iommu-nested.h's page-request structs: clean under -pedantic, the
    bytes the handlers read and write."""
    import shutil
    import subprocess
    from support import abi_includes
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / "t.c"
    src.write_text(
        "#include <stdio.h>\n#include <string.h>\n#include <xen/pv-iommu-nested.h>\n"
        "static void dump(const void *p, size_t n) { const unsigned char *b = p;\n"
        "  for (size_t i = 0; i < n; i++) { printf(\"%02x\", b[i]); }\n  printf(\"\\n\"); }\n"
        "int main(void) { struct xenemu_iommu_read_page_requests r; struct xenemu_page_request q;\n"
        "  struct xenemu_iommu_page_response a;\n"
        "  memset(&r, 0, sizeof(r)); memset(&q, 0, sizeof(q)); memset(&a, 0, sizeof(a));\n"
        "  r.ctx_no = 3; r.max = 32; r.count = 5; set_xen_guest_handle_raw(r.requests,\n"
        "    (xenemu_page_request_t *)0x7f0000001000ULL);\n"
        "  q.addr = 0x5010; q.pasid = 7; q.group = 9; q.dev.bus = 1; q.dev.devfn = 8;\n"
        "  q.flags = XENEMU_PAGE_REQUEST_WRITE;\n"
        "  a.ctx_no = 3; a.code = XENEMU_PAGE_RESPONSE_FAILURE; a.group = 9;\n"
        "  dump(&r, sizeof(r)); dump(&q, sizeof(q)); dump(&a, sizeof(a));\n"
        "  return IOMMU_read_page_requests == 14 && IOMMU_page_response == 15 &&\n"
        "    XENEMU_NESTED_PAGE_REQUESTS == 0x100 && XENEMU_PAGE_REQUESTS_MAX == 32 ? 0 : 1; }\n")
    prog = tmp_path / "prog"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    *abi_includes(2), str(src), "-o", str(prog)], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(prog)], check=True, capture_output=True, text=True).stdout
    r, q, a = (bytes.fromhex(line) for line in out.split())
    assert r == prq.ReadPageRequests.build(dict(ctx_no=3, _pad=bytes(2), max=32, count=5,
                                                _pad2=bytes(4), requests=0x7F0000001000))
    assert q == prq.PageRequestEntry.build(dict(addr=0x5010, pasid=7, group=9,
                                                dev=dict(seg=0, bus=1, devfn=8), flags=1,
                                                _pad=bytes(3)))
    assert a == prq.PageResponse.build(dict(ctx_no=3, code=15, group=9))
    assert prq.PRQ_MAX == 32 and nested.NESTED_PAGE_REQUESTS == 0x100


def test_ctl_shows_the_group_a_dma_waits_on(m, guest):
    from rich.console import Console
    from xenemu import ctl_tables

    def shown(reply):
        console = Console(record=True, width=100)
        console.print(ctl_tables.dma(reply))
        return console.export_text()
    assert "page_request: 1" in shown(dma(m, UNMAPPED, length=1))
    assert "page_request" not in shown(dma(m, 0, length=1))
