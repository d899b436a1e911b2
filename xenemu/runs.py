"""Runs in page-number arrays: the compact form dumps and snapshots use.

A context's entries read as two arrays (gfns and permissions, perm 0 where
nothing is mapped) become (offset, gfn, count, perm) runs; frame lists
become stretches of consecutive numbers. Both look at whole arrays first,
so the common case (a run mapped or allocated in one go) costs a compare in
C, not a Python step per page.
"""

from __future__ import annotations

import re
from array import array

_PERM_RUNS = re.compile(rb"\x01+|\x02+|\x03+")   # runs of one permission, in a perms array


def progressions(values: array):
    """(offset, count) of each maximal stretch v, v+1, v+2... of values.

    One comparison in C when the whole array is one stretch; element by
    element otherwise."""
    n = len(values)
    if not n:
        return
    first = values[0]
    if values[-1] - first == n - 1 and values == array("Q", range(first, first + n)):
        yield 0, n
        return
    start = 0
    for i in range(1, n + 1):
        if i == n or values[i] != values[i - 1] + 1:
            yield start, i - start
            start = i


def mapping_runs(gfns: array, perms: bytes):
    """(offset, gfn, count, perm) of each run of mapped entries: consecutive
    gfns with one permission (gfns where perm is 0 are not looked at)."""
    for m in _PERM_RUNS.finditer(perms):
        start, end = m.span()
        for off, count in progressions(gfns[start:end]):
            yield start + off, gfns[start + off], count, perms[start]
