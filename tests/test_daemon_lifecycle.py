"""The daemon's life and its domains' lives, as a user and a harness meet them:
`xenemu serve` refusing to start (one line, exit 1, nothing of the user's
deleted), connections that end with the domain incarnation they were accepted
for, and a control socket that answers every bad request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from support import ROOT, DaemonProcess

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
