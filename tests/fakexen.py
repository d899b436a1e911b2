"""A stand-in daemon for client tests: records every call, answers as told.

It checks what a client puts on the wire independently of the hypervisor:
`answer(call)` returns (ret, regions) for the reply. Each connection is served
on its own thread (as the daemon serves them side by side); `conns[i]` numbers
the connection `calls[i]` came on, in the order they were accepted.
"""

from __future__ import annotations

import itertools
import socket
import threading
from pathlib import Path

from xenemu.wire import Call, FrameDecoder, encode_reply


class FakeXen:
    def __init__(self, path: Path, answer):
        self.path = str(path)
        self.answer = answer
        self.calls: list[Call] = []
        self.conns: list[int] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for number in itertools.count():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_conn, args=(conn, number), daemon=True).start()

    def _serve_conn(self, conn: socket.socket, number: int) -> None:
        with conn:
            decoder = FrameDecoder.for_server()
            while data := conn.recv(65536):
                decoder.feed(data)
                for call in decoder:
                    with self._lock:        # calls and conns stay in step
                        self.calls.append(call)
                        self.conns.append(number)
                    ret, regions = self.answer(call)
                    conn.sendall(encode_reply(call.req_id, ret, regions))

    def close(self) -> None:
        self._server.close()
