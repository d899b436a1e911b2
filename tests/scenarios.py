"""Scenarios that drive a live daemon the way xenemu's users do. The tests run
them (and the `daemon` fixture replays what they recorded); `make traces`
records them into the committed corpus in tests/traces/.

Each takes a DaemonProcess and the build directory of the C clients, and
asserts the results a guest would check, so a corpus trace is known good
when it is recorded.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time

from xenemu import abi, wire
from xenemu.client import OP_GADDR, XenemuClient
from xenemu.errno import XenErrno as E

op = abi.encode_op
RW = abi.IOMMU_OP_readable | abi.IOMMU_OP_writeable
NIC = "0000:00:03.0"
NIC_DEVFN = 3 << 3


def linux_driver_session(d, build) -> None:
    """The Linux-driver-shaped program: probe, attach, chunked map, lookups, unmap, free."""
    proc = subprocess.run([str(build / "xen_iommu_driver"), "--pages", "600"],
                          env={"XENEMU_SOCKET": d.socket(0)}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Every sub-op and its error paths, in order; context 1 is allocated by the first.
ERROR_PATHS = [
    (op(2), 0),
    (op(0), 0),
    (op(1), 0),
    (op(99), -E.EINVAL),
    (op(5, 1, RW, "map_pages", gfn=0x100, dfn=0x200, nr_pages=16), 0),
    (op(5, 1, RW, "map_pages", gfn=0x100, dfn=0x20F, nr_pages=4), -E.EADDRINUSE),
    (op(5, 1, RW, "map_pages", gfn=0x1, dfn=0x1, nr_pages=257), -E.E2BIG),
    (op(5, 9, RW, "map_pages", gfn=0x1, dfn=0x1, nr_pages=1), -E.EINVAL),
    (op(5, 1, 0, "map_pages", gfn=0x1, dfn=0x1, nr_pages=1), -E.EINVAL),
    (op(5, 1, RW, "map_pages", gfn=0x3FFFE, dfn=0x900, nr_pages=4), -E.EPERM),
    (op(5, 1, RW, "map_pages", gfn=0x10, dfn=(1 << 27) - 1, nr_pages=2), -E.ERANGE),
    (op(7, 1, 0, "lookup_page", dfn=0x205), 0),
    (op(7, 1, 0, "lookup_page", dfn=0x5000), -E.ENOENT),
    (op(7, 9, 0, "lookup_page", dfn=0x205), -E.EINVAL),
    (op(4, 1, 0, "reattach_device", dev=dict(seg=0, bus=0, devfn=NIC_DEVFN)), 0),
    (op(4, 1, 0, "reattach_device", dev=dict(seg=0, bus=1, devfn=0)), -E.ENOENT),
    (op(4, 7, 0, "reattach_device", dev=dict(seg=0, bus=0, devfn=NIC_DEVFN)), -E.ENOENT),
    (op(3, 1, 0), -E.EBUSY),
    (op(3, 0, 0), -E.EINVAL),
    (op(3, 7, 0), -E.ENOENT),
    (op(6, 1, 0, "unmap_pages", dfn=0x200, nr_pages=20), -E.ENOENT),
    (op(6, 1, 0, "unmap_pages", dfn=0x200, nr_pages=300), -E.E2BIG),
    (op(6, 9, 0, "unmap_pages", dfn=0x200, nr_pages=1), -E.EINVAL),
    (op(3, 1, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT), 0),
]


def error_paths(d, build=None) -> None:
    """Every error path of every sub-op, a non-hardware domain, unknown
    hypercalls, a short guest buffer, and frames the daemon refuses."""
    with XenemuClient(d.socket(0)) as xen:
        for raw, want in ERROR_PATHS:
            assert xen.iommu_op(raw).ret == want, abi.decode_op(raw)
        assert xen.hypercall(99).ret == -E.ENOSYS
        short = xen.hypercall(abi.HYPERVISOR_iommu_op, (OP_GADDR,),
                              (wire.Region(OP_GADDR, op(1)[:16]),))
        assert short.ret == -E.EFAULT
    with XenemuClient(d.socket(1)) as guest:
        assert guest.query_capabilities().ret == -E.EPERM
        assert guest.alloc_context().ret == -E.EPERM
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", wire.encode_reply(1, 0),
                    wire.encode_call(5, 43)[:40]):     # the last: cut off, then hang up
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket(0))
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
        s.close()


def reattach_under_dma(d, build=None, rounds: int = 200) -> None:
    """A device DMAs in a loop while its driver moves it between two contexts
    mapping the same buffer: no DMA may fault."""
    with XenemuClient(d.socket(0)) as xen:
        ctxs = [xen.alloc_context().op.ctx_no for _ in range(2)]
        for ctx in ctxs:
            assert xen.map_pages(ctx, gfn=0x3000, dfn=0x50, nr_pages=4).ret == 0
        d.ctl("faults", clear=True)
        stop = threading.Event()
        faulted = []

        def device():
            from xenemu.ctl import ControlClient
            with ControlClient(d.control) as ctl:
                i = 0
                while not stop.is_set() or i < 10:
                    out = ctl.call("dma", sbdf=NIC, addr=(0x50 << 12) + (i % 4) * 4096,
                                   write=bool(i % 2), data=i.to_bytes(4, "little") * 64,
                                   length=256)
                    faulted.append(out["faulted"])
                    i += 1

        t = threading.Thread(target=device)
        t.start()
        try:
            for i in range(rounds):
                assert xen.reattach_device(ctxs[i % 2], bus=0, devfn=NIC_DEVFN).ret == 0
        finally:
            stop.set()
            t.join()
        assert not any(faulted)
        assert d.ctl("faults")["faults"] == []
        assert len(d.ctl("mem_read", domid=0, gfn=0x3000, length=8)["data"]) == 8
        for ctx in ctxs:
            assert xen.free_context(ctx, abi.IOMMU_TEARDOWN_REATTACH_DEFAULT).ret == 0


def machine_changes(d, build=None) -> None:
    """The control plane changing the world under a guest: a paged-out gfn
    paged in on the clock, a new domain with a device, DMA faults, memory."""
    with XenemuClient(d.socket(0)) as xen:
        ctx = xen.alloc_context().op.ctx_no
        d.ctl("p2m_set", domid=0, gfn=0x4000, type="paged_out")
        assert xen.map_pages(ctx, gfn=0x4000, dfn=0x10, nr_pages=1).ret == -E.EIO  # paging in
        time.sleep(0.03)   # the default machine pages in after 10 ms
        assert xen.map_pages(ctx, gfn=0x4000, dfn=0x10, nr_pages=1).ret == 0
        assert d.ctl("p2m_get", domid=0, gfn=0x4000)["type"] == "ram"
        assert xen.reattach_device(ctx, bus=0, devfn=NIC_DEVFN).ret == 0
        d.ctl("mem_write", domid=0, gfn=0x4000, offset=8, data=b"from the guest")
        dma = d.ctl("dma", sbdf=NIC, addr=(0x10 << 12) + 8, length=14)
        assert dma["data"] == b"from the guest"
        assert d.ctl("dma", sbdf=NIC, addr=0x11 << 12, length=4)["faulted"]
        d.ctl("faults", clear=True)
        created = d.ctl("domain_create", domid=7, name="hotplug", hardware=True, contexts=2,
                        devices=["0000:00:06.0"])
        with XenemuClient(created["socket"]) as d7:
            assert d7.alloc_context().ret == 0
            assert d7.map_pages(1, gfn=0, dfn=0, nr_pages=8).ret == 0
        d.ctl("device_deassign", sbdf="0000:00:06.0")
        assert d.ctl("dma", sbdf="0000:00:06.0", addr=0, length=4)["faulted"]
        d.ctl("domain_destroy", domid=7)
        assert xen.reattach_device(0, bus=0, devfn=NIC_DEVFN).ret == 0
        assert xen.free_context(ctx).ret == 0


def continued_free(d, build=None, pages: int = 150_000) -> None:
    """Freeing a large context takes several -ERESTART rounds; another
    connection's lookups land between them and see the context dying."""
    with XenemuClient(d.socket(0)) as xen:
        ctx = xen.alloc_context().op.ctx_no
        ops = [op(5, ctx, RW, "map_pages", gfn=s, dfn=0x100000 + s, nr_pages=min(256, pages - s))
               for s in range(0, pages, 256)]
        assert all(r.ret == 0 for r in xen.pipeline(ops))
        lookups = []
        done = threading.Event()

        def other_connection():
            with XenemuClient(d.socket(0)) as other:
                while not done.is_set():
                    lookups.append(other.lookup_page(ctx, 0x100000).ret)

        t = threading.Thread(target=other_connection)
        t.start()
        try:
            while len(lookups) < 5:
                time.sleep(0.001)
            assert xen.free_context(ctx).ret == 0
        finally:
            done.set()
            t.join()
        assert set(lookups) <= {0, -E.EINVAL, -E.ENOENT}


def map_unmap_session(d, build=None, hypercalls: int = 110_000, seed: int = 5) -> None:
    """A DMA-heavy guest: buffers of 1 to 256 pages mapped, looked up and
    unmapped across four contexts, with the mistakes a buggy driver makes
    (double maps, unmapping what is not mapped, oversize requests)."""
    rng = random.Random(seed)
    with XenemuClient(d.socket(0)) as xen:
        ctxs = [xen.alloc_context().op.ctx_no for _ in range(4)]
        live: dict[int, list[tuple[int, int]]] = {c: [] for c in ctxs}
        ops, want_ok = [], 0
        while len(ops) < hypercalls:
            ctx = rng.choice(ctxs)
            kind = rng.random()
            if kind < 0.45 or not live[ctx]:
                n = rng.choice((1, 1, 2, 4, 16, 64, 256, rng.randint(1, 256)))
                dfn = rng.randrange(0, 1 << 20) & ~0xFF
                ops.append(op(5, ctx, RW, "map_pages", gfn=rng.randrange(0, 0x3FF00),
                              dfn=dfn, nr_pages=n))
                live[ctx].append((dfn, n))
            elif kind < 0.85:
                dfn, n = live[ctx].pop(rng.randrange(len(live[ctx])))
                ops.append(op(7, ctx, 0, "lookup_page", dfn=dfn + n - 1))
                ops.append(op(6, ctx, 0, "unmap_pages", dfn=dfn, nr_pages=n))
            elif kind < 0.95:
                ops.append(op(7, ctx, 0, "lookup_page", dfn=rng.randrange(0, 1 << 20)))
            else:
                ops.append(op(6, ctx, 0, "unmap_pages", dfn=rng.randrange(0, 1 << 20),
                              nr_pages=rng.choice((1, 300))))
        for ctx in ctxs:
            ops.append(op(3, ctx, 0))
        results = xen.pipeline(ops)
        want_ok = sum(1 for r in results if r.ret == 0)
        assert want_ok > len(ops) // 2
        # Every context is freed at the end, whatever it still held.
        assert [r.ret for r in results[-4:]] == [0, 0, 0, 0]


def rev2_driver_session(d, build=None) -> None:
    """A revision-2 daemon (`serve --abi-revision 2`, SERVE_ARGS): the Linux
    v3 driver's sequence on guest1, a run long enough to continue, PV dom0's
    one-page calls accumulating `mapped`, remote_cmd and the paths that fail."""
    from xenemu.client import RevisionTwoClient
    from xenemu.hypercalls import iommu_op_v2 as v2
    with RevisionTwoClient(d.socket(1)) as xen:
        assert xen.query_capabilities().op.max_ctx_no == 0
        assert xen.init(128, 12).raw[:2] == b"\x01\x00"         # context 1 taken
        assert xen.query_capabilities().op.max_ctx_no == 128
        ctx = xen.alloc_context().op.ctx_no
        assert ctx == 2
        assert xen.reattach_device(ctx, 0, 1, 0).ok
        r = xen.map_pages(ctx, 0x10, 0x10000, 10_000)          # three rounds
        assert (r.ret, r.op.mapped, r.op.nr_pages) == (0, 10_000, 10_000 - 8192)
        assert xen.map_pages(ctx, 0x10, 0x10005, 1).name == "-EADDRINUSE"
        assert xen.map_pages(0, 0x10, 0x10005, 1).name == "-EINVAL"
        assert xen.iommu_op_subop(9, bytes(8)).name == "-EOPNOTSUPP"
        assert xen.free_context(ctx).name == "-EBUSY"          # dying now
        assert xen.unmap_pages(ctx, 0x10000, 10_000).op.unmapped == 10_000
        assert xen.reattach_device(0, 0, 1, 0).ok
        assert xen.free_context(ctx).ok
    with RevisionTwoClient(d.socket(0)) as dom0:
        r = dom0.remote_cmd(1, v2.IOMMU_query_capabilities, bytes(24))
        assert r.ok and r.inner_op.max_ctx_no == 128
        assert dom0.init(4, 8).ok
        raw = v2.encode(v2.SUBOPS_BY_NUMBER[v2.IOMMU_map_pages], ctx_no=1, map_flags=3)
        for i in range(4):                                     # PV: one page a call
            s = v2.decode(v2.IOMMU_map_pages, raw)
            s.gfn, s.dfn, s.nr_pages = 0x100 + i, 0x200 + i, 1
            raw = dom0.iommu_op_subop(v2.IOMMU_map_pages, v2.MapPages.build(s)).raw
        assert v2.decode(v2.IOMMU_map_pages, raw).mapped == 4
        assert dom0.free_context(1).ok


rev2_driver_session.SERVE_ARGS = ("--abi-revision", "2")


# name -> (scenario, arguments for the committed corpus)
CORPUS = {
    "rev2-driver": (rev2_driver_session, {}),
    "linux-driver": (linux_driver_session, {}),
    "error-paths": (error_paths, {}),
    "reattach-under-dma": (reattach_under_dma, {}),
    "machine-changes": (machine_changes, {}),
    "continued-free": (continued_free, {}),
    "map-unmap-110k": (map_unmap_session, {}),
}
