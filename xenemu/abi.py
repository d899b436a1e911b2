"""The ABI this xenemu speaks, under the names clients and tests use: the
hypercall numbers and revision 1 of __HYPERVISOR_iommu_op (constants,
layouts, encode_op/decode_op). They are defined, with the sub-op table and
its handlers, in xenemu.hypercalls.iommu_op_v1; a client of another revision
imports that revision's module.
"""

from .hypercalls.common import HYPERVISOR_iommu_op, HYPERVISOR_memory_op  # noqa: F401
from .hypercalls.iommu_op_v1 import (  # noqa: F401
    CAPABILITIES, IOMMU_CREATE_clone, IOMMU_DEFAULT_CONTEXT, IOMMU_OP_readable,
    IOMMU_OP_writeable, IOMMU_TEARDOWN_PREEMPT, IOMMU_TEARDOWN_REATTACH_DEFAULT,
    IOMMUOP_alloc_context, IOMMUOP_free_context, IOMMUOP_lookup_page, IOMMUOP_map_pages,
    IOMMUOP_noop, IOMMUOP_query_capabilities, IOMMUOP_reattach_device, IOMMUOP_unmap_pages,
    LOOKUP_PAGE, MAP_PAGES, PV_IOMMU_OP, OP_SIZE, PAYLOAD_SIZE, PV_IOMMU_REVISION, UNMAP_PAGES,
    VIEWS, Capabilities, LookupPage, MapPages, PvIommuOp, PciDevice, ReattachDevice, UnmapPages,
    decode_op, encode_op,
)
