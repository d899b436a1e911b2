"""Every sub-op and error path through the C client, against the Python client.

The same table of cases runs through both clients on two fresh daemons; the
return values and the written-back structs must match case for case, and the
return values must be the ones Xen gives."""

from __future__ import annotations

import subprocess

import pytest

import scenarios
from support import ROOT, DaemonProcess, compile_c
from xenemu import abi
from xenemu.client import XenemuClient

# (struct, expected return) in order; context 1 is allocated by the first case.
CASES = scenarios.ERROR_PATHS


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
