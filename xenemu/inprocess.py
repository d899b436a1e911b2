"""An in-process driver of the engine: a machine and its clients, no daemon, no socket.

    with Local(default_machine()) as m:
        xen = m.client(0)                   # XenemuClient's helpers and frames
        ctx = xen.alloc_context().op.ctx_no
        m.ctl("dma", sbdf="0000:00:03.0", addr=0x1000, length=8)

The client is a transport under the socket clients' helper layer: the same
CALL frames go into an engine Connection and the same REPLY frames come
back, continuations run to their end. Control requests and replies take
the same msgpack round trip as on the control socket. With `record`, the
engine's events are written to a trace that `xenemu replay` reads.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import msgpack

from .client import RevisionTwoClient, XenemuClient, XenemuError
from .ctl import ControlError
from .engine import Engine
from .hypervisor import Hypervisor
from .machine import MachineConfig
from .trace.writer import TraceWriter
from .wire import ERR_GONE, Error, FrameDecoder, ProtocolError, Reply


class Local:
    """A machine driven in process through its engine."""

    def __init__(self, config: MachineConfig, *, record: Path | None = None):
        self.hv = Hypervisor(config)
        self.engine = Engine(self.hv, record=record is not None)
        self.writer = TraceWriter.create(record, config) if record is not None else None

    def client(self, domid: int) -> InProcessClient | InProcessClientV2:
        """A client of the machine's revision (its helpers are that ABI's)."""
        if self.hv.config.pv_iommu_revision == 2:
            return InProcessClientV2(self, domid)
        return InProcessClient(self, domid)

    def request(self, op: str, **args) -> dict:
        """The reply, {"ok": ...}, as the control socket would give it."""
        reply, _ = self.engine.control(   # effects: no sockets, no snapshots here
            msgpack.unpackb(
            msgpack.packb({"op": op, **args}, use_bin_type=True), raw=False,
            strict_map_key=False))
        self.record_events()
        return msgpack.unpackb(msgpack.packb(reply, use_bin_type=True), raw=False,
                               strict_map_key=False)

    def ctl(self, op: str, **args) -> dict:
        """Results of a control request; ControlError when it is refused."""
        reply = self.request(op, **args)
        if not reply.pop("ok"):
            raise ControlError(reply.get("error", "refused"))
        return reply

    def record_events(self) -> None:
        events = self.engine.events
        if events:
            self.writer.write_batch(events)
            events.clear()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InProcessTransport:
    """A blocking client's frames over an engine Connection of `domid` (its
    present incarnation): what a socket would carry, without one."""

    def __init__(self, local: Local, domid: int):
        self._local = local
        self._conn = local.engine.connection(domid, f"d{domid} in process")
        self._decoder = FrameDecoder.for_client()
        self._ids = itertools.count(1)

    def send_raw(self, data: bytes) -> None:
        conn = self._conn
        if conn.closing:
            raise XenemuError("connection failed: the engine closed it")
        conn.receive_data(data)
        replies = [conn.answer()]
        while conn.continuing:
            replies.append(conn.answer())
        self._local.record_events()
        self._decoder.feed(b"".join(replies))

    def receive_frame(self) -> Reply | Error:
        try:
            frame = self._decoder.next_frame()
        except ProtocolError as e:
            raise XenemuError(f"bad frame from the engine: {e}", e.code) from None
        if frame is None and self._conn.gone:
            raise XenemuError(f"daemon closed the connection: d{self._conn.domid} has been "
                              f"destroyed", ERR_GONE)
        if frame is None:
            raise XenemuError("no reply: the request is not a whole frame yet")
        return frame

    def close(self) -> None:
        pass


class InProcessClient(InProcessTransport, XenemuClient):
    """XenemuClient's helpers (revision 1), in process."""


class InProcessClientV2(InProcessTransport, RevisionTwoClient):
    """RevisionTwoClient's helpers, in process."""
