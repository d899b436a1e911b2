/* SPDX-License-Identifier: MIT */
/*
 * io_pgtable_generic.c - the built-in io-pgtable format XEN_IOMMU_GENERIC:
 * a software page table a driver keeps beside the hypervisor's (the Xen
 * PV-IOMMU driver series answers iova_to_phys from one). Written here, not
 * from any kernel format: a radix tree of 4 levels of 512 entries over iova
 * bits 12-47, 4 KiB leaves holding the physical address; a larger page is
 * recorded as its 4 KiB pages. As the kernel's formats: map_pages adds to
 * *mapped and refuses (-EEXIST) a page already mapped, stopping there;
 * unmap_pages stops at the first page not mapped and returns the bytes
 * unmapped; iova_to_phys of an unmapped iova is 0. The cfg is not read
 * (the series passes an empty one): iovas from 2^48 are -ERANGE. One lock
 * per table keeps CPUs' calls apart (the kernel's formats are lock-free).
 */
#define _GNU_SOURCE
#include <linux/io-pgtable.h>
#include <linux/iommu.h>

#include <pthread.h>
#include <stdlib.h>

#include "workbench.h"

#define LEVELS      4
#define BITS        9
#define ENTRIES     (1u << BITS)
#define GRANULE     4096UL
#define IOVA_BITS   (12 + LEVELS * BITS)
#define PRESENT     1ULL            /* leaf: physical address | PRESENT */

struct table {
    void *slot[ENTRIES];            /* lower tables; at the last level, leaves cast to pointers */
};

struct generic {
    struct io_pgtable iop;
    pthread_mutex_t lock;
    struct table *root;
};

static struct generic *to_generic(struct io_pgtable_ops *ops)
{
    return container_of(io_pgtable_ops_to_pgtable(ops), struct generic, iop);
}

static unsigned int index_at(unsigned long iova, int level)
{
    return (unsigned int)(iova >> (12 + (LEVELS - 1 - level) * BITS)) & (ENTRIES - 1);
}

/* The leaf slot of iova; tables made on the way when create, else NULL where one is missing. */
static void **leaf(struct generic *g, unsigned long iova, bool create)
{
    struct table **t = &g->root;
    int level;

    for (level = 0; level < LEVELS; level++) {
        if (!*t) {
            if (!create)
                return NULL;
            *t = calloc(1, sizeof(**t));
            if (!*t)
                return NULL;
        }
        if (level == LEVELS - 1)
            return &(*t)->slot[index_at(iova, level)];
        t = (struct table **)&(*t)->slot[index_at(iova, level)];
    }
    return NULL;
}

static int generic_map_pages(struct io_pgtable_ops *ops, unsigned long iova, phys_addr_t paddr,
                             size_t pgsize, size_t pgcount, int prot, gfp_t gfp, size_t *mapped)
{
    struct generic *g = to_generic(ops);
    size_t i, pages = pgsize / GRANULE * pgcount;
    int ret = 0;

    (void)gfp;
    if (!(prot & (IOMMU_READ | IOMMU_WRITE)))
        return 0;                   /* as the kernel's formats: nothing to map, no error */
    if (pgsize % GRANULE || (iova | paddr) % GRANULE)
        return -EINVAL;
    pthread_mutex_lock(&g->lock);
    for (i = 0; i < pages; i++) {
        unsigned long at = iova + i * GRANULE;
        void **slot;

        if (at >> IOVA_BITS) {
            ret = -ERANGE;
            break;
        }
        slot = leaf(g, at, true);
        if (!slot) {
            ret = -ENOMEM;
            break;
        }
        if (*slot) {
            ret = -EEXIST;
            break;
        }
        *slot = (void *)(uintptr_t)((paddr + i * GRANULE) | PRESENT);
        *mapped += GRANULE;
    }
    pthread_mutex_unlock(&g->lock);
    return ret;
}

static size_t generic_unmap_pages(struct io_pgtable_ops *ops, unsigned long iova, size_t pgsize,
                                  size_t pgcount, struct iommu_iotlb_gather *gather)
{
    struct generic *g = to_generic(ops);
    size_t i, pages = pgsize / GRANULE * pgcount;

    pthread_mutex_lock(&g->lock);
    for (i = 0; i < pages; i++) {
        void **slot = leaf(g, iova + i * GRANULE, false);

        if (!slot || !*slot)
            break;
        *slot = NULL;
    }
    pthread_mutex_unlock(&g->lock);
    if (i && gather)
        io_pgtable_tlb_add_page(&g->iop, gather, iova, i * GRANULE);
    return i * GRANULE;
}

static phys_addr_t generic_iova_to_phys(struct io_pgtable_ops *ops, unsigned long iova)
{
    struct generic *g = to_generic(ops);
    phys_addr_t phys = 0;
    void **slot;

    pthread_mutex_lock(&g->lock);
    slot = leaf(g, iova, false);
    if (slot && *slot)
        phys = ((phys_addr_t)(uintptr_t)*slot & ~(phys_addr_t)(GRANULE - 1)) | (iova % GRANULE);
    pthread_mutex_unlock(&g->lock);
    return phys;
}

static struct io_pgtable *generic_alloc(struct io_pgtable_cfg *cfg, void *cookie)
{
    struct generic *g = calloc(1, sizeof(*g));

    (void)cfg;
    (void)cookie;
    if (!g)
        return NULL;
    pthread_mutex_init(&g->lock, NULL);
    g->iop.ops.map_pages = generic_map_pages;
    g->iop.ops.unmap_pages = generic_unmap_pages;
    g->iop.ops.iova_to_phys = generic_iova_to_phys;
    return &g->iop;
}

static void free_table(struct table *t, int level)
{
    unsigned int i;

    if (!t)
        return;
    for (i = 0; level < LEVELS - 1 && i < ENTRIES; i++)
        free_table(t->slot[i], level + 1);
    free(t);
}

static void generic_free(struct io_pgtable *iop)
{
    struct generic *g = container_of(iop, struct generic, iop);

    free_table(g->root, 0);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

const struct io_pgtable_init_fns wb_io_pgtable_generic_fns = {
    .alloc = generic_alloc,
    .free = generic_free,
};
