"""The sans-IO core in process, through the engine: continuations, references,
page-in timing."""

from __future__ import annotations

from array import array

from xenemu import abi
from xenemu.hw import reference
from xenemu.engine import Engine
from xenemu.errno import XenErrno as E
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig
from xenemu.p2m import P2mType
from xenemu.trace.text import decode_reply
from xenemu.wire import Call, Region

GADDR = 0x1000


def machine(**kw) -> Hypervisor:
    return Hypervisor(MachineConfig(memory_mib=2048, domains=(
        DomainConfig(domid=0, hardware=True, memory_mib=1024, contexts=4),
        DomainConfig(domid=3, hardware=True, memory_mib=16, contexts=1))), **kw)


def _call(raw: bytes) -> Call:
    return Call(1, abi.HYPERVISOR_iommu_op, (GADDR,), (Region(GADDR, raw),))


def op(hv, raw, domid=0):
    reply = decode_reply(Engine(hv).complete(domid, _call(raw)))
    return reply.ret, abi.decode_op(reply.regions[0].data)


def refs(hv, domid) -> int:
    return sum(hv.memory.refcounts(hv.domains[domid].p2m.mfns))


def test_freeing_a_large_context_is_cut_into_continuations():
    hv = machine()
    ret, o = op(hv, abi.encode_op(abi.IOMMUOP_alloc_context))
    ctx = o.ctx_no
    pages = 200_000
    for start in range(0, pages, 256):
        n = min(256, pages - start)
        ret, _ = op(hv, abi.encode_op(abi.IOMMUOP_map_pages, ctx, 3, "map_pages", gfn=start,
                                      dfn=0x100000 + start, nr_pages=n))
        assert ret == 0
    base = hv.domains[0].p2m.nr_pages                 # the identity map's references
    assert refs(hv, 0) == base + pages

    conn = Engine(hv).connection(0)
    reply = conn.start(_call(abi.encode_op(abi.IOMMUOP_free_context, ctx)))
    rounds = 1
    while reply is None:
        # Between rounds another domain is served, and sees a dying context as gone.
        assert op(hv, abi.encode_op(abi.IOMMUOP_query_capabilities), domid=3)[0] == 0
        assert op(hv, abi.encode_op(abi.IOMMUOP_lookup_page, ctx, 0, "lookup_page",
                                    dfn=0x100000))[0] == -E.EINVAL
        reply = conn.resume()
        rounds += 1
    assert decode_reply(reply).ret == 0 and rounds >= 3
    assert refs(hv, 0) == base
    assert hv.check_invariants() == []
    assert op(hv, abi.encode_op(abi.IOMMUOP_free_context, ctx))[0] == -E.ENOENT


def test_references_follow_mappings_and_vanish_with_the_domain():
    hv = machine()
    d3 = hv.domains[3]
    assert refs(hv, 3) == d3.p2m.nr_pages
    _, o = op(hv, abi.encode_op(abi.IOMMUOP_alloc_context), domid=3)
    assert op(hv, abi.encode_op(abi.IOMMUOP_map_pages, o.ctx_no, 1, "map_pages", gfn=0, dfn=0,
                                nr_pages=256), domid=3)[0] == 0
    assert hv.memory.refcounts(d3.p2m.mfns[:1])[0] == 2
    used = hv.memory.used
    hv.destroy_domain(3)
    assert hv.memory.used < used - d3.p2m.nr_pages     # memory and table pages returned
    assert hv.check_invariants() == []


def test_page_in_completes_on_the_injected_clock():
    now = [0.0]
    hv = machine(clock=lambda: now[0])
    hv.set_p2m_type(0, 0x42, P2mType.PAGED_OUT)
    _, o = op(hv, abi.encode_op(abi.IOMMUOP_alloc_context))
    map_one = abi.encode_op(abi.IOMMUOP_map_pages, o.ctx_no, 3, "map_pages", gfn=0x42, dfn=7,
                            nr_pages=1)
    assert op(hv, map_one)[0] == -E.EIO
    now[0] += 0.009
    assert op(hv, map_one)[0] == -E.EIO                # the default delay is 10 ms
    now[0] += 0.002
    assert op(hv, map_one)[0] == 0
    assert hv.domains[0].p2m.type_of(0x42) is P2mType.RAM
    assert hv.check_invariants() == []


def test_invariant_check_notices_a_leaked_reference():
    hv = machine()
    hv.memory.get_refs(array("Q", hv.domains[3].p2m.mfns[:1]))
    assert hv.check_invariants() == ["d3: 4097 page references for 4096 mappings"]


def test_opaque_default_context_is_out_of_reach():
    hv = Hypervisor(MachineConfig(memory_mib=64, domains=(
        DomainConfig(domid=0, hardware=True, memory_mib=16, contexts=1, opaque_default=True),)))
    assert op(hv, abi.encode_op(abi.IOMMUOP_lookup_page, 0, 0, "lookup_page", dfn=1))[0] == -E.EINVAL
    assert op(hv, abi.encode_op(abi.IOMMUOP_map_pages, 0, 3, "map_pages", gfn=1, dfn=0x9000,
                                nr_pages=1))[0] == -E.EINVAL
    assert op(hv, abi.encode_op(abi.IOMMUOP_unmap_pages, 0, 0, "unmap_pages", dfn=1,
                                nr_pages=1))[0] == -E.EINVAL
    # Other contexts work as usual.
    _, o = op(hv, abi.encode_op(abi.IOMMUOP_alloc_context))
    assert op(hv, abi.encode_op(abi.IOMMUOP_map_pages, o.ctx_no, 3, "map_pages", gfn=1, dfn=1,
                                nr_pages=1))[0] == 0


def test_the_reference_hardware_answers_as_the_c_layer():
    """The benchmark runs the same hypercalls on both: same replies, same invariants."""
    M = abi.IOMMUOP_map_pages
    seq = [abi.encode_op(abi.IOMMUOP_alloc_context),
           abi.encode_op(M, 1, 3, "map_pages", gfn=0x10, dfn=0x1FF, nr_pages=256),
           abi.encode_op(M, 1, 1, "map_pages", gfn=0x400, dfn=0x2F0, nr_pages=32),  # overlaps
           abi.encode_op(abi.IOMMUOP_lookup_page, 1, 0, "lookup_page", dfn=0x2FE),
           abi.encode_op(abi.IOMMUOP_unmap_pages, 1, 0, "unmap_pages", dfn=0x1FF, nr_pages=256),
           abi.encode_op(abi.IOMMUOP_unmap_pages, 1, 0, "unmap_pages", dfn=0x2FE, nr_pages=4),
           abi.encode_op(abi.IOMMUOP_free_context, 1)]
    c, py = machine(), machine(hw_impl=reference)
    assert [op(c, raw) for raw in seq] == [op(py, raw) for raw in seq]
    assert c.check_invariants() == py.check_invariants() == []
