"""Fuzz targets: functions of one byte string that must never fail.

`frames` feeds bytes to the wire decoders in chunks the input chooses: the
only error allowed is ProtocolError, and every frame decoded must encode back
to the same bytes. `hypercalls` reads the input as a program for a small
in-process machine: PV-IOMMU calls (any struct, steered towards the numbers
that reach deep paths), control requests (DMA, p2m changes, device moves)
and hostile guest memory; every return must be a value Xen could return for
that sub-op, and after the program the invariant check must hold.

`make fuzz` runs them under atheris (coverage-guided, corpus in
tests/fuzz/corpus/); `make test` replays the corpus and runs a short
hypothesis search (tests/test_fuzz.py).
"""

from __future__ import annotations

from targets_nested import nested
from xenemu import abi, wire
from xenemu.engine import Engine
from xenemu.errno import XenErrno as E
from xenemu.hypercalls.iommu_op_v1 import IOMMU_OP
from xenemu.hypervisor import Hypervisor
from xenemu.machine import DomainConfig, MachineConfig
from xenemu.pci import parse_sbdf
from xenemu.p2m import P2mType
from xenemu.trace.text import decode_reply

# -- frames ----------------------------------------------------------------------


def frames(data: bytes) -> None:
    chunk = 1 + (data[0] if data else 0) % 64
    for make, encode in ((wire.FrameDecoder.for_server, _encode_call),
                         (wire.FrameDecoder.for_client, _encode_reply_or_error)):
        decoder = make()
        pos = 0
        try:
            while pos < len(data):
                decoder.feed(data[pos:pos + chunk])
                pos += chunk
                for frame in decoder:
                    _check_round_trip(frame, encode(frame))
            decoder.close()
        except wire.ProtocolError as e:
            assert e.code in wire.ERROR_NAMES, e.code
            _check_offending(make, decoder.offending(), e)


def _check_offending(make, bad: bytes, error: wire.ProtocolError) -> None:
    """The bytes a trace records for a refused frame must be refused alone
    with the same code, or replay could not check them."""
    fresh = make()
    fresh.feed(bad)
    try:
        for _ in fresh:
            pass
        fresh.close()
    except wire.ProtocolError as again:
        assert again.code == error.code, (again, error)
        return
    raise AssertionError(f"{error} not raised again by its offending bytes {bad.hex()}")


def _encode_call(frame) -> bytes:
    return wire.encode_call(frame.req_id, frame.op, frame.args, frame.regions)


def _encode_reply_or_error(frame) -> bytes:
    if isinstance(frame, wire.Error):
        return b""   # the message was decoded with 'replace': bytes may differ
    return wire.encode_reply(frame.req_id, frame.ret, frame.regions)


def _check_round_trip(frame, again: bytes) -> None:
    if isinstance(frame, wire.Call):
        assert again == frame.raw, "a decoded CALL does not encode back to its bytes"
    elif again:
        decoder = wire.FrameDecoder.for_client()
        decoder.feed(again)
        assert decoder.next_frame() == frame


# -- hypercalls ---------------------------------------------------------------------

DEVICES = ("0000:00:02.0", "0000:00:03.0", "0000:01:00.0")
D0_PAGES = 8 * 256
GADDR = 0x7F0000000000
STEP = 34          # one instruction: selector, domain byte, 32-byte struct

# What each sub-op may return, from pv-iommu.c (and -EFAULT, -EPERM for all).
ALLOWED = {
    abi.IOMMUOP_noop: {0},
    abi.IOMMUOP_query_capabilities: {0},
    abi.IOMMUOP_alloc_context: {0, -E.ENOSPC, -E.EINVAL, -E.ENOMEM},
    abi.IOMMUOP_free_context: {0, -E.EINVAL, -E.ENOENT, -E.EBUSY},
    abi.IOMMUOP_reattach_device: {0, -E.ENOENT, -E.EINVAL},
    abi.IOMMUOP_map_pages: {0, -E.E2BIG, -E.EINVAL, -E.EPERM, -E.EIO, -E.EADDRINUSE, -E.ERANGE,
                            -E.ENOMEM},
    abi.IOMMUOP_unmap_pages: {0, -E.E2BIG, -E.EINVAL, -E.ENOENT},
    abi.IOMMUOP_lookup_page: {0, -E.EINVAL, -E.ENOENT},
}


def small_machine() -> MachineConfig:
    return MachineConfig(memory_mib=64, check_iotlb=True, page_in_delay_ms=2, domains=(
        DomainConfig(domid=0, hardware=True, memory_mib=8, contexts=4,
                     devices=tuple(parse_sbdf(s) for s in DEVICES[:2])),
        DomainConfig(domid=1, memory_mib=4, contexts=2, devices=(parse_sbdf(DEVICES[2]),))))


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hypercalls(data: bytes) -> None:
    clock = _Clock()
    hv = Hypervisor(small_machine(), clock=clock)
    engine = Engine(hv)
    for pos in range(0, len(data) - STEP + 1, STEP):
        sel, dom, raw = data[pos], data[pos + 1], bytearray(data[pos + 2:pos + STEP])
        clock.now += (dom & 0x0F) / 1000
        kind = sel & 7
        if kind < 5:
            _iommu_op(engine, sel, dom, raw)
        elif kind == 5:
            _dma(engine, dom, raw)
        elif kind == 6:
            gfn = int.from_bytes(raw[:4], "little") % (D0_PAGES + 16)
            ptype = list(P2mType)[raw[4] % len(P2mType)]
            engine.control({"op": "p2m_set", "domid": dom & 1, "gfn": gfn, "type": ptype.value})
        elif raw[3] & 3 == 3:
            # fail-nth: a table page or page reference fails soon. (A failed
            # flush leaves stale IOTLB entries by design: tests/test_fail_nth.py.)
            engine.control({"op": "fail_nth", "nth": raw[4] % 48 + 1,
                            "sites": [("table", "ref")[raw[5] & 1]] if raw[5] & 2
                            else ["table", "ref"]})
        else:
            sbdf = DEVICES[raw[0] % len(DEVICES)]
            if raw[1] & 1:
                engine.control({"op": "device_deassign", "sbdf": sbdf})
            else:
                engine.control({"op": "device_assign", "sbdf": sbdf, "domid": raw[2] & 1})
    problems = hv.check_invariants()
    assert not problems, problems


def _iommu_op(engine: Engine, sel: int, dom: int, raw: bytearray) -> None:
    # Steer most inputs to the numbers that reach deep paths; the high bits
    # of the selector let some through untouched.
    if not sel & 0x80:
        raw[0:2] = (raw[0] % 9).to_bytes(2, "little")           # subop_id
        raw[2:4] = (raw[2] % 6).to_bytes(2, "little")           # ctx_no
        raw[4:8] = (raw[4] & 3).to_bytes(4, "little")           # flags
    if not sel & 0x40:
        raw[8:16] = (int.from_bytes(raw[8:16], "little") % (D0_PAGES + 64)).to_bytes(8, "little")
        raw[16:24] = (int.from_bytes(raw[16:24], "little") % 0x800).to_bytes(8, "little")
        raw[24:28] = (int.from_bytes(raw[24:28], "little") % 300).to_bytes(4, "little")
    region = bytes(raw)
    if sel & 0x20:
        region = region[:sel % 32]                  # a buffer too short: -EFAULT
    call = wire.Call(1, abi.HYPERVISOR_iommu_op, (GADDR, 0, 0, 0, 0),
                     (wire.Region(GADDR, region),))
    domid = dom >> 7
    reply = decode_reply(engine.complete(domid, call))
    subop = int.from_bytes(raw[:2], "little")
    allowed = ALLOWED.get(subop, {-E.EINVAL}) | {-E.EPERM, -E.EFAULT}
    assert reply.ret in allowed, (IOMMU_OP.subop_name(subop), reply.ret)
    assert len(reply.regions[0].data) == len(region)
    if reply.ret != -E.EFAULT and len(region) == abi.OP_SIZE:
        # Xen copies back the whole struct; only the sub-op's output bytes may change.
        _only_outputs_changed(subop, region, reply.regions[0].data, reply.ret)


_OUTPUT_BYTES = {
    abi.IOMMUOP_query_capabilities: range(8, 24),
    abi.IOMMUOP_alloc_context: range(2, 4),
    abi.IOMMUOP_map_pages: range(28, 32),
    abi.IOMMUOP_unmap_pages: range(20, 24),
    abi.IOMMUOP_lookup_page: range(8, 16),
}


def _only_outputs_changed(subop: int, before: bytes, after: bytes, ret: int) -> None:
    outputs = _OUTPUT_BYTES.get(subop, range(0))
    for i, (x, y) in enumerate(zip(before, after)):
        assert x == y or i in outputs, f"{IOMMU_OP.subop_name(subop)} changed byte {i} (ret {ret})"


def _dma(engine: Engine, dom: int, raw: bytearray) -> None:
    sbdf = DEVICES[raw[0] % len(DEVICES)]
    addr = int.from_bytes(raw[1:9], "little")
    if not dom & 0x80:
        addr %= 0x900 << 12
    req = {"op": "dma", "sbdf": sbdf, "addr": addr}
    if raw[9] & 1:
        req |= {"write": True, "data": bytes(raw[10:10 + raw[10] % 22])}
    else:
        req |= {"length": int.from_bytes(raw[10:12], "little") % 9000}
    reply, _ = engine.control(req)
    assert reply["ok"] or "no device" in reply["error"], reply


TARGETS = {"frames": frames, "hypercalls": hypercalls, "nested": nested}
