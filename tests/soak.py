"""A soak: many clients across several domains mapping, DMAing, unmapping and
reattaching at once against one daemon (loopback only), every answer checked.

`make soak` runs it for SOAK_SECONDS (default 180) against its own daemon;
tests/test_soak.py runs a few seconds of it in `make test`. At the end the
invariant check must hold, the fault log must be empty (the scenario causes
no fault), and the daemon's resident memory must not have grown after the
warm-up.

    python tests/soak.py [--seconds N] [--domains N] [--workers N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import DaemonProcess  # noqa: E402
from xenemu.client import XenemuClient  # noqa: E402
from xenemu.ctl import ControlClient  # noqa: E402
from xenemu.pci import parse_sbdf, unpack_sbdf  # noqa: E402


@dataclass
class SoakResult:
    seconds: float = 0.0
    hypercalls: int = 0
    dmas: int = 0
    clients: int = 0
    domains: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    rss_samples: list[int] = field(default_factory=list)   # KiB, every tenth of the run
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hypercalls / self.seconds if self.seconds else 0.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(d: DaemonProcess, domid: int, sock: str, device: str | None, index: int,
           deadline: float, result: SoakResult, lock: threading.Lock) -> None:
    rng = random.Random(domid * 100 + index)
    calls = dmas = 0
    bus_devfn = unpack_sbdf(parse_sbdf(device))[1:] if device else None
    # Each worker its own buffers, in ranges small enough that the warm-up
    # touches them all: guest memory and table pages are backed on first
    # touch, so growth after that would be a leak.
    gfn_base = 0x400 + index * 0x100
    try:
        with XenemuClient(sock) as xen, ControlClient(d.control) as ctl:
            ctx = xen.alloc_context().op.ctx_no
            calls += 1
            while time.monotonic() < deadline:
                n = rng.choice((1, 4, 16, 64, 256))
                gfn = gfn_base + rng.randrange(0, 0x100 - n + 1)
                dfn = rng.randrange(0, (1 << 12) - n)
                assert xen.map_pages(ctx, gfn, dfn, n).ret == 0
                k = rng.randrange(n)
                assert xen.lookup_page(ctx, dfn + k).op.lookup_page.gfn == gfn + k
                calls += 2
                if bus_devfn:
                    assert xen.reattach_device(ctx, bus=bus_devfn[0], devfn=bus_devfn[1]).ret == 0
                    data = rng.randbytes(32)
                    out = ctl.call("dma", sbdf=device, addr=((dfn + k) << 12) + 64,
                                   write=True, data=data)
                    assert out["done"] == 32 and not out["faulted"], out
                    got = ctl.call("mem_read", domid=domid, gfn=gfn + k, offset=64, length=32)
                    assert got["data"] == data
                    assert xen.reattach_device(0, bus=bus_devfn[0], devfn=bus_devfn[1]).ret == 0
                    calls += 2
                    dmas += 1
                assert xen.unmap_pages(ctx, dfn, n).ret == 0
                calls += 1
            assert xen.free_context(ctx).ret == 0
            calls += 1
    except Exception as e:  # reported, not swallowed: the run fails
        with lock:
            result.errors.append(f"d{domid} worker {index}: {e!r}")
    with lock:
        result.hypercalls += calls
        result.dmas += dmas


def soak(d: DaemonProcess, seconds: float, domains: int = 3, workers: int = 3) -> SoakResult:
    """Run the soak against a started daemon (the default machine's d0 plus
    `domains - 1` hardware domains created here)."""
    result = SoakResult(domains=domains)
    plan = [(0, d.socket(0), ["0000:00:02.0", "0000:00:03.0", "0000:00:04.0"])]
    for i in range(1, domains):
        domid = 10 + i
        devices = [f"0000:{0x20 + i:02x}:{w:02x}.0" for w in range(workers)]
        created = d.ctl("domain_create", domid=domid, hardware=True, memory_mib=64,
                        contexts=workers, devices=devices)
        plan.append((domid, created["socket"], devices))
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds
    threads = [threading.Thread(target=worker, args=(d, domid, sock, devs[w % len(devs)], w,
                                                      deadline, result, lock))
               for domid, sock, devs in plan for w in range(workers)]
    result.clients = len(threads)
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(seconds / 10)
        result.rss_samples.append(rss_kib(d.proc.pid))
    # Guest memory and table pages are backed on first touch (a 90 s run
    # plateaus after ~40 s): the warm-up is the first 40% of the run, and a
    # leak shows as growth after it.
    result.rss_warm_kib = result.rss_samples[min(3, len(result.rss_samples) - 1)]
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - start
    result.rss_end_kib = rss_kib(d.proc.pid)
    check = d.ctl("check")
    if not check["consistent"]:
        result.errors += check["problems"]
    faults = d.ctl("faults")
    if faults["faults"] or faults["overflow"]:
        result.errors.append(f"faults the scenario did not cause: {faults['faults'][:5]}")
    for domid, _, _ in plan[1:]:
        d.ctl("domain_destroy", domid=domid)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3, help="clients per domain")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), record=False)
        try:
            r = soak(d, args.seconds, args.domains, args.workers)
        finally:
            rc = d.stop()
    growth = r.rss_end_kib - r.rss_warm_kib
    print(f"soak: {r.clients} clients on {r.domains} domains for {r.seconds:.0f} s: "
          f"{r.hypercalls:,} hypercalls ({r.rate:,.0f}/s), {r.dmas:,} DMAs checked; "
          f"RSS {r.rss_warm_kib / 1024:.1f} MiB after warm-up, {r.rss_end_kib / 1024:.1f} MiB "
          f"at the end ({growth / 1024:+.1f} MiB); daemon exit {rc}")
    print("soak: RSS samples (MiB): " + " ".join(f"{k / 1024:.1f}" for k in r.rss_samples))
    for e in r.errors:
        print(f"soak: FAILED: {e}")
    ok = not r.errors and rc == 0 and growth < 4 * 1024
    print("soak: passed" if ok else "soak: failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
