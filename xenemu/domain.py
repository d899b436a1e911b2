"""Domains and their IOMMU contexts (seed 000, docs/designs/iommu-contexts.md).

A domain owns guest memory (its P2m), a default context 0 that maps all of
its RAM 1:1, a fixed pool of further contexts whose ids are their pool
positions (1..count), and PCI devices, each attached to one context. The
mappings themselves live in the simulated IOMMU's page tables (xenemu.hw);
a Context only names its hardware context and lists its devices.
"""

from __future__ import annotations

from .hw._hwlib import ffi, lib
from .p2m import P2m

# Xen's DOMID_IO: owner of the machine frames set apart for devices (RMRRs).
DOMID_IO = 0x7FF1

# Identity ranges one context may hold: each is a device's RMRR, and a
# machine has at most machine.MAX_RMRRS of them.
MAX_IDENTITY = 1024


class Context:
    """One IOMMU context of a domain. What the C fast path reads of it (its
    hardware context, dying, its identity ranges, the references it holds
    on other domains' frames) lives in its `struct fp_context`
    (cext/fastpath.h), which it owns and reads through; the rest, which
    only Python reads, is plain attributes."""

    __slots__ = ("_c", "ctx_no", "domid", "devices", "parent", "s1_root", "pasids", "page_requests",
                 "dirty_tracking", "tearing_down")

    def __init__(self, ctx_no: int, hw_id: int, domid: int, *, parent: int | None = None,
                 s1_root: int = 0, page_requests: bool = False):
        c = lib.fp_context_create(hw_id)
        if c == ffi.NULL:
            raise MemoryError("no memory for an IOMMU context")
        self._c = ffi.gc(c, lib.fp_context_destroy)
        self.ctx_no = ctx_no
        self.domid = domid                      # whose context it is
        self.devices: set[int] = set()
        # A nested context (xenemu's extension, abi/NESTED.md): its stage 2
        # (the parent's ctx_no), its stage-1 root frame in the parent's input
        # space, and the (sbdf, pasid) pairs bound to it. None: not nested.
        self.parent = parent
        self.s1_root = s1_root
        self.pasids: set[tuple[int, int]] = set()
        self.page_requests = page_requests      # nested: stage-1 faults become page requests
        # The walker keeps A/D bits (alloc_context's xenemu flag, abi/NESTED.md).
        self.dirty_tracking = False
        # Its teardown has begun (dying is then set too): the hardware
        # refuses it to all but the teardown. (Revision 2's -EBUSY leaves a
        # context dying that is not torn down, and still maps.)
        self.tearing_down = False

    def __repr__(self) -> str:
        return f"Context(ctx_no={self.ctx_no}, hw_id={self.hw_id}, dying={self.dying})"

    @property
    def hw_id(self) -> int:
        """Its hardware context id (VT-d domain id)."""
        return self._c.hw_id

    @property
    def dying(self) -> bool:
        """free_context's teardown is under way."""
        return bool(self._c.dying)

    @dying.setter
    def dying(self, value: bool) -> None:
        self._c.dying = bool(value)

    @property
    def foreign_refs(self) -> int:
        """References its mappings hold on other domains' frames (§6.1)."""
        return self._c.foreign_refs

    @foreign_refs.setter
    def foreign_refs(self, value: int) -> None:
        self._c.foreign_refs = value

    @property
    def nested(self) -> bool:
        return self.parent is not None

    # Its identity-mapped reserved ranges (Xen's ctx->arch.identity_maps):
    # the RMRRs of devices attached to it, mapped dfn == mfn when the first
    # such device arrives, unmapped when the last leaves. A range, not a
    # page, per entry.

    @property
    def identity(self) -> list[tuple[int, int, int]]:
        """(start pfn, pages, devices using it) of each range, in order."""
        c = self._c
        return [(r.start, r.pages, r.users) for r in c.identity[0:c.nidentity]]

    def identity_add(self, start: int, pages: int) -> None:
        """A new range, with one user."""
        if lib.fp_identity_add(self._c, start, pages, MAX_IDENTITY):
            raise MemoryError("no memory for an identity range")

    def identity_users(self, start: int, pages: int, delta: int) -> int | None:
        """The range's users change by delta: how many are left (it goes at
        0), or None when the context has no such range."""
        left = lib.fp_identity_users(self._c, start, pages, delta)
        return None if left < 0 else left

    def identity_at(self, dfn: int, n: int = 1) -> int | None:
        """The first dfn of [dfn, dfn + n) inside an identity range, or None
        (iommu_identity_map_check, over a run)."""
        c = self._c
        if not c.nidentity:             # the common case, on every map and unmap
            return None
        first = ffi.new("uint64_t *")
        return first[0] if lib.fp_identity_at(c, dfn, n, first) else None


class ContextTable:
    """A domain's contexts by ctx_no ([0] is the default context, None a
    free slot): the Context objects, and the C domain's slot pointers the
    fast path reads, set together here and nowhere else."""

    __slots__ = ("_dom", "_items")

    def __init__(self, dom, n: int):
        self._dom = dom
        self._items: list[Context | None] = [None] * n

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def __setitem__(self, i: int, ctx: Context | None) -> None:
        if not 0 <= i < len(self._items):
            raise IndexError(f"no context slot {i}")
        self._dom.slot[i] = ffi.NULL if ctx is None else ctx._c
        self._items[i] = ctx

    def grow(self, n: int) -> None:
        """n more slots, all free (revision 2's init)."""
        if lib.fp_domain_resize(self._dom, len(self._items) + n):
            raise MemoryError("no memory for the context table")
        self._items += [None] * n


def _flag(bit: int, doc: str) -> property:
    """A flag of the domain, read and written in its struct fp_domain."""
    def get(d) -> bool:
        return bool(d._c.flags & bit)

    def set_(d, on: bool) -> None:
        d._c.flags = d._c.flags | bit if on else d._c.flags & ~bit
    return property(get, set_, doc=doc)


class Domain:
    """A domain: its memory (P2m), contexts, devices and flags. The flags and
    the context table the C fast path reads are its `struct fp_domain`'s."""

    def __init__(self, *, domid: int, name: str, hardware: bool, iommu_enabled: bool, p2m: P2m,
                 contexts: int, opaque_default: bool = False, no_dma: bool = False):
        flags = ((lib.FP_D_HARDWARE if hardware else 0)
                 | (lib.FP_D_IOMMU_ENABLED if iommu_enabled else 0)
                 | (lib.FP_D_OPAQUE_DEFAULT if opaque_default else 0)
                 | (lib.FP_D_NO_DMA if no_dma else 0))
        dom = lib.fp_domain_create(domid, flags, contexts, p2m.c_p2m)
        if dom == ffi.NULL:
            raise MemoryError(f"no memory for d{domid}")
        self._c = ffi.gc(dom, lib.fp_domain_destroy)
        self.domid = domid
        self.name = name
        self.p2m = p2m
        # index = ctx_no; [0] is the default context
        self.contexts = ContextTable(self._c, contexts)
        self.devices: dict[int, int] = {}           # sbdf -> ctx_no
        self.table_pool = 0         # the IOMMU pool its contexts' tables count against
        self.default_pool = 0       # the IOMMU pool context 0's tables count against
        self.pv_initialized = False     # revision 2: init ran (sticky, even if it failed)
        # Hypercalls the Python handlers finished, (hypercall, sub-op, result)
        # -> count, for the control op `stats` (`xenemu top`);
        # hypercalls.common.count_call keeps the keys bounded. The fast
        # path's own are counted in C (fast_calls).
        self.calls: dict[tuple[int, int, int], int] = {}

    def __repr__(self) -> str:
        return f"Domain(domid={self.domid}, name={self.name!r})"

    hardware = _flag(lib.FP_D_HARDWARE, "The hardware domain (dom0).")
    iommu_enabled = _flag(lib.FP_D_IOMMU_ENABLED, "Its IOMMU is on.")
    opaque_default = _flag(lib.FP_D_OPAQUE_DEFAULT, "Context 0 shared with the CPU's tables.")
    no_dma = _flag(lib.FP_D_NO_DMA, "Revision 2: context 0 maps nothing (dom0-iommu=no-dma).")

    def call_counts(self) -> dict[tuple[int, int, int], int]:
        """Every hypercall finished, (hypercall, sub-op, result) -> count:
        those of the Python handlers (calls) and those the fast path
        answered, which it counts in C."""
        counts = dict(self.calls)
        nresults = lib.FP_NRESULTS
        fast = memoryview(ffi.buffer(self._c.calls, 8 * lib.FP_NSUBOPS * nresults)).cast("Q")
        for i, n in enumerate(fast):
            if n:
                key = (lib.FP_HYPERCALL, i // nresults, -(i % nresults))
                counts[key] = counts.get(key, 0) + n
        return counts

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
