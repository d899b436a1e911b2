"""A daemon-wide budget of bytes for large frames.

A connection holds at most one read of small frames and their replies on its
own; a large frame (up to 1 MiB, and its reply as large) is held only with
bytes taken from this budget. A connection whose frame does not fit waits,
without reading, until others give bytes back: backpressure, never an error.
So the daemon's memory is bounded by the budget whatever the connection count.
Waiters are served first come, first served, so a big frame is not starved by
a stream of smaller ones.
"""

from __future__ import annotations

from collections import deque

import trio


class ByteBudget:
    def __init__(self, total: int):
        self.total = total
        self.free = total
        self._waiters: deque[list] = deque()     # [bytes, trio.Event], in arrival order

    async def acquire(self, n: int) -> None:
        """Take n bytes (n at most the total), waiting for them if need be."""
        if not self._waiters and n <= self.free:
            self.free -= n
            return
        entry = [n, trio.Event()]
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():       # granted just as it was cancelled: give it back
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._grant()           # the one behind may fit now
            raise

    def release(self, n: int) -> None:
        self.free += n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, event = self._waiters.popleft()
            self.free -= n
            event.set()
