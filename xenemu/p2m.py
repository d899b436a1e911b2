"""A domain's physical-to-machine map, as the reference code sees it.

The frames of guest RAM live in one array('Q') indexed by gfn (no Python
object per page). The few gfns that are not plain RAM - paged out, being
paged in, shared, MMIO, ballooned out - are kept in a sparse overlay with a
sorted index, so checking a run of gfns is a slice and a bisect, not a loop
over pages.
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


# Why get_paged_frame() fails for each type (seed 001), with the log reason.
TYPE_ERROR = {
    P2mType.INVALID: (XenErrno.EPERM, "gfn not backed"),
    P2mType.PAGED_OUT: (XenErrno.EIO, "gfn paged out, page-in started"),
    P2mType.PAGING_IN: (XenErrno.EIO, "gfn being paged in"),
    P2mType.SHARED: (XenErrno.EINVAL, "gfn is shared"),
    P2mType.MMIO: (XenErrno.EPERM, "gfn is MMIO, not RAM"),
}


class P2m:
    def __init__(self, mfns: array, clock, page_in_delay: float):
        self.mfns = mfns                       # gfn -> mfn for every gfn below nr_pages
        self._types: dict[int, P2mType] = {}   # gfn -> type, only where not RAM
        self._keys: list[int] = []             # sorted gfns of _types
        self._page_in_done: dict[int, float] = {}
        self._clock = clock
        self._delay = page_in_delay
        self.on_became_ram = None              # callback(gfn) -> bool: the default context maps it again

    @property
    def nr_pages(self) -> int:
        return len(self.mfns)

    def type_of(self, gfn: int) -> P2mType:
        if not 0 <= gfn < self.nr_pages:
            return P2mType.INVALID
        self._settle(gfn)
        return self._types.get(gfn, P2mType.RAM)

    def set_type(self, gfn: int, t: P2mType) -> None:
        if not 0 <= gfn < self.nr_pages:
            raise ValueError(f"gfn {gfn:#x} is beyond the domain's memory")
        if t is P2mType.RAM:
            if self._types.pop(gfn, None) is not None:
                self._keys.remove(gfn)
                self._page_in_done.pop(gfn, None)
            return
        if gfn not in self._types:
            bisect.insort(self._keys, gfn)
        self._types[gfn] = t

    def special(self) -> dict[int, P2mType]:
        for gfn in list(self._page_in_done):
            self._settle(gfn)
        return dict(self._types)

    def state(self) -> tuple[dict[int, P2mType], dict[int, float]]:
        """The gfns that are not RAM, and the page-ins under way (gfn -> the
        time it completes), as they stand. Unlike special(), nothing is
        settled: a page-in completes when the machine next looks at it, and
        looking here must not move that moment (a device's DMA meanwhile
        still faults on it)."""
        return dict(self._types), dict(self._page_in_done)

    def resume_page_in(self, gfn: int, due: float) -> None:
        """A restored page-in: gfn, already paging in, becomes RAM at `due`."""
        if self._types.get(gfn) is not P2mType.PAGING_IN:
            raise ValueError(f"gfn {gfn:#x} is not paging in")
        self._page_in_done[gfn] = due

    def first_non_ram(self, gfn: int, n: int) -> tuple[int, XenErrno | None, str]:
        """How many pages from gfn are RAM, and the error for the first that is not.

        Returns (k, errno, why); errno is None when all n are RAM. A paged-out
        gfn met here starts its page-in, as p2m_mem_paging_populate does.
        """
        limit = max(0, min(n, self.nr_pages - gfn)) if gfn < self.nr_pages else 0
        i = bisect.bisect_left(self._keys, gfn)
        while i < len(self._keys) and self._keys[i] < gfn + limit:
            g = self._keys[i]
            if self._settle(g):
                continue          # became RAM: the key is gone, look at the next one
            t = self._types[g]
            if t is P2mType.PAGED_OUT:
                self._start_page_in(g)
            err, why = TYPE_ERROR[t]
            return g - gfn, err, f"{why} (gfn {g:#x})"
        if limit < n:
            err, why = TYPE_ERROR[P2mType.INVALID]
            return limit, err, f"{why} (gfn {gfn + limit:#x})"
        return n, None, ""

    def _start_page_in(self, gfn: int) -> None:
        self._types[gfn] = P2mType.PAGING_IN
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
        """(first gfn, count) for each run of RAM gfns, in order."""
        start = 0
        for g in sorted(self.special()):
            if g > start:
                yield start, g - start
            start = g + 1
        if start < self.nr_pages:
            yield start, self.nr_pages - start
