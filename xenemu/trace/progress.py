"""`xenemu replay`'s progress on a terminal, drawn with rich: one bar per
trace being replayed (its name, how far, records and records/s) and, when
there are several traces, one for the whole run.

It is redrawn at most 10 times a second, by the thread that replays (or,
with -j, that collects the workers' reports), when told of progress: no
refresh thread of rich's competes with the replay for the interpreter.
Only `xenemu replay` on a terminal imports this module (and rich).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn


class ReplayProgress:
    """Keys name the traces being replayed (their index in the run)."""

    REDRAW = 0.1     # seconds between redraws at most

    def __init__(self, stream, traces: int):
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                              TextColumn("{task.fields[detail]}"),
                              console=Console(file=stream), auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
        self._traces = traces
        self._done = 0
        self._whole = self._bars.add_task("all traces", total=traces, detail=f"0/{traces}") \
            if traces > 1 else None
        self._running: dict[int, tuple[int, float]] = {}   # key: (rich task, its start)
        self._latest: dict[int, tuple[float, int]] = {}    # key: (fraction, records) not drawn yet
        self._next = 0.0
        self._bars.start()

    def begin(self, key: int, label: str) -> None:
        self._running[key] = (self._bars.add_task(label, total=1.0, detail=""),
                              time.perf_counter())
        self._redraw(force=True)

    def update(self, key: int, fraction: float, records: int, force: bool = False) -> None:
        self._latest[key] = (fraction, records)
        self._redraw(force)

    def end(self, key: int) -> None:
        if key not in self._running:
            return      # ended already
        task, _ = self._running.pop(key)
        self._latest.pop(key, None)
        self._bars.remove_task(task)
        self._done += 1
        if self._whole is not None:
            self._bars.update(self._whole, completed=self._done,
                              detail=f"{self._done}/{self._traces}")
        self._redraw(force=True)

    def bar(self, key: int, label: str) -> "_Bar":
        """One trace's bar, as `replay_file`'s `progress` hook (in process)."""
        self.begin(key, label)
        return _Bar(self, key)

    @contextmanager
    def paused(self):
        """Takes the bars off the terminal while something is printed."""
        self._bars.stop()
        try:
            yield
        finally:
            self._bars.start()

    def close(self) -> None:
        self._bars.stop()

    def _redraw(self, force: bool) -> None:
        now = time.perf_counter()
        if now < self._next and not force:
            return
        self._next = now + self.REDRAW
        for key, (fraction, records) in self._latest.items():
            task, start = self._running[key]
            rate = records / max(now - start, 1e-9)
            self._bars.update(task, completed=fraction,
                              detail=f"{records:,} records {rate:,.0f}/s")
        self._latest.clear()
        self._bars.refresh()


class _Bar:
    def __init__(self, progress: ReplayProgress, key: int):
        self._progress, self._key = progress, key

    def update(self, fraction: float, records: int, force: bool = False) -> None:
        self._progress.update(self._key, fraction, records, force)

    def done(self) -> None:
        self._progress.end(self._key)
