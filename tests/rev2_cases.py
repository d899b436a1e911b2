"""One table of revision-2 sub-ops and return paths, run through both clients
(tests/test_rev2_both_clients.py): the C client (tests/c/rev2_runner.c, built
against abi/rev2) and the Python client (xenemu.client.RevisionTwoClient).

Every sub-op and every return path, with the bytes the guest gets back. The
cases run in order (each depends on the state the ones before left) on one
machine (MACHINE_TOML). Reference: ../shared/reference/pv-iommu-rev2.md (§ numbers).

The table runs under both `rev2_semantics` (cases(semantics)): "v7" (the
code) and "intended" (the header and cover letter; README "ABI revision 2").
A case answers the same in both unless it says otherwise; the contexts v7's
init takes by falling through into alloc_context are allocated explicitly
under "intended" (only="intended"), so every later case names the same
context in both.

A case is Call(domid, subop, arg, inner, want, intended, only, back,
intended_back, inner_back):
  arg    the struct's bytes, NULL (a null handle) or NOWHERE (a handle no guest
         memory lies at: Xen's copy fails with -EFAULT);
  inner  for remote_cmd, the struct its arg handle points to (bytes or NULL);
         the handle bytes in `arg` are set by each client;
  want   the return value's name;
  intended  the return value's name under "intended" where it differs;
  only   the one semantics the call is made in (None: both);
  back   what the struct must hold after the call: its whole bytes, or a dict
         of some of its fields (None: not checked beyond both clients agreeing);
  intended_back  `back` under "intended" where it differs;
  inner_back     remote_cmd's inner struct after the call, as `back`.
Ctl(op, args) is a control-socket step between calls (the same in both runs).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from xenemu.hypercalls import iommu_op_v2 as v2

NULL, NOWHERE = "null", "nowhere"

# test_rev2.machine(): the revision-2 default machine, d2 with its IOMMU off,
# d3 initialised at creation {2 contexts, arena 2^1}, d4 a guest of its own for
# the init that spends a domain, 64 pages a round.
MACHINE_TOML = """\
pv_iommu_revision = 2
rev2_semantics = "{semantics}"
address_width = 48
rev2_pages_per_round = 64

[[domain]]
domid = 0
name = "dom0"
hardware = true
memory_mib = 1024
devices = ["0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"]

[[domain]]
domid = 1
name = "guest1"
memory_mib = 256
devices = ["0000:01:00.0"]

[[domain]]
domid = 2
name = "noiommu"
iommu = false
memory_mib = 16

[[domain]]
domid = 3
name = "inited"
memory_mib = 16
pv_iommu_init = { max_ctx_no = 2, arena_order = 1 }

[[domain]]
domid = 4
name = "fresh"
memory_mib = 16
"""


@dataclass(frozen=True)
class Call:
    domid: int
    subop: int
    arg: bytes | str
    inner: bytes | str | None = None
    want: str = "0"
    intended: str | None = None
    only: str | None = None
    back: bytes | dict | None = None
    intended_back: bytes | None = None
    inner_back: bytes | dict | None = None

    def under(self, semantics: str) -> Call:
        """This case as made under `semantics`: its answer and bytes there."""
        if semantics != "intended":
            return self
        return dataclasses.replace(
            self, want=self.intended or self.want, intended=None, only=None,
            back=self.back if self.intended_back is None else self.intended_back,
            intended_back=None)

    def check_back(self, raw: bytes, inner: bytes) -> None:
        """The struct (and remote_cmd's inner struct) after the call hold `back`."""
        where = f"d{self.domid} subop {self.subop}"
        if isinstance(self.back, bytes):
            assert raw == self.back, (where, raw.hex())
        elif self.back is not None:
            op = v2.decode(self.subop, raw)
            got = {name: _field(op, name) for name in self.back}
            assert got == self.back, where
        if isinstance(self.inner_back, bytes):
            assert inner == self.inner_back, (where, inner.hex())
        elif self.inner_back is not None:
            op = v2.decode(int.from_bytes(self.arg[2:4], "little"), inner)
            got = {name: _field(op, name) for name in self.inner_back}
            assert got == self.inner_back, where


def _field(op, name: str) -> int:
    return op.dev[name] if "dev" in op and name in op.dev else op[name]


@dataclass(frozen=True)
class Ctl:
    op: str
    args: dict


SEMANTICS = ("v7", "intended")


def machine_toml(semantics: str) -> str:
    return MACHINE_TOML.replace("{semantics}", semantics)


def cases(semantics: str) -> list:
    """The table as run under `semantics`."""
    return [case.under(semantics) if isinstance(case, Call) else case for case in CASES
            if getattr(case, "only", None) in (None, semantics)]


def s(number: int, **fields) -> bytes:
    """Sub-op `number`'s struct with `fields` (a dev's seg, bus, devfn flat)."""
    return v2.encode(v2.SUBOPS_BY_NUMBER[number], **fields)


def init(n: int, order: int) -> bytes:
    return s(v2.IOMMU_init, max_ctx_no=n, arena_order=order)


def alloc(**f) -> bytes:
    return s(v2.IOMMU_alloc_context, **f)


def free(ctx: int, flags: int = 0) -> bytes:
    return s(v2.IOMMU_free_context, ctx_no=ctx, free_flags=flags)


def reattach(ctx: int, seg: int, bus: int, devfn: int, pasid: int = 0) -> bytes:
    return s(v2.IOMMU_reattach_device, ctx_no=ctx, seg=seg, bus=bus, devfn=devfn, pasid=pasid)


def map_(ctx: int, gfn: int, dfn: int, nr: int, **f) -> bytes:
    return s(v2.IOMMU_map_pages, ctx_no=ctx, gfn=gfn, dfn=dfn, nr_pages=nr,
             **{"map_flags": 3, **f})


def unmap(ctx: int, dfn: int, nr: int, **f) -> bytes:
    return s(v2.IOMMU_unmap_pages, ctx_no=ctx, dfn=dfn, nr_pages=nr, **f)


def remote(domid: int, subop: int) -> bytes:
    return s(v2.IOMMU_remote_cmd, domid=domid, subop=subop)


def le(*fields) -> bytes:
    """Little-endian bytes of (format, value) pairs, for expected structs."""
    return b"".join(struct.pack("<" + f, v) for f, v in fields)


JUNK8 = bytes(range(0xA0, 0xA8))
MAX_IOVA = (1 << 48) - 1
CAPS = bytes(24)
INIT, ALLOC, FREE, REATTACH, MAP, UNMAP, REMOTE = (
    v2.IOMMU_init, v2.IOMMU_alloc_context, v2.IOMMU_free_context, v2.IOMMU_reattach_device,
    v2.IOMMU_map_pages, v2.IOMMU_unmap_pages, v2.IOMMU_remote_cmd)
QUERY = v2.IOMMU_query_capabilities

CASES = [
    # §2: the IOMMU off: -ENODEV for everything, the struct untouched.
    *(Call(2, subop, JUNK8, want="-ENODEV", back=JUNK8) for subop in (0, 1, 2, 9, 13, 1 << 31)),
    # noop; 9-12 and unknown sub-ops: -EOPNOTSUPP, arg untouched (§5.10).
    Call(1, v2.IOMMU_noop, NULL),
    *(Call(1, subop, JUNK8, want="-EOPNOTSUPP", back=JUNK8)
      for subop in (9, 10, 11, 12, 13, 0x7FFFFFFF, 1 << 31, 0xFFFFFFFF)),
    Call(1, QUERY, NOWHERE, want="-EFAULT"),
    # §5.2 query before init: written whole, never read (pad0 zero here).
    Call(1, QUERY, b"\xff" * 24, back=le(("Q", MAX_IOVA), ("I", 1), ("I", 0x1000),
                                           ("I", 0), ("H", 0), ("H", 0))),
    # §5.4 alloc before init: -ENOSPC, the struct back as sent; map on an
    # unallocated context: -EINVAL, copied back unchanged.
    Call(1, ALLOC, alloc(alloc_flags=7), want="-ENOSPC", back={"ctx_no": 0, "alloc_flags": 7}),
    Call(1, MAP, map_(1, 0x10, 0x100, 4, mapped=3), want="-EINVAL",
         back={"mapped": 3, "gfn": 0x10, "nr_pages": 4}),
    # §5.3 init: E2BIG and the truncating sizes, no arena: v7 answers the
    # fall-through's -ENOSPC, intended init's own errors.
    # Nothing changes (65535: Xen's BUG_ON, §9; arena_order 0: Xen's BUG_ON at
    # the first context): a later init still works.
    *(Call(1, INIT, init(n, 3), want="-ENOSPC", intended="-E2BIG", back=init(n, 3))
      for n in (0xFFFFFFFF, 0xFFFF, 0x1FFFF)),
    Call(1, INIT, init(2, 0), want="-ENOSPC", intended="-EINVAL"),
    Call(1, QUERY, CAPS, back={"max_ctx_no": 0}),
    # v7: the first init takes context 1, written over bytes 0-1; a second
    # allocates again. Intended: init takes none, a second is -EACCES; the
    # same contexts allocated explicitly.
    Call(1, INIT, init(0x20002, 3), back=le(("H", 1), ("H", 2), ("I", 3)),
         intended_back=init(0x20002, 3)),
    Call(1, ALLOC, alloc(), only="intended", back={"ctx_no": 1}),
    Call(1, QUERY, CAPS, back={"max_ctx_no": 2}),      # (0x20002 + 1) & 0xffff - 1
    Call(1, INIT, init(5, 9), intended="-EACCES", back=le(("I", 2), ("I", 9)),
         intended_back=init(5, 9)),
    Call(1, ALLOC, alloc(), only="intended"),
    Call(1, INIT, init(5, 9), want="-ENOSPC", intended="-EACCES"),
    # §5.5 free: context 0 -EINVAL, unallocated -ENOENT, never copied back.
    Call(1, FREE, free(0), want="-EINVAL"),
    Call(1, FREE, free(7), want="-ENOENT"),
    Call(1, FREE, free(2), back=free(2)),
    # alloc reuses the lowest free id; alloc_flags ignored, copied back.
    Call(1, ALLOC, alloc(alloc_flags=v2.IOMMU_ALLOC_identity),
         back={"ctx_no": 2, "alloc_flags": v2.IOMMU_ALLOC_identity}),
    # §5.6 reattach: not d1's device -ENODEV, unallocated -ENOENT, dying -EINVAL.
    Call(1, REATTACH, reattach(1, 0, 0, 0x10), want="-ENODEV"),
    Call(1, REATTACH, reattach(9, 0, 1, 0), want="-ENOENT"),
    Call(1, REATTACH, reattach(1, 0, 1, 0, pasid=77)),
    # A failed free: v7 leaves the context dying (no device may join it),
    # intended changes nothing (the device joins again, the next free is busy,
    # the device leaves, the free goes through: the same pool as v7's after).
    Call(1, FREE, free(1), want="-EBUSY"),
    Call(1, REATTACH, reattach(1, 0, 1, 0)),
    Call(1, REATTACH, reattach(0, 0, 1, 0)),
    Call(1, REATTACH, reattach(1, 0, 1, 0), want="-EINVAL", intended="0"),
    Call(1, MAP, map_(1, 0x10, 0x10, 2), back={"mapped": 2}),
    Call(1, FREE, free(1), intended="-EBUSY"),
    Call(1, REATTACH, reattach(0, 0, 1, 0), only="intended"),
    Call(1, FREE, free(1), only="intended"),
    # §5.7 map: context 0; mapped accumulates; a conflict (-EINVAL in the
    # header); no frame; paged out; 0 pages.
    Call(1, MAP, map_(0, 0x10, 0x10, 1), want="-EINVAL"),
    Call(1, MAP, map_(2, 0x10, 0x100, 4, mapped=5, pgsize=12345),
         back={"mapped": 9, "pgsize": 12345, "nr_pages": 4}),
    Call(1, MAP, map_(2, 0x20, 0xFE, 4), want="-EADDRINUSE", intended="-EINVAL",
         back={"mapped": 2, "dfn": 0xFE, "gfn": 0x20}),
    Call(1, MAP, map_(2, 0xFFFE, 0x1000, 4), want="-ENOENT", back={"mapped": 2}),
    Ctl("p2m_set", {"domid": 1, "gfn": 0x50, "type": "paged_out"}),
    Call(1, MAP, map_(2, 0x50, 0x2000, 1), want="-ENOENT"),
    Call(1, MAP, map_(2, 0x50, 0x2000, 1), want="-ENOENT"),
    Call(1, MAP, map_(2, 0x10, 0x3000, 0, mapped=4), back={"mapped": 4}),
    # §5.8 unmap: context 0; unmapped accumulates, -ENOENT at the first hole.
    Call(1, UNMAP, unmap(0, 0x100, 1), want="-EINVAL"),
    Call(1, UNMAP, unmap(2, 0xFE, 8, unmapped=1), want="-ENOENT",
         back={"unmapped": 1 + 6, "dfn": 0xFE, "nr_pages": 8}),
    # The arena: d3's 2 pages cannot hold a first 4-level map's tables.
    Call(3, ALLOC, alloc(), back={"ctx_no": 1}),
    Call(3, MAP, map_(1, 0, 0, 1), want="-ENOMEM", back={"mapped": 0}),
    # Initialised by its machine file: v7's init falls through into alloc
    # (whose root table the spent arena cannot give); intended -EACCES.
    Call(3, INIT, init(4, 4), want="-ENOMEM", intended="-EACCES"),
    Call(3, FREE, free(1)),
    Call(3, INIT, init(4, 4), intended="-EACCES"),
    # A first init of 0 contexts leaves the domain without a pool for ever
    # (v7: its fall-through's alloc is -ENOSPC; intended: init's 0, then -EACCES).
    Call(4, INIT, init(0, 4), want="-ENOSPC", intended="0"),
    Call(4, INIT, init(4, 4), want="-ENOSPC", intended="-EACCES"),
    Call(4, QUERY, CAPS, back={"max_ctx_no": 0}),
    # §5.9 remote_cmd: a guest -EPERM; nested -EINVAL; DOMID_SELF and missing
    # -ENOENT; IOMMU off -ENODEV (§9's choice); a null inner arg -EFAULT.
    Call(1, REMOTE, remote(0, QUERY), CAPS, want="-EPERM", inner_back=CAPS),
    Call(0, REMOTE, remote(1, REMOTE), bytes(16), want="-EINVAL"),
    Call(0, REMOTE, remote(v2.DOMID_SELF, v2.IOMMU_noop), NULL, want="-ENOENT"),
    Call(0, REMOTE, remote(9, v2.IOMMU_noop), NULL, want="-ENOENT"),
    Call(0, REMOTE, remote(2, v2.IOMMU_noop), NULL, want="-ENODEV"),
    Call(0, REMOTE, remote(1, QUERY), NULL, want="-EFAULT"),
    Call(0, REMOTE, remote(1, QUERY), CAPS, back={"domid": 1},
         inner_back={"max_ctx_no": 2}),
    # On the target: its gfns; a long run continues, each round re-reading
    # the inner struct as the last rewrote it (64 pages a round).
    Call(0, REMOTE, remote(1, MAP), map_(2, 0x30, 0x500, 3), inner_back={"mapped": 3}),
    Call(0, REMOTE, remote(1, UNMAP), unmap(2, 0x500, 3), inner_back={"unmapped": 3}),
    Call(0, REMOTE, remote(1, MAP), map_(2, 0x100, 0x600, 200),
         inner_back={"mapped": 200, "dfn": 0x600 + 64 * 3, "nr_pages": 200 - 64 * 3}),
    Call(1, UNMAP, unmap(2, 0x600, 200), back={"unmapped": 200}),
    Call(1, FREE, free(2)),
    # §6.1 the p2m as v7's get_paged_frame reads it: an MMIO gfn maps; a shared
    # gfn is unshared, then mapped; another domain's (foreign) frame is -EPERM
    # for a guest, after the pages before it.
    Call(1, ALLOC, alloc(), back={"ctx_no": 1}),
    Ctl("p2m_set", {"domid": 1, "gfn": 0x60, "type": "mmio"}),
    Ctl("p2m_set", {"domid": 1, "gfn": 0x61, "type": "shared"}),
    Ctl("p2m_set", {"domid": 1, "gfn": 0x62, "type": "foreign", "owner": 0,
                    "owner_gfn": 0x700}),
    Call(1, MAP, map_(1, 0x60, 0x60, 4), want="-EPERM", back={"mapped": 2}),
    Call(1, UNMAP, unmap(1, 0x60, 2), back={"unmapped": 2}),
    Call(1, FREE, free(1)),
]
