"""Pure-Python reference of the simulated hardware (same interface as
xenemu.hw.native): the baseline of the benchmark and the oracle of the
differential tests.

It keeps the same observable behaviour as the C layer, including the page
tables themselves (VT-d second-level format, little-endian 64-bit entries in
simulated machine memory), frame allocation order, context id reuse and the
IOTLB's set hash and round-robin replacement, so counters match exactly.
Like the C layer it holds no Python object per page: memory is an anonymous
mmap, metadata and IOTLB are flat arrays.
"""
from __future__ import annotations

import mmap
import struct
from array import array

from .common import (
    GFN_INVALID, INTR_FIRST, INTR_LAST, MAX_CONTEXTS, MAX_DEVICES, MAX_FAULTS, MAX_POOLS,
    MAX_PASID_BINDS, OWNER_NONE, PASID_MAX, S1_LEVELS, S1_P, S1_PS, S1_RW, TLB_PASID_SHIFT,
    PAGE_SHIFT, PAGE_SIZE, PERM_RW, PERM_W, PERM_R, PTE_A, PTE_D, Counters, ContextInfo,
    Fault, FaultRecord, HwError, Injection, InjectSite, StaleIotlbError, Status,
    levels_for, MAX_PAGE_REQS, PRQ_PER_CTX, PageRequest, PrqCode, PrqState,
)

_PTE = struct.Struct("<Q")
_ADDR = 0x000FFFFFFFFFF000
_MASK64 = (1 << 64) - 1
_MAX_FRAMES = 1 << 40
_CTX_NONE = 0xFFFFFFFF
_S1_NOT_PRESENT = 0x100 | Fault.NOT_PRESENT   # cext/nested.c's: a page request can fix it
_PENDING = -1                                 # _dma_nested: a page request waits
_FREE, _LIVE, _DYING = 0, 1, 2


def _run(mfns, ranges: bool = False):
    """The frame numbers of a uint64 buffer (or, where the C layer takes
    runs, a range of step 1)."""
    if ranges and isinstance(mfns, range):
        if mfns.step != 1:
            raise ValueError("a run of frames is a range with step 1")
        return mfns
    if memoryview(mfns).itemsize != 8:
        raise TypeError("frame numbers must be a uint64 buffer, e.g. array('Q')")
    return memoryview(mfns).cast("B").cast("Q")


class Memory:
    """See xenemu.hw.native.Memory."""

    def __init__(self, size: int = 4 << 30):
        if size <= 0 or size % PAGE_SIZE or size // PAGE_SIZE > _MAX_FRAMES:
            raise ValueError("machine size must be a multiple of 4 KiB")
        self.size = size
        self.nframes = n = size >> PAGE_SHIFT
        # Private, so MADV_DONTNEED zeroes a freed frame as in C.
        # (Python's mmap has no MAP_NORESERVE; pages are lazy all the same.)
        self.mem = mmap.mmap(-1, size,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._ref = array("I", bytes(4 * n))
        self._owner = array("H", bytes(2 * n))  # owner XOR 0xFFFF, as in C
        self._in_use = bytearray(n)
        self._m2p: dict[int, int] = {}
        self._free = array("Q")
        self._watermark = 0
        self.used = 0
        self._inject = [0, 0, 0, 0]  # countdown, seen, sites, fired (as struct hw_inject)

    def _available(self) -> int:
        return len(self._free) + self.nframes - self._watermark

    def _take(self, owner: int) -> int:
        """One zeroed frame (the IOMMU's table pages); HwError NOMEM."""
        if not self._available():
            raise HwError(Status.NOMEM)
        if self._free:
            mfn = self._free.pop()
        else:
            mfn = self._watermark
            self._watermark += 1
        self._in_use[mfn] = 1
        self._owner[mfn] = owner ^ OWNER_NONE
        self._ref[mfn] = 0
        self.used += 1
        return mfn

    def _take_table(self) -> int:
        """A frame for the IOMMU's tables: a TABLE event (hw_frame_take)."""
        if not self._available() or self._inject_fail(InjectSite.TABLE):
            raise HwError(Status.NOMEM)
        return self._take(OWNER_NONE)

    def _inject_fail(self, site: int) -> bool:
        f = self._inject
        if not f[0] or not f[2] & site:
            return False
        f[1] += 1
        f[0] -= 1
        if f[0]:
            return False
        f[3] = site
        return True

    def inject(self, sites: int, nth: int) -> None:
        if nth and (not sites or sites & ~int(InjectSite.ALL)):
            raise HwError(Status.INVAL)
        self._inject = [nth, 0, sites if nth else 0, 0]

    def injection(self) -> Injection:
        n, seen, sites, fired = self._inject
        return Injection(InjectSite(sites), n, seen, InjectSite(fired) if fired else None)

    def _release(self, mfn: int) -> None:
        if mfn >= self.nframes or not self._in_use[mfn]:
            return
        self.mem.madvise(mmap.MADV_DONTNEED, mfn << PAGE_SHIFT, PAGE_SIZE)
        self._in_use[mfn] = 0
        self._owner[mfn] = 0
        self._ref[mfn] = 0
        self._free.append(mfn)
        self.used -= 1

    def alloc(self, n: int, owner: int) -> array:
        if n > self._available():
            raise HwError(Status.NOMEM)
        return array("Q", [self._take(owner) for _ in range(n)])

    def _ok(self, mfn: int) -> bool:
        return mfn < self.nframes and self._in_use[mfn]

    def free(self, mfns) -> None:
        run = _run(mfns)
        for i, mfn in enumerate(run):
            if not self._ok(mfn):
                raise HwError(Status.BADFRAME, i)
            if self._ref[mfn]:
                raise HwError(Status.REFCOUNT, i)
        for mfn in run:
            self._release(mfn)

    def _adjust(self, mfns, delta: int) -> None:
        run = _run(mfns, ranges=True)
        for i, mfn in enumerate(run):
            if not self._ok(mfn):
                raise HwError(Status.BADFRAME, i)
        if delta > 0:
            done, st = self.take_refs(run)
        else:
            done, st = self._put_prefix(run)
        if st:
            for j in range(done):
                self._ref[run[j]] -= delta
            raise HwError(st, done)

    def _put_prefix(self, run) -> tuple[int, int]:
        ref = self._ref
        for i, mfn in enumerate(run):
            if not ref[mfn]:
                return i, Status.REFCOUNT
            ref[mfn] -= 1
        return len(run), Status.OK

    def take_refs(self, mfns) -> tuple[int, int]:
        run = _run(mfns, ranges=True)
        ref = self._ref
        for i, mfn in enumerate(run):
            if not self._ok(mfn):
                return i, Status.BADFRAME
            if ref[mfn] == 0xFFFFFFFF:
                return i, Status.REFCOUNT
            if self._inject_fail(InjectSite.REF):
                return i, Status.INJECTED
            ref[mfn] += 1
        return len(run), Status.OK

    def get_refs(self, mfns) -> None:
        self._adjust(mfns, 1)

    def put_refs(self, mfns) -> None:
        self._adjust(mfns, -1)

    def _check_range(self, run) -> None:
        for i, mfn in enumerate(run):
            if mfn >= self.nframes:
                raise HwError(Status.BADFRAME, i)

    def refcounts(self, mfns) -> array:
        run = _run(mfns)
        self._check_range(run)
        return array("I", (self._ref[m] for m in run))

    def owners(self, mfns) -> array:
        run = _run(mfns)
        self._check_range(run)
        return array("H", (self._owner[m] ^ OWNER_NONE for m in run))

    def set_m2p(self, mfns, first_gfn: int) -> None:
        run = _run(mfns)
        for i, mfn in enumerate(run):
            if not self._ok(mfn):
                raise HwError(Status.BADFRAME, i)
        for i, mfn in enumerate(run):
            self._m2p[mfn] = first_gfn + i

    def m2p(self, mfns) -> array:
        return array("Q", (self._m2p.get(m, 0) if self._ok(m) else GFN_INVALID
                           for m in _run(mfns)))

    def set_owner(self, mfns, owner: int) -> None:
        run = _run(mfns)
        for i, mfn in enumerate(run):
            if not self._ok(mfn):
                raise HwError(Status.BADFRAME, i)
        for mfn in run:
            self._owner[mfn] = owner ^ OWNER_NONE

    def _span_ok(self, maddr: int, n: int) -> bool:
        return 0 <= maddr <= self.size and 0 <= n <= self.size - maddr

    def read(self, maddr: int, n: int) -> bytes:
        if not self._span_ok(maddr, n):
            raise HwError(Status.BADFRAME)
        return self.mem[maddr:maddr + n]

    def write(self, maddr: int, data) -> None:
        if not self._span_ok(maddr, len(data)):
            raise HwError(Status.BADFRAME)
        self.mem[maddr:maddr + len(data)] = bytes(data)


class _Context:
    """Per context (never per page): root, counts, counters, state."""

    __slots__ = ("root", "mapped", "tables", "cursor", "ndevices", "state",
                 "cnt", "pool", "nested", "s1_root", "parent", "nchildren", "npasids",
                 "prq", "prq_group", "dirty_track")

    def __init__(self, root: int, nested: bool = False):
        self.root = root
        self.nested = nested
        self.s1_root = self.parent = self.nchildren = self.npasids = 0
        self.prq, self.prq_group = False, 0
        self.dirty_track = False
        self.pool = 0
        self.mapped = 0
        self.tables = 0 if nested else 1
        self.cursor = 0
        self.ndevices = 0
        self.state = _LIVE
        self.cnt = [0, 0, 0, 0, 0]  # hits misses walks invalidations stale


_HITS, _MISSES, _WALKS, _INVAL, _STALE = range(5)


class _Iotlb:
    """Set-associative cache in flat arrays; same hash and replacement as
    cext/iotlb.c."""

    def __init__(self, entries: int, ways: int):
        def pow2(x):
            return x > 0 and not x & (x - 1)
        if (not pow2(entries) or not pow2(ways) or ways > entries
                or ways > 64 or entries > 1 << 20):
            raise ValueError("bad IOTLB geometry")
        self.ways = ways
        self.nsets = entries // ways
        self.valid = bytearray(entries)
        self.ctx = array("I", bytes(4 * entries))
        self.dfn = array("Q", bytes(8 * entries))
        self.mfn = array("Q", bytes(8 * entries))
        self.perm = bytearray(entries)
        self.clean = bytearray(entries)     # dirty tracking: writable, D clear
        self.rr = bytearray(self.nsets)

    def set_of(self, ctx: int, dfn: int) -> int:
        h = ((dfn * 0x9E3779B97F4A7C15) ^ (ctx * 0xC2B2AE3D27D4EB4F)) & _MASK64
        return (h >> 32) & (self.nsets - 1)

    def find(self, ctx: int, dfn: int) -> int:
        """Slot index of (ctx, dfn), or -1."""
        base = self.set_of(ctx, dfn) * self.ways
        for i in range(base, base + self.ways):
            if self.valid[i] and self.ctx[i] == ctx and self.dfn[i] == dfn:
                return i
        return -1

    def hit(self, ctx: int, tag: int, write: bool) -> int:
        """The slot a translation may use, or -1 (cext's hw_tlb_hit): a
        write through a clean entry drops it, so the walk sets D."""
        i = self.find(ctx, tag)
        if i >= 0 and write and self.clean[i]:
            self.valid[i] = 0
            return -1
        return i

    def fill(self, ctx: int, dfn: int, mfn: int, perm: int) -> int:
        s = self.set_of(ctx, dfn)
        base = s * self.ways
        w = 0
        while w < self.ways and self.valid[base + w]:
            w += 1
        if w == self.ways:
            w = self.rr[s]
            self.rr[s] = (w + 1) % self.ways
        i = base + w
        self.valid[i], self.ctx[i], self.dfn[i] = 1, ctx, dfn
        self.mfn[i], self.perm[i], self.clean[i] = mfn, perm, 0
        return i

    def drop_range(self, ctx: int, dfn: int, n: int) -> None:
        if n <= len(self.valid):
            for d in range(dfn, dfn + n):
                i = self.find(ctx, d & _MASK64)
                if i >= 0:
                    self.valid[i] = 0
            return
        for i in range(len(self.valid)):
            if (self.valid[i] and self.ctx[i] == ctx
                    and (self.dfn[i] - dfn) & _MASK64 < n):
                self.valid[i] = 0

    def drop_ctx(self, ctx: int) -> None:
        for i in range(len(self.valid)):
            if self.ctx[i] == ctx:
                self.valid[i] = 0

    def drop_all(self) -> None:
        self.valid[:] = bytes(len(self.valid))


class Iommu:
    """See xenemu.hw.native.Iommu."""

    def __init__(self, memory: Memory, width: int = 39,
                 max_contexts: int = 1024, max_devices: int = 256,
                 iotlb_entries: int = 1024, iotlb_ways: int = 4,
                 fault_log: int = 256, check: bool = False):
        if (width not in (39, 48) or not 0 < max_contexts <= MAX_CONTEXTS
                or not 0 < max_devices <= MAX_DEVICES
                or not 0 < fault_log <= MAX_FAULTS):
            raise ValueError("bad IOMMU parameters")
        self.memory = memory
        self.width = width
        self.levels = levels_for(width)
        self.max_iova_addr = (1 << width) - 1
        self._max_dfn = self.max_iova_addr >> PAGE_SHIFT
        self._max_ctx = max_contexts
        self._pools = [[0, 0] for _ in range(MAX_POOLS)]   # [limit, used]
        self._ctx: list[_Context | None] = []
        self._ctx_free: list[int] = []
        self._dev_sbdf = array("I", bytes(4 * max_devices))
        self._dev_ctx = array("I", bytes(4 * max_devices))
        self._dev_used = bytearray(max_devices)
        self._fault_cap = fault_log
        self._faults: list[FaultRecord] = []
        self._overflow = False
        self.dma_fault: FaultRecord | None = None
        self.dma_pending: int | None = None  #: the page request group a DMA waits on
        self._tlb = _Iotlb(iotlb_entries, iotlb_ways)
        self._cnt = [0, 0, 0, 0, 0]
        self._pool_cnt = [[0, 0, 0, 0, 0] for _ in range(MAX_POOLS)]   # hw_pool.cnt
        self._pasids: list[list[int]] = []     # [sbdf, pasid, ctx], as cext/nested.c's array
        self._prq: list[PageRequest] = []      # outstanding, oldest first, as cext/prq.c's
        self.check = check

    # --- page-table memory ---------------------------------------------
    def _pte(self, table: int, index: int) -> int:
        return _PTE.unpack_from(self.memory.mem,
                                (table << PAGE_SHIFT) + 8 * index)[0]

    def _set_pte(self, table: int, index: int, value: int) -> None:
        _PTE.pack_into(self.memory.mem, (table << PAGE_SHIFT) + 8 * index,
                       value)

    def _present(self, pte: int) -> bool:
        return bool(pte & PERM_RW) and (pte & _ADDR) >> PAGE_SHIFT < \
            self.memory.nframes

    @staticmethod
    def _index(dfn: int, level: int) -> int:
        return (dfn >> (9 * (level - 1))) & 511

    def _leaf_table(self, c: _Context, dfn: int, create: bool) -> int:
        """mfn of the leaf table for dfn; HwError NOTPRESENT/NOMEM."""
        mfn = c.root
        for level in range(self.levels, 1, -1):
            i = self._index(dfn, level)
            pte = self._pte(mfn, i)
            if not self._present(pte):
                if not create:
                    raise HwError(Status.NOTPRESENT)
                self._charge(c)
                try:
                    fresh = self.memory._take_table()
                except HwError:
                    self._release_table(c)
                    raise
                pte = fresh << PAGE_SHIFT | PERM_RW
                self._set_pte(mfn, i, pte)
            mfn = (pte & _ADDR) >> PAGE_SHIFT
        return mfn

    def _walk(self, c: _Context) -> tuple:
        """A walker for the translation path: dfn -> (leaf pte or 0,
        entries read)."""
        def walk(dfn):
            mfn = c.root
            for level in range(self.levels, 0, -1):
                pte = self._pte(mfn, self._index(dfn, level))
                if not self._present(pte):
                    return 0, self.levels - level + 1
                mfn = (pte & _ADDR) >> PAGE_SHIFT
            return pte, self.levels
        return walk

    # --- contexts -------------------------------------------------------
    def _get(self, ctx: int, nested: bool = False) -> _Context:
        """A live context of the kind asked (INVAL: the other kind)."""
        c = self._ctx[ctx] if 0 <= ctx < len(self._ctx) else None
        if c is None or c.state == _FREE:
            raise HwError(Status.NOCTX)
        if c.state == _DYING:
            raise HwError(Status.BUSY)
        if c.nested != nested:
            raise HwError(Status.INVAL)
        return c

    def alloc_context(self) -> int:
        if not self._ctx_free and len(self._ctx) == self._max_ctx:
            raise HwError(Status.NOSPC)
        root = self.memory._take_table()
        ctx = self._take_id(_Context(root))
        self._pools[0][1] += 1
        return ctx

    def _take_id(self, c: _Context) -> int:
        if self._ctx_free:
            ctx = self._ctx_free.pop()
            self._ctx[ctx] = c
        else:
            ctx = len(self._ctx)
            self._ctx.append(c)
        return ctx

    # --- table-page budgets (cext/hw.h: struct hw_pool) ------------------
    def _charge(self, c: _Context) -> None:
        limit, used = self._pools[c.pool]
        if limit and used >= limit:
            raise HwError(Status.NOMEM)
        self._pools[c.pool][1] += 1
        c.tables += 1

    def _release_table(self, c: _Context) -> None:
        self._pools[c.pool][1] -= 1
        c.tables -= 1

    def set_pool_limit(self, pool: int, limit: int) -> None:
        if not 0 < pool < MAX_POOLS:
            raise HwError(Status.INVAL)
        self._pools[pool][0] = limit

    def _count(self, c: _Context, which: int, n: int = 1) -> None:
        """Count for context c, its pool and the IOMMU (cext's count())."""
        c.cnt[which] += n
        self._pool_cnt[c.pool][which] += n
        self._cnt[which] += n

    def pool_counters(self, pool: int) -> Counters:
        if not 0 <= pool < MAX_POOLS:
            raise HwError(Status.INVAL)
        return Counters(*self._pool_cnt[pool])

    def clear_pool_counters(self, pool: int) -> None:
        if not 0 <= pool < MAX_POOLS:
            raise HwError(Status.INVAL)
        self._pool_cnt[pool] = [0, 0, 0, 0, 0]

    def pool_usage(self, pool: int) -> tuple[int, int]:
        if not 0 <= pool < MAX_POOLS:
            raise HwError(Status.INVAL)
        limit, used = self._pools[pool]
        return used, limit

    def set_context_pool(self, ctx: int, pool: int) -> None:
        if not 0 <= pool < MAX_POOLS:
            raise HwError(Status.INVAL)
        c = self._ctx[ctx] if 0 <= ctx < len(self._ctx) else None
        if c is None or c.state != _LIVE:
            raise HwError(Status.NOCTX)
        limit, used = self._pools[pool]
        if limit and used + c.tables > limit:
            raise HwError(Status.NOMEM)
        self._pools[c.pool][1] -= c.tables
        self._pools[pool][1] += c.tables
        c.pool = pool

    def _inval_ctx(self, ctx: int, c: _Context) -> None:
        self._tlb.drop_ctx(ctx)
        self._stage2_changed(ctx, c)
        self._count(c, _INVAL)

    def teardown(self, ctx: int, budget: int) -> tuple[array, bool]:
        if budget <= 0:
            raise HwError(Status.INVAL)
        c = self._ctx[ctx] if 0 <= ctx < len(self._ctx) else None
        if c is None or c.state == _FREE:
            raise HwError(Status.NOCTX)
        if c.nested:
            return self._nested_teardown(ctx, c)
        if c.state == _LIVE:
            if c.ndevices or c.nchildren:
                raise HwError(Status.BUSY)
            c.state = _DYING
            c.cursor = 0
            self._inval_ctx(ctx, c)
        out = array("Q")
        left = [budget]

        def clear(mfn, level, base):
            shift = 9 * (level - 1)
            i = (c.cursor - base) >> shift if c.cursor > base else 0
            while i < 512:
                d = base + (i << shift)
                pte = self._pte(mfn, i)
                if level == 1:
                    if not left[0]:
                        c.cursor = d
                        return False
                    left[0] -= 1
                    if self._present(pte):
                        out.append((pte & _ADDR) >> PAGE_SHIFT)
                        c.mapped -= 1
                    self._set_pte(mfn, i, 0)
                elif self._present(pte):
                    child = (pte & _ADDR) >> PAGE_SHIFT
                    if not clear(child, level - 1, d):
                        return False
                    self.memory._release(child)
                    self._release_table(c)
                    self._set_pte(mfn, i, 0)
                i += 1
            return True

        if not clear(c.root, self.levels, 0):
            return out, False
        self.memory._release(c.root)
        self._release_table(c)
        c.state = _FREE
        self._ctx_free.append(ctx)
        return out, True

    def context_info(self, ctx: int) -> ContextInfo:
        c = self._ctx[ctx] if 0 <= ctx < len(self._ctx) else None
        if c is None or c.state == _FREE:
            raise HwError(Status.NOCTX)
        return ContextInfo(c.mapped, c.tables, Counters(*c.cnt))

    def counters(self) -> Counters:
        return Counters(*self._cnt)

    # --- mappings -------------------------------------------------------
    def map(self, ctx: int, dfn: int, mfns, perm: int) -> tuple[int, int]:
        return self._map(ctx, dfn, mfns, perm, False)

    def map_referenced(self, ctx: int, dfn: int, mfns, perm: int) -> tuple[int, int]:
        return self._map(ctx, dfn, mfns, perm, True)

    def _map(self, ctx: int, dfn: int, mfns, perm: int, ref: bool) -> tuple[int, int]:
        run = _run(mfns, ranges=True)
        try:
            c = self._get(ctx)
        except HwError as e:
            return 0, e.status
        if not perm or perm & ~PERM_RW:
            return 0, Status.INVAL
        done = 0
        leaf = -1
        for mfn in run:
            d = dfn + done
            if d > self._max_dfn:
                return done, Status.RANGE
            if mfn >= self.memory.nframes:
                return done, Status.BADFRAME
            if ref:
                st = self.memory.take_refs(range(mfn, mfn + 1))[1]
                if st:
                    return done, st
            if leaf < 0 or d & 511 == 0:
                try:
                    leaf = self._leaf_table(c, d, True)
                except HwError as e:
                    self.memory._ref[mfn] -= ref
                    return done, e.status
            if self._present(self._pte(leaf, d & 511)):
                self.memory._ref[mfn] -= ref
                return done, Status.PRESENT
            self._set_pte(leaf, d & 511, mfn << PAGE_SHIFT | perm)
            c.mapped += 1
            done += 1
        return done, Status.OK

    def unmap(self, ctx: int, dfn: int, n: int,
              flush: bool = True) -> tuple[int, int, array]:
        out = array("Q")
        try:
            c = self._get(ctx)
        except HwError as e:
            return 0, e.status, out
        st = Status.OK
        leaf = -1
        for d in range(dfn, dfn + n):
            if d > self._max_dfn:
                st = Status.RANGE
                break
            if leaf < 0 or d & 511 == 0:
                try:
                    leaf = self._leaf_table(c, d, False)
                except HwError as e:
                    st = e.status
                    break
            pte = self._pte(leaf, d & 511)
            if not self._present(pte):
                st = Status.NOTPRESENT
                break
            out.append((pte & _ADDR) >> PAGE_SHIFT)
            self._set_pte(leaf, d & 511, 0)
            c.mapped -= 1
        if flush and out:
            self._tlb.drop_range(ctx, dfn, len(out))
            self._stage2_changed(ctx, c)
            self._count(c, _INVAL)
        return len(out), st, out

    def lookup(self, ctx: int, dfn: int) -> tuple[int, int] | None:
        c = self._get(ctx)
        if dfn > self._max_dfn:
            raise HwError(Status.RANGE)
        try:
            leaf = self._leaf_table(c, dfn, False)
        except HwError:
            return None
        pte = self._pte(leaf, dfn & 511)
        if not self._present(pte):
            return None
        return (pte & _ADDR) >> PAGE_SHIFT, pte & PERM_RW

    def lookup_run(self, ctx: int, dfn: int, n: int) -> tuple[array, array]:
        self._get(ctx)
        if n and (dfn > self._max_dfn or n - 1 > self._max_dfn - dfn):
            raise HwError(Status.RANGE)
        mfns, perms = array("Q", bytes(8 * n)), array("B", bytes(n))
        for i in range(n):
            found = self.lookup(ctx, dfn + i)
            if found:
                mfns[i], perms[i] = found
        return mfns, perms

    def next_mapped(self, ctx: int, dfn: int) -> int | None:
        c = self._get(ctx)
        while dfn <= self._max_dfn:
            mfn, level = c.root, self.levels
            while level >= 1:
                pte = self._pte(mfn, self._index(dfn, level))
                if not self._present(pte):
                    break
                if level == 1:
                    return dfn
                mfn = (pte & _ADDR) >> PAGE_SHIFT
                level -= 1
            span = 1 << 9 * (level - 1)
            dfn = (dfn & ~(span - 1)) + span
        return None

    def _addr_fault(self, addr: int) -> int:
        """The fault the address alone decides (cext's hw_addr_fault)."""
        if addr > self.max_iova_addr:
            return Fault.WIDTH
        if INTR_FIRST <= addr <= INTR_LAST:
            return Fault.INTR
        return Fault.NONE

    @staticmethod
    def _access(mfn: int, perm: int, addr: int, write: bool) -> tuple[int, int]:
        """(fault kind, machine address) of an access through a translation."""
        if write and not perm & PERM_W:
            return Fault.WRITE, 0
        if not write and not perm & PERM_R:
            return Fault.READ, 0
        return Fault.NONE, mfn << PAGE_SHIFT | addr & (PAGE_SIZE - 1)

    def _xlate(self, ctx: int, c: _Context, walk, addr: int,
               write: bool) -> tuple[int, int]:
        """(fault kind, machine address); raises StaleIotlbError(0)."""
        f = self._addr_fault(addr)
        if f:
            return f, 0
        dfn = addr >> PAGE_SHIFT
        tlb = self._tlb
        i = tlb.hit(ctx, dfn, write)
        if i >= 0:
            self._count(c, _HITS)
            mfn, perm = tlb.mfn[i], tlb.perm[i]
            if self.check:
                pte, _ = walk(dfn)
                if (pte & _ADDR) >> PAGE_SHIFT != mfn or pte & PERM_RW != perm:
                    self._count(c, _STALE)
                    raise StaleIotlbError(0)
        else:
            self._count(c, _MISSES)
            pte, walks = walk(dfn)
            self._count(c, _WALKS, walks)
            if not pte:
                return Fault.NOT_PRESENT, 0
            mfn, perm = (pte & _ADDR) >> PAGE_SHIFT, pte & PERM_RW
            i = tlb.fill(ctx, dfn, mfn, perm)
            if c.dirty_track:
                tlb.clean[i] = self._ad_update(c, dfn, perm, write)
        return self._access(mfn, perm, addr, write)

    def translate(self, ctx: int, addrs, write: bool = False
                  ) -> tuple[array, array]:
        c = self._get(ctx)
        walk = self._walk(c)
        maddr = array("Q")
        fault = array("B")
        for addr in _run(addrs):
            try:
                f, ma = self._xlate(ctx, c, walk, addr, write)
            except StaleIotlbError:
                raise StaleIotlbError(len(maddr)) from None
            maddr.append(ma)
            fault.append(f)
        return maddr, fault

    # --- IOTLB invalidation ----------------------------------------------
    def invalidate_pages(self, ctx: int, dfn: int, n: int) -> None:
        c = self._get(ctx)
        if self.memory._inject_fail(InjectSite.FLUSH):
            raise HwError(Status.INJECTED)
        self._tlb.drop_range(ctx, dfn, n)
        self._stage2_changed(ctx, c)
        self._count(c, _INVAL)

    def invalidate_context(self, ctx: int) -> None:
        c = self._get(ctx)
        if self.memory._inject_fail(InjectSite.FLUSH):
            raise HwError(Status.INJECTED)
        self._inval_ctx(ctx, c)

    def stale_iotlb_entries(self) -> int:
        t, stale = self._tlb, 0
        for i in range(len(t.valid)):
            if not t.valid[i]:
                continue
            ctx, dfn = t.ctx[i], t.dfn[i]
            c = self._ctx[ctx] if ctx < len(self._ctx) else None
            if c is not None and c.nested:
                continue        # nested_stale_iotlb_entries'
            pte = self._walk(c)(dfn)[0] if c is not None and c.state == _LIVE else 0
            if not pte or (pte & _ADDR) >> PAGE_SHIFT != t.mfn[i] or pte & PERM_RW != t.perm[i]:
                stale += 1
        return stale

    def invalidate_all(self) -> None:
        self._tlb.drop_all()
        self._cnt[_INVAL] += 1

    # --- devices and DMA -------------------------------------------------
    def _find(self, sbdf: int) -> int:
        for i, used in enumerate(self._dev_used):
            if used and self._dev_sbdf[i] == sbdf:
                return i
        raise HwError(Status.NODEV)

    def add_device(self, sbdf: int) -> None:
        try:
            self._find(sbdf)
        except HwError:
            pass
        else:
            raise HwError(Status.EXISTS)
        i = self._dev_used.find(0)
        if i < 0:
            raise HwError(Status.NOSPC)
        self._dev_used[i] = 1
        self._dev_sbdf[i] = sbdf
        self._dev_ctx[i] = _CTX_NONE

    def remove_device(self, sbdf: int) -> None:
        i = self._find(sbdf)
        if self._dev_ctx[i] != _CTX_NONE:
            self._ctx[self._dev_ctx[i]].ndevices -= 1
        j = 0
        while j < len(self._pasids):
            if self._pasids[j][0] == sbdf:
                self._unbind(j)
            else:
                j += 1
        self._dev_used[i] = 0

    def attach(self, sbdf: int, ctx: int | None) -> None:
        i = self._find(sbdf)
        if ctx is not None:
            self._get(ctx).ndevices += 1
        old = self._dev_ctx[i]
        self._dev_ctx[i] = _CTX_NONE if ctx is None else ctx
        if old != _CTX_NONE:
            self._ctx[old].ndevices -= 1

    def device_context(self, sbdf: int) -> int | None:
        ctx = self._dev_ctx[self._find(sbdf)]
        return None if ctx == _CTX_NONE else ctx

    def _dma(self, sbdf: int, addr: int, n: int, write: bool, data=None, pasid: int = 0):
        """Moves bytes page by page; returns (bytes done, chunks read)."""
        i = self._find(sbdf)
        if pasid and not 0 < pasid <= PASID_MAX:
            raise HwError(Status.INVAL)
        mem = self.memory.mem
        done = 0
        chunks = []
        self.dma_fault = self.dma_pending = None
        while done < n:
            a = addr + done
            chunk = min(PAGE_SIZE - (a & (PAGE_SIZE - 1)), n - done)
            ctx = self._dev_ctx[i]
            if pasid:
                kind, ma = self._dma_nested(sbdf, pasid, a, write)
                if kind == _PENDING:
                    self.dma_pending = self.page_request_group(sbdf, pasid, a)
                    break
            elif ctx == _CTX_NONE:
                kind, ma = Fault.BLOCKED, 0
            else:
                c = self._ctx[ctx]
                try:
                    kind, ma = self._xlate(ctx, c, self._walk(c), a, write)
                except StaleIotlbError:
                    raise StaleIotlbError(done) from None
            if kind:
                self._record(sbdf, a, kind, write)
                self.dma_fault = FaultRecord(sbdf, a, Fault(kind), write)
                break
            if write:
                mem[ma:ma + chunk] = bytes(data[done:done + chunk])
            else:
                chunks.append(mem[ma:ma + chunk])
            done += chunk
        return done, b"".join(chunks)

    def dma_read(self, sbdf: int, addr: int, n: int, pasid: int = 0) -> bytes:
        return self._dma(sbdf, addr, n, False, pasid=pasid)[1]

    def dma_write(self, sbdf: int, addr: int, data, pasid: int = 0) -> int:
        return self._dma(sbdf, addr, len(data), True, memoryview(data), pasid)[0]

    def _record(self, sbdf: int, addr: int, kind: int, write: bool) -> None:
        if len(self._faults) == self._fault_cap:
            self._overflow = True
            return
        self._faults.append(FaultRecord(sbdf, addr, Fault(kind), write))

    def faults(self) -> tuple[list[FaultRecord], bool]:
        return list(self._faults), self._overflow

    def clear_faults(self) -> None:
        self._faults.clear()
        self._overflow = False

    def load_faults(self, records, overflow: bool) -> None:
        n = len(records)
        if n > self._fault_cap:
            raise HwError(Status.NOSPC, n)
        if overflow and n < self._fault_cap:
            raise HwError(Status.INVAL, n)
        for i, (sbdf, addr, kind, write) in enumerate(records):
            try:
                self._find(sbdf)
            except HwError:
                raise HwError(Status.NODEV, i) from None
            if not self._fault_possible(addr, kind, write):
                raise HwError(Status.INVAL, i)
        self._faults = [FaultRecord(s, a, Fault(k), bool(w)) for s, a, k, w in records]
        self._overflow = bool(overflow)

    def _fault_possible(self, addr: int, kind: int, write: int) -> bool:
        """Whether the IOMMU records this kind at this address (as _xlate
        decides: WIDTH first, then the interrupt window, then the tables)."""
        width = addr > self.max_iova_addr
        intr = not width and INTR_FIRST <= addr <= INTR_LAST
        tables = not width and not intr
        possible = {Fault.BLOCKED: True, Fault.NO_PASID: True, Fault.WIDTH: width,
                    Fault.INTR: intr, Fault.NOT_PRESENT: tables, Fault.S1_TABLE: tables,
                    Fault.READ: tables and not write,
                    Fault.WRITE: tables and write == 1}
        return write in (0, 1) and bool(possible.get(kind, False))

    # --- nested contexts and PASIDs (cext/nested.c) -----------------------
    def alloc_nested(self, parent: int, s1_root: int) -> int:
        """A nested context over `parent` (stage 2) with its stage-1 root
        at frame s1_root of the parent's input space."""
        p = self._get(parent)
        if s1_root > self._max_dfn:
            raise HwError(Status.RANGE)
        if not self._ctx_free and len(self._ctx) == self._max_ctx:
            raise HwError(Status.NOSPC)
        c = _Context(0, nested=True)
        c.s1_root, c.parent = s1_root, parent
        p.nchildren += 1
        return self._take_id(c)

    def _nested_teardown(self, ctx: int, c: _Context) -> tuple[array, bool]:
        if c.npasids:
            raise HwError(Status.BUSY)
        self._tlb.drop_ctx(ctx)
        self._count(c, _INVAL)
        self._ctx[c.parent].nchildren -= 1
        c.state, c.nested = _FREE, False
        self._ctx_free.append(ctx)
        return array("Q"), True

    def _stage2_changed(self, ctx: int, c: _Context) -> None:
        """A parent's invalidation drops its children's cached translations."""
        if not c.nchildren:
            return
        t = self._tlb
        for i in range(len(t.valid)):
            e = t.ctx[i]
            child = self._ctx[e] if e < len(self._ctx) else None
            if t.valid[i] and child is not None and child.nested and child.parent == ctx:
                t.valid[i] = 0

    def _bound(self, sbdf: int, pasid: int) -> int:
        for j, (s, p, _) in enumerate(self._pasids):
            if s == sbdf and p == pasid:
                return j
        return -1

    def attach_pasid(self, sbdf: int, pasid: int, ctx: int) -> None:
        self._find(sbdf)
        if not 0 < pasid <= PASID_MAX:
            raise HwError(Status.INVAL)
        c = self._get(ctx, nested=True)
        if self._bound(sbdf, pasid) >= 0:
            raise HwError(Status.EXISTS)
        if len(self._pasids) == MAX_PASID_BINDS:
            raise HwError(Status.NOSPC)
        self._pasids.append([sbdf, pasid, ctx])
        c.npasids += 1

    def _unbind(self, j: int) -> None:
        _, pasid, ctx = self._pasids[j]
        self._tlb.drop_range(ctx, pasid << TLB_PASID_SHIFT, 1 << TLB_PASID_SHIFT)
        self._ctx[ctx].npasids -= 1
        self._prq_drop(lambda r: (r.sbdf, r.pasid) == tuple(self._pasids[j][:2]))
        last = self._pasids.pop()
        if j < len(self._pasids):
            self._pasids[j] = last

    def detach_pasid(self, sbdf: int, pasid: int) -> None:
        j = self._bound(sbdf, pasid)
        if j < 0:
            raise HwError(Status.NOTPRESENT)
        self._unbind(j)

    def pasid_context(self, sbdf: int, pasid: int) -> int | None:
        j = self._bound(sbdf, pasid)
        return None if j < 0 else self._pasids[j][2]

    def _stage2(self, p: _Context, dfn: int, walks: list) -> tuple[int, int] | None:
        if dfn > self._max_dfn:
            return None
        pte, n = self._walk(p)(dfn)
        walks[0] += n
        return ((pte & _ADDR) >> PAGE_SHIFT, pte & PERM_RW) if pte else None

    def _nested_walk(self, c: _Context, dfn: int, walks: list, write: bool = False,
                     track: bool = False) -> tuple[int, int, int, int]:
        """(fault kind, combined mfn, combined perm, clean) of a miss
        (cext/nested.c walk); with `track` and dirty tracking on the parent,
        A/D bits of the stage-2 entries it loads are set."""
        p = self._ctx[c.parent]
        frame, s1w = c.s1_root, PERM_W
        track = track and p.dirty_track
        for level in range(S1_LEVELS, 0, -1):
            table = self._stage2(p, frame, walks)
            if table is None or not table[1] & PERM_R:
                return Fault.S1_TABLE, 0, 0, 0
            if track:
                self._set_accessed(p, frame)
            e = self._pte(table[0], self._index(dfn, level))
            walks[0] += 1
            if not e & S1_P:
                return _S1_NOT_PRESENT, 0, 0, 0
            if level > 1 and e & S1_PS:
                return Fault.S1_TABLE, 0, 0, 0
            if not e & S1_RW:
                s1w = 0
            frame = (e & _ADDR) >> PAGE_SHIFT
        out = self._stage2(p, frame, walks)
        if out is None:
            return Fault.NOT_PRESENT, 0, 0, 0
        perm = (out[1] & PERM_R) | (out[1] & s1w)
        clean = self._ad_update(p, frame, perm, write) if track else 0
        return Fault.NONE, out[0], perm, clean

    def _set_accessed(self, c: _Context, dfn: int) -> None:
        """A in the present leaf entry of dfn (a nested walk read a table page there)."""
        table, index = self._leaf_table(c, dfn, False), self._index(dfn, 1)
        self._set_pte(table, index, self._pte(table, index) | PTE_A)

    def _xlate_nested(self, ctx: int, c: _Context, pasid: int, addr: int,
                      write: bool) -> tuple[int, int]:
        f = self._addr_fault(addr)
        if f:
            return f, 0
        dfn = addr >> PAGE_SHIFT
        tag = dfn | pasid << TLB_PASID_SHIFT
        tlb = self._tlb
        i = tlb.hit(ctx, tag, write)
        if i >= 0:
            self._count(c, _HITS)
            mfn, perm = tlb.mfn[i], tlb.perm[i]
        else:
            self._count(c, _MISSES)
            walks = [0]
            kind, mfn, perm, clean = self._nested_walk(c, dfn, walks, write, track=True)
            self._count(c, _WALKS, walks[0])
            if kind:
                return kind, 0
            tlb.clean[tlb.fill(ctx, tag, mfn, perm)] = clean
        return self._access(mfn, perm, addr, write)

    def translate_nested(self, ctx: int, pasid: int, addrs, write: bool = False
                         ) -> tuple[array, array]:
        if not 0 < pasid <= PASID_MAX:
            raise HwError(Status.INVAL)
        c = self._get(ctx, nested=True)
        maddr, fault = array("Q"), array("B")
        for addr in _run(addrs):
            f, ma = self._xlate_nested(ctx, c, pasid, addr, write)
            maddr.append(ma)
            fault.append(f & 0xFF)
        return maddr, fault

    def _dma_nested(self, sbdf: int, pasid: int, addr: int, write: bool) -> tuple[int, int]:
        j = self._bound(sbdf, pasid)
        if j < 0:
            return Fault.NO_PASID, 0
        ctx = self._pasids[j][2]
        c = self._ctx[ctx]
        retried = self._prq_retry(ctx, sbdf, pasid, addr) if c.prq else 0
        if retried == 2:                  # answered INVALID or FAILURE
            return Fault.NOT_PRESENT, 0
        kind, ma = self._xlate_nested(ctx, c, pasid, addr, write)
        if (kind == _S1_NOT_PRESENT and c.prq and not retried
                and self._prq_queue(c, ctx, sbdf, pasid, addr, write)):
            return _PENDING, 0
        return kind & 0xFF, ma

    def invalidate_nested(self, ctx: int, pasid: int | None = None, dfn: int = 0,
                          n: int = 0) -> None:
        """Drop pages [dfn, dfn + n) of `pasid` (None: all of the context)."""
        c = self._get(ctx, nested=True)
        if pasid is not None and not 0 < pasid <= PASID_MAX:
            raise HwError(Status.INVAL)
        if self.memory._inject_fail(InjectSite.FLUSH):
            raise HwError(Status.INJECTED)
        space = 1 << TLB_PASID_SHIFT
        if pasid is None:
            self._tlb.drop_ctx(ctx)
        elif dfn < space:
            self._tlb.drop_range(ctx, dfn | pasid << TLB_PASID_SHIFT, min(n, space - dfn))
        self._count(c, _INVAL)

    # --- I/O page faults (cext/prq.c) --------------------------------------
    def _prq_ctx(self, ctx: int) -> _Context:
        c = self._get(ctx, nested=True)
        if not c.prq:
            raise HwError(Status.INVAL)
        return c

    def _prq_drop(self, which) -> None:
        self._prq = [r for r in self._prq if not which(r)]

    def _prq_retry(self, ctx: int, sbdf: int, pasid: int, addr: int) -> int:
        for r in self._prq:
            if (r.ctx == ctx and r.state == PrqState.ANSWERED and r.sbdf == sbdf
                    and r.pasid == pasid and r.addr >> PAGE_SHIFT == addr >> PAGE_SHIFT):
                self._prq_drop(lambda x: x is r)
                return 1 if r.code == PrqCode.SUCCESS else 2
        return 0

    def _prq_queue(self, c: _Context, ctx: int, sbdf: int, pasid: int, addr: int,
                   write: bool) -> bool:
        """True: the DMA waits (a request queued now or before); False: the
        queue is full and the fault is non-recoverable."""
        if self.page_request_group(sbdf, pasid, addr) is not None:
            return True
        if (len(self._prq) == MAX_PAGE_REQS
                or sum(r.ctx == ctx for r in self._prq) == PRQ_PER_CTX):
            return False
        used = {r.group for r in self._prq if r.ctx == ctx}
        while True:
            c.prq_group = (c.prq_group + 1) & 0xFFFFFFFF
            if c.prq_group and c.prq_group not in used:
                break
        self._prq.append(PageRequest(sbdf, pasid, addr, bool(write), ctx, c.prq_group))
        return True

    def enable_page_requests(self, ctx: int) -> None:
        self._get(ctx, nested=True).prq = True

    def read_page_requests(self, ctx: int, cap: int, consume: bool = True
                           ) -> list[PageRequest]:
        self._prq_ctx(ctx)
        out = [r for r in self._prq if r.ctx == ctx and r.state == PrqState.QUEUED][:cap]
        if consume:
            self._prq = [r._replace(state=PrqState.READ) if any(r is o for o in out) else r
                         for r in self._prq]
        return out

    def respond_page_request(self, ctx: int, group: int, code: int) -> None:
        self._prq_ctx(ctx)
        if code not in set(PrqCode):
            raise HwError(Status.INVAL)
        for i, r in enumerate(self._prq):
            if r.ctx == ctx and r.group == group and r.state != PrqState.ANSWERED:
                self._prq[i] = r._replace(state=PrqState.ANSWERED, code=PrqCode(code))
                return
        raise HwError(Status.NOTPRESENT)

    def page_request_group(self, sbdf: int, pasid: int, addr: int) -> int | None:
        for r in self._prq:
            if (r.sbdf, r.pasid, r.addr >> PAGE_SHIFT) == (sbdf, pasid, addr >> PAGE_SHIFT):
                return r.group
        return None

    def page_requests(self) -> list[PageRequest]:
        return list(self._prq)

    def load_page_request(self, r: PageRequest) -> None:
        c = self._prq_ctx(r.ctx)
        if self.pasid_context(r.sbdf, r.pasid) != r.ctx:
            raise HwError(Status.NOTPRESENT)
        codes = set(PrqCode)
        if (r.state not in set(PrqState) or r.group == 0
                or (r.state == PrqState.ANSWERED and r.code not in codes)
                or (r.state != PrqState.ANSWERED and r.code != 0)
                or self._addr_fault(r.addr)
                or any(x.ctx == r.ctx and x.group == r.group for x in self._prq)
                or self.page_request_group(r.sbdf, r.pasid, r.addr) is not None):
            raise HwError(Status.INVAL)
        if (len(self._prq) == MAX_PAGE_REQS
                or sum(x.ctx == r.ctx for x in self._prq) == PRQ_PER_CTX):
            raise HwError(Status.NOSPC)
        self._prq.append(PageRequest(r.sbdf, r.pasid, r.addr, bool(r.write), r.ctx, r.group,
                                     PrqState(r.state), PrqCode(r.code)))
        c.prq_group = max(c.prq_group, r.group)

    def nested_stale_iotlb_entries(self) -> int:
        t, stale = self._tlb, 0
        for i in range(len(t.valid)):
            c = self._ctx[t.ctx[i]] if t.ctx[i] < len(self._ctx) else None
            if not t.valid[i] or c is None or not c.nested:
                continue
            kind, mfn, perm, _ = self._nested_walk(c, t.dfn[i] & ((1 << TLB_PASID_SHIFT) - 1),
                                                   [0])
            if kind or mfn != t.mfn[i] or perm != t.perm[i]:
                stale += 1
        return stale


    # --- dirty tracking (cext/dirty.c) -------------------------------------
    def dirty_track(self, ctx: int, on: bool) -> None:
        c = self._get(ctx)
        if on and not c.dirty_track:
            self._tlb.drop_ctx(ctx)
        c.dirty_track = bool(on)

    def _ad_update(self, c: _Context, dfn: int, perm: int, write: bool) -> int:
        """hw_ad_update on the leaf entry of dfn (present: just walked)."""
        table, index = self._leaf_table(c, dfn, False), self._index(dfn, 1)
        allowed = not self._access(0, perm, 0, write)[0]
        pte = self._pte(table, index) | (PTE_A | PTE_D if write and allowed else PTE_A)
        self._set_pte(table, index, pte)
        return int(bool(perm & PERM_W) and not pte & PTE_D)

    def load_dirty(self, ctx: int, dfn: int, n: int, dirty, accessed) -> None:
        c = self._get(ctx)
        nbytes = (n + 7) // 8
        if not c.dirty_track or len(dirty) < nbytes or len(accessed) < nbytes:
            raise HwError(Status.INVAL)
        if n and (dfn > self._max_dfn or n - 1 > self._max_dfn - dfn):
            raise HwError(Status.RANGE)
        todo = []
        for i in range(n):
            a, d = accessed[i >> 3] >> (i & 7) & 1, dirty[i >> 3] >> (i & 7) & 1
            if not a and not d:
                continue
            try:
                table = self._leaf_table(c, dfn + i, False)
            except HwError:
                raise HwError(Status.NOTPRESENT, i) from None
            index = self._index(dfn + i, 1)
            if not self._present(self._pte(table, index)):
                raise HwError(Status.NOTPRESENT, i)
            if d and not a:
                raise HwError(Status.INVAL, i)
            todo.append((table, index, PTE_A | (PTE_D if d else 0)))
        for table, index, bits in todo:
            self._set_pte(table, index, self._pte(table, index) | bits)

    def read_dirty(self, ctx: int, dfn: int, n: int, clear: bool = True
                   ) -> tuple[bytearray, bytearray, int]:
        c = self._get(ctx)
        if n and (dfn > self._max_dfn or n - 1 > self._max_dfn - dfn):
            raise HwError(Status.RANGE)
        dirty, accessed = bytearray((n + 7) // 8), bytearray((n + 7) // 8)
        found = 0
        for i in range(n):
            try:
                table = self._leaf_table(c, dfn + i, False)
            except HwError:
                continue
            index = self._index(dfn + i, 1)
            pte = self._pte(table, index)
            if not self._present(pte):
                continue
            if pte & PTE_A:
                accessed[i >> 3] |= 1 << (i & 7)
            if not pte & PTE_D:
                continue
            dirty[i >> 3] |= 1 << (i & 7)
            found += 1
            if clear:
                self._set_pte(table, index, pte & ~PTE_D)
                j = self._tlb.find(ctx, dfn + i)
                if j >= 0:
                    self._tlb.valid[j] = 0
        if clear and found:
            self._stage2_changed(ctx, c)
            self._count(c, _INVAL)
        return dirty, accessed, found


__all__ = ["Memory", "Iommu"]
