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

from support import ROOT, DaemonProcess, raw_conn
from xenemu.client import XenemuClient
from xenemu.control import MAX_REQUEST
from xenemu.daemon import CONTROL_CONNECTIONS

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
        s.sendall(data)
        if not then_close:
            s.shutdown(socket.SHUT_WR)
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


def info_request_of(size: int) -> bytes:
    head = msgpack.packb({"op": "info", "pad": b""})
    pad = size - len(head) - 3       # bin8 -> bin32 grows the header by 3
    request = msgpack.packb({"op": "info", "pad": b"x" * pad})
    assert len(request) == size
    return request


def test_a_control_request_over_1_mib_is_answered_then_closed(daemon):
    [reply] = control_replies(daemon, info_request_of(MAX_REQUEST), then_close=False)
    assert reply["ok"]
    [reply] = control_replies(daemon, info_request_of(MAX_REQUEST + 1))
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
