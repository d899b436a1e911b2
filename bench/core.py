"""3. map_pages and unmap_pages of 256 pages inside the daemon's core: the
engine (Engine.complete(): rounds, REPLY frames) on ready-decoded calls (no
socket, no request decoding), with the C hardware layer against the
pure-Python reference (target: 30x per page).
The context's tables exist already (a warm-up pass maps and unmaps the same
dfns), as for a driver recycling its DMA addresses. lookup_page shows what
one small hypercall costs the core.
"""
import time

from xenemu import abi, hw
from xenemu.engine import Engine
from xenemu.hw import reference
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig
from xenemu.trace.text import decode_reply
from xenemu.wire import Call, Region

from .util import medians, row

GADDR = 0x1000
PAGES = 256
DOM0_PAGES = 16384          # 64 MiB: the reference builds its domain in Python
CONFIG = MachineConfig(memory_mib=256, domains=(
    DomainConfig(domid=0, hardware=True, memory_mib=DOM0_PAGES // 256, contexts=1),))


def _call(raw: bytes) -> Call:
    return Call(1, abi.HYPERVISOR_iommu_op, (GADDR,), (Region(GADDR, raw),))


class Rig:
    """A hypervisor on one hardware layer, a context, and n map/unmap calls of
    256 pages at distinct dfns."""

    def __init__(self, hw_impl, n: int):
        self.engine = Engine(Hypervisor(CONFIG, hw_impl=hw_impl))
        ctx = decode_reply(self.engine.complete(0, _call(abi.encode_op(abi.IOMMUOP_alloc_context))))
        self.ctx = abi.decode_op(ctx.regions[0].data).ctx_no
        self.maps = [_call(abi.encode_op(abi.IOMMUOP_map_pages, self.ctx, 3, "map_pages",
                                         gfn=i * PAGES % DOM0_PAGES, dfn=i * PAGES,
                                         nr_pages=PAGES)) for i in range(n)]
        self.unmaps = [_call(abi.encode_op(abi.IOMMUOP_unmap_pages, self.ctx, 0, "unmap_pages",
                                           dfn=i * PAGES, nr_pages=PAGES)) for i in range(n)]
        self.lookup = _call(abi.encode_op(abi.IOMMUOP_lookup_page, 0, 0, "lookup_page", dfn=1))
        self.map_unmap()  # warm-up: the tables now exist

    def timed(self, calls: list[Call]) -> float:
        complete = self.engine.complete
        t0 = time.perf_counter()
        replies = [complete(0, call) for call in calls]
        elapsed = time.perf_counter() - t0
        if any(decode_reply(r).ret for r in set(replies)):
            raise RuntimeError("a benchmark hypercall failed")
        return elapsed

    def map_unmap(self) -> tuple[float, float]:
        """Pages per second: the map calls, then the unmap calls."""
        pages = len(self.maps) * PAGES
        return pages / self.timed(self.maps), pages / self.timed(self.unmaps)

    def lookup_us(self, n: int) -> float:
        return self.timed([self.lookup] * n) / n * 1e6


def run(smoke: bool) -> list[dict]:
    runs, c_calls, ref_calls, lookups = (1, 8, 2, 100) if smoke else (5, 1000, 40, 20_000)
    c, ref = Rig(hw, c_calls), Rig(reference, ref_calls)
    rates = medians(runs, {"c": c.map_unmap, "ref": ref.map_unmap})
    us = medians(runs, {"c": lambda: c.lookup_us(lookups),
                        "ref": lambda: ref.lookup_us(lookups // 20)})
    return [
        row("map_pages 256, hypercall in process (ref: Python hw)", rates["c"][0], "pages/s",
            rates["ref"][0]),
        row("unmap_pages 256, hypercall in process (ref: Python hw)", rates["c"][1], "pages/s",
            rates["ref"][1]),
        row("lookup_page, hypercall in process (ref: Python hw)", us["c"], "us", us["ref"]),
    ]
