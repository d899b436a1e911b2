"""Helpers shared by the tests: the daemon as a user starts it, and C compilation."""

from __future__ import annotations

import resource
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


class DaemonProcess:
    """`xenemu serve` in a subprocess, with its sockets in a private directory."""

    def __init__(self, tmp_path: Path, *extra_args: str, record: bool = True,
                 log_level: str = "debug", max_file_size: int | None = None,
                 max_open_files: int | None = None):
        """max_file_size: the daemon's RLIMIT_FSIZE, so that its writes to any
        file fail past that size as on a full disk (EFBIG; Python ignores
        SIGXFSZ), its log included: give it a log_level that keeps the log
        small. max_open_files: its RLIMIT_NOFILE, soft and hard (`ulimit -n`)."""
        self.socket_dir = tmp_path / "sockets"
        tmp_path.mkdir(parents=True, exist_ok=True)
        n = 1 + sum(1 for _ in tmp_path.glob("daemon*.log"))
        self.log_path = tmp_path / f"daemon{n}.log"
        # Every daemon a test starts records what it serves, so a test can replay it.
        self.trace = tmp_path / f"trace{n}.xt" if record else None
        self._log = open(self.log_path, "wb")
        record_args = ["--record", str(self.trace)] if record else []
        rlimits = [(resource.RLIMIT_FSIZE, max_file_size), (resource.RLIMIT_NOFILE, max_open_files)]
        rlimits = [(which, n) for which, n in rlimits if n is not None]

        def limit():
            for which, n in rlimits:
                resource.setrlimit(which, (n, n))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenemu.cli", "--log-level", log_level, "serve",
             "--socket-dir", str(self.socket_dir), "--check-iotlb", *record_args, *extra_args],
            stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, bufsize=0,  # unbuffered: select() sees every line
            preexec_fn=limit if rlimits else None)
        self.sockets: dict[int, Path] = {}
        self.control = ""
        self.banner = self._read_banner()

    def _read_banner(self, timeout: float = 30.0) -> str:
        """Read stdout up to the daemon's "ready" line, noting each domain's socket."""
        lines = []
        deadline = time.monotonic() + timeout
        out = self.proc.stdout
        while time.monotonic() < deadline:
            if not select.select([out], [], [], 0.2)[0]:
                if self.proc.poll() is not None:
                    break
                continue
            line = out.readline().decode()
            if not line:
                break
            lines.append(line)
            if "XENEMU_CONTROL=" in line:
                self.control = line.strip().split("XENEMU_CONTROL=")[1]
            if "XENEMU_SOCKET=" in line:
                domid = int(line.split()[1].lstrip("d"))
                self.sockets[domid] = Path(line.strip().split("XENEMU_SOCKET=")[1])
            if line.startswith("xenemu: ready"):
                return "".join(lines)
        raise RuntimeError(f"daemon did not start:\n{''.join(lines)}\n{self.log()}")

    def socket(self, domid: int) -> str:
        return str(self.sockets[domid])

    def ctl(self, op: str, **args) -> dict:
        """One control request; raises ControlError when refused."""
        from xenemu.ctl import ControlClient
        with ControlClient(self.control) as c:
            return c.call(op, **args)

    def log(self) -> str:
        if not self._log.closed:    # stop() closes it; the file is still there to read
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()
            self.proc.stdout.close()


def raw_conn(path: str, timeout: float = 30) -> socket.socket:
    """A bare connection to a daemon socket, for tests that send their own bytes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_until_closed(s) -> list:
    """Every frame the daemon sends until it closes the connection."""
    from xenemu.wire import FrameDecoder
    decoder = FrameDecoder.for_client()
    while data := s.recv(65536):
        decoder.feed(data)
    return list(decoder)


def assert_replays(trace: Path, *, truncated_ok: bool = False):
    """Replay a trace in process: every record must match the recording."""
    from xenemu.trace.replay import replay_file
    r = replay_file(trace)
    details = "\n\n".join([d.report for d in r.divergences] + r.problems + [r.error or ""])
    assert r.ok, f"{trace}: replay failed:\n{details}"
    if not truncated_ok:
        assert not r.notes, r.notes
    return r


def abi_includes(revision: int = 1) -> list[str]:
    """The include path of a program built against an ABI revision's headers."""
    rev2 = [f"-I{ROOT / 'abi' / 'rev2'}"] if revision == 2 else []
    return [*rev2, f"-I{ROOT / 'abi'}", f"-I{ROOT / 'clients' / 'c'}"]


def compile_c(src: Path, out: Path, *extra: str, std: str = "-std=c99",
              abi_revision: int = 1) -> Path:
    """Compile (and link with -pthread, as libxenemu.a needs) one C program."""
    cmd = ["gcc", std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-D_POSIX_C_SOURCE=200809L",
           "-pthread", *abi_includes(abi_revision), str(src), *extra, "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def disjoint_regions(max_size: int, max_len: int):
    """A hypothesis strategy: lists of wire regions anywhere below 2^63, in any
    order, no two sharing a byte (the protocol refuses overlapping ones)."""
    from hypothesis import strategies as st
    from xenemu.wire import Region
    slot = 1 << 58                  # each region in its own slot: at most 32 below 2^63
    assert max_size <= 32 and max_len <= slot // 2
    spans = st.lists(st.tuples(st.integers(0, slot // 2), st.binary(max_size=max_len)),
                     max_size=max_size)
    return spans.map(lambda rs: [Region(i * slot + off, data) for i, (off, data) in enumerate(rs)]
                     ).flatmap(st.permutations)


@contextmanager
def checked_local(config, trace: Path):
    """`config` driven in process (xenemu.inprocess.Local), recorded to
    `trace`; afterwards its invariants hold and the trace replays."""
    import dataclasses
    from xenemu.inprocess import Local
    with Local(dataclasses.replace(config, check_iotlb=True), record=trace) as m:
        yield m
        problems = m.hv.check_invariants()
    assert not problems, problems
    assert_replays(trace)
