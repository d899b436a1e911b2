/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/interface/pv-iommu.h>, for the revision the
 * include path selects: abi/xen/pv-iommu.h (revision 1, -Iabi) or
 * abi/rev2/xen/pv-iommu.h (revision 2, -Iabi/rev2 -Iabi), byte-exact and
 * pinned by their own static asserts. Linux's handle names are added.
 */
#ifndef _WB_XEN_INTERFACE_PV_IOMMU_H
#define _WB_XEN_INTERFACE_PV_IOMMU_H

#include <xen/interface/xen.h>
#include <xen/interface/physdev.h>
#include <xen/pv-iommu.h>

#if defined(XENEMU_PV_IOMMU_REVISION) && XENEMU_PV_IOMMU_REVISION == 2
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_capabilities);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_init);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_alloc);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_free);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_map_pages);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_unmap_pages);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_reattach_device);
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_remote_cmd);
_Static_assert(sizeof(struct pv_iommu_map_pages) == 40, "revision 2's map_pages");
#else
DEFINE_GUEST_HANDLE_STRUCT(pv_iommu_op);
_Static_assert(sizeof(struct pv_iommu_op) == 32, "revision 1's pv_iommu_op");
#endif

#endif
