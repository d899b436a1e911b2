"""The C client's revision-2 calls on the wire, checked against a fake daemon
(no hypervisor involved): op 43, subop in args[0], the struct's address in
args[1], the struct the sub-op names as a region (and remote_cmd's inner
struct as a second one), nothing read where Xen reads nothing, and the
reply's regions copied back into the caller's structs."""

from __future__ import annotations

import struct
import subprocess

import pytest

from fakexen import FakeXen
from rev2_layout import STRUCTS
from support import ROOT, compile_c
from xenemu.wire import Region

HYPERVISOR_iommu_op = 43
BOGUS = 0x10            # the runner's unmapped address: reading it would crash the runner
WRAP = (1 << 64) - 4    # the runner's address where a struct would wrap past 2^64
UNTOUCHED = 0xEE        # the runner's fill past each struct


def pack(name: str, **values: int) -> bytes:
    """A revision-2 struct laid out from the reference file's table."""
    size, fields = STRUCTS[name]
    raw = bytearray(size)
    for field, value in values.items():
        off, n = fields[field]
        raw[off:off + n] = value.to_bytes(n, "little")
    return bytes(raw)


MAP = pack("pv_iommu_map_pages", ctx_no=2, gfn=0x12345, dfn=0xABCDE, map_flags=3, pgsize=4096,
           nr_pages=16, mapped=5)


def remote(subop: int, domid: int = 1) -> bytes:
    return pack("pv_iommu_remote_cmd", domid=domid, subop=subop)


# (subop, arg, inner): arg and inner as rev2_runner takes them (bytes, "null", "bogus", "wrap",
# "self")
CASES = [
    (0, "bogus", None),
    (1, pack("pv_iommu_capabilities", max_iova_addr=0x1111, pad0=0x2222), None),
    (2, pack("pv_iommu_init", max_ctx_no=128, arena_order=12), None),
    (3, pack("pv_iommu_alloc", ctx_no=0xFFFF, alloc_flags=1), None),
    (4, pack("pv_iommu_free", ctx_no=3, free_flags=1), None),
    (5, pack("pv_iommu_reattach_device", ctx_no=2, **{"dev.seg": 1, "dev.bus": 3,
                                                       "dev.devfn": 0x10}, pasid=7), None),
    (6, MAP, None),
    (7, pack("pv_iommu_unmap_pages", ctx_no=2, dfn=0xABCDE, pgsize=4096, nr_pages=16,
             unmapped=1), None),
    (6, "null", None),
    (8, remote(6), MAP),
    (8, remote(2, domid=7), pack("pv_iommu_init", max_ctx_no=64, arena_order=9)),
    (8, remote(6), "null"),
    (8, remote(6), "self"),        # inner struct overlaps the remote_cmd: one region for both
    (8, remote(8), "bogus"),       # nested remote_cmd: Xen refuses it before reading its arg
    (8, remote(0), "bogus"),
    (8, remote(99), "bogus"),
    (8, "null", None),
    (6, "wrap", None),             # no such guest memory: sent without a region (-EFAULT)
    (8, remote(6), "wrap"),
    (9, "bogus", None), (10, "bogus", None), (11, "bogus", None), (12, "bogus", None),
    (13, "bogus", None), (0xFFFFFFFF, "bogus", None),
]


def flip(data: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in data)


def scribble(call):
    """A hypervisor that wrote every byte it was given, returning -(subop % 1000) - 1."""
    return -(call.args[0] % 1000) - 1, tuple(Region(r.gaddr, flip(r.data)) for r in call.regions)


@pytest.fixture(scope="module")
def runner(c_build, tmp_path_factory):
    return compile_c(ROOT / "tests" / "c" / "rev2_runner.c",
                     tmp_path_factory.mktemp("c") / "rev2_runner", str(c_build / "libxenemu.a"),
                     abi_revision=2)


def _word(spec) -> str:
    return spec.hex() if isinstance(spec, bytes) else spec


def run(runner, path, lines: list[str]) -> list[list[str]]:
    out = subprocess.run([str(runner)], input="".join(line + "\n" for line in lines),
                         env={"XENEMU_SOCKET": str(path)}, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [line.split() for line in out.splitlines()]


def expected_regions(subop, arg, inner, out) -> tuple[list[Region], bytes, bytes]:
    """The regions the call must carry, and the arg and inner struct as sent."""
    if not isinstance(arg, bytes):
        return [], b"", b""
    addr = int(out[1])
    if subop != 8:
        return [Region(addr, arg)], arg, b""
    inner_addr = {"null": 0, "bogus": BOGUS, "wrap": WRAP, "self": addr}.get(inner)
    if inner_addr is None:
        inner_addr = int(out[3])
    sent = arg[:8] + inner_addr.to_bytes(8, "little")
    inner_subop = struct.unpack_from("<H", arg, 2)[0]
    if inner == "self":                 # the inner map_pages spans the remote_cmd and 24 bytes more
        return [Region(addr, sent + bytes([UNTOUCHED]) * 24)], sent, b""
    if isinstance(inner, bytes):
        assert inner_subop != 8
        return [Region(addr, sent), Region(inner_addr, inner)], sent, inner
    return [Region(addr, sent)], sent, b""


@pytest.mark.parametrize("how", ["self", "conn", "thread"])
def test_every_sub_op_is_framed_as_v7_reads_it(tmp_path, runner, how):
    fake = FakeXen(tmp_path / "fake.sock", scribble)
    try:
        lines = [" ".join([how, str(subop), _word(arg)] + ([_word(inner)] if inner else []))
                 for subop, arg, inner in CASES]
        outs = run(runner, fake.path, lines)
    finally:
        fake.close()
    assert len(fake.calls) == len(outs) == len(CASES)
    for call, (subop, arg, inner), out in zip(fake.calls, CASES, outs):
        where = f"sub-op {subop} arg {_word(arg)[:16]} inner {_word(inner)}"
        regions, sent, inner_sent = expected_regions(subop, arg, inner, out)
        handle = {"null": 0, "bogus": BOGUS, "wrap": WRAP}.get(arg) if not isinstance(arg, bytes) \
            else int(out[1])
        assert call.op == HYPERVISOR_iommu_op, where
        assert call.args == (subop, handle, 0, 0, 0), where
        assert list(call.regions) == regions, where
        assert int(out[0]) == scribble(call)[0], where
        # What the hypervisor wrote is in the caller's structs afterwards.
        if regions:
            assert bytes.fromhex(out[2]) == flip(sent), where
        if inner_sent:
            assert bytes.fromhex(out[4]) == flip(inner_sent), where
    conns = {"self": 1, "conn": 1, "thread": len(CASES)}[how]
    assert len(set(fake.conns)) == conns       # a thread is a vCPU: its own connection


def xen_like(call):
    """Write back what Xen's map and unmap do: mapped/unmapped = nr_pages, also
    through remote_cmd, whose inner struct is the region its handle names."""
    regions = {r.gaddr: bytearray(r.data) for r in call.regions}
    subop, addr = call.args[0], call.args[1]
    if subop == 8:
        cmd = regions[addr]
        subop = struct.unpack_from("<H", cmd, 2)[0]
        addr = struct.unpack_from("<Q", cmd, 8)[0]
    if subop in (6, 7):
        data = regions[addr]
        count_at = STRUCTS["pv_iommu_map_pages"][1]["mapped"][0] if subop == 6 else \
            STRUCTS["pv_iommu_unmap_pages"][1]["unmapped"][0]
        nr_at = count_at - 4
        data[count_at:count_at + 4] = data[nr_at:nr_at + 4]
    return 0, tuple(Region(a, bytes(d)) for a, d in regions.items())


def test_outputs_land_in_the_callers_structs(tmp_path, runner):
    fake = FakeXen(tmp_path / "fake.sock", xen_like)
    unmap = pack("pv_iommu_unmap_pages", ctx_no=2, dfn=9, nr_pages=300)
    try:
        outs = run(runner, fake.path, [f"self 6 {MAP.hex()}", f"self 7 {unmap.hex()}",
                                       f"self 8 {remote(6).hex()} {MAP.hex()}"])
    finally:
        fake.close()
    mapped = STRUCTS["pv_iommu_map_pages"][1]["mapped"][0]
    unmapped = STRUCTS["pv_iommu_unmap_pages"][1]["unmapped"][0]
    assert int.from_bytes(bytes.fromhex(outs[0][2])[mapped:mapped + 4], "little") == 16
    assert int.from_bytes(bytes.fromhex(outs[1][2])[unmapped:unmapped + 4], "little") == 300
    inner = bytes.fromhex(outs[2][4])
    assert int.from_bytes(inner[mapped:mapped + 4], "little") == 16   # in the caller's inner struct
    assert bytes.fromhex(outs[2][2])[:8] == remote(6)[:8]


def test_without_a_daemon_the_call_is_enosys_with_a_reason(tmp_path, runner):
    result = subprocess.run([str(runner)], input="self 1 " + bytes(24).hex() + "\n",
                            env={"XENEMU_SOCKET": str(tmp_path / "none")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "connect" in result.stderr


def test_a_revision_1_machine_reads_a_revision_2_call_as_revision_1(daemon, runner):
    """The machine decides the revision: revision 1 takes args[0] (the subop) for
    the struct's address, where no region lies: -EFAULT, and the program goes on."""
    init = pack("pv_iommu_init", max_ctx_no=128, arena_order=12)
    outs = run(runner, daemon.socket(0), [f"self 2 {init.hex()}", "self 1 " + bytes(24).hex()])
    assert [int(out[0]) for out in outs] == [-14, -14]
    assert bytes.fromhex(outs[0][2]) == init          # nothing written back
