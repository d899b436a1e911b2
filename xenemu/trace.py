"""Hypercall traces: the file format, a writer and a reader (abi/TRACE.md).

A trace is a msgpack stream: one header map, then one map per event, in the
order the machine ran them. Events are appended and written one by one, so a
daemon killed mid-run leaves a trace whose whole records all replay; a cut
off last record is reported by the reader (`TraceReader.truncated`), not
fatal. A write that fails (disk full, EIO) stops the recording there, the
file cut back to its last whole record where it can be. Files may be gzip-
or xz-compressed (read only; the writer writes plain).

Nothing here runs a hypercall: the daemon feeds the writer, xenemu.replay
consumes what the reader yields.
"""

from __future__ import annotations

import gzip
import lzma
import os
import platform
import time
from pathlib import Path

import msgpack

from . import __version__, abi, wire
from .machine import MachineConfig, machine_to_dict

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

# Reply keys the daemon adds (socket paths): not the machine's, not recorded.
DAEMON_REPLY_KEYS = frozenset({"socket"})

_REQUIRED = {
    HYPERCALL: {"t": float, "d": int, "req": bytes},
    ROUND: {"t": float, "c": int},
    CONTROL: {"t": float, "req": dict, "rep": dict},
    PROTOCOL: {"t": float, "d": int, "raw": bytes, "eof": bool, "code": int},
}


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

    Times come from the machine's EventClock, which the event has just
    sampled, so the trace holds exactly the time the machine saw.

    Recording must never cost a guest its answer: a write that fails stops
    the recording (`error` says why, later records are dropped), the stream
    is cut back to its last whole record where it can be (a regular file;
    not a FIFO or a device) and closed, and on_error(records, error) is
    called once.
    """

    def __init__(self, stream, clock, header: dict, on_error=None):
        self._stream = stream
        self._clock = clock
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._next_cont = 0
        self._whole = 0          # bytes of whole records written
        self._on_error = on_error
        self.records = 0
        self.error: OSError | None = None
        self._write(header, count=False)

    @classmethod
    def create(cls, path: Path, clock, machine: MachineConfig, meta: dict | None = None,
               snapshot: dict | None = None, on_error=None):
        # Unbuffered: each record is one write(2), and a failed one leaves no
        # bytes behind in a buffer that closing would try to write again.
        return cls(open(path, "wb", buffering=0), clock, make_header(machine, meta, snapshot),
                   on_error)

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

    def hypercall(self, domid: int, raw: bytes, reply: bytes) -> None:
        self._write({"k": HYPERCALL, "t": self._clock.now, "d": domid, "req": raw, "rep": reply})

    def begin(self, domid: int, raw: bytes) -> int:
        """The first round of a call that continues: returns its id for round()."""
        self._next_cont += 1
        self._write({"k": HYPERCALL, "t": self._clock.now, "d": domid, "req": raw, "rep": None,
                     "c": self._next_cont})
        return self._next_cont

    def round(self, cont: int, reply: bytes | None) -> None:
        self._write({"k": ROUND, "t": self._clock.now, "c": cont, "rep": reply})

    def control(self, req: dict, reply: dict) -> None:
        if req.get("op") not in RECORDED_CONTROL:
            return
        reply = {k: v for k, v in reply.items() if k not in DAEMON_REPLY_KEYS}
        self._write({"k": CONTROL, "t": self._clock.now, "req": req, "rep": reply})

    def protocol_error(self, domid: int, raw: bytes, eof: bool, code: int,
                       reply: bytes | None) -> None:
        self._write({"k": PROTOCOL, "t": self._clock.tick(), "d": domid, "raw": raw, "eof": eof,
                     "code": code, "rep": reply})

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass            # unbuffered: nothing is left to write, nothing is lost


class TraceReader:
    """Iterates a trace's records as (number, record), numbered from 1.

    `header` is read on opening. After iteration, `truncated` is the number
    of bytes of a cut-off last record (0 when the trace ends cleanly, -1 when
    a compressed trace is cut off). `fraction()` is how far the reading has
    got, for progress bars.
    """

    CHUNK = 1 << 16

    def __init__(self, path: Path):
        self.path = Path(path)
        self.size = os.path.getsize(self.path)
        self._raw = open(self.path, "rb")
        magic = self._raw.read(6)
        self._raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            self._file = gzip.GzipFile(fileobj=self._raw)
        elif magic == b"\xfd7zXZ\x00":
            self._file = lzma.LZMAFile(self._raw)
        else:
            self._file = self._raw
        # A record holds a frame or two, but the header may carry a snapshot
        # with guest memory in it: msgpack's largest buffer (0 = 2 GiB).
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        self._fed = 0
        self._eof = False
        self.truncated = 0
        self.header = self._read_header()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fraction(self) -> float:
        return self._raw.tell() / self.size if self.size else 1.0

    def _feed(self) -> bool:
        """Feed the next chunk; False at the end of the file."""
        if self._eof:
            return False
        try:
            data = self._file.read(self.CHUNK)
        except (EOFError, gzip.BadGzipFile, lzma.LZMAError, OSError):
            data, self.truncated = b"", -1   # a compressed stream cut off
        if not data:
            self._eof = True
            if self.truncated == 0:
                self.truncated = self._fed - self._unpacker.tell()
            return False
        self._fed += len(data)
        self._unpacker.feed(data)
        return True

    def _next_object(self, number: int):
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                if not self._feed():
                    return None
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
                what = "the header" if number == 0 else f"record {number}"
                raise TraceError(f"{self.path}: {what} is not valid msgpack ({e})") from None

    def _read_header(self) -> dict:
        header = self._next_object(0)
        if not isinstance(header, dict) or HEADER_KEY not in header:
            raise TraceError(f"{self.path}: not a xenemu trace (no {HEADER_KEY!r} header)")
        version = header[HEADER_KEY]
        if not isinstance(version, int) or version > FORMAT:
            raise TraceError(f"{self.path}: trace format {version!r} is newer than this "
                             f"xenemu reads (format {FORMAT})")
        if not isinstance(header.get("machine"), dict):
            raise TraceError(f"{self.path}: the header has no machine configuration")
        return header

    def __iter__(self):
        number = 0
        while (rec := self._next_object(number + 1)) is not None:
            number += 1
            check_record(rec, number, self.path)
            yield number, rec


def check_record(rec, number: int, where) -> None:
    """Raise TraceError unless rec has its kind's fields with the right types."""
    if not isinstance(rec, dict) or rec.get("k") not in _REQUIRED:
        raise TraceError(f"{where}: record {number} is not a trace record "
                         f"(kind {rec.get('k') if isinstance(rec, dict) else type(rec).__name__!r})")
    for key, kind in _REQUIRED[rec["k"]].items():
        value = rec.get(key)
        ok = isinstance(value, (int, float)) if kind is float else \
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise TraceError(f"{where}: record {number} ({rec['k']}): field {key!r} is "
                             f"missing or not {kind.__name__}")
    rep = rec.get("rep")
    if rec["k"] in (HYPERCALL, ROUND, PROTOCOL) and rep is not None and not isinstance(rep, bytes):
        raise TraceError(f"{where}: record {number} ({rec['k']}): 'rep' must be bytes or nil")
    if rec["k"] == HYPERCALL and rep is None and not isinstance(rec.get("c"), int):
        raise TraceError(f"{where}: record {number} (hc): no reply and no continuation id")
