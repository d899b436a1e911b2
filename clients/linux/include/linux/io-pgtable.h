/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: the io-pgtable interface. The kernel's formats (ARM LPAE,
 * v7s, AMD, DART) are GPL code and are not shipped: a format is a slot a
 * driver fills with its own init functions (io_pgtable_register_format, a
 * workbench addition: the kernel's table is built in), or the workbench's
 * spare slot IO_PGTABLE_WORKBENCH_FMT. One format is built in, written here:
 * XEN_IOMMU_GENERIC, the software table the Xen PV-IOMMU driver series keeps
 * beside Xen's for iova_to_phys (a driver may register over it with
 * io_pgtable_register_format(XEN_IOMMU_GENERIC, NULL) then its own).
 * alloc_io_pgtable_ops calls the slot's
 * alloc with a copy of cfg, then fills iop->fmt, cookie and cfg as the kernel
 * does; free_io_pgtable_ops flushes the TLB (cfg.tlb->tlb_flush_all) and
 * calls free.
 */
#ifndef _WB_LINUX_IO_PGTABLE_H
#define _WB_LINUX_IO_PGTABLE_H

#include <linux/kernel.h>

enum io_pgtable_fmt {
    ARM_32_LPAE_S1,
    ARM_32_LPAE_S2,
    ARM_64_LPAE_S1,
    ARM_64_LPAE_S2,
    ARM_V7S,
    ARM_MALI_LPAE,
    AMD_IOMMU_V1,
    AMD_IOMMU_V2,
    APPLE_DART,
    APPLE_DART2,
    XEN_IOMMU_GENERIC,            /* the PV-IOMMU series' software table: built in here */
    IO_PGTABLE_WORKBENCH_FMT,     /* workbench: a slot for a driver's own format */
    IO_PGTABLE_NUM_FMTS,
};

struct iommu_iotlb_gather;

struct iommu_flush_ops {
    void (*tlb_flush_all)(void *cookie);
    void (*tlb_flush_walk)(unsigned long iova, size_t size, size_t granule, void *cookie);
    void (*tlb_add_page)(struct iommu_iotlb_gather *gather, unsigned long iova, size_t granule,
                         void *cookie);
};

struct io_pgtable_cfg {
    unsigned long quirks;
    unsigned long pgsize_bitmap;
    unsigned int ias;
    unsigned int oas;
    bool coherent_walk;
    const struct iommu_flush_ops *tlb;
    struct device *iommu_dev;
    /* A custom allocator for table pages (NULL: the format's own); the built-in format ignores it. */
    void *(*alloc)(void *cookie, size_t size, gfp_t gfp);
    void (*free)(void *cookie, void *pages, size_t size);
};

struct io_pgtable_ops {
    int (*map_pages)(struct io_pgtable_ops *ops, unsigned long iova, phys_addr_t paddr,
                     size_t pgsize, size_t pgcount, int prot, gfp_t gfp, size_t *mapped);
    size_t (*unmap_pages)(struct io_pgtable_ops *ops, unsigned long iova, size_t pgsize,
                          size_t pgcount, struct iommu_iotlb_gather *gather);
    phys_addr_t (*iova_to_phys)(struct io_pgtable_ops *ops, unsigned long iova);
};

struct io_pgtable {
    enum io_pgtable_fmt fmt;
    void *cookie;
    struct io_pgtable_cfg cfg;
    struct io_pgtable_ops ops;
};

#define io_pgtable_ops_to_pgtable(x) container_of((x), struct io_pgtable, ops)

struct io_pgtable_init_fns {
    struct io_pgtable *(*alloc)(struct io_pgtable_cfg *cfg, void *cookie);
    void (*free)(struct io_pgtable *iop);
};

/* Workbench: fill a format's slot (-EINVAL out of range, -EBUSY taken); NULL empties it. */
int io_pgtable_register_format(enum io_pgtable_fmt fmt, const struct io_pgtable_init_fns *fns);

struct io_pgtable_ops *alloc_io_pgtable_ops(enum io_pgtable_fmt fmt, struct io_pgtable_cfg *cfg,
                                            void *cookie);
void free_io_pgtable_ops(struct io_pgtable_ops *ops);

static inline void io_pgtable_tlb_flush_all(struct io_pgtable *iop)
{
    if (iop->cfg.tlb && iop->cfg.tlb->tlb_flush_all)
        iop->cfg.tlb->tlb_flush_all(iop->cookie);
}
static inline void io_pgtable_tlb_add_page(struct io_pgtable *iop, struct iommu_iotlb_gather *gather,
                                           unsigned long iova, size_t granule)
{
    if (iop->cfg.tlb && iop->cfg.tlb->tlb_add_page)
        iop->cfg.tlb->tlb_add_page(gather, iova, granule, iop->cookie);
}

#endif
