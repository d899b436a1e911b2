/* SPDX-License-Identifier: MIT */
/**
 * pv-iommu-nested.h
 *
 * xenemu extension of revision 2 of the PV-IOMMU interface: nested
 * translation with guest-owned stage-1 tables, and PASIDs. NOT Xen's: Xen
 * v4-v7 answer sub-ops 9-12 with -EOPNOTSUPP. xenemu serves them only on a
 * machine with `nested = true` (abi/NESTED.md has the semantics, the errors
 * and what Xen may choose differently).
 *
 * Include it after (or instead of) <xen/pv-iommu.h> (-Iabi/rev2 -Iabi). It
 * keeps upstream's structs and gives the two things upstream leaves open:
 *  - the argument of IOMMU_flush_nested, empty upstream: struct
 *    xenemu_iommu_flush_nested (pass it where upstream's would go);
 *  - the meaning of alloc_nested's fields: ctx_no is IN as well as OUT (IN:
 *    the stage-2 context, 0 for the domain's default context, so a caller
 *    that zeroes the struct gets its guest-physical space as stage 2),
 *    pgtable_gfn is a frame number in the stage-2 context's input space,
 *    nested_flags must be XENEMU_NESTED_FORMAT_X86_64 (0).
 */

#ifndef __XENEMU_PV_IOMMU_NESTED_H__
#define __XENEMU_PV_IOMMU_NESTED_H__

#include <xen/pv-iommu.h>

/* alloc_nested.nested_flags: the stage-1 table format. The x86-64 4-level
 * format of VT-d scalable-mode first-level tables, 4 KiB leaves only (any
 * other value is -EINVAL). */
#define XENEMU_NESTED_FORMAT_X86_64 0ULL
/* nested_flags bits 0-7 hold the format; above them, options. I/O page
 * faults: the context's stage-1 not-present faults become page requests
 * (IOMMU_read_page_requests, IOMMU_page_response) instead of faults. */
#define XENEMU_NESTED_FORMAT_MASK   0xFFULL
#define XENEMU_NESTED_PAGE_REQUESTS (1ULL << 8)

/* A stage-1 entry (little-endian 64-bit, 512 per 4 KiB table page, levels
 * 4..1 indexed by IOVA bits 47..39, 38..30, 29..21, 20..12). Only these bits
 * are read; a write needs R/W at every level. PS in a level 4..2 entry is a
 * fault (large stage-1 pages are not modelled). */
#define XENEMU_S1_PTE_P    (1ULL << 0)     /* present */
#define XENEMU_S1_PTE_RW   (1ULL << 1)     /* writes allowed */
#define XENEMU_S1_PTE_PS   (1ULL << 7)     /* large page: refused */
#define XENEMU_S1_PTE_ADDR 0x000FFFFFFFFFF000ULL  /* next table / page, bits 12..51 */

/* PASIDs are 1..max_pasid (query_capabilities, at most 2^20 - 1); 0 is the
 * device's requests without a PASID (RID_PASID), which reattach_device
 * routes. */
#define XENEMU_PASID_MAX 0xFFFFFU

/* flush_type of struct xenemu_iommu_flush_nested. */
#define XENEMU_IOMMU_FLUSH_NESTED_all   0U  /* every translation of ctx_no */
#define XENEMU_IOMMU_FLUSH_NESTED_pasid 1U  /* those cached for one PASID */
#define XENEMU_IOMMU_FLUSH_NESTED_range 2U  /* pages [dfn, dfn+nr_pages) of one PASID */

/**
 * IOMMU_flush_nested (needs IOMMUCAP_nested), xenemu's argument.
 * Drops cached combined (stage 1 + stage 2) translations of a nested
 * context. Until a guest flushes, DMA may keep using what the IOMMU cached
 * before the guest edited its stage-1 table, as hardware does. Read only,
 * never copied back.
 */
struct xenemu_iommu_flush_nested {
    /* IN: the nested context */
    uint16_t ctx_no;
    uint16_t pad0;

    /* IN: XENEMU_IOMMU_FLUSH_NESTED_* */
    uint32_t flush_type;

    /* IN: the PASID (_pasid, _range; ignored by _all) */
    uint32_t pasid;

    /* IN: pages to drop (_range; 0 drops nothing) */
    uint32_t nr_pages;

    /* IN: first IOVA page (_range) */
    uint64_aligned_t dfn;
};
typedef struct xenemu_iommu_flush_nested xenemu_iommu_flush_nested_t;
DEFINE_XEN_GUEST_HANDLE(xenemu_iommu_flush_nested_t);

/*
 * Dirty tracking (xenemu's extension too, served on the same machines): a
 * context allocated with XENEMU_IOMMU_ALLOC_dirty_tracking in alloc_context's
 * alloc_flags keeps VT-d second-level access/dirty bits (the IOMMU sets A in
 * a leaf entry on every access it translates, D on every write), and
 * IOMMU_read_dirty reads and clears them over a range, as iommufd's
 * IOMMU_HWPT_GET_DIRTY_BITMAP does. Xen ignores alloc_flags bits it does not
 * know and answers sub-op 13 -EOPNOTSUPP.
 */
#define XENEMU_IOMMU_ALLOC_dirty_tracking (1U << 16)

#define XENEMU_IOMMU_read_dirty 13

/* read_dirty.flags: leave the D bits set (iommufd's _NO_CLEAR). */
#define XENEMU_IOMMU_READ_DIRTY_no_clear (1U << 0)

/* Pages one call reads at most (a 128 KiB bitmap); more is -E2BIG. */
#define XENEMU_IOMMU_READ_DIRTY_MAX_PAGES (1U << 20)

/**
 * IOMMU_read_dirty (needs IOMMUCAP_nested), xenemu's sub-op 13.
 * Writes a bitmap of pages [dfn, dfn + nr_pages) of ctx_no to `bitmap`: bit
 * i (byte i / 8, bit i % 8) is 1 when page dfn + i was written by DMA since
 * its D bit was last cleared; unless no_clear, those D bits are cleared and
 * the IOMMU's cached translations of the pages invalidated, so the next
 * write sets D again. Unmapped pages read 0. Copied back on success only.
 */
struct xenemu_iommu_read_dirty {
    /* IN: a context allocated with XENEMU_IOMMU_ALLOC_dirty_tracking */
    uint16_t ctx_no;
    uint16_t pad0;

    /* IN: XENEMU_IOMMU_READ_DIRTY_* */
    uint32_t flags;

    /* IN: pages to read (0 .. XENEMU_IOMMU_READ_DIRTY_MAX_PAGES) */
    uint32_t nr_pages;

    /* OUT: pages found dirty */
    uint32_t nr_dirty;

    /* IN: first IOVA page */
    uint64_aligned_t dfn;

    /* IN: guest address of (nr_pages + 7) / 8 bytes, written whole */
    uint64_aligned_t bitmap;
};
typedef struct xenemu_iommu_read_dirty xenemu_iommu_read_dirty_t;
DEFINE_XEN_GUEST_HANDLE(xenemu_iommu_read_dirty_t);

/*
 * I/O page faults (xenemu's sub-ops 14 and 15, needs IOMMUCAP_nested). A
 * DMA with a PASID that meets a not-present stage-1 entry of a nested
 * context allocated with XENEMU_NESTED_PAGE_REQUESTS waits: a page request
 * is queued (at most XENEMU_PAGE_REQUESTS_MAX outstanding per context; past
 * that the fault is non-recoverable and logged). The guest reads requests,
 * maps the page in its stage 1, flushes, and answers the request's group;
 * the DMA is then retried (success: translated again; invalid, failure:
 * it faults).
 */
#define IOMMU_read_page_requests 14
#define IOMMU_page_response      15
#define XENEMU_PAGE_REQUESTS_MAX 32U

/* One request, as IOMMU_read_page_requests writes it to the buffer. */
#define XENEMU_PAGE_REQUEST_WRITE (1U << 0)     /* flags: the DMA writes */
struct xenemu_page_request {
    uint64_aligned_t addr;      /* the faulting IOVA */
    uint32_t pasid;
    uint32_t group;             /* what IOMMU_page_response answers; 1.. per context */
    struct physdev_pci_device dev;
    uint8_t flags;              /* XENEMU_PAGE_REQUEST_* */
    uint8_t pad0[3];
};
typedef struct xenemu_page_request xenemu_page_request_t;
DEFINE_XEN_GUEST_HANDLE(xenemu_page_request_t);

/**
 * IOMMU_read_page_requests: copies up to `max` of the context's requests
 * not yet read, oldest first, to `requests`; `count` says how many. They
 * count as read only when both the entries and this struct were copied out
 * (-EFAULT loses none). Copied back on success.
 * Errors: -ENOENT (no such context), -EINVAL (not nested, or allocated
 * without XENEMU_NESTED_PAGE_REQUESTS), -EFAULT.
 */
struct xenemu_iommu_read_page_requests {
    /* IN: the nested context */
    uint16_t ctx_no;
    uint16_t pad0;
    /* IN: entries the buffer holds (more than XENEMU_PAGE_REQUESTS_MAX is
     * never needed) */
    uint32_t max;
    /* OUT: entries written */
    uint32_t count;
    uint32_t pad1;
    /* IN: the buffer */
    XEN_GUEST_HANDLE(xenemu_page_request_t) requests;
};
typedef struct xenemu_iommu_read_page_requests xenemu_iommu_read_page_requests_t;
DEFINE_XEN_GUEST_HANDLE(xenemu_iommu_read_page_requests_t);

/* IOMMU_page_response codes: PCIe's page request group response codes. */
#define XENEMU_PAGE_RESPONSE_SUCCESS 0U   /* retry: the page is mapped now */
#define XENEMU_PAGE_RESPONSE_INVALID 1U   /* the DMA fails */
#define XENEMU_PAGE_RESPONSE_FAILURE 15U  /* the DMA fails */

/**
 * IOMMU_page_response: answers request `group` of the context. Read only.
 * Errors: -ENOENT (no such context, or no request `group` waiting for an
 * answer), -EINVAL (not nested, no page requests, unknown code), -EFAULT.
 */
struct xenemu_iommu_page_response {
    uint16_t ctx_no;            /* IN */
    uint16_t code;              /* IN: XENEMU_PAGE_RESPONSE_* */
    uint32_t group;             /* IN */
};
typedef struct xenemu_iommu_page_response xenemu_iommu_page_response_t;
DEFINE_XEN_GUEST_HANDLE(xenemu_iommu_page_response_t);

/* The x86-64 layout, pinned. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#include <cstddef>
#define __XENEMU_NESTED_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stddef.h>
#define __XENEMU_NESTED_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#include <stddef.h>
#define __XENEMU_NESTED_ASSERT(cond, name) \
    typedef char __xenemu_nested_assert_ ## name[(cond) ? 1 : -1]
#endif
#define __XENEMU_NESTED_AT(type, field, off, name) \
    __XENEMU_NESTED_ASSERT(offsetof(struct type, field) == (off), name)

__XENEMU_NESTED_ASSERT(sizeof(struct xenemu_iommu_flush_nested) == 24, flush_nested_size);
__XENEMU_NESTED_AT(xenemu_iommu_flush_nested, ctx_no, 0, flush_nested_ctx_no);
__XENEMU_NESTED_AT(xenemu_iommu_flush_nested, flush_type, 4, flush_nested_flush_type);
__XENEMU_NESTED_AT(xenemu_iommu_flush_nested, pasid, 8, flush_nested_pasid);
__XENEMU_NESTED_AT(xenemu_iommu_flush_nested, nr_pages, 12, flush_nested_nr_pages);
__XENEMU_NESTED_AT(xenemu_iommu_flush_nested, dfn, 16, flush_nested_dfn);
__XENEMU_NESTED_ASSERT(sizeof(struct xenemu_iommu_read_dirty) == 32, read_dirty_size);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, ctx_no, 0, read_dirty_ctx_no);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, flags, 4, read_dirty_flags);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, nr_pages, 8, read_dirty_nr_pages);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, nr_dirty, 12, read_dirty_nr_dirty);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, dfn, 16, read_dirty_dfn);
__XENEMU_NESTED_AT(xenemu_iommu_read_dirty, bitmap, 24, read_dirty_bitmap);

__XENEMU_NESTED_ASSERT(sizeof(struct xenemu_page_request) == 24, page_request_size);
__XENEMU_NESTED_AT(xenemu_page_request, addr, 0, page_request_addr);
__XENEMU_NESTED_AT(xenemu_page_request, pasid, 8, page_request_pasid);
__XENEMU_NESTED_AT(xenemu_page_request, group, 12, page_request_group);
__XENEMU_NESTED_AT(xenemu_page_request, dev, 16, page_request_dev);
__XENEMU_NESTED_AT(xenemu_page_request, flags, 20, page_request_flags);
__XENEMU_NESTED_ASSERT(sizeof(struct xenemu_iommu_read_page_requests) == 24,
                       read_page_requests_size);
__XENEMU_NESTED_AT(xenemu_iommu_read_page_requests, ctx_no, 0, read_page_requests_ctx_no);
__XENEMU_NESTED_AT(xenemu_iommu_read_page_requests, max, 4, read_page_requests_max);
__XENEMU_NESTED_AT(xenemu_iommu_read_page_requests, count, 8, read_page_requests_count);
__XENEMU_NESTED_AT(xenemu_iommu_read_page_requests, requests, 16,
                   read_page_requests_requests);
__XENEMU_NESTED_ASSERT(sizeof(struct xenemu_iommu_page_response) == 8, page_response_size);
__XENEMU_NESTED_AT(xenemu_iommu_page_response, ctx_no, 0, page_response_ctx_no);
__XENEMU_NESTED_AT(xenemu_iommu_page_response, code, 2, page_response_code);
__XENEMU_NESTED_AT(xenemu_iommu_page_response, group, 4, page_response_group);

#undef __XENEMU_NESTED_AT
#undef __XENEMU_NESTED_ASSERT

#endif /* __XENEMU_PV_IOMMU_NESTED_H__ */
