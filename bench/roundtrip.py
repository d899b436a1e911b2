"""1. Round trip of one hypercall, one request in flight, from the C client
(build/bench_load): lookup_page, and map_pages of one page followed by its
unmap_pages, against the daemon and against the bare echo servers in C and
in trio that answer the same frames with no work.

The daemon's own work is daemon / trio echo (target: at most 1.3x); trio
echo / C echo is what trio and Python cost before any work.
"""
from .serve import daemon, echo, load
from .util import medians, row

OPS = (("lookup", "lookup_page"), ("mapunmap", "map_pages(1) + unmap_pages"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 50) if smoke else (7, 2000)
    rows = []
    with daemon() as d, echo("c") as c_echo, echo("trio") as trio_echo:
        servers = {"daemon": d.sockets[0], "trio echo": trio_echo, "C echo": c_echo}
        for op, label in OPS:
            for path in servers.values():  # warm up: first connections, caches
                load("rtt", path, op, count // 10 + 1)
            us = medians(runs, {name: (lambda p=path: load("rtt", p, op, count)["median_us"])
                                for name, path in servers.items()})
            rows += [
                row(f"round trip {label}, daemon (ref: trio echo)", us["daemon"], "us",
                    us["trio echo"]),
                row(f"round trip {label}, trio echo (ref: C echo)", us["trio echo"], "us",
                    us["C echo"]),
                row(f"round trip {label}, C echo", us["C echo"], "us"),
            ]
    return rows
