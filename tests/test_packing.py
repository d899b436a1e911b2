"""The struct fast paths are the construct layouts, byte for byte.

xenemu.packing derives a struct.Struct from each fixed layout; the codec
(xenemu.wire) and the hypercall handlers (xenemu.hypercalls, through
xenemu.abi) use those. Here both ways of reading and writing must agree on
arbitrary bytes, and the codec's frames must be what the documented
construct frame layouts build and parse."""

from __future__ import annotations

import pytest
from construct import ListContainer
from hypothesis import given
from hypothesis import strategies as st

from support import disjoint_regions
from xenemu import abi, wire
from xenemu.packing import struct_of
from xenemu.wire import FrameDecoder, encode_call, encode_reply

FIXED = {
    "header": wire.HeaderLayout, "region": wire.RegionDescriptor, "call": wire.CallFixed,
    "reply": wire.ReplyFixed, "op": abi.PvIommuOp, "map_pages": abi.MapPages,
    "unmap_pages": abi.UnmapPages, "lookup_page": abi.LookupPage, "cap": abi.Capabilities,
    "reattach_device": abi.ReattachDevice,
}


def flat(value) -> list:
    """A parsed construct value as the flat list of values a struct holds."""
    if isinstance(value, ListContainer):
        return [v for item in value for v in flat(item)]
    if isinstance(value, dict):
        return [v for k, item in value.items() if k != "_io" for v in flat(item)]
    return [value]


@pytest.mark.parametrize("name", FIXED)
@given(data=st.data())
def test_struct_twin_reads_and_writes_as_the_layout(name, data):
    layout = FIXED[name]
    raw = data.draw(st.binary(min_size=layout.sizeof(), max_size=layout.sizeof()))
    twin = struct_of(layout)
    parsed = layout.parse(raw)
    assert list(twin.unpack(raw)) == flat(parsed)
    assert twin.pack(*twin.unpack(raw)) == layout.build(parsed) == raw


def test_the_hot_path_uses_twins_of_the_documented_layouts():
    assert (abi.PV_IOMMU_OP.format, abi.MAP_PAGES.format, abi.UNMAP_PAGES.format,
            abi.LOOKUP_PAGE.format, abi.CAPABILITIES.format) == \
        tuple(struct_of(layout).format for layout in (abi.PvIommuOp, abi.MapPages, abi.UnmapPages,
                                                      abi.LookupPage, abi.Capabilities))


@pytest.mark.parametrize("layout", [wire.CallFrame, wire.ErrorFrame, wire.RegionLayout])
def test_layouts_of_variable_size_have_no_twin(layout):
    with pytest.raises(TypeError):
        struct_of(layout)


u64 = st.integers(0, (1 << 64) - 1)
regions = disjoint_regions(max_size=wire.MAX_REGIONS, max_len=48)


def _regions_built(regions) -> list[dict]:
    return [dict(gaddr=r.gaddr, len=len(r.data), reserved=0, data=r.data) for r in regions]


def _header(ftype: int, length: int, nr_regions: int, req_id: int) -> dict:
    return dict(magic=wire.MAGIC, version=wire.VERSION, type=ftype, length=length,
                nr_regions=nr_regions, reserved=0, req_id=req_id)


@given(u64, u64, st.tuples(u64, u64, u64, u64, u64), regions)
def test_call_frames_are_the_construct_layout(req_id, op, args, regs):
    frame = encode_call(req_id, op, args, regs)
    assert frame == wire.CallFrame.build(dict(
        header=_header(wire.FRAME_CALL, len(frame), len(regs), req_id), op=op, args=list(args),
        regions=_regions_built(regs)))
    parsed = wire.CallFrame.parse(frame)
    decoder = FrameDecoder.for_server()
    decoder.feed(frame)
    call = decoder.next_frame()
    assert (call.req_id, call.op, list(call.args)) == (parsed.header.req_id, parsed.op,
                                                       list(parsed.args))
    assert [(r.gaddr, r.data) for r in call.regions] == \
        [(r.gaddr, r.data) for r in parsed.regions]


@given(u64, st.integers(-(1 << 63), (1 << 63) - 1), regions)
def test_reply_frames_are_the_construct_layout(req_id, ret, regs):
    frame = encode_reply(req_id, ret, regs)
    assert frame == wire.ReplyFrame.build(dict(
        header=_header(wire.FRAME_REPLY, len(frame), len(regs), req_id), ret=ret,
        regions=_regions_built(regs)))
    parsed = wire.ReplyFrame.parse(frame)
    decoder = FrameDecoder.for_client()
    decoder.feed(frame)
    reply = decoder.next_frame()
    assert (reply.req_id, reply.ret) == (parsed.header.req_id, parsed.ret)
    assert [(r.gaddr, r.data) for r in reply.regions] == \
        [(r.gaddr, r.data) for r in parsed.regions]
