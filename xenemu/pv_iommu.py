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
from typing import TYPE_CHECKING

from . import abi
from .errno import XenErrno, result_name

if TYPE_CHECKING:
    from .guest import GuestMemory
    from .hypervisor import Domain, Hypervisor

log = logging.getLogger("xenemu.pv_iommu")

PREFIX = "[PV-IOMMU] "
PVIOMMU_MAX_PAGES = 256


class PvIommu:
    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self._why = ""
        self._handlers = {
            abi.IOMMUOP_query_capabilities: self.query_cap_op,
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
        head = abi.OpHead.parse(raw)
        self._why = ""
        ret = self.do_iommu_sub_op(d, head)
        if ret == -XenErrno.ERESTART:
            return ret  # a continuation re-reads the struct: nothing is copied back yet
        self._log(d, head, ret)
        if not mem.copy_to_guest(handle, abi.OpHead.build(head)):
            return -XenErrno.EFAULT
        return ret

    def do_iommu_sub_op(self, d: Domain, op) -> int:
        if not self.can_use_iommu(d):
            return -XenErrno.EPERM
        if op.subop_id == abi.IOMMUOP_noop:
            return 0
        handler = self._handlers.get(op.subop_id)
        if handler is None:
            if op.subop_id in abi.SUBOP_NAMES:
                return self._fail(XenErrno.ENOSYS, "sub-op not emulated yet")
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

    def _log(self, d: Domain, op, ret: int) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        name = abi.SUBOP_NAMES.get(op.subop_id, f"sub-op {op.subop_id}")
        why = f" ({self._why})" if self._why and ret < 0 else ""
        log.debug(PREFIX + "d%d: %s ctx=%d flags=%#x -> %s%s",
                  d.domid, name, op.ctx_no, op.flags, result_name(ret), why)

    # -- sub-ops -------------------------------------------------------------

    def query_cap_op(self, d: Domain, op) -> int:
        cap = abi.Capabilities.parse(op.payload)
        cap.max_ctx_no = d.nr_contexts
        cap.max_nr_pages = PVIOMMU_MAX_PAGES
        cap.max_iova_addr = (1 << self.hv.config.address_width) - 1
        op.payload = abi.Capabilities.build(cap)
        return 0
