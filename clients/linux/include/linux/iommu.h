/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: <linux/iommu.h>, the driver's side of the IOMMU core and
 * the calls the runner (the core's user) makes. Field names, types and
 * values are the kernel's (v6.12 era: domain_alloc_paging, static identity
 * and blocked domains, map_pages/unmap_pages with page counts); only the
 * members a drivers/iommu driver and this workbench use are present. What the
 * core does with them: clients/linux/README.md.
 */
#ifndef _WB_LINUX_IOMMU_H
#define _WB_LINUX_IOMMU_H

#include <linux/device.h>
#include <linux/err.h>
#include <linux/list.h>
#include <linux/slab.h>

#define IOMMU_READ    (1 << 0)
#define IOMMU_WRITE   (1 << 1)
#define IOMMU_CACHE   (1 << 2)
#define IOMMU_NOEXEC  (1 << 3)
#define IOMMU_MMIO    (1 << 4)
#define IOMMU_PRIV    (1 << 5)

struct iommu_ops;
struct iommu_domain;
struct iommu_group;

#define __IOMMU_DOMAIN_PAGING   (1U << 0)
#define __IOMMU_DOMAIN_DMA_API  (1U << 1)
#define __IOMMU_DOMAIN_PT       (1U << 2)
#define __IOMMU_DOMAIN_DMA_FQ   (1U << 3)

#define IOMMU_DOMAIN_BLOCKED    (0U)
#define IOMMU_DOMAIN_IDENTITY   (__IOMMU_DOMAIN_PT)
#define IOMMU_DOMAIN_UNMANAGED  (__IOMMU_DOMAIN_PAGING)
#define IOMMU_DOMAIN_DMA        (__IOMMU_DOMAIN_PAGING | __IOMMU_DOMAIN_DMA_API)
#define IOMMU_DOMAIN_DMA_FQ     (__IOMMU_DOMAIN_PAGING | __IOMMU_DOMAIN_DMA_API | __IOMMU_DOMAIN_DMA_FQ)

enum iommu_cap {
    IOMMU_CAP_CACHE_COHERENCY,
    IOMMU_CAP_NOEXEC,
    IOMMU_CAP_PRE_BOOT_PROTECTION,
    IOMMU_CAP_ENFORCE_CACHE_COHERENCY,
    IOMMU_CAP_DEFERRED_FLUSH,
    IOMMU_CAP_DIRTY_TRACKING,
};

struct iommu_domain_geometry {
    dma_addr_t aperture_start;
    dma_addr_t aperture_end;
    bool force_aperture;
};

struct iommu_domain {
    unsigned int type;
    const struct iommu_domain_ops *ops;
    const struct iommu_ops *owner;       /* set by the core */
    unsigned long pgsize_bitmap;         /* from ops->pgsize_bitmap unless the driver sets it */
    struct iommu_domain_geometry geometry;
    void *iova_cookie;
};

static inline bool iommu_is_dma_domain(struct iommu_domain *domain)
{
    return domain->type & __IOMMU_DOMAIN_DMA_API;
}

/* The range one unmap (or several) must flush; the driver's iotlb_sync reads it. */
struct iommu_iotlb_gather {
    unsigned long start;
    unsigned long end;
    size_t pgsize;
    struct list_head freelist;
    bool queued;
};

static inline void iommu_iotlb_gather_init(struct iommu_iotlb_gather *gather)
{
    gather->start = ~0UL;
    gather->end = 0;
    gather->pgsize = 0;
    INIT_LIST_HEAD(&gather->freelist);
    gather->queued = false;
}

/* Grow the gathered range over [iova, iova + size). */
static inline void iommu_iotlb_gather_add_range(struct iommu_iotlb_gather *gather,
                                                unsigned long iova, size_t size)
{
    unsigned long end = iova + size - 1;

    if (gather->start > iova)
        gather->start = iova;
    if (gather->end < end)
        gather->end = end;
}

/*
 * The kernel syncs first when the new page is not adjacent or of another
 * size; here the range just grows (the sync at the end covers it), which
 * flushes at least what the kernel would.
 */
static inline void iommu_iotlb_gather_add_page(struct iommu_domain *domain,
                                               struct iommu_iotlb_gather *gather,
                                               unsigned long iova, size_t size)
{
    (void)domain;
    gather->pgsize = size;
    iommu_iotlb_gather_add_range(gather, iova, size);
}

struct iommu_domain_ops {
    int (*attach_dev)(struct iommu_domain *domain, struct device *dev);
    int (*map_pages)(struct iommu_domain *domain, unsigned long iova, phys_addr_t paddr,
                     size_t pgsize, size_t pgcount, int prot, gfp_t gfp, size_t *mapped);
    size_t (*unmap_pages)(struct iommu_domain *domain, unsigned long iova, size_t pgsize,
                          size_t pgcount, struct iommu_iotlb_gather *iotlb_gather);
    void (*flush_iotlb_all)(struct iommu_domain *domain);
    int (*iotlb_sync_map)(struct iommu_domain *domain, unsigned long iova, size_t size);
    void (*iotlb_sync)(struct iommu_domain *domain, struct iommu_iotlb_gather *iotlb_gather);
    phys_addr_t (*iova_to_phys)(struct iommu_domain *domain, dma_addr_t iova);
    bool (*enforce_cache_coherency)(struct iommu_domain *domain);
    void (*free)(struct iommu_domain *domain);
};

struct iommu_device {
    struct list_head list;
    const struct iommu_ops *ops;
    struct device *dev;
    u32 max_pasids;
};

enum iommu_resv_type {
    IOMMU_RESV_DIRECT,              /* must be mapped 1:1 (RMRR) */
    IOMMU_RESV_DIRECT_RELAXABLE,
    IOMMU_RESV_RESERVED,            /* never mapped */
    IOMMU_RESV_MSI,                 /* hardware MSI window */
    IOMMU_RESV_SW_MSI,
};

struct iommu_resv_region {
    struct list_head list;
    phys_addr_t start;
    size_t length;
    int prot;
    enum iommu_resv_type type;
    void (*free)(struct device *dev, struct iommu_resv_region *region);
};

struct iommu_ops {
    bool (*capable)(struct device *dev, enum iommu_cap);
    struct iommu_domain *(*domain_alloc_paging)(struct device *dev);
    struct iommu_device *(*probe_device)(struct device *dev);
    void (*release_device)(struct device *dev);
    void (*probe_finalize)(struct device *dev);
    struct iommu_group *(*device_group)(struct device *dev);
    void (*get_resv_regions)(struct device *dev, struct list_head *list);
    int (*def_domain_type)(struct device *dev);
    const struct iommu_domain_ops *default_domain_ops;
    unsigned long pgsize_bitmap;
    struct module *owner;
    struct iommu_domain *identity_domain;
    struct iommu_domain *blocked_domain;
    struct iommu_domain *release_domain;
    struct iommu_domain *default_domain;
};

/* -- for drivers ------------------------------------------------------------ */

int iommu_device_register(struct iommu_device *iommu, const struct iommu_ops *ops,
                          struct device *hwdev);
void iommu_device_unregister(struct iommu_device *iommu);
/* No sysfs: accepted, nothing shown. */
int iommu_device_sysfs_add(struct iommu_device *iommu, struct device *parent,
                           const void *groups, const char *fmt, ...);
void iommu_device_sysfs_remove(struct iommu_device *iommu);

struct iommu_resv_region *iommu_alloc_resv_region(phys_addr_t start, size_t length, int prot,
                                                  enum iommu_resv_type type, gfp_t gfp);

struct iommu_group *generic_device_group(struct device *dev);
void iommu_group_put(struct iommu_group *group);

void *dev_iommu_priv_get(struct device *dev);
void dev_iommu_priv_set(struct device *dev, void *priv);

/* Sync the gathered range (domain->ops->iotlb_sync), as the core does after unmaps. */
static inline void iommu_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather)
{
    if (domain->ops->iotlb_sync)
        domain->ops->iotlb_sync(domain, gather);
    iommu_iotlb_gather_init(gather);
}

/* -- the core's API (what the runner, the core's user, calls) ----------------- */

struct iommu_domain *iommu_paging_domain_alloc(struct device *dev);
void iommu_domain_free(struct iommu_domain *domain);
int iommu_attach_device(struct iommu_domain *domain, struct device *dev);
void iommu_detach_device(struct iommu_domain *domain, struct device *dev);
struct iommu_domain *iommu_get_domain_for_dev(struct device *dev);
int iommu_map(struct iommu_domain *domain, unsigned long iova, phys_addr_t paddr, size_t size,
              int prot, gfp_t gfp);
size_t iommu_unmap(struct iommu_domain *domain, unsigned long iova, size_t size);
phys_addr_t iommu_iova_to_phys(struct iommu_domain *domain, dma_addr_t iova);
void iommu_get_resv_regions(struct device *dev, struct list_head *list);
void iommu_put_resv_regions(struct device *dev, struct list_head *list);

#endif
