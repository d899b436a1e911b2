"""A domain's physical-to-machine map, as the reference code sees it.

The frames of guest RAM live in one array('Q') indexed by gfn (no Python
object per page). The gfns that are not plain RAM - paged out, being paged
in, shared, MMIO, ballooned out - are kept as sorted runs of one type, so
checking or setting a run of gfns is a bisect and a slice, not a loop over
pages, and a run costs the same whatever its length.
"""

from __future__ import annotations

import bisect
import enum
from array import array

from .errno import XenErrno


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


class P2m:
    def __init__(self, mfns: array, clock, page_in_delay: float):
        self.mfns = mfns                       # gfn -> mfn for every gfn below nr_pages
        # The gfns that are not RAM, as sorted runs [start, end) of one type,
        # adjacent runs of one type joined: a run costs three list slots
        # whatever its length, so a snapshot's run of a million pages is one.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._kinds: list[P2mType] = []
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
        i = bisect.bisect_right(self._starts, gfn) - 1
        return self._kinds[i] if i >= 0 and gfn < self._ends[i] else P2mType.RAM

    def type_of(self, gfn: int) -> P2mType:
        if not 0 <= gfn < self.nr_pages:
            return P2mType.INVALID
        self._settle(gfn)
        return self._kind(gfn)

    def set_type(self, gfn: int, t: P2mType) -> None:
        self.set_run(gfn, 1, t)

    def set_run(self, gfn: int, count: int, t: P2mType) -> None:
        """gfns [gfn, gfn + count) become t: the runs they cut are split, in
        a few list operations whatever count is."""
        end = gfn + count
        if count <= 0 or not 0 <= gfn or end > self.nr_pages:
            raise ValueError(f"gfns {gfn:#x}+{count} are beyond the domain's memory")
        starts, ends, kinds = self._starts, self._ends, self._kinds
        lo = bisect.bisect_right(ends, gfn)        # first run ending after gfn
        hi = bisect.bisect_left(starts, end)       # first run starting at or after end
        keep = []                                  # the parts of cut runs outside the range
        if lo < hi and starts[lo] < gfn:
            keep.append((starts[lo], gfn, kinds[lo]))
        if lo < hi and ends[hi - 1] > end:
            keep.append((end, ends[hi - 1], kinds[hi - 1]))
        pieces = sorted(keep + ([(gfn, end, t)] if t is not P2mType.RAM else []))
        # Join what touches and has one type: the pieces, and the runs on either side.
        if lo > 0:
            lo -= 1
            pieces.insert(0, (starts[lo], ends[lo], kinds[lo]))
        if hi < len(starts):
            pieces.append((starts[hi], ends[hi], kinds[hi]))
            hi += 1
        new: list[tuple[int, int, P2mType]] = []
        for piece in pieces:
            if new and new[-1][1] == piece[0] and new[-1][2] is piece[2]:
                new[-1] = (new[-1][0], piece[1], piece[2])
            else:
                new.append(piece)
        starts[lo:hi] = [s for s, _, _ in new]
        ends[lo:hi] = [e for _, e, _ in new]
        kinds[lo:hi] = [k for _, _, k in new]
        if t is not P2mType.FOREIGN and self.foreign:
            for g in [g for g in self.foreign if gfn <= g < end]:
                del self.foreign[g]
        if t is P2mType.RAM and self._page_in_done:
            for g in [g for g in self._page_in_done if gfn <= g < end]:
                del self._page_in_done[g]

    def runs(self) -> list[tuple[int, int, P2mType]]:
        """(gfn, count, type) of each run of gfns that are not RAM, in order."""
        return [(s, e - s, k) for s, e, k in zip(self._starts, self._ends, self._kinds)]

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
        return self._ends[bisect.bisect_right(self._starts, gfn) - 1]

    def first_non_ram(self, gfn: int, n: int,
                      page_in: bool = True) -> tuple[int, XenErrno | None, str]:
        """How many pages from gfn are RAM, and the error for the first that is not.

        Returns (k, errno, why); errno is None when all n are RAM. A paged-out
        gfn met here starts its page-in, as p2m_mem_paging_populate does,
        unless not `page_in` (revision 2's get_paged_frame asks for none).
        """
        limit = max(0, min(n, self.nr_pages - gfn)) if gfn < self.nr_pages else 0
        while True:
            i = bisect.bisect_right(self._ends, gfn)       # the first run ending after gfn
            if i == len(self._starts) or self._starts[i] >= gfn + limit:
                break
            g = max(self._starts[i], gfn)
            if self._settle(g):
                continue          # became RAM: look again from the same place
            t = self._kinds[i]
            if t is P2mType.PAGED_OUT and page_in:
                self._start_page_in(g)
            err, why = TYPE_ERROR[t]
            return g - gfn, err, f"{why} (gfn {g:#x})"
        if limit < n:
            err, why = TYPE_ERROR[P2mType.INVALID]
            return limit, err, f"{why} (gfn {gfn + limit:#x})"
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
        for s, e in zip(list(self._starts), list(self._ends)):
            if s > start:
                yield start, s - start
            start = e
        if start < self.nr_pages:
            yield start, self.nr_pages - start
