"""2. Throughput with many requests in flight: lookup_page calls from the C
load generator pipelined on one connection, and spread over 8 connections,
against the daemon and against the echo servers under the same load
(target: the daemon at least 1.5x / 1.0x the trio echo's rate), pinned to
one CPU and unpinned, interleaved in the same runs (bench.compare)."""
from . import compare
from .serve import load

LOADS = ((1, 64, "1 connection, 64 in flight"), (8, 8, "8 connections, 8 in flight each"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 400) if smoke else (5, 60_000)
    out = []
    with compare.servers() as running:
        for conns, window, label in LOADS:
            def rate(path, pinned, conns=conns, window=window):
                got = load("pipe", path, conns, window, count, pinned=pinned)
                return got["ops"] / got["seconds"]
            out += compare.rows(f"lookup_page, {label}: ", "calls/s",
                                compare.measure(runs, running, rate))
    return out
