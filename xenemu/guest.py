"""Guest memory as a hypercall frame carries it.

A frame holds the regions of guest memory its handle arguments point to.
copy_from_guest/copy_to_guest succeed only inside one region, as Xen's do
only on mapped guest memory; anything else is the caller's -EFAULT.
"""

from __future__ import annotations

from .wire import Region


class GuestMemory:
    def __init__(self, regions: tuple[Region, ...] = ()):
        self._regions = [(r.gaddr, bytearray(r.data)) for r in regions]

    def _find(self, gaddr: int, size: int) -> tuple[bytearray, int] | None:
        for base, buf in self._regions:
            if base <= gaddr and gaddr + size <= base + len(buf):
                return buf, gaddr - base
        return None

    def copy_from_guest(self, gaddr: int, size: int) -> bytes | None:
        """`size` bytes at `gaddr`, or None when they are not all in one region."""
        found = self._find(gaddr, size)
        if found is None:
            return None
        buf, offset = found
        return bytes(buf[offset:offset + size])

    def copy_to_guest(self, gaddr: int, data: bytes) -> bool:
        found = self._find(gaddr, len(data))
        if found is None:
            return False
        buf, offset = found
        buf[offset:offset + len(data)] = data
        return True

    def regions(self) -> tuple[Region, ...]:
        """Every region as it is now: what the reply carries back."""
        return tuple(Region(base, bytes(buf)) for base, buf in self._regions)
