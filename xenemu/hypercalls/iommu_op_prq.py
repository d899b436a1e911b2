"""Sub-ops 14 and 15 of revision 2 as xenemu's extension (abi/NESTED.md,
"I/O page faults"): a nested context allocated with
XENEMU_NESTED_PAGE_REQUESTS turns its stage-1 not-present faults into page
requests the guest reads (14) and answers (15), after which the DMA that
waits is retried, as PCIe PRI and SVA work.

Like 9-12 they answer -EOPNOTSUPP with `arg` untouched unless the machine
option `nested` is on, so each handler copies its struct itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .. import hw
from ..domain import Context, Domain
from ..errno import XenErrno
from ..pci import unpack_sbdf
from .common import HypercallError, SubopCall
from .iommu_op_nested import _nested_context, _read
from .iommu_op_v1 import PciDevice

if TYPE_CHECKING:
    from ..hypervisor import Hypervisor

IOMMU_read_page_requests = 14
IOMMU_page_response = 15
PAGE_REQUEST_WRITE = 1          # xenemu_page_request.flags
PRQ_MAX = hw.PRQ_PER_CTX        # requests a context can have outstanding: a useful `max`
ENTRY_SIZE = 24

# pv-iommu-nested.h's structs.
ReadPageRequests = Struct("ctx_no" / Int16ul, "_pad" / Bytes(2), "max" / Int32ul,
                          "count" / Int32ul, "_pad2" / Bytes(4),
                          "requests" / Int64ul).compile()                                 # 24
PageRequestEntry = Struct("addr" / Int64ul, "pasid" / Int32ul, "group" / Int32ul,
                          "dev" / PciDevice, "flags" / Int8ul, "_pad" / Bytes(3)).compile()  # 24
PageResponse = Struct("ctx_no" / Int16ul, "code" / Int16ul, "group" / Int32ul).compile()  # 8


def _page_request_context(d: Domain, ctx_no: int) -> Context:
    ctx = _nested_context(d, ctx_no)
    if not ctx.page_requests:
        raise HypercallError(XenErrno.EINVAL, f"context {ctx_no} was not allocated with "
                                              f"XENEMU_NESTED_PAGE_REQUESTS")
    return ctx


def _entry(r: hw.PageRequest) -> bytes:
    seg, bus, devfn = unpack_sbdf(r.sbdf)
    return PageRequestEntry.build(dict(addr=r.addr, pasid=r.pasid, group=r.group,
                                       dev=dict(seg=seg, bus=bus, devfn=devfn),
                                       flags=PAGE_REQUEST_WRITE if r.write else 0,
                                       _pad=bytes(3)))


def read_page_requests_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """Up to `max` of the context's unread requests, oldest first, into the
    buffer at `requests`; `count` OUT. They are marked read only once both the
    entries and the struct are copied out: a -EFAULT loses none."""
    a = _read(hv, op, ReadPageRequests, 24)
    ctx = _page_request_context(d, a.ctx_no)
    got = hv.iommu.read_page_requests(ctx.hw_id, min(a.max, PRQ_MAX), consume=False)
    if got and not op.mem.copy_to_guest(a.requests, b"".join(map(_entry, got))):
        raise HypercallError(XenErrno.EFAULT, f"copy_to_guest of {len(got)} request(s) to "
                                              f"{a.requests:#x} failed")
    a.count = len(got)
    op.payload = ReadPageRequests.build(a)
    if not op.mem.copy_to_guest(op.handle, op.payload):
        raise HypercallError(XenErrno.EFAULT, f"copy_to_guest of {op.handle:#x} failed")
    hv.iommu.read_page_requests(ctx.hw_id, len(got))
    return 0


def page_response_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """Answer request `group` with `code` (0 success, 1 invalid, 15 failure)."""
    r = _read(hv, op, PageResponse, 8)
    ctx = _page_request_context(d, r.ctx_no)
    if r.code not in set(hw.PrqCode):
        raise HypercallError(XenErrno.EINVAL, f"code {r.code}: expected 0 (success), "
                                              f"1 (invalid) or 15 (failure)")
    try:
        hv.iommu.respond_page_request(ctx.hw_id, r.group, r.code)
    except hw.HwError:
        raise HypercallError(XenErrno.ENOENT, f"no page request {r.group} waits for an "
                                              f"answer in context {r.ctx_no}") from None
    return 0


def entries(raw: bytes) -> list:
    """The struct xenemu_page_request entries in a buffer (clients, tests)."""
    return [PageRequestEntry.parse(raw[i:i + ENTRY_SIZE])
            for i in range(0, len(raw) - ENTRY_SIZE + 1, ENTRY_SIZE)]
