"""Both clients put exactly the ABI's bytes on the wire for every sub-op and
hand back exactly what the hypervisor wrote. Checked against a fake daemon
that records frames, so this holds whatever the hypervisor implements."""

from __future__ import annotations

import subprocess

import pytest
import trio

from support import ROOT, compile_c
from fakexen import FakeXen
from xenemu import abi
from xenemu.client import OP_GADDR, XenemuClient, XenemuError, open_trio_client
from xenemu.wire import Region

# (python helper call, the struct it must send)
CASES = [
    (lambda c: c.noop(), abi.encode_op(0)),
    (lambda c: c.query_capabilities(), abi.encode_op(1)),
    (lambda c: c.alloc_context(), abi.encode_op(2)),
    (lambda c: c.alloc_context(abi.IOMMU_CREATE_clone), abi.encode_op(2, 0, 1)),
    (lambda c: c.free_context(5, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT), abi.encode_op(3, 5, 1)),
    (lambda c: c.reattach_device(2, seg=1, bus=3, devfn=0x10),
     abi.encode_op(4, 2, 0, "reattach_device", dev=dict(seg=1, bus=3, devfn=0x10))),
    (lambda c: c.map_pages(1, gfn=0x100, dfn=0x200, nr_pages=16),
     abi.encode_op(5, 1, 3, "map_pages", gfn=0x100, dfn=0x200, nr_pages=16)),
    (lambda c: c.map_pages(1, 7, 8, 1, flags=abi.IOMMU_OP_readable),
     abi.encode_op(5, 1, 1, "map_pages", gfn=7, dfn=8, nr_pages=1)),
    (lambda c: c.unmap_pages(1, dfn=0x200, nr_pages=16),
     abi.encode_op(6, 1, 0, "unmap_pages", dfn=0x200, nr_pages=16)),
    (lambda c: c.lookup_page(1, dfn=0x200), abi.encode_op(7, 1, 0, "lookup_page", dfn=0x200)),
]


def scribble(call):
    """Answer like a hypervisor that wrote outputs: flip the last 8 bytes, return -subop."""
    region = call.regions[0]
    data = region.data[:24] + bytes(b ^ 0x5A for b in region.data[24:])
    return -(region.data[0] + 1), (Region(region.gaddr, data),)


@pytest.fixture
def fake(tmp_path):
    server = FakeXen(tmp_path / "fake.sock", scribble)
    yield server
    server.close()


@pytest.mark.parametrize("helper,expected", CASES)
def test_blocking_client_sends_the_abi_struct(fake, helper, expected):
    with XenemuClient(fake.path) as client:
        result = helper(client)
    (call,) = fake.calls
    assert call.op == abi.HYPERVISOR_iommu_op
    assert call.args == (OP_GADDR, 0, 0, 0, 0)
    assert call.regions == (Region(OP_GADDR, expected),)
    assert result.ret == -(expected[0] + 1)
    assert result.raw == scribble(call)[1][0].data


async def test_trio_client_every_sub_op_concurrently(fake):
    results = {}
    async with open_trio_client(fake.path) as client:
        async with trio.open_nursery() as nursery:
            for i, (helper, _) in enumerate(CASES):
                async def one(i=i, helper=helper):
                    results[i] = await helper(client)
                nursery.start_soon(one)
    sent = {call.regions[0].data for call in fake.calls}
    assert sent == {expected for _, expected in CASES}
    for i, (_, expected) in enumerate(CASES):
        assert results[i].ret == -(expected[0] + 1)
        assert results[i].raw[:24] == expected[:24]


def test_pipelined_replies_are_matched_to_requests(fake):
    ops = [expected for _, expected in CASES]
    with XenemuClient(fake.path) as client:
        results = client.pipeline(ops)
    assert [r.ret for r in results] == [-(op[0] + 1) for op in ops]
    assert len({c.req_id for c in fake.calls}) == len(ops)


def test_missing_socket_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("XENEMU_SOCKET", raising=False)
    with pytest.raises(XenemuError, match="XENEMU_SOCKET"):
        XenemuClient()
    with pytest.raises(XenemuError, match="cannot connect"):
        XenemuClient(tmp_path / "nothing.sock")


@pytest.fixture(scope="module")
def op_runner(c_build, tmp_path_factory):
    return compile_c(ROOT / "tests" / "c" / "op_runner.c",
                     tmp_path_factory.mktemp("c") / "op_runner", str(c_build / "libxenemu.a"))


def test_c_client_sends_the_struct_and_copies_back_the_reply(fake, op_runner):
    structs = [expected for _, expected in CASES] + [abi.encode_op(99)]
    out = subprocess.run([str(op_runner)], input="".join(r.hex() + "\n" for r in structs),
                         env={"XENEMU_SOCKET": fake.path}, capture_output=True, text=True,
                         check=True).stdout
    lines = [line.split() for line in out.splitlines()]
    assert len(fake.calls) == len(lines) == len(structs)
    for call, sent, (ret, back) in zip(fake.calls, structs, lines):
        region = call.regions[0]
        assert call.op == abi.HYPERVISOR_iommu_op
        assert call.args[0] == region.gaddr != 0      # the handle is the struct's address
        assert region.data == sent
        assert int(ret) == scribble(call)[0]
        assert bytes.fromhex(back) == scribble(call)[1][0].data   # copied back into the struct


def test_c_client_without_a_daemon_returns_enosys(op_runner, tmp_path):
    result = subprocess.run([str(op_runner)], input=abi.encode_op(1).hex() + "\n",
                            env={"XENEMU_SOCKET": str(tmp_path / "none")},
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert result.stdout.split() == ["-38"] and "connect" in result.stderr
