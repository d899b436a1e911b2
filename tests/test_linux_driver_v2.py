"""End to end: clients/c/examples/xen_iommu_driver_v2, which calls
HYPERVISOR_iommu_op(subop, arg) the way Linux's xen-iommu driver RFC v3 does
(revision 2: probe, init {128, 12}, query again, paging domain, attach, the
whole run in one map call, PV dom0's one-page calls, unmap, release, free)
against `xenemu serve --abi-revision 2` (guest1 owns 0000:01:00.0).
Reference: ../shared/reference/pv-iommu-rev2.md §8."""

from __future__ import annotations

import subprocess

import pytest

from support import DaemonProcess, assert_replays
from test_linux_driver_sequence import Run

STEPS_FIRST = ["probe", "init", "probe_again", "resv_count", "alloc_context", "attach", "map", "map_pv",
               "remap", "unmap", "release", "free_context", "free_again"]


def run_driver(c_build, socket: str, *args: str) -> Run:
    proc = subprocess.run([str(c_build / "xen_iommu_driver_v2"), *args],
                          env={"XENEMU_SOCKET": socket}, capture_output=True, text=True,
                          timeout=120, check=False)
    return Run(proc)


@pytest.fixture
def rev2_daemon(tmp_path):
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    yield d
    assert d.stop() == 0
    assert_replays(d.trace)


def test_the_v3_drivers_sequence_gets_context_2_and_whole_runs(c_build, rev2_daemon):
    run = run_driver(c_build, rev2_daemon.socket(1), "--pages", "5000", "--pv-pages", "4")
    assert run.returncode == 0 and run.result == {"result": "ok"}, run
    assert run.order == STEPS_FIRST, run
    assert run["probe"]["max_ctx_no"] == "0"
    # init falls through into alloc_context (v7): it takes context 1 ...
    assert (run["init"]["ret"], run["init"]["taken"]) == ("0", "1"), run
    assert run["probe_again"] == {"ret": "0", "max_ctx_no": "128", "pgsize_mask": "0x1000",
                                  "max_iova_addr": "0xffffffffffff", "cap_flags": "0x1"}
    # ... so the driver's first paging domain is context 2.
    assert run["alloc_context"] == {"ret": "0", "ctx": "2"}
    assert (run["map"]["ret"], run["map"]["mapped"], run["map"]["calls"]) == ("0", "5000", "1")
    assert run["map_pv"] == {"ret": "0", "mapped": "4", "calls": "4"}   # accumulated by Xen
    assert (run["remap"]["ret"], run["remap"]["mapped"]) == ("-98", "0")
    assert run["unmap"] == {"ret": "0", "unmapped": "5004", "calls": "1"}
    assert run["free_again"]["ret"] == "-2"
    log = rev2_daemon.log()
    assert "map_pages ctx_no=2 " in log
    # Once initialised, a second driver instance skips init; context 1 is still init's.
    again = run_driver(c_build, rev2_daemon.socket(1), "--pages", "300", "--pv-pages", "1")
    assert again.returncode == 0, again
    assert "init" not in again.steps and again["probe"]["max_ctx_no"] == "128"
    assert again["alloc_context"]["ctx"] == "2"
    assert rev2_daemon.ctl("check")["consistent"]


def test_a_device_the_guest_does_not_own_fails_at_attach_and_cleans_up(c_build, rev2_daemon):
    run = run_driver(c_build, rev2_daemon.socket(1), "--device", "0000:00:02.0")   # dom0's
    assert run.returncode == 1, run
    assert run["attach"]["ret"] == "-19"                                          # -ENODEV
    assert run["cleanup"] == {"ret": "0", "ctx": "2"}
    assert run.result == {"result": "fail", "step": "attach", "reason": "error"}


def test_a_revision_1_daemon_fails_the_probe(c_build, daemon):
    """Revision 1 reads the subop register as the struct's address: -EFAULT."""
    run = run_driver(c_build, daemon.socket(1))
    assert run.returncode == 5 and run["probe"]["ret"] == "-14", run
    assert run.result == {"result": "fail", "step": "probe", "reason": "error"}


@pytest.mark.parametrize("args", [["--pages", "0"], ["--pv-pages", "x"], ["--device", "1:2"],
                                  ["--bogus", "1"], ["--pages"]])
def test_bad_arguments_exit_2(c_build, args):
    proc = subprocess.run([str(c_build / "xen_iommu_driver_v2"), *args], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr
