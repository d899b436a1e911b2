"""Dirty tracking as xenemu's extension of revision 2 (abi/NESTED.md, the
header abi/rev2/xen/pv-iommu-nested.h), served on machines with `nested` on:
alloc_context's flag XENEMU_IOMMU_ALLOC_dirty_tracking, and sub-op 13
`read_dirty`, the read-and-clear of a context's dirty bitmap over a range as
iommufd's IOMMU_HWPT_GET_DIRTY_BITMAP.

Sub-op 13 is past Xen v7's table, which answers it -EOPNOTSUPP without
touching `arg`; so does xenemu unless the machine is `nested`, hence the
handler copies its struct in and back itself (the row's `reads` and
`copy_back` off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from ..domain import Context, Domain
from ..errno import XenErrno
from .common import HypercallError, SubopCall
from .iommu_op_nested import _read

if TYPE_CHECKING:
    from ..hypervisor import Hypervisor

IOMMU_read_dirty = 13
ALLOC_dirty_tracking = 1 << 16      # alloc_context's alloc_flags (nested machines only)
READ_DIRTY_no_clear = 1 << 0        # iommufd's IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
READ_DIRTY_FLAGS = READ_DIRTY_no_clear
MAX_PAGES = 1 << 20                 # pages one call reads: a 128 KiB bitmap

ReadDirty = Struct("ctx_no" / Int16ul, "_pad" / Bytes(2), "flags" / Int32ul,
                   "nr_pages" / Int32ul, "nr_dirty" / Int32ul, "dfn" / Int64ul,
                   "bitmap" / Int64ul).compile()                                           # 32


def wants_tracking(hv: Hypervisor, alloc_flags: int) -> bool:
    """alloc_context's flag, read on nested machines only: elsewhere
    alloc_flags is ignored, as Xen's code does."""
    return hv.config.nested and bool(alloc_flags & ALLOC_dirty_tracking)


def start_tracking(hv: Hypervisor, ctx: Context) -> None:
    """The walker keeps A/D bits for ctx from now on (a fresh context)."""
    hv.iommu.dirty_track(ctx.hw_id, True)
    ctx.dirty_tracking = True


def tracked_context(d: Domain, ctx_no: int) -> Context:
    """The context of a read_dirty (sub-op or control op): XenErrno and why."""
    ctx = d.context(ctx_no)
    if ctx is None:
        raise HypercallError(XenErrno.ENOENT, f"context {ctx_no} not allocated")
    if ctx.nested or ctx.dying or not ctx.dirty_tracking:
        what = "nested" if ctx.nested else "dying" if ctx.dying else \
            "allocated without XENEMU_IOMMU_ALLOC_dirty_tracking"
        raise HypercallError(XenErrno.EINVAL, f"context {ctx_no} is {what}: it keeps no "
                                              f"dirty bits")
    return ctx


def check_range(hv: Hypervisor, dfn: int, nr_pages: int) -> None:
    if nr_pages > MAX_PAGES:
        raise HypercallError(XenErrno.E2BIG, f"nr_pages {nr_pages}: at most {MAX_PAGES} a call")
    if nr_pages and dfn + nr_pages - 1 > hv.contexts.last_dfn:
        raise HypercallError(XenErrno.ERANGE, f"pages {dfn:#x}+{nr_pages} go beyond the "
                                              f"IOMMU's width")


def read_dirty_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """Bit i of the bitmap (byte i / 8, bit i % 8) is 1 when page dfn + i
    was written since its last clear; D cleared unless no_clear. nr_dirty
    OUT, copied back on success. The bitmap is checked writable before
    anything is cleared, so an -EFAULT loses no dirty bit."""
    r = _read(hv, op, ReadDirty, 32)
    if r.flags & ~READ_DIRTY_FLAGS:
        raise HypercallError(XenErrno.EINVAL, f"flags {r.flags:#x}: only no_clear (1) is "
                                              f"defined")
    ctx = tracked_context(d, r.ctx_no)
    check_range(hv, r.dfn, r.nr_pages)
    nbytes = (r.nr_pages + 7) // 8
    if nbytes and op.mem.copy_from_guest(r.bitmap, nbytes) is None:
        raise HypercallError(XenErrno.EFAULT, f"bitmap {r.bitmap:#x}+{nbytes}: not guest "
                                              f"memory")
    dirty, _, r.nr_dirty = hv.iommu.read_dirty(ctx.hw_id, r.dfn, r.nr_pages,
                                               clear=not r.flags & READ_DIRTY_no_clear)
    op.mem.copy_to_guest(r.bitmap, bytes(dirty))
    op.payload = ReadDirty.build(r)
    if not op.mem.copy_to_guest(op.handle, op.payload):
        raise HypercallError(XenErrno.EFAULT, f"copy_to_guest of {op.handle:#x} failed")
    return 0
