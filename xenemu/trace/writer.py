"""Writing a trace: the header, then the engine's events one record a write (abi/TRACE.md).

Events are appended and written one by one, so a daemon killed mid-run
leaves a trace whose whole records all replay. A write that fails (disk
full, EIO) stops the recording there, the file cut back to its last whole
record where it can be. The writer writes plain msgpack (readers also take
gzip and xz).
"""

from __future__ import annotations

import errno
import os
import platform
import stat
import time
from pathlib import Path

import msgpack

from .. import __version__, wire
from ..machine import MachineConfig, machine_to_dict
from .records import (CONTROL, HAZARD, HEADER_KEY, HYPERCALL, MAX_HEADER, PROTOCOL, ROUND,
                      ControlRecord, HazardRecord, HypercallRecord, Record, RoundRecord, mib)


def make_header(machine: MachineConfig, meta: dict | None = None,
                snapshot: dict | None = None) -> dict:
    """`snapshot`: the one the machine was restored from (xenemu.snapshot),
    which a replay restores too before the first record."""
    header = {
        HEADER_KEY: 1,
        "abi": {"pv_iommu_revision": machine.pv_iommu_revision, "wire_version": wire.VERSION},
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
                                       f"be {mib(size)}, over the {mib(MAX_HEADER)} a reader "
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
        elif isinstance(rec, HazardRecord):
            obj = {"k": HAZARD, "t": rec.t, "d": rec.d, "name": rec.name, "why": rec.why}
        else:
            obj = {"k": PROTOCOL, "t": rec.t, "d": rec.d, "raw": rec.raw, "eof": rec.eof,
                   "code": rec.code, "rep": rec.rep}
        self._write(obj)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass            # unbuffered: nothing is left to write, nothing is lost
