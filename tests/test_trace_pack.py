"""Trace records packed in C (cext/tracepack.c through xenemu.trace.pack):
byte for byte what msgpack writes for the same records, on random batches,
in the traces a recording daemon writes, and when a batch's write fails."""

from __future__ import annotations

import errno
import io
import lzma
import re

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

import scenarios
from support import ROOT, DaemonProcess, assert_replays
from xenemu.trace import pack
from xenemu.trace.pack import BatchPacker, as_map, pack_in_python
from xenemu.trace.reader import TraceReader
from xenemu.trace.records import (ControlRecord, HazardRecord, HypercallRecord, ProtocolRecord,
                                  RoundRecord)
from xenemu.trace.writer import TraceWriter

# Every encoding of each field: ints from fixint to 64 bits (and beyond what
# C takes: negative, over 64 bits, which msgpack packs), frames across the
# bin 8/16/32 edges, times as floats (and as ints, which msgpack packs as ints).
INT_EDGES = [0, 127, 128, 255, 256, 0x7FEF, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1]
U64 = st.one_of(st.sampled_from(INT_EDGES), st.integers(0, (1 << 64) - 1))
DOMID = st.one_of(st.sampled_from(INT_EDGES[:6]), st.integers(0, 0x7FEF))
ANY_INT = st.one_of(U64, st.integers(0, 70000), st.integers(-(1 << 63), -1))
EDGES = [0, 1, 255, 256, 65535, 65536, 70000]
FRAME = st.one_of(st.binary(max_size=300),
                  st.builds(lambda n, b: bytes([b]) * n, st.sampled_from(EDGES), st.integers(0, 255)))
TIME = st.one_of(st.floats(0.0, 1e12), st.floats(allow_nan=False), st.integers(0, 1 << 40))
SMALL_MAP = st.dictionaries(st.text(max_size=8), st.one_of(ANY_INT, st.text(max_size=8),
                                                           st.binary(max_size=8), st.booleans()),
                            max_size=4)

RECORD = st.one_of(
    st.builds(HypercallRecord, TIME, ANY_INT, FRAME, FRAME),
    st.builds(lambda t, d, req, c: HypercallRecord(t, d, req, None, c), TIME, ANY_INT, FRAME, U64),
    st.builds(RoundRecord, TIME, U64, st.one_of(st.none(), FRAME)),
    st.builds(ControlRecord, TIME, SMALL_MAP, SMALL_MAP),
    st.builds(ProtocolRecord, TIME, ANY_INT, FRAME, st.booleans(), U64, st.one_of(st.none(), FRAME)),
    st.builds(HazardRecord, TIME, ANY_INT, st.text(min_size=1, max_size=64), st.text(max_size=100)),
)

PACKER = BatchPacker()      # one for all examples: its buffer grows, shrinks and is reused


@settings(max_examples=300)
@given(st.lists(RECORD, max_size=40))
def test_a_random_batch_packs_to_msgpacks_bytes(batch):
    expected = b"".join(msgpack.packb(as_map(rec), use_bin_type=True) for rec in batch)
    assert bytes(PACKER.pack(batch)) == expected


@settings(max_examples=100)
@given(st.lists(st.one_of(
    st.builds(HypercallRecord, st.floats(0.0, 1e12), DOMID, FRAME, FRAME),
    st.builds(lambda t, d, req, c: HypercallRecord(t, d, req, None, c),
              st.floats(0.0, 1e12), DOMID, FRAME, U64),
    st.builds(RoundRecord, st.floats(0.0, 1e12), U64, st.one_of(st.none(), FRAME))),
    min_size=1, max_size=40))
def test_the_hot_kinds_are_packed_in_c_alone(batch):
    # What the engine makes of every call: msgpack is never asked.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pack, "as_map", lambda rec: pytest.fail(f"packed in Python: {rec}"))
        data = bytes(PACKER.pack(batch))
    assert data == pack_in_python(batch)


def test_the_buffer_gives_back_what_a_large_batch_took():
    packer = BatchPacker()
    big = [HypercallRecord(1.0, 0, bytes(1 << 20), bytes(1 << 20))] * 3
    assert len(packer.pack(big)) > 6 << 20
    assert packer._buf.cap > pack.KEEP
    packer.release()
    assert packer._buf.cap == pack.KEEP
    small = [RoundRecord(2.0, 1, None)]
    assert bytes(packer.pack(small)) == pack_in_python(small)


# -- the writer: one write per batch, whole records kept when one fails ---------------------

class FillingStream(io.BytesIO):
    """A file that takes `room` bytes, then fails as a full disk does: the
    write that reaches the end is short, the next one is refused."""

    def __init__(self, room: int):
        super().__init__()
        self.room, self.writes = room, 0

    def write(self, data) -> int:
        self.writes += 1
        left = self.room - self.tell()
        if left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(bytes(data)[:left])

    def close(self) -> None:
        self.closed_with = self.getvalue()
        super().close()


BATCH = [HypercallRecord(float(i), 0, bytes(40), bytes(60 + i)) for i in range(10)] + \
        [ControlRecord(11.0, {"op": "p2m_set"}, {"ok": True}), RoundRecord(12.0, 3, bytes(9))]


def test_a_batch_is_one_write():
    stream = FillingStream(1 << 20)
    writer = TraceWriter(stream, {"xenemu_trace": 1})
    writer.write_batch(BATCH)
    writer.write_batch(BATCH[:3])
    assert stream.writes == 3 and writer.records == len(BATCH) + 3
    header = msgpack.packb({"xenemu_trace": 1})
    assert stream.getvalue() == header + pack_in_python(BATCH + BATCH[:3])


def test_the_writer_keeps_no_large_batch_once_written():
    writer = TraceWriter(FillingStream(16 << 20), {})
    writer.write_batch([ControlRecord(1.0, {"op": "mem_write", "data": bytes(3 << 20)}, {})])
    assert writer.records == 1 and writer._packer._buf.cap == pack.KEEP


@pytest.mark.parametrize("cut", [0, 1, 150, 700, -3])
def test_a_batch_cut_by_a_full_disk_keeps_its_whole_records(cut):
    header = msgpack.packb({"xenemu_trace": 1})
    records = pack_in_python(BATCH)
    ends = [len(pack_in_python(BATCH[:n])) for n in range(len(BATCH) + 1)]
    room = len(header) + (cut if cut >= 0 else len(records) + cut)
    stream = FillingStream(room)
    stopped = []
    writer = TraceWriter(stream, {"xenemu_trace": 1},
                         on_error=lambda n, e: stopped.append((n, e.errno)))
    writer.write_batch(BATCH)
    whole = max(n for n, end in enumerate(ends) if len(header) + end <= room)
    assert stopped == [(whole, errno.ENOSPC)] and writer.records == whole
    assert stream.closed_with == header + records[:ends[whole]]
    writer.write_batch(BATCH)       # recording has stopped: dropped
    assert writer.records == whole


# -- the committed corpus, written by msgpack alone, and a recording daemon's trace ----------

CORPUS = sorted((ROOT / "tests" / "traces").glob("*.xt*"))


def records_of(path) -> tuple[bytes, list]:
    """The bytes of a trace's records (decompressed, after the header), and
    the records as the reader gives them."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rb") as f:
        data = f.read()
    unpacker = msgpack.Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    next(unpacker)
    with TraceReader(path) as reader:
        return data[unpacker.tell():], [rec for _, rec in reader]


@pytest.mark.parametrize("trace", CORPUS, ids=lambda p: p.name)
def test_the_corpus_packs_back_to_its_own_bytes(trace):
    # These traces were written before records were packed in C.
    data, records = records_of(trace)
    packer = BatchPacker()
    packed = b"".join(bytes(packer.pack(records[i:i + 128])) for i in range(0, len(records), 128))
    assert packed == data


@pytest.mark.parametrize("name", ["continued-free", "error-paths", "machine-changes"])
def test_a_recorded_trace_is_byte_for_byte_msgpacks(tmp_path, c_build, name):
    scenario, kwargs = scenarios.CORPUS[name]
    d = DaemonProcess(tmp_path)
    try:
        scenario(d, c_build, **kwargs)
    finally:
        assert d.stop() == 0, d.log()
    data, records = records_of(d.trace)
    assert data == pack_in_python(records)
    assert assert_replays(d.trace).records == len(records)
    # The daemon logs every hypercall it answers, at debug level, as before.
    answered = sum(isinstance(r, HypercallRecord) and r.rep is not None or
                   isinstance(r, RoundRecord) and r.rep is not None for r in records)
    logged = len(re.findall(r"^\S+ \S+ (?:\[[\w-]+\] )?d\d+: .* -> ", d.log(), re.M))
    assert logged == answered > 0, d.log()
