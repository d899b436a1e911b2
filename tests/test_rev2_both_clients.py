"""tests/rev2_cases.py's table of revision-2 sub-ops and return paths, run
through the C client (tests/c/rev2_runner.c, built against abi/rev2, one
runner per domain) and through the Python client (RevisionTwoClient), each
against one `xenemu serve --config` daemon of the table's machine, under
each `rev2_semantics` ("v7" and "intended", one daemon each): every
case gives the expected return value, and both clients the same return values
and the same bytes copied back (the struct, and remote_cmd's inner struct),
the bytes the table expects.

The cases depend on the state the ones before leave: the C client runs the
whole table, the guest domains are created anew (control socket), then the
Python client runs it. The daemon's trace replays byte for byte."""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest

from rev2_cases import NOWHERE, NULL, SEMANTICS, Call, Ctl, cases, machine_toml
from support import ROOT, DaemonProcess, assert_replays, compile_c
from xenemu.client import INNER_GADDR, OP_GADDR, RevisionTwoClient
from xenemu.errno import result_name
from xenemu.hypercalls import iommu_op_v2 as v2

HANDLE = slice(8, 16)       # remote_cmd's arg: each client points it at its own memory
WRAP = (1 << 64) - 4        # no guest memory there (the C runner's "wrap")


def comparable(call: Call, ret: int, raw: bytes, inner: bytes) -> tuple[str, str, str]:
    """What both clients must agree on: the return value, the struct after
    the call (remote_cmd's handle bytes left out) and the inner struct."""
    if call.subop == v2.IOMMU_remote_cmd and raw:
        raw = raw[:HANDLE.start] + bytes(8) + raw[HANDLE.stop:]
    return result_name(ret), raw.hex(), inner.hex()


class CRunners:
    """One rev2_runner per domain, kept running: a line in, a line out."""

    def __init__(self, exe, daemon):
        self.exe, self.daemon, self.procs = exe, daemon, {}

    def call(self, call: Call) -> tuple[str, str, str]:
        proc = self.procs.get(call.domid)
        if proc is None:
            proc = self.procs[call.domid] = subprocess.Popen(
                [str(self.exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "XENEMU_SOCKET": str(self.daemon.socket(call.domid))})
        words = ["self", str(call.subop), self._word(call.arg)]
        if call.inner is not None:
            words.append(self._word(call.inner))
        proc.stdin.write(" ".join(words) + "\n")
        proc.stdin.flush()
        out = proc.stdout.readline().split()
        assert out, f"rev2_runner exited {proc.wait(30)} on {words}"
        raw = b"" if out[2] == "-" else bytes.fromhex(out[2])
        inner = bytes.fromhex(out[4]) if len(out) > 4 and out[4] != "-" else b""
        return comparable(call, int(out[0]), raw, inner)

    @staticmethod
    def _word(spec) -> str:
        return {NULL: "null", NOWHERE: "wrap"}.get(spec, spec) if isinstance(spec, str) \
            else spec.hex()

    def close(self):
        for proc in self.procs.values():
            proc.stdin.close()
            assert proc.wait(30) == 0


class PythonClients:
    """One RevisionTwoClient per domain."""

    def __init__(self, daemon):
        self.daemon, self.clients = daemon, {}

    def call(self, call: Call) -> tuple[str, str, str]:
        xen = self.clients.get(call.domid)
        if xen is None:
            xen = self.clients[call.domid] = RevisionTwoClient(self.daemon.socket(call.domid))
        if call.arg == NOWHERE:
            return comparable(call, xen.hypercall(43, (call.subop, WRAP), ()).ret, b"", b"")
        raw = b"" if call.arg == NULL else call.arg
        inner = call.inner if isinstance(call.inner, bytes) else b""
        if call.subop == v2.IOMMU_remote_cmd:
            handle = INNER_GADDR if inner else 0
            raw = raw[:HANDLE.start] + handle.to_bytes(8, "little") + raw[HANDLE.stop:]
            inner_subop = int.from_bytes(raw[2:4], "little")
            r = xen.iommu_op_subop(call.subop, raw, inner, inner_subop)
        else:
            r = xen.iommu_op_subop(call.subop, raw)
        assert OP_GADDR != INNER_GADDR
        return comparable(call, r.ret, r.raw, r.inner)

    def close(self):
        for xen in self.clients.values():
            xen.close()


@pytest.fixture(scope="module")
def runner(c_build, tmp_path_factory):
    return compile_c(ROOT / "tests" / "c" / "rev2_runner.c",
                     tmp_path_factory.mktemp("c") / "rev2_runner", str(c_build / "libxenemu.a"),
                     abi_revision=2)


def run_table(d: DaemonProcess, table, clients) -> list[tuple[str, str, str]]:
    """The table through `clients` on daemon d; the answers to its calls."""
    answers = []
    try:
        for case in table:
            if isinstance(case, Ctl):
                d.ctl(case.op, **case.args)
            else:
                answers.append(clients.call(case))
    finally:
        clients.close()
    return answers


def recreate_guests(d: DaemonProcess, toml: str) -> None:
    """Domains 1-3 destroyed and created again from the machine file, as they
    were when the daemon started. dom0 stays: the table leaves it as it found
    it (no init: its pool stays empty, its answers the same)."""
    for domain in tomllib.loads(toml)["domain"]:
        if domain["domid"] != 0:
            d.ctl("domain_destroy", domid=domain["domid"])
            d.ctl("domain_create", **domain)


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_one_table_through_both_clients(semantics, tmp_path, runner):
    """One daemon: the table through the C client, the guests created anew,
    the table through the Python client."""
    toml, table = machine_toml(semantics), cases(semantics)
    machine = tmp_path / "rev2-table.toml"
    machine.write_text(toml)
    d = DaemonProcess(tmp_path, "--config", str(machine))
    try:
        c = run_table(d, table, CRunners(runner, d))
        recreate_guests(d, toml)
        py = run_table(d, table, PythonClients(d))
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)
    calls = [case for case in table if isinstance(case, Call)]
    assert len(c) == len(py) == len(calls)
    for i, (case, c_answer, py_answer) in enumerate(zip(calls, c, py)):
        where = f"case {i}: d{case.domid} subop {case.subop}"
        assert c_answer[0] == case.want, where
        assert c_answer == py_answer, where
        case.check_back(bytes.fromhex(c_answer[1]), bytes.fromhex(c_answer[2]))
