"""The daemon against the echo servers, pinned to one CPU and unpinned, for
the round-trip and throughput sections.

Every server is measured both ways, interleaved in the same runs (see
serve.place for why both); the daemon also while it records a trace. Each daemon figure gets three references: the
trio echo on trio's stream layer (what issue 17's targets are stated
against), the trio echo on the daemon's own I/O (xenemu.sockio: daemon /
that echo is the daemon's work above its I/O), and the C echo.
"""
from __future__ import annotations

import functools
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .serve import daemon, echo, place, placement
from .util import medians, row

SERVERS = ("daemon", "daemon recording a trace", "trio echo", "trio echo on sockio", "C echo")


@contextmanager
def servers():
    """Every server running: name -> (pid, socket path). The recording daemon
    writes its trace into a temporary directory (issue 17's targets "while
    recording a trace")."""
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-trace-") as tmp, \
            daemon() as d, daemon("--record", str(Path(tmp) / "bench.xt")) as r, \
            echo("trio") as t, echo("trio-sockio") as s, echo("c") as c:
        yield {"daemon": (d.pid, d.sockets[0]),
               "daemon recording a trace": (r.pid, r.sockets[0]),
               "trio echo": (t.pid, t.path), "trio echo on sockio": (s.pid, s.path),
               "C echo": (c.pid, c.path)}


def measure(runs: int, running: dict, how) -> dict:
    """how(socket path, pinned) for every server, pinned and unpinned, each
    once to warm up, then `runs` times interleaved: medians keyed (name, pinned)."""
    def one(name, pinned):
        pid, path = running[name]
        place(pid, pinned)
        return how(path, pinned)
    measures = {(name, pinned): functools.partial(one, name, pinned)
                for pinned in (True, False) for name in SERVERS}
    for m in measures.values():
        m()
    return medians(runs, measures)


def rows(label: str, unit: str, got: dict) -> list[dict]:
    """The table rows of one measure's medians; `label` begins each name."""
    out = []
    for pinned in (True, False):
        where = placement(pinned)
        d, recording, trio, sockio, c = (got[name, pinned] for name in SERVERS)
        out += [
            row(f"{label}daemon (ref: trio echo), {where}", d, unit, trio),
            row(f"{label}daemon recording a trace (ref: trio echo), {where}", recording, unit,
                trio),
            row(f"{label}daemon recording a trace (ref: daemon), {where}", recording, unit, d),
            row(f"{label}daemon (ref: trio echo on sockio), {where}", d, unit, sockio),
            row(f"{label}daemon (ref: C echo), {where}", d, unit, c),
            row(f"{label}trio echo on sockio (ref: trio echo), {where}", sockio, unit, trio),
            row(f"{label}trio echo (ref: C echo), {where}", trio, unit, c),
        ]
    return out
