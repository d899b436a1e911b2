"""1. Round trip of one hypercall, one request in flight, from the C client
(build/bench_load): lookup_page, and map_pages of one page followed by its
unmap_pages, against the daemon and against the bare echo servers in C and
in trio that answer the same frames with no work.

Each figure pinned to one CPU (the CPU cost: no cross-CPU wake-up) and
unpinned (what a user sees), interleaved in the same runs (bench.compare).
The daemon's own work is daemon / trio echo (target: at most 1.0x pinned);
trio echo / C echo is what trio and Python cost before any work.
"""
from . import compare
from .serve import load

OPS = (("lookup", "lookup_page"), ("mapunmap", "map_pages(1) + unmap_pages"))


def run(smoke: bool) -> list[dict]:
    runs, count = (1, 50) if smoke else (7, 2000)
    out = []
    with compare.servers() as running:
        for op, label in OPS:
            us = compare.measure(runs, running, lambda path, pinned, op=op: load(
                "rtt", path, op, count, pinned=pinned)["median_us"])
            out += compare.rows(f"round trip {label}, ", "us", us)
    return out
