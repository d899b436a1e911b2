"""`xenemu top`: a running daemon at a glance, refreshed in place (frame
after frame when stdout is not a terminal).

Each frame comes from the control op `stats` (counters the daemon keeps
anyway, cheap to read). Rates are the change between two replies over the
daemon's own clock; the first frame, and `--once`'s only one, has no
earlier reply and shows averages since the daemon started (`uptime`). A
domain destroyed and created again under the same domid starts its counts
again: a count that went down is taken as counted from 0.
"""

from __future__ import annotations

import time
from collections import defaultdict

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from .ctl import ControlClient
from .ctl_tables import faults_table, pages, stack, table


def frame(prev: dict | None, cur: dict) -> RenderableType:
    """One frame from two `stats` replies (prev None: since the start)."""
    if prev is None:
        prev = {"time": cur["time"] - cur["uptime"], "domains": [], "iotlb": {},
                "faults": {"logged": 0}}
    rates = Rates(prev, cur)
    io = cur["iotlb"]
    head = Text.assemble(
        ("xenemu top", "bold"),
        f"  up {cur['uptime']:,.0f} s, rates over the last {rates.seconds:,.1f} s   IOTLB: "
        f"{io['hits']:,} hits ({rates.of(io['hits'], prev['iotlb'].get('hits', 0))}/s), "
        f"{io['misses']:,} misses ({rates.of(io['misses'], prev['iotlb'].get('misses', 0))}/s)")
    return stack(head, _domains(rates, cur), _calls(rates, cur), _errors(rates, cur),
                 _faults(prev, cur))


class Rates:
    """Per-second changes between two replies, as text."""

    def __init__(self, prev: dict, cur: dict):
        self.seconds = max(cur["time"] - prev["time"], 1e-9)
        self.before = {d["domid"]: d for d in prev["domains"]}

    def of(self, now: int, then: int) -> str:
        return f"{(now - then if now >= then else now) / self.seconds:,.2f}"

    def prev_domain(self, domid: int) -> dict:
        return self.before.get(domid, {"calls": [], "iotlb": {"hits": 0, "misses": 0}})


def _calls_by(calls: list[dict], key) -> dict:
    out = defaultdict(int)
    for c in calls:
        out[key(c)] += c["count"]
    return out


def _total(calls: list[dict], errors: bool = False) -> int:
    return sum(c["count"] for c in calls if not errors or c["result"] != "ok")


def _domains(rates: Rates, cur: dict) -> RenderableType:
    t = table(">domid", "name", ">contexts", ">mapped", ">table pages", ">calls", ">/s",
              ">errors", ">/s", ">IOTLB hits", ">/s", ">misses", ">/s", title="domains")
    for d in cur["domains"]:
        p = rates.prev_domain(d["domid"])
        calls, errors = _total(d["calls"]), _total(d["calls"], errors=True)
        hits, misses = d["iotlb"]["hits"], d["iotlb"]["misses"]
        t.add_row(str(d["domid"]), d["name"], str(d["contexts"]), str(d["mapped"]),
                  pages(**d["table_pages"]),
                  str(calls), rates.of(calls, _total(p["calls"])),
                  str(errors), rates.of(errors, _total(p["calls"], errors=True)),
                  str(hits), rates.of(hits, p["iotlb"]["hits"]),
                  str(misses), rates.of(misses, p["iotlb"]["misses"]))
    return t


def _by_subop(c: dict) -> tuple:
    return c["hypercall"], c["subop"], c["result"]


def _by_result(c: dict) -> str:
    return c["result"]


def _calls(rates: Rates, cur: dict) -> RenderableType:
    t = table(">domid", "hypercall", "sub-op", "result", ">calls", ">/s",
              title="hypercalls by sub-op")
    for d in cur["domains"]:
        before = _calls_by(rates.prev_domain(d["domid"])["calls"], _by_subop)
        for (hypercall, subop, result), n in sorted(_calls_by(d["calls"], _by_subop).items()):
            t.add_row(str(d["domid"]), hypercall, subop,
                      result if result == "ok" else Text(result, style="red"),
                      str(n), rates.of(n, before.get((hypercall, subop, result), 0)))
    return t if t.row_count else Text("no hypercalls yet")


def _errors(rates: Rates, cur: dict) -> RenderableType:
    t = table(">domid", "error", ">calls", ">/s", title="errors by name")
    for d in cur["domains"]:
        errors = {r: n for r, n in _calls_by(d["calls"], _by_result).items() if r != "ok"}
        before = _calls_by(rates.prev_domain(d["domid"])["calls"], _by_result)
        for name, n in sorted(errors.items(), key=lambda item: -item[1]):
            t.add_row(str(d["domid"]), Text(name, style="red"), str(n),
                      rates.of(n, before.get(name, 0)))
    return t if t.row_count else Text("no errors")


def _faults(prev: dict, cur: dict) -> RenderableType:
    f = cur["faults"]
    logged, before = f["logged"], prev["faults"]["logged"]
    new = logged - before if logged >= before else logged      # the log was cleared
    title = f"faults: {logged} logged, {new} new" + \
        (" (log full: later faults dropped)" if f["overflow"] else "")
    if not f["recent"]:
        return Text(title, style="bold")
    return faults_table(f["recent"], title=title)


def run(socket, interval: float, once: bool, console: Console) -> None:
    """Show a frame every `interval` seconds until interrupted (one, `once`):
    in place on a terminal, else one after another (a log, e.g. in CI).
    ControlError when the daemon cannot be reached or goes away."""
    with ControlClient(socket) as ctl:
        cur = ctl.call("stats")
        if once:
            console.print(frame(None, cur))
        elif console.is_terminal:
            with Live(frame(None, cur), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    prev, cur = cur, ctl.call("stats")
                    live.update(frame(prev, cur), refresh=True)
        else:
            prev = None
            while True:
                console.print(frame(prev, cur), "")
                console.file.flush()
                time.sleep(interval)
                prev, cur = cur, ctl.call("stats")
