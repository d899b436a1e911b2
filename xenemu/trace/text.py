"""Trace records as text a person reads: one event per record (what `xenemu
trace show` prints and `trace stats` counts), a request field by field, and
two replies side by side (replay's divergence report). Functions of the
recorded bytes; the sub-ops' rows (xenemu.hypercalls) say how to read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import wire
from ..errno import result_name
from ..hypercalls import abis, hypercall_name
from ..hypercalls import HAZARDS
from ..wire import Call, FrameDecoder, Reply
from .records import (ControlRecord, Continuations, HazardRecord, HypercallRecord, Record,
                      RoundRecord, TraceError)


def _decode_one(decoder: FrameDecoder, raw: bytes, what: str):
    try:
        return decoder.whole_frame(raw)
    except wire.ProtocolError as e:
        if e.code != wire.ERR_TRUNCATED:
            raise
        raise wire.ProtocolError(wire.ERR_TRUNCATED,
                                 f"the recorded {what} is not one whole frame") from None


def decode_call(raw: bytes) -> Call:
    return _decode_one(FrameDecoder.for_server(), raw, "request")


def decode_reply(raw: bytes) -> Reply | wire.Error:
    return _decode_one(FrameDecoder.for_client(), raw, "reply")


def recorded_call(number: int, raw: bytes) -> Call:
    """The request of record `number`; TraceError when it is not a CALL frame."""
    try:
        return decode_call(raw)
    except wire.ProtocolError as e:
        raise TraceError(f"record {number}: req: not a CALL frame ({e})") from None


def recorded_reply(number: int, raw: bytes) -> Reply | wire.Error:
    """The reply of record `number`; TraceError when it is not a REPLY or ERROR frame."""
    try:
        return decode_reply(raw)
    except wire.ProtocolError as e:
        raise TraceError(f"record {number}: rep: not a REPLY frame ({e})") from None


def described(call: Call, regions, revision: int = 1):
    """(the call's ABI, its struct as the regions hold it), or (None, None)
    for a hypercall without an ABI module or a struct the regions miss.
    `revision`: the PV-IOMMU revision of the machine the call was made on."""
    abi = abis(revision).get(call.op)
    op = abi.describe(call.args, regions) if abi is not None else None
    return (abi, op) if op is not None else (None, None)


def context_of(abi, op) -> int | None:
    """The context number a described call names (a head field in revision 1,
    a field of the sub-op's struct in revision 2), or None."""
    if op is None:
        return None
    if "ctx_no" in abi.head_names:
        return op.ctx_no
    return abi.view_fields(op).get("ctx_no")


def call_name(call: Call, revision: int = 1) -> str:
    """The sub-op's name for a hypercall with sub-ops, else the hypercall's."""
    abi, op = described(call, call.regions, revision)
    return abi.subop_name(getattr(op, abi.subop_field)) if op else hypercall_name(call.op)


def request_text(call: Call, revision: int = 1) -> str:
    """'iommu_op map_pages ctx=1 flags=0x3 gfn=0x10 dfn=0x20 nr_pages=4'."""
    abi, op = described(call, call.regions, revision)
    if op is None:
        args = " ".join(f"{a:#x}" for a in call.args)
        return f"{hypercall_name(call.op)} args {args}"
    row = abi.row(op)
    return f"{abi.name} {abi.request_text(op)}" + abi.format_fields(op, row.inputs if row else ())


def result_text(call: Call, reply, revision: int = 1) -> str:
    """'-EADDRINUSE mapped=2': the return value and the sub-op's outputs."""
    if isinstance(reply, wire.Error):
        return f"ERROR {wire.ERROR_NAMES.get(reply.code, reply.code)}: {reply.message}"
    abi, op = described(call, reply.regions, revision)
    row = abi.row(op) if op else None
    return result_name(reply.ret) + (abi.format_fields(op, row.outputs) if row else "")


def request_fields(call: Call, revision: int = 1) -> list[tuple[str, str]]:
    """The request field by field, as a C reader of the frame sees it."""
    rows = [("req_id", str(call.req_id)),
            ("hypercall", f"{hypercall_name(call.op)} ({call.op})")]
    rows += [(f"arg{i}", f"{a:#x}") for i, a in enumerate(call.args) if a]
    abi, op = described(call, call.regions, revision)
    if op is not None:
        number = getattr(op, abi.subop_field)
        rows.append((abi.subop_field, f"{abi.subop_name(number)} ({number})"))
        row = abi.row(op)
        names = [n for n in abi.head_names if n != abi.subop_field]
        rows += abi.field_values(op, names + list(row.inputs if row else ()))
    for r in call.regions:
        rows.append((f"region {r.gaddr:#x}", f"{len(r.data)} bytes"))
    return rows


def reply_fields(call: Call, reply, revision: int = 1) -> list[tuple[str, str]]:
    """A reply's fields for side by side comparison: ret, every field of the
    written-back struct, and every written-back region's bytes."""
    if isinstance(reply, wire.Error):
        return [("frame", f"ERROR {wire.ERROR_NAMES.get(reply.code, reply.code)}"),
                ("message", reply.message)]
    rows = [("req_id", str(reply.req_id)), ("ret", result_name(reply.ret))]
    abi, op = described(call, reply.regions, revision)
    if op is not None:
        rows += abi.all_fields(op)
        # Bytes the decoded fields do not show (the union's unused bytes, other regions).
        rows.append(("op bytes", op.pack().hex()))
    for r in reply.regions:
        if op is None or r.gaddr != call.args[abi.handle_arg] or len(r.data) != len(op.pack()):
            rows.append((f"bytes at {r.gaddr:#x}", short_hex(r.data)))
    return rows


def short_hex(data: bytes, limit: int = 32) -> str:
    return data[:limit].hex() + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def paired(expected: list[tuple[str, str]],
           actual: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(field, expected, actual) for every field of either, '-' where one lacks it."""
    exp, act = dict(expected), dict(actual)
    names = list(exp) + [n for n in act if n not in exp]
    return [(n, exp.get(n, "-"), act.get(n, "-")) for n in names]


def side_by_side(rows: list[tuple[str, str, str]]) -> list[str]:
    """paired() rows as 'field  expected  actual', differing ones marked with '<<'."""
    w_name = max(len(n) for n, _, _ in rows + [("field", "", "")])
    w_exp = max([min(len(e), 48) for _, e, _ in rows] + [len("expected")])
    lines = [f"    {'field':<{w_name}}  {'expected':<{w_exp}}  actual"]
    for n, e, a in rows:
        mark = "" if e == a else "  <<"
        lines.append(f"    {n:<{w_name}}  {e:<{w_exp}}  {a}{mark}")
    return lines


def first_difference(expected: bytes, actual: bytes) -> str:
    for i, (x, y) in enumerate(zip(expected, actual)):
        if x != y:
            return f"first differing byte of the reply frame: offset {i} ({x:#04x} expected, {y:#04x} got)"
    return (f"reply frames differ in length: {len(expected)} bytes expected, "
            f"{len(actual)} got")


def short_value(value) -> str:
    """A control argument or reply value in at most about 72 characters."""
    if isinstance(value, bytes):
        return value[:24].hex(" ") + (" ..." if len(value) > 24 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value > 9:
        return f"{value:#x}"
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 72 else text[:69] + "..."


def control_args(req: dict) -> str:
    return " ".join(f"{k}={short_value(v)}" for k, v in req.items() if k != "op")


def control_result(reply: dict) -> str:
    if not reply.get("ok"):
        return f"refused: {reply.get('error', '?')}"
    rest = " ".join(f"{k}={short_value(v)}" for k, v in reply.items() if k != "ok")
    return "ok" + (" " + rest if rest else "")


def hazard_text(rec: HazardRecord) -> str:
    """A hazard record in one line: what met it, and the Xen code that would fail."""
    h = HAZARDS.get(rec.name)
    tail = f"; {h.code} would fail in {h.xen}; xenemu answered {h.answer}" if h else ""
    return f"HAZARD {rec.name}: {rec.why}{tail}"


# -- one event per record ------------------------------------------------------

@dataclass
class Event:
    """A record made readable: what `show` prints and `stats` counts."""
    number: int
    t: float
    domid: int | None
    name: str            # sub-op, hypercall, control op, or 'protocol'
    kind: str            # 'hypercall', 'control', 'protocol', 'hazard'
    text: str
    result: str = ""     # '0', '-EINVAL', 'ok', 'refused', 'BAD_MAGIC', '' while continuing
    failed: bool = False
    pages: tuple[str, int] | None = None   # (the row's page-count output, count)
    ctx: int | None = None                 # the context the call names, if it names one


class Describer:
    """Turns records into Events, following continued calls across rounds."""

    def __init__(self, with_text: bool = True, revision: int = 1):
        self._continuations = Continuations()
        self._with_text = with_text   # stats needs names and results, not the text
        self._revision = revision     # the PV-IOMMU revision of the trace's machine

    def event(self, number: int, rec: Record) -> Event:
        if isinstance(rec, HypercallRecord):
            call = recorded_call(number, rec.req)
            if rec.rep is None:
                self._continuations.begin(number, rec, call)
                return self._hypercall(number, rec.t, rec.d, call, None,
                                       f" -> continues (c{rec.c})")
            return self._hypercall(number, rec.t, rec.d, call, rec.rep, "")
        if isinstance(rec, RoundRecord):
            cont = self._continuations.round(rec)
            if cont is None:
                return Event(number, rec.t, None, "?", "hypercall",
                             f"round of unknown continuation c{rec.c}")
            if rec.rep is None:
                return self._hypercall(number, rec.t, cont.domid, cont.call, None,
                                       f" -> continues (c{rec.c}, round {cont.rounds})")
            return self._hypercall(number, rec.t, cont.domid, cont.call, rec.rep,
                                   f" (c{rec.c}, {cont.rounds} rounds)")
        if isinstance(rec, HazardRecord):
            return Event(number, rec.t, rec.d, rec.name, "hazard", hazard_text(rec), "hazard",
                         True)
        if isinstance(rec, ControlRecord):
            req, rep = rec.req, rec.rep
            domid = req.get("domid") if isinstance(req.get("domid"), int) else None
            ok = bool(rep.get("ok"))
            return Event(number, rec.t, domid, str(req.get("op")), "control",
                         f"control {req.get('op')} {control_args(req)} -> "
                         f"{control_result(rep)}",
                         "ok" if ok else "refused", not ok)
        code = wire.ERROR_NAMES.get(rec.code, str(rec.code))
        how = "stream ended mid-frame" if rec.eof else "ERROR frame sent, connection closed"
        return Event(number, rec.t, rec.d, "protocol", "protocol",
                     f"protocol error {code} on {len(rec.raw)} bytes ({how})", code, True)

    def _hypercall(self, number, t, domid, call, rep, suffix) -> Event:
        revision = self._revision
        name = call_name(call, revision)
        text = request_text(call, revision) if self._with_text else ""
        if rep is None:
            return Event(number, t, domid, name, "hypercall", text + suffix)
        reply = recorded_reply(number, rep)
        failed = not isinstance(reply, wire.Reply) or reply.ret < 0
        result = result_name(reply.ret) if isinstance(reply, wire.Reply) else "ERROR"
        pages = ctx = None
        if isinstance(reply, wire.Reply):
            abi, op = described(call, reply.regions, revision)
            # The context from the reply's struct; from the request's where the
            # reply has none (revision 2's sub-ops that copy nothing back).
            ctx = context_of(abi, op) if op is not None else \
                context_of(*described(call, call.regions, revision))
            row = abi.row(op) if op is not None else None
            if row is not None and row.pages:
                count = abi.view_fields(op)[row.pages]
                if abi.subop_arg is not None:
                    # Revision 2's counts accumulate on the guest's own value.
                    _, sent = described(call, call.regions, revision)
                    count -= abi.view_fields(sent)[row.pages] if sent is not None else 0
                pages = (row.pages, count)
        if self._with_text:
            text = f"{text} -> {result_text(call, reply, revision)}{suffix}"
        return Event(number, t, domid, name, "hypercall", text, result, failed, pages, ctx)
