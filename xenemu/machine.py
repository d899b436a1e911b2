"""What the simulated machine is made of: the IOMMU and the domains.

A MachineConfig is plain data. `default_machine()` is the machine `xenemu
serve` starts with no configuration; `load_machine()` reads any other from
TOML. The README documents both.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class ConfigError(ValueError):
    pass


def parse_sbdf(text: str) -> int:
    """'0000:00:02.0' or '00:02.0' -> seg << 16 | bus << 8 | devfn."""
    try:
        parts = text.split(":")
        if len(parts) == 2:
            parts = ["0"] + parts
        seg, bus, devfunc = parts
        dev, func = devfunc.split(".")
        seg, bus, dev, func = int(seg, 16), int(bus, 16), int(dev, 16), int(func, 16)
    except ValueError:
        raise ConfigError(f"bad PCI address {text!r}: expected SSSS:BB:DD.F") from None
    if seg > 0xFFFF or bus > 0xFF or dev > 0x1F or func > 7:
        raise ConfigError(f"bad PCI address {text!r}: field out of range")
    return seg << 16 | bus << 8 | dev << 3 | func


def format_sbdf(sbdf: int) -> str:
    return f"{sbdf >> 16:04x}:{sbdf >> 8 & 0xFF:02x}:{sbdf >> 3 & 0x1F:02x}.{sbdf & 7}"


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


@dataclass(frozen=True)
class MachineConfig:
    iommu: bool = True              # iommu_enabled: the IOMMU is on globally
    address_width: int = 39         # IOMMU address width: 39 (3 levels) or 48 (4 levels)
    iotlb_entries: int = 1024
    memory_mib: int = 4096          # machine memory (backed lazily)
    honour_clone: bool = False      # alloc_context honours IOMMU_CREATE_clone (reference code ignores it)
    page_in_delay_ms: int = 10      # a paged-out gfn becomes RAM this long after a map asks for it
    check_iotlb: bool = False       # verify every IOTLB hit against the page tables
    domains: tuple[DomainConfig, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.address_width not in (39, 48):
            raise ConfigError("address_width must be 39 or 48")
        ids = [d.domid for d in self.domains]
        if len(ids) != len(set(ids)):
            raise ConfigError("two domains share a domid")
        for d in self.domains:
            if not 0 <= d.domid < 0x7FF0:
                raise ConfigError(f"domid {d.domid} out of range")
            if not 0 <= d.contexts <= 0xFFFF:
                raise ConfigError(f"d{d.domid}: contexts must fit in 16 bits (ctx_no)")
            if d.table_pages < 0:
                raise ConfigError(f"d{d.domid}: table_pages must be 0 (no limit) or more")
        owners = {}
        for d in self.domains:
            for sbdf in d.devices:
                if sbdf in owners:
                    raise ConfigError(f"device {format_sbdf(sbdf)} assigned to d{owners[sbdf]} "
                                      f"and d{d.domid}")
                owners[sbdf] = d.domid


def default_machine() -> MachineConfig:
    """The embedded machine: enough for the Linux xen-iommu driver's probe.

    dom0 is the hardware domain with 1 GiB, a pool of 128 contexts (what the
    driver's revision-2 init asks for) and four devices; dom1 is an ordinary
    guest with a device of its own, which PV-IOMMU must refuse (-EPERM).
    """
    return MachineConfig(domains=(
        DomainConfig(domid=0, name="dom0", hardware=True, memory_mib=1024, contexts=128,
                     devices=tuple(parse_sbdf(s) for s in
                                   ("0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"))),
        DomainConfig(domid=1, name="guest1", hardware=False, memory_mib=256, contexts=8,
                     devices=(parse_sbdf("0000:01:00.0"),)),
    ))


_MACHINE_KEYS = {"iommu", "address_width", "iotlb_entries", "memory_mib", "honour_clone",
                 "page_in_delay_ms", "check_iotlb", "domain"}
_DOMAIN_KEYS = {"domid", "name", "hardware", "iommu", "memory_mib", "contexts", "devices",
                "opaque_default", "table_pages"}


def load_machine(path: Path) -> MachineConfig:
    """A machine from TOML: top-level machine keys and one [[domain]] table per domain."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return machine_from_dict(data, str(path))


def machine_to_dict(config: MachineConfig) -> dict:
    """The inverse of machine_from_dict: plain data (TOML keys, PCI addresses
    as text) that a trace header carries so a replay builds the same machine."""
    data = dataclasses.asdict(config)
    domains = data.pop("domains")
    for dom in domains:
        dom["devices"] = [format_sbdf(s) for s in dom["devices"]]
    return {**data, "domain": domains}


def machine_from_dict(data: dict, where: str = "config") -> MachineConfig:
    unknown = set(data) - _MACHINE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    domains = []
    for i, dom in enumerate(data.get("domain", [])):
        unknown = set(dom) - _DOMAIN_KEYS
        if unknown:
            raise ConfigError(f"{where}: domain #{i}: unknown key(s) {sorted(unknown)}")
        if "domid" not in dom:
            raise ConfigError(f"{where}: domain #{i} has no domid")
        dom = dict(dom)
        dom["devices"] = tuple(parse_sbdf(s) for s in dom.get("devices", ()))
        domains.append(DomainConfig(**dom))
    machine = {k: v for k, v in data.items() if k != "domain"}
    return MachineConfig(domains=tuple(domains), **machine)
