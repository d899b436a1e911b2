"""Snapshot restore is bounded by the file (issue 12).

A hostile file of about 1 MB, every byte spent on what costs a restore the
most: p2m runs over all of a domain's memory (each was a loop over its
pages in Python), and one-page mappings scattered over the address space,
in context 0 and in a pool context (each needs page tables of its own).
`xenemu serve --restore` must finish with it, refused or restored, within
the bounds the README states: page tables within the domain's budget, time
linear in the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from xenemu import abi, snapshot
from xenemu.machine import DomainConfig, MachineConfig, machine_to_dict

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


def hostile_snapshot(kind: str) -> dict:
    """About 1 MB of p2m runs over all memory ("p2m"), or of one-page
    mappings far apart in contexts 0 and 1 ("mappings")."""
    mib = 8192 if kind == "p2m" else 1024
    # Room in the machine for all the tables the mappings could want.
    config = MachineConfig(address_width=48, memory_mib=2 * mib, domains=(
        DomainConfig(domid=0, hardware=True, memory_mib=mib, contexts=1,
                     table_pages=TABLE_PAGES),))
    pages = mib * 256
    step = pages // RUNS
    spread = (1 << 36) // RUNS      # 13 GiB between two mappings: 2-3 tables each
    domain = {"domid": 0, "page_ins": [], "memory": [], "p2m": [],
              "contexts": [{"ctx_no": 0, "dying": False, "devices": [], "mappings": []}]}
    if kind == "p2m":
        # Every stretch of `p2m_step - 1` pages is MMIO, the page between them RAM.
        p2m_step = pages // P2M_RUNS
        domain["p2m"] = [[i * p2m_step, p2m_step - 1, "mmio"] for i in range(P2M_RUNS)]
    else:
        domain["contexts"] = [
            {"ctx_no": 0, "dying": False, "devices": [],
             "mappings": [[i * spread, i * step, 1, 3] for i in range(RUNS)]},
            {"ctx_no": 1, "dying": False, "devices": [],
             "mappings": [[i * spread + 1, i * step, 1, 1] for i in range(RUNS)]}]
    return {
        snapshot.HEADER_KEY: snapshot.FORMAT,
        "abi": {"pv_iommu_revision": abi.PV_IOMMU_REVISION},
        "machine": machine_to_dict(config), "time": 0.0, "domains": [domain],
        "quarantined": [], "faults": {"records": [], "overflow": False}, "meta": {},
    }


def restore_peak(path: Path, socket_dir: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in MiB, last line of stderr) of `xenemu serve
    --restore path`, stopped by SIGTERM once it serves. A child process runs
    it, so that RUSAGE_CHILDREN is the daemon's own peak."""
    probe = f"""
import resource, signal, subprocess, sys
p = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "serve", "--restore", {str(path)!r},
                      "--socket-dir", {str(socket_dir)!r}],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
if p.stdout.readline():
    p.send_signal(signal.SIGTERM)
out, err = p.communicate()
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
print((err.strip().splitlines() or [""])[-1])
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parent.parent)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result
    rc, peak = map(int, lines[0].split())
    return rc, peak, lines[1]


@pytest.mark.parametrize("kind", ["p2m", "mappings"])
def test_a_hostile_1mb_snapshot_restores_within_bounds(tmp_path, kind):
    path = tmp_path / f"{kind}.xs"
    path.write_bytes(msgpack.packb(hostile_snapshot(kind), use_bin_type=True))
    size = path.stat().st_size
    assert 0.8e6 < size < 1.5e6
    rc, peak, last = restore_peak(path, tmp_path / "s")
    if kind == "p2m":
        # Restored and served (each run was a loop over its pages: minutes).
        assert rc == 0, last
    else:
        # Refused in one line (exit 2): the mappings need more page tables
        # than the domain's budget, context 0's first.
        assert rc == 2, last
        assert "cannot be restored: domains[0].contexts[0].mappings[" in last, last
        assert "more page tables than the domain's budget allows" in last, last
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak} MiB for a {size}-byte snapshot"
