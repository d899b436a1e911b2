"""The C fast path (cext/fastpath.c, xenemu/fastpath.py) as its users see
it: it takes the hot cases (the Python handlers never run for them), and
what it leaves behind is what the handlers leave, byte for byte: replies,
the debug log line per hypercall, trace records and call counts. (The
random-program differential test is tests/test_fastpath_equivalence.py.)"""

from __future__ import annotations

import io
import logging

import pytest

from xenemu import hw
from xenemu.client import subop_frame
from xenemu.engine import Engine
from xenemu.fastpath import FastPath
from xenemu.hw import reference
from xenemu.hypercalls import iommu_op_v1 as v1, iommu_op_v2 as v2
from xenemu.hypercalls.common import HYPERVISOR_iommu_op
from xenemu.hw._hwlib import lib
from xenemu.hypervisor import Hypervisor
from xenemu.machine import default_machine
from xenemu.trace.pack import pack_in_python
from xenemu.trace.records import PackedHypercalls
from xenemu.wire import Region, encode_call

GADDR = 0x1000


def v1_call(req_id: int, subop: int, ctx: int = 0, flags: int = 0, view=None, **fields) -> bytes:
    op = v1.encode_op(subop, ctx, flags, view, **fields)
    return encode_call(req_id, HYPERVISOR_iommu_op, (GADDR,), (Region(GADDR, op),))


def v2_call(req_id: int, number: int, **params) -> bytes:
    if number == v2.IOMMU_map_pages:
        params.setdefault("map_flags", v2.IOMMU_MAP_readable | v2.IOMMU_MAP_writeable)
    args, regions = subop_frame(number, v2.encode(v2.SUBOPS_BY_NUMBER[number], **params))
    return encode_call(req_id, HYPERVISOR_iommu_op, args, regions)


def v1_program() -> tuple[list[bytes], list[bytes]]:
    """(setup, hot): a context, then every fast sub-op in its taken cases,
    failures of the run itself included."""
    setup = [v1_call(1, v1.IOMMUOP_alloc_context)]
    m, u, lk = "map_pages", "unmap_pages", "lookup_page"
    hot = [
        v1_call(2, v1.IOMMUOP_noop),
        v1_call(3, v1.IOMMUOP_query_capabilities),
        v1_call(4, v1.IOMMUOP_map_pages, 1, 3, m, gfn=0x10, dfn=0x100, nr_pages=8),
        v1_call(5, v1.IOMMUOP_map_pages, 1, 1, m, gfn=0x40, dfn=0x104, nr_pages=8),  # in use
        v1_call(6, v1.IOMMUOP_map_pages, 1, 3, m, gfn=0x10, dfn=(1 << 27) - 2,
                nr_pages=4),                                                      # width
        v1_call(7, v1.IOMMUOP_lookup_page, 1, 0, lk, dfn=0x103),
        v1_call(8, v1.IOMMUOP_lookup_page, 1, 0, lk, dfn=0x900),                  # none
        v1_call(9, v1.IOMMUOP_unmap_pages, 1, 0, u, dfn=0x100, nr_pages=16),      # hole
        v1_call(10, v1.IOMMUOP_unmap_pages, 1, 0, u, dfn=(1 << 27) - 2, nr_pages=2),
    ]
    return setup, hot


def v2_program() -> tuple[list[bytes], list[bytes]]:
    setup = [v2_call(1, v2.IOMMU_init, max_ctx_no=8, arena_order=10),
             v2_call(2, v2.IOMMU_alloc_context)]      # init's fall-through took 1: ctx 2
    hot = [
        v2_call(3, v2.IOMMU_noop),
        v2_call(4, v2.IOMMU_query_capabilities),
        v2_call(5, v2.IOMMU_map_pages, ctx_no=2, gfn=0x10, dfn=0x100, nr_pages=8),
        v2_call(6, v2.IOMMU_map_pages, ctx_no=2, gfn=0x40, dfn=0x107, nr_pages=2,
                mapped=5),                                                          # in use
        v2_call(7, v2.IOMMU_map_pages, ctx_no=1, gfn=0x10, dfn=(1 << 36) - 1, nr_pages=3),
        v2_call(8, v2.IOMMU_unmap_pages, ctx_no=2, dfn=0x100, nr_pages=9),          # hole
        v2_call(9, v2.IOMMU_unmap_pages, ctx_no=1, dfn=(1 << 36) - 1, nr_pages=1),
    ]
    return setup, hot


PROGRAMS = {1: v1_program, 2: v2_program}


class Run:
    """One program on a fresh machine, with or without the fast path, every
    frame in one receive buffer after the setup's, the debug log kept."""

    def __init__(self, revision: int, fast: bool, chunk: int | None = None):
        setup, hot = PROGRAMS[revision]()
        self.engine = Engine(Hypervisor(default_machine(revision)), record=True, fast_path=fast)
        domid = 0
        log = logging.getLogger("xenemu.pv_iommu")
        text = io.StringIO()
        handler = logging.StreamHandler(text)
        level = log.level
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        try:
            conn = self.engine.connection(domid)
            conn.receive_data(b"".join(setup))
            conn.answer()
            self.handled_by_python = sum(self.domain.calls.values())
            data = b"".join(hot)
            step = chunk or len(data)
            out = []
            for at in range(0, len(data), step):
                conn.receive_data(data[at:at + step])
                out.append(conn.answer())
            self.replies = b"".join(out)
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
        self.log = text.getvalue()
        self.hot = len(hot)

    @property
    def domain(self):
        return self.engine.hv.domains[0]


@pytest.mark.parametrize("revision", [1, 2])
def test_the_fast_path_takes_the_hot_cases(revision):
    run = Run(revision, fast=True)
    # The handlers counted the setup's calls alone; C answered the rest.
    assert sum(run.domain.calls.values()) == run.handled_by_python
    counts = run.domain.call_counts()
    assert sum(counts.values()) == run.handled_by_python + run.hot
    assert run.engine.hv.check_invariants() == []


@pytest.mark.parametrize("revision", [1, 2])
@pytest.mark.parametrize("chunk", [None, 7, 100])
def test_replies_log_lines_records_and_counts_are_the_handlers(revision, chunk):
    fast, slow = Run(revision, True, chunk), Run(revision, False, chunk)
    assert fast.replies == slow.replies
    assert fast.log == slow.log and fast.log.count("\n") >= fast.hot
    assert fast.domain.call_counts() == slow.domain.call_counts()
    # The records C packed are the ones the engine makes, and pack to the same bytes.
    fast_records, slow_records = fast.engine.records(), slow.engine.records()
    assert [(r.d, r.req, r.rep) for r in fast_records] == \
        [(r.d, r.req, r.rep) for r in slow_records]
    packed = [e for e in fast.engine.events if isinstance(e, PackedHypercalls)]
    assert packed and all(e.data == pack_in_python(e.records()) for e in packed)


def test_a_failure_the_run_meets_has_the_handlers_reason_in_the_log():
    run = Run(1, fast=True)
    assert "map_pages ctx=1 flags=0x1 gfn=0x40 dfn=0x104 nr_pages=8 -> -EADDRINUSE " \
           "mapped=0 (dfn 0x104 already mapped)" in run.log
    assert "-ENOENT unmapped=8 (no mapping at dfn 0x108)" in run.log
    assert "-ERANGE mapped=2 (dfn 0x8000000 above max_iova_addr)" in run.log


def test_off_by_the_environment_and_on_the_python_hardware(monkeypatch):
    hv = Hypervisor(default_machine())
    monkeypatch.delenv("XENEMU_FAST_PATH", raising=False)   # make test's second pass sets it
    assert Engine(hv).fast_path
    monkeypatch.setenv("XENEMU_FAST_PATH", "0")
    assert not Engine(hv).fast_path and Engine(hv, fast_path=True).fast_path
    monkeypatch.delenv("XENEMU_FAST_PATH")
    twin = Hypervisor(default_machine(), hw_impl=reference)
    assert FastPath.for_machine(twin) is None


def test_c_and_python_agree_on_the_numbers_they_share():
    assert lib.FP_HYPERCALL == HYPERVISOR_iommu_op
    assert lib.FP_NSUBOPS > max(r.number for r in v2.SUBOPS if r.fast)
    assert v1.IOMMU_OP.fast_subops == sum(1 << n for n in (0, 1, 5, 6, 7))
    assert v2.IOMMU_OP.fast_subops == sum(1 << n for n in (0, 1, 6, 7))
    assert hw.PAGE_SIZE == v2.PAGE_SIZE_4K
