"""PCI addresses: the one codec between their three shapes.

- text, "SSSS:BB:DD.F" (or "BB:DD.F" in segment 0), as every input gives
  them (machine file, control requests, snapshots, traces) and every
  output prints them;
- fields, segment, bus and devfn (device << 3 | function), as in Xen's
  `struct physdev_pci_device` (reattach_device's argument);
- the packed integer seg << 16 | bus << 8 | devfn ("sbdf"), which the
  simulated hardware and the domains key devices by.
"""

from __future__ import annotations


class PciAddressError(ValueError):
    """Text that is not a PCI address: one line saying what was expected."""


def parse_sbdf(text: str) -> int:
    """'0000:00:02.0' or '00:02.0' -> the packed sbdf (PciAddressError if not)."""
    try:
        parts = text.split(":")
        if len(parts) == 2:
            parts = ["0"] + parts
        seg, bus, devfunc = parts
        dev, func = devfunc.split(".")
        seg, bus, dev, func = int(seg, 16), int(bus, 16), int(dev, 16), int(func, 16)
    except (ValueError, AttributeError):
        raise PciAddressError(f"bad PCI address {text!r:.40}: expected SSSS:BB:DD.F") from None
    if not (0 <= dev <= 0x1F and 0 <= func <= 7):
        raise PciAddressError(f"bad PCI address {text!r:.40}: field out of range")
    try:
        return pack_sbdf(seg, bus, dev << 3 | func)
    except ValueError:
        raise PciAddressError(f"bad PCI address {text!r:.40}: field out of range") from None


def format_sbdf(sbdf: int) -> str:
    """The packed sbdf as "SSSS:BB:DD.F"."""
    seg, bus, devfn = unpack_sbdf(sbdf)
    return f"{seg:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def pack_sbdf(seg: int, bus: int, devfn: int) -> int:
    """Segment, bus and devfn as the one integer (ValueError out of range)."""
    if not (0 <= seg <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= devfn <= 0xFF):
        raise ValueError("segment, bus or devfn out of range")
    return seg << 16 | bus << 8 | devfn


def unpack_sbdf(sbdf: int) -> tuple[int, int, int]:
    """The packed sbdf as (segment, bus, devfn)."""
    return sbdf >> 16 & 0xFFFF, sbdf >> 8 & 0xFF, sbdf & 0xFF


def format_device(dev) -> str:
    """A physdev_pci_device (anything with seg, bus and devfn) as text."""
    return format_sbdf(pack_sbdf(dev.seg, dev.bus, dev.devfn))


class Sbdf(int):
    """A PCI address in a schema (xenemu.schema): text in every input, the
    packed sbdf once checked."""

    @classmethod
    def from_input(cls, value) -> "Sbdf":
        if type(value) is not str:
            raise ValueError(f"expected str, got {type(value).__name__}")
        return cls(parse_sbdf(value))
