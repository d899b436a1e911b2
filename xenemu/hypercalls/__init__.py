"""The hypercalls a guest can make, each described by its ABI module.

One module per hypercall ABI revision (`iommu_op_v1`: __HYPERVISOR_iommu_op,
revision 1), each with one table of its sub-ops (common.SubOp: number, name,
layout, inputs, outputs, handler) and where its argument is found in a call
(common.Hypercall). The hypervisor dispatches through ABIS; the log line,
`xenemu trace show`, replay's reports, `trace stats` and the client helpers
read the rows. A new hypercall is a new module here and one entry in ABIS.
"""

from __future__ import annotations

from . import iommu_op_v1
from .common import HYPERVISOR_iommu_op, HYPERVISOR_memory_op, Hypercall

# The hypercalls this xenemu implements, by number.
ABIS: dict[int, Hypercall] = {iommu_op_v1.IOMMU_OP.number: iommu_op_v1.IOMMU_OP}

# Every hypercall a trace may name, implemented or not.
NAMES = {HYPERVISOR_memory_op: "memory_op", HYPERVISOR_iommu_op: "iommu_op"}


def hypercall_name(op: int) -> str:
    return NAMES.get(op, f"hypercall {op}")
