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

`replay_file` reads a trace file and replays it, as `xenemu replay` does.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from .. import wire
from ..engine import CloseDomain, Connection, Engine
from ..hw import PAGE_SHIFT
from ..hypervisor import Hypervisor, MachineError
from ..machine import MachineConfig
from ..pci import format_sbdf
from ..snapshot import SnapshotError, restore as restore_snapshot
from . import text as tracetext
from .reader import TraceReader, located
from .records import (ControlRecord, Continuations, HazardRecord, HypercallRecord,
                      ProtocolRecord, Record, RoundRecord, TraceError)


@dataclass
class Divergence:
    number: int      # the record (from 1)
    summary: str     # one line
    report: str      # the full readable report
    # The same, as rows for a table (xenemu trace report): the request's
    # fields, and the reply's as (field, expected, actual).
    request: list[tuple[str, str]] = field(default_factory=list)
    fields: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class _Running:
    """A continued hypercall between its recorded rounds: its engine connection,
    and its reply if this xenemu finished it in fewer rounds than the recording."""
    conn: Connection
    reply: bytes | None = None


class Replayer:
    """`machine` and `snapshot` as a TraceReader read them from the header."""

    def __init__(self, machine: MachineConfig, snapshot: dict | None = None, *,
                 check_iotlb: bool = False, fast_path: bool | None = None):
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
        self.engine = Engine(self.hv, fast_path=fast_path)
        self.revision = self.hv.config.pv_iommu_revision   # how its calls read
        self._continuations = Continuations()
        self.hypercalls = 0
        self.hazards: list[str] = []     # the trace's hazard records, as report lines
        # The hypercall record a hazard record follows: (number, domid, frame),
        # put in words only when a hazard needs it (most calls never do).
        self._last_call: tuple | None = None

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
        if isinstance(rec, HazardRecord):
            self.hazards.append(f"record {number}: d{rec.d} {tracetext.hazard_text(rec)} "
                                f"(after {self._last_call_text()})")
            return None
        return self._protocol(number, rec)

    def unfinished(self) -> list[str]:
        """Continued calls the trace never finished (the daemon died mid-call)."""
        rev = self.revision
        return [f"record {c.number}: d{c.domid} {tracetext.request_text(c.call, rev)} "
                f"was still continuing when the trace ended"
                for c in self._continuations.unfinished()]

    def _last_call_text(self) -> str:
        if self._last_call is None:
            return "no call"
        number, domid, raw = self._last_call
        call = tracetext.recorded_call(number, raw)
        return f"record {number}: d{domid} {tracetext.request_text(call, self.revision)}"

    # -- hypercalls ------------------------------------------------------------

    def _hypercall(self, number: int, rec: HypercallRecord) -> Divergence | None:
        self.hypercalls += 1
        fast, d = self.engine.fast, self.hv.domains.get(rec.d)
        if fast is not None and d is not None and rec.rep is not None:
            reply = fast.answer_frame(d, rec.req, rec.t)
            if reply is not None:
                self._last_call = (number, rec.d, rec.req)
                if reply == rec.rep:
                    return None
                call = tracetext.recorded_call(number, rec.req)
                return self._hypercall_divergence(number, rec.d, call, rec.rep, reply)
        call = tracetext.recorded_call(number, rec.req)
        self._last_call = (number, rec.d, rec.req)
        try:
            conn = self.engine.connection(rec.d)
        except MachineError:
            raise TraceError(f"the trace calls from d{rec.d}, which does not exist at this "
                             f"point") from None
        reply = conn.start(call)
        if rec.rep is None:      # the recording continued here, with other events between rounds
            self._continuations.begin(number, rec, call, _Running(conn, reply))
            return None
        return self._finish(number, conn, call, reply, rec.rep)

    def _round(self, number: int, rec: RoundRecord) -> Divergence | None:
        cont = self._continuations.round(rec)
        if cont is None:
            raise TraceError(f"record {number}: a round of continuation {rec.c}, "
                             f"which no earlier record began")
        running = cont.state
        self._last_call = (number, cont.domid, cont.call.raw)
        if running.reply is None:
            running.reply = running.conn.resume()
        if rec.rep is None:
            return None
        return self._finish(number, running.conn, cont.call, running.reply, rec.rep)

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
                 f"d{domid} {tracetext.request_text(call, self.revision)}",
                 f"  expected {tracetext.result_text(call, want, self.revision)}, "
                 f"got {tracetext.result_text(call, got, self.revision)}",
                 "  request:"]
        request = tracetext.request_fields(call, self.revision)
        lines += [f"    {k:<12} {v}" for k, v in request]
        lines.append("  reply:")
        fields = tracetext.paired(tracetext.reply_fields(call, want, self.revision),
                                  tracetext.reply_fields(call, got, self.revision))
        lines += tracetext.side_by_side(fields)
        lines.append("  " + tracetext.first_difference(expected, actual))
        lines += ["  context state now:"] + [f"    {s}" for s in self._context_state(domid, call)]
        rev = self.revision
        summary = (f"record {number}: d{domid} {tracetext.request_text(call, rev)}: expected "
                   f"{tracetext.result_text(call, want, rev)}, "
                   f"got {tracetext.result_text(call, got, rev)}")
        return Divergence(number, summary, "\n".join(lines), request, fields)

    def _context_state(self, domid: int, call: wire.Call) -> list[str]:
        """The state of the context the call names, and of the dfns it touches."""
        d = self.hv.domains.get(domid)
        abi, op = tracetext.described(call, call.regions, self.revision)
        fields = abi.view_fields(op) if op is not None else {}
        ctx_no = tracetext.context_of(abi, op)
        if d is None or ctx_no is None:
            return ["(not a PV-IOMMU call: no context)"]
        ctx = d.context(ctx_no)
        if ctx is None:
            allocated = [c.ctx_no for c in d.contexts if c is not None]
            return [f"d{domid} context {ctx_no}: not allocated "
                    f"(allocated: {allocated}, pool of {d.nr_contexts})"]
        info = self.hv.iommu.context_info(ctx.hw_id)
        devices = ", ".join(format_sbdf(s) for s in sorted(ctx.devices)) or "none"
        out = [f"d{domid} context {ctx_no}: {'dying, ' if ctx.dying else ''}"
               f"{info.mapped} pages mapped, {info.tables} table pages, devices: {devices}"]
        if ctx.nested:          # no tables of its own: its stage 1 is guest memory
            out.append(f"nested over context {ctx.parent}, stage-1 root gfn {ctx.s1_root:#x}")
        elif "dfn" in fields:   # the sub-op names device frames: show the first few
            count = min(fields.get("nr_pages", 1) or 1, 8)
            if fields["dfn"] + count <= self.hv.iommu.max_iova_addr >> PAGE_SHIFT:
                mfns, perms = self.hv.iommu.lookup_run(ctx.hw_id, fields["dfn"], count)
                gfns = self.hv.memory.m2p(mfns)
                for i in range(count):
                    what = (f"gfn {gfns[i]:#x} {'r' if perms[i] & 1 else '-'}"
                            f"{'w' if perms[i] & 2 else '-'}" if perms[i] else "not mapped")
                    out.append(f"dfn {fields['dfn'] + i:#x}: {what}")
        return out

    # -- control and protocol errors --------------------------------------------

    def _control(self, number: int, rec: ControlRecord) -> Divergence | None:
        reply, effects = self.engine.control(rec.req)
        for effect in effects:
            if isinstance(effect, CloseDomain):   # its continuing call ends, as the daemon ends it
                self._continuations.end_domain(effect.domid)
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
        fields = tracetext.paired([(k, short(expected.get(k, "-"))) for k in keys],
                                  [(k, short(actual.get(k, "-"))) for k in keys])
        report = "\n".join([f"divergence at record {number} (t={self._time:.6f} s): "
                            f"control {req.get('op')} {args}", "  reply:",
                            *tracetext.side_by_side(fields)])
        request = [("op", str(req.get("op")))] + [(k, short(v)) for k, v in req.items()
                                                   if k != "op"]
        return Divergence(number, f"record {number}: control {req.get('op')} {args}: "
                                  f"the reply differs", report, request, fields)

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


@dataclass
class ReplayResult:
    path: Path
    records: int = 0
    hypercalls: int = 0
    seconds: float = 0.0
    divergences: list[Divergence] = field(default_factory=list)
    count: int = 0                   # divergences seen (all of them, with --keep-going)
    error: str | None = None         # the trace could not be read
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # invariant check after the replay
    hazards: list[str] = field(default_factory=list)    # with fail_on_hazard: its hazard records

    @property
    def ok(self) -> bool:
        return not self.count and not self.error and not self.problems and not self.hazards


def replay_file(path: Path, *, keep_going: bool = False, check_iotlb: bool = False,
                fail_on_hazard: bool = False, progress=None, report=None,
                fast_path: bool | None = None) -> ReplayResult:
    """Replay one trace; `report(divergence)` is called on each divergence found,
    `progress.update(fraction, records, force)` as it goes and `progress.done()`
    at the end (a bar of progress.ReplayProgress, or a -j worker's reports to
    its parent). `fail_on_hazard`: the trace's hazard records (calls Xen v7
    would crash on) fail it too. `fast_path`: as Engine's (None: on unless
    XENEMU_FAST_PATH=0)."""
    result = ReplayResult(path)
    try:
        reader = TraceReader(path)
    except OSError as e:
        result.error = f"{path}: {e.strerror or e}"
        return result
    except TraceError as e:
        result.error = str(e)
        return result
    start = time.perf_counter()
    try:
        with reader:
            replayer = Replayer(reader.machine, reader.header.snapshot, check_iotlb=check_iotlb,
                                fast_path=fast_path)
            start = time.perf_counter()     # the rate is of records, not of building the machine
            for number, rec in reader:
                result.records = number
                divergence = replayer.replay(number, rec)
                if divergence is not None:
                    result.count += 1
                    if len(result.divergences) < 100:
                        result.divergences.append(divergence)
                    if report:
                        report(divergence)
                    if not keep_going:
                        break
                if progress and not number & 255:
                    progress.update(reader.fraction(), number)
            else:
                result.notes += replayer.unfinished()
                result.problems = replayer.hv.check_invariants()
            result.hypercalls = replayer.hypercalls
            if fail_on_hazard:
                result.hazards = replayer.hazards
            if progress:
                progress.update(reader.fraction(), result.records, force=True)
    except TraceError as e:
        result.error = located(path, e)
    finally:
        result.seconds = time.perf_counter() - start
        if progress:
            progress.done()
    note = reader.cut_off_note()
    if note:
        result.notes.append(note)
    return result


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
