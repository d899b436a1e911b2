"""Traces: recording what the daemon serves, replaying it in process, and
the tools CI uses to read them (xenemu replay, trace show, trace stats).

Every test that uses the `daemon` fixture also replays its own trace at the
end (see conftest.py); the tests here drive the scenarios of
tests/scenarios.py, replay the committed corpus, and break traces on purpose.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import msgpack
import pytest

import scenarios
from support import ROOT, DaemonProcess, assert_replays
from xenemu import abi, cli, wire
from xenemu import iommu_contexts
from xenemu.client import XenemuClient, XenemuError
from xenemu.errno import XenErrno as E
from xenemu.trace.reader import TraceReader
from xenemu.trace.replay import Replayer, replay_file
from xenemu.trace.text import decode_call, decode_reply


# (reattach-under-dma runs in test_hypervisor.py.)
@pytest.mark.parametrize("name", ["linux-driver", "error-paths", "machine-changes",
                                  "continued-free"])
def test_scenario_records_and_replays(daemon, c_build, name):
    scenario, kwargs = scenarios.CORPUS[name]
    scenario(daemon, c_build, **kwargs)
    # The fixture replays the trace once the daemon has stopped.


def test_map_unmap_session_records_and_replays(daemon):
    scenarios.map_unmap_session(daemon, hypercalls=5000)


# -- the committed corpus ----------------------------------------------------------

CORPUS = sorted((ROOT / "tests" / "traces").glob("*.xt*"))


def test_the_corpus_has_every_scenario():
    names = {p.name.split(".")[0] for p in CORPUS}
    assert names == set(scenarios.CORPUS)


@pytest.mark.parametrize("trace", CORPUS, ids=lambda p: p.name)
def test_corpus_trace_replays(trace):
    r = assert_replays(trace)
    assert r.hypercalls >= (100_000 if "110k" in trace.name else 1)


# -- editing traces -------------------------------------------------------------------

def load(path: Path) -> tuple[dict, list[dict]]:
    """A plain trace's header and records as plain maps, to edit and save()."""
    header, *records = msgpack.Unpacker(open(path, "rb"), raw=False, strict_map_key=False)
    return header, records


def save(path: Path, header: dict, records: list[dict]) -> Path:
    with open(path, "wb") as f:
        for obj in [header, *records]:
            f.write(msgpack.packb(obj, use_bin_type=True))
    return path


def xenemu(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenemu.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


def number_of(records, predicate) -> int:
    return next(i for i, rec in enumerate(records, 1) if predicate(rec))


def is_subop(rec, subop: int, ret: int | None = None) -> bool:
    if rec["k"] != "hc" or rec["rep"] is None:
        return False
    call = decode_call(rec["req"])
    head = abi.PvIommuOp.parse(call.regions[0].data) if call.regions else None
    reply = decode_reply(rec["rep"])
    return head is not None and len(call.regions[0].data) == abi.OP_SIZE \
        and head.subop_id == subop and (ret is None or reply.ret == ret)


def test_one_edited_byte_of_a_reply_fails_at_exactly_that_record(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "error-paths.xt")
    n = number_of(records, lambda r: is_subop(r, abi.IOMMUOP_map_pages, -E.EADDRINUSE))
    rep = records[n - 1]["rep"]
    # The ret field of the REPLY frame (after the 24-byte header): -EADDRINUSE -> -EADDRNOTAVAIL.
    records[n - 1]["rep"] = flip(rep, wire.HDR_SIZE, 0x03)
    out = xenemu("replay", str(save(tmp_path / "edited.xt", header, records)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"divergence at record {n} " in out.stdout
    assert "expected -EADDRNOTAVAIL mapped=0, got -EADDRINUSE mapped=0" in out.stdout
    # The request field by field, and the reply side by side with the difference marked.
    assert re.search(r"subop_id\s+map_pages \(5\)", out.stdout)
    assert re.search(r"dfn\s+0x20f", out.stdout)
    assert re.search(r"ret\s+-EADDRNOTAVAIL\s+-EADDRINUSE  <<", out.stdout)
    assert "context state now:" in out.stdout and "d0 context 1: 16 pages mapped" in out.stdout
    assert f"1 divergence(s), the first at record {n}" in out.stdout


def test_an_edited_output_field_is_shown_by_name(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "error-paths.xt")
    n = number_of(records, lambda r: is_subop(r, abi.IOMMUOP_lookup_page, 0))
    rep = records[n - 1]["rep"]
    gfn_at = len(rep) - abi.PAYLOAD_SIZE                   # lookup_page.gfn
    records[n - 1]["rep"] = flip(rep, gfn_at, 0x80)
    out = xenemu("replay", str(save(tmp_path / "edited.xt", header, records)))
    assert out.returncode == 1
    assert f"divergence at record {n} " in out.stdout
    assert re.search(r"gfn\s+0x\w+\s+0x\w+  <<", out.stdout)
    assert f"offset {gfn_at} " in out.stdout


@pytest.mark.parametrize("which", [0.1, 0.5, 0.99])
def test_any_record_edited_is_the_one_reported(tmp_path, which):
    header, records = load(ROOT / "tests" / "traces" / "continued-free.xt")
    finished = [i for i, r in enumerate(records, 1) if r.get("rep") is not None
                and r["k"] in ("hc", "cont")]
    n = finished[int(which * (len(finished) - 1))]
    records[n - 1]["rep"] = flip(records[n - 1]["rep"], len(records[n - 1]["rep"]) - 1)
    r = replay_file(save(tmp_path / "edited.xt", header, records))
    assert [d.number for d in r.divergences] == [n]


def test_keep_going_counts_divergences_and_junit_reports_them(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "continued-free.xt")
    edited = [10, 20, 30]
    for n in edited:
        records[n - 1]["rep"] = flip(records[n - 1]["rep"], wire.HDR_SIZE)
    bad = save(tmp_path / "bad.xt", header, records)
    good = ROOT / "tests" / "traces" / "linux-driver.xt"
    junit = tmp_path / "replay.xml"
    out = xenemu("replay", "--keep-going", "--junit", str(junit), str(good), str(bad))
    assert out.returncode == 1
    assert "3 divergence(s), the first at record 10" in out.stdout
    assert out.stdout.count("divergence at record") == 3
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases[str(good)].find("failure") is None
    failure = cases[str(bad)].find("failure")
    assert "3 divergence(s)" in failure.get("message")
    assert "divergence at record 30" in failure.text
    # Without --keep-going the replay stops at the first.
    out = xenemu("replay", str(bad))
    assert out.returncode == 1 and out.stdout.count("divergence at record") == 1


def test_an_edited_control_reply_is_a_divergence(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "machine-changes.xt")
    n = number_of(records, lambda r: r["k"] == "ctl" and r["req"]["op"] == "dma"
                  and r["rep"].get("data"))
    records[n - 1]["rep"]["data"] = b"from the GUEST"
    out = xenemu("replay", str(save(tmp_path / "edited.xt", header, records)))
    assert out.returncode == 1
    assert f"divergence at record {n} " in out.stdout and "control dma" in out.stdout
    assert re.search(r"data\s+.*<<", out.stdout)


def test_an_edited_protocol_error_is_a_divergence(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "error-paths.xt")
    n = number_of(records, lambda r: r["k"] == "proto" and r["code"] == wire.ERR_BAD_MAGIC)
    records[n - 1]["code"] = wire.ERR_BAD_TYPE
    r = replay_file(save(tmp_path / "edited.xt", header, records))
    assert [d.number for d in r.divergences] == [n]
    assert "BAD_TYPE expected, got BAD_MAGIC" in r.divergences[0].summary


# -- broken and cut-off traces ---------------------------------------------------------

def test_a_cut_off_last_record_is_reported_not_fatal(tmp_path):
    data = (ROOT / "tests" / "traces" / "error-paths.xt").read_bytes()
    cut = tmp_path / "cut.xt"
    cut.write_bytes(data[:-7])
    out = xenemu("replay", str(cut))
    assert out.returncode == 0, out.stdout
    assert "the last record is cut off" in out.stdout
    header, records = load(ROOT / "tests" / "traces" / "error-paths.xt")
    assert f"{len(records) - 1} records" in out.stdout


def test_a_daemon_killed_mid_run_leaves_a_trace_that_replays(tmp_path):
    d = DaemonProcess(tmp_path)
    stop = threading.Event()

    def load_it():
        with XenemuClient(d.socket(0)) as xen:
            ctx = xen.alloc_context().op.ctx_no
            i = 0
            while not stop.is_set():
                ops = [abi.encode_op(5, ctx, 3, "map_pages", gfn=i, dfn=i, nr_pages=4),
                       abi.encode_op(6, ctx, 0, "unmap_pages", dfn=i, nr_pages=4)] * 16
                try:
                    xen.pipeline(ops)
                except XenemuError:     # the daemon is killed under it
                    return
                i += 4

    t = threading.Thread(target=load_it, daemon=True)
    t.start()
    while d.trace.stat().st_size < 200_000:
        time.sleep(0.01)
    d.stop(signal.SIGKILL)
    stop.set()
    t.join(10)
    r = assert_replays(d.trace, truncated_ok=True)
    assert r.hypercalls > 500


def map_unmap_checked(d: DaemonProcess, rounds: int) -> None:
    """Map and unmap through a context, every answer checked."""
    with XenemuClient(d.socket(0)) as xen:
        ctx = xen.alloc_context().op.ctx_no
        for i in range(rounds):
            results = xen.pipeline([abi.encode_op(5, ctx, 3, "map_pages", gfn=i, dfn=i, nr_pages=4),
                                    abi.encode_op(7, ctx, 0, "lookup_page", dfn=i + 3),
                                    abi.encode_op(6, ctx, 0, "unmap_pages", dfn=i, nr_pages=4)])
            assert [r.ret for r in results] == [0, 0, 0]
            assert results[0].op.map_pages.mapped == 4 and results[1].op.lookup_page.gfn == i + 3
            assert results[2].op.unmap_pages.unmapped == 4
        assert xen.free_context(ctx).ret == 0


def test_a_failing_trace_write_stops_the_recording_and_not_the_answers(tmp_path):
    # /dev/full: every write fails with ENOSPC, the header's first.
    d = DaemonProcess(tmp_path / "full", "--record", "/dev/full", record=False)
    map_unmap_checked(d, 50)
    assert d.ctl("mem_write", domid=0, gfn=1, data=b"still") == {}
    assert d.ctl("mem_read", domid=0, gfn=1, length=5)["data"] == b"still"
    assert d.ctl("check")["consistent"]
    assert d.stop() == 3
    line = "xenemu: recording to /dev/full stopped after 0 records: [Errno 28] No space left on device"
    assert d.log().count(line) == 2        # logged when it happened, and again on exit
    assert "Traceback" not in d.log() and "internal error" not in d.log()


def test_a_trace_cut_by_a_full_disk_holds_whole_records_and_replays(tmp_path):
    # The daemon's files stop at 64 KiB (RLIMIT_FSIZE): the trace fills up mid-record.
    trace = tmp_path / "short.xt"
    d = DaemonProcess(tmp_path / "limited", "--record", str(trace), record=False,
                      log_level="info", max_file_size=64 << 10)
    map_unmap_checked(d, 300)
    assert d.stop() == 3
    found = re.search(rf"xenemu: recording to {trace} stopped after (\d+) records: "
                      r"\[Errno 27\] File too large", d.log())
    assert found, d.log()
    # Cut back to its last whole record: it replays with nothing cut off.
    r = assert_replays(trace)
    assert r.records == int(found[1]) and 100 < r.records < 900
    assert trace.stat().st_size <= 64 << 10


def test_unusable_output_paths_are_refused_at_the_start(tmp_path, capsys):
    for args, message in [
        (["--record", "/nonexistent/dir/t.xt"], "--record /nonexistent/dir/t.xt: no directory "
                                                "/nonexistent/dir"),
        (["--record", str(tmp_path)], f"--record {tmp_path}: is a directory"),
        (["--snapshot", "/nonexistent/s.xs"], "--snapshot /nonexistent/s.xs: no directory "
                                              "/nonexistent"),
    ]:
        # `xenemu serve`'s main() in process: it returns before anything starts.
        assert cli.main(["serve", "--socket-dir", str(tmp_path / "s"), *args]) == 2
        assert capsys.readouterr().err == f"xenemu: {message}\n"
        assert not (tmp_path / "s").exists()


def test_unreadable_traces_are_refused_clearly(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "linux-driver.xt")
    cases = {
        "not-a-trace.xt": (b"hello, world\n" * 10, "not a xenemu trace"),
        "newer.xt": (msgpack.packb({**header, "xenemu_trace": 99}), "newer than this xenemu"),
        "bad-record.xt": (save(tmp_path / "tmp", header, records[:3]).read_bytes()
                          + msgpack.packb({"k": "hc", "t": 1.0}),
                          "bad-record.xt: record 4: object missing required field d"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        out = xenemu("replay", str(tmp_path / name))
        assert out.returncode == 2, name
        assert message in out.stdout + out.stderr, (name, out.stdout, out.stderr)


# -- determinism and slicing ----------------------------------------------------------

def final_state(path: Path) -> dict:
    with TraceReader(path) as reader:
        replayer = Replayer(reader.machine, reader.header.snapshot)
        for number, rec in reader:
            assert replayer.replay(number, rec) is None
    c = replayer.engine.control
    return {"info": c({"op": "info"}), "faults": c({"op": "faults"}),
            "counters": c({"op": "counters"}), "contexts": c({"op": "contexts", "domid": 0})}


def test_replay_is_deterministic_across_runs():
    path = ROOT / "tests" / "traces" / "reattach-under-dma.xt"
    assert final_state(path) == final_state(path)


def test_a_xenemu_that_slices_teardown_differently_still_matches(monkeypatch):
    # Only guest-visible bytes are compared: continuations are xenemu's business.
    for slice_ in (1 << 12, 1 << 20):
        monkeypatch.setattr(iommu_contexts, "TEARDOWN_SLICE", slice_)
        assert_replays(ROOT / "tests" / "traces" / "continued-free.xt")


# -- show, stats, progress ----------------------------------------------------------------

def test_show_prints_one_line_per_record_with_filters():
    path = str(ROOT / "tests" / "traces" / "error-paths.xt")
    header, records = load(Path(path))
    out = xenemu("trace", "show", path)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == len(records)
    assert re.search(r"d0 iommu_op map_pages ctx=1 flags=0x3 gfn=0x100 dfn=0x20f nr_pages=4 "
                     r"-> -EADDRINUSE mapped=0", out.stdout)
    assert "protocol error BAD_MAGIC" in out.stdout
    errors = xenemu("trace", "show", "--errors", path).stdout.splitlines()
    assert errors and all(re.search(r"-> -E|protocol error|ENOSYS", line) for line in errors)
    maps = xenemu("trace", "show", "--subop", "map_pages", path).stdout.splitlines()
    assert len(maps) == 7 and all("map_pages" in line for line in maps)
    d1 = xenemu("trace", "show", "--domain", "1", path).stdout.splitlines()
    assert len(d1) == 2 and all(" d1 " in line and "-EPERM" in line for line in d1)


def test_show_follows_continuations_and_control_events():
    out = xenemu("trace", "show", str(ROOT / "tests" / "traces" / "continued-free.xt")).stdout
    assert re.search(r"free_context ctx=1 flags=0x0 -> continues \(c1\)", out)
    assert re.search(r"free_context ctx=1 flags=0x0 -> 0 \(c1, \d+ rounds\)", out)
    out = xenemu("trace", "show", "--subop", "control",
                 str(ROOT / "tests" / "traces" / "machine-changes.xt")).stdout
    assert "control p2m_set domid=0 gfn=0x4000 type=paged_out -> ok" in out
    assert "control domain_create" in out and "faulted=True" in out


def test_stats_counts_per_sub_op_and_result():
    out = xenemu("trace", "stats", str(ROOT / "tests" / "traces" / "error-paths.xt")).stdout
    assert re.search(r"map_pages\s+7\s+.*-EADDRINUSE: 1", out)
    assert re.search(r"query_capabilities\s+2\s+.*0: 1\s+-EPERM: 1|"
                     r"query_capabilities\s+2\s+.*-EPERM: 1\s+0: 1", out)
    assert "protocol errors: 3" in out and "BAD_MAGIC: 1" in out
    out = xenemu("trace", "stats", str(ROOT / "tests" / "traces" / "continued-free.xt")).stdout
    assert "hypercalls: 598" in out and "pages: mapped 150,000" in out
    assert re.search(r"lookup_page\s+10\s+0: 8\s+-EINVAL: 2", out)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_progress_bar_on_a_terminal(jobs):
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    more = [str(ROOT / "tests" / "traces" / "linux-driver.xt")] if jobs == "2" else []
    proc = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "replay", "-j", jobs,
                             str(ROOT / "tests" / "traces" / "continued-free.xt"), *more],
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    out, _ = proc.communicate(timeout=120)
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0, out
    # rich's bar: the trace's name, then how far, its records and their rate;
    # for several traces, one bar for them all as well.
    if jobs == "1":
        assert re.search(rb"continued-free.xt .*\xe2\x94\x81.*100%.* 600 records [\d,]+/s", seen)
    else:
        assert re.search(rb"all traces .*\xe2\x94\x81.*100%.* 2/2", seen)
        assert b"continued-free.xt " in seen and b"linux-driver.xt " in seen
    assert b"\x1b[?25h" in seen[-24:] and b"\x1b[2K" in seen[-24:]   # erased, cursor back
    # Not on a pipe: the same replay writes no bar where stderr is not a terminal.
    assert subprocess.run([sys.executable, "-m", "xenemu.cli", "replay", "-j", jobs,
                           str(ROOT / "tests" / "traces" / "linux-driver.xt"), *more],
                          capture_output=True, cwd=ROOT, env=env).stderr == b""


def test_serve_the_machine_a_trace_was_recorded_on(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('address_width = 48\n[[domain]]\ndomid = 3\nhardware = true\n'
                   'memory_mib = 32\ncontexts = 2\ndevices = ["0000:00:09.0"]\n')
    first = DaemonProcess(tmp_path / "a", "--config", str(cfg))
    assert first.stop() == 0
    again = DaemonProcess(tmp_path / "b", "--machine-of", str(first.trace), record=False)
    try:
        assert f"serving the machine of {first.trace}" in again.banner
        assert "d3 (d3, hardware domain, 2 contexts)" in again.banner
        info = again.ctl("info")
        assert info["iommu"]["address_width"] == 48
        assert info["domains"][0]["devices"] == {"0000:00:09.0": 0}
    finally:
        assert again.stop() == 0


def test_control_replies_may_gain_keys_but_not_lose_or_change_them(tmp_path):
    header, records = load(ROOT / "tests" / "traces" / "machine-changes.xt")
    n = number_of(records, lambda r: r["k"] == "ctl" and r["req"]["op"] == "domain_create")
    dropped = dict(records[n - 1]["rep"]["domain"])
    dropped.pop("name")                      # as if recorded by an older xenemu
    records[n - 1]["rep"]["domain"] = dropped
    assert replay_file(save(tmp_path / "older.xt", header, records)).ok
    records[n - 1]["rep"]["domain"] = {**dropped, "contexts": 3}
    r = replay_file(save(tmp_path / "changed.xt", header, records))
    assert [d.number for d in r.divergences] == [n]
