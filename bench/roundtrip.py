"""1. Round trip of one hypercall, one request in flight, from the C client
(build/bench_load): lookup_page, and map_pages of one page followed by its
unmap_pages, against the daemon and against the bare echo servers in C and
in trio that answer the same frames with no work.

Each figure twice, interleaved in the same runs: with the client and the
server pinned to one CPU (their CPU cost: no cross-CPU wake-up), and
unpinned (what a user sees on this machine). The daemon's own work is
daemon / trio echo (target: at most 1.0x pinned); trio echo / C echo is
what trio and Python cost before any work.
"""
from .serve import daemon, echo, load, place, placement
from .util import medians, row

OPS = (("lookup", "lookup_page"), ("mapunmap", "map_pages(1) + unmap_pages"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 50) if smoke else (7, 2000)
    rows = []
    with daemon() as d, echo("c") as c_echo, echo("trio") as trio_echo:
        servers = {"daemon": (d.pid, d.sockets[0]), "trio echo": (trio_echo.pid, trio_echo.path),
                   "C echo": (c_echo.pid, c_echo.path)}

        def rtt(server, op, count, pinned):
            pid, path = servers[server]
            place(pid, pinned)
            return load("rtt", path, op, count, pinned=pinned)["median_us"]

        for op, label in OPS:
            measures = {(server, pinned): (lambda s=server, p=pinned: rtt(s, op, count, p))
                        for pinned in (True, False) for server in servers}
            for measure in measures.values():  # warm up: first connections, caches
                measure()
            us = medians(runs, measures)
            for pinned in (True, False):
                where = placement(pinned)
                daemon_us, trio_us, c_us = (us[s, pinned] for s in servers)
                rows += [
                    row(f"round trip {label}, daemon (ref: trio echo), {where}", daemon_us, "us",
                        trio_us),
                    row(f"round trip {label}, daemon (ref: C echo), {where}", daemon_us, "us",
                        c_us),
                    row(f"round trip {label}, trio echo (ref: C echo), {where}", trio_us, "us",
                        c_us),
                ]
        for pid, _ in servers.values():
            place(pid, False)
    return rows
