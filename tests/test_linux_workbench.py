"""The guest-driver workbench (clients/linux/): the project's driver,
clients/linux/drivers/xenemu-pviommu.c, built with nothing but the commands
clients/linux/README.md documents ("Build your driver", read from the file) and
run through every scenario against a daemon of each revision; a driver with a
classic bug (no p2m translation for a PV guest) is caught; bad command lines and
an unreachable daemon end with their exit statuses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from support import ROOT, DaemonProcess, assert_replays

README = ROOT / "clients" / "linux" / "README.md"
DRIVER = ROOT / "clients" / "linux" / "drivers" / "xenemu-pviommu.c"
SCENARIOS = ["basic", "chunked", "overlap", "pv", "threads", "many", "resv"]


def documented_commands() -> tuple[list[str], list[str]]:
    """The two commands of the README's "Build your driver" block: compile, run."""
    text = README.read_text()
    section = text.split("## Build your driver", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    build, run = [line for line in block.splitlines() if line.strip()]
    return shlex.split(build), shlex.split(run.replace("$(id -u)", str(os.getuid())))


def build_driver(c_build, source: Path, out: Path, revision: int) -> Path:
    """The README's compile command with its driver, output and (revision 2) ABI root swapped in."""
    build, _ = documented_commands()
    cmd = []
    for arg in build:
        if arg == "my_driver.c":
            arg = str(source)
        elif arg == "my_driver_bench":
            arg = str(out)
        elif arg == "-Iabi" and revision == 2:
            cmd.append("-Iabi/rev2")
        cmd.append(arg)
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return out


def run_bench(program: Path, socket: str, revision: int, *extra: str) -> subprocess.CompletedProcess:
    _, run = documented_commands()
    args = [str(program)] + [a for a in run[1:]]
    args[args.index("--socket") + 1] = socket
    args[args.index("--revision") + 1] = str(revision)
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300,
                          check=False)


def checks(proc) -> tuple[dict[str, list[str]], str]:
    """Check lines by scenario, and the summary line."""
    by: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(ok|FAIL) (\w+): ", line)
        if m:
            by.setdefault(m.group(2), []).append(line)
    return by, proc.stdout.strip().splitlines()[-1]


@pytest.fixture(params=[1, 2], ids=["rev1", "rev2"])
def revision_daemon(request, tmp_path):
    extra = ["--abi-revision", "2"] if request.param == 2 else []
    d = DaemonProcess(tmp_path, *extra)
    d.revision = request.param
    yield d
    check = d.ctl("check") if d.proc.poll() is None else {"consistent": True}
    assert d.stop() == 0
    assert check["consistent"], check["problems"]
    assert_replays(d.trace)


def test_the_readme_documents_two_commands_with_the_include_root_only(c_build):
    build, run = documented_commands()
    assert build[0] == "cc" and run[0].startswith("./")
    flags = [a for a in build if a.startswith("-") and a != "-o"]
    assert flags == ["-Iclients/linux/include", "-Iclients/c", "-Iabi", "-pthread"], flags


def test_the_projects_driver_passes_every_scenario(c_build, revision_daemon, tmp_path):
    rev = revision_daemon.revision
    bench = build_driver(c_build, DRIVER, tmp_path / "bench", rev)
    proc = run_bench(bench, revision_daemon.socket(0), rev)
    by, summary = checks(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"\d+ passed, 0 failed", summary), summary
    assert list(by) == SCENARIOS
    assert not any(line.startswith("FAIL") for lines in by.values() for line in lines)
    # The checks that say the daemon saw what the core did, in each scenario.
    assert any("the core unwound the 0x8000 bytes" in line for line in by["overlap"])
    assert any("-ENOSPC" in line and "-28" in line for line in by["many"])
    assert any("0000:00:04.0: 1 RMRR regions (direct or reserved), the daemon has 1" in line for line in by["resv"])
    assert any("lands at gfn" in line for line in by["pv"])
    # Revision 1 translates by lookup_page, revision 2 by the built-in XEN_IOMMU_GENERIC table.
    assert sum(line.startswith("ok basic: iova_to_phys") for line in by["basic"]) == 4
    # The runner's own connection and the driver's leave the daemon consistent.
    assert revision_daemon.ctl("check")["consistent"]


def test_a_guest_of_revision_2_runs_them_too(c_build, tmp_path):
    """guest1 (one device) on revision 2, where PV-IOMMU is every domain's and the pool
    is the one the driver's init asks for (128 contexts, not the machine file's 8)."""
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        bench = build_driver(c_build, DRIVER, tmp_path / "bench", 2)
        proc = run_bench(bench, d.socket(1), 2)
        by, summary = checks(proc)
        assert proc.returncode == 0 and summary.endswith(" 0 failed"), proc.stdout + proc.stderr
        assert any("the pool is full" in line and "of 128" in line for line in by["many"])
    finally:
        assert d.stop() == 0


IDIOMS = r"""
/* Idioms of the Xen PV-IOMMU series' drivers, which the include root must take as Linux does. */
#include <linux/device/driver.h>
#include <linux/dma-map-ops.h>
#include <linux/io-pgtable.h>
#include <linux/iommu.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <asm/iommu.h>
#include <xen/xen.h>
#include <xen/page.h>
#include <xen/interface/memory.h>
#include <xen/interface/physdev.h>
#include <xen/interface/pv-iommu.h>
#include <asm/xen/hypercall.h>
#include <asm/xen/page.h>

MODULE_LICENSE("GPL");

static spinlock_t lock;

int idioms(struct device *dev, struct xen_reserved_device_memory *entries)
{
    struct xen_reserved_device_memory_map map = { .flags = 0 };
    GUEST_HANDLE(xen_reserved_device_memory) h = entries;
    struct io_pgtable_cfg cfg = { .alloc = NULL, .free = NULL };
    struct io_pgtable_ops *ops = alloc_io_pgtable_ops(XEN_IOMMU_GENERIC, &cfg, NULL);

    spin_lock_init(&lock);
    map.buffer = NULL;                        /* Linux's handles are plain pointers */
    set_xen_guest_handle(map.buffer, h);
    set_dma_ops(dev, NULL);
    iommu_setup_dma_ops(dev, 0, 1ULL << 39);
    x86_swiotlb_enable = false;
    free_io_pgtable_ops(ops);
    if (to_pci_dev(dev)->hdr_type != PCI_HEADER_TYPE_NORMAL || xen_pv_domain())
        return (int)pfn_to_gfn(1);
    return HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
}
#if defined(XENEMU_PV_IOMMU_REVISION)
int idioms2(void *inner)
{
    struct pv_iommu_remote_cmd cmd = { .domid = 1, .subop = IOMMU_noop };
    struct pv_iommu_capabilities caps;

    cmd.arg = inner;
    return HYPERVISOR_iommu_op(IOMMU_query_capabilities, &caps) ?:
           HYPERVISOR_iommu_op(IOMMU_remote_cmd, &cmd);
}
#else
int idioms1(void)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_query_capabilities };

    return HYPERVISOR_iommu_op(&op);
}
#endif
"""


@pytest.mark.parametrize("revision", [1, 2])
def test_the_include_root_takes_the_upstream_drivers_idioms(c_build, tmp_path, revision):
    src = tmp_path / "idioms.c"
    src.write_text(IDIOMS)
    build, _ = documented_commands()
    flags = [a for a in build if a.startswith("-I")]
    if revision == 2:
        flags.insert(flags.index("-Iabi"), "-Iabi/rev2")
    proc = subprocess.run(["cc", "-c", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                           *flags, str(src), "-o", str(tmp_path / "idioms.o")],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


BUGGY = """\
/* The project's driver with a classic PV bug: the pfn handed to Xen as the gfn. */
#include <asm/xen/page.h>
#undef pfn_to_gfn
#define pfn_to_gfn(pfn) (pfn)
#include "{driver}"
"""


def test_a_driver_that_skips_the_p2m_fails_the_pv_scenario(c_build, tmp_path):
    src = tmp_path / "buggy.c"
    src.write_text(BUGGY.format(driver=DRIVER))
    d = DaemonProcess(tmp_path)
    try:
        bench = build_driver(c_build, src, tmp_path / "buggy", 1)
        proc = run_bench(bench, d.socket(0), 1, "--scenario", "pv")
        by, summary = checks(proc)
        assert proc.returncode == 1, proc.stdout
        assert re.fullmatch(r"\d+ passed, [1-9]\d* failed", summary), summary
        failed = [line for line in by["pv"] if line.startswith("FAIL")]
        assert any("dump ctx" in line and "want gfn" in line for line in failed), failed
        assert any("lands at gfn" in line for line in failed), failed
    finally:
        assert d.stop() == 0


def test_the_device_option_picks_the_device_and_a_foreign_one_fails(c_build, daemon):
    bench = c_build / "xenemu_pviommu_bench_rev1"
    proc = subprocess.run([str(bench), "--socket", daemon.socket(0), "--scenario", "basic",
                           "--device", "0000:00:05.0"], capture_output=True, text=True, timeout=120)
    by, summary = checks(proc)
    assert proc.returncode == 0 and summary.endswith(" 0 failed"), proc.stdout
    assert any("attach 0000:00:05.0: 0" in line for line in by["basic"])
    # guest1's device is not dom0's: the runner says so in one line and fails.
    proc = subprocess.run([str(bench), "--socket", daemon.socket(0), "--scenario", "basic",
                           "--device", "0000:01:00.0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "FAIL basic: domain 0: 4 devices, 262144 pages, none of them the --device asked for" \
        in proc.stdout


@pytest.mark.parametrize("args,code,message", [
    (["--scenario", "nope"], 2, "no scenario nope"),
    (["--revision", "3"], 2, "--revision is 1 or 2"),
    (["--bogus", "1"], 2, "unknown option --bogus"),
    (["--socket"], 2, "--socket needs a value"),
    (["--socket", "/nonexistent/sock"], 2, "cannot tell the domain"),
    (["--socket", "/nonexistent/dom0.sock"], 3, "cannot connect to the control socket"),
])
def test_bad_command_lines_and_no_daemon(c_build, args, code, message):
    proc = subprocess.run([str(c_build / "xenemu_pviommu_bench_rev1"), *args],
                          capture_output=True, text=True, timeout=60, env={}, check=False)
    assert proc.returncode == code, proc
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_driver_built_for_one_revision_is_refused_by_a_machine_of_the_other(c_build, tmp_path):
    """The runner asks the daemon which ABI it serves (`info`'s abi) before loading."""
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        proc = subprocess.run([str(c_build / "xenemu_pviommu_bench_rev1"), "--socket",
                               d.socket(0), "--revision", "1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc
        assert ("the daemon serves PV-IOMMU revision 2, the driver was built for revision 1"
                in proc.stderr)
        assert "passed" not in proc.stdout
    finally:
        assert d.stop() == 0
