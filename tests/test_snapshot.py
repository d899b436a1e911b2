"""Snapshots: `xenemu ctl snapshot`, `serve --snapshot` at shutdown, `serve --restore`.

Every test goes through daemon processes: a machine is built up over the
sockets, snapshotted, and a second daemon restored from the file must show
the same machine to every probe a harness or a guest has.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from support import ROOT, DaemonProcess, assert_replays, raw_conn
from xenemu import abi, cli
from xenemu.client import OP_GADDR, XenemuClient, XenemuError
from xenemu.ctl import ControlError
from xenemu.errno import XenErrno as E
from xenemu.wire import Region, encode_call

R, W, RW = abi.IOMMU_OP_readable, abi.IOMMU_OP_writeable, \
    abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable

MACHINE = """\
address_width = 48
page_in_delay_ms = 1000
[[domain]]
domid = 0
name = "dom0"
hardware = true
memory_mib = 64
contexts = 8
devices = ["0000:00:02.0", "0000:00:03.0", "0000:00:05.0"]
[[domain]]
domid = 1
memory_mib = 16
contexts = 2
devices = ["0000:01:00.0"]
"""

# Where the tests map: (domid, ctx_no, dfn, count) windows that probes read.
WINDOWS = [(0, 0, 0x1f00, 0x200), (0, 1, 0x40000, 0x200), (0, 1, 0x7ff00, 0x100),
           (0, 2, 0x100000, 0x40), (7, 1, 0x9000, 0x100)]
PAGED_IN = 0x3000     # d0's gfn whose page-in is under way when the snapshot is taken


def machine_file(tmp_path: Path) -> Path:
    path = tmp_path / "machine.toml"
    path.write_text(MACHINE)
    return path


def build_up(d: DaemonProcess) -> None:
    """Contexts with mappings in two domains (one created on the control
    socket), reattached devices, written memory, a paged-out gfn, a page-in
    under way, a quarantined device and faults in the log."""
    created = d.ctl("domain_create", domid=7, hardware=True, memory_mib=8, contexts=4,
                    devices=["0000:00:09.0"])
    d.sockets[7] = Path(created["socket"])
    with XenemuClient(d.socket(0)) as xen:
        assert [xen.alloc_context().op.ctx_no for _ in range(3)] == [1, 2, 3]
        assert xen.free_context(3).ret == 0                 # a hole in the pool
        for gfn, dfn, n, flags in [(0x100, 0x40000, 256, RW), (0x200, 0x40100, 44, RW),
                                   (0x900, 0x7ffff, 1, R), (0x1000, 0x100000, 16, W)]:
            assert xen.map_pages(1 if dfn < 0x100000 else 2, gfn, dfn, n, flags).ret == 0
        assert xen.unmap_pages(1, 0x40010, 5).ret == 0       # splits the first run
        assert xen.unmap_pages(0, 0x2000, 1).ret == 0        # context 0 is not 1:1 there now
        assert xen.map_pages(0, 0x10, 0x2000, 1).ret == 0    # ... but maps gfn 0x10 instead
        assert xen.reattach_device(1, bus=0, devfn=3 << 3).ret == 0
        assert xen.reattach_device(2, bus=0, devfn=2 << 3).ret == 0
        assert xen.map_pages(2, PAGED_IN, 0x200000, 1).ret == 0
    with XenemuClient(d.socket(7)) as xen:
        assert xen.alloc_context().op.ctx_no == 1
        assert xen.map_pages(1, 0x20, 0x9000, 0x80).ret == 0
        assert xen.reattach_device(1, bus=0, devfn=9 << 3).ret == 0
    d.ctl("mem_write", domid=0, gfn=0x100, offset=100, data=b"written by the harness")
    d.ctl("mem_write", domid=7, gfn=0x25, data=b"d7" * 2048)
    d.ctl("mem_write", domid=1, gfn=0, data=b"guest1")
    done = d.ctl("dma", sbdf="0000:00:03.0", addr=(0x40000 << 12) + 4080, write=True,
                 data=b"by DMA, across a page boundary")
    assert done["done"] == 30 and not done["faulted"]
    d.ctl("p2m_set", domid=0, gfn=0x3800, type="paged_out")
    d.ctl("p2m_set", domid=0, gfn=0x3801, type="shared")
    d.ctl("device_deassign", sbdf="0000:00:05.0")
    with XenemuClient(d.socket(0)) as xen:
        assert xen.unmap_pages(2, 0x200000, 1).ret == 0
        d.ctl("p2m_set", domid=0, gfn=PAGED_IN, type="paged_out")
        assert xen.map_pages(2, PAGED_IN, 0x200000, 1).ret == -E.EIO      # the page-in starts
    for sbdf, addr, write in [("0000:00:05.0", 0x1000, False),           # quarantined
                              ("0000:00:03.0", 0x7ffff << 12, True),      # read-only mapping
                              ("0000:00:02.0", 0x100000 << 12, False),    # write-only mapping
                              ("0000:00:03.0", 0x1 << 12, False),         # not mapped
                              ("0000:00:02.0", 1 << 50, False),           # beyond the width
                              ("0000:00:02.0", 0xFEE00000, True)]:        # interrupt window
        assert d.ctl("dma", sbdf=sbdf, addr=addr, write=write, data=b"x", length=1)["faulted"]


def observe(d: DaemonProcess) -> tuple[dict, dict]:
    """Everything a harness or a guest can see of the machine, and apart, the
    page-table pages held (in all, per domain, per context). Hardware context
    ids and IOTLB counters are left out: a restore does not keep them."""
    info = d.ctl("info")
    tables = {"frames_used": info["iommu"].pop("frames_used")}
    seen = {"info": info, "faults": d.ctl("faults"), "check": d.ctl("check")}
    for dom in seen["info"]["domains"]:
        tables[f"d{dom['domid']}"] = dom["table_pages"].pop("used")
        contexts = d.ctl("contexts", domid=dom["domid"])["contexts"]
        for c in contexts:
            tables[f"d{dom['domid']} ctx {c['ctx_no']}"] = c.pop("table_pages")
            del c["hw_id"], c["iotlb"]
        seen[f"contexts d{dom['domid']}"] = contexts
    for domid, ctx, dfn, count in WINDOWS:
        seen[f"dump d{domid} ctx {ctx} {dfn:#x}"] = d.ctl("dump", domid=domid, ctx_no=ctx,
                                                          dfn=dfn, count=count)
        with XenemuClient(d.socket(domid)) as xen:
            seen[f"lookups d{domid} ctx {ctx} {dfn:#x}"] = [
                (r.ret, r.op.lookup_page.gfn) for r in
                xen.pipeline([abi.encode_op(abi.IOMMUOP_lookup_page, ctx, 0, "lookup_page",
                                            dfn=dfn + i) for i in range(0, count, 7)])]
    for domid, gfn in [(0, 0x100), (0, 0x101), (0, 0x10), (7, 0x25), (1, 0)]:
        seen[f"mem d{domid} {gfn:#x}"] = d.ctl("mem_read", domid=domid, gfn=gfn, length=4096)
    for gfn in (0x3800, 0x3801, PAGED_IN, 0x3802):
        seen[f"p2m {gfn:#x}"] = d.ctl("p2m_get", domid=0, gfn=gfn)
    # Devices DMA where they are attached; the faulting one adds to the log, alike.
    for sbdf, addr in [("0000:00:03.0", (0x40000 << 12) + 4080), ("0000:01:00.0", 0),
                       ("0000:00:09.0", 0x9005 << 12), ("0000:00:02.0", 0x100000 << 12),
                       ("0000:00:05.0", 0)]:
        seen[f"dma {sbdf} {addr:#x}"] = d.ctl("dma", sbdf=sbdf, addr=addr, length=64)
    seen["faults after"] = d.ctl("faults")
    return seen, tables


def test_a_restored_daemon_shows_the_same_machine_and_goes_on(tmp_path, c_build):
    cfg = machine_file(tmp_path)
    first = DaemonProcess(tmp_path / "first", "--config", str(cfg))
    try:
        build_up(first)
        snap = first.ctl("snapshot", path=str(tmp_path / "machine.xs"))
        before, tables_before = observe(first)
    finally:
        assert first.stop() == 0
    assert snap["path"] == str(tmp_path / "machine.xs")
    assert snap["bytes"] == (tmp_path / "machine.xs").stat().st_size
    # Contexts: d0's 0, 1, 2 and d1's 0 and d7's 0, 1; d0's RAM 1:1, less its
    # paged-out, shared and unmapped gfns, plus what the guests mapped.
    assert (snap["domains"], snap["contexts"]) == (3, 6)
    assert snap["mappings"] == (16384 - 3 - 1 + 1) + 4096 + 2048 + (300 - 5 + 1 + 16) + 0x80
    assert snap["memory_pages"] == 4          # d0's gfns 0x100 and 0x101 (the DMA crossed), d1's, d7's
    assert "xenemu: snapshot written to" in first.log()
    assert_replays(first.trace)

    again = DaemonProcess(tmp_path / "again", "--restore", str(tmp_path / "machine.xs"))
    try:
        assert f"serving the machine restored from {tmp_path / 'machine.xs'}" in again.banner
        assert "d7 (d7, hardware domain, 4 contexts): XENEMU_SOCKET=" in again.banner
        assert "restored" in again.log() and "6 contexts" in again.log()
        after, tables_after = observe(again)
        for key in before:
            assert after[key] == before[key], key
        # Tables left empty by an unmap (d0's context 2 at dfn 0x200000) hold
        # pages that a restore, which maps only what is mapped, does not take.
        assert tables_after["d0 ctx 2"] < tables_before["d0 ctx 2"]
        assert all(tables_after[k] <= tables_before[k] for k in tables_before), \
            (tables_before, tables_after)
        assert after["p2m 0x3000"]["type"] == "paging_in"
        assert after["dma 0000:00:09.0 0x9005000"]["data"] == b"d7" * 32
        assert [f["kind"] for f in after["faults after"]["faults"]] == [
            "NOT_PRESENT", "WRITE", "READ", "NOT_PRESENT", "WIDTH", "INTR", "READ", "NOT_PRESENT"]
        # The C client reaches the restored domain that the control socket created.
        out = subprocess.run([str(c_build / "query_caps")],
                             env={"XENEMU_SOCKET": again.socket(7)},
                             capture_output=True, text=True, check=True).stdout
        assert "ret=0 max_ctx_no=4 " in out.replace("\n", " ")
        # The page-in goes on from the snapshot's time and completes.
        deadline = time.monotonic() + 10
        while again.ctl("p2m_get", domid=0, gfn=PAGED_IN)["type"] != "ram":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with XenemuClient(again.socket(0)) as xen:
            assert xen.lookup_page(0, PAGED_IN).op.lookup_page.gfn == PAGED_IN
            assert xen.map_pages(2, PAGED_IN, 0x200000, 1).ret == 0
            # Work on: unmap everything, free the contexts, devices back to context 0.
            for ctx, dfn, n in [(1, 0x40000, 0x10), (1, 0x40015, 256), (1, 0x40115, 300 - 0x115),
                                (1, 0x7ffff, 1),
                                (2, 0x100000, 16), (2, 0x200000, 1)]:
                assert xen.unmap_pages(ctx, dfn, n).ret == 0, (ctx, dfn)
            assert xen.free_context(1).ret == -E.EBUSY
            assert xen.free_context(1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
            assert xen.free_context(2, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
            assert xen.lookup_page(1, 0x40000).ret == -E.EINVAL
        with XenemuClient(again.socket(7)) as xen:
            assert xen.free_context(1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0
        for domid in (0, 7):
            assert [c["ctx_no"] for c in again.ctl("contexts", domid=domid)["contexts"]] == [0]
        info = again.ctl("info")
        assert all(d["table_pages"]["used"] == 0 for d in info["domains"])
        assert info["domains"][0]["devices"] == {"0000:00:02.0": 0, "0000:00:03.0": 0}
        assert again.ctl("check") == {"consistent": True, "problems": []}
    finally:
        assert again.stop() == 0
    # Its trace starts from the snapshot, and replays.
    assert assert_replays(again.trace).hypercalls > 0


def test_a_snapshot_is_written_at_shutdown_and_restores(tmp_path):
    path = tmp_path / "at-exit.xs"
    first = DaemonProcess(tmp_path / "first", "--config", str(machine_file(tmp_path)),
                          "--snapshot", str(path))
    with XenemuClient(first.socket(0)) as xen:
        ctx = xen.alloc_context().op.ctx_no
        assert xen.map_pages(ctx, 0x500, 0xabc00, 200).ret == 0
    first.ctl("mem_write", domid=1, gfn=0xfff, offset=4090, data=b"last!!")
    assert not path.exists()
    assert first.stop(signal.SIGTERM) == 0
    assert f"snapshot written to {path}" in first.log()
    assert not list(tmp_path.glob(".*.tmp"))
    again = DaemonProcess(tmp_path / "again", "--restore", str(path), "--snapshot", str(path))
    try:
        assert again.ctl("mem_read", domid=1, gfn=0xfff, offset=4090, length=6)["data"] == b"last!!"
        dump = again.ctl("dump", domid=0, ctx_no=ctx, dfn=0xabc00, count=200)
        assert dump["perms"] == b"\x03" * 200
        with XenemuClient(again.socket(0)) as xen:
            assert xen.lookup_page(ctx, 0xabcc7).op.lookup_page.gfn == 0x5c7
            assert xen.alloc_context().op.ctx_no == ctx + 1
        # Without a path the op writes the --snapshot file.
        assert again.ctl("snapshot")["contexts"] == 4
        # From the shell, a relative path is the caller's (the daemon runs in ROOT).
        out = subprocess.run([sys.executable, "-m", "xenemu.cli", "ctl", "--socket", again.control,
                              "snapshot", "path=here.xs"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and f"path: {tmp_path / 'here.xs'}\n" in out.stdout, out
        assert (tmp_path / "here.xs").stat().st_size > 0 and not (ROOT / "here.xs").exists()
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_a_daemon_killed_under_load_leaves_a_whole_snapshot(tmp_path):
    path = tmp_path / "live.xs"
    d = DaemonProcess(tmp_path / "live", "--config", str(machine_file(tmp_path)),
                      "--snapshot", str(path), record=False)
    # 8 MiB of memory, so that a snapshot takes a while to write: a kill may land in one.
    for i in range(16):
        d.ctl("dma", sbdf="0000:00:02.0", addr=i << 19, write=True,
              data=bytes([i + 1]) * (1 << 19))
    stop = threading.Event()
    mapped = []

    def load():
        with XenemuClient(d.socket(0)) as xen:
            ctx = xen.alloc_context().op.ctx_no
            i = 0
            while not stop.is_set():
                try:
                    assert xen.map_pages(ctx, i % 0x3f00, 0x10000 + i, 4).ret == 0
                except XenemuError:     # killed under it
                    return
                mapped.append(i)
                i += 4

    t = threading.Thread(target=load, daemon=True)
    t.start()
    while not mapped:
        time.sleep(0.01)
    assert d.ctl("snapshot")["memory_pages"] == 16 * 128
    # Snapshot requests in flight when the daemon dies: one of them is being written.
    ctl = raw_conn(d.control)
    ctl.sendall(b"".join(msgpack.packb({"op": "snapshot"}) for _ in range(50)))
    time.sleep(0.3)
    d.stop(signal.SIGKILL)
    ctl.close()
    stop.set()
    t.join(10)
    again = DaemonProcess(tmp_path / "again", "--restore", str(path), record=False)
    try:
        ctx = again.ctl("contexts", domid=0)["contexts"][1]
        assert ctx["ctx_no"] == 1 and ctx["mapped"] % 4 == 0 and ctx["mapped"] > 0
        assert again.ctl("mem_read", domid=0, gfn=15 << 7, length=4)["data"] == b"\x10" * 4
        assert again.ctl("check")["consistent"]
    finally:
        assert again.stop() == 0


def test_a_context_being_freed_is_restored_dying_and_the_next_free_finishes_it(tmp_path):
    path = tmp_path / "mid-free.xs"
    d = DaemonProcess(tmp_path / "first", record=False)
    try:
        with XenemuClient(d.socket(0)) as xen:
            for attempt in range(10):
                ctx = xen.alloc_context().op.ctx_no
                maps = xen.pipeline([abi.encode_op(abi.IOMMUOP_map_pages, ctx, RW, "map_pages",
                                                   gfn=i, dfn=i, nr_pages=256)
                                     for i in range(0, 1 << 18, 256)])
                assert all(r.ret == 0 for r in maps)
                # The free continues round by round; the snapshot request, sent
                # at once, is served between two of its rounds.
                ctl = raw_conn(d.control)
                xen.send_raw(encode_call(9999, abi.HYPERVISOR_iommu_op, (OP_GADDR,), (
                    Region(OP_GADDR, abi.encode_op(abi.IOMMUOP_free_context, ctx)),)))
                ctl.sendall(msgpack.packb({"op": "snapshot", "path": str(path)}))
                assert msgpack.unpackb(ctl.recv(4096))["ok"]
                ctl.close()
                assert xen.receive_frame().ret == 0
                saved = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
                if [c for c in saved["domains"][0]["contexts"] if c["dying"]]:
                    break
            else:
                pytest.skip("the snapshot never landed between two rounds of the free")
    finally:
        assert d.stop() == 0
    again = DaemonProcess(tmp_path / "again", "--restore", str(path))
    try:
        dying = again.ctl("contexts", domid=0)["contexts"][1]
        assert (dying["ctx_no"], dying["dying"], dying["mapped"]) == (ctx, True, 0)
        with XenemuClient(again.socket(0)) as xen:
            assert xen.lookup_page(ctx, 5).ret == -E.EINVAL
            assert xen.map_pages(ctx, 5, 5, 1).ret == -E.EINVAL
            assert xen.reattach_device(ctx, bus=0, devfn=2 << 3).ret == -E.EINVAL
            assert xen.free_context(ctx).ret == 0
            assert xen.alloc_context().op.ctx_no == ctx
        assert again.ctl("check")["consistent"]
    finally:
        assert again.stop() == 0
    assert_replays(again.trace)


def test_a_failed_snapshot_write_is_an_error_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "keep.xs"
    # Files the daemon writes stop at 256 KiB (RLIMIT_FSIZE), as on a full disk.
    d = DaemonProcess(tmp_path / "full", "--config", str(machine_file(tmp_path)),
                      "--snapshot", str(path), record=False,
                      log_level="info", max_file_size=256 << 10)
    try:
        with pytest.raises(ControlError, match=r"cannot write a snapshot to /nonexistent/x.xs: "
                                               r"No such file or directory"):
            d.ctl("snapshot", path="/nonexistent/x.xs")
        good = d.ctl("snapshot")
        kept = path.read_bytes()
        d.ctl("dma", sbdf="0000:00:02.0", addr=0, write=True, data=b"\x5a" * (1 << 19))
        with pytest.raises(ControlError, match=f"cannot write a snapshot to {path}: "
                                               f"File too large"):
            d.ctl("snapshot")
        assert path.read_bytes() == kept and len(kept) == good["bytes"]
        assert not list(path.parent.glob(".*.tmp"))
        with XenemuClient(d.socket(0)) as xen:    # and it serves on
            assert xen.query_capabilities().ret == 0
    finally:
        rc = d.stop()
    # The snapshot at shutdown fails too: exit status 3, with the reason.
    assert rc == 3
    assert f"xenemu: cannot write a snapshot to {path}: File too large" in d.log()
    assert path.read_bytes() == kept


def test_a_mapping_at_the_top_of_a_48_bit_space_is_found_without_a_scan(tmp_path):
    """The snapshot reads from one mapped dfn to the next, skipping empty
    tables: a page at dfn 2^36 - 1 is found in well under the minutes a scan
    of 2^36 entries would take (the test would time out)."""
    d = DaemonProcess(tmp_path, "--config", str(machine_file(tmp_path)), record=False)
    top = (1 << 36) - 1
    try:
        with XenemuClient(d.socket(0)) as xen:
            assert xen.alloc_context().ret == 0
            assert xen.map_pages(1, 0x20, top - 1, 2).ret == 0
        assert d.ctl("snapshot", path=str(tmp_path / "top.xs"))["mappings"] >= 2
    finally:
        assert d.stop() == 0
    snap = msgpack.unpackb((tmp_path / "top.xs").read_bytes(), raw=False, strict_map_key=False)
    ctx1 = next(c for c in snap["domains"][0]["contexts"] if c["ctx_no"] == 1)
    assert ctx1["mappings"] == [[top - 1, 0x20, 2, 3]]


def test_ctl_snapshot_without_a_file_says_how_to_give_one(daemon):
    with pytest.raises(ControlError, match="give path=FILE, or start the daemon with "
                                           "--snapshot FILE"):
        daemon.ctl("snapshot")
    with pytest.raises(ControlError, match="snapshot: path: expected str, got int"):
        daemon.ctl("snapshot", path=3)


def test_snapshots_asked_at_once_for_one_file_are_written_one_after_the_other(daemon, tmp_path):
    """Snapshots are written off the event loop; two written to one file at
    once would share its temporary file (one renaming the other's half-written
    bytes into place, the other failing). The daemon writes them in turn."""
    for addr in range(0, 8 << 20, 1 << 19):     # 8 MiB of guest memory to write each time
        daemon.ctl("dma", sbdf="0000:00:02.0", addr=addr, write=True, data=b"\x5a" * (1 << 19))
    target = tmp_path / "one.xs"
    request = msgpack.packb({"op": "snapshot", "path": str(target)})
    for _ in range(3):
        conns = [raw_conn(daemon.control) for _ in range(4)]
        for c in conns:
            c.sendall(request)
        replies = []
        for c in conns:
            unpacker = msgpack.Unpacker(raw=False)
            while not (got := list(unpacker)):
                unpacker.feed(c.recv(65536))
            replies += got
            c.close()
        assert all(r["ok"] for r in replies), replies
        snap = msgpack.unpackb(target.read_bytes(), raw=False, strict_map_key=False)
        assert snap["domains"][0]["memory"], "a whole snapshot, guest memory included"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


# -- snapshots that cannot be restored ---------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A real snapshot, to break in different ways."""
    tmp = tmp_path_factory.mktemp("saved")
    d = DaemonProcess(tmp, "--config", str(machine_file(tmp)), record=False)
    try:
        with XenemuClient(d.socket(0)) as xen:
            assert xen.alloc_context().ret == 0
            assert xen.map_pages(1, 0x10, 0x10, 8).ret == 0
        # A full fault log (256 records) and its overflow flag: one request stream.
        ctl = raw_conn(d.control)
        ctl.sendall(b"".join(msgpack.packb({"op": "dma", "sbdf": "0000:00:05.0",
                                            "addr": (1 << 50) + i, "length": 1})
                             for i in range(260)))
        replies, answered = msgpack.Unpacker(raw=False), 0
        while answered < 260:
            replies.feed(ctl.recv(1 << 16))
            for reply in replies:
                assert reply["faulted"], reply
                answered += 1
        ctl.close()
        d.ctl("snapshot", path=str(tmp / "good.xs"))
    finally:
        assert d.stop() == 0
    return msgpack.unpackb((tmp / "good.xs").read_bytes(), raw=False, strict_map_key=False)


def edited(saved: dict, edit) -> bytes:
    snap = msgpack.unpackb(msgpack.packb(saved), raw=False, strict_map_key=False)
    edit(snap)
    return msgpack.packb(snap)


def d0(snap: dict) -> dict:
    return snap["domains"][0]


BROKEN = {
    "cut": (lambda s: msgpack.packb(s)[:-20], "not a whole xenemu snapshot"),
    "garbage": (lambda s: b"\x00garbage" * 50, "not a whole xenemu snapshot"),
    "trace": (lambda s: (ROOT / "tests/traces/linux-driver.xt").read_bytes()[:5000],
              "not a whole xenemu snapshot"),
    "map": (lambda s: msgpack.packb({"hello": 1}), "not a xenemu snapshot"),
    "newer": (lambda s: msgpack.packb({**s, "xenemu_snapshot": 2}),
              "snapshot format 2; this xenemu reads format 1"),
    "revision": (lambda s: msgpack.packb({**s, "abi": {"pv_iommu_revision": 2}}),
                 "a machine of PV-IOMMU revision 2"),
    "beyond-memory": (lambda s: edited(s, lambda e: d0(e)["contexts"][1]["mappings"].append(
        [0x500, 0x3fff, 2, 3])), "cannot be restored: domains[0].contexts[1].mappings[1]: "
                                 "gfns 0x3fff+2 are beyond d0's memory (16384 pages)"),
    "overlap": (lambda s: edited(s, lambda e: d0(e)["contexts"][1]["mappings"].append(
        [0x12, 0x40, 1, 3])), "domains[0].contexts[1].mappings[1]: stopped at dfn 0x12 (PRESENT)"),
    "slot": (lambda s: edited(s, lambda e: d0(e)["contexts"][1].update(ctx_no=9)),
             "domains[0].contexts[1]: ctx_no 9 is not a free slot of a pool of 8"),
    "device": (lambda s: edited(s, lambda e: d0(e)["contexts"][1]["devices"].append(
        "0000:00:03.0")), "domains[0].contexts[1].devices[0]: 0000:00:03.0 is not d0's, is "
                          "listed twice"),
    "p2m": (lambda s: edited(s, lambda e: d0(e).update(p2m=[[1, 2, "lava"]])),
            "domains[0].p2m[0][2]: invalid enum value 'lava'"),
    "fault": (lambda s: edited(s, lambda e: e["faults"]["records"][0].__setitem__(2, "READ")),
              "faults.records[0]: READ at 0x4000000000000 is not a fault the IOMMU records: "
              "the fault log cannot be made again as recorded"),
    "fault-device": (lambda s: edited(s, lambda e: e["faults"]["records"][3].__setitem__(
        0, "0000:00:09.0")), "faults.records[3]: 0000:00:09.0: no such device"),
    "fault-overflow": (lambda s: edited(s, lambda e: e["faults"].update(
        records=e["faults"]["records"][:10])),
        "faults: 10 records and the overflow flag: the fault log cannot be made again"),
    "field": (lambda s: edited(s, lambda e: d0(e).pop("memory")),
              "domains[0]: object missing required field memory"),
    # Issue 12: these ended in tracebacks.
    "dfn-minus-1": (lambda s: edited(s, lambda e: d0(e)["contexts"][1]["mappings"].append(
        [-1, 0x40, 1, 3])), "domains[0].contexts[1].mappings[1][0]: expected int in [0, 2^64)"),
    "dfn-past-width": (lambda s: edited(s, lambda e: d0(e)["contexts"][1]["mappings"].append(
        [1 << 36, 0x40, 1, 3])), "domains[0].contexts[1].mappings[1]: dfns 0x1000000000+1 are "
                                 "beyond the 48-bit address width"),
    "quarantined-int": (lambda s: edited(s, lambda e: e.update(quarantined=[5])),
                        "quarantined[0]: expected str, got int"),
    "machine-devices": (lambda s: edited(s, lambda e: e["machine"]["domain"][0].update(
        devices=[5])), "machine.domain[0].devices[0]: expected str, got int"),
    "machine-huge": (lambda s: edited(s, lambda e: e["machine"].update(memory_mib=1 << 20)),
                     "machine.memory_mib: expected int <= 65536"),
    "machine-small": (lambda s: edited(s, lambda e: e["machine"].update(memory_mib=64)),
                      "machine.domain[0].memory_mib: the domains up to d0"),
    "p2m-overlap": (lambda s: edited(s, lambda e: d0(e).update(
        p2m=[[8, 4, "mmio"], [10, 1, "shared"]])), "domains[0].p2m[1]: runs overlap"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_snapshots_are_refused_with_one_line(tmp_path, saved, capsys, name):
    """`xenemu serve --restore` (its main(), in process) returns 2 and says
    why in one line, before it opens any socket."""
    content, message = BROKEN[name]
    path = tmp_path / f"{name}.xs"
    path.write_bytes(content(saved))
    rc = cli.main(["serve", "--restore", str(path), "--socket-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert rc == 2 and not out and not (tmp_path / "s").exists()
    assert err.startswith(f"xenemu: {path}: ") and err.count("\n") == 1, err
    assert message in err


def test_the_daemon_process_refuses_them_too(tmp_path, saved):
    """The same as a process: exit status 2, the reason last on stderr (a
    content error comes after the log lines of the domains it created)."""
    procs = {}
    for name in ("cut", "beyond-memory"):
        path = tmp_path / f"{name}.xs"
        path.write_bytes(BROKEN[name][0](saved))
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "xenemu.cli", "serve", "--restore", str(path),
             "--socket-dir", str(tmp_path / name)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        last = err.splitlines()[-1] if err else ""
        assert proc.returncode == 2 and not out, (name, out, err)
        assert last.startswith(f"xenemu: {tmp_path / name}.xs: ") and BROKEN[name][1] in last, err
        assert "Traceback" not in err


def test_the_saved_snapshot_itself_restores(tmp_path, saved):
    path = tmp_path / "good.xs"
    path.write_bytes(msgpack.packb(saved))
    d = DaemonProcess(tmp_path, "--restore", str(path))
    try:
        faults = d.ctl("faults")
        assert faults["overflow"] and faults["faults"] == [
            {"sbdf": "0000:00:05.0", "addr": (1 << 50) + i, "kind": "WIDTH", "write": False}
            for i in range(256)]
        # The log was loaded as it was, not made again by DMA through a
        # scratch context: the IOMMU has counted nothing since the restore.
        assert set(d.ctl("counters")["iotlb"].values()) == {0}, d.ctl("counters")
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)
