"""The wire protocol (abi/xenemu/wire.h, abi/PROTOCOL.md): frame layouts and a
sans-IO codec.

Nothing here does I/O. `FrameDecoder` takes bytes as they arrive and hands
out whole frames, or raises `ProtocolError` with what the peer got wrong; the
`encode_*` functions build frames. The daemon, the clients, trace replay and
the tests all share it.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

from construct import Array, Bytes, Int16ul, Int32ul, Int64sl, Int64ul, Struct, this

from .packing import struct_of

MAGIC = 0x554D4558  # b"XEMU"
VERSION = 1
MAX_FRAME = 1 << 20
MAX_REGIONS = 16
NR_ARGS = 5

FRAME_CALL = 1
FRAME_REPLY = 2
FRAME_ERROR = 3

ERR_BAD_MAGIC = 1
ERR_BAD_VERSION = 2
ERR_BAD_LENGTH = 3
ERR_BAD_TYPE = 4
ERR_MALFORMED = 5
ERR_TRUNCATED = 6
ERR_INTERNAL = 7
ERR_LIMIT = 8
ERR_TIMEOUT = 9
ERR_GONE = 10

ERROR_NAMES = {
    ERR_BAD_MAGIC: "BAD_MAGIC",
    ERR_BAD_VERSION: "BAD_VERSION",
    ERR_BAD_LENGTH: "BAD_LENGTH",
    ERR_BAD_TYPE: "BAD_TYPE",
    ERR_MALFORMED: "MALFORMED",
    ERR_TRUNCATED: "TRUNCATED",
    ERR_INTERNAL: "INTERNAL",
    ERR_LIMIT: "LIMIT",
    ERR_TIMEOUT: "TIMEOUT",
    ERR_GONE: "GONE",
}

HDR_SIZE = 24
CALL_SIZE = 48
REPLY_SIZE = 8
ERROR_SIZE = 8
REGION_SIZE = 16

HeaderLayout = Struct(
    "magic" / Int32ul,
    "version" / Int16ul,
    "type" / Int16ul,
    "length" / Int32ul,
    "nr_regions" / Int16ul,
    "reserved" / Int16ul,
    "req_id" / Int64ul,
)
Header = HeaderLayout.compile()

RegionDescriptorLayout = Struct(
    "gaddr" / Int64ul,
    "len" / Int32ul,
    "reserved" / Int32ul,
)
RegionDescriptor = RegionDescriptorLayout.compile()

RegionLayout = Struct(
    *RegionDescriptorLayout.subcons,
    "data" / Bytes(this.len),
)

# Frames whole (used to build them) and their fixed parts (used to parse,
# since the decoder walks the regions itself to check each against length).
CallFixed = Struct(
    "header" / HeaderLayout,
    "op" / Int64ul,
    "args" / Array(NR_ARGS, Int64ul),
).compile()

ReplyFixed = Struct(
    "header" / HeaderLayout,
    "ret" / Int64sl,
).compile()

CallFrame = Struct(
    "header" / HeaderLayout,
    "op" / Int64ul,
    "args" / Array(NR_ARGS, Int64ul),
    "regions" / Array(this.header.nr_regions, RegionLayout),
).compile()

ReplyFrame = Struct(
    "header" / HeaderLayout,
    "ret" / Int64sl,
    "regions" / Array(this.header.nr_regions, RegionLayout),
).compile()

ErrorFrame = Struct(
    "header" / HeaderLayout,
    "code" / Int32ul,
    "msg_len" / Int32ul,
    "message" / Bytes(this.msg_len),
).compile()

_BODY_SIZE = {FRAME_CALL: CALL_SIZE, FRAME_REPLY: REPLY_SIZE, FRAME_ERROR: ERROR_SIZE}

# The layouts above say what the bytes are; CALL and REPLY frames, every
# hypercall's, are read and written through their struct twins, because
# construct's parse of a frame would cost more than the hypercall it carries
# (tests/test_packing.py proves the two identical; the README's Performance
# section has the numbers). ERROR frames, rare, go through construct.
_HEADER = struct_of(HeaderLayout)
_CALL_FIXED = struct_of(CallFixed)      # header fields, op, args[5]
_REPLY_FIXED = struct_of(ReplyFixed)    # header fields, ret
_REGION = struct_of(RegionDescriptor)


# A decoded header, its fields named as in the layout.
_Hdr = namedtuple("_Hdr", [sub.name for sub in HeaderLayout.subcons])
_NHDR = len(_Hdr._fields)


class ProtocolError(Exception):
    """The peer broke the protocol; `code` is an ERR_* value.

    `req_id` is the id of the frame at fault when its header was readable.
    """

    def __init__(self, code: int, message: str, req_id: int = 0):
        super().__init__(f"{ERROR_NAMES.get(code, code)}: {message}")
        self.code = code
        self.message = message
        self.req_id = req_id


@dataclass(frozen=True, slots=True)
class Region:
    """Guest memory at `gaddr`, as sent or as written back."""
    gaddr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Call:
    req_id: int
    op: int
    args: tuple[int, ...]
    regions: tuple[Region, ...]
    # The frame as received (empty for a Call built in process): what a trace records.
    raw: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Reply:
    req_id: int
    ret: int
    regions: tuple[Region, ...]


@dataclass(frozen=True, slots=True)
class Error:
    req_id: int
    code: int
    message: str


def _regions_packed(regions) -> list[bytes]:
    """Each region's descriptor and data, in order."""
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions in a frame")
    out = []
    for r in regions:
        out += (_REGION.pack(r.gaddr, len(r.data), 0), r.data)
    return out


def _header(ftype: int, length: int, nr_regions: int, req_id: int) -> tuple:
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the {MAX_FRAME}-byte maximum")
    return MAGIC, VERSION, ftype, length, nr_regions, 0, req_id


def _regions_size(regions) -> int:
    return sum(REGION_SIZE + len(r.data) for r in regions)


def encode_call(req_id: int, op: int, args=(), regions=()) -> bytes:
    """A CALL frame; `args` is padded with zeros to five arguments."""
    args = tuple(args) + (0,) * (NR_ARGS - len(args))
    if len(args) != NR_ARGS:
        raise ValueError(f"a hypercall takes at most {NR_ARGS} arguments")
    length = HDR_SIZE + CALL_SIZE + _regions_size(regions)
    fixed = _CALL_FIXED.pack(*_header(FRAME_CALL, length, len(regions), req_id), op, *args)
    return b"".join([fixed, *_regions_packed(regions)])


def encode_reply(req_id: int, ret: int, regions=()) -> bytes:
    length = HDR_SIZE + REPLY_SIZE + _regions_size(regions)
    fixed = _REPLY_FIXED.pack(*_header(FRAME_REPLY, length, len(regions), req_id), ret)
    return b"".join([fixed, *_regions_packed(regions)])


def encode_error(req_id: int, code: int, message: str) -> bytes:
    text = message.encode("utf-8")[:4096]
    length = HDR_SIZE + ERROR_SIZE + len(text)
    header = dict(zip(_Hdr._fields, _header(FRAME_ERROR, length, 0, req_id)))
    return ErrorFrame.build(dict(header=header, code=code, msg_len=len(text), message=text))


# A frame longer than this leaves the decoder's buffer as soon as it is handed out.
_COMPACT_AFTER = 64 * 1024


class FrameDecoder:
    """Turns a byte stream into frames of the types this side accepts.

    feed() bytes as they arrive, then call next_frame() until it returns None
    (a partial frame stays buffered). A protocol error raises ProtocolError;
    after that the stream is out of step and the connection must be closed.
    At end of stream, call close(): it raises TRUNCATED if a frame was cut off.
    """

    def __init__(self, accept: frozenset[int], max_frame: int = MAX_FRAME):
        self._accept = accept
        self._max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self.taken = 0      # frames handed out: a change means the next frame has begun

    @classmethod
    def for_server(cls) -> FrameDecoder:
        return cls(frozenset({FRAME_CALL}))

    @classmethod
    def for_client(cls) -> FrameDecoder:
        return cls(frozenset({FRAME_REPLY, FRAME_ERROR}))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf) - self._pos

    @property
    def pending_req_id(self) -> int:
        """The req_id of the first frame not yet handed out, once its header
        is in (0 before): what a TIMEOUT or GONE about it carries."""
        if self.buffered < HDR_SIZE:
            return 0
        return int.from_bytes(self._buf[self._pos + 16:self._pos + HDR_SIZE], "little")

    @property
    def pending_length(self) -> int:
        """The length the next frame's header declares, once it is in (0 before)."""
        if self.buffered < HDR_SIZE:
            return 0
        return int.from_bytes(self._buf[self._pos + 8:self._pos + 12], "little")

    def feed(self, data: bytes) -> None:
        self._buf += data

    def offending(self) -> bytes:
        """After a ProtocolError: the bytes of the frame at fault (its whole
        length when the header could be read and it has arrived, else what
        is buffered), so a trace can replay the error."""
        rest = bytes(self._buf[self._pos:])
        if len(rest) >= HDR_SIZE:
            length = int.from_bytes(rest[8:12], "little")
            if HDR_SIZE <= length <= len(rest):
                return rest[:length]
        return rest

    def close(self) -> None:
        if self.buffered:
            raise ProtocolError(ERR_TRUNCATED,
                                f"stream ended {self.buffered} bytes into a frame")

    def next_frame(self) -> Call | Reply | Error | None:
        if self.buffered < HDR_SIZE:
            self._check_prefix()
            self._compact()
            return None
        hdr = _Hdr._make(_HEADER.unpack_from(self._buf, self._pos))
        self._check_header(hdr)
        if self.buffered < hdr.length:
            self._compact()
            return None
        start = self._pos
        with memoryview(self._buf) as view:     # one copy, not a bytearray slice and a bytes
            raw = bytes(view[start:start + hdr.length])
        frame = self._decode(hdr, raw)
        self._pos += hdr.length  # only once decoded: a bad frame stays for offending()
        self.taken += 1
        if hdr.length > _COMPACT_AFTER:
            self._compact()
        return frame

    def unread(self) -> tuple[bytearray, int]:
        """The buffer and where its bytes not yet handed out begin, for a
        reader of whole frames in place (the fast path: it must not keep
        either past its call, and tells skip() what it took)."""
        return self._buf, self._pos

    def skip(self, nbytes: int, frames: int) -> None:
        """`frames` whole frames of `nbytes` at the front, taken by a reader
        in place, leave the buffer as if handed out."""
        self._pos += nbytes
        self.taken += frames
        if self._pos == len(self._buf) or nbytes > _COMPACT_AFTER:
            self._compact()

    def whole_frame(self, raw: bytes) -> Call | Reply | Error:
        """raw, which must be exactly one whole frame, decoded with the checks
        next_frame makes (a trace's recorded frames): without the stream's
        buffer, as each record holds one frame. ProtocolError otherwise."""
        if len(raw) < HDR_SIZE:
            raise ProtocolError(ERR_TRUNCATED, f"{len(raw)} bytes, not a whole frame header")
        hdr = _Hdr._make(_HEADER.unpack_from(raw, 0))
        self._check_header(hdr)
        if hdr.length != len(raw):
            raise ProtocolError(ERR_TRUNCATED, f"the header says {hdr.length} bytes, "
                                               f"{len(raw)} are there")
        self.taken += 1
        return self._decode(hdr, bytes(raw))

    def _compact(self) -> None:
        """Drop the bytes of frames handed out: once no whole frame is left (the
        replies may then wait long on a client slow to read), or at once for a
        big frame; not after each small one (a copy of the rest each time)."""
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def __iter__(self):
        while (frame := self.next_frame()) is not None:
            yield frame

    def _check_prefix(self) -> None:
        # Reject a wrong magic as soon as its bytes are in, not when 24 have come.
        have = bytes(self._buf[self._pos:self._pos + 4])
        if have != MAGIC.to_bytes(4, "little")[:len(have)]:
            raise ProtocolError(ERR_BAD_MAGIC, f"bad magic {have.hex()}, expected 58454d55 ('XEMU')")

    def _check_header(self, hdr) -> None:
        if hdr.magic != MAGIC:
            raise ProtocolError(ERR_BAD_MAGIC, f"bad magic {hdr.magic:#010x}, expected {MAGIC:#010x}")
        if hdr.version != VERSION:
            raise ProtocolError(ERR_BAD_VERSION,
                                f"wire version {hdr.version} not supported (this side speaks {VERSION})",
                                hdr.req_id)
        if hdr.type not in self._accept:
            raise ProtocolError(ERR_BAD_TYPE, f"frame type {hdr.type} not accepted here", hdr.req_id)
        minimum = HDR_SIZE + _BODY_SIZE[hdr.type]
        if not minimum <= hdr.length <= self._max_frame:
            raise ProtocolError(ERR_BAD_LENGTH,
                                f"frame length {hdr.length} outside {minimum}..{self._max_frame}",
                                hdr.req_id)
        if hdr.reserved:
            raise ProtocolError(ERR_MALFORMED, "reserved header field is not zero", hdr.req_id)
        if hdr.type == FRAME_ERROR and hdr.nr_regions:
            raise ProtocolError(ERR_MALFORMED, "an error frame carries no regions", hdr.req_id)
        if hdr.nr_regions > MAX_REGIONS:
            raise ProtocolError(ERR_MALFORMED,
                                f"{hdr.nr_regions} regions, at most {MAX_REGIONS}", hdr.req_id)

    def _decode(self, hdr, raw: bytes):
        # The header says how long the frame is; the body must fill it exactly.
        body_end = HDR_SIZE + _BODY_SIZE[hdr.type]
        if hdr.type == FRAME_ERROR:
            msg_len = int.from_bytes(raw[body_end - 4:body_end], "little")
            if body_end + msg_len != hdr.length:
                raise ProtocolError(ERR_MALFORMED, "error message length does not match the frame",
                                    hdr.req_id)
            f = ErrorFrame.parse(raw)
            return Error(hdr.req_id, f.code, f.message.decode("utf-8", "replace"))
        regions = self._walk_regions(hdr, raw, body_end)
        if hdr.type == FRAME_CALL:
            f = _CALL_FIXED.unpack_from(raw)
            return Call(hdr.req_id, f[_NHDR], f[_NHDR + 1:], regions, raw)
        return Reply(hdr.req_id, _REPLY_FIXED.unpack_from(raw)[_NHDR], regions)

    @staticmethod
    def _walk_regions(hdr, raw: bytes, offset: int) -> tuple[Region, ...]:
        regions = []
        for i in range(hdr.nr_regions):
            if offset + REGION_SIZE > hdr.length:
                raise ProtocolError(ERR_MALFORMED, f"region {i} descriptor runs past the frame",
                                    hdr.req_id)
            gaddr, size, reserved = _REGION.unpack_from(raw, offset)
            if reserved:
                raise ProtocolError(ERR_MALFORMED, f"region {i} reserved field is not zero",
                                    hdr.req_id)
            offset += REGION_SIZE
            if offset + size > hdr.length:
                raise ProtocolError(ERR_MALFORMED,
                                    f"region {i} of {size} bytes runs past the frame", hdr.req_id)
            if gaddr + size > 1 << 64:
                raise ProtocolError(ERR_MALFORMED, f"region {i} wraps the address space", hdr.req_id)
            regions.append(Region(gaddr, raw[offset:offset + size]))
            offset += size
        if offset != hdr.length:
            raise ProtocolError(ERR_MALFORMED,
                                f"{hdr.length - offset} stray bytes after the last region", hdr.req_id)
        if len(regions) > 1:
            _check_disjoint(regions, hdr.req_id)
        return tuple(regions)


def _check_disjoint(regions: list[Region], req_id: int) -> None:
    """Two regions sharing a byte would give one guest address two contents
    (and which one a hypercall reads, and which the caller copies back last,
    would decide the outcome): refused. Empty regions hold no byte."""
    spans = sorted((r.gaddr, r.gaddr + len(r.data), i) for i, r in enumerate(regions) if r.data)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ProtocolError(ERR_MALFORMED, f"regions {min(i, j)} and {max(i, j)} overlap",
                                req_id)
