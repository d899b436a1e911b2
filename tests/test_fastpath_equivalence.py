"""The C fast path answers exactly as the Python handlers do (issue 17's proof of equality).

Random programs run on two machines built from one MachineConfig: one Engine
with the fast path (fast_path=True), one answering through the Python
handlers alone (fast_path=False), for both ABI revisions. A program
interleaves several connections (two of the hardware domain, one of a guest;
a third domain in revision 2), each fed the bytes of random calls in random
chunks (several whole frames, frames cut anywhere: the fast path works per
receive buffer), with control requests between them that change what the
fast path must hand back to Python: p2m types (paged out, shared, MMIO,
invalid, foreign, back to RAM), devices moved, contexts allocated and freed
(continued frees with -ERESTART while other connections keep mapping,
dying contexts), fail-nth armed, small table budgets (-ENOMEM), a domain
destroyed under a continuing call, DMA through the IOTLB, time moving
(page-ins completing). Calls also fail every validation: bad contexts,
nr_pages over the limit, unmapped dfns, dfns above max_iova_addr, structs
outside the regions, unknown sub-ops and hypercalls.

After every step both machines must agree on: every reply byte and the
connections' states; the trace records the step produced; the machine
(xenemu.snapshot's image, its time and meta left out); the `stats` (its
clock fields left out) and `info` replies; and the invariant check, which
must find nothing. A difference fails with the step, the program so far
and the first differing field (`Divergence`).

The last tests plant a bug in either path and assert the check catches it:
in a Python handler of the Python-only engine, and (a slow test, active
once cext/fastpath.c exists) in a mutated copy of the C fast path built in
a temporary directory.

`python tests/test_fastpath_equivalence.py SEED...` runs programs outside
pytest (exit 1 on a divergence): the C planted-bug test runs it that way
against the mutated copy.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import DaemonProcess
from xenemu import iommu_contexts, snapshot
from xenemu.engine import Engine
from xenemu.hypercalls import iommu_op_v1 as v1
from xenemu.hypercalls import iommu_op_v2 as v2
from xenemu.hypercalls.common import HYPERVISOR_iommu_op, HYPERVISOR_memory_op
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig
from xenemu.pci import format_sbdf, parse_sbdf
from xenemu.trace.pack import pack_in_python
from xenemu.trace.records import PackedHypercalls
from xenemu.trace.replay import Replayer
from xenemu.wire import FrameDecoder, Region, encode_call

ROOT = Path(__file__).resolve().parents[1]

# The budget: programs per revision and steps per program (~8 s a revision,
# both engines answering through Python). A seed reproduces a program exactly.
SEEDS = range(12)
STEPS = 250
# Continued frees every 24 pages torn down, not 64k: a context of a few
# dozen mappings takes several rounds, other connections served between.
TEARDOWN_SLICE = 24
SCAN = 512
PER_ROUND = 8               # revision 2: map/unmap preempted every 8 pages

GADDR = 0x1000              # where the struct lies in a call's guest memory
INNER = 0x3000              # revision 2's remote_cmd: the inner struct
DEVICES = [parse_sbdf(s) for s in ("0000:00:02.0", "0000:00:03.0", "0000:00:04.0",
                                   "0000:01:00.0", "0000:02:00.0")]
RMRR_DEVICE = DEVICES[2]    # identity-mapped pages wherever it is attached
RMRR_PFN = 0xE8
GFNS = 48                   # the gfns programs map and change types of
DFNS = 600                  # the dfns programs map at (two leaf tables and more)


def machine(revision: int) -> MachineConfig:
    """Small domains (snapshots after every step stay cheap), a small
    IOTLB (evictions), tight table budgets (-ENOMEM), an RMRR (identity
    ranges), every IOTLB hit checked against the tables."""
    rev2 = revision == 2
    d0 = DomainConfig(domid=0, name="dom0", hardware=True, memory_mib=2,
                      contexts=0 if rev2 else 5, devices=tuple(DEVICES[:3]),
                      table_pages=1 << 16 if rev2 else 28,
                      pv_iommu_init=(5, 5) if rev2 else None)
    d1 = DomainConfig(domid=1, name="guest", memory_mib=1, contexts=0 if rev2 else 2,
                      devices=(DEVICES[3],))
    domains = (d0, d1)
    if rev2:
        domains += (DomainConfig(domid=2, name="inited", memory_mib=1,
                                 pv_iommu_init=(2, 3)),)
    return MachineConfig(pv_iommu_revision=revision, address_width=48 if rev2 else 39,
                         memory_mib=64, iotlb_entries=16, check_iotlb=True,
                         page_in_delay_ms=10, rev2_pages_per_round=PER_ROUND,
                         domains=domains, rmrr=((RMRR_DEVICE, RMRR_PFN, 2),))


class Divergence(AssertionError):
    """The two engines answered a step differently."""


SIDES = " (fast path's != Python handlers')"


# -- the first difference between two values, as a path -------------------------------

def first_difference(a, b, path: str = "") -> str | None:
    """'domains[0].contexts[1].mappings: [...] != [...]', or None if equal."""
    if type(a) is not type(b):
        return f"{path or 'value'}: {_short(a)} != {_short(b)}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=repr):
            if key not in a or key not in b:
                return f"{path}.{key}: {'absent' if key not in a else 'present'} with the fast " \
                       f"path, {'absent' if key not in b else 'present'} without"
            diff = first_difference(a[key], b[key], f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        if len(a) != len(b):
            return f"{path}: {len(a)} items with the fast path, {len(b)} without"
        return None
    return None if a == b else f"{path or 'value'}: {_short(a)} != {_short(b)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def reply_difference(a: bytes, b: bytes) -> str | None:
    """The first differing reply frame, decoded; None if the bytes are equal."""
    if a == b:
        return None
    frames = []
    for data in (a, b):
        dec = FrameDecoder.for_client()
        dec.feed(data)
        try:
            frames.append([dataclasses.asdict(f) if dataclasses.is_dataclass(f) else repr(f)
                           for f in dec])
        except Exception as e:      # not frames at all: the bytes say it
            frames.append([f"undecodable ({e})"])
    at = next(i for i, (x, y) in enumerate(zip(a + b"\0", b + b"\1")) if x != y)
    for i, (x, y) in enumerate(zip(*frames)):
        diff = first_difference(x, y, f"replies[{i}]")
        if diff:
            req = f"the reply to #{x['req_id']}: " if isinstance(x, dict) else ""
            return f"{req}{diff} (first differing byte at offset {at})"
    return f"{first_difference(*frames, 'replies')} (first differing byte at offset {at})"


# -- what both machines must agree on ----------------------------------------------------

def machine_state(hv: Hypervisor) -> dict:
    """The machine as xenemu.snapshot sees it, without its time and meta.
    A machine whose contexts map other domains' frames (foreign) cannot be
    saved: then the same parts, the mappings as runs of the owners' gfns
    (a dying context's tables cannot be read: none, as snapshot.take)."""
    try:
        state = snapshot.take(hv)
    except snapshot.SnapshotError as e:
        state = {"refused": str(e), "lent": dict(hv.contexts.lent),
                 "domains": [{"domid": d.domid, "p2m": d.p2m.state(),
                              "foreign": dict(d.p2m.foreign),
                              "contexts": [{"ctx_no": c.ctx_no, "dying": c.dying,
                                            "devices": sorted(c.devices),
                                            "runs": [] if c.dying else
                                            hv.contexts.mapping_runs(c)}
                                           for c in d.contexts if c is not None]}
                             for d in hv.domains.values()]}
    state.pop("time", None)
    state.pop("meta", None)
    return state


def control_state(engine: Engine) -> dict:
    """`info` and `stats` as the control socket replies, the clock left out."""
    stats, _ = engine.control({"op": "stats"})
    stats.pop("time")
    stats.pop("uptime")
    info, _ = engine.control({"op": "info"})
    return {"info": info, "stats": stats}


def trace_bytes(engine: Engine) -> bytes:
    """The trace records the engine produced since the last call, packed
    as the trace writer writes them (and taken out of the engine); records
    the fast path packed in C as they are."""
    events = list(engine.events)
    engine.events.clear()
    return b"".join(e.data if isinstance(e, PackedHypercalls) else pack_in_python([e])
                    for e in events)


# -- the two machines, driven alike ------------------------------------------------------

class Twins:
    """Two engines on one configuration, with one clock the program moves
    (page-ins complete when it says, whatever the engines tick)."""

    def __init__(self, config: MachineConfig, python_hook=None):
        self.now = 0.0
        self.engines = (
            Engine(Hypervisor(config, clock=lambda: self.now), record=True, fast_path=True),
            Engine(Hypervisor(config, clock=lambda: self.now), record=True, fast_path=False))
        self.fast, self.python = self.engines
        if python_hook is not None:
            python_hook(self.python)
        self.conns: dict[str, tuple] = {}

    def open(self, name: str, domid: int) -> None:
        self.conns[name] = tuple(e.connection(domid, name) for e in self.engines)

    def both(self, what: str, fn):
        """Run fn(engine, i) on both; raise Divergence if the outcomes differ."""
        out = []
        for i, engine in enumerate(self.engines):
            try:
                out.append(("ok", fn(engine, i)))
            except Exception as e:      # an exception is an outcome to compare too
                out.append(("raised", f"{type(e).__name__}: {e}"))
        if out[0] != out[1]:
            (kind0, fast), (kind1, python) = out
            if kind0 == kind1 == "ok" and isinstance(fast, tuple) and isinstance(fast[0], bytes):
                fast, python = fast[0], python[0]       # replies first, decoded
            if isinstance(fast, bytes) and isinstance(python, bytes) and fast != python:
                raise Divergence(f"{what}{SIDES}: {reply_difference(fast, python)}")
            raise Divergence(f"{what}{SIDES}: {first_difference(out[0], out[1])}")
        if out[0][0] == "raised":
            raise Divergence(f"{what} raised on both machines: {out[0][1]}")
        return out[0][1]

    def deliver(self, name: str, chunk: bytes) -> tuple[bytes, tuple]:
        """The replies answer() returns after `chunk` (none: a call
        continuing is resumed), and the connection's state."""
        def run(engine, i):
            conn = self.conns[name][i]
            if chunk:
                conn.receive_data(chunk)
            replies = conn.answer()
            return replies, (conn.continuing, conn.closing, conn.unanswered, conn.gone)
        return self.both(f"{name}'s replies", run)

    def control(self, req: dict) -> dict:
        def run(engine, i):
            reply, effects = engine.control(dict(req))
            return reply, [type(e).__name__ for e in effects]
        return self.both(f"control {req}", run)[0]

    def compare_state(self) -> None:
        self.both("trace records", lambda e, i: trace_bytes(e))
        for what, fn in (("machine state", lambda e: machine_state(e.hv)),
                         ("control replies", control_state)):
            fast, python = fn(self.fast), fn(self.python)
            diff = first_difference(fast, python)
            if diff:
                raise Divergence(f"{what}{SIDES}: {diff}")
        for engine in self.engines:
            problems = engine.hv.check_invariants()
            if problems:
                side = "fast path" if engine is self.fast else "Python handlers"
                raise Divergence(f"invariant check ({side}): {problems[:3]}")


# -- random calls ------------------------------------------------------------------------

class Calls:
    """Random frames of one revision, biased to what the fast path takes
    (map, unmap, lookup on live contexts) with every validation failing too."""

    def __init__(self, rng: random.Random, revision: int, max_dfn: int):
        self.rng, self.revision, self.max_dfn = rng, revision, max_dfn
        self.req_id = 0

    def ctx(self) -> int:
        r = self.rng.random()
        return self.rng.randrange(1, 4) if r < 0.8 else self.rng.choice((0, 5, 6, 0xFFFF))

    def gfn(self, memory_pages: int) -> int:
        r = self.rng.random()
        if r < 0.85:
            return self.rng.randrange(GFNS)
        if r < 0.95:
            return memory_pages - self.rng.randrange(1, 4)        # runs past the end
        return self.rng.choice((memory_pages, 1 << 40))

    def dfn(self) -> int:
        r = self.rng.random()
        if r < 0.65:
            return self.rng.randrange(DFNS)
        if r < 0.85:        # around the RMRR, identity-mapped where its device is attached
            return self.rng.randrange(RMRR_PFN - 2, RMRR_PFN + 3)
        if r < 0.95:
            return self.max_dfn - self.rng.randrange(0, 4)         # at or past the top
        return self.rng.choice((self.max_dfn + 1, 1 << 52, (1 << 64) - 1))

    def nr_pages(self, limit: int) -> int:
        r = self.rng.random()
        if r < 0.8:
            return self.rng.randrange(1, 12)
        if r < 0.9:
            return self.rng.choice((0, 40, 64))
        return self.rng.choice((limit, limit + 1, 1 << 31))

    def frame(self, memory_pages: int) -> tuple[str, bytes]:
        """(what it is, its CALL frame)."""
        self.req_id += 1
        if self.rng.random() < 0.02:
            op = self.rng.choice((HYPERVISOR_memory_op + 100, 0))
            return f"#{self.req_id} hypercall {op}", encode_call(self.req_id, op, (GADDR,))
        text, raw, args, inner = (self._v1 if self.revision == 1 else self._v2)(memory_pages)
        regions = [Region(GADDR, raw)]
        if inner is not None:
            regions.append(Region(INNER, inner))
        r = self.rng.random()
        if r < 0.03:        # the struct outside the regions: -EFAULT
            regions[0] = Region(GADDR + 8, raw)
            text += " [struct outside the regions]"
        elif r < 0.05:
            regions[0] = Region(GADDR, raw[:len(raw) // 2])
            text += " [struct cut short]"
        elif r < 0.08:      # more bytes than the struct: echoed back as they are
            regions[0] = Region(GADDR, raw + bytes(self.rng.randrange(256) for _ in range(8)))
            text += " [region longer than the struct]"
        return f"#{self.req_id} {text}", encode_call(self.req_id, HYPERVISOR_iommu_op, args,
                                                     tuple(regions))

    def _v1(self, memory_pages: int):
        rng = self.rng
        rw = rng.choice((3, 3, 3, 1, 2, 0, 7))
        kind = rng.choices(("map", "unmap", "lookup", "noop", "caps", "alloc", "free",
                            "reattach", "unknown"), (30, 20, 14, 4, 4, 7, 5, 4, 2))[0]
        ctx = self.ctx()
        if kind == "map":
            fields = dict(gfn=self.gfn(memory_pages), dfn=self.dfn(),
                          nr_pages=self.nr_pages(v1.PVIOMMU_MAX_PAGES))
            raw = v1.encode_op(v1.IOMMUOP_map_pages, ctx, rw, "map_pages", **fields)
        elif kind == "unmap":
            fields = dict(dfn=self.dfn(), nr_pages=self.nr_pages(v1.PVIOMMU_MAX_PAGES))
            raw = v1.encode_op(v1.IOMMUOP_unmap_pages, ctx, 0, "unmap_pages", **fields)
        elif kind == "lookup":
            fields = dict(dfn=self.dfn())
            raw = v1.encode_op(v1.IOMMUOP_lookup_page, ctx, 0, "lookup_page", **fields)
        elif kind == "reattach":
            sbdf = rng.choice(DEVICES + [RMRR_DEVICE] * 2)
            fields = dict(dev=dict(seg=sbdf >> 16, bus=(sbdf >> 8) & 0xFF, devfn=sbdf & 0xFF))
            ctx = rng.choice((0, 1, 2, 3))
            raw = v1.encode_op(v1.IOMMUOP_reattach_device, ctx, 0, "reattach_device", **fields)
            fields = {"dev": format_sbdf(sbdf)}
        else:
            number = {"noop": v1.IOMMUOP_noop, "caps": v1.IOMMUOP_query_capabilities,
                      "alloc": v1.IOMMUOP_alloc_context, "free": v1.IOMMUOP_free_context,
                      "unknown": rng.choice((8, 200, 0xFFFF))}[kind]
            flags = rng.choice((0, 0, 1)) if kind == "free" else 0
            raw, fields = v1.encode_op(number, ctx, flags), {"flags": flags}
        # Now and then a payload whose other bytes are not zero (copied back as they are).
        if rng.random() < 0.05:
            raw = raw[:8] + bytes(rng.randrange(256) for _ in range(24))
            fields["payload"] = "random"
        return _text(kind, ctx, rw if kind == "map" else None, fields), raw, (GADDR,), None

    def _v2(self, memory_pages: int):
        rng = self.rng
        kind = rng.choices(("map", "unmap", "noop", "caps", "init", "alloc", "free",
                            "reattach", "remote", "unknown"), (30, 22, 4, 4, 3, 7, 6, 4, 3, 2))[0]
        row = v2.SUBOPS_BY_NUMBER
        inner = None
        if kind in ("map", "unmap", "remote"):
            which = rng.choice(("map", "unmap")) if kind == "remote" else kind
            if which == "map":
                fields = dict(ctx_no=self.ctx(), gfn=self.gfn(memory_pages), dfn=self.dfn(),
                              nr_pages=self.nr_pages(64),
                              map_flags=rng.choice((3, 3, 3, 1, 2, 0, 7)),
                              mapped=rng.choice((0, 0, 0, 5)))
                raw = v2.encode(row[v2.IOMMU_map_pages], **fields)
                number = v2.IOMMU_map_pages
            else:
                fields = dict(ctx_no=self.ctx(), dfn=self.dfn(), nr_pages=self.nr_pages(64),
                              unmapped=rng.choice((0, 0, 0, 5)))
                raw = v2.encode(row[v2.IOMMU_unmap_pages], **fields)
                number = v2.IOMMU_unmap_pages
            if kind == "remote":
                inner, target = raw, rng.choice((1, 2, 7))
                raw = v2.encode(row[v2.IOMMU_remote_cmd], domid=target, subop=number, arg=INNER)
                fields = {"domid": target, which: fields}
                number = v2.IOMMU_remote_cmd
        elif kind == "init":
            fields = dict(max_ctx_no=rng.choice((0, 2, 4)), arena_order=rng.choice((0, 3, 4)))
            raw, number = v2.encode(row[v2.IOMMU_init], **fields), v2.IOMMU_init
        elif kind == "alloc":
            fields = {}
            raw, number = v2.encode(row[v2.IOMMU_alloc_context]), v2.IOMMU_alloc_context
        elif kind == "free":
            fields = dict(ctx_no=self.ctx(), free_flags=rng.choice((0, 0, 1)))
            raw, number = v2.encode(row[v2.IOMMU_free_context], **fields), v2.IOMMU_free_context
        elif kind == "reattach":
            sbdf = rng.choice(DEVICES + [RMRR_DEVICE] * 2)
            fields = dict(ctx_no=rng.choice((0, 1, 2, 3)), seg=sbdf >> 16,
                          bus=(sbdf >> 8) & 0xFF, devfn=sbdf & 0xFF)
            raw = v2.encode(row[v2.IOMMU_reattach_device], **fields)
            number = v2.IOMMU_reattach_device
            fields = {"ctx_no": fields["ctx_no"], "dev": format_sbdf(sbdf)}
        else:
            number = {"noop": v2.IOMMU_noop, "caps": v2.IOMMU_query_capabilities,
                      "unknown": rng.choice((9, 12, 99, 0xFFFF))}[kind]
            fields = {}
            raw = v2.encode(row[number]) if number in row else b""
            raw = raw or bytes(8)
        return _text(kind, None, None, fields), raw, (number, GADDR), inner


def _text(kind: str, ctx, flags, fields: dict) -> str:
    parts = [kind] + ([f"ctx={ctx}"] if ctx is not None else []) + \
        ([f"flags={flags}"] if flags is not None else [])
    parts += [f"{k}={v:#x}" if isinstance(v, int) and k in ("gfn", "dfn") else f"{k}={v}"
              for k, v in fields.items()]
    return " ".join(parts)


# -- a program ---------------------------------------------------------------------------

@contextmanager
def small_slices():
    """Continued frees every TEARDOWN_SLICE pages; the snapshot's scan of a
    context's mappings in windows of SCAN entries (a few mappings, not a
    window of the whole default one, after every step)."""
    saved = iommu_contexts.TEARDOWN_SLICE, iommu_contexts.SCAN
    iommu_contexts.TEARDOWN_SLICE, iommu_contexts.SCAN = TEARDOWN_SLICE, SCAN
    try:
        yield
    finally:
        iommu_contexts.TEARDOWN_SLICE, iommu_contexts.SCAN = saved


class Program:
    """One random program (seed, revision) run step by step on Twins;
    `log` is the program so far, one line a step."""

    def __init__(self, revision: int, seed: int, python_hook=None):
        self.revision, self.seed = revision, seed
        self.rng = random.Random(seed * 2 + revision)
        self.config = machine(revision)
        self.twins = Twins(self.config, python_hook)
        hv = self.twins.fast.hv
        self.calls = Calls(self.rng, revision, hv.contexts.max_iova_addr >> 12)
        self.domids = [d.domid for d in self.config.domains]
        self.names = {"d0a": 0, "d0b": 0, "d1a": 1}
        if revision == 2:
            self.names["d2a"] = 2
        self.pending: dict[str, bytearray] = {}
        self.queued: dict[str, list[tuple[int, str]]] = {}
        for name, domid in self.names.items():
            self._open(name, domid)
        self.log: list[str] = []

    def _open(self, name: str, domid: int) -> None:
        self.twins.open(name, domid)
        self.pending[name] = bytearray()
        self.queued[name] = []      # (end offset in pending, what the frame is)

    def run(self, steps: int) -> None:
        with small_slices():
            for _ in range(steps):
                self.step()

    def step(self) -> None:
        n = len(self.log) + 1
        r = self.rng.random()
        try:
            if r < 0.70:
                self._deliver()
            else:
                self._control()
            self.twins.compare_state()
        except Divergence as e:
            shown = self.log[-80:]
            earlier = len(self.log) - len(shown)
            raise Divergence(
                f"revision {self.revision}, seed {self.seed}: the engines differ at step {n} "
                f"({self.log[-1] if self.log else ''}):\n  {e}\n"
                f"program so far ({earlier} earlier steps not shown; rerun: "
                f"python tests/test_fastpath_equivalence.py --revision {self.revision} "
                f"{self.seed}):\n" + textwrap.indent("\n".join(shown), "  ")) from None

    def reached(self) -> Counter:
        """What this program did, of REACHED: read from its log and from the
        fast path engine's `stats` (calls by result)."""
        text = "\n".join(self.log)
        out = Counter({what: text.count(mark) for what, mark in LOG_MARKS.items()})
        stats, _ = self.twins.fast.control({"op": "stats"})
        out.update(f"{c['subop']} {c['result']}" for d in stats["domains"] for c in d["calls"])
        # What C answered itself: counted in C, not among the handlers' calls.
        for d in self.twins.fast.hv.domains.values():
            for key, n in d.call_counts().items():
                if n > d.calls.get(key, 0):
                    out[f"fast {key[1]} {key[2]}"] += n - d.calls.get(key, 0)
        return out

    # -- steps --

    def _deliver(self) -> None:
        name = self.rng.choice(sorted(self.names))
        conn = self.twins.conns[name][0]
        if conn.closing or conn.gone:
            domid = self.names[name]
            if domid in self.twins.fast.hv.domains:
                self._open(name, domid)
                self.log.append(f"{name}: a new connection (the last one ended)")
            return
        pending, queued = self.pending[name], self.queued[name]
        if not conn.continuing or self.rng.random() < 0.5:
            memory = self.twins.fast.hv.domains[self.names[name]].p2m.nr_pages
            for _ in range(self.rng.choice((1, 1, 2, 3, 5, 8))):
                what, frame = self.calls.frame(memory)
                pending += frame
                queued.append((len(pending), what))
            if self.rng.random() < 0.01:
                pending += b"\xffBROKEN" * 4            # a broken frame: ERROR, closing
                queued.append((len(pending), "garbage bytes"))
        # A chunk: whole frames, or a cut anywhere (a frame split across chunks).
        ends = [end for end, _ in queued]
        if not ends or self.rng.random() < 0.3:
            cut = self.rng.randrange(0, len(pending) + 1)
        else:
            cut = self.rng.choice(ends)
        chunk = bytes(pending[:cut])
        del pending[:cut]
        done = [what for end, what in queued if end <= cut]
        split = next((what for end, what in queued if end > cut), None)
        self.queued[name] = [(end - cut, what) for end, what in queued if end > cut]
        text = f"{name}: {len(chunk)} bytes: {len(done)} whole frame(s) [{'; '.join(done)}]" \
            if chunk else f"{name}: no bytes, answer() again"
        if split is not None and cut > max((end for end, _ in queued if end <= cut), default=0):
            text += f" + the start of [{split}]"
        if conn.continuing:
            text += " (a call continuing)"
        others = [other for other, domid in self.names.items() if other != name and
                  domid == self.names[name] and self.twins.conns[other][0].continuing]
        if done and others:     # what a fast path's stale state would get wrong
            text += f" (while {others[0]}'s call continues)"
        self.log.append(text)
        replies, flags = self.twins.deliver(name, chunk)
        if flags[0] or flags[1]:
            self.log[-1] += f" -> {'continuing' if flags[0] else 'closing'}"

    def _control(self) -> None:
        rng, hv = self.rng, self.twins.fast.hv
        kind = rng.choices(("p2m", "device", "fail_nth", "dma", "time", "domain", "faults"),
                           (30, 14, 10, 12, 10, 3, 3))[0]
        domid = rng.choice([d for d in self.domids if d in hv.domains] or [0])
        if kind == "p2m":
            types = ["ram", "ram", "paged_out", "shared", "mmio", "invalid"]
            if self.revision == 2:
                types.append("foreign")
            req = {"op": "p2m_set", "domid": domid, "gfn": rng.randrange(GFNS),
                   "type": rng.choice(types)}
            if req["type"] == "foreign":
                req.update(owner=rng.choice([d for d in self.domids if d != domid]),
                           owner_gfn=rng.randrange(GFNS))
        elif kind == "device":
            sbdf = format_sbdf(rng.choice(DEVICES))
            req = rng.choice(({"op": "device_deassign", "sbdf": sbdf},
                              {"op": "device_assign", "sbdf": sbdf, "domid": domid}))
        elif kind == "fail_nth":
            sites = rng.sample(["table", "flush", "ref"], rng.randrange(1, 4))
            req = {"op": "fail_nth", "nth": rng.choice((0, 1, 2, 3, 5, 8)), "sites": sites}
        elif kind == "dma":
            sbdf = format_sbdf(rng.choice(DEVICES))
            addr = rng.randrange(DFNS) << 12 | rng.randrange(0, 4096, 8)
            req = {"op": "dma", "sbdf": sbdf, "addr": addr, "write": rng.random() < 0.5}
            if req["write"]:
                req["data"] = bytes(rng.randrange(256) for _ in range(8))
            else:
                req["length"] = 8
        elif kind == "time":
            dt = rng.choice((0.004, 0.011, 0.05))
            self.twins.now += dt
            self.log.append(f"time: +{dt * 1000:g} ms")
            return
        elif kind == "faults":
            req = {"op": "faults", "clear": True}
        else:
            req = self._domain_step()
        reply = self.twins.control(req)
        self.log.append(f"control {req} -> {'ok' if reply.get('ok') else reply.get('error')}")
        if req["op"] == "domain_create" and reply.get("ok"):
            for name, d in self.names.items():
                if d == req["domid"]:
                    self._open(name, d)

    def _domain_step(self) -> dict:
        """The guest destroyed (its connections end, a call continuing is
        left unanswered) or created again as it was."""
        if 1 in self.twins.fast.hv.domains:
            return {"op": "domain_destroy", "domid": 1}
        cfg = self.config.domains[1]
        req = {"op": "domain_create", "domid": 1, "name": cfg.name,
               "memory_mib": cfg.memory_mib, "contexts": cfg.contexts,
               "devices": [format_sbdf(s) for s in cfg.devices
                           if self.twins.fast.hv.owner_of(s) is None]}
        return req


# What a program's log shows it did, by the mark in the log.
LOG_MARKS = {"a call continuing": "-> continuing", "a connection closing": "-> closing",
             "fail-nth armed": "'fail_nth'", "a p2m change": "'p2m_set'",
             "a domain destroyed": "domain_destroy", "a frame split": "+ the start of",
             "a device moved": "'device_", "time moving": "time: +",
             "calls while another connection's continues": "'s call continues)"}
# What the programs of each revision must all together have reached: the log's
# marks and results of sub-ops ("subop result" as `stats` counts calls).
REACHED = [*LOG_MARKS, "noop ok", "query_capabilities ok", "free_context ok", "map_pages ok",
           "map_pages -EINVAL", "map_pages -ERANGE", "map_pages -ENOMEM", "map_pages -EPERM",
           "map_pages -EADDRINUSE", "unmap_pages ok", "unmap_pages -ENOENT",
           "unmap_pages -EINVAL", "unmap_pages -EADDRNOTAVAIL", "free_context -EBUSY"]
REACHED_BY_REVISION = {
    1: [*REACHED, "map_pages -E2BIG", "map_pages -EIO", "unmap_pages -E2BIG", "lookup_page ok",
        "lookup_page -ENOENT", "lookup_page -EINVAL", "unknown -EFAULT", "unknown -EINVAL",
        "unknown -ENOSYS"],
    2: [*REACHED, "map_pages -ENOENT", "map_pages -EFAULT", "unmap_pages -EFAULT",
        "remote_cmd -ENOENT", "init ok", "unknown -EOPNOTSUPP", "unknown -ENOSYS"],
}


def run_program(revision: int, seed: int, steps: int = STEPS, python_hook=None) -> Program:
    program = Program(revision, seed, python_hook)
    program.run(steps)
    return program


# -- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("revision", [1, 2])
def test_the_fast_path_answers_as_the_python_handlers(revision):
    reached = Counter()
    for seed in SEEDS:
        program = run_program(revision, seed)
        reached.update(program.reached())
    # The programs are no proof unless they reach what the fast path must
    # hand back to Python, and every kind of failure.
    missing = [what for what in REACHED_BY_REVISION[revision] if not reached[what]]
    assert not missing, f"no program reached {missing}: {dict(reached)}"
    # ... nor unless the fast path answered every sub-op it takes, and
    # failures of the run itself, in C.
    module = v1 if revision == 1 else v2
    fast = {k: n for k, n in reached.items() if k.startswith("fast ")}
    for row in module.SUBOPS:
        if row.fast:
            assert fast.get(f"fast {row.number} 0"), f"C never answered {row.name}: {fast}"
    assert any(k.split()[2] != "0" for k in fast), f"C answered no failure: {fast}"


def _original_row(hv: Hypervisor, name: str):
    """(the sub-op table of hv's revision, the number and row of sub-op `name`)."""
    module = v1 if hv.config.pv_iommu_revision == 1 else v2
    row = next(r for r in module.SUBOPS if r.name == name)
    return module.IOMMU_OP.subops, row.number, row


def _unmap_one_fewer(engine: Engine):
    """The planted Python bug: unmap_pages reports one page fewer than it
    unmapped, on this engine's machine alone."""
    subops, number, row = _original_row(engine.hv, "unmap_pages")
    layout = v1.UnmapPages if engine.hv.config.pv_iommu_revision == 1 else v2.UnmapPages

    def buggy(hv, d, op):
        ret = row.handler(hv, d, op)
        if hv is engine.hv:
            u = layout.parse(op.payload)
            if u.unmapped:
                u.unmapped -= 1
                op.payload = layout.build(u)
        return ret
    return subops, number, dataclasses.replace(row, handler=buggy)


def _map_without_flush(engine: Engine):
    """The planted Python bug: map_pages skips its IOTLB flush, on this
    engine's machine alone."""
    subops, number, row = _original_row(engine.hv, "map_pages")
    contexts = engine.hv.contexts

    def buggy(hv, d, op):
        if hv is not engine.hv:
            return row.handler(hv, d, op)
        contexts.iotlb_flush = lambda *args: None
        try:
            return row.handler(hv, d, op)
        finally:
            del contexts.iotlb_flush        # the class's method again
    return subops, number, dataclasses.replace(row, handler=buggy)


@pytest.mark.parametrize("plant", [_unmap_one_fewer, _map_without_flush])
@pytest.mark.parametrize("revision", [1, 2])
def test_a_bug_planted_in_a_python_handler_is_caught(monkeypatch, revision, plant):
    planted = []

    def hook(engine):
        monkeypatch.setitem(*plant(engine))
        planted.append(engine)
    with pytest.raises(Divergence) as caught:
        for seed in SEEDS:
            run_program(revision, seed, python_hook=hook)
    assert planted and "the engines differ at step" in str(caught.value)


@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_xenemu_fast_path_reaches_the_daemon_and_replay(tmp_path, monkeypatch, setting):
    """The switch `make test`'s second pass turns: XENEMU_FAST_PATH=0 turns
    the fast path off in every Engine built with the default, the daemon's
    (it says so in its log) and replay's; anything else leaves it on."""
    if setting is None:
        monkeypatch.delenv("XENEMU_FAST_PATH", raising=False)
    else:
        monkeypatch.setenv("XENEMU_FAST_PATH", setting)
    on = setting != "0"
    assert Replayer(machine(1)).engine.fast_path is on
    assert Engine(Hypervisor(machine(2)), fast_path=not on).fast_path is not on
    daemon = DaemonProcess(tmp_path, record=False)
    try:
        assert daemon.ctl("info")["abi"] == {"pv_iommu_revision": 1}
    finally:
        assert daemon.stop() == 0
    said = "by the C fast path where it can" if on else "by the Python handlers alone"
    assert f"hypercalls answered {said}" in daemon.log()


FASTPATH_C = ROOT / "cext" / "fastpath.c"
# The C mutation: revision 1's map writing back one page more in `mapped`
# (pv_iommu_op offset 28, v1_map) than it mapped.
C_MUTATION = re.compile(r"(st\(s \+ 28, )done(, 4\);)")


def mutate_fastpath(text: str) -> str:
    mutated, n = C_MUTATION.subn(r"\1done + 1\2", text, count=1)
    assert n, "v1_map's write of `mapped` is not in cext/fastpath.c: update C_MUTATION in " \
              "tests/test_fastpath_equivalence.py to where the fast path counts the pages it mapped"
    return mutated


@pytest.mark.slow
def test_a_bug_planted_in_the_c_fast_path_is_caught(tmp_path):
    """Copies the package and cext/ to tmp_path, makes the count a map
    writes back one more in cext/fastpath.c, builds that copy as the
    package does (xenemu/hw/_build.py) and runs the differential programs
    against it in a subprocess: they must find a divergence."""
    if not FASTPATH_C.exists():
        pytest.skip("cext/fastpath.c does not exist yet: no C fast path to plant a bug in")
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "xenemu", copy / "xenemu",
                    ignore=shutil.ignore_patterns("_hwlib*", "__pycache__"))
    shutil.copytree(ROOT / "cext", copy / "cext")
    target = copy / "cext" / "fastpath.c"
    target.write_text(mutate_fastpath(target.read_text()))
    build = subprocess.run([sys.executable, "-c", BUILD_SCRIPT], cwd=copy, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, f"the mutated copy does not build:\n{build.stderr[-3000:]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), str(ROOT / "tests")]))
    run = subprocess.run([sys.executable, str(Path(__file__)), "--expect-module", str(copy),
                          *map(str, SEEDS)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 1, f"the mutated fast path was not caught " \
                                f"(exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    assert "the engines differ at step" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]


# The build of the copy: xenemu/hw/_build.py's ffibuilder, compiled in
# place (the extension lands at xenemu/hw/_hwlib*.so in the copy).
BUILD_SCRIPT = """
import runpy
builder = runpy.run_path("xenemu/hw/_build.py")["ffibuilder"]
builder.compile(tmpdir=".", verbose=False)
"""


def main(argv: list[str]) -> int:
    """Run programs outside pytest: [--revision N] [--expect-module DIR] SEED...
    (both revisions unless one is given). Exit 1 on a divergence."""
    revisions, expect = (1, 2), None
    seeds = []
    args = iter(argv)
    for arg in args:
        if arg == "--revision":
            revisions = (int(next(args)),)
        elif arg == "--expect-module":
            expect = Path(next(args)).resolve()
        else:
            seeds.append(int(arg))
    import xenemu
    if expect is not None and expect not in Path(xenemu.__file__).resolve().parents:
        print(f"xenemu was imported from {xenemu.__file__}, not from {expect}")
        return 2
    start = time.monotonic()
    try:
        for revision in revisions:
            for seed in seeds or SEEDS:
                run_program(revision, seed)
    except Divergence as e:
        print(e)
        return 1
    print(f"no divergence ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
