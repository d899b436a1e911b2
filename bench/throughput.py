"""2. Throughput with many requests in flight: lookup_page calls from the C
load generator pipelined on one connection, and spread over 8 connections,
against the daemon and against the trio echo server under the same load
(target: the daemon at least half the echo's rate). The C echo shows the
socket's own limit."""
from .serve import daemon, echo, load
from .util import medians, row

LOADS = ((1, 64, "1 connection, 64 in flight"), (8, 8, "8 connections, 8 in flight each"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 400) if smoke else (5, 60_000)
    rows = []
    with daemon() as d, echo("c") as c_echo, echo("trio") as trio_echo:
        servers = {"daemon": d.sockets[0], "trio echo": trio_echo, "C echo": c_echo}
        for conns, window, label in LOADS:
            def rate(path, conns=conns, window=window):
                got = load("pipe", path, conns, window, count)
                return got["ops"] / got["seconds"]
            rate(d.sockets[0])  # warm up
            per_s = medians(runs, {name: (lambda p=path: rate(p)) for name, path in servers.items()})
            rows += [
                row(f"lookup_page, {label}: daemon (ref: trio echo)", per_s["daemon"], "calls/s",
                    per_s["trio echo"]),
                row(f"lookup_page, {label}: trio echo (ref: C echo)", per_s["trio echo"],
                    "calls/s", per_s["C echo"]),
            ]
    return rows
