"""The control plane: what a harness may do and a guest may not. Sans-IO.

Requests and replies are msgpack maps on the control socket
(`control.sock`, owner-only, beside the domain sockets). A request is
{"op": NAME, ...arguments}; the reply is {"ok": true, ...results} or
{"ok": false, "error": "why"}. `Control.handle()` takes a decoded request and
returns the reply; the daemon only moves bytes. Operations are listed in
OPERATIONS and documented in the README.
"""

from __future__ import annotations

import logging

import msgpack

from . import hw
from .hw.common import InjectSite
from .hypervisor import Hypervisor, MachineError
from .machine import ConfigError, DomainConfig, format_sbdf, parse_sbdf
from .p2m import P2mType
from .snapshot import SnapshotError

log = logging.getLogger("xenemu.control")

MAX_REQUEST = 1 << 20
MAX_DUMP = 1 << 16          # entries one dump request may read
MAX_DMA = 1 << 20           # bytes one DMA request may move


INJECT_SITES = {"table": InjectSite.TABLE, "flush": InjectSite.FLUSH, "ref": InjectSite.REF}


class RequestError(Exception):
    pass


def _arg(req: dict, name: str, kind, default=...):
    if name not in req:
        if default is ...:
            raise RequestError(f"missing argument {name!r}")
        return default
    value = req[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"{name!r} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise RequestError(f"{name!r} must be {kind.__name__}")
    return value


def _sbdf(req: dict) -> int:
    try:
        return parse_sbdf(_arg(req, "sbdf", str))
    except ConfigError as e:
        raise RequestError(str(e)) from None


class Control:
    def __init__(self, hv: Hypervisor, on_domain_created=None, on_domain_destroyed=None,
                 on_snapshot=None):
        self.hv = hv
        # The daemon opens and closes domain sockets through these, and writes
        # snapshot files: on_snapshot(path or None) returns what to reply.
        self.on_domain_created = on_domain_created
        self.on_domain_destroyed = on_domain_destroyed
        self.on_snapshot = on_snapshot

    def handle(self, req) -> dict:
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "a request is a map with a string 'op'"}
        self.hv.clock.tick()
        handler = getattr(self, "op_" + req["op"], None)
        if handler is None:
            return {"ok": False, "error": f"unknown op {req['op']!r}; ops: {', '.join(OPERATIONS)}"}
        try:
            result = handler(req)
        except (RequestError, MachineError, SnapshotError) as e:
            log.info("control: %s refused: %s", req["op"], e)
            return {"ok": False, "error": str(e)}
        except hw.HwError as e:
            return {"ok": False, "error": f"hardware refused: {e}"}
        except Exception:
            log.exception("control: %s failed", req["op"])
            return {"ok": False, "error": "internal error in the daemon (see its log)"}
        finally:
            if self.hv.injecting:
                self.hv.note_injection(f"control op {req['op']}")
        log.debug("control: %s done", req["op"])
        return {"ok": True, **result}

    # -- machine -----------------------------------------------------------

    def op_info(self, req) -> dict:
        io = self.hv.iommu
        return {
            "iommu": {"address_width": self.hv.config.address_width,
                      "max_iova_addr": io.max_iova_addr,
                      "iotlb_entries": self.hv.config.iotlb_entries,
                      "machine_frames": self.hv.machine.nframes,
                      "frames_used": self.hv.machine.used},
            "domains": [self._domain_info(d) for d in self.hv.domains.values()],
            "quarantined": [format_sbdf(s) for s in sorted(self.hv.quarantined)],
        }

    def _domain_info(self, d) -> dict:
        used, limit = self.hv.iommu.pool_usage(d.table_pool)
        return {"domid": d.domid, "name": d.name, "hardware": d.hardware,
                "table_pages": {"used": used, "limit": limit},
                "iommu": d.iommu_enabled, "memory_pages": d.p2m.nr_pages,
                "contexts": d.nr_contexts,
                "allocated": [c.ctx_no for c in d.contexts if c is not None],
                "devices": {format_sbdf(s): c for s, c in sorted(d.devices.items())}}

    def op_domain_create(self, req) -> dict:
        devices = _arg(req, "devices", list, [])
        try:
            cfg = DomainConfig(domid=_arg(req, "domid", int), name=_arg(req, "name", str, ""),
                               hardware=_arg(req, "hardware", bool, False),
                               iommu=_arg(req, "iommu", bool, True),
                               memory_mib=_arg(req, "memory_mib", int, 64),
                               contexts=_arg(req, "contexts", int, 8),
                               table_pages=_arg(req, "table_pages", int, 1 << 16),
                               devices=tuple(parse_sbdf(s) for s in devices))
        except ConfigError as e:
            raise RequestError(str(e)) from None
        if not 0 <= cfg.domid < 0x7FF0 or not 0 <= cfg.contexts <= 0xFFFF \
                or not 0 <= cfg.table_pages < 1 << 40 \
                or not 0 < cfg.memory_mib <= self.hv.config.memory_mib:
            raise RequestError("domid, contexts or memory_mib out of range")
        d = self.hv.create_domain(cfg)
        extra = self.on_domain_created(d.domid) if self.on_domain_created else {}
        return {"domain": self._domain_info(d), **extra}

    def op_domain_destroy(self, req) -> dict:
        domid = _arg(req, "domid", int)
        self.hv.destroy_domain(domid)
        if self.on_domain_destroyed:
            self.on_domain_destroyed(domid)
        return {}

    def op_device_assign(self, req) -> dict:
        self.hv.assign_device(_sbdf(req), _arg(req, "domid", int))
        return {}

    def op_device_deassign(self, req) -> dict:
        self.hv.deassign_device(_sbdf(req))
        return {}

    def op_p2m_set(self, req) -> dict:
        try:
            type_ = P2mType(_arg(req, "type", str))
        except ValueError:
            raise RequestError(f"type must be one of {[t.value for t in P2mType]}") from None
        if type_ is P2mType.PAGING_IN:
            raise RequestError("paging_in is entered, not set: map a paged_out gfn to start a "
                               "page-in")
        self.hv.set_p2m_type(_arg(req, "domid", int), _arg(req, "gfn", int), type_)
        return {}

    def op_p2m_get(self, req) -> dict:
        d = self.hv.domains.get(_arg(req, "domid", int))
        if d is None:
            raise RequestError("no such domain")
        gfn = _arg(req, "gfn", int)
        return {"type": d.p2m.type_of(gfn).value}

    def op_mem_read(self, req) -> dict:
        data = self.hv.read_guest(_arg(req, "domid", int), _arg(req, "gfn", int),
                                  _arg(req, "offset", int, 0), _arg(req, "length", int))
        return {"data": data}

    def op_mem_write(self, req) -> dict:
        self.hv.write_guest(_arg(req, "domid", int), _arg(req, "gfn", int),
                            _arg(req, "offset", int, 0), _arg(req, "data", bytes))
        return {}

    def op_dma(self, req) -> dict:
        sbdf, addr = _sbdf(req), _arg(req, "addr", int)
        if not 0 <= addr < 1 << 64:
            raise RequestError("addr out of range")
        if _arg(req, "write", bool, False):
            data = _arg(req, "data", bytes)
            if len(data) > MAX_DMA:
                raise RequestError(f"at most {MAX_DMA} bytes per DMA")
            done, got, fault = self.hv.dma(sbdf, addr, data=data)
        else:
            wanted = _arg(req, "length", int)
            if not 0 <= wanted <= MAX_DMA:
                raise RequestError(f"length must be 0..{MAX_DMA}")
            done, got, fault = self.hv.dma(sbdf, addr, length=wanted)
        return {"done": done, "data": got, "faulted": fault is not None,
                "fault": self._fault(fault) if fault else None}

    @staticmethod
    def _fault(rec) -> dict:
        return {"sbdf": format_sbdf(rec.sbdf), "addr": rec.addr, "kind": rec.kind.name,
                "write": rec.write}

    def op_faults(self, req) -> dict:
        recs, overflow = self.hv.iommu.faults()
        if _arg(req, "clear", bool, False):
            self.hv.iommu.clear_faults()
        return {"faults": [self._fault(r) for r in recs], "overflow": overflow}

    def op_contexts(self, req) -> dict:
        d = self.hv.domains.get(_arg(req, "domid", int))
        if d is None:
            raise RequestError("no such domain")
        out = []
        for ctx in d.contexts:
            if ctx is None:
                continue
            info = self.hv.iommu.context_info(ctx.hw)
            out.append({"ctx_no": ctx.ctx_no, "hw_id": ctx.hw, "dying": ctx.dying,
                        "devices": [format_sbdf(s) for s in sorted(ctx.devices)],
                        "mapped": info.mapped, "table_pages": info.tables,
                        "iotlb": info.counters._asdict()})
        return {"contexts": out}

    def op_dump(self, req) -> dict:
        """Entries [dfn, dfn + count) of a context: gfns and permissions as
        packed little-endian arrays (u64 gfn, u8 perm; perm 0 = not mapped)."""
        d = self.hv.domains.get(_arg(req, "domid", int))
        if d is None:
            raise RequestError("no such domain")
        ctx = d.context(_arg(req, "ctx_no", int))
        if ctx is None:
            raise RequestError("context not allocated")
        dfn, count = _arg(req, "dfn", int, 0), _arg(req, "count", int, 4096)
        if not 0 < count <= MAX_DUMP:
            raise RequestError(f"count must be 1..{MAX_DUMP}")
        mfns, perms = self.hv.iommu.lookup_run(ctx.hw, dfn, count)
        # Report guest frames, as lookup_page does: mfn -> gfn through the M2P
        # (meaningless where perm is 0, i.e. nothing is mapped).
        gfns = self.hv.machine.m2p(mfns)
        return {"dfn": dfn, "gfns": gfns.tobytes(), "perms": perms.tobytes()}

    def op_counters(self, req) -> dict:
        return {"iotlb": self.hv.iommu.counters()._asdict()}

    def op_fail_nth(self, req) -> dict:
        """Fault injection as Linux's fail-nth: with `nth` (0 disarms), the
        nth event at one of `sites` (default all) fails once. Replies with
        the injector's state (also the only thing it does without `nth`)."""
        if "nth" in req:
            nth = _arg(req, "nth", int)
            names = _arg(req, "sites", list, list(INJECT_SITES))
            unknown = [n for n in names if n not in INJECT_SITES]
            if unknown or not names or not 0 <= nth < 1 << 63:
                raise RequestError(f"sites are a non-empty list of {', '.join(INJECT_SITES)}; "
                                   f"nth is 0 (disarm) or more")
            sites = 0
            for n in names:
                sites |= INJECT_SITES[n]
            self.hv.arm_injection(sites, nth)
        f = self.hv.machine.injection()
        return {"sites": [n for n, bit in INJECT_SITES.items() if f.sites & bit],
                "remaining": f.remaining, "seen": f.seen,
                "fired": f.fired.name.lower() if f.fired else None}

    def op_snapshot(self, req) -> dict:
        path = _arg(req, "path", str, None)
        if self.on_snapshot is None:
            raise RequestError("only the daemon writes snapshots")
        return self.on_snapshot(path)

    def op_check(self, req) -> dict:
        problems = self.hv.check_invariants()
        return {"consistent": not problems, "problems": problems}


OPERATIONS = sorted(name[3:] for name in dir(Control) if name.startswith("op_"))


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, max_buffer_size=MAX_REQUEST, strict_map_key=False)
