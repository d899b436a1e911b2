"""Replay at CI scale, through the CLI: `xenemu replay -j N` (worker
processes, one combined summary and JUnit file, the worst status) and
`--shard K/N` (a stable share of a corpus by base name)."""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from support import ROOT
from test_traces import CORPUS, flip, load, save, xenemu
from xenemu import wire
from xenemu.trace.jobs import in_shard

TRACES = ROOT / "tests" / "traces"
BIG = TRACES / "map-unmap-110k.xt.xz"


def untimed(out: str) -> list[str]:
    """The output without what depends on time or the number of processes."""
    out = re.sub(r" in [\d.]+ s( \([\d,]+ hypercalls/s\))?", " in T", out)
    return [line for line in out.splitlines() if "hypercalls/s" not in line]


def junit_cases(path: Path) -> dict[str, ET.Element]:
    suite = ET.parse(path).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert int(suite.get("tests")) == len(cases)
    return cases


def outcome(case: ET.Element) -> str:
    return next((child.tag for child in case if child.tag in ("failure", "error")), "passed")


def test_two_processes_replay_the_corpus_as_one_does(tmp_path):
    # Both at once: the 110k-call trace takes seconds, and each run is its own process.
    runs = [subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", jobs,
                              "--junit", str(tmp_path / f"{jobs}.xml"), *map(str, CORPUS)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            for jobs in ("1", "2")]
    (one, one_err), (two, two_err) = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], one + one_err + two + two_err
    # The same lines in the same order (the order of the files given), but the times.
    assert untimed(two) == untimed(one)
    assert f"replayed {len(CORPUS)} trace(s): {len(CORPUS)} all match" in two
    assert re.search(r"in [\d.]+ s with 2 process\(es\): [\d,]+ hypercalls/s, [\d.]+ traces/s",
                     two)
    # One JUnit file, one passing test case per trace.
    cases = junit_cases(tmp_path / "2.xml")
    assert sorted(cases) == sorted(map(str, CORPUS))
    assert {outcome(c) for c in cases.values()} == {"passed"}
    assert sorted(junit_cases(tmp_path / "1.xml")) == sorted(cases)


def test_a_diverged_trace_among_passing_ones_is_named_and_fails_the_run(tmp_path):
    header, records = load(TRACES / "continued-free.xt")
    records[9]["rep"] = flip(records[9]["rep"], wire.HDR_SIZE)
    bad = save(tmp_path / "diverged.xt", header, records)
    good = [TRACES / "linux-driver.xt", TRACES / "error-paths.xt", TRACES / "rev2-driver.xt"]
    junit = tmp_path / "replay.xml"
    out = xenemu("replay", "-j", "2", "--junit", str(junit), str(good[0]), str(bad), *map(str, good[1:]))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "divergence at record 10 " in out.stdout
    assert f"{bad}: " in out.stdout and "1 divergence(s), the first at record 10" in out.stdout
    assert "replayed 4 trace(s): 3 all match, 1 failed" in out.stdout
    assert f"  failed: {bad}\n" in out.stdout
    cases = junit_cases(junit)
    assert {name: outcome(c) for name, c in cases.items()} == \
        {**{str(g): "passed" for g in good}, str(bad): "failure"}
    assert "divergence at record 10" in cases[str(bad)].find("failure").text

    # A corrupt trace among them: one line for it, the others still replayed,
    # and the worse status (could not be read, 2) wins over the divergence (1).
    corrupt = tmp_path / "corrupt.xt"
    corrupt.write_bytes(b"\x93not a trace at all")
    out = xenemu("replay", "-j", "2", "--junit", str(junit), str(corrupt), str(bad),
                 *map(str, good))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    refused = [line for line in out.stdout.splitlines() if "cannot replay" in line]
    assert len(refused) == 1 and refused[0].startswith(f"{corrupt}: "), out.stdout
    assert out.stdout.count(": all match") == 3
    assert "replayed 5 trace(s): 3 all match, 1 failed, 1 could not be read" in out.stdout
    cases = junit_cases(junit)
    assert (outcome(cases[str(corrupt)]), outcome(cases[str(bad)])) == ("error", "failure")


# -- --shard K/N ------------------------------------------------------------------------

def documented_shard(name: str, shards: int) -> int:
    """The README's rule, written out again: a CI script may compute it too."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % shards + 1


names = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                         min_size=1, max_size=20), unique=True, max_size=40)


@given(names, st.integers(1, 12), st.randoms(use_true_random=False))
def test_shards_split_any_set_of_names_exactly(names, shards, rng):
    paths = [Path("corpus", n) for n in names if n not in (".", "..")]
    parts = [in_shard(paths, k, shards) for k in range(1, shards + 1)]
    # Every trace in exactly one shard ...
    assert sorted(p for part in parts for p in part) == sorted(paths)
    # ... by its name alone: not the order, the directory or the others given.
    shuffled = list(paths)
    rng.shuffle(shuffled)
    for k, part in enumerate(parts, 1):
        assert set(in_shard(shuffled, k, shards)) == set(part)
        assert all(in_shard([Path("elsewhere", p.name)], k, shards) for p in part)
        assert all(documented_shard(p.name, shards) == k for p in part)


def test_runners_given_a_shard_each_replay_the_corpus_once_between_them(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    paths = [Path(shutil.copy(TRACES / "linux-driver.xt", corpus / f"run-{i:02}.xt"))
             for i in range(12)]
    seen = []
    for k in (1, 2, 3):
        given = list(map(str, paths))
        if k == 2:
            given.reverse()     # another runner's shell may list them in another order
        jobs = ["-j", "auto"] if k == 3 else []     # and another may have more cores
        out = xenemu("replay", "--shard", f"{k}/3", *jobs, "--junit", str(tmp_path / f"{k}.xml"),
                     *given)
        assert out.returncode == 0, out.stdout + out.stderr
        cases = junit_cases(tmp_path / f"{k}.xml")
        assert sorted(cases) == sorted(str(p) for p in paths if documented_shard(p.name, 3) == k)
        assert f"(shard {k}/3 of 12 given)" in out.stdout
        seen += cases
    assert sorted(seen) == sorted(map(str, paths))
    # A shard none of the files falls in passes, with an empty JUnit suite.
    only = next(p for p in paths if documented_shard(p.name, 3) != 1)
    out = xenemu("replay", "--shard", "1/3", "--junit", str(tmp_path / "none.xml"), str(only))
    assert out.returncode == 0 and "shard 1/3: none of the 1 traces given falls in it" in out.stdout
    assert junit_cases(tmp_path / "none.xml") == {}


@pytest.mark.parametrize("option", [["--shard", "4/3"], ["--shard", "0/3"], ["--shard", "1"],
                                    ["-j", "0"], ["-j", "many"]])
def test_a_bad_shard_or_process_count_is_one_line(option):
    out = xenemu("replay", *option, str(TRACES / "linux-driver.xt"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(r"argument (--shard|-j/--jobs): expected", out.stderr)


def test_a_junit_path_that_cannot_be_written_is_one_line_before_any_replay(tmp_path):
    out = xenemu("replay", "-j", "2", "--junit", str(tmp_path / "no" / "replay.xml"),
                 str(TRACES / "linux-driver.xt"), str(TRACES / "error-paths.xt"))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"xenemu: --junit {tmp_path / 'no' / 'replay.xml'}: no such directory\n"


# -- stopping: Ctrl-C, a killed worker --------------------------------------------------------

def workers_of(pid: int) -> list[int]:
    """The replay's worker processes (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            pass        # gone meanwhile
    return found


def worker_reading(pid: int, trace: Path) -> int | None:
    for worker in workers_of(pid):
        try:
            fds = Path(f"/proc/{worker}/fd").iterdir()
            if any(os.readlink(fd) == str(trace.resolve()) for fd in fds):
                return worker
        except OSError:
            pass        # gone meanwhile, or an fd closed while we looked
    return None


def test_a_worker_killed_mid_trace_costs_that_trace_only(tmp_path):
    junit = tmp_path / "replay.xml"
    small = TRACES / "continued-free.xt"
    proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", "2",
                             "--check-iotlb", "--junit", str(junit), str(small), str(BIG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # Killed once it has the 110k-call trace open (seconds of work ahead of it).
    deadline = time.monotonic() + 120
    while not (holder := worker_reading(proc.pid, BIG)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert holder, "no worker opened the trace"
    os.kill(holder, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, out + err
    assert "Traceback" not in out + err
    assert re.search(rf"{BIG}: .*cannot replay: the worker process replaying it died \(killed by "
                     rf"SIGKILL\) at about record [\d,]+\n", out)
    assert f"{small}: 600 records" in out and "all match" in out
    assert f"replayed 2 trace(s): 1 all match, 1 lost with their worker\n  lost with their " \
           f"worker: {BIG}\n" in out
    cases = junit_cases(junit)
    assert (outcome(cases[str(BIG)]), outcome(cases[str(small)])) == ("error", "passed")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
def test_ctrl_c_while_the_workers_start_prints_no_traceback(delay):
    # A worker re-imports the main module before it runs: a Ctrl-C then
    # printed its KeyboardInterrupt traceback (1 run in 20). Signalled once
    # the first worker exists (the parent's handler is in place by then),
    # while they are still starting.
    proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", "3",
                             str(TRACES / "linux-driver.xt"), str(BIG), str(BIG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not workers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in out + err
    assert proc.returncode == 128 + signal.SIGINT, out + err
    assert re.fullmatch(r"xenemu: replay stopped by SIGINT after reporting \d of 3 traces\n", err)


@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_replay_cleanly(tmp_path, jobs, signum):
    # In its own process group, as a shell runs a job: Ctrl-C signals the
    # whole group, workers too; a CI runner's timeout may do the same with SIGTERM.
    proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", jobs,
                             "--junit", str(tmp_path / "replay.xml"),
                             str(TRACES / "linux-driver.xt"), str(BIG), str(BIG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    first = proc.stdout.readline()      # the small trace is done: the big one is under way
    assert "linux-driver.xt" in first and "all match" in first
    workers = workers_of(proc.pid)
    assert len(workers) >= 2 if jobs == "3" else not workers
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert err == f"xenemu: replay stopped by {signum.name} after reporting 1 of 3 traces\n"
    assert out == ""
    assert not (tmp_path / "replay.xml").exists()    # not a partial file CI would take as whole
    for pid in workers:     # stopped and reaped by the replay, not left running
        assert not Path(f"/proc/{pid}").exists()


def test_workers_of_a_replay_killed_with_9_stop_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", "2",
                             str(BIG), str(BIG)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (holder := worker_reading(proc.pid, BIG)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert holder, "no worker opened the trace"
    workers = workers_of(proc.pid)
    proc.kill()
    proc.wait()
    # The workers share its stderr: it ends when the last of them has gone,
    # within a tenth of a second of replaying (their next report finds no parent).
    err, deadline = b"", time.monotonic() + 60
    while select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))[0]:
        if not (chunk := os.read(proc.stderr.fileno(), 65536)):
            break
        err += chunk
    else:
        pytest.fail(f"the workers still hold stderr after 60 s: {err!r}")
    assert err == b""
    for pid in workers:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"
