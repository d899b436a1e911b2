"""Where the daemon's sockets are: one rule for `xenemu serve`, which places
them, and for the clients that look for them (`xenemu ctl`, `xenemu top`).
No imports beyond the standard library, so that a client starts quickly."""

from __future__ import annotations

import os
from pathlib import Path


def default_socket_dir() -> Path:
    """`serve --socket-dir`'s default: $XENEMU_DIR, else /tmp/xenemu-UID."""
    return Path(os.environ.get("XENEMU_DIR") or f"/tmp/xenemu-{os.getuid()}")


def domain_socket_path(socket_dir: Path, domid: int) -> Path:
    return Path(socket_dir) / f"dom{domid}.sock"


def control_socket_path(socket_dir: Path) -> Path:
    return Path(socket_dir) / "control.sock"


def find_control_socket() -> Path:
    """The control socket a client talks to when not told: $XENEMU_CONTROL
    (which `serve` prints), else where `serve` puts it without --socket-dir."""
    return Path(os.environ.get("XENEMU_CONTROL") or control_socket_path(default_socket_dir()))
