"""Snapshot restore is bounded by the file (issue 12).

A hostile file of about 1 MB, every byte spent on what costs a restore the
most: p2m runs over all of a domain's memory (each was a loop over its
pages in Python), and one-page mappings scattered over the address space,
in context 0 and in a pool context (each needs page tables of its own).
`xenemu serve --restore` must finish with it, refused or restored, within
the bounds the README states: page tables within the domain's budget, time
linear in the file.
"""

from __future__ import annotations

import msgpack
import pytest

from hostile import PEAK_RSS_BOUND, hostile_snapshot, restore_peak


@pytest.mark.parametrize("kind", ["p2m", "mappings"])
def test_a_hostile_1mb_snapshot_restores_within_bounds(tmp_path, kind):
    path = tmp_path / f"{kind}.xs"
    path.write_bytes(msgpack.packb(hostile_snapshot(kind), use_bin_type=True))
    size = path.stat().st_size
    assert 0.8e6 < size < 1.5e6
    rc, peak, last, _ = restore_peak(path, tmp_path / "s")
    if kind == "p2m":
        # Restored and served (each run was a loop over its pages: minutes).
        assert rc == 0, last
    else:
        # Refused in one line (exit 2): the mappings need more page tables
        # than the domain's budget, its PV-IOMMU context's first (context 0's
        # are set last, once the devices and their reserved ranges are placed).
        assert rc == 2, last
        assert "cannot be restored: domains[0].contexts[1].mappings[" in last, last
        assert "more page tables than the domain's budget allows" in last, last
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak} MiB for a {size}-byte snapshot"
