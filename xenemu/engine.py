"""The engine: the one place a hypercall, a refused frame and a control request go through. Sans-IO.

Drivers (the daemon, `xenemu replay`, the in-process client, the benchmarks)
move bytes; the engine turns them into the machine's answers, as h11's
Connection does for HTTP. Per event it ticks the machine's clock once, runs
the event, notes a fault injection that fired, and, when recording, appends
the trace record the event produced to `Engine.events` (trace.records'
Structs, in the order the machine ran them: a driver drains the list into
a TraceWriter, or compares it).

A domain's calls arrive on a Connection: its receive buffer (a FrameDecoder)
takes bytes as they come, and `answer()` returns the replies to every whole
call buffered. A call that continues (-ERESTART) is not looped on: answer()
returns after that round with `continuing` set, and the driver calls it
again when others have had their turn (the daemon yields to other
connections; replay runs the next round where the trace recorded it). A
broken frame gets its ERROR frame last and sets `closing`.

A control request returns its reply and the effects the driver carries out
(open or close a domain's socket, write snapshot bytes to a file): the
engine does no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import snapshot
from .control import Control
from .domain import Domain
from .errno import XenErrno
from .fastpath import FastPath
from .guest import GuestMemory
from .hypercalls.common import UNKNOWN, count_call
from .hypervisor import RESTART, Hypervisor, MachineError
from .trace.records import (RECORDED_CONTROL, ControlRecord, HazardRecord, HypercallRecord,
                            PackedHypercalls, ProtocolRecord, RoundRecord)
from .wire import ERR_INTERNAL, ERR_TRUNCATED, Call, FrameDecoder, ProtocolError, encode_error, encode_reply

log = logging.getLogger("xenemu.engine")


# -- effects: what a control request asks of the driver -----------------------------------

@dataclass(frozen=True)
class OpenDomainSocket:
    """A domain was created: serve it (the daemon adds its socket to the reply)."""
    domid: int


@dataclass(frozen=True)
class CloseDomain:
    """A domain was destroyed: stop serving it and end its connections."""
    domid: int


@dataclass(frozen=True)
class WriteSnapshot:
    """Write `data` (the machine as it was when the request ran) to `path`;
    the reply is the request's if the write succeeds."""
    path: Path
    data: bytes
    reply: dict


Effect = OpenDomainSocket | CloseDomain | WriteSnapshot


class Engine:
    """One machine and what drives it. `record`: keep trace records in
    `events`. `snapshots`: control may ask for snapshots (the daemon's
    engine), to `path`, or `snapshot_path` when none is given. `fast_path`:
    answer the hot sub-ops of a receive buffer in C (None: on unless the
    environment has XENEMU_FAST_PATH=0)."""

    def __init__(self, hv: Hypervisor, *, record: bool = False, snapshots: bool = False,
                 snapshot_path: Path | None = None, fast_path: bool | None = None):
        self.hv = hv
        # cext/fastpath.c, when on (None: unless XENEMU_FAST_PATH=0) and the
        # hardware is C's; None when off.
        self.fast = FastPath.for_machine(hv, fast_path)
        self.clock = hv.clock
        self.events: list | None = [] if record else None
        self.snapshot_path = snapshot_path
        self._next_cont = 0
        self._effects: list = []
        self.control_plane = Control(
            hv, on_domain_created=self._created, on_domain_destroyed=self._destroyed,
            on_snapshot=self._snapshot if snapshots else None)

    @property
    def fast_path(self) -> bool:
        return self.fast is not None

    def records(self) -> list:
        """The recorded events so far, one record each (the fast path's
        packed batches unpacked): for readers of events, not drivers."""
        out = []
        for e in self.events or ():
            out += e.records() if isinstance(e, PackedHypercalls) else [e]
        return out

    def connection(self, domid: int, name: str = "") -> Connection:
        """A connection of domid's present incarnation (MachineError if none)."""
        d = self.hv.domains.get(domid)
        if d is None:
            raise MachineError(f"d{domid} does not exist")
        return Connection(self, d, name or f"d{domid}")

    def complete(self, domid: int, call: Call) -> bytes:
        """`call` run to its end, continuations included: its REPLY frame
        (for in-process drivers that have decoded calls: tests, benchmarks)."""
        conn = self.connection(domid)
        reply = conn.start(call)
        while reply is None:
            reply = conn.resume()
        return reply

    # -- one round of a hypercall: the event every call is made of -------------------------

    def _round(self, d: Domain, call: Call, mem: GuestMemory) -> int:
        self.clock.tick()
        handler = self.hv.hypercalls.get(call.op)
        if handler is None:
            log.debug("d%d: hypercall %d not implemented -> -ENOSYS", d.domid, call.op)
            count_call(d, UNKNOWN, UNKNOWN, -XenErrno.ENOSYS)
            return -XenErrno.ENOSYS
        ret = handler(d, call.args, mem)
        if self.hv.injecting:
            self.hv.note_injection(f"d{d.domid}'s hypercall (returned {ret})")
        return ret

    def _hazards(self) -> None:
        """The hazards the round just recorded met, as records after its own."""
        met, self.hv.hazards_met = self.hv.hazards_met, []
        if self.events is not None:
            self.events.extend(HazardRecord(self.clock.now, domid, name, why)
                               for domid, name, why in met)

    # -- refused frames -------------------------------------------------------------------

    def protocol_error(self, domid: int, raw: bytes, error: ProtocolError) -> bytes | None:
        """The ERROR frame for a frame the protocol refuses (None for one cut
        off by the peer hanging up: nobody to tell), recorded as an event."""
        eof = error.code == ERR_TRUNCATED
        reply = None if eof else encode_error(error.req_id, error.code, error.message)
        self.clock.tick()
        if self.events is not None:
            self.events.append(ProtocolRecord(self.clock.now, domid, raw, eof, error.code, reply))
        return reply

    # -- control --------------------------------------------------------------------------

    def control(self, req) -> tuple[dict, list[Effect]]:
        """The reply to a decoded control request, and the effects the driver
        must carry out (in order) before sending it."""
        self.clock.tick()
        reply = self.control_plane.handle(req)
        if self.hv.injecting:
            self.hv.note_injection(f"control op {req.get('op') if isinstance(req, dict) else req}")
        if self.events is not None and isinstance(req, dict) and \
                req.get("op") in RECORDED_CONTROL:
            # A copy: the daemon adds the socket of a domain it serves, not the machine's.
            self.events.append(ControlRecord(self.clock.now, req, dict(reply)))
        effects, self._effects = self._effects, []
        return reply, effects

    def domain_not_served(self, domid: int, why: str) -> dict:
        """The driver could not serve a domain just created (its socket path
        is taken): a domain nobody could reach is destroyed, and the reply
        (and its record) becomes the refusal."""
        self.hv.destroy_domain(domid)
        reply = {"ok": False, "error": f"d{domid} not created: {why}"}
        log.info("control: domain_create refused: %s", reply["error"])
        last = self.events[-1] if self.events else None
        if isinstance(last, ControlRecord) and last.req.get("op") == "domain_create":
            self.events[-1] = ControlRecord(last.t, last.req, reply)
        return reply

    def _created(self, domid: int) -> dict:
        self._effects.append(OpenDomainSocket(domid))
        return {}

    def _destroyed(self, domid: int) -> None:
        self._effects.append(CloseDomain(domid))

    def _snapshot(self, path: str | None) -> dict:
        self._effects.append(self.snapshot(path))
        return self._effects[-1].reply

    def snapshot(self, path: str | None = None) -> WriteSnapshot:
        """The machine now, as bytes to write to `path` (or snapshot_path)."""
        target = path or self.snapshot_path
        if target is None:
            raise snapshot.SnapshotError("no file to write to: give path=FILE, or start the "
                                         "daemon with --snapshot FILE")
        data, reply = snapshot.encode(self.hv, target)
        return WriteSnapshot(Path(target), data, reply)


class Connection:
    """A domain incarnation's calls, in order: bytes in, reply bytes out."""

    __slots__ = ("engine", "domain", "domid", "name", "decoder", "closing", "unanswered",
                 "_call", "_mem", "_cont")

    def __init__(self, engine: Engine, domain: Domain, name: str):
        self.engine = engine
        self.domain = domain
        self.domid = domain.domid
        self.name = name
        self.decoder = FrameDecoder.for_server()
        self.closing = False        # a protocol or internal error ended the connection
        self.unanswered = 0         # req_id of a call its domain's destruction cut off
        self._call: Call | None = None      # a call continuing, its memory and record id
        self._mem: GuestMemory | None = None
        self._cont = 0

    @property
    def continuing(self) -> bool:
        """A call is between two rounds: call answer() (or resume()) again."""
        return self._call is not None

    @property
    def gone(self) -> bool:
        """The domain this connection was opened for has been destroyed."""
        return self.engine.hv.domains.get(self.domid) is not self.domain

    def receive_data(self, data: bytes) -> None:
        self.decoder.feed(data)

    def answer(self) -> bytes:
        """Replies to the whole calls buffered, in order, ending early after a
        round that continues (`continuing`), at a broken frame (`closing`, its
        ERROR frame last) or when the domain is gone (`unanswered`)."""
        replies = []
        try:
            if self.gone:
                if self._call is not None:
                    self.unanswered, self._call, self._mem = self._call.req_id, None, None
                return b""
            if self._call is not None:
                reply = self.resume()
                if reply is None:
                    return b""
                replies.append(reply)
            fast = self.engine.fast
            while True:
                if fast is not None:
                    replies.append(self._answer_fast(fast))
                call = self.decoder.next_frame()
                if call is None:
                    break
                reply = self.start(call)
                if reply is None:
                    break
                replies.append(reply)
        except ProtocolError as e:
            log.warning("%s: protocol error %s; closing the connection", self.name, e)
            replies.append(self.engine.protocol_error(self.domid, self.decoder.offending(), e))
            self.closing = True
        except Exception:
            log.exception("%s: internal error; closing the connection", self.name)
            replies.append(encode_error(0, ERR_INTERNAL,
                                        "internal error in the daemon (see its log)"))
            self.closing = True
        return b"".join(replies)

    def _answer_fast(self, fast: FastPath) -> bytes:
        """The replies to the frames at the front of the buffer the fast
        path takes, at one tick of the clock, their records kept."""
        engine = self.engine
        events = engine.events
        replies, records = fast.answer(self.domain, self.decoder, engine.clock.tick(),
                                       events is not None)
        if records is not None:
            events.append(records)
        return replies

    def end_of_input(self) -> None:
        """The peer hung up: a frame it left half sent is recorded as refused."""
        try:
            self.decoder.close()
        except ProtocolError as e:
            log.info("%s: %s", self.name, e)
            self.engine.protocol_error(self.domid, self.decoder.offending(), e)

    def start(self, call: Call) -> bytes | None:
        """The call's first round: its REPLY, or None if it continues."""
        engine = self.engine
        mem = GuestMemory(call.regions)
        ret = engine._round(self.domain, call, mem)
        events = engine.events
        if ret != RESTART:
            reply = encode_reply(call.req_id, ret, mem.regions())
            if events is not None:
                events.append(HypercallRecord(engine.clock.now, self.domid, call.raw, reply))
            engine._hazards()
            return reply
        self._call, self._mem = call, mem
        if events is not None:
            engine._next_cont += 1
            self._cont = engine._next_cont
            events.append(HypercallRecord(engine.clock.now, self.domid, call.raw, None,
                                          self._cont))
        engine._hazards()
        return None

    def resume(self) -> bytes | None:
        """The continuing call's next round: its REPLY, or None if it continues."""
        engine, call, mem = self.engine, self._call, self._mem
        ret = engine._round(self.domain, call, mem)
        reply = None if ret == RESTART else encode_reply(call.req_id, ret, mem.regions())
        if engine.events is not None:
            engine.events.append(RoundRecord(engine.clock.now, self._cont, reply))
        engine._hazards()
        if reply is not None:
            self._call = self._mem = None
        return reply

    @property
    def call(self) -> Call | None:
        """The call continuing, if any."""
        return self._call
