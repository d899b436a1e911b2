"""The trace commands: `xenemu replay`, `xenemu trace show`, `xenemu trace stats`
(and `xenemu trace report`, in report_cli).

Exit status of replay: 0 when every record of every trace matched, 1 when
some diverged (or the machine's invariant check failed after a replay, or
with --fail-on-hazard a trace holds a hazard record),
2 when a trace could not be read (or --report's directory or a report in it
cannot be written), 3 when a worker process (-j) died while replaying a trace
(or none could be started); over several traces the highest wins. Stopped by
SIGINT or SIGTERM: 128 + the signal's number.
"""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

from . import jobs, report_cli, text
from .reader import TraceReader, located
from .records import TraceError
from .replay import ReplayResult, replay_file


def add_commands(sub) -> None:
    replay = sub.add_parser(
        "replay", help="replay traces in process and fail on the first divergence",
        description="Replay each trace through the daemon's core, in process, comparing every "
                    "return value and written-back byte with the recording. Exit status: 0 all "
                    "matched, 1 a divergence (or, with --fail-on-hazard, a hazard), 2 a trace could "
                    "not be read (or a --report page cannot be written), 3 a worker process "
                    "died replaying one (-j); over several "
                    "traces the highest wins; 130 or 143 stopped by SIGINT or SIGTERM.")
    replay.add_argument("traces", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("-j", "--jobs", type=jobs.parse_jobs, default=1, metavar="N",
                        help="replay traces in N worker processes at once (auto: one per "
                             f"core, at most {jobs.MAX_JOBS}); one summary and JUnit file")
    replay.add_argument("--shard", type=jobs.parse_shard, metavar="K/N",
                        help="replay only shard K of N (1 <= K <= N): the traces whose base "
                             "name's SHA-256 modulo N is K-1, so N CI runners given the same "
                             "files split them exactly without coordination")
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

# Exit statuses of replay (the README's and --help's); over several traces the highest wins.
EXIT_DIVERGED = 1
EXIT_BAD_TRACE = 2
EXIT_WORKER_DIED = 3


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
        return EXIT_BAD_TRACE
    traces = args.traces
    if args.shard:
        traces = jobs.in_shard(traces, *args.shard)
        if not traces:
            print(f"shard {args.shard[0]}/{args.shard[1]}: none of the {len(args.traces)} "
                  f"traces given falls in it")
    if args.junit and (args.junit.is_dir() or not args.junit.parent.is_dir()):
        print(f"xenemu: --junit {args.junit}: "
              f"{'is a directory' if args.junit.is_dir() else 'no such directory'}",
              file=sys.stderr)
        return EXIT_BAD_TRACE
    progress = None
    if sys.stderr.isatty() and not os.environ.get("CI") and not args.quiet and traces:
        from .progress import ReplayProgress      # rich, only on a terminal
        progress = ReplayProgress(sys.stderr, len(traces))
    results: list[ReplayResult] = []
    start = time.perf_counter()
    in_workers = min(args.jobs, len(traces)) > 1
    replays = _replays(traces, args, progress, in_workers)
    try:
        with jobs.interruptible():
            for r in replays:
                results.append(r)
                _show(r, args, progress, reports=in_workers)
    except jobs.Interrupted as e:
        replays.close()     # its workers stop here, before the line that says so
        print(f"xenemu: replay stopped by {e} after reporting {len(results)} of {len(traces)} "
              f"traces", file=sys.stderr)
        return 128 + e.signum
    except jobs.WorkerError as e:
        print(f"xenemu: {e}", file=sys.stderr)
        return EXIT_WORKER_DIED
    finally:
        replays.close()     # also when stdout's reader has gone (BrokenPipeError)
        if progress:
            progress.close()
    processes = max(min(args.jobs, len(traces)), 1)
    if len(args.traces) > 1 or args.shard or processes > 1:
        if not args.quiet or not all(r.ok for r in results):
            for line in _totals(results, args, time.perf_counter() - start, processes):
                print(line)
    if args.junit:
        try:
            write_junit(args.junit, results, args.shard)
        except OSError as e:
            print(f"xenemu: --junit {args.junit}: {e.strerror or e}", file=sys.stderr)
            return EXIT_BAD_TRACE
    status = max((_status(r) for r in results), default=0)
    replayed = [r for r in results if not isinstance(r, jobs.WorkerDied)]
    if args.report and report_cli.write_replay_reports(args.report, replayed, _summary):
        status = max(status, EXIT_BAD_TRACE)
    return status


def _replays(traces: list[Path], args, progress, in_workers: bool):
    """Each trace's result, in the order given: from worker processes, or
    in process (printing its divergences as they are found)."""
    options = jobs.ReplayOptions(args.keep_going, args.check_iotlb, args.fail_on_hazard)
    if in_workers:
        with jobs.ParallelReplay(traces, options, args.jobs, progress) as replays:
            yield from replays
        return
    for i, path in enumerate(traces):
        bar = progress.bar(i, path.name) if progress else None
        r = replay_file(path, keep_going=options.keep_going, check_iotlb=options.check_iotlb,
                        fail_on_hazard=options.fail_on_hazard, progress=bar,
                        report=lambda d: _print(progress, d.report + "\n"))
        if bar:
            bar.done()      # a file that could not be opened left its bar up
        yield r


def _status(r: ReplayResult) -> int:
    if isinstance(r, jobs.WorkerDied):
        return EXIT_WORKER_DIED
    if r.error:
        return EXIT_BAD_TRACE
    return 0 if r.ok else EXIT_DIVERGED


def _print(progress, text: str) -> None:
    if progress:
        with progress.paused():
            print(text, flush=True)
    else:
        print(text, flush=True)


def _show(r: ReplayResult, args, progress, reports: bool) -> None:
    """A trace's lines once it has been replayed. `reports`: its divergence
    reports too (a worker's: in process they are printed as they are found)."""
    lines = []
    if reports:
        lines += [d.report + "\n" for d in r.divergences]
        if r.count > len(r.divergences):
            lines.append(f"({r.count - len(r.divergences)} more divergence(s) not shown: "
                         f"replay {r.path} alone to see them all)\n")
    lines += [f"note: {note}" for note in r.notes] + r.hazards
    if not args.quiet or not r.ok:
        lines.append(_summary(r))
    if lines:
        _print(progress, "\n".join(lines))


def _totals(results: list[ReplayResult], args, seconds: float, processes: int) -> list[str]:
    """The combined summary of a run over several traces."""
    groups = {"failed": [r for r in results if _status(r) == EXIT_DIVERGED],
              "could not be read": [r for r in results if _status(r) == EXIT_BAD_TRACE],
              "lost with their worker": [r for r in results if _status(r) == EXIT_WORKER_DIED]}
    counts = [f"{sum(1 for r in results if r.ok)} all match"]
    counts += [f"{len(group)} {what}" for what, group in groups.items() if group]
    given = f" (shard {args.shard[0]}/{args.shard[1]} of {len(args.traces)} given)" \
        if args.shard else ""
    lines = [f"replayed {len(results)} trace(s){given}: {', '.join(counts)}"]
    for what, group in groups.items():
        if group:
            names = [str(r.path) for r in group]
            more = f" and {len(names) - 20} more" if len(names) > 20 else ""
            lines.append(f"  {what}: {', '.join(names[:20])}{more}")
    hypercalls = sum(r.hypercalls for r in results)
    records = sum(r.records for r in results)
    seconds = max(seconds, 1e-9)
    lines.append(f"{hypercalls:,} hypercalls, {records:,} records in {seconds:.2f} s with "
                 f"{processes} process(es): {hypercalls / seconds:,.0f} hypercalls/s, "
                 f"{len(results) / seconds:,.1f} traces/s")
    return lines


def write_junit(path: Path, results: list[ReplayResult], shard: tuple[int, int] | None = None
                ) -> None:
    """One test suite, one test case per trace; a failure holds every report."""
    name = f"xenemu replay shard {shard[0]}/{shard[1]}" if shard else "xenemu replay"
    suite = ET.Element("testsuite", name=name, tests=str(len(results)),
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

