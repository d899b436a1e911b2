"""__HYPERVISOR_iommu_op, revision 2: Xen RFC v4-v7's pv-iommu.h and
xen/common/pv-iommu.c (v7 as posted 2025-11-20) in Python, with its table of
sub-ops. The ground truth is ../shared/reference/pv-iommu-rev2.md (its
section numbers below); this module follows the v7 *code*, including where
the header says otherwise (init falling through into alloc_context).

`do_iommu_op(unsigned int subop, handle arg)`: the sub-op is args[0], the
handle args[1], and each sub-op has a struct of its own (§4), read and
written through its layout. The entry (common.Hypercall.execute_subop)
copies a row's struct in if it reads one and back on every path when the
row says so (§10 row 17: query writes only; alloc, map and unmap are copied
back always; free, reattach and remote_cmd never).

Map and unmap have no page limit: a run is preempted deterministically every
`rev2_pages_per_round` pages (a machine option), the struct rewritten as
Xen's continuation does (§5.11: gfn/dfn/nr_pages moved by the pages done,
`mapped`/`unmapped` accumulating on the guest's value) and -ERESTART
returned to the engine, which re-runs the call after others had a turn.

Where v7 would crash, hang or mislead Xen (§9) this module answers as the
reference suggests and reports the hazard (`HAZARDS`, the one table of them:
a warning, a count for `ctl info`, a `hazard` trace record that `xenemu
replay --fail-on-hazard` fails on).

Sub-ops 9-12 answer -EOPNOTSUPP as Xen's do, unless the machine option
`nested` is on: then they are xenemu's extension (abi/NESTED.md, the
header abi/rev2/xen/pv-iommu-nested.h), served by iommu_op_nested.

`rev2_semantics` (a machine option) picks what is served where the v7 code
and its header disagree: "v7" (the default) the code, "intended" what the
header and cover letter say (`intended()`: init with its `break`, a failed
free changing nothing, a conflict -EINVAL).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .. import hw
from ..domain import Context, Domain
from ..errno import XenErrno, XenError
from ..p2m import P2mType
from ..pci import format_device, pack_sbdf
from . import iommu_op_dirty as dirty
from . import iommu_op_nested as nested
from . import iommu_op_prq as prq
from .common import (HYPERVISOR_iommu_op, Hazard, Hypercall, HypercallError, SubOp, SubopCall,
                     report_hazard)

if TYPE_CHECKING:
    from ..hypervisor import Hypervisor

log = logging.getLogger("xenemu.pv_iommu")
PREFIX = "[PV-IOMMU] "

PV_IOMMU_REVISION = 2

IOMMU_DEFAULT_CONTEXT = 0

# enum pv_iommu_cmd (§3).
IOMMU_noop = 0
IOMMU_query_capabilities = 1
IOMMU_init = 2
IOMMU_alloc_context = 3
IOMMU_free_context = 4
IOMMU_reattach_device = 5
IOMMU_map_pages = 6
IOMMU_unmap_pages = 7
IOMMU_remote_cmd = 8
IOMMU_alloc_nested = 9
IOMMU_flush_nested = 10
IOMMU_attach_pasid = 11
IOMMU_detach_pasid = 12

IOMMUCAP_default_identity = 1 << 0
IOMMUCAP_cache = 1 << 1
IOMMUCAP_nested = 1 << 2
IOMMUCAP_pasid = 1 << 3
IOMMUCAP_identity = 1 << 4

IOMMU_ALLOC_identity = 1 << 0       # ignored by the code
IOMMU_FREE_reattach_default = 1 << 0
IOMMU_MAP_readable = 1 << 0
IOMMU_MAP_writeable = 1 << 1
IOMMU_MAP_cache = 1 << 2            # ignored by the code

PAGE_SIZE_4K = 0x1000               # pgsize_mask: a byte size, as Linux's pgsize_bitmap
UINT32_MAX = 0xFFFFFFFF
DOMID_SELF = 0x7FF0

# -- the structs (§4; x86-64, little-endian, sizes and offsets exact) ----------

PciDevice = Struct("seg" / Int16ul, "bus" / Int8ul, "devfn" / Int8ul)

Capabilities = Struct(                      # 24
    "max_iova_addr" / Int64ul,              # 0
    "cap_flags" / Int32ul,                  # 8
    "pgsize_mask" / Int32ul,                # 12
    "max_pasid" / Int32ul,                  # 16
    "max_ctx_no" / Int16ul,                 # 20
    "pad0" / Int16ul,                       # 22: never assigned by Xen (stack bytes); 0 here
).compile()
Init = Struct("max_ctx_no" / Int32ul, "arena_order" / Int32ul).compile()                   # 8
Alloc = Struct("ctx_no" / Int16ul, "_pad" / Bytes(2), "alloc_flags" / Int32ul).compile()   # 8
Free = Struct("ctx_no" / Int16ul, "_pad" / Bytes(2), "free_flags" / Int32ul).compile()     # 8
MapPages = Struct(                          # 40
    "ctx_no" / Int16ul, "_pad" / Bytes(6),
    "gfn" / Int64ul,                        # 8
    "dfn" / Int64ul,                        # 16
    "map_flags" / Int32ul,                  # 24
    "pgsize" / Int32ul,                     # 28: never read
    "nr_pages" / Int32ul,                   # 32
    "mapped" / Int32ul,                     # 36
).compile()
UnmapPages = Struct(                        # 32
    "ctx_no" / Int16ul, "_pad" / Bytes(6),
    "dfn" / Int64ul,                        # 8
    "pgsize" / Int32ul,                     # 16: never read
    "nr_pages" / Int32ul,                   # 20
    "unmapped" / Int32ul,                   # 24
    "_pad1" / Bytes(4),
).compile()
ReattachDevice = Struct(                    # 12
    "ctx_no" / Int16ul, "dev" / PciDevice, "_pad" / Bytes(2), "pasid" / Int32ul).compile()
RemoteCmd = Struct(                         # 16
    "domid" / Int16ul, "subop" / Int16ul, "_pad" / Bytes(4), "arg" / Int64ul).compile()
# 9-12's structs are iommu_op_nested's.
AllocNested, FlushNested = nested.AllocNested, nested.FlushNested
AttachPasid, DetachPasid = nested.AttachPasid, nested.DetachPasid

SIZES = {"capabilities": 24, "init": 8, "alloc": 8, "free": 8, "map_pages": 40,
         "unmap_pages": 32, "reattach_device": 12, "remote_cmd": 16}

# Why the IOMMU stopped a map run, as Xen v7's errors (§5.7).
MAP_STOP = {
    hw.Status.PRESENT: (XenErrno.EADDRINUSE, "dfn {:#x} already mapped"),
    hw.Status.RANGE: (XenErrno.ERANGE, "dfn {:#x} above max_iova_addr"),
    hw.Status.NOMEM: (XenErrno.ENOMEM, "arena spent: no page-table page for dfn {:#x}"),
    hw.Status.INJECTED: (XenErrno.EPERM, "get_page failed for the frame of dfn {:#x}"),
    hw.Status.REFCOUNT: (XenErrno.EPERM, "get_page failed for the frame of dfn {:#x}"),
}


# -- Xen hazards (§9) ------------------------------------------------------------------

HAZARDS = {h.name: h for h in (
    Hazard("init_nb_ctx_zero",
           "iommu_domain_pviommu_init: BUG_ON(nb_ctx == 0), max_ctx_no + 1 truncated to "
           "uint16_t (panic)",
           "-E2BIG inside init as for UINT32_MAX (v7: the fall-through's -ENOSPC), "
           "nothing changes"),
    Hazard("init_no_arena",
           "iommu_arena_allocate_page: BUG_ON(region_start == 0) on the first context's "
           "page table, arena_order 0 leaving no arena (panic)",
           "-EINVAL inside init (v7: the fall-through's -ENOSPC), nothing changes, "
           "a later init works"),
    Hazard("init_arena_order_shift",
           "arch_iommu_pviommu_init: 2^arena_order pages with arena_order >= 64, "
           "an undefined shift (an arena of the wrong size)",
           "-ENOMEM inside init, the init spent (as any too-large arena)"),
    Hazard("free_reattach_with_devices",
           "iommu_context_teardown: list_for_each_entry over ctx->devices while "
           "iommu_reattach_context moves each entry to context 0 (livelock, list corruption)",
           "the devices go to context 0, then the context is freed: 0"),
    Hazard("remote_cmd_iommu_off",
           "remote_cmd_op -> do_iommu_subop on a target without an IOMMU: "
           "hd->platform_ops is NULL and dereferenced (crash)",
           "-ENODEV"),
    Hazard("map_neither_read_nor_write",
           "map_pages_op -> iommu_map with neither IOMMUF_readable nor IOMMUF_writable: "
           "VT-d writes a non-present PTE, counts it mapped and leaks the page reference",
           "-EINVAL, nothing mapped"),
)}


def hazard(hv: Hypervisor, d: Domain, name: str, why: str) -> None:
    """Report hazard `name` of HAZARDS met by a call on d."""
    report_hazard(hv, d, HAZARDS[name], why)


def intended(hv: Hypervisor) -> bool:
    """Serve what the header and cover letter say (rev2_semantics "intended")."""
    return hv.config.rev2_semantics == "intended"


def can_use_iommu_check(hv: Hypervisor, d: Domain) -> None:
    """§2: -ENODEV first, for every sub-op; no hardware-domain check."""
    if not hv.config.iommu or not d.iommu_enabled:
        raise HypercallError(XenErrno.ENODEV, "IOMMU disabled for this domain")


def _view(op: SubopCall, layout):
    return layout.parse(op.payload)


def _write(op: SubopCall, layout, fields) -> None:
    op.payload = layout.build(fields)


# -- the handlers (§5, in the code's order) ----------------------------------------

# The fast path (cext/fastpath.c's v2_*) answers the rows marked `fast`
# when the gate passes and the struct is in the frame; each handler below
# says which of its cases it takes. The rest, and everything while the fault
# injector is armed, comes here.

def noop(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """Fast path: always."""
    return 0


def capabilities_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.2: written, never read. Fast path: always (v2_query)."""
    _write(op, Capabilities, dict(
        max_iova_addr=hv.contexts.max_iova_addr,
        # Context 0 is 1:1 unless the hardware domain is no-dma (dom0-iommu=dma=0).
        cap_flags=(0 if d.no_dma else IOMMUCAP_default_identity)
        | (IOMMUCAP_nested | IOMMUCAP_pasid if hv.config.nested else 0),
        pgsize_mask=PAGE_SIZE_4K, max_pasid=hv.config.max_pasid if hv.config.nested else 0,
        max_ctx_no=d.nr_contexts, pad0=0))
    return 0


def init_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.3: init, then (no `break` in v7) alloc_context on the same 8 bytes;
    init's own result only reaches the log. "intended": init's own result,
    no context taken, the struct untouched (the header; D1's `break`)."""
    init = _view(op, Init)
    if intended(hv):
        _init(hv, d, init.max_ctx_no, init.arena_order)
        return 0
    try:
        _init(hv, d, init.max_ctx_no, init.arena_order)
        outcome = "0"
    except XenError as e:       # HypercallError, or the context layer's
        outcome = f"-{XenErrno(e.errno).name} ({e.why})"
    log.debug(PREFIX + "d%d: init -> %s; falling through into alloc_context", d.domid, outcome)
    return alloc_context_op(hv, d, op)


def _init(hv: Hypervisor, d: Domain, max_ctx_no: int, arena_order: int) -> None:
    if max_ctx_no == UINT32_MAX:
        raise HypercallError(XenErrno.E2BIG, "max_ctx_no is UINT32_MAX")
    nb_ctx = (max_ctx_no + 1) & 0xFFFF          # iommu_domain_pviommu_init's uint16_t
    if nb_ctx == 0:
        why = f"max_ctx_no {max_ctx_no} + 1 truncates to 0"
        hazard(hv, d, "init_nb_ctx_zero", why)
        raise HypercallError(XenErrno.E2BIG, why)
    if d.pv_initialized:
        raise XenError(XenErrno.EACCES, "PV-IOMMU already initialised")
    if nb_ctx > 1 and arena_order == 0:
        why = f"{nb_ctx - 1} contexts without an arena (arena_order 0)"
        hazard(hv, d, "init_no_arena", why)
        raise HypercallError(XenErrno.EINVAL, why)
    if arena_order >= 64:
        hazard(hv, d, "init_arena_order_shift", f"arena_order {arena_order}")
    hv.contexts.pviommu_init(d, nb_ctx - 1, arena_order)


def alloc_context_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.4: alloc_flags ignored (but xenemu's dirty-tracking bit on nested
    machines); the lowest free id; ctx_no set on success only."""
    alloc = _view(op, Alloc)
    ctx = hv.contexts.alloc(d)
    if dirty.wants_tracking(hv, alloc.alloc_flags):
        dirty.start_tracking(hv, ctx)
    alloc.ctx_no = ctx.ctx_no
    _write(op, Alloc, alloc)
    return 0


def free_context_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.5: -EBUSY leaves the context dying; with reattach_default the
    devices go to context 0 first (v7 would livelock: §9's choice)."""
    free = _view(op, Free)
    if free.ctx_no == IOMMU_DEFAULT_CONTEXT:
        raise HypercallError(XenErrno.EINVAL, "the default context can't be freed")
    ctx = d.context(free.ctx_no)
    if ctx is None:
        raise HypercallError(XenErrno.ENOENT, f"context {free.ctx_no} not allocated")
    reattach = bool(free.free_flags & IOMMU_FREE_reattach_default)
    nested.before_free(hv, d, ctx, reattach)
    if reattach and ctx.devices:
        hazard(hv, d, "free_reattach_with_devices",
               f"free_context {free.ctx_no} with {len(ctx.devices)} device(s) attached")
    # "intended": a failed free changes nothing; v7's teardown leaves it dying.
    if not hv.contexts.free(d, ctx, reattach_default=reattach,
                            busy_leaves_dying=not intended(hv)):
        return -XenErrno.ERESTART
    return 0


def reattach_device_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.6: a device assigned to d by its machine SBDF; pasid ignored."""
    r = _view(op, ReattachDevice)
    sbdf = pack_sbdf(r.dev.seg, r.dev.bus, r.dev.devfn)
    if sbdf not in d.devices:
        raise HypercallError(XenErrno.ENODEV, "device not assigned to this domain")
    if d.devices[sbdf] == r.ctx_no:
        return 0
    target = d.context(r.ctx_no)
    if target is None:
        raise HypercallError(XenErrno.ENOENT, f"context {r.ctx_no} not allocated")
    if target.dying:
        raise HypercallError(XenErrno.EINVAL, f"context {r.ctx_no} is dying")
    if target.nested:
        raise HypercallError(XenErrno.EINVAL, f"context {r.ctx_no} is nested: devices reach it "
                                              f"through attach_pasid")
    hv.contexts.reattach(d, sbdf, target)
    return 0


def _context(d: Domain, ctx_no: int) -> Context:
    """map/unmap's context: allocated and not 0 (dying ones still map, but
    not one whose teardown is under way), -EINVAL else."""
    ctx = d.context(ctx_no) if ctx_no != IOMMU_DEFAULT_CONTEXT else None
    if ctx is None:
        raise HypercallError(XenErrno.EINVAL, "the default context is not reachable"
                             if ctx_no == IOMMU_DEFAULT_CONTEXT else
                             f"context {ctx_no} not allocated")
    if ctx.nested:
        raise HypercallError(XenErrno.EINVAL, f"context {ctx_no} is nested: its stage 1 is the "
                                              f"guest's table at gfn {ctx.s1_root:#x}")
    if ctx.tearing_down:
        # Xen v7's teardown is never preempted (§5.5): no call sees it half
        # done, only the context gone. xenemu's free continues, and a call
        # between its rounds gets what it gets once the free is over.
        raise HypercallError(XenErrno.EINVAL, f"context {ctx_no} is being freed")
    return ctx


def map_pages_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.7, one round of at most rev2_pages_per_round pages. Fast path
    (v2_map): a live context that is not nested, a permission, a run of one
    round (no continuation), every gfn RAM and no identity range met; the
    run's own failures (a dfn mapped, beyond the width, the arena spent,
    get_page) included."""
    m = _view(op, MapPages)
    ctx = _context(d, m.ctx_no)
    perm = ((hw.PERM_R if m.map_flags & IOMMU_MAP_readable else 0)
            | (hw.PERM_W if m.map_flags & IOMMU_MAP_writeable else 0))
    if not perm:
        why = f"map_flags {m.map_flags:#x}: neither readable nor writeable"
        hazard(hv, d, "map_neither_read_nor_write", why)
        raise HypercallError(XenErrno.EINVAL, why)
    n = min(m.nr_pages, hv.config.rev2_pages_per_round)
    # §6.2: v7 checks the start dfn alone (a run entering a reserved range
    # meets its identity mapping: -EADDRINUSE); the header means every dfn.
    reserved = ctx.identity_at(m.dfn, n if intended(hv) else 1)
    room = n if reserved is None else reserved - m.dfn
    done, err, why = _map_run(hv, d, ctx, m.gfn, m.dfn, room, perm)
    if err is None and room < n:
        err, why = XenErrno.EADDRNOTAVAIL, f"dfn {reserved:#x} is in a reserved (identity) range"
    if err == XenErrno.EADDRINUSE and intended(hv):
        err = XenErrno.EINVAL               # the header's answer to a conflict
    hv.contexts.iotlb_flush(ctx, m.dfn, done)
    return _round_end(op, MapPages, m, "mapped", done, n, err, why)


def _map_run(hv: Hypervisor, d: Domain, ctx: Context, gfn: int, dfn: int, n: int,
             perm: int) -> tuple[int, XenErrno | None, str]:
    """Map n pages gfn.. -> dfn.. as §5.7 step 3 does page by page, a run of
    RAM at a time: (pages done, the error that stopped it, why).
    get_paged_frame (§6.1, v7) on what is not RAM: SHARED is unshared and
    mapped; MMIO maps its frame; FOREIGN is -EPERM unless d is the hardware
    domain, which maps the owner's frame with the reference on it; anything
    frameless (a hole, paged out, paging in) is -ENOENT with no page-in."""
    done = 0
    while done < n:
        backed, err, why = d.p2m.first_non_ram(gfn + done, n - done, page_in=False)
        got, st = hv.contexts.map(ctx, dfn + done, d.p2m.mfns[gfn + done:gfn + done + backed],
                                  perm)
        done += got
        if got < backed:
            err, reason = MAP_STOP[st]
            return done, err, reason.format(dfn + done)
        if err is None:
            break
        g = gfn + done
        kind = d.p2m.type_of(g)
        if kind is P2mType.SHARED:
            failed = hv.unshare(d, g)   # P2M_UNSHARE: private RAM, mapped next time round
            if failed is None:
                continue
            # The page stays dom_cow's: -EPERM (§6.1; the hardware domain's
            # mapping of dom_cow's frame is not modelled).
            return done, XenErrno.EPERM, f"gfn {g:#x} could not be unshared: {failed}"
        if kind is P2mType.MMIO:
            # Xen maps an MMIO frame without a reference (it has no page_info);
            # xenemu's MMIO gfn keeps a frame of the domain, and the reference
            # on it is what lets unmap drop one for every page alike. A run at once.
            k = min(d.p2m.run_end(g) - g, n - done)
            got, st = hv.contexts.map(ctx, dfn + done, d.p2m.mfns[g:g + k], perm)
        elif kind is P2mType.FOREIGN and d.hardware:
            k, (owner, mfn) = 1, hv.foreign_frame(d, g)
            got, st = hv.contexts.map_foreign(d, ctx, dfn + done, owner, mfn, perm)
        elif kind is P2mType.FOREIGN:
            return done, XenErrno.EPERM, f"gfn {g:#x} is d{d.p2m.foreign[g][0]}'s frame " \
                                         f"(only the hardware domain maps foreign pages)"
        else:
            return done, XenErrno.ENOENT, why
        done += got
        if got < k:
            err, reason = MAP_STOP[st]
            return done, err, reason.format(dfn + done)
    return done, None, ""


def unmap_pages_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.8, one round. Fast path (v2_unmap): a live context that is not
    nested and holds no other domain's frames, a run of one round, no
    identity range met; a hole's -ENOENT included."""
    u = _view(op, UnmapPages)
    ctx = _context(d, u.ctx_no)
    n = min(u.nr_pages, hv.config.rev2_pages_per_round)
    # §6.2: v7 checks every dfn against the context's identity ranges.
    reserved = ctx.identity_at(u.dfn, n)
    room = n if reserved is None else reserved - u.dfn
    done = hv.contexts.unmap(ctx, u.dfn, room, flush=False)
    hv.contexts.iotlb_flush(ctx, u.dfn, done)
    err, why = None, ""
    if done < room:
        err, why = XenErrno.ENOENT, f"no mapping at dfn {u.dfn + done:#x}"
    elif room < n:
        err, why = XenErrno.EADDRNOTAVAIL, f"dfn {reserved:#x} is in a reserved (identity) range"
    return _round_end(op, UnmapPages, u, "unmapped", done, n, err, why)


def _round_end(op: SubopCall, layout, s, count: str, done: int, n: int, err, why: str) -> int:
    """The count accumulates on the guest's value (never zeroed); a round
    cut short by the preemption moves gfn/dfn/nr_pages by its pages (§5.11)."""
    s[count] = (s[count] + done) & UINT32_MAX
    restart = err is None and n < s.nr_pages
    if restart:
        if "gfn" in s:
            s.gfn += n
        s.dfn += n
        s.nr_pages -= n
    _write(op, layout, s)
    if err is not None:
        raise HypercallError(err, why)
    return -XenErrno.ERESTART if restart else 0


def remote_cmd_op(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """§5.9: the hardware domain runs a sub-op on another domain, the inner
    struct in its own memory. Order: nested, copy, permission, target."""
    if op.nested:
        raise HypercallError(XenErrno.EINVAL, "remote_cmd inside remote_cmd")
    if op.copy_in(SIZES["remote_cmd"]) is None:
        raise HypercallError(XenErrno.EFAULT, f"copy_from_guest of {op.handle:#x} failed")
    cmd = _view(op, RemoteCmd)
    if not d.hardware:
        raise HypercallError(XenErrno.EPERM, "remote_cmd from a non-hardware domain")
    target = hv.domains.get(cmd.domid)
    if target is None:
        raise HypercallError(XenErrno.ENOENT, f"no domain {cmd.domid}")
    if not hv.config.iommu or not target.iommu_enabled:
        why = f"remote_cmd to d{cmd.domid}, whose IOMMU is off"
        hazard(hv, d, "remote_cmd_iommu_off", why)
        raise HypercallError(XenErrno.ENODEV, why)
    ret = IOMMU_OP.execute_subop(hv, target, cmd.subop, cmd.arg, op.mem, nested=True)
    if ret < 0 and ret != -XenErrno.ERESTART:
        raise HypercallError(-ret, f"on d{cmd.domid}")
    return ret


# -- the table -----------------------------------------------------------------

_RW = IOMMU_MAP_readable | IOMMU_MAP_writeable

SUBOPS = (
    SubOp(IOMMU_noop, "noop", noop, fast=True),
    SubOp(IOMMU_query_capabilities, "query_capabilities", capabilities_op, fast=True,
          layout=Capabilities, size=24, reads=False,
          outputs=("max_iova_addr", "cap_flags", "pgsize_mask", "max_ctx_no")),
    SubOp(IOMMU_init, "init", init_op, layout=Init, size=8,
          inputs=("max_ctx_no", "arena_order"), params=("max_ctx_no", "arena_order")),
    SubOp(IOMMU_alloc_context, "alloc_context", alloc_context_op, layout=Alloc, size=8,
          inputs=("alloc_flags",), outputs=("ctx_no",), params=(("alloc_flags", 0),)),
    SubOp(IOMMU_free_context, "free_context", free_context_op, layout=Free, size=8,
          copy_back=False, inputs=("ctx_no", "free_flags"),
          params=("ctx_no", ("free_flags", 0))),
    SubOp(IOMMU_reattach_device, "reattach_device", reattach_device_op,
          layout=ReattachDevice, size=12, copy_back=False, inputs=("ctx_no", "dev"),
          params=("ctx_no", ("seg", 0), ("bus", 0), ("devfn", 0), ("pasid", 0))),
    SubOp(IOMMU_map_pages, "map_pages", map_pages_op, layout=MapPages, size=40, fast=True,
          inputs=("ctx_no", "gfn", "dfn", "nr_pages", "map_flags"),
          outputs=("mapped",), outputs_on_error=True, pages="mapped",
          params=("ctx_no", "gfn", "dfn", "nr_pages", ("map_flags", _RW),
                  ("pgsize", PAGE_SIZE_4K), ("mapped", 0))),
    SubOp(IOMMU_unmap_pages, "unmap_pages", unmap_pages_op, layout=UnmapPages, size=32, fast=True,
          inputs=("ctx_no", "dfn", "nr_pages"), outputs=("unmapped",),
          outputs_on_error=True, pages="unmapped",
          params=("ctx_no", "dfn", "nr_pages", ("pgsize", PAGE_SIZE_4K), ("unmapped", 0))),
    SubOp(IOMMU_remote_cmd, "remote_cmd", remote_cmd_op, layout=RemoteCmd, size=16,
          reads=False, copy_back=False, inputs=("domid", "subop", "arg"),
          params=("domid", "subop", ("arg", 0))),
    # 9-12: -EOPNOTSUPP with arg untouched unless the machine is `nested`,
    # so the handlers copy their structs themselves (reads/copy_back off).
    SubOp(IOMMU_alloc_nested, "alloc_nested", nested.alloc_nested_op, layout=AllocNested,
          size=24, reads=False, copy_back=False, inputs=("ctx_no", "pgtable_gfn", "nested_flags"),
          outputs=("ctx_no",), params=("pgtable_gfn", ("ctx_no", 0), ("nested_flags", 0))),
    SubOp(IOMMU_flush_nested, "flush_nested", nested.flush_nested_op, layout=FlushNested,
          size=24, reads=False, copy_back=False,
          inputs=("ctx_no", "flush_type", "pasid", "dfn", "nr_pages"),
          params=("ctx_no", ("flush_type", 0), ("pasid", 0), ("dfn", 0), ("nr_pages", 0))),
    SubOp(IOMMU_attach_pasid, "attach_pasid", nested.attach_pasid_op, layout=AttachPasid,
          size=12, reads=False, copy_back=False, inputs=("ctx_no", "dev", "pasid"),
          params=("ctx_no", "pasid", ("seg", 0), ("bus", 0), ("devfn", 0))),
    SubOp(IOMMU_detach_pasid, "detach_pasid", nested.detach_pasid_op, layout=DetachPasid,
          size=8, reads=False, copy_back=False, inputs=("dev", "pasid"),
          params=("pasid", ("seg", 0), ("bus", 0), ("devfn", 0))),
    # 13: xenemu's dirty tracking (nested machines), past v7's table.
    SubOp(dirty.IOMMU_read_dirty, "read_dirty", dirty.read_dirty_op, layout=dirty.ReadDirty,
          size=32, reads=False, copy_back=False,
          inputs=("ctx_no", "dfn", "nr_pages", "flags", "bitmap"), outputs=("nr_dirty",),
          params=("ctx_no", "dfn", "nr_pages", ("flags", 0), ("bitmap", 0), ("nr_dirty", 0))),
    # 14-15: I/O page faults, xenemu's extension too (iommu_op_prq).
    SubOp(prq.IOMMU_read_page_requests, "read_page_requests", prq.read_page_requests_op,
          layout=prq.ReadPageRequests, size=24, reads=False, copy_back=False,
          inputs=("ctx_no", "max", "requests"), outputs=("count",),
          params=("ctx_no", "requests", ("max", hw.PRQ_PER_CTX), ("count", 0))),
    SubOp(prq.IOMMU_page_response, "page_response", prq.page_response_op,
          layout=prq.PageResponse, size=8, reads=False, copy_back=False,
          inputs=("ctx_no", "group", "code"), params=("ctx_no", "group", ("code", 0))),
)

IOMMU_OP = Hypercall(
    number=HYPERVISOR_iommu_op, name="iommu_op", revision=PV_IOMMU_REVISION,
    subops={row.number: row for row in SUBOPS},
    op_type=SubopCall, head_names=(), head_text="",
    subop_arg=0, handle_arg=1, subop_field="subop", unknown_errno=XenErrno.EOPNOTSUPP,
    log=log, log_prefix=PREFIX, gate=can_use_iommu_check,
    hex_fields=frozenset({"gfn", "dfn", "pgtable_gfn", "map_flags", "free_flags", "alloc_flags",
                          "bitmap",
                          "cap_flags", "pgsize_mask", "max_iova_addr", "arg", "requests"}),
    formatters={"dev": format_device}, map_stop=MAP_STOP,
)


# -- building and reading the structs (clients and tests) -------------------------

def encode(row: SubOp, **params) -> bytes:
    """A sub-op's struct from a client helper's params (a nested dev's seg,
    bus, devfn given flat); b"" for a sub-op without one."""
    if row.layout is None:
        return b""
    values = row.layout.parse(bytes(row.size))
    for name, value in params.items():
        if "dev" in values and name in values.dev:
            values.dev[name] = value
        else:
            values[name] = value
    return row.layout.build(values)


def decode(subop: int, raw: bytes):
    """The struct of sub-op `subop` as a Container (tests, clients)."""
    return SUBOPS_BY_NUMBER[subop].layout.parse(raw)


SUBOPS_BY_NUMBER = {row.number: row for row in SUBOPS}
