"""Writing a trace: the header, then the engine's events, one write per batch (abi/TRACE.md).

A batch is what the engine produced for one receive buffer: its records
are packed together (the hot kinds in C, xenemu.trace.pack) and written
with one write, so a daemon killed mid-run leaves a trace of whole records
that all replay (a write cut off by the kill itself leaves a cut-off last
record, which readers report). A write that fails (disk full, EIO) stops
the recording there, the file cut back to its last whole record where it
can be. The writer writes plain msgpack (readers also take gzip and xz).
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
from .pack import BatchPacker
from .records import HEADER_KEY, MAX_HEADER, PackedHypercalls, Record, mib


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
    """Appends batches of records to a binary stream, one write each: the daemon's recorder.

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
        self._packer = BatchPacker()
        self._whole = 0          # bytes of whole records written
        self._on_error = on_error
        self.records = 0
        self.error: OSError | None = None
        self._write(msgpack.packb(header, use_bin_type=True), 0)

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
        # Unbuffered: each batch is one write(2), and a failed one leaves no
        # bytes behind in a buffer that closing would try to write again.
        return cls(open(fd, "wb", buffering=0), header, on_error)

    def _write(self, data, records: int) -> None:
        """`data`, the bytes of `records` whole records (0: the header), in one write."""
        written = 0
        try:
            written = self._stream.write(data)
            while written < len(data):      # a short write: the next one says why, or ends it
                written += self._stream.write(data[written:])
        except OSError as e:
            self._stop(e, data[:written])
            return
        self._whole += len(data)
        self.records += records

    def _stop(self, error: OSError, written: bytes) -> None:
        """Recording ends: the whole records among the `written` bytes of the
        failed batch are kept (they are where the file is to be cut back to)."""
        self.error = error
        if self._whole:             # the header is in: so are the batch's whole records
            unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
            unpacker.feed(written)
            kept = 0
            for _ in unpacker:
                self.records += 1
                kept = unpacker.tell()
            self._whole += kept
        try:
            self._stream.truncate(self._whole)
        except OSError:
            pass            # not a regular file: readers report the cut-off record
        self.close()
        if self._on_error:
            self._on_error(self.records, error)

    def write_batch(self, records: list[Record]) -> None:
        """Serialise a batch of the engine's events (xenemu.engine), as
        abi/TRACE.md says, with one write."""
        if self.error is None and records:
            if len(records) == 1 and type(records[0]) is PackedHypercalls:
                # The fast path's batch alone (the common case): its bytes as they are.
                self._write(records[0].data, records[0].count)
                return
            count = sum(r.count if type(r) is PackedHypercalls else 1 for r in records)
            self._write(self._packer.pack(records), count)
            self._packer.release()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass            # unbuffered: nothing is left to write, nothing is lost
