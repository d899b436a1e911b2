/* SPDX-License-Identifier: MIT */
/**
 * pv-iommu.h
 *
 * Paravirtualized IOMMU driver interface.
 *
 * Copyright (c) 2024 Teddy Astie <teddy.astie@vates.tech>
 *
 * xenemu's copy of the header of revision 2 of the interface: Xen RFC v5-v7
 * (blob 6f50aea4b7, 2025-01 .. 2025-11; v4 differs only in lacking pad0 and
 * spelling the flags (1 << n)). Select it with -Iabi/rev2 before -Iabi: it
 * takes xen.h and physdev.h from abi/xen/. Every struct, name and value is
 * upstream's; additions, each marked "xenemu:":
 *  - XENEMU_PV_IOMMU_REVISION, so that xenemu_client.h can tell which
 *    revision a program was built against;
 *  - struct pv_iommu_flush_nested, empty upstream (a GNU C extension), is
 *    marked __extension__ so the header builds as pedantic C99 and C11; a
 *    compiler without GNU extensions gets a one-byte placeholder member;
 *  - static asserts pinning every size and offset of the x86-64 ABI (a build
 *    where uint64_t is not 8-aligned, such as i386, fails them: upstream's
 *    uint64_aligned_t fallback lays these structs out differently there).
 *
 * The hypercall: long do_iommu_op(unsigned int subop, XEN_GUEST_HANDLE(void) arg),
 * number __HYPERVISOR_iommu_op (43); arg points to the struct named below for
 * each sub-op.
 */

#ifndef __XEN_PUBLIC_PV_IOMMU_H__
#define __XEN_PUBLIC_PV_IOMMU_H__

/* xenemu: <xen/...> rather than upstream's "...": these live in abi/xen/. */
#include <xen/xen.h>
#include <xen/physdev.h>

/* xenemu: which revision of the interface this header is. */
#define XENEMU_PV_IOMMU_REVISION 2

#ifndef uint64_aligned_t
#define uint64_aligned_t uint64_t
#endif

#define IOMMU_DEFAULT_CONTEXT (0)

enum pv_iommu_cmd {
    /* Basic cmd */
    IOMMU_noop = 0,
    IOMMU_query_capabilities = 1,
    IOMMU_init = 2,
    IOMMU_alloc_context = 3,
    IOMMU_free_context = 4,
    IOMMU_reattach_device = 5,
    IOMMU_map_pages = 6,
    IOMMU_unmap_pages = 7,
    IOMMU_remote_cmd = 8,

    /* Extended cmd */
    IOMMU_alloc_nested = 9,      /* if IOMMUCAP_nested */
    IOMMU_flush_nested = 10,     /* if IOMMUCAP_nested */
    IOMMU_attach_pasid = 11,     /* if IOMMUCAP_pasid */
    IOMMU_detach_pasid = 12,     /* if IOMMUCAP_pasid */
};

/**
 * If set, default context allow DMA to domain memory.
 * If cleared, default context blocks all DMA to domain memory.
 */
#define IOMMUCAP_default_identity  (1U << 0)

/**
 * IOMMU_MAP_cache support.
 */
#define IOMMUCAP_cache     (1U << 1)

/**
 * If set, IOMMU_alloc_nested and IOMMU_flush_nested are supported.
 */
#define IOMMUCAP_nested    (1U << 2)

/**
 * If set, IOMMU_attach_pasid and IOMMU_detach_pasid are supported and
 * a device PASID can be specified in reattach_context.
 */
#define IOMMUCAP_pasid     (1U << 3)

/**
 * If set, IOMMU_ALLOC_identity is supported in pv_iommu_alloc.
 */
#define IOMMUCAP_identity  (1U << 4)

/**
 * IOMMU_query_capabilities
 * Query PV-IOMMU capabilities for this domain.
 */
struct pv_iommu_capabilities {
    /*
     * OUT: Maximum device address (iova) that the guest can use for mappings.
     */
    uint64_aligned_t max_iova_addr;

    /* OUT: IOMMU capabilities flags */
    uint32_t cap_flags;

    /* OUT: Mask of all supported page sizes. */
    uint32_t pgsize_mask;

    /* OUT: Maximum pasid (if IOMMUCAP_pasid) */
    uint32_t max_pasid;

    /* OUT: Maximum number of IOMMU context this domain can use. */
    uint16_t max_ctx_no;

    uint16_t pad0;
};
typedef struct pv_iommu_capabilities pv_iommu_capabilities_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_capabilities_t);

/**
 * IOMMU_init
 * Initialize PV-IOMMU for this domain.
 *
 * Fails with -EACCESS if PV-IOMMU is already initialized.
 */
struct pv_iommu_init {
    /* IN: Maximum number of IOMMU context this domain can use. */
    uint32_t max_ctx_no;

    /* IN: Arena size in pages (in power of two) */
    uint32_t arena_order;
};
typedef struct pv_iommu_init pv_iommu_init_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_init_t);

/**
 * Create a 1:1 identity mapped context to domain memory
 * (needs IOMMUCAP_identity).
 */
#define IOMMU_ALLOC_identity (1 << 0)

/**
 * IOMMU_alloc_context
 * Allocate an IOMMU context.
 * Fails with -ENOSPC if no context number is available.
 */
struct pv_iommu_alloc {
    /* OUT: allocated IOMMU context number */
    uint16_t ctx_no;

    /* IN: allocation flags */
    uint32_t alloc_flags;
};
typedef struct pv_iommu_alloc pv_iommu_alloc_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_alloc_t);

/**
 * Move all devices to default context before freeing the context.
 */
#define IOMMU_FREE_reattach_default (1 << 0)

/**
 * IOMMU_free_context
 * Destroy a IOMMU context.
 *
 * If IOMMU_FREE_reattach_default is specified, move all context devices to
 * default context before destroying this context.
 *
 * If there are devices in the context and IOMMU_FREE_reattach_default is not
 * specified, fail with -EBUSY.
 *
 * The default context can't be destroyed.
 */
struct pv_iommu_free {
    /* IN: IOMMU context number to free */
    uint16_t ctx_no;

    /* IN: Free operation specific flags */
    uint32_t free_flags;
};
typedef struct pv_iommu_free pv_iommu_free_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_free_t);

/* Device has read access */
#define IOMMU_MAP_readable (1 << 0)

/* Device has write access */
#define IOMMU_MAP_writeable (1 << 1)

/* Enforce DMA coherency */
#define IOMMU_MAP_cache (1 << 2)

/**
 * IOMMU_map_pages
 * Map pages on a IOMMU context.
 *
 * pgsize must be supported by pgsize_mask.
 * Fails with -EINVAL if mapping on top of another mapping.
 * Report actually mapped page count in mapped field (regardless of failure).
 */
struct pv_iommu_map_pages {
    /* IN: IOMMU context number */
    uint16_t ctx_no;

    /* IN: Guest frame number */
    uint64_aligned_t gfn;

    /* IN: Device frame number */
    uint64_aligned_t dfn;

    /* IN: Map flags */
    uint32_t map_flags;

    /* IN: Size of pages to map */
    uint32_t pgsize;

    /* IN: Number of pages to map */
    uint32_t nr_pages;

    /* OUT: Number of pages actually mapped */
    uint32_t mapped;
};
typedef struct pv_iommu_map_pages pv_iommu_map_pages_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_map_pages_t);

/**
 * IOMMU_unmap_pages
 * Unmap pages on a IOMMU context.
 *
 * pgsize must be supported by pgsize_mask.
 * Report actually unmapped page count in mapped field (regardless of failure).
 * Fails with -ENOENT when attempting to unmap a page without any mapping
 */
struct pv_iommu_unmap_pages {
    /* IN: IOMMU context number */
    uint16_t ctx_no;

    /* IN: Device frame number */
    uint64_aligned_t dfn;

    /* IN: Size of pages to unmap */
    uint32_t pgsize;

    /* IN: Number of pages to unmap */
    uint32_t nr_pages;

    /* OUT: Number of pages actually unmapped */
    uint32_t unmapped;
};
typedef struct pv_iommu_unmap_pages pv_iommu_unmap_pages_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_unmap_pages_t);

/**
 * IOMMU_reattach_device
 * Reattach a device to another IOMMU context.
 * Fails with -ENODEV if no such device exist.
 */
struct pv_iommu_reattach_device {
    /* IN: Target IOMMU context number */
    uint16_t ctx_no;

    /* IN: Physical device to move */
    struct physdev_pci_device dev;

    /* IN: PASID of the device (if IOMMUCAP_pasid) */
    uint32_t pasid;
};
typedef struct pv_iommu_reattach_device pv_iommu_reattach_device_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_reattach_device_t);


/**
 * IOMMU_remote_cmd
 * Do a PV-IOMMU operation on another domain.
 * Current domain needs to be allowed to act on the target domain, otherwise
 * fails with -EPERM.
 */
struct pv_iommu_remote_cmd {
    /* IN: Target domain to do the subop on */
    uint16_t domid;

    /* IN: Command to do on target domain. */
    uint16_t subop;

    /* INOUT: Command argument from current domain memory */
    XEN_GUEST_HANDLE(void) arg;
};
typedef struct pv_iommu_remote_cmd pv_iommu_remote_cmd_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_remote_cmd_t);

/**
 * IOMMU_alloc_nested
 * Create a nested IOMMU context (needs IOMMUCAP_nested).
 *
 * This context uses a platform-specific page table from domain address space
 * specified in pgtable_gfn and use it for nested translations.
 *
 * Explicit flushes needs to be submited with IOMMU_flush_nested on
 * modification of the nested pagetable to ensure coherency between IOTLB and
 * nested page table.
 *
 * This context can be destroyed using IOMMU_free_context.
 * This context cannot be modified using map_pages, unmap_pages.
 */
struct pv_iommu_alloc_nested {
    /* OUT: allocated IOMMU context number */
    uint16_t ctx_no;

    /* IN: guest frame number of the nested page table */
    uint64_aligned_t pgtable_gfn;

    /* IN: nested mode flags */
    uint64_aligned_t nested_flags;
};
typedef struct pv_iommu_alloc_nested pv_iommu_alloc_nested_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_alloc_nested_t);

/**
 * IOMMU_flush_nested (needs IOMMUCAP_nested)
 * Flush the IOTLB for nested translation.
 *
 * xenemu: empty upstream, which C allows only as a GNU extension (size 0;
 * C++ gives an empty struct size 1). __extension__ keeps -pedantic quiet;
 * without GNU C a placeholder byte stands in. Xen never reads this struct
 * (IOMMU_flush_nested answers -EOPNOTSUPP), so its size is never on the wire.
 */
#if defined(__GNUC__) || defined(__cplusplus)
#if defined(__GNUC__)
__extension__
#endif
struct pv_iommu_flush_nested {
    /* TODO */
};
#else
struct pv_iommu_flush_nested {
    char xenemu_placeholder;    /* xenemu: ISO C has no empty struct */
};
#endif
typedef struct pv_iommu_flush_nested pv_iommu_flush_nested_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_flush_nested_t);

/**
 * IOMMU_attach_pasid (needs IOMMUCAP_pasid)
 * Attach a new device-with-pasid to a IOMMU context.
 * If a matching device-with-pasid already exists (globally),
 * fail with -EEXIST.
 * If pasid is 0, fails with -EINVAL.
 * If physical device doesn't exist in domain, fail with -ENOENT.
 */
struct pv_iommu_attach_pasid {
    /* IN: IOMMU context to add the device-with-pasid in */
    uint16_t ctx_no;

    /* IN: Physical device */
    struct physdev_pci_device dev;

    /* IN: pasid of the device to attach */
    uint32_t pasid;
};
typedef struct pv_iommu_attach_pasid pv_iommu_attach_pasid_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_attach_pasid_t);

/**
 * IOMMU_detach_pasid (needs IOMMUCAP_pasid)
 * detach a device-with-pasid.
 * If the device-with-pasid doesn't exist or belong to the domain,
 * fail with -ENOENT.
 * If pasid is 0, fails with -EINVAL.
 */
struct pv_iommu_detach_pasid {
    /* IN: Physical device */
    struct physdev_pci_device dev;

    /* pasid of the device to detach */
    uint32_t pasid;
};
typedef struct pv_iommu_detach_pasid pv_iommu_detach_pasid_t;
DEFINE_XEN_GUEST_HANDLE(pv_iommu_detach_pasid_t);

/* long do_iommu_op(int subop, XEN_GUEST_HANDLE_PARAM(void) arg) */

/* xenemu: the x86-64 layout of v7, pinned. A mismatch fails the build. */
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
#define __XEN_PV_IOMMU_AT(type, field, off, name) \
    __XEN_PV_IOMMU_ASSERT(offsetof(struct type, field) == (off), name)

__XEN_PV_IOMMU_ASSERT(sizeof(struct physdev_pci_device) == 4, pci_dev_size);
__XEN_PV_IOMMU_ASSERT(sizeof(XEN_GUEST_HANDLE(void)) == 8, handle_size);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_capabilities) == 24, cap_size);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, max_iova_addr, 0, cap_max_iova_addr);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, cap_flags, 8, cap_cap_flags);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, pgsize_mask, 12, cap_pgsize_mask);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, max_pasid, 16, cap_max_pasid);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, max_ctx_no, 20, cap_max_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_capabilities, pad0, 22, cap_pad0);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_init) == 8, init_size);
__XEN_PV_IOMMU_AT(pv_iommu_init, max_ctx_no, 0, init_max_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_init, arena_order, 4, init_arena_order);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_alloc) == 8, alloc_size);
__XEN_PV_IOMMU_AT(pv_iommu_alloc, ctx_no, 0, alloc_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_alloc, alloc_flags, 4, alloc_alloc_flags);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_free) == 8, free_size);
__XEN_PV_IOMMU_AT(pv_iommu_free, ctx_no, 0, free_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_free, free_flags, 4, free_free_flags);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_map_pages) == 40, map_size);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, ctx_no, 0, map_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, gfn, 8, map_gfn);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, dfn, 16, map_dfn);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, map_flags, 24, map_map_flags);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, pgsize, 28, map_pgsize);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, nr_pages, 32, map_nr_pages);
__XEN_PV_IOMMU_AT(pv_iommu_map_pages, mapped, 36, map_mapped);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_unmap_pages) == 32, unmap_size);
__XEN_PV_IOMMU_AT(pv_iommu_unmap_pages, ctx_no, 0, unmap_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_unmap_pages, dfn, 8, unmap_dfn);
__XEN_PV_IOMMU_AT(pv_iommu_unmap_pages, pgsize, 16, unmap_pgsize);
__XEN_PV_IOMMU_AT(pv_iommu_unmap_pages, nr_pages, 20, unmap_nr_pages);
__XEN_PV_IOMMU_AT(pv_iommu_unmap_pages, unmapped, 24, unmap_unmapped);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_reattach_device) == 12, reattach_size);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, ctx_no, 0, reattach_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, dev, 2, reattach_dev);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, dev.seg, 2, reattach_dev_seg);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, dev.bus, 4, reattach_dev_bus);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, dev.devfn, 5, reattach_dev_devfn);
__XEN_PV_IOMMU_AT(pv_iommu_reattach_device, pasid, 8, reattach_pasid);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_remote_cmd) == 16, remote_size);
__XEN_PV_IOMMU_AT(pv_iommu_remote_cmd, domid, 0, remote_domid);
__XEN_PV_IOMMU_AT(pv_iommu_remote_cmd, subop, 2, remote_subop);
__XEN_PV_IOMMU_AT(pv_iommu_remote_cmd, arg, 8, remote_arg);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_alloc_nested) == 24, alloc_nested_size);
__XEN_PV_IOMMU_AT(pv_iommu_alloc_nested, ctx_no, 0, alloc_nested_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_alloc_nested, pgtable_gfn, 8, alloc_nested_pgtable_gfn);
__XEN_PV_IOMMU_AT(pv_iommu_alloc_nested, nested_flags, 16, alloc_nested_nested_flags);

#if defined(__cplusplus)
__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_flush_nested) == 1, flush_nested_size);
#elif defined(__GNUC__)
__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_flush_nested) == 0, flush_nested_size);
#endif

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_attach_pasid) == 12, attach_pasid_size);
__XEN_PV_IOMMU_AT(pv_iommu_attach_pasid, ctx_no, 0, attach_pasid_ctx_no);
__XEN_PV_IOMMU_AT(pv_iommu_attach_pasid, dev, 2, attach_pasid_dev);
__XEN_PV_IOMMU_AT(pv_iommu_attach_pasid, pasid, 8, attach_pasid_pasid);

__XEN_PV_IOMMU_ASSERT(sizeof(struct pv_iommu_detach_pasid) == 8, detach_pasid_size);
__XEN_PV_IOMMU_AT(pv_iommu_detach_pasid, dev, 0, detach_pasid_dev);
__XEN_PV_IOMMU_AT(pv_iommu_detach_pasid, pasid, 4, detach_pasid_pasid);

#undef __XEN_PV_IOMMU_AT
#undef __XEN_PV_IOMMU_ASSERT

#endif /* __XEN_PUBLIC_PV_IOMMU_H__ */
