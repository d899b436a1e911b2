"""Revision 2's map rate, through the daemon: a million pages mapped by
dom0 (a machine file's, with 4 GiB of gfns) in runs of 4096 pages, each run one map_pages call (revision 2 has no
page limit; the daemon cuts a run into rounds of `rev2_pages_per_round`,
4096 by default, and continues it itself), and the whole million in one
call (256 rounds), against revision 1's 256-page calls on a revision-1
daemon, measured in the same run. Calls are pipelined the same way in both
revisions (up to 128 in flight), so the rows compare the daemon's work per
page, not round trips. Each map is into a new context (freed afterwards,
untimed); each row is the median of REPEATS, the measures interleaved.
"""
import tempfile
import time
from pathlib import Path

from xenemu import abi
from xenemu.client import RevisionTwoClient, XenemuClient, subop_frame
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.wire import encode_call

from .scale import rev1_maps
from .serve import daemon
from .util import medians, row

RUN = 4096                  # revision 2's pages a call
WINDOW = 128                # calls in flight, as XenemuClient.pipeline keeps them
ARENA_ORDER = 12            # 4096 table pages: a context of 1M pages takes ~2060
REPEATS = 5                 # each measure's median of this many, interleaved


def _rev1_map(xen: XenemuClient, pages: int) -> float:
    """Seconds to map `pages` in a new context of a revision-1 daemon, 256 a call."""
    ctx = xen.alloc_context().op.ctx_no
    maps = rev1_maps(ctx, pages)
    t0 = time.perf_counter()
    if any(r.ret for r in xen.pipeline(maps)):
        raise RuntimeError("a revision-1 map_pages call failed")
    seconds = time.perf_counter() - t0
    if xen.free_context(ctx).ret:
        raise RuntimeError("revision-1 free_context failed")
    return seconds


def _pipeline_v2(xen: RevisionTwoClient, structs: list[bytes]) -> list[tuple[int, int]]:
    """(return value, mapped) of revision-2 map_pages calls, up to WINDOW in flight
    (XenemuClient.pipeline's loop; the request ids come from the client's own
    counter, so its later calls do not reuse them)."""
    ids = [next(xen._ids) for _ in structs]
    rets: dict[int, tuple[int, int]] = {}
    sent = 0
    while len(rets) < len(ids):
        ahead = min(len(ids), len(rets) + WINDOW)
        if sent < ahead:
            xen.send_raw(b"".join(
                encode_call(ids[i], abi.HYPERVISOR_iommu_op, *subop_frame(v2.IOMMU_map_pages,
                                                                          structs[i]))
                for i in range(sent, ahead)))
            sent = ahead
        reply = xen.receive_frame()
        rets[reply.req_id] = reply.ret, v2.decode(v2.IOMMU_map_pages, reply.regions[0].data).mapped
    return [rets[i] for i in ids]


def _map_struct(ctx: int, dfn: int, nr: int) -> bytes:
    return v2.encode(v2.SUBOPS_BY_NUMBER[v2.IOMMU_map_pages], ctx_no=ctx, gfn=dfn, dfn=dfn,
                     nr_pages=nr, map_flags=v2.IOMMU_MAP_readable | v2.IOMMU_MAP_writeable)


def _rev2_machine(pages: int, path: Path) -> Path:
    """A revision-2 machine whose dom0 has `pages` contiguous gfns (the one
    call needs them; the default dom0 has 1 GiB), initialised as a toolstack
    would: {4 contexts, 2^ARENA_ORDER table pages}."""
    mib = max(16, pages >> 8)
    path.write_text(f"""pv_iommu_revision = 2
address_width = 48
memory_mib = {mib + 64}

[[domain]]
domid = 0
hardware = true
memory_mib = {mib}
pv_iommu_init = {{ max_ctx_no = 4, arena_order = {ARENA_ORDER} }}
""")
    return path


def _rev2_map(xen: RevisionTwoClient, pages: int, run: int) -> float:
    """Seconds to map `pages` in a new context of a revision-2 daemon, `run` a call."""
    ctx = xen.alloc_context().op.ctx_no
    t0 = time.perf_counter()
    if run == pages:
        r = xen.map_pages(ctx, 0, 0, pages)
        failed = not r.ok or r.op.mapped != pages
    else:
        answers = _pipeline_v2(xen, [_map_struct(ctx, dfn, run) for dfn in range(0, pages, run)])
        failed = any(ret or mapped != run for ret, mapped in answers)
    seconds = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"a revision-2 map_pages call of {run} pages failed")
    if not xen.free_context(ctx).ok:
        raise RuntimeError("revision-2 free_context failed")
    return seconds


def run(smoke: bool) -> list[dict]:
    pages = 1 << 14 if smoke else 1 << 20
    label = f"{pages >> 20}M" if pages >= 1 << 20 else f"{pages >> 10}K"
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-") as tmp, \
            daemon() as d1, XenemuClient(d1.sockets[0]) as rev1, \
            daemon("--config", _rev2_machine(pages, Path(tmp) / "rev2.toml")) as d2, \
            RevisionTwoClient(d2.sockets[0]) as rev2:
        secs = medians(1 if smoke else REPEATS, {
            "rev1": lambda: _rev1_map(rev1, pages),
            "runs": lambda: _rev2_map(rev2, pages, RUN),
            "whole": lambda: _rev2_map(rev2, pages, pages),
        })
    ref = pages / secs["rev1"]
    return [
        row(f"rev 1: map {label} pages via the daemon, 256 a call", ref, "pages/s"),
        row(f"rev 2: map {label} pages, {RUN} a call (ref: rev 1)", pages / secs["runs"],
            "pages/s", ref),
        row(f"rev 2: map {label} pages in one call (ref: rev 1)", pages / secs["whole"],
            "pages/s", ref),
    ]
