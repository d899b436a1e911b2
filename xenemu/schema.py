"""Validation of every input the project reads, against declared schemas.

Each input (the machine file and the machine a trace or snapshot carries,
the snapshot body, a trace's header and records, each control op's
arguments) is described once, as msgspec Structs with typed fields and
ranges, next to the code that reads it. `convert()` is the one gate: plain
data in (from TOML or msgpack), a typed object or one InputError out. The
error names where the input came from, the path inside it and what was
expected, e.g.

    machine.toml: domain[0].devices[0]: expected str, got int

msgspec was chosen over pydantic because it validates msgpack-shaped data
(bytes, ints up to 2^64) without coercion, its Structs are cheap enough for
per-record use (trace records), and it has no dependencies of its own.
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec

T = TypeVar("T")

# Integer ranges that recur across schemas.
U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF_FFFF_FFFF)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
DomId = Annotated[int, msgspec.Meta(ge=0, lt=0x7FF0)]   # below DOMID_FIRST_RESERVED


class InputError(ValueError):
    """An input that does not match its schema: one line naming where and why."""


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def describe(error: msgspec.ValidationError) -> tuple[str, str]:
    """(path inside the document, what was expected) of a msgspec error."""
    m = _AT.match(str(error))
    what, path = m.group("what"), (m.group("path") or "").lstrip(".")
    what = what.replace("`", "")
    return path, what[:1].lower() + what[1:]


def convert(data, type_: type[T], where: str, path: str = "") -> T:
    """`data` as a `type_`, or InputError("WHERE: PATH: WHAT")."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as e:
        inner, what = describe(e)
        full = ".".join(p for p in (path, inner) if p).replace(".[", "[")
        raise InputError(f"{where}: {full}: {what}" if full else f"{where}: {what}") from None
