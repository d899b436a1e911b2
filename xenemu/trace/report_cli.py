"""`xenemu trace report FILE... -o report.html`, and the pages `xenemu replay
--report DIR` leaves for each trace that failed (xenemu.trace.report).

Exit status of `trace report`: 0 the page was written; 2 a trace could not
be read (one line naming the file and the record), too many traces for one
page, or the page cannot be written. No page is left half written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import report
from .digest import digest
from .reader import located
from .records import TraceError
from .replay import ReplayResult

EXIT_BAD_INPUT = 2


def add_command(tsub) -> None:
    rep = tsub.add_parser(
        "report", help="one self-contained HTML page of one or more traces",
        description="Write one HTML page (no network needed to view it) showing each trace: "
                    "hypercalls per domain on a timeline with errors marked, pages mapped per "
                    "context over time, results per sub-op, continued calls, control requests, "
                    "refused frames. Exit status: 0 written, 2 a trace could not be read or the "
                    "page cannot be written.")
    rep.add_argument("traces", nargs="+", type=Path, metavar="FILE")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="HTML",
                     help="the page to write")
    rep.set_defaults(func=report_command)


def _fail(message: str) -> int:
    print(f"xenemu: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _read(path: Path, marks: frozenset[int] = frozenset()):
    """The trace's digest, or the one line saying why it cannot be read."""
    try:
        return digest(path, marks), None
    except OSError as e:
        return None, f"{path}: {e.strerror or e}"
    except TraceError as e:
        return None, located(path, e)


def _write(path: Path, parts: list[report.Part]) -> str | None:
    """Write the page through a temporary file beside it, so that a failed
    write leaves no half page; the error's line, or None."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        report.write(tmp, parts)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return f"cannot write {path}: {e.strerror or e}"
    return None


def report_command(args) -> int:
    if len(args.traces) > report.MAX_TRACES:
        return _fail(f"{len(args.traces)} traces: a page holds at most {report.MAX_TRACES}")
    if not args.output.parent.is_dir():
        return _fail(f"cannot write {args.output}: no directory {args.output.parent}")
    parts = []
    for path in args.traces:
        dg, error = _read(path)
        if error is None and dg.error is not None:
            error = dg.error
        if error is not None:
            return _fail(error)
        parts.append(report.Part(dg))
    error = _write(args.output, parts)
    if error:
        return _fail(error)
    print(f"{args.output}: {args.output.stat().st_size:,} bytes, "
          f"{len(parts)} trace(s)")
    return 0


# -- xenemu replay --report DIR ------------------------------------------------------

def check_report_dir(path: Path) -> str | None:
    """Make the directory reports go to; the line saying why not, or None.
    Checked before replaying, so that a CI job learns it at once."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--report {path}: {e.strerror or e}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"--report {path}: not writable"
    return None


def write_replay_reports(directory: Path, results: list[ReplayResult], summary) -> int:
    """A page for each trace whose replay failed (a divergence, the invariant
    check, a hazard with --fail-on-hazard) and could be read: DIR/NAME.html.
    `summary(result)` is the replay's line for it. Returns the exit status
    the reports add: 2 if one could not be written, else 0."""
    status, taken = 0, set()
    for r in results:
        if r.ok or r.error:
            continue
        dg, error = _read(r.path, frozenset(d.number for d in r.divergences))
        if error is not None:        # it was read a moment ago: it changed since
            status = _fail(f"no report for {error}")
            continue
        name, n = f"{r.path.name}.html", 1
        while name in taken:
            n += 1
            name = f"{r.path.name}-{n}.html"
        taken.add(name)
        out = directory / name
        error = _write(out, [report.Part(dg, r, summary(r))])
        if error:
            status = _fail(error)
        else:
            print(f"report: {out}", flush=True)
    return status
