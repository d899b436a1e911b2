"""The hypercalls a guest can make, each described by its ABI module.

One module per hypercall ABI revision (`iommu_op_v1`: __HYPERVISOR_iommu_op,
revision 1), each with one table of its sub-ops (common.SubOp: number, name,
layout, inputs, outputs, handler) and where its argument is found in a call
(common.Hypercall). The hypervisor dispatches through ABIS; the log line,
`xenemu trace show`, replay's reports, `trace stats` and the client helpers
read the rows. A new hypercall is a new module here and one entry in
ABIS_BY_REVISION (`iommu_op_v2`: revision 2, Xen RFC v4-v7; `memory_op`:
__HYPERVISOR_memory_op's reserved-device-memory map, in both).
"""

from __future__ import annotations

from . import iommu_op_v1, iommu_op_v2, memory_op
from .common import HYPERVISOR_iommu_op, HYPERVISOR_memory_op, Hypercall

# The hypercalls a machine implements, by number, per PV-IOMMU revision (one
# hypervisor build serves one ABI: MachineConfig.pv_iommu_revision).
ABIS_BY_REVISION: dict[int, dict[int, Hypercall]] = {
    1: {iommu_op_v1.IOMMU_OP.number: iommu_op_v1.IOMMU_OP,
        memory_op.MEMORY_OP.number: memory_op.MEMORY_OP},
    2: {iommu_op_v2.IOMMU_OP.number: iommu_op_v2.IOMMU_OP,
        memory_op.MEMORY_OP.number: memory_op.MEMORY_OP},
}
ABIS = ABIS_BY_REVISION[1]


def abis(revision: int) -> dict[int, Hypercall]:
    return ABIS_BY_REVISION[revision]


# Every hazard a trace may name, of either revision (common.Hazard).
HAZARDS = {**iommu_op_v1.HAZARDS, **iommu_op_v2.HAZARDS}

# Every hypercall a trace may name, implemented or not.
NAMES = {HYPERVISOR_memory_op: "memory_op", HYPERVISOR_iommu_op: "iommu_op"}


def hypercall_name(op: int) -> str:
    return NAMES.get(op, f"hypercall {op}")
