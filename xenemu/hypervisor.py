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
from collections import Counter
from functools import partial

from . import hw, hypercalls
from .domain import DOMID_IO, Domain
from .errno import XenErrno, XenError
from .hw.common import InjectSite
from .iommu_contexts import IommuContexts
from .machine import DomainConfig, MachineConfig, revision_problem
from .p2m import P2m, P2mType
from .pci import format_sbdf

log = logging.getLogger("xenemu.hypervisor")

RESTART = -XenErrno.ERESTART
PAGES_PER_MIB = 256


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
        self.memory = hw_impl.Memory(config.memory_mib << 20)
        self.iommu = hw_impl.Iommu(self.memory, width=config.address_width,
                                   iotlb_entries=config.iotlb_entries, check=config.check_iotlb)
        self._set_apart_reserved_frames()
        # Every use of the IOMMU's contexts goes through the context layer.
        self.contexts = IommuContexts(self.memory, self.iommu, config.rmrr)
        self.domains: dict[int, Domain] = {}
        self.injecting = False  # armed and not fired yet: note_injection after each event
        # Calls Xen's code would have crashed, hung or misled on (revision 2's
        # hazard table): counts by name for `ctl info`, and the ones met since
        # the engine last looked, which it records after the call's record.
        self.hazards: Counter[str] = Counter()
        self.hazards_met: list[tuple[int, str, str]] = []
        # One hypervisor build serves one ABI: the machine's revision.
        self.hypercalls = {number: partial(call.execute, self) for number, call in
                           hypercalls.abis(config.pv_iommu_revision).items()}
        for dom in config.domains:
            self.create_domain(dom)

    def _set_apart_reserved_frames(self) -> None:
        """The RMRRs' machine frames are nobody's RAM: taken from the
        allocator before any domain, owned by DomIO, their M2P 1:1 (what
        lookup_page reports for an identity-mapped dfn, as a PV dom0's
        mfn_to_gfn does). The frames below them are handed back in order,
        so that domains still get ascending frames."""
        if not self.config.rmrr:
            return
        ranges = sorted((start, start + pages) for _, start, pages in self.config.rmrr)
        top = ranges[-1][1]          # the ranges do not overlap (machine_problem)
        frames = self.memory.alloc(top, owner=DOMID_IO)
        # A new machine hands its frames out in order, from 0.
        assert len(frames) == top and frames[0] == 0 and frames[-1] == top - 1, "frame order"
        gaps, at = [], 0
        for lo, hi in ranges:
            if at < lo:
                gaps.append((at, lo))
            at = hi
        free = array("Q")
        for lo, hi in reversed(gaps):       # freed last to first: reused lowest first
            free.extend(range(hi - 1, lo - 1, -1))
        self.memory.free(free)
        for lo, hi in ranges:
            self.memory.set_m2p(array("Q", range(lo, hi)), lo)

    def reserved_regions(self, sbdf: int) -> list[tuple[int, int, str]]:
        """A device's reserved regions as virtio-iommu's probe reports them:
        (first address, last address, kind): its RMRRs, identity-mapped
        wherever it is attached ("direct"), and the interrupt window every
        device's writes there are interrupts in ("msi")."""
        regions = [(start << hw.PAGE_SHIFT, ((start + pages) << hw.PAGE_SHIFT) - 1, "direct")
                   for start, pages in self.contexts.rmrrs.get(sbdf, ())]
        return regions + [(hw.INTR_FIRST, hw.INTR_LAST, "msi")]

    def read_reserved(self, pfn: int, offset: int, length: int) -> bytes:
        """Bytes of a reserved (RMRR) frame: what a device's DMA left there."""
        if not any(start <= pfn < start + pages for _, start, pages in self.config.rmrr):
            raise MachineError(f"pfn {pfn:#x} is in no reserved range ([[rmrr]])")
        if offset < 0 or length < 0 or offset + length > hw.PAGE_SIZE:
            raise MachineError("offset and length must stay within one 4 KiB page")
        return self.memory.read((pfn << hw.PAGE_SHIFT) + offset, length)

    # -- fault injection -----------------------------------------------------

    def arm_injection(self, sites: int, nth: int) -> None:
        """The nth event at one of `sites` (hw.common.InjectSite) fails,
        once; 0 disarms (see the fail_nth control op)."""
        self.memory.inject(sites, nth)
        self.injecting = nth > 0
        log.info("fail-nth: %s", f"event {nth} at {InjectSite(sites).name} will fail"
                 if nth else "disarmed")

    def note_injection(self, where: str) -> None:
        """Log the injected failure once it has happened (in `where`)."""
        f = self.memory.injection()
        if f.fired:
            self.injecting = False
            log.info("fail-nth: injected a %s failure (event %d) in %s", f.fired.name, f.seen,
                     where)

    def note_hazard(self, domid: int, name: str, why: str) -> None:
        """A call of d`domid` met hazard `name` (xenemu.hypercalls.iommu_op_v2.HAZARDS)."""
        self.hazards[name] += 1
        self.hazards_met.append((domid, name, why))

    @property
    def quarantined(self) -> set[int]:
        """Devices of no domain, in DomIO's quarantine (read it, don't change it)."""
        return self.contexts.quarantined

    # -- domains -----------------------------------------------------------

    def create_domain(self, cfg: DomainConfig) -> Domain:
        if cfg.domid in self.domains:
            raise MachineError(f"d{cfg.domid} exists already")
        for sbdf in cfg.devices:
            self._check_assignable(sbdf)
        if not self.contexts.can_init_domain():
            raise MachineError("no page-table budget left for another domain")
        rev2 = self.config.pv_iommu_revision == 2
        problem = revision_problem(self.config.pv_iommu_revision, cfg)
        if problem:
            raise MachineError(f"{problem[0]}: {problem[1]}")
        # Revision 2 sizes a domain's pool by init alone: `contexts` is not used.
        pool = 0 if rev2 else cfg.contexts
        nr_pages = cfg.memory_mib * PAGES_PER_MIB
        try:
            mfns = self.memory.alloc(nr_pages, owner=cfg.domid)
        except hw.HwError:
            raise MachineError(f"not enough machine memory for d{cfg.domid} "
                               f"({cfg.memory_mib} MiB)") from None
        self.memory.set_m2p(mfns, 0)
        p2m = P2m(mfns, self.clock, self.config.page_in_delay_ms / 1000)
        d = Domain(domid=cfg.domid, name=cfg.name or f"d{cfg.domid}", hardware=cfg.hardware,
                   iommu_enabled=cfg.iommu, p2m=p2m, contexts=1 + pool,
                   opaque_default=cfg.opaque_default, no_dma=cfg.no_dma)
        try:
            self.contexts.init_domain(d, cfg.table_pages)
        except XenError as e:
            self.memory.free(mfns)
            raise MachineError(e.why) from None
        if cfg.pv_iommu_init is not None:     # as a toolstack's init would
            max_ctx_no, arena_order = cfg.pv_iommu_init
            self.contexts.pviommu_init(d, max_ctx_no, arena_order)
        p2m.on_became_ram = partial(self.contexts.paged_in, d)
        self.domains[d.domid] = d
        for sbdf in cfg.devices:
            self.assign_device(sbdf, d.domid)
        log.info("d%d: created (%d MiB, %d contexts, %d devices)", d.domid, cfg.memory_mib,
                 d.nr_contexts, len(cfg.devices))
        return d

    def destroy_domain(self, domid: int) -> None:
        """Quarantine its devices, free every context and its memory."""
        d = self._domain(domid)
        lent = self.contexts.lent.get(domid, 0)
        if lent:
            # Xen would keep it a zombie until those references go: refused here.
            raise MachineError(f"d{domid}'s frames hold {lent} reference(s) from other domains' "
                               f"IOMMU mappings (foreign): unmap them first")
        for sbdf in list(d.devices):
            self.deassign_device(sbdf)
        self._release_domain(d)
        del self.domains[domid]
        # Other domains' foreign maps of its frames go, as its grants are revoked.
        for other in self.domains.values():
            for g in [g for g, (o, _) in other.p2m.foreign.items() if o == domid]:
                other.p2m.set_type(g, P2mType.INVALID)
        log.info("d%d: destroyed", domid)

    def _release_domain(self, d: Domain) -> None:
        """Free d's contexts (dropping their references), budgets and memory."""
        self.contexts.destroy_domain(d)
        self.memory.free(d.p2m.mfns)

    def _domain(self, domid: int) -> Domain:
        d = self.domains.get(domid)
        if d is None:
            raise MachineError(f"d{domid} does not exist")
        return d

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
        """Give a device (new, or from quarantine) to a domain's default
        context, its reserved ranges (RMRRs) identity-mapped there."""
        d = self._domain(domid)
        self._check_assignable(sbdf)
        try:
            self.contexts.assign_device(d, sbdf)
        except XenError as e:
            raise MachineError(e.why) from None

    def deassign_device(self, sbdf: int) -> None:
        """Take a device from its domain into quarantine, where its DMA faults."""
        d = self.owner_of(sbdf)
        if d is None:
            raise MachineError(f"{format_sbdf(sbdf)} is not assigned to any domain")
        self.contexts.deassign_device(d, sbdf)

    def dma(self, sbdf: int, addr: int, *, data: bytes | None = None,
            length: int = 0, pasid: int = 0) -> tuple[int, bytes, hw.FaultRecord | None]:
        """The device reads `length` bytes or writes `data` at device address
        `addr`, tagged with `pasid` if not 0 (a nested machine's). Returns
        (bytes done, bytes read, the fault that stopped it); the fault is
        also logged, if the fault log has room."""
        if self.owner_of(sbdf) is None and sbdf not in self.quarantined:
            raise MachineError(f"no device {format_sbdf(sbdf)}")
        if pasid and not self.config.nested:
            raise MachineError("pasid: this machine serves no PASIDs (nested = false)")
        if data is not None:
            return self.iommu.dma_write(sbdf, addr, data, pasid), b"", self.iommu.dma_fault
        got = self.iommu.dma_read(sbdf, addr, length, pasid)
        return len(got), got, self.iommu.dma_fault

    # -- guest memory and p2m ------------------------------------------------

    def set_p2m_type(self, domid: int, gfn: int, type_: P2mType) -> None:
        """Change a gfn's p2m type; the default context follows the p2m."""
        d = self._domain(domid)
        if not 0 <= gfn < d.p2m.nr_pages:
            raise MachineError(f"gfn {gfn:#x} is beyond d{domid}'s memory")
        if type_ is not P2mType.RAM:
            self._refuse_if_lent(d, gfn)
        was = d.p2m.type_of(gfn)
        was_ram = was is P2mType.RAM
        if was_ram and type_ is not P2mType.RAM:
            try:
                self.contexts.page_out(d, gfn)
            except XenError as e:
                raise MachineError(e.why) from None
        d.p2m.set_type(gfn, type_)
        if not was_ram and type_ is P2mType.RAM:
            st = self.contexts.page_in(d, gfn)
            if st != hw.Status.OK:
                # A page-in under way lost its timer with the type: paged out again.
                was = P2mType.PAGED_OUT if was is P2mType.PAGING_IN else was
                d.p2m.set_type(gfn, was)
                raise MachineError(f"gfn {gfn:#x} could not be mapped in d{domid}'s default "
                                   f"context ({st.name}); it stays {was.value}")

    def set_p2m_foreign(self, domid: int, gfn: int, owner: int, owner_gfn: int) -> None:
        """gfn of domid becomes owner's frame at owner_gfn, as a grant or
        foreign mapping would make it (revision 2 tells it apart)."""
        if self.config.pv_iommu_revision != 2:
            raise MachineError("type=foreign: only a revision-2 machine tells foreign frames "
                               "apart")
        if owner == domid:
            raise MachineError(f"d{domid} cannot map its own frame as foreign")
        o = self.domains.get(owner)
        if o is None:
            raise MachineError(f"owner d{owner} does not exist")
        if not 0 <= owner_gfn < o.p2m.nr_pages or o.p2m.type_of(owner_gfn) is not P2mType.RAM:
            raise MachineError(f"owner d{owner} has no RAM frame at gfn {owner_gfn:#x}")
        if self._domain(domid).p2m.type_of(gfn) is P2mType.FOREIGN:
            self.set_p2m_type(domid, gfn, P2mType.RAM)    # remapped: one owner at a time
        self.set_p2m_type(domid, gfn, P2mType.FOREIGN)
        self.domains[domid].p2m.foreign[gfn] = (owner, owner_gfn)

    def _refuse_if_lent(self, owner: Domain, gfn: int) -> None:
        """A gfn another domain maps as foreign stays RAM (Xen refuses to
        page out or share a page with extra references: the mapping holds one)."""
        for d in self.domains.values():
            for g, (o, og) in d.p2m.foreign.items():
                if o == owner.domid and og == gfn:
                    raise MachineError(f"gfn {gfn:#x} of d{owner.domid} is mapped by d{d.domid} "
                                       f"at gfn {g:#x} (foreign): it stays RAM")

    def foreign_frame(self, d: Domain, gfn: int) -> tuple[int, int]:
        """(owner domid, mfn) of a FOREIGN gfn of d (an owner's destruction
        turns the gfns naming it invalid: the owner is there)."""
        owner, owner_gfn = d.p2m.foreign[gfn]
        return owner, self.domains[owner].p2m.mfns[owner_gfn]

    def unshare(self, d: Domain, gfn: int) -> str | None:
        """mem_sharing's unshare (P2M_UNSHARE): the SHARED gfn becomes private
        RAM. xenemu keeps a shared gfn's own frame with its content, so the
        private copy is that frame; context 0 maps it again. Why it failed, or None."""
        try:
            self.set_p2m_type(d.domid, gfn, P2mType.RAM)
        except MachineError as e:
            return str(e)
        return None

    def _guest_span(self, domid: int, gfn: int, offset: int, length: int) -> int:
        d = self._domain(domid)
        if offset < 0 or length < 0 or offset + length > hw.PAGE_SIZE:
            raise MachineError("offset and length must stay within one 4 KiB page")
        if not 0 <= gfn < d.p2m.nr_pages:
            raise MachineError(f"gfn {gfn:#x} is beyond d{domid}'s memory")
        return (d.p2m.mfns[gfn] << hw.PAGE_SHIFT) + offset

    def read_guest(self, domid: int, gfn: int, offset: int, length: int) -> bytes:
        return self.memory.read(self._guest_span(domid, gfn, offset, length), length)

    def write_guest(self, domid: int, gfn: int, offset: int, data: bytes) -> None:
        self.memory.write(self._guest_span(domid, gfn, offset, len(data)), data)

    # -- invariants ------------------------------------------------------------

    def check_invariants(self) -> list[str]:
        """What is inconsistent, as readable sentences; empty when all holds.
        See IommuContexts.check: page references, devices, the IOTLB."""
        return self.contexts.check(self.domains.values())
