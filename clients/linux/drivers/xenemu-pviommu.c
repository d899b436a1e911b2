// SPDX-License-Identifier: MIT
/*
 * xenemu-pviommu.c - a small IOMMU driver for Xen's PV-IOMMU, in the shape of
 * a drivers/iommu driver, written for the xenemu workbench (not derived from
 * Linux's xen-iommu.c). One source for both revisions of the interface: the
 * include path picks the revision (-Iabi: revision 1, one struct pv_iommu_op;
 * -Iabi/rev2 -Iabi: revision 2, a struct per sub-op).
 *
 * Every device's default domain is the identity domain, Xen's context 0 (the
 * domain's memory 1:1); a paging domain is one PV-IOMMU context, whose page
 * table Xen keeps: the driver registers that as an io-pgtable format whose
 * ops are the map, unmap and lookup hypercalls, and its domains map through
 * io_pgtable_ops as drivers over hardware page tables do. Mappings are
 * 4 KiB pages: a PV guest maps one page per call, each page's frame through
 * its p2m (pfn_to_gfn), since its pfns are not contiguous in gfns; HVM/PVH
 * guests map runs (revision 1 in chunks of max_nr_pages). Reserved regions:
 * the MSI window, and the device's RMRRs from XENMEM_reserved_device_memory_map.
 */
#define pr_fmt(fmt) "xenemu-pviommu: " fmt

#include <linux/io-pgtable.h>
#include <linux/iommu.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include <xen/interface/memory.h>
#include <xen/interface/physdev.h>
#include <xen/interface/pv-iommu.h>
#include <xen/page.h>
#include <xen/xen.h>

#include <asm/xen/hypercall.h>
#include <asm/xen/page.h>

#if defined(XENEMU_PV_IOMMU_REVISION) && XENEMU_PV_IOMMU_REVISION == 2
#define PVIOMMU_REV2 1
#else
#define PVIOMMU_REV2 0
#endif

#define MSI_RANGE_START 0xfee00000UL
#define MSI_RANGE_END   0xfeefffffUL

/* The format the driver registers: a context's table, kept by Xen. */
#define PVIOMMU_PGTABLE_FMT IO_PGTABLE_WORKBENCH_FMT

struct pviommu_domain {
    struct iommu_domain domain;
    struct io_pgtable_ops *pgtbl;
    /* Revision 2 has no lookup: a software table beside Xen's answers iova_to_phys. */
    struct io_pgtable_ops *shadow;
    u16 ctx_no;
};

static struct pviommu_caps {
    u64 max_iova_addr;
    u32 pgsize_mask;
    u32 max_nr_pages;          /* revision 1: pages one map/unmap call may take */
    u16 max_ctx_no;
} caps;

static struct iommu_device pviommu_device;
static const struct iommu_ops pviommu_ops;
static const struct iommu_domain_ops pviommu_paging_ops;

static inline struct pviommu_domain *to_pv_domain(struct iommu_domain *dom)
{
    return container_of(dom, struct pviommu_domain, domain);
}

static struct physdev_pci_device pci_sbdf(struct device *dev)
{
    struct pci_dev *pdev = to_pci_dev(dev);
    struct physdev_pci_device d = {
        .seg = (u16)pci_domain_nr(pdev->bus),
        .bus = pdev->bus->number,
        .devfn = (u8)pdev->devfn,
    };
    return d;
}

/* -- the hypercalls, one function per sub-op ------------------------------------ */

#if PVIOMMU_REV2
static int pv_query(void)
{
    struct pv_iommu_capabilities cap = { 0 };
    int ret = HYPERVISOR_iommu_op(IOMMU_query_capabilities, &cap);

    if (!ret) {
        caps.max_iova_addr = cap.max_iova_addr;
        caps.pgsize_mask = cap.pgsize_mask;
        caps.max_ctx_no = cap.max_ctx_no;
        caps.max_nr_pages = U32_MAX;     /* Xen continues long runs itself */
    }
    return ret;
}

/* A domain that has not initialised PV-IOMMU (max_ctx_no 0) does it once. */
static int pv_init(void)
{
    struct pv_iommu_init init = { .max_ctx_no = 128, .arena_order = 12 };

    return HYPERVISOR_iommu_op(IOMMU_init, &init);
}

static int pv_alloc(u16 *ctx_no)
{
    struct pv_iommu_alloc alloc = { 0 };
    int ret = HYPERVISOR_iommu_op(IOMMU_alloc_context, &alloc);

    *ctx_no = alloc.ctx_no;
    return ret;
}

static int pv_free(u16 ctx_no)
{
    struct pv_iommu_free f = { .ctx_no = ctx_no };

    return HYPERVISOR_iommu_op(IOMMU_free_context, &f);
}

static int pv_reattach(u16 ctx_no, struct physdev_pci_device dev)
{
    struct pv_iommu_reattach_device r = { .ctx_no = ctx_no, .dev = dev };

    return HYPERVISOR_iommu_op(IOMMU_reattach_device, &r);
}

static int pv_map(u16 ctx_no, u64 gfn, u64 dfn, u32 nr, u32 flags, u32 *mapped)
{
    struct pv_iommu_map_pages m = {
        .ctx_no = ctx_no, .gfn = gfn, .dfn = dfn, .pgsize = XEN_PAGE_SIZE, .nr_pages = nr,
        .map_flags = (flags & IOMMU_READ ? IOMMU_MAP_readable : 0) |
                     (flags & IOMMU_WRITE ? IOMMU_MAP_writeable : 0),
    };
    int ret = HYPERVISOR_iommu_op(IOMMU_map_pages, &m);

    *mapped = m.mapped;
    return ret;
}

static int pv_unmap(u16 ctx_no, u64 dfn, u32 nr, u32 *unmapped)
{
    struct pv_iommu_unmap_pages u = {
        .ctx_no = ctx_no, .dfn = dfn, .pgsize = XEN_PAGE_SIZE, .nr_pages = nr,
    };
    int ret = HYPERVISOR_iommu_op(IOMMU_unmap_pages, &u);

    *unmapped = u.unmapped;
    return ret;
}
#else
static int pv_query(void)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_query_capabilities };
    int ret = HYPERVISOR_iommu_op(&op);

    if (!ret) {
        caps.max_iova_addr = op.cap.max_iova_addr;
        caps.pgsize_mask = XEN_PAGE_SIZE;
        caps.max_ctx_no = op.cap.max_ctx_no;
        caps.max_nr_pages = op.cap.max_nr_pages;
    }
    return ret;
}

static int pv_init(void)
{
    return 0;               /* revision 1 has no init: the hardware domain's pool is there */
}

static int pv_alloc(u16 *ctx_no)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_alloc_context };
    int ret = HYPERVISOR_iommu_op(&op);

    *ctx_no = op.ctx_no;
    return ret;
}

static int pv_free(u16 ctx_no)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_free_context, .ctx_no = ctx_no };

    return HYPERVISOR_iommu_op(&op);
}

static int pv_reattach(u16 ctx_no, struct physdev_pci_device dev)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_reattach_device, .ctx_no = ctx_no };

    op.reattach_device.dev = dev;
    return HYPERVISOR_iommu_op(&op);
}

static int pv_map(u16 ctx_no, u64 gfn, u64 dfn, u32 nr, u32 flags, u32 *mapped)
{
    struct pv_iommu_op op = {
        .subop_id = IOMMUOP_map_pages, .ctx_no = ctx_no,
        .flags = (flags & IOMMU_READ ? IOMMU_OP_readable : 0) |
                 (flags & IOMMU_WRITE ? IOMMU_OP_writeable : 0),
    };
    int ret;

    op.map_pages.gfn = gfn;
    op.map_pages.dfn = dfn;
    op.map_pages.nr_pages = nr;
    ret = HYPERVISOR_iommu_op(&op);
    *mapped = op.map_pages.mapped;
    return ret;
}

static int pv_unmap(u16 ctx_no, u64 dfn, u32 nr, u32 *unmapped)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_unmap_pages, .ctx_no = ctx_no };
    int ret;

    op.unmap_pages.dfn = dfn;
    op.unmap_pages.nr_pages = nr;
    ret = HYPERVISOR_iommu_op(&op);
    *unmapped = op.unmap_pages.unmapped;
    return ret;
}

static int pv_lookup(u16 ctx_no, u64 dfn, u64 *gfn)
{
    struct pv_iommu_op op = { .subop_id = IOMMUOP_lookup_page, .ctx_no = ctx_no };
    int ret;

    op.lookup_page.dfn = dfn;
    ret = HYPERVISOR_iommu_op(&op);
    *gfn = op.lookup_page.gfn;
    return ret;
}
#endif

/* -- domains ------------------------------------------------------------------ */

static int pviommu_attach_dev(struct iommu_domain *dom, struct device *dev)
{
    u16 ctx_no = dom->type == IOMMU_DOMAIN_IDENTITY ? IOMMU_DEFAULT_CONTEXT : to_pv_domain(dom)->ctx_no;
    int ret = pv_reattach(ctx_no, pci_sbdf(dev));

    if (ret)
        dev_err(dev, "reattach to context %u failed: %d\n", ctx_no, ret);
    return ret;
}

static const struct iommu_domain_ops pviommu_identity_ops = {
    .attach_dev = pviommu_attach_dev,
};

/* Xen's context 0: the domain's memory mapped 1:1 (dfn == gfn). */
static struct iommu_domain pviommu_identity_domain = {
    .type = IOMMU_DOMAIN_IDENTITY,
    .ops = &pviommu_identity_ops,
};

/* -- the io-pgtable format: a context's table, kept by Xen, through hypercalls -- */

/* The domain whose context the table is (the cookie alloc_io_pgtable_ops was given). */
static u16 pgtbl_ctx(struct io_pgtable_ops *ops)
{
    struct pviommu_domain *pd = io_pgtable_ops_to_pgtable(ops)->cookie;

    return pd->ctx_no;
}

static int pgtbl_map_pages(struct io_pgtable_ops *ops, unsigned long iova, phys_addr_t paddr,
                           size_t pgsize, size_t pgcount, int prot, gfp_t gfp, size_t *mapped)
{
    u16 ctx_no = pgtbl_ctx(ops);
    u64 nr = (u64)pgsize * pgcount / XEN_PAGE_SIZE, done = 0;
    u64 dfn = iova >> XEN_PAGE_SHIFT;
    unsigned long pfn = (unsigned long)(paddr >> XEN_PAGE_SHIFT);
    int ret = 0;

    (void)gfp;
    if (!(prot & (IOMMU_READ | IOMMU_WRITE)))
        return -EINVAL;         /* Xen would map a page no one may touch */
    while (done < nr && !ret) {
        u32 n, got = 0;

        if (xen_pv_domain()) {
            /* A PV guest's pfns are scattered over gfns: one page, its own gfn, a call. */
            unsigned long gfn = pfn_to_gfn(pfn + done);

            if (gfn == INVALID_P2M_ENTRY)
                return *mapped = done * XEN_PAGE_SIZE, -EFAULT;
            ret = pv_map(ctx_no, gfn, dfn + done, 1, (u32)prot, &got);
        } else {
            n = (u32)min_t(u64, nr - done, caps.max_nr_pages);
            ret = pv_map(ctx_no, pfn + done, dfn + done, n, (u32)prot, &got);
        }
        done += got;
    }
    *mapped = done * XEN_PAGE_SIZE;
    return ret;
}

static size_t pgtbl_unmap_pages(struct io_pgtable_ops *ops, unsigned long iova, size_t pgsize,
                                size_t pgcount, struct iommu_iotlb_gather *gather)
{
    u16 ctx_no = pgtbl_ctx(ops);
    u64 nr = (u64)pgsize * pgcount / XEN_PAGE_SIZE, done = 0;
    u64 dfn = iova >> XEN_PAGE_SHIFT;
    int ret = 0;

    while (done < nr && !ret) {
        u32 got = 0, n = (u32)min_t(u64, nr - done, caps.max_nr_pages);

        ret = pv_unmap(ctx_no, dfn + done, n, &got);
        done += got;
    }
    /* Xen flushes its IOTLB in the hypercall: the gather only records the range. */
    if (done)
        iommu_iotlb_gather_add_range(gather, iova, done * XEN_PAGE_SIZE);
    return done * XEN_PAGE_SIZE;
}

#if !PVIOMMU_REV2
static phys_addr_t pgtbl_iova_to_phys(struct io_pgtable_ops *ops, unsigned long iova)
{
    u64 gfn;

    if (pv_lookup(pgtbl_ctx(ops), iova >> XEN_PAGE_SHIFT, &gfn))
        return 0;
    return PFN_PHYS(gfn_to_pfn((unsigned long)gfn)) | (iova & ~XEN_PAGE_MASK);
}
#endif

/* The table is the context the domain has allocated: nothing to build. */
static struct io_pgtable *pgtbl_alloc(struct io_pgtable_cfg *cfg, void *cookie)
{
    struct io_pgtable *iop;

    (void)cookie;
    if (cfg->pgsize_bitmap != XEN_PAGE_SIZE)
        return NULL;
    iop = kzalloc(sizeof(*iop), GFP_KERNEL);
    if (!iop)
        return NULL;
    iop->ops.map_pages = pgtbl_map_pages;
    iop->ops.unmap_pages = pgtbl_unmap_pages;
#if !PVIOMMU_REV2
    iop->ops.iova_to_phys = pgtbl_iova_to_phys;     /* revision 2 has no lookup sub-op */
#endif
    return iop;
}

static void pgtbl_free(struct io_pgtable *iop)
{
    kfree(iop);
}

static const struct io_pgtable_init_fns pviommu_pgtable_fns = {
    .alloc = pgtbl_alloc,
    .free = pgtbl_free,
};

/* Xen flushes its IOTLB inside every map and unmap: nothing is left to flush. */
static void pviommu_tlb_flush_all(void *cookie)
{
    (void)cookie;
}

static const struct iommu_flush_ops pviommu_flush_ops = {
    .tlb_flush_all = pviommu_tlb_flush_all,
};

/* -- paging domains ------------------------------------------------------------- */

static struct iommu_domain *pviommu_domain_alloc_paging(struct device *dev)
{
    struct io_pgtable_cfg cfg = {
        .pgsize_bitmap = XEN_PAGE_SIZE,
        .ias = (unsigned int)fls_long((unsigned long)caps.max_iova_addr),
        .oas = 52,
        .coherent_walk = true,
        .tlb = &pviommu_flush_ops,
        .iommu_dev = dev,
    };
    struct pviommu_domain *pd;
    u16 ctx_no;
    int ret;

    ret = pv_alloc(&ctx_no);
    if (ret)
        return ERR_PTR(ret);         /* -ENOSPC when the domain's contexts are spent */
    pd = kzalloc(sizeof(*pd), GFP_KERNEL);
    if (pd) {
        pd->ctx_no = ctx_no;
        pd->pgtbl = alloc_io_pgtable_ops(PVIOMMU_PGTABLE_FMT, &cfg, pd);
        if (PVIOMMU_REV2)
            pd->shadow = alloc_io_pgtable_ops(XEN_IOMMU_GENERIC, &cfg, pd);
    }
    if (!pd || !pd->pgtbl || (PVIOMMU_REV2 && !pd->shadow)) {
        WARN_ON(pv_free(ctx_no));
        if (pd) {
            free_io_pgtable_ops(pd->pgtbl);
            free_io_pgtable_ops(pd->shadow);
        }
        kfree(pd);
        return ERR_PTR(-ENOMEM);
    }
    pd->domain.pgsize_bitmap = cfg.pgsize_bitmap;
    pd->domain.geometry.aperture_start = 0;
    pd->domain.geometry.aperture_end = caps.max_iova_addr;
    pd->domain.geometry.force_aperture = true;
    pd->domain.ops = &pviommu_paging_ops;
    return &pd->domain;
}

static void pviommu_domain_free(struct iommu_domain *dom)
{
    struct pviommu_domain *pd = to_pv_domain(dom);

    free_io_pgtable_ops(pd->pgtbl);
    free_io_pgtable_ops(pd->shadow);
    /* The core has moved every device out: flags 0 (never reattach_default with devices). */
    WARN_ON(pv_free(pd->ctx_no));
    kfree(pd);
}

static int pviommu_map_pages(struct iommu_domain *dom, unsigned long iova, phys_addr_t paddr,
                             size_t pgsize, size_t pgcount, int prot, gfp_t gfp, size_t *mapped)
{
    struct pviommu_domain *pd = to_pv_domain(dom);
    size_t before = *mapped, in_shadow = 0;
    int ret = pd->pgtbl->map_pages(pd->pgtbl, iova, paddr, pgsize, pgcount, prot, gfp, mapped);

    /* What Xen mapped, the shadow records; the core unmaps both on failure. */
    if (pd->shadow && *mapped > before)
        WARN_ON(pd->shadow->map_pages(pd->shadow, iova, paddr, XEN_PAGE_SIZE,
                                      (*mapped - before) / XEN_PAGE_SIZE, prot, gfp, &in_shadow));
    return ret;
}

static size_t pviommu_unmap_pages(struct iommu_domain *dom, unsigned long iova, size_t pgsize,
                                  size_t pgcount, struct iommu_iotlb_gather *gather)
{
    struct pviommu_domain *pd = to_pv_domain(dom);
    size_t done = pd->pgtbl->unmap_pages(pd->pgtbl, iova, pgsize, pgcount, gather);

    if (pd->shadow && done)
        WARN_ON(pd->shadow->unmap_pages(pd->shadow, iova, XEN_PAGE_SIZE, done / XEN_PAGE_SIZE,
                                        NULL) != done);
    return done;
}

static phys_addr_t pviommu_iova_to_phys(struct iommu_domain *dom, dma_addr_t iova)
{
    struct pviommu_domain *pd = to_pv_domain(dom);
    struct io_pgtable_ops *ops = pd->shadow ? pd->shadow : pd->pgtbl;

    return ops->iova_to_phys(ops, (unsigned long)iova);
}

static const struct iommu_domain_ops pviommu_paging_ops = {
    .attach_dev = pviommu_attach_dev,
    .map_pages = pviommu_map_pages,
    .unmap_pages = pviommu_unmap_pages,
    .iova_to_phys = pviommu_iova_to_phys,
    .free = pviommu_domain_free,
};

/* -- devices ------------------------------------------------------------------- */

static struct iommu_device *pviommu_probe_device(struct device *dev)
{
    if (!dev_is_pci(dev))
        return ERR_PTR(-ENODEV);
    return &pviommu_device;
}

static void pviommu_release_device(struct device *dev)
{
    (void)dev;              /* no per-device state */
}

static int pviommu_def_domain_type(struct device *dev)
{
    (void)dev;
    return IOMMU_DOMAIN_IDENTITY;
}

/* The device's RMRRs: a first call to count them, a second to fetch them. */
static void pviommu_add_rmrrs(struct device *dev, struct list_head *head)
{
    struct xen_reserved_device_memory_map map = { .flags = 0 };
    struct xen_reserved_device_memory *rdm;
    unsigned int i, n;
    int ret;

    map.dev.pci = pci_sbdf(dev);
    map.buffer = NULL;
    ret = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    if (ret != -ENOBUFS || map.nr_entries == 0)
        return;
    n = map.nr_entries;
    rdm = kcalloc(n, sizeof(*rdm), GFP_KERNEL);
    if (!rdm)
        return;
    map.buffer = rdm;
    ret = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    if (ret == 0) {
        for (i = 0; i < min(n, map.nr_entries); i++) {
            struct iommu_resv_region *r = iommu_alloc_resv_region(
                PFN_PHYS(rdm[i].start_pfn), rdm[i].nr_pages << XEN_PAGE_SHIFT,
                IOMMU_READ | IOMMU_WRITE, IOMMU_RESV_DIRECT, GFP_KERNEL);

            if (r)
                list_add_tail(&r->list, head);
        }
    } else {
        dev_warn(dev, "reserved device memory map: %d\n", ret);
    }
    kfree(rdm);
}

static void pviommu_get_resv_regions(struct device *dev, struct list_head *head)
{
    struct iommu_resv_region *msi = iommu_alloc_resv_region(
        MSI_RANGE_START, MSI_RANGE_END - MSI_RANGE_START + 1, 0, IOMMU_RESV_MSI, GFP_KERNEL);

    if (msi)
        list_add_tail(&msi->list, head);
    pviommu_add_rmrrs(dev, head);
}

static const struct iommu_ops pviommu_ops = {
    .domain_alloc_paging = pviommu_domain_alloc_paging,
    .probe_device = pviommu_probe_device,
    .release_device = pviommu_release_device,
    .device_group = pci_device_group,
    .get_resv_regions = pviommu_get_resv_regions,
    .def_domain_type = pviommu_def_domain_type,
    .default_domain_ops = &pviommu_paging_ops,
    .identity_domain = &pviommu_identity_domain,
    .release_domain = &pviommu_identity_domain,
    .owner = THIS_MODULE,
};

/* -- module -------------------------------------------------------------------- */

static int __init pviommu_init(void)
{
    int ret;

    if (!xen_domain())
        return -ENODEV;
    memset(&caps, 0, sizeof(caps));
    ret = pv_query();
    if (ret) {
        pr_err("query_capabilities: %d, no PV-IOMMU\n", ret);
        return -ENODEV;
    }
    if (caps.max_ctx_no == 0) {
        ret = pv_init();
        if (ret == -EACCES)
            pr_warn("PV-IOMMU already initialised, guest may not be allowed\n");
        if (!ret)
            ret = pv_query();
        if (ret)
            return -ENODEV;
    }
    if (caps.max_ctx_no == 0 || !(caps.pgsize_mask & XEN_PAGE_SIZE) || caps.max_nr_pages == 0) {
        pr_err("PV-IOMMU present but unusable\n");
        return -ENOTSUPP;
    }
    caps.pgsize_mask = XEN_PAGE_SIZE;       /* this driver maps 4 KiB pages only */
    pr_info("%u contexts, iova up to 0x%llx, %s guest\n", caps.max_ctx_no,
            (unsigned long long)caps.max_iova_addr, xen_pv_domain() ? "PV" : "HVM");

    ret = io_pgtable_register_format(PVIOMMU_PGTABLE_FMT, &pviommu_pgtable_fns);
    if (ret)
        return ret;
    ret = iommu_device_sysfs_add(&pviommu_device, NULL, NULL, "xen-pviommu");
    if (!ret) {
        ret = iommu_device_register(&pviommu_device, &pviommu_ops, NULL);
        if (ret)
            iommu_device_sysfs_remove(&pviommu_device);
    }
    if (ret)
        io_pgtable_register_format(PVIOMMU_PGTABLE_FMT, NULL);
    return ret;
}

static void __exit pviommu_exit(void)
{
    iommu_device_unregister(&pviommu_device);
    iommu_device_sysfs_remove(&pviommu_device);
    io_pgtable_register_format(PVIOMMU_PGTABLE_FMT, NULL);
}

module_init(pviommu_init);
module_exit(pviommu_exit);

MODULE_DESCRIPTION("IOMMU driver for Xen PV-IOMMU (xenemu workbench)");
MODULE_LICENSE("Dual MIT/GPL");
