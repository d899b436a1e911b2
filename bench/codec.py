"""5. Frame decode and encode: the codec's struct path against the compiled
construct layouts it is proven identical to (tests/test_packing.py), on the
frames of a lookup_page call. Decoding a CALL with FrameDecoder also checks
every field and builds the Call and its regions; the bare rows compare the
two layouts alone."""
import time

from xenemu import abi, wire
from xenemu.packing import struct_of
from xenemu.wire import FrameDecoder, Region, encode_call, encode_reply

from .util import medians, row

GADDR = 0x7F00_0000_0000
CALL = encode_call(1, abi.HYPERVISOR_iommu_op, (GADDR,), (Region(GADDR, abi.encode_op(
    abi.IOMMUOP_lookup_page, 0, 0, "lookup_page", dfn=0x100)),))
REGION = Region(GADDR, abi.encode_op(abi.IOMMUOP_lookup_page, 0, 0, "lookup_page", dfn=0x100,
                                     gfn=0x100))
REPLY = encode_reply(1, 0, (REGION,))
_CALL_FIXED = struct_of(wire.CallFixed)
_REGION = struct_of(wire.RegionDescriptor)


def _per_s(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def _decode_codec():
    decoder = FrameDecoder.for_server()
    decoder.feed(CALL)
    return decoder.next_frame()


def _unpack_struct():
    fixed = _CALL_FIXED.unpack_from(CALL)
    desc = _REGION.unpack_from(CALL, wire.HDR_SIZE + wire.CALL_SIZE)
    return fixed, desc, CALL[wire.HDR_SIZE + wire.CALL_SIZE + wire.REGION_SIZE:]


def _reply_construct():
    return wire.ReplyFrame.build(dict(
        header=dict(magic=wire.MAGIC, version=wire.VERSION, type=wire.FRAME_REPLY,
                    length=len(REPLY), nr_regions=1, reserved=0, req_id=1),
        ret=0, regions=[dict(gaddr=REGION.gaddr, len=len(REGION.data), reserved=0,
                             data=REGION.data)]))


def run(smoke: bool) -> list[dict]:
    runs, n = (1, 200) if smoke else (5, 50_000)
    assert _reply_construct() == encode_reply(1, 0, (REGION,))
    rate = medians(runs, {
        "codec": lambda: _per_s(_decode_codec, n),
        "unpack": lambda: _per_s(_unpack_struct, n),
        "construct": lambda: _per_s(lambda: wire.CallFrame.parse(CALL), n),
        "encode": lambda: _per_s(lambda: encode_reply(1, 0, (REGION,)), n),
        "build": lambda: _per_s(_reply_construct, n),
    })
    return [
        row("decode CALL, FrameDecoder (ref: construct parse)", rate["codec"], "frames/s",
            rate["construct"]),
        row("decode CALL, struct.unpack alone (ref: construct parse)", rate["unpack"],
            "frames/s", rate["construct"]),
        row("encode REPLY, encode_reply (ref: construct build)", rate["encode"], "frames/s",
            rate["build"]),
    ]
