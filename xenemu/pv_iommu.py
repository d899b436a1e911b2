"""__HYPERVISOR_iommu_op, revision 1: Xen's xen/common/pv-iommu.c in Python.

One handler per sub-op, as in the reference: validate, act, fill the
outputs, return the status. `do_iommu_op` copies the struct in, runs the
sub-op and copies the struct back whatever the status, so partial outputs
(`mapped`, `unmapped`) reach the guest on error too. Every hypercall leaves
one debug line in the style of Xen's `[PV-IOMMU]` messages, with the reason
of a failure.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import abi, hw
from .errno import XenErrno, result_name

from .domain import Context, Domain

if TYPE_CHECKING:
    from .guest import GuestMemory
    from .hypervisor import Hypervisor

log = logging.getLogger("xenemu.pv_iommu")

PREFIX = "[PV-IOMMU] "
PVIOMMU_MAX_PAGES = 256

# Allowed flags of each sub-op, as the reference code masks them.
ALLOC_OP_FLAGS_MASK = 0
FREE_OP_FLAGS_MASK = abi.IOMMU_TEARDOWN_REATTACH_DEFAULT

# Leaf slots free_context tears down before it lets others in (-ERESTART).
TEARDOWN_SLICE = 1 << 16

# Why the IOMMU stopped a map or unmap run, as Xen errors.
MAP_STOP = {
    hw.Status.PRESENT: (XenErrno.EADDRINUSE, "dfn {:#x} already mapped"),
    hw.Status.RANGE: (XenErrno.ERANGE, "dfn {:#x} above max_iova_addr"),
    hw.Status.NOMEM: (XenErrno.ENOMEM, "no memory for I/O page tables at dfn {:#x} "
                                       "(the domain's page-table budget or the machine's)"),
    # get_page failed: get_paged_frame's answer for a RAM page (only an
    # injected failure does this here).
    hw.Status.INJECTED: (XenErrno.EPERM, "get_page failed for the frame of dfn {:#x}"),
    hw.Status.REFCOUNT: (XenErrno.EPERM, "get_page failed for the frame of dfn {:#x}"),
}


@dataclass(slots=True)
class Op:
    """A struct pv_iommu_op as the handlers see it: the head's fields, which
    they may change, and the union as its raw 24 bytes, which they read and
    rewrite through the view of their sub-op."""
    subop_id: int
    ctx_no: int
    flags: int
    payload: bytes


class PvIommu:
    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self._why = ""
        self._handlers = {
            abi.IOMMUOP_query_capabilities: self.query_cap_op,
            abi.IOMMUOP_alloc_context: self.alloc_context_op,
            abi.IOMMUOP_free_context: self.free_context_op,
            abi.IOMMUOP_reattach_device: self.reattach_device_op,
            abi.IOMMUOP_map_pages: self.map_pages_op,
            abi.IOMMUOP_unmap_pages: self.unmap_pages_op,
            abi.IOMMUOP_lookup_page: self.lookup_page_op,
        }

    def _fail(self, err: XenErrno, why: str) -> int:
        """Return -err, keeping `why` for this hypercall's log line."""
        self._why = why
        return -err

    # -- entry ---------------------------------------------------------------

    def do_iommu_op(self, d: Domain, args: tuple[int, ...], mem: GuestMemory) -> int:
        handle = args[0]
        raw = mem.copy_from_guest(handle, abi.OP_SIZE)
        if raw is None:
            log.debug(PREFIX + "d%d: copy_from_guest of %#x failed -> -EFAULT", d.domid, handle)
            return -XenErrno.EFAULT
        op = Op(*abi.OP_HEAD.unpack(raw))
        self._why = ""
        ret = self.do_iommu_sub_op(d, op)
        if ret == -XenErrno.ERESTART:
            return ret  # a continuation re-reads the struct: nothing is copied back yet
        self._log(d, op, ret)
        if not mem.copy_to_guest(handle, abi.OP_HEAD.pack(op.subop_id, op.ctx_no, op.flags,
                                                          op.payload)):
            return -XenErrno.EFAULT
        return ret

    def do_iommu_sub_op(self, d: Domain, op: Op) -> int:
        if not self.can_use_iommu(d):
            return -XenErrno.EPERM
        if op.subop_id == abi.IOMMUOP_noop:
            return 0
        handler = self._handlers.get(op.subop_id)
        if handler is None:
            return self._fail(XenErrno.EINVAL, f"unknown sub-op {op.subop_id}")
        return handler(d, op)

    def can_use_iommu(self, d: Domain) -> bool:
        if not self.hv.config.iommu:
            self._why = "IOMMU is not enabled"
        elif not d.hardware:
            self._why = "Non-hardware domain"
        elif not d.iommu_enabled:
            self._why = "IOMMU disabled for this domain"
        else:
            return True
        return False

    def _log(self, d: Domain, op: Op, ret: int) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        inputs = abi.format_op_fields(op, abi.SUBOP_INPUTS.get(op.subop_id, ()))
        # Outputs of a success, and the partial counts a failed map or unmap reports.
        shown = ret >= 0 or op.subop_id in (abi.IOMMUOP_map_pages, abi.IOMMUOP_unmap_pages)
        outputs = abi.format_op_fields(op, abi.SUBOP_OUTPUTS.get(op.subop_id, ())) if shown else ""
        why = f" ({self._why})" if self._why and ret < 0 else ""
        log.debug(PREFIX + "d%d: %s ctx=%d flags=%#x%s -> %s%s%s",
                  d.domid, abi.subop_name(op.subop_id), op.ctx_no, op.flags, inputs,
                  result_name(ret), outputs, why)

    # -- sub-ops -------------------------------------------------------------

    def query_cap_op(self, d: Domain, op: Op) -> int:
        _, pad0, _, _, pad1 = abi.CAPABILITIES.unpack(op.payload)
        op.payload = abi.CAPABILITIES.pack(d.nr_contexts, pad0, PVIOMMU_MAX_PAGES,
                                           self.hv.iommu.max_iova_addr, pad1)
        return 0

    def alloc_context_op(self, d: Domain, op: Op) -> int:
        flags = op.flags & ALLOC_OP_FLAGS_MASK
        if self.hv.config.honour_clone:
            flags = op.flags & abi.IOMMU_CREATE_clone
        ctx_no = d.free_slot()
        if ctx_no is None:
            return self._fail(XenErrno.ENOSPC, f"all {d.nr_contexts} contexts in use")
        try:
            hw_ctx = self.hv.iommu.alloc_context()
        except hw.HwError as e:
            return self._fail(XenErrno.ENOMEM, f"no hardware context: {e}")
        ctx = d.contexts[ctx_no] = Context(ctx_no, hw_ctx)
        try:
            # Its tables, root included, come out of the domain's budget.
            self.hv.iommu.set_context_pool(hw_ctx, d.table_pool)
        except hw.HwError:
            self.hv.teardown_context(d, ctx, budget=None)
            used, limit = self.hv.iommu.pool_usage(d.table_pool)
            return self._fail(XenErrno.ENOMEM, f"page-table budget spent ({used} of {limit} pages)")
        if flags & abi.IOMMU_CREATE_clone:
            st = self.hv.identity_map(d, ctx, 0, d.p2m.nr_pages)
            if st != hw.Status.OK:
                self.hv.teardown_context(d, ctx, budget=None)
                return self._fail(XenErrno.ENOMEM, f"clone stopped: {st.name}")
        op.ctx_no = ctx_no
        return 0

    def free_context_op(self, d: Domain, op: Op) -> int:
        ctx_no = op.ctx_no
        if ctx_no == abi.IOMMU_DEFAULT_CONTEXT:
            return self._fail(XenErrno.EINVAL, "the default context can't be freed")
        ctx = d.context(ctx_no)
        if ctx is None:
            return self._fail(XenErrno.ENOENT, f"context {ctx_no} not allocated")
        if ctx.devices and not ctx.dying:
            if not op.flags & FREE_OP_FLAGS_MASK:
                return self._fail(XenErrno.EBUSY,
                                  f"{len(ctx.devices)} device(s) still attached")
            for sbdf in sorted(ctx.devices):
                self.hv.move_device(d, sbdf, d.contexts[0])
        # Always preemptible, as the reference passes IOMMU_TEARDOWN_PREEMPT.
        if not self.hv.teardown_context(d, ctx, budget=TEARDOWN_SLICE):
            return -XenErrno.ERESTART
        return 0

    def reattach_device_op(self, d: Domain, op: Op) -> int:
        dev = abi.ReattachDevice.parse(op.payload).dev
        sbdf = dev.seg << 16 | dev.bus << 8 | dev.devfn
        if sbdf not in d.devices:
            return self._fail(XenErrno.ENOENT, "device not assigned to this domain")
        target = d.context(op.ctx_no)
        if target is None:
            return self._fail(XenErrno.ENOENT, f"context {op.ctx_no} not allocated")
        if target.dying:
            return self._fail(XenErrno.EINVAL, f"context {op.ctx_no} is being freed")
        self.hv.move_device(d, sbdf, target)
        return 0

    def map_pages_op(self, d: Domain, op: Op) -> int:
        gfn, dfn, nr_pages, _ = abi.MAP_PAGES.unpack(op.payload)
        if nr_pages > PVIOMMU_MAX_PAGES:
            return self._fail(XenErrno.E2BIG, f"nr_pages {nr_pages} > {PVIOMMU_MAX_PAGES}")
        ctx = d.usable_context(op.ctx_no)
        if ctx is None:
            return self._fail(XenErrno.EINVAL, self._why_unusable(d, op.ctx_no))
        perm = ((hw.PERM_R if op.flags & abi.IOMMU_OP_readable else 0)
                | (hw.PERM_W if op.flags & abi.IOMMU_OP_writeable else 0))
        if not perm:
            return self._fail(XenErrno.EINVAL, "neither readable nor writeable")
        # Page by page Xen checks the p2m, takes a reference (get_page),
        # checks the dfn, then maps; the C layer does the last three for the
        # run of pages the p2m allows.
        backed, err, why = d.p2m.first_non_ram(gfn, nr_pages)
        done, st = self.hv.iommu.map_referenced(ctx.hw, dfn, d.p2m.mfns[gfn:gfn + backed], perm)
        if done < backed:
            err, reason = MAP_STOP[hw.Status(st)]
            why = reason.format(dfn + done)
        op.payload = abi.MAP_PAGES.pack(gfn, dfn, nr_pages, done)
        self._flush(ctx, dfn, nr_pages)
        return 0 if err is None else self._fail(err, why)

    def unmap_pages_op(self, d: Domain, op: Op) -> int:
        dfn, nr_pages, _, pad = abi.UNMAP_PAGES.unpack(op.payload)
        if nr_pages > PVIOMMU_MAX_PAGES:
            return self._fail(XenErrno.E2BIG, f"nr_pages {nr_pages} > {PVIOMMU_MAX_PAGES}")
        ctx = d.usable_context(op.ctx_no)
        if ctx is None:
            return self._fail(XenErrno.EINVAL, self._why_unusable(d, op.ctx_no))
        # The IOTLB is flushed once over the whole range below, as Xen does.
        done, _, mfns = self.hv.iommu.unmap(ctx.hw, dfn, nr_pages, flush=False)
        self.hv.machine.put_refs(mfns)
        op.payload = abi.UNMAP_PAGES.pack(dfn, nr_pages, done, pad)
        self._flush(ctx, dfn, nr_pages)
        if done < nr_pages:
            return self._fail(XenErrno.ENOENT, f"no mapping at dfn {dfn + done:#x}")
        return 0

    def lookup_page_op(self, d: Domain, op: Op) -> int:
        _, dfn, pad = abi.LOOKUP_PAGE.unpack(op.payload)
        ctx = d.usable_context(op.ctx_no)
        if ctx is None:
            return self._fail(XenErrno.EINVAL, self._why_unusable(d, op.ctx_no))
        found = None
        if dfn <= self.hv.iommu.max_iova_addr >> hw.PAGE_SHIFT:
            found = self.hv.iommu.lookup(ctx.hw, dfn)
        if found is None:
            return self._fail(XenErrno.ENOENT, f"no mapping at dfn {dfn:#x}")
        gfn = self.hv.machine.m2p(array("Q", [found[0]]))[0]
        op.payload = abi.LOOKUP_PAGE.pack(gfn, dfn, pad)
        return 0

    def _flush(self, ctx: Context, dfn: int, nr_pages: int) -> None:
        """iommu_iotlb_flush over the requested range (clipped to the width).

        A failed flush leaves the sub-op's status alone: the reference only
        prints "Flush operation failed". The IOTLB keeps what it cached."""
        last = self.hv.iommu.max_iova_addr >> hw.PAGE_SHIFT
        if nr_pages and dfn <= last:
            try:
                self.hv.iommu.invalidate_pages(ctx.hw, dfn, min(nr_pages, last - dfn + 1))
            except hw.HwError as e:
                log.warning(PREFIX + "Flush operation failed (%d): ctx %d dfn %#x nr_pages %d (%s)",
                            -XenErrno.ETIMEDOUT, ctx.ctx_no, dfn, nr_pages, e.status.name)

    @staticmethod
    def _why_unusable(d: Domain, ctx_no: int) -> str:
        ctx = d.context(ctx_no)
        if ctx is None:
            return f"context {ctx_no} not allocated"
        if ctx.dying:
            return f"context {ctx_no} is being freed"
        return "the default context is opaque"
