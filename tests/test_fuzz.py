"""The fuzz targets (tests/fuzz/targets.py) in `make test`: every input of the
committed corpus, then a short hypothesis search per target. `make fuzz`
runs them coverage-guided under atheris for a longer budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenemu import abi, wire

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import targets  # noqa: E402
import targets_nested  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
INPUTS = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_the_corpus_covers_every_target():
    assert {p.parent.name for p in INPUTS} == set(targets.TARGETS)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name[:12]}")
def test_corpus_input(path):
    targets.TARGETS[path.parent.name](path.read_bytes())


# Frames worth mutating: valid calls and replies, so the search starts deep.
valid_frames = st.builds(
    lambda req, op, n, data: wire.encode_call(req, op, (0x1000,) * n,
                                              (wire.Region(0x1000, data),)),
    st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 5),
    st.binary(max_size=64))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600),
                 st.tuples(valid_frames, st.integers(0, 300), st.integers(0, 255)).map(
                     lambda t: bytes([t[2]]) + bytes(b ^ (i == t[1]) for i, b in enumerate(t[0])))))
def test_frames_target(data):
    targets.frames(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=targets.STEP, max_size=targets.STEP * 40))
def test_hypercalls_target(data):
    targets.hypercalls(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=targets_nested.STEP, max_size=targets_nested.STEP * 40))
def test_nested_target(data):
    targets.nested(data)


def test_hypercalls_target_notices_a_broken_invariant(monkeypatch):
    """The target is not a test that cannot fail: a hypervisor that forgets
    to drop a page reference on unmap is caught."""
    from xenemu.hw import native
    real = native.Memory.put_refs
    monkeypatch.setattr(native.Memory, "put_refs", lambda self, mfns: real(self, mfns[1:]))
    program = bytearray()
    ctx_alloc = abi.encode_op(abi.IOMMUOP_alloc_context)
    mapping = abi.encode_op(abi.IOMMUOP_map_pages, 1, 3, "map_pages", gfn=5, dfn=5, nr_pages=2)
    unmap = abi.encode_op(abi.IOMMUOP_unmap_pages, 1, 0, "unmap_pages", dfn=5, nr_pages=2)
    for raw in (ctx_alloc, mapping, unmap):
        program += bytes([0x40, 0]) + raw      # selector: iommu_op, numbers as given
    with pytest.raises(AssertionError, match="page references"):
        targets.hypercalls(bytes(program))
