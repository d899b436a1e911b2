"""The daemon's life and its domains' lives, as a user and a harness meet them:
`xenemu serve` refusing to start (one line, exit 1, nothing of the user's
deleted), connections that end with the domain incarnation they were accepted
for, and a control socket that answers every bad request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import msgpack
import pytest

from support import ROOT, DaemonProcess, assert_replays, raw_conn
from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient
from xenemu.ctl import ControlError
from xenemu.control import MAX_REQUEST
from xenemu.daemon import Limits
from xenemu.errno import XenErrno as E
from xenemu.wire import FrameDecoder, Region, encode_call

CONTROL_CONNECTIONS = Limits.control_connections

EXIT_CANNOT_SERVE = 1


def private_dir(path):
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def refused(socket_dir, *, timeout=30) -> str:
    """Run `xenemu serve` expecting a refusal: exit 1, one line on stderr (the
    log is quiet at warning), no traceback. Returns that line."""
    result = subprocess.run(
        [sys.executable, "-m", "xenemu.cli", "--log-level", "warning", "serve",
         "--socket-dir", str(socket_dir)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_CANNOT_SERVE, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenemu: "), result.stderr
    return lines[0]


# -- what is in the socket directory is the user's, unless it is a dead socket ----

@pytest.mark.parametrize("name", ["dom0.sock", "control.sock"])
def test_a_regular_file_named_like_a_socket_is_kept_and_refused(tmp_path, name):
    sockets = private_dir(tmp_path / "sockets")
    (sockets / name).write_text("my notes\n")
    line = refused(sockets)
    assert str(sockets / name) in line and "regular file" in line
    assert (sockets / name).read_text() == "my notes\n"


def test_a_directory_fifo_or_symlink_named_like_a_socket_is_kept_and_refused(tmp_path):
    sockets = private_dir(tmp_path / "sockets")
    target = tmp_path / "target.txt"
    target.write_text("kept")
    cases = {"a directory": lambda p: p.mkdir(),
             "a FIFO": os.mkfifo,
             "a symbolic link": lambda p: p.symlink_to(target)}
    for kind, make in cases.items():
        make(sockets / "control.sock")
        line = refused(sockets)
        assert str(sockets / "control.sock") in line and kind in line, line
        assert os.path.lexists(sockets / "control.sock")
        if (sockets / "control.sock").is_dir() and not (sockets / "control.sock").is_symlink():
            (sockets / "control.sock").rmdir()
        else:
            (sockets / "control.sock").unlink()
    assert target.read_text() == "kept"


def test_a_live_socket_is_refused_as_in_use(tmp_path):
    sockets = private_dir(tmp_path / "sockets")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(sockets / "control.sock"))
    live.listen(1)
    try:
        assert "in use" in refused(sockets)
    finally:
        live.close()


# -- the socket directory -----------------------------------------------------------

def test_an_unsafe_or_unusable_socket_directory_is_refused_in_one_line(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    assert "not open to others" in refused(open_dir)
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "not a directory" in refused(a_file)
    too_long = private_dir(tmp_path / ("d" * 120))
    assert "AF_UNIX path too long" in refused(too_long)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a link another user owns")
def test_a_socket_directory_link_owned_by_another_user_is_refused(tmp_path):
    real = private_dir(tmp_path / "real")
    link = tmp_path / "sockets"
    link.symlink_to(real)
    os.lchown(link, 65534, 65534)
    line = refused(link)
    assert str(link) in line and "symbolic link owned by uid 65534" in line
    assert list(real.iterdir()) == []


def test_a_socket_directory_link_of_ours_to_a_private_directory_serves(tmp_path):
    real = private_dir(tmp_path / "real")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sockets").symlink_to(real)
    d = DaemonProcess(tmp_path / "d", record=False)
    try:
        assert d.ctl("info")["domains"]
        assert (real / "control.sock").exists()
    finally:
        assert d.stop() == 0


# -- the control socket answers every bad request -----------------------------------

def control_replies(daemon, data: bytes, *, then_close: bool = True) -> list:
    """Send raw bytes on a new control connection; every reply until the daemon closes it."""
    s = raw_conn(daemon.control)
    try:
        try:
            s.sendall(data)
            if not then_close:
                s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass        # a refused connection may be answered and closed before we write
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while chunk := s.recv(65536):
                unpacker.feed(chunk)
        except ConnectionResetError:
            pass        # closed with bytes of ours unread: after the replies, as EOF would be
        return list(unpacker)
    finally:
        s.close()


def still_serving(daemon):
    assert daemon.ctl("info")["domains"]
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.noop().ret == 0


def dma_request_of(size: int) -> bytes:
    """A DMA write request of exactly `size` bytes (its data the padding)."""
    dma = {"op": "dma", "sbdf": "0000:00:02.0", "addr": 0, "write": True}
    head = msgpack.packb({**dma, "data": b""})
    pad = size - len(head) - 3       # bin8 -> bin32 grows the header by 3
    request = msgpack.packb({**dma, "data": b"x" * pad})
    assert len(request) == size
    return request


def test_a_control_request_over_1_mib_is_answered_then_closed(daemon):
    [reply] = control_replies(daemon, dma_request_of(MAX_REQUEST), then_close=False)
    assert reply["ok"]
    [reply] = control_replies(daemon, dma_request_of(MAX_REQUEST + 1))
    assert reply["ok"] is False and f"at most {MAX_REQUEST} bytes" in reply["error"]
    still_serving(daemon)


@pytest.mark.parametrize("stream", [b"\xc1", msgpack.packb({"op": "info"}) + b"\x82\xa2op\xc1",
                                    b"\x91" * 4000],
                         ids=["never-msgpack", "truncated-then-garbage", "nested-too-deep"])
def test_broken_msgpack_on_the_control_socket_is_answered_then_closed(daemon, stream):
    replies = control_replies(daemon, stream)
    # Requests before the fault are answered; then one reply says what was wrong.
    assert all(r["ok"] for r in replies[:-1]) and len(replies) == stream.count(b"\xa4info") + 1
    assert replies[-1]["ok"] is False and "not" in replies[-1]["error"] \
        and "msgpack" in replies[-1]["error"]
    still_serving(daemon)


def test_a_control_request_that_is_not_a_map_is_answered_and_the_connection_stays(daemon):
    replies = control_replies(daemon, msgpack.packb([1, 2]) + msgpack.packb("info")
                              + msgpack.packb({"op": "info"}), then_close=False)
    assert [r["ok"] for r in replies] == [False, False, True]
    assert "a request is a map" in replies[0]["error"]


def test_control_connections_are_bounded(daemon):
    held = [raw_conn(daemon.control) for _ in range(CONTROL_CONNECTIONS)]
    try:
        for s in held:                          # each is being served before the next
            s.sendall(msgpack.packb({"op": "counters"}))
            assert msgpack.unpackb(s.recv(65536))["ok"]
        refused_one = control_replies(daemon, msgpack.packb({"op": "info"}))
        assert refused_one == [{"ok": False, "error": f"too many control connections "
                                f"(at most {CONTROL_CONNECTIONS} at once); closing the connection"}]
        with XenemuClient(daemon.socket(0)) as xen:
            assert xen.noop().ret == 0
    finally:
        for s in held:
            s.close()
    # The slots come back as the connections close.
    deadline = time.monotonic() + 30
    while True:
        replies = control_replies(daemon, msgpack.packb({"op": "info"}), then_close=False)
        if replies[0]["ok"] or time.monotonic() > deadline:
            break
    assert replies[0]["ok"]


# -- a connection belongs to the domain incarnation it was accepted for -------------

RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable


def frames_until_closed(s) -> list:
    decoder = FrameDecoder.for_client()
    try:
        while data := s.recv(65536):
            decoder.feed(data)
    except ConnectionResetError:
        pass                    # closed with bytes of ours unread: after its frames
    return list(decoder)


def served(s, frame: bytes):
    """Send one frame, return the frame that answers it."""
    s.sendall(frame)
    decoder = FrameDecoder.for_client()
    while (answer := decoder.next_frame()) is None:
        decoder.feed(s.recv(4096))
    return answer


def alloc_context_frame(req_id: int) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                       (Region(OP_GADDR, abi.encode_op(abi.IOMMUOP_alloc_context)),))


def test_connections_to_a_destroyed_domain_are_told_gone_at_once_and_free_their_slots(tmp_path):
    """Eight idle connections to guest d5; d5 is destroyed and a hardware d5
    created in its place. The old connections never act as the new d5: each
    gets GONE without asking, and the successor has all its slots."""
    d = DaemonProcess(tmp_path, "--max-connections-per-domain", "8")
    try:
        guest = d.ctl("domain_create", domid=5, memory_mib=4)["socket"]
        stale = [raw_conn(guest, timeout=20) for _ in range(8)]
        for i, s in enumerate(stale):       # each accepted and served: a guest gets EPERM
            assert served(s, alloc_context_frame(i + 1)).ret == -E.EPERM
        d.ctl("domain_destroy", domid=5)
        successor = d.ctl("domain_create", domid=5, hardware=True, memory_mib=4)["socket"]
        assert successor == guest
        for s in stale:                     # not one asked anything since
            frames = frames_until_closed(s)
            assert [(f.req_id, f.code) for f in frames] == [(0, wire.ERR_GONE)], frames
            assert "d5 has been destroyed" in frames[0].message
            s.close()
        # The successor's 8 slots are all free: not one is held by the old d5's connections.
        fresh = [XenemuClient(successor) for _ in range(8)]
        try:
            assert [xen.alloc_context().ret for xen in fresh] == [0] * 8
        finally:
            for xen in fresh:
                xen.close()
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)


def test_a_stale_connection_that_asks_after_the_successor_came_gets_gone(tmp_path):
    """The breach as found: the old guest connection asks alloc_context after
    domain_destroy + domain_create hardware=true of the same domid."""
    d = DaemonProcess(tmp_path)
    try:
        guest = d.ctl("domain_create", domid=5, memory_mib=4)["socket"]
        s = raw_conn(guest, timeout=20)
        assert served(s, alloc_context_frame(1)).ret == -E.EPERM
        d.ctl("domain_destroy", domid=5)
        d.ctl("domain_create", domid=5, hardware=True, memory_mib=4)
        try:
            s.sendall(alloc_context_frame(2))
        except BrokenPipeError:
            pass                            # already closed: the GONE is waiting for us
        frames = frames_until_closed(s)
        assert [(type(f).__name__, f.req_id, getattr(f, "code", None)) for f in frames] == \
            [("Error", 0, wire.ERR_GONE)], frames
        assert [c["ctx_no"] for c in d.ctl("contexts", domid=5)["contexts"]] == [0]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)


def test_a_call_continuing_when_its_domain_is_destroyed_ends_there(tmp_path):
    """free_context continues round by round (-ERESTART); the domain is
    destroyed and re-created between two rounds. No round runs on the
    successor: the call ends, answered GONE with its req_id (Xen never runs a
    dying domain's vCPUs again)."""
    d = DaemonProcess(tmp_path)
    try:
        for attempt in range(10):
            sock = d.ctl("domain_create", domid=5, hardware=True, memory_mib=4)["socket"]
            with XenemuClient(sock) as xen:
                ctx = xen.alloc_context().op.ctx_no
                maps = xen.pipeline([abi.encode_op(abi.IOMMUOP_map_pages, ctx, RW, "map_pages",
                                                   gfn=dfn % 1024, dfn=dfn, nr_pages=256)
                                     for dfn in range(0, 1 << 18, 256)])
                assert all(r.ret == 0 for r in maps)
                ctl = raw_conn(d.control)
                xen.send_raw(encode_call(9999, abi.HYPERVISOR_iommu_op, (OP_GADDR,), (
                    Region(OP_GADDR, abi.encode_op(abi.IOMMUOP_free_context, ctx)),)))
                ctl.sendall(msgpack.packb({"op": "domain_destroy", "domid": 5})
                            + msgpack.packb({"op": "domain_create", "domid": 5, "hardware": True,
                                             "memory_mib": 4}))
                unpacker, replies = msgpack.Unpacker(), []
                while len(replies) < 2:
                    unpacker.feed(ctl.recv(65536))
                    replies += list(unpacker)
                ctl.close()
                frame = xen.receive_frame()
            if isinstance(frame, wire.Error):
                break
            assert frame.ret == 0           # the free ended before the destroy: again
            d.ctl("domain_destroy", domid=5)
        else:
            pytest.skip("the destroy never landed between two rounds of the free")
        assert (frame.req_id, frame.code) == (9999, wire.ERR_GONE)
        # The successor was not touched: only its default context, nothing freed twice.
        assert [c["ctx_no"] for c in d.ctl("contexts", domid=5)["contexts"]] == [0]
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)


# -- regions: a guest address range neither wraps nor shares bytes with another ----

TOP = 1 << 64


def noop_at(req_id: int, gaddr: int, *more: Region) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (gaddr,),
                       (Region(gaddr, abi.encode_op(abi.IOMMUOP_noop)), *more))


@pytest.mark.parametrize("frame, why", [
    (noop_at(41, TOP - 16), "region 0 wraps the address space"),
    (noop_at(42, 0x1000, Region(0x1010, b"\0" * 8)), "regions 0 and 1 overlap"),
    (noop_at(43, 0x1000, Region(0x2000, b"x"), Region(0x0fff, b"xy")), "regions 0 and 2 overlap"),
], ids=["wraps-past-2^64", "second-inside-first", "tail-overlaps-head"])
def test_a_region_that_wraps_or_overlaps_is_malformed(daemon, frame, why):
    s = raw_conn(daemon.socket(0))
    s.sendall(frame)
    [error] = frames_until_closed(s)
    s.close()
    req_id = int.from_bytes(frame[16:24], "little")
    assert (error.req_id, error.code) == (req_id, wire.ERR_MALFORMED) and why in error.message
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.noop().ret == 0


def test_regions_that_touch_end_at_the_top_or_are_empty_are_served(daemon):
    cases = [noop_at(1, TOP - 32),                                      # ends at 2^64
             noop_at(2, 0x1000, Region(0x1020, b"\1" * 8)),             # adjacent
             noop_at(3, 0x1000, Region(0x1008, b""), Region(0x1008, b""))]  # empty
    s = raw_conn(daemon.socket(0))
    try:
        for frame in cases:
            decoder = FrameDecoder.for_server()
            decoder.feed(frame)
            sent = decoder.next_frame()
            reply = served(s, frame)
            assert isinstance(reply, wire.Reply) and reply.ret == 0, reply
            assert reply.regions[1:] == sent.regions[1:]    # carried back as sent
    finally:
        s.close()


def test_a_domain_whose_socket_path_is_taken_is_not_created(tmp_path):
    d = DaemonProcess(tmp_path, record=False)   # the refusal is the daemon's, not the machine's
    try:
        (d.socket_dir / "dom5.sock").write_text("mine")
        with pytest.raises(ControlError, match="d5 not created: .*dom5.sock exists and is a "
                                               "regular file"):
            d.ctl("domain_create", domid=5, memory_mib=4)
        assert [x["domid"] for x in d.ctl("info")["domains"]] == [0, 1]
        assert (d.socket_dir / "dom5.sock").read_text() == "mine"
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
