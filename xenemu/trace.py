"""Hypercall traces: the file format, a writer and a reader (abi/TRACE.md).

A trace is a msgpack stream: one header map, then one map per event, in the
order the machine ran them. Events are appended and written one by one, so a
daemon killed mid-run leaves a trace whose whole records all replay; a cut
off last record is reported by the reader (`TraceReader.truncated`), not
fatal. A write that fails (disk full, EIO) stops the recording there, the
file cut back to its last whole record where it can be. Files may be gzip-
or xz-compressed (read only; the writer writes plain).

The header and each kind of record are described once, below, as msgspec
Structs with ranges; the reader checks every object against them (through
xenemu.schema) and yields typed records. Every object has a bound on its
size, so that a small compressed file cannot make a reader hold gigabytes.

Nothing here runs a hypercall: the writer serialises xenemu.engine's
events, xenemu.replay feeds what the reader yields to an engine.
"""

from __future__ import annotations

import errno
import gzip
import itertools
import lzma
import os
import platform
import stat
import time
import zlib
from pathlib import Path
from typing import Annotated, Any

import msgpack
import msgspec

from . import __version__, abi, wire
from .machine import MachineConfig, machine_from_dict, machine_to_dict
from .schema import U32, DomId, InputError, NonNegative, convert
from .snapshot import SnapshotError, check as check_snapshot

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

KINDS = (HYPERCALL, ROUND, CONTROL, PROTOCOL)

# Control operations a trace records: those that change the machine, and
# those whose answer depends on what guests and devices did (so replay
# checks them too). Introspection of the implementation (info, counters,
# contexts, dump, check: frame counts, IOTLB statistics, table pages) is
# left out, since a later xenemu may legitimately answer it differently.
RECORDED_CONTROL = frozenset({
    "domain_create", "domain_destroy", "device_assign", "device_deassign",
    "p2m_set", "p2m_get", "mem_write", "mem_read", "dma", "faults", "fail_nth",
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


def _mib(n: int) -> str:
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


Record = HypercallRecord | RoundRecord | ControlRecord | ProtocolRecord
# By kind: converting to the one type is ten times faster than to the union.
RECORD_TYPES = {HYPERCALL: HypercallRecord, ROUND: RoundRecord, CONTROL: ControlRecord,
                PROTOCOL: ProtocolRecord}


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


def make_header(machine: MachineConfig, meta: dict | None = None,
                snapshot: dict | None = None) -> dict:
    """`snapshot`: the one the machine was restored from (xenemu.snapshot),
    which a replay restores too before the first record."""
    header = {
        HEADER_KEY: 1,
        "abi": {"pv_iommu_revision": abi.PV_IOMMU_REVISION, "wire_version": wire.VERSION},
        "machine": machine_to_dict(machine),
        "meta": {"xenemu": __version__, "host": platform.node(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {})},
    }
    if snapshot is not None:
        header.update({HEADER_KEY: 2, "snapshot": snapshot})
    return header


class TraceWriter:
    """Appends records to a binary stream, one write each: the daemon's recorder.

    The records are the engine's events, which hold the time the machine's
    EventClock gave the event, so the trace holds exactly the time the
    machine saw.

    Recording must never cost a guest its answer: a write that fails stops
    the recording (`error` says why, later records are dropped), the stream
    is cut back to its last whole record where it can be (a regular file;
    not a FIFO or a device) and closed, and on_error(records, error) is
    called once.
    """

    def __init__(self, stream, header: dict, on_error=None):
        self._stream = stream
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._whole = 0          # bytes of whole records written
        self._on_error = on_error
        self.records = 0
        self.error: OSError | None = None
        self._write(header, count=False)

    @classmethod
    def create(cls, path: Path, machine: MachineConfig, meta: dict | None = None,
               snapshot: dict | None = None, on_error=None):
        """A new trace at `path`, readable by its owner only (it holds guest
        memory: DMA data, mem_write): created 0600, and a regular file it
        replaces made 0600 too, as snapshots are. OSError if it cannot be, or
        if the header would be larger than a reader accepts (MAX_HEADER)."""
        header = make_header(machine, meta, snapshot)
        size = len(msgpack.packb(header, use_bin_type=True))
        if size > MAX_HEADER:
            raise OSError(errno.EFBIG, f"the trace header (the machine and its snapshot) would "
                                       f"be {_mib(size)}, over the {_mib(MAX_HEADER)} a reader "
                                       f"accepts", str(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):    # not /dev/full, a FIFO, a terminal
                os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        # Unbuffered: each record is one write(2), and a failed one leaves no
        # bytes behind in a buffer that closing would try to write again.
        return cls(open(fd, "wb", buffering=0), header, on_error)

    def _write(self, obj: dict, count: bool = True) -> None:
        if self.error is not None:
            return
        data = self._pack(obj)
        try:
            written = self._stream.write(data)
            while written < len(data):      # a short write: the next one says why, or ends it
                written += self._stream.write(data[written:])
        except OSError as e:
            self._stop(e)
            return
        self._whole += len(data)
        self.records += count

    def _stop(self, error: OSError) -> None:
        self.error = error
        try:
            self._stream.truncate(self._whole)
        except OSError:
            pass            # not a regular file: readers report the cut-off record
        self.close()
        if self._on_error:
            self._on_error(self.records, error)

    def write(self, rec: Record) -> None:
        """Serialise one of the engine's events (xenemu.engine), as abi/TRACE.md says."""
        if isinstance(rec, HypercallRecord):
            obj = {"k": HYPERCALL, "t": rec.t, "d": rec.d, "req": rec.req, "rep": rec.rep}
            if rec.rep is None:
                obj["c"] = rec.c
        elif isinstance(rec, RoundRecord):
            obj = {"k": ROUND, "t": rec.t, "c": rec.c, "rep": rec.rep}
        elif isinstance(rec, ControlRecord):
            obj = {"k": CONTROL, "t": rec.t, "req": rec.req, "rep": rec.rep}
        else:
            obj = {"k": PROTOCOL, "t": rec.t, "d": rec.d, "raw": rec.raw, "eof": rec.eof,
                   "code": rec.code, "rep": rec.rep}
        self._write(obj)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass            # unbuffered: nothing is left to write, nothing is lost




def _unpacker(limit: int) -> msgpack.Unpacker:
    """An unpacker that holds at most `limit` bytes of one object, plus the
    chunk being fed (BufferFull past that): an object claiming more is
    refused, not buffered, and no container is allocated for more elements
    than its bytes could hold."""
    return msgpack.Unpacker(raw=False, strict_map_key=False,
                            max_buffer_size=limit + TraceReader.CHUNK,
                            max_bin_len=limit, max_str_len=limit,
                            max_array_len=limit, max_map_len=limit // 2, max_ext_len=limit)


class TraceReader:
    """Iterates a trace's records as (number, Record), numbered from 1.

    `header` (a TraceHeader) and `machine` (its MachineConfig) are read and
    checked on opening. Every object is checked against its schema and its
    size bound (MAX_HEADER, MAX_RECORD); anything else is a TraceError naming
    the file, the record and the path inside it. After iteration,
    `truncated` is the number of bytes of a cut-off last record (0 when the
    trace ends cleanly, -1 when a compressed trace is cut off). `fraction()`
    is how far the reading has got, for progress bars.
    """

    CHUNK = 1 << 16

    def __init__(self, path: Path):
        self.path = Path(path)
        self._raw = open(self.path, "rb")
        try:
            self.size = os.fstat(self._raw.fileno()).st_size
            magic = self._raw.read(6)
            self._raw.seek(0)
            if magic.startswith(b"\x1f\x8b"):
                self._file, self._format = gzip.GzipFile(fileobj=self._raw), "gzip"
            elif magic == b"\xfd7zXZ\x00":
                self._file, self._format = lzma.LZMAFile(self._raw), "xz"
            else:
                self._file, self._format = self._raw, None
            self._fed = 0          # bytes of the (decompressed) stream fed to the unpacker
            self._whole = 0        # ... of them in whole objects
            self._eof = False
            self.truncated = 0
            self._unpacker = _unpacker(MAX_HEADER)
            self.header, self.machine = self._read_header()
            # Records are far smaller than a header may be: a tighter unpacker
            # takes over, with what the header's left in the buffer.
            rest = self._unpacker.read_bytes(self._fed - self._whole)
            self._unpacker = _unpacker(MAX_RECORD)
            self._unpacker.feed(rest)
            self._base = self._whole      # where the new unpacker's offsets start
        except BaseException:
            self._raw.close()
            raise

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fraction(self) -> float:
        return self._raw.tell() / self.size if self.size else 1.0

    def _what(self, number: int) -> str:
        return "the header" if number == 0 else f"record {number}"

    def _feed(self, number: int) -> bool:
        """Feed the next chunk; False at the end of the file."""
        if self._eof:
            return False
        try:
            # read1: what the decompressor has, so a cut-off stream still
            # gives up its whole records before the EOFError.
            data = self._file.read1(self.CHUNK)
        except EOFError:
            data, self.truncated = b"", -1   # a compressed stream cut off
        except (OSError, zlib.error, lzma.LZMAError) as e:
            raise TraceError(f"{self.path}: {self._what(number)}: the {self._format or 'file'} "
                             f"stream cannot be read ({e})") from None
        if not data:
            self._eof = True
            if self.truncated == 0:
                # Bytes of an object begun and not finished (a container's
                # header counts as read by msgpack: hence our own count).
                self.truncated = self._fed - self._whole
                if self.truncated > self._limit(number):
                    self._too_large(number)
            return False
        self._fed += len(data)
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self._too_large(number)
        return True

    @staticmethod
    def _limit(number: int) -> int:
        return MAX_HEADER if number == 0 else MAX_RECORD

    def _too_large(self, number: int):
        raise TraceError(f"{self.path}: {self._what(number)} is larger than "
                         f"{_mib(self._limit(number))}, the most a trace may hold") from None

    def _next_object(self, number: int):
        """The next whole object, or None at the end of the file."""
        while True:
            try:
                obj = next(self._unpacker)
            except StopIteration:
                if not self._feed(number):
                    return None
                continue
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                raise TraceError(f"{self.path}: {self._what(number)} is not valid msgpack "
                                 f"({e})") from None
            self._whole = self._base + self._unpacker.tell() if number else \
                self._unpacker.tell()
            return obj

    def _read_header(self) -> tuple[TraceHeader, MachineConfig]:
        raw = self._next_object(0)
        if raw is None and self._fed:
            raise TraceError(f"{self.path}: the header is cut off")
        if not isinstance(raw, dict) or HEADER_KEY not in raw:
            raise TraceError(f"{self.path}: not a xenemu trace (no {HEADER_KEY!r} header)")
        version = raw[HEADER_KEY]
        if isinstance(version, int) and version > FORMAT:
            raise TraceError(f"{self.path}: trace format {version!r} is newer than this "
                             f"xenemu reads (format {FORMAT})")
        where = f"{self.path}: header"
        try:
            check_depth(raw, where)
            header = convert(raw, TraceHeader, where)
            machine = machine_from_dict(header.machine, f"{where}: machine")
            if header.snapshot is not None:
                check_snapshot(header.snapshot, f"{where}: snapshot")
        except (InputError, SnapshotError) as e:    # ConfigError is an InputError
            raise TraceError(str(e)) from None
        return header, machine

    def __iter__(self):
        number, name = 0, str(self.path)
        while (obj := self._next_object(number + 1)) is not None:
            number += 1
            try:
                rec = check_record(obj, f"{name}: record {number}")
            except InputError as e:
                raise TraceError(str(e)) from None
            yield number, rec
