"""`make fuzz`: run each target of targets.py under atheris (coverage-guided
libFuzzer) for a time budget, growing the corpus in tests/fuzz/corpus/TARGET/,
then minimise the corpus (libFuzzer's merge) so the repository keeps only
inputs that add coverage. A crash is written to tests/fuzz/crashes/ and fails
the run.

    python tests/fuzz/run.py [--seconds N] [TARGET...]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"


def child(target: str, launcher: str, args: list[str]) -> None:
    """Inside the fuzzing process: instrument xenemu and hand over to libFuzzer."""
    import atheris
    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["xenemu", "targets"]):
        import targets
    # libFuzzer re-runs argv[0] for its merge: give it the launcher, an executable.
    atheris.Setup([launcher, *args], targets.TARGETS[target])
    atheris.Fuzz()


def launcher(target: str, tmp: Path) -> str:
    """An executable that starts this script's child for `target` with libFuzzer's flags."""
    path = tmp / f"fuzz-{target}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__)}" --child {target} '
                    f'"{path}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def fuzz(target: str, seconds: int) -> tuple[int, bool]:
    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [launcher(target, Path(tmp)), str(corpus), f"-max_total_time={seconds}",
             "-max_len=4096", "-rss_limit_mb=4096", "-print_final_stats=1",
             f"-artifact_prefix={CRASHES}/{target}-"],
            capture_output=True, text=True)
    log = out.stdout + out.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    crashed = out.returncode != 0
    if crashed:
        print(log[-4000:])
    return (int(runs[-1]) if runs else 0), crashed


def minimise(target: str) -> int:
    corpus = CORPUS / target
    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp) / "kept"
        kept.mkdir()
        subprocess.run([launcher(target, Path(tmp)), "-merge=1", str(kept), str(corpus)],
                       capture_output=True, text=True, check=True)
        shutil.rmtree(corpus)
        shutil.copytree(kept, corpus)
    return len(list(corpus.iterdir()))


def main() -> int:
    if sys.argv[1:2] == ["--child"]:    # libFuzzer's own flags follow: no argparse here
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120, help="budget per target")
    ap.add_argument("targets", nargs="*")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import targets
    failed = False
    for name in args.targets or list(targets.TARGETS):
        runs, crashed = fuzz(name, args.seconds)
        kept = minimise(name)
        print(f"{name}: {runs:,} executions in {args.seconds} s, "
              f"{'CRASHED (see tests/fuzz/crashes/)' if crashed else 'no crash'}; "
              f"corpus {kept} inputs")
        failed |= crashed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
