"""Every sub-op and error path through the C client, against the Python client.

The same table of cases runs through both clients on two fresh daemons; the
return values and the written-back structs must match case for case, and the
return values must be the ones Xen gives."""

from __future__ import annotations

import subprocess

import pytest

from support import ROOT, DaemonProcess, compile_c
from xenemu import abi
from xenemu.client import XenemuClient
from xenemu.errno import XenErrno as E

op = abi.encode_op
RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable
NIC = dict(seg=0, bus=0, devfn=3 << 3)

# (struct, expected return) in order; context 1 is allocated by the first case.
CASES = [
    (op(2), 0),
    (op(0), 0),
    (op(1), 0),
    (op(99), -E.EINVAL),
    (op(5, 1, RW, "map_pages", gfn=0x100, dfn=0x200, nr_pages=16), 0),
    (op(5, 1, RW, "map_pages", gfn=0x100, dfn=0x20F, nr_pages=4), -E.EADDRINUSE),
    (op(5, 1, RW, "map_pages", gfn=0x1, dfn=0x1, nr_pages=257), -E.E2BIG),
    (op(5, 9, RW, "map_pages", gfn=0x1, dfn=0x1, nr_pages=1), -E.EINVAL),
    (op(5, 1, 0, "map_pages", gfn=0x1, dfn=0x1, nr_pages=1), -E.EINVAL),
    (op(5, 1, RW, "map_pages", gfn=0x3FFFE, dfn=0x900, nr_pages=4), -E.EPERM),
    (op(5, 1, RW, "map_pages", gfn=0x10, dfn=(1 << 27) - 1, nr_pages=2), -E.ERANGE),
    (op(7, 1, 0, "lookup_page", dfn=0x205), 0),
    (op(7, 1, 0, "lookup_page", dfn=0x5000), -E.ENOENT),
    (op(7, 9, 0, "lookup_page", dfn=0x205), -E.EINVAL),
    (op(4, 1, 0, "reattach_device", dev=NIC), 0),
    (op(4, 1, 0, "reattach_device", dev=dict(seg=0, bus=1, devfn=0)), -E.ENOENT),
    (op(4, 7, 0, "reattach_device", dev=NIC), -E.ENOENT),
    (op(3, 1, 0), -E.EBUSY),
    (op(3, 0, 0), -E.EINVAL),
    (op(3, 7, 0), -E.ENOENT),
    (op(6, 1, 0, "unmap_pages", dfn=0x200, nr_pages=20), -E.ENOENT),
    (op(6, 1, 0, "unmap_pages", dfn=0x200, nr_pages=300), -E.E2BIG),
    (op(6, 9, 0, "unmap_pages", dfn=0x200, nr_pages=1), -E.EINVAL),
    (op(3, 1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT), 0),
]


@pytest.fixture(scope="module")
def op_runner(c_build, tmp_path_factory):
    return compile_c(ROOT / "tests" / "c" / "op_runner.c",
                     tmp_path_factory.mktemp("c") / "op_runner", str(c_build / "libxenemu.a"))


def run_c(runner, socket: str) -> list[tuple[int, bytes]]:
    out = subprocess.run([str(runner)], input="".join(raw.hex() + "\n" for raw, _ in CASES),
                         env={"XENEMU_SOCKET": socket}, capture_output=True, text=True,
                         check=True).stdout
    return [(int(ret), bytes.fromhex(h)) for ret, h in (line.split() for line in out.splitlines())]


def run_python(socket: str) -> list[tuple[int, bytes]]:
    with XenemuClient(socket) as xen:
        return [(r.ret, r.raw) for r in (xen.iommu_op(raw) for raw, _ in CASES)]


def test_c_and_python_clients_see_the_same_xen(op_runner, tmp_path):
    results = {}
    for name in ("c", "python"):
        d = DaemonProcess(tmp_path / name)
        try:
            results[name] = run_c(op_runner, d.socket(0)) if name == "c" \
                else run_python(d.socket(0))
            assert d.ctl("check")["consistent"]
        finally:
            assert d.stop() == 0
    assert results["c"] == results["python"]
    assert [ret for ret, _ in results["c"]] == [want for _, want in CASES]
    by_case = dict(zip(range(len(CASES)), results["c"]))
    assert abi.decode_op(by_case[0][1]).ctx_no == 1
    assert abi.decode_op(by_case[5][1]).map_pages.mapped == 0
    assert abi.decode_op(by_case[9][1]).map_pages.mapped == 2
    assert abi.decode_op(by_case[10][1]).map_pages.mapped == 1
    assert abi.decode_op(by_case[11][1]).lookup_page.gfn == 0x105
    assert abi.decode_op(by_case[20][1]).unmap_pages.unmapped == 16
