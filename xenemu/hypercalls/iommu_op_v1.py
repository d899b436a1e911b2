"""__HYPERVISOR_iommu_op, revision 1: abi/xen/pv-iommu.h and Xen's
xen/common/pv-iommu.c in Python, with its table of sub-ops.

`struct pv_iommu_op` is 32 bytes: an 8-byte head (subop_id, ctx_no, flags)
and a 24-byte anonymous union. The union is kept as raw bytes in
`Op.payload` and read or written through one view per sub-op; every view
covers all 24 bytes (unused bytes as `_pad*` fields), so parse -> change a
field -> build rewrites only that field and returns every other byte as the
guest sent it, which is what Xen's copy_to_guest of the whole struct does.

One handler per sub-op, as in the reference: validate, act, fill the
outputs, return the status or raise HypercallError with the reason. The
entry (common.Hypercall.execute) copies the struct back whatever the status,
so partial outputs (`mapped`, `unmapped`) reach the guest on error too.
Every hypercall leaves one debug line in the style of Xen's `[PV-IOMMU]`
messages, with the reason of a failure.

A new sub-op: its constant and view below, one handler, one row in SUBOPS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from construct import Bytes, Container, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .. import hw
from ..domain import Context, Domain
from ..errno import XenErrno
from ..packing import struct_of
from ..pci import format_device, pack_sbdf
from .common import (HYPERVISOR_iommu_op, Hazard, Hypercall, HypercallError, SubOp,
                     report_hazard)

if TYPE_CHECKING:
    from ..hypervisor import Hypervisor

log = logging.getLogger("xenemu.pv_iommu")
PREFIX = "[PV-IOMMU] "

PV_IOMMU_REVISION = 1   # the interface revision this module describes

IOMMU_DEFAULT_CONTEXT = 0

# Sub-operations (IOMMUOP_*); 0 is the reference code's no-op.
IOMMUOP_noop = 0
IOMMUOP_query_capabilities = 1
IOMMUOP_alloc_context = 2
IOMMUOP_free_context = 3
IOMMUOP_reattach_device = 4
IOMMUOP_map_pages = 5
IOMMUOP_unmap_pages = 6
IOMMUOP_lookup_page = 7

# Flags.
IOMMU_CREATE_clone = 1 << 0                # alloc_context (ignored by the reference code)
IOMMU_OP_readable = 1 << 0                 # map_pages
IOMMU_OP_writeable = 1 << 1                # map_pages
IOMMU_TEARDOWN_REATTACH_DEFAULT = 1 << 0   # free_context
IOMMU_TEARDOWN_PREEMPT = 1 << 1            # internal to Xen (always set by free_context_op)

OP_SIZE = 32
PAYLOAD_SIZE = 24

# struct pv_iommu_op has four shapes here, one per kind of user:
#   PvIommuOp     the layout (construct): the head and the union as 24 raw
#                 bytes; what the C header is checked against and encode_op builds
#   PV_IOMMU_OP   its struct.Struct twin (below), for the hot path
#   Op            what a handler gets: the head's fields and the raw union,
#                 read and rewritten through its sub-op's view
#   decode_op()   what a reader gets (clients, tests): every view of the union
PvIommuOp = Struct(
    "subop_id" / Int16ul,
    "ctx_no" / Int16ul,
    "flags" / Int32ul,
    "payload" / Bytes(PAYLOAD_SIZE),
).compile()

PciDevice = Struct(
    "seg" / Int16ul,
    "bus" / Int8ul,
    "devfn" / Int8ul,
)

# One view of the union per sub-op, each exactly PAYLOAD_SIZE bytes.
MapPages = Struct(
    "gfn" / Int64ul,
    "dfn" / Int64ul,
    "nr_pages" / Int32ul,
    "mapped" / Int32ul,
).compile()

UnmapPages = Struct(
    "dfn" / Int64ul,
    "nr_pages" / Int32ul,
    "unmapped" / Int32ul,
    "_pad" / Bytes(8),
).compile()

ReattachDevice = Struct(
    "dev" / PciDevice,
    "_pad" / Bytes(20),
).compile()

LookupPage = Struct(
    "gfn" / Int64ul,
    "dfn" / Int64ul,
    "_pad" / Bytes(8),
).compile()

Capabilities = Struct(
    "max_ctx_no" / Int16ul,
    "_pad0" / Bytes(2),
    "max_nr_pages" / Int32ul,
    "max_iova_addr" / Int64ul,
    "_pad1" / Bytes(8),
).compile()

# What every hypercall parses and builds goes through struct twins of the
# layouts above (xenemu.packing), field for field in the same order.
PV_IOMMU_OP = struct_of(PvIommuOp)      # subop_id, ctx_no, flags, payload
MAP_PAGES = struct_of(MapPages)         # gfn, dfn, nr_pages, mapped
UNMAP_PAGES = struct_of(UnmapPages)     # dfn, nr_pages, unmapped, _pad
LOOKUP_PAGE = struct_of(LookupPage)     # gfn, dfn, _pad
CAPABILITIES = struct_of(Capabilities)  # max_ctx_no, _pad0, max_nr_pages, max_iova_addr, _pad1


@dataclass(slots=True)
class Op:
    """A struct pv_iommu_op as the handlers see it: the head's fields, which
    they may change, and the union as its raw 24 bytes, which they read and
    rewrite through the view of their sub-op."""
    subop_id: int
    ctx_no: int
    flags: int
    payload: bytes

    @classmethod
    def unpack(cls, raw: bytes) -> Op:
        return cls(*PV_IOMMU_OP.unpack(raw))

    def pack(self) -> bytes:
        return PV_IOMMU_OP.pack(self.subop_id, self.ctx_no, self.flags, self.payload)


# -- the handlers (Xen's pv-iommu.c) ------------------------------------------

PVIOMMU_MAX_PAGES = 256

# Allowed flags of each sub-op, as the reference code masks them.
ALLOC_OP_FLAGS_MASK = 0
FREE_OP_FLAGS_MASK = IOMMU_TEARDOWN_REATTACH_DEFAULT

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


# Calls the reference (seed 001) would crash or corrupt Xen on, and what
# xenemu answers instead (common.report_hazard).
HAZARDS = {h.name: h for h in (
    Hazard("unmap_identity_page",
           "unmap_pages_op: iommu_unmap of a reserved (RMRR) page identity-mapped for a device, "
           "then put_page() on DomIO's frame, which holds no reference (refcount underflow)",
           "-EADDRNOTAVAIL at that page, as revision 2 does; the pages before it are unmapped",
           code="the revision-1 reference"),
)}


def hazard(hv: Hypervisor, d: Domain, name: str, why: str) -> None:
    """Report hazard `name` of HAZARDS met by a call on d."""
    report_hazard(hv, d, HAZARDS[name], why)


def can_use_iommu(hv: Hypervisor, d: Domain) -> None:
    if not hv.config.iommu:
        raise HypercallError(XenErrno.EPERM, "IOMMU is not enabled")
    if not d.hardware:
        raise HypercallError(XenErrno.EPERM, "Non-hardware domain")
    if not d.iommu_enabled:
        raise HypercallError(XenErrno.EPERM, "IOMMU disabled for this domain")


# The fast path (cext/fastpath.c's v1_*) answers the rows marked `fast`
# when the gate passes and the struct is in the frame; each handler below
# says which of its cases it takes. The rest, and everything while the fault
# injector is armed, comes here.

def noop(hv: Hypervisor, d: Domain, op: Op) -> int:
    """Fast path: always."""
    return 0


def query_cap_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    """Fast path: always (v1_query)."""
    _, pad0, _, _, pad1 = CAPABILITIES.unpack(op.payload)
    op.payload = CAPABILITIES.pack(d.nr_contexts, pad0, PVIOMMU_MAX_PAGES,
                                   hv.contexts.max_iova_addr, pad1)
    return 0


def alloc_context_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    flags = op.flags & ALLOC_OP_FLAGS_MASK
    if hv.config.honour_clone:
        flags = op.flags & IOMMU_CREATE_clone
    op.ctx_no = hv.contexts.alloc(d, clone=bool(flags & IOMMU_CREATE_clone)).ctx_no
    return 0


def free_context_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    ctx_no = op.ctx_no
    if ctx_no == IOMMU_DEFAULT_CONTEXT:
        raise HypercallError(XenErrno.EINVAL, "the default context can't be freed")
    ctx = d.context(ctx_no)
    if ctx is None:
        raise HypercallError(XenErrno.ENOENT, f"context {ctx_no} not allocated")
    # Always preemptible, as the reference passes IOMMU_TEARDOWN_PREEMPT.
    reattach = bool(op.flags & FREE_OP_FLAGS_MASK)
    if not hv.contexts.free(d, ctx, reattach_default=reattach):
        return -XenErrno.ERESTART
    return 0


def reattach_device_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    dev = ReattachDevice.parse(op.payload).dev
    sbdf = pack_sbdf(dev.seg, dev.bus, dev.devfn)
    if sbdf not in d.devices:
        raise HypercallError(XenErrno.ENOENT, "device not assigned to this domain")
    target = d.context(op.ctx_no)
    if target is None:
        raise HypercallError(XenErrno.ENOENT, f"context {op.ctx_no} not allocated")
    if target.dying:
        raise HypercallError(XenErrno.EINVAL, f"context {op.ctx_no} is being freed")
    hv.contexts.reattach(d, sbdf, target)
    return 0


def map_pages_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    """Fast path (v1_map): a usable context, nr_pages within the limit, a
    permission, and every gfn RAM; the run's own failures (a dfn mapped,
    beyond the width, no table page, get_page) included."""
    gfn, dfn, nr_pages, _ = MAP_PAGES.unpack(op.payload)
    ctx = _run_context(d, op.ctx_no, nr_pages)
    perm = ((hw.PERM_R if op.flags & IOMMU_OP_readable else 0)
            | (hw.PERM_W if op.flags & IOMMU_OP_writeable else 0))
    if not perm:
        raise HypercallError(XenErrno.EINVAL, "neither readable nor writeable")
    # Page by page Xen checks the p2m, takes a reference (get_page),
    # checks the dfn, then maps; the C layer does the last three for the
    # run of pages the p2m allows.
    backed, err, why = d.p2m.first_non_ram(gfn, nr_pages)
    done, st = hv.contexts.map(ctx, dfn, d.p2m.mfns[gfn:gfn + backed], perm)
    if done < backed:
        err, reason = MAP_STOP[st]
        why = reason.format(dfn + done)
    op.payload = MAP_PAGES.pack(gfn, dfn, nr_pages, done)
    hv.contexts.iotlb_flush(ctx, dfn, nr_pages)
    if err is not None:
        raise HypercallError(err, why)
    return 0


def unmap_pages_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    """Fast path (v1_unmap): a usable context holding no other domain's
    frames, nr_pages within the limit, no identity range met (the hazard is
    here); a hole's -ENOENT included."""
    dfn, nr_pages, _, pad = UNMAP_PAGES.unpack(op.payload)
    ctx = _run_context(d, op.ctx_no, nr_pages)
    # The reference unmaps an identity-mapped (RMRR) page like any other and
    # put_page()s a frame it never took a reference on (DomIO's): a hazard.
    # xenemu stops there as revision 2 does (-EADDRNOTAVAIL).
    reserved = ctx.identity_at(dfn, nr_pages)
    room = nr_pages if reserved is None else reserved - dfn
    # The IOTLB is flushed once over the whole range below, as Xen does.
    done = hv.contexts.unmap(ctx, dfn, room, flush=False)
    op.payload = UNMAP_PAGES.pack(dfn, nr_pages, done, pad)
    hv.contexts.iotlb_flush(ctx, dfn, nr_pages)
    if done < room:
        raise HypercallError(XenErrno.ENOENT, f"no mapping at dfn {dfn + done:#x}")
    if room < nr_pages:
        why = f"dfn {reserved:#x} is in a reserved (identity) range"
        hazard(hv, d, "unmap_identity_page", why)
        raise HypercallError(XenErrno.EADDRNOTAVAIL, why)
    return 0


def lookup_page_op(hv: Hypervisor, d: Domain, op: Op) -> int:
    """Fast path (v1_lookup): a usable context; -ENOENT included."""
    _, dfn, pad = LOOKUP_PAGE.unpack(op.payload)
    ctx = _usable_context(d, op.ctx_no)
    gfn = hv.contexts.lookup_gfn(ctx, dfn)
    if gfn is None:
        raise HypercallError(XenErrno.ENOENT, f"no mapping at dfn {dfn:#x}")
    op.payload = LOOKUP_PAGE.pack(gfn, dfn, pad)
    return 0


def _run_context(d: Domain, ctx_no: int, nr_pages: int) -> Context:
    """The context a map or unmap of `nr_pages` acts on (-E2BIG past the limit)."""
    if nr_pages > PVIOMMU_MAX_PAGES:
        raise HypercallError(XenErrno.E2BIG, f"nr_pages {nr_pages} > {PVIOMMU_MAX_PAGES}")
    return _usable_context(d, ctx_no)


def _usable_context(d: Domain, ctx_no: int) -> Context:
    """The non-default, live context a map, unmap or lookup names; -EINVAL else."""
    ctx = d.usable_context(ctx_no)
    if ctx is not None:
        return ctx
    ctx = d.context(ctx_no)
    if ctx is None:
        why = f"context {ctx_no} not allocated"
    elif ctx.dying:
        why = f"context {ctx_no} is being freed"
    else:
        why = "the default context is opaque"
    raise HypercallError(XenErrno.EINVAL, why)


# -- the table -----------------------------------------------------------------

_RW = IOMMU_OP_readable | IOMMU_OP_writeable

SUBOPS = (
    SubOp(IOMMUOP_noop, "noop", noop, fast=True),
    SubOp(IOMMUOP_query_capabilities, "query_capabilities", query_cap_op, fast=True,
          view="cap", layout=Capabilities,
          outputs=("max_ctx_no", "max_nr_pages", "max_iova_addr")),
    SubOp(IOMMUOP_alloc_context, "alloc_context", alloc_context_op,
          outputs=("ctx_no",), params=(("flags", 0),)),
    SubOp(IOMMUOP_free_context, "free_context", free_context_op,
          params=("ctx_no", ("flags", 0))),
    SubOp(IOMMUOP_reattach_device, "reattach_device", reattach_device_op,
          view="reattach_device", layout=ReattachDevice, inputs=("dev",),
          params=("ctx_no", ("seg", 0), ("bus", 0), ("devfn", 0))),
    SubOp(IOMMUOP_map_pages, "map_pages", map_pages_op, fast=True,
          view="map_pages", layout=MapPages, inputs=("gfn", "dfn", "nr_pages"),
          outputs=("mapped",), outputs_on_error=True, pages="mapped",
          params=("ctx_no", "gfn", "dfn", "nr_pages", ("flags", _RW))),
    SubOp(IOMMUOP_unmap_pages, "unmap_pages", unmap_pages_op, fast=True,
          view="unmap_pages", layout=UnmapPages, inputs=("dfn", "nr_pages"),
          outputs=("unmapped",), outputs_on_error=True, pages="unmapped",
          params=("ctx_no", "dfn", "nr_pages")),
    SubOp(IOMMUOP_lookup_page, "lookup_page", lookup_page_op, fast=True,
          view="lookup_page", layout=LookupPage, inputs=("dfn",), outputs=("gfn",),
          params=("ctx_no", "dfn")),
)

IOMMU_OP = Hypercall(
    number=HYPERVISOR_iommu_op, name="iommu_op", revision=PV_IOMMU_REVISION,
    subops={row.number: row for row in SUBOPS},
    op_type=Op, head_names=("subop_id", "ctx_no", "flags"),
    head_text="ctx={ctx_no} flags={flags:#x}",
    handle_arg=0, size=OP_SIZE, subop_field="subop_id",
    log=log, log_prefix=PREFIX, gate=can_use_iommu,
    hex_fields=frozenset({"flags", "gfn", "dfn", "max_iova_addr"}),
    formatters={"dev": format_device}, map_stop=MAP_STOP,
)

# Union member name (as in the C header) -> its view, from the rows.
VIEWS = {row.view: row.layout for row in SUBOPS if row.view}


# -- building and reading the struct (clients and tests) --------------------------

def encode_op(subop_id: int, ctx_no: int = 0, flags: int = 0, view: str | None = None,
              **fields) -> bytes:
    """Build a 32-byte pv_iommu_op; `view` names the union member `fields` fill.

    Fields left out are zero, e.g. encode_op(IOMMUOP_map_pages, 1, 3,
    "map_pages", gfn=0x10, dfn=0x20, nr_pages=4); a nested struct's fields
    as a dict (dev=dict(seg=0, bus=3, devfn=0)).
    """
    payload = bytes(PAYLOAD_SIZE)
    if view is not None:
        layout = VIEWS[view]
        values = layout.parse(payload)  # all fields zero
        unknown = set(fields) - set(values) - {"_io"}
        if unknown:
            raise TypeError(f"{view} has no field(s) {sorted(unknown)}")
        for name, value in fields.items():
            if isinstance(values[name], Container):
                values[name].update(value)
            else:
                values[name] = value
        payload = layout.build(values)
    elif fields:
        raise TypeError("fields given without naming the union member (view=...)")
    return PvIommuOp.build(dict(subop_id=subop_id, ctx_no=ctx_no, flags=flags, payload=payload))


def encode_subop(row: SubOp, ctx_no: int = 0, flags: int = 0, **params) -> bytes:
    """The struct a client helper sends: the row's params, where a nested
    struct's fields (seg, bus, devfn of dev) are given flat."""
    if row.layout is None:
        return encode_op(row.number, ctx_no, flags)
    zero = row.layout.parse(bytes(PAYLOAD_SIZE))
    fields = {}
    for name, value in params.items():
        outer = next((k for k, v in zero.items() if isinstance(v, Container) and name in v), None)
        if outer is None:
            fields[name] = value
        else:
            fields.setdefault(outer, {})[name] = value
    return encode_op(row.number, ctx_no, flags, row.view, **fields)


def decode_op(raw: bytes) -> Container:
    """Every view of a 32-byte pv_iommu_op, as a C reader of the union sees it.

    Returns a Container with subop_id, ctx_no, flags and one member per union
    view (cap, reattach_device, map_pages, unmap_pages, lookup_page).
    """
    if len(raw) != OP_SIZE:
        raise ValueError(f"pv_iommu_op is {OP_SIZE} bytes, got {len(raw)}")
    head = PvIommuOp.parse(raw)
    op = Container(subop_id=head.subop_id, ctx_no=head.ctx_no, flags=head.flags)
    for name, layout in VIEWS.items():
        op[name] = layout.parse(head.payload)
    return op
