"""Helpers of the benchmark sections: table rows and medians."""
from __future__ import annotations

import statistics


def row(name: str, value, unit: str, ref=None) -> dict:
    """A table row; ratio = value / ref (the baseline measured in the same run)."""
    return {"name": name, "value": value, "unit": unit, "ref": ref,
            "ratio": value / ref if ref else None}


def medians(runs: int, measures: dict) -> dict:
    """Each measure (name -> function returning a number, or a tuple of
    numbers) run `runs` times, interleaved so that a slow spell of the
    machine hits them all alike; the median of each (of each component)."""
    got = {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            got[name].append(measure())

    def median(values):
        if isinstance(values[0], tuple):
            return tuple(statistics.median(v) for v in zip(*values))
        return statistics.median(values)
    return {name: median(values) for name, values in got.items()}
