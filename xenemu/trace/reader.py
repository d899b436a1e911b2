"""Reading a trace: its header and records, each checked against its schema and size bound.

Files may be plain, gzip- or xz-compressed. A cut-off last record (a daemon
killed mid-write) is reported (`TraceReader.truncated`, `cut_off_note()`),
not fatal; anything else that is not a trace is one TraceError naming the
file, the record and what is wrong.
"""

from __future__ import annotations

import gzip
import lzma
import os
import zlib
from pathlib import Path

import msgpack

from ..machine import MachineConfig, machine_from_dict
from ..schema import InputError, convert
from ..snapshot import SnapshotError, check as check_snapshot
from .records import (FORMAT, HEADER_KEY, MAX_HEADER, MAX_RECORD, TraceError, TraceHeader,
                      check_depth, check_record, mib)


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

    def cut_off_note(self) -> str | None:
        """After iteration: what a cut-off end left unread, if it did."""
        if self.truncated > 0:
            return (f"{self.path}: the last record is cut off ({self.truncated} bytes ignored): "
                    f"the recording daemon stopped mid-write")
        if self.truncated < 0:
            return f"{self.path}: the compressed stream is cut off after its last whole record"
        return None

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
                         f"{mib(self._limit(number))}, the most a trace may hold") from None

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
            if header.abi.pv_iommu_revision != machine.pv_iommu_revision:
                raise InputError(f"{where}: abi.pv_iommu_revision: "
                                 f"{header.abi.pv_iommu_revision}, but the machine is of "
                                 f"revision {machine.pv_iommu_revision}")
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


def located(path: Path, error: TraceError) -> str:
    """The error, naming the file: the reader's errors do, those found in a
    record's contents (a request that is not a frame) do not."""
    text = str(error)
    return text if text.startswith(f"{path}:") else f"{path}: {text}"
