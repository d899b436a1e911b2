"""The PV-IOMMU ABI (revision 1, seed 001): constants and byte layouts.

Mirrors abi/xen/pv-iommu.h. `struct pv_iommu_op` is 32 bytes: an 8-byte
head (subop_id, ctx_no, flags) and a 24-byte anonymous union. The union is
kept as raw bytes in `OpHead.payload` and read or written through one view
per sub-op; every view covers all 24 bytes (unused bytes as `_pad*` fields),
so parse -> change a field -> build rewrites only that field and returns every
other byte as the guest sent it, which is what Xen's copy_to_guest of the
whole struct does.
"""

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct, Container

from .packing import struct_of

PV_IOMMU_REVISION = 1   # the interface revision this module describes

HYPERVISOR_memory_op = 12
HYPERVISOR_iommu_op = 43

IOMMU_DEFAULT_CONTEXT = 0

# Sub-operations (IOMMUOP_*); 0 is the reference code's no-op.
IOMMUOP_noop = 0
IOMMUOP_query_capabilities = 1
IOMMUOP_alloc_context = 2
IOMMUOP_free_context = 3
IOMMUOP_reattach_device = 4
IOMMUOP_map_pages = 5
IOMMUOP_unmap_pages = 6
IOMMUOP_lookup_page = 7

SUBOP_NAMES = {
    IOMMUOP_noop: "noop",
    IOMMUOP_query_capabilities: "query_capabilities",
    IOMMUOP_alloc_context: "alloc_context",
    IOMMUOP_free_context: "free_context",
    IOMMUOP_reattach_device: "reattach_device",
    IOMMUOP_map_pages: "map_pages",
    IOMMUOP_unmap_pages: "unmap_pages",
    IOMMUOP_lookup_page: "lookup_page",
}

# Flags.
IOMMU_CREATE_clone = 1 << 0                # alloc_context (ignored by the reference code)
IOMMU_OP_readable = 1 << 0                 # map_pages
IOMMU_OP_writeable = 1 << 1                # map_pages
IOMMU_TEARDOWN_REATTACH_DEFAULT = 1 << 0   # free_context
IOMMU_TEARDOWN_PREEMPT = 1 << 1            # internal to Xen (always set by free_context_op)

OP_SIZE = 32
PAYLOAD_OFFSET = 8
PAYLOAD_SIZE = 24

OpHead = Struct(
    "subop_id" / Int16ul,
    "ctx_no" / Int16ul,
    "flags" / Int32ul,
    "payload" / Bytes(PAYLOAD_SIZE),
).compile()

PciDevice = Struct(
    "seg" / Int16ul,
    "bus" / Int8ul,
    "devfn" / Int8ul,
)

# One view of the union per sub-op, each exactly PAYLOAD_SIZE bytes.
MapPages = Struct(
    "gfn" / Int64ul,
    "dfn" / Int64ul,
    "nr_pages" / Int32ul,
    "mapped" / Int32ul,
).compile()

UnmapPages = Struct(
    "dfn" / Int64ul,
    "nr_pages" / Int32ul,
    "unmapped" / Int32ul,
    "_pad" / Bytes(8),
).compile()

ReattachDevice = Struct(
    "dev" / PciDevice,
    "_pad" / Bytes(20),
).compile()

LookupPage = Struct(
    "gfn" / Int64ul,
    "dfn" / Int64ul,
    "_pad" / Bytes(8),
).compile()

Capabilities = Struct(
    "max_ctx_no" / Int16ul,
    "_pad0" / Bytes(2),
    "max_nr_pages" / Int32ul,
    "max_iova_addr" / Int64ul,
    "_pad1" / Bytes(8),
).compile()

# What every hypercall parses and builds goes through struct twins of the
# layouts above (xenemu.packing), field for field in the same order.
OP_HEAD = struct_of(OpHead)             # subop_id, ctx_no, flags, payload
MAP_PAGES = struct_of(MapPages)         # gfn, dfn, nr_pages, mapped
UNMAP_PAGES = struct_of(UnmapPages)     # dfn, nr_pages, unmapped, _pad
LOOKUP_PAGE = struct_of(LookupPage)     # gfn, dfn, _pad
CAPABILITIES = struct_of(Capabilities)  # max_ctx_no, _pad0, max_nr_pages, max_iova_addr, _pad1

# Union member name (as in the C header) -> its view.
VIEWS = {
    "map_pages": MapPages,
    "unmap_pages": UnmapPages,
    "reattach_device": ReattachDevice,
    "lookup_page": LookupPage,
    "cap": Capabilities,
}

# The view a sub-op reads and writes.
SUBOP_VIEW = {
    IOMMUOP_query_capabilities: "cap",
    IOMMUOP_reattach_device: "reattach_device",
    IOMMUOP_map_pages: "map_pages",
    IOMMUOP_unmap_pages: "unmap_pages",
    IOMMUOP_lookup_page: "lookup_page",
}

def encode_op(subop_id: int, ctx_no: int = 0, flags: int = 0, view: str | None = None,
              **fields) -> bytes:
    """Build a 32-byte pv_iommu_op; `view` names the union member `fields` fill.

    Fields left out are zero, e.g. encode_op(IOMMUOP_map_pages, 1, 3,
    "map_pages", gfn=0x10, dfn=0x20, nr_pages=4).
    """
    payload = bytes(PAYLOAD_SIZE)
    if view is not None:
        layout = VIEWS[view]
        values = layout.parse(payload)  # all fields zero
        unknown = set(fields) - set(values) - {"_io"}
        if unknown:
            raise TypeError(f"{view} has no field(s) {sorted(unknown)}")
        if "dev" in fields:
            values.dev.update(fields.pop("dev"))
        values.update(fields)
        payload = layout.build(values)
    elif fields:
        raise TypeError("fields given without naming the union member (view=...)")
    return OpHead.build(dict(subop_id=subop_id, ctx_no=ctx_no, flags=flags, payload=payload))


def decode_op(raw: bytes) -> Container:
    """Every view of a 32-byte pv_iommu_op, as a C reader of the union sees it.

    Returns a Container with subop_id, ctx_no, flags and one member per union
    view (map_pages, unmap_pages, reattach_device, lookup_page, cap).
    """
    if len(raw) != OP_SIZE:
        raise ValueError(f"pv_iommu_op is {OP_SIZE} bytes, got {len(raw)}")
    head = OpHead.parse(raw)
    op = Container(subop_id=head.subop_id, ctx_no=head.ctx_no, flags=head.flags)
    for name, layout in VIEWS.items():
        op[name] = layout.parse(head.payload)
    return op


# The union fields each sub-op reads and the fields it writes back, for the
# debug log, `xenemu trace show` and replay reports.
SUBOP_INPUTS = {
    IOMMUOP_map_pages: ("gfn", "dfn", "nr_pages"),
    IOMMUOP_unmap_pages: ("dfn", "nr_pages"),
    IOMMUOP_lookup_page: ("dfn",),
    IOMMUOP_reattach_device: ("dev",),
}
SUBOP_OUTPUTS = {
    IOMMUOP_query_capabilities: ("max_ctx_no", "max_nr_pages", "max_iova_addr"),
    IOMMUOP_alloc_context: ("ctx_no",),
    IOMMUOP_map_pages: ("mapped",),
    IOMMUOP_unmap_pages: ("unmapped",),
    IOMMUOP_lookup_page: ("gfn",),
}
_ADDRESS_FIELDS = {"gfn", "dfn", "max_iova_addr"}   # shown in hex; counts in decimal


def format_dev(dev) -> str:
    return f"{dev.seg:04x}:{dev.bus:02x}:{dev.devfn >> 3:02x}.{dev.devfn & 7}"


def op_field_values(head, names) -> list[tuple[str, str]]:
    """(name, text) of the named fields of a parsed OpHead: head fields
    (ctx_no, flags) or fields of the sub-op's union view."""
    view = SUBOP_VIEW.get(head.subop_id)
    values = VIEWS[view].parse(head.payload) if view else {}
    out = []
    for name in names:
        value = getattr(head, name) if name in ("subop_id", "ctx_no", "flags") else values[name]
        if name == "dev":
            text = format_dev(value)
        elif name in _ADDRESS_FIELDS or name == "flags":
            text = f"{value:#x}"
        else:
            text = str(value)
        out.append((name, text))
    return out


def format_op_fields(head, names) -> str:
    return "".join(f" {k}={v}" for k, v in op_field_values(head, names))


def subop_name(subop_id: int) -> str:
    return SUBOP_NAMES.get(subop_id, f"sub-op {subop_id}")
