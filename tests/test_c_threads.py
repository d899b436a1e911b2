"""The C client from several threads at once (tests/c/threads.c): each thread
its own connection through HYPERVISOR_iommu_op(), closed when the thread exits;
one xenemu_connect() connection shared by threads, its calls taking turns; the
error text per thread; a forked child connecting anew. Every answer is checked
by the program; a hang (the old shared connection) is caught by the timeouts.
The same program runs again under ThreadSanitizer when the compiler has it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import ROOT, DaemonProcess, assert_replays, compile_c

SOURCE = ROOT / "tests" / "c" / "threads.c"
LIBRARY_SOURCE = ROOT / "clients" / "c" / "xenemu_client.c"
TIMEOUT = 300       # generous: a loaded 2-core machine; a hang fails, it does not block
TSAN_EXIT = 66


@pytest.fixture(scope="module")
def threads(c_build, tmp_path_factory) -> Path:
    """threads.c linked with libxenemu.a as a user links it (-pthread)."""
    return compile_c(SOURCE, tmp_path_factory.mktemp("c") / "threads", str(c_build / "libxenemu.a"))


def run(program: Path, socket: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([str(program), *args], env={"XENEMU_SOCKET": socket, **(env or {})},
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"threads {' '.join(args)}: exit {result.returncode}\n" \
                                   f"{result.stdout}{result.stderr}"
    print(result.stdout, end="")        # the calls per second, for `pytest -s`
    return result.stdout


def test_threads_map_look_up_and_unmap_at_once(threads, daemon):
    """4 threads, each 2,000 hypercalls in a context of its own through its own
    implicit connection, then 2,000 in a dfn range of its own in one context
    through one shared explicit connection: every ret, mapped/unmapped count
    and looked-up gfn is the thread's own."""
    out = run(threads, daemon.socket(0), "ops", "4", "2000")
    assert "own implicit connection: 4 threads" in out and "one shared connection: 4 threads" in out


def test_four_threads_query_capabilities_at_once(threads, daemon):
    """The issue's case: 4 threads x 20,000 query_capabilities hung on the
    process-wide connection."""
    out = run(threads, daemon.socket(0), "caps", "4", "20000")
    assert "4 threads, 80000 hypercalls" in out


def test_each_thread_reads_its_own_last_error(threads, daemon):
    run(threads, daemon.socket(0), "errors")


def test_a_forked_child_connects_anew(threads, daemon):
    """The parent connected before fork(); parent and child then call at once."""
    run(threads, daemon.socket(0), "fork", "2000")


def test_an_exiting_thread_closes_its_connection(threads, tmp_path):
    """64 threads one after another under a limit of 8 connections per domain
    (the main thread holds one): a connection an exited thread left open would
    hold a slot, and the eighth thread would be refused (LIMIT)."""
    d = DaemonProcess(tmp_path, "--max-connections-per-domain", "8")
    try:
        run(threads, d.socket(0), "exits", "64")
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0, d.log()
    assert_replays(d.trace)


def _tsan_usable(tmp: Path) -> str:
    """"" when gcc's -fsanitize=thread compiles and runs a threaded program, else why not."""
    src = tmp / "probe.c"
    src.write_text("#include <pthread.h>\n"
                   "static void *f(void *a) { return a; }\n"
                   "int main(void) { pthread_t t; void *r;\n"
                   "  if (pthread_create(&t, 0, f, 0)) return 1;\n"
                   "  return pthread_join(t, &r); }\n")
    try:
        build = subprocess.run(["gcc", "-fsanitize=thread", "-pthread", str(src), "-o",
                                str(tmp / "probe")], capture_output=True, text=True, timeout=60)
        if build.returncode != 0:
            return f"gcc -fsanitize=thread does not build here (libtsan missing?): " \
                   f"{build.stderr.strip().splitlines()[-1] if build.stderr.strip() else ''}"
        ran = subprocess.run([str(tmp / "probe")], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"gcc -fsanitize=thread unusable: {e}"
    if ran.returncode != 0:
        return f"a -fsanitize=thread program does not run here (exit {ran.returncode}): " \
               f"{ran.stderr.strip()[:200]}"
    return ""


@pytest.fixture(scope="module")
def threads_tsan(tmp_path_factory) -> Path:
    """threads.c and the client library, both built with ThreadSanitizer."""
    tmp = tmp_path_factory.mktemp("tsan")
    reason = _tsan_usable(tmp)
    if reason:
        pytest.skip(reason)
    return compile_c(SOURCE, tmp / "threads_tsan", str(LIBRARY_SOURCE),
                     "-fsanitize=thread", "-g", "-O1")


@pytest.mark.parametrize("args", [("ops", "4", "1000"), ("caps", "4", "2000"), ("errors",),
                                  ("fork", "300"), ("exits", "20")],
                         ids=lambda a: a[0])
def test_threads_under_thread_sanitizer(threads_tsan, daemon, args):
    """No data race in the client: TSan stops the program with exit 66 at the first."""
    env = {"TSAN_OPTIONS": f"halt_on_error=1 exitcode={TSAN_EXIT}"}
    if "PATH" in os.environ:
        env["PATH"] = os.environ["PATH"]
    run(threads_tsan, daemon.socket(0), *args, env=env)
