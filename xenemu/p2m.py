"""A domain's physical-to-machine map, as the reference code sees it.

The frames of guest RAM live in one array('Q') indexed by gfn (no Python
object per page). The gfns that are not plain RAM - paged out, being paged
in, shared, MMIO, ballooned out - are kept as sorted runs of one type, so
checking or setting a run of gfns is a binary search and a move of a few
runs, not a loop over pages, and a run costs the same whatever its length.

The runs live in C (cext/p2m.c), in the struct the C fast path reads
(`P2m.c_p2m`), and nowhere else: P2m changes them only through
p2m_set_run, so C never reads a stale copy. What C does not read stays
here: the page-ins under way (a PAGING_IN gfn is not RAM to C until
Python settles it) and the owners of foreign gfns.
"""

from __future__ import annotations

import enum
import struct
from array import array

from .errno import XenErrno
from .hw._hwlib import ffi, lib


class P2mType(enum.Enum):
    RAM = "ram"
    INVALID = "invalid"        # not backed (ballooned out, or beyond memory)
    PAGED_OUT = "paged_out"    # mapping it fails with -EIO and starts a page-in
    PAGING_IN = "paging_in"    # page-in under way: still -EIO until it completes
    SHARED = "shared"          # -EINVAL: get_page_from_gfn(P2M_UNSHARE) refuses
    MMIO = "mmio"              # not RAM: -EPERM
    # Another domain's frame (a grant or foreign mapping), revision 2 only:
    # the gfn's own frame stays the domain's, unused; P2m.foreign names the owner's.
    FOREIGN = "foreign"


# Why get_paged_frame() fails for each type (seed 001), with the log reason.
TYPE_ERROR = {
    P2mType.INVALID: (XenErrno.EPERM, "gfn not backed"),
    P2mType.PAGED_OUT: (XenErrno.EIO, "gfn paged out, page-in started"),
    P2mType.PAGING_IN: (XenErrno.EIO, "gfn being paged in"),
    P2mType.SHARED: (XenErrno.EINVAL, "gfn is shared"),
    P2mType.MMIO: (XenErrno.EPERM, "gfn is MMIO, not RAM"),
    P2mType.FOREIGN: (XenErrno.EPERM, "gfn is another domain's frame"),
}


# P2mType in the order of cext/p2m.h's enum p2m_kind (P2M_RAM = 0, ...).
_KINDS = (P2mType.RAM, P2mType.INVALID, P2mType.PAGED_OUT, P2mType.PAGING_IN,
          P2mType.SHARED, P2mType.MMIO, P2mType.FOREIGN)
_KIND_NO = {t: no for no, t in enumerate(_KINDS)}
_ram_run, _kind_at, _run_end = lib.p2m_ram_run, lib.p2m_kind_at, lib.p2m_run_end
# struct p2m_run as bytes (start, end, kind, padding): runs() unpacks the
# array in one pass instead of three cffi field reads a run.
_RUN = struct.Struct("=QQi4x")
if _RUN.size != ffi.sizeof("struct p2m_run") or ffi.offsetof("struct p2m_run", "kind") != 16:
    raise ImportError("struct p2m_run's layout is not (uint64, uint64, int, padding)")


class P2m:
    def __init__(self, mfns: array, clock, page_in_delay: float):
        if not (isinstance(mfns, array) and mfns.typecode == "Q"):
            raise TypeError("a p2m's frames are an array('Q')")
        self.mfns = mfns                       # gfn -> mfn for every gfn below nr_pages; never rebound
        # C reads mfns through this pointer for the p2m's life: the buffer
        # export it holds makes any resize of mfns raise BufferError, so
        # the pointer and nr_pages stay true.
        self._lent = ffi.from_buffer("uint64_t[]", mfns)
        c = lib.p2m_create(self._lent, len(mfns))
        if c == ffi.NULL:
            raise MemoryError("no memory for a p2m")
        # The gfns that are not RAM, as sorted runs [start, end) of one type,
        # adjacent runs of one type joined: a run costs one entry whatever
        # its length, so a snapshot's run of a million pages is one.
        self.c_p2m = ffi.gc(c, lib.p2m_destroy)
        self._page_in_done: dict[int, float] = {}
        # FOREIGN gfn -> (owner domid, owner's gfn): set one gfn at a time on
        # the control socket, so at most one entry per gfn of the domain.
        self.foreign: dict[int, tuple[int, int]] = {}
        self._clock = clock
        self._delay = page_in_delay
        self.on_became_ram = None              # callback(gfn) -> bool: the default context maps it again

    @property
    def nr_pages(self) -> int:
        return len(self.mfns)

    def _kind(self, gfn: int) -> P2mType:
        return _KINDS[_kind_at(self.c_p2m, gfn)]

    def type_of(self, gfn: int) -> P2mType:
        if not 0 <= gfn < self.nr_pages:
            return P2mType.INVALID
        self._settle(gfn)
        return self._kind(gfn)

    def set_type(self, gfn: int, t: P2mType) -> None:
        self.set_run(gfn, 1, t)

    def set_run(self, gfn: int, count: int, t: P2mType) -> None:
        """gfns [gfn, gfn + count) become t: the runs they cut are split, in
        one C call whatever count is."""
        end = gfn + count
        if count <= 0 or not 0 <= gfn or end > self.nr_pages:
            raise ValueError(f"gfns {gfn:#x}+{count} are beyond the domain's memory")
        if lib.p2m_set_run(self.c_p2m, gfn, count, _KIND_NO[t]) != lib.P2M_OK:
            # The range is checked above and t is a P2mType: only memory is left.
            raise MemoryError(f"no memory for the p2m's runs (gfns {gfn:#x}+{count})")
        if t is not P2mType.FOREIGN and self.foreign:
            for g in [g for g in self.foreign if gfn <= g < end]:
                del self.foreign[g]
        if t is P2mType.RAM and self._page_in_done:
            for g in [g for g in self._page_in_done if gfn <= g < end]:
                del self._page_in_done[g]

    def runs(self) -> list[tuple[int, int, P2mType]]:
        """(gfn, count, type) of each run of gfns that are not RAM, in order."""
        c = self.c_p2m
        if not c.nr_runs:
            return []
        return [(s, e - s, _KINDS[k])
                for s, e, k in _RUN.iter_unpack(ffi.buffer(c.runs, c.nr_runs * _RUN.size))]

    def state(self) -> tuple[list[tuple[int, int, P2mType]], dict[int, float]]:
        """The runs that are not RAM, and the page-ins under way (gfn -> the
        time it completes), as they stand. Nothing is settled: a page-in
        completes when the machine next looks at it, and looking here must
        not move that moment (a device's DMA meanwhile still faults on it)."""
        return self.runs(), dict(self._page_in_done)

    def resume_page_in(self, gfn: int, due: float) -> None:
        """A restored page-in: gfn, already paging in, becomes RAM at `due`."""
        if not 0 <= gfn < self.nr_pages or self._kind(gfn) is not P2mType.PAGING_IN:
            raise ValueError(f"gfn {gfn:#x} is not paging in")
        self._page_in_done[gfn] = due

    def run_end(self, gfn: int) -> int:
        """The end of the run of one type that holds gfn (not RAM)."""
        end = _run_end(self.c_p2m, gfn)
        if end == gfn:
            raise ValueError(f"gfn {gfn:#x} is RAM: it is in no run")
        return end

    def first_non_ram(self, gfn: int, n: int,
                      page_in: bool = True) -> tuple[int, XenErrno | None, str]:
        """How many pages from gfn are RAM, and the error for the first that is not.

        Returns (k, errno, why); errno is None when all n are RAM. A paged-out
        gfn met here starts its page-in, as p2m_mem_paging_populate does,
        unless not `page_in` (revision 2's get_paged_frame asks for none).
        """
        if n <= 0:
            return n, None, ""
        c = self.c_p2m
        k = _ram_run(c, gfn, n)        # stops at nr_pages and at the first run
        while k < n:
            g = gfn + k
            if g >= self.nr_pages:
                err, why = TYPE_ERROR[P2mType.INVALID]
                return k, err, f"{why} (gfn {g:#x})"
            if self._settle(g):
                k = _ram_run(c, gfn, n)       # became RAM: look again from the same place
                continue
            t = _KINDS[_kind_at(c, g)]
            if t is P2mType.PAGED_OUT and page_in:
                self._start_page_in(g)
            err, why = TYPE_ERROR[t]
            return k, err, f"{why} (gfn {g:#x})"
        return n, None, ""

    def _start_page_in(self, gfn: int) -> None:
        self.set_type(gfn, P2mType.PAGING_IN)
        self._page_in_done[gfn] = self._clock() + self._delay

    def _settle(self, gfn: int) -> bool:
        """Complete a page-in whose time has come; True if gfn became RAM."""
        due = self._page_in_done.get(gfn)
        if due is None or self._clock() < due:
            return False
        self.set_type(gfn, P2mType.RAM)
        if self.on_became_ram and not self.on_became_ram(gfn):
            # The default context could not map it: the page-in completes
            # at a later look instead.
            self.set_type(gfn, P2mType.PAGING_IN)
            self._page_in_done[gfn] = due
            return False
        return True

    def ram_runs(self):
        """(first gfn, count) for each run of RAM gfns, in order (page-ins
        whose time has come complete first)."""
        for gfn in list(self._page_in_done):
            self._settle(gfn)
        start = 0
        for s, count, _ in self.runs():
            if s > start:
                yield start, s - start
            start = s + count
        if start < self.nr_pages:
            yield start, self.nr_pages - start
