"""What the socket benchmarks talk to, and the C load generator they use.

The daemon runs as `xenemu serve` does for a user (no debug log, no IOTLB
check); the echo servers (bench/c/echo.c, bench/trio_echo.py) answer the
same frames with no work at all. build/bench_load (bench/c/load.c) drives
them all with the same code.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


@contextmanager
def _process(cmd: list, ready: str):
    """Run cmd until it prints a line starting with `ready`; yields the
    process and the lines printed up to it, and stops it afterwards."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(ready):
                break
        else:
            raise RuntimeError(f"{cmd[0]} did not start:\n{''.join(lines)}")
        yield proc, lines
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()


class Daemon:
    """A running `xenemu serve`: its pid, domain sockets and control socket."""

    def __init__(self, pid: int, lines: list[str]):
        self.pid = pid
        self.sockets = {}
        for line in lines:
            if "XENEMU_SOCKET=" in line:
                self.sockets[int(line.split()[1].lstrip("d"))] = line.split("XENEMU_SOCKET=")[1].strip()
            if "XENEMU_CONTROL=" in line:
                self.control = line.split("XENEMU_CONTROL=")[1].strip()

    def ctl(self, op: str, **args) -> dict:
        from xenemu.ctl import ControlClient
        with ControlClient(self.control) as c:
            return c.call(op, **args)

    def rss(self, field: str = "VmRSS") -> int:
        """Resident bytes of the daemon process (VmRSS), or its peak (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field}")


@contextmanager
def daemon(*extra_args):
    """`xenemu serve` with `extra_args` after the command's own."""
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-") as d:
        cmd = [sys.executable, "-m", "xenemu.cli", "--log-level", "warning", "serve",
               "--socket-dir", Path(d) / "sockets", *extra_args]
        with _process(cmd, "xenemu: ready") as (proc, lines):
            yield Daemon(proc.pid, lines)


class Echo:
    """A running echo server: its pid and socket path."""

    def __init__(self, pid: int, path: str):
        self.pid = pid
        self.path = path


@contextmanager
def echo(kind: str):
    """An echo server: "c", "trio" (trio's stream layer) or "trio-sockio"
    (the daemon's I/O, xenemu.sockio); yields an Echo."""
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-") as d:
        path = Path(d) / "echo.sock"
        cmd = {"c": [BUILD / "bench_echo", path],
               "trio": [sys.executable, "-m", "bench.trio_echo", path],
               "trio-sockio": [sys.executable, "-m", "bench.trio_echo", "--sockio", path]}[kind]
        with _process(cmd, "ready") as (proc, _):
            yield Echo(proc.pid, str(path))


# -- where the processes run ------------------------------------------------------------
# These VMs have 2 vCPUs, and waking a halted one costs 20-40 us: with the
# client and the server free to run anywhere, a round trip mostly measures
# where the scheduler put them. Pinned, both on one CPU, it measures their
# CPU cost; unpinned, what a user sees. The sections measure both.

ALL_CPUS = frozenset(os.sched_getaffinity(0))
# The CPU pinned runs use: the last one this process may use (the first
# takes more of the machine's interrupts).
PIN_CPU = max(ALL_CPUS)


def place(pid: int, pinned: bool) -> None:
    """Let every thread of process pid run on PIN_CPU only, or anywhere."""
    cpus = {PIN_CPU} if pinned else ALL_CPUS
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass            # a thread that ended meanwhile


def placement(pinned: bool) -> str:
    """How a row's processes ran, for its name."""
    return f"pinned to CPU {PIN_CPU}" if pinned else "unpinned"


def load(*args, pinned: bool = False) -> dict:
    """Run build/bench_load (on PIN_CPU alone if pinned); its last line's
    "key value" pairs, as numbers, with the lines before it under "lines"."""
    cpus = {PIN_CPU} if pinned else ALL_CPUS
    out = subprocess.run([str(BUILD / "bench_load"), *map(str, args)], capture_output=True,
                         text=True, check=True, timeout=600,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus)).stdout.splitlines()
    words = out[-1].split()
    result = {k: float(v) for k, v in zip(words[::2], words[1::2])}
    result["lines"] = out[:-1]
    return result
