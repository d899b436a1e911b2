"""Traces as an input: every bad, cut-off, corrupt or hostile trace gets one
line naming the file and the documented exit status from every command that
reads traces, never a traceback; decompression bombs are refused with the
reader's memory staying small; traces are written readable by their owner
only. The property test at the end feeds the reader and the replayer
mutated corpus traces.
"""

from __future__ import annotations

import gzip
import lzma
import os
import random
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import bomb, load, pack, peak_rss_mib
from support import ROOT, DaemonProcess, assert_replays
from xenemu import cli
from xenemu.machine import default_machine
from xenemu.trace.reader import TraceReader
from xenemu.trace.records import MAX_HEADER, MAX_RECORD, TraceError
from xenemu.trace.replay import Replayer
from xenemu.trace.writer import TraceWriter

CORPUS = ROOT / "tests" / "traces"
SMALL = [CORPUS / n for n in ("linux-driver.xt", "error-paths.xt", "machine-changes.xt")]


HEADER, RECORDS = load(CORPUS / "linux-driver.xt")
PLAIN = (CORPUS / "linux-driver.xt").read_bytes()
HEADER_BYTES = pack(HEADER)


# -- the bad inputs -------------------------------------------------------------------
# Each: the file's bytes, and what every reader says: ("error", words) is a
# trace that cannot be read (exit 2), ("cut", words) one whose last record is
# cut off (reported, not fatal: exit 0). `header` marks those whose header
# is bad, which `serve --machine-of` (reading the header only) refuses too.

def _bad_record(**fields) -> bytes:
    return pack(HEADER, *RECORDS[:3], {**RECORDS[3], **fields})


DEEP: list = []
for _ in range(200):
    DEEP = [DEEP]
CONTROL = {"k": "ctl", "t": 1.0, "req": {"op": "faults"}, "rep": {"ok": True}}

BAD = {
    "empty": (b"", "error", "not a xenemu trace"),
    "not-msgpack": (b"hello, world\n" * 10, "error", "not a xenemu trace"),
    "gzip-garbage": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)) * 4,
                     "error", "the gzip stream cannot be read"),
    "xz-cut-in-header": (lzma.compress(PLAIN)[:60], "error", "the header is cut off"),
    "header-cut": (HEADER_BYTES[:40], "error", "the header is cut off"),
    "abi-not-a-map": (pack({**HEADER, "abi": 5}, *RECORDS), "error",
                      "header: abi: expected object, got int"),
    "abi-missing-key": (pack({**HEADER, "abi": {"wire_version": 1}}, *RECORDS), "error",
                        "header: abi: object missing required field pv_iommu_revision"),
    "machine-not-a-map": (pack({**HEADER, "machine": [1]}, *RECORDS), "error",
                          "header: machine: expected object, got array"),
    "machine-unknown-key": (pack({**HEADER, "machine": {**HEADER["machine"], "cpus": 4}}),
                            "error", "header: machine: object contains unknown field cpus"),
    "meta-not-a-map": (pack({**HEADER, "meta": "x"}, *RECORDS), "error",
                       "header: meta: expected object, got str"),
    "snapshot-not-one": (pack({**HEADER, "xenemu_trace": 2, "snapshot": {"a": 1}}), "error",
                         "header: snapshot: not a xenemu snapshot"),
    "header-nested-deep": (pack({**HEADER, "meta": {"x": DEEP}}, *RECORDS), "error",
                           "header: maps and arrays nested deeper than 16"),
    "record-nested-deep": (pack(HEADER, *RECORDS[:3], {**CONTROL, "rep": {"ok": True, "x": DEEP}}),
                           "error", "record 4: maps and arrays nested deeper than 16"),
    "newer-format": (pack({**HEADER, "xenemu_trace": 99}), "error", "trace format 99 is newer"),
    "record-not-a-map": (pack(HEADER, *RECORDS[:3], 7), "error",
                         "record 4: expected object, got int"),
    "record-bad-kind": (_bad_record(k="hcx"), "error", "record 4: k: invalid value 'hcx'"),
    "record-req-int": (_bad_record(req=12), "error", "record 4: req: expected bytes, got int"),
    "record-time-nan": (_bad_record(t=float("nan")), "error", "record 4: t: expected float >= 0"),
    "record-domid-range": (_bad_record(d=0x7FF0), "error", "record 4: d: expected int <= 32751"),
    "record-frame-not-a-frame": (_bad_record(req=b"\x00" * 40), "error",
                                 "record 4: req: not a CALL frame"),
    "record-reply-not-a-frame": (_bad_record(rep=b"garbage"), "error",
                                 "record 4: rep: not a REPLY frame"),
    "record-too-large": (pack(HEADER, *RECORDS[:3]) + b"\xc6\x70\x00\x00\x00"
                         + bytes(MAX_RECORD + 4096), "error", "record 4 is larger than 2.0625 MiB"),
    "record-broken-msgpack": (pack(HEADER, *RECORDS[:3]) + b"\xc1" * 8, "error",
                              "record 4 is not valid msgpack"),
    "ends-in-array32": (PLAIN + b"\xdd\x00\x00\x01\x00", "cut", "the last record is cut off"),
    "ends-in-map32": (PLAIN + b"\xdf\x00\x00\x00\x03", "cut", "the last record is cut off"),
    "ends-in-bin32": (PLAIN + b"\xc6\x70\x00\x00\x00" + bytes(100), "cut",
                      "the last record is cut off (105 bytes ignored)"),
    "plain-cut": (PLAIN[:-7], "cut", "the last record is cut off (", ),
    "xz-cut": (lzma.compress(PLAIN)[:-40], "cut", "the compressed stream is cut off"),
    "gzip-cut": (gzip.compress(PLAIN)[:-30], "cut", "the compressed stream is cut off"),
}
HEADER_BAD = {name for name, (data, outcome, _) in BAD.items()
              if outcome == "error" and "record" not in name}


def xenemu(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenemu.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


COMMANDS = ["show", "stats", "replay", "replay-junit", "serve"]
# Through a real `xenemu` process: one bad input of each sort; the rest go
# through the same main() in this process (a traceback there is an
# exception out of main), which keeps the whole table to a few seconds.
IN_A_PROCESS = {"gzip-garbage", "abi-not-a-map", "record-frame-not-a-frame", "ends-in-bin32",
                "record-too-large"}


def run(args: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    """`xenemu ARGS` in cwd: exit status, stdout, stderr."""
    if capsys is None:
        out = xenemu(*args, cwd=cwd)
        return out.returncode, out.stdout, out.stderr
    old = os.getcwd()
    os.chdir(cwd)
    try:
        status = cli.main(args)
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return status, out.out, out.err


# serve --machine-of reads the header only: it meets the bad headers alone.
CASES = [(name, command) for name in sorted(BAD) for command in COMMANDS
         if command != "serve" or name in HEADER_BAD]


@pytest.mark.parametrize("name, command", CASES)
def test_a_bad_trace_gets_one_line_and_its_exit_status(tmp_path, capsys, name, command):
    data, outcome, words = BAD[name]
    path = tmp_path / f"{name}.xt"
    path.write_bytes(data)
    args = {"show": ["trace", "show", path.name], "stats": ["trace", "stats", path.name],
            "replay": ["replay", path.name],
            "replay-junit": ["replay", "--keep-going", "--junit", "r.xml", path.name],
            "serve": ["serve", "--socket-dir", "s", "--machine-of", path.name]}[command]
    status, stdout, stderr = run(args, tmp_path, None if name in IN_A_PROCESS else capsys)
    assert "Traceback" not in stderr + stdout
    assert status == (2 if outcome == "error" else 0), (stdout, stderr)
    if command in ("show", "stats", "serve"):
        # The error (or the note of a cut-off record) is one line naming the file.
        said = [line for line in lines(stderr + stdout) if words in line]
        assert said and said[0].startswith(("xenemu: ", "note: ")), (stdout, stderr)
        assert f"{path.name}: " in said[0]
        if outcome == "error":       # (show prints the records before it)
            assert lines(stderr) == said
            assert command == "show" or not stdout
    else:
        summary = [line for line in lines(stdout) if line.startswith(f"{path.name}: ")]
        assert len(summary) == 1, stdout
        assert stderr == ""
        if outcome == "error":
            assert "cannot replay" in summary[0] and words in summary[0]
        else:
            assert "all match" in summary[0] and words in stdout
    if command == "replay-junit":
        report = (tmp_path / "r.xml").read_text()
        assert ("<error" in report) == (outcome == "error")
    if command == "serve":
        assert not (tmp_path / "s").exists()    # refused before anything started


def test_a_cut_off_array32_at_the_end_is_reported_in_process(tmp_path):
    """The reader notices a container header msgpack has taken in but not
    finished (today's msgpack counts those bytes as read)."""
    path = tmp_path / "t.xt"
    path.write_bytes(PLAIN + b"\xdd\x00\x00\x01\x00")
    with TraceReader(path) as reader:
        assert sum(1 for _ in reader) == len(RECORDS)
    assert reader.truncated == 5


def test_a_missing_file_is_one_line(tmp_path):
    for args in (["trace", "show", "nope.xt"], ["trace", "stats", "nope.xt"],
                 ["replay", "nope.xt"]):
        out = xenemu(*args, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "nope.xt: No such file or directory" in out.stdout + out.stderr


# -- a closed pipe -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [["trace", "stats"], ["trace", "show"], ["replay"]],
                         ids=lambda a: a[-1])
def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path, args):
    """`xenemu trace stats f.xt | head -1`: the pipe closes before the
    command writes; it stops with SIGPIPE's status and says nothing."""
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run([sys.executable, "-m", "xenemu.cli", *args,
                           str(CORPUS / "error-paths.xt")],
                          stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    os.close(w)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE


# -- decompression bombs -------------------------------------------------------------------

# A reader holds at most one object and the chunk being fed, on top of
# Python with xenemu imported (~35 MiB): these bounds say so with room.
RSS_RECORD_BOMB = 96        # MiB: a record is at most 2 MiB
RSS_HEADER_BOMB = 128       # MiB: a header is at most 16 MiB
OBJECTS_PER_BYTE = 25       # Python's bytes per msgpack byte, at worst (tiny arrays)


@pytest.mark.parametrize("compressor", ["gzip", "xz"])
@pytest.mark.parametrize("where", ["header", "record"])
def test_a_decompression_bomb_is_refused_in_little_memory(tmp_path, compressor, where):
    prefix = HEADER_BYTES + pack(*RECORDS[:2]) if where == "record" else b""
    path = bomb(tmp_path / f"bomb.xt.{compressor}", compressor, prefix)
    assert path.stat().st_size < 2_000_000
    commands = [["trace", "show"], ["trace", "stats"], ["replay"]]
    if where == "header":
        commands.append(["serve", "--socket-dir", "s", "--machine-of"])
    bound = RSS_HEADER_BOMB if where == "header" else RSS_RECORD_BOMB
    for args in commands:
        status, rss, out = peak_rss_mib([*args, path.name], tmp_path)
        print(f"xenemu {' '.join(args)} {path.name}: peak RSS {rss:.0f} MiB")
        assert status == 2, out
        what = "the header is larger than 16 MiB" if where == "header" else \
            "record 3 is larger than 2.0625 MiB"
        assert what in out and "Traceback" not in out
        assert rss < bound, (args, rss)


def test_a_header_of_tiny_objects_stays_within_its_bound(tmp_path):
    """The worst a header can do per byte: four-element arrays (5 bytes each
    in msgpack, ~100 as Python objects), a quarter of MAX_HEADER of them
    here to keep the test short (the whole 16 MiB: ~400 MiB)."""
    each = 1 << 17                                   # arrays per gzip member
    size = MAX_HEADER // 4
    n = size // 5 // each * each
    head = msgpack.packb({**HEADER, "meta": {"x": None}}, use_bin_type=True)
    cut = head.index(b"\xa1x\xc0") + 2              # meta's "x": nil, replaced by the array
    member = gzip.compress(b"\x94\x00\x00\x00\x00" * each)
    path = tmp_path / "tiny.xt.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(head[:cut] + b"\xdd" + n.to_bytes(4, "big")))
        f.write(member * (n // each))
        f.write(gzip.compress(head[cut + 1:]))
    status, rss, out = peak_rss_mib(["trace", "stats", path.name], tmp_path)
    print(f"xenemu trace stats {path.name} ({path.stat().st_size} bytes): peak RSS {rss:.0f} MiB")
    assert status == 0, out                          # a valid header, if a silly one
    assert rss < 48 + OBJECTS_PER_BYTE * size / (1 << 20)


def test_containers_claiming_more_elements_than_bytes_are_not_allocated(tmp_path):
    """An array32 of 2^32-1 elements is 5 bytes: refused at its header, not
    allocated (msgpack preallocates a list of the claimed length)."""
    path = tmp_path / "t.xt"
    path.write_bytes(HEADER_BYTES + b"\xdd\xff\xff\xff\xff" + bytes(64))
    status, rss, out = peak_rss_mib(["trace", "show", path.name], tmp_path)
    assert status == 2 and "record 1 is not valid msgpack" in out, out
    assert rss < RSS_RECORD_BOMB


# -- writing ------------------------------------------------------------------------------

def test_recorded_traces_are_private_to_their_owner(tmp_path):
    fresh = DaemonProcess(tmp_path / "a")
    assert fresh.stop() == 0
    assert stat.S_IMODE(fresh.trace.stat().st_mode) == 0o600
    # A trace written over an existing file makes that file private too.
    old = tmp_path / "old.xt"
    old.write_bytes(b"x" * 100)
    old.chmod(0o644)
    again = DaemonProcess(tmp_path / "b", "--record", str(old), record=False)
    assert again.stop() == 0
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert_replays(old)


def test_a_header_no_reader_would_accept_is_not_written(tmp_path):
    path = tmp_path / "t.xt"
    snap = {"xenemu_snapshot": 1, "memory": bytes(MAX_HEADER)}
    with pytest.raises(OSError, match="over the 16 MiB a reader accepts"):
        TraceWriter.create(path, default_machine(), snapshot=snap)
    assert not path.exists()


# -- property: mutated traces ------------------------------------------------------------------

def read_and_replay(path: Path) -> None:
    """What `replay --keep-going` does: only TraceError may come out."""
    try:
        with TraceReader(path) as reader:
            replayer = Replayer(reader.machine, reader.header.snapshot)
            for number, rec in reader:
                replayer.replay(number, rec)
            replayer.hv.check_invariants()
    except TraceError:
        pass


def mutate_bytes(data: bytes, start: int, seed: int) -> bytes:
    """Flip, overwrite, cut or splice bytes after `start` (the header's end)."""
    rng = random.Random(seed)
    b = bytearray(data)
    how = rng.randrange(4)
    if how == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(start, len(b))] ^= 1 << rng.randrange(8)
    elif how == 1:
        i = rng.randrange(start, len(b))
        b[i:i + 4] = rng.randbytes(4)
    elif how == 2:
        del b[rng.randrange(start, len(b)):]
    else:   # a container or byte string claiming more than the file holds
        i = rng.randrange(start, len(b))
        b[i:i] = rng.choice(b"\xc6\xdb\xdd\xdf\xc5\xda\xdc\xde").to_bytes(1, "big") + \
            rng.randbytes(4 if rng.random() < 0.7 else 2)
    return bytes(b)


WRONG = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                  st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=40),
                  st.lists(st.integers(-2**63, 2**64 - 1), max_size=3),
                  st.dictionaries(st.text(max_size=4), st.integers(-1, 2**64 - 1), max_size=3),
                  st.just(DEEP), st.just({"op": "dma", "x": DEEP}))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SMALL), st.integers(0, 2**32))
def test_mutated_bytes_read_and_replay_or_say_why(tmp_path, source, seed):
    data = source.read_bytes()
    header_end = len(pack(load(source)[0]))
    path = tmp_path / "m.xt"
    path.write_bytes(mutate_bytes(data, header_end, seed))
    read_and_replay(path)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SMALL), st.data())
def test_fields_replaced_with_wrong_values_read_and_replay_or_say_why(tmp_path, source, data):
    header, records = load(source)
    n = data.draw(st.integers(0, len(records)), label="object")
    obj = dict(header if n == 0 else records[n - 1])
    keys = sorted(obj) if n else ["xenemu_trace", "abi", "machine", "meta", "snapshot"]
    obj[data.draw(st.sampled_from(keys), label="key")] = data.draw(WRONG, label="value")
    if n == 0:
        header = obj
    else:
        records[n - 1] = obj
    path = tmp_path / "m.xt"
    path.write_bytes(pack(header, *records))
    read_and_replay(path)


def test_the_property_tests_are_not_vacuous(tmp_path):
    """Mutations do reach the replayer and do get refused."""
    path = tmp_path / "m.xt"
    refused = 0
    for seed in range(40):
        path.write_bytes(mutate_bytes(SMALL[1].read_bytes(), len(pack(load(SMALL[1])[0])), seed))
        try:
            with TraceReader(path) as reader:
                for _ in reader:
                    pass
        except TraceError:
            refused += 1
    assert 5 < refused < 40
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2 << 20    # KiB: 2 GiB
