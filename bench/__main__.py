"""Run every benchmark section, print one table, write JSON.

Each section is a module with `run(smoke: bool) -> list[dict]`; a row has
name, value, unit, ref (the baseline's value, or None) and ratio
(value / ref, or None). --smoke runs tiny sizes, only to prove the
benchmarks work; --only SECTION (e.g. limits) runs one section.
"""
import argparse
import importlib
import json
import platform
import time
from pathlib import Path

from xenemu import ctl_tables as tables

# In the order of issue 6's sections.
SECTIONS = ["bench.roundtrip", "bench.throughput", "bench.core", "bench.hw", "bench.codec",
            "bench.scale", "bench.trace", "bench.limits", "bench.rev2", "bench.dirty"]
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:,}"


def ratio(x) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 1 else f"{x:.1f}x"


def table(rows: list[dict]):
    t = tables.table("benchmark", ">value", "unit", ">reference", ">ratio")
    for r in rows:
        t.add_row(r["name"], fmt(r["value"]), r["unit"], fmt(r["ref"]), ratio(r["ratio"]))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes: check the benchmarks run, not speed")
    ap.add_argument("--only", metavar="SECTION", action="append",
                    choices=[s.rpartition(".")[2] for s in SECTIONS],
                    help="run only this section (may be repeated)")
    args = ap.parse_args()
    rows = []
    start = time.perf_counter()
    for name in SECTIONS:
        if args.only and name.rpartition(".")[2] not in args.only:
            continue
        for row in importlib.import_module(name).run(args.smoke):
            rows.append({"section": name.rpartition(".")[2], **row})
    elapsed = time.perf_counter() - start
    tables.console().print(table(rows))
    print(f"({elapsed:.1f} s{', smoke' if args.smoke else ''})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "smoke": args.smoke, "seconds": elapsed, "time": time.time(),
        "python": platform.python_version(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
