/* SPDX-License-Identifier: MIT */
/******************************************************************************
 * pv-iommu.h
 *
 * Paravirtualized IOMMU driver interface.
 *
 * Copyright (c) 2024 Teddy Astie <teddy.astie@vates.tech>
 *
 * xenemu's copy of the RFC header (revision 1 of the interface: RFC v1-v3,
 * 2024), byte for byte the same struct. Additions, each marked "xenemu:":
 *  - the free_context flag IOMMU_TEARDOWN_REATTACH_DEFAULT, which the RFC's
 *    reference code takes from Xen's internal xen/iommu.h;
 *  - the anonymous union is marked __extension__ so the header also builds as
 *    pedantic C99 (anonymous unions are C11);
 *  - static asserts pinning every size and offset of the x86-64 ABI.
 */

#ifndef __XEN_PUBLIC_PV_IOMMU_H__
#define __XEN_PUBLIC_PV_IOMMU_H__

#include "xen.h"
#include "physdev.h"

#define IOMMU_DEFAULT_CONTEXT (0)

/**
 * Query PV-IOMMU capabilities for this domain.
 */
#define IOMMUOP_query_capabilities    1

/**
 * Allocate an IOMMU context, the new context handle will be written to ctx_no.
 */
#define IOMMUOP_alloc_context         2

/**
 * Destroy a IOMMU context.
 * All devices attached to this context are reattached to default context.
 *
 * The default context can't be destroyed (0).
 *
 * xenemu: the reference code reattaches devices to the default context only
 * when flags has IOMMU_TEARDOWN_REATTACH_DEFAULT; without it a context that
 * still has devices is -EBUSY. xenemu follows the code (see docs).
 */
#define IOMMUOP_free_context          3

/**
 * Reattach the device to IOMMU context.
 */
#define IOMMUOP_reattach_device       4

#define IOMMUOP_map_pages             5
#define IOMMUOP_unmap_pages           6

/**
 * Get the GFN associated to a specific DFN.
 */
#define IOMMUOP_lookup_page           7

/* xenemu: free_context flag (xen/iommu.h in the RFC series). */
#define IOMMU_TEARDOWN_REATTACH_DEFAULT (1 << 0)

#if defined(__GNUC__) && !defined(__cplusplus)
#define __XEN_PV_IOMMU_ANON_UNION __extension__ union
#else
#define __XEN_PV_IOMMU_ANON_UNION union
#endif

struct pv_iommu_op {
    uint16_t subop_id;
    uint16_t ctx_no;

/**
 * Create a context that is cloned from default.
 * The new context will be populated with 1:1 mappings covering the entire guest memory.
 *
 * xenemu: the reference code masks alloc flags with 0, so this flag is
 * ignored unless the daemon runs with the honour-clone option (see docs).
 */
#define IOMMU_CREATE_clone (1 << 0)

#define IOMMU_OP_readable (1 << 0)
#define IOMMU_OP_writeable (1 << 1)
    uint32_t flags;

    __XEN_PV_IOMMU_ANON_UNION {
        struct {
            uint64_t gfn;
            uint64_t dfn;
            /* Number of pages to map */
            uint32_t nr_pages;
            /* Number of pages actually mapped after sub-op */
            uint32_t mapped;
        } map_pages;

        struct {
            uint64_t dfn;
            /* Number of pages to unmap */
            uint32_t nr_pages;
            /* Number of pages actually unmapped after sub-op */
            uint32_t unmapped;
        } unmap_pages;

        struct {
            struct physdev_pci_device dev;
        } reattach_device;

        struct {
            uint64_t gfn;
            uint64_t dfn;
        } lookup_page;

        struct {
            /* Maximum number of IOMMU context this domain can use. */
            uint16_t max_ctx_no;
            /* Maximum number of pages that can be modified in a single map/unmap operation. */
            uint32_t max_nr_pages;
            /* Maximum device address (iova) that the guest can use for mappings. */
            uint64_t max_iova_addr;
        } cap;
    };
};

typedef struct pv_iommu_op pv_iommu_op_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_op_t);

/* xenemu: the x86-64 layout, pinned. A mismatch fails the build. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#include <cstddef>
#define __XEN_PV_IOMMU_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stddef.h>
#define __XEN_PV_IOMMU_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#include <stddef.h>
#define __XEN_PV_IOMMU_ASSERT(cond, name) \
    typedef char __xen_pv_iommu_assert_ ## name[(cond) ? 1 : -1]
#endif

__XEN_PV_IOMMU_ASSERT(sizeof(struct physdev_pci_device) == 4, pci_dev_size);
__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_op) == 32, op_size);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, subop_id) == 0, subop_id);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, ctx_no) == 2, ctx_no);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, flags) == 4, flags);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, map_pages.gfn) == 8, map_gfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, map_pages.dfn) == 16, map_dfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, map_pages.nr_pages) == 24, map_nr_pages);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, map_pages.mapped) == 28, map_mapped);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, unmap_pages.dfn) == 8, unmap_dfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, unmap_pages.nr_pages) == 16, unmap_nr_pages);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, unmap_pages.unmapped) == 20, unmap_unmapped);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, reattach_device.dev.seg) == 8, dev_seg);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, reattach_device.dev.bus) == 10, dev_bus);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, reattach_device.dev.devfn) == 11, dev_devfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, lookup_page.gfn) == 8, lookup_gfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, lookup_page.dfn) == 16, lookup_dfn);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, cap.max_ctx_no) == 8, cap_max_ctx_no);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, cap.max_nr_pages) == 12, cap_max_nr_pages);
__XEN_PV_IOMMU_ASSERT(offsetof(struct pv_iommu_op, cap.max_iova_addr) == 16, cap_max_iova_addr);

#undef __XEN_PV_IOMMU_ASSERT

#endif /* __XEN_PUBLIC_PV_IOMMU_H__ */
