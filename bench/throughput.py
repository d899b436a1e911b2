"""2. Throughput with many requests in flight: lookup_page calls from the C
load generator pipelined on one connection, and spread over 8 connections,
against the daemon and against the trio and C echo servers under the same
load (target: the daemon at least 1.5x / 1.0x the trio echo's rate). Each
figure with the load generator and the server pinned to one CPU and
unpinned, interleaved in the same runs (see bench/roundtrip.py)."""
from .serve import daemon, echo, load, place, placement
from .util import medians, row

LOADS = ((1, 64, "1 connection, 64 in flight"), (8, 8, "8 connections, 8 in flight each"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 400) if smoke else (5, 60_000)
    rows = []
    with daemon() as d, echo("c") as c_echo, echo("trio") as trio_echo:
        servers = {"daemon": (d.pid, d.sockets[0]), "trio echo": (trio_echo.pid, trio_echo.path),
                   "C echo": (c_echo.pid, c_echo.path)}

        def rate(server, conns, window, pinned):
            pid, path = servers[server]
            place(pid, pinned)
            got = load("pipe", path, conns, window, count, pinned=pinned)
            return got["ops"] / got["seconds"]

        for conns, window, label in LOADS:
            measures = {(server, pinned): (lambda s=server, p=pinned: rate(s, conns, window, p))
                        for pinned in (True, False) for server in servers}
            measures["daemon", False]()  # warm up
            per_s = medians(runs, measures)
            for pinned in (True, False):
                where = placement(pinned)
                daemon_s, trio_s, c_s = (per_s[s, pinned] for s in servers)
                rows += [
                    row(f"lookup_page, {label}: daemon (ref: trio echo), {where}", daemon_s,
                        "calls/s", trio_s),
                    row(f"lookup_page, {label}: daemon (ref: C echo), {where}", daemon_s,
                        "calls/s", c_s),
                    row(f"lookup_page, {label}: trio echo (ref: C echo), {where}", trio_s,
                        "calls/s", c_s),
                ]
        for pid, _ in servers.values():
            place(pid, False)
    return rows
