"""struct.Struct twins of fixed-size construct layouts, for the hot paths.

The construct layouts in xenemu.wire and xenemu.abi are the documented
layouts (and what the C headers are checked against). Parsing and building
through them costs a few microseconds a struct, which is most of a
hypercall's time in the daemon, so the codec and the hypercall handlers use
the struct.Struct that `struct_of()` derives from the same layout: one
description, two speeds. tests/test_packing.py proves the two give the same
bytes and the same values.
"""

from __future__ import annotations

import struct

from construct import Array, Bytes, Compiled, Construct, FormatField, Renamed, Struct


def _format(con: Construct) -> str:
    if isinstance(con, Compiled):
        return _format(con.defersubcon)
    if isinstance(con, Renamed):
        return _format(con.subcon)
    if isinstance(con, Struct):
        return "".join(_format(sub) for sub in con.subcons)
    if isinstance(con, FormatField) and con.fmtstr[0] == "<":
        return con.fmtstr[1:]
    if isinstance(con, Bytes) and isinstance(con.length, int):
        return f"{con.length}s"
    if isinstance(con, Array) and isinstance(con.count, int) \
            and isinstance(con.subcon, FormatField):
        return f"{con.count}{_format(con.subcon)}"
    raise TypeError(f"{con!r} has no fixed little-endian struct format")


def struct_of(layout: Construct) -> struct.Struct:
    """The struct.Struct reading and writing `layout`'s bytes: its fields in
    order, nested structs flattened, an Array(n, field) as n values, Bytes(n)
    as one bytes value. TypeError for a layout of variable size."""
    s = struct.Struct("<" + _format(layout))
    if s.size != layout.sizeof():
        raise TypeError(f"{layout!r}: struct size {s.size} != layout size {layout.sizeof()}")
    return s
