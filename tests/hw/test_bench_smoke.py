"""`python -m bench --smoke` runs and prints its table (times not checked)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs():
    out = subprocess.run([sys.executable, "-m", "bench", "--smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "benchmark" in out.stdout
    # A row from every section.
    for name in ("round trip lookup_page, daemon", "1 connection, 64 in flight: daemon",
                 "map_pages 256, hypercall in process", "hw map, runs of 256",
                 "translate, IOTLB hit (ref: C array loop)", "decode CALL, FrameDecoder",
                 "free_context of 16K pages", "trace replay in process",
                 "daemon VmHWM, 4 connections", "C client ops, 4 threads sharing",
                 "rev 2: map 16K pages, 4096 a call (ref: rev 1)"):
        assert name in out.stdout, name
