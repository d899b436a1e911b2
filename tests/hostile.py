"""Hostile inputs of issue 12 and how their cost is measured, shared by the
tests that check the bounds (test_snapshot_bounds.py, test_trace_inputs.py)
and the benchmark section that reports them (bench/limits.py).

The sizes are parameters with the tests' values as defaults, so that
`python -m bench --smoke` can build tiny ones.
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import msgpack

from support import ROOT
from xenemu import abi, snapshot
from xenemu.machine import DomainConfig, MachineConfig, machine_to_dict


def pack(*objs) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


def load(path: Path) -> tuple[dict, list[dict]]:
    header, *records = msgpack.Unpacker(open(path, "rb"), raw=False, strict_map_key=False)
    return header, records


# -- snapshots ------------------------------------------------------------------------

RUNS = 30_000          # mappings in context 0, and again in context 1
P2M_RUNS = 80_000
TABLE_PAGES = 4096     # the domain's page-table budget the file declares (16 MiB)
# What restoring may cost at most: the interpreter and the decoded file
# (~100 MiB), the domain's metadata (~10 KiB per MiB: 80 MiB for 8 GiB),
# and the page tables of the mappings, which stop at the domain's budget
# for its contexts and again for context 0 (unbounded, 2 x 30,000 x 2-3
# table pages: 470-700 MiB). The p2m runs cost a few list slots each
# (they were a dict entry per page: ~250 MiB more for these).
PEAK_RSS_BOUND = 180 + 2 * TABLE_PAGES * 4 // 1024    # MiB


def hostile_snapshot(kind: str, runs: int = RUNS, p2m_runs: int = P2M_RUNS,
                     table_pages: int = TABLE_PAGES, mib: int | None = None) -> dict:
    """About 1 MB (at the default sizes) of p2m runs over all memory of an
    8 GiB domain ("p2m"), or of one-page mappings far apart in contexts 0
    and 1 of a 1 GiB one ("mappings")."""
    mib = mib or (8192 if kind == "p2m" else 1024)
    # Room in the machine for all the tables the mappings could want.
    config = MachineConfig(address_width=48, memory_mib=2 * mib, domains=(
        DomainConfig(domid=0, hardware=True, memory_mib=mib, contexts=1,
                     table_pages=table_pages),))
    pages = mib * 256
    step = pages // runs
    spread = (1 << 36) // runs      # 13 GiB between two of 30,000 mappings: 2-3 tables each
    domain = {"domid": 0, "page_ins": [], "memory": [], "p2m": [],
              "contexts": [{"ctx_no": 0, "dying": False, "devices": [], "mappings": []}]}
    if kind == "p2m":
        # Every stretch of `p2m_step - 1` pages is MMIO, the page between them RAM.
        p2m_step = pages // p2m_runs
        domain["p2m"] = [[i * p2m_step, p2m_step - 1, "mmio"] for i in range(p2m_runs)]
    else:
        domain["contexts"] = [
            {"ctx_no": 0, "dying": False, "devices": [],
             "mappings": [[i * spread, i * step, 1, 3] for i in range(runs)]},
            {"ctx_no": 1, "dying": False, "devices": [],
             "mappings": [[i * spread + 1, i * step, 1, 1] for i in range(runs)]}]
    return {
        snapshot.HEADER_KEY: snapshot.FORMAT,
        "abi": {"pv_iommu_revision": abi.PV_IOMMU_REVISION},
        "machine": machine_to_dict(config), "time": 0.0, "domains": [domain],
        "quarantined": [], "faults": {"records": [], "overflow": False}, "meta": {},
    }


def restore_peak(path: Path, socket_dir: Path) -> tuple[int, int, str, float]:
    """(exit status, peak RSS in MiB, last line of stderr, seconds from its
    start to "ready", or to its exit when it does not serve) of `xenemu serve
    --restore path`, stopped by SIGTERM once it serves. A child process runs
    it, so that RUSAGE_CHILDREN is the daemon's own peak."""
    probe = f"""
import resource, signal, subprocess, sys, time
start = time.monotonic()
p = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "serve", "--restore", {str(path)!r}, "--socket-dir", {str(socket_dir)!r}],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
for line in p.stdout:
    if line.startswith("xenemu: ready"):
        took = time.monotonic() - start
        p.send_signal(signal.SIGTERM)
        break
out, err = p.communicate()
if p.returncode != 0:
    took = time.monotonic() - start
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, took)
print((err.strip().splitlines() or [""])[-1])
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result
    rc, peak, took = lines[0].split()
    return int(rc), int(peak), lines[1], float(took)


# -- decompression bombs ----------------------------------------------------------------
# A msgpack bin32 header claiming ~1.9 GB, then 1.9 GB of zeros, compressed.
# Compressors take the zeros as concatenated members (gzip) or streams (xz),
# each made once: a 1.9 MB gzip or a ~100 KB xz is built in milliseconds,
# and every reader decompresses them as one stream.

BOMB_BYTES = 0x7000_0000                 # 1.75 GiB: what the bin claims and the file holds
ZEROS = 16 << 20


def bomb(path: Path, compressor: str, prefix: bytes, size: int = BOMB_BYTES) -> Path:
    """`prefix`, then a bin of `size` zero bytes, compressed; `size` a
    multiple of 16 MiB or below it."""
    member = {"gzip": lambda b: gzip.compress(b, 9), "xz": lzma.compress}[compressor]
    zeros = member(bytes(min(ZEROS, size)))
    with open(path, "wb") as f:
        f.write(member(prefix + b"\xc6" + size.to_bytes(4, "big")))
        for _ in range(max(1, size // ZEROS)):
            f.write(zeros)
    return path


# `xenemu ARGS` that writes its own peak RSS (VmHWM) to a file as it exits:
# the rusage of a child would count the process it was forked from.
MEASURED = """
import runpy, sys
try:
    runpy.run_module("xenemu.cli", run_name="__main__", alter_sys=True)
finally:
    status = open("/proc/self/status").read()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    open("hwm.txt", "w").write(hwm.split()[1])
"""


def peak_rss_mib(args: list[str], cwd: Path) -> tuple[int, float, str]:
    """Run `xenemu ARGS` in cwd; its exit status, peak RSS (MiB) and output."""
    out = subprocess.run([sys.executable, "-c", MEASURED, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=cwd, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out.returncode, int((cwd / "hwm.txt").read_text()) / 1024, out.stdout
