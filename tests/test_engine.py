"""The engine (xenemu/engine.py) as its drivers see it, in process: bytes in,
replies and trace events out; a continuation is "call me again"; control
requests return effects and do no I/O."""

from __future__ import annotations

import dataclasses

from xenemu import abi, iommu_contexts, snapshot
from xenemu.engine import CloseDomain, Engine, OpenDomainSocket, WriteSnapshot
from xenemu.errno import XenErrno as E
from xenemu.hypervisor import Hypervisor
from xenemu.machine import default_machine
from xenemu.trace.records import ControlRecord, HypercallRecord, ProtocolRecord, RoundRecord
from xenemu.trace.text import decode_reply
from xenemu.wire import ERR_BAD_MAGIC, ERR_TRUNCATED, Error, FrameDecoder, Region, encode_call

GADDR = 0x1000


def frame(raw_op: bytes, req_id: int = 1) -> bytes:
    return encode_call(req_id, abi.HYPERVISOR_iommu_op, (GADDR,), (Region(GADDR, raw_op),))


def engine(**kw) -> Engine:
    return Engine(Hypervisor(dataclasses.replace(default_machine(), check_iotlb=True)), **kw)


def test_a_continuing_call_returns_and_is_called_again(monkeypatch):
    monkeypatch.setattr(iommu_contexts, "TEARDOWN_SLICE", 64)
    eng = engine(record=True)
    d0, other = eng.connection(0), eng.connection(0)
    d0.receive_data(frame(abi.encode_op(abi.IOMMUOP_alloc_context), 1) +
                    frame(abi.encode_op(abi.IOMMUOP_map_pages, 1, 3, "map_pages", gfn=0, dfn=0,
                                        nr_pages=256), 2) +
                    frame(abi.encode_op(abi.IOMMUOP_free_context, 1), 3) +
                    frame(abi.encode_op(abi.IOMMUOP_query_capabilities), 4))
    replies = [d0.answer()]
    assert d0.continuing                        # after free_context's first round
    rounds = 1
    while d0.continuing:
        # Between rounds another connection is served.
        other.receive_data(frame(abi.encode_op(abi.IOMMUOP_query_capabilities), 9))
        assert decode_reply(other.answer()).ret == 0
        replies.append(d0.answer())
        rounds += 1
    assert rounds >= 3
    data = b"".join(replies)
    dec = FrameDecoder.for_client()
    dec.feed(data)
    decoded = [(f.req_id, f.ret) for f in dec]
    assert decoded == [(1, 0), (2, 0), (3, 0), (4, 0)]
    kinds = [type(e) for e in eng.records()]
    # The free's first round begins a continuation; its rounds follow, between others' calls.
    begun = [e for e in eng.records() if isinstance(e, HypercallRecord) and e.rep is None]
    assert len(begun) == 1 and kinds.count(RoundRecord) == rounds - 1
    assert [e.rep is None for e in eng.records() if isinstance(e, RoundRecord)][-1] is False
    assert eng.hv.check_invariants() == []


def test_a_call_continuing_when_its_domain_is_destroyed_is_left_unanswered(monkeypatch):
    monkeypatch.setattr(iommu_contexts, "TEARDOWN_SLICE", 64)
    eng = engine()
    eng.control({"op": "domain_create", "domid": 5, "hardware": True, "memory_mib": 4})
    conn = eng.connection(5)
    conn.receive_data(frame(abi.encode_op(abi.IOMMUOP_alloc_context), 1) +
                      frame(abi.encode_op(abi.IOMMUOP_map_pages, 1, 3, "map_pages", gfn=0,
                                          dfn=0, nr_pages=256), 2) +
                      frame(abi.encode_op(abi.IOMMUOP_free_context, 1), 3))
    conn.answer()
    assert conn.continuing
    reply, effects = eng.control({"op": "domain_destroy", "domid": 5})
    assert reply == {"ok": True} and effects == [CloseDomain(5)]
    # Recreated under the same domid: no round runs on the successor.
    reply, effects = eng.control({"op": "domain_create", "domid": 5, "hardware": True,
                                  "memory_mib": 4})
    assert reply["ok"] and effects == [OpenDomainSocket(5)]
    assert conn.answer() == b"" and conn.gone and conn.unanswered == 3
    assert not conn.continuing
    assert eng.hv.check_invariants() == []


def test_a_broken_frame_gets_its_error_last_and_is_recorded():
    eng = engine(record=True)
    conn = eng.connection(0)
    good = frame(abi.encode_op(abi.IOMMUOP_query_capabilities))
    conn.receive_data(good + b"\xff" * 32)
    out = conn.answer()
    assert conn.closing
    dec = FrameDecoder.for_client()
    dec.feed(out)
    frames = list(dec)
    assert frames[0].ret == 0 and isinstance(frames[1], Error)
    assert frames[1].code == ERR_BAD_MAGIC
    last = eng.records()[-1]
    assert isinstance(last, ProtocolRecord) and last.code == ERR_BAD_MAGIC and not last.eof
    # A frame cut off by the peer: recorded, nothing to send.
    cut = eng.connection(0)
    cut.receive_data(good[:10])
    cut.end_of_input()
    assert isinstance(eng.records()[-1], ProtocolRecord)
    assert eng.records()[-1].code == ERR_TRUNCATED and eng.records()[-1].rep is None


def test_the_engine_ticks_the_clock_once_per_event():
    now = [1.0]
    eng = Engine(Hypervisor(default_machine(), clock=lambda: now[0]), record=True)
    conn = eng.connection(0)
    now[0] = 3.5
    conn.receive_data(frame(abi.encode_op(abi.IOMMUOP_noop)))
    conn.answer()
    now[0] = 4.0
    eng.control({"op": "p2m_get", "domid": 0, "gfn": 1})
    assert [e.t for e in eng.records()] == [2.5, 3.0]
    assert isinstance(eng.records()[1], ControlRecord)


def test_a_snapshot_request_returns_the_bytes_and_writes_nothing(tmp_path):
    eng = engine(snapshots=True)
    target = tmp_path / "m.xs"
    reply, effects = eng.control({"op": "snapshot", "path": str(target)})
    assert reply["ok"] and reply["path"] == str(target)
    [effect] = effects
    assert isinstance(effect, WriteSnapshot) and not target.exists()
    # The machine changes after: the snapshot is the machine as the request saw it.
    conn = eng.connection(0)
    conn.receive_data(frame(abi.encode_op(abi.IOMMUOP_alloc_context)))
    conn.answer()
    snapshot.write_bytes(effect.path, effect.data, effect.reply)
    restored = snapshot.restore(snapshot.read(target))
    assert [c is not None for c in restored.domains[0].contexts][:2] == [True, False]
    assert eng.control({"op": "snapshot"})[0]["ok"] is False     # no --snapshot path
    assert engine().control({"op": "snapshot", "path": str(target)})[0] == {
        "ok": False, "error": "only the daemon writes snapshots"}


def test_the_in_process_client_speaks_the_socket_clients_helpers(local):
    xen = local.client(0)
    assert xen.query_capabilities().ok
    ctx = xen.alloc_context().op.ctx_no
    assert xen.map_pages(ctx, gfn=0x10, dfn=0x10, nr_pages=4).ret == 0
    assert xen.lookup_page(ctx, 0x11).op.lookup_page.gfn == 0x11
    assert [r.ret for r in xen.pipeline([abi.encode_op(abi.IOMMUOP_noop)] * 3)] == [0, 0, 0]
    assert xen.hypercall(9999).ret == -E.ENOSYS
    assert xen.unmap_pages(ctx, 0x10, 4).ret == 0
    assert xen.free_context(ctx).ret == 0
