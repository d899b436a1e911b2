"""Differential tests: random operation sequences applied to the C layer and
to the pure-Python reference must give identical results, counters, fault
logs, translations and machine memory (page tables included), nested
(stage-1 through stage-2) walks and PASID bindings among them."""
import enum
from array import array

from hypothesis import HealthCheck, given, settings, strategies as st

from xenemu.hw import HwError, StaleIotlbError, native, reference
from xenemu.hw.common import PageRequest

FRAMES = 160        # small, so table pages can run out
GUEST = 48          # guest frames allocated up front
CTX_IDS = 7         # ids 0..6 against max_contexts=6: 6 is never valid
S2 = 2              # the stage-2 context of the nested one (3) the rig starts with
S1_TABLES = (1, 2, 3, 4)    # stage-1 table pages (dfns of S2) of that nested context
DEVS = (0x100, 0x200, 0x300)

# dfns: low ones (crossing leaf and middle tables) or near the top of the
# address width (resolved at apply time, the width being drawn per run)
dfns = st.one_of(st.integers(0, 40), st.integers(0, 1100),
                 st.integers(-4, 2).map(lambda d: ("top", d)))
ctxs = st.one_of(st.integers(0, 1), st.integers(0, CTX_IDS - 1))
perms = st.sampled_from([0, 1, 2, 3, 4])
counts = st.integers(0, 40)
addrs = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 4095)),  # mostly mapped
    st.tuples(dfns, st.integers(0, 4095)),
    st.sampled_from([0xFEE00000, 0xFEEFFFF8, 1 << 39, 1 << 48, (1 << 64) - 1]))

ops = st.one_of(
    st.tuples(st.just("alloc")),
    st.tuples(st.just("map"), ctxs, dfns, st.lists(st.integers(0, FRAMES + 2),
                                                  max_size=40), perms),
    st.tuples(st.just("map_run"), ctxs, dfns, st.integers(0, FRAMES), counts,
              perms),
    st.tuples(st.just("map_ref"), ctxs, dfns, st.lists(st.integers(0, FRAMES + 2),
                                                      max_size=40), perms),
    st.tuples(st.just("unmap"), ctxs, dfns, counts, st.booleans()),
    st.tuples(st.just("lookup"), ctxs, dfns),
    st.tuples(st.just("translate"), ctxs, st.lists(addrs, max_size=20),
              st.booleans()),
    st.tuples(st.just("inval_pages"), ctxs, dfns, counts),
    st.tuples(st.just("inval_ctx"), ctxs),
    st.tuples(st.just("inval_all")),
    st.tuples(st.just("teardown"), ctxs, st.integers(1, 700)),
    st.tuples(st.just("attach"), st.sampled_from(DEVS),
              st.one_of(st.none(), ctxs)),
    st.tuples(st.just("dma"), st.sampled_from(DEVS), addrs,
              st.integers(0, 9000), st.booleans()),
    st.tuples(st.just("refs"), st.booleans(),
              st.lists(st.integers(0, GUEST + 2), max_size=8)),
    st.tuples(st.just("take_refs"),
              st.lists(st.integers(0, GUEST + 2), max_size=8)),
    st.tuples(st.just("inject"), st.integers(0, 8), st.integers(0, 6)),
    st.tuples(st.just("check"), st.booleans()),
    st.tuples(st.just("load_faults"),
              st.lists(st.tuples(st.sampled_from(DEVS + (0x400,)), addrs,
                                 st.integers(0, 9), st.integers(0, 2)), max_size=5),
              st.booleans()),
)

# Nested translation: stage-1 entries written into guest memory, PASIDs.
pasids = st.one_of(st.integers(1, 2), st.sampled_from([0, 3, 0xFFFFF, 0x100000]))
s1_addrs = st.one_of(st.tuples(st.integers(0, 20), st.integers(0, 4095)), addrs)
s1_entries = st.tuples(st.integers(0, GUEST + 3),
                       st.sampled_from([0, 1, 2, 3, 0x81, 0x83]))
nctxs = st.one_of(st.just(3), ctxs)     # the rig's nested context, often
nested_ops = st.one_of(
    st.tuples(st.just("alloc_nested"), ctxs, st.one_of(st.sampled_from(S1_TABLES), dfns)),
    st.tuples(st.just("s1_write"), st.one_of(st.sampled_from(S1_TABLES),
                                             st.integers(0, GUEST - 1)),
              st.integers(0, 20), s1_entries),
    st.tuples(st.just("attach_pasid"), st.sampled_from(DEVS), pasids, nctxs),
    st.tuples(st.just("detach_pasid"), st.sampled_from(DEVS), pasids),
    st.tuples(st.just("translate_nested"), nctxs, pasids, st.lists(s1_addrs, max_size=12),
              st.booleans()),
    st.tuples(st.just("inval_nested"), nctxs, st.one_of(st.none(), pasids), dfns, counts),
    st.tuples(st.just("dma_pasid"), st.sampled_from(DEVS), pasids, s1_addrs,
              st.integers(0, 9000), st.booleans()),
    st.tuples(st.just("remove_device"), st.sampled_from(DEVS)),
    # I/O page faults: stage-1 not-present faults queued, read, answered, retried
    st.tuples(st.just("enable_prq"), nctxs),
    st.tuples(st.just("read_prq"), nctxs, st.integers(0, 4), st.booleans()),
    st.tuples(st.just("respond_prq"), nctxs, st.integers(0, 5), st.sampled_from([0, 1, 2, 15])),
    st.tuples(st.just("load_prq"), st.sampled_from(DEVS), pasids, nctxs, s1_addrs,
              st.integers(0, 6), st.integers(0, 3), st.sampled_from([0, 1, 15])),
)

# Dirty tracking: A/D bits set by the walker, read-and-clear of the bitmap.
dirty_ops = st.one_of(
    st.tuples(st.just("dirty_track"), ctxs, st.booleans()),
    st.tuples(st.just("read_dirty"), ctxs, dfns, st.integers(0, 1100), st.booleans()),
)


def plain(x):
    """Results of either implementation in one comparable form."""
    if isinstance(x, enum.Enum):
        return int(x)
    if isinstance(x, (tuple, list)):
        return tuple(plain(i) for i in x)
    if isinstance(x, array):
        return tuple(x)
    return x


def status_of(f, *args):
    """f(*args), or the status it was refused with."""
    try:
        return f(*args)
    except HwError as e:
        return int(e.status)


class Rig:
    def __init__(self, impl, width):
        self.m = impl.Memory(FRAMES * 4096)
        self.io = impl.Iommu(self.m, width=width, max_contexts=6,
                             max_devices=3, iotlb_entries=16, iotlb_ways=2,
                             fault_log=4)
        self.guest = self.m.alloc(GUEST, owner=1)
        # Start with two contexts, one of them with a device, so that short
        # sequences already reach the interesting states.
        for d in DEVS[:2]:
            self.io.add_device(d)
        for _ in range(2):
            self.io.alloc_context()
        self.io.attach(DEVS[0], 0)
        # Stage 2 (context 2) maps the guest's frames at dfn = index; its
        # nested context 3 has a stage-1 chain in S1_TABLES whose leaf maps
        # IOVA pages 0..15 to dfns 16..31 (odd ones read-only), bound to
        # DEVS[1] with PASID 1.
        self.io.alloc_context()
        self.io.map(S2, 0, self.guest, 3)
        self.io.alloc_nested(S2, S1_TABLES[0])
        for table, nxt in zip(S1_TABLES, S1_TABLES[1:]):
            self.s1_write(table, 0, nxt << 12 | 3)
        for i in range(16):
            self.s1_write(S1_TABLES[-1], i, (16 + i) << 12 | (1 if i % 2 else 3))
        self.io.attach_pasid(DEVS[1], 1, 3)

    def s1_write(self, table, index, entry):
        """A stage-1 entry, written as the guest would: in its frame `table`."""
        frame = self.guest[table] if table < GUEST else FRAMES + table
        if frame < FRAMES:
            self.m.write(frame * 4096 + 8 * index, entry.to_bytes(8, "little"))

    def dfn(self, d):
        return self.io.max_iova_addr // 4096 + d[1] if isinstance(d, tuple) else d

    def addr(self, a):
        return a if isinstance(a, int) else self.dfn(a[0]) << 12 | a[1]

    def apply(self, op):
        io, kind = self.io, op[0]
        try:
            if kind == "alloc":
                return io.alloc_context()
            if kind == "map":
                return io.map(op[1], self.dfn(op[2]), array("Q", op[3]), op[4])
            if kind == "map_ref":
                return io.map_referenced(op[1], self.dfn(op[2]), array("Q", op[3]), op[4])
            if kind == "map_run":
                return io.map(op[1], self.dfn(op[2]),
                              range(op[3], op[3] + op[4]), op[5])
            if kind == "unmap":
                return io.unmap(op[1], self.dfn(op[2]), op[3], flush=op[4])
            if kind == "lookup":
                return io.lookup(op[1], self.dfn(op[2]))
            if kind == "translate":
                a = array("Q", [self.addr(x) for x in op[2]])
                return io.translate(op[1], a, write=op[3])
            if kind == "inval_pages":
                return io.invalidate_pages(op[1], self.dfn(op[2]), op[3])
            if kind == "inval_ctx":
                return io.invalidate_context(op[1])
            if kind == "inval_all":
                return io.invalidate_all()
            if kind == "teardown":
                return io.teardown(op[1], op[2])
            if kind == "attach":
                return io.attach(op[1], op[2])
            if kind == "dma":
                a = self.addr(op[2])
                if op[4]:
                    return io.dma_write(op[1], a, bytes([op[3] & 255]) * op[3])
                return io.dma_read(op[1], a, op[3])
            if kind == "refs":
                mfns = array("Q", [self.guest[i] if i < GUEST else FRAMES + i
                                   for i in op[2]])
                return (self.m.get_refs if op[1] else self.m.put_refs)(mfns)
            if kind == "take_refs":
                return self.m.take_refs(array("Q", [
                    self.guest[i] if i < GUEST else FRAMES + i for i in op[1]]))
            if kind == "inject":
                return self.m.inject(op[1], op[2])
            if kind == "load_faults":
                return io.load_faults([(d, self.addr(a), k, w) for d, a, k, w in op[1]], op[2])
            if kind == "check":
                io.check = op[1]
                return None
            if kind == "alloc_nested":
                return io.alloc_nested(op[1], self.dfn(op[2]))
            if kind == "s1_write":
                return self.s1_write(op[1], op[2], op[3][0] << 12 | op[3][1])
            if kind == "attach_pasid":
                return io.attach_pasid(op[1], op[2], op[3])
            if kind == "detach_pasid":
                return io.detach_pasid(op[1], op[2])
            if kind == "translate_nested":
                a = array("Q", [self.addr(x) for x in op[3]])
                return io.translate_nested(op[1], op[2], a, write=op[4])
            if kind == "inval_nested":
                return io.invalidate_nested(op[1], op[2], self.dfn(op[3]), op[4])
            if kind == "dma_pasid":
                a = self.addr(op[3])
                if op[5]:
                    done = io.dma_write(op[1], a, bytes([op[4] & 255]) * op[4], pasid=op[2])
                else:
                    done = io.dma_read(op[1], a, op[4], pasid=op[2])
                return done, io.dma_pending
            if kind == "enable_prq":
                return io.enable_page_requests(op[1])
            if kind == "read_prq":
                return io.read_page_requests(op[1], op[2], op[3])
            if kind == "respond_prq":
                return io.respond_page_request(op[1], op[2], op[3])
            if kind == "load_prq":
                return io.load_page_request(PageRequest(
                    op[1], op[2], self.addr(op[4]), op[6] == 0, op[3], op[5], op[6] % 3,
                    op[7]))
            if kind == "remove_device":
                return io.remove_device(op[1])
            if kind == "dirty_track":
                return io.dirty_track(op[1], op[2])
            if kind == "read_dirty":
                return io.read_dirty(op[1], self.dfn(op[2]), op[3], op[4])
        except StaleIotlbError as e:
            return ("stale", e.done)
        except HwError as e:
            return ("error", int(e.status), e.index)
        raise AssertionError(op)

    def state(self):
        io = self.io
        ctxs = []
        for c in range(CTX_IDS):
            try:
                ctxs.append(io.context_info(c))
            except HwError as e:
                ctxs.append(int(e.status))
        return plain((ctxs, io.counters(), io.pool_counters(0), io.faults(), self.m.used,
                      self.m.injection(), io.stale_iotlb_entries(),
                      io.nested_stale_iotlb_entries(),
                      [io.pasid_context(d, p) for d in DEVS for p in (1, 2)],
                      io.page_requests(),
                      [status_of(io.device_context, d) for d in DEVS[:2]],
                      [status_of(io.read_dirty, c, 0, 1100, False) for c in (0, 1)],
                      self.m.refcounts(self.guest)))


def run_both(width, seq):
    c, r = Rig(native, width), Rig(reference, width)
    for i, op in enumerate(seq):
        got, want = plain(c.apply(op)), plain(r.apply(op))
        assert got == want, (i, op)
        assert c.state() == r.state(), (i, op)
    assert c.m.read(0, FRAMES * 4096) == r.m.read(0, FRAMES * 4096)
    # every live context translates the same everywhere it was touched
    probe = array("Q", [d << 12 for d in range(0, 1100, 7)])
    for ctx in range(CTX_IDS):
        try:
            got = plain(c.io.translate(ctx, probe))
        except HwError as e:
            got = int(e.status)
        try:
            want = plain(r.io.translate(ctx, probe))
        except HwError as e:
            want = int(e.status)
        assert got == want
        try:
            got = plain(c.io.translate_nested(ctx, 1, probe))
        except HwError as e:
            got = int(e.status)
        try:
            want = plain(r.io.translate_nested(ctx, 1, probe))
        except HwError as e:
            want = int(e.status)
        assert got == want


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([39, 48]), st.lists(ops, min_size=10, max_size=80))
def test_random_sequences_agree(width, seq):
    run_both(width, seq)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([39, 48]), st.lists(st.one_of(ops, nested_ops, nested_ops),
                                           min_size=10, max_size=80))
def test_random_nested_sequences_agree(width, seq):
    """Stage-1 walks through stage 2, their IOTLB entries, PASID bindings and
    guest invalidation, mixed with the second-level operations."""
    run_both(width, seq)


def test_scripted_sequence_agrees():
    """A fixed sequence reaching every kind of stop, for quick diagnosis."""
    seq = [("alloc",), ("map_run", 0, 500, 0, 30, 3),
           ("map", 0, 510, [1, 2], 1), ("attach", 0x100, 0),
           ("dma", 0x100, (505, 100), 9000, True),
           ("translate", 0, [(500, 0), (530, 0), 0xFEE00000], True),
           ("unmap", 0, 520, 40, False), ("check", True),
           ("dma", 0x100, (521, 0), 10, False), ("inval_all",),
           ("teardown", 0, 5), ("attach", 0x100, 1), ("teardown", 0, 5), ("teardown", 0, 100),
           ("teardown", 0, 2000), ("map_run", 1, ("top", -1), 3, 5, 2),
           ("refs", True, [0, 1, 50]), ("refs", False, [0, 0])]
    run_both(39, seq)


# Page requests: page 20 has no stage-1 entry; queued (twice: one request),
# read, answered SUCCESS after the guest maps it (the retry completes),
# then INVALID (the retry faults), a stage-2 hole (never a request), and a
# detach dropping what is outstanding.
PRQ_SCRIPT = [
    ("enable_prq", 3), ("dma_pasid", 0x200, 1, (20, 8), 16, True),
    ("dma_pasid", 0x200, 1, (20, 8), 16, True), ("read_prq", 3, 4, False),
    ("read_prq", 3, 4, True), ("read_prq", 3, 4, True), ("respond_prq", 3, 2, 0),
    ("respond_prq", 3, 1, 7), ("s1_write", 4, 20, (40, 3)), ("respond_prq", 3, 1, 0),
    ("respond_prq", 3, 1, 0), ("dma_pasid", 0x200, 1, (20, 8), 16, True),
    ("dma_pasid", 0x200, 1, (21, 0), 4, False), ("respond_prq", 3, 2, 1),
    ("s1_write", 4, 21, (41, 3)), ("dma_pasid", 0x200, 1, (21, 0), 4, False),
    ("s1_write", 4, 22, (47 + 200, 3)), ("dma_pasid", 0x200, 1, (22, 0), 4, False),
    ("dma_pasid", 0x200, 1, (23, 0), 4, False), ("detach_pasid", 0x200, 1),
    ("load_prq", 0x200, 1, 3, (23, 0), 9, 0, 0)]


def test_scripted_nested_sequence_agrees():
    """Nested walks that succeed, hit, go stale until flushed, lose their
    stage 2 and their binding, for quick diagnosis; the walks do translate."""
    seq = [("translate_nested", 3, 1, [(0, 8), (1, 0), (15, 4095), (16, 0)], False),
           ("dma_pasid", 0x200, 1, (2, 100), 5000, True),
           ("translate_nested", 3, 1, [(0, 8), (1, 0)], True),          # page 1 read-only
           ("s1_write", 4, 0, (30, 3)), ("dma_pasid", 0x200, 1, (0, 0), 8, False),
           ("inval_nested", 3, 1, 0, 1), ("dma_pasid", 0x200, 1, (0, 0), 8, False),
           ("unmap", S2, 3, 1, True), ("translate_nested", 3, 1, [(0, 0)], False),
           ("attach_pasid", 0x100, 2, 3), ("dma_pasid", 0x100, 2, (5, 0), 8, True),
           ("detach_pasid", 0x200, 1), ("dma_pasid", 0x200, 1, (0, 0), 8, False),
           ("inval_nested", 3, None, 0, 0), ("teardown", S2, 10), ("teardown", 3, 10)]
    run_both(48, seq)
    run_both(48, PRQ_SCRIPT)
    rig = Rig(native, 39)
    maddr, faults = rig.io.translate_nested(3, 1, array("Q", [0, 1 << 12, 16 << 12]))
    assert list(faults) == [0, 0, 1] and maddr[0] == rig.guest[16] << 12


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([39, 48]), st.lists(st.one_of(ops, dirty_ops, dirty_ops, nested_ops),
                                           min_size=10, max_size=80))
def test_random_dirty_sequences_agree(width, seq):
    """A/D bits set by the walker (the tables are compared byte for byte),
    the IOTLB's clean entries, read-and-clear of the bitmaps and what it
    drops, mixed with the other operations."""
    run_both(width, seq)


def test_scripted_nested_dirty_sequence_agrees():
    """Tracking on the rig's stage 2 (S2): nested reads set A on the stage-1
    table pages' and the output's stage-2 entries, a nested write through a
    clean entry walks again and sets D, read-and-clear drops the nested
    context's cached translations."""
    seq = [("dirty_track", S2, True),
           ("translate_nested", 3, 1, [(0, 8), (15, 0)], False),
           ("translate_nested", 3, 1, [(0, 8)], True),
           ("read_dirty", S2, 0, 64, False), ("read_dirty", S2, 0, 64, True),
           ("translate_nested", 3, 1, [(0, 0)], True), ("read_dirty", S2, 0, 64, True),
           ("dirty_track", S2, False), ("translate_nested", 3, 1, [(0, 0)], True),
           ("read_dirty", S2, 0, 64, True)]
    run_both(39, seq)


def test_scripted_dirty_sequence_agrees():
    """Tracking on; a read caches a clean entry that a write then walks
    again; read-and-clear; its dropped entries; tracking off."""
    seq = [("map_run", 0, 0, 0, 30, 3), ("map_run", 0, 30, 0, 4, 1),
           ("dirty_track", 0, True),
           ("dma", 0x100, (1, 0), 10, False), ("dma", 0x100, (1, 0), 10, True),
           ("dma", 0x100, (2, 0), 9000, True), ("dma", 0x100, (31, 0), 8, True),
           ("read_dirty", 0, 0, 40, False), ("read_dirty", 0, 0, 40, True),
           ("read_dirty", 0, 0, 40, True), ("dma", 0x100, (3, 0), 8, True),
           ("read_dirty", 0, 3, 1, True), ("dirty_track", 0, False),
           ("dma", 0x100, (5, 0), 8, True), ("read_dirty", 0, ("top", -2), 2, True),
           ("read_dirty", 0, ("top", -2), 4, True)]
    run_both(39, seq)
    rig = Rig(native, 39)
    rig.io.map(0, 0, range(40, 48), 3)
    rig.io.dirty_track(0, True)
    rig.io.dma_read(0x100, 0, 8)            # page 0 read: A, and a clean IOTLB entry
    rig.io.dma_write(0x100, 0x2000, b"x")   # page 2 written: A and D
    rig.io.dma_write(0x100, 0, b"x")        # the clean entry walks again: D
    dirty, accessed, n = rig.io.read_dirty(0, 0, 8, clear=True)
    assert (dirty[0], accessed[0], n) == (0b101, 0b101, 2)
    assert rig.io.read_dirty(0, 0, 8)[0][0] == 0          # cleared, A kept
    misses = rig.io.counters().misses
    rig.io.dma_write(0x100, 0x2000, b"y")   # its entry was dropped: walks, D again
    assert rig.io.counters().misses == misses + 1
    assert rig.io.read_dirty(0, 0, 8, clear=False)[0][0] == 0b100
