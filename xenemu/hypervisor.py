"""The hypervisor core: the machine, its domains and the hypercall table. Sans-IO.

`Hypervisor.hypercalls` is the hypercall table, as Xen's: op -> handler(domain,
args, guest memory) -> return value. A long operation may return -ERESTART:
Xen turns that into a continuation that re-executes the same hypercall, and
so does xenemu.engine, the one place calls go through (it also ticks the
clock and notes fault injections, once per event). -ERESTART never reaches
a guest.

The machine-level operations a guest cannot do (create a domain, assign a
device, change the p2m, make a device DMA, check invariants) are methods
here too; xenemu.control exposes them on the control socket.
"""

from __future__ import annotations

import logging
import time
from array import array
from functools import partial

from . import hw, hypercalls
from .domain import Context, Domain
from .errno import XenErrno
from .hw.common import MAX_POOLS, InjectSite
from .machine import DomainConfig, MachineConfig, format_sbdf
from .p2m import P2m, P2mType

log = logging.getLogger("xenemu.hypervisor")

RESTART = -XenErrno.ERESTART
PAGES_PER_MIB = 256

# Context 0's page tables are bounded too (Xen's are not: see the README's
# divergences), else a guest mapping far-apart dfns there would take table
# pages until the machine's memory is gone, ~3 per 4 KiB page. Its limit is
# what its 1:1 map took at creation plus the domain's table_pages, or this
# many when table_pages is 0: "no limit" is for its PV-IOMMU contexts.
DEFAULT_CONTEXT_SPARE_TABLES = 1 << 16
POOLS_PER_DOMAIN = 2    # one for its PV-IOMMU contexts, one for context 0


class MachineError(Exception):
    """A control-plane request the machine refuses (bad domid, device, gfn...)."""


class EventClock:
    """The machine's time: seconds since it started, read once per event.

    Every hypercall round and control request samples the source once
    (tick()), and everything that event does sees that one value. A trace
    records it, and replay sets it back (an EventClock over the recorded
    times), so time-dependent behaviour such as a page-in completing
    replays exactly.
    """

    def __init__(self, source=time.monotonic):
        self._source = source
        self._t0 = source()
        self.now = 0.0

    def tick(self) -> float:
        self.now = self._source() - self._t0
        return self.now

    def __call__(self) -> float:
        return self.now

    def resume(self, at: float) -> None:
        """Go on from `at`, a restored machine's time, so that what was due
        relative to it (a page-in completing) stays due at the same moment."""
        self._t0 = self._source() - at
        self.now = at


class Hypervisor:
    def __init__(self, config: MachineConfig, clock=time.monotonic, hw_impl=hw):
        """`hw_impl` is the simulated hardware: xenemu.hw (the C layer) or
        xenemu.hw.reference (pure Python, the benchmark's baseline)."""
        self.config = config
        self.clock = EventClock(clock)
        self.machine = hw_impl.Machine(config.memory_mib << 20)
        self.iommu = hw_impl.Iommu(self.machine, width=config.address_width,
                                   iotlb_entries=config.iotlb_entries, check=config.check_iotlb)
        # DomIO's quarantine context: nothing mapped, so a quarantined device's DMA faults.
        self.quarantine = self.iommu.alloc_context()
        self.domains: dict[int, Domain] = {}
        self.quarantined: set[int] = set()
        # Table-page budgets, POOLS_PER_DOMAIN IOMMU pools per domain (pool 0: no limit).
        self._free_pools = list(range(MAX_POOLS - 1, 0, -1))
        self.injecting = False  # armed and not fired yet: note_injection after each event
        self.hypercalls = {number: partial(call.execute, self)
                           for number, call in hypercalls.ABIS.items()}
        for dom in config.domains:
            self.create_domain(dom)

    # -- fault injection -----------------------------------------------------

    def arm_injection(self, sites: int, nth: int) -> None:
        """The nth event at one of `sites` (hw.common.InjectSite) fails,
        once; 0 disarms (see the fail_nth control op)."""
        self.machine.inject(sites, nth)
        self.injecting = nth > 0
        log.info("fail-nth: %s", f"event {nth} at {InjectSite(sites).name} will fail"
                 if nth else "disarmed")

    def note_injection(self, where: str) -> None:
        """Log the injected failure once it has happened (in `where`)."""
        f = self.machine.injection()
        if f.fired:
            self.injecting = False
            log.info("fail-nth: injected a %s failure (event %d) in %s", f.fired.name, f.seen,
                     where)

    # -- domains -----------------------------------------------------------

    def create_domain(self, cfg: DomainConfig) -> Domain:
        if cfg.domid in self.domains:
            raise MachineError(f"d{cfg.domid} exists already")
        for sbdf in cfg.devices:
            self._check_assignable(sbdf)
        if len(self._free_pools) < POOLS_PER_DOMAIN:
            raise MachineError("no page-table budget left for another domain")
        nr_pages = cfg.memory_mib * PAGES_PER_MIB
        try:
            mfns = self.machine.alloc(nr_pages, owner=cfg.domid)
        except hw.HwError:
            raise MachineError(f"not enough machine memory for d{cfg.domid} "
                               f"({cfg.memory_mib} MiB)") from None
        self.machine.set_m2p(mfns, 0)
        p2m = P2m(mfns, self.clock, self.config.page_in_delay_ms / 1000)
        pool, default_pool = self._free_pools.pop(), self._free_pools.pop()
        try:
            default = Context(0, self.iommu.alloc_context())
        except hw.HwError as e:
            self._free_pools += [default_pool, pool]
            self.machine.free(mfns)
            raise MachineError(f"no default context for d{cfg.domid}: {e}") from None
        d = Domain(domid=cfg.domid, name=cfg.name or f"d{cfg.domid}", hardware=cfg.hardware,
                   iommu_enabled=cfg.iommu, p2m=p2m,
                   contexts=[default] + [None] * cfg.contexts,
                   opaque_default=cfg.opaque_default, table_pool=pool,
                   default_pool=default_pool)
        self.iommu.set_pool_limit(d.table_pool, cfg.table_pages)
        self.iommu.set_context_pool(default.hw, d.default_pool)   # no limit yet: fits
        p2m.on_became_ram = lambda gfn, d=d: self._paged_in(d, gfn)
        st = self.identity_map(d, default, 0, nr_pages)
        if st == hw.Status.OK:
            # Pages of its 1:1 map never need a table again (unmap leaves tables
            # in place), so the spare is what the guest may map elsewhere.
            identity_tables = self.iommu.pool_usage(d.default_pool)[0]
            self.iommu.set_pool_limit(d.default_pool, identity_tables +
                                      (cfg.table_pages or DEFAULT_CONTEXT_SPARE_TABLES))
        else:
            self._release_domain(d)
            why = {hw.Status.NOMEM: "no machine memory left for I/O page tables",
                   hw.Status.INJECTED: "a page reference failed (injected)"}.get(st, st.name)
            raise MachineError(f"d{cfg.domid}'s default context could not map its memory: {why}")
        self.domains[d.domid] = d
        for sbdf in cfg.devices:
            self.assign_device(sbdf, d.domid)
        log.info("d%d: created (%d MiB, %d contexts, %d devices)", d.domid, cfg.memory_mib,
                 cfg.contexts, len(cfg.devices))
        return d

    def destroy_domain(self, domid: int) -> None:
        """Quarantine its devices, free every context and its memory."""
        d = self._domain(domid)
        for sbdf in list(d.devices):
            self.deassign_device(sbdf)
        self._release_domain(d)
        del self.domains[domid]
        log.info("d%d: destroyed", domid)

    def _release_domain(self, d: Domain) -> None:
        """Free d's contexts (dropping their references), memory and budget."""
        for ctx in d.contexts:
            if ctx is not None:
                self.teardown_context(d, ctx, budget=None)
        self.machine.free(d.p2m.mfns)
        for pool in (d.default_pool, d.table_pool):
            self.iommu.set_pool_limit(pool, 0)
            self._free_pools.append(pool)

    def _domain(self, domid: int) -> Domain:
        d = self.domains.get(domid)
        if d is None:
            raise MachineError(f"d{domid} does not exist")
        return d

    def identity_map(self, d: Domain, ctx: Context, gfn: int, n: int) -> hw.Status:
        """Map d's RAM gfns in [gfn, gfn + n) 1:1 into ctx, one reference per page.

        Used for the default context, for pages that become RAM again, and for
        a cloned context. Returns the IOMMU's status if it stopped early."""
        for start, count in _ram_runs_within(d.p2m, gfn, n):
            done, st = self.iommu.map_referenced(ctx.hw, start, d.p2m.mfns[start:start + count],
                                                 hw.PERM_RW)
            if done != count:
                return hw.Status(st)
        return hw.Status.OK

    def _identity_map_page(self, d: Domain, gfn: int) -> hw.Status:
        """Context 0 maps a page that became RAM again at dfn == gfn; a dfn
        the guest took over there (PRESENT) is left to the guest."""
        st = self.identity_map(d, d.contexts[0], gfn, 1)
        return hw.Status.OK if st == hw.Status.PRESENT else st

    def _paged_in(self, d: Domain, gfn: int) -> bool:
        """A page-in completes; False (it waits) if context 0 could not map it."""
        st = self._identity_map_page(d, gfn)
        if st != hw.Status.OK:
            log.warning("d%d: page-in of gfn %#x waits: the default context could not map it (%s)",
                        d.domid, gfn, st.name)
            return False
        return True

    def _identity_unmap(self, d: Domain, gfn: int) -> None:
        done, _, mfns = self.iommu.unmap(d.contexts[0].hw, gfn, 1)
        self.machine.put_refs(mfns)

    def teardown_context(self, d: Domain, ctx: Context, budget: int | None) -> bool:
        """Tear ctx down by slices of `budget` leaf slots (None: all at once),
        dropping the page references its mappings held. True when finished."""
        ctx.dying = True
        slice_ = budget or (1 << 20)
        while True:
            mfns, finished = self.iommu.teardown(ctx.hw, slice_)
            self.machine.put_refs(mfns)
            if finished:
                d.contexts[ctx.ctx_no] = None
                return True
            if budget is not None:
                return False

    # -- devices -----------------------------------------------------------

    def owner_of(self, sbdf: int) -> Domain | None:
        for d in self.domains.values():
            if sbdf in d.devices:
                return d
        return None

    def _check_assignable(self, sbdf: int) -> None:
        owner = self.owner_of(sbdf)
        if owner is not None:
            raise MachineError(f"{format_sbdf(sbdf)} is assigned to d{owner.domid}")

    def assign_device(self, sbdf: int, domid: int) -> None:
        """Give a device (new, or from quarantine) to a domain's default context."""
        d = self._domain(domid)
        self._check_assignable(sbdf)
        if sbdf not in self.quarantined:
            self.iommu.add_device(sbdf)
        self.quarantined.discard(sbdf)
        self.iommu.attach(sbdf, d.contexts[0].hw)
        d.contexts[0].devices.add(sbdf)
        d.devices[sbdf] = 0

    def deassign_device(self, sbdf: int) -> None:
        """Take a device from its domain into quarantine, where its DMA faults."""
        d = self.owner_of(sbdf)
        if d is None:
            raise MachineError(f"{format_sbdf(sbdf)} is not assigned to any domain")
        self.iommu.attach(sbdf, self.quarantine)
        d.contexts[d.devices.pop(sbdf)].devices.discard(sbdf)
        self.quarantined.add(sbdf)

    def move_device(self, d: Domain, sbdf: int, target: Context) -> None:
        """Switch a device's context entry in one store (no blocked window)."""
        self.iommu.attach(sbdf, target.hw)
        d.contexts[d.devices[sbdf]].devices.discard(sbdf)
        target.devices.add(sbdf)
        d.devices[sbdf] = target.ctx_no

    def dma(self, sbdf: int, addr: int, *, data: bytes | None = None,
            length: int = 0) -> tuple[int, bytes, hw.FaultRecord | None]:
        """The device reads `length` bytes or writes `data` at device address
        `addr`. Returns (bytes done, bytes read, the fault that stopped it);
        the fault is also logged, if the fault log has room."""
        if self.owner_of(sbdf) is None and sbdf not in self.quarantined:
            raise MachineError(f"no device {format_sbdf(sbdf)}")
        if data is not None:
            return self.iommu.dma_write(sbdf, addr, data), b"", self.iommu.dma_fault
        got = self.iommu.dma_read(sbdf, addr, length)
        return len(got), got, self.iommu.dma_fault

    # -- guest memory and p2m ------------------------------------------------

    def set_p2m_type(self, domid: int, gfn: int, type_: P2mType) -> None:
        """Change a gfn's p2m type; the default context follows the p2m."""
        d = self._domain(domid)
        if not 0 <= gfn < d.p2m.nr_pages:
            raise MachineError(f"gfn {gfn:#x} is beyond d{domid}'s memory")
        was = d.p2m.type_of(gfn)
        was_ram = was is P2mType.RAM
        if was_ram and type_ is not P2mType.RAM:
            mfn = d.p2m.mfns[gfn]
            # Context 0 maps dfn == gfn unless the guest remapped that dfn.
            identity = self.iommu.lookup(d.contexts[0].hw, gfn)
            identity = identity is not None and identity[0] == mfn
            extra = self.machine.refcounts(array("Q", [mfn]))[0] - identity
            if extra > 0:
                # Xen refuses to page out or share a page with extra references.
                raise MachineError(f"gfn {gfn:#x} is mapped in {extra} other place(s): "
                                   f"PV-IOMMU contexts, or context 0 at another dfn")
            if identity:
                self._identity_unmap(d, gfn)
        d.p2m.set_type(gfn, type_)
        if not was_ram and type_ is P2mType.RAM:
            st = self._identity_map_page(d, gfn)
            if st != hw.Status.OK:
                # A page-in under way lost its timer with the type: paged out again.
                was = P2mType.PAGED_OUT if was is P2mType.PAGING_IN else was
                d.p2m.set_type(gfn, was)
                raise MachineError(f"gfn {gfn:#x} could not be mapped in d{domid}'s default "
                                   f"context ({st.name}); it stays {was.value}")

    def _guest_span(self, domid: int, gfn: int, offset: int, length: int) -> int:
        d = self._domain(domid)
        if offset < 0 or length < 0 or offset + length > hw.PAGE_SIZE:
            raise MachineError("offset and length must stay within one 4 KiB page")
        if not 0 <= gfn < d.p2m.nr_pages:
            raise MachineError(f"gfn {gfn:#x} is beyond d{domid}'s memory")
        return (d.p2m.mfns[gfn] << hw.PAGE_SHIFT) + offset

    def read_guest(self, domid: int, gfn: int, offset: int, length: int) -> bytes:
        return self.machine.read(self._guest_span(domid, gfn, offset, length), length)

    def write_guest(self, domid: int, gfn: int, offset: int, data: bytes) -> None:
        self.machine.write(self._guest_span(domid, gfn, offset, len(data)), data)

    # -- invariants ------------------------------------------------------------

    def check_invariants(self) -> list[str]:
        """What is inconsistent, as readable sentences; empty when all holds.

        As iommufd's self-test does: every mapping holds one page reference
        (so a domain's references equal its contexts' mappings and drop to
        zero with them), every device is attached where its domain says, and
        no IOTLB entry went stale (check mode counts them).
        """
        problems = []
        for d in self.domains.values():
            mapped = 0
            for ctx in d.contexts:
                if ctx is None:
                    continue
                mapped += self.iommu.context_info(ctx.hw).mapped
                for sbdf in ctx.devices:
                    if d.devices.get(sbdf) != ctx.ctx_no:
                        problems.append(f"d{d.domid}: {format_sbdf(sbdf)} listed in context "
                                        f"{ctx.ctx_no} but recorded in {d.devices.get(sbdf)}")
            refs = sum(self.machine.refcounts(d.p2m.mfns))
            if refs != mapped:
                problems.append(f"d{d.domid}: {refs} page references for {mapped} mappings")
            for sbdf, ctx_no in d.devices.items():
                ctx = d.context(ctx_no)
                if ctx is None or self.iommu.device_context(sbdf) != ctx.hw:
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


def _ram_runs_within(p2m: P2m, gfn: int, n: int):
    """Runs of RAM gfns inside [gfn, gfn + n)."""
    end = gfn + n
    for start, count in p2m.ram_runs():
        lo, hi = max(start, gfn), min(start + count, end)
        if lo < hi:
            yield lo, hi - lo

