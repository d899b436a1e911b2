"""Replaying many traces at once: `xenemu replay -j N` and `--shard K/N`.

Traces are independent of each other, so a corpus splits two ways without
any coordination: over the cores of one machine (-j N: worker processes,
each replaying whole traces in process with `replay_file`, as a plain
`xenemu replay` does) and over CI runners (--shard K/N: each runner keeps
the traces whose base name hashes to its share).

Workers are started with the "spawn" method (a fresh interpreter: nothing
of the parent's state, threads or locks is inherited) and live for the
whole run, so the cost of starting one is paid once per worker, not per
trace. A worker that dies (the OOM killer, a kill -9) costs only the trace
it held: that trace is reported as lost and a new worker takes the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import re
import signal
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from pathlib import Path

from .replay import ReplayResult, replay_file

MAX_JOBS = 256      # worker processes at most: each holds one trace's machine at a time


# -- --shard K/N --------------------------------------------------------------------

def shard_of(path: Path, shards: int) -> int:
    """The shard (1..shards) a trace falls in: the SHA-256 of its base name
    (the bytes of the name as the file system has them), its first 8 bytes
    read as a big-endian integer, modulo `shards`, plus one. It depends on
    nothing else (not the directory, the order of the files, which others
    are given, the machine or the Python version), so N runners given the
    same corpus split it exactly, each without asking the others."""
    digest = hashlib.sha256(os.fsencode(path.name)).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def in_shard(paths: list[Path], shard: int, shards: int) -> list[Path]:
    return [p for p in paths if shard_of(p, shards) == shard]


def parse_shard(text: str) -> tuple[int, int]:
    """argparse's type for --shard: "K/N" with 1 <= K <= N."""
    m = re.fullmatch(r"(\d{1,9})/(\d{1,9})", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return int(m[1]), int(m[2])


def parse_jobs(text: str) -> int:
    """argparse's type for -j: a number of processes, or "auto" for one per
    core this process may run on."""
    if text == "auto":
        return min(len(os.sched_getaffinity(0)), MAX_JOBS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_JOBS} or auto, got {text!r}")
    return int(text)


# -- stopping cleanly on SIGINT and SIGTERM ------------------------------------------------

class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible():
    """SIGINT (Ctrl-C) and SIGTERM (a CI job's timeout) raise Interrupted
    instead of a KeyboardInterrupt's traceback or a silent death, so the
    replay can stop its workers and say how far it got."""
    def stop(signum, frame):
        raise Interrupted(signum)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- -j N -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayOptions:
    keep_going: bool = False
    check_iotlb: bool = False
    fail_on_hazard: bool = False


class WorkerError(Exception):
    """No worker process could be started at all."""


class WorkerDied(ReplayResult):
    """The result of a trace whose worker process died while replaying it:
    `error` says how, and how far the worker had said it got."""


class _ParentGone(Exception):
    pass


class _PipeProgress:
    """`replay_file`'s progress hook in a worker: at most 10 reports a
    second to the parent. A parent that has gone (killed with -9) makes the
    next report fail, and the worker stop, instead of replaying on."""

    def __init__(self, conn, index: int):
        self._conn, self._index, self._next = conn, index, 0.0

    def update(self, fraction: float, records: int, force: bool = False) -> None:
        now = time.perf_counter()
        if now >= self._next or force:
            self._next = now + 0.1
            try:
                self._conn.send(("progress", self._index, fraction, records))
            except OSError:
                raise _ParentGone from None

    def done(self) -> None:
        pass


def _work(conn, options: ReplayOptions) -> None:
    """A worker: replays the traces it is sent, one at a time, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent alone decides on Ctrl-C
    try:
        while (task := conn.recv()) is not None:
            index, path = task
            result = replay_file(path, keep_going=options.keep_going,
                                 check_iotlb=options.check_iotlb,
                                 fail_on_hazard=options.fail_on_hazard,
                                 progress=_PipeProgress(conn, index))
            conn.send(("done", index, result))
    except (_ParentGone, EOFError, BrokenPipeError, ConnectionResetError):
        return      # the parent has gone: nobody is left to tell


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: object
    index: int | None = None        # the trace it is replaying
    started: float = 0.0
    records: int = 0                # how far it last said it got


class ParallelReplay:
    """Replays `paths` in up to `jobs` worker processes. Iterating yields
    each trace's ReplayResult in the order of `paths`, whatever order they
    finish in, so the output of -j N reads as -j 1's. The largest files are
    handed out first, so that a long trace does not start last and keep
    the run waiting on it alone. Use as a context manager: leaving it stops
    the workers, whatever stopped the iteration.

    `progress` (progress.ReplayProgress or None) is told when a trace
    starts, how far it has got, and when it ends."""

    def __init__(self, paths: list[Path], options: ReplayOptions, jobs: int, progress=None):
        self._paths = paths
        self._options = options
        self._jobs = min(jobs, len(paths))
        self._progress = progress
        self._pending = deque(sorted(range(len(paths)), key=lambda i: -_size(paths[i])))
        self._workers: list[_Worker] = []
        self._context = multiprocessing.get_context("spawn")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for w in self._workers:         # each one ours, by its process
            if w.process.is_alive():
                w.process.terminate()
        for w in self._workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers.clear()

    def __iter__(self):
        finished: dict[int, ReplayResult] = {}
        next_out = 0
        while next_out < len(self._paths):
            while self._pending and len(self._workers) < self._jobs:
                if not self._start_worker():
                    break
            ready = wait([w.conn for w in self._workers] +
                         [w.process.sentinel for w in self._workers])
            for w in list(self._workers):
                if w.conn in ready or w.process.sentinel in ready:
                    self._collect(w, finished)
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1

    def _start_worker(self) -> bool:
        """False when the system refuses another process but some are running:
        they take the rest between them."""
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_work, args=(child, self._options), daemon=True,
                                        name="xenemu replay worker")
        # The worker is born ignoring SIGINT, so that a Ctrl-C while it starts
        # (re-importing the main module takes a while) cannot print its
        # KeyboardInterrupt traceback: an ignored signal stays ignored across
        # exec, where a blocked one does not (spawn's child starts with an
        # empty mask). Meanwhile the parent's SIGINT is blocked, so that one
        # arriving is held for its handler, not ignored. multiprocessing's
        # resource tracker is started first: starting it unblocks SIGINT,
        # which inside the window would let a Ctrl-C be ignored and lost.
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        except OSError as e:        # EAGAIN: out of processes; ENOMEM
            parent.close()
            if not self._workers:
                raise WorkerError(f"cannot start a replay worker process: {e}") from None
            return False
        finally:
            signal.signal(signal.SIGINT, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        self._assign(worker)     # every live worker holds a trace: a death always costs one
        return True

    def _assign(self, w: _Worker) -> None:
        if not self._pending:
            w.index = None
            try:
                w.conn.send(None)
            except OSError:
                pass        # gone already: its sentinel says so
            return
        index = self._pending.popleft()
        try:
            w.conn.send((index, self._paths[index]))
        except OSError:     # it died since its last result: the trace waits for the next one
            self._pending.appendleft(index)
            w.index = None
            return
        w.index, w.started, w.records = index, time.perf_counter(), 0
        if self._progress:
            self._progress.begin(index, self._paths[index].name)

    def _collect(self, w: _Worker, finished: dict[int, ReplayResult]) -> None:
        """Take what a worker has sent; if it has died, what it held is lost."""
        try:
            while w.conn.poll():
                message = w.conn.recv()
                if message[0] == "progress":
                    _, index, fraction, records = message
                    w.records = records
                    if self._progress:
                        self._progress.update(index, fraction, records)
                else:
                    _, index, result = message
                    finished[index] = result
                    if self._progress:
                        self._progress.end(index)
                    self._assign(w)
            if w.process.is_alive():
                return
        except (EOFError, OSError):
            pass
        w.process.join(10)
        self._workers.remove(w)
        w.conn.close()
        if w.index is not None:
            path = self._paths[w.index]
            lost = WorkerDied(path, seconds=time.perf_counter() - w.started,
                              error=f"the worker process replaying it died "
                                    f"({_how(w.process.exitcode)}) at about record "
                                    f"{w.records:,}")
            finished[w.index] = lost
            if self._progress:
                self._progress.end(w.index)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0        # replay_file says what is wrong with it


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
