"""A domain connection's reads and writes, with trio's low-level I/O.

trio's SocketStream wraps every recv and send in a cancellation check and a
trip through the scheduler (trio._socket._try_sync), and a recv that finds
nothing waiting pays a failed system call, a wait and a second trip: three
trips a round trip, each costing microseconds, as much as a hypercall.
Here a read that finds bytes waiting takes them and yields once (the turn
every other connection is owed, without a cancellation check: bytes read are
never dropped); a read that finds none waits for the socket to become
readable (a cancellation point, as the stream's is: what stop(), a domain's
destruction and the frame deadline cancel), and a write the socket takes
whole returns at once, without a trip.

The SocketStream stays the socket's owner: only it closes the socket (and
tells trio, which wakes a waiter), so these calls are made while it is open.
OS errors other than "would block" become trio.BrokenResourceError, as the
stream's are.
"""

from __future__ import annotations

import os

import trio
from trio.lowlevel import cancel_shielded_checkpoint, wait_readable, wait_writable


class SocketIO:
    """Reads and writes on an open SocketStream's socket."""

    __slots__ = ("_fd",)

    def __init__(self, stream: trio.SocketStream):
        self._fd = stream.socket.fileno()

    async def receive_some(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end of the stream."""
        fd = self._fd
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            while True:
                await wait_readable(fd)
                try:
                    return os.read(fd, size)
                except BlockingIOError:     # woken, but another reader was first
                    continue
                except OSError as e:
                    raise trio.BrokenResourceError(str(e)) from e
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        await cancel_shielded_checkpoint()
        return data

    async def send_all(self, data: bytes) -> None:
        """All of data, waiting for room in the socket when it has none."""
        fd, rest = self._fd, data
        while True:
            try:
                sent = os.write(fd, rest)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            if sent == len(rest):
                return
            rest = memoryview(rest)[sent:]      # no copy of what is left
            await wait_writable(fd)
