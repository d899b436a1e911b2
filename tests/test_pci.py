"""PCI addresses: one codec (xenemu.pci) between text, fields and the packed sbdf,
and every reader and writer of them goes through it."""

import logging

import pytest
from hypothesis import given, strategies as st

from xenemu import hw, machine, pci
from xenemu.ctl import ControlError
from xenemu.hypercalls.iommu_op_v1 import IOMMU_OP
from xenemu.schema import InputError, convert


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_text_fields_and_packed_agree(seg, bus, dev, fn):
    packed = pci.pack_sbdf(seg, bus, dev << 3 | fn)
    assert pci.unpack_sbdf(packed) == (seg, bus, dev << 3 | fn)
    text = pci.format_sbdf(packed)
    assert text == f"{seg:04x}:{bus:02x}:{dev:02x}.{fn}"
    assert pci.parse_sbdf(text) == pci.parse_sbdf(text.upper()) == packed
    if seg == 0:
        assert pci.parse_sbdf(text[5:]) == packed     # "BB:DD.F": segment 0


@pytest.mark.parametrize("text", ["", "zz", "00:02", "0000:00:02.0.1", "1:2:3:4.0",
                                  "00:20.0", "00:02.8", "10000:00:02.0", "0000:100:02.0",
                                  "f" * 10_000 + ":00:00.0", "0" * 10_000 + "x:00:00.0"])
def test_bad_text_is_one_short_line(text):
    with pytest.raises(pci.PciAddressError) as e:
        pci.parse_sbdf(text)
    line = str(e.value)
    assert line.startswith("bad PCI address") and "\n" not in line and len(line) < 100


def test_fields_out_of_range_are_refused():
    for fields in [(-1, 0, 0), (0x10000, 0, 0), (0, 0x100, 0), (0, 0, 0x100)]:
        with pytest.raises(ValueError):
            pci.pack_sbdf(*fields)


def test_schema_type_reads_text_only():
    assert convert("0000:00:03.0", pci.Sbdf, "here") == 0x18
    with pytest.raises(InputError, match="here: expected str, got int"):
        convert(0x18, pci.Sbdf, "here")


def test_every_user_shares_the_codec():
    # The machine file, the control ops, the hardware's device ids and the
    # hypercall's log line and trace text use these functions, not copies.
    assert machine.parse_sbdf is pci.parse_sbdf
    assert machine.format_sbdf is pci.format_sbdf and machine.Sbdf is pci.Sbdf
    assert hw.sbdf is pci.pack_sbdf
    assert IOMMU_OP.formatters["dev"] is pci.format_device


def test_control_and_hypercall_speak_the_same_address(local, caplog):
    """A device named as text on the control socket is the one a guest names
    by segment, bus and devfn, and the log line prints it back as the text."""
    text = "0000:00:05.0"
    _, bus, devfn = pci.unpack_sbdf(pci.parse_sbdf(text))
    xen = local.client(0)
    ctx = xen.alloc_context().op.ctx_no
    with caplog.at_level(logging.DEBUG, logger="xenemu.pv_iommu"):
        assert xen.reattach_device(ctx, bus=bus, devfn=devfn).ret == 0
    assert f"dev={text}" in caplog.text
    assert local.ctl("info")["domains"][0]["devices"][text] == ctx
    with pytest.raises(ControlError, match="sbdf: bad PCI address"):
        local.ctl("device_deassign", sbdf="f" * 5000 + ":00:00.0")
    local.ctl("device_deassign", sbdf=text)
    assert text in local.ctl("info")["quarantined"]
