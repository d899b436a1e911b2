"""Trace records: the file format's header and its five kinds of record (abi/TRACE.md).

A trace is a msgpack stream: one header map, then one map per event, in the
order the machine ran them. The header and each kind of record are described
once, here, as msgspec Structs with ranges; the reader checks every object
against them (through xenemu.schema) and yields these typed records, the
engine produces them as its events and the writer serialises them. Every
object has a bound on its size, so that a small compressed file cannot make
a reader hold gigabytes.

A call that continued (-ERESTART) is one `hc` record and `cont` rounds that
name it by its id; `Continuations` pairs them for whoever reads a trace in
order (replay, `trace show`, `trace stats`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
import msgspec

from .. import wire
from ..schema import U32, DomId, InputError, NonNegative, convert

# Format 2 is format 1 with a header that may start the machine from a
# snapshot; a trace without one is still written as format 1, so that an
# older xenemu reads it.
FORMAT = 2
HEADER_KEY = "xenemu_trace"   # its value is the format version

# Record kinds ("k").
HYPERCALL = "hc"     # a hypercall: t, d (domid), req (CALL frame), rep (REPLY frame);
                     # rep is nil and c (an id) set when it continued (-ERESTART)
ROUND = "cont"       # a further round of continued call c: t, c, rep (nil until its last)
CONTROL = "ctl"      # a control request: t, req, rep (maps as on the control socket)
PROTOCOL = "proto"   # a frame the daemon refused: t, d, raw, eof, code, rep (ERROR frame or nil)
HAZARD = "hazard"    # the hypercall (or round) just before would have crashed, hung or
                     # misled Xen v7: t, d (the domain acted on), name, why

# Control operations a trace records: those that change the machine, and
# those whose answer depends on what guests and devices did (so replay
# checks them too). Introspection of the implementation (info, counters,
# contexts, dump, check: frame counts, IOTLB statistics, table pages) is
# left out, since a later xenemu may legitimately answer it differently.
RECORDED_CONTROL = frozenset({
    "domain_create", "domain_destroy", "device_assign", "device_deassign",
    "p2m_set", "p2m_get", "mem_write", "mem_read", "dma", "faults", "fail_nth",
    "read_dirty",
})

# -- sizes ------------------------------------------------------------------------------
# What the daemon can write bounds what a reader accepts. A record holds at
# most two frames (a request and its reply, each at most wire.MAX_FRAME), a
# control request (at most 1 MiB packed) and its reply (at most a 1 MiB DMA),
# or a refused frame's bytes (at most a frame and the read it arrived with).
# The header holds the machine and, when the daemon started from one, a
# snapshot with the guest memory that is not zero: 16 MiB of it. Held as
# Python objects, msgpack may take up to ~25 times its size (a header of
# nothing but tiny arrays), so this bound is the reader's memory too.
MAX_RAW = wire.MAX_FRAME + (64 << 10)
MAX_RECORD = 2 * wire.MAX_FRAME + (64 << 10)
MAX_HEADER = 16 << 20


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


# -- the schema (abi/TRACE.md) -------------------------------------------------------------

Frame = Annotated[bytes, msgspec.Meta(max_length=wire.MAX_FRAME)]
# Seconds since the machine started; finite, and far beyond any session.
Time = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]


class TraceAbi(msgspec.Struct):
    pv_iommu_revision: U32
    wire_version: U32


class TraceHeader(msgspec.Struct):
    xenemu_trace: Annotated[int, msgspec.Meta(ge=1, le=FORMAT)]
    abi: TraceAbi
    machine: dict[str, Any]          # checked by machine_from_dict
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    snapshot: dict[str, Any] | None = None   # checked by xenemu.snapshot


class HypercallRecord(msgspec.Struct, tag=HYPERCALL, tag_field="k", frozen=True):
    t: Time
    d: DomId
    req: Frame
    rep: Frame | None = None         # None: the call continued, as `c`
    c: NonNegative | None = None

    def __post_init__(self):
        if self.rep is None and self.c is None:
            raise ValueError("no reply and no continuation id")


class RoundRecord(msgspec.Struct, tag=ROUND, tag_field="k", frozen=True):
    t: Time
    c: NonNegative
    rep: Frame | None = None         # set on the last round


class ControlRecord(msgspec.Struct, tag=CONTROL, tag_field="k", frozen=True):
    t: Time
    req: dict[str, Any]
    rep: dict[str, Any]


class ProtocolRecord(msgspec.Struct, tag=PROTOCOL, tag_field="k", frozen=True):
    t: Time
    d: DomId
    raw: Annotated[bytes, msgspec.Meta(max_length=MAX_RAW)]
    eof: bool                        # the peer hung up mid-frame
    code: U32
    rep: Frame | None = None         # the ERROR frame sent; None when eof


class HazardRecord(msgspec.Struct, tag=HAZARD, tag_field="k", frozen=True):
    t: Time
    d: DomId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]   # a row of the hazard table
    why: Annotated[str, msgspec.Meta(max_length=1024)]


Record = HypercallRecord | RoundRecord | ControlRecord | ProtocolRecord | HazardRecord


@dataclass(frozen=True)
class PackedHypercalls:
    """`count` hc records, each with its reply, already packed as a trace
    holds them (the fast path packs them in C): an engine event the writer
    appends whole. Never read from a file: records() gives them back."""
    data: bytes
    count: int

    def records(self) -> list[HypercallRecord]:
        """The records, as the engine would have made them one by one."""
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(self.data)
        return [HypercallRecord(m["t"], m["d"], m["req"], m["rep"]) for m in unpacker]
# By kind: converting to the one type is ten times faster than to the union.
RECORD_TYPES = {HYPERCALL: HypercallRecord, ROUND: RoundRecord, CONTROL: ControlRecord,
                PROTOCOL: ProtocolRecord, HAZARD: HazardRecord}


# Maps and arrays within each other: a snapshot needs 7, a control reply 4.
# Deeper nesting is refused, so that nothing printing or comparing a value
# (repr, replay's reply comparison) runs out of Python's stack.
MAX_DEPTH = 16


def check_record(obj, where: str) -> Record:
    """`obj` (as unpacked) as the record its kind says; InputError if it is not one."""
    kind = obj.get("k") if isinstance(obj, dict) else None
    type_ = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if type_ is None:
        return convert(obj, Record, where)     # says what is wrong: not a map, no or bad kind
    if type_ is ControlRecord:
        check_depth(obj, where)
    return convert(obj, type_, where)


def check_depth(obj, where: str) -> None:
    """InputError if maps and arrays nest in `obj` deeper than MAX_DEPTH.
    Walks with a stack of iterators: memory in the depth, not the size."""
    stack = [iter((obj,))]
    while stack:
        for value in stack[-1]:
            if isinstance(value, dict):      # keys too: an array key is a tuple
                children = itertools.chain(value, value.values())
            elif isinstance(value, (list, tuple)):
                children = iter(value)
            else:
                continue
            if len(stack) > MAX_DEPTH:
                raise InputError(f"{where}: maps and arrays nested deeper than {MAX_DEPTH}")
            stack.append(children)
            break
        else:
            stack.pop()


class TraceError(Exception):
    """The trace cannot be read: not a trace, a newer format, a corrupt record."""


@dataclass
class Continuation:
    """A continued call between its rounds, as a trace shows it."""
    number: int          # the record that began it (from 1)
    domid: int
    call: Any            # its request, decoded (a wire.Call)
    rounds: int = 1      # rounds recorded so far, the first included
    state: Any = None    # what the trace's reader keeps with it (replay: the engine's call)


class Continuations:
    """The continued calls of a trace being read in order: an `hc` record
    without a reply begins one under its id `c`, each `cont` round with that
    id is one more round of it, the round with a reply ends it."""

    def __init__(self):
        self._open: dict[int, Continuation] = {}

    def begin(self, number: int, rec: HypercallRecord, call, state=None) -> None:
        self._open[rec.c] = Continuation(number, rec.d, call, state=state)

    def round(self, rec: RoundRecord) -> Continuation | None:
        """The continuation `rec` is a round of, its rounds counted (and
        ended when `rec` is its last); None if no earlier record began it."""
        cont = self._open.get(rec.c)
        if cont is None:
            return None
        cont.rounds += 1
        if rec.rep is not None:
            del self._open[rec.c]
        return cont

    def end_domain(self, domid: int) -> None:
        """The domain was destroyed: its continued calls end unanswered."""
        self._open = {c: cont for c, cont in self._open.items() if cont.domid != domid}

    def unfinished(self) -> list[Continuation]:
        """Those the trace never ended (the daemon stopped mid-call)."""
        return list(self._open.values())
