"""Sub-ops describe themselves: a sub-op is one row in its ABI module's table
plus one handler, and the log line, the trace text, trace stats' page counts
and the client helpers follow from the row. A failure carries its reason
from the handler to the log line (HypercallError), with no side channel.

In process on purpose: the toy sub-op lives in a copy of the table, which
only this process's hypervisor dispatches through."""

from __future__ import annotations

import dataclasses
import inspect
import logging

from xenemu import hypercalls, wire
from xenemu.trace import text as tracetext
from xenemu.trace.records import HypercallRecord
from xenemu.errno import XenErrno as E
from xenemu.engine import Engine
from xenemu.hypercalls.common import HypercallError, SubOp, client_helpers
from xenemu.hypercalls.iommu_op_v1 import (IOMMU_OP, MAP_PAGES, OP_SIZE, MapPages,
                                           encode_subop)
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig

GADDR = 0x7F00_0000_0000
TOY = 99


def toy_op(hv, d, op) -> int:
    """Counts pages without mapping them; more than two is refused."""
    gfn, dfn, nr_pages, _ = MAP_PAGES.unpack(op.payload)
    op.payload = MAP_PAGES.pack(gfn, dfn, nr_pages, min(nr_pages, 2))
    if nr_pages > 2:
        raise HypercallError(E.E2BIG, f"toys stop at 2 pages, not {nr_pages}")
    return 0


TOY_ROW = SubOp(TOY, "toy_pages", toy_op, view="map_pages", layout=MapPages,
                inputs=("dfn", "nr_pages"), outputs=("mapped",), outputs_on_error=True,
                pages="mapped", params=("ctx_no", "dfn", ("nr_pages", 1)))


def _machine(monkeypatch):
    toy_abi = dataclasses.replace(IOMMU_OP, subops={**IOMMU_OP.subops, TOY: TOY_ROW})
    monkeypatch.setitem(hypercalls.ABIS, IOMMU_OP.number, toy_abi)
    hv = Hypervisor(MachineConfig(memory_mib=64, domains=(
        DomainConfig(0, hardware=True, memory_mib=8, contexts=2),)))
    return toy_abi, hv


class InProcess:
    """A client of the toy table: its helpers come from the rows alone."""

    def __init__(self, toy_abi, hv):
        self.helpers = client_helpers(toy_abi, encode_subop)
        self.engine = Engine(hv)
        self.calls = []

    def client(self):
        outer = self

        class Client(self.helpers):
            def iommu_op(self, raw: bytes):
                call = wire.Call(len(outer.calls) + 1, IOMMU_OP.number, (GADDR, 0, 0, 0, 0),
                                 (wire.Region(GADDR, raw),))
                decoder = wire.FrameDecoder.for_client()
                decoder.feed(outer.engine.complete(0, call))
                [reply] = decoder
                outer.calls.append((call, reply))
                return reply
        return Client()


def test_a_new_subop_is_one_row_and_one_handler(monkeypatch, caplog):
    toy_abi, hv = _machine(monkeypatch)
    world = InProcess(toy_abi, hv)
    xen = world.client()
    assert str(inspect.signature(xen.toy_pages)) == "(ctx_no, dfn, nr_pages=1)"
    assert hasattr(xen, "map_pages")          # the revision's other rows are still there

    with caplog.at_level(logging.DEBUG, logger="xenemu.pv_iommu"):
        ok = xen.toy_pages(1, 0x40)
        refused = xen.toy_pages(1, 0x40, nr_pages=5)
    assert ok.ret == 0 and refused.ret == -E.E2BIG
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "[PV-IOMMU] d0: toy_pages ctx=1 flags=0x0 dfn=0x40 nr_pages=1 -> 0 mapped=1",
        "[PV-IOMMU] d0: toy_pages ctx=1 flags=0x0 dfn=0x40 nr_pages=5 -> -E2BIG mapped=2 "
        "(toys stop at 2 pages, not 5)"]

    call, reply = world.calls[1]
    assert tracetext.call_name(call) == "toy_pages"
    assert tracetext.request_text(call) == \
        "iommu_op toy_pages ctx=1 flags=0x0 dfn=0x40 nr_pages=5"
    assert tracetext.result_text(call, reply) == "-E2BIG mapped=2"
    assert ("subop_id", f"toy_pages ({TOY})") in tracetext.request_fields(call)
    assert ("mapped", "2") in tracetext.reply_fields(call, reply)

    # trace stats counts the pages of the output the row names.
    rec = HypercallRecord(t=0.0, d=0, req=wire.encode_call(call.req_id, call.op, call.args,
                                                            call.regions),
                          rep=wire.encode_reply(reply.req_id, reply.ret, reply.regions))
    assert tracetext.Describer(with_text=False).event(1, rec).pages == ("mapped", 2)


def test_a_failure_carries_its_reason_to_the_dispatch(monkeypatch):
    toy_abi, hv = _machine(monkeypatch)
    op = toy_abi.op_type.unpack(encode_subop(TOY_ROW, ctx_no=1, dfn=0, nr_pages=3))
    assert toy_abi.run(hv, hv.domains[0], op) == (-E.E2BIG, "toys stop at 2 pages, not 3")
    # The gate refuses with its own reason, before any sub-op runs.
    hv.domains[0].hardware = False
    op = toy_abi.op_type.unpack(bytes(OP_SIZE))
    assert toy_abi.run(hv, hv.domains[0], op) == (-E.EPERM, "Non-hardware domain")
    op.subop_id = 1234
    hv.domains[0].hardware = True
    assert toy_abi.run(hv, hv.domains[0], op) == (-E.EINVAL, "unknown sub-op 1234")
