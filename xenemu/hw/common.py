"""Names shared by both implementations of the simulated hardware.

The values mirror cext/hw.h (a test checks they agree with the compiled
library), so the pure-Python reference needs no C to run.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

from ..pci import pack_sbdf as sbdf  # noqa: F401 (a device id, as the hardware takes it)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PERM_R = 0x1  #: VT-d second-level PTE bit 0: reads allowed
PERM_W = 0x2  #: bit 1: writes allowed
PERM_RW = PERM_R | PERM_W

OWNER_NONE = 0xFFFF  #: owner of a free or hypervisor-owned frame
INTR_FIRST = 0xFEE00000  #: interrupt (MSI) window, never memory for DMA
INTR_LAST = 0xFEEFFFFF

MAX_CONTEXTS = 65535
MAX_DEVICES = 65536
MAX_FAULTS = 65536
MAX_POOLS = 2048     #: table-page budgets (pool 0: no limit), two per domain

# Nested translation (xenemu's extension, cext/hw.h and abi/NESTED.md).
S1_P = 0x1           #: stage-1 entry: present
S1_RW = 0x2          #: stage-1 entry: writes allowed
S1_PS = 0x80         #: stage-1 entry: large page (faults S1_TABLE above level 1)
S1_LEVELS = 4
PASID_MAX = 0xFFFFF  #: PASIDs are 1..PASID_MAX (20 bits, as VT-d's)
TLB_PASID_SHIFT = 36  #: an IOTLB tag is page | pasid << this
MAX_PASID_BINDS = 4096  #: (device, PASID) bindings an IOMMU holds

# Dirty tracking (xenemu's extension, cext/hw.h and abi/NESTED.md).
PTE_A = 1 << 8       #: second-level leaf entry: accessed (VT-d SL A/D)
PTE_D = 1 << 9       #: second-level leaf entry: dirty


class Status(enum.IntEnum):
    """Why an operation stopped (0 = it did not)."""

    OK = 0
    INVAL = 1  #: argument out of its domain
    NOCTX = 2  #: context id not allocated
    RANGE = 3  #: dfn / address beyond the address width
    BADFRAME = 4  #: mfn outside the machine, or frame not in use
    PRESENT = 5  #: map: dfn already mapped
    NOTPRESENT = 6  #: unmap: hole
    NOMEM = 7  #: no free machine frame (data or table page)
    BUSY = 8  #: context has devices / is being torn down
    NODEV = 9  #: device not registered
    EXISTS = 10  #: device already registered
    NOSPC = 11  #: context or device table full
    STALE = 12  #: check mode: an IOTLB hit disagreed with the tables
    FAULT = 13  #: DMA stopped by a translation fault (see the fault log)
    REFCOUNT = 14  #: reference count would overflow or go below zero
    INJECTED = 15  #: a failure the fault injector asked for (see Injection)
    PENDING = 16  #: DMA waits on a page request (I/O page faults)


class Fault(enum.IntEnum):
    """Translation fault kinds, as in the fault log and translate()."""

    NONE = 0
    NOT_PRESENT = 1
    WRITE = 2  #: write through an entry without PERM_W
    READ = 3  #: read through an entry without PERM_R
    WIDTH = 4  #: address above max_iova_addr
    INTR = 5  #: DMA into the interrupt window
    BLOCKED = 6  #: device attached to no context
    S1_TABLE = 7  #: nested: a stage-1 table page stage 2 does not map readable, or PS set
    NO_PASID = 8  #: nested: the (device, PASID) pair is bound to nothing


class InjectSite(enum.IntFlag):
    """Where the fault injector can make an operation fail (cext/hw.h)."""

    TABLE = 1  #: a page-table page is taken from machine memory (fails as NOMEM)
    FLUSH = 2  #: an explicit IOTLB invalidation (fails, dropping nothing)
    REF = 4  #: one page reference is taken
    ALL = 7


class Injection(NamedTuple):
    """The fault injector's state: armed (`remaining` events to the failure,
    0 = disarmed), `seen` events at the armed `sites` since arming, and the
    site that failed (None until one has)."""

    sites: InjectSite
    remaining: int
    seen: int
    fired: InjectSite | None


class HwError(Exception):
    """An operation refused as a whole. `index` names the offending element
    of a batch (all-or-nothing frame operations), else None."""

    def __init__(self, status: int, index: int | None = None):
        self.status = Status(status)
        self.index = index
        where = "" if index is None else f" at index {index}"
        super().__init__(f"{self.status.name}{where}")


class StaleIotlbError(HwError):
    """Check mode found an IOTLB hit that no longer matches the page tables
    (someone changed a mapping without invalidating). `done` = addresses
    translated (translate) or bytes moved (DMA) before it."""

    def __init__(self, done: int):
        super().__init__(Status.STALE)
        self.done = done


class FaultRecord(NamedTuple):
    sbdf: int
    addr: int
    kind: Fault
    write: bool


class Counters(NamedTuple):
    """IOTLB counters. `walks` counts page-table entries read by the
    walker (one per level visited), `invalidations` invalidation requests."""

    hits: int
    misses: int
    walks: int
    invalidations: int
    stale: int


class ContextInfo(NamedTuple):
    mapped: int  #: present leaf entries
    tables: int  #: table pages, root included
    counters: Counters


GFN_INVALID = (1 << 64) - 1  #: M2P entry of a frame not in use


def levels_for(width: int) -> int:
    """Page-table levels of an address width: 12 offset bits, 9 per level."""
    if width not in (39, 48):
        raise ValueError("address width must be 39 or 48")
    return (width - PAGE_SHIFT) // 9


def check_status(status: int) -> None:
    if status:
        raise HwError(status)


# I/O page faults (xenemu's extension, cext/hw.h's hw_prq_*).
PRQ_PER_CTX = 32  #: outstanding page requests of one nested context
MAX_PAGE_REQS = 4096  #: outstanding page requests of the IOMMU


class PrqState(enum.IntEnum):
    QUEUED = 0  #: not yet read by the guest
    READ = 1  #: read, waiting for the guest's answer
    ANSWERED = 2  #: answered, waiting for the DMA's retry


class PrqCode(enum.IntEnum):
    """PCIe's page request group response codes."""

    SUCCESS = 0
    INVALID = 1
    FAILURE = 15


class PageRequest(NamedTuple):
    """A recoverable stage-1 not-present fault of a DMA with a PASID."""

    sbdf: int
    pasid: int
    addr: int
    write: bool
    ctx: int
    group: int
    state: PrqState = PrqState.QUEUED
    code: PrqCode = PrqCode.SUCCESS
