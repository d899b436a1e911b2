"""The Xen model's IOMMU context layer: the one Xen-side user of the
hardware's contexts, as Xen's xen/drivers/passthrough/iommu.c and the
context code of the PV-IOMMU series are for the vendor IOMMU driver.

Everything a domain's IOMMU contexts go through is here: a domain's
contexts at its creation and destruction (context 0 mapping its RAM 1:1,
the pool of PV-IOMMU contexts, two page-table budgets each: `default_pool`
for context 0, `table_pool` for the others), a PV-IOMMU context's alloc and
free (the teardown in slices behind free_context's -ERESTART), mapping with
one page reference per page and the IOTLB flush, unmapping, device moves
(assign, reattach, deassign into quarantine), the 1:1 map's upkeep when the
p2m changes, and the invariant check over all of it. The hypercall handlers,
the Hypervisor's machine-level operations and snapshot restore call these;
none of them drives a hardware context itself.

Failures a caller reports are XenError(errno, why); the hardware's HwError
stays inside, except where a caller (snapshot restore) is the one to word it.
"""

from __future__ import annotations

import logging
import re
from array import array
from collections import Counter

from . import hw
from .domain import Context, Domain
from .errno import XenErrno, XenError
from .hw.common import MAX_POOLS
from .machine import MAX_ARENA_ORDER
from .p2m import P2m
from .pci import format_sbdf
from .runs import mapping_runs

log = logging.getLogger("xenemu.hypervisor")
flush_log = logging.getLogger("xenemu.pv_iommu")

# Leaf slots a preemptible teardown (free_context) does before it lets
# others in: the hypercall returns -ERESTART and is called again.
TEARDOWN_SLICE = 1 << 16

# What table_pages 0 ("no limit") counts as where the configuration did not
# choose the tables made: context 0's, which a guest fills (Xen does not bound
# them: see the README's divergences; ~3 table pages per far-apart 4 KiB page
# until the machine's memory is gone), whose limit is what its 1:1 map took
# plus the domain's table_pages, and those a snapshot's mappings make while it
# is restored (a file must not choose how many).
NO_LIMIT_TABLES = 1 << 16
POOLS_PER_DOMAIN = 2    # one for its PV-IOMMU contexts, one for context 0

SCAN = 1 << 18          # entries of a context read per lookup_run (mapping_runs)

# Why a 1:1 map of context 0 stopped, in words.
_IDENTITY_STOP = {hw.Status.NOMEM: "no machine memory left for I/O page tables",
                  hw.Status.INJECTED: "a page reference failed (injected)"}


class IommuContexts:
    """The IOMMU contexts of every domain of a machine, and DomIO's quarantine."""

    def __init__(self, memory, iommu, rmrr=()):
        self.memory = memory
        self.iommu = iommu
        # Each device's reserved ranges (RMRRs, the machine's [[rmrr]]):
        # sbdf -> [(start pfn, pages)], in file order.
        self.rmrrs: dict[int, list[tuple[int, int]]] = {}
        for sbdf, start, pages in rmrr:
            self.rmrrs.setdefault(sbdf, []).append((start, pages))
        # DomIO's quarantine context: nothing mapped, so a quarantined device's DMA faults.
        self.quarantine = iommu.alloc_context()
        self.quarantined: set[int] = set()
        # Table-page budgets, POOLS_PER_DOMAIN IOMMU pools per domain (pool 0: no limit).
        self._free_pools = list(range(MAX_POOLS - 1, 0, -1))
        # References other domains' IOMMU mappings hold on a domain's frames
        # (revision 2's foreign frames, §6.1), by owner here and by mapping
        # context in Context.foreign_refs: the invariant check and the
        # owner's destruction need them.
        self.lent: dict[int, int] = {}                  # owner domid -> references
        self.max_iova_addr = iommu.max_iova_addr
        self.last_dfn = iommu.max_iova_addr >> hw.PAGE_SHIFT

    # -- a domain's contexts (iommu_domain_init / iommu_domain_destroy) ----------

    def can_init_domain(self) -> bool:
        return len(self._free_pools) >= POOLS_PER_DOMAIN

    def init_domain(self, d: Domain, table_pages: int) -> None:
        """Give d its budgets and context 0, mapping its RAM 1:1 (not for a
        no-dma domain: its devices' DMA faults until the guest attaches them
        to a context it mapped). XenError (ENOMEM) if that fails, with nothing
        of it left behind."""
        d.table_pool, d.default_pool = self._free_pools.pop(), self._free_pools.pop()
        for pool in (d.table_pool, d.default_pool):     # a past domain's counts go
            self.iommu.clear_pool_counters(pool)
        try:
            default = d.contexts[0] = Context(0, self.iommu.alloc_context(), d.domid)
        except hw.HwError as e:
            self._free_pools += [d.default_pool, d.table_pool]
            raise XenError(XenErrno.ENOMEM, f"no default context for d{d.domid}: {e}") from None
        self.iommu.set_pool_limit(d.table_pool, table_pages)
        self.iommu.set_context_pool(default.hw_id, d.default_pool)   # no limit yet: fits
        st = hw.Status.OK if d.no_dma else self.identity_map(d, default, 0, d.p2m.nr_pages)
        if st != hw.Status.OK:
            self.destroy_domain(d)
            raise XenError(XenErrno.ENOMEM, f"d{d.domid}'s default context could not map its "
                                            f"memory: {_IDENTITY_STOP.get(st, st.name)}")
        # Pages of its 1:1 map never need a table again (unmap leaves tables
        # in place), so the spare is what the guest may map elsewhere.
        identity_tables = self.iommu.pool_usage(d.default_pool)[0]
        self.iommu.set_pool_limit(d.default_pool, identity_tables +
                                  (table_pages or NO_LIMIT_TABLES))

    def destroy_domain(self, d: Domain) -> None:
        """Free d's contexts (dropping their references) and its budgets;
        its devices must have left them (deassign_device), and their PASIDs
        with them. Nested contexts go before their stage 2."""
        for ctx in sorted((c for c in d.contexts if c is not None), key=lambda c: not c.nested):
            self.teardown(d, ctx, budget=None)
        for pool in (d.default_pool, d.table_pool):
            self.iommu.set_pool_limit(pool, 0)
            self._free_pools.append(pool)

    def table_budget(self, d: Domain) -> tuple[int, int]:
        """(table pages held, limit) of d's PV-IOMMU contexts (0: no limit)."""
        return self.iommu.pool_usage(d.table_pool)

    def set_table_budget(self, d: Domain, limit: int) -> None:
        self.iommu.set_pool_limit(d.table_pool, limit)

    def _pool_of(self, d: Domain, ctx: Context) -> int:
        return d.default_pool if ctx.ctx_no == 0 else d.table_pool

    # -- PV-IOMMU contexts ---------------------------------------------------------

    def alloc(self, d: Domain, ctx_no: int | None = None, clone: bool = False) -> Context:
        """A new context in slot ctx_no (None: the lowest free one, as
        iommu_context_alloc), its tables counted against d's budget; with
        `clone`, d's RAM mapped 1:1. XenError ENOSPC / ENOMEM."""
        ctx_no = _slot(d, ctx_no)
        try:
            hw_ctx = self.iommu.alloc_context()
        except hw.HwError as e:
            raise XenError(XenErrno.ENOMEM, f"no hardware context: {e}") from None
        ctx = d.contexts[ctx_no] = Context(ctx_no, hw_ctx, d.domid)
        try:
            # Its tables, root included, come out of the domain's budget.
            self.iommu.set_context_pool(hw_ctx, d.table_pool)
        except hw.HwError:
            self.teardown(d, ctx, budget=None)
            used, limit = self.iommu.pool_usage(d.table_pool)
            raise XenError(XenErrno.ENOMEM,
                           f"page-table budget spent ({used} of {limit} pages)") from None
        if clone:
            st = self.identity_map(d, ctx, 0, d.p2m.nr_pages)
            if st != hw.Status.OK:
                self.teardown(d, ctx, budget=None)
                raise XenError(XenErrno.ENOMEM, f"clone stopped: {st.name}")
        return ctx

    def pviommu_init(self, d: Domain, nr_contexts: int, arena_order: int) -> None:
        """Revision 2's init (iommu_domain_pviommu_init): d gets a pool of
        nr_contexts contexts (ids 1..nr_contexts, none allocated) whose page
        tables come from an arena of 2^arena_order pages: the domain's
        table_pool with that limit. Once only: XenError EACCES after any
        earlier attempt, as the flag is set before anything can fail (and a
        failure leaves it set: Xen's TODO), ENOMEM for an arena too large."""
        if d.pv_initialized:
            raise XenError(XenErrno.EACCES, "PV-IOMMU already initialised")
        d.pv_initialized = True
        if arena_order > MAX_ARENA_ORDER:
            raise XenError(XenErrno.ENOMEM, f"no arena of 2^{arena_order} pages "
                                            f"(at most 2^{MAX_ARENA_ORDER}); init stays spent")
        d.contexts.grow(nr_contexts)
        self.iommu.set_pool_limit(d.table_pool, 1 << arena_order if arena_order else 0)

    def free(self, d: Domain, ctx: Context, reattach_default: bool,
             busy_leaves_dying: bool = False) -> bool:
        """Free a PV-IOMMU context, preemptibly: its devices go back to
        context 0 if `reattach_default` (else XenError EBUSY, and with
        `busy_leaves_dying` the context stays dying as Xen v7's teardown
        leaves it), then one slice of its teardown. True when it is gone;
        False: call again. (A teardown under way has no devices: they left
        on its first round, and reattach refuses a dying context.)"""
        if ctx.devices:
            if not reattach_default:
                ctx.dying = ctx.dying or busy_leaves_dying
                raise XenError(XenErrno.EBUSY, f"{len(ctx.devices)} device(s) still attached")
            for sbdf in sorted(ctx.devices):
                self.reattach(d, sbdf, d.contexts[0])
        return self.teardown(d, ctx, budget=TEARDOWN_SLICE)

    def teardown(self, d: Domain, ctx: Context, budget: int | None) -> bool:
        """Tear ctx down by slices of `budget` leaf slots (None: all at once),
        dropping the page references its mappings held. True when finished.
        (Its devices have left, and their identity ranges with them.)"""
        assert not ctx.identity, "a context is torn down after its devices left"
        ctx.dying = ctx.tearing_down = True
        slice_ = budget or (1 << 20)
        while True:
            mfns, finished = self.iommu.teardown(ctx.hw_id, slice_)
            self.memory.put_refs(mfns)
            self._returned(ctx, mfns)
            if finished:
                d.contexts[ctx.ctx_no] = None
                return True
            if budget is not None:
                return False

    # -- nested contexts and PASIDs (xenemu's extension, abi/NESTED.md) --------------

    def alloc_nested(self, d: Domain, parent: Context, s1_root: int,
                     ctx_no: int | None = None, page_requests: bool = False) -> Context:
        """A nested context in slot ctx_no (None: d's lowest free one):
        stage 1 the guest's table at frame s1_root of parent's input space,
        stage 2 parent. XenError ENOSPC (no slot), EEXIST (ctx_no not a free
        slot), ERANGE (root beyond the width), ENOMEM. page_requests: its
        stage-1 not-present faults become page requests (I/O page faults)."""
        if s1_root > self.last_dfn:
            raise XenError(XenErrno.ERANGE, f"pgtable_gfn {s1_root:#x} is beyond the IOMMU's "
                                            f"width")
        ctx_no = _slot(d, ctx_no)
        try:
            hw_id = self.iommu.alloc_nested(parent.hw_id, s1_root)
        except hw.HwError as e:
            raise XenError(XenErrno.ENOMEM, f"no hardware context: {e}") from None
        if page_requests:
            self.iommu.enable_page_requests(hw_id)
        ctx = d.contexts[ctx_no] = Context(ctx_no, hw_id, d.domid, parent=parent.ctx_no,
                                           s1_root=s1_root, page_requests=page_requests)
        return ctx

    def attach_pasid(self, sbdf: int, pasid: int, ctx: Context) -> None:
        """Bind the device's PASID to nested ctx. XenError EEXIST (bound
        already), ENOSPC (the machine's binding table is full)."""
        try:
            self.iommu.attach_pasid(sbdf, pasid, ctx.hw_id)
        except hw.HwError as e:
            if e.status == hw.Status.EXISTS:
                raise XenError(XenErrno.EEXIST, f"{format_sbdf(sbdf)} PASID {pasid} is "
                                                f"attached already") from None
            raise XenError(XenErrno.ENOSPC, f"all {hw.MAX_PASID_BINDS} PASID bindings of the "
                                            f"machine in use") from None
        ctx.pasids.add((sbdf, pasid))

    def detach_pasid(self, d: Domain, sbdf: int, pasid: int) -> None:
        """Unbind the device's PASID (XenError ENOENT if it is not bound)."""
        for ctx in d.contexts:
            if ctx is not None and (sbdf, pasid) in ctx.pasids:
                self.iommu.detach_pasid(sbdf, pasid)
                ctx.pasids.discard((sbdf, pasid))
                return
        raise XenError(XenErrno.ENOENT, f"{format_sbdf(sbdf)} PASID {pasid} is not attached")

    def _detach_device_pasids(self, d: Domain, sbdf: int) -> None:
        for ctx in d.contexts:
            for pair in [p for p in (ctx.pasids if ctx is not None else ()) if p[0] == sbdf]:
                self.detach_pasid(d, *pair)

    def flush_nested(self, ctx: Context, pasid: int | None, dfn: int = 0, n: int = 0) -> None:
        """The guest's invalidation of its stage 1: pages [dfn, dfn + n) of
        `pasid`, or (None) all of ctx. A failed flush is only logged, as
        iotlb_flush's."""
        try:
            self.iommu.invalidate_nested(ctx.hw_id, pasid, dfn, n)
        except hw.HwError as e:
            flush_log.warning("[PV-IOMMU] flush_nested failed: ctx %d (%s)", ctx.ctx_no,
                              e.status.name)

    def _page_request_problems(self, d: Domain, ctx: Context) -> list[str]:
        """A nested context's outstanding page requests come from its bound
        PASIDs, and only a context with page requests has any."""
        if not ctx.nested:
            return []
        return [f"d{d.domid}: page request {r.group} of nested context {ctx.ctx_no} from "
                f"{format_sbdf(r.sbdf)} PASID {r.pasid}, "
                f"{'not bound there' if ctx.page_requests else 'which makes none'}"
                for r in self.iommu.page_requests()
                if r.ctx == ctx.hw_id and (not ctx.page_requests
                                           or (r.sbdf, r.pasid) not in ctx.pasids)]

    def guest_bugs(self) -> list[str]:
        """What guests did wrong that hardware would let them: IOTLB entries
        of nested contexts their stage-1 edits left stale (no flush_nested)."""
        stale = self.iommu.nested_stale_iotlb_entries()
        if not stale:
            return []
        return [f"{stale} IOTLB entr{'y' if stale == 1 else 'ies'} of nested contexts cache a "
                f"stage-1 translation the guest changed without flush_nested"]

    # -- mappings --------------------------------------------------------------------

    def map(self, ctx: Context, dfn: int, mfns, perm: int) -> tuple[int, hw.Status]:
        """Map dfn.. -> mfns with one page reference each, as Xen's get_page
        then iommu_map page by page: (pages mapped, why it stopped). The
        IOTLB needs no flush for it (nothing not-present is cached)."""
        done, st = self.iommu.map_referenced(ctx.hw_id, dfn, mfns, perm)
        return done, hw.Status(st)

    def unmap(self, ctx: Context, dfn: int, n: int, flush: bool = True) -> int:
        """Unmap n pages from dfn up to the first hole, dropping their page
        references: the pages done. Without `flush` the caller flushes
        (iotlb_flush), once over its whole range, as Xen defers it."""
        done, _, mfns = self.iommu.unmap(ctx.hw_id, dfn, n, flush=flush)
        self.memory.put_refs(mfns)
        self._returned(ctx, mfns)
        return done

    def map_foreign(self, d: Domain, ctx: Context, dfn: int, owner: int, mfn: int,
                    perm: int) -> tuple[int, hw.Status]:
        """Map dfn -> another domain's frame (§6.1: the hardware domain's
        foreign or grant page), the page reference on the owner's frame."""
        done, st = self.map(ctx, dfn, array("Q", [mfn]), perm)
        if done:
            ctx.foreign_refs += 1
            self.lent[owner] = self.lent.get(owner, 0) + 1
        return done, st

    def _returned(self, ctx: Context, mfns) -> None:
        """Mappings of ctx went (unmap, teardown): the references on other
        domains' frames among them leave the foreign accounting."""
        if not ctx.foreign_refs or not len(mfns):
            return
        for owner, count in Counter(self.memory.owners(mfns)).items():
            if owner != ctx.domid:
                ctx.foreign_refs -= count
                self.lent[owner] -= count
                if not self.lent[owner]:
                    del self.lent[owner]

    def iotlb_flush(self, ctx: Context, dfn: int, nr_pages: int) -> None:
        """iommu_iotlb_flush over [dfn, dfn + nr_pages) (clipped to the width).

        A failed flush changes no status: the reference only prints "Flush
        operation failed", and the IOTLB keeps what it cached."""
        if nr_pages and dfn <= self.last_dfn:
            try:
                self.iommu.invalidate_pages(ctx.hw_id, dfn, min(nr_pages, self.last_dfn - dfn + 1))
            except hw.HwError as e:
                flush_log.warning("[PV-IOMMU] Flush operation failed (%d): ctx %d dfn %#x "
                                  "nr_pages %d (%s)", -XenErrno.ETIMEDOUT, ctx.ctx_no, dfn,
                                  nr_pages, e.status.name)

    def lookup_gfn(self, ctx: Context, dfn: int) -> int | None:
        """The gfn mapped at dfn (through the M2P), or None."""
        if dfn > self.last_dfn:
            return None
        found = self.iommu.lookup(ctx.hw_id, dfn)
        if found is None:
            return None
        return self.memory.m2p(array("Q", [found[0]]))[0]

    def mapping_runs(self, ctx: Context) -> tuple[list[list[int]], int]:
        """ctx's mappings as runs [dfn, gfn, count, perm] in dfn order, and
        how many mappings it counts that the scan did not find (0).

        Read SCAN entries at a time, each read starting at the next mapped
        dfn (the hardware skips empty tables whole), until every mapping the
        context counts is found: the cost follows the mappings, not the width."""
        io = self.iommu
        left = io.context_info(ctx.hw_id).mapped
        runs: list[list[int]] = []
        dfn = 0
        while left and (dfn := io.next_mapped(ctx.hw_id, dfn)) is not None:
            n = min(SCAN, self.last_dfn - dfn + 1)
            mfns, perms = io.lookup_run(ctx.hw_id, dfn, n)
            for off, gfn, count, perm in mapping_runs(self.memory.m2p(mfns), perms):
                _add_run(runs, dfn + off, gfn, count, perm)
                left -= count
            dfn += n
        return runs, left

    def budget_spent(self, d: Domain, ctx: Context) -> bool:
        """Whether ctx's pool has used up a limit it has."""
        used, limit = self.iommu.pool_usage(self._pool_of(d, ctx))
        return bool(limit) and used >= limit

    # -- context 0's 1:1 map and the p2m --------------------------------------------

    def identity_map(self, d: Domain, ctx: Context, gfn: int, n: int) -> hw.Status:
        """Map d's RAM gfns in [gfn, gfn + n) 1:1 into ctx, one reference per page.

        Used for the default context, for pages that become RAM again, and for
        a cloned context. Returns the IOMMU's status if it stopped early."""
        for start, count in _ram_runs_within(d.p2m, gfn, n):
            done, st = self.iommu.map_referenced(ctx.hw_id, start, d.p2m.mfns[start:start + count],
                                                 hw.PERM_RW)
            if done != count:
                return hw.Status(st)
        return hw.Status.OK

    def unmap_1to1(self, d: Domain, gfn: int, n: int) -> int | None:
        """Context 0's 1:1 pages of gfns [gfn, gfn + n) go (they stop being
        RAM), but for the dfns its identity ranges hold. None when done, else
        the first gfn that was not mapped 1:1 (its pages up to there gone)."""
        ctx = d.contexts[0]
        edges = sorted({gfn, gfn + n} | {e for start, pages, _ in ctx.identity
                                         for e in (start, start + pages) if gfn < e < gfn + n})
        for lo, hi in zip(edges, edges[1:]):
            if ctx.identity_at(lo) is not None:
                continue
            for at in range(lo, hi, SCAN):
                k = min(SCAN, hi - at)
                done = self.unmap(ctx, at, k)
                if done != k:
                    return at + done
        return None

    def page_in(self, d: Domain, gfn: int) -> hw.Status:
        """Context 0 maps a page that became RAM again at dfn == gfn; a dfn
        the guest took over there (PRESENT) is left to the guest; a no-dma
        domain's context 0 maps nothing."""
        if d.no_dma:
            return hw.Status.OK
        st = self.identity_map(d, d.contexts[0], gfn, 1)
        return hw.Status.OK if st == hw.Status.PRESENT else st

    def paged_in(self, d: Domain, gfn: int) -> bool:
        """A page-in completes; False (it waits) if context 0 could not map it."""
        st = self.page_in(d, gfn)
        if st != hw.Status.OK:
            log.warning("d%d: page-in of gfn %#x waits: the default context could not map it (%s)",
                        d.domid, gfn, st.name)
            return False
        return True

    def page_out(self, d: Domain, gfn: int) -> None:
        """A RAM gfn stops being RAM: context 0's 1:1 page goes. XenError
        EBUSY if the page has other references, as Xen refuses to page out
        or share a page with extra references."""
        mfn = d.p2m.mfns[gfn]
        # Context 0 maps dfn == gfn unless the guest remapped that dfn.
        identity = self.iommu.lookup(d.contexts[0].hw_id, gfn)
        identity = identity is not None and identity[0] == mfn
        extra = self.memory.refcounts(array("Q", [mfn]))[0] - identity
        if extra > 0:
            raise XenError(XenErrno.EBUSY, f"gfn {gfn:#x} is mapped in {extra} other place(s): "
                                           f"PV-IOMMU contexts, or context 0 at another dfn")
        if identity:
            self.unmap(d.contexts[0], gfn, 1)

    # -- devices ------------------------------------------------------------------------

    def assign_device(self, d: Domain, sbdf: int) -> None:
        """A device (new, or from quarantine) goes to d's context 0, its
        reserved ranges identity-mapped there (XenError if they cannot be:
        the device stays where it was)."""
        default = d.contexts[0]
        self._identity_enter(d, default, sbdf)
        if sbdf not in self.quarantined:
            self.iommu.add_device(sbdf)
        self.quarantined.discard(sbdf)
        self.iommu.attach(sbdf, default.hw_id)
        default.devices.add(sbdf)
        d.devices[sbdf] = 0

    def deassign_device(self, d: Domain, sbdf: int) -> None:
        """A device of d goes into quarantine, where its DMA faults (its
        reserved ranges too: DomIO's quarantine context maps nothing)."""
        self._detach_device_pasids(d, sbdf)
        self.iommu.attach(sbdf, self.quarantine)
        ctx = d.contexts[d.devices.pop(sbdf)]
        ctx.devices.discard(sbdf)
        self._identity_leave(d, ctx, sbdf)
        self.quarantined.add(sbdf)

    def quarantine_device(self, sbdf: int) -> None:
        """A device of no domain, registered straight into quarantine."""
        self.iommu.add_device(sbdf)
        self.iommu.attach(sbdf, self.quarantine)
        self.quarantined.add(sbdf)

    def reattach(self, d: Domain, sbdf: int, target: Context) -> None:
        """Switch a device's context entry in one store (no blocked window),
        as VT-d's reattach does it: the device's reserved ranges are mapped
        into the target first (XenError EINVAL if they cannot be: nothing
        changes), removed from the context it leaves after."""
        self._identity_enter(d, target, sbdf)
        self.iommu.attach(sbdf, target.hw_id)
        current = d.contexts[d.devices[sbdf]]
        current.devices.discard(sbdf)
        self._identity_leave(d, current, sbdf)
        target.devices.add(sbdf)
        d.devices[sbdf] = target.ctx_no

    # -- reserved ranges: identity maps (x86 iommu_identity_mapping, per context) -----

    def _identity_enter(self, d: Domain, ctx: Context, sbdf: int) -> None:
        """The device's RMRRs into ctx: a range already there gains a user,
        a new one is mapped dfn == mfn, read-write, with no page reference
        (the frames are DomIO's; Xen's identity maps take none). In context
        0 the 1:1 RAM pages at those dfns give way (as a PV dom0's RAM is
        never at an RMRR's frames) and come back when the range goes. All or
        nothing: XenError EINVAL (VT-d's answer to a failed RMRR map) if a
        page is mapped there already or no table page is left."""
        added: list[tuple[int, int]] = []
        for start, pages in self.rmrrs.get(sbdf, ()):
            if ctx.identity_users(start, pages, +1) is not None:     # there already
                added.append((start, pages))
                continue
            if ctx.ctx_no == 0:
                self._unmap_present(ctx, start, pages)
            done, st = self.iommu.map(ctx.hw_id, start, range(start, start + pages), hw.PERM_RW)
            if done != pages:
                self.iommu.unmap(ctx.hw_id, start, done)
                if ctx.ctx_no == 0 and not d.no_dma:
                    self.identity_map(d, ctx, start, pages)
                for range_ in added:
                    self._identity_drop(d, ctx, *range_)
                why = {hw.Status.PRESENT: f"dfn {start + done:#x} is mapped already",
                       hw.Status.RANGE: "beyond the IOMMU's address width"}.get(
                           hw.Status(st), f"no page-table page left ({hw.Status(st).name})")
                raise XenError(XenErrno.EINVAL, f"{format_sbdf(sbdf)}'s reserved range "
                                                f"{start:#x}+{pages} can't be identity-mapped "
                                                f"in context {ctx.ctx_no}: {why}")
            ctx.identity_add(start, pages)
            added.append((start, pages))

    def _identity_leave(self, d: Domain, ctx: Context, sbdf: int) -> None:
        """The device left ctx: each of its ranges loses a user, and goes
        (unmapped, flushed) with the last."""
        for start, pages in self.rmrrs.get(sbdf, ()):
            self._identity_drop(d, ctx, start, pages)

    def _identity_drop(self, d: Domain, ctx: Context, start: int, pages: int) -> None:
        left = ctx.identity_users(start, pages, -1)
        assert left is not None, f"context {ctx.ctx_no} has no identity range {start:#x}+{pages}"
        if left:
            return          # other devices still use it
        self.iommu.unmap(ctx.hw_id, start, pages, flush=True)
        if ctx.ctx_no == 0 and not d.no_dma:
            self.identity_map(d, ctx, start, pages)     # its RAM 1:1 again, where RAM

    def _unmap_present(self, ctx: Context, dfn: int, n: int) -> None:
        """Unmap whatever is mapped in [dfn, dfn + n), run by run, dropping
        the references (context 0's 1:1 RAM pages)."""
        _, perms = self.iommu.lookup_run(ctx.hw_id, dfn, n)
        for run in re.finditer(rb"[^\x00]+", perms.tobytes()):
            self.unmap(ctx, dfn + run.start(), run.end() - run.start())

    # -- invariants ------------------------------------------------------------------

    def check(self, domains) -> list[str]:
        """What is inconsistent, as readable sentences; empty when all holds.

        As iommufd's self-test does: every mapping holds one page reference
        (so a domain's references equal its contexts' mappings and drop to
        zero with them), every device is attached where its domain says, and
        no IOTLB entry went stale (check mode counts them).
        """
        problems = []
        for d in domains:
            mapped = 0
            for ctx in d.contexts:
                if ctx is None:
                    continue
                # Identity pages hold no reference: they are DomIO's frames.
                mapped += self.iommu.context_info(ctx.hw_id).mapped - \
                    sum(pages for _, pages, _ in ctx.identity)
                problems += self._identity_problems(d, ctx)
                for sbdf, pasid in ctx.pasids:
                    if self.iommu.pasid_context(sbdf, pasid) != ctx.hw_id:
                        problems.append(f"d{d.domid}: {format_sbdf(sbdf)} PASID {pasid} is not "
                                        f"bound to nested context {ctx.ctx_no}")
                problems += self._page_request_problems(d, ctx)
                for sbdf in ctx.devices:
                    if d.devices.get(sbdf) != ctx.ctx_no:
                        problems.append(f"d{d.domid}: {format_sbdf(sbdf)} listed in context "
                                        f"{ctx.ctx_no} but recorded in {d.devices.get(sbdf)}")
            # Mappings of other domains' frames hold their references there
            # (revision 2's foreign frames), and theirs of d's frames here.
            borrowed = sum(ctx.foreign_refs for ctx in d.contexts if ctx is not None)
            mapped += self.lent.get(d.domid, 0) - borrowed
            refs = sum(self.memory.refcounts(d.p2m.mfns))
            if refs != mapped:
                foreign = (f" (foreign: {self.lent.get(d.domid, 0)} lent, {borrowed} borrowed)"
                           if borrowed or d.domid in self.lent else "")
                problems.append(f"d{d.domid}: {refs} page references for {mapped} mappings"
                                + foreign)
            for sbdf, ctx_no in d.devices.items():
                ctx = d.context(ctx_no)
                if ctx is None or self.iommu.device_context(sbdf) != ctx.hw_id:
                    problems.append(f"d{d.domid}: {format_sbdf(sbdf)} is not attached to "
                                    f"context {ctx_no}")
        for sbdf in self.quarantined:
            if self.iommu.device_context(sbdf) != self.quarantine:
                problems.append(f"{format_sbdf(sbdf)} escaped quarantine")
        if self.iommu.context_info(self.quarantine).mapped:
            problems.append("the quarantine context has mappings")
        stale = self.iommu.counters().stale
        if stale:
            problems.append(f"{stale} stale IOTLB hit(s)")
        cached = self.iommu.stale_iotlb_entries()
        if cached:
            problems.append(f"{cached} IOTLB entr{'y' if cached == 1 else 'ies'} disagree with "
                            f"the page tables (an invalidation was missed or failed)")
        return problems


    def _identity_problems(self, d: Domain, ctx: Context) -> list[str]:
        """An identity range not mapped 1:1, or not the RMRRs of ctx's devices."""
        problems = []
        wanted = Counter(r for sbdf in ctx.devices for r in self.rmrrs.get(sbdf, ()))
        held = Counter({(start, pages): users for start, pages, users in ctx.identity})
        if wanted != held:
            problems.append(f"d{d.domid}: context {ctx.ctx_no} holds identity ranges "
                            f"{sorted(held.items())}, its devices' RMRRs are "
                            f"{sorted(wanted.items())}")
        for start, pages, _ in ctx.identity:
            mfns, perms = self.iommu.lookup_run(ctx.hw_id, start, pages)
            if list(mfns) != list(range(start, start + pages)) or min(perms) != hw.PERM_RW:
                problems.append(f"d{d.domid}: context {ctx.ctx_no}'s reserved range "
                                f"{start:#x}+{pages} is not identity-mapped read-write")
        return problems


def _slot(d: Domain, ctx_no: int | None) -> int:
    """Slot ctx_no of d's pool if free (None: the lowest free one, as
    iommu_context_alloc); XenError ENOSPC / EEXIST."""
    if ctx_no is None:
        ctx_no = d.free_slot()
        if ctx_no is None:
            raise XenError(XenErrno.ENOSPC, f"all {d.nr_contexts} contexts in use")
    elif d.context(ctx_no) is not None or not 0 < ctx_no <= d.nr_contexts:
        raise XenError(XenErrno.EEXIST, f"ctx_no {ctx_no} is not a free slot of a pool "
                                        f"of {d.nr_contexts}")
    return ctx_no


def _ram_runs_within(p2m: P2m, gfn: int, n: int):
    """Runs of RAM gfns inside [gfn, gfn + n)."""
    end = gfn + n
    for start, count in p2m.ram_runs():
        lo, hi = max(start, gfn), min(start + count, end)
        if lo < hi:
            yield lo, hi - lo


def _add_run(runs: list, dfn: int, gfn: int, count: int, perm: int) -> None:
    """Append a run, joining it to the previous one where it continues it
    (a run cut by the edge of a SCAN window)."""
    if runs:
        d, g, n, p = runs[-1]
        if d + n == dfn and g + n == gfn and p == perm:
            runs[-1][2] += count
            return
    runs.append([dfn, gfn, count, perm])
