"""The simulated hardware in C (cext/, through cffi): `Memory` and `Iommu`.

Both classes are thin: each method is one C call for the whole operation or
batch, runs of frame numbers travel as uint64 buffers (array('Q')), and no
Python object exists per page or per mapping. xenemu.hw.reference has the
same classes in pure Python; docstrings there and here describe the shared
interface. Not thread-safe (output cells are reused between calls).
"""
from __future__ import annotations

from array import array

from ._hwlib import ffi, lib
from .common import (
    MAX_PAGE_REQS, PRQ_PER_CTX, Counters, ContextInfo, Fault, FaultRecord, HwError,
    Injection, InjectSite, PageRequest, PrqCode, PrqState, StaleIotlbError, Status, check_status,
)


#: The fields of struct hw_counters as cext/hw.h declares them (Counters
#: has the same names, which test_constants checks).
_COUNTER_FIELDS = tuple(f for f, _ in ffi.typeof("struct hw_counters").fields)


def _u64(mfns, ranges: bool = False):
    """(pointer, count, first) for a uint64 buffer or, where the C function
    takes runs (first + i when the pointer is NULL), a range of step 1."""
    if ranges and isinstance(mfns, range):
        if mfns.step != 1:
            raise ValueError("a run of frames is a range with step 1")
        return ffi.NULL, len(mfns), mfns.start
    # array('Q') is the common case: skip the memoryview on the hot path.
    if not (type(mfns) is array and mfns.typecode == "Q") \
            and memoryview(mfns).itemsize != 8:
        raise TypeError("frame numbers must be a uint64 buffer, e.g. array('Q')")
    p = ffi.from_buffer("uint64_t[]", mfns)
    return p, len(p), 0


class Memory:
    """Machine memory of `size` bytes (4 KiB frames, lazily backed), its
    O(1) frame allocator and per-frame refcount (uint32) and owner (uint16;
    OWNER_NONE = free or hypervisor-owned)."""

    def __init__(self, size: int = 4 << 30):
        m = lib.hw_machine_create(size)
        if m == ffi.NULL:
            raise ValueError("machine size must be a multiple of 4 KiB "
                             "(and the mapping must succeed)")
        self._m = ffi.gc(m, lib.hw_machine_put)
        self.size = size
        self.nframes = m.nframes
        self._bad = ffi.new("uint64_t *")

    @property
    def used(self) -> int:
        """Frames currently allocated (guest memory and table pages)."""
        return self._m.used

    def alloc(self, n: int, owner: int) -> array:
        """n zeroed frames for `owner`, all or nothing (HwError NOMEM)."""
        out = array("Q", bytes(8 * n))
        check_status(lib.hw_frames_alloc(
            self._m, owner, n, ffi.from_buffer("uint64_t[]", out)))
        return out

    def _batch(self, status: int) -> None:
        if status:
            raise HwError(status, self._bad[0])

    def free(self, mfns) -> None:
        """Free frames (each in use with refcount 0), all or nothing."""
        p, n, _ = _u64(mfns)
        self._batch(lib.hw_frames_free(self._m, p, n, self._bad))

    def get_refs(self, mfns) -> None:
        """Take one reference on each frame (buffer or range), all or
        nothing; HwError(BADFRAME|REFCOUNT, index) names the first bad one."""
        p, n, first = _u64(mfns, ranges=True)
        self._batch(lib.hw_refs_adjust(self._m, p, first, n, 1, self._bad))

    def put_refs(self, mfns) -> None:
        """Drop one reference on each frame, all or nothing."""
        p, n, first = _u64(mfns, ranges=True)
        self._batch(lib.hw_refs_adjust(self._m, p, first, n, -1, self._bad))

    def take_refs(self, mfns) -> tuple[int, int]:
        """Take references page by page, as Xen's get_page: (references
        taken, Status) stopping at BADFRAME, REFCOUNT or INJECTED; the
        references taken are kept."""
        p, n, first = _u64(mfns, ranges=True)
        st = lib.hw_refs_take(self._m, p, first, n, self._bad)
        return self._bad[0], st

    def inject(self, sites: int, nth: int) -> None:
        """Arm the fault injector: the nth event (from 1) at one of `sites`
        (InjectSite bits) fails, once; nth = 0 disarms. Counts restart."""
        check_status(lib.hw_inject_arm(self._m, sites, nth))

    def injection(self) -> Injection:
        f = self._m.inject
        return Injection(InjectSite(f.sites), f.countdown, f.seen,
                         InjectSite(f.fired) if f.fired else None)

    def refcounts(self, mfns) -> array:
        p, n, _ = _u64(mfns)
        out = array("I", bytes(4 * n))
        self._batch(lib.hw_frames_info(
            self._m, p, n, ffi.from_buffer("uint32_t[]", out), ffi.NULL,
            self._bad))
        return out

    def owners(self, mfns) -> array:
        p, n, _ = _u64(mfns)
        out = array("H", bytes(2 * n))
        self._batch(lib.hw_frames_info(
            self._m, p, n, ffi.NULL, ffi.from_buffer("uint16_t[]", out),
            self._bad))
        return out

    def set_owner(self, mfns, owner: int) -> None:
        p, n, _ = _u64(mfns)
        self._batch(lib.hw_frames_set_owner(self._m, p, n, owner, self._bad))

    def set_m2p(self, mfns, first_gfn: int) -> None:
        """Record that mfns[i] backs gfn first_gfn + i (machine-to-phys)."""
        p, n, _ = _u64(mfns)
        self._batch(lib.hw_m2p_set(self._m, p, n, first_gfn, self._bad))

    def m2p(self, mfns) -> array:
        """The gfn each frame backs; GFN_INVALID for a frame not in use."""
        p, n, _ = _u64(mfns)
        out = array("Q", bytes(8 * n))
        lib.hw_m2p_read(self._m, p, n, ffi.from_buffer("uint64_t[]", out))
        return out

    def read(self, maddr: int, n: int) -> bytes:
        buf = bytearray(n)
        check_status(lib.hw_mem_read(self._m, maddr,
                                     ffi.from_buffer(buf), n))
        return bytes(buf)

    def write(self, maddr: int, data) -> None:
        check_status(lib.hw_mem_write(self._m, maddr, ffi.from_buffer(data),
                                      len(data)))


class Iommu:
    """A VT-d-like IOMMU over `memory`: contexts with 3-level (width 39)
    or 4-level (width 48) second-level page tables, a set-associative
    IOTLB of `iotlb_entries` in `iotlb_ways`-way sets, PCI devices and a
    fault log of `fault_log` records."""

    def __init__(self, memory: Memory, width: int = 39,
                 max_contexts: int = 1024, max_devices: int = 256,
                 iotlb_entries: int = 1024, iotlb_ways: int = 4,
                 fault_log: int = 256, check: bool = False):
        io = lib.hw_iommu_create(memory._m, width, max_contexts,
                                 max_devices, iotlb_entries, iotlb_ways,
                                 fault_log)
        if io == ffi.NULL:
            raise ValueError("bad IOMMU parameters")
        self.memory = memory
        # The C IOMMU holds the C memory itself (see hw_machine_put).
        self._io = ffi.gc(io, lib.hw_iommu_destroy)
        self.width = width
        self.levels = io.levels
        self.max_iova_addr = io.max_iova
        self._u64 = ffi.new("uint64_t *")
        self._u64b = ffi.new("uint64_t *")
        self._u32 = ffi.new("uint32_t *")
        self._int = ffi.new("int *")
        self._cnt = ffi.new("struct hw_counters *")
        self._fault = ffi.new("struct hw_fault_rec *")
        #: The fault that stopped the last DMA (None if it completed),
        #: whether or not the fault log had room for it.
        self.dma_fault: FaultRecord | None = None
        self.dma_pending: int | None = None  #: the page request group a DMA waits on
        self.check = check

    @property
    def c_iommu(self):
        """The `struct hw_iommu *` itself, for C that reads the hardware
        directly (cext/fastpath.c); valid while this object lives."""
        return self._io

    @property
    def check(self) -> bool:
        """Check mode: every IOTLB hit is verified against the tables; a
        stale one is counted and raises StaleIotlbError."""
        return bool(self._io.check)

    @check.setter
    def check(self, on: bool) -> None:
        lib.hw_iommu_set_check(self._io, int(on))

    # --- contexts -------------------------------------------------------
    def alloc_context(self) -> int:
        """A new context (hardware domain id) with an empty root table."""
        check_status(lib.hw_ctx_alloc(self._io, self._u32))
        return self._u32[0]

    def teardown(self, ctx: int, budget: int) -> tuple[array, bool]:
        """One preemptible slice of destroying `ctx`: examines at most
        `budget` leaf slots and returns (mfns unmapped in this slice,
        finished). The first slice refuses a context with devices (BUSY)
        and invalidates its IOTLB entries; when finished the tables are
        freed and the id may be reused."""
        out = array("Q", bytes(8 * budget))
        check_status(lib.hw_ctx_teardown(
            self._io, ctx, budget, ffi.from_buffer("uint64_t[]", out),
            budget, self._u64, self._int))
        del out[self._u64[0]:]
        return out, bool(self._int[0])

    def set_pool_limit(self, pool: int, limit: int) -> None:
        """Table pages pool 1..MAX_POOLS-1 may hold (0: no limit)."""
        check_status(lib.hw_pool_set_limit(self._io, pool, limit))

    def pool_usage(self, pool: int) -> tuple[int, int]:
        """(table pages held, limit) of a pool."""
        u = ffi.new("uint64_t[2]")
        check_status(lib.hw_pool_usage(self._io, pool, u, u + 1))
        return u[0], u[1]

    def pool_counters(self, pool: int) -> Counters:
        """Counters of the contexts that counted against `pool` while they
        did, freed ones included (a domain's IOTLB counts)."""
        check_status(lib.hw_pool_counters(self._io, pool, self._cnt))
        return self._counters()

    def clear_pool_counters(self, pool: int) -> None:
        """Start a pool's counters again (a pool given to a new domain)."""
        check_status(lib.hw_pool_clear_counters(self._io, pool))

    def set_context_pool(self, ctx: int, pool: int) -> None:
        """Count ctx's table pages against `pool` from now on (NOMEM if they
        do not fit its limit)."""
        check_status(lib.hw_ctx_set_pool(self._io, ctx, pool))

    def context_info(self, ctx: int) -> ContextInfo:
        u = ffi.new("uint64_t[2]")
        check_status(lib.hw_ctx_info(self._io, ctx, u, u + 1, self._cnt))
        return ContextInfo(u[0], u[1], self._counters())

    def counters(self) -> Counters:
        """IOMMU-wide counters (sum over contexts, plus global flushes)."""
        lib.hw_iommu_counters(self._io, self._cnt)
        return self._counters()

    def _counters(self) -> Counters:
        c = self._cnt
        return Counters(**{f: getattr(c, f) for f in _COUNTER_FIELDS})

    # --- mappings -------------------------------------------------------
    def map(self, ctx: int, dfn: int, mfns, perm: int) -> tuple[int, int]:
        """Map dfn+i -> mfns[i] (buffer) or start+i (range) with perm
        (PERM_R|PERM_W, non-empty). Returns (pages done, Status): stops at
        RANGE, BADFRAME, PRESENT or NOMEM; NOCTX/BUSY/INVAL do nothing."""
        p, n, first = _u64(mfns, ranges=True)
        st = lib.hw_map(self._io, ctx, dfn, n, p, first, perm, self._u64)
        return self._u64[0], st

    def map_referenced(self, ctx: int, dfn: int, mfns, perm: int
                       ) -> tuple[int, int]:
        """map() that takes one reference on each page's frame before
        mapping it, as Xen's get_page then iommu_map: also stops at a frame
        not in use (BADFRAME), REFCOUNT or INJECTED, and only mapped pages
        keep their reference."""
        p, n, first = _u64(mfns, ranges=True)
        st = lib.hw_map_ref(self._io, ctx, dfn, n, p, first, perm, self._u64)
        return self._u64[0], st

    def unmap(self, ctx: int, dfn: int, n: int,
              flush: bool = True) -> tuple[int, int, array]:
        """Unmap n pages from dfn. Returns (done, Status, mfns that were
        mapped there, len == done); stops at NOTPRESENT or RANGE. With
        flush, the done pages leave the IOTLB; without, the caller must
        invalidate_pages() before relying on it (check mode catches it)."""
        out = array("Q", bytes(8 * n))
        st = lib.hw_unmap(self._io, ctx, dfn, n,
                          ffi.from_buffer("uint64_t[]", out), n, int(flush),
                          self._u64)
        done = self._u64[0]
        del out[done:]
        return done, st, out

    def lookup(self, ctx: int, dfn: int) -> tuple[int, int] | None:
        """(mfn, perm) mapped at dfn, or None; software read of the
        tables (no IOTLB, no counters). HwError NOCTX/BUSY/RANGE."""
        st = lib.hw_lookup(self._io, ctx, dfn, self._u64, self._u32)
        if st == Status.NOTPRESENT:
            return None
        check_status(st)
        return self._u64[0], self._u32[0]

    def lookup_run(self, ctx: int, dfn: int, n: int) -> tuple[array, array]:
        """(mfns, perms) of n entries from dfn, perm 0 where nothing is
        mapped: a software read for dumps (no IOTLB, no counters)."""
        mfns = array("Q", bytes(8 * n))
        perms = array("B", bytes(n))
        check_status(lib.hw_lookup_run(self._io, ctx, dfn, n,
                                       ffi.from_buffer("uint64_t[]", mfns),
                                       ffi.from_buffer("uint8_t[]", perms)))
        return mfns, perms

    def next_mapped(self, ctx: int, dfn: int) -> int | None:
        """The first mapped dfn >= dfn, or None: a software read that skips
        empty tables whole (dumps, snapshots)."""
        st = lib.hw_next_mapped(self._io, ctx, dfn, self._u64)
        if st == Status.NOTPRESENT:
            return None
        check_status(st)
        return self._u64[0]

    def translate(self, ctx: int, addrs, write: bool = False
                  ) -> tuple[array, array]:
        """Translate device addresses (uint64 buffer) through the IOTLB as
        reads or writes: (machine addresses, Fault kinds); a faulting
        address reads 0. Nothing is logged (no device involved)."""
        if memoryview(addrs).itemsize != 8:
            raise TypeError("addresses must be a uint64 buffer")
        pa = ffi.from_buffer("uint64_t[]", addrs)
        n = len(pa)
        maddr = array("Q", bytes(8 * n))
        fault = array("B", bytes(n))
        st = lib.hw_translate(self._io, ctx, pa, n, int(write),
                              ffi.from_buffer("uint64_t[]", maddr),
                              ffi.from_buffer("uint8_t[]", fault), self._u64)
        if st == Status.STALE:
            raise StaleIotlbError(self._u64[0])
        check_status(st)
        return maddr, fault

    # --- IOTLB invalidation ----------------------------------------------
    def invalidate_pages(self, ctx: int, dfn: int, n: int) -> None:
        check_status(lib.hw_inval_pages(self._io, ctx, dfn, n))

    def invalidate_context(self, ctx: int) -> None:
        check_status(lib.hw_inval_ctx(self._io, ctx))

    def invalidate_all(self) -> None:
        lib.hw_inval_all(self._io)

    def stale_iotlb_entries(self) -> int:
        """Cached translations that disagree with the tables (an audit of
        the whole IOTLB; zero unless an invalidation was missed or failed)."""
        lib.hw_tlb_audit(self._io, self._u64)
        return self._u64[0]

    # --- devices and DMA -------------------------------------------------
    def add_device(self, sbdf: int) -> None:
        """Register a PCI device (blocked until attached)."""
        check_status(lib.hw_dev_add(self._io, sbdf))

    def remove_device(self, sbdf: int) -> None:
        check_status(lib.hw_dev_remove(self._io, sbdf))

    def attach(self, sbdf: int, ctx: int | None) -> None:
        """Point the device's context entry at ctx (None = blocked) in one
        store: its DMA uses either the old or the new context, never none."""
        check_status(lib.hw_dev_attach(
            self._io, sbdf, lib.HW_CTX_NONE if ctx is None else ctx))

    def device_context(self, sbdf: int) -> int | None:
        check_status(lib.hw_dev_context(self._io, sbdf, self._u32))
        ctx = self._u32[0]
        return None if ctx == lib.HW_CTX_NONE else ctx

    def dma_read(self, sbdf: int, addr: int, n: int, pasid: int = 0) -> bytes:
        """Device reads n bytes at addr (with a PASID, 1..PASID_MAX, through
        its binding); returns the bytes read before any fault (the fault
        goes to the log, and to dma_fault)."""
        buf = bytearray(n)
        self._dma(sbdf, addr, buf, n, 0, pasid)
        return bytes(buf[:self._u64b[0]])

    def dma_write(self, sbdf: int, addr: int, data, pasid: int = 0) -> int:
        """Device writes data at addr; returns bytes written before any
        fault (the fault goes to the log)."""
        self._dma(sbdf, addr, data, len(data), 1, pasid)
        return self._u64b[0]

    def _dma(self, sbdf, addr, buf, n, write, pasid):
        self.dma_fault = self.dma_pending = None
        if pasid:
            st = lib.hw_dma_pasid(self._io, sbdf, pasid, addr, ffi.from_buffer(buf), n,
                                  write, self._u64b, self._fault)
        else:
            st = lib.hw_dma(self._io, sbdf, addr, ffi.from_buffer(buf), n, write,
                            self._u64b, self._fault)
        if st == Status.STALE:
            raise StaleIotlbError(self._u64b[0])
        if st == Status.PENDING:
            check_status(lib.hw_prq_group(self._io, sbdf, pasid, self._fault.addr, self._u32))
            self.dma_pending = self._u32[0]
        elif st == Status.FAULT:
            r = self._fault
            self.dma_fault = FaultRecord(r.sbdf, r.addr, Fault(r.kind),
                                         bool(r.write))
        else:
            check_status(st)

    # --- nested contexts and PASIDs (cext/nested.c) -----------------------
    def alloc_nested(self, parent: int, s1_root: int) -> int:
        """A nested context over `parent` (stage 2, a live context that is
        not nested: NOCTX, BUSY, INVAL), its stage-1 root at frame s1_root
        of the parent's input space (RANGE above the width). No table page
        is taken; teardown() frees it (BUSY while PASIDs are bound), and a
        parent with nested children refuses teardown (BUSY)."""
        check_status(lib.hw_ctx_alloc_nested(self._io, parent, s1_root, self._u32))
        return self._u32[0]

    def attach_pasid(self, sbdf: int, pasid: int, ctx: int) -> None:
        """Bind (device, PASID) to nested context ctx: NODEV, INVAL (pasid
        0 or above PASID_MAX, ctx not nested), NOCTX, EXISTS, NOSPC."""
        check_status(lib.hw_pasid_attach(self._io, sbdf, pasid, ctx))

    def detach_pasid(self, sbdf: int, pasid: int) -> None:
        """Unbind, dropping the pair's cached translations (NOTPRESENT)."""
        check_status(lib.hw_pasid_detach(self._io, sbdf, pasid))

    def pasid_context(self, sbdf: int, pasid: int) -> int | None:
        st = lib.hw_pasid_context(self._io, sbdf, pasid, self._u32)
        return None if st == Status.NOTPRESENT else self._u32[0]

    def translate_nested(self, ctx: int, pasid: int, addrs, write: bool = False
                         ) -> tuple[array, array]:
        """translate() for nested context ctx and a PASID: stage 1 walked
        through stage 2, the combined translation cached by (ctx, PASID)."""
        pa = ffi.from_buffer("uint64_t[]", addrs)
        n = len(pa)
        maddr = array("Q", bytes(8 * n))
        fault = array("B", bytes(n))
        check_status(lib.hw_translate_nested(
            self._io, ctx, pasid, pa, n, int(write), ffi.from_buffer("uint64_t[]", maddr),
            ffi.from_buffer("uint8_t[]", fault), self._u64))
        return maddr, fault

    def invalidate_nested(self, ctx: int, pasid: int | None = None, dfn: int = 0,
                          n: int = 0) -> None:
        """The guest's invalidation: pages [dfn, dfn + n) of `pasid`, or
        (pasid None) every cached translation of the nested context."""
        check_status(lib.hw_inval_nested(
            self._io, ctx, lib.HW_PASID_ANY if pasid is None else pasid, dfn, n))

    # --- I/O page faults (cext/prq.c) --------------------------------------
    def enable_page_requests(self, ctx: int) -> None:
        """Stage-1 not-present faults of nested context ctx become page
        requests (NOCTX, INVAL if not nested): a DMA that meets one stops
        with dma_pending = the request's group and nothing logged."""
        check_status(lib.hw_prq_enable(self._io, ctx))

    def read_page_requests(self, ctx: int, cap: int, consume: bool = True
                           ) -> list[PageRequest]:
        """Up to cap of ctx's queued requests, oldest first; consume marks
        them read (INVAL: not nested or page requests off)."""
        cap = min(cap, PRQ_PER_CTX)     # no context has more
        out = ffi.new("struct hw_page_req[]", max(cap, 1))
        check_status(lib.hw_prq_read(self._io, ctx, out, cap, int(consume), self._u32))
        return [_request(r) for r in out[0:self._u32[0]]]

    def respond_page_request(self, ctx: int, group: int, code: int) -> None:
        """Answer ctx's request `group` (NOTPRESENT: none unanswered; INVAL
        code); the waiting DMA's retry then completes or faults."""
        check_status(lib.hw_prq_respond(self._io, ctx, group, code))

    def page_requests(self) -> list[PageRequest]:
        """Every outstanding page request, oldest first."""
        out = ffi.new("struct hw_page_req[]", MAX_PAGE_REQS)
        return [_request(r) for r in out[0:lib.hw_prq_list(self._io, out, MAX_PAGE_REQS)]]

    def load_page_request(self, r: PageRequest) -> None:
        """Queue r as a restored machine had it (cext/hw.h hw_prq_load)."""
        check_status(lib.hw_prq_load(self._io, ffi.new("struct hw_page_req *", {
            "addr": r.addr, "sbdf": r.sbdf, "pasid": r.pasid, "ctx": r.ctx,
            "group": r.group, "write": int(r.write), "state": r.state, "code": r.code})))

    def nested_stale_iotlb_entries(self) -> int:
        """Cached translations of nested contexts that disagree with the
        tables now: stage-1 edits the guest did not flush (its bug, as on
        hardware; stale_iotlb_entries() leaves them out)."""
        lib.hw_tlb_audit_nested(self._io, self._u64)
        return self._u64[0]

    def dirty_track(self, ctx: int, on: bool) -> None:
        """Dirty tracking of a (non-nested) context on or off: the walker
        sets A on every allowed access and D on every allowed write in the
        leaf entry (VT-d second-level A/D). On drops its cached entries."""
        check_status(lib.hw_dirty_track(self._io, ctx, int(on)))

    def read_dirty(self, ctx: int, dfn: int, n: int, clear: bool = True
                   ) -> tuple[bytearray, bytearray, int]:
        """(dirty bitmap, accessed bitmap, pages dirty) of pages [dfn,
        dfn + n), bit i (byte i // 8, bit i % 8) for page dfn + i; with
        `clear`, D bits are cleared and the pages' IOTLB entries dropped
        (RANGE: the range leaves the width)."""
        nbytes = (n + 7) // 8
        dirty, accessed = bytearray(nbytes), bytearray(nbytes)
        check_status(lib.hw_dirty_read(
            self._io, ctx, dfn, n, int(clear), ffi.from_buffer("uint8_t[]", dirty),
            ffi.from_buffer("uint8_t[]", accessed), nbytes, self._u64))
        return dirty, accessed, self._u64[0]

    def load_dirty(self, ctx: int, dfn: int, n: int, dirty, accessed) -> None:
        """Set the A/D bits of pages [dfn, dfn + n) from bitmaps as
        read_dirty gives them (a restored machine's); HwError with the
        index of the page at fault (NOTPRESENT: not mapped; INVAL: D
        without A, or the context does not track)."""
        nbytes = (n + 7) // 8
        if len(dirty) < nbytes or len(accessed) < nbytes:
            raise HwError(Status.INVAL)
        st = lib.hw_dirty_load(self._io, ctx, dfn, n, ffi.from_buffer("uint8_t[]", dirty),
                               ffi.from_buffer("uint8_t[]", accessed), nbytes, self._u64)
        if st:
            raise HwError(st, self._u64[0])

    def faults(self) -> tuple[list[FaultRecord], bool]:
        """(fault records oldest first, overflow flag); the log keeps the
        first `fault_log` faults and sets overflow for any later one."""
        cap = self._io.fault_cap
        recs = ffi.new("struct hw_fault_rec[]", cap)
        n = lib.hw_faults_read(self._io, recs, cap, self._int)
        return ([FaultRecord(r.sbdf, r.addr, Fault(r.kind), bool(r.write))
                 for r in recs[0:n]], bool(self._int[0]))

    def clear_faults(self) -> None:
        lib.hw_faults_clear(self._io)

    def load_faults(self, records, overflow: bool) -> None:
        """Replace the fault log with `records` (FaultRecords, oldest
        first) and the overflow flag, without any DMA: all or nothing.
        HwError(NODEV, i): record i's device is not registered; (INVAL, i):
        record i is not a fault this IOMMU makes there; (NOSPC or INVAL,
        len(records)): more records than the log holds, or overflow set
        with room left."""
        n = len(records)
        recs = ffi.new("struct hw_fault_rec[]", max(n, 1))
        for r, (sbdf, addr, kind, write) in zip(recs, records):
            r.sbdf, r.addr, r.kind, r.write = sbdf, addr, kind, write
        bad = ffi.new("uint32_t *")
        st = lib.hw_faults_load(self._io, recs, n, int(overflow), bad)
        if st:
            raise HwError(st, bad[0])


def _request(r) -> PageRequest:
    return PageRequest(r.sbdf, r.pasid, r.addr, bool(r.write), r.ctx, r.group,
                       PrqState(r.state), PrqCode(r.code))
