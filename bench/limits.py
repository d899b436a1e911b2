"""The bounds of issue 12 (README, "Limits and robustness"), measured as a
user meets them, each in a daemon or command of its own:

- the daemon's peak memory (VmHWM) with 511 connections on one domain, each
  writing CALL frames and never reading its replies (1 MiB frames, small
  ones, half each); then a fresh connection must still be answered;
- `xenemu serve --restore` of a ~1 MB hostile snapshot (tests/hostile.py):
  time to "ready" (or to the refusal) and peak RSS;
- peak RSS of `xenemu trace stats` and `xenemu replay` on decompression
  bombs, a gzip and an xz holding a 1.75 GiB record;
- the C client from 4 threads (tests/c/threads.c): each on its own
  connection, and all on one shared connection.
"""
from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import msgpack

from bench.serve import BUILD, ROOT, daemon
from bench.util import medians, row

sys.path.insert(0, str(ROOT / "tests"))
from hostile import (BOMB_BYTES, P2M_RUNS, PEAK_RSS_BOUND, RUNS, TABLE_PAGES,  # noqa: E402
                     bomb, hostile_snapshot, load, pack, peak_rss_mib, restore_peak)
from support import compile_c, raw_conn  # noqa: E402

MIB = 1 << 20


def _size(n: int) -> str:
    """Bytes as a person says them: 8.4 KB, 1.0 MB, 4 MiB, 1.75 GiB."""
    if n % MIB == 0:
        return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n // MIB} MiB"
    return f"{n / 1e6:.2g} MB" if n >= 1e6 else f"{n / 1e3:.3g} KB"


# -- daemon memory under the connection limits -------------------------------------------

def _call(req_id: int, pad: int = 0) -> bytes:
    """A query_capabilities CALL frame, its region padded by `pad` bytes."""
    from xenemu import abi
    from xenemu.client import OP_GADDR
    from xenemu.wire import Region, encode_call
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                       (Region(OP_GADDR, abi.encode_op(1) + bytes(pad)),))


def _push(conns: list, frames: list[bytes], cap: int, quiet: float, limit: float = 120) -> None:
    """Write each connection's frames over and over (never reading) until
    it has written `cap` bytes or the daemon stops taking them: no
    connection took a byte for `quiet` seconds."""
    sent = [0] * len(conns)
    start = last = time.monotonic()
    while time.monotonic() - last < quiet and time.monotonic() - start < limit:
        progress = False
        for i, (s, data) in enumerate(zip(conns, frames)):
            if s is None or sent[i] >= cap:
                continue
            try:
                k = s.send(memoryview(data)[sent[i] % len(data):])
            except BlockingIOError:
                continue
            except OSError:             # closed by the daemon (its frame timeout)
                conns[i] = None
                continue
            sent[i] += k
            progress = True
        if progress:
            last = time.monotonic()
        else:
            time.sleep(quiet / 60)


def flood_peak(n: int, kind: str, cap: int, quiet: float) -> float:
    """The daemon's VmHWM (MiB) after `n` connections wrote frames of `kind`
    ("large": 1 MiB, "small": 4096 small frames back to back, "mixed": half
    each) without reading."""
    from xenemu.client import XenemuClient
    from xenemu.wire import MAX_FRAME
    big = _call(1, MAX_FRAME - len(_call(1)))
    small = _call(2) * 4096
    with daemon("--max-connections-per-domain", "512") as d:
        path = d.sockets[0]
        with XenemuClient(path) as x:
            for _ in range(20):
                x.query_capabilities()
        conns = []
        while len(conns) < n:
            try:
                conns.append(raw_conn(path))
            except BlockingIOError:     # the listening backlog is full: the daemon catches up
                time.sleep(0.01)
        for s in conns:
            s.setblocking(False)
        frames = [big if kind == "large" or (kind == "mixed" and i % 2) else small
                  for i in range(n)]
        _push(conns, frames, cap, quiet)
        with XenemuClient(path) as x:
            if x.query_capabilities().ret != 0:
                raise RuntimeError(f"{kind} flood: a fresh connection is not answered")
        peak = d.rss("VmHWM") / MIB
        for s in conns:
            if s is not None:
                s.close()
    return peak


def memory_rows(smoke: bool) -> list[dict]:
    n = 4 if smoke else 511
    # The README's worst case: 45 MiB + the frame memory + 128 KiB a connection.
    ref = 45 + 64 + n * 128 / 1024
    rows = []
    for kind, what in (("large", "1 MiB frames"), ("small", "small frames"),
                       ("mixed", "half each")):
        peak = flood_peak(n, kind, cap=(2 if smoke else 40) * MIB, quiet=0.2 if smoke else 3)
        rows.append(row(f"daemon VmHWM, {n} connections writing {what}, not reading "
                        f"(ref: README bound)", peak, "MiB", ref))
    return rows


# -- restoring a hostile snapshot ------------------------------------------------------------

def restore_rows(smoke: bool, tmp: Path) -> list[dict]:
    sizes = {"p2m": dict(p2m_runs=800, mib=64) if smoke else dict(p2m_runs=P2M_RUNS, mib=8192),
             "mappings": dict(runs=300, table_pages=16, mib=64) if smoke else
             dict(runs=RUNS, table_pages=TABLE_PAGES, mib=1024)}
    p2m, maps = sizes["p2m"], sizes["mappings"]
    what = {"p2m": f"{p2m['p2m_runs']:,} p2m runs over {_size(p2m['mib'] * MIB)}",
            "mappings": f"{maps['runs']:,} mappings in contexts 0 and 1 "
                        f"({maps['table_pages']}-page budget)"}
    rows = []
    for kind in ("p2m", "mappings"):
        path = tmp / f"{kind}.xs"
        path.write_bytes(msgpack.packb(hostile_snapshot(kind, **sizes[kind]), use_bin_type=True))
        rc, peak, last, took = restore_peak(path, tmp / f"s-{kind}")
        # The p2m runs restore; the mappings are refused (more tables than the budget).
        if rc != (0 if kind == "p2m" else 2):
            raise RuntimeError(f"serve --restore {kind}: exit {rc}: {last}")
        size = _size(path.stat().st_size)
        until = "ready" if kind == "p2m" else "its refusal"
        rows += [row(f"serve --restore {size}: {what[kind]}, time to {until}", took, "s"),
                 row(f"serve --restore {size}: {what[kind]}, peak RSS (ref: test bound)",
                     peak, "MiB", PEAK_RSS_BOUND)]
    return rows


# -- decompression bombs ----------------------------------------------------------------------

README_BOMB_PEAK = 47       # MiB: the README's "peak RSS 35-47 MiB" for a reader on a record bomb


def bomb_rows(smoke: bool, tmp: Path) -> list[dict]:
    header, records = load(ROOT / "tests" / "traces" / "linux-driver.xt")
    prefix = pack(header, *records[:2])
    size = 4 * MIB if smoke else BOMB_BYTES
    rows = []
    for compressor, suffix in (("gzip", "gz"), ("xz", "xz")):
        path = bomb(tmp / f"bomb.xt.{suffix}", compressor, prefix, size)
        for args in (["trace", "stats"], ["replay"]):
            status, peak, out = peak_rss_mib([*args, path.name], tmp)
            if status != 2 or "record 3 is larger than" not in out:
                raise RuntimeError(f"xenemu {' '.join(args)} {path.name}: exit {status}: {out}")
            rows.append(row(f"xenemu {' '.join(args)}, {_size(path.stat().st_size)} {compressor} "
                            f"of a {_size(size)} record: peak RSS (ref: README)",
                            peak, "MiB", README_BOMB_PEAK))
    return rows


# -- the threaded C client --------------------------------------------------------------------

def _rates(program: Path, socket: str, threads: int, calls: int) -> tuple[float, float]:
    """calls/s of `threads ops`: each thread on its own connection, then all
    on one shared connection."""
    import subprocess
    out = subprocess.run([str(program), "ops", str(threads), str(calls)],
                         env={"XENEMU_SOCKET": socket}, capture_output=True, text=True,
                         check=True, timeout=600).stdout
    own, shared = (float(re.search(rf"^{what}: .* ([0-9.]+) calls/s$", out, re.M).group(1))
                   for what in ("own context, own implicit connection",
                                "own dfn range, one shared connection"))
    return own, shared


def threads_rows(smoke: bool, tmp: Path) -> list[dict]:
    program = compile_c(ROOT / "tests" / "c" / "threads.c", tmp / "threads",
                        str(BUILD / "libxenemu.a"))
    calls = 200 if smoke else 4000        # per thread; ops makes them in rounds of 4
    with daemon() as d:
        socket = d.sockets[0]
        got = medians(1 if smoke else 3, {
            1: lambda: _rates(program, socket, 1, 4 * calls),
            4: lambda: _rates(program, socket, 4, calls)})
    one = got[1][0]
    return [row("C client ops, 1 thread, its own connection", one, "calls/s"),
            row("C client ops, 4 threads, a connection each (ref: 1 thread)", got[4][0],
                "calls/s", one),
            row("C client ops, 4 threads sharing one connection (ref: 1 thread)", got[4][1],
                "calls/s", one)]


def run(smoke: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-") as d:
        tmp = Path(d)
        return (memory_rows(smoke) + restore_rows(smoke, tmp) + bomb_rows(smoke, tmp)
                + threads_rows(smoke, tmp))
