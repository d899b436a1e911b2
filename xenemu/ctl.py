"""Client of the control socket, and the `xenemu ctl` command's formatting.

    with ControlClient(path) as ctl:       # or $XENEMU_CONTROL
        ctl.call("dma", sbdf="0000:00:03.0", addr=0x1000, write=True, data=b"hi")
"""

from __future__ import annotations

import os
from array import array


from . import control
from .client import BlockingConnection, XenemuError, connect_unix
from .runs import mapping_runs


class ControlError(Exception):
    """The daemon refused a control request; the message says why."""


class ControlClient(BlockingConnection):
    def __init__(self, path: str | os.PathLike | None = None, timeout: float | None = 60.0):
        path = path or os.environ.get("XENEMU_CONTROL")
        if not path:
            raise ControlError("no control socket: pass a path or set XENEMU_CONTROL")
        try:
            self._sock = connect_unix(os.fspath(path), timeout)
        except XenemuError as e:
            raise ControlError(str(e)) from None
        self._unpacker = control.unpacker()

    def request(self, op: str, **args) -> dict:
        """The daemon's reply, {"ok": ...}, as it is."""
        self._sock.sendall(control.pack({"op": op, **args}))
        while True:
            for reply in self._unpacker:
                return reply
            data = self._sock.recv(1 << 16)
            if not data:
                raise ControlError("daemon closed the control connection")
            self._unpacker.feed(data)

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


def format_reply(op: str, reply: dict) -> str:
    """Readable lines for the results of op."""
    if op == "dump":
        return _format_dump(reply)
    if op == "faults":
        lines = [f"{f['sbdf']} {'write' if f['write'] else 'read '} {f['addr']:#x}: {f['kind']}"
                 for f in reply["faults"]]
        if reply["overflow"]:
            lines.append("(fault log overflowed: later faults were dropped)")
        return "\n".join(lines) or "no faults"
    if op == "contexts":
        return "\n".join(
            f"ctx {c['ctx_no']:>3}{' (dying)' if c['dying'] else ''}: {c['mapped']} pages mapped, "
            f"{c['table_pages']} table pages, devices: {', '.join(c['devices']) or '-'}"
            for c in reply["contexts"])
    if op == "reserved_regions":
        return "\n".join(f"{reply['sbdf']} {r['start']:#012x}-{r['end']:#012x} {r['kind']}"
                         for r in reply["regions"])
    if op == "check":
        return "consistent" if reply["consistent"] else "\n".join(reply["problems"])
    return "\n".join(f"{k}: {_show(v)}" for k, v in reply.items()) or "ok"


def _show(value) -> str:
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else f"{value[:64].hex()}... ({len(value)} bytes)"
    return str(value)


def _format_dump(reply: dict) -> str:
    gfns = array("Q")
    gfns.frombytes(reply["gfns"])
    names = {1: "r-", 2: "-w", 3: "rw"}
    dfn0 = reply["dfn"]
    lines = [f"dfn {dfn0 + off:#x}..{dfn0 + off + n - 1:#x} -> gfn {gfn:#x}..{gfn + n - 1:#x} "
             f"{names[perm]} ({n})"
             for off, gfn, n, perm in mapping_runs(gfns, reply["perms"])]
    return "\n".join(lines) or "nothing mapped in that range"
