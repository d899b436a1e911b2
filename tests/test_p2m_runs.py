"""A domain's p2m runs, kept in C (cext/p2m.c) and driven through P2m and
the C functions the fast path calls, against a model that keeps one type
per page (fine for a few dozen pages): every query agrees with the model
after every change, and the runs are always the model's maximal runs."""
from array import array

import pytest
from hypothesis import given, settings, strategies as st

from xenemu.errno import XenErrno
from xenemu.hw._hwlib import ffi, lib
from xenemu.p2m import _KINDS, TYPE_ERROR, P2m, P2mType

TYPES = list(P2mType)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


DELAY = 1.0


def new_p2m(nr: int) -> tuple[P2m, Clock]:
    clock = Clock()
    return P2m(array("Q", range(100, 100 + nr)), clock, DELAY), clock


class Model:
    """The p2m page by page, with the same settling of page-ins."""

    def __init__(self, nr: int, clock: Clock):
        self.kinds = [P2mType.RAM] * nr
        self.due: dict[int, float] = {}
        self.clock = clock

    def set_run(self, gfn, count, t):
        for g in range(gfn, gfn + count):
            self.kinds[g] = t
            if t is P2mType.RAM:
                self.due.pop(g, None)

    def settle(self, g) -> bool:
        if g in self.due and self.clock() >= self.due[g]:
            del self.due[g]
            self.kinds[g] = P2mType.RAM
            return True
        return False

    def type_of(self, g):
        if not 0 <= g < len(self.kinds):
            return P2mType.INVALID
        self.settle(g)
        return self.kinds[g]

    def first_non_ram(self, gfn, n, page_in):
        if n <= 0:
            return n, None, ""
        for k in range(n):
            g = gfn + k
            if g >= len(self.kinds):
                err, why = TYPE_ERROR[P2mType.INVALID]
                return k, err, f"{why} (gfn {g:#x})"
            self.settle(g)
            t = self.kinds[g]
            if t is P2mType.RAM:
                continue
            if t is P2mType.PAGED_OUT and page_in:
                self.kinds[g] = P2mType.PAGING_IN
                self.due[g] = self.clock() + DELAY
            err, why = TYPE_ERROR[t]
            return k, err, f"{why} (gfn {g:#x})"
        return n, None, ""

    def runs(self):
        out = []
        for g, t in enumerate(self.kinds):
            if t is P2mType.RAM:
                continue
            if out and out[-1][0] + out[-1][1] == g and out[-1][2] is t:
                out[-1] = (out[-1][0], out[-1][1] + 1, t)
            else:
                out.append((g, 1, t))
        return out

    def ram_run(self, gfn, n):
        k = 0
        while k < n and gfn + k < len(self.kinds) and self.kinds[gfn + k] is P2mType.RAM:
            k += 1
        return k


NR = st.integers(1, 24)
# Few kinds, most often the same ones, so that runs often meet and join.
KIND = st.one_of(st.sampled_from([P2mType.RAM, P2mType.MMIO, P2mType.PAGED_OUT]),
                 st.sampled_from(TYPES))
OPS = st.lists(st.tuples(
    st.sampled_from(["set", "set", "set", "type_of", "fnr", "ram_run", "run_end", "tick",
                     "ram_runs"]),
    st.integers(0, 26), st.integers(0, 26), KIND, st.booleans()),
    max_size=40)


@settings(max_examples=500, deadline=None)
@given(NR, OPS)
def test_p2m_agrees_with_a_page_by_page_model(nr, ops):
    p, clock = new_p2m(nr)
    m = Model(nr, clock)
    for op, a, b, t, flag in ops:
        if op == "set":
            # Mostly a range within the domain; now and then empty or one past it.
            a %= nr + 1
            b %= nr - a + 2
            if b == 0 or a + b > nr:
                with pytest.raises(ValueError, match="beyond the domain's memory"):
                    p.set_run(a, b, t)
                continue
            p.set_run(a, b, t)
            m.set_run(a, b, t)
        elif op == "type_of":
            assert p.type_of(a) is m.type_of(a)
        elif op == "fnr":
            assert p.first_non_ram(a, b, page_in=flag) == m.first_non_ram(a, b, flag)
        elif op == "ram_run":
            # What the fast path asks: nothing settled, PAGING_IN is not RAM.
            assert lib.p2m_ram_run(p.c_p2m, a, b) == m.ram_run(a, b)
            want = m.kinds[a] if a < nr else P2mType.INVALID
            assert _KINDS[lib.p2m_kind_at(p.c_p2m, a)] is want
        elif op == "run_end":
            if a < nr and m.kinds[a] is not P2mType.RAM:
                end = a
                while end < nr and m.kinds[end] is m.kinds[a]:
                    end += 1
                assert p.run_end(a) == end
            else:
                with pytest.raises(ValueError, match="is RAM|in no run"):
                    p.run_end(a)
        elif op == "tick":
            clock.now += b / 20
        elif op == "ram_runs":
            got = list(p.ram_runs())
            for g in list(m.due):
                m.settle(g)
            want, g = [], 0
            while g < nr:
                if m.kinds[g] is P2mType.RAM:
                    k = m.ram_run(g, nr)
                    want.append((g, k))
                    g += k
                else:
                    g += 1
            assert got == want
        runs = p.runs()
        assert runs == m.runs()
        assert p.state() == (runs, m.due)
        assert lib.p2m_run_count(p.c_p2m) == len(runs)


def test_runs_split_and_join_at_the_edges():
    p, _ = new_p2m(16)
    p.set_run(0, 1, P2mType.MMIO)                  # a run at 0
    p.set_run(15, 1, P2mType.MMIO)                 # and at nr_pages - 1
    assert p.runs() == [(0, 1, P2mType.MMIO), (15, 1, P2mType.MMIO)]
    p.set_run(1, 14, P2mType.MMIO)                 # joins both neighbours: one run
    assert p.runs() == [(0, 16, P2mType.MMIO)]
    p.set_run(4, 2, P2mType.SHARED)                # splits it in three
    assert p.runs() == [(0, 4, P2mType.MMIO), (4, 2, P2mType.SHARED), (6, 10, P2mType.MMIO)]
    assert p.run_end(0) == 4 and p.run_end(5) == 6 and p.run_end(15) == 16
    p.set_run(4, 2, P2mType.MMIO)                  # joined again
    assert p.runs() == [(0, 16, P2mType.MMIO)]
    p.set_run(0, 16, P2mType.RAM)
    assert p.runs() == [] and list(p.ram_runs()) == [(0, 16)]
    assert lib.p2m_run_count(p.c_p2m) == 0
    for b in range(1, 16):                         # runs meeting anywhere join
        p.set_run(0, b, P2mType.MMIO)
        p.set_run(b, 16 - b, P2mType.MMIO)
        assert p.runs() == [(0, 16, P2mType.MMIO)]
        p.set_run(0, 16, P2mType.RAM)


@pytest.mark.parametrize("gfn, count", [(0, 0), (15, 2), (16, 1), (-1, 2), (0, 17), (3, -1)])
def test_a_range_beyond_the_domain_is_refused(gfn, count):
    p, _ = new_p2m(16)
    p.set_run(2, 3, P2mType.SHARED)
    with pytest.raises(ValueError, match=r"beyond the domain's memory"):
        p.set_run(gfn, count, P2mType.MMIO)
    assert p.runs() == [(2, 3, P2mType.SHARED)]


def test_a_zero_page_query_is_all_ram_even_inside_a_paged_out_run():
    # Xen's map loop does nothing for nr_pages 0: no error, no page-in.
    p, _ = new_p2m(16)
    p.set_run(2, 4, P2mType.PAGED_OUT)
    assert p.first_non_ram(3, 0) == (0, None, "")
    assert p.runs() == [(2, 4, P2mType.PAGED_OUT)]
    assert p.first_non_ram(3, 1) == (0, XenErrno.EIO, "gfn paged out, page-in started (gfn 0x3)")
    assert p.type_of(3) is P2mType.PAGING_IN


def test_the_c_enum_is_p2m_type_in_order():
    assert [getattr(lib, f"P2M_{t.name}") for t in _KINDS] == list(range(len(TYPES)))
    assert set(_KINDS) == set(TYPES)


def test_the_frames_are_lent_to_c_and_cannot_be_resized():
    p, _ = new_p2m(8)
    c = p.c_p2m
    assert c.nr_pages == 8 and int(ffi.cast("uintptr_t", c.mfns)) == p.mfns.buffer_info()[0]
    p.mfns[3] = 77                                  # written in place: C reads the same memory
    assert c.mfns[3] == 77
    with pytest.raises(BufferError):
        p.mfns.append(1)
    with pytest.raises(BufferError):
        del p.mfns[0]
    assert p.nr_pages == 8
    with pytest.raises(TypeError, match=r"array\('Q'\)"):
        P2m(array("I", range(8)), Clock(), DELAY)


def test_p2m_ram_run_and_set_run_in_c():
    frames = array("Q", range(32))
    c = ffi.gc(lib.p2m_create(ffi.from_buffer("uint64_t[]", frames), 32), lib.p2m_destroy)
    ram_run = lib.p2m_ram_run
    assert ram_run(c, 0, 100) == 32 and ram_run(c, 30, 2**64 - 1) == 2
    assert ram_run(c, 32, 1) == 0 and ram_run(c, 2**64 - 1, 2**64 - 1) == 0
    assert ram_run(c, 5, 0) == 0
    assert lib.p2m_set_run(c, 10, 4, lib.P2M_PAGING_IN) == lib.P2M_OK
    assert ram_run(c, 0, 100) == 10 and ram_run(c, 0, 10) == 10 and ram_run(c, 0, 7) == 7
    assert ram_run(c, 10, 5) == 0 and ram_run(c, 13, 5) == 0 and ram_run(c, 14, 100) == 18
    assert lib.p2m_kind_at(c, 13) == lib.P2M_PAGING_IN and lib.p2m_kind_at(c, 14) == lib.P2M_RAM
    assert lib.p2m_kind_at(c, 32) == lib.P2M_INVALID
    # Refused, the runs unchanged: an empty or overflowing range, a kind beyond the enum.
    for gfn, count in [(0, 0), (31, 2), (32, 1), (2**64 - 1, 2), (1, 2**64 - 1)]:
        assert lib.p2m_set_run(c, gfn, count, lib.P2M_MMIO) == lib.P2M_ERANGE
    assert lib.p2m_set_run(c, 0, 1, 7) == lib.P2M_EKIND
    run = ffi.new("struct p2m_run *")
    assert lib.p2m_run_count(c) == 1 and lib.p2m_run_get(c, 0, run) == 0
    assert (run.start, run.end, run.kind) == (10, 14, lib.P2M_PAGING_IN)
    assert lib.p2m_run_get(c, 1, run) == -1
    assert lib.p2m_run_after(c, 9) == 0 and lib.p2m_run_after(c, 14) == 1
    assert lib.p2m_run_end(c, 10) == 14 and lib.p2m_run_end(c, 13) == 14
    assert lib.p2m_run_end(c, 9) == 9 and lib.p2m_run_end(c, 14) == 14 and lib.p2m_run_end(c, 40) == 40


def test_many_runs_grow_the_array_and_stay_in_order():
    p, _ = new_p2m(4096)
    for g in range(0, 4096, 2):                     # 2048 one-page runs, the worst case
        p.set_type(g, P2mType.MMIO if g % 4 else P2mType.SHARED)
    assert len(p.runs()) == 2048 and p.c_p2m.cap >= 2048
    assert p.first_non_ram(1, 3)[0] == 1 and p.type_of(4094) is P2mType.MMIO
    p.set_run(0, 4096, P2mType.INVALID)             # one run again
    assert p.runs() == [(0, 4096, P2mType.INVALID)]


def test_a_zero_page_map_inside_a_paged_out_run_maps_nothing_and_pages_nothing_in(local):
    # Through the engine: map_pages of 0 pages at gfn 0x521, inside paged-out
    # gfns 0x520-0x523, returns 0 as Xen's empty loop does (the Python lists'
    # version answered -EIO and started a page-in there, but not at 0x520).
    xen = local.client(0)
    for g in range(0x520, 0x524):
        local.ctl("p2m_set", domid=0, gfn=g, type="paged_out")
    ctx = xen.alloc_context().op.ctx_no
    res = xen.map_pages(ctx, 0x521, 0x900, 0)
    assert (res.ret, res.op.map_pages.mapped) == (0, 0)
    assert local.ctl("p2m_get", domid=0, gfn=0x521)["type"] == "paged_out"
    assert xen.map_pages(ctx, 0x51F, 0x900, 3).ret == -XenErrno.EIO     # one page, then 0x520
    assert local.ctl("p2m_get", domid=0, gfn=0x520)["type"] == "paging_in"
    assert xen.unmap_pages(ctx, 0x900, 1).ret == 0
    assert xen.free_context(ctx).ret == 0
