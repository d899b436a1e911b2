"""Replaying a trace in process, through the daemon's own core. Sans-IO.

A Replayer builds the machine the trace header describes (restoring the
header's snapshot, when the recording daemon started from one), then takes
the records in order: each request frame goes through the engine the
daemon drives (xenemu.engine), at the time the record says (the machine's
EventClock is set from it), and the reply bytes are compared with the
recorded ones. Control records and refused frames go through the same
engine. The first difference is a Divergence with a readable report.

Continuations replay round by round where the trace says other events ran
between rounds, so interleavings are exact. Only guest-visible bytes are
compared: if this xenemu slices a long operation differently from the one
that recorded, the call is run to its end and its final reply compared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack

from . import tracetext, wire
from .engine import CloseDomain, Connection, Engine
from .hw import PAGE_SHIFT
from .hypervisor import Hypervisor, MachineError
from .machine import MachineConfig, format_sbdf
from .snapshot import SnapshotError, restore as restore_snapshot
from .trace import (ControlRecord, HypercallRecord, ProtocolRecord, Record, RoundRecord,
                    TraceError)


@dataclass
class Divergence:
    number: int      # the record (from 1)
    summary: str     # one line
    report: str      # the full readable report


@dataclass
class _Pending:
    """A continued hypercall between its rounds: its engine connection, and
    its reply if this xenemu finished it in fewer rounds than the recording."""
    number: int
    conn: Connection
    call: wire.Call
    reply: bytes | None = None


class Replayer:
    """`machine` and `snapshot` as a TraceReader read them from the header."""

    def __init__(self, machine: MachineConfig, snapshot: dict | None = None, *,
                 check_iotlb: bool = False):
        self._time = 0.0
        if snapshot is not None:
            self.hv = self._restore(snapshot, check_iotlb)
        else:
            if check_iotlb:
                machine = dataclasses.replace(machine, check_iotlb=True)
            try:
                self.hv = Hypervisor(machine, clock=lambda: self._time)
            except (MachineError, ValueError, OverflowError) as e:   # more than the host has
                raise TraceError(f"the trace's machine cannot be built: {e}") from None
        self.engine = Engine(self.hv)
        self._pending: dict[int, _Pending] = {}
        self.hypercalls = 0

    def _restore(self, snap: dict, check_iotlb: bool) -> Hypervisor:
        """The machine the recording daemon was restored from. The records'
        times go on from the snapshot's, so the clock starts there."""
        time = snap.get("time", 0.0)
        self._time = time if isinstance(time, (int, float)) else 0.0
        try:
            return restore_snapshot(snap, clock=lambda: self._time, check_iotlb=check_iotlb,
                                    where="the trace's snapshot")
        except SnapshotError as e:
            raise TraceError(str(e)) from None

    def replay(self, number: int, rec: Record) -> Divergence | None:
        """Run one record; None when the machine answered as recorded."""
        self._time = rec.t
        if isinstance(rec, HypercallRecord):
            return self._hypercall(number, rec)
        if isinstance(rec, RoundRecord):
            return self._round(number, rec)
        if isinstance(rec, ControlRecord):
            return self._control(number, rec)
        return self._protocol(number, rec)

    def _domain_destroyed(self, domid: int) -> None:
        """A call that was continuing there ends, as the daemon ends it (GONE)."""
        self._pending = {c: p for c, p in self._pending.items() if p.conn.domid != domid}

    def unfinished(self) -> list[str]:
        """Continued calls the trace never finished (the daemon died mid-call)."""
        return [f"record {p.number}: d{p.conn.domid} {tracetext.request_text(p.call)} "
                f"was still continuing when the trace ended" for p in self._pending.values()]

    # -- hypercalls ------------------------------------------------------------

    def _hypercall(self, number: int, rec: HypercallRecord) -> Divergence | None:
        call = tracetext.recorded_call(number, rec.req)
        self.hypercalls += 1
        try:
            conn = self.engine.connection(rec.d)
        except MachineError:
            raise TraceError(f"the trace calls from d{rec.d}, which does not exist at this "
                             f"point") from None
        reply = conn.start(call)
        if rec.rep is None:      # the recording continued here, with other events between rounds
            self._pending[rec.c] = _Pending(number, conn, call, reply)
            return None
        return self._finish(number, conn, call, reply, rec.rep)

    def _round(self, number: int, rec: RoundRecord) -> Divergence | None:
        pending = self._pending.get(rec.c)
        if pending is None:
            raise TraceError(f"record {number}: a round of continuation {rec.c}, "
                             f"which no earlier record began")
        if pending.reply is None:
            pending.reply = pending.conn.resume()
        if rec.rep is None:
            return None
        del self._pending[rec.c]
        return self._finish(number, pending.conn, pending.call, pending.reply, rec.rep)

    def _finish(self, number, conn: Connection, call, reply: bytes | None,
                expected: bytes) -> Divergence | None:
        while reply is None:    # this xenemu needs more rounds than the recording did
            reply = conn.resume()
        if reply == expected:
            return None
        return self._hypercall_divergence(number, conn.domid, call, expected, reply)

    def _hypercall_divergence(self, number, domid, call, expected: bytes, actual: bytes):
        want = tracetext.recorded_reply(number, expected)
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
        abi, op = tracetext.described(call, call.regions)
        if d is None or op is None or "ctx_no" not in abi.head_names:
            return ["(not a PV-IOMMU call: no context)"]
        ctx = d.context(op.ctx_no)
        if ctx is None:
            allocated = [c.ctx_no for c in d.contexts if c is not None]
            return [f"d{domid} context {op.ctx_no}: not allocated "
                    f"(allocated: {allocated}, pool of {d.nr_contexts})"]
        info = self.hv.iommu.context_info(ctx.hw)
        devices = ", ".join(format_sbdf(s) for s in sorted(ctx.devices)) or "none"
        out = [f"d{domid} context {op.ctx_no}: {'dying, ' if ctx.dying else ''}"
               f"{info.mapped} pages mapped, {info.tables} table pages, devices: {devices}"]
        fields = abi.view_fields(op)
        if "dfn" in fields:     # the sub-op names device frames: show the first few
            count = min(fields.get("nr_pages", 1) or 1, 8)
            if fields["dfn"] + count <= self.hv.iommu.max_iova_addr >> PAGE_SHIFT:
                mfns, perms = self.hv.iommu.lookup_run(ctx.hw, fields["dfn"], count)
                gfns = self.hv.machine.m2p(mfns)
                for i in range(count):
                    what = (f"gfn {gfns[i]:#x} {'r' if perms[i] & 1 else '-'}"
                            f"{'w' if perms[i] & 2 else '-'}" if perms[i] else "not mapped")
                    out.append(f"dfn {fields['dfn'] + i:#x}: {what}")
        return out

    # -- control and protocol errors --------------------------------------------

    def _control(self, number: int, rec: ControlRecord) -> Divergence | None:
        reply, effects = self.engine.control(rec.req)
        for effect in effects:
            if isinstance(effect, CloseDomain):
                self._domain_destroyed(effect.domid)
        actual = msgpack.unpackb(msgpack.packb(reply, use_bin_type=True),
                                 raw=False, strict_map_key=False)
        expected = rec.rep
        if expected.get("ok") is False and actual.get("ok") is False:
            return None     # refused both times: the wording of the refusal may change
        if _covers(actual, expected):
            return None
        req = rec.req
        args = tracetext.control_args(req)
        keys = list(expected) + [k for k in actual if k not in expected]
        short = tracetext.short_value
        rows = tracetext.side_by_side([(k, short(expected.get(k, "-"))) for k in keys],
                                      [(k, short(actual.get(k, "-"))) for k in keys])
        report = "\n".join([f"divergence at record {number} (t={self._time:.6f} s): "
                            f"control {req.get('op')} {args}", "  reply:", *rows])
        return Divergence(number, f"record {number}: control {req.get('op')} {args}: "
                                  f"the reply differs", report)

    def _protocol(self, number: int, rec: ProtocolRecord) -> Divergence | None:
        decoder = wire.FrameDecoder.for_server()
        decoder.feed(rec.raw)
        try:
            for _ in decoder:
                pass
            if rec.eof:
                decoder.close()
        except wire.ProtocolError as e:
            sent = self.engine.protocol_error(rec.d, rec.raw, e)
            if e.code == rec.code and (sent == rec.rep or rec.rep is None):
                return None
            got = wire.ERROR_NAMES.get(e.code, e.code)
        else:
            got = "no error: the frame is accepted now"
        want = wire.ERROR_NAMES.get(rec.code, rec.code)
        report = (f"divergence at record {number}: d{rec.d} sent {len(rec.raw)} bytes "
                  f"the recording refused with {want}; this xenemu: {got}\n"
                  f"  bytes: {rec.raw[:64].hex(' ')}{' ...' if len(rec.raw) > 64 else ''}")
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
