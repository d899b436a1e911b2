"""`make install` as a C harness elsewhere uses it: the client installed under
a prefix, example programs copied out of the tree and built with nothing but
`pkg-config --cflags --libs` (statically, and against libxenemu.so), run
against a daemon of each ABI revision; a staged install (DESTDIR) and
`make uninstall`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT, DaemonProcess, assert_replays
from test_linux_driver_sequence import Run

pytestmark = pytest.mark.skipif(
    shutil.which("pkg-config") is None,
    reason="pkg-config is not installed (make test installs it as root with apt-get; "
           "else apt-get install pkg-config)")

# -static needs the C library's archive (libc6-dev has it; some systems package it apart).
LIBC_A = subprocess.run(["gcc", "-print-file-name=libc.a"], capture_output=True,
                        text=True).stdout.strip()
needs_libc_a = pytest.mark.skipif(not os.path.isabs(LIBC_A),
                                  reason="no libc.a for gcc -static (install glibc's static "
                                         "library, e.g. glibc-static)")

EXAMPLES = ROOT / "clients" / "c" / "examples"
WORKBENCH_INCLUDE = ROOT / "clients" / "linux" / "include"
DRIVER = ROOT / "clients" / "linux" / "drivers" / "xenemu-pviommu.c"
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
HEADERS = {"xenemu_client.h", "xenemu/wire.h", "xen/errno.h", "xen/memory.h", "xen/physdev.h",
           "xen/pv-iommu.h", "xen/xen.h", "rev2/xen/pv-iommu.h", "rev2/xen/pv-iommu-nested.h"}

# The functions of xenemu_client.h: libxenemu.so.1's ABI (clients/c/libxenemu.map).
API = {"HYPERVISOR_iommu_op", "HYPERVISOR_memory_op", "xenemu_connect", "xenemu_close",
       "xenemu_default_conn", "xenemu_hypercall", "xenemu_iommu_op", "xenemu_iommu_op2",
       "xenemu_iommu_op2_default", "xenemu_memory_op", "xenemu_last_error"}


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


class Installed:
    """An installed tree and pkg-config pointed at it alone."""

    def __init__(self, prefix: Path, sysroot: Path | None = None):
        self.prefix = prefix
        tree = Path(f"{sysroot}{prefix}") if sysroot else prefix
        self.libdir = tree / "lib"
        self.env = {**os.environ, "PKG_CONFIG_LIBDIR": str(self.libdir / "pkgconfig"),
                    "PKG_CONFIG_PATH": ""}
        if sysroot:
            self.env["PKG_CONFIG_SYSROOT_DIR"] = str(sysroot)

    def pkg_config(self, *args: str) -> list[str]:
        out = subprocess.run(["pkg-config", *args], env=self.env, capture_output=True,
                             text=True, check=True).stdout
        return shlex.split(out)

    def build(self, src: Path, out: Path, package: str, static: bool = False,
              extra: tuple[str, ...] = ()) -> Path:
        """Compile src, copied into out's directory with the headers it
        includes by quotes, so that nothing of the source tree is in reach."""
        work = out.parent
        for name in (src.name, *(h.name for h in EXAMPLES.glob("*.h"))):
            shutil.copy(EXAMPLES / name, work / name)
        flags = self.pkg_config("--cflags", "--libs", *(["--static"] if static else []), package)
        cmd = ["gcc", *WARN, *(["-static"] if static else []), str(work / src.name), *flags,
               *extra, "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        # Every header it read came from the installed tree or the system.
        deps = subprocess.run(["gcc", *WARN, "-M", str(work / src.name),
                               *self.pkg_config("--cflags", package)],
                              check=True, capture_output=True, text=True).stdout
        assert str(ROOT) not in deps, deps
        return out


def needed(program: Path) -> list[str]:
    """The shared libraries a program asks the loader for."""
    out = subprocess.run(["readelf", "-d", str(program)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    prefix = tmp_path_factory.mktemp("install") / "usr"
    result = make("install", f"PREFIX={prefix}")
    assert result.returncode == 0, result.stderr
    return Installed(prefix)


def test_the_tree_holds_both_include_roots_both_libraries_and_the_pc_files(installed):
    prefix = installed.prefix
    workbench = {f"xenemu-workbench/{h.relative_to(WORKBENCH_INCLUDE)}"
                 for h in WORKBENCH_INCLUDE.rglob("*.h")}
    assert files_under(prefix / "include") == \
        {f"xenemu-client/{h}" for h in HEADERS} | workbench
    assert files_under(prefix / "lib") == {
        "libxenemu.a", "libxenemu.so", "libxenemu.so.1", "libxenemu.so.1.0.0",
        "libxenemu_workbench.a",
        "pkgconfig/xenemu-client.pc", "pkgconfig/xenemu-client-rev2.pc",
        "pkgconfig/xenemu-workbench.pc", "pkgconfig/xenemu-workbench-rev2.pc"}
    lib = prefix / "lib"
    assert os.readlink(lib / "libxenemu.so") == "libxenemu.so.1"
    assert os.readlink(lib / "libxenemu.so.1") == "libxenemu.so.1.0.0"
    shared = str(lib / "libxenemu.so.1.0.0")
    dynamic = subprocess.run(["readelf", "-d", shared], capture_output=True, text=True,
                             check=True).stdout
    assert "Library soname: [libxenemu.so.1]" in dynamic
    # It exports xenemu_client.h's functions, versioned, and nothing else.
    symbols = subprocess.run(["nm", "-D", "--defined-only", shared], capture_output=True,
                             text=True, check=True).stdout
    assert {line.split()[-1] for line in symbols.splitlines()} == \
        {f"{name}@@XENEMU_1" for name in API} | {"XENEMU_1"}
    include = prefix / "include" / "xenemu-client"
    assert installed.pkg_config("--cflags", "--libs", "xenemu-client") == [
        f"-I{include}", "-pthread", f"-L{lib}", "-lxenemu", "-pthread"]
    assert installed.pkg_config("--cflags", "xenemu-client-rev2") == [
        f"-I{include}/rev2", f"-I{include}", "-pthread"]


@pytest.mark.parametrize("static", [pytest.param(True, marks=needs_libc_a), False],
                         ids=["static", "shared"])
def test_query_caps_built_with_pkg_config_alone_asks_the_daemon(installed, daemon, tmp_path,
                                                               static):
    program = installed.build(EXAMPLES / "query_caps.c", tmp_path / "query_caps",
                              "xenemu-client", static)
    if static:
        assert needed(program) == []
        env = {}
    else:
        assert "libxenemu.so.1" in needed(program)
        env = {"LD_LIBRARY_PATH": str(installed.libdir)}
    out = subprocess.run([str(program)], env={**env, "XENEMU_SOCKET": daemon.socket(0)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ret=0", "max_ctx_no=128", "max_nr_pages=256",
                                  "max_iova_addr=0x7fffffffff"]


@pytest.fixture
def rev2_daemon(tmp_path):
    d = DaemonProcess(tmp_path / "rev2", "--abi-revision", "2")
    yield d
    assert d.ctl("check")["consistent"]
    assert d.stop() == 0
    assert_replays(d.trace)


@needs_libc_a
def test_the_revision_2_driver_built_with_pkg_config_runs_its_sequence(installed, rev2_daemon,
                                                                      tmp_path):
    static = installed.build(EXAMPLES / "xen_iommu_driver_v2.c", tmp_path / "driver_static",
                             "xenemu-client-rev2", static=True)
    # Against the .so, found through an rpath set from the .pc file's libdir.
    libdir = installed.pkg_config("--variable=libdir", "xenemu-client-rev2")[0]
    shared = installed.build(EXAMPLES / "xen_iommu_driver_v2.c", tmp_path / "driver_shared",
                             "xenemu-client-rev2", extra=(f"-Wl,-rpath,{libdir}",))
    for program in (static, shared):
        proc = subprocess.run([str(program), "--pages", "300", "--pv-pages", "2"],
                              env={"XENEMU_SOCKET": rev2_daemon.socket(1)},
                              capture_output=True, text=True, timeout=120)
        run = Run(proc)
        assert run.returncode == 0 and run.result == {"result": "ok"}, run
        assert run["alloc_context"] == {"ret": "0", "ctx": "2"}, run
        assert run["unmap"] == {"ret": "0", "unmapped": "302", "calls": "1"}, run
    assert "libxenemu.so.1" in needed(shared) and needed(static) == []


@pytest.mark.parametrize("revision", [1, 2], ids=["rev1", "rev2"])
def test_the_projects_driver_built_with_the_workbench_pc_file(installed, tmp_path, revision):
    """A Linux IOMMU driver built elsewhere with `pkg-config xenemu-workbench[-rev2]`
    alone runs the workbench's scenarios against a daemon of its revision."""
    package = "xenemu-workbench" if revision == 1 else "xenemu-workbench-rev2"
    work = tmp_path / "driver"
    work.mkdir()
    shutil.copy(DRIVER, work / DRIVER.name)
    flags = installed.pkg_config("--cflags", "--libs", package)
    program = work / "driver_bench"
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", str(work / DRIVER.name),
                    *flags, "-o", str(program)], check=True, capture_output=True, text=True)
    d = DaemonProcess(tmp_path / "d", *(["--abi-revision", "2"] if revision == 2 else []))
    try:
        proc = subprocess.run([str(program), "--revision", str(revision), "--socket",
                               d.socket(0), "--scenario", "basic"],
                              env={"LD_LIBRARY_PATH": str(installed.libdir)},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0


def test_a_staged_install_builds_through_a_sysroot_and_uninstalls(tmp_path):
    stage = tmp_path / "stage"
    args = ["PREFIX=/opt/xenemu", f"DESTDIR={stage}"]
    result = make("install", *args)
    assert result.returncode == 0, result.stderr
    tree = Installed(Path("/opt/xenemu"), sysroot=stage)
    # The .pc file names the final prefix; the sysroot is pkg-config's to add.
    pc = (stage / "opt/xenemu/lib/pkgconfig/xenemu-client.pc").read_text()
    assert "prefix=/opt/xenemu\n" in pc and str(stage) not in pc
    (tmp_path / "build").mkdir()
    program = tree.build(EXAMPLES / "query_caps.c", tmp_path / "build" / "query_caps",
                         "xenemu-client")
    assert "libxenemu.so.1" in needed(program)
    result = make("uninstall", *args)
    assert result.returncode == 0, result.stderr
    assert files_under(stage) == set()
    assert not (stage / "opt/xenemu/include/xenemu-client").exists()
    assert not (stage / "opt/xenemu/include/xenemu-workbench").exists()
    assert (stage / "opt/xenemu/include").is_dir()      # not install's to remove


@pytest.mark.parametrize("var", ["PREFIX=relative/dir", "LIBDIR=lib"])
def test_a_relative_path_is_refused_in_one_line(tmp_path, var):
    result = make("install", f"PREFIX={tmp_path}", var)
    assert result.returncode != 0
    assert "must be absolute paths" in result.stdout
    assert not any(tmp_path.iterdir())
