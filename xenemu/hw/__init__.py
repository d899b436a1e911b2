"""Simulated hardware under xenemu: machine memory and a VT-d-like IOMMU.

    m = Memory(4 << 30)                 # lazily backed machine memory
    io = Iommu(m, width=39)              # 3-level tables, max_iova_addr 2**39-1
    mfns = m.alloc(256, owner=1)         # array('Q') of frame numbers
    ctx = io.alloc_context()
    done, st = io.map(ctx, dfn, mfns, PERM_R | PERM_W)   # st: Status
    done, st, old = io.unmap(ctx, dfn, 256)              # old: array('Q')
    io.add_device(sbdf(0, 3, 0)); io.attach(sbdf(0, 3, 0), ctx)
    data = io.dma_read(sbdf(0, 3, 0), dfn << 12, 4096)
    recs, overflow = io.faults()

Operations that can stop part way (map, unmap) return (done, Status); other
refusals raise HwError(status). The classes here are the C implementation;
xenemu.hw.reference has the same interface in pure Python. Semantics
belonging to Xen (errno, domains, p2m) are left to the layer above.
"""
from .common import (
    GFN_INVALID, INTR_FIRST, INTR_LAST, MAX_PASID_BINDS, OWNER_NONE, PASID_MAX,
    PAGE_SHIFT, PAGE_SIZE, PERM_R,
    PERM_RW, PERM_W, ContextInfo, Counters, Fault, FaultRecord, HwError,
    StaleIotlbError, Status, sbdf,
)
from .common import MAX_PAGE_REQS, PRQ_PER_CTX, PageRequest, PrqCode, PrqState
from .native import Iommu, Memory

__all__ = [
    "GFN_INVALID", "INTR_FIRST", "INTR_LAST", "MAX_PASID_BINDS", "OWNER_NONE", "PASID_MAX",
    "PAGE_SHIFT", "PAGE_SIZE",
    "PERM_R", "PERM_RW", "PERM_W", "ContextInfo", "Counters", "Fault",
    "FaultRecord", "HwError", "Iommu", "Memory", "StaleIotlbError",
    "Status", "sbdf",
    "MAX_PAGE_REQS", "PRQ_PER_CTX", "PageRequest", "PrqCode", "PrqState",
]
