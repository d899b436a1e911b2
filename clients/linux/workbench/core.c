/* SPDX-License-Identifier: MIT */
/*
 * core.c - what Linux's IOMMU core (drivers/iommu/iommu.c) does to a driver,
 * written from its documented behaviour: registration probes every device,
 * each gets a group and its default domain; paging domains are allocated,
 * attached, mapped (split by pgsize_bitmap, unwound on failure), unmapped
 * (with an IOTLB gather and sync), translated and freed; reserved regions are
 * the driver's; release puts the device in release_domain and calls
 * release_device. One iommu_device per program, groups of one device.
 */
#define _GNU_SOURCE
#include <linux/iommu.h>
#include <linux/pci.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "workbench.h"

const struct bus_type pci_bus_type = { "pci" };

struct iommu_group {
    int id;
    struct device *dev;                     /* its one device */
    struct iommu_domain *domain;            /* attached now */
    struct iommu_domain *default_domain;
    struct iommu_domain *blocking_domain;   /* the core's stand-in, when the driver has none */
};

/* The core's record of a probed device (dev->iommu). */
struct dev_iommu {
    struct iommu_device *iommu_dev;
    void *priv;
};

struct wb_device {
    struct pci_dev pdev;
    struct pci_bus bus;
    int probe_status;
};

static struct wb_device *devices;
static unsigned int nr_devices;
static struct iommu_device *registered;
static int next_group_id;

static const struct iommu_ops *dev_ops(struct device *dev)
{
    return dev->iommu && dev->iommu->iommu_dev ? dev->iommu->iommu_dev->ops : NULL;
}

/* -- devices ------------------------------------------------------------------- */

int wb_core_add_devices(const struct wb_sbdf *devs, unsigned int n)
{
    unsigned int i;

    wb_core_remove_devices();
    devices = calloc(n ? n : 1, sizeof(*devices));
    if (!devices)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        struct wb_device *d = &devices[i];

        d->bus.domain_nr = devs[i].seg;
        d->bus.number = devs[i].bus;
        d->pdev.bus = &d->bus;
        d->pdev.devfn = devs[i].devfn;
        d->pdev.vendor = 0x8086;        /* no config space: a plausible constant */
        d->pdev.device = 0x1234;
        wb_format_sbdf(devs[i], d->pdev.name, sizeof(d->pdev.name));
        d->pdev.dev.init_name = d->pdev.name;
        d->pdev.dev.bus = &pci_bus_type;
        d->probe_status = -ENODEV;
    }
    nr_devices = n;
    return 0;
}

void wb_core_remove_devices(void)
{
    free(devices);
    devices = NULL;
    nr_devices = 0;
}

unsigned int wb_core_nr_devices(void) { return nr_devices; }
struct pci_dev *wb_core_device(unsigned int i) { return &devices[i].pdev; }
int wb_core_probe_status(unsigned int i) { return devices[i].probe_status; }
bool wb_core_registered(void) { return registered != NULL; }

void *dev_iommu_priv_get(struct device *dev) { return dev->iommu ? dev->iommu->priv : NULL; }

void dev_iommu_priv_set(struct device *dev, void *priv)
{
    if (!WARN_ON(!dev->iommu))
        dev->iommu->priv = priv;
}

/* -- groups -------------------------------------------------------------------- */

struct iommu_group *generic_device_group(struct device *dev)
{
    struct iommu_group *group = calloc(1, sizeof(*group));

    if (!group)
        return ERR_PTR(-ENOMEM);
    group->id = next_group_id++;
    group->dev = dev;
    return group;
}

/* No aliases or ACS in the workbench: a PCI device is its own group. */
struct iommu_group *pci_device_group(struct device *dev)
{
    if (WARN_ON(!dev_is_pci(dev)))
        return ERR_PTR(-EINVAL);
    return generic_device_group(dev);
}

void iommu_group_put(struct iommu_group *group)
{
    free(group);
}

/* -- domains ------------------------------------------------------------------- */

/* Fill what the core owns in a domain the driver gave: type, owner, page sizes, ops. */
static struct iommu_domain *finish_domain(struct iommu_domain *domain, const struct iommu_ops *ops,
                                          unsigned int type)
{
    if (!domain)
        return ERR_PTR(-ENOMEM);
    if (IS_ERR(domain))
        return domain;
    domain->type = type;
    domain->owner = ops;
    if (!domain->pgsize_bitmap)
        domain->pgsize_bitmap = ops->pgsize_bitmap;
    if (!domain->ops)
        domain->ops = ops->default_domain_ops;
    return domain;
}

static struct iommu_domain *alloc_paging(struct device *dev, unsigned int type)
{
    const struct iommu_ops *ops = dev_ops(dev);

    if (!ops)
        return ERR_PTR(-ENODEV);
    if (!ops->domain_alloc_paging)
        return ERR_PTR(-EOPNOTSUPP);
    return finish_domain(ops->domain_alloc_paging(dev), ops, type);
}

struct iommu_domain *iommu_paging_domain_alloc(struct device *dev)
{
    return alloc_paging(dev, IOMMU_DOMAIN_UNMANAGED);
}

static bool is_static(const struct iommu_domain *domain)
{
    const struct iommu_ops *ops = domain->owner;

    return ops && (domain == ops->identity_domain || domain == ops->blocked_domain ||
                   domain == ops->release_domain || domain == ops->default_domain);
}

void iommu_domain_free(struct iommu_domain *domain)
{
    unsigned int i;

    if (!domain || is_static(domain))
        return;
    for (i = 0; i < nr_devices; i++) {
        struct iommu_group *g = devices[i].pdev.dev.iommu_group;

        /* The kernel's callers detach first; freeing an attached domain is a bug. */
        if (WARN_ON(g && g->domain == domain))
            return;
    }
    if (domain->ops && domain->ops->free)
        domain->ops->free(domain);
}

/* Move the device's group to domain; on failure it stays where it was. */
static int set_domain(struct device *dev, struct iommu_domain *domain)
{
    struct iommu_group *group = dev->iommu_group;
    int ret;

    if (!group)
        return -ENODEV;
    if (group->domain == domain)
        return 0;
    if (!domain->ops || !domain->ops->attach_dev)
        return -EINVAL;
    ret = domain->ops->attach_dev(domain, dev);
    if (ret)
        return ret;
    group->domain = domain;
    return 0;
}

/* As iommu_attach_group: only from the default domain (the device not owned by another user). */
int iommu_attach_device(struct iommu_domain *domain, struct device *dev)
{
    struct iommu_group *group = dev->iommu_group;

    if (!group)
        return -ENODEV;
    if (group->domain != group->default_domain)
        return -EBUSY;
    return set_domain(dev, domain);
}

void iommu_detach_device(struct iommu_domain *domain, struct device *dev)
{
    struct iommu_group *group = dev->iommu_group;

    if (!group || WARN_ON(group->domain != domain))
        return;
    WARN_ON(set_domain(dev, group->default_domain));
}

struct iommu_domain *wb_core_default_domain(struct device *dev)
{
    return dev->iommu_group ? dev->iommu_group->default_domain : NULL;
}

struct iommu_domain *iommu_get_domain_for_dev(struct device *dev)
{
    return dev->iommu_group ? dev->iommu_group->domain : NULL;
}

int wb_core_attach_identity(struct device *dev)
{
    const struct iommu_ops *ops = dev_ops(dev);

    if (!ops || !ops->identity_domain)
        return -EOPNOTSUPP;
    ops->identity_domain->owner = ops;
    return set_domain(dev, ops->identity_domain);
}

/*
 * The blocked domain; a driver without one gets, as in the kernel, an empty
 * paging domain of its own allocated by the core and kept with the group.
 */
int wb_core_attach_blocked(struct device *dev)
{
    const struct iommu_ops *ops = dev_ops(dev);
    struct iommu_group *group = dev->iommu_group;

    if (!ops || !group)
        return -ENODEV;
    if (ops->blocked_domain) {
        ops->blocked_domain->owner = ops;
        return set_domain(dev, ops->blocked_domain);
    }
    if (!group->blocking_domain) {
        struct iommu_domain *d = alloc_paging(dev, IOMMU_DOMAIN_BLOCKED);

        if (IS_ERR(d))
            return (int)PTR_ERR(d);
        group->blocking_domain = d;
    }
    return set_domain(dev, group->blocking_domain);
}

/* -- map, unmap, translate ------------------------------------------------------ */

/*
 * The page size for the next part of [iova, iova + size) at paddr, and in
 * *count how many of them: the largest size of the bitmap both addresses are
 * aligned to and that fits; the run stops where a larger size becomes
 * possible, so that the next call can use it.
 */
static size_t pick_pgsize(struct iommu_domain *domain, unsigned long iova, phys_addr_t paddr,
                          size_t size, size_t *count)
{
    unsigned long addr_merge = (unsigned long)paddr | iova;
    unsigned long pgsizes, larger;
    unsigned int idx;
    size_t pgsize, next, offset;

    pgsizes = domain->pgsize_bitmap & GENMASK(__fls(size), 0);
    if (addr_merge)
        pgsizes &= GENMASK(__ffs(addr_merge), 0);
    BUG_ON(!pgsizes);
    idx = (unsigned int)__fls(pgsizes);
    pgsize = 1UL << idx;

    larger = domain->pgsize_bitmap & ~GENMASK(idx, 0);
    if (larger) {
        next = 1UL << __ffs(larger);
        /* A larger page needs iova and paddr congruent modulo its size. */
        if (!((iova ^ (unsigned long)paddr) & (next - 1))) {
            offset = next - (addr_merge & (next - 1));
            if (offset + next <= size)
                size = offset;
        }
    }
    *count = size >> idx;
    return pgsize;
}

/* What the last failed iommu_map unmapped again (the runner checks the unwind). */
static _Thread_local size_t last_unwound;

size_t wb_core_last_unwound(void)
{
    return last_unwound;
}

int iommu_map(struct iommu_domain *domain, unsigned long iova, phys_addr_t paddr, size_t size,
              int prot, gfp_t gfp)
{
    const struct iommu_domain_ops *ops = domain->ops;
    unsigned long orig_iova = iova;
    size_t orig_size = size, min_pagesz;
    int ret = 0;

    last_unwound = 0;
    if (!(domain->type & __IOMMU_DOMAIN_PAGING))
        return -EINVAL;
    if (!ops->map_pages || !domain->pgsize_bitmap)
        return -ENODEV;
    min_pagesz = 1UL << __ffs(domain->pgsize_bitmap);
    if (!IS_ALIGNED(iova | (unsigned long)paddr | size, min_pagesz)) {
        pr_err("unaligned: iova 0x%lx pa 0x%llx size 0x%zx min_pagesz 0x%zx\n", iova,
               (unsigned long long)paddr, size, min_pagesz);
        return -EINVAL;
    }
    if (!size)
        return 0;
    if (iova + size - 1 < iova)
        return -EOVERFLOW;
    while (size) {
        size_t count, mapped = 0;
        size_t pgsize = pick_pgsize(domain, iova, paddr, size, &count);

        ret = ops->map_pages(domain, iova, paddr, pgsize, count, prot, gfp, &mapped);
        /* What was mapped counts even on failure: the unwind below removes it. */
        size -= mapped;
        if (ret)
            break;
        if (WARN_ON(mapped == 0)) {      /* no progress and no error: a driver bug */
            ret = -EINVAL;
            break;
        }
        iova += mapped;
        paddr += mapped;
    }
    if (ret)
        last_unwound = iommu_unmap(domain, orig_iova, orig_size - size);
    else if (ops->iotlb_sync_map)
        ret = ops->iotlb_sync_map(domain, orig_iova, orig_size);
    return ret;
}

size_t iommu_unmap(struct iommu_domain *domain, unsigned long iova, size_t size)
{
    const struct iommu_domain_ops *ops = domain->ops;
    struct iommu_iotlb_gather gather;
    size_t unmapped = 0, min_pagesz;

    if (!(domain->type & __IOMMU_DOMAIN_PAGING) || !ops->unmap_pages || !domain->pgsize_bitmap)
        return 0;
    min_pagesz = 1UL << __ffs(domain->pgsize_bitmap);
    if (!IS_ALIGNED(iova | size, min_pagesz)) {
        pr_err("unaligned: iova 0x%lx size 0x%zx min_pagesz 0x%zx\n", iova, size, min_pagesz);
        return 0;
    }
    iommu_iotlb_gather_init(&gather);
    while (unmapped < size) {
        size_t count, done;
        size_t pgsize = pick_pgsize(domain, iova, iova, size - unmapped, &count);

        done = ops->unmap_pages(domain, iova, pgsize, count, &gather);
        if (!done)
            break;          /* the rest is not mapped: stop, as the kernel does */
        iova += done;
        unmapped += done;
    }
    iommu_iotlb_sync(domain, &gather);
    return unmapped;
}

phys_addr_t iommu_iova_to_phys(struct iommu_domain *domain, dma_addr_t iova)
{
    if (domain->type == IOMMU_DOMAIN_IDENTITY)
        return iova;
    if (domain->type == IOMMU_DOMAIN_BLOCKED || !domain->ops->iova_to_phys)
        return 0;
    return domain->ops->iova_to_phys(domain, iova);
}

/* -- reserved regions -------------------------------------------------------------- */

struct iommu_resv_region *iommu_alloc_resv_region(phys_addr_t start, size_t length, int prot,
                                                  enum iommu_resv_type type, gfp_t gfp)
{
    struct iommu_resv_region *region = kzalloc(sizeof(*region), gfp);

    if (!region)
        return NULL;
    INIT_LIST_HEAD(&region->list);
    region->start = start;
    region->length = length;
    region->prot = prot;
    region->type = type;
    return region;
}

void iommu_get_resv_regions(struct device *dev, struct list_head *list)
{
    const struct iommu_ops *ops = dev_ops(dev);

    if (ops && ops->get_resv_regions)
        ops->get_resv_regions(dev, list);
}

void iommu_put_resv_regions(struct device *dev, struct list_head *list)
{
    struct iommu_resv_region *r, *next;

    list_for_each_entry_safe(r, next, list, list) {
        list_del(&r->list);
        if (r->free)
            r->free(dev, r);
        else
            kfree(r);
    }
}

/* -- probe and release ---------------------------------------------------------------- */

static void release_device(struct device *dev)
{
    const struct iommu_ops *ops = dev_ops(dev);
    struct iommu_group *group = dev->iommu_group;

    if (group) {
        /* Out of whatever domain it is in, into release_domain (or blocked), as the kernel. */
        struct iommu_domain *rd = ops->release_domain ? ops->release_domain : ops->blocked_domain;

        if (rd && group->domain != rd) {
            rd->owner = ops;
            /* The kernel would call through a NULL attach_dev: a WARN here instead. */
            if (!WARN_ON(!rd->ops || !rd->ops->attach_dev) && !WARN_ON(rd->ops->attach_dev(rd, dev)))
                group->domain = rd;
        }
        if (ops->release_device)
            ops->release_device(dev);
        group->domain = NULL;
        iommu_domain_free(group->blocking_domain);
        if (group->default_domain && !is_static(group->default_domain))
            iommu_domain_free(group->default_domain);
        iommu_group_put(group);
        dev->iommu_group = NULL;
    } else if (ops && ops->release_device) {
        ops->release_device(dev);
    }
    free(dev->iommu);
    dev->iommu = NULL;
}

static struct iommu_domain *default_domain_for(struct device *dev, const struct iommu_ops *ops)
{
    int type = ops->def_domain_type ? ops->def_domain_type(dev) : 0;

    if (ops->default_domain) {
        ops->default_domain->owner = ops;
        return ops->default_domain;
    }
    if (type == (int)IOMMU_DOMAIN_IDENTITY) {
        if (!ops->identity_domain)
            return ERR_PTR(-EINVAL);
        ops->identity_domain->owner = ops;
        return ops->identity_domain;
    }
    /* The kernel's default on x86 without iommu.passthrough: a DMA domain. */
    return alloc_paging(dev, IOMMU_DOMAIN_DMA);
}

static int probe_device(struct device *dev, struct iommu_device *iommu)
{
    const struct iommu_ops *ops = iommu->ops;
    struct iommu_device *got;
    struct iommu_group *group;
    struct iommu_domain *domain;
    int ret;

    dev->iommu = calloc(1, sizeof(*dev->iommu));
    if (!dev->iommu)
        return -ENOMEM;
    dev->iommu->iommu_dev = iommu;          /* ops visible to the driver's probe (fwspec) */
    got = ops->probe_device(dev);
    if (IS_ERR_OR_NULL(got)) {
        free(dev->iommu);
        dev->iommu = NULL;
        return got ? (int)PTR_ERR(got) : -ENODEV;
    }
    dev->iommu->iommu_dev = got;
    group = ops->device_group ? ops->device_group(dev) : generic_device_group(dev);
    if (IS_ERR_OR_NULL(group)) {
        ret = group ? (int)PTR_ERR(group) : -ENOMEM;
        goto release;
    }
    dev->iommu_group = group;
    domain = default_domain_for(dev, ops);
    if (IS_ERR(domain)) {
        ret = (int)PTR_ERR(domain);
        goto release;
    }
    group->default_domain = domain;
    ret = set_domain(dev, domain);
    if (ret)
        goto release;
    if (ops->probe_finalize)
        ops->probe_finalize(dev);
    return 0;
release:
    release_device(dev);
    return ret;
}

int iommu_device_register(struct iommu_device *iommu, const struct iommu_ops *ops,
                          struct device *hwdev)
{
    unsigned int i;

    if (registered)
        return -EBUSY;                       /* the workbench serves one IOMMU */
    iommu->ops = ops;
    iommu->dev = hwdev;
    INIT_LIST_HEAD(&iommu->list);
    registered = iommu;
    /* As bus_iommu_probe: every device on the bus, now. */
    for (i = 0; i < nr_devices; i++) {
        devices[i].probe_status = probe_device(&devices[i].pdev.dev, iommu);
        if (devices[i].probe_status && devices[i].probe_status != -ENODEV)
            pr_err("workbench: probe of %s failed: %d\n", devices[i].pdev.name,
                   devices[i].probe_status);
    }
    return 0;
}

/* The kernel keeps groups until the devices go; here the IOMMU's devices are released now. */
void iommu_device_unregister(struct iommu_device *iommu)
{
    unsigned int i;

    if (WARN_ON(iommu != registered))
        return;
    for (i = 0; i < nr_devices; i++) {
        struct device *dev = &devices[i].pdev.dev;

        if (dev->iommu) {
            release_device(dev);
            devices[i].probe_status = -ENODEV;
        }
    }
    registered = NULL;
}

bool wb_core_unregister_for_driver(void)
{
    if (!registered)
        return false;
    iommu_device_unregister(registered);
    return true;
}

int iommu_device_sysfs_add(struct iommu_device *iommu, struct device *parent, const void *groups,
                           const char *fmt, ...)
{
    (void)iommu; (void)parent; (void)groups; (void)fmt;
    return 0;
}

void iommu_device_sysfs_remove(struct iommu_device *iommu)
{
    (void)iommu;
}
