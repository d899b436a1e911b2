"""The daemon's per-connection I/O (xenemu.sockio): the replies to every
call of one received buffer, a continued call's rounds included, go out in
one send (run in process, to count the reads and sends it makes; the client
is the blocking Python one, in a thread), and a connection whose reads
always find bytes waiting does not starve the others."""

from __future__ import annotations

import contextlib
import socket
import threading

import trio
from support import DaemonProcess, raw_conn

from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient
from xenemu.daemon import Daemon
from xenemu.hypervisor import Hypervisor
from xenemu.iommu_contexts import TEARDOWN_SLICE
from xenemu.machine import default_machine
from xenemu.sockio import SocketIO
from xenemu.wire import Region, encode_call

RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable


def call(req_id: int, raw_op: bytes) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,), (Region(OP_GADDR, raw_op),))


def lookup(req_id: int, dfn: int) -> bytes:
    return call(req_id, abi.encode_op(abi.IOMMUOP_lookup_page, 0, 0, "lookup_page", dfn=dfn))


async def test_the_replies_to_one_received_buffer_go_out_in_one_send(tmp_path, monkeypatch):
    reads, sends = [], []
    receive_some, send_all = SocketIO.receive_some, SocketIO.send_all

    async def counted_receive(self, size):
        data = await receive_some(self, size)
        reads.append(len(data))
        return data

    async def counted_send(self, data):
        sends.append(len(data))
        await send_all(self, data)

    monkeypatch.setattr(SocketIO, "receive_some", counted_receive)
    monkeypatch.setattr(SocketIO, "send_all", counted_send)
    daemon = Daemon(Hypervisor(default_machine()), tmp_path / "sockets")

    def client(path):
        with XenemuClient(str(path)) as xen:
            # A context with more pages than one round of free_context tears down.
            ctx = xen.alloc_context().op.ctx_no
            maps = xen.pipeline([abi.encode_op(abi.IOMMUOP_map_pages, ctx, RW, "map_pages",
                                               gfn=dfn % 1024, dfn=dfn, nr_pages=256)
                                 for dfn in range(0, 2 * TEARDOWN_SLICE + 256, 256)])
            assert all(r.ret == 0 for r in maps)
            reads.clear()
            sends.clear()
            # One write: lookups, a free that continues over several rounds, lookups.
            xen.send_raw(b"".join([*(lookup(100 + i, 0x100 + i) for i in range(4)),
                                   call(200, abi.encode_op(abi.IOMMUOP_free_context, ctx)),
                                   *(lookup(300 + i, 0x100 + i) for i in range(4))]))
            return [xen.receive_frame() for _ in range(9)]

    async with trio.open_nursery() as nursery:
        paths = await nursery.start(daemon.run)
        try:
            replies = await trio.to_thread.run_sync(client, paths[0])
        finally:
            daemon.stop()
    assert [(r.req_id, r.ret) for r in replies] == \
        [(100 + i, 0) for i in range(4)] + [(200, 0)] + [(300 + i, 0) for i in range(4)]
    assert all(isinstance(r, wire.Reply) for r in replies)
    # The buffer arrived in one read (one small write), and was answered in one send
    # of all nine replies; the read after it found the client gone.
    assert reads[0] > 0 and sends == [sum(len(wire.encode_reply(r.req_id, r.ret, r.regions))
                                          for r in replies)]


def test_a_connection_that_always_has_calls_waiting_does_not_starve_another(tmp_path):
    """A read that finds bytes waiting still gives the other connections their
    turn: a client keeping its socket full of calls (and reading every reply)
    does not hold up another's round trips."""
    d = DaemonProcess(tmp_path, record=False, log_level="warning")
    flood, good = raw_conn(str(d.sockets[0])), raw_conn(str(d.sockets[0]))
    stop, serving, answered = threading.Event(), threading.Event(), [0]
    batch = b"".join(lookup(i, 0x100) for i in range(512))

    def write():
        with contextlib.suppress(OSError):
            while not stop.is_set():
                flood.sendall(batch)

    def read():
        with contextlib.suppress(OSError):
            while data := flood.recv(1 << 16):
                answered[0] += len(data)
                serving.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (write, read)]
    try:
        for t in threads:
            t.start()
        assert serving.wait(30)         # the flood is being served
        before = answered[0]
        decoder = wire.FrameDecoder.for_client()
        for i in range(50):             # each within raw_conn's 30 s timeout
            good.sendall(lookup(1000 + i, 0x100))
            while (reply := decoder.next_frame()) is None:
                decoder.feed(good.recv(1 << 16))
            assert (reply.req_id, reply.ret) == (1000 + i, 0)
        assert answered[0] > before     # served side by side with the flood
    finally:
        stop.set()
        for s in (flood, good):
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(30)
        assert d.stop() == 0
