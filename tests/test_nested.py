"""Nested translation and PASIDs, xenemu's extension of revision 2
(abi/NESTED.md), through the public interface: sub-ops 9-12 by the client,
the guest's stage-1 table written into its memory and DMA with a PASID on
the control socket, each error path, the machine option, snapshots. Every
machine is recorded and its trace replayed (support.checked_local)."""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess

import pytest

from support import ROOT as REPO, DaemonProcess, abi_includes, assert_replays, checked_local
from xenemu.client import RevisionTwoClient
from xenemu.ctl import ControlError
from xenemu.hypercalls import iommu_op_nested as nested
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import ConfigError, default_machine, machine_from_dict

DEV = "0000:01:00.0"            # d1's device: bus 1, devfn 0
PASID = 7
ROOT, L3, L2, L1 = 0x100, 0x101, 0x102, 0x103    # the guest's stage-1 table pages (gfns)
DATA = 0x200                    # IOVA page i -> gfn DATA + i


def machine(**changes):
    return dataclasses.replace(default_machine(2), **{"nested": True, **changes})


def entry(frame: int, writable: bool = True) -> bytes:
    return struct.pack("<Q", frame << 12 | (3 if writable else 1))


def put(m, gfn: int, index: int, value: bytes, domid: int = 1) -> None:
    """The guest writes a stage-1 entry in its own memory."""
    m.ctl("mem_write", domid=domid, gfn=gfn, offset=8 * index, data=value)


def build_stage1(m, domid: int = 1) -> None:
    """ROOT -> L3 -> L2 -> L1; IOVA page 0 read-write, page 1 read-only."""
    for table, nxt in ((ROOT, L3), (L3, L2), (L2, L1)):
        put(m, table, 0, entry(nxt), domid)
    put(m, L1, 0, entry(DATA), domid)
    put(m, L1, 1, entry(DATA + 1, writable=False), domid)


def dma(m, addr, *, data=None, length=8, pasid=PASID):
    args = {"data": data, "write": True} if data is not None else {"length": length}
    return m.ctl("dma", sbdf=DEV, addr=addr, pasid=pasid, **args)


@pytest.fixture
def m(tmp_path):
    with checked_local(machine(), tmp_path / "nested.xt") as local:
        yield local


@pytest.fixture
def guest(m):
    """d1 initialised, its stage-1 table built, nested context over context
    0 (its guest-physical space) and its device's PASID attached."""
    xen = m.client(1)
    assert xen.init(4, 4).ok
    build_stage1(m)
    r = xen.alloc_nested(ROOT)
    assert r.ok, r.name
    ctx = r.op.ctx_no
    assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
    return xen, ctx


def fault_kind(reply):
    return reply["fault"]["kind"] if reply["faulted"] else None


def test_capabilities_report_nested_and_pasids(m):
    caps = m.client(1).query_capabilities().op
    assert caps.cap_flags == v2.IOMMUCAP_default_identity | v2.IOMMUCAP_nested | v2.IOMMUCAP_pasid
    assert caps.max_pasid == 0xFFFFF


def test_dma_with_a_pasid_edit_without_flush_then_flush(m, guest):
    xen, ctx = guest
    assert dma(m, 0x10, data=b"hello")["done"] == 5
    assert m.ctl("mem_read", domid=1, gfn=DATA, offset=0x10, length=5)["data"] == b"hello"
    assert dma(m, 0x10, length=5)["data"] == b"hello"
    # The guest remaps IOVA page 0 and does not flush: hardware keeps the
    # cached translation, and `check` calls it the guest's bug.
    put(m, L1, 0, entry(DATA + 2))
    dma(m, 0x10, data=b"stale")
    assert m.ctl("mem_read", domid=1, gfn=DATA, offset=0x10, length=5)["data"] == b"stale"
    check = m.ctl("check")
    assert check["consistent"] and len(check["guest_bugs"]) == 1
    assert "without flush_nested" in check["guest_bugs"][0]
    r = xen.flush_nested(ctx, flush_type=nested.FLUSH_RANGE, pasid=PASID, dfn=0, nr_pages=1)
    assert r.ok and r.raw == v2.encode(v2.SUBOPS_BY_NUMBER[10], ctx_no=ctx, flush_type=2,
                                       pasid=PASID, nr_pages=1)     # read only
    dma(m, 0x10, data=b"fresh")
    assert m.ctl("mem_read", domid=1, gfn=DATA + 2, offset=0x10, length=5)["data"] == b"fresh"
    assert m.ctl("check")["guest_bugs"] == []


@pytest.mark.parametrize("flush", [dict(flush_type=nested.FLUSH_ALL),
                                   dict(flush_type=nested.FLUSH_PASID, pasid=PASID)])
def test_flush_all_and_flush_a_pasid(m, guest, flush):
    xen, ctx = guest
    dma(m, 0, length=1)
    put(m, L1, 0, bytes(8))
    assert xen.flush_nested(ctx, **flush).ok
    assert fault_kind(dma(m, 0, length=1)) == "NOT_PRESENT"


def test_faults_of_nested_translation(m, guest):
    assert fault_kind(dma(m, 0x1000, data=b"x")) == "WRITE"          # page 1 is read-only
    assert fault_kind(dma(m, 0x1000, length=1)) is None
    assert fault_kind(dma(m, 0x2000, length=1)) == "NOT_PRESENT"     # no stage-1 entry
    assert fault_kind(dma(m, 0, length=1, pasid=PASID + 1)) == "NO_PASID"
    put(m, L2, 0, entry(0x7FFFF))          # a table page beyond d1's memory: stage 2 has none
    xen, ctx = guest
    assert xen.flush_nested(ctx).ok
    assert fault_kind(dma(m, 0, length=1)) == "S1_TABLE"
    kinds = [f["kind"] for f in m.ctl("faults")["faults"]]
    assert kinds == ["WRITE", "NOT_PRESENT", "NO_PASID", "S1_TABLE"]


def test_detach_then_dma_faults_and_free(m, guest):
    xen, ctx = guest
    assert xen.detach_pasid(PASID, 0, 1, 0).ok
    assert fault_kind(dma(m, 0, length=1)) == "NO_PASID"
    assert xen.detach_pasid(PASID, 0, 1, 0).name == "-ENOENT"
    assert xen.free_context(ctx).ok
    assert xen.flush_nested(ctx).name == "-ENOENT"


def test_a_guest_context_as_stage_2(m):
    """Stage 2 may be a PV-IOMMU context the guest mapped: its dfns are then
    the stage-1 table's addresses. That parent can't be freed under it."""
    xen = m.client(1)
    assert xen.init(4, 4).ok                # takes context 1
    build_stage1(m)
    # Context 1 maps gfns 0x100.. at dfns 0x500..: stage 1 now lives at 0x500.
    assert xen.map_pages(1, 0x100, 0x500, 0x200).ok
    r = xen.alloc_nested(0x500, ctx_no=1)
    assert r.ok
    ctx = r.op.ctx_no
    assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
    # ROOT's entries hold gfns, which context 1 does not map at those dfns.
    assert fault_kind(dma(m, 0, length=1)) == "S1_TABLE"
    assert xen.free_context(1).name == "-EBUSY"
    assert xen.free_context(ctx).name == "-EBUSY"          # a PASID is attached
    assert xen.free_context(ctx, v2.IOMMU_FREE_reattach_default).ok
    assert xen.free_context(1).ok


@pytest.mark.parametrize("call,errno", [
    (lambda x, c: x.alloc_nested(ROOT, nested_flags=1), "-EINVAL"),
    (lambda x, c: x.alloc_nested(ROOT, ctx_no=3), "-ENOENT"),
    (lambda x, c: x.alloc_nested(ROOT, ctx_no=c), "-EINVAL"),        # a nested stage 2
    (lambda x, c: x.alloc_nested(1 << 40), "-ERANGE"),
    (lambda x, c: x.map_pages(c, 0x300, 0, 1), "-EINVAL"),
    (lambda x, c: x.unmap_pages(c, 0, 1), "-EINVAL"),
    (lambda x, c: x.reattach_device(c, 0, 1, 0), "-EINVAL"),
    (lambda x, c: x.flush_nested(3), "-ENOENT"),
    (lambda x, c: x.flush_nested(0), "-EINVAL"),                       # not nested
    (lambda x, c: x.flush_nested(c, flush_type=3), "-EINVAL"),
    (lambda x, c: x.flush_nested(c, flush_type=1, pasid=0), "-EINVAL"),
    (lambda x, c: x.attach_pasid(c, 0, 0, 1, 0), "-EINVAL"),
    (lambda x, c: x.attach_pasid(c, 0x100000, 0, 1, 0), "-EINVAL"),
    (lambda x, c: x.attach_pasid(c, 9, 0, 2, 0), "-ENOENT"),           # not d1's device
    (lambda x, c: x.attach_pasid(0, 9, 0, 1, 0), "-EINVAL"),           # not nested
    (lambda x, c: x.attach_pasid(3, 9, 0, 1, 0), "-ENOENT"),
    (lambda x, c: x.attach_pasid(c, PASID, 0, 1, 0), "-EEXIST"),
    (lambda x, c: x.detach_pasid(0, 0, 1, 0), "-EINVAL"),
    (lambda x, c: x.detach_pasid(9, 0, 1, 0), "-ENOENT"),
])
def test_error_paths(m, guest, call, errno):
    xen, ctx = guest
    assert call(xen, ctx).name == errno
    assert m.ctl("check")["consistent"]


def test_alloc_nested_before_init_and_copy_back(m):
    xen = m.client(1)
    r = xen.alloc_nested(ROOT)
    assert r.name == "-ENOSPC"
    assert r.op.pgtable_gfn == ROOT          # copied back as it was


def test_off_by_default_is_xens_eopnotsupp(tmp_path):
    with checked_local(default_machine(2), tmp_path / "off.xt") as m:
        xen = m.client(1)
        caps = xen.query_capabilities().op
        assert (caps.cap_flags, caps.max_pasid) == (v2.IOMMUCAP_default_identity, 0)
        for r in (xen.alloc_nested(ROOT), xen.flush_nested(0), xen.attach_pasid(0, 1),
                  xen.detach_pasid(1)):
            assert r.name == "-EOPNOTSUPP"
        # arg untouched: a handle to nothing is not even read.
        r = xen.iommu_op_subop(v2.IOMMU_alloc_nested, b"")
        assert r.name == "-EOPNOTSUPP"
        with pytest.raises(ControlError, match="serves no PASIDs"):
            m.ctl("dma", sbdf=DEV, addr=0, length=1, pasid=1)


def test_machine_option_schema():
    base = {"pv_iommu_revision": 2, "nested": True}
    assert machine_from_dict({**base, "max_pasid": 255}).max_pasid == 255
    with pytest.raises(ConfigError, match="max_pasid"):
        machine_from_dict({**base, "max_pasid": 0x100000})
    with pytest.raises(ConfigError, match="nested: only a machine of pv_iommu_revision 2"):
        machine_from_dict({"nested": True})


def test_max_pasid_bounds_attach(tmp_path):
    with checked_local(machine(max_pasid=15), tmp_path / "p.xt") as m:
        xen = m.client(1)
        assert xen.query_capabilities().op.max_pasid == 15
        xen.init(4, 4)
        ctx = xen.alloc_nested(ROOT).op.ctx_no
        assert xen.attach_pasid(ctx, 16, 0, 1, 0).name == "-EINVAL"
        assert xen.attach_pasid(ctx, 15, 0, 1, 0).ok


def test_remote_cmd_runs_nested_subops_on_a_guest(m):
    dom0, xen = m.client(0), m.client(1)
    xen.init(4, 4)
    build_stage1(m)
    inner = v2.encode(v2.SUBOPS_BY_NUMBER[v2.IOMMU_alloc_nested], pgtable_gfn=ROOT)
    r = dom0.remote_cmd(1, v2.IOMMU_alloc_nested, inner)
    assert r.ok and r.inner_op.ctx_no == 2
    assert xen.attach_pasid(2, PASID, 0, 1, 0).ok
    assert dma(m, 0, data=b"via dom0")["done"] == 8


def test_through_the_daemon_and_a_snapshot(tmp_path):
    """A daemon serving a nested machine file: the sub-ops through its
    socket, DMA with a PASID on the control socket, a snapshot carrying the
    nested context and its PASID that a second daemon restores and serves
    (the stage-1 table being guest memory), both traces replaying."""
    config = tmp_path / "nested.toml"
    config.write_text(NESTED_TOML.replace("nested = true\n", "nested = true\nmax_pasid = 255\n"))
    daemon = DaemonProcess(tmp_path / "d", "--config", str(config))
    snap = tmp_path / "s.xs"
    try:
        with RevisionTwoClient(daemon.socket(1)) as xen:
            assert xen.query_capabilities().op.max_pasid == 255
            assert xen.init(4, 2).ok
            for table, nxt in ((ROOT, L3), (L3, L2), (L2, L1), (L1, DATA)):
                daemon.ctl("mem_write", domid=1, gfn=table, offset=0, data=entry(nxt))
            assert xen.map_pages(1, 0x100, 0x500, 8).ok     # context 1: a second stage 2
            ctx = xen.alloc_nested(ROOT).op.ctx_no
            other = xen.alloc_nested(0x500, ctx_no=1).op.ctx_no
            assert xen.attach_pasid(ctx, PASID, 0, 1, 0).ok
            reply = daemon.ctl("dma", sbdf=DEV, addr=0, write=True, data=b"socket", pasid=PASID)
            assert reply["done"] == 6
        daemon.ctl("snapshot", path=str(snap))
    finally:
        daemon.stop()
    assert_replays(daemon.trace)
    again = DaemonProcess(tmp_path / "again", "--restore", str(snap))
    try:
        restored = [c for c in again.ctl("contexts", domid=1)["contexts"] if "nested" in c]
        assert [(c["ctx_no"], c["nested"]) for c in restored] == [
            (ctx, {"stage2": 0, "pgtable_gfn": ROOT, "pasids": [[DEV, PASID]]}),
            (other, {"stage2": 1, "pgtable_gfn": 0x500, "pasids": []})]
        assert again.ctl("dma", sbdf=DEV, addr=0, length=6, pasid=PASID)["data"] == b"socket"
        with RevisionTwoClient(again.socket(1)) as xen:
            assert xen.attach_pasid(ctx, PASID, 0, 1, 0).name == "-EEXIST"
            assert xen.free_context(1).name == "-EBUSY"          # stage 2 of `other`
            assert xen.free_context(ctx, v2.IOMMU_FREE_reattach_default).ok
        assert again.ctl("check")["consistent"]
    finally:
        again.stop()
    assert_replays(again.trace)


def test_a_snapshot_naming_a_bad_stage_2_is_refused(m, guest):
    from xenemu import snapshot
    snap = snapshot.take(m.hv)
    ctx = next(c for c in snap["domains"][1]["contexts"] if "nested" in c)
    ctx["nested"]["stage2"] = ctx["ctx_no"]
    with pytest.raises(snapshot.SnapshotError, match=r"contexts\[\d\]\.nested\.stage2: context "):
        snapshot.restore(snap)


def test_domain_destroy_takes_nested_contexts_and_bindings(m, guest):
    m.ctl("domain_destroy", domid=1)
    assert m.ctl("check")["consistent"]


@pytest.mark.parametrize("compiler,std", [("gcc", "-std=c99"), ("gcc", "-std=c11"),
                                          ("g++", "-std=c++17")])
def test_the_header_builds_pedantic_and_matches_the_python_layout(tmp_path, compiler, std):
    """abi/rev2/xen/pv-iommu-nested.h: clean under -Wall -Wextra -Werror
    -pedantic, its struct the bytes the handler reads, its asserts live."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    src = tmp_path / "t.c"
    src.write_text(
        "#include <stdio.h>\n#include <string.h>\n#include <xen/pv-iommu-nested.h>\n"
        "int main(void) { struct xenemu_iommu_flush_nested f; unsigned char b[24];\n"
        "  memset(&f, 0, sizeof(f)); f.ctx_no = 0x1234; f.flush_type = 2; f.pasid = 0xABCDE;\n"
        "  f.nr_pages = 9; f.dfn = 0x123456789ULL; memcpy(b, &f, sizeof(b));\n"
        "  for (int i = 0; i < 24; i++) printf(\"%02x\", b[i]);\n"
        "  return XENEMU_IOMMU_FLUSH_NESTED_range == 2 && XENEMU_PASID_MAX == 0xFFFFF ? 0 : 1; }\n")
    lang = ["-x", "c++"] if compiler == "g++" else []
    prog = tmp_path / "prog"
    subprocess.run([compiler, std, "-Wall", "-Wextra", "-Werror", "-pedantic", *abi_includes(2),
                    *lang, str(src), "-o", str(prog)], check=True, capture_output=True, text=True)
    out = subprocess.run([str(prog)], check=True, capture_output=True, text=True).stdout
    want = nested.FlushNested.build(dict(ctx_no=0x1234, _pad=bytes(2), flush_type=2,
                                         pasid=0xABCDE, nr_pages=9, dfn=0x123456789))
    assert bytes.fromhex(out) == want


def test_the_headers_asserts_are_live(tmp_path):
    header = REPO / "abi" / "rev2" / "xen" / "pv-iommu-nested.h"
    (tmp_path / "xen").mkdir()
    (tmp_path / "xen" / "pv-iommu-nested.h").write_text(
        header.read_text().replace("uint32_t nr_pages;", "uint64_t nr_pages;", 1))
    src = tmp_path / "t.c"
    src.write_text("#include <xen/pv-iommu-nested.h>\nint main(void) { return 0; }\n")
    result = subprocess.run(["gcc", "-std=c11", f"-I{tmp_path}", f"-I{REPO / 'abi' / 'rev2'}",
                             f"-I{REPO / 'abi'}", "-c", str(src), "-o", str(tmp_path / "t.o")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "flush_nested_size" in result.stderr


def test_contexts_and_dump_show_a_nested_context(m, guest):
    xen, ctx = guest
    entry_ = next(c for c in m.ctl("contexts", domid=1)["contexts"] if c["ctx_no"] == ctx)
    assert entry_["nested"] == {"stage2": 0, "pgtable_gfn": ROOT, "pasids": [[DEV, PASID]]}
    with pytest.raises(ControlError, match="is nested: its stage 1 is the guest's table"):
        m.ctl("dump", domid=1, ctx_no=ctx)
    # `xenemu ctl contexts` says so in its table.
    from rich.console import Console
    from xenemu.ctl_tables import render
    console = Console(width=250, record=True)
    console.print(render("contexts", m.ctl("contexts", domid=1)))
    text = console.export_text()
    assert f"nested over ctx 0, stage 1 at gfn {ROOT:#x}" in text
    assert f"{DEV} pasid {PASID}" in text


NESTED_TOML = ('pv_iommu_revision = 2\nnested = true\n'
               '[[domain]]\ndomid = 1\nmemory_mib = 16\ndevices = ["01:00.0"]\n')


def test_the_c_example_guest(c_build, tmp_path):
    """clients/c/examples/nested_guest_v2.c against a daemon: its stage-1
    table, alloc_nested, attach_pasid, DMA, an edit the IOTLB hides until
    flush_nested, an I/O page fault serviced (tests/test_page_requests.py),
    detach and free, then dirty tracking (a tracked context, the device's
    write in its bitmap once, then clean), every step as the program expects; the
    machine consistent after and the trace replaying."""
    config = tmp_path / "nested.toml"
    config.write_text(NESTED_TOML)
    daemon = DaemonProcess(tmp_path / "d", "--config", str(config))
    try:
        run = subprocess.run([str(c_build / "nested_guest_v2"), "--pasid", "9", "--gfn", "200"],
                             env={"XENEMU_SOCKET": str(daemon.socket(1)),
                                  "XENEMU_CONTROL": daemon.control},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        steps = [line.split()[0] for line in run.stdout.splitlines() if line.startswith("step=")]
        assert steps == ["step=init", "step=build_stage1", "step=alloc_nested",
                         "step=attach_pasid", "step=dma", "step=edit_without_flush",
                         "step=flush_nested", "step=dma_waits", "step=read_page_requests",
                         "step=page_request", "step=page_fault_serviced",     # I/O page faults
                         "step=detach_pasid", "step=free_context",
                         "step=alloc_tracked", "step=dma_tracked",            # dirty tracking
                         "step=read_dirty", "step=dirty_page", "step=read_dirty",
                         "step=dirty_cleared", "step=free_tracked"]
        assert "failures=0" in run.stdout
        assert daemon.ctl("check")["consistent"]
    finally:
        daemon.stop()
    assert_replays(daemon.trace)


def test_the_c_example_refuses_a_machine_without_nested(c_build, tmp_path):
    config = tmp_path / "plain.toml"
    config.write_text(NESTED_TOML.replace("nested = true\n", ""))
    daemon = DaemonProcess(tmp_path / "d", "--config", str(config))
    try:
        run = subprocess.run([str(c_build / "nested_guest_v2")],
                             env={"XENEMU_SOCKET": str(daemon.socket(1)),
                                  "XENEMU_CONTROL": daemon.control},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [
            "nested_guest_v2: no nested PV-IOMMU here (a machine with nested = true)"]
    finally:
        daemon.stop()


def test_a_divergence_at_a_nested_call_shows_the_nested_context(tmp_path):
    """`xenemu replay` of a trace whose flush_nested reply was edited stops
    there and describes the nested context (it has no tables to dump)."""
    from test_traces import load, save, xenemu
    from xenemu.inprocess import Local
    from xenemu.trace.text import decode_call, decode_reply
    from xenemu.wire import HDR_SIZE
    trace = tmp_path / "n.xt"
    with Local(machine(), record=trace) as m:
        xen = m.client(1)
        xen.init(4, 4)
        ctx = xen.alloc_nested(ROOT).op.ctx_no
        assert xen.flush_nested(ctx, flush_type=nested.FLUSH_RANGE, pasid=PASID, dfn=3,
                                nr_pages=1).ok
    header, records = load(trace)
    n = next(i for i, r in enumerate(records, 1) if r["k"] == "hc" and r["rep"] is not None
             and decode_call(r["req"]).args[0] == v2.IOMMU_flush_nested
             and decode_reply(r["rep"]).ret == 0)
    rep = bytearray(records[n - 1]["rep"])
    rep[HDR_SIZE] ^= 0x01                       # the ret field after the header: 0 -> 1
    records[n - 1]["rep"] = bytes(rep)
    out = xenemu("replay", str(save(tmp_path / "edited.xt", header, records)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"divergence at record {n} " in out.stdout
    assert f"nested over context 0, stage-1 root gfn {ROOT:#x}" in out.stdout
