"""Client of the control socket (`xenemu ctl` shows replies with xenemu.ctl_tables).

    with ControlClient(path) as ctl:       # None: paths.find_control_socket()
        ctl.call("dma", sbdf="0000:00:03.0", addr=0x1000, write=True, data=b"hi")
"""

from __future__ import annotations

import os

from . import control
from .client import BlockingConnection, XenemuError, connect_unix
from .paths import find_control_socket


class ControlError(Exception):
    """The daemon refused a control request; the message says why."""


class ControlClient(BlockingConnection):
    def __init__(self, path: str | os.PathLike | None = None, timeout: float | None = 60.0):
        path = path or find_control_socket()
        try:
            self._sock = connect_unix(os.fspath(path), timeout)
        except XenemuError as e:
            raise ControlError(f"{e} (is `xenemu serve` running? its banner prints "
                               "XENEMU_CONTROL=PATH; set that, or XENEMU_DIR as it had it, "
                               "or pass --socket)") from None
        self._unpacker = control.unpacker()

    def request(self, op: str, **args) -> dict:
        """The daemon's reply, {"ok": ...}, as it is."""
        try:
            self._sock.sendall(control.pack({"op": op, **args}))
            while True:
                for reply in self._unpacker:
                    return reply
                data = self._sock.recv(1 << 16)
                if not data:
                    raise ControlError("daemon closed the control connection")
                self._unpacker.feed(data)
        except OSError as e:        # it went away mid-request (or timed out)
            raise ControlError(f"control connection lost: {e}") from None

    def call(self, op: str, **args) -> dict:
        """Results of a request; ControlError when the daemon refuses it."""
        reply = self.request(op, **args)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "refused"))
        reply.pop("ok")
        return reply


def parse_value(text: str):
    """key=value arguments on the command line: ints (0x.. too), booleans,
    hex: bytes, text, and lists of those as [a,b] (devices=[0000:00:09.0])."""
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(item) for item in text[1:-1].split(",") if item]
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("hex:"):
        return bytes.fromhex(text[4:])
    if text.startswith("text:"):
        return text[5:].encode()
    try:
        return int(text, 0)
    except ValueError:
        return text
