/* SPDX-License-Identifier: MIT */
/*
 * memory.h - __HYPERVISOR_memory_op's XENMEM_reserved_device_memory_map, as
 * Xen's public/memory.h declares it (Xen 4.6 and later); x86-64 layout. The
 * one header both revisions' include roots find (-Iabi, -Iabi/rev2 -Iabi).
 *
 * long do_memory_op(unsigned long cmd, XEN_GUEST_HANDLE(void) arg): the
 * command is cmd & MEMOP_CMD_MASK; the bits above MEMOP_EXTENT_SHIFT are a
 * start extent, which this command refuses (-EINVAL).
 */
#ifndef __XEN_PUBLIC_MEMORY_H__
#define __XEN_PUBLIC_MEMORY_H__

#include "xen.h"
#include "physdev.h"

#define MEMOP_EXTENT_SHIFT 6
#define MEMOP_CMD_MASK     ((1 << MEMOP_EXTENT_SHIFT) - 1)

/*
 * The reserved device memory (RMRRs) of one device, or of all: entries are
 * written to buffer while they fit; nr_entries is set to the number there
 * are. The header upstream says a short buffer is -ERANGE; the code
 * (xen/common/memory.c) returns -ENOBUFS, as xenemu does.
 */
#define XENMEM_reserved_device_memory_map 27

struct xen_reserved_device_memory {
    uint64_t start_pfn;             /* xen_pfn_t */
    uint64_t nr_pages;              /* xen_ulong_t */
};
typedef struct xen_reserved_device_memory xen_reserved_device_memory_t;
DEFINE_XEN_GUEST_HANDLE(xen_reserved_device_memory_t);

struct xen_reserved_device_memory_map {
#define XENMEM_RDM_ALL 1            /* every device's ranges (dev ignored) */
    uint32_t flags;                 /* IN */
    unsigned int nr_entries;        /* IN: room in buffer; OUT: ranges there are */
    XEN_GUEST_HANDLE(xen_reserved_device_memory_t) buffer;   /* OUT */
    union {
        physdev_pci_device_t pci;
    } dev;                          /* IN */
};
typedef struct xen_reserved_device_memory_map xen_reserved_device_memory_map_t;
DEFINE_XEN_GUEST_HANDLE(xen_reserved_device_memory_map_t);

/* xenemu: the x86-64 layout, pinned. A mismatch fails the build. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#include <cstddef>
#define __XEN_MEMORY_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stddef.h>
#define __XEN_MEMORY_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#include <stddef.h>
#define __XEN_MEMORY_ASSERT(cond, name) typedef char __xen_memory_assert_ ## name[(cond) ? 1 : -1]
#endif
__XEN_MEMORY_ASSERT(sizeof(struct xen_reserved_device_memory) == 16, rdm_size);
__XEN_MEMORY_ASSERT(offsetof(struct xen_reserved_device_memory, nr_pages) == 8, rdm_nr_pages);
__XEN_MEMORY_ASSERT(sizeof(struct xen_reserved_device_memory_map) == 24, rdm_map_size);
__XEN_MEMORY_ASSERT(offsetof(struct xen_reserved_device_memory_map, nr_entries) == 4, rdm_map_nr);
__XEN_MEMORY_ASSERT(offsetof(struct xen_reserved_device_memory_map, buffer) == 8, rdm_map_buffer);
__XEN_MEMORY_ASSERT(offsetof(struct xen_reserved_device_memory_map, dev) == 16, rdm_map_dev);

#endif /* __XEN_PUBLIC_MEMORY_H__ */
