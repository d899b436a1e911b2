"""Revision 2's no-dma hardware domain (dom0-iommu=dma=0): its context 0 maps
nothing and query_capabilities lacks IOMMUCAP_default_identity (reference
§5 cap_flags, §7, §8 item 3), through the machine file, the control socket,
a snapshot and a trace."""
from __future__ import annotations

import subprocess
import sys

import pytest

from support import DaemonProcess, assert_replays
from xenemu.client import RevisionTwoClient
from xenemu.ctl import ControlError
from xenemu.hypercalls.iommu_op_v2 import IOMMUCAP_default_identity

DOM0_NIC, GUEST_NIC = "0000:00:02.0", "0000:01:00.0"
DEVFN = 2 << 3                                  # 00:02.0

MACHINE = f"""
pv_iommu_revision = 2
address_width = 48
memory_mib = 512
[[domain]]
domid = 0
hardware = true
no_dma = true
memory_mib = 64
devices = ["{DOM0_NIC}"]
[[domain]]
domid = 1
memory_mib = 16
devices = ["{GUEST_NIC}"]
"""


def serve(tmp_path, text: str = MACHINE, *extra: str) -> DaemonProcess:
    tmp_path.mkdir(exist_ok=True)
    cfg = tmp_path / "machine.toml"
    cfg.write_text(text)
    return DaemonProcess(tmp_path, "--config", str(cfg), *extra)


def dma(d: DaemonProcess, sbdf: str, dfn: int) -> dict:
    return d.ctl("dma", sbdf=sbdf, addr=dfn << 12, length=4)


def test_no_dma_dom0_has_no_identity_map_until_it_maps_a_context(tmp_path):
    d = serve(tmp_path / "a")
    snap = tmp_path / "nodma.xs"
    try:
        with RevisionTwoClient(d.socket(0)) as dom0, RevisionTwoClient(d.socket(1)) as guest:
            assert dom0.query_capabilities().op.cap_flags == 0
            assert guest.query_capabilities().op.cap_flags == IOMMUCAP_default_identity
            d.ctl("mem_write", domid=0, gfn=0x10, data=b"nodm")
            # Context 0 maps nothing: the device's DMA faults; the guest's is 1:1.
            out = dma(d, DOM0_NIC, 0x10)
            assert out["faulted"] and out["fault"]["addr"] == 0x10 << 12
            assert not dma(d, GUEST_NIC, 0x10)["faulted"]
            assert dom0.init(4, 4).ok                                   # context 1 (v7)
            assert dom0.map_pages(1, 0x10, 0x200, 1).op.mapped == 1
            assert dma(d, DOM0_NIC, 0x200)["faulted"]                   # still in context 0
            assert dom0.reattach_device(1, 0, 0, DEVFN).ok
            assert dma(d, DOM0_NIC, 0x200)["data"] == b"nodm"
        # Paging a gfn out and in again leaves context 0 empty; 0x30 stays
        # out (the restore has no 1:1 page to take down for it).
        for gfn, type_ in ((0x20, "paged_out"), (0x20, "ram"), (0x30, "paged_out")):
            d.ctl("p2m_set", domid=0, gfn=gfn, type=type_)
        assert d.ctl("check")["consistent"]
        d.ctl("snapshot", path=str(snap))
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)

    again = DaemonProcess(tmp_path / "b", "--restore", str(snap))
    try:
        with RevisionTwoClient(again.socket(0)) as dom0:
            assert dom0.query_capabilities().op.cap_flags == 0
            assert dma(again, DOM0_NIC, 0x200)["data"] == b"nodm"       # context 1 restored
            assert dom0.reattach_device(0, 0, 0, DEVFN).ok
            assert dma(again, DOM0_NIC, 0x10)["faulted"]                # context 0 still empty
        assert again.ctl("check")["consistent"]
    finally:
        assert again.stop() == 0
    assert_replays(again.trace)


def refused(tmp_path, text: str) -> str:
    cfg = tmp_path / "m.toml"
    cfg.write_text(text)
    p = subprocess.run([sys.executable, "-m", "xenemu.cli", "serve", "--config", str(cfg),
                        "--socket-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    return p.stderr


def test_no_dma_is_only_for_a_revision_2_hardware_domain(tmp_path):
    guest = MACHINE.replace("hardware = true\nno_dma = true", "hardware = true") \
                   .replace('devices = ["0000:01:00.0"]', 'devices = ["0000:01:00.0"]\nno_dma = true')
    why = "no_dma: only the hardware domain of a pv_iommu_revision 2 machine is no-dma"
    assert f"domain[1].{why}" in refused(tmp_path, guest)
    rev1 = MACHINE.replace("pv_iommu_revision = 2\naddress_width = 48", "")
    assert f"domain[0].{why}" in refused(tmp_path, rev1)


def test_domain_create_takes_no_dma(tmp_path):
    d = serve(tmp_path, MACHINE.replace("no_dma = true\n", ""))
    try:
        with pytest.raises(ControlError, match="no_dma: only the hardware domain"):
            d.ctl("domain_create", domid=5, memory_mib=8, no_dma=True)
        d.ctl("domain_create", domid=6, memory_mib=8, hardware=True, no_dma=True,
              devices=["0000:02:00.0"])
        assert dma(d, "0000:02:00.0", 0)["faulted"]
        with RevisionTwoClient(d.socket(0)) as dom0:          # dom0 is not no-dma here
            assert dom0.query_capabilities().op.cap_flags == IOMMUCAP_default_identity
        assert not dma(d, DOM0_NIC, 0x10)["faulted"]
        assert d.ctl("check")["consistent"]
    finally:
        assert d.stop() == 0
    assert_replays(d.trace)
