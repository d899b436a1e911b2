"""`xenemu ctl` (tables, --json, finding the control socket) and `xenemu top`
against a running daemon, through the CLI."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time

import pytest

from xenemu import abi
from xenemu.cli import main
from xenemu.client import XenemuClient
from xenemu.ctl import ControlError

from support import ROOT, DaemonProcess

NIC = "0000:00:03.0"        # dom0's, in its context 0 (the embedded default machine)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    started = time.monotonic()
    d = DaemonProcess(tmp_path_factory.mktemp("ctltop"), record=False, log_level="info")
    d.window = (started, time.monotonic())      # the daemon's start lies in here
    yield d
    d.stop()


def run_cli(capsys, *argv: str) -> str:
    """`xenemu ARGV` in this process: its stdout (it must succeed)."""
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def ctl(capsys, daemon, *argv: str) -> str:
    return run_cli(capsys, "ctl", "--socket", daemon.control, *argv)


def row(text: str, *first: str) -> list[str]:
    """The cells of the table line whose first cells are `first`."""
    for line in text.splitlines():
        cells = line.split()
        if cells[:len(first)] == list(first):
            return cells
    raise AssertionError(f"no line starting {first} in:\n{text}")


def test_ctl_finds_the_socket_where_serve_put_it(daemon):
    """No XENEMU_CONTROL: ctl looks in $XENEMU_DIR, as serve placed it there;
    XENEMU_CONTROL, when set, wins."""
    env = {k: v for k, v in os.environ.items() if k != "XENEMU_CONTROL"}
    env["XENEMU_DIR"] = str(daemon.socket_dir)
    cmd = [sys.executable, "-m", "xenemu.cli", "ctl", "info"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert row(out.stdout, "0", "dom0")[2] == "hardware"
    env["XENEMU_CONTROL"] = str(daemon.socket_dir / "elsewhere.sock")
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "elsewhere.sock" in out.stderr
    assert "Traceback" not in out.stderr


def test_ctl_tables_show_the_replies_values(daemon, capsys):
    with XenemuClient(daemon.socket(0)) as xen:
        ctx = abi.decode_op(xen.alloc_context().raw).ctx_no
        assert xen.map_pages(ctx, 0x100, 0x200, 16).ret == 0
    contexts = daemon.ctl("contexts", domid=0)["contexts"]
    mine = next(c for c in contexts if c["ctx_no"] == ctx)
    cells = row(ctl(capsys, daemon, "contexts", "domid=0"), str(ctx), str(mine["hw_id"]))
    assert cells[2:] == ["live", "-", "16", str(mine["table_pages"]),
                         *(str(mine["iotlb"][k]) for k in ("hits", "misses", "invalidations"))]

    info = daemon.ctl("info")
    out = ctl(capsys, daemon, "info")
    dom0 = info["domains"][0]
    assert row(out, "0", "dom0") == [
        "0", "dom0", "hardware", "yes", str(dom0["memory_pages"]), str(dom0["contexts"]),
        *map(str, dom0["allocated"]), f"{dom0['table_pages']['used']}", "/",
        f"{dom0['table_pages']['limit']}", f"{dom0['default_table_pages']['used']}", "/",
        f"{dom0['default_table_pages']['limit']}"]
    assert row(out, NIC) == [NIC, "0", "0"]
    assert info["abi"] == {"pv_iommu_revision": 1}
    assert "PV-IOMMU ABI" in out and "revision 1" in out

    # A DMA beyond dom0's RAM faults: the faults table names it.
    daemon.ctl("faults", clear=True)
    assert daemon.ctl("dma", sbdf=NIC, addr=0x7f_0000_0000, length=4)["faulted"]
    fault = daemon.ctl("faults")["faults"][0]
    assert row(ctl(capsys, daemon, "faults"), NIC) == [NIC, "read", "0x7f00000000",
                                                          fault["kind"]]
    iotlb = daemon.ctl("counters")["iotlb"]
    assert row(ctl(capsys, daemon, "counters"), "misses") == ["misses", str(iotlb["misses"])]


@pytest.mark.parametrize("op, args", [
    ("info", {}), ("contexts", {"domid": 0}), ("faults", {}), ("counters", {}),
    ("check", {}), ("fail_nth", {}), ("p2m_get", {"domid": 0, "gfn": 1}),
    ("dump", {"domid": 0, "ctx_no": 0, "dfn": 0, "count": 4}),
])
def test_ctl_json_is_the_reply(daemon, capsys, op, args):
    """--json parses to the control reply (without "ok"; bytes as hex)."""
    out = ctl(capsys, daemon, "--json", op, *(f"{k}={v}" for k, v in args.items()))
    reply = {k: v.hex() if isinstance(v, bytes) else v for k, v in daemon.ctl(op, **args).items()}
    assert json.loads(out) == reply


def test_ctl_without_a_daemon_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XENEMU_CONTROL", raising=False)
    monkeypatch.setenv("XENEMU_DIR", str(tmp_path))
    for argv in (["ctl", "info"], ["top", "--once"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / "control.sock") in err


def test_stats_refuses_arguments(daemon):
    with pytest.raises(ControlError, match="stats"):
        daemon.ctl("stats", domid=0)


def test_top_shows_counts_rates_and_errors_by_name(tmp_path, capsys):
    """After N known hypercalls, `top --once` shows them per domain and
    sub-op, with rates averaged since the daemon started, and errors by name."""
    started = time.monotonic()
    d = DaemonProcess(tmp_path, record=False, log_level="info")
    ready = time.monotonic()
    try:
        with XenemuClient(d.socket(0)) as xen:
            for _ in range(5):
                assert xen.lookup_page(0, 0x10).ret == 0
            xen.hypercall(99)                                   # no such hypercall
            for number in range(200, 240):                      # no such sub-ops: one row
                xen.iommu_op(abi.encode_op(number))
        with XenemuClient(d.socket(1)) as guest:
            for _ in range(3):
                assert guest.query_capabilities().ret == -1     # -EPERM: not dom0
        asked = time.monotonic()
        out = run_cli(capsys, "top", "--once", "--socket", d.control)
        answered = time.monotonic()
    finally:
        d.stop()

    def rate_of(n: int, cells: list[str]) -> None:
        rate = float(cells[-1].replace(",", ""))
        assert n / (answered - started) - 0.005 <= rate <= n / (asked - ready) + 0.005, out

    for first, n in ((("0", "iommu_op", "lookup_page", "ok"), 5),
                     (("0", "unknown", "unknown", "-ENOSYS"), 1),
                     (("0", "iommu_op", "unknown", "-EINVAL"), 40),
                     (("1", "iommu_op", "query_capabilities", "-EPERM"), 3)):
        cells = row(out, *first)
        assert cells[len(first)] == str(n)
        rate_of(n, cells)
    errors = out[out.index("errors by name"):]
    assert row(errors, "1", "-EPERM")[2] == "3"
    assert row(errors, "0", "-EINVAL")[2] == "40"
    dom0 = row(out, "0", "dom0")
    assert dom0[2:3] == ["1"] and dom0[7] == "46" and dom0[9] == "41"     # contexts, calls, errors
    rate_of(46, dom0[:9])
    assert row(out, "1", "guest1")[7] == "3"


def test_top_keeps_a_freed_contexts_iotlb_counts_with_its_domain(daemon, capsys):
    """A domain's IOTLB hits and misses are its pools' (kept in C), so they
    outlive the context they were counted in."""
    def dom0_iotlb():
        return next(d for d in daemon.ctl("stats")["domains"] if d["domid"] == 0)["iotlb"]

    before = dom0_iotlb()
    with XenemuClient(daemon.socket(0)) as xen:
        ctx = abi.decode_op(xen.alloc_context().raw).ctx_no
        assert xen.map_pages(ctx, 0x300, 0x40, 1).ret == 0
        assert xen.reattach_device(ctx, devfn=3 << 3).ret == 0          # the NIC
        for _ in range(3):                                              # a miss, two hits
            assert not daemon.ctl("dma", sbdf=NIC, addr=0x40 << 12, length=4)["faulted"]
        assert xen.reattach_device(0, devfn=3 << 3).ret == 0
        assert xen.free_context(ctx).ret == 0
    assert ctx not in [c["ctx_no"] for c in daemon.ctl("contexts", domid=0)["contexts"]]
    out = run_cli(capsys, "top", "--once", "--socket", daemon.control)
    cells = row(out, "0", "dom0")
    assert cells[11] == str(before["hits"] + 2) and cells[13] == str(before["misses"] + 1), out


def test_top_refreshes_with_the_rates_of_the_last_interval(daemon):
    """Without --once, frame after frame (stdout a pipe: one below the other):
    the calls made between two frames show a rate in the frame after them
    and none in a later one; Ctrl-C ends it with status 0."""
    top = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "top", "--interval", "0.2",
                            "--socket", daemon.control], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def next_frame() -> str:
        lines = []
        while not lines or lines[-1] != "\n" or "faults:" not in "".join(lines):
            line = top.stdout.readline()
            assert line, top.stderr.read()
            lines.append(line)
        return "".join(lines)

    try:
        next_frame()
        with XenemuClient(daemon.socket(1)) as guest:
            before = int(row(next_frame(), "1", "guest1")[7])
            for _ in range(7):
                guest.query_capabilities()
        rates = []
        for _ in range(300):    # until a frame shows the 7 calls and a later one is quiet
            cells = row(next_frame(), "1", "guest1")
            rates.append(float(cells[8].replace(",", "")))
            if int(cells[7]) == before + 7 and rates[-1] == 0:
                break
        assert int(cells[7]) == before + 7 and rates[-1] == 0, rates
        assert any(r > 0 for r in rates[:-1])
    finally:
        top.send_signal(signal.SIGINT)
        assert top.wait(timeout=30) == 0
        assert "Traceback" not in top.stderr.read()


def test_names_are_shown_as_they_are_not_as_markup(daemon, capsys):
    """rich would read "[/red]" as a closing tag (an error) and ":smile:" as
    an emoji: a domain's name is shown verbatim."""
    name = "[/red]:smile:[b]x"
    assert row(ctl(capsys, daemon, "domain_create", "domid=9", f"name={name}"), "9")[1] == name
    try:
        assert row(ctl(capsys, daemon, "info"), "9")[1] == name
        assert row(run_cli(capsys, "top", "--once", "--socket", daemon.control), "9")[1] == name
    finally:
        daemon.ctl("domain_destroy", domid=9)


def test_top_ends_in_one_line_when_the_daemon_goes(tmp_path, capsys):
    d = DaemonProcess(tmp_path, record=False, log_level="info")
    top = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "top", "--interval", "0.1",
                            "--socket", d.control], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "xenemu top" in top.stdout.readline()        # it is showing frames
    finally:
        d.stop()
    top.stdout.read()
    assert top.wait(timeout=30) == 1
    err = top.stderr.read()
    assert err.startswith("xenemu top: ") and err.count("\n") == 1, err
    for interval in ("0", "-1", "nan", "1e9"):
        assert main(["top", "--once", "--interval", interval, "--socket", d.control]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_top_on_a_terminal_redraws_in_place(daemon):
    """On a terminal (a pty) frames are redrawn in place (rich Live: the
    cursor goes back up over the last frame), and Ctrl-C ends it, status 0."""
    master, slave = pty.openpty()
    top = subprocess.Popen([sys.executable, "-m", "xenemu.cli", "top", "--interval", "0.1",
                            "--socket", daemon.control], cwd=ROOT, stdin=slave, stdout=slave,
                           stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "150"})
    os.close(slave)
    seen = b""
    try:
        while seen.count(b"xenemu top") < 3:
            seen += os.read(master, 1 << 16)
    finally:
        top.send_signal(signal.SIGINT)
        status = top.wait(timeout=30)
        os.close(master)
    assert status == 0 and b"Traceback" not in top.stderr.read()
    assert b"\x1b[2K" in seen and b"\x1b[1A" in seen      # erase line, cursor up: in place
