"""__HYPERVISOR_memory_op (12): the one command PV-IOMMU drivers make,
XENMEM_reserved_device_memory_map, as upstream Xen's xen/common/memory.c
(do_memory_op's case, in Xen since 4.6) and get_reserved_device_memory()
serve it, over the machine's RMRRs (MachineConfig.rmrr, in file order, as
VT-d's intel_iommu_get_reserved_device_memory walks acpi_rmrr_units and
each unit's device scope).

`do_memory_op(unsigned long cmd, handle arg)`: cmd is args[0] (all 64 bits:
the command is cmd & MEMOP_CMD_MASK, its start extent cmd >>
MEMOP_EXTENT_SHIFT), the handle args[1]. The struct
xen_reserved_device_memory_map (24 bytes) is at the handle; its `buffer`
handle points to a second region: nr_entries entries of 16 bytes. Every
other command answers as Xen answers one it does not implement: the switch's
default, arch_memory_op -> subarch_memory_op's default, -ENOSYS.

The handler does its own copies (the row neither reads nor copies back):
Xen checks the extent before it reads anything and copies the struct back
only once it has walked the ranges.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from construct import Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct

from ..errno import XenErrno
from ..pci import format_device, pack_sbdf
from .common import HYPERVISOR_memory_op, Hypercall, HypercallError, SubOp, SubopCall

if TYPE_CHECKING:
    from ..domain import Domain
    from ..hypervisor import Hypervisor

log = logging.getLogger("xenemu.memory_op")

# public/memory.h
XENMEM_reserved_device_memory_map = 27
XENMEM_RDM_ALL = 1
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1

# struct xen_reserved_device_memory_map (x86_64): flags, nr_entries, the
# buffer handle, dev.pci (physdev_pci_device_t), padded to the handle's 8.
ReservedDeviceMemoryMap = Struct(
    "flags" / Int32ul,
    "nr_entries" / Int32ul,
    "buffer" / Int64ul,
    "dev" / Struct("seg" / Int16ul, "bus" / Int8ul, "devfn" / Int8ul),
    Padding(4),
)
MAP_SIZE = 24
# struct xen_reserved_device_memory: xen_pfn_t start_pfn, xen_ulong_t nr_pages.
ReservedDeviceMemory = Struct("start_pfn" / Int64ul, "nr_pages" / Int64ul)
ENTRY_SIZE = 16


def reserved_device_memory_map(hv: Hypervisor, d: Domain, op: SubopCall) -> int:
    """memory.c's case XENMEM_reserved_device_memory_map. Any domain may ask,
    for any device or all of them: the code checks neither the caller nor
    that the device is its own."""
    if op.subop >> MEMOP_EXTENT_SHIFT:              # unlikely(start_extent)
        raise HypercallError(XenErrno.EINVAL, "a start extent in cmd")
    if op.copy_in(MAP_SIZE) is None:                # copy_from_guest(&grdm.map, arg, 1)
        raise HypercallError(XenErrno.EFAULT, f"copy_from_guest of {op.handle:#x} failed")
    # guest_handle_okay(buffer, nr_entries) checks only that the range is a
    # guest address range; every copy below is checked as it is made.
    grdm = ReservedDeviceMemoryMap.parse(op.payload)
    if grdm.flags & ~XENMEM_RDM_ALL:
        raise HypercallError(XenErrno.EINVAL, f"flags {grdm.flags:#x}")
    wanted = pack_sbdf(grdm.dev.seg, grdm.dev.bus, grdm.dev.devfn)
    used, rc, why = 0, 0, ""
    for sbdf, start, pages in hv.config.rmrr:      # get_reserved_device_memory() per range
        if not grdm.flags & XENMEM_RDM_ALL and sbdf != wanted:
            continue
        if used < grdm.nr_entries:
            at = (grdm.buffer + used * ENTRY_SIZE) & ((1 << 64) - 1)
            entry = ReservedDeviceMemory.build({"start_pfn": start, "nr_pages": pages})
            if not op.mem.copy_to_guest(at, entry):
                rc, why = -XenErrno.EFAULT, f"copy_to_guest of entry {used} at {at:#x} failed"
                break
        used += 1
    if not rc and grdm.nr_entries < used:
        rc, why = -XenErrno.ENOBUFS, f"{used} entries, room for {grdm.nr_entries}"
    grdm.nr_entries = used                          # always: the number there are
    op.payload = ReservedDeviceMemoryMap.build(grdm)
    if not op.mem.copy_to_guest(op.handle, op.payload):
        rc, why = -XenErrno.EFAULT, f"copy_to_guest of {op.handle:#x} failed"
    if rc:
        raise HypercallError(-rc, why)
    return 0


SUBOPS = (
    SubOp(XENMEM_reserved_device_memory_map, "reserved_device_memory_map",
          reserved_device_memory_map, layout=ReservedDeviceMemoryMap, size=MAP_SIZE,
          reads=False, copy_back=False, inputs=("flags", "nr_entries", "buffer", "dev"),
          outputs=("nr_entries",), outputs_on_error=True,
          params=("flags", "nr_entries", ("seg", 0), ("bus", 0), ("devfn", 0))),
)

# The commands of public/memory.h xenemu does not implement (-ENOSYS), by
# name for the log: "memory_op d0: XENMEM_populate_physmap (6) -> -ENOSYS".
OTHER_COMMANDS = {n: f"XENMEM_{name}" for n, name in (
    (0, "increase_reservation"), (1, "decrease_reservation"), (2, "maximum_ram_page"),
    (3, "current_reservation"), (4, "maximum_reservation"), (5, "machphys_mfn_list"),
    (6, "populate_physmap"), (7, "add_to_physmap"), (9, "memory_map"),
    (10, "machine_memory_map"), (11, "exchange"), (12, "machphys_mapping"),
    (13, "set_memory_map"), (14, "maximum_gpfn"), (15, "remove_from_physmap"),
    (16, "set_pod_target"), (17, "get_pod_target"), (18, "get_sharing_freed_pages"),
    (19, "get_sharing_shared_pages"), (20, "paging_op"), (21, "access_op"),
    (22, "sharing_op"), (23, "add_to_physmap_batch"), (24, "claim_pages"),
    (25, "machphys_compat_mfn_list"), (26, "get_vnumainfo"), (28, "acquire_resource"))}

MEMORY_OP = Hypercall(
    number=HYPERVISOR_memory_op, name="memory_op", revision=0,
    subops={row.number: row for row in SUBOPS},
    op_type=SubopCall, head_names=(), head_text="",
    subop_arg=0, handle_arg=1, subop_field="subop", unknown_errno=XenErrno.ENOSYS,
    subop_reg_mask=(1 << 64) - 1, row_mask=MEMOP_CMD_MASK, unknown_names=OTHER_COMMANDS,
    log=log, log_prefix="memory_op ",
    hex_fields=frozenset({"flags", "buffer"}), formatters={"dev": format_device},
)


def entries(raw: bytes) -> list[tuple[int, int]]:
    """The (start_pfn, nr_pages) entries of a buffer's bytes (clients, tests)."""
    return [(e.start_pfn, e.nr_pages) for e in
            (ReservedDeviceMemory.parse(raw[i:i + ENTRY_SIZE])
             for i in range(0, len(raw) - ENTRY_SIZE + 1, ENTRY_SIZE))]
