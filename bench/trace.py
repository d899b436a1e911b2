"""Traces: the large corpus trace replayed in process (xenemu replay's core,
no socket), with the C fast path and without it, against the daemon serving the same recorded request frames over
its socket, pipelined on one connection, in the same run; the daemon
serving them again while recording a trace, whose extra time per call is
what recording costs; and the trace writer alone on the trace's records, in
batches of what one receive buffer holds, against msgpack with one write
per record (how the writer worked before it packed in C).

Every side checks every reply against the recording, so every rate is of
hypercalls answered correctly.
"""
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

from xenemu.trace.pack import as_map
from xenemu.trace.reader import TraceReader
from xenemu.trace.records import HypercallRecord, RoundRecord
from xenemu.trace.replay import replay_file
from xenemu.trace.writer import TraceWriter
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


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid`'s threads have run, to the nanosecond
    (Linux's schedstat; the ticks of /proc/PID/stat are 10 ms)."""
    return sum(int(p.read_text().split()[0]) for p in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9


def serve_over_socket(path: Path, calls, record: bool = False) -> tuple[int, float, int, float]:
    """Start `xenemu serve` on the trace's machine (recording a trace if
    `record`), send every request pipelined (WINDOW in flight) and compare
    each reply. Returns (calls, seconds, mismatches, the daemon's CPU
    seconds meanwhile): on a loaded machine the CPU time varies less than
    the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        sock_dir = Path(tmp) / "s"
        recording = ["--record", str(Path(tmp) / "rec.xt")] if record else []
        proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "--log-level", "warning",
                                 "serve", "--machine-of", str(path), "--socket-dir", str(sock_dir),
                                 *recording],
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
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            while got < len(calls):
                while sent < len(calls) and sent - got < WINDOW:
                    s.sendall(calls[sent][1])
                    sent += 1
                bad += _read_frame(s, buf) != calls[got][2]
                got += 1
            seconds, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
            s.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return len(calls), seconds, bad, cpu


def writer_cost(path: Path, batch: int = WINDOW) -> tuple[float, float]:
    """Seconds per record to write the trace's records to a file: the
    TraceWriter in batches of `batch`, and msgpack with one write per record."""
    with TraceReader(path) as reader:
        records = [rec for _, rec in reader]
    with tempfile.TemporaryDirectory() as tmp:
        writer = TraceWriter(open(Path(tmp) / "batched.xt", "wb", buffering=0), {})
        t0 = time.perf_counter()
        for i in range(0, len(records), batch):
            writer.write_batch(records[i:i + batch])
        batched = time.perf_counter() - t0
        writer.close()
        pack = msgpack.Packer(use_bin_type=True).pack
        with open(Path(tmp) / "each.xt", "wb", buffering=0) as f:
            t0 = time.perf_counter()
            for rec in records:
                f.write(pack(as_map(rec)))
            each = time.perf_counter() - t0
    return batched / len(records), each / len(records)


def run(smoke: bool) -> list[dict]:
    path = SMALL if smoke else LARGE
    r = replay_file(path)
    assert r.ok, f"{path} does not replay"
    in_process = r.hypercalls / r.seconds
    r = replay_file(path, fast_path=False)
    assert r.ok, f"{path} does not replay through the handlers alone"
    handlers_alone = r.hypercalls / r.seconds
    calls = calls_of(path)
    n, seconds, bad, cpu = serve_over_socket(path, calls)
    assert bad == 0, f"the daemon answered {bad} of {n} recorded calls differently"
    over_socket = n / seconds
    n, seconds, bad, cpu_recording = serve_over_socket(path, calls, record=True)
    assert bad == 0, f"the daemon recording answered {bad} of {n} recorded calls differently"
    recording = n / seconds
    batched, each = writer_cost(path)
    return [
        {"name": f"trace replay in process ({path.name})", "value": in_process,
         "unit": "hypercalls/s", "ref": over_socket, "ratio": in_process / over_socket},
        {"name": "same, the fast path off (the handlers alone)", "value": handlers_alone,
         "unit": "hypercalls/s", "ref": in_process, "ratio": handlers_alone / in_process},
        {"name": "same trace, daemon over its socket (pipelined)", "value": over_socket,
         "unit": "hypercalls/s", "ref": None, "ratio": None},
        {"name": "same, the daemon recording a trace", "value": recording,
         "unit": "hypercalls/s", "ref": over_socket, "ratio": recording / over_socket},
        {"name": "recording's cost per call (the two above)",
         "value": 1e6 * (1 / recording - 1 / over_socket), "unit": "us", "ref": None,
         "ratio": None},
        {"name": "the same in the daemon's CPU time", "value": 1e6 * (cpu_recording - cpu) / n,
         "unit": "us", "ref": None, "ratio": None},
        {"name": f"trace writer, batches of {WINDOW} records (per record)", "value": 1e6 * batched,
         "unit": "us", "ref": 1e6 * each, "ratio": batched / each},
        {"name": "msgpack and one write per record (the writer before)", "value": 1e6 * each,
         "unit": "us", "ref": None, "ratio": None},
    ]


if __name__ == "__main__":
    for row in run("--smoke" in sys.argv):
        print(row)
