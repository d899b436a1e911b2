"""PV-IOMMU revision 2 (Xen RFC v4-v7, the v7 code's semantics): every
sub-op's return paths with the bytes the guest gets back, the Linux v3
driver's sequence, continuations, and a daemon serving --abi-revision 2.
Ground truth: ../shared/reference/pv-iommu-rev2.md (§ numbers below).

Every in-process machine here is recorded and its trace replayed byte for
byte afterwards (support.checked_local), as every daemon's trace is."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from support import DaemonProcess, assert_replays, checked_local
from xenemu import iommu_contexts
from xenemu.client import RevisionTwoClient, subop_frame
from xenemu.errno import XenErrno as E
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import DomainConfig, default_machine
from xenemu.trace.text import decode_reply
from xenemu.wire import Region, encode_call

MAX_IOVA = (1 << 48) - 1
PER_ROUND = 64


def machine(**changes):
    """The revision-2 default machine, plus d2 with its IOMMU off and d3
    initialised at creation by a toolstack ({2 contexts, arena 2^1})."""
    base = default_machine(2)
    return dataclasses.replace(base, domains=base.domains + (
        DomainConfig(domid=2, name="noiommu", iommu=False, memory_mib=16),
        DomainConfig(domid=3, name="inited", memory_mib=16, pv_iommu_init=(2, 1))),
        **{"rev2_pages_per_round": PER_ROUND, **changes})


@pytest.fixture
def m(tmp_path):
    with checked_local(machine(), tmp_path / "rev2.xt") as local:
        yield local


# The sub-ops path by path (§5), with the bytes the guest gets back, in both
# rev2_semantics: the table in tests/rev2_cases.py, run through the C and the
# Python client by tests/test_rev2_both_clients.py.


# -- the Linux v3 driver (§8) ----------------------------------------------------------

def test_linux_v3_driver_sequence(m):
    xen = m.client(1)
    caps = xen.query_capabilities()
    assert caps.ok and caps.op.max_ctx_no == 0
    init = xen.init(128, 12)
    assert init.ok                                  # never -EACCES under v7
    caps = xen.query_capabilities()
    assert (caps.op.max_ctx_no, caps.op.pgsize_mask, caps.op.max_iova_addr,
            caps.op.cap_flags) == (128, 0x1000, MAX_IOVA, v2.IOMMUCAP_default_identity)
    alloc = xen.alloc_context()
    assert (alloc.name, alloc.op.ctx_no) == ("0", 2)     # init took context 1
    ctx = alloc.op.ctx_no
    assert xen.reattach_device(ctx, 0, 1, 0).ok
    flags = v2.IOMMU_MAP_readable | v2.IOMMU_MAP_writeable | v2.IOMMU_MAP_cache
    # HVM/PVH: one call per run.
    r = xen.map_pages(ctx, 0x100, 0x8000, 200, map_flags=flags)
    assert (r.name, r.op.mapped) == ("0", 200)
    # PV dom0: one page a call, the struct reused, mapped accumulating.
    raw = r.raw
    for i in range(3):
        s = v2.decode(v2.IOMMU_map_pages, raw)
        s.gfn, s.dfn, s.nr_pages = 0x400 + i, 0x9000 + i, 1
        r = xen.iommu_op_subop(v2.IOMMU_map_pages, v2.MapPages.build(s))
        assert r.ok
        raw = r.raw
    assert r.op.mapped == 203
    r = xen.unmap_pages(ctx, 0x8000, 200)
    assert (r.name, r.op.unmapped) == ("0", 200)
    assert xen.unmap_pages(ctx, 0x9000, 3).op.unmapped == 3
    assert xen.reattach_device(0, 0, 1, 0).ok            # release: back to identity
    assert xen.free_context(ctx).ok


# -- continuations (§5.11) --------------------------------------------------------------

def call_frame(req_id: int, subop: int, raw: bytes) -> bytes:
    args, regions = subop_frame(subop, raw)
    return encode_call(req_id, 43, args, regions)


def test_long_map_preempts_and_others_are_served_between_rounds(tmp_path):
    per_round, nr0, gfn0, dfn0, mapped0 = 4096, 100_000, 0x10, 0x40000, 7
    with checked_local(machine(rev2_pages_per_round=per_round), tmp_path / "c.xt") as m:
        d0 = m.client(0)
        assert d0.init(4, 12).ok                      # context 1
        long = m.engine.connection(0, "long map")
        row = v2.SUBOPS_BY_NUMBER[v2.IOMMU_map_pages]
        long.receive_data(call_frame(1, v2.IOMMU_map_pages, v2.encode(
            row, ctx_no=1, gfn=gfn0, dfn=dfn0, nr_pages=nr0, map_flags=3, mapped=mapped0)))
        other = m.client(1)
        rounds = 0
        reply = long.answer()
        while long.continuing:
            rounds += 1
            # Another domain's call is answered between two rounds.
            assert other.query_capabilities().ok
            reply = long.answer()
        m.record_events()
        k = per_round * ((nr0 - 1) // per_round)      # pages of the preempted rounds
        assert rounds == (nr0 - 1) // per_round
        from xenemu.wire import FrameDecoder
        dec = FrameDecoder.for_client()
        dec.feed(reply)
        got = next(iter(dec))
        s = v2.decode(v2.IOMMU_map_pages, got.regions[0].data)
        assert got.ret == 0
        assert (s.gfn, s.dfn, s.nr_pages, s.mapped, s.ctx_no, s.map_flags) == \
            (gfn0 + k, dfn0 + k, nr0 - k, mapped0 + nr0, 1, 3)
        # Every page is there: unmap it all (itself preempted) in one call.
        r = d0.unmap_pages(1, dfn0, nr0)
        assert (r.name, r.op.unmapped, r.op.dfn, r.op.nr_pages) == ("0", nr0, dfn0 + k, nr0 - k)
        assert d0.free_context(1).ok


def test_map_and_unmap_between_the_rounds_of_a_free_are_einval(tmp_path, monkeypatch):
    """Xen v7's teardown is never preempted: no call sees a context half torn
    down. xenemu's free continues; a map or unmap of the context between its
    rounds is -EINVAL, as once the free is over (it closed the connection
    with an internal error before)."""
    monkeypatch.setattr(iommu_contexts, "TEARDOWN_SLICE", 8)
    with checked_local(machine(), tmp_path / "t.xt") as m:
        d0 = m.client(0)
        assert d0.init(4, 12).ok                      # context 1
        assert d0.map_pages(1, 0x10, 0x100, 40).ok
        freeing = m.engine.connection(0, "free")
        row = v2.SUBOPS_BY_NUMBER[v2.IOMMU_free_context]
        freeing.receive_data(call_frame(1, v2.IOMMU_free_context, v2.encode(row, ctx_no=1)))
        assert freeing.answer() == b"" and freeing.continuing
        m.record_events()
        mapped = d0.map_pages(1, 0x80, 0x400, 1)
        unmapped = d0.unmap_pages(1, 0x100, 1)
        assert (mapped.ret, unmapped.ret) == (-E.EINVAL, -E.EINVAL)
        assert (mapped.op.mapped, unmapped.op.unmapped) == (0, 0)
        while freeing.continuing:
            reply = freeing.answer()
        m.record_events()
        assert decode_reply(reply).ret == 0
        assert d0.map_pages(1, 0x80, 0x400, 1).ret == -E.EINVAL     # gone
        assert m.hv.check_invariants() == []


def restored(hv):
    """hv's snapshot as a file holds it, restored."""
    from xenemu import snapshot
    return snapshot.restore(msgpack.unpackb(msgpack.packb(snapshot.take(hv), use_bin_type=True),
                                            raw=False))


def answers(conn, *frames) -> list[int]:
    """The results of frames sent on an engine connection at once."""
    from xenemu.wire import FrameDecoder
    conn.receive_data(b"".join(frames))
    dec = FrameDecoder.for_client()
    dec.feed(conn.answer())
    return [f.ret for f in dec]


def test_a_snapshot_keeps_a_dying_context_mapping_and_one_being_torn_down(tmp_path,
                                                                          monkeypatch):
    """-EBUSY leaves a context dying that still maps (v7): a snapshot keeps
    its mappings. A context whose teardown is under way is saved being torn
    down, without the mappings it has left; restored, map and unmap on it
    are -EINVAL and the next free_context finishes it."""
    from xenemu.engine import Engine
    monkeypatch.setattr(iommu_contexts, "TEARDOWN_SLICE", 8)
    free_row = v2.SUBOPS_BY_NUMBER[v2.IOMMU_free_context]
    map_row = v2.SUBOPS_BY_NUMBER[v2.IOMMU_map_pages]
    unmap_row = v2.SUBOPS_BY_NUMBER[v2.IOMMU_unmap_pages]
    with checked_local(machine(), tmp_path / "t.xt") as m:
        d0 = m.client(0)
        assert d0.init(4, 12).ok and d0.map_pages(1, 0x10, 0x100, 40).ok
        assert d0.alloc_context().op.ctx_no == 2 and d0.reattach_device(2, 0, 0, 0x18).ok
        assert d0.map_pages(2, 0x20, 0x200, 2).ok
        assert d0.free_context(2).name == "-EBUSY"           # dying, mapping
        freeing = m.engine.connection(0, "free")
        assert answers(freeing, call_frame(1, v2.IOMMU_free_context,
                                           v2.encode(free_row, ctx_no=1))) == []
        assert freeing.continuing
        m.record_events()
        again = restored(m.hv)
        while freeing.continuing:
            freeing.answer()
        m.record_events()
    busy, torn = again.domains[0].contexts[2], again.domains[0].contexts[1]
    assert (busy.dying, busy.tearing_down, torn.dying, torn.tearing_down) == \
        (True, False, True, True)
    conn = Engine(again).connection(0)
    assert answers(conn,
                   call_frame(2, v2.IOMMU_map_pages, v2.encode(
                       map_row, ctx_no=1, gfn=0x80, dfn=0x400, nr_pages=1, map_flags=3)),
                   call_frame(3, v2.IOMMU_unmap_pages, v2.encode(
                       unmap_row, ctx_no=2, dfn=0x200, nr_pages=2)),
                   call_frame(4, v2.IOMMU_free_context, v2.encode(free_row, ctx_no=1))) == \
        [-E.EINVAL, 0, 0]
    assert again.domains[0].contexts[1] is None and again.check_invariants() == []


def test_error_after_preemption_keeps_the_count_across_rounds(m):
    xen = m.client(1)
    assert xen.init(2, 8).ok
    xen.map_pages(1, 0x500, 0x200 + 150, 1)            # a conflict in the third round
    r = xen.map_pages(1, 0x10, 0x200, 300, mapped=1)
    k = 2 * PER_ROUND                                 # two rounds preempted before it
    assert (r.name, r.op.mapped, r.op.dfn, r.op.nr_pages) == ("-EADDRINUSE", 1 + 150,
                                                              0x200 + k, 300 - k)


# -- the machine ------------------------------------------------------------------------

def test_revision_2_machine_file_and_trace_header(tmp_path):
    from xenemu.machine import ConfigError, machine_from_dict
    cfg = machine_from_dict({"pv_iommu_revision": 2, "address_width": 48, "domain": [
        {"domid": 0, "hardware": True, "pv_iommu_init": {"max_ctx_no": 8, "arena_order": 6}}]})
    assert cfg.domains[0].pv_iommu_init == (8, 6)
    with pytest.raises(ConfigError, match="pv_iommu_init"):
        machine_from_dict({"domain": [{"domid": 0, "pv_iommu_init": {"max_ctx_no": 1,
                                                                      "arena_order": 1}}]})
    with pytest.raises(ConfigError, match="contexts"):
        machine_from_dict({"pv_iommu_revision": 2, "domain": [{"domid": 0, "contexts": 4}]})
    with pytest.raises(ConfigError, match="rev2_pages_per_round"):
        machine_from_dict({"pv_iommu_revision": 2, "rev2_pages_per_round": 1})
    trace = tmp_path / "h.xt"
    with checked_local(cfg, trace) as m:
        assert m.client(0).query_capabilities().op.max_ctx_no == 8
    from xenemu.trace.reader import TraceReader
    with TraceReader(trace) as reader:
        assert reader.header.abi.pv_iommu_revision == 2
        assert reader.machine.domains[0].pv_iommu_init == (8, 6)


def test_daemon_serves_revision_2(tmp_path):
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        with RevisionTwoClient(d.socket(1)) as xen:
            assert xen.init(128, 12).raw[:2] == b"\x01\x00"
            ctx = xen.alloc_context().op.ctx_no
            assert ctx == 2
            r = xen.map_pages(ctx, 0x10, 0x10, 5000)       # preempted at the default round
            assert (r.name, r.op.mapped) == ("0", 5000)
            assert xen.unmap_pages(ctx, 0x10, 5000).op.unmapped == 5000
            assert xen.free_context(ctx).ok
        with RevisionTwoClient(d.socket(0)) as dom0:
            r = dom0.remote_cmd(1, v2.IOMMU_query_capabilities, bytes(24))
            assert r.ok and r.inner_op.max_ctx_no == 128
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert "[PV-IOMMU] d1: init max_ctx_no=128 arena_order=12 -> 0" in d.log()
    assert_replays(d.trace)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "xenemu.cli", "trace", "show", str(d.trace)],
                         capture_output=True, text=True, check=True).stdout
    assert "iommu_op map_pages ctx_no=2 gfn=0x10 dfn=0x10 nr_pages=5000" in out
    assert "remote_cmd domid=1 subop=1" in out
    stats = subprocess.run([sys.executable, "-m", "xenemu.cli", "trace", "stats", str(d.trace)],
                           capture_output=True, text=True, check=True).stdout
    assert "PV-IOMMU revision 2" in stats and "map_pages" in stats
    assert "pages: mapped 5,000, unmapped 5,000" in stats, stats


def test_domains_created_on_the_control_socket_start_uninitialised(m):
    m.ctl("domain_create", domid=7, memory_mib=16)                 # contexts: not used
    assert m.client(7).query_capabilities().op.max_ctx_no == 0
    m.ctl("domain_create", domid=8, memory_mib=16,
          pv_iommu_init={"max_ctx_no": 3, "arena_order": 4})
    xen = m.client(8)
    assert xen.query_capabilities().op.max_ctx_no == 3
    assert xen.init(3, 4).raw[:2] == b"\x01\x00"                   # -EACCES, then alloc
    # An arena too large: -ENOMEM inside, and init is spent for ever.
    m.ctl("domain_create", domid=9, memory_mib=16)
    xen = m.client(9)
    assert xen.init(4, 25).name == "-ENOSPC"
    assert xen.init(4, 4).name == "-ENOSPC"
    assert xen.query_capabilities().op.max_ctx_no == 0


def test_abi_revision_is_for_the_default_machine_only(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "m.toml"
    cfg.write_text("")
    p = subprocess.run([sys.executable, "-m", "xenemu.cli", "serve", "--abi-revision", "2",
                        "--config", str(cfg), "--socket-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--abi-revision" in p.stderr


def test_a_revision_2_snapshot_restores_init_state_and_dying_contexts(tmp_path):
    path = tmp_path / "rev2.xs"
    first = DaemonProcess(tmp_path / "first", "--abi-revision", "2")
    try:
        with RevisionTwoClient(first.socket(1)) as xen:
            assert xen.init(6, 3).ok                             # context 1
            assert xen.reattach_device(1, 0, 1, 0).ok
            assert xen.free_context(1).name == "-EBUSY"          # dying, with its device
            assert xen.alloc_context().op.ctx_no == 2
            assert xen.map_pages(2, 0x10, 0x100, 3).ok
        with RevisionTwoClient(first.socket(0)) as dom0:
            assert dom0.init(0, 4).name == "-ENOSPC"             # init spent, no pool
        assert first.ctl("snapshot", path=str(path))["contexts"] == 1 + 3    # d0: 0; d1: 0-2
    finally:
        assert first.stop() == 0
    assert_replays(first.trace)
    # The revision check follows the machine's revision.
    import msgpack
    from xenemu import snapshot
    snap = snapshot.read(path)
    assert snap["abi"]["pv_iommu_revision"] == snap["machine"]["pv_iommu_revision"] == 2
    snap["abi"]["pv_iommu_revision"] = 1
    with pytest.raises(snapshot.SnapshotError,
                       match=r"revision 1 \(abi\), but its machine says revision 2"):
        snapshot.check(msgpack.unpackb(msgpack.packb(snap)))
    again = DaemonProcess(tmp_path / "again", "--restore", str(path))
    try:
        with RevisionTwoClient(again.socket(1)) as xen:
            assert xen.query_capabilities().op.max_ctx_no == 6
            assert xen.init(6, 3).raw[:2] == b"\x03\x00"         # -EACCES inside, then alloc
            assert xen.reattach_device(0, 0, 1, 0).ok            # out of the dying context
            assert xen.reattach_device(1, 0, 1, 0).name == "-EINVAL"
            assert xen.free_context(1).ok
            assert xen.map_pages(2, 0x10, 0x101, 1).name == "-EADDRINUSE"
            assert xen.unmap_pages(2, 0x100, 3).op.unmapped == 3
            # The arena is what init gave: 2^3 pages (5 in use: two roots, 3 tables).
            assert xen.map_pages(2, 0, 1 << 30, 1).ok           # 3 more tables
            assert xen.map_pages(2, 0, 1 << 34, 1).name == "-ENOMEM"
            assert xen.unmap_pages(2, 1 << 30, 1).ok
        with RevisionTwoClient(again.socket(0)) as dom0:
            assert dom0.init(4, 4).name == "-ENOSPC"
            assert dom0.query_capabilities().op.max_ctx_no == 0
    finally:
        assert again.stop() == 0
    assert_replays(again.trace)


def test_unused_region_bytes_are_kept(m):
    """A struct inside a larger region: only its bytes change."""
    xen = m.client(1)
    gaddr = 0x5000
    blob = b"\x11" * 8 + bytes(24) + b"\x22" * 8
    reply = xen.hypercall(43, (v2.IOMMU_query_capabilities, gaddr + 8), (Region(gaddr, blob),))
    data = reply.regions[0].data
    assert reply.ret == 0 and data[:8] == b"\x11" * 8 and data[32:] == b"\x22" * 8


def test_trace_whose_header_and_machine_disagree_on_the_revision_is_refused(tmp_path):
    import msgpack
    from xenemu.trace.reader import TraceReader
    from xenemu.trace.records import TraceError
    trace = tmp_path / "t.xt"
    with checked_local(machine(), trace) as m:
        assert m.client(1).noop().ok
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(trace.read_bytes())
    objects = list(unpacker)
    objects[0]["abi"]["pv_iommu_revision"] = 1
    bad = tmp_path / "bad.xt"
    bad.write_bytes(b"".join(msgpack.packb(o, use_bin_type=True) for o in objects))
    with pytest.raises(TraceError, match="abi.pv_iommu_revision: 1, but the machine is of "
                                         "revision 2"):
        TraceReader(bad)


def test_rev2_driver_scenario_records_and_replays(tmp_path):
    """The corpus's rev2-driver scenario, recorded afresh and replayed."""
    import scenarios
    d = DaemonProcess(tmp_path, *scenarios.rev2_driver_session.SERVE_ARGS)
    try:
        scenarios.rev2_driver_session(d)
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)


async def test_trio_client_speaks_revision_2(tmp_path):
    import trio
    from xenemu.client import open_trio_client
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        async with open_trio_client(d.socket(1), revision=2) as xen:
            assert (await xen.init(8, 6)).raw[:2] == b"\x01\x00"
            results = {}

            async def query(i):
                results[i] = await xen.query_capabilities()
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(query, i)
            assert {r.op.max_ctx_no for r in results.values()} == {8}
            r = await xen.map_pages(1, 0, 0x100, 5000)
            assert (r.name, r.op.mapped) == ("0", 5000)
            assert (await xen.unmap_pages(1, 0x100, 5000)).op.unmapped == 5000
            assert (await xen.free_context(1)).ok
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)


def test_c_client_built_against_revision_2_drives_the_daemon(tmp_path, c_build):
    """The C client's revision-2 entry point (another part of the issue)
    against this daemon: what a driver built with -Iabi/rev2 sees."""
    import os
    import subprocess
    from support import ROOT, compile_c
    exe = compile_c(ROOT / "tests" / "c" / "rev2_daemon_driver.c", tmp_path / "driver",
                    str(c_build / "libxenemu.a"), abi_revision=2)
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "XENEMU_SOCKET": d.socket(1)})
        assert (out.returncode, out.stdout) == (0, "ok\n"), out.stdout + out.stderr
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)
