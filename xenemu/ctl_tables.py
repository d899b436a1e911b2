"""How `xenemu ctl` shows a control reply: rich tables a person reads at a
glance, or JSON for scripts (`--json`).

Each op whose reply is structured has one function here, registered with
@shows("op"), returning the renderables to print; any other op's reply is
shown as key: value lines. A new op's table is one such function.
`table()` and `console()` are the house style of a table on the terminal
(`xenemu top`'s frames and `make bench`'s table use them too).
"""

from __future__ import annotations

import json
from array import array
from typing import Callable

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .runs import mapping_runs

Renderer = Callable[[dict], RenderableType]
RENDERERS: dict[str, Renderer] = {}


def shows(op: str) -> Callable[[Renderer], Renderer]:
    def register(fn: Renderer) -> Renderer:
        RENDERERS[op] = fn
        return fn
    return register


def render(op: str, reply: dict) -> RenderableType:
    """The reply of op (its results, "ok" removed) as a person reads it."""
    return RENDERERS.get(op, key_values)(reply)


def to_json(reply: dict) -> str:
    """`--json`: the reply as the control socket sent it, "ok" removed, with
    bytes as lowercase hex strings (JSON has no bytes)."""
    return json.dumps(reply, default=_json_bytes, indent=2)


def _json_bytes(value):
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} in a control reply")


def console() -> Console:
    """rich's Console on stdout: at least 160 columns when stdout is not a
    terminal (a pipe, a file), so that wide tables keep one row per line.
    Text is shown as it is: a domain named "[/b]" or ":x:" is not markup."""
    plain = dict(markup=False, emoji=False, highlight=False)
    out = Console(**plain)
    return out if out.is_terminal else Console(width=max(out.width, 160), **plain)


def table(*columns: str, title: str | None = None) -> Table:
    """A plain table; a column named ">name" is right-aligned (numbers)."""
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", title_style="bold",
              pad_edge=False, show_edge=False)
    for name in columns:
        right = name.startswith(">")
        t.add_column(name[1:] if right else name, justify="right" if right else "left",
                     no_wrap=right)
    return t


def stack(*parts: RenderableType) -> RenderableType:
    """Renderables one below the other, a blank line between two."""
    spaced = [parts[0]]
    for part in parts[1:]:
        spaced += [Text(""), part]
    return Group(*spaced)


def show(value) -> str:
    if isinstance(value, bytes):
        if not value:
            return "-"
        return value.hex() if len(value) <= 64 else f"{value[:64].hex()}... ({len(value)} bytes)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return str(value)


def key_values(reply: dict) -> RenderableType:
    """`key: value` lines, as `xenemu ctl` printed every reply before tables."""
    return Text("\n".join(f"{key}: {show(value)}" for key, value in reply.items()) or "ok")


def pages(used: int, limit: int) -> str:
    """'3 / 64' or '3' when there is no limit (0)."""
    return f"{used} / {limit}" if limit else str(used)


# -- the ops --------------------------------------------------------------------------------

@shows("info")
def info(reply: dict) -> RenderableType:
    io = reply["iommu"]
    parts = [key_values({"PV-IOMMU ABI": f"revision {reply['abi']['pv_iommu_revision']}",
                         "IOMMU address width": f"{io['address_width']} bits",
                         "max IOVA": f"{io['max_iova_addr']:#x}",
                         "IOTLB entries": io["iotlb_entries"],
                         "machine frames": f"{io['frames_used']} used of {io['machine_frames']}"}),
             domains_table(reply["domains"])]
    if reply["quarantined"]:
        parts.append(Text("quarantined: " + ", ".join(reply["quarantined"])))
    if reply["hazards"]:
        hazards = table("hazard", ">calls", title="hazards met")
        for name, n in reply["hazards"].items():
            hazards.add_row(name, str(n))
        parts.append(hazards)
    return stack(*parts)


def domains_table(domains: list[dict]) -> RenderableType:
    t = table(">domid", "name", "role", "iommu", ">memory pages", ">contexts", "allocated",
              ">table pages", ">ctx 0 tables", title="domains")
    devices = table("device", ">domid", ">ctx", title="devices")
    for d in domains:
        t.add_row(str(d["domid"]), d["name"], "hardware" if d["hardware"] else "guest",
                  show(d["iommu"]), str(d["memory_pages"]), str(d["contexts"]),
                  " ".join(map(str, d["allocated"])) or "-",
                  pages(**d["table_pages"]), pages(**d["default_table_pages"]))
        for sbdf, ctx in d["devices"].items():
            devices.add_row(sbdf, str(d["domid"]), str(ctx))
    return stack(t, devices) if devices.row_count else t


@shows("domain_create")
def domain_create(reply: dict) -> RenderableType:
    rest = {k: v for k, v in reply.items() if k != "domain"}
    return stack(domains_table([reply["domain"]]), *([key_values(rest)] if rest else []))


@shows("contexts")
def contexts(reply: dict) -> RenderableType:
    t = table(">ctx", ">hw id", "state", "devices", ">mapped pages", ">table pages",
              ">IOTLB hits", ">misses", ">invalidations")
    for c in reply["contexts"]:
        io = c["iotlb"]
        state = "dying" if c["dying"] else "live"
        users = ", ".join(c["devices"]) or "-"
        if "nested" in c:       # issue 19's extension: stage 1 in guest memory
            n = c["nested"]
            state += f", nested over ctx {n['stage2']}, stage 1 at gfn {n['pgtable_gfn']:#x}"
            users = ", ".join(f"{sbdf} pasid {p}" for sbdf, p in n["pasids"]) or "-"
        t.add_row(str(c["ctx_no"]), str(c["hw_id"]), state, users, str(c["mapped"]),
                  str(c["table_pages"]), str(io["hits"]), str(io["misses"]),
                  str(io["invalidations"]))
    return t


def faults_table(faults: list[dict], title: str | None = None) -> Table:
    t = table("device", "access", ">address", "kind", title=title)
    for f in faults:
        t.add_row(f["sbdf"], "write" if f["write"] else "read", f"{f['addr']:#x}", f["kind"])
    return t


@shows("faults")
def faults(reply: dict) -> RenderableType:
    if not reply["faults"]:
        return Text("no faults")
    parts = [faults_table(reply["faults"])]
    if reply["overflow"]:
        parts.append(Text("(fault log overflowed: later faults were dropped)"))
    return stack(*parts)


@shows("counters")
def counters(reply: dict) -> RenderableType:
    t = table("IOTLB", ">count")
    for name, n in reply["iotlb"].items():
        t.add_row(name, str(n))
    return t


@shows("check")
def check(reply: dict) -> RenderableType:
    return Text("consistent" if reply["consistent"] else "\n".join(reply["problems"]))


@shows("dma")
def dma(reply: dict) -> RenderableType:
    fault = reply["fault"]
    # page_request only when the DMA waits on one (nested machines' I/O page faults)
    parts = [key_values({k: v for k, v in reply.items()
                         if k != "fault" and (k != "page_request" or v is not None)})]
    if fault:
        parts.append(faults_table([fault]))
    return stack(*parts)


@shows("dump")
def dump(reply: dict) -> RenderableType:
    gfns = array("Q")
    gfns.frombytes(reply["gfns"])
    names = {1: "r-", 2: "-w", 3: "rw"}
    dfn0 = reply["dfn"]
    t = table("dfn", "gfn", "perm", ">pages")
    for off, gfn, n, perm in mapping_runs(gfns, reply["perms"]):
        t.add_row(f"{dfn0 + off:#x}..{dfn0 + off + n - 1:#x}", f"{gfn:#x}..{gfn + n - 1:#x}",
                  names[perm], str(n))
    return t if t.row_count else Text("nothing mapped in that range")


@shows("reserved_regions")
def reserved_regions(reply: dict) -> RenderableType:
    """A device's reserved regions, as virtio-iommu's probe reports them."""
    t = table(">start", ">end", "kind", title=reply["sbdf"])
    for r in reply["regions"]:
        t.add_row(f"{r['start']:#012x}", f"{r['end']:#012x}", r["kind"])
    return t


@shows("stats")
def stats(reply: dict) -> RenderableType:
    from .top import frame      # `xenemu top`'s frame, without rates
    return frame(None, reply)


def _bit_runs(bitmap: bytes, count: int):
    """(first, length) of each run of set bits among the first `count`
    (bit i is byte i // 8, bit i % 8), byte by byte over zero bytes."""
    i, start = 0, None
    while i < count:
        if start is None and not bitmap[i >> 3] and not i & 7:
            i += 8
            continue
        on = bitmap[i >> 3] >> (i & 7) & 1
        if on and start is None:
            start = i
        elif not on and start is not None:
            yield start, i - start
            start = None
        i += 1
    if start is not None:
        yield start, min(i, count) - start


@shows("read_dirty")
def read_dirty(reply: dict) -> RenderableType:
    """Runs of pages dirty (and of pages accessed), as `dump` shows mappings."""
    dfn0, count = reply["dfn"], reply["count"]
    t = table("dfn", ">pages", "bits", title=f"{reply['nr_dirty']} of {count} pages dirty")
    for name in ("dirty", "accessed"):
        for off, n in _bit_runs(reply[name], count):
            t.add_row(f"{dfn0 + off:#x}..{dfn0 + off + n - 1:#x}", str(n),
                      "D" if name == "dirty" else "A")
    return t if t.row_count else Text(f"no page of {count} accessed or dirty")
