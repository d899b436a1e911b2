"""Dirty tracking, xenemu's extension of revision 2 (abi/NESTED.md), through
the public interface: alloc_context's flag, DMA on the control socket
setting A/D bits, read-and-clear by sub-op 13 (the bitmap in guest memory)
and by the control op, each error path, the machine option, snapshots.
Every machine is recorded and its trace replayed (support.checked_local)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from support import DaemonProcess, abi_includes, assert_replays, checked_local
from xenemu import snapshot
from xenemu.cli import main
from xenemu.client import RevisionTwoClient
from xenemu.ctl import ControlError
from xenemu.hypercalls import iommu_op_dirty as dirty
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import default_machine

DEV = "0000:01:00.0"            # d1's device: bus 1, devfn 0
GFN = 0x300                     # dfn i -> gfn GFN + i
TRACK = dirty.ALLOC_dirty_tracking
READ_ONLY = 5                   # the one page mapped read-only


def machine(nested: bool = True):
    return dataclasses.replace(default_machine(2), nested=nested)


@pytest.fixture
def m(tmp_path):
    with checked_local(machine(), tmp_path / "dirty.xt") as local:
        yield local


def tracked(m, flags: int = TRACK):
    """d1 initialised; a context allocated with `flags`, mapping pages 0..15
    (page READ_ONLY read-only), its device attached to it."""
    xen = m.client(1)
    assert xen.init(4, 4).ok
    r = xen.alloc_context(alloc_flags=flags)
    assert r.ok, r.name
    ctx = r.op.ctx_no
    assert xen.map_pages(ctx, GFN, 0, READ_ONLY).ok
    assert xen.map_pages(ctx, GFN + READ_ONLY, READ_ONLY, 1, map_flags=v2.IOMMU_MAP_readable).ok
    assert xen.map_pages(ctx, GFN + 6, 6, 10).ok
    assert xen.reattach_device(ctx, 0, 1, 0).ok
    return xen, ctx


def dma(m, page: int, write: bool, offset: int = 0):
    addr = page << 12 | offset
    if write:
        return m.ctl("dma", sbdf=DEV, addr=addr, write=True, data=b"dirty!")
    return m.ctl("dma", sbdf=DEV, addr=addr, length=8)


def bits(bitmap: bytes, n: int) -> list[int]:
    """The pages whose bit is set, as iommufd's bitmaps number them."""
    return [i for i in range(n) if bitmap[i >> 3] >> (i & 7) & 1]


def test_writes_set_d_reads_set_a_and_read_and_clear_clears(m):
    xen, ctx = tracked(m)
    dma(m, 1, write=False)
    dma(m, 2, write=True)
    dma(m, 9, write=True, offset=0xFFC)     # crosses into page 10: both written
    assert dma(m, READ_ONLY, write=True)["faulted"]     # refused: A (the walk), no D
    dma(m, READ_ONLY, write=False)
    peek = m.ctl("read_dirty", domid=1, ctx_no=ctx, count=16, clear=False)
    assert bits(peek["dirty"], 16) == [2, 9, 10] and peek["nr_dirty"] == 3
    assert bits(peek["accessed"], 16) == [1, 2, READ_ONLY, 9, 10]
    r = xen.read_dirty_bitmap(ctx, 0, 16)
    assert r.ok and r.op.nr_dirty == 3 and bits(r.inner, 16) == [2, 9, 10]
    r = xen.read_dirty_bitmap(ctx, 0, 16)
    assert r.ok and r.op.nr_dirty == 0 and r.inner == bytes(2)
    again = m.ctl("read_dirty", domid=1, ctx_no=ctx, count=16, clear=False)
    assert bits(again["accessed"], 16) == [1, 2, READ_ONLY, 9, 10]     # A is kept


def test_a_write_through_a_read_cached_entry_sets_d(m):
    """Page 3 read first: the IOTLB caches it writable with D clear; the
    write that hits it walks again and sets D. After a clear, the pages'
    entries are gone: the next write walks and sets D again."""
    xen, ctx = tracked(m)
    dma(m, 3, write=False)
    dma(m, 3, write=True)
    assert bits(xen.read_dirty_bitmap(ctx, 0, 8).inner, 8) == [3]
    dma(m, 3, write=True)
    dma(m, 3, write=True)
    assert bits(xen.read_dirty_bitmap(ctx, 0, 8).inner, 8) == [3]
    assert m.ctl("check")["consistent"]


def test_no_clear_keeps_the_bits_and_the_range_is_the_callers(m):
    xen, ctx = tracked(m)
    for page in (0, 7, 8, 15):
        dma(m, page, write=True)
    r = xen.read_dirty_bitmap(ctx, 7, 9, flags=dirty.READ_DIRTY_no_clear)
    assert r.ok and bits(r.inner, 9) == [0, 1, 8]      # pages 7, 8, 15 from dfn 7
    r = xen.read_dirty_bitmap(ctx, 8, 1)               # clears page 8 only
    assert r.inner == b"\x01"
    r = xen.read_dirty_bitmap(ctx, 0, 16)
    assert bits(r.inner, 16) == [0, 7, 15]
    assert xen.read_dirty_bitmap(ctx, 0, 0).ok          # nothing to read, nothing written
    big = xen.read_dirty_bitmap(ctx, 0, dirty.MAX_PAGES)   # the bound, mostly holes
    assert big.ok and big.op.nr_dirty == 0 and len(big.inner) == dirty.MAX_PAGES // 8


@pytest.mark.parametrize("call,errno", [
    (lambda x, c: x.read_dirty(c, 0, 8, bitmap=0x1234_5000), "-EFAULT"),   # not guest memory
    (lambda x, c: x.read_dirty(c, 0, 8), "-EFAULT"),                       # a null handle
    (lambda x, c: x.read_dirty_bitmap(c, 0, 8, flags=2), "-EINVAL"),
    (lambda x, c: x.read_dirty_bitmap(c + 1, 0, 8), "-ENOENT"),
    (lambda x, c: x.read_dirty_bitmap(0, 0, 8), "-EINVAL"),                # not tracked
    (lambda x, c: x.read_dirty(c, 0, dirty.MAX_PAGES + 1), "-E2BIG"),
    (lambda x, c: x.read_dirty_bitmap(c, (1 << 36) - 4, 8), "-ERANGE"),   # past 48 bits
])
def test_errors_lose_no_dirty_bit(m, call, errno):
    xen, ctx = tracked(m)
    dma(m, 4, write=True)
    assert call(xen, ctx).name == errno
    assert bits(xen.read_dirty_bitmap(ctx, 0, 8).inner, 8) == [4]


def test_nested_dma_sets_its_stage_2_bits(m):
    """VT-d's second-level A/D on nested walks: DMA with a PASID through a
    nested context over a tracked context sets A on the stage-2 entries of
    the stage-1 table pages it reads and of the page it reaches, D for a
    write; a read-and-clear of the parent drops the children's cached
    translations, so the next nested write sets D again; a write through a
    translation a read cached walks again."""
    xen, ctx = tracked(m)
    root = 0x100                        # stage-1 tables at gfns (and parent dfns) 0x100..0x103
    assert xen.map_pages(ctx, root, root, 4).ok
    for level in range(3):
        m.ctl("mem_write", domid=1, gfn=root + level,
              data=(root + level + 1 << 12 | 3).to_bytes(8, "little"))
    m.ctl("mem_write", domid=1, gfn=root + 3, data=(2 << 12 | 3).to_bytes(8, "little"))
    nested = xen.alloc_nested(root, ctx_no=ctx).op.ctx_no
    assert xen.attach_pasid(nested, 9, 0, 1, 0).ok
    read = m.ctl("dma", sbdf=DEV, pasid=9, addr=8, length=4)      # cached by a read
    assert read["done"] == 4
    seen = m.ctl("read_dirty", domid=1, ctx_no=ctx, dfn=0, count=0x104, clear=False)
    assert bits(seen["dirty"], 0x104) == []
    assert bits(seen["accessed"], 0x104) == [2, 0x100, 0x101, 0x102, 0x103]
    reply = m.ctl("dma", sbdf=DEV, pasid=9, addr=8, write=True, data=b"nested")
    assert reply["done"] == 6 and m.ctl("mem_read", domid=1, gfn=GFN + 2, offset=8,
                                        length=6)["data"] == b"nested"
    assert bits(xen.read_dirty_bitmap(ctx, 0, 4).inner, 4) == [2]      # read and cleared
    assert xen.read_dirty_bitmap(ctx, 0, 4).inner == b"\0"
    m.ctl("dma", sbdf=DEV, pasid=9, addr=16, write=True, data=b"again")
    assert bits(xen.read_dirty_bitmap(ctx, 0, 4).inner, 4) == [2]
    assert not m.ctl("check")["problems"]


def test_contexts_without_the_flag_and_nested_ones_keep_no_bits(m):
    xen, ctx = tracked(m, flags=0)
    dma(m, 2, write=True)
    assert xen.read_dirty_bitmap(ctx, 0, 8).name == "-EINVAL"
    with pytest.raises(ControlError, match="allocated without XENEMU_IOMMU_ALLOC_dirty_tracking"):
        m.ctl("read_dirty", domid=1, ctx_no=ctx, count=8)
    nested = xen.alloc_nested(0x100).op.ctx_no
    with pytest.raises(ControlError, match=f"context {nested} is nested"):
        m.ctl("read_dirty", domid=1, ctx_no=nested, count=8)


def test_the_control_op_checks_its_arguments(m):
    xen, ctx = tracked(m)
    for bad, why in (({"count": 0}, "count"), ({"count": dirty.MAX_PAGES + 1}, "count"),
                     ({"count": 8, "ctx_no": 9}, "context 9 not allocated"),
                     ({"count": 8, "dfn": 1 << 36}, "beyond the IOMMU's width")):
        with pytest.raises(ControlError, match=why):
            m.ctl("read_dirty", **{"domid": 1, "ctx_no": ctx, **bad})


def test_a_machine_without_nested_keeps_xens_answers(tmp_path):
    with checked_local(machine(nested=False), tmp_path / "plain.xt") as m:
        xen = m.client(1)
        assert xen.init(4, 4).ok
        ctx = xen.alloc_context(alloc_flags=TRACK).op.ctx_no     # the flag ignored, as Xen does
        r = xen.read_dirty_bitmap(ctx, 0, 8)
        assert r.name == "-EOPNOTSUPP" and r.inner == bytes(1)    # nothing written
        with pytest.raises(ControlError, match="allocated without"):
            m.ctl("read_dirty", domid=1, ctx_no=ctx, count=8)


def saved(hv) -> dict:
    """A snapshot as a file holds it (msgpack's types)."""
    import msgpack
    return msgpack.unpackb(msgpack.packb(snapshot.take(hv), use_bin_type=True), raw=False)


def test_snapshots_keep_the_flag_and_the_bits(m):
    xen, ctx = tracked(m)
    dma(m, 1, write=False)
    dma(m, 2, write=True)
    dma(m, 3, write=True)
    snap = saved(m.hv)
    entry = next(c for c in snap["domains"][1]["contexts"] if c["ctx_no"] == ctx)
    assert entry["dirty_tracking"] is True
    assert (entry["accessed"], entry["dirty"]) == ([[1, 3]], [[2, 2]])
    hv = snapshot.restore(snap)
    hw_id = hv.domains[1].context(ctx).hw_id
    dirty, accessed, n = hv.iommu.read_dirty(hw_id, 0, 16, clear=False)
    assert (bits(dirty, 16), bits(accessed, 16), n) == ([2, 3], [1, 2, 3], 2)
    assert not hv.check_invariants()
    hv.iommu.read_dirty(hw_id, 0, 16)                          # cleared
    hv.dma(0x100, 7 << 12, data=b"again")
    assert bits(hv.iommu.read_dirty(hw_id, 0, 16)[0], 16) == [7]  # tracking goes on


@pytest.mark.parametrize("change, message", [
    (lambda e, z: z.update(dirty_tracking=True), r"contexts\[0\]\.dirty_tracking"),
    (lambda e, z: e.update(accessed=[[4, 20]]), r"accessed\[0\]: pages 0x4\+20 are not within"),
    (lambda e, z: e.update(accessed=[[1, 1]], dirty=[[2, 1]]), r"a dirty page outside"),
    (lambda e, z: z.update(accessed=[[0, 1]]), r"contexts\[0\]: accessed or dirty pages of a "
                                               r"context without dirty_tracking"),
])
def test_a_snapshot_with_bits_it_cannot_have_is_refused(m, change, message):
    xen, ctx = tracked(m)
    assert xen.unmap_pages(ctx, 0, 1).ok            # page 0 not mapped
    dma(m, 2, write=True)
    snap = saved(m.hv)
    contexts = snap["domains"][1]["contexts"]
    change(next(c for c in contexts if c["ctx_no"] == ctx), contexts[0])
    with pytest.raises(snapshot.SnapshotError, match=message):
        snapshot.restore(snap)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_loading_bits_checks_every_page_first(impl):
    """The hardware's loader (a restore's): all or nothing, the page at
    fault named; C and its twin alike."""
    from xenemu.hw import native, reference
    hwm = {"native": native, "reference": reference}[impl]
    memory = hwm.Memory(64 << 20)
    io = hwm.Iommu(memory, width=39)
    ctx = io.alloc_context()
    io.map(ctx, 0, range(100, 104), 3)
    one = bytes([0b1111])
    with pytest.raises(Exception) as refused:       # tracking is off
        io.load_dirty(ctx, 0, 4, bytes(1), one)
    assert refused.value.status.name == "INVAL"
    io.dirty_track(ctx, True)
    with pytest.raises(Exception) as refused:       # page 4 is not mapped
        io.load_dirty(ctx, 0, 5, bytes(1), bytes([0b11111]))
    assert (refused.value.status.name, refused.value.index) == ("NOTPRESENT", 4)
    with pytest.raises(Exception) as refused:       # D without A
        io.load_dirty(ctx, 0, 4, bytes([0b0100]), bytes([0b0011]))
    assert (refused.value.status.name, refused.value.index) == ("INVAL", 2)
    assert io.read_dirty(ctx, 0, 4, clear=False)[1] == bytes(1)     # nothing was set
    io.load_dirty(ctx, 0, 4, bytes([0b0100]), bytes([0b0110]))
    dirty, accessed, n = io.read_dirty(ctx, 0, 4, clear=False)
    assert (dirty, accessed, n) == (bytearray([0b0100]), bytearray([0b0110]), 1)


def test_through_the_daemon(tmp_path, capsys):
    """The sub-op through a daemon's socket, DMA and read_dirty on its
    control socket and through `xenemu ctl` (runs of pages); the trace
    replays."""
    config = tmp_path / "dirty.toml"
    config.write_text('pv_iommu_revision = 2\nnested = true\n'
                      '[[domain]]\ndomid = 1\nmemory_mib = 16\ndevices = ["01:00.0"]\n')
    daemon = DaemonProcess(tmp_path / "d", "--config", str(config))
    try:
        with RevisionTwoClient(daemon.socket(1)) as xen:
            assert xen.init(4, 4).ok
            ctx = xen.alloc_context(alloc_flags=TRACK).op.ctx_no
            assert xen.map_pages(ctx, GFN, 0, 4).ok
            assert xen.reattach_device(ctx, 0, 1, 0).ok
            daemon.ctl("dma", sbdf=DEV, addr=0x1000, write=True, data=b"x")
            assert bits(daemon.ctl("read_dirty", domid=1, ctx_no=ctx, count=4,
                                   clear=False)["dirty"], 4) == [1]
            assert main(["ctl", "--socket", daemon.control, "read_dirty", "domid=1",
                         f"ctx_no={ctx}", "count=4", "clear=false"]) == 0
            shown = capsys.readouterr().out.split("\n")
            assert "1 of 4 pages dirty" in shown[0]
            assert [line.split() for line in shown[3:5]] == [["0x1..0x1", "1", "D"],
                                                             ["0x1..0x1", "1", "A"]]
            r = xen.read_dirty_bitmap(ctx, 0, 4)
            assert r.ok and r.inner == b"\x02"
            assert daemon.ctl("read_dirty", domid=1, ctx_no=ctx, count=4)["nr_dirty"] == 0
    finally:
        daemon.stop()
    assert_replays(daemon.trace)


@pytest.mark.parametrize("compiler,std", [("gcc", "-std=c99"), ("g++", "-std=c++17")])
def test_the_header_matches_the_python_layout(tmp_path, compiler, std):
    """pv-iommu-nested.h's read_dirty struct and constants are the bytes and
    numbers the handler reads (its static asserts pin the offsets)."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    src = tmp_path / "t.c"
    src.write_text(
        "#include <stdio.h>\n#include <string.h>\n#include <xen/pv-iommu-nested.h>\n"
        "int main(void) { struct xenemu_iommu_read_dirty r; unsigned char b[32];\n"
        "  memset(&r, 0, sizeof(r)); r.ctx_no = 0x1234; r.flags = 1; r.nr_pages = 0x9876;\n"
        "  r.nr_dirty = 5; r.dfn = 0x123456789ULL; r.bitmap = 0xABCDEF012ULL;\n"
        "  memcpy(b, &r, sizeof(b)); for (int i = 0; i < 32; i++) printf(\"%02x\", b[i]);\n"
        "  printf(\" %u %u %u %u\\n\", (unsigned)XENEMU_IOMMU_read_dirty,\n"
        "         (unsigned)XENEMU_IOMMU_ALLOC_dirty_tracking,\n"
        "         (unsigned)XENEMU_IOMMU_READ_DIRTY_no_clear,\n"
        "         (unsigned)XENEMU_IOMMU_READ_DIRTY_MAX_PAGES); return 0; }\n")
    lang = ["-x", "c++"] if compiler == "g++" else []
    prog = tmp_path / "prog"
    subprocess.run([compiler, std, "-Wall", "-Wextra", "-Werror", "-pedantic", *abi_includes(2),
                    *lang, str(src), "-o", str(prog)], check=True, capture_output=True, text=True)
    raw, *numbers = subprocess.run([str(prog)], check=True, capture_output=True,
                                   text=True).stdout.split()
    assert bytes.fromhex(raw) == dirty.ReadDirty.build(dict(
        ctx_no=0x1234, _pad=bytes(2), flags=1, nr_pages=0x9876, nr_dirty=5, dfn=0x123456789,
        bitmap=0xABCDEF012))
    assert [int(n) for n in numbers] == [dirty.IOMMU_read_dirty, dirty.ALLOC_dirty_tracking,
                                         dirty.READ_DIRTY_no_clear, dirty.MAX_PAGES]
