"""The `nested` fuzz target: a program for a small revision-2 machine with
nested translation on (abi/NESTED.md). Its instructions are sub-ops 9-15
(13: dirty tracking's read_dirty, over contexts allocated tracking or not, its bitmap in
the frame or anywhere; 14-15: I/O page faults, requests read into a buffer or a bad
handle, answered with any code) with structs steered towards deep paths, the guest's stage-1 entries
written into its memory (tables it points at, tables it does not, entries
pointing beyond its memory, PS bits), DMA with and without a PASID, and
stage-2 changes under the nested contexts (map, unmap, alloc and free of
contexts). Every return must be one the sub-op documents, every DMA
request served, and after the program the invariant check must hold.
"""

from __future__ import annotations

import struct

from xenemu import wire
from xenemu.engine import Engine
from xenemu.errno import XenErrno as E
from xenemu.hypercalls import iommu_op_nested as nest
from xenemu.hypercalls import iommu_op_prq as prq
from xenemu.hypercalls import iommu_op_dirty as dirty
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig
from xenemu.pci import parse_sbdf
from xenemu.trace.text import decode_reply

STEP = 16
GADDR = 0x7F0000000000
DEVICES = ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2")
STRANGER = "0000:02:00.0"           # no domain's
TABLES = tuple(range(0x10, 0x18))   # gfns the guest keeps stage-1 tables in
PAGES = 4 * 256                     # d1's memory
MAX_PASID = 15

COMMON = {-E.EFAULT}
ALLOWED = {
    v2.IOMMU_alloc_nested: {0, -E.EINVAL, -E.ENOENT, -E.ERANGE, -E.ENOSPC},
    v2.IOMMU_flush_nested: {0, -E.EINVAL, -E.ENOENT},
    v2.IOMMU_attach_pasid: {0, -E.EINVAL, -E.ENOENT, -E.EEXIST, -E.ENOSPC},
    v2.IOMMU_detach_pasid: {0, -E.EINVAL, -E.ENOENT},
    v2.IOMMU_map_pages: {0, -E.EINVAL, -E.EADDRINUSE, -E.ENOENT, -E.ENOMEM, -E.ERANGE},
    v2.IOMMU_unmap_pages: {0, -E.EINVAL, -E.ENOENT},
    v2.IOMMU_free_context: {0, -E.EINVAL, -E.ENOENT, -E.EBUSY},
    v2.IOMMU_alloc_context: {0, -E.ENOSPC, -E.ENOMEM},
    prq.IOMMU_read_page_requests: {0, -E.EINVAL, -E.ENOENT},
    prq.IOMMU_page_response: {0, -E.EINVAL, -E.ENOENT},
    dirty.IOMMU_read_dirty: {0, -E.EINVAL, -E.ENOENT, -E.E2BIG, -E.ERANGE},
}
BUFFER = GADDR + 0x1000             # read_page_requests' buffer, when sent


def machine() -> MachineConfig:
    return MachineConfig(pv_iommu_revision=2, nested=True, max_pasid=MAX_PASID, memory_mib=32,
                         check_iotlb=True, domains=(
                             DomainConfig(domid=0, hardware=True, memory_mib=4),
                             DomainConfig(domid=1, memory_mib=PAGES // 256, pv_iommu_init=(4, 4),
                                          devices=tuple(parse_sbdf(s) for s in DEVICES))))


def _struct(subop: int, **fields) -> bytes:
    return v2.encode(v2.SUBOPS_BY_NUMBER[subop], **fields)


def _dev(b: int) -> dict:
    sbdf = parse_sbdf((DEVICES + (STRANGER,))[b % 4])
    return {"seg": sbdf >> 16, "bus": sbdf >> 8 & 0xFF, "devfn": sbdf & 0xFF}


def _call(engine: Engine, subop: int, raw: bytes, *more: wire.Region) -> None:
    call = wire.Call(1, v2.HYPERVISOR_iommu_op, (subop, GADDR, 0, 0, 0),
                     (wire.Region(GADDR, raw), *more))
    ret = decode_reply(engine.complete(1, call)).ret
    assert ret in ALLOWED[subop] | COMMON, (v2.IOMMU_OP.subop_name(subop), ret)


def nested(data: bytes) -> None:
    hv = Hypervisor(machine())
    engine = Engine(hv)
    for pos in range(0, len(data) - STEP + 1, STEP):
        b = data[pos:pos + STEP]
        kind, raw64 = b[0] % 8, int.from_bytes(b[8:16], "little")
        if kind == 0:
            gfn = raw64 if b[3] & 0x80 else TABLES[b[2] % len(TABLES)]
            _call(engine, v2.IOMMU_alloc_nested, _struct(
                v2.IOMMU_alloc_nested, ctx_no=b[1] % 3, pgtable_gfn=gfn,
                nested_flags=b[4] if b[4] == 0xFF else nest.NESTED_PAGE_REQUESTS * (b[4] & 1)))
        elif kind == 1:
            _call(engine, v2.IOMMU_flush_nested, _struct(
                v2.IOMMU_flush_nested, ctx_no=b[1] % 6, flush_type=b[2] % 4,
                pasid=b[3] % (MAX_PASID + 3), nr_pages=b[4], dfn=raw64 if b[5] & 1 else b[5]))
        elif kind == 2:
            _call(engine, v2.IOMMU_attach_pasid, _struct(
                v2.IOMMU_attach_pasid, ctx_no=b[1] % 6, pasid=b[3] % (MAX_PASID + 3), **_dev(b[2])))
        elif kind == 3:
            _call(engine, v2.IOMMU_detach_pasid, _struct(
                v2.IOMMU_detach_pasid, pasid=b[3] % (MAX_PASID + 3), **_dev(b[2])))
        elif kind == 4:
            # A stage-1 entry: to a table, a data page, or beyond d1's memory.
            target = (TABLES[b[3] % len(TABLES)] if b[3] & 0x80 else b[3] % 0x60) \
                if not b[5] & 1 else raw64 % (1 << 40)
            entry = target << 12 | (b[4] & 0x83)
            reply, _ = engine.control({"op": "mem_write", "domid": 1,
                                       "gfn": TABLES[b[1] % len(TABLES)], "offset": 8 * (b[2] % 4),
                                       "data": struct.pack("<Q", entry)})
            assert reply["ok"], reply
        elif kind == 5:
            req = {"op": "dma", "sbdf": DEVICES[b[1] % 3], "addr": (b[3] % 8) << 12 | b[4]}
            if b[2] % (MAX_PASID + 2):
                req["pasid"] = b[2] % (MAX_PASID + 2)
            if b[5] & 1:
                req |= {"write": True, "data": bytes(b[6] % 64)}
            else:
                req["length"] = b[6] % 64
            reply, _ = engine.control(req)
            assert reply["ok"], reply
        elif kind == 6:
            if b[1] & 1:
                _call(engine, v2.IOMMU_map_pages, _struct(
                    v2.IOMMU_map_pages, ctx_no=1 + b[2] % 2, gfn=b[3] % 0x40, dfn=b[4] % 0x40,
                    nr_pages=b[5] % 4, map_flags=1 + b[6] % 3))
            else:
                _call(engine, v2.IOMMU_unmap_pages, _struct(
                    v2.IOMMU_unmap_pages, ctx_no=1 + b[2] % 2, dfn=b[4] % 0x40,
                    nr_pages=b[5] % 4))
        elif b[1] % 4 == 1:
            _call(engine, v2.IOMMU_free_context, _struct(
                v2.IOMMU_free_context, ctx_no=b[2] % 6, free_flags=b[3] & 1))
        elif b[1] % 4 == 2:
            n = b[3] % (prq.PRQ_MAX + 2)
            buffer = (wire.Region(BUFFER, bytes(prq.ENTRY_SIZE * n)),) if b[4] & 1 else ()
            _call(engine, prq.IOMMU_read_page_requests, _struct(
                prq.IOMMU_read_page_requests, ctx_no=b[2] % 6, max=n, requests=BUFFER),
                *buffer)
        elif b[1] % 4 == 3:
            _call(engine, prq.IOMMU_page_response, _struct(
                prq.IOMMU_page_response, ctx_no=b[2] % 6, group=b[3] % 8,
                code=(0, 1, 15, b[5])[b[4] % 4]))
        elif b[1] % 8 == 4:
            # read_dirty: the bitmap right after the struct, or a handle anywhere.
            nr, here = (dirty.MAX_PAGES + 1 if b[6] & 0x80 else b[4] * 4), not b[6] & 1
            raw = _struct(dirty.IOMMU_read_dirty, ctx_no=b[2] % 6, flags=b[3] % 3,
                          nr_pages=nr, dfn=raw64 if b[5] & 1 else b[5],
                          bitmap=GADDR + 32 if here else raw64)
            _call(engine, dirty.IOMMU_read_dirty,
                  raw + bytes((nr + 7) // 8 if here and nr < 4096 else 0))
        else:
            _call(engine, v2.IOMMU_alloc_context, _struct(
                v2.IOMMU_alloc_context, alloc_flags=dirty.ALLOC_dirty_tracking * (b[3] & 1)))
    problems = hv.check_invariants()
    assert not problems, problems
    hv.contexts.guest_bugs()        # the audit of nested entries reads every one
