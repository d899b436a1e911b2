"""What one client, or many, can hold of the daemon: time to finish a frame
(however it is dribbled), the memory of large frames whose replies nobody
reads, and descriptors under a small `ulimit -n`. And the req_id that
TIMEOUT and GONE errors carry."""

from __future__ import annotations

import socket
import threading
import time

from support import DaemonProcess, raw_conn
from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient
from xenemu.wire import FrameDecoder, Region, encode_call


def call_frame(req_id: int, raw_op: bytes, pad: int = 0) -> bytes:
    """A query_capabilities CALL whose guest memory is `pad` bytes longer than the op."""
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                       (Region(OP_GADDR, raw_op + bytes(pad)),))


def query(req_id: int, pad: int = 0) -> bytes:
    return call_frame(req_id, abi.encode_op(1), pad)


def frames_until_closed(s: socket.socket) -> list:
    """Every frame the daemon sends until it closes. A reset after the frames
    counts as a close: the daemon may close with bytes of ours unread."""
    decoder = FrameDecoder.for_client()
    try:
        while data := s.recv(65536):
            decoder.feed(data)
    except ConnectionResetError:
        pass
    return list(decoder)


def status_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# -- the frame deadline ------------------------------------------------------------

def test_a_dribbled_frame_times_out_from_its_first_byte(tmp_path):
    """One byte every 0.2 s used to re-arm the deadline forever: now the frame
    has the timeout from its first byte to its last, and the TIMEOUT carries
    the req_id of its header."""
    d = DaemonProcess(tmp_path, "--frame-timeout", "1")
    try:
        s = raw_conn(d.socket(0))
        frame = query(0x5107)
        stop = threading.Event()

        def dribble():
            try:
                s.sendall(frame[:wire.HDR_SIZE])
                for i in range(wire.HDR_SIZE, len(frame)):      # 64 bytes: 12.8 s in all
                    if stop.wait(0.2):
                        return
                    s.sendall(frame[i:i + 1])
            except OSError:
                pass                    # the daemon closed: what we wait for

        t0 = time.monotonic()
        writer = threading.Thread(target=dribble)
        writer.start()
        try:
            frames = frames_until_closed(s)
        finally:
            stop.set()
            writer.join(30)
        elapsed = time.monotonic() - t0
        assert [type(f) for f in frames] == [wire.Error], frames
        assert frames[0].code == wire.ERR_TIMEOUT and frames[0].req_id == 0x5107
        assert elapsed < 10, f"timed out only after {elapsed:.1f} s"   # dribbling takes 12.8
        s.close()
        with XenemuClient(d.socket(0)) as xen:
            assert xen.query_capabilities().ret == 0
    finally:
        assert d.stop() == 0


def test_a_timeout_before_the_header_is_in_carries_req_id_0(tmp_path):
    d = DaemonProcess(tmp_path, "--frame-timeout", "0.5")
    try:
        s = raw_conn(d.socket(0))
        s.sendall(query(0x77)[:10])
        (error,) = frames_until_closed(s)
        assert error.code == wire.ERR_TIMEOUT and error.req_id == 0
        s.close()
    finally:
        assert d.stop() == 0


def test_gone_carries_the_req_id_of_the_frame_it_answers(daemon):
    """A frame half sent to d1, d1 destroyed, one more byte: GONE, with the req_id
    of the frame's header (whether the daemon says it at once or at the byte)."""
    s = raw_conn(daemon.socket(1))
    frame = query(0x60E)
    s.sendall(frame[:40])
    daemon.ctl("domain_destroy", domid=1)
    try:
        s.sendall(frame[40:41])
    except OSError:
        pass                            # closed already: GONE came at once
    (error,) = frames_until_closed(s)
    assert error.code == wire.ERR_GONE and error.req_id == 0x60E
    s.close()


# -- memory --------------------------------------------------------------------

FLOODERS = 24
FRAME_MEMORY_MIB = 16
# Each connection's own share (a read, its replies, trio's task) and the
# copies of the one frame being executed, above the shared frame memory.
MEMORY_BOUND_MIB = FRAME_MEMORY_MIB + FLOODERS // 4 + 12


def test_clients_pushing_large_frames_without_reading_hold_bounded_memory(tmp_path):
    """24 connections each write 1 MiB frames and never read a reply: the
    daemon held ~4.4 MiB for each (105 MiB). Now large frames are held only
    with bytes of the shared frame memory: the daemon's peak stays under the
    frame memory plus a small share per connection, and it serves others
    meanwhile and afterwards, large frames included."""
    d = DaemonProcess(tmp_path, "--frame-memory", str(FRAME_MEMORY_MIB), record=False,
                      log_level="info")
    flooders = []
    try:
        with XenemuClient(d.socket(0)) as xen:                  # warm: code paths, caches
            for _ in range(20):
                assert xen.query_capabilities().ret == 0
        base = status_kib(d.proc.pid, "VmRSS")
        big = query(1, wire.MAX_FRAME - len(query(1)))
        assert len(big) == wire.MAX_FRAME
        sent = [0] * FLOODERS

        def flood(i, s):
            try:
                for _ in range(6):
                    s.sendall(big)
                    sent[i] += 1
            except OSError:
                pass

        for i in range(FLOODERS):
            s = raw_conn(d.socket(0))
            s.settimeout(None)
            t = threading.Thread(target=flood, args=(i, s), daemon=True)
            t.start()
            flooders.append((s, t))
        # Wait until every writer is held (no frame went out for a while).
        before, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() - quiet_since < 1.5 and time.monotonic() < deadline:
            time.sleep(0.1)
            if sum(sent) != before:
                before, quiet_since = sum(sent), time.monotonic()
        assert sum(sent) < 6 * FLOODERS, "the daemon read everything nobody reads replies of"
        with XenemuClient(d.socket(0)) as xen:                  # small frames: served at once
            for _ in range(20):
                assert xen.query_capabilities().ret == 0
        peak = status_kib(d.proc.pid, "VmHWM")
        grew_mib = (peak - base) / 1024
        print(f"daemon: {base / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB with "
              f"{FLOODERS} flooders ({grew_mib:.1f} MiB more)")
        assert grew_mib < MEMORY_BOUND_MIB, (
            f"the daemon grew {grew_mib:.1f} MiB with {FLOODERS} clients flooding 1 MiB frames")
    finally:
        for s, t in flooders:
            s.shutdown(socket.SHUT_RDWR)    # wakes a sendall blocked in another thread
            s.close()
            t.join(10)
    try:
        with XenemuClient(d.socket(0)) as xen:                  # the frame memory came back
            big_reply = xen.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                                 [Region(OP_GADDR, abi.encode_op(1) + bytes(900_000))])
            assert big_reply.ret == 0 and len(big_reply.regions[0].data) == 900_032
    finally:
        assert d.stop() == 0


# -- descriptors ------------------------------------------------------------------

def test_a_small_descriptor_limit_lowers_the_connection_limits_and_refuses_with_limit(tmp_path):
    """ulimit -n 64 and 100 connections: each is served or refused with LIMIT
    at once (no client left hanging in the backlog), the log says why in one
    line and holds no EMFILE traceback, and the daemon serves afterwards."""
    d = DaemonProcess(tmp_path, max_open_files=64)
    conns = []
    try:
        assert "allow" in d.log() and "RLIMIT_NOFILE" in d.log()
        frame = query(9)
        for _ in range(100):
            s = raw_conn(d.socket(0), timeout=30)
            conns.append(s)
            try:
                s.sendall(frame)
            except OSError:
                pass                    # refused and closed already
        served = refused = 0
        for s in conns:
            decoder = FrameDecoder.for_client()
            while (f := decoder.next_frame()) is None:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    data = b""
                assert data, "closed without a word"
                decoder.feed(data)
            if isinstance(f, wire.Error):
                assert f.code == wire.ERR_LIMIT, f
                refused += 1
            else:
                assert f.ret == 0
                served += 1
        assert served >= 8 and refused >= 1, (served, refused)
        for s in conns:
            s.close()
        conns = []
        deadline = time.monotonic() + 20        # the slots free up as the closes arrive
        while True:
            try:
                with XenemuClient(d.socket(0)) as xen:
                    assert xen.query_capabilities().ret == 0
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        log = d.log()
        assert "Traceback" not in log and "EMFILE" not in log, log[-3000:]
    finally:
        for s in conns:
            s.close()
        assert d.stop() == 0
