"""The daemon as users reach it: `xenemu serve`, its sockets, both clients."""

from __future__ import annotations

import os
import signal
import stat
import subprocess

import pytest
import trio

from support import raw_conn, read_until_closed
from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient, XenemuError, open_trio_client
from xenemu.errno import XenErrno
from xenemu.wire import FrameDecoder, Region, encode_call


def test_c_example_queries_capabilities(daemon, c_build):
    out = subprocess.run([str(c_build / "query_caps")], env={"XENEMU_SOCKET": daemon.socket(0)},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ret=0", "max_ctx_no=128", "max_nr_pages=256",
                           "max_iova_addr=0x7fffffffff"]


def test_c_example_in_a_non_hardware_domain_gets_eperm(daemon, c_build):
    result = subprocess.run([str(c_build / "query_caps")], env={"XENEMU_SOCKET": daemon.socket(1)},
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "ret=-1" in result.stdout and "max_ctx_no=0" in result.stdout


def test_python_client_noop_and_capabilities(daemon):
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.noop().ret == 0
        res = xen.query_capabilities()
    assert res.ret == 0
    assert (res.op.cap.max_ctx_no, res.op.cap.max_nr_pages, res.op.cap.max_iova_addr) == \
        (128, 256, (1 << 39) - 1)
    assert "[PV-IOMMU] d0: query_capabilities ctx=0 flags=0x0 -> 0 max_ctx_no=128 " \
        "max_nr_pages=256 max_iova_addr=0x7fffffffff" in daemon.log()


def test_query_leaves_bytes_it_does_not_own_as_sent(daemon):
    raw = bytearray(abi.encode_op(abi.IOMMUOP_query_capabilities))
    raw[10:12] = b"\xaa\xbb"             # padding between max_ctx_no and max_nr_pages
    raw[24:32] = b"\x11" * 8             # union bytes past the cap view
    with XenemuClient(daemon.socket(0)) as xen:
        res = xen.iommu_op(bytes(raw))
    assert res.raw[10:12] == b"\xaa\xbb" and res.raw[24:32] == b"\x11" * 8
    assert res.op.cap.max_ctx_no == 128


def test_non_hardware_domain_gets_eperm_for_every_sub_op(daemon):
    with XenemuClient(daemon.socket(1)) as xen:
        for subop in list(range(8)) + [200]:
            assert xen.iommu_op(abi.encode_op(subop)).ret == -XenErrno.EPERM
    assert "d1: noop ctx=0 flags=0x0 -> -EPERM (Non-hardware domain)" in daemon.log()


def test_unknown_sub_op_is_einval_and_struct_still_copied_back(daemon):
    raw = abi.encode_op(77, 3, 5)
    with XenemuClient(daemon.socket(0)) as xen:
        res = xen.iommu_op(raw)
    assert res.ret == -XenErrno.EINVAL and res.raw == raw


def test_short_guest_buffer_is_efault(daemon):
    with XenemuClient(daemon.socket(0)) as xen:
        reply = xen.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                              (Region(OP_GADDR, abi.encode_op(1)[:31]),))
        assert reply.ret == -XenErrno.EFAULT
        # A handle pointing past the region it names is as bad as a missing one.
        reply = xen.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR + 8,),
                              (Region(OP_GADDR, abi.encode_op(1)),))
        assert reply.ret == -XenErrno.EFAULT
        reply = xen.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,))
        assert reply.ret == -XenErrno.EFAULT and reply.regions == ()


def test_handle_inside_a_larger_region(daemon):
    """A struct in the middle of a guest buffer is read and written in place."""
    buf = b"\xee" * 40 + abi.encode_op(1) + b"\xee" * 8
    with XenemuClient(daemon.socket(0)) as xen:
        reply = xen.hypercall(abi.HYPERVISOR_iommu_op, (0x5000 + 40,), (Region(0x5000, buf),))
    data = reply.regions[0].data
    assert reply.ret == 0
    assert data[:40] == b"\xee" * 40 and data[72:] == b"\xee" * 8
    assert abi.decode_op(data[40:72]).cap.max_nr_pages == 256


def test_unknown_hypercall_is_enosys(daemon):
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.hypercall(9999).ret == -XenErrno.ENOSYS
        assert xen.hypercall(abi.HYPERVISOR_memory_op).ret == -XenErrno.ENOSYS
        assert xen.noop().ret == 0     # and the connection goes on


def test_pipelined_requests_on_one_connection(daemon):
    # More than fits in the socket buffers at once: the window must keep it flowing.
    ops = [abi.encode_op(i % 2) for i in range(5000)]
    with XenemuClient(daemon.socket(0)) as xen:
        results = xen.pipeline(ops)
    assert [r.ret for r in results] == [0] * 5000
    assert all(r.op.cap.max_nr_pages == 256 for r in results[1::2])


async def test_trio_client_many_tasks_one_connection(daemon):
    async with open_trio_client(daemon.socket(0)) as xen:
        results = []
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                async def one():
                    results.append(await xen.query_capabilities())
                nursery.start_soon(one)
    assert len(results) == 50 and all(r.op.cap.max_ctx_no == 128 for r in results)


@pytest.mark.parametrize("garbage,code", [
    (b"GET / HTTP/1.1\r\n\r\n", wire.ERR_BAD_MAGIC),
    (bytes(encode_call(1, 43)[:4]) + b"\x07\x00" + bytes(18), wire.ERR_BAD_VERSION),
    (encode_call(1, 43)[:8] + (wire.MAX_FRAME + 1).to_bytes(4, "little") + bytes(12),
     wire.ERR_BAD_LENGTH),
    (wire.encode_reply(1, 0), wire.ERR_BAD_TYPE),
])
def test_bad_frames_get_an_error_and_a_close_and_nothing_else_is_disturbed(daemon, garbage, code):
    with XenemuClient(daemon.socket(0)) as bystander:
        assert bystander.noop().ret == 0
        bad = raw_conn(daemon.socket(0))
        # A good call first: it is answered before the bad frame ends the connection.
        bad.sendall(encode_call(41, 43, (OP_GADDR,), (Region(OP_GADDR, abi.encode_op(0)),)) + garbage)
        frames = read_until_closed(bad)
        bad.close()
        assert [type(f).__name__ for f in frames] == ["Reply", "Error"]
        assert frames[0].req_id == 41 and frames[0].ret == 0
        assert frames[1].code == code and frames[1].message
        assert bystander.query_capabilities().ret == 0
    assert "protocol error" in daemon.log()


def test_truncated_frame_then_disconnect(daemon):
    frame = encode_call(1, 43, (OP_GADDR,), (Region(OP_GADDR, abi.encode_op(1)),))
    for cut in (3, 30, len(frame) - 1):
        s = raw_conn(daemon.socket(0))
        s.sendall(frame[:cut])
        s.close()
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.noop().ret == 0
    assert "TRUNCATED" in daemon.log()


def test_one_byte_writes(daemon):
    frame = encode_call(7, 43, (OP_GADDR,), (Region(OP_GADDR, abi.encode_op(1)),))
    s = raw_conn(daemon.socket(0))
    for i in range(len(frame)):
        s.send(frame[i:i + 1])
    decoder = FrameDecoder.for_client()
    while (reply := decoder.next_frame()) is None:
        decoder.feed(s.recv(4096))
    s.close()
    assert reply.req_id == 7 and reply.ret == 0


def test_client_sees_daemon_error_as_exception(daemon):
    with XenemuClient(daemon.socket(0)) as xen:
        xen.send_raw(b"\x00" * 24)
        error = xen.receive_frame()
        assert error.code == wire.ERR_BAD_MAGIC and "bad magic" in error.message
        with pytest.raises(XenemuError):
            xen.noop()


def test_sockets_are_owner_only(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket_dir).st_mode) == 0o700
    for domid in (0, 1):
        st = os.stat(daemon.socket(domid))
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_sigterm_and_sigint_stop_cleanly_and_remove_sockets(tmp_path):
    from support import DaemonProcess
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = DaemonProcess(tmp_path / sig.name)
        with XenemuClient(d.socket(0)) as xen:
            assert xen.noop().ret == 0
        assert d.stop(sig) == 0
        assert not any(p.exists() for p in d.sockets.values())


def test_a_second_daemon_does_not_steal_live_sockets(daemon, tmp_path):
    result = subprocess.run(
        [os.sys.executable, "-m", "xenemu.cli", "serve", "--socket-dir", str(daemon.socket_dir)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "in use" in result.stderr
    with XenemuClient(daemon.socket(0)) as xen:
        assert xen.noop().ret == 0


def test_stale_socket_from_a_killed_daemon_is_replaced(tmp_path):
    from support import DaemonProcess
    d = DaemonProcess(tmp_path)
    d.stop(signal.SIGKILL)
    assert os.path.exists(d.socket(0))
    d2 = DaemonProcess(tmp_path)
    with XenemuClient(d2.socket(0)) as xen:
        assert xen.noop().ret == 0
    assert d2.stop() == 0
