"""Revision 2's map rate, through the daemon: a million pages mapped by
dom0 (a machine file's, with 4 GiB of gfns) in runs of 4096 pages, each run one map_pages call (revision 2 has no
page limit; the daemon cuts a run into rounds of `rev2_pages_per_round`,
4096 by default, and continues it itself), and the whole million in one
call (256 rounds), against revision 1's 256-page calls on a revision-1
daemon, measured in the same run. Calls are pipelined the same way in both
revisions (up to 128 in flight), so the rows compare the daemon's work per
page, not round trips.
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
from .util import row

RUN = 4096                  # revision 2's pages a call
WINDOW = 128                # calls in flight, as XenemuClient.pipeline keeps them
ARENA_ORDER = 13            # 8192 table pages: two contexts of 1M pages (~2060 tables each)


def _rev1_map(pages: int) -> float:
    """Seconds to map `pages` on a revision-1 daemon, 256 pages a call."""
    with daemon() as d, XenemuClient(d.sockets[0]) as xen:
        ctx = xen.alloc_context().op.ctx_no
        maps = rev1_maps(ctx, pages)
        t0 = time.perf_counter()
        if any(r.ret for r in xen.pipeline(maps)):
            raise RuntimeError("a revision-1 map_pages call failed")
        return time.perf_counter() - t0


def _pipeline_v2(xen: RevisionTwoClient, structs: list[bytes]) -> list[int]:
    """The return values of revision-2 map_pages calls, up to WINDOW in flight
    (XenemuClient.pipeline's loop; the request ids come from the client's own
    counter, so its later calls do not reuse them)."""
    ids = [next(xen._ids) for _ in structs]
    rets: dict[int, int] = {}
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
        rets[reply.req_id] = reply.ret
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


def _rev2_map(pages: int) -> tuple[float, float]:
    """Seconds to map `pages` on a revision-2 daemon: in RUN-page calls, then in one call."""
    with tempfile.TemporaryDirectory(prefix="xenemu-bench-") as tmp, \
            daemon("--config", _rev2_machine(pages, Path(tmp) / "rev2.toml")) as d, \
            RevisionTwoClient(d.sockets[0]) as xen:
        runs_ctx, whole_ctx = (xen.alloc_context().op.ctx_no for _ in range(2))
        structs = [_map_struct(runs_ctx, dfn, RUN) for dfn in range(0, pages, RUN)]
        t0 = time.perf_counter()
        if any(_pipeline_v2(xen, structs)):
            raise RuntimeError(f"a revision-2 map_pages call of {RUN} pages failed")
        runs_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = xen.map_pages(whole_ctx, 0, 0, pages)
        whole_s = time.perf_counter() - t0
        if not r.ok or r.op.mapped != pages:
            raise RuntimeError(f"the revision-2 map_pages of {pages} pages failed: {r.name}")
        mapped = {c["ctx_no"]: c["mapped"] for c in d.ctl("contexts", domid=0)["contexts"]}
        assert mapped[runs_ctx] == mapped[whole_ctx] == pages, mapped
        return runs_s, whole_s


def run(smoke: bool) -> list[dict]:
    pages = 1 << 14 if smoke else 1 << 20
    label = f"{pages >> 20}M" if pages >= 1 << 20 else f"{pages >> 10}K"
    rev1 = pages / _rev1_map(pages)
    runs_s, whole_s = _rev2_map(pages)
    return [
        row(f"rev 1: map {label} pages via the daemon, 256 a call", rev1, "pages/s"),
        row(f"rev 2: map {label} pages, {RUN} a call (ref: rev 1)", pages / runs_s, "pages/s",
            rev1),
        row(f"rev 2: map {label} pages in one call (ref: rev 1)", pages / whole_s, "pages/s",
            rev1),
    ]
