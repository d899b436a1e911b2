"""Domains and their IOMMU contexts (seed 000, docs/designs/iommu-contexts.md).

A domain owns guest memory (its P2m), a default context 0 that maps all of
its RAM 1:1, a fixed pool of further contexts whose ids are their pool
positions (1..count), and PCI devices, each attached to one context. The
mappings themselves live in the simulated IOMMU's page tables (xenemu.hw);
a Context only names its hardware context and lists its devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .p2m import P2m

# Xen's DOMID_IO: owner of the machine frames set apart for devices (RMRRs).
DOMID_IO = 0x7FF1


@dataclass
class Context:
    ctx_no: int
    hw_id: int                                # hardware context id (VT-d domain id)
    devices: set[int] = field(default_factory=set)
    dying: bool = False                       # free_context's teardown is under way
    # Its identity-mapped reserved ranges (Xen's ctx->arch.identity_maps):
    # [start pfn, pages, devices using it], the RMRRs of devices attached to
    # it, mapped dfn == mfn when the first such device arrives, unmapped when
    # the last leaves. A range, not a page, per entry.
    identity: list[list[int]] = field(default_factory=list)
    # A nested context (xenemu's extension, abi/NESTED.md): its stage 2
    # (the parent's ctx_no), its stage-1 root frame in the parent's input
    # space, and the (sbdf, pasid) pairs bound to it. None: not nested.
    parent: int | None = None
    s1_root: int = 0
    pasids: set[tuple[int, int]] = field(default_factory=set)
    page_requests: bool = False               # nested: stage-1 faults become page requests
    # The walker keeps A/D bits (alloc_context's xenemu flag, abi/NESTED.md).
    dirty_tracking: bool = False

    @property
    def nested(self) -> bool:
        return self.parent is not None

    def identity_at(self, dfn: int, n: int = 1) -> int | None:
        """The first dfn of [dfn, dfn + n) inside an identity range, or None
        (iommu_identity_map_check, over a run)."""
        if not self.identity:           # the common case, on every map and unmap
            return None
        hits = [max(start, dfn) for start, pages, _ in self.identity
                if start < dfn + n and dfn < start + pages]
        return min(hits) if hits else None


@dataclass
class Domain:
    domid: int
    name: str
    hardware: bool
    iommu_enabled: bool
    p2m: P2m
    contexts: list[Context | None]            # index = ctx_no; [0] is the default context
    devices: dict[int, int] = field(default_factory=dict)   # sbdf -> ctx_no
    opaque_default: bool = False               # context 0 shared with the CPU's tables
    table_pool: int = 0                        # the IOMMU pool its contexts' tables count against
    default_pool: int = 0                      # the IOMMU pool context 0's tables count against
    pv_initialized: bool = False               # revision 2: init ran (sticky, even if it failed)
    no_dma: bool = False                       # revision 2: context 0 maps nothing (dom0-iommu=no-dma)
    # Hypercalls finished, (hypercall, sub-op, result) -> count, for the
    # control op `stats` (`xenemu top`); hypercalls.common.count_call keeps
    # the keys bounded. One dict update per call: the hot path's only cost.
    calls: dict[tuple[int, int, int], int] = field(default_factory=dict)

    @property
    def nr_contexts(self) -> int:
        """The pool's size, context 0 excluded (what query_capabilities reports)."""
        return len(self.contexts) - 1

    def context(self, ctx_no: int) -> Context | None:
        """The allocated context ctx_no, or None (iommu_check_context)."""
        if 0 <= ctx_no < len(self.contexts):
            return self.contexts[ctx_no]
        return None

    def usable_context(self, ctx_no: int) -> Context | None:
        """A context PV-IOMMU may map into: allocated, not dying, not opaque."""
        ctx = self.context(ctx_no)
        if ctx is None or ctx.dying or (ctx_no == 0 and self.opaque_default):
            return None
        return ctx

    def children(self, ctx_no: int) -> list[int]:
        """The nested contexts whose stage 2 is ctx_no."""
        return [c.ctx_no for c in self.contexts if c is not None and c.parent == ctx_no]

    def free_slot(self) -> int | None:
        """The lowest free pool position (iommu_context_alloc's find_first_zero_bit)."""
        for ctx_no in range(1, len(self.contexts)):
            if self.contexts[ctx_no] is None:
                return ctx_no
        return None
