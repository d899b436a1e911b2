"""`python -m bench --smoke` runs and prints its table (times not checked)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs():
    out = subprocess.run([sys.executable, "-m", "bench", "--smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "benchmark" in out.stdout and "map, runs of 256" in out.stdout
    assert "translate, IOTLB miss" in out.stdout
    assert "trace replay in process" in out.stdout
