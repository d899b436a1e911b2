"""What the simulated machine is made of: the IOMMU and the domains.

The machine file (TOML), and the `machine` a trace header or a snapshot
carries, are one document, declared once below as msgspec Structs with the
range of every field (MachineFile, DomainFile) and read through
xenemu.schema's gate. What the rest of xenemu holds is the MachineConfig
and DomainConfig dataclasses (PCI addresses as packed sbdf numbers, xenemu.pci); their defaults are
the file's defaults. `default_machine()` is the machine `xenemu serve`
starts with no configuration; `load_machine()` reads any other. The README
documents both.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from .hw.common import PAGE_SHIFT, PASID_MAX
from .pci import Sbdf, format_sbdf, parse_sbdf
from .schema import DomId, InputError, NonNegative, U16, convert

PAGES_PER_MIB = 1 << 20 >> PAGE_SHIFT

# The largest machine a file may declare. Declared memory is reserved
# lazily and costs nothing until a domain owns it; a domain's memory costs
# about 10 KiB of resident metadata per MiB (frame owner, refcount, M2P and
# allocator entries, its p2m array, the default context's page tables), so
# a file at this bound makes the daemon hold at most ~640 MiB of metadata.
MAX_MEMORY_MIB = 64 << 10
MAX_DOMAINS = 1023          # two page-table pools (hw MAX_POOLS - 1 = 2047) and a hardware context each
MAX_DEVICES = 256           # the simulated IOMMU's device table
MAX_RMRRS = 1024            # reserved ranges ([[rmrr]]): a DMAR table's RMRRs, a few per device
MAX_TABLE_PAGES = 1 << 24   # a budget beyond the largest machine's frames means nothing
MAX_PAGE_IN_DELAY_MS = 3_600_000
MAX_NAME = 64
# Hardware IOTLB sizes: a power of two of 4-way sets (cext/iotlb.c).
MIN_IOTLB, MAX_IOTLB = 4, 1 << 20

# Revision 2's map and unmap have no page limit: a long run is preempted
# (-ERESTART, others served, the call re-run) every this many pages. Xen
# never preempts a round before its second page, hence the floor of 2.
REV2_PAGES_PER_ROUND = 4096
MAX_PAGES_PER_ROUND = 1 << 24
MAX_ARENA_ORDER = 24        # 2^24 table pages: beyond MAX_TABLE_PAGES means nothing

MiB = Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_MIB)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME, pattern=r"^[^\x00-\x1f\x7f]*$")]


class ConfigError(InputError):
    """A machine that cannot be built: one line naming the file and the field."""


@dataclass(frozen=True)
class DomainConfig:
    domid: int
    name: str = ""
    hardware: bool = False          # the hardware domain (dom0): the only one PV-IOMMU serves in rev 1
    iommu: bool = True              # is_iommu_enabled(d)
    memory_mib: int = 256           # guest RAM, mapped from gfn 0
    contexts: int = 0               # size of the context pool (context 0 excluded)
    devices: tuple[int, ...] = ()   # PCI devices assigned at start (sbdf)
    opaque_default: bool = False    # context 0 shared with the CPU's tables: PV-IOMMU can't touch it
    table_pages: int = 1 << 16      # page-table budget of its PV-IOMMU contexts (0: no limit), as Xen's arena
    # Revision 2: the (max_ctx_no, arena_order) a toolstack's init gave it at
    # creation; None leaves it uninitialised (max_ctx_no 0) until its own init.
    pv_iommu_init: tuple[int, int] | None = None
    # Revision 2: the hardware domain booted with dom0-iommu=dma=0 (no-dma):
    # context 0 maps nothing and query_capabilities lacks default_identity.
    no_dma: bool = False


@dataclass(frozen=True)
class MachineConfig:
    iommu: bool = True              # iommu_enabled: the IOMMU is on globally
    address_width: int = 39         # IOMMU address width: 39 (3 levels) or 48 (4 levels)
    iotlb_entries: int = 1024
    memory_mib: int = 4096          # machine memory (backed lazily)
    honour_clone: bool = False      # alloc_context honours IOMMU_CREATE_clone (reference code ignores it)
    page_in_delay_ms: int = 10      # a paged-out gfn becomes RAM this long after a map asks for it
    check_iotlb: bool = False       # verify every IOTLB hit against the page tables
    pv_iommu_revision: int = 1      # the PV-IOMMU ABI hypercall 43 serves: 1 or 2 (Xen RFC v4-v7)
    rev2_pages_per_round: int = REV2_PAGES_PER_ROUND   # revision 2: map/unmap's pages a round
    rev2_semantics: str = "v7"      # revision 2: "v7" (the code) or "intended" (its header)
    # Revision 2, xenemu's extension (abi/NESTED.md): sub-ops 9-12 served
    # (nested translation, PASIDs) instead of Xen's -EOPNOTSUPP, PASIDs
    # 1..max_pasid.
    nested: bool = False
    max_pasid: int = PASID_MAX
    domains: tuple[DomainConfig, ...] = field(default_factory=tuple)
    # Devices' reserved memory ranges (VT-d RMRRs): machine frames set apart
    # for a device's own DMA, as (sbdf, start_pfn, nr_pages). Data only so
    # far: memory_op's XENMEM_reserved_device_memory_map reports them.
    rmrr: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self):
        problem = machine_problem(self)
        if problem:
            path, what = problem
            raise ConfigError(f"{path}: {what}")


# -- the file's schema -----------------------------------------------------------------

_D, _M = DomainConfig, MachineConfig    # the defaults come from the in-memory types


class PvIommuInitFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Revision 2: the domain starts initialised as a toolstack's init would
    leave it (a pool of max_ctx_no contexts, an arena of 2^arena_order pages)."""
    max_ctx_no: Annotated[int, msgspec.Meta(ge=0, le=0xFFFE)]
    arena_order: Annotated[int, msgspec.Meta(ge=1, le=MAX_ARENA_ORDER)]


class DomainFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domid: DomId
    name: Name = _D.name
    hardware: bool = _D.hardware
    iommu: bool = _D.iommu
    memory_mib: MiB = _D.memory_mib
    contexts: U16 = _D.contexts
    devices: Annotated[list[Sbdf], msgspec.Meta(max_length=MAX_DEVICES)] = []
    opaque_default: bool = _D.opaque_default
    table_pages: Annotated[int, msgspec.Meta(ge=0, le=MAX_TABLE_PAGES)] = _D.table_pages
    pv_iommu_init: PvIommuInitFile | None = None
    no_dma: bool = _D.no_dma


class RmrrFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One [[rmrr]] table: a device's reserved memory range (machine frames)."""
    sbdf: Sbdf
    start_pfn: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEMORY_MIB * PAGES_PER_MIB - 1)]
    nr_pages: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_MIB * PAGES_PER_MIB)]


class MachineFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    iommu: bool = _M.iommu
    address_width: Literal[39, 48] = _M.address_width
    iotlb_entries: Annotated[int, msgspec.Meta(ge=MIN_IOTLB, le=MAX_IOTLB)] = _M.iotlb_entries
    memory_mib: MiB = _M.memory_mib
    honour_clone: bool = _M.honour_clone
    page_in_delay_ms: Annotated[NonNegative, msgspec.Meta(le=MAX_PAGE_IN_DELAY_MS)] = \
        _M.page_in_delay_ms
    check_iotlb: bool = _M.check_iotlb
    pv_iommu_revision: Literal[1, 2] = _M.pv_iommu_revision
    rev2_pages_per_round: Annotated[int, msgspec.Meta(ge=2, le=MAX_PAGES_PER_ROUND)] = \
        _M.rev2_pages_per_round
    rev2_semantics: Literal["v7", "intended"] = _M.rev2_semantics
    nested: bool = _M.nested
    max_pasid: Annotated[int, msgspec.Meta(ge=1, le=PASID_MAX)] = _M.max_pasid
    domain: Annotated[list[DomainFile], msgspec.Meta(max_length=MAX_DOMAINS)] = []
    rmrr: Annotated[list[RmrrFile], msgspec.Meta(max_length=MAX_RMRRS)] = []


def identity_frames(pages: int, levels: int) -> int:
    """Frames a domain of `pages` pages holds at creation: its memory and the
    page tables of its default context's 1:1 map of it (root included)."""
    tables, n = 0, pages
    for _ in range(levels):
        n = -(-n // 512)
        tables += n
    return pages + max(tables, levels and 1)


def revision_problem(revision: int, d: DomainConfig) -> tuple[str, str] | None:
    """(key, why) if a domain asks for what only another ABI revision has: for
    a machine file's domains and for those created on the control socket."""
    if d.pv_iommu_init is not None and revision != 2:
        return "pv_iommu_init", "only a machine of pv_iommu_revision 2 has init"
    if d.no_dma and (revision != 2 or not d.hardware):
        return "no_dma", "only the hardware domain of a pv_iommu_revision 2 machine is no-dma"
    return None

def machine_problem(config: MachineConfig) -> tuple[str, str] | None:
    """What makes a machine impossible to build, as (path, what), or None:
    the checks that span fields, which the schema cannot state."""
    if config.address_width not in (39, 48):
        return "address_width", "expected 39 or 48"
    entries = config.iotlb_entries
    if not MIN_IOTLB <= entries <= MAX_IOTLB or entries & (entries - 1):
        return "iotlb_entries", f"expected a power of two in [{MIN_IOTLB}, {MAX_IOTLB}]"
    if not 1 <= config.memory_mib <= MAX_MEMORY_MIB:
        return "memory_mib", f"expected 1 to {MAX_MEMORY_MIB} (64 GiB)"
    if config.pv_iommu_revision not in (1, 2):
        return "pv_iommu_revision", "expected 1 or 2"
    if not 2 <= config.rev2_pages_per_round <= MAX_PAGES_PER_ROUND:
        return "rev2_pages_per_round", f"expected 2 to {MAX_PAGES_PER_ROUND}"
    if config.rev2_semantics not in ("v7", "intended"):
        return "rev2_semantics", 'expected "v7" or "intended"'
    if config.rev2_semantics != "v7" and config.pv_iommu_revision != 2:
        return "rev2_semantics", "only a machine of pv_iommu_revision 2 has it"
    if config.nested and config.pv_iommu_revision != 2:
        return "nested", "only a machine of pv_iommu_revision 2 has it"
    if not 1 <= config.max_pasid <= PASID_MAX:
        return "max_pasid", f"expected 1 to {PASID_MAX}"
    seen: dict[int, int] = {}
    owners: dict[int, int] = {}
    levels = 3 if config.address_width == 39 else 4
    frames = 1                      # the quarantine context's root table
    for i, d in enumerate(config.domains):
        if not 0 <= d.domid < 0x7FF0:
            return f"domain[{i}].domid", f"{d.domid} out of range"
        if d.domid in seen:
            return f"domain[{i}].domid", f"d{d.domid} is domain[{seen[d.domid]}] already"
        seen[d.domid] = i
        if not 0 <= d.contexts <= 0xFFFF:
            return f"domain[{i}].contexts", "must fit in 16 bits (ctx_no)"
        if not 0 <= d.table_pages <= MAX_TABLE_PAGES:
            return f"domain[{i}].table_pages", f"expected 0 (no limit) to {MAX_TABLE_PAGES}"
        if not 1 <= d.memory_mib <= MAX_MEMORY_MIB:
            return f"domain[{i}].memory_mib", f"expected 1 to {MAX_MEMORY_MIB}"
        problem = revision_problem(config.pv_iommu_revision, d)
        if problem:
            return f"domain[{i}].{problem[0]}", problem[1]
        if config.pv_iommu_revision == 2 and d.contexts:
            return (f"domain[{i}].contexts", "revision 2 sizes the pool by init: use "
                    "pv_iommu_init = {max_ctx_no = N, arena_order = K}")
        if d.pv_iommu_init is not None:
            n, order = d.pv_iommu_init
            if not 0 <= n <= 0xFFFE or not 1 <= order <= MAX_ARENA_ORDER:
                return (f"domain[{i}].pv_iommu_init",
                        f"expected max_ctx_no 0 to 65534 and arena_order 1 to {MAX_ARENA_ORDER}")
        for j, sbdf in enumerate(d.devices):
            if sbdf in owners:
                return (f"domain[{i}].devices[{j}]",
                        f"{format_sbdf(sbdf)} is assigned to d{owners[sbdf]} already")
            owners[sbdf] = d.domid
        pages = d.memory_mib * PAGES_PER_MIB
        # A no-dma domain's context 0 has its root table and no 1:1 map.
        frames += pages + 1 if d.no_dma else identity_frames(pages, levels)
        if frames > config.memory_mib * PAGES_PER_MIB:
            return (f"domain[{i}].memory_mib",
                    f"the domains up to d{d.domid} and their default contexts' page tables need "
                    f"{frames} frames; the machine has {config.memory_mib * PAGES_PER_MIB} "
                    f"({config.memory_mib} MiB)")
    return rmrr_problem(config)


def rmrr_problem(config: MachineConfig) -> tuple[str, str] | None:
    """A reserved range outside the machine's memory or overlapping another."""
    if len(config.rmrr) > MAX_RMRRS:
        return "rmrr", f"at most {MAX_RMRRS} ranges"
    machine_pages = config.memory_mib * PAGES_PER_MIB
    for i, (_, start, pages) in enumerate(config.rmrr):
        if start < 0 or pages < 1 or start + pages > machine_pages:
            return (f"rmrr[{i}]", f"pfns {start:#x}+{pages:#x} are not within the machine's "
                    f"{machine_pages:#x} frames")
    by_start = sorted(range(len(config.rmrr)), key=lambda i: config.rmrr[i][1])
    for a, b in zip(by_start, by_start[1:]):
        if config.rmrr[b][1] < config.rmrr[a][1] + config.rmrr[a][2]:
            return f"rmrr[{b}]", f"overlaps rmrr[{a}]"
    return None


def rmrr_owner_problem(config: MachineConfig) -> tuple[str, str] | None:
    """A reserved range of a device no domain is assigned. Checked where a
    machine is declared (file, trace header), not on a snapshot's machine,
    whose devices may since have left every domain (quarantine)."""
    assigned = {s for d in config.domains for s in d.devices}
    for i, (sbdf, _, _) in enumerate(config.rmrr):
        if sbdf not in assigned:
            return f"rmrr[{i}].sbdf", f"{format_sbdf(sbdf)} is not assigned to any domain"
    return None


def default_machine(revision: int = 1) -> MachineConfig:
    """The embedded machine: enough for the Linux xen-iommu driver's probe.

    dom0 is the hardware domain with 1 GiB, a pool of 128 contexts (what the
    driver's revision-2 init asks for) and four devices; dom1 is an ordinary
    guest with a device of its own, which PV-IOMMU must refuse (-EPERM).

    Revision 2: the same domains, uninitialised (the driver's init sizes the
    pool), on VT-d's 48-bit address width (max_iova_addr 2^48-1); every
    IOMMU-enabled domain may use PV-IOMMU on itself.
    """
    rev2 = revision == 2
    return MachineConfig(pv_iommu_revision=revision, address_width=48 if rev2 else 39, domains=(
        DomainConfig(domid=0, name="dom0", hardware=True, memory_mib=1024,
                     contexts=0 if rev2 else 128,
                     devices=tuple(parse_sbdf(s) for s in
                                   ("0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"))),
        DomainConfig(domid=1, name="guest1", hardware=False, memory_mib=256,
                     contexts=0 if rev2 else 8,
                     devices=(parse_sbdf("0000:01:00.0"),)),
    ), rmrr=DEFAULT_RMRR)


# d0's 00:04.0 plays a USB controller whose firmware keeps legacy USB
# emulation buffers in low memory: real DMAR tables give such controllers an
# RMRR below 1 MiB, typically one page at 0xE8000 (dmesg "RMRR base:
# 0x000000000e8000 end: 0x000000000e8fff"). Two pages here, so that counts
# and ranges differ from 1 and a single frame. Below 1 MiB is also where
# drivers do not map DMA buffers.
DEFAULT_RMRR = ((parse_sbdf("0000:00:04.0"), 0xE8, 2),)


def load_machine(path: Path) -> MachineConfig:
    """A machine from TOML: top-level machine keys and one [[domain]] table per domain."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    return machine_from_dict(data, str(path))


def machine_to_dict(config: MachineConfig) -> dict:
    """The inverse of machine_from_dict: plain data (TOML keys, PCI addresses
    as text) that a trace header carries so a replay builds the same machine."""
    data = dataclasses.asdict(config)
    domains = data.pop("domains")
    for dom in domains:
        dom["devices"] = [format_sbdf(s) for s in dom["devices"]]
        init = dom.pop("pv_iommu_init")
        if init is not None:
            dom["pv_iommu_init"] = {"max_ctx_no": init[0], "arena_order": init[1]}
        if not dom["no_dma"]:
            del dom["no_dma"]       # headers without it stay as they were
    rmrr = data.pop("rmrr")
    if rmrr:    # headers of machines without ranges stay as they were
        data["rmrr"] = [{"sbdf": format_sbdf(s), "start_pfn": start, "nr_pages": pages}
                        for s, start, pages in rmrr]
    if not config.nested and config.max_pasid == PASID_MAX:
        del data["nested"], data["max_pasid"]   # headers without them stay as they were
    if config.pv_iommu_revision == 1:
        # Revision-1 headers stay as they were (committed traces replay byte for byte).
        del data["pv_iommu_revision"], data["rev2_pages_per_round"], data["rev2_semantics"]
    return {**data, "domain": domains}


def domain_from_file(dom: DomainFile) -> DomainConfig:
    """The in-memory domain of a checked DomainFile."""
    init = dom.pv_iommu_init
    return DomainConfig(**{**msgspec.structs.asdict(dom), "devices": tuple(dom.devices),
                           "pv_iommu_init": None if init is None else
                           (init.max_ctx_no, init.arena_order)})


def machine_from_dict(data, where: str = "config") -> MachineConfig:
    """A machine from plain data (TOML, a trace header), or one ConfigError:
    "WHERE: PATH: WHAT"."""
    try:
        checked = convert(data, MachineFile, where)
    except InputError as e:
        raise ConfigError(str(e)) from None
    config = machine_from_file(checked, where)
    problem = rmrr_owner_problem(config)
    if problem:
        raise ConfigError(f"{where}: {problem[0]}: {problem[1]}")
    return config


def machine_from_file(checked: MachineFile, where: str, path: str = "") -> MachineConfig:
    """The in-memory machine of a checked MachineFile (`path`: where it sits
    in a larger document, e.g. "machine." in a snapshot), or ConfigError for
    what spans fields (a domid twice, domains larger than the machine)."""
    domains = tuple(domain_from_file(d) for d in checked.domain)
    fields = {k: v for k, v in msgspec.structs.asdict(checked).items()
              if k not in ("domain", "rmrr")}
    rmrr = tuple((int(r.sbdf), r.start_pfn, r.nr_pages) for r in checked.rmrr)
    try:
        return MachineConfig(domains=domains, rmrr=rmrr, **fields)
    except ConfigError as e:
        raise ConfigError(f"{where}: {path}{e}") from None
