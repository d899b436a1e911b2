"""Python clients: a blocking one and a trio one, with a helper per sub-op.

    with XenemuClient() as xen:             # $XENEMU_SOCKET, or a path
        res = xen.query_capabilities()
        res.ret, res.op.cap.max_ctx_no

    async with open_trio_client(path) as xen:
        res = await xen.map_pages(ctx_no=1, gfn=0x100, dfn=0x100, nr_pages=4)
        res.ret, res.op.map_pages.mapped

A revision-2 machine's clients are RevisionTwoClient and
open_trio_client(path, revision=2): their helpers return a SubopResult.

Every helper returns an OpResult: the hypercall's return value and the
pv_iommu_op as the hypervisor wrote it back (all union views decoded, raw
bytes kept). Protocol failures raise XenemuError; Xen errors never raise,
they are return values, as for a guest.
"""

from __future__ import annotations

import itertools
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from . import abi
from .hypercalls import iommu_op_dirty, iommu_op_prq, iommu_op_v2, memory_op
from .hypercalls.common import client_helpers
from .hypercalls.iommu_op_v1 import IOMMU_OP, encode_subop
from .errno import result_name
from .wire import Error, FrameDecoder, ProtocolError, Region, Reply, encode_call

# The guest address the client's op buffer nominally lives at: the handle
# argument of the hypercall. Any value works as long as it names the region.
OP_GADDR = 0x7F00_0000_0000


class XenemuError(Exception):
    """The connection failed or the daemon answered with a protocol error."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class _Status:
    """What every result says of its return value."""
    __slots__ = ()

    @property
    def ok(self) -> bool:
        return self.ret == 0

    @property
    def name(self) -> str:
        """'0' or the Xen error name, e.g. '-EADDRINUSE'."""
        return result_name(self.ret)


@dataclass(frozen=True, slots=True)
class OpResult(_Status):
    ret: int
    raw: bytes          # the 32 bytes written back

    @property
    def op(self) -> Any:
        return abi.decode_op(self.raw)


# -- memory_op: XENMEM_reserved_device_memory_map -----------------------------------------

# Where the map's entry buffer nominally lives: its `buffer` handle, a second region.
RDM_BUFFER_GADDR = OP_GADDR + 0x2000


@dataclass(frozen=True, slots=True)
class RdmResult(_Status):
    """memory_op's return value, the struct's nr_entries as written back
    (the number of ranges there are) and the entries written to the buffer."""
    ret: int
    nr_entries: int
    entries: list[tuple[int, int]]


def rdm_frame(flags: int, nr_entries: int, sbdf: int, cmd: int) -> tuple[tuple, tuple]:
    """(args, regions) of the call as the Linux driver makes it: the struct
    at args[1], and a buffer of nr_entries entries its handle points to (a
    NULL handle and no region for 0, the driver's counting call)."""
    buffer = RDM_BUFFER_GADDR if nr_entries else 0
    raw = memory_op.ReservedDeviceMemoryMap.build({
        "flags": flags, "nr_entries": nr_entries, "buffer": buffer,
        "dev": {"seg": sbdf >> 16, "bus": sbdf >> 8 & 0xFF, "devfn": sbdf & 0xFF}})
    regions = (Region(OP_GADDR, raw),)
    if nr_entries:
        regions += (Region(RDM_BUFFER_GADDR, bytes(nr_entries * memory_op.ENTRY_SIZE)),)
    return (cmd, OP_GADDR), regions


def rdm_result(reply: Reply) -> RdmResult:
    back = {r.gaddr: r.data for r in reply.regions}
    written = memory_op.ReservedDeviceMemoryMap.parse(back[OP_GADDR]).nr_entries
    got = memory_op.entries(back.get(RDM_BUFFER_GADDR, b""))
    return RdmResult(reply.ret, written, got[:min(written, len(got))])


def socket_path(path: str | os.PathLike | None) -> str:
    path = path or os.environ.get("XENEMU_SOCKET")
    if not path:
        raise XenemuError("no socket: pass a path or set XENEMU_SOCKET")
    return os.fspath(path)


def connect_unix(path: str, timeout: float | None) -> socket.socket:
    """A blocking connection to a daemon socket; XenemuError says why not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise XenemuError(f"cannot connect to {path}: {e}") from None
    return sock


class BlockingConnection:
    """close() and the with-statement for a client holding one blocking socket."""

    _sock: socket.socket

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _op_call(req_id: int, raw_op: bytes) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,), (Region(OP_GADDR, raw_op),))


def _op_result(reply: Reply) -> OpResult:
    data = reply.regions[0].data if reply.regions else b""
    return OpResult(reply.ret, data)


def _check(frame) -> Reply:
    if isinstance(frame, Error):
        raise XenemuError(f"daemon closed the connection: {frame.message}", frame.code)
    return frame


class SubOps(client_helpers(IOMMU_OP, encode_subop)):
    """One helper per sub-op, generated from its row in the table
    (xen.map_pages(ctx_no, gfn, dfn, nr_pages, flags=RW), ...); subclasses
    supply iommu_op(raw) (sync or async)."""

    def iommu_op(self, raw: bytes):
        raise NotImplementedError


class BlockingClient(BlockingConnection):
    """A blocking connection's frames: one connection, the domain its socket belongs to."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float | None = 30.0):
        self._sock = connect_unix(socket_path(path), timeout)
        self._decoder = FrameDecoder.for_client()
        self._ids = itertools.count(1)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this to send broken frames)."""
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise XenemuError(f"connection failed: {e}") from None

    def receive_frame(self) -> Reply | Error:
        """The next frame from the daemon, blocking."""
        try:
            while (frame := self._decoder.next_frame()) is None:
                data = self._sock.recv(65536)
                if not data:
                    self._decoder.close()
                    raise XenemuError("daemon closed the connection")
                self._decoder.feed(data)
        except ProtocolError as e:
            raise XenemuError(f"bad frame from the daemon: {e}", e.code) from None
        except OSError as e:
            raise XenemuError(f"connection failed: {e}") from None
        return frame

    def hypercall(self, op: int, args=(), regions=()) -> Reply:
        req_id = next(self._ids)
        self.send_raw(encode_call(req_id, op, args, regions))
        reply = _check(self.receive_frame())
        if reply.req_id != req_id:
            raise XenemuError(f"reply to request {reply.req_id}, expected {req_id}")
        return reply


    def reserved_device_memory_map(self, flags: int, nr_entries: int, sbdf: int = 0, *,
                                   cmd: int = memory_op.XENMEM_reserved_device_memory_map
                                   ) -> RdmResult:
        """memory_op XENMEM_reserved_device_memory_map for device sbdf (packed)."""
        return rdm_result(self.hypercall(abi.HYPERVISOR_memory_op,
                                         *rdm_frame(flags, nr_entries, sbdf, cmd)))


class XenemuClient(SubOps, BlockingClient):
    """Blocking client of a revision-1 machine, a helper per sub-op."""

    def iommu_op(self, raw: bytes) -> OpResult:
        return _op_result(self.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                                         (Region(OP_GADDR, raw),)))

    def pipeline(self, raw_ops: list[bytes], window: int = 128) -> list[OpResult]:
        """Many requests in flight: keep up to `window` sent ahead of the replies.

        The window keeps both sides' socket buffers from filling: a client that
        wrote everything before reading would stall against a daemon waiting
        for it to read its replies."""
        ids = [next(self._ids) for _ in raw_ops]
        by_id = {}
        sent = 0
        while len(by_id) < len(ids):
            ahead = min(len(ids), len(by_id) + window)
            if sent < ahead:
                self.send_raw(b"".join(_op_call(ids[i], raw_ops[i]) for i in range(sent, ahead)))
                sent = ahead
            reply = _check(self.receive_frame())
            by_id[reply.req_id] = _op_result(reply)
        return [by_id[i] for i in ids]


class TrioClient:
    """trio frames: any number of tasks may call it at once, each waits for its reply."""

    def __init__(self, stream: trio.SocketStream):
        self._stream = stream
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}   # req_id -> [Event, reply or exception]
        self._failure: XenemuError | None = None

    async def hypercall(self, op: int, args=(), regions=()) -> Reply:
        if self._failure:
            raise self._failure
        req_id = next(self._ids)
        slot = self._waiting[req_id] = [trio.Event(), None]
        try:
            async with self._send_lock:
                await self._stream.send_all(encode_call(req_id, op, args, regions))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._waiting.pop(req_id, None)
            raise XenemuError(f"connection failed: {e}") from None
        await slot[0].wait()
        if isinstance(slot[1], XenemuError):
            raise slot[1]
        return slot[1]

    async def reserved_device_memory_map(self, flags: int, nr_entries: int, sbdf: int = 0, *,
                                         cmd: int = memory_op.XENMEM_reserved_device_memory_map
                                         ) -> RdmResult:
        """memory_op XENMEM_reserved_device_memory_map for device sbdf (packed)."""
        return rdm_result(await self.hypercall(abi.HYPERVISOR_memory_op,
                                               *rdm_frame(flags, nr_entries, sbdf, cmd)))

    async def _read_replies(self) -> None:
        decoder = FrameDecoder.for_client()
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    decoder.close()
                    raise XenemuError("daemon closed the connection")
                decoder.feed(data)
                for frame in decoder:
                    if isinstance(frame, Error):
                        raise XenemuError(f"daemon closed the connection: {frame.message}",
                                          frame.code)
                    slot = self._waiting.pop(frame.req_id, None)
                    if slot is not None:
                        slot[1] = frame
                        slot[0].set()
        except ProtocolError as e:
            self._fail(XenemuError(f"bad frame from the daemon: {e}", e.code))
        except XenemuError as e:
            self._fail(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._fail(XenemuError(f"connection failed: {e}"))

    def _fail(self, error: XenemuError) -> None:
        self._failure = error
        for slot in self._waiting.values():
            slot[1] = error
            slot[0].set()
        self._waiting.clear()


class TrioXenemuClient(SubOps, TrioClient):
    """trio client of a revision-1 machine, a helper per sub-op."""

    async def iommu_op(self, raw: bytes) -> OpResult:
        return _op_result(await self.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                                               (Region(OP_GADDR, raw),)))


# -- revision 2: do_iommu_op(subop, arg), one struct per sub-op ----------------------------

# Where remote_cmd's inner struct nominally lives: its `arg`, a second region.
INNER_GADDR = OP_GADDR + 0x1000


@dataclass(frozen=True, slots=True)
class SubopResult(_Status):
    """A revision-2 call's return value and its struct as written back
    (b"" for a sub-op without one); remote_cmd's inner struct in `inner`."""
    ret: int
    subop: int
    raw: bytes
    inner: bytes = b""
    inner_subop: int | None = None

    @property
    def op(self) -> Any:
        return iommu_op_v2.decode(self.subop, self.raw) if self.raw else None

    @property
    def inner_op(self) -> Any:
        return iommu_op_v2.decode(self.inner_subop, self.inner) if self.inner else None


def subop_frame(subop: int, raw: bytes, inner: bytes = b"") -> tuple[tuple, tuple]:
    """(args, regions) of a revision-2 call, as the C client builds them:
    (subop, handle), the struct at the handle (a null handle and no region
    for none), remote_cmd's inner struct as a second region."""
    regions = (Region(OP_GADDR, raw),) if raw else ()
    if inner:
        regions += (Region(INNER_GADDR, inner),)
    return (subop, OP_GADDR if raw else 0), regions


def subop_result(subop: int, reply: Reply, inner_subop: int | None) -> SubopResult:
    back = {r.gaddr: r.data for r in reply.regions}
    return SubopResult(reply.ret, subop, back.get(OP_GADDR, b""), back.get(INNER_GADDR, b""),
                       inner_subop)


class RevisionTwo(client_helpers(iommu_op_v2.IOMMU_OP, iommu_op_v2.encode)):
    """One helper per revision-2 sub-op, generated from its row
    (xen.map_pages(ctx_no, gfn, dfn, nr_pages, map_flags=RW, pgsize=4096,
    mapped=0), ...); subclasses supply iommu_op_subop(subop, raw, inner)."""

    revision = 2

    def remote_cmd(self, domid: int, subop: int, inner: bytes = b"", arg: int | None = None):
        """remote_cmd on domid: `inner` is the sub-op's struct, sent as a
        second region that `arg` points to (a null arg without one)."""
        row = iommu_op_v2.SUBOPS_BY_NUMBER[iommu_op_v2.IOMMU_remote_cmd]
        if arg is None:
            arg = INNER_GADDR if inner else 0
        raw = iommu_op_v2.encode(row, domid=domid, subop=subop, arg=arg)
        return self.iommu_op_subop(row.number, raw, inner, subop)

    def read_page_requests(self, ctx_no: int, max: int = iommu_op_prq.PRQ_MAX,
                           requests: int | None = None):
        """read_page_requests (xenemu's sub-op 14) with a buffer of `max`
        entries sent as a second region that `requests` points to (by
        default); the entries come back in the result's `inner`
        (iommu_op_prq.entries decodes them)."""
        row = iommu_op_v2.SUBOPS_BY_NUMBER[iommu_op_prq.IOMMU_read_page_requests]
        raw = iommu_op_v2.encode(row, ctx_no=ctx_no, max=max,
                                 requests=INNER_GADDR if requests is None else requests)
        return self.iommu_op_subop(row.number, raw, bytes(max * iommu_op_prq.ENTRY_SIZE))

    def read_dirty_bitmap(self, ctx_no: int, dfn: int, nr_pages: int, flags: int = 0):
        """read_dirty (xenemu's sub-op 13) with a bitmap of nr_pages bits
        sent as a second region its handle points to: the result's `inner`
        is the bitmap as the call left it."""
        row = iommu_op_v2.SUBOPS_BY_NUMBER[iommu_op_dirty.IOMMU_read_dirty]
        raw = iommu_op_v2.encode(row, ctx_no=ctx_no, dfn=dfn, nr_pages=nr_pages, flags=flags,
                                 bitmap=INNER_GADDR)
        return self.iommu_op_subop(row.number, raw, bytes((nr_pages + 7) // 8))

    def iommu_op_subop(self, subop: int, raw: bytes, inner: bytes = b"",
                       inner_subop: int | None = None):
        raise NotImplementedError


class RevisionTwoClient(RevisionTwo, BlockingClient):
    """Blocking client of a revision-2 machine."""

    def iommu_op_subop(self, subop: int, raw: bytes, inner: bytes = b"",
                       inner_subop: int | None = None) -> SubopResult:
        args, regions = subop_frame(subop, raw, inner)
        return subop_result(subop, self.hypercall(abi.HYPERVISOR_iommu_op, args, regions),
                            inner_subop)


class TrioRevisionTwoClient(RevisionTwo, TrioClient):
    """trio client of a revision-2 machine."""

    async def iommu_op_subop(self, subop: int, raw: bytes, inner: bytes = b"",
                             inner_subop: int | None = None) -> SubopResult:
        args, regions = subop_frame(subop, raw, inner)
        return subop_result(subop, await self.hypercall(abi.HYPERVISOR_iommu_op, args, regions),
                            inner_subop)


@asynccontextmanager
async def open_trio_client(path: str | os.PathLike | None = None, revision: int = 1):
    stream = await trio.open_unix_socket(socket_path(path))
    async with stream:
        client = (TrioRevisionTwoClient if revision == 2 else TrioXenemuClient)(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_replies)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
