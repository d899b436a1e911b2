"""Replaying a trace in process, through the daemon's own core. Sans-IO.

A Replayer builds the machine the trace header describes (restoring the
header's snapshot, when the recording daemon started from one), then takes
the records in order: each request frame goes through the same FrameDecoder,
Hypervisor and encoder the daemon uses, at the time the record says (the
machine's EventClock is set from it), and the reply bytes are compared
with the recorded ones. Control records go through the same Control
handler. The first difference is a Divergence with a readable report.

Continuations replay round by round where the trace says other events ran
between rounds, so interleavings are exact. Only guest-visible bytes are
compared: if this xenemu slices a long operation differently from the one
that recorded, the call is run to its end and its final reply compared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack

from . import abi, snapshot, tracetext, wire
from .control import Control
from .guest import GuestMemory
from .hypervisor import RESTART, Hypervisor
from .machine import ConfigError, format_sbdf, machine_from_dict
from .trace import CONTROL, HYPERCALL, PROTOCOL, ROUND, TraceError


@dataclass
class Divergence:
    number: int      # the record (from 1)
    summary: str     # one line
    report: str      # the full readable report


@dataclass
class _Pending:
    """A continued hypercall between its rounds."""
    number: int
    domid: int
    call: wire.Call
    mem: GuestMemory
    ret: int = RESTART


class Replayer:
    def __init__(self, header: dict, *, check_iotlb: bool = False):
        self._time = 0.0
        if "snapshot" in header:
            self.hv = self._restore(header["snapshot"], check_iotlb)
        else:
            try:
                config = machine_from_dict(header["machine"], "trace header")
            except (ConfigError, TypeError) as e:
                raise TraceError(f"the trace's machine cannot be built: {e}") from None
            if check_iotlb:
                config = dataclasses.replace(config, check_iotlb=True)
            self.hv = Hypervisor(config, clock=lambda: self._time)
        self.control = Control(self.hv, on_domain_destroyed=self._domain_destroyed)
        self._pending: dict[int, _Pending] = {}
        self.hypercalls = 0

    def _restore(self, snap, check_iotlb: bool) -> Hypervisor:
        """The machine the recording daemon was restored from. The records'
        times go on from the snapshot's, so the clock starts there."""
        self._time = snap.get("time", 0.0) if isinstance(snap, dict) else 0.0
        try:
            return snapshot.restore(snap, clock=lambda: self._time, check_iotlb=check_iotlb,
                                    where="the trace's snapshot")
        except snapshot.SnapshotError as e:
            raise TraceError(str(e)) from None

    def replay(self, number: int, rec: dict) -> Divergence | None:
        """Run one record; None when the machine answered as recorded."""
        self._time = rec["t"]
        kind = rec["k"]
        if kind == HYPERCALL:
            return self._hypercall(number, rec)
        if kind == ROUND:
            return self._round(number, rec)
        if kind == CONTROL:
            return self._control(number, rec)
        if kind == PROTOCOL:
            return self._protocol(number, rec)
        raise TraceError(f"record {number}: unknown kind {kind!r}")

    def _domain_destroyed(self, domid: int) -> None:
        """A call that was continuing there ends, as the daemon ends it (GONE)."""
        self._pending = {c: p for c, p in self._pending.items() if p.domid != domid}

    def unfinished(self) -> list[str]:
        """Continued calls the trace never finished (the daemon died mid-call)."""
        return [f"record {p.number}: d{p.domid} {tracetext.request_text(p.call)} "
                f"was still continuing when the trace ended" for p in self._pending.values()]

    # -- hypercalls ------------------------------------------------------------

    def _run(self, domid: int, call: wire.Call, mem: GuestMemory) -> int:
        if domid not in self.hv.domains:
            raise TraceError(f"the trace calls from d{domid}, which does not exist at this point")
        return self.hv.hypercall(domid, call.op, call.args, mem)

    def _hypercall(self, number: int, rec: dict) -> Divergence | None:
        try:
            call = tracetext.decode_call(rec["req"])
        except wire.ProtocolError as e:
            raise TraceError(f"record {number}: the recorded request is not a valid frame ({e})")
        self.hypercalls += 1
        mem = GuestMemory(call.regions)
        ret = self._run(rec["d"], call, mem)
        if rec["rep"] is None:      # the recording continued here, with other events between rounds
            self._pending[rec["c"]] = _Pending(number, rec["d"], call, mem, ret)
            return None
        return self._finish(number, rec["d"], call, mem, ret, rec["rep"])

    def _round(self, number: int, rec: dict) -> Divergence | None:
        pending = self._pending.get(rec["c"])
        if pending is None:
            raise TraceError(f"record {number}: a round of continuation {rec['c']}, "
                             f"which no earlier record began")
        if pending.ret == RESTART:
            pending.ret = self._run(pending.domid, pending.call, pending.mem)
        if rec["rep"] is None:
            return None
        del self._pending[rec["c"]]
        return self._finish(number, pending.domid, pending.call, pending.mem, pending.ret,
                            rec["rep"])

    def _finish(self, number, domid, call, mem, ret, expected: bytes) -> Divergence | None:
        while ret == RESTART:   # this xenemu needs more rounds than the recording did
            ret = self._run(domid, call, mem)
        actual = wire.encode_reply(call.req_id, ret, mem.regions())
        if actual == expected:
            return None
        return self._hypercall_divergence(number, domid, call, expected, actual)

    def _hypercall_divergence(self, number, domid, call, expected: bytes, actual: bytes):
        want = tracetext.decode_reply(expected)
        got = tracetext.decode_reply(actual)
        lines = [f"divergence at record {number} (t={self._time:.6f} s): "
                 f"d{domid} {tracetext.request_text(call)}",
                 f"  expected {tracetext.result_text(call, want)}, "
                 f"got {tracetext.result_text(call, got)}",
                 "  request:"]
        lines += [f"    {k:<12} {v}" for k, v in tracetext.request_fields(call)]
        lines.append("  reply:")
        lines += tracetext.side_by_side(tracetext.reply_fields(call, want),
                                        tracetext.reply_fields(call, got))
        lines.append("  " + tracetext.first_difference(expected, actual))
        lines += ["  context state now:"] + [f"    {s}" for s in self._context_state(domid, call)]
        summary = (f"record {number}: d{domid} {tracetext.request_text(call)}: expected "
                   f"{tracetext.result_text(call, want)}, got {tracetext.result_text(call, got)}")
        return Divergence(number, summary, "\n".join(lines))

    def _context_state(self, domid: int, call: wire.Call) -> list[str]:
        """The state of the context the call names, and of the dfns it touches."""
        d = self.hv.domains.get(domid)
        raw = tracetext.op_bytes(call.regions, call.args[0]) if call.args else None
        if d is None or call.op != abi.HYPERVISOR_iommu_op or raw is None:
            return ["(not a PV-IOMMU call: no context)"]
        head = abi.OpHead.parse(raw)
        ctx = d.context(head.ctx_no)
        if ctx is None:
            allocated = [c.ctx_no for c in d.contexts if c is not None]
            return [f"d{domid} context {head.ctx_no}: not allocated "
                    f"(allocated: {allocated}, pool of {d.nr_contexts})"]
        info = self.hv.iommu.context_info(ctx.hw)
        devices = ", ".join(format_sbdf(s) for s in sorted(ctx.devices)) or "none"
        out = [f"d{domid} context {head.ctx_no}: {'dying, ' if ctx.dying else ''}"
               f"{info.mapped} pages mapped, {info.tables} table pages, devices: {devices}"]
        view = abi.SUBOP_VIEW.get(head.subop_id)
        if view in ("map_pages", "unmap_pages", "lookup_page"):
            fields = abi.VIEWS[view].parse(head.payload)
            count = min(getattr(fields, "nr_pages", 1) or 1, 8)
            if fields.dfn + count <= self.hv.iommu.max_iova_addr >> 12:
                mfns, perms = self.hv.iommu.lookup_run(ctx.hw, fields.dfn, count)
                gfns = self.hv.machine.m2p(mfns)
                for i in range(count):
                    what = (f"gfn {gfns[i]:#x} {'r' if perms[i] & 1 else '-'}"
                            f"{'w' if perms[i] & 2 else '-'}" if perms[i] else "not mapped")
                    out.append(f"dfn {fields.dfn + i:#x}: {what}")
        return out

    # -- control and protocol errors --------------------------------------------

    def _control(self, number: int, rec: dict) -> Divergence | None:
        actual = msgpack.unpackb(msgpack.packb(self.control.handle(rec["req"]), use_bin_type=True),
                                 raw=False, strict_map_key=False)
        expected = rec["rep"]
        if expected.get("ok") is False and actual.get("ok") is False:
            return None     # refused both times: the wording of the refusal may change
        if _covers(actual, expected):
            return None
        req = rec["req"]
        args = tracetext.control_args(req)
        keys = list(expected) + [k for k in actual if k not in expected]
        short = tracetext.short_value
        rows = tracetext.side_by_side([(k, short(expected.get(k, "-"))) for k in keys],
                                      [(k, short(actual.get(k, "-"))) for k in keys])
        report = "\n".join([f"divergence at record {number} (t={self._time:.6f} s): "
                            f"control {req.get('op')} {args}", "  reply:", *rows])
        return Divergence(number, f"record {number}: control {req.get('op')} {args}: "
                                  f"the reply differs", report)

    def _protocol(self, number: int, rec: dict) -> Divergence | None:
        decoder = wire.FrameDecoder.for_server()
        decoder.feed(rec["raw"])
        try:
            for _ in decoder:
                pass
            if rec["eof"]:
                decoder.close()
        except wire.ProtocolError as e:
            sent = None if e.code == wire.ERR_TRUNCATED else \
                wire.encode_error(e.req_id, e.code, e.message)
            if e.code == rec["code"] and (sent == rec.get("rep") or rec.get("rep") is None):
                return None
            got = wire.ERROR_NAMES.get(e.code, e.code)
        else:
            got = "no error: the frame is accepted now"
        want = wire.ERROR_NAMES.get(rec["code"], rec["code"])
        report = (f"divergence at record {number}: d{rec['d']} sent {len(rec['raw'])} bytes "
                  f"the recording refused with {want}; this xenemu: {got}\n"
                  f"  bytes: {rec['raw'][:64].hex(' ')}{' ...' if len(rec['raw']) > 64 else ''}")
        return Divergence(number, f"record {number}: protocol error {want} expected, got {got}",
                          report)



def _covers(actual, expected) -> bool:
    """actual holds everything expected holds: maps may have gained keys (a
    later xenemu may report more), every recorded value must be there."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _covers(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            _covers(a, e) for a, e in zip(actual, expected))
    return actual == expected
