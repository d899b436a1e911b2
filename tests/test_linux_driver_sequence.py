"""End to end: clients/c/examples/xen_iommu_driver, which calls
HYPERVISOR_iommu_op() the way Linux's xen-iommu driver (revision 1) does -
probe, the device's reserved regions (memory_op, more in test_example_rmrr.py),
paging domain, attach, chunked map, iova_to_phys, the error paths a driver
meets, chunked unmap, release, domain free - against the daemon on the
default machine (d0: 128 contexts, 1 GiB, devices 0000:00:02.0..05.0;
d1: an ordinary guest owning 0000:01:00.0)."""

from __future__ import annotations

import re
import subprocess

import pytest

from xenemu.client import XenemuClient
from xenemu.errno import XenErrno

MAX_NR_PAGES = 256

# Every step line of a successful run, in order.
STEPS = ["probe", "resv_count", "alloc_context", "attach", "map", "lookup_first", "lookup_middle", "lookup_last",
         "lookup_unmapped", "remap", "free_busy", "unmap", "release", "free_context", "free_again"]


# The region line of the MSI window, as both examples print it for `device`.
def msi_region(device: str) -> dict[str, str]:
    return {"region": "msi", "device": device, "start": "0xfee00000", "end": "0xfeefffff"}


class Run:
    """One run of the program: exit code, stderr, its step lines, its reserved
    regions (the region= lines, in order) and its result line."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.order: list[str] = []
        self.steps: dict[str, dict[str, str]] = {}
        self.regions: list[dict[str, str]] = []
        self.result: dict[str, str] | None = None
        for line in proc.stdout.splitlines():
            fields = dict(field.split("=", 1) for field in line.split())
            if "result" in fields:
                assert self.result is None, f"two result lines:\n{proc.stdout}"
                self.result = fields
                continue
            if "region" in fields:
                self.regions.append(fields)
                continue
            step = fields.pop("step")
            assert step not in self.steps, f"step {step} printed twice:\n{proc.stdout}"
            self.order.append(step)
            self.steps[step] = fields

    def __getitem__(self, step: str) -> dict[str, str]:
        return self.steps[step]

    def __repr__(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}{self.stderr}"


def run_driver(c_build, socket: str, *args: str) -> Run:
    proc = subprocess.run([str(c_build / "xen_iommu_driver"), *args], env={"XENEMU_SOCKET": socket},
                          capture_output=True, text=True, timeout=120, check=False)
    return Run(proc)


def hypercalls(daemon, domid: int) -> list[tuple[str, int | None]]:
    """(sub-op, ctx) of every iommu_op the domain made, from the daemon's one line per hypercall.

    alloc_context's ctx is left out (None): whether its line shows the id
    asked for (0) or the one handed out is a logging detail."""
    return [(name, None if name == "alloc_context" else int(ctx)) for name, ctx in
            re.findall(rf"\[PV-IOMMU\] d{domid}: (\w+) ctx=(\d+) ", daemon.log())]


def check_success(run: Run, pages: int, gfn: int, dfn: int, device: str) -> int:
    """Every line of a passing run; returns the context it used."""
    assert run.returncode == 0, run
    assert run.result == {"result": "ok"}, run
    assert run.order == STEPS, run
    assert run.stderr == "", run
    calls = -(-pages // MAX_NR_PAGES)

    assert run["probe"] == {"ret": "0", "max_ctx_no": "128", "max_nr_pages": str(MAX_NR_PAGES),
                            "max_iova_addr": "0x7fffffffff"}
    # The default machine gives no range to these devices: the count call says 0.
    assert run["resv_count"] == {"ret": "0", "nr_entries": "0", "device": device, "flags": "0x0"}
    assert run.regions == [msi_region(device)]
    assert run["alloc_context"]["ret"] == "0"
    ctx = int(run["alloc_context"]["ctx"])
    assert 1 <= ctx <= 128
    assert run["attach"] == {"ret": "0", "ctx": str(ctx), "device": device}
    assert run["map"] == {"ret": "0", "mapped": str(pages), "calls": str(calls),
                          "gfn": hex(gfn), "dfn": hex(dfn), "pages": str(pages)}
    for step, off in (("lookup_first", 0), ("lookup_middle", pages // 2), ("lookup_last", pages - 1)):
        assert run[step] == {"ret": "0", "dfn": hex(dfn + off), "gfn": hex(gfn + off),
                             "want": hex(gfn + off)}, step
    assert run["lookup_unmapped"] == {"ret": str(-XenErrno.ENOENT), "dfn": hex(dfn + pages),
                                      "gfn": "0x0"}
    assert run["remap"] == {"ret": str(-XenErrno.EADDRINUSE), "mapped": "0", "calls": "1"}
    assert run["free_busy"] == {"ret": str(-XenErrno.EBUSY), "ctx": str(ctx)}
    assert run["unmap"] == {"ret": "0", "unmapped": str(pages), "calls": str(calls), "errors": "0"}
    assert run["release"] == {"ret": "0", "ctx": "0", "device": device}
    assert run["free_context"] == {"ret": "0", "ctx": str(ctx)}
    assert run["free_again"] == {"ret": str(-XenErrno.ENOENT), "ctx": str(ctx)}
    return ctx


def expected_hypercalls(ctx: int, pages: int) -> list[tuple[str, int | None]]:
    calls = -(-pages // MAX_NR_PAGES)
    return ([("query_capabilities", 0), ("alloc_context", None), ("reattach_device", ctx)]
            + [("map_pages", ctx)] * calls + [("lookup_page", ctx)] * 4
            + [("map_pages", ctx), ("free_context", ctx)] + [("unmap_pages", ctx)] * calls
            + [("reattach_device", 0), ("free_context", ctx), ("free_context", ctx)])


def assert_context_gone(daemon, ctx: int, dfn: int) -> None:
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.lookup_page(ctx, dfn).ret == -XenErrno.EINVAL    # not an allocated context


def test_default_run_passes_every_step(daemon, c_build):
    run = run_driver(c_build, daemon.socket(0))
    ctx = check_success(run, pages=600, gfn=0x1000, dfn=0x40000, device="0000:00:03.0")
    # Each step line stands for the hypercalls the program really made, in order.
    assert hypercalls(daemon, 0) == expected_hypercalls(ctx, 600)
    assert_context_gone(daemon, ctx, 0x40000)


@pytest.mark.parametrize("pages", [1, 255, 256, 257])
def test_chunk_boundaries(daemon, c_build, pages):
    """--pages 1 is one call per chunk; 256/257 sit on either side of max_nr_pages."""
    run = run_driver(c_build, daemon.socket(0), "--pages", str(pages))
    ctx = check_success(run, pages=pages, gfn=0x1000, dfn=0x40000, device="0000:00:03.0")
    assert hypercalls(daemon, 0) == expected_hypercalls(ctx, pages)


def test_other_device_gfn_and_dfn(daemon, c_build):
    """The last dom0 device, the last gfns of dom0's 1 GiB, a dfn range crossing a 2 MiB table."""
    args = ("--device", "0000:00:05.0", "--pages", "300", "--gfn", "3fed4", "--dfn", "0x7ff80")
    run = run_driver(c_build, daemon.socket(0), *args)
    ctx = check_success(run, pages=300, gfn=0x3FED4, dfn=0x7FF80, device="0000:00:05.0")
    assert_context_gone(daemon, ctx, 0x7FF80)


def test_two_runs_in_a_row(daemon, c_build):
    """The first run leaves nothing behind that trips the second (same device, same dfns)."""
    for _ in range(2):
        check_success(run_driver(c_build, daemon.socket(0), "--pages", "40"),
                      pages=40, gfn=0x1000, dfn=0x40000, device="0000:00:03.0")


def test_non_hardware_domain_fails_at_the_probe(daemon, c_build):
    run = run_driver(c_build, daemon.socket(1))
    assert run.returncode == 5, run                         # the probe returned an error
    assert run.order == ["probe"], run
    assert run["probe"]["ret"] == str(-XenErrno.EPERM)
    assert run.result is not None and run.result["result"] == "fail" and run.result["step"] == "probe"
    assert hypercalls(daemon, 1) == [("query_capabilities", 0)]


def test_device_of_another_domain_fails_at_attach(daemon, c_build):
    run = run_driver(c_build, daemon.socket(0), "--device", "0000:01:00.0")
    assert run.returncode == 1, run
    assert run.order == ["probe", "resv_count", "alloc_context", "attach", "cleanup"], run
    ctx = int(run["alloc_context"]["ctx"])
    assert run["attach"] == {"ret": str(-XenErrno.ENOENT), "ctx": str(ctx), "device": "0000:01:00.0"}
    assert run.result is not None and run.result["result"] == "fail" and run.result["step"] == "attach"
    # The program gives its context back on the way out.
    assert run["cleanup"] == {"ret": "0", "ctx": str(ctx)}
    assert_context_gone(daemon, ctx, 0x40000)


def test_no_hypervisor_is_no_pv_iommu(c_build, tmp_path):
    run = run_driver(c_build, str(tmp_path / "nothing.sock"))
    assert run.returncode == 3, run
    assert run.order == ["probe"] and run["probe"]["ret"] == str(-XenErrno.ENOSYS)
    assert run.result is not None and run.result["step"] == "probe"
    assert "no PV-IOMMU" in run.stderr and "connect" in run.stderr


@pytest.mark.parametrize("args", [["--pages", "0"], ["--device", "0000:00:20.0"], ["--device", "00:03.0"],
                                  ["--gfn", "-1"], ["--dfn", "xyz"], ["--pages"], ["--bogus", "1"]])
def test_bad_command_line(c_build, tmp_path, args):
    run = run_driver(c_build, str(tmp_path / "nothing.sock"), *args)
    assert run.returncode == 2, run
    assert run.stdout == "" and "usage" in run.stderr
