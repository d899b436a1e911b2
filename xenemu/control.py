"""The control plane: what a harness may do and a guest may not. Sans-IO.

Requests and replies are msgpack maps on the control socket
(`control.sock`, owner-only, beside the domain sockets). A request is
{"op": NAME, ...arguments}; the reply is {"ok": true, ...results} or
{"ok": false, "error": "why"}. `Control.handle()` takes a decoded request and
returns the reply; xenemu.engine drives it (clock tick, fault-injection notes,
recording) and turns the daemon's callbacks into effects. Operations are listed in
OPERATIONS and documented in the README.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import msgpack
import msgspec

from . import hw, hypercalls
from .errno import result_name
from .hypercalls import iommu_op_dirty
from .hypercalls.common import UNKNOWN, HypercallError
from .hw.common import InjectSite
from .hypervisor import Hypervisor, MachineError
from .machine import DomainFile, MiB, domain_from_file
from .pci import Sbdf, format_sbdf
from .p2m import P2mType
from .schema import U16, U64, DomId, InputError, Text, convert
from .snapshot import SnapshotError

log = logging.getLogger("xenemu.control")

MAX_REQUEST = 1 << 20
MAX_DUMP = 1 << 16          # entries one dump request may read
MAX_DMA = 1 << 20           # bytes one DMA request may move
RECENT_FAULTS = 10          # the fault log's newest records `stats` replies with


INJECT_SITES = {"table": InjectSite.TABLE, "flush": InjectSite.FLUSH, "ref": InjectSite.REF}


class RequestError(Exception):
    pass


# -- each op's arguments, declared once ------------------------------------------------
# A request's keys other than "op" must be its op's fields: an unknown
# argument is refused rather than ignored (a misspelt `length` would
# otherwise read the default).

Gfn = U64
Offset = Annotated[int, msgspec.Meta(ge=0, le=hw.PAGE_SIZE)]
SiteName = Literal["table", "flush", "ref"]


class Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An op without arguments."""


class DomainArgs(Args):
    domid: DomId


class DomainCreateArgs(DomainFile, forbid_unknown_fields=True, kw_only=True):
    """As a [[domain]] of the machine file, with the op's own defaults."""
    memory_mib: MiB = 64
    contexts: U16 = 8


class DeviceArgs(Args):
    sbdf: Sbdf


class DeviceAssignArgs(DeviceArgs, kw_only=True):
    domid: DomId


class GfnArgs(DomainArgs, kw_only=True):
    gfn: Gfn


class P2mSetArgs(GfnArgs, kw_only=True):
    type: str
    # type=foreign only (and required there): whose frame, at which of its gfns.
    owner: DomId | None = None
    owner_gfn: Gfn | None = None


class MemReadArgs(GfnArgs, kw_only=True):
    offset: Offset = 0
    length: Offset


class MemWriteArgs(GfnArgs, kw_only=True):
    offset: Offset = 0
    data: Annotated[bytes, msgspec.Meta(max_length=hw.PAGE_SIZE)]


class DmaArgs(DeviceArgs, kw_only=True):
    addr: U64
    write: bool = False
    # A read takes `length`, a write `data`; the other is tolerated (the
    # recorded traces send both).
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_DMA)] | None = None
    length: Annotated[int, msgspec.Meta(ge=0, le=MAX_DMA)] | None = None
    # A request with a PASID (nested machines, abi/NESTED.md).
    pasid: Annotated[int, msgspec.Meta(ge=1, le=hw.PASID_MAX)] | None = None


class ReservedReadArgs(Args, kw_only=True):
    pfn: Gfn
    offset: Offset = 0
    length: Offset


class FaultsArgs(Args):
    clear: bool = False


class DumpArgs(DomainArgs, kw_only=True):
    ctx_no: U16
    dfn: U64 = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_DUMP)] = 4096


class FailNthArgs(Args):
    nth: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] | None = None
    sites: Annotated[list[SiteName], msgspec.Meta(min_length=1, max_length=8)] = \
        msgspec.field(default_factory=lambda: list(INJECT_SITES))


class SnapshotArgs(Args):
    path: Text | None = None


ARGS: dict[str, type[msgspec.Struct]] = {
    "info": Args, "counters": Args, "check": Args, "stats": Args,
    "domain_create": DomainCreateArgs, "domain_destroy": DomainArgs,
    "device_assign": DeviceAssignArgs, "device_deassign": DeviceArgs,
    "p2m_set": P2mSetArgs, "p2m_get": GfnArgs,
    "mem_read": MemReadArgs, "mem_write": MemWriteArgs, "dma": DmaArgs,
    "faults": FaultsArgs, "contexts": DomainArgs, "dump": DumpArgs,
    "fail_nth": FailNthArgs, "snapshot": SnapshotArgs,
    "reserved_regions": DeviceArgs, "reserved_read": ReservedReadArgs,
}


class ReadDirtyArgs(DomainArgs, kw_only=True):
    """Dirty tracking's read-and-clear (abi/NESTED.md), as sub-op 13."""
    ctx_no: U16
    dfn: U64 = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=iommu_op_dirty.MAX_PAGES)]
    clear: bool = True


ARGS["read_dirty"] = ReadDirtyArgs


class Control:
    def __init__(self, hv: Hypervisor, on_domain_created=None, on_domain_destroyed=None,
                 on_snapshot=None):
        self.hv = hv
        # The daemon opens and closes domain sockets through these, and writes
        # snapshot files: on_snapshot(path or None) returns what to reply.
        self.on_domain_created = on_domain_created
        self.on_domain_destroyed = on_domain_destroyed
        self.on_snapshot = on_snapshot
        self.started = time.monotonic()     # `stats`' uptime

    def handle(self, req) -> dict:
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "a request is a map with a string 'op'"}
        op = req["op"]
        handler = getattr(self, "op_" + op, None) if op in ARGS else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op[:64]!r}; ops: {', '.join(OPERATIONS)}"}
        try:
            args = convert({k: v for k, v in req.items() if k != "op"}, ARGS[op], op)
            result = handler(args)
        except (RequestError, MachineError, SnapshotError, InputError) as e:
            log.info("control: %s refused: %s", req["op"], e)
            return {"ok": False, "error": str(e)}
        except hw.HwError as e:
            return {"ok": False, "error": f"hardware refused: {e}"}
        except Exception:
            log.exception("control: %s failed", req["op"])
            return {"ok": False, "error": "internal error in the daemon (see its log)"}
        log.debug("control: %s done", req["op"])
        return {"ok": True, **result}

    # -- machine -----------------------------------------------------------

    def op_info(self, args: Args) -> dict:
        io = self.hv.iommu
        return {
            # The hypercall ABI the machine serves (a client checks it speaks it).
            "abi": {"pv_iommu_revision": self.hv.config.pv_iommu_revision},
            "iommu": {"address_width": self.hv.config.address_width,
                      "max_iova_addr": io.max_iova_addr,
                      "iotlb_entries": self.hv.config.iotlb_entries,
                      "machine_frames": self.hv.memory.nframes,
                      "frames_used": self.hv.memory.used},
            "domains": [self._domain_info(d) for d in self.hv.domains.values()],
            "quarantined": [format_sbdf(s) for s in sorted(self.hv.quarantined)],
            # Calls Xen v7 would have crashed, hung or misled on, by hazard name.
            "hazards": dict(sorted(self.hv.hazards.items())),
        }

    def _domain_info(self, d) -> dict:
        used, limit = self.hv.iommu.pool_usage(d.table_pool)
        used0, limit0 = self.hv.iommu.pool_usage(d.default_pool)
        return {"domid": d.domid, "name": d.name, "hardware": d.hardware,
                "table_pages": {"used": used, "limit": limit},
                "default_table_pages": {"used": used0, "limit": limit0},
                "iommu": d.iommu_enabled, "memory_pages": d.p2m.nr_pages,
                "contexts": d.nr_contexts,
                "allocated": [c.ctx_no for c in d.contexts if c is not None],
                "devices": {format_sbdf(s): c for s, c in sorted(d.devices.items())}}

    def op_domain_create(self, args: DomainCreateArgs) -> dict:
        cfg = domain_from_file(args)
        if cfg.memory_mib > self.hv.config.memory_mib:
            raise RequestError(f"domain_create: memory_mib: {cfg.memory_mib} MiB is more than "
                               f"the machine's {self.hv.config.memory_mib}")
        d = self.hv.create_domain(cfg)
        extra = self.on_domain_created(d.domid) if self.on_domain_created else {}
        return {"domain": self._domain_info(d), **extra}

    def op_domain_destroy(self, args: DomainArgs) -> dict:
        self.hv.destroy_domain(args.domid)
        if self.on_domain_destroyed:
            self.on_domain_destroyed(args.domid)
        return {}

    def op_device_assign(self, args: DeviceAssignArgs) -> dict:
        self.hv.assign_device(args.sbdf, args.domid)
        return {}

    def op_device_deassign(self, args: DeviceArgs) -> dict:
        self.hv.deassign_device(args.sbdf)
        return {}

    def op_p2m_set(self, args: P2mSetArgs) -> dict:
        try:
            type_ = P2mType(args.type)
        except ValueError:
            raise RequestError(f"type must be one of {[t.value for t in P2mType]}") from None
        if type_ is P2mType.PAGING_IN:
            raise RequestError("paging_in is entered, not set: map a paged_out gfn to start a "
                               "page-in")
        if type_ is P2mType.FOREIGN:
            if args.owner is None or args.owner_gfn is None:
                raise RequestError("type=foreign needs both owner and owner_gfn")
            self.hv.set_p2m_foreign(args.domid, args.gfn, args.owner, args.owner_gfn)
        elif args.owner is not None or args.owner_gfn is not None:
            raise RequestError("owner and owner_gfn go with type=foreign only")
        else:
            self.hv.set_p2m_type(args.domid, args.gfn, type_)
        return {}

    def op_p2m_get(self, args: GfnArgs) -> dict:
        p2m = self._domain(args.domid).p2m
        t = p2m.type_of(args.gfn)
        if t is P2mType.FOREIGN:
            owner, owner_gfn = p2m.foreign[args.gfn]
            return {"type": t.value, "owner": owner, "owner_gfn": owner_gfn}
        return {"type": t.value}

    def _domain(self, domid: int):
        d = self.hv.domains.get(domid)
        if d is None:
            raise RequestError("no such domain")
        return d

    def op_mem_read(self, args: MemReadArgs) -> dict:
        data = self.hv.read_guest(args.domid, args.gfn, args.offset, args.length)
        return {"data": data}

    def op_mem_write(self, args: MemWriteArgs) -> dict:
        self.hv.write_guest(args.domid, args.gfn, args.offset, args.data)
        return {}

    def op_reserved_regions(self, args: DeviceArgs) -> dict:
        """A device's reserved regions, as virtio-iommu's probe reports them."""
        if self.hv.owner_of(args.sbdf) is None and args.sbdf not in self.hv.quarantined:
            raise RequestError(f"no device {format_sbdf(args.sbdf)}")
        return {"sbdf": format_sbdf(args.sbdf),
                "regions": [{"start": first, "end": last, "kind": kind}
                            for first, last, kind in self.hv.reserved_regions(args.sbdf)]}

    def op_reserved_read(self, args: ReservedReadArgs) -> dict:
        return {"data": self.hv.read_reserved(args.pfn, args.offset, args.length)}

    def op_dma(self, args: DmaArgs) -> dict:
        sbdf = args.sbdf
        if args.write:
            if args.data is None:
                raise RequestError("dma: data: a write needs data")
            done, got, fault = self.hv.dma(sbdf, args.addr, data=args.data,
                                           pasid=args.pasid or 0)
        else:
            if args.length is None:
                raise RequestError("dma: length: a read needs a length")
            done, got, fault = self.hv.dma(sbdf, args.addr, length=args.length,
                                           pasid=args.pasid or 0)
        # A DMA waiting on a page request (abi/NESTED.md, I/O page faults): its group.
        return {"done": done, "data": got, "faulted": fault is not None,
                "fault": self._fault(fault) if fault else None,
                "page_request": self.hv.iommu.dma_pending}

    @staticmethod
    def _fault(rec) -> dict:
        return {"sbdf": format_sbdf(rec.sbdf), "addr": rec.addr, "kind": rec.kind.name,
                "write": rec.write}

    def op_faults(self, args: FaultsArgs) -> dict:
        recs, overflow = self.hv.iommu.faults()
        if args.clear:
            self.hv.iommu.clear_faults()
        return {"faults": [self._fault(r) for r in recs], "overflow": overflow}

    def op_contexts(self, args: DomainArgs) -> dict:
        out = []
        for ctx in self._domain(args.domid).contexts:
            if ctx is None:
                continue
            info = self.hv.iommu.context_info(ctx.hw_id)
            out.append({"ctx_no": ctx.ctx_no, "hw_id": ctx.hw_id, "dying": ctx.dying,
                        "devices": [format_sbdf(s) for s in sorted(ctx.devices)],
                        "mapped": info.mapped, "table_pages": info.tables,
                        "iotlb": info.counters._asdict()})
            if ctx.nested:
                out[-1]["nested"] = {"stage2": ctx.parent, "pgtable_gfn": ctx.s1_root,
                                     "pasids": [[format_sbdf(s), p] for s, p in sorted(ctx.pasids)]}
        return {"contexts": out}

    def op_dump(self, args: DumpArgs) -> dict:
        """Entries [dfn, dfn + count) of a context: gfns and permissions as
        packed little-endian arrays (u64 gfn, u8 perm; perm 0 = not mapped)."""
        ctx = self._domain(args.domid).context(args.ctx_no)
        if ctx is None:
            raise RequestError("context not allocated")
        if ctx.nested:
            raise RequestError(f"context {ctx.ctx_no} is nested: its stage 1 is the guest's "
                               f"table at gfn {ctx.s1_root:#x} (mem_read it)")
        dfn, count = args.dfn, args.count
        mfns, perms = self.hv.iommu.lookup_run(ctx.hw_id, dfn, count)
        # Report guest frames, as lookup_page does: mfn -> gfn through the M2P
        # (meaningless where perm is 0, i.e. nothing is mapped).
        gfns = self.hv.memory.m2p(mfns)
        return {"dfn": dfn, "gfns": gfns.tobytes(), "perms": perms.tobytes()}

    def op_stats(self, args: Args) -> dict:
        """What `xenemu top` shows, read from counters the machine keeps
        anyway (Domain.call_counts; in C, the contexts' counts and the IOTLB
        counters of the domain's page-table pools, which outlive its freed
        contexts) and cheap to ask for every second: per domain, hypercalls
        finished by sub-op and result, its contexts, pages and IOTLB counts;
        the IOMMU's IOTLB counters; the fault log's size and newest records.
        `time` is the daemon's monotonic clock, so that rates between two
        replies are exact whatever the request took."""
        abis = hypercalls.abis(self.hv.config.pv_iommu_revision)
        recs, overflow = self.hv.iommu.faults()
        now = time.monotonic()
        return {"time": now, "uptime": now - self.started,
                "iotlb": self.hv.iommu.counters()._asdict(),
                "domains": [self._domain_stats(d, abis) for d in self.hv.domains.values()],
                "faults": {"logged": len(recs), "overflow": overflow,
                           "recent": [self._fault(r) for r in recs[-RECENT_FAULTS:]]}}

    def _domain_stats(self, d, abis) -> dict:
        io = self.hv.iommu
        infos = [io.context_info(c.hw_id) for c in d.contexts if c is not None]
        # Its two pools' counters: of its contexts, freed ones included.
        iotlb = [io.pool_counters(d.default_pool), io.pool_counters(d.table_pool)]
        calls = []
        for (number, subop, ret), count in sorted(d.call_counts().items()):
            abi = abis.get(number)
            calls.append({"hypercall": abi.name if abi else "unknown",
                          "subop": abi.subops[subop].name if abi and subop != UNKNOWN
                          else "unknown",
                          "result": result_name(ret) if ret < 0 else "ok", "count": count})
        used, limit = io.pool_usage(d.table_pool)
        used0, _ = io.pool_usage(d.default_pool)
        return {"domid": d.domid, "name": d.name, "calls": calls,
                "contexts": len(infos), "mapped": sum(i.mapped for i in infos),
                "table_pages": {"used": used, "limit": limit}, "default_table_pages": used0,
                "iotlb": {"hits": sum(c.hits for c in iotlb),
                          "misses": sum(c.misses for c in iotlb)}}

    def op_counters(self, args: Args) -> dict:
        return {"iotlb": self.hv.iommu.counters()._asdict()}

    def op_fail_nth(self, args: FailNthArgs) -> dict:
        """Fault injection as Linux's fail-nth: with `nth` (0 disarms), the
        nth event at one of `sites` (default all) fails once. Replies with
        the injector's state (also the only thing it does without `nth`)."""
        if args.nth is not None:
            sites = 0
            for name in args.sites:
                sites |= INJECT_SITES[name]
            self.hv.arm_injection(sites, args.nth)
        f = self.hv.memory.injection()
        return {"sites": [n for n, bit in INJECT_SITES.items() if f.sites & bit],
                "remaining": f.remaining, "seen": f.seen,
                "fired": f.fired.name.lower() if f.fired else None}

    def op_snapshot(self, args: SnapshotArgs) -> dict:
        if self.on_snapshot is None:
            raise RequestError("only the daemon writes snapshots")
        return self.on_snapshot(args.path)

    def op_check(self, args: Args) -> dict:
        problems = self.hv.check_invariants()
        reply = {"consistent": not problems, "problems": problems}
        if self.hv.config.nested:   # what guests did wrong that hardware lets them (abi/NESTED.md)
            reply["guest_bugs"] = self.hv.contexts.guest_bugs()
        return reply

    def op_read_dirty(self, args: ReadDirtyArgs) -> dict:
        """Bitmaps of pages [dfn, dfn + count) of a context with dirty
        tracking, bit i (byte i // 8, bit i % 8) for page dfn + i: `dirty`
        (D, cleared unless clear is false) and `accessed` (A, kept)."""
        try:
            ctx = iommu_op_dirty.tracked_context(self._domain(args.domid), args.ctx_no)
            iommu_op_dirty.check_range(self.hv, args.dfn, args.count)
        except HypercallError as e:
            raise RequestError(f"read_dirty: {e.why}") from None
        bits, accessed, n = self.hv.iommu.read_dirty(ctx.hw_id, args.dfn, args.count, args.clear)
        return {"dfn": args.dfn, "count": args.count, "dirty": bytes(bits),
                "accessed": bytes(accessed), "nr_dirty": n}


OPERATIONS = sorted(ARGS)
assert OPERATIONS == sorted(n[3:] for n in dir(Control) if n.startswith("op_")), "ARGS lists every op"


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, max_buffer_size=MAX_REQUEST, strict_map_key=False)
