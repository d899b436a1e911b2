"""Machine snapshots: what guests and harnesses can observe, to start from again.

A snapshot is a logical image, not a dump of the C structures: the machine
configuration with the domains as they are now, the machine's time, and per
domain its p2m types, page-ins under way, the guest memory that is not zero,
and every allocated context with its mappings as runs (dfn, gfn, count,
perm) and its devices; then the quarantined devices and the fault log.
`take()` reads all of it through the interfaces the control plane uses, and
changes nothing. `restore()` builds a fresh Hypervisor from the
configuration and replays the state through the context layer the
hypercalls use (xenemu.iommu_contexts: one page reference per mapping, as
map_pages takes), loads the fault log into the IOMMU as it was, then
refuses the result unless the invariant check holds.

Not kept, because no guest call returns them: machine frame numbers (a
restored machine allocates its own; lookup_page and dump report gfns through
the M2P), hardware context ids, the IOTLB's entries (it starts cold) and its
counters (they count from the restore). Kept as far as they can be read back: table pages
(a restored context has those its mappings need, not those an unmap left
empty), and a context being freed, kept as dying and being torn down, without
the mappings its teardown has not reached: the hardware refuses to read such
a context's tables (as PV-IOMMU refuses map, unmap and lookup on it), and the
next free_context finishes it. (Revision 2's -EBUSY leaves a context dying
that is not torn down: it keeps its mappings.)

`write()` and `read()` move a snapshot to and from a file (one msgpack map,
`abi/SNAPSHOT.md`); a write replaces the file atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from array import array
from pathlib import Path
from typing import Annotated, Any, Literal

import msgpack
import msgspec

from . import __version__, hw
from .domain import Context, Domain
from .errno import XenError
from .hypercalls import iommu_op_dirty
from .hypervisor import PAGES_PER_MIB, Hypervisor, MachineError
from .iommu_contexts import NO_LIMIT_TABLES
from .machine import (MAX_DEVICES, MAX_DOMAINS, ConfigError, DomainConfig, MachineConfig,
                      MachineFile, machine_from_file, machine_to_dict)
from .p2m import P2mType
from .pci import Sbdf, format_sbdf
from .runs import progressions
from .schema import U16, U64, DomId, InputError, convert

log = logging.getLogger("xenemu.snapshot")

FORMAT = 1
HEADER_KEY = "xenemu_snapshot"   # its value is the format version

BATCH = 256              # pages of guest memory read at a time (1 MiB)
PAGE = hw.PAGE_SIZE
_ZERO_PAGE = bytes(PAGE)
_ZERO_BATCH = bytes(BATCH * PAGE)



class SnapshotError(Exception):
    """A snapshot cannot be written, read or restored; the message says why."""


# -- the file's schema -----------------------------------------------------------------

Count = Annotated[int, msgspec.Meta(ge=1, le=1 << 36)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e12)]


class _Row(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """A run written as a msgpack array."""


class P2mRun(_Row):
    gfn: U64
    count: Count
    type: Literal["invalid", "paged_out", "paging_in", "shared", "mmio", "foreign"]


class ForeignGfn(_Row):
    """A foreign p2m run's gfn: whose frame, at which of its gfns (revision 2)."""
    gfn: U64
    owner: DomId
    owner_gfn: U64


class PageIn(_Row):
    gfn: U64
    due: Seconds


class MemoryRun(_Row):
    gfn: U64
    data: bytes


class Mapping(_Row):
    dfn: U64
    gfn: U64
    count: Count
    perm: Literal[1, 2, 3]


class PageRun(_Row):
    """`count` pages from `dfn` (a tracked context's accessed or dirty pages)."""
    dfn: U64
    count: Count


class FaultRecord(_Row):
    sbdf: Sbdf
    addr: U64
    kind: Literal["NOT_PRESENT", "WRITE", "READ", "WIDTH", "INTR", "BLOCKED",
                  "S1_TABLE", "NO_PASID"]     # the last two: nested machines' (abi/NESTED.md)
    write: bool


class _Map(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class PasidBinding(_Row):
    sbdf: Sbdf
    pasid: Annotated[int, msgspec.Meta(ge=1, le=hw.PASID_MAX)]


class PageRequestState(_Map):
    """An outstanding page request of a nested context (I/O page faults)."""
    sbdf: Sbdf
    pasid: Annotated[int, msgspec.Meta(ge=1, le=hw.PASID_MAX)]
    addr: U64
    write: bool
    group: Annotated[int, msgspec.Meta(ge=1, le=0xFFFFFFFF)]
    state: Literal["queued", "read", "answered"]
    code: Literal[0, 1, 15] = 0


class NestedState(_Map):
    """A nested context (abi/NESTED.md): its stage 2, its stage-1 root (the
    table itself is guest memory, in `memory`), the PASIDs bound to it, and
    whether it makes page requests, with those outstanding."""
    stage2: U16
    pgtable_gfn: U64
    pasids: Annotated[list[PasidBinding], msgspec.Meta(max_length=hw.MAX_PASID_BINDS)]
    page_requests: bool = False
    requests: Annotated[list[PageRequestState], msgspec.Meta(max_length=hw.PRQ_PER_CTX)] = []


class ContextState(_Map):
    ctx_no: U16
    dying: bool
    devices: Annotated[list[Sbdf], msgspec.Meta(max_length=MAX_DEVICES)]
    mappings: list[Mapping]
    # Its teardown is under way (a continued free_context): then it lists no
    # mappings. Absent in files before it: a dying context was torn down.
    teardown: bool | None = None
    nested: NestedState | None = None
    # alloc_context's dirty-tracking flag (abi/NESTED.md), and the pages
    # whose A and D bits are set (D only where A is, as the walker sets them).
    dirty_tracking: bool = False
    accessed: list[PageRun] = []
    dirty: list[PageRun] = []


class DomainState(_Map):
    domid: DomId
    p2m: list[P2mRun]
    page_ins: list[PageIn]
    memory: list[MemoryRun]
    contexts: Annotated[list[ContextState], msgspec.Meta(min_length=1, max_length=1 << 16)]
    foreign: list[ForeignGfn] = []       # absent in files of before it: none


class FaultLog(_Map):
    records: Annotated[list[FaultRecord], msgspec.Meta(max_length=hw.common.MAX_FAULTS)]
    overflow: bool


class SnapshotFile(_Map):
    xenemu_snapshot: Literal[1]
    abi: dict[str, Any]
    machine: MachineFile
    time: Seconds
    domains: Annotated[list[DomainState], msgspec.Meta(max_length=MAX_DOMAINS)]
    quarantined: Annotated[list[Sbdf], msgspec.Meta(max_length=MAX_DEVICES)]
    faults: FaultLog
    # What devices' DMA left in the reserved (RMRR) frames: [pfn, bytes]
    # runs, as a domain's memory (absent in files of before it: all zero).
    reserved_memory: list[MemoryRun] = []
    meta: Any = None


# -- taking --------------------------------------------------------------------------

def take(hv: Hypervisor) -> dict:
    """The machine as a guest or a harness can observe it (nothing is changed)."""
    recs, overflow = hv.iommu.faults()
    if hv.contexts.lent:
        # A mapping's run is saved as gfns of its own domain: another
        # domain's frame has none there.
        lent = ", ".join(f"{n} of d{o}" for o, n in sorted(hv.contexts.lent.items()))
        raise SnapshotError(f"IOMMU mappings of other domains' frames (foreign: {lent}) "
                            f"cannot be saved: unmap them first")
    return {
        HEADER_KEY: FORMAT,
        "abi": {"pv_iommu_revision": hv.config.pv_iommu_revision},
        "machine": machine_to_dict(_machine_now(hv)),
        "time": hv.clock.now,
        "domains": [_take_domain(hv, d) for d in hv.domains.values()],
        "quarantined": [format_sbdf(s) for s in sorted(hv.quarantined)],
        "faults": {"records": [_fault(r) for r in recs], "overflow": overflow},
        "reserved_memory": [[start + off, data] for _, start, pages in hv.config.rmrr
                            for off, data in _memory(hv.memory, array("Q", range(start,
                                                                                start + pages)))],
        "meta": {"xenemu": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def _machine_now(hv: Hypervisor) -> MachineConfig:
    """The configuration with the domains as they are now: those created on the
    control socket included, destroyed ones left out, devices where they are."""
    rev2 = hv.config.pv_iommu_revision == 2
    return dataclasses.replace(hv.config, domains=tuple(
        DomainConfig(domid=d.domid, name=d.name, hardware=d.hardware, iommu=d.iommu_enabled,
                     memory_mib=d.p2m.nr_pages // PAGES_PER_MIB,
                     contexts=0 if rev2 else d.nr_contexts,
                     devices=tuple(sorted(d.devices)), opaque_default=d.opaque_default,
                     table_pages=hv.contexts.table_budget(d)[1],
                     pv_iommu_init=_init_now(hv, d) if rev2 else None, no_dma=d.no_dma)
        for d in hv.domains.values()))


def _init_now(hv: Hypervisor, d: Domain) -> tuple[int, int] | None:
    """Revision 2: the init that leaves d as it is now, or None (never
    initialised). A pool of 0 (init spent without contexts) needs no arena."""
    if not d.pv_initialized:
        return None
    limit = hv.contexts.table_budget(d)[1]
    order = limit.bit_length() - 1 if d.nr_contexts and limit else 1
    return d.nr_contexts, max(order, 1)


def _take_domain(hv: Hypervisor, d: Domain) -> dict:
    runs, page_ins = d.p2m.state()
    return {
        "domid": d.domid,
        "p2m": [[gfn, count, t.value] for gfn, count, t in runs],
        "page_ins": [[gfn, due] for gfn, due in sorted(page_ins.items())],
        "memory": _memory(hv.memory, d.p2m.mfns),
        "foreign": [[gfn, owner, owner_gfn]
                    for gfn, (owner, owner_gfn) in sorted(d.p2m.foreign.items())],
        "contexts": [_take_context(hv, ctx) for ctx in d.contexts if ctx is not None],
    }


def _take_context(hv: Hypervisor, ctx: Context) -> dict:
    entry = {"ctx_no": ctx.ctx_no, "dying": ctx.dying, "teardown": ctx.tearing_down,
             "devices": [format_sbdf(s) for s in sorted(ctx.devices)],
             "mappings": [] if ctx.tearing_down or ctx.nested else mappings(hv, ctx)}
    if ctx.dirty_tracking:  # keys absent otherwise, as "nested"
        entry["dirty_tracking"] = True
        entry["accessed"], entry["dirty"] = _ad_runs(hv, ctx, entry["mappings"])
    if ctx.nested:      # key absent otherwise: files without nested contexts stay as they were
        entry["nested"] = {"stage2": ctx.parent, "pgtable_gfn": ctx.s1_root,
                           "pasids": [[format_sbdf(s), p] for s, p in sorted(ctx.pasids)]}
        if ctx.page_requests:
            entry["nested"].update(page_requests=True, requests=[
                {"sbdf": format_sbdf(r.sbdf), "pasid": r.pasid, "addr": r.addr,
                 "write": r.write, "group": r.group, "state": r.state.name.lower(),
                 "code": int(r.code)}
                for r in hv.iommu.page_requests() if r.ctx == ctx.hw_id])
    return entry


# A bitmap byte as 8 bytes of 0/1 (bit i of the byte is page i, as
# read_dirty's bitmaps): runs of pages are then found by a regex, in C.
_BITS = [bytes((b >> i) & 1 for i in range(8)) for b in range(256)]


def _ad_runs(hv: Hypervisor, ctx: Context, runs: list[list[int]]) -> tuple[list, list]:
    """[[dfn, count], ...] of the accessed and of the dirty pages of a
    tracked context's mappings, read without clearing (one C call a run)."""
    accessed, dirty = [], []
    for dfn, _, count, _ in runs:
        d, a, _ = hv.iommu.read_dirty(ctx.hw_id, dfn, count, clear=False)
        for bitmap, out in ((a, accessed), (d, dirty)):
            pages = b"".join(_BITS[b] for b in bitmap)[:count]
            out += [[dfn + m.start(), m.end() - m.start()]
                    for m in re.finditer(rb"\x01+", pages)]
    return accessed, dirty


def _load_ad(hv: Hypervisor, ctx: Context, entry: ContextState, where: str) -> None:
    """Set the A/D bits a tracked context had: each accessed run at once,
    its dirty pages among it; all or nothing for the context."""
    dirty = [(r.dfn, r.count) for r in entry.dirty]
    for k, run in enumerate(entry.accessed):
        # Within one of its mappings (which the restore checked against the
        # domain's memory): that bounds the bitmaps built here.
        if not any(m.dfn <= run.dfn and run.dfn + run.count <= m.dfn + m.count
                   for m in entry.mappings):
            raise SnapshotError(f"{where}.accessed[{k}]: pages {run.dfn:#x}+{run.count} are "
                                f"not within one of the context's mappings")
        d_bits = 0
        for dfn, count in dirty:
            lo, hi = max(dfn, run.dfn), min(dfn + count, run.dfn + run.count)
            if lo < hi:
                d_bits |= ((1 << (hi - lo)) - 1) << (lo - run.dfn)
        nbytes = (run.count + 7) // 8
        try:
            hv.iommu.load_dirty(ctx.hw_id, run.dfn, run.count, d_bits.to_bytes(nbytes, "little"),
                                (((1 << run.count) - 1)).to_bytes(nbytes, "little"))
        except hw.HwError as e:
            page = run.dfn + (e.index or 0)
            raise SnapshotError(f"{where}.accessed[{k}]: page {page:#x} "
                                f"{'is not mapped' if e.status == hw.Status.NOTPRESENT else 'refused'}"
                                f" ({e.status.name})") from None
    inside = sum(max(0, min(d + c, r.dfn + r.count) - max(d, r.dfn))
                 for d, c in dirty for r in entry.accessed)
    if inside != sum(c for _, c in dirty):
        raise SnapshotError(f"{where}.dirty: a dirty page outside the accessed runs (the walker "
                            f"sets A with every D)")


def mappings(hv: Hypervisor, ctx: Context) -> list[list[int]]:
    """A context's mappings as runs [dfn, gfn, count, perm], dfn order, its
    identity ranges left out: its devices bring them back on restore."""
    runs, missed = hv.contexts.mapping_runs(ctx)
    if missed:
        raise SnapshotError(f"context {ctx.ctx_no}: {missed} mappings were not found by the scan")
    return without_identity(runs, ctx.identity)


def without_identity(runs: list[list[int]], identity: list[list[int]]) -> list[list[int]]:
    """runs with the dfns of the identity ranges cut out."""
    for start, pages, _ in identity:
        end, kept = start + pages, []
        for dfn, gfn, count, perm in runs:
            if dfn < start:
                kept.append([dfn, gfn, min(count, start - dfn), perm])
            if dfn + count > end:
                skip = max(end - dfn, 0)
                kept.append([dfn + skip, gfn + skip, count - skip, perm])
        runs = kept
    return runs


def _memory(machine, mfns: array) -> list[list]:
    """[gfn, bytes] for each run of guest pages that are not all zero.

    Read BATCH pages at a time (one read per stretch of consecutive frames);
    a batch all zero, as untouched memory is, is dismissed by one compare."""
    runs: list[list] = []
    for base in range(0, len(mfns), BATCH):
        batch = mfns[base:base + BATCH]
        for off, count in progressions(batch):
            data = machine.read(batch[off] << hw.PAGE_SHIFT, count * PAGE)
            if data == _ZERO_BATCH[:count * PAGE]:
                continue
            for i in range(count):
                page = data[i * PAGE:(i + 1) * PAGE]
                if page != _ZERO_PAGE:
                    gfn = base + off + i
                    if runs and runs[-1][0] + len(runs[-1][1]) == gfn:
                        runs[-1][1].append(page)
                    else:
                        runs.append([gfn, [page]])
    return [[gfn, b"".join(pages)] for gfn, pages in runs]


def _fault(rec) -> list:
    return [format_sbdf(rec.sbdf), rec.addr, rec.kind.name, rec.write]


def summary(snapshot: dict) -> dict:
    """What a snapshot holds, in numbers: contexts include each default context."""
    domains = snapshot["domains"]
    contexts = [c for d in domains for c in d["contexts"]]
    return {"domains": len(domains), "contexts": len(contexts),
            "mappings": sum(run[2] for c in contexts for run in c["mappings"]),
            "memory_pages": sum(len(data) // PAGE for d in domains for _, data in d["memory"])}


# -- files -----------------------------------------------------------------------------

def encode(hv: Hypervisor, path: str | os.PathLike) -> tuple[bytes, dict]:
    """The machine now, as a snapshot file's bytes, and what writing them to
    `path` replies: the path, the size in bytes and summary(). Taken at once
    (the machine must not change meanwhile); the writing can wait."""
    snap = take(hv)
    data = msgpack.packb(snap, use_bin_type=True)
    return data, {"path": str(path), "bytes": len(data), **summary(snap)}


def write_bytes(path: str | os.PathLike, data: bytes, result: dict) -> None:
    """Replace `path` with a snapshot's bytes atomically: written to
    .NAME.tmp beside it, synced, then renamed over it, so a crash or a failed
    write leaves the previous snapshot whole (and at most that temporary
    file, which the next write reuses). Blocks on the disk: a daemon calls
    it off its event loop. `result`: encode()'s, for the log."""
    path = Path(path)
    started = time.perf_counter()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # Owner-only, as the sockets: a snapshot holds guest memory.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _sync_directory(path.parent)
    except OSError as e:
        raise SnapshotError(f"cannot write a snapshot to {path}: {e.strerror or e}") from None
    log.info("xenemu: snapshot written to %s in %.2f s: %s", path,
             time.perf_counter() - started, _describe(result))


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str | os.PathLike) -> dict:
    """A snapshot file, checked to be whole and of a format this xenemu reads."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: {e.strerror or e}") from None
    try:
        snap = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except ValueError as e:     # msgpack's errors (cut off, extra data, bad format) are all one
        raise SnapshotError(f"{path}: not a whole xenemu snapshot ({e})") from None
    check(snap, str(path))
    return snap


def check(snap, where: str = "snapshot") -> None:
    """Refuse what is not a snapshot, or one of another format or ABI revision."""
    if not isinstance(snap, dict) or HEADER_KEY not in snap:
        raise SnapshotError(f"{where}: not a xenemu snapshot (no {HEADER_KEY!r} key)")
    if snap[HEADER_KEY] != FORMAT:
        raise SnapshotError(f"{where}: snapshot format {snap[HEADER_KEY]!r}; this xenemu reads "
                            f"format {FORMAT}")
    revision = snap.get("abi", {}).get("pv_iommu_revision") if isinstance(snap.get("abi"), dict) \
        else None
    if revision not in (1, 2):
        raise SnapshotError(f"{where}: a machine of PV-IOMMU revision {revision!r}; this xenemu "
                            f"implements revisions 1 and 2")
    machine = snap.get("machine")
    declared = machine.get("pv_iommu_revision", 1) if isinstance(machine, dict) else None
    if declared != revision:
        raise SnapshotError(f"{where}: a machine of PV-IOMMU revision {revision!r} (abi), but "
                            f"its machine says revision {declared!r}")


def _describe(counts: dict) -> str:
    return (f"{counts['domains']} domains, {counts['contexts']} contexts, {counts['mappings']} "
            f"mappings, {counts['memory_pages']} pages of memory")


# -- restoring -----------------------------------------------------------------------

def restore(snap: dict, clock=time.monotonic, *, check_iotlb: bool = False,
            where: str = "snapshot") -> Hypervisor:
    """A new Hypervisor in the state `snap` describes, its clock going on
    from the snapshot's time. SnapshotError if the snapshot is malformed or
    its state cannot be rebuilt consistently."""
    check(snap, where)
    try:
        state = convert(snap, SnapshotFile, where)
        config = machine_from_file(state.machine, where, "machine.")
    except InputError as e:        # ConfigError included
        raise SnapshotError(str(e)) from None
    if check_iotlb:
        config = dataclasses.replace(config, check_iotlb=True)
    try:
        hv = _restore(state, config, clock)
    except (SnapshotError, MachineError, ConfigError, ValueError, hw.HwError) as e:
        raise SnapshotError(f"{where}: cannot be restored: {e}") from None
    problems = hv.check_invariants()
    if problems:
        raise SnapshotError(f"{where}: the restored machine is inconsistent: "
                            + "; ".join(problems))
    log.info("xenemu: restored %s (machine time %.3f s): %s", where, hv.clock.now,
             _describe(summary(snap)))
    return hv


def _restore(snap: SnapshotFile, config: MachineConfig, clock) -> Hypervisor:
    hv = Hypervisor(config, clock=clock)
    hv.clock.resume(snap.time)
    listed = [entry.domid for entry in snap.domains]
    if sorted(listed) != sorted(hv.domains):
        raise SnapshotError(f"domains {sorted(listed)} listed, the machine has {sorted(hv.domains)}")
    for i, entry in enumerate(snap.domains):
        d = hv.domains[entry.domid]
        here = f"domains[{i}]"
        _restore_p2m(hv, d, entry, here)
        _restore_memory(hv, d, entry.memory, here)
        _restore_contexts(hv, d, entry.contexts, here)
    for i, entry in enumerate(snap.domains):
        _restore_foreign(hv, hv.domains[entry.domid], entry.foreign, f"domains[{i}]")
    for j, sbdf in enumerate(snap.quarantined):
        if hv.owner_of(sbdf) is not None or sbdf in hv.quarantined:
            raise SnapshotError(f"quarantined[{j}]: {format_sbdf(sbdf)} is assigned to a domain "
                                f"or listed twice")
        hv.contexts.quarantine_device(sbdf)
    _restore_faults(hv, snap.faults)
    _restore_reserved_memory(hv, snap.reserved_memory)
    return hv


def _restore_p2m(hv: Hypervisor, d: Domain, entry: DomainState, where: str) -> None:
    """Each run in a few calls: the default context's 1:1 pages there are
    unmapped in slices of SCAN pages (a no-dma domain's has none; its
    identity ranges are not 1:1 pages), the p2m takes the run whole."""
    end = 0
    for k, run in enumerate(entry.p2m):
        here = f"{where}.p2m[{k}]"
        _check_gfns(d, run.gfn, run.count, here)
        if run.gfn < end:
            raise SnapshotError(f"{here}: runs overlap or are out of order")
        end = run.gfn + run.count
        missing = None if d.no_dma else hv.contexts.unmap_1to1(d, run.gfn, run.count)
        if missing is not None:
            raise SnapshotError(f"{here}: gfn {missing:#x} was not mapped 1:1")
        d.p2m.set_run(run.gfn, run.count, P2mType(run.type))
    for k, item in enumerate(entry.page_ins):
        try:
            d.p2m.resume_page_in(item.gfn, item.due)
        except ValueError as e:
            raise SnapshotError(f"{where}.page_ins[{k}]: {e}") from None


def _restore_foreign(hv: Hypervisor, d: Domain, rows: list[ForeignGfn], where: str) -> None:
    """Every foreign gfn of the p2m runs names its owner's RAM gfn, once."""
    if rows and hv.config.pv_iommu_revision != 2:
        raise SnapshotError(f"{where}.foreign: only a revision-2 machine has foreign gfns")
    for k, row in enumerate(rows):
        here = f"{where}.foreign[{k}]"
        if d.p2m.type_of(row.gfn) is not P2mType.FOREIGN or row.gfn in d.p2m.foreign:
            raise SnapshotError(f"{here}: gfn {row.gfn:#x} is not a foreign gfn of the p2m "
                                f"runs, or is listed twice")
        o = hv.domains.get(row.owner)
        if o is None or row.owner == d.domid or not row.owner_gfn < o.p2m.nr_pages \
                or o.p2m.type_of(row.owner_gfn) is not P2mType.RAM:
            raise SnapshotError(f"{here}: d{row.owner} has no RAM frame at gfn "
                                f"{row.owner_gfn:#x} for it")
        d.p2m.foreign[row.gfn] = (row.owner, row.owner_gfn)
    named = len(d.p2m.foreign)
    runs = sum(count for _, count, t in d.p2m.runs() if t is P2mType.FOREIGN)
    if runs != named:
        raise SnapshotError(f"{where}: {runs} foreign gfns in the p2m runs, {named} in foreign")


def _restore_memory(hv: Hypervisor, d: Domain, runs: list[MemoryRun], where: str) -> None:
    for k, run in enumerate(runs):
        here = f"{where}.memory[{k}]"
        if not run.data or len(run.data) % PAGE:
            raise SnapshotError(f"{here}: {len(run.data)} bytes, not whole pages")
        count = len(run.data) // PAGE
        _check_gfns(d, run.gfn, count, here)
        mfns = d.p2m.mfns[run.gfn:run.gfn + count]
        view = memoryview(run.data)
        for off, n in progressions(mfns):
            hv.memory.write(mfns[off] << hw.PAGE_SHIFT, view[off * PAGE:(off + n) * PAGE])


def _restore_reserved_memory(hv: Hypervisor, runs: list[MemoryRun]) -> None:
    for k, run in enumerate(runs):
        count = len(run.data) // PAGE
        if not run.data or len(run.data) % PAGE or not any(
                start <= run.gfn and run.gfn + count <= start + pages
                for _, start, pages in hv.config.rmrr):
            raise SnapshotError(f"reserved_memory[{k}]: pfns {run.gfn:#x}+{len(run.data)} "
                                f"bytes are not whole pages of one reserved range")
        hv.memory.write(run.gfn << hw.PAGE_SHIFT, run.data)


def _restore_contexts(hv: Hypervisor, d: Domain, contexts: list[ContextState],
                      where: str) -> None:
    placed: set[int] = set()
    budget = hv.contexts.table_budget(d)[1]
    if not budget:
        # "No limit" is the configuration's to give, not a file's to use: a
        # one-page mapping costs up to 3 table pages for ~17 bytes of file.
        hv.contexts.set_table_budget(d, NO_LIMIT_TABLES)
    for j, entry in enumerate(contexts):
        ctx_no = entry.ctx_no
        here = f"{where}.contexts[{j}]"
        if (j == 0) != (ctx_no == 0):
            raise SnapshotError(f"{here}: context 0 comes first, and once")
        if (entry.accessed or entry.dirty) and not entry.dirty_tracking:
            raise SnapshotError(f"{here}: accessed or dirty pages of a context without "
                                f"dirty_tracking")
        if entry.dirty_tracking and (ctx_no == 0 or entry.nested or not hv.config.nested):
            raise SnapshotError(f"{here}.dirty_tracking: only a PV-IOMMU context that is not "
                                f"nested, on a nested machine, tracks dirty pages")
        if entry.nested is not None:
            continue        # once every stage 2 it may name is back
        if ctx_no == 0:
            # Its mappings once every device is in place: a device's
            # reserved ranges displace context 0's 1:1 pages while it is there.
            ctx = d.contexts[0]
            default = (entry.mappings, here)
        else:
            # In its own slot, its tables counted against the domain's budget,
            # as alloc_context does.
            try:
                ctx = hv.contexts.alloc(d, ctx_no)
            except XenError as e:
                raise SnapshotError(f"{here}: {e.why}") from None
            if entry.dirty_tracking:
                iommu_op_dirty.start_tracking(hv, ctx)
            _map(hv, d, ctx, entry.mappings, here)
            if entry.dirty_tracking:
                _load_ad(hv, ctx, entry, here)
        # Revision 2's -EBUSY leaves a context dying, mapping, not torn down.
        teardown = entry.dying if entry.teardown is None else entry.teardown
        if teardown and (not entry.dying or entry.mappings):
            raise SnapshotError(f"{here}.teardown: a context being torn down is dying and "
                                f"lists no mappings")
        ctx.dying, ctx.tearing_down = entry.dying, teardown
        if ctx.dying and ctx_no == 0:
            raise SnapshotError(f"{here}: the default context is never freed")
        for k, sbdf in enumerate(entry.devices):
            # (Revision 2's failed free leaves a dying context with its devices.)
            stuck = ctx.dying and hv.config.pv_iommu_revision == 1
            if sbdf not in d.devices or sbdf in placed or stuck:
                raise SnapshotError(f"{here}.devices[{k}]: {format_sbdf(sbdf)} is not "
                                    f"d{d.domid}'s, is listed twice, or is in a dying context")
            placed.add(sbdf)
            hv.contexts.reattach(d, sbdf, ctx)
    for j, entry in enumerate(contexts):
        if entry.nested is not None:
            _restore_nested(hv, d, entry, f"{where}.contexts[{j}]")
    if contexts:
        _restore_default_context(hv, d, d.contexts[0], *default)
    if not budget:
        hv.contexts.set_table_budget(d, 0)
    if placed != set(d.devices):
        raise SnapshotError(f"{where}: its devices are not each in one of its contexts")


def _restore_nested(hv: Hypervisor, d: Domain, entry: ContextState, here: str) -> None:
    """A nested context in its slot over its stage 2, its PASIDs bound."""
    nested = entry.nested
    if not hv.config.nested:
        raise SnapshotError(f"{here}.nested: the machine is not nested")
    if entry.dying or entry.devices or entry.mappings:
        raise SnapshotError(f"{here}: a nested context is never dying and has no devices "
                            f"or mappings of its own")
    parent = d.context(nested.stage2)
    if parent is None or parent.nested or nested.stage2 == entry.ctx_no:
        raise SnapshotError(f"{here}.nested.stage2: context {nested.stage2} is not one of "
                            f"d{d.domid}'s contexts that is not nested")
    try:
        ctx = hv.contexts.alloc_nested(d, parent, nested.pgtable_gfn, entry.ctx_no,
                                       page_requests=nested.page_requests)
        for k, binding in enumerate(nested.pasids):
            if binding.sbdf not in d.devices or binding.pasid > hv.config.max_pasid:
                raise SnapshotError(f"{here}.nested.pasids[{k}]: {format_sbdf(binding.sbdf)} "
                                    f"is not d{d.domid}'s or PASID {binding.pasid} is above "
                                    f"max_pasid")
            hv.contexts.attach_pasid(binding.sbdf, binding.pasid, ctx)
        _restore_page_requests(hv, ctx, nested, here)
    except XenError as e:
        raise SnapshotError(f"{here}.nested: {e.why}") from None


def _restore_page_requests(hv: Hypervisor, ctx: Context, nested: NestedState,
                           here: str) -> None:
    """The context's outstanding page requests, in their order."""
    if nested.requests and not nested.page_requests:
        raise SnapshotError(f"{here}.nested.requests: the context makes no page requests")
    for k, r in enumerate(nested.requests):
        try:
            hv.iommu.load_page_request(hw.PageRequest(
                r.sbdf, r.pasid, r.addr, r.write, ctx.hw_id, r.group,
                hw.PrqState[r.state.upper()], hw.PrqCode(r.code)))
        except hw.HwError as e:
            raise SnapshotError(f"{here}.nested.requests[{k}]: {_REQUEST_REFUSED[e.status]}"
                                ) from None


_REQUEST_REFUSED = {
    hw.Status.NOTPRESENT: "its device and PASID are not bound to this context",
    hw.Status.NOSPC: "more requests than the queue holds",
    hw.Status.INVAL: "not a request this context could have (address, a code while not "
                     "answered, a group in use, a second request for one page)",
}


def _restore_default_context(hv: Hypervisor, d: Domain, ctx: Context, runs: list[Mapping],
                             where: str) -> None:
    """Context 0 was created 1:1 over RAM; a guest may have mapped or
    unmapped there since. If it differs, its mappings are replaced by the
    file's, within the page tables its own pool allows (its 1:1 map's and
    the domain's spare, as when it is served)."""
    current = mappings(hv, ctx)
    wanted = [[m.dfn, m.gfn, m.count, m.perm] for m in runs]
    if current == wanted:
        return
    for dfn, _, count, _ in current:
        hv.contexts.unmap(ctx, dfn, count)
    _map(hv, d, ctx, runs, where)


def _map(hv: Hypervisor, d: Domain, ctx: Context, runs: list[Mapping], where: str) -> None:
    """Map each run with one page reference per page, in one call each."""
    last = hv.contexts.last_dfn
    for k, run in enumerate(runs):
        here = f"{where}.mappings[{k}]"
        if run.dfn + run.count - 1 > last:
            raise SnapshotError(f"{here}: dfns {run.dfn:#x}+{run.count} are beyond the "
                                f"{hv.config.address_width}-bit address width")
        _check_gfns(d, run.gfn, run.count, here)
        mfns = d.p2m.mfns[run.gfn:run.gfn + run.count]
        done, st = hv.contexts.map(ctx, run.dfn, mfns, run.perm)
        if done != run.count:
            why = st.name
            if st == hw.Status.NOMEM:
                why = ("more page tables than the domain's budget allows"
                       if hv.contexts.budget_spent(d, ctx) else
                       "no machine memory left for page tables")
            raise SnapshotError(f"{here}: stopped at dfn {run.dfn + done:#x} ({why})")


def _restore_faults(hv: Hypervisor, faults: FaultLog) -> None:
    """The IOMMU's fault log, loaded as it was (no DMA made to refill it);
    the IOMMU refuses a record it would not have made."""
    records = [(r.sbdf, r.addr, hw.Fault[r.kind], r.write) for r in faults.records]
    try:
        hv.iommu.load_faults(records, faults.overflow)
    except hw.HwError as e:
        if e.status == hw.Status.NODEV:
            raise SnapshotError(f"faults.records[{e.index}]: "
                                f"{format_sbdf(records[e.index][0])}: no such device") from None
        what = (f"faults.records[{e.index}]: {faults.records[e.index].kind} at "
                f"{faults.records[e.index].addr:#x} is not a fault the IOMMU records"
                if e.index < len(records) else
                f"faults: {len(records)} records{' and the overflow flag' * faults.overflow}")
        raise SnapshotError(f"{what}: the fault log cannot be made again as recorded") from None


def _check_gfns(d: Domain, gfn: int, count: int, where: str) -> None:
    if gfn + count > d.p2m.nr_pages:
        raise SnapshotError(f"{where}: gfns {gfn:#x}+{count} are beyond d{d.domid}'s memory "
                            f"({d.p2m.nr_pages} pages)")
