"""Trace records as msgpack bytes, a batch at a time (abi/TRACE.md).

`as_map` is a record as a trace holds it: a map with its keys in the order
written, packed by msgpack.Packer(use_bin_type=True). A recording daemon
writes one `hc` record per hypercall (and one `cont` per further round of
a continued one), so `BatchPacker` packs those two kinds in C
(cext/tracepack.c), into the same bytes, and leaves the rare kinds to
msgpack; the batch (the records one receive buffer produced) comes out as
one run of bytes for one write.
"""

from __future__ import annotations

from typing import Iterable

import msgpack

from ..hw._hwlib import ffi, lib
from .records import (CONTROL, HAZARD, HYPERCALL, PROTOCOL, ROUND, ControlRecord,
                      HazardRecord, HypercallRecord, PackedHypercalls, Record, RoundRecord)

# A batch's buffer grows as it must; what it grew past this is given back
# once the batch is written (a receive buffer's worth of hypercalls takes
# ~30 KiB; a 1 MiB DMA's control record takes 1 MiB).
KEEP = 1 << 20


def as_map(rec: Record) -> dict:
    """The map that stands for `rec` in a trace, keys in their written order."""
    if isinstance(rec, HypercallRecord):
        obj = {"k": HYPERCALL, "t": rec.t, "d": rec.d, "req": rec.req, "rep": rec.rep}
        if rec.rep is None:
            obj["c"] = rec.c
        return obj
    if isinstance(rec, RoundRecord):
        return {"k": ROUND, "t": rec.t, "c": rec.c, "rep": rec.rep}
    if isinstance(rec, ControlRecord):
        return {"k": CONTROL, "t": rec.t, "req": rec.req, "rep": rec.rep}
    if isinstance(rec, HazardRecord):
        return {"k": HAZARD, "t": rec.t, "d": rec.d, "name": rec.name, "why": rec.why}
    return {"k": PROTOCOL, "t": rec.t, "d": rec.d, "raw": rec.raw, "eof": rec.eof,
            "code": rec.code, "rep": rec.rep}


def pack_in_python(records: Iterable[Record]) -> bytes:
    """The batch packed by msgpack alone: what BatchPacker's bytes must equal."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return b"".join(pack(as_map(rec)) for rec in records)


class BatchPacker:
    """Packs batches of records into one buffer it owns (not thread-safe)."""

    def __init__(self):
        buf = lib.tp_buffer_create()
        if buf == ffi.NULL:
            raise MemoryError("no memory for the trace's record buffer")
        self._buf = ffi.gc(buf, lib.tp_buffer_free)
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def release(self) -> None:
        """The last batch is written: memory it took over KEEP is given back."""
        lib.tp_buffer_reset(self._buf, KEEP)

    def pack(self, records: Iterable[Record]):
        """The records' bytes, as a buffer valid until the next call (or release)."""
        buf = self._buf
        lib.tp_buffer_reset(buf, KEEP)
        hypercall, round_, null = lib.tp_pack_hypercall, lib.tp_pack_round, ffi.NULL
        for rec in records:
            kind = type(rec)
            if kind is PackedHypercalls:
                if lib.tp_append(buf, rec.data, len(rec.data)):
                    raise MemoryError("no memory for a batch of trace records")
                continue
            # C takes the exact types the engine makes (a float time, bytes
            # frames, int ids in range); anything else is msgpack's to pack,
            # as an int time is (msgpack packs it as an int, not a float).
            try:
                if kind is HypercallRecord and type(rec.t) is float:
                    rep = rec.rep
                    if rep is None:
                        failed = hypercall(buf, rec.t, rec.d, rec.req, len(rec.req), null, 0, rec.c)
                    else:
                        failed = hypercall(buf, rec.t, rec.d, rec.req, len(rec.req), rep, len(rep), 0)
                elif kind is RoundRecord and type(rec.t) is float:
                    rep = rec.rep
                    if rep is None:
                        failed = round_(buf, rec.t, rec.c, null, 0)
                    else:
                        failed = round_(buf, rec.t, rec.c, rep, len(rep))
                else:
                    failed = True
            except (TypeError, OverflowError):
                failed = True
            if failed:
                data = self._pack(as_map(rec))
                if lib.tp_append(buf, data, len(data)):
                    raise MemoryError("no memory for a batch of trace records")
        return ffi.buffer(buf.data, buf.len)
