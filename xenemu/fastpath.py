"""The fast path: a receive buffer's hot hypercalls answered in C.

cext/fastpath.c walks the whole CALL frames at the front of a connection's
receive buffer and answers those the machine's iommu_op rows mark `fast`
(noop, query_capabilities, map, unmap, lookup) in the cases their handlers'
docstrings name, stopping, before any effect of it, at the first frame it
does not take: the engine gives that frame to the Python handlers, then
the rest back to C. What C reads is owned in C (fastpath.h): a domain's
flags and context table, each context's identity ranges and foreign
references, the p2m (p2m.h), the hardware. Nothing is copied into C to be
kept in step.

What Python still does for a batch C answered: tick the clock once (every
frame of the batch happened at that moment), take the reply bytes (one
copy), and, only when asked for, the trace records C packed (one bytes
object) and the debug log lines, rebuilt from C's per-frame results in the
handlers' words. Calls C answered are counted in C (Domain.call_counts
adds them to the handlers').

`XENEMU_FAST_PATH=0` in the environment turns it off for every engine that
does not say otherwise (`make test` runs the suite once each way); a
machine on the pure-Python hardware twin has none.
"""

from __future__ import annotations

import logging
import os

from . import hw, hypercalls
from .domain import Domain
from .hw._hwlib import ffi, lib
from .trace.records import PackedHypercalls
from .wire import FrameDecoder

# Frames one call into C answers at most (its results array).
BATCH = 256
# A batch's buffers grow as they must; what they grew past this is given back.
KEEP = 1 << 20


def enabled_by_environment() -> bool:
    """The default: on, unless XENEMU_FAST_PATH=0."""
    return os.environ.get("XENEMU_FAST_PATH", "1") != "0"


class FastPath:
    """One machine's fast path (build it with `for_machine`)."""

    def __init__(self, hv):
        iommu_op = hypercalls.abis(hv.config.pv_iommu_revision)[lib.FP_HYPERCALL]
        mc = ffi.new("struct fp_machine *")
        mc.io = hv.iommu.c_iommu
        mc.revision = hv.config.pv_iommu_revision
        mc.flags = ((lib.FP_M_IOMMU if hv.config.iommu else 0)
                    | (lib.FP_M_NESTED if hv.config.nested else 0)
                    | (lib.FP_M_INTENDED if hv.config.rev2_semantics == "intended" else 0))
        mc.pages_per_round = hv.config.rev2_pages_per_round
        mc.max_pasid = hv.config.max_pasid
        mc.subops = iommu_op.fast_subops
        self._mc = mc
        self._abi = iommu_op
        self._replies = _buffer()
        self._trace = _buffer()
        self._results = ffi.new("struct fp_result[]", BATCH)
        self._frames = ffi.new("uint32_t *")
        self._consumed = ffi.new("size_t *")
        self._log = iommu_op.log

    @classmethod
    def for_machine(cls, hv, enabled: bool | None = None) -> FastPath | None:
        """The machine's fast path, or None: turned off (`enabled` False, or
        None and the environment says so), or hardware C cannot read."""
        if enabled is None:
            enabled = enabled_by_environment()
        if not enabled or not isinstance(hv.iommu, hw.Iommu):
            return None
        return cls(hv)

    def answer(self, d: Domain, decoder: FrameDecoder, t: float,
               recording: bool) -> tuple[bytes, PackedHypercalls | None]:
        """The replies to the frames at the front of decoder's buffer that C
        takes (b"" if none), which leave the buffer, and their trace records
        when recording."""
        buf, pos = decoder.unread()
        trace = self._trace if recording else ffi.NULL
        with ffi.from_buffer(buf) as view:      # released before the buffer changes
            frames, consumed = self._run(d, view + pos, len(buf) - pos, BATCH, t, trace)
        if not frames:
            return b"", None
        replies = self._take(self._replies)
        records = PackedHypercalls(self._take(self._trace), frames) if recording else None
        if self._log.isEnabledFor(logging.DEBUG):
            self._log_lines(d, bytes(buf[pos:pos + consumed]), replies, frames)
        decoder.skip(consumed, frames)
        return replies, records

    def answer_frame(self, d: Domain, raw: bytes, t: float) -> bytes | None:
        """The reply to `raw`, one whole CALL frame (a trace's), if C takes
        it; None leaves it to the handlers, nothing done."""
        if int.from_bytes(raw[8:12], "little") != len(raw):
            return None     # not exactly one frame: whole_frame's to refuse
        with ffi.from_buffer(raw) as view:
            frames, _ = self._run(d, view, len(raw), 1, t, ffi.NULL)
        if not frames:
            return None
        reply = self._take(self._replies)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log_lines(d, raw, reply, 1)
        return reply

    def _run(self, d: Domain, data, n: int, cap: int, t: float, trace) -> tuple[int, int]:
        """fp_answer over n bytes at data: (frames answered, their bytes)."""
        failed = lib.fp_answer(self._mc, d._c, data, n, self._replies, trace, t,
                               self._results, cap, self._frames, self._consumed)
        if failed and not self._frames[0]:
            raise MemoryError("no memory for a batch of replies")
        return self._frames[0], self._consumed[0]

    @staticmethod
    def _take(buf) -> bytes:
        """A buffer's bytes, and the buffer emptied."""
        data = bytes(ffi.buffer(buf.data, buf.len))
        lib.tp_buffer_reset(buf, KEEP)
        return data

    def _log_lines(self, d: Domain, calls: bytes, replies: bytes, frames: int) -> None:
        """Each answered call's debug line, as its handler's entry logs it:
        the inputs as sent, the outputs as returned, the reason of a failure."""
        abi, calls_dec, replies_dec = self._abi, FrameDecoder.for_server(), \
            FrameDecoder.for_client()
        calls_dec.feed(calls)
        replies_dec.feed(replies)
        for res, call, reply in zip(self._results[0:frames], calls_dec, replies_dec):
            given = abi.describe(call.args, call.regions)
            now = abi.describe(call.args, reply.regions)
            row = abi.row(given)
            why = abi.fast_why(res.why, res.hw_status, res.at) if res.ret < 0 else ""
            inputs = abi.format_fields(given, row.inputs if row else ())
            self._log.debug(abi.log_prefix + "d%d: %s", d.domid,
                            abi.log_text(now, res.ret, why, inputs))


def _buffer():
    b = lib.tp_buffer_create()
    if b == ffi.NULL:
        raise MemoryError("no memory for the fast path's buffers")
    return ffi.gc(b, lib.tp_buffer_free)
