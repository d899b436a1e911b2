"""xenemu: a userspace emulator of Xen's PV-IOMMU hypercall interface."""

__version__ = "0.1.0"
