"""Trace replay: the large corpus trace replayed in process (xenemu replay's
core, no socket) against the daemon serving the same recorded request frames
over its socket, pipelined on one connection, in the same run.

Both sides check every reply against the recording, so both rates are of
hypercalls answered correctly.
"""
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xenemu.trace.reader import TraceReader
from xenemu.trace.records import HypercallRecord, RoundRecord
from xenemu.trace.replay import replay_file
from xenemu.wire import HDR_SIZE

ROOT = Path(__file__).resolve().parents[1]
LARGE = ROOT / "tests" / "traces" / "map-unmap-110k.xt.xz"
SMALL = ROOT / "tests" / "traces" / "continued-free.xt"
WINDOW = 128


def calls_of(path: Path) -> list[tuple[int, bytes, bytes]]:
    """(domid, request, final reply) of every hypercall, in the order they began."""
    calls, pending = [], {}
    with TraceReader(path) as reader:
        for _, rec in reader:
            if isinstance(rec, HypercallRecord):
                calls.append([rec.d, rec.req, rec.rep])
                if rec.rep is None:
                    pending[rec.c] = calls[-1]
            elif isinstance(rec, RoundRecord) and rec.rep is not None:
                pending.pop(rec.c)[2] = rec.rep
            elif not isinstance(rec, RoundRecord):
                raise ValueError(f"{path}: only hypercall traces can be served over one socket")
    return [tuple(c) for c in calls]


def _read_frame(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= HDR_SIZE:
            length = int.from_bytes(buf[8:12], "little")
            if len(buf) >= length:
                frame = bytes(buf[:length])
                del buf[:length]
                return frame
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("daemon closed the connection")
        buf += data


def serve_over_socket(path: Path, calls) -> tuple[int, float, int]:
    """Start `xenemu serve` on the trace's machine, send every request pipelined
    (WINDOW in flight) and compare each reply. Returns (calls, seconds, mismatches)."""
    with tempfile.TemporaryDirectory() as tmp:
        sock_dir = Path(tmp) / "s"
        proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "--log-level", "warning",
                                 "serve", "--machine-of", str(path), "--socket-dir", str(sock_dir)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            for line in proc.stdout:
                if line.startswith("xenemu: ready"):
                    break
            sockets = {}
            for domid in {d for d, _, _ in calls}:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(sock_dir / f"dom{domid}.sock"))
                sockets[domid] = s
            if len(sockets) != 1:
                raise ValueError("one domain only: replies of several would need ordering")
            (s,) = sockets.values()
            buf = bytearray()
            bad = sent = got = 0
            t0 = time.perf_counter()
            while got < len(calls):
                while sent < len(calls) and sent - got < WINDOW:
                    s.sendall(calls[sent][1])
                    sent += 1
                bad += _read_frame(s, buf) != calls[got][2]
                got += 1
            seconds = time.perf_counter() - t0
            s.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return len(calls), seconds, bad


def run(smoke: bool) -> list[dict]:
    path = SMALL if smoke else LARGE
    r = replay_file(path)
    assert r.ok, f"{path} does not replay"
    in_process = r.hypercalls / r.seconds
    n, seconds, bad = serve_over_socket(path, calls_of(path))
    assert bad == 0, f"the daemon answered {bad} of {n} recorded calls differently"
    over_socket = n / seconds
    return [
        {"name": f"trace replay in process ({path.name})", "value": in_process,
         "unit": "hypercalls/s", "ref": over_socket, "ratio": in_process / over_socket},
        {"name": "same trace, daemon over its socket (pipelined)", "value": over_socket,
         "unit": "hypercalls/s", "ref": None, "ratio": None},
    ]


if __name__ == "__main__":
    for row in run("--smoke" in sys.argv):
        print(row)
