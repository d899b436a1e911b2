"""The trace commands: `xenemu replay`, `xenemu trace show`, `xenemu trace stats`
(and `xenemu trace report`, in report_cli).

Exit status of replay: 0 when every record of every trace matched, 1 when
some diverged (or the machine's invariant check failed after a replay, or
with --fail-on-hazard a trace holds a hazard record),
2 when a trace could not be read (or --report's directory or a report in it
cannot be written).
"""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

from . import report_cli, text
from .reader import TraceReader, located
from .records import TraceError
from .replay import ReplayResult, replay_file


def add_commands(sub) -> None:
    replay = sub.add_parser(
        "replay", help="replay traces in process and fail on the first divergence",
        description="Replay each trace through the daemon's core, in process, comparing every "
                    "return value and written-back byte with the recording. Exit status: 0 all "
                    "matched, 1 a divergence (or, with --fail-on-hazard, a hazard), 2 a trace could "
                    "not be read.")
    replay.add_argument("traces", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("--keep-going", action="store_true",
                        help="go on past divergences and count them")
    replay.add_argument("--junit", type=Path, metavar="XML",
                        help="also write the results as JUnit XML (one test case per trace)")
    replay.add_argument("--check-iotlb", action="store_true",
                        help="verify every IOTLB hit against the page tables while replaying")
    replay.add_argument("--quiet", action="store_true", help="print divergences only")
    replay.add_argument("--fail-on-hazard", action="store_true",
                        help="also fail (exit 1) on a trace holding a hazard record: a call "
                             "Xen v7 would have crashed, hung or misled on")
    replay.add_argument("--report", type=Path, metavar="DIR",
                        help="write an HTML report (xenemu trace report) into DIR for each "
                             "trace whose replay failed, its divergences side by side")
    replay.set_defaults(func=replay_command)

    trace = sub.add_parser("trace", help="read traces: show, stats, report")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="one readable line per record")
    show.add_argument("trace", type=Path, metavar="FILE")
    show.add_argument("--domain", type=int, metavar="DOMID", help="only this domain's events")
    show.add_argument("--subop", action="append", metavar="NAME",
                      help="only these sub-ops (map_pages, ...), control ops (dma, ...), "
                           "'control', 'protocol' or 'hazard'; may be repeated")
    show.add_argument("--errors", action="store_true",
                      help="only failed hypercalls, refused control requests, protocol errors")
    show.set_defaults(func=show_command)
    stats = tsub.add_parser("stats", help="counts per sub-op and result")
    stats.add_argument("trace", type=Path, metavar="FILE")
    stats.add_argument("--domain", type=int, metavar="DOMID", help="only this domain's events")
    stats.set_defaults(func=stats_command)
    report_cli.add_command(tsub)


def _events(reader: TraceReader, with_text: bool = True):
    describer = text.Describer(with_text, reader.machine.pv_iommu_revision)
    for number, rec in reader:
        yield describer.event(number, rec)


def _open(path: Path) -> TraceReader | None:
    try:
        return TraceReader(path)
    except OSError as e:
        print(f"xenemu: {path}: {e.strerror or e}", file=sys.stderr)
    except TraceError as e:
        print(f"xenemu: {located(path, e)}", file=sys.stderr)
    return None


# -- show and stats ---------------------------------------------------------------

def show_command(args) -> int:
    reader = _open(args.trace)
    if reader is None:
        return 2
    wanted = set(args.subop or ())
    try:
        with reader:
            for ev in _events(reader):
                if args.domain is not None and ev.domid != args.domain:
                    continue
                if wanted and not wanted & {ev.name, ev.kind}:
                    continue
                if args.errors and not ev.failed:
                    continue
                where = f"d{ev.domid}" if ev.domid is not None and ev.kind != "control" else "  "
                print(f"#{ev.number:<7} {ev.t:12.6f} {where:>4} {ev.text}")
    except TraceError as e:
        print(f"xenemu: {located(args.trace, e)}", file=sys.stderr)
        return 2
    note = reader.cut_off_note()
    if note:
        print(f"xenemu: {note}", file=sys.stderr)
    return 0


def stats_command(args) -> int:
    reader = _open(args.trace)
    if reader is None:
        return 2
    results: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    pages = Counter()
    records, first, last = 0, None, 0.0
    try:
        with reader:
            for ev in _events(reader, with_text=False):
                records += 1
                first = ev.t if first is None else first
                last = ev.t
                if args.domain is not None and ev.domid != args.domain:
                    continue
                if ev.result:
                    results[ev.kind][ev.name][ev.result] += 1
                if ev.pages:
                    pages[ev.pages[0]] += ev.pages[1]
    except TraceError as e:
        print(f"xenemu: {located(args.trace, e)}", file=sys.stderr)
        return 2
    h = reader.header
    meta = {k: text.short_value(v) for k, v in h.meta.items()}
    print(f"{args.trace}: {records:,} records over {last - (first or 0):.3f} s; format "
          f"{h.xenemu_trace}, PV-IOMMU revision {h.abi.pv_iommu_revision}, "
          f"wire {h.abi.wire_version}; recorded by xenemu {meta.get('xenemu')} on "
          f"{meta.get('host')} at {meta.get('created')}")
    titles = {"hypercall": "hypercalls", "control": "control requests",
              "protocol": "protocol errors", "hazard": "hazards (calls Xen v7 would fail on)"}
    for kind in titles:
        if not results[kind]:
            continue
        total = sum(sum(c.values()) for c in results[kind].values())
        print(f"{titles[kind]}: {total:,}")
        width = max(len(n) for n in results[kind])
        for name, counts in sorted(results[kind].items()):
            detail = "  ".join(f"{r}: {n:,}" for r, n in counts.most_common())
            print(f"  {name:<{width}}  {sum(counts.values()):>9,}   {detail}")
    if pages:
        print("pages: " + ", ".join(f"{k} {v:,}" for k, v in sorted(pages.items())))
    note = reader.cut_off_note()
    if note:
        print(f"note: {note}")
    return 0


# -- replay -------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second."""

    def __init__(self, stream, label: str):
        self._stream = stream
        self._label = label
        self._next = 0.0
        self._start = time.perf_counter()

    def update(self, fraction: float, records: int, force: bool = False) -> None:
        now = time.perf_counter()
        if now < self._next and not force:
            return
        self._next = now + 0.1
        filled = int(fraction * 30)
        rate = records / max(now - self._start, 1e-9)
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (30 - filled)}] "
                           f"{fraction:4.0%} {records:,} records {rate:,.0f}/s ")
        self._stream.flush()

    def done(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()


def _summary(r: ReplayResult) -> str:
    rate = f" ({r.hypercalls / r.seconds:,.0f} hypercalls/s)" if r.seconds and r.hypercalls else ""
    head = f"{r.path}: {r.records:,} records, {r.hypercalls:,} hypercalls in {r.seconds:.2f} s{rate}"
    if r.error:
        return f"{head}: cannot replay: {r.error}"
    if r.count:
        first = r.divergences[0].number
        return f"{head}: {r.count} divergence(s), the first at record {first}"
    if r.problems:
        return f"{head}: all matched, but the invariant check failed: {'; '.join(r.problems)}"
    if r.hazards:
        return f"{head}: all matched, but {len(r.hazards)} hazard(s) (--fail-on-hazard)"
    return f"{head}: all match"


def replay_command(args) -> int:
    if args.report and (error := report_cli.check_report_dir(args.report)):
        print(f"xenemu: {error}", file=sys.stderr)
        return 2
    show_progress = sys.stderr.isatty() and not os.environ.get("CI") and not args.quiet
    results = []
    for path in args.traces:
        r = replay_file(path, keep_going=args.keep_going, check_iotlb=args.check_iotlb,
                        fail_on_hazard=args.fail_on_hazard,
                        progress=Progress(sys.stderr, path.name) if show_progress else None,
                        report=lambda d: print(d.report + "\n", flush=True))
        results.append(r)
        for note in r.notes:
            print(f"note: {note}")
        for line in r.hazards:
            print(line)
        if not args.quiet or not r.ok:
            print(_summary(r), flush=True)
    if args.junit:
        write_junit(args.junit, results)
    if args.report and report_cli.write_replay_reports(args.report, results, _summary):
        return 2
    if any(r.error for r in results):
        return 2
    return 0 if all(r.ok for r in results) else 1


def write_junit(path: Path, results: list[ReplayResult]) -> None:
    """One test suite, one test case per trace; a failure holds every report."""
    suite = ET.Element("testsuite", name="xenemu replay", tests=str(len(results)),
                       failures=str(sum(1 for r in results if not r.ok and not r.error)),
                       errors=str(sum(1 for r in results if r.error)),
                       time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="xenemu.replay", name=str(r.path),
                             time=f"{r.seconds:.3f}")
        if r.error:
            ET.SubElement(case, "error", message=r.error).text = r.error
        elif not r.ok:
            fail = ET.SubElement(case, "failure", message=_summary(r))
            fail.text = "\n\n".join([d.report for d in r.divergences] + r.problems + r.hazards)
        ET.SubElement(case, "system-out").text = "\n".join([_summary(r), *r.notes])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)

