"""What `xenemu trace report` shows of a trace, gathered in one pass over its
records with memory bounded whatever the trace's length.

A Digest holds the trace's header facts, its hypercalls per domain on a
timeline (errors apart, so that thinning the successful ones never hides
one), the pages each context has mapped over time, results per sub-op, its
continued calls, control requests and refused frames. Every series and list
has a bound (below, and in the README's limits table): past it a series is
thinned evenly (`Thinned`) and a list keeps its first entries and counts the
rest. Functions of the recorded bytes only, as `trace show` and `trace stats`
are: nothing is replayed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .. import wire
from . import text
from .reader import TraceReader, located
from .records import ControlRecord, HypercallRecord, ProtocolRecord, RoundRecord, TraceError

# Bounds of one trace's part of a page (README, "Limits and robustness").
MAX_TIMELINE_POINTS = 4000      # successful calls on the timeline, all domains together
MAX_ERROR_POINTS = 2000         # failed calls, refused frames and hazards on the timeline
MAX_PAGE_POINTS = 1000          # points of one context's mapped-pages line
MAX_CONTEXT_LINES = 32          # contexts drawn (those that mapped the most pages)
MAX_TABLE_ROWS = 200            # rows of each table (continuations, control events, ...)
RATE_BINS = 200                 # time bins of the calls-per-second plot (at most)
MAX_DOMAIN_ROWS = 16            # domains drawn apart (the busiest; the rest as one)
OTHERS = -1                     # the domid standing for the domains not drawn apart


class Thinned:
    """At most `limit` items of a stream, spread evenly over it: every
    `stride`-th item is kept, and the stride doubles (every other item kept
    dropped) whenever the kept ones would pass the limit. Memory is the
    limit's, however long the stream; `seen` counts every item offered."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: list = []
        self.stride = 1
        self.seen = 0

    def add(self, item) -> None:
        if self.seen % self.stride == 0:
            if len(self.items) >= self.limit:
                self.items = self.items[::2]
                self.stride *= 2
                if self.seen % self.stride:
                    self.seen += 1
                    return
            self.items.append(item)
        self.seen += 1

    @property
    def thinned(self) -> bool:
        return self.stride > 1


class Bounded:
    """The first `limit` rows of a table, and how many there were in all."""

    def __init__(self, limit: int = MAX_TABLE_ROWS):
        self.limit = limit
        self.rows: list = []
        self.total = 0

    def add(self, row) -> None:
        if len(self.rows) < self.limit:
            self.rows.append(row)
        self.total += 1


class Rate:
    """Calls per time bin, per domain, successful and failed apart: at most
    `bins` bins from the first call on, their width doubling (pairs merged)
    whenever the trace outlasts them, so that memory is bounded by the
    domains, not by the trace's length."""

    def __init__(self, bins: int = RATE_BINS, width: float = 1e-4):
        self.bins = bins
        self.width = width              # seconds a bin spans
        self.origin: float | None = None
        self.counts: dict[int, list[list[int]]] = {}   # domid -> [[ok, failed], ...]

    def add(self, t: float, domid: int, failed: bool) -> None:
        if self.origin is None:
            self.origin = t
        index = int((t - self.origin) / self.width)
        while index >= self.bins:
            self.width *= 2
            index //= 2
            self.counts = {d: _pairs_merged(s) for d, s in self.counts.items()}
        series = self.counts.setdefault(domid, [])
        while len(series) <= index:
            series.append([0, 0])
        series[index][failed] += 1

    def readable(self, least: int = 10, fewest: int = 10) -> tuple[float, dict]:
        """(width, counts) with bins wide enough that a busy one holds `least`
        calls on average (at most `fewest` bins left): a short trace's calls
        at 0.1 ms would be spikes, not a rate."""
        width, counts = self.width, self.counts
        while True:
            bins = max((len(s) for s in counts.values()), default=0)
            busy = sum(1 for s in counts.values() for ok, bad in s if ok + bad)
            calls = sum(ok + bad for s in counts.values() for ok, bad in s)
            if bins <= fewest or calls >= least * busy:
                return width, counts
            width *= 2
            counts = {d: _pairs_merged(s) for d, s in counts.items()}


def _pairs_merged(series: list[list[int]]) -> list[list[int]]:
    """Bins twice as wide: each pair's counts added."""
    return [[a[0] + b[0], a[1] + b[1]] for a, b in zip(series[::2], series[1::2] + [[0, 0]])]


@dataclass
class Point:
    """One event on the timeline."""
    number: int
    t: float
    domid: int | None
    label: str           # 'map_pages -> -EADDRINUSE'


@dataclass
class Continued:
    """A call that continued (-ERESTART), from its first round to its last."""
    number: int
    domid: int
    name: str
    start: float
    end: float | None = None
    rounds: int = 1
    result: str = ""     # '' while it never finished


@dataclass
class Digest:
    path: Path
    revision: int
    format: int
    meta: dict
    domains: dict[int, str]                     # domid -> name, as the trace made them
    records: int = 0
    hypercalls: int = 0
    errors: int = 0                             # failed hypercalls
    first: float | None = None
    last: float = 0.0
    calls: Thinned = field(default_factory=lambda: Thinned(MAX_TIMELINE_POINTS))
    failures: Thinned = field(default_factory=lambda: Thinned(MAX_ERROR_POINTS))
    rate: Rate = field(default_factory=Rate)   # hypercalls per time bin, per domain
    results: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    pages: dict[tuple[int, int], Thinned] = field(default_factory=dict)   # (domid, ctx) ->
    continued: Bounded = field(default_factory=Bounded)
    control: Bounded = field(default_factory=Bounded)
    refused: Bounded = field(default_factory=Bounded)       # protocol errors and hazards
    marked: dict[int, Point] = field(default_factory=dict)  # records asked for (divergences)
    cut_off: str | None = None
    error: str | None = None        # a record past which the trace could not be read
    _busiest: set[int] | None = None    # drawn(): computed once the trace is read

    def domain_label(self, domid: int | None) -> str:
        if domid is None:
            return "control"
        if domid == OTHERS:
            return "other domains"
        name = self.domains.get(domid)
        return f"d{domid} {name}" if name else f"d{domid}"

    def drawn(self, domid: int | None) -> int | None:
        """The domain as plots draw it: itself if it is one of the
        MAX_DOMAIN_ROWS busiest, else OTHERS (a page of a machine of 1023
        domains stays readable and bounded)."""
        if self._busiest is None:
            calls = {d: sum(ok + bad for ok, bad in s) for d, s in self.rate.counts.items()}
            self._busiest = set(sorted(calls, key=lambda d: (-calls[d], d))[:MAX_DOMAIN_ROWS])
        return domid if domid is None or domid in self._busiest or \
            (len(self._busiest) < MAX_DOMAIN_ROWS and domid not in self.rate.counts) else OTHERS

    def context_lines(self) -> list[tuple[tuple[int, int], Thinned]]:
        """The contexts drawn: those whose mapped pages peaked highest."""
        ranked = sorted(self.pages.items(),
                        key=lambda kv: (-max(v for _, v in kv[1].items), kv[0]))
        return sorted(ranked[:MAX_CONTEXT_LINES])


class _MappedPages:
    """Pages each context holds mapped, from the recorded replies: map_pages'
    `mapped` less unmap_pages' `unmapped`; a freed context, or every context
    of a destroyed domain, drops to 0."""

    def __init__(self, digest: Digest):
        self._digest = digest
        self._now: dict[tuple[int, int], int] = {}

    def _set(self, key: tuple[int, int], t: float, value: int) -> None:
        self._now[key] = value
        series = self._digest.pages.get(key)
        if series is None:
            series = self._digest.pages[key] = Thinned(MAX_PAGE_POINTS)
            if value:
                series.add((t, 0))
        series.add((t, value))

    def hypercall(self, ev: text.Event) -> None:
        if ev.ctx is None or ev.domid is None:
            return
        key = (ev.domid, ev.ctx)
        if ev.pages is not None and ev.pages[1]:
            sign = -1 if ev.pages[0] == "unmapped" else 1
            self._set(key, ev.t, self._now.get(key, 0) + sign * ev.pages[1])
        elif ev.name == "free_context" and not ev.failed and self._now.get(key):
            self._set(key, ev.t, 0)

    def domain_destroyed(self, domid: int, t: float) -> None:
        for key, value in list(self._now.items()):
            if key[0] == domid and value:
                self._set(key, t, 0)


def digest(path: Path, marks: frozenset[int] = frozenset()) -> Digest:
    """Read the trace at `path` (TraceError, OSError as TraceReader raises
    them); `marks`: record numbers whose time and domain the report needs
    (a replay's divergences)."""
    with TraceReader(path) as reader:
        h = reader.header
        domains = {d.domid: d.name for d in reader.machine.domains}
        dg = Digest(Path(path), h.abi.pv_iommu_revision, h.xenemu_trace,
                    {k: text.short_value(v) for k, v in h.meta.items()}, domains)
        try:
            _read(dg, reader, marks)
        except TraceError as e:          # what was read before it stays shown
            dg.error = located(path, e)
        dg.cut_off = reader.cut_off_note()
    return dg


def _read(dg: Digest, reader: TraceReader, marks: frozenset[int]) -> None:
    describer = text.Describer(with_text=False, revision=dg.revision)
    mapped = _MappedPages(dg)
    open_calls: dict[int, Continued] = {}
    for number, rec in reader:
        ev = describer.event(number, rec)
        dg.records = number
        dg.first = rec.t if dg.first is None else dg.first
        dg.last = rec.t
        if number in marks:      # in the row the timeline draws the record in
            row = None if isinstance(rec, ControlRecord) else ev.domid
            dg.marked[number] = Point(number, rec.t, row, ev.name)
        if isinstance(rec, ControlRecord):
            _control(dg, mapped, number, rec, ev)
            continue
        if isinstance(rec, HypercallRecord) and rec.rep is None:
            cont = Continued(number, rec.d, ev.name, rec.t)
            open_calls[rec.c] = cont
            dg.continued.add(cont)
        elif isinstance(rec, RoundRecord) and rec.c in open_calls:
            cont = open_calls[rec.c]
            cont.rounds += 1
            if rec.rep is not None:
                cont.end, cont.result = rec.t, ev.result
                del open_calls[rec.c]
        if ev.kind == "hypercall" and ev.result:      # a call answered
            dg.hypercalls += 1
            dg.rate.add(rec.t, ev.domid, ev.failed)
            dg.results[ev.name][ev.result] += 1
            mapped.hypercall(ev)
        if ev.kind == "hypercall" and not ev.result:
            continue                                  # a round before the last
        point = Point(number, rec.t, ev.domid, f"{ev.name} -> {ev.result}")
        if ev.failed:
            dg.errors += ev.kind == "hypercall"
            dg.failures.add(point)
        else:
            dg.calls.add(point)
        if ev.kind in ("protocol", "hazard"):
            detail = (f"{wire.ERROR_NAMES.get(rec.code, rec.code)} on {len(rec.raw)} "
                      f"bytes" if isinstance(rec, ProtocolRecord) else rec.why)
            dg.refused.add((number, rec.t, dg.domain_label(ev.domid), ev.kind,
                            ev.name, detail))


def _control(dg: Digest, mapped: _MappedPages, number: int, rec: ControlRecord,
             ev: text.Event) -> None:
    op, ok = ev.name, not ev.failed
    if ok and op == "domain_create" and isinstance(rec.req.get("domid"), int):
        dg.domains[rec.req["domid"]] = str(rec.req.get("name", ""))
    if ok and op == "domain_destroy" and ev.domid is not None:
        mapped.domain_destroyed(ev.domid, rec.t)
    dg.control.add((number, rec.t, op, text.control_args(rec.req),
                    text.control_result(rec.rep), ok))
    (dg.calls if ok else dg.failures).add(Point(number, rec.t, None, f"{op} -> {ev.result}"))
