"""Every input through its declared schema (issue 12): the machine file, a
snapshot, each control op. Random and mutated documents get the documented
refusal (ConfigError, SnapshotError, {"ok": false}) or succeed; never
another exception. Plus the defects the issue names, through the CLI."""

from __future__ import annotations

import copy
import subprocess
import sys
from array import array

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenemu import snapshot
from xenemu.control import ARGS, Control
from xenemu.hypervisor import Hypervisor
from xenemu.machine import (ConfigError, DomainConfig, MachineConfig, load_machine,
                            machine_from_dict, machine_to_dict)
from xenemu.p2m import P2m, P2mType

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

RMRR = '[[domain]]\ndomid = 0\ndevices = ["0000:00:04.0"]\n[[rmrr]]\nsbdf = "0000:00:04.0"\n'

SMALL = MachineConfig(rmrr=((0x10, 0x100, 4),), memory_mib=64, address_width=48, domains=(
    DomainConfig(domid=0, hardware=True, memory_mib=16, contexts=2, devices=(0x10,)),
    DomainConfig(domid=1, memory_mib=4, contexts=1, devices=(0x100,))))


# -- mutations -------------------------------------------------------------------------

garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([-1, 0, 1 << 31, 1 << 40, 1 << 64,
                                                               1 << 70, -(1 << 63)])
    | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, doc):
    """`doc` with a few changes: a value replaced by garbage, a key dropped,
    a key added, an element appended."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add", "append"]))
        if action == "replace":
            parent[path[-1]] = draw(garbage)
        elif action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(garbage)
        elif action == "append" and isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(garbage))
    return doc


# -- the machine file ------------------------------------------------------------------

@SETTINGS
@given(mutated(machine_to_dict(SMALL)))
def test_machine_documents_are_accepted_or_refused_in_one_line(doc):
    try:
        config = machine_from_dict(doc, "machine.toml")
    except ConfigError as e:
        assert str(e).startswith("machine.toml: ") and "\n" not in str(e)
        return
    Hypervisor(config)      # what the schema accepts can be built


@pytest.mark.parametrize("text, message", [
    ("[[domain]]\ndomid = 0\ndevices = [5]", "domain[0].devices[0]: expected str, got int"),
    ("domain = 5", "domain: expected array, got int"),
    ("iotlb_entries = 0", "iotlb_entries: expected int >= 4"),
    ("iotlb_entries = -1", "iotlb_entries: expected int >= 4"),
    ("iotlb_entries = 2147483648", "iotlb_entries: expected int <= 1048576"),
    ("iotlb_entries = 24", "iotlb_entries: expected a power of two"),
    ('memory_mib = "1024"', "memory_mib: expected int, got str"),
    ("memory_mib = -1", "memory_mib: expected int >= 1"),
    ("memory_mib = 1099511627776", "memory_mib: expected int <= 65536"),
    ("memory_mib = 64\n[[domain]]\ndomid = 0\nmemory_mib = 64",
     "domain[0].memory_mib: the domains up to d0 and their default contexts' page tables need"),
    ('[[domain]]\ndomid = "0"', "domain[0].domid: expected int, got str"),
    ('[[domain]]\ndomid = 0\ntable_pages = "x"', "domain[0].table_pages: expected int, got str"),
    ('[[domain]]\ndomid = 0\nname = "a\\u0000b"', "domain[0].name: expected str matching"),
    ('[[domain]]\ndomid = 0\ndevices = ["00:20.0"]', "domain[0].devices[0]: bad PCI address"),
    ("address_width = 40", "address_width: invalid enum value 40"),
    ("[[domain]]\ndomid = 0\n[[domain]]\ndomid = 0", "domain[1].domid: d0 is domain[0] already"),

    # issue 15: [[rmrr]], a device's reserved memory range
    ('[[rmrr]]\nsbdf = "0000:00:09.0"\nstart_pfn = 1\nnr_pages = 1',
     "rmrr[0].sbdf: 0000:00:09.0 is not assigned to any domain"),
    (RMRR + "start_pfn = 0x100\nnr_pages = 4\n" + RMRR[RMRR.index("[[rmrr]]"):]
     + "start_pfn = 0x103\nnr_pages = 1", "rmrr[1]: overlaps rmrr[0]"),
    (RMRR + "start_pfn = 0xfffff\nnr_pages = 2",
     "rmrr[0]: pfns 0xfffff+0x2 are not within the machine's 0x100000 frames"),
    (RMRR + "start_pfn = 1\nnr_pages = 0", "rmrr[0].nr_pages: expected int >= 1"),
    (RMRR + "start_pfn = -1\nnr_pages = 1", "rmrr[0].start_pfn: expected int >= 0"),
    (RMRR + "nr_pages = 1", "rmrr[0]: object missing required field start_pfn"),
])
def test_serve_refuses_a_bad_machine_file_in_one_line(tmp_path, text, message):
    path = tmp_path / "machine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + str(path).replace(".", r"\.")):
        load_machine(path)
    result = subprocess.run([sys.executable, "-m", "xenemu.cli", "serve", "--config", str(path),
                             "--socket-dir", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr == f"xenemu: {path}: {message}" + result.stderr.split(message, 1)[1]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


# -- snapshots -------------------------------------------------------------------------

def _small_snapshot() -> dict:
    hv = Hypervisor(SMALL)
    c = Control(hv)
    assert c.handle({"op": "p2m_set", "domid": 0, "gfn": 9, "type": "mmio"})["ok"]
    assert c.handle({"op": "mem_write", "domid": 0, "gfn": 3, "data": b"hello"})["ok"]
    assert c.handle({"op": "dma", "sbdf": "0000:00:02.0", "addr": 1 << 40, "length": 1})["ok"]
    return msgpack.unpackb(msgpack.packb(snapshot.take(hv), use_bin_type=True), raw=False)


SNAPSHOT = _small_snapshot()


def test_the_small_snapshot_restores():
    assert snapshot.restore(copy.deepcopy(SNAPSHOT)).domains[0].p2m.type_of(9) is P2mType.MMIO


@SETTINGS
@given(mutated(SNAPSHOT))
def test_snapshots_are_restored_or_refused_in_one_line(doc):
    try:
        snapshot.restore(doc, where="snap")
    except snapshot.SnapshotError as e:
        assert str(e).startswith("snap: ") and "\n" not in str(e), e


# -- control requests ------------------------------------------------------------------

VALID = {
    "info": {}, "counters": {}, "check": {}, "stats": {},
    "domain_create": {"domid": 5, "memory_mib": 4, "devices": ["0000:00:09.0"]},
    "domain_destroy": {"domid": 1},
    "device_assign": {"sbdf": "0000:00:0a.0", "domid": 0},
    "device_deassign": {"sbdf": "0000:01:00.0"},
    "p2m_set": {"domid": 0, "gfn": 5, "type": "shared"}, "p2m_get": {"domid": 0, "gfn": 5},
    "mem_read": {"domid": 0, "gfn": 1, "offset": 8, "length": 16},
    "mem_write": {"domid": 0, "gfn": 1, "offset": 8, "data": b"x"},
    "dma": {"sbdf": "0000:00:02.0", "addr": 4096, "write": False, "length": 8},
    "reserved_regions": {"sbdf": "0000:00:04.0"},
    "reserved_read": {"pfn": 0xE8, "offset": 0, "length": 16},
    "faults": {"clear": True}, "contexts": {"domid": 0},
    "dump": {"domid": 0, "ctx_no": 0, "dfn": 0, "count": 16},
    "fail_nth": {"nth": 0, "sites": ["table"]}, "snapshot": {"path": "/nonexistent/x.xs"},
}
VALID["read_dirty"] = {"domid": 0, "ctx_no": 0, "dfn": 0, "count": 16, "clear": False}


def test_every_op_has_a_valid_example():
    assert sorted(VALID) == sorted(ARGS)


@pytest.fixture(scope="module")
def control():
    return Control(Hypervisor(SMALL))


@SETTINGS
@given(st.sampled_from(sorted(VALID)).flatmap(
    lambda op: mutated({"op": op, **VALID[op]})) | garbage)
def test_control_requests_get_a_reply_never_an_internal_error(control, req):
    reply = control.handle(req)
    assert reply["ok"] in (True, False)
    if not reply["ok"]:
        assert "internal error" not in reply["error"] and "\n" not in reply["error"], reply


# -- p2m runs against a page-by-page model ------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.tuples(st.integers(0, n - 1), st.integers(1, n), st.sampled_from(
        [t for t in P2mType if t is not P2mType.PAGING_IN])), max_size=30))))
def test_p2m_runs_match_a_page_by_page_model(case):
    n, sets = case
    p2m = P2m(array("Q", range(n)), lambda: 0.0, 1.0)
    model = [P2mType.RAM] * n
    for gfn, count, t in sets:
        count = min(count, n - gfn)
        p2m.set_run(gfn, count, t)
        model[gfn:gfn + count] = [t] * count
        assert [p2m.type_of(g) for g in range(n)] == model
        runs = p2m.runs()
        assert all(a + c <= b and not (a + c == b and s is u)
                   for (a, c, s), (b, _, u) in zip(runs, runs[1:]))
    k, err, _ = p2m.first_non_ram(0, n)
    assert k == next((g for g, t in enumerate(model) if t is not P2mType.RAM), n)


def test_ctl_passes_lists_from_the_command_line():
    from xenemu.ctl import parse_value
    assert parse_value("[0000:00:09.0,00:0a.0]") == ["0000:00:09.0", "00:0a.0"]
    assert parse_value("[table,ref]") == ["table", "ref"] and parse_value("[]") == []
    assert parse_value("0x10") == 16 and parse_value("text:a") == b"a"
