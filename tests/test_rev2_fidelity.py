"""Revision 2's fidelity: `rev2_semantics` ("v7", the code, beside
"intended", what the header and cover letter say), and the Xen hazards:
every row of iommu_op_v2.HAZARDS met through the public interface gives
its warning, its `ctl info` count, its trace record, and fails
`xenemu replay --fail-on-hazard`. Ground truth:
../shared/reference/pv-iommu-rev2.md (§5.3, §5.5, §9, §10)."""

from __future__ import annotations

import dataclasses
import logging
import struct
import subprocess
import sys

import pytest

from support import ROOT, DaemonProcess, checked_local
from xenemu.client import RevisionTwoClient
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.machine import DomainConfig, default_machine
from xenemu.trace.reader import TraceReader
from xenemu.trace.records import HazardRecord, HypercallRecord
from xenemu.trace.replay import replay_file


def machine(semantics: str = "v7"):
    """The revision-2 default machine and d2, whose IOMMU is off."""
    base = default_machine(2)
    return dataclasses.replace(
        base, rev2_semantics=semantics, rev2_pages_per_round=64,
        domains=base.domains + (DomainConfig(domid=2, name="noiommu", iommu=False,
                                             memory_mib=16),))


def le(*fields) -> bytes:
    return b"".join(struct.pack("<" + f, v) for f, v in fields)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenemu.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# -- the two semantics, the same calls side by side ------------------------------------
# Each step: (what, the call, its answer under "v7", under "intended").

def _steps(d1):
    unchanged = le(("I", 0xFFFFFFFF), ("I", 3))
    return [
        # §5.3: UINT32_MAX is init's -E2BIG; v7 falls through into alloc (-ENOSPC).
        ("init UINT32_MAX", lambda: d1.init(0xFFFFFFFF, 3),
         ("-ENOSPC", unchanged), ("-E2BIG", unchanged)),
        # The first init: v7 takes context 1 over bytes 0-1; intended takes none.
        ("first init", lambda: d1.init(2, 3),
         ("0", le(("H", 1), ("H", 0), ("I", 3))), ("0", le(("I", 2), ("I", 3)))),
        ("pool", lambda: d1.query_capabilities(), ("0", 2), ("0", 2)),
        # A second init: v7 allocates again; intended -EACCES, untouched.
        ("second init", lambda: d1.init(2, 3),
         ("0", le(("H", 2), ("H", 0), ("I", 3))), ("-EACCES", le(("I", 2), ("I", 3)))),
        ("alloc", lambda: d1.alloc_context(), ("-ENOSPC", 0), ("0", 1)),
        ("alloc", lambda: d1.alloc_context(), ("-ENOSPC", 0), ("0", 2)),
        # §5.5: a failed free leaves the context dying in v7 only.
        ("attach", lambda: d1.reattach_device(1, 0, 1, 0), ("0", None), ("0", None)),
        ("busy free", lambda: d1.free_context(1), ("-EBUSY", None), ("-EBUSY", None)),
        ("out", lambda: d1.reattach_device(0, 0, 1, 0), ("0", None), ("0", None)),
        ("back in", lambda: d1.reattach_device(1, 0, 1, 0), ("-EINVAL", None), ("0", None)),
        # §10 row 10: a conflict is -EADDRINUSE in the code, -EINVAL in the header.
        ("map", lambda: d1.map_pages(2, 0x10, 0x100, 2), ("0", 2), ("0", 2)),
        ("conflict", lambda: d1.map_pages(2, 0x20, 0x101, 2),
         ("-EADDRINUSE", 0), ("-EINVAL", 0)),
    ]


def _observed(what: str, r):
    if what in ("pool",):
        return r.name, r.op.max_ctx_no
    if what.startswith("alloc"):
        return r.name, r.op.ctx_no
    if what in ("map", "conflict"):
        return r.name, r.op.mapped
    if "init" in what:
        return r.name, r.raw
    return r.name, None


@pytest.mark.parametrize("semantics", ["v7", "intended"])
def test_semantics_side_by_side(semantics, tmp_path):
    with checked_local(machine(semantics), tmp_path / "sem.xt") as m:
        d1 = m.client(1)
        for what, call, v7_answer, intended_answer in _steps(d1):
            want = v7_answer if semantics == "v7" else intended_answer
            assert _observed(what, call()) == want, (semantics, what)
        assert m.ctl("info")["hazards"] == {}
    # The trace's machine carries the semantics: it replayed (checked_local).
    assert TraceReader(tmp_path / "sem.xt").machine.rev2_semantics == semantics


def test_semantics_is_a_checked_machine_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('pv_iommu_revision = 2\nrev2_semantics = "header"\n')
    r = cli("serve", "--config", str(bad), "--socket-dir", str(tmp_path / "s"))
    assert r.returncode != 0 and "rev2_semantics" in r.stderr and "Traceback" not in r.stderr
    rev1 = tmp_path / "rev1.toml"
    rev1.write_text('rev2_semantics = "intended"\n')
    r = cli("serve", "--config", str(rev1), "--socket-dir", str(tmp_path / "s"))
    assert r.returncode != 0 and "pv_iommu_revision 2" in r.stderr


# -- hazards ---------------------------------------------------------------------------
# One trigger per row of the table: (the domain it is met on, the call, its answer).

def _init_then(d1, call):
    assert d1.init(4, 3).ok                     # v7: context 1 taken
    return call()


TRIGGERS = {
    "init_nb_ctx_zero": (1, lambda d0, d1: d1.init(0xFFFF, 3), "-ENOSPC"),
    "init_no_arena": (1, lambda d0, d1: d1.init(2, 0), "-ENOSPC"),
    "init_arena_order_shift": (1, lambda d0, d1: d1.init(2, 64), "-ENOSPC"),
    "free_reattach_with_devices": (1, lambda d0, d1: _init_then(d1, lambda: (
        d1.reattach_device(1, 0, 1, 0),
        d1.free_context(1, free_flags=v2.IOMMU_FREE_reattach_default))[1]), "0"),
    "remote_cmd_iommu_off": (0, lambda d0, d1: d0.remote_cmd(
        2, v2.IOMMU_query_capabilities, bytes(24)), "-ENODEV"),
    "map_neither_read_nor_write": (1, lambda d0, d1: _init_then(
        d1, lambda: d1.map_pages(1, 0x10, 0x100, 1, map_flags=v2.IOMMU_MAP_cache)), "-EINVAL"),
}


def test_every_hazard_has_a_trigger():
    assert set(TRIGGERS) == set(v2.HAZARDS)


@pytest.mark.parametrize("name", sorted(v2.HAZARDS))
def test_hazard_warns_counts_records_and_fails_replay(name, tmp_path, caplog):
    domid, trigger, answer = TRIGGERS[name]
    trace = tmp_path / f"{name}.xt"
    caplog.set_level(logging.WARNING, "xenemu.pv_iommu")
    with checked_local(machine(), trace) as m:
        assert trigger(m.client(0), m.client(1)).name == answer
        assert m.ctl("info")["hazards"] == {name: 1}
        warnings = [r.getMessage() for r in caplog.records if "HAZARD" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"[PV-IOMMU] d{domid}: HAZARD: {name}: ")
    assert v2.HAZARDS[name].xen in warnings[0]

    # The trace: the hazard record right after the call that met it.
    with TraceReader(trace) as reader:
        records = [rec for _, rec in reader]
    at = [i for i, rec in enumerate(records) if isinstance(rec, HazardRecord)]
    assert len(at) == 1 and records[at[0]].name == name and records[at[0]].d == domid
    assert isinstance(records[at[0] - 1], HypercallRecord)

    # Replay matches (checked_local); with fail_on_hazard it fails, naming it.
    assert replay_file(trace).ok
    failed = replay_file(trace, fail_on_hazard=True)
    assert not failed.ok and not failed.count and len(failed.hazards) == 1
    assert f"record {at[0] + 1}: d{domid} HAZARD {name}" in failed.hazards[0]
    assert f"after record {at[0]}:" in failed.hazards[0]


def test_calls_without_hazards_record_none(tmp_path):
    with checked_local(machine(), tmp_path / "clean.xt") as m:
        d1 = m.client(1)
        assert d1.init(0xFFFFFFFF, 3).name == "-ENOSPC"         # E2BIG: defined, no hazard
        assert d1.init(2, 3).ok
        assert d1.free_context(1, free_flags=v2.IOMMU_FREE_reattach_default).ok   # no device
        assert m.ctl("info")["hazards"] == {}
    assert replay_file(tmp_path / "clean.xt", fail_on_hazard=True).ok


# -- through a daemon and the CLI --------------------------------------------------------

def test_daemon_hazard_and_replay_fail_on_hazard(tmp_path):
    d = DaemonProcess(tmp_path, "--abi-revision", "2")
    try:
        with RevisionTwoClient(d.socket(1)) as xen:
            assert xen.init(0x1FFFF, 3).name == "-ENOSPC"       # BUG_ON in Xen
            assert xen.init(8, 3).ok
            assert xen.map_pages(1, 0x10, 0x100, 1, map_flags=0).name == "-EINVAL"
            assert xen.map_pages(1, 0x10, 0x100, 1).ok
        assert d.ctl("info")["hazards"] == {"init_nb_ctx_zero": 1,
                                            "map_neither_read_nor_write": 1}
    finally:
        assert d.stop() == 0
    log = d.log()
    assert "[PV-IOMMU] d1: HAZARD: init_nb_ctx_zero: max_ctx_no 131071 + 1 truncates to 0" in log
    assert "[PV-IOMMU] d1: HAZARD: map_neither_read_nor_write: map_flags 0x0" in log

    plain = cli("replay", str(d.trace))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    r = cli("replay", "--fail-on-hazard", str(d.trace))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "record 2: d1 HAZARD init_nb_ctx_zero: max_ctx_no 131071" in r.stdout
    assert "(after record 1: d1 iommu_op init max_ctx_no=131071 arena_order=3)" in r.stdout
    assert "HAZARD map_neither_read_nor_write" in r.stdout
    assert "but 2 hazard(s) (--fail-on-hazard)" in r.stdout

    show = cli("trace", "show", "--subop", "hazard", str(d.trace))
    assert show.returncode == 0
    lines = show.stdout.splitlines()
    assert len(lines) == 2 and "d1 HAZARD init_nb_ctx_zero" in lines[0]
    assert "Xen v7 would fail in iommu_domain_pviommu_init: BUG_ON(nb_ctx == 0)" in lines[0]
    stats = cli("trace", "stats", str(d.trace))
    assert "hazards (calls Xen v7 would fail on): 2" in stats.stdout


def test_hazard_free_rev2_trace_passes_fail_on_hazard():
    r = cli("replay", "--fail-on-hazard", "tests/traces/rev2-driver.xt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all match" in r.stdout


def test_readme_hazard_table_is_the_modules():
    readme = (ROOT / "README.md").read_text()
    for h in v2.HAZARDS.values():
        assert f"| `{h.name}` | {h.xen} | {h.answer} |" in readme, h.name
