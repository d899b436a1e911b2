"""The driver examples' reserved-region step (issue 15): build/xen_iommu_driver
(revision 1) and build/xen_iommu_driver_v2 (revision 2) call memory_op's
XENMEM_reserved_device_memory_map as Linux's xen_iommu_get_resv_regions()
does (the MSI window, a NULL buffer with nr_entries 0 for the count, then the
fetch), print a region= line per range and check them against --expect-rmrr.
The ranges they print are compared with the machine's: the default machine's
and a machine file's [[rmrr]] tables (read here with tomllib, not xenemu)."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from support import DaemonProcess, assert_replays
from test_linux_driver_sequence import Run, msi_region
from test_memory_op import MACHINE as MEMORY_OP_MACHINE
from xenemu.errno import XenErrno as E
from xenemu.machine import default_machine
from xenemu.pci import format_sbdf

PROGRAMS = {1: "xen_iommu_driver", 2: "xen_iommu_driver_v2"}
# Short runs: the reserved regions are what is tested here, the rest elsewhere.
SHORT = {1: ("--pages", "16"), 2: ("--pages", "64", "--pv-pages", "1")}

# test_memory_op's machine (d0's 00:09.0 has two ranges, its 00:04.0 one),
# with a context pool for revision 1's probe, a third range for 00:09.0 and
# two for d1's 01:00.0, the file's order neither by pfn nor by device (Xen
# reports a device's ranges in its DMAR table's order, the file's).
MORE_RANGES = """
[[rmrr]]
sbdf = "0000:01:00.0"
start_pfn = 0x200
nr_pages = 4
[[rmrr]]
sbdf = "0000:00:09.0"
start_pfn = 0x2000
nr_pages = 3
[[rmrr]]
sbdf = "0000:01:00.0"
start_pfn = 0x50
nr_pages = 1
"""


def machine_file(revision: int) -> str:
    text = MEMORY_OP_MACHINE.format(revision=revision, width=48 if revision == 2 else 39)
    if revision == 1:
        text = text.replace("hardware = true\n", "hardware = true\ncontexts = 8\n", 1)
    return text + MORE_RANGES


def run_example(c_build, revision: int, socket, *args: str) -> Run:
    proc = subprocess.run([str(c_build / PROGRAMS[revision]), *SHORT[revision], *args],
                          env={"XENEMU_SOCKET": str(socket)}, capture_output=True, text=True,
                          timeout=120, check=False)
    return Run(proc)


def expect_arg(ranges: list[tuple[int, int]]) -> str:
    """--expect-rmrr's spelling of ranges."""
    return ",".join(f"{start:x}:{pages}" for start, pages in ranges) or "none"


def rmrr_lines(run: Run) -> list[tuple[str, int, int]]:
    """(device, start_pfn, nr_pages) of each region=rmrr line, in order."""
    return [(r["device"], int(r["start_pfn"], 16), int(r["nr_pages"])) for r in run.regions
            if r["region"] == "rmrr"]


def check_fetched(run: Run, device: str, want: list[tuple[int, int]], shown: str = "") -> None:
    """A passing run whose reserved-region lines are `want`, in that order."""
    assert run.returncode == 0 and run.result == {"result": "ok"}, run
    assert run.regions[0] == msi_region(device), run
    assert rmrr_lines(run) == [(shown or device, s, n) for s, n in want], run
    count = run["resv_count"]
    assert (count["ret"], count["nr_entries"]) == (str(-E.ENOBUFS if want else 0), str(len(want)))
    if want:
        assert run["resv_fetch"] == {"ret": "0", "nr_entries": str(len(want))}
    else:
        assert "resv_fetch" not in run.steps, run
    # The step runs at the device's probe, before any context is taken.
    assert run.order.index("resv_count") < run.order.index("alloc_context")


class FileRanges:
    """A machine file's [[rmrr]] ranges, in file order: every one, or a device's."""

    def __init__(self, path):
        self.tables = tomllib.loads(path.read_text())["rmrr"]
        self.every = [(r["start_pfn"], r["nr_pages"]) for r in self.tables]

    def of(self, device: str) -> list[tuple[int, int]]:
        return [(r["start_pfn"], r["nr_pages"]) for r in self.tables if r["sbdf"] == device]


@pytest.fixture(params=[1, 2], ids=["rev1", "rev2"])
def default_served(request, tmp_path):
    revision = request.param
    d = DaemonProcess(tmp_path, *(("--abi-revision", "2") if revision == 2 else ()))
    yield revision, d
    assert d.stop() == 0
    assert_replays(d.trace)


def test_default_machine_the_usb_controllers_range(c_build, default_served):
    """The embedded machine's RMRR (d0's 0000:00:04.0 at pfn 0xE8, 2 pages),
    fetched by each revision's example as dom0 and checked with --expect-rmrr."""
    revision, d = default_served
    usb = "0000:00:04.0"
    want = [(start, pages) for sbdf, start, pages in default_machine(revision).rmrr
            if format_sbdf(sbdf) == usb]
    assert want == [(0xE8, 2)]
    run = run_example(c_build, revision, d.socket(0), "--device", usb, "--expect-rmrr",
                      expect_arg(want))
    check_fetched(run, usb, want)
    assert run["resv_check"] == {"expected": "1", "fetched": "1"}
    assert run.stderr == "", run
    # A device without ranges: the count call's 0 ends the step, no fetch.
    nic = "0000:00:03.0"
    assert not [r for r in default_machine(revision).rmrr if format_sbdf(r[0]) == nic]
    none = run_example(c_build, revision, d.socket(0), "--device", nic, "--expect-rmrr", "none")
    check_fetched(none, nic, [])
    assert none["resv_check"] == {"expected": "0", "fetched": "0"}
    wrong = run_example(c_build, revision, d.socket(0), "--device", nic, "--expect-rmrr", "e8:2")
    assert wrong.returncode == 1 and wrong.result["step"] == "resv_check", wrong
    assert "expected e8:2; fetched none" in wrong.stderr, wrong


@pytest.fixture(scope="module", params=[1, 2], ids=["rev1", "rev2"])
def file_served(request, tmp_path_factory):
    revision = request.param
    tmp = tmp_path_factory.mktemp(f"rmrr-rev{revision}")
    cfg = tmp / "m.toml"
    cfg.write_text(machine_file(revision))
    d = DaemonProcess(tmp, "--config", str(cfg))
    yield revision, d, FileRanges(cfg)
    assert d.ctl("check")["consistent"]
    assert d.stop() == 0
    assert_replays(d.trace)


@pytest.mark.parametrize("device", ["0000:00:09.0", "0000:00:04.0"])
def test_a_machine_files_ranges_for_the_device_asked_about(c_build, file_served, device):
    """Each device gets its own ranges, in file order, and no other device's;
    --expect-rmrr takes them in any order."""
    revision, d, ranges = file_served
    want = ranges.of(device)
    run = run_example(c_build, revision, d.socket(0), "--device", device,
                      "--expect-rmrr", expect_arg(want[::-1]))
    check_fetched(run, device, want)
    assert run["resv_check"] == {"expected": str(len(want)), "fetched": str(len(want))}


@pytest.mark.parametrize("file_served", [2], ids=["rev2"], indirect=True)
def test_revision_2_guest_fetches_its_own_devices_ranges(c_build, file_served):
    """As guest1 (revision 1 serves the hardware domain only)."""
    _, d, ranges = file_served
    guest_nic = "0000:01:00.0"
    want = ranges.of(guest_nic)
    assert len(want) == 2
    run = run_example(c_build, 2, d.socket(1), "--expect-rmrr", expect_arg(want))
    check_fetched(run, guest_nic, want)


def test_rdm_all_fetches_every_range(c_build, file_served):
    """XENMEM_RDM_ALL: every device's ranges in file order, the device ignored."""
    revision, d, ranges = file_served
    every = ranges.every
    assert len(every) == 6
    run = run_example(c_build, revision, d.socket(0), "--device", "0000:00:04.0",
                      "--rdm-flags", "1", "--expect-rmrr", expect_arg(every))
    check_fetched(run, "0000:00:04.0", every, shown="all")
    assert run["resv_count"]["flags"] == "0x1"


@pytest.mark.parametrize("wrong", ["pages", "missing", "extra", "none"])
def test_a_wrong_expectation_fails_the_example(c_build, file_served, wrong):
    revision, d, ranges = file_served
    device = "0000:00:09.0"
    have = ranges.of(device)
    assert len(have) == 3
    expect = {"pages": [(have[0][0], have[0][1] + 1), *have[1:]], "missing": have[:-1],
              "extra": [*have, (0x4000, 1)], "none": []}[wrong]
    run = run_example(c_build, revision, d.socket(0), "--device", device,
                      "--expect-rmrr", expect_arg(expect))
    assert run.returncode == 1, run
    assert run.result == {"result": "fail", "step": "resv_check", "reason": "mismatch"}, run
    assert run.order[-1] == "resv_check" and "alloc_context" not in run.steps, run
    assert rmrr_lines(run) == [(device, s, n) for s, n in have]       # what was fetched
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run
    assert f"reserved ranges of {device} differ from --expect-rmrr: expected " \
           f"{expect_arg(expect)}; fetched {expect_arg(have)}" in lines[0], run




def test_flags_xen_refuses_fail_the_count(c_build, file_served):
    """--rdm-flags 2: memory.c's -EINVAL, where the driver logs "Unable to get
    reserved region count"; the example stops there."""
    revision, d, _ = file_served
    run = run_example(c_build, revision, d.socket(0), "--device", "0000:00:09.0",
                      "--rdm-flags", "2")
    assert run.returncode == 1, run
    assert run["resv_count"] == {"ret": str(-E.EINVAL), "nr_entries": "0",
                                 "device": "0000:00:09.0", "flags": "0x2"}
    assert run.result == {"result": "fail", "step": "resv_count", "reason": "error"}, run
    assert f"Unable to get reserved region count ({-E.EINVAL})" in run.stderr


@pytest.mark.parametrize("revision", [1, 2])
@pytest.mark.parametrize("args", [
    ["--expect-rmrr", "e8"], ["--expect-rmrr", "e8:0"], ["--expect-rmrr", "xyz:1"],
    ["--expect-rmrr", "e8:2,"], ["--expect-rmrr", "e8:2,,1:1"], ["--expect-rmrr", ""],
    ["--expect-rmrr", "e8:-1"], ["--expect-rmrr", ",".join(["1:1"] * 1025)],
    ["--rdm-flags", "100000000"], ["--rdm-flags", "1x"], ["--expect-rmrr"]])
def test_bad_reserved_region_arguments_exit_2(c_build, tmp_path, revision, args):
    run = run_example(c_build, revision, tmp_path / "nothing.sock", *args)
    assert run.returncode == 2, run
    assert run.stdout == "" and "usage" in run.stderr


@pytest.mark.parametrize("revision", [1, 2])
def test_the_longest_expectation_is_accepted(c_build, tmp_path, revision):
    """1024 ranges (a machine's bound) parse: the run gets as far as the probe."""
    run = run_example(c_build, revision, tmp_path / "nothing.sock",
                      "--expect-rmrr", ",".join(f"{i:x}:1" for i in range(1024)))
    assert run.returncode == 3 and run.order == ["probe"], run
