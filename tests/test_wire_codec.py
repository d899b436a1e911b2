"""The sans-IO frame codec: round trips, arbitrary input, and every bad frame."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import disjoint_regions
from xenemu import wire
from xenemu.wire import (Call, Error, FrameDecoder, ProtocolError, Region, Reply, encode_call,
                         encode_error, encode_reply)

u64 = st.integers(0, (1 << 64) - 1)
regions = disjoint_regions(max_size=4, max_len=64)
calls = st.builds(Call, u64, u64, st.tuples(u64, u64, u64, u64, u64), regions.map(tuple))
replies = st.builds(Reply, u64, st.integers(-(1 << 63), (1 << 63) - 1), regions.map(tuple))
errors = st.builds(Error, u64, st.integers(0, (1 << 32) - 1), st.text(max_size=40))


def encode(frame) -> bytes:
    if isinstance(frame, Call):
        return encode_call(frame.req_id, frame.op, frame.args, frame.regions)
    if isinstance(frame, Reply):
        return encode_reply(frame.req_id, frame.ret, frame.regions)
    return encode_error(frame.req_id, frame.code, frame.message)


def decode_all(decoder: FrameDecoder, data: bytes, chunk: int | None = None) -> list:
    out = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        out.extend(decoder)
    decoder.close()
    return out


@given(st.lists(calls, max_size=5), st.integers(1, 80))
def test_calls_round_trip_whatever_the_chunking(frames, chunk):
    data = b"".join(encode(f) for f in frames)
    assert decode_all(FrameDecoder.for_server(), data, chunk) == frames


@given(st.lists(st.one_of(replies, errors), max_size=5))
def test_replies_and_errors_round_trip(frames):
    data = b"".join(encode(f) for f in frames)
    assert decode_all(FrameDecoder.for_client(), data) == frames


@settings(max_examples=500, deadline=None)   # a loaded CI machine: no per-example timing
@given(st.binary(max_size=300), st.integers(1, 50))
def test_arbitrary_bytes_raise_only_protocol_errors(data, chunk):
    for decoder in (FrameDecoder.for_server(), FrameDecoder.for_client()):
        try:
            decode_all(decoder, data, chunk)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(calls, st.integers(0, 200), st.integers(0, 255))
def test_a_corrupted_frame_decodes_or_fails_cleanly(call, position, value):
    data = bytearray(encode(call))
    data[position % len(data)] = value
    try:
        decode_all(FrameDecoder.for_server(), bytes(data))
    except ProtocolError:
        pass


def good_call() -> bytes:
    return encode_call(5, 43, (0x1000,), (Region(0x1000, bytes(32)),))


def expect_error(data: bytes, code: int, decoder: FrameDecoder | None = None) -> ProtocolError:
    decoder = decoder or FrameDecoder.for_server()
    with pytest.raises(ProtocolError) as info:
        decode_all(decoder, data)
    assert info.value.code == code, info.value
    return info.value


def test_bad_magic_is_caught_before_a_whole_header_arrives():
    decoder = FrameDecoder.for_server()
    decoder.feed(b"GET ")
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == wire.ERR_BAD_MAGIC


def test_bad_version():
    data = bytearray(good_call())
    data[4] = 2
    err = expect_error(bytes(data), wire.ERR_BAD_VERSION)
    assert err.req_id == 5 and "version 2" in err.message


def test_length_too_small_and_too_large():
    data = bytearray(good_call())
    data[8:12] = (wire.HDR_SIZE + 10).to_bytes(4, "little")
    expect_error(bytes(data), wire.ERR_BAD_LENGTH)
    data[8:12] = (wire.MAX_FRAME + 1).to_bytes(4, "little")
    err = expect_error(bytes(data), wire.ERR_BAD_LENGTH)
    assert str(wire.MAX_FRAME) in err.message


def test_oversize_length_is_refused_without_buffering_it():
    data = bytearray(good_call())
    data[8:12] = (0xFFFFFFFF).to_bytes(4, "little")
    decoder = FrameDecoder.for_server()
    decoder.feed(bytes(data[:wire.HDR_SIZE]))
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == wire.ERR_BAD_LENGTH


def test_reply_type_from_a_client_is_refused():
    expect_error(encode_reply(1, 0), wire.ERR_BAD_TYPE)
    expect_error(good_call(), wire.ERR_BAD_TYPE, FrameDecoder.for_client())


def test_regions_that_do_not_add_up():
    data = bytearray(good_call())
    data[12:14] = (2).to_bytes(2, "little")        # claims a second region
    expect_error(bytes(data), wire.ERR_MALFORMED)
    data = bytearray(good_call())
    off = wire.HDR_SIZE + wire.CALL_SIZE
    data[off + 8:off + 12] = (31).to_bytes(4, "little")  # one stray byte after the region
    err = expect_error(bytes(data), wire.ERR_MALFORMED)
    assert "stray" in err.message
    data[off + 8:off + 12] = (64).to_bytes(4, "little")  # region runs past the frame
    expect_error(bytes(data), wire.ERR_MALFORMED)


def test_reserved_fields_must_be_zero():
    data = bytearray(good_call())
    data[14] = 1
    expect_error(bytes(data), wire.ERR_MALFORMED)
    data = bytearray(good_call())
    data[wire.HDR_SIZE + wire.CALL_SIZE + 12] = 1
    expect_error(bytes(data), wire.ERR_MALFORMED)


def test_too_many_regions():
    data = bytearray(encode_call(1, 43, (), [Region(i, b"") for i in range(wire.MAX_REGIONS)]))
    data[12:14] = (wire.MAX_REGIONS + 1).to_bytes(2, "little")
    expect_error(bytes(data), wire.ERR_MALFORMED)
    with pytest.raises(ValueError):
        encode_call(1, 43, (), [Region(i, b"") for i in range(wire.MAX_REGIONS + 1)])


def test_truncated_stream():
    err = expect_error(good_call()[:-1], wire.ERR_TRUNCATED)
    assert "ended" in err.message


def test_partial_frame_waits_for_more():
    data = good_call()
    decoder = FrameDecoder.for_server()
    decoder.feed(data[:50])
    assert decoder.next_frame() is None
    assert decoder.buffered == 50
    decoder.feed(data[50:])
    assert decoder.next_frame().req_id == 5
    assert decoder.buffered == 0


def test_encoders_refuse_what_the_wire_cannot_carry():
    with pytest.raises(ValueError):
        encode_call(1, 43, (0,) * 6)
    with pytest.raises(ValueError):
        encode_call(1, 43, (), (Region(0, bytes(wire.MAX_FRAME)),))
