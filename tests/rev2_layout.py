"""Revision 2's structs as the reference file's §4 gives them (Xen RFC v7,
x86-64), transcribed independently of the C header and of xenemu's Python
layouts, so that tests can hold either against it.

STRUCTS: name -> (size, {field: (offset, size)}); SUBOP_STRUCT: the struct
each sub-op's arg points to (None: Xen does not read arg)."""

from __future__ import annotations

STRUCTS: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "pv_iommu_capabilities": (24, {"max_iova_addr": (0, 8), "cap_flags": (8, 4),
                                   "pgsize_mask": (12, 4), "max_pasid": (16, 4),
                                   "max_ctx_no": (20, 2), "pad0": (22, 2)}),
    "pv_iommu_init": (8, {"max_ctx_no": (0, 4), "arena_order": (4, 4)}),
    "pv_iommu_alloc": (8, {"ctx_no": (0, 2), "alloc_flags": (4, 4)}),
    "pv_iommu_free": (8, {"ctx_no": (0, 2), "free_flags": (4, 4)}),
    "pv_iommu_map_pages": (40, {"ctx_no": (0, 2), "gfn": (8, 8), "dfn": (16, 8),
                                "map_flags": (24, 4), "pgsize": (28, 4), "nr_pages": (32, 4),
                                "mapped": (36, 4)}),
    "pv_iommu_unmap_pages": (32, {"ctx_no": (0, 2), "dfn": (8, 8), "pgsize": (16, 4),
                                  "nr_pages": (20, 4), "unmapped": (24, 4)}),
    "pv_iommu_reattach_device": (12, {"ctx_no": (0, 2), "dev": (2, 4), "dev.seg": (2, 2),
                                      "dev.bus": (4, 1), "dev.devfn": (5, 1), "pasid": (8, 4)}),
    "pv_iommu_remote_cmd": (16, {"domid": (0, 2), "subop": (2, 2), "arg": (8, 8)}),
    "pv_iommu_alloc_nested": (24, {"ctx_no": (0, 2), "pgtable_gfn": (8, 8),
                                   "nested_flags": (16, 8)}),
    "pv_iommu_flush_nested": (0, {}),     # empty: GNU C size 0 (C++: 1)
    "pv_iommu_attach_pasid": (12, {"ctx_no": (0, 2), "dev": (2, 4), "pasid": (8, 4)}),
    "pv_iommu_detach_pasid": (8, {"dev": (0, 4), "pasid": (4, 4)}),
}

# §3: sub-op numbers and flags.
CONSTANTS = {
    "IOMMU_DEFAULT_CONTEXT": 0,
    "IOMMU_noop": 0, "IOMMU_query_capabilities": 1, "IOMMU_init": 2, "IOMMU_alloc_context": 3,
    "IOMMU_free_context": 4, "IOMMU_reattach_device": 5, "IOMMU_map_pages": 6,
    "IOMMU_unmap_pages": 7, "IOMMU_remote_cmd": 8, "IOMMU_alloc_nested": 9,
    "IOMMU_flush_nested": 10, "IOMMU_attach_pasid": 11, "IOMMU_detach_pasid": 12,
    "IOMMUCAP_default_identity": 1 << 0, "IOMMUCAP_cache": 1 << 1, "IOMMUCAP_nested": 1 << 2,
    "IOMMUCAP_pasid": 1 << 3, "IOMMUCAP_identity": 1 << 4,
    "IOMMU_ALLOC_identity": 1 << 0, "IOMMU_FREE_reattach_default": 1 << 0,
    "IOMMU_MAP_readable": 1 << 0, "IOMMU_MAP_writeable": 1 << 1, "IOMMU_MAP_cache": 1 << 2,
    "__HYPERVISOR_iommu_op": 43,
}

# §5: what Xen copies at arg, per sub-op (9-12 and unknown ones: nothing).
SUBOP_STRUCT = {0: None, 1: "pv_iommu_capabilities", 2: "pv_iommu_init", 3: "pv_iommu_alloc",
                4: "pv_iommu_free", 5: "pv_iommu_reattach_device", 6: "pv_iommu_map_pages",
                7: "pv_iommu_unmap_pages", 8: "pv_iommu_remote_cmd",
                9: None, 10: None, 11: None, 12: None}


def arg_size(subop: int) -> int:
    """Bytes at arg Xen reads and writes for this sub-op (0: none)."""
    name = SUBOP_STRUCT.get(subop)
    return STRUCTS[name][0] if name else 0
