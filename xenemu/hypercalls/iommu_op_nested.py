"""Revision 2's sub-ops 9-12 as xenemu's extension (abi/NESTED.md): nested
contexts whose stage 1 is a table the guest owns in its memory, over one of
its contexts as stage 2, and the PASIDs that lead devices to them.

Xen v4-v7 answer them -EOPNOTSUPP without touching `arg` (reference §5.10),
and so does xenemu unless the machine option `nested` is on. Hence each
handler copies its struct in (and alloc_nested back) itself, after that
check: the table rows have `reads` and `copy_back` off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from ..domain import Context, Domain
from ..errno import XenErrno
from ..pci import format_sbdf, pack_sbdf
from .common import HypercallError, SubopCall
from .iommu_op_v1 import PciDevice

if TYPE_CHECKING:
    from ..hypervisor import Hypervisor

NESTED_FORMAT_X86_64 = 0            # nested_flags: the only stage-1 format
NESTED_FORMAT_MASK = 0xFF           # nested_flags bits 0-7: the format; above, options
NESTED_PAGE_REQUESTS = 1 << 8       # option: I/O page faults (iommu_op_prq)
FLUSH_ALL, FLUSH_PASID, FLUSH_RANGE = 0, 1, 2
PASID_PAGES = 1 << 36               # IOVA pages of one PASID (48-bit IOVAs)

# The structs (pv-iommu.h; FlushNested is pv-iommu-nested.h's, upstream's being empty).
AllocNested = Struct("ctx_no" / Int16ul, "_pad" / Bytes(6), "pgtable_gfn" / Int64ul,
                     "nested_flags" / Int64ul).compile()                                   # 24
FlushNested = Struct("ctx_no" / Int16ul, "_pad" / Bytes(2), "flush_type" / Int32ul,
                     "pasid" / Int32ul, "nr_pages" / Int32ul, "dfn" / Int64ul).compile()   # 24
AttachPasid = Struct("ctx_no" / Int16ul, "dev" / PciDevice, "_pad" / Bytes(2),
                     "pasid" / Int32ul).compile()                                          # 12
DetachPasid = Struct("dev" / PciDevice, "pasid" / Int32ul).compile()                      # 8


def _read(hv: Hypervisor, op: SubopCall, layout, size: int):
    """The struct, once the machine serves nested translation at all."""
    if not hv.config.nested:
        raise HypercallError(XenErrno.EOPNOTSUPP, "not implemented by Xen (xenemu serves it "
                                                  "on a machine with nested = true)")
    if op.copy_in(size) is None:
        raise HypercallError(XenErrno.EFAULT, f"copy_from_guest of {op.handle:#x} failed")
    return layout.parse(op.payload)


def _pasid(hv: Hypervisor, pasid: int) -> int:
    if not 0 < pasid <= hv.config.max_pasid:
        raise HypercallError(XenErrno.EINVAL, f"pasid {pasid}: expected 1 to "
                                              f"{hv.config.max_pasid} (max_pasid)")
    return pasid


def _nested_context(d: Domain, ctx_no: int) -> Context:
    ctx = d.context(ctx_no)
    if ctx is None:
        raise HypercallError(XenErrno.ENOENT, f"context {ctx_no} not allocated")
    if not ctx.nested:
        raise HypercallError(XenErrno.EINVAL, f"context {ctx_no} is not nested")
    return ctx


def _device(d: Domain, dev) -> int:
    sbdf = pack_sbdf(dev.seg, dev.bus, dev.devfn)
    if sbdf not in d.devices:
        raise HypercallError(XenErrno.ENOENT, f"{format_sbdf(sbdf)} is not assigned to "
                                              f"this domain")
    return sbdf


def alloc_nested_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """ctx_no IN: the stage-2 context (0: the default one); OUT: the nested
    context. Copied back on every path, as alloc_context."""
    a = _read(hv, op, AllocNested, 24)
    try:
        if a.nested_flags & ~NESTED_PAGE_REQUESTS != NESTED_FORMAT_X86_64:
            raise HypercallError(XenErrno.EINVAL, f"nested_flags {a.nested_flags:#x}: the "
                                                  f"format 0 (x86-64 4-level), optionally with "
                                                  f"{NESTED_PAGE_REQUESTS:#x} (page requests)")
        parent = d.context(a.ctx_no)
        if parent is None:
            raise HypercallError(XenErrno.ENOENT, f"stage-2 context {a.ctx_no} not allocated")
        if parent.nested or parent.dying:
            raise HypercallError(XenErrno.EINVAL, f"context {a.ctx_no} is "
                                                  f"{'nested' if parent.nested else 'dying'}: "
                                                  f"it can't be a stage 2")
        a.ctx_no = hv.contexts.alloc_nested(
            d, parent, a.pgtable_gfn,
            page_requests=bool(a.nested_flags & NESTED_PAGE_REQUESTS)).ctx_no
        op.payload = AllocNested.build(a)
    finally:
        if not op.mem.copy_to_guest(op.handle, op.payload):
            raise HypercallError(XenErrno.EFAULT, f"copy_to_guest of {op.handle:#x} failed")
    return 0


def flush_nested_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    f = _read(hv, op, FlushNested, 24)
    ctx = _nested_context(d, f.ctx_no)
    if f.flush_type == FLUSH_ALL:
        hv.contexts.flush_nested(ctx, None)
    elif f.flush_type == FLUSH_PASID:
        hv.contexts.flush_nested(ctx, _pasid(hv, f.pasid), 0, PASID_PAGES)
    elif f.flush_type == FLUSH_RANGE:
        hv.contexts.flush_nested(ctx, _pasid(hv, f.pasid), f.dfn, f.nr_pages)
    else:
        raise HypercallError(XenErrno.EINVAL, f"flush_type {f.flush_type}: expected 0 (all), "
                                              f"1 (a PASID) or 2 (a range)")
    return 0


def attach_pasid_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    a = _read(hv, op, AttachPasid, 12)
    pasid = _pasid(hv, a.pasid)
    sbdf = _device(d, a.dev)
    hv.contexts.attach_pasid(sbdf, pasid, _nested_context(d, a.ctx_no))
    return 0


def detach_pasid_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    a = _read(hv, op, DetachPasid, 8)
    pasid = _pasid(hv, a.pasid)
    hv.contexts.detach_pasid(d, _device(d, a.dev), pasid)
    return 0


def before_free(hv: Hypervisor, d: Domain, ctx: Context, reattach: bool) -> None:
    """free_context's rules for nested contexts and their stage 2: a stage
    2 with nested children is -EBUSY; a nested context with PASIDs bound is
    -EBUSY unless IOMMU_FREE_reattach_default, which detaches them. Neither
    leaves the context dying (v7's -EBUSY does: §5.5)."""
    children = d.children(ctx.ctx_no)
    if children:
        raise HypercallError(XenErrno.EBUSY, f"context {ctx.ctx_no} is the stage 2 of nested "
                                             f"context(s) {children}")
    if ctx.pasids and not reattach:
        raise HypercallError(XenErrno.EBUSY, f"{len(ctx.pasids)} PASID(s) still attached")
    for sbdf, pasid in sorted(ctx.pasids):
        hv.contexts.detach_pasid(d, sbdf, pasid)
