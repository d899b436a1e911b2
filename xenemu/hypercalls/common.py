"""What every hypercall ABI module declares, and the code that reads it.

A hypercall ABI (one revision of one hypercall) is a `Hypercall`: where its
argument is found in a call (which argument register holds the guest handle,
how many bytes the struct there is, which of its fields holds the sub-op
number) and one table of `SubOp` rows: number, name, layout, inputs,
outputs, handler. The hypercall entry (`Hypercall.execute`), the debug log
line, `xenemu trace show`, replay's divergence report, `trace stats`' page
counts and the Python client's helpers read these rows, so a new sub-op is
one row and one handler in its ABI module.

Revision 1 has one struct with the sub-op inside it (`subop_field`);
revision 2 has the sub-op in an argument register (`subop_arg`) and a struct
per sub-op (the row's `size`, `reads`, `copy_back`): `execute_subop` is its
entry, `describe` reads either kind of recorded call.

A handler validates, acts, fills the outputs and returns a status >= 0, or
raises HypercallError(errno, why): the failure carries its reason to the log
line. A handler may change the struct before it raises (partial counts of a
map or unmap), and the struct goes back to the guest whatever the status.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from construct import Construct, Container

from ..errno import XenErrno, XenError, result_name
from ..hw import Status
from ..hw._hwlib import lib

HYPERVISOR_memory_op = 12
HYPERVISOR_iommu_op = 43


# count_call's stand-in for a hypercall or sub-op number no row names.
UNKNOWN = -1


def count_call(d, hypercall: int, subop: int, ret: int) -> None:
    """Count a finished call in d.calls: `hypercall` and `subop` are numbers
    of rows that exist (else UNKNOWN) and every success counts as 0, so a
    guest sending made-up numbers cannot grow the dict."""
    key = (hypercall, subop, ret if ret < 0 else 0)
    calls = d.calls
    calls[key] = calls.get(key, 0) + 1


class HypercallError(XenError):
    """A sub-op fails with -errno; `why` is the reason its log line gives.
    (A XenError from the Xen model below, e.g. the context layer, fails it
    the same way.)"""


# A client helper's parameter: a name, or (name, default).
Param = str | tuple[str, int]


@dataclass(frozen=True)
class SubOp:
    """One row of a hypercall's sub-op table."""
    number: int
    name: str
    handler: Callable          # handler(hv, d, op) -> status >= 0, or raises HypercallError
    view: str | None = None    # the union member the sub-op reads and writes (as in the C header)
    layout: Construct | None = None   # that member's construct layout, all of the union's bytes
    inputs: tuple[str, ...] = ()      # fields it reads, shown in the log line and traces
    outputs: tuple[str, ...] = ()     # fields it writes back
    outputs_on_error: bool = False    # outputs are partial results a failure reports too
    pages: str | None = None          # the output counting pages done (`trace stats`)
    params: tuple[Param, ...] = ()    # the client helper's parameters, in order
    # A sub-op of its own struct (Hypercall.subop_arg set: revision 2):
    size: int = 0                     # bytes at the handle (0: none, arg untouched)
    reads: bool = True                # the entry copies them in first (else the handler does)
    copy_back: bool = True            # the entry copies them back, on every path
    # cext/fastpath.c answers its common cases (the handler's docstring says
    # which) without Python: the fast path takes no sub-op whose row says not.
    fast: bool = False


@dataclass(slots=True)
class SubopCall:
    """A sub-op's struct as a handler of a per-sub-op ABI sees it (revision
    2): its raw bytes (None before they are copied in), which the handler
    reads and rewrites through its row's layout, and where they came from,
    for the handler that reaches further (remote_cmd)."""
    subop: int
    payload: bytes | None
    handle: int = 0
    mem: Any = None
    nested: bool = False      # run by remote_cmd on its target
    # The struct as the guest gave it, where the handler copies it in
    # itself (a row with `reads` off): the log line shows its inputs.
    given: bytes | None = None

    def pack(self) -> bytes:
        return self.payload

    def copy_in(self, size: int) -> bytes | None:
        """copy_from_guest of the struct at the handle, for a handler that
        reads it itself: the payload, or None (the handler's -EFAULT)."""
        self.payload = self.given = self.mem.copy_from_guest(self.handle, size)
        return self.payload


@dataclass(frozen=True)
class Hypercall:
    """One hypercall ABI: how its argument is found, and its sub-ops."""
    number: int
    name: str
    revision: int
    subops: dict[int, SubOp]
    op_type: Any              # the struct as handlers see it: .unpack(raw), .pack(), .payload
    head_names: tuple[str, ...]   # the struct's fields outside the union, in order
    head_text: str            # how the log line and traces show them, a str.format
    handle_arg: int = 0       # the argument register holding the guest handle
    size: int = 0             # bytes of the struct the handle points to
    subop_field: str = "subop_id"   # the head field holding the sub-op number
    log: logging.Logger = logging.getLogger("xenemu.hypercalls")
    log_prefix: str = ""
    gate: Callable | None = None   # gate(hv, d) raises HypercallError before any sub-op
    hex_fields: frozenset = frozenset({"flags"})   # shown in hex; counts in decimal
    formatters: dict = field(default_factory=dict)  # field name -> text of its value
    # Revision 2: the argument register holding the sub-op number; each
    # sub-op then has a struct of its own at the handle (SubOp.size).
    subop_arg: int | None = None
    unknown_errno: int = XenErrno.EINVAL    # what an unknown sub-op gets
    # Names of sub-ops the ABI defines and xenemu does not serve (log lines).
    unknown_names: dict[int, str] = field(default_factory=dict)
    # The bits of the sub-op register the call reads (Xen's `unsigned int`:
    # 32; memory_op's `unsigned long cmd`: 64), and those that pick the row
    # (memory_op: MEMOP_CMD_MASK; the rest, its extent, is the handler's).
    subop_reg_mask: int = 0xFFFFFFFF
    row_mask: int = 0xFFFFFFFF
    # Why a map run stopped, as the handlers answer it: hw.Status ->
    # (errno, reason with the dfn's place), for the fast path's log lines too.
    map_stop: dict = field(default_factory=dict)

    def fast_why(self, why: int, hw_status: int, at: int) -> str:
        """The reason of a failure the fast path answered (fastpath.h's
        enum fp_why, the hardware's status, the dfn), in the handlers' words."""
        if why == lib.FP_WHY_MAP_STOP:
            return self.map_stop[Status(hw_status)][1].format(at)
        return f"no mapping at dfn {at:#x}"

    @property
    def fast_subops(self) -> int:
        """The sub-ops the fast path may take, as fp_machine.subops' bits."""
        return sum(1 << row.number for row in self.subops.values() if row.fast)

    # -- the call ------------------------------------------------------------

    def execute(self, hv, d, args: tuple[int, ...], mem) -> int:
        """The hypercall entry: copy the struct in, run its sub-op, log, copy
        it back whatever the status (a continuation re-reads it instead)."""
        if self.subop_arg is not None:
            number, handle = (_arg(args, self.subop_arg) & self.subop_reg_mask,
                              _arg(args, self.handle_arg))
            return self.execute_subop(hv, d, number, handle, mem)
        handle = args[self.handle_arg]
        raw = mem.copy_from_guest(handle, self.size)
        if raw is None:
            self.log.debug(self.log_prefix + "d%d: copy_from_guest of %#x failed -> -EFAULT",
                           d.domid, handle)
            count_call(d, self.number, UNKNOWN, -XenErrno.EFAULT)
            return -XenErrno.EFAULT
        op = self.op_type.unpack(raw)
        ret, why = self.run(hv, d, op)
        if ret == -XenErrno.ERESTART:
            return ret
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(self.log_prefix + "d%d: %s", d.domid, self.log_text(op, ret, why))
        if not mem.copy_to_guest(handle, op.pack()):
            ret = -XenErrno.EFAULT
        number = getattr(op, self.subop_field) & self.row_mask
        count_call(d, self.number, number if number in self.subops else UNKNOWN, ret)
        return ret

    def execute_subop(self, hv, d, number: int, handle: int, mem, nested: bool = False) -> int:
        """A per-sub-op ABI's entry (revision 2's do_iommu_subop), also run
        by remote_cmd on its target (`nested`: the gate is the caller's
        alone): the row's struct is copied in if it reads one, the handler
        runs, and the struct goes back on every path, -ERESTART included
        (the continuation re-reads it as the handler rewrote it)."""
        row = self.subops.get(number & self.row_mask)
        op = SubopCall(number, None, handle, mem, nested)
        debug = self.log.isEnabledFor(logging.DEBUG)
        inputs = None
        try:
            if self.gate is not None and not nested:
                self.gate(hv, d)
            if row is None:
                raise HypercallError(self.unknown_errno, "xenemu does not implement it"
                                     if number & self.row_mask in self.unknown_names
                                     else f"unknown sub-op {number}")
            if row.size and row.reads:
                op.payload = mem.copy_from_guest(handle, row.size)
                if op.payload is None:
                    raise HypercallError(XenErrno.EFAULT, f"copy_from_guest of {handle:#x} failed")
            elif row.size and row.copy_back:
                op.payload = bytes(row.size)     # written, never read
            # The log shows the inputs as the guest gave them (init's
            # fall-through writes over its own).
            inputs = self.format_fields(op, row.inputs) if debug else ""
            ret, why = row.handler(hv, d, op), ""
        except XenError as e:
            ret, why = -e.errno, e.why
        if row is not None and row.copy_back and op.payload is not None:
            if not mem.copy_to_guest(handle, op.payload):
                ret, why = -XenErrno.EFAULT, f"copy_to_guest of {handle:#x} failed"
        if ret != -XenErrno.ERESTART:
            if debug:
                if op.given is not None and row is not None:
                    inputs = self.format_fields(SubopCall(number, op.given), row.inputs)
                self.log.debug(self.log_prefix + "d%d: %s", d.domid,
                               self.log_text(op, ret, why, inputs))
            if not nested:      # remote_cmd's own call counts, not what it runs
                count_call(d, self.number, row.number if row is not None else UNKNOWN, ret)
        return ret

    def describe(self, args, regions):
        """The struct a recorded call names, as handlers see it, or None when
        the regions miss it."""
        if self.subop_arg is None:
            raw = self.find(args, regions)
            return self.op_type.unpack(raw) if raw is not None else None
        number, handle = (_arg(args, self.subop_arg) & self.subop_reg_mask,
                          _arg(args, self.handle_arg))
        row = self.subops.get(number & self.row_mask)
        size = row.size if row is not None else 0
        raw = _region_bytes(regions, handle, size) if size else b""
        return SubopCall(number, raw, handle) if raw is not None else None

    def run(self, hv, d, op) -> tuple[int, str]:
        """(status, why): the sub-op's dispatch, where failures are caught."""
        try:
            if self.gate is not None:
                self.gate(hv, d)
            number = getattr(op, self.subop_field)
            row = self.subops.get(number)
            if row is None:
                raise HypercallError(XenErrno.EINVAL, f"unknown sub-op {number}")
            return row.handler(hv, d, op), ""
        except XenError as e:
            return -e.errno, e.why

    def log_text(self, op, ret: int, why: str, inputs: str | None = None) -> str:
        """'query_capabilities ctx=0 flags=0x0 -> -EPERM (Non-hardware domain)'.
        `inputs`: their text as read, if the handler may have changed them."""
        row = self.row(op)
        if inputs is None:
            inputs = self.format_fields(op, row.inputs if row else ())
        shown = row is not None and (ret >= 0 or row.outputs_on_error)
        outputs = self.format_fields(op, row.outputs) if shown else ""
        reason = f" ({why})" if why and ret < 0 else ""
        return f"{self.request_text(op)}{inputs} -> {result_name(ret)}{outputs}{reason}"

    # -- reading a struct --------------------------------------------------------

    def row(self, op) -> SubOp | None:
        return self.subops.get(getattr(op, self.subop_field) & self.row_mask)

    def subop_name(self, number: int) -> str:
        row = self.subops.get(number & self.row_mask)
        if row:
            return row.name
        known = self.unknown_names.get(number & self.row_mask)
        return f"{known} ({number})" if known else f"sub-op {number}"

    def request_text(self, op) -> str:
        """'map_pages ctx=1 flags=0x3': the sub-op and the head's fields."""
        values = {n: getattr(op, n) for n in self.head_names}
        return f"{self.subop_name(getattr(op, self.subop_field))} " + \
            self.head_text.format(**values) if self.head_text else \
            self.subop_name(getattr(op, self.subop_field))

    def find(self, args, regions) -> bytes | None:
        """The struct a recorded call's handle points to, if a region holds it."""
        if len(args) <= self.handle_arg:
            return None
        return _region_bytes(regions, args[self.handle_arg], self.size)

    def view_fields(self, op) -> Container | dict:
        row = self.row(op)
        if row is None or row.layout is None or op.payload is None:
            return {}
        return row.layout.parse(op.payload)

    def field_values(self, op, names) -> list[tuple[str, str]]:
        """(name, text) of the named fields: head fields or the sub-op's view's."""
        values = self.view_fields(op)
        out = []
        for name in names:
            if name not in self.head_names and name not in values:
                continue        # a struct never copied in (-EFAULT)
            value = getattr(op, name) if name in self.head_names else values[name]
            if name in self.formatters:
                text = self.formatters[name](value)
            elif name in self.hex_fields:
                text = f"{value:#x}"
            else:
                text = str(value)
            out.append((name, text))
        return out

    def format_fields(self, op, names) -> str:
        return "".join(f" {k}={v}" for k, v in self.field_values(op, names))

    def all_fields(self, op) -> list[tuple[str, str]]:
        """The head and every named field of the sub-op's view (a reply's fields)."""
        names = [*self.head_names, *(k for k in self.view_fields(op) if not k.startswith("_"))]
        return self.field_values(op, names)


def _arg(args, i: int) -> int:
    return args[i] if i < len(args) else 0


def _region_bytes(regions, gaddr: int, size: int) -> bytes | None:
    """`size` bytes at gaddr if one region holds them all."""
    for r in regions:
        off = gaddr - r.gaddr
        if 0 <= off and off + size <= len(r.data):
            return bytes(r.data[off:off + size])
    return None


def client_helpers(abi: Hypercall, encode: Callable) -> type:
    """A mixin with one method per sub-op, named after it, taking the row's
    params: each builds the struct with `encode(row, **values)` and calls
    self.<hypercall name>(raw), or for a per-sub-op ABI (revision 2)
    self.<hypercall name>_subop(number, raw), which the client class supplies."""
    namespace = {}
    for row in abi.subops.values():
        namespace[row.name] = _helper(abi.name, row, encode, abi.subop_arg is not None)
    return type(f"{abi.name}_v{abi.revision}_helpers", (), namespace)


def _helper(call_name: str, row: SubOp, encode: Callable, per_subop: bool = False):
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for p in row.params:
        name, default = (p, inspect.Parameter.empty) if isinstance(p, str) else p
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=default))
    signature = inspect.Signature(params)

    def helper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        if per_subop:
            return getattr(self, call_name + "_subop")(row.number, encode(row, **values))
        return getattr(self, call_name)(encode(row, **values))

    helper.__name__ = helper.__qualname__ = row.name
    helper.__signature__ = signature
    helper.__doc__ = f"{call_name} {row.name}: returns an OpResult."
    return helper


# -- hazards -------------------------------------------------------------------------

@dataclass(frozen=True)
class Hazard:
    """A call the reference code would crash, hang or mislead Xen on, and
    what xenemu does instead. Each ABI module keeps one table of them."""
    name: str
    xen: str        # the Xen code that would fail, and how
    answer: str     # what xenemu answers instead
    code: str = "Xen v7"    # whose code: the revision's reference


def report_hazard(hv, d, h: Hazard, why: str) -> None:
    """A call on d met hazard h: one warning, its count for `ctl info`, and
    a trace record after the call's (`xenemu replay --fail-on-hazard`)."""
    logging.getLogger("xenemu.pv_iommu").warning(
        "[PV-IOMMU] d%d: HAZARD: %s: %s; %s would fail in %s; xenemu answers %s",
        d.domid, h.name, why, h.code, h.xen, h.answer)
    hv.note_hazard(d.domid, h.name, why)
