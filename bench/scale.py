"""6. Scale, through the daemon: a million pages mapped in one context
(dom0's 1 GiB mapped four times over, 256 pages a call). Its page-table
bytes per page against the hardware's own figure (8 bytes a leaf entry plus
the upper levels), the daemon's resident growth against those table pages
(target: within 1.1x, no growth per mapping beyond them), then the time to
free the context (free_context, cut by the daemon into -ERESTART rounds of
64K leaf slots) and the longest round trip another domain's lookup_page
sees meanwhile (target: 10 ms), against its usual round trip.
"""
import subprocess
import time

from xenemu import abi
from xenemu.client import XenemuClient

from .serve import BUILD, daemon
from .util import row

DOM0_PAGES = 1 << 18        # the default machine's dom0: 1 GiB
SLOW_US = 200               # the probe reports round trips longer than this


def _hardware_bytes(pages: int) -> int:
    """A 3-level VT-d table mapping dfns 0..pages-1: leaves, middles, root."""
    leaves = -(-pages // 512)
    return (leaves + -(-leaves // 512) + 1) * 4096


def rev1_maps(ctx: int, pages: int) -> list[bytes]:
    """Revision-1 map_pages ops for dfns 0..pages-1, 256 pages each, read/write,
    their gfns wrapping around dom0's memory."""
    return [abi.encode_op(abi.IOMMUOP_map_pages, ctx, 3, "map_pages",
                          gfn=dfn % DOM0_PAGES, dfn=dfn, nr_pages=256)
            for dfn in range(0, pages, 256)]


def run(smoke: bool) -> list[dict]:
    pages = 1 << 14 if smoke else 1 << 20
    label = f"{pages >> 20}M" if pages >= 1 << 20 else f"{pages >> 10}K"
    with daemon() as d, XenemuClient(d.sockets[0]) as xen:
        other = d.ctl("domain_create", domid=2, hardware=True, memory_mib=16,
                      contexts=1)["socket"]
        ctx = xen.alloc_context().op.ctx_no
        rss0 = d.rss()
        maps = rev1_maps(ctx, pages)
        t0 = time.perf_counter()
        if any(r.ret for r in xen.pipeline(maps)):
            raise RuntimeError("a map_pages call failed")
        map_s = time.perf_counter() - t0
        rss1 = d.rss()
        info = next(c for c in d.ctl("contexts", domid=0)["contexts"] if c["ctx_no"] == ctx)
        tables = info["table_pages"] * 4096
        assert info["mapped"] == pages

        probe_s = 1.0 if smoke else 3.0
        probe = subprocess.Popen([BUILD / "bench_load", "probe", other, str(probe_s),
                                  str(SLOW_US)], stdout=subprocess.PIPE, text=True)
        time.sleep(probe_s / 3)
        t_free = time.monotonic()
        if xen.free_context(ctx).ret:
            raise RuntimeError("free_context failed")
        t_freed = time.monotonic()
        out = probe.communicate(timeout=60)[0].splitlines()
        rss2 = d.rss()
    slow = [(float(a), float(b)) for _, a, b in (line.split() for line in out[:-1])]
    during = [(b - a) * 1e3 for a, b in slow if a < t_freed and b > t_free]
    summary = out[-1].split()
    usual_ms = float(summary[summary.index("median_us") + 1]) / 1e3
    # No probe round trip over SLOW_US overlapped the free: the pause is below it.
    pause_ms = max(during) if during else SLOW_US / 1e3
    return [
        row(f"map {label} pages via the daemon, 256 a call", pages / map_s, "pages/s"),
        row(f"table bytes/page, {label} mapped (ref: VT-d figure)", tables / pages, "B",
            _hardware_bytes(pages) / pages),
        row(f"daemon RSS growth, {label} mapped (ref: its table pages)", (rss1 - rss0) / 2**20,
            "MiB", tables / 2**20),
        row(f"free_context of {label} pages via the daemon", (t_freed - t_free) * 1e3, "ms"),
        row("daemon RSS given back by the free (ref: table pages)", (rss1 - rss2) / 2**20,
            "MiB", tables / 2**20),
        row("longest d2 lookup_page during the free (ref: its median)", pause_ms, "ms",
            usual_ms),
    ]
