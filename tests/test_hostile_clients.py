"""Hostile and broken clients against a live daemon: garbage, cut-off frames,
1-byte writes, oversize lengths, hang-ups mid-frame, stalls, floods and
writers that never read. Whatever they do, every other connection keeps
getting correct answers, and every resource they can hold is bounded."""

from __future__ import annotations

import random
import socket
import threading
import time

from support import DaemonProcess, raw_conn, read_until_closed
from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient
from xenemu.errno import XenErrno as E
from xenemu.wire import FrameDecoder, Region, encode_call


def call_frame(req_id: int, raw_op: bytes) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,), (Region(OP_GADDR, raw_op),))


def garbage(rng):
    return rng.randbytes(rng.randint(1, 3000))


def oversize(rng):
    f = bytearray(call_frame(1, abi.encode_op(1)))
    f[8:12] = (wire.MAX_FRAME + rng.randint(1, 1 << 20)).to_bytes(4, "little")
    return bytes(f)


def cut_off(rng):
    f = call_frame(2, abi.encode_op(1))
    return f[:rng.randint(1, len(f) - 1)]


def bit_flipped(rng):
    f = bytearray(call_frame(3, abi.encode_op(5, 1, 3, "map_pages", gfn=1, dfn=1, nr_pages=1)))
    f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
    return bytes(f)


HOSTILE = [garbage, oversize, cut_off, bit_flipped]


def hostile_client(path: str, rng: random.Random) -> None:
    s = raw_conn(path)
    data = rng.choice(HOSTILE)(rng)
    try:
        if rng.random() < 0.3:                  # dribbled a byte at a time
            for i in range(min(len(data), 200)):
                s.send(data[i:i + 1])
        else:
            s.sendall(data)
        if rng.random() < 0.5:
            s.close()                           # hang up mid-frame, or after
            return
        s.shutdown(socket.SHUT_WR)
        read_until_closed(s)
    except OSError:
        pass                                    # the daemon closed first: fine
    finally:
        s.close()


def test_hostile_clients_never_disturb_a_good_one(daemon):
    """Four threads of hostile clients (400 connections) while a driver maps,
    looks up and unmaps, checking every answer."""
    stop = threading.Event()
    count = [0]

    def hostile(seed):
        rng = random.Random(seed)
        while not stop.is_set() and count[0] < 400:
            hostile_client(daemon.socket(0), rng)
            count[0] += 1

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        with XenemuClient(daemon.socket(0)) as xen:
            ctx = xen.alloc_context().op.ctx_no
            for i in range(300):
                dfn = 0x1000 + i * 8
                assert xen.map_pages(ctx, gfn=i, dfn=dfn, nr_pages=8).ret == 0
                assert xen.lookup_page(ctx, dfn + 7).op.lookup_page.gfn == i + 7
                assert xen.unmap_pages(ctx, dfn, 8).ret == 0
            assert xen.free_context(ctx).ret == 0
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert count[0] >= 40
    assert daemon.proc.poll() is None
    assert "protocol error" in daemon.log()


def test_a_stalled_frame_times_out_and_others_are_served(tmp_path):
    d = DaemonProcess(tmp_path, "--frame-timeout", "0.5")
    try:
        slow = raw_conn(d.socket(0))
        frame = call_frame(9, abi.encode_op(1))
        slow.sendall(frame[:30])                    # begun, never finished
        with XenemuClient(d.socket(0)) as xen:     # not blocked by it
            for _ in range(20):
                assert xen.query_capabilities().ret == 0
        idle = raw_conn(d.socket(0))                    # idle, no frame begun: not timed out
        t0 = time.monotonic()
        (error,) = read_until_closed(slow)
        assert error.code == wire.ERR_TIMEOUT and "30 bytes received" in error.message
        assert 0.3 < time.monotonic() - t0 < 10
        idle.sendall(frame)
        reply = FrameDecoder.for_client()
        while (r := reply.next_frame()) is None:
            reply.feed(idle.recv(4096))
        assert r.ret == 0
        idle.close()
        slow.close()
    finally:
        assert d.stop() == 0


def test_connections_are_bounded_with_a_clear_error(tmp_path):
    d = DaemonProcess(tmp_path, "--max-connections", "6", "--max-connections-per-domain", "4")
    held = []
    try:
        held = [XenemuClient(d.socket(0)) for _ in range(4)]
        for c in held:
            assert c.noop().ret == 0
        extra = raw_conn(d.socket(0))
        (error,) = read_until_closed(extra)
        assert error.code == wire.ERR_LIMIT and "d0" in error.message
        extra.close()
        held += [XenemuClient(d.socket(1)) for _ in range(2)]
        assert held[-1].noop().ret == -E.EPERM     # d1 is an ordinary guest: but served
        extra = raw_conn(d.socket(1))
        (error,) = read_until_closed(extra)
        assert error.code == wire.ERR_LIMIT and "in all" in error.message
        extra.close()
        held.pop(0).close()                         # a slot frees up
        deadline = time.monotonic() + 10
        while True:
            with XenemuClient(d.socket(0)) as again:
                try:
                    assert again.noop().ret == 0
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    finally:
        for c in held:
            c.close()
        assert d.stop() == 0


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_writer_that_never_reads_is_held_by_backpressure(daemon):
    """50 MB of requests written without reading a reply: the daemon stops
    reading that connection when its replies back up, its memory stays flat,
    and others are served meanwhile."""
    flood = raw_conn(daemon.socket(0))
    flood.settimeout(None)
    frames = call_frame(1, abi.encode_op(7, 0, 0, "lookup_page", dfn=5)) * 4096   # ~0.5 MB
    sent = [0]

    def writer():
        try:
            while sent[0] < 50 << 20:
                flood.sendall(frames)
                sent[0] += len(frames)
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    before = rss_kib(daemon.proc.pid)
    t.start()
    time.sleep(1.0)
    stuck_at = sent[0]
    assert stuck_at < 50 << 20, "the daemon kept reading without anyone reading its replies"
    with XenemuClient(daemon.socket(0)) as xen:
        for _ in range(50):
            assert xen.lookup_page(0, 5).op.lookup_page.gfn == 5
    time.sleep(0.5)
    assert sent[0] == stuck_at                      # still held
    assert rss_kib(daemon.proc.pid) - before < 16 * 1024
    flood.shutdown(socket.SHUT_RDWR)
    flood.close()
    t.join(10)
