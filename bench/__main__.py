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

# In the order of issue 6's sections.
SECTIONS = ["bench.roundtrip", "bench.throughput", "bench.core", "bench.hw", "bench.codec",
            "bench.scale", "bench.trace", "bench.limits", "bench.rev2"]
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


def table(rows: list[dict]) -> str:
    head = ("benchmark", "value", "unit", "reference", "ratio")
    lines = [(r["name"], fmt(r["value"]), r["unit"], fmt(r["ref"]), ratio(r["ratio"]))
             for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    out = []
    for i, line in enumerate([head, *lines]):
        out.append("  ".join(c.ljust(w) if j in (0, 2) else c.rjust(w)
                             for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


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
    print(table(rows))
    print(f"({elapsed:.1f} s{', smoke' if args.smoke else ''})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "smoke": args.smoke, "seconds": elapsed, "time": time.time(),
        "python": platform.python_version(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
