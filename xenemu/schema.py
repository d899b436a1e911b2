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
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
DomId = Annotated[int, msgspec.Meta(ge=0, lt=0x7FF0)]   # below DOMID_FIRST_RESERVED


class U64(int):
    """An unsigned 64-bit integer (an address, a frame or page number).

    msgspec cannot bound an int beyond int64, and a Python int (from TOML,
    or from a caller's dict) can be any size: this type checks itself."""

    @classmethod
    def from_input(cls, value) -> "U64":
        if type(value) is not int:
            raise ValueError(f"expected int, got {type(value).__name__}")
        if not 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError("expected int in [0, 2^64)")
        return cls(value)


class Text(str):
    """Text that must be checked beyond a pattern (a file path), so that the
    error says what is wrong rather than quote a regular expression."""

    MAX = 4096

    @classmethod
    def from_input(cls, value) -> "Text":
        if type(value) is not str:
            raise ValueError(f"expected str, got {type(value).__name__}")
        if not 0 < len(value) <= cls.MAX:
            raise ValueError(f"expected 1 to {cls.MAX} characters")
        if "\0" in value:
            raise ValueError("contains a NUL character")
        return cls(value)


def _dec_hook(type_, value):
    """msgspec's hook for the types above (and others with a from_input
    classmethod): their ValueError becomes a ValidationError with a path."""
    check = getattr(type_, "from_input", None)
    if check is None:
        raise NotImplementedError
    return check(value)


class InputError(ValueError):
    """An input that does not match its schema: one line naming where and why."""


_AT = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)


def describe(error: msgspec.ValidationError) -> tuple[str, str]:
    """(path inside the document, what was expected) of a msgspec error."""
    m = _AT.match(str(error))
    what, path = m.group("what"), (m.group("path") or "").lstrip(".")
    what = what.replace("`", "")
    what = what[:1].lower() + what[1:]
    if m.group("key"):
        what = f"a key: {what}"
    return path, what


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ERROR = 300     # characters of a refusal: an input's own text in it is cut there


def one_line(text: str) -> str:
    """`text` safe to print as one line: control characters escaped, cut at MAX_ERROR."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + "..."


def convert(data, type_: type[T], where: str, path: str = "") -> T:
    """`data` as a `type_`, or InputError("WHERE: PATH: WHAT")."""
    try:
        return msgspec.convert(data, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        inner, what = describe(e)
        full = ".".join(p for p in (path, inner) if p).replace(".[", "[")
        raise InputError(one_line(f"{where}: {full}: {what}" if full else f"{where}: {what}")) \
            from None
