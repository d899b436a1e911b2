"""The trio floor of a round trip: a bare server speaking the daemon's
framing that writes every frame back unchanged.

    python -m bench.trio_echo [--sockio] SOCKET_PATH   prints "ready", serves until killed

One task per connection, receive_some of RECEIVE_SIZE, every whole frame
received answered in one send_all, through trio's stream layer
(SocketStream): the reference issue 17's targets are stated against. With
--sockio it reads and writes as the daemon does, with trio's low-level calls
(xenemu.sockio), which spare two of the stream's three trips through the
scheduler a round trip: daemon / that echo is the daemon's work above its
own I/O. Only the frame's length is read here.
"""
import functools
import socket
import sys

import trio

from xenemu.daemon import RECEIVE_SIZE
from xenemu.sockio import SocketIO
from xenemu.wire import HDR_SIZE, MAX_FRAME


async def echo(stream: trio.SocketStream, sockio: bool) -> None:
    try:
        await _echo(stream, SocketIO(stream) if sockio else stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away, as the load generator does when done


async def _echo(stream: trio.SocketStream, io) -> None:
    buf = bytearray()
    async with stream:
        while data := await io.receive_some(RECEIVE_SIZE):
            buf += data
            end = 0
            while len(buf) - end >= HDR_SIZE:
                length = int.from_bytes(buf[end + 8:end + 12], "little")
                if not HDR_SIZE <= length <= MAX_FRAME:
                    return
                if len(buf) - end < length:
                    break
                end += length
            if end:
                await io.send_all(buf[:end])
                del buf[:end]


async def main(path: str, sockio: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    print("ready", flush=True)
    await trio.serve_listeners(functools.partial(echo, sockio=sockio), [listener])


if __name__ == "__main__":
    trio.run(main, sys.argv[-1], sys.argv[1:-1] == ["--sockio"])
