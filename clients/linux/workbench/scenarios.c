/* SPDX-License-Identifier: MIT */
/*
 * scenarios.c - what the runner does with the driver between module init and
 * exit, as a DMA user and the device would, each result checked against the
 * daemon: the context a device is in (`info`), a context's entries (`dump`),
 * DMA through the device (`dma`) landing in guest memory (`mem_read`).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <asm/xen/hypercall.h>
#include <asm/xen/page.h>
#include <xen/interface/memory.h>
#include <xen/xen.h>

#include "runner.h"

#define PG           4096UL
#define IOVA_BASE    0x100000000UL      /* 4 GiB: inside every aperture, above the MSI window */
#define PFN_BASE     0x2000UL           /* 32 MiB into the domain's memory */
#define RW           (IOMMU_READ | IOMMU_WRITE)
#define DUMP_MAX     1024u

/* Entries [iova, iova + n pages) of ctx: each maps pfn_to_gfn(pfn + i) read/write (pfn != ~0), or nothing. */
static bool dump_is(struct wb_run *r, int ctx, unsigned long iova, unsigned int n, unsigned long pfn,
                    char *why, size_t len)
{
    static uint64_t gfns[DUMP_MAX];
    static uint8_t perms[DUMP_MAX];
    unsigned int i;

    if (ctx < 0 || n > DUMP_MAX) {
        snprintf(why, len, "no context");
        return false;
    }
    if (wb_ctl_dump(r->ctl, r->domid, (unsigned int)ctx, iova / PG, n, gfns, perms)) {
        snprintf(why, len, "%s", wb_ctl_error(r->ctl));
        return false;
    }
    for (i = 0; i < n; i++) {
        bool want_mapped = pfn != ~0UL;

        if (!want_mapped && perms[i]) {
            snprintf(why, len, "dfn 0x%lx still maps gfn 0x%llx", iova / PG + i,
                     (unsigned long long)gfns[i]);
            return false;
        }
        if (want_mapped && (perms[i] != 3 || gfns[i] != pfn_to_gfn(pfn + i))) {
            snprintf(why, len, "dfn 0x%lx: gfn 0x%llx perm %u, want gfn 0x%lx rw", iova / PG + i,
                     (unsigned long long)gfns[i], perms[i], pfn_to_gfn(pfn + i));
            return false;
        }
    }
    snprintf(why, len, "as expected");
    return true;
}

static void check_mapped(struct wb_run *r, int ctx, unsigned long iova, unsigned int n, unsigned long pfn)
{
    char why[160];

    wb_check(r, dump_is(r, ctx, iova, n, pfn, why, sizeof(why)),
             "dump ctx %d dfn 0x%lx+%u: maps pfn 0x%lx.. through the p2m: %s", ctx, iova / PG, n, pfn, why);
}

static void check_unmapped(struct wb_run *r, int ctx, unsigned long iova, unsigned int n)
{
    char why[160];

    wb_check(r, dump_is(r, ctx, iova, n, ~0UL, why, sizeof(why)),
             "dump ctx %d dfn 0x%lx+%u: nothing mapped: %s", ctx, iova / PG, n, why);
}

/*
 * The device writes a pattern at iova; it must land at offset `off` of gfn
 * (the daemon's memory), and read back the same through the device.
 */
static void check_dma_lands(struct wb_run *r, unsigned long iova, unsigned long gfn, const char *what)
{
    unsigned char out[64], in[64], mem[64];
    bool faulted = true, rfaulted = true;
    unsigned int i, off = (unsigned int)(iova % PG);
    int w, rd, m;

    for (i = 0; i < sizeof(out); i++)
        out[i] = (unsigned char)(iova >> 12) ^ (unsigned char)(i * 7 + 1);
    w = wb_ctl_dma(r->ctl, r->sbdf, iova, true, out, sizeof(out), &faulted);
    rd = wb_ctl_dma(r->ctl, r->sbdf, iova, false, in, sizeof(in), &rfaulted);
    m = wb_ctl_mem_read(r->ctl, r->domid, gfn, off, mem, sizeof(mem));
    wb_check(r, !w && !rd && !m && !faulted && !rfaulted && !memcmp(out, mem, sizeof(out)) &&
             !memcmp(out, in, sizeof(out)),
             "%s: DMA at 0x%lx lands at gfn 0x%lx+0x%x and reads back (%s)", what, iova, gfn, off,
             w || rd || m ? wb_ctl_error(r->ctl) : faulted || rfaulted ? "faulted" : "compared");
}

static void check_dma_faults(struct wb_run *r, unsigned long iova, const char *what)
{
    unsigned char data[8] = { 0 };
    bool faulted = false;
    int ret = wb_ctl_dma(r->ctl, r->sbdf, iova, false, data, sizeof(data), &faulted);

    wb_check(r, !ret && faulted, "%s: DMA at 0x%lx faults%s%s", what, iova, ret ? ": " : "",
             ret ? wb_ctl_error(r->ctl) : "");
    wb_ctl_clear_faults(r->ctl);
}

/* iova_to_phys where the driver offers it; a revision-1 driver must (lookup_page). */
static void check_translate(struct wb_run *r, struct iommu_domain *d, unsigned long iova, phys_addr_t want)
{
    phys_addr_t got;

    if (!d->ops->iova_to_phys && r->revision == 2)
        return;         /* revision 2 has no lookup sub-op: a driver may have no translation */
    got = iommu_iova_to_phys(d, iova);
    wb_check(r, got == want, "iova_to_phys(0x%lx) = 0x%llx, want 0x%llx", iova,
             (unsigned long long)got, (unsigned long long)want);
}

/* A paging domain with the run's device in it; *ctx is the context the daemon says it is. */
static struct iommu_domain *attached_domain(struct wb_run *r, int *ctx)
{
    struct iommu_domain *d = iommu_paging_domain_alloc(r->dev);
    int ret;

    if (!wb_check(r, !IS_ERR(d), "paging domain allocated (%ld)", IS_ERR(d) ? PTR_ERR(d) : 0L))
        return NULL;
    ret = iommu_attach_device(d, r->dev);
    *ctx = wb_device_ctx(r, r->sbdf);
    if (!wb_check(r, ret == 0 && *ctx > 0, "attach %s: %d, daemon: in context %d", dev_name(r->dev),
                  ret, *ctx)) {
        iommu_domain_free(d);
        return NULL;
    }
    return d;
}

static void detach_and_free(struct wb_run *r, struct iommu_domain *d)
{
    int ctx;

    iommu_detach_device(d, r->dev);
    ctx = wb_device_ctx(r, r->sbdf);
    wb_check(r, ctx == r->default_ctx, "detach: the device is back in its default domain's context %d (%d)",
             r->default_ctx, ctx);
    iommu_domain_free(d);
}

/* -- scenarios ------------------------------------------------------------------ */

static void scenario_basic(struct wb_run *r)
{
    const unsigned int n = 16;
    struct iommu_domain *d;
    int ctx, ret, other;
    size_t un;

    d = attached_domain(r, &ctx);
    if (!d)
        return;
    ret = iommu_map(d, IOVA_BASE, PFN_PHYS(PFN_BASE), n * PG, RW, GFP_KERNEL);
    wb_check(r, ret == 0, "map %u pages at 0x%lx: %d", n, IOVA_BASE, ret);
    check_mapped(r, ctx, IOVA_BASE, n, PFN_BASE);
    check_translate(r, d, IOVA_BASE, PFN_PHYS(PFN_BASE));
    check_translate(r, d, IOVA_BASE + 7 * PG + 0x123, PFN_PHYS(PFN_BASE + 7) + 0x123);
    check_translate(r, d, IOVA_BASE + (n - 1) * PG, PFN_PHYS(PFN_BASE + n - 1));
    check_dma_lands(r, IOVA_BASE + 5 * PG + 0x40, pfn_to_gfn(PFN_BASE + 5), "paging");
    check_dma_faults(r, IOVA_BASE + n * PG, "paging, past the mapping");

    un = iommu_unmap(d, IOVA_BASE, n * PG);
    wb_check(r, un == n * PG, "unmap %u pages: 0x%zx bytes", n, un);
    check_unmapped(r, ctx, IOVA_BASE, n);
    check_translate(r, d, IOVA_BASE, 0);
    check_dma_faults(r, IOVA_BASE, "paging, unmapped");
    detach_and_free(r, d);

    ret = wb_core_attach_blocked(r->dev);
    other = wb_device_ctx(r, r->sbdf);
    wb_check(r, ret == 0 && other > 0, "blocked domain: %d, daemon: in context %d", ret, other);
    check_dma_faults(r, PFN_PHYS(PFN_BASE), "blocked");
    ret = wb_core_attach_identity(r->dev);
    other = wb_device_ctx(r, r->sbdf);
    wb_check(r, ret == 0 && other == 0, "identity domain: %d, daemon: in context %d", ret, other);
    check_dma_lands(r, PFN_PHYS(PFN_BASE + 0x100) + 0x80, PFN_BASE + 0x100, "identity (dfn == gfn)");
}

static void scenario_chunked(struct wb_run *r)
{
    const unsigned int n = 600;                 /* revision 1: three calls of max_nr_pages 256 */
    struct iommu_domain *d;
    int ctx, ret;
    size_t un;

    d = attached_domain(r, &ctx);
    if (!d)
        return;
    ret = iommu_map(d, IOVA_BASE, PFN_PHYS(PFN_BASE), n * PG, RW, GFP_KERNEL);
    wb_check(r, ret == 0, "map %u pages in one iommu_map: %d", n, ret);
    check_mapped(r, ctx, IOVA_BASE, n, PFN_BASE);
    check_dma_lands(r, IOVA_BASE + 599 * PG, pfn_to_gfn(PFN_BASE + 599), "last page");

    ret = iommu_map(d, IOVA_BASE + n * PG + 0x800, PFN_PHYS(PFN_BASE), PG, RW, GFP_KERNEL);
    wb_check(r, ret == -EINVAL, "map at an iova not page-aligned: %d (want -EINVAL)", ret);
    check_unmapped(r, ctx, IOVA_BASE + n * PG, 1);

    un = iommu_unmap(d, IOVA_BASE + 200 * PG, 100 * PG);
    wb_check(r, un == 100 * PG, "unmap pages 200-299: 0x%zx bytes", un);
    check_mapped(r, ctx, IOVA_BASE, 200, PFN_BASE);
    check_unmapped(r, ctx, IOVA_BASE + 200 * PG, 100);
    check_mapped(r, ctx, IOVA_BASE + 300 * PG, 300, PFN_BASE + 300);

    /* The core stops at the first page the driver cannot unmap: the hole. */
    un = iommu_unmap(d, IOVA_BASE, n * PG);
    wb_check(r, un == 200 * PG, "unmap all 600 over the hole stops at it: 0x%zx bytes (want 0x%lx)",
             un, 200 * PG);
    un = iommu_unmap(d, IOVA_BASE + 300 * PG, 300 * PG);
    wb_check(r, un == 300 * PG, "unmap pages 300-599: 0x%zx bytes", un);
    check_unmapped(r, ctx, IOVA_BASE, n);
    detach_and_free(r, d);
}

static void scenario_overlap(struct wb_run *r)
{
    const unsigned long a = IOVA_BASE + 64 * PG;
    struct iommu_domain *d;
    int ctx, ret;
    size_t un;

    d = attached_domain(r, &ctx);
    if (!d)
        return;
    ret = iommu_map(d, a, PFN_PHYS(PFN_BASE), 32 * PG, RW, GFP_KERNEL);
    wb_check(r, ret == 0, "map A: 32 pages at 0x%lx: %d", a, ret);

    /* B's first 8 pages are free, its 9th is A's: the 8 done are unwound. */
    ret = iommu_map(d, a - 8 * PG, PFN_PHYS(PFN_BASE + 0x1000), 16 * PG, RW, GFP_KERNEL);
    wb_check(r, ret < 0 && wb_core_last_unwound() == 8 * PG,
             "map B over A's start fails: %d, the core unwound the 0x%zx bytes mapped (want 0x%lx)",
             ret, wb_core_last_unwound(), 8 * PG);
    check_unmapped(r, ctx, a - 8 * PG, 8);
    check_mapped(r, ctx, a, 32, PFN_BASE);

    ret = iommu_map(d, a + 8 * PG, PFN_PHYS(PFN_BASE + 0x1000), 4 * PG, RW, GFP_KERNEL);
    wb_check(r, ret < 0, "map C inside A fails: %d", ret);
    ret = iommu_map(d, a + 24 * PG, PFN_PHYS(PFN_BASE + 0x1000), 16 * PG, RW, GFP_KERNEL);
    wb_check(r, ret < 0, "map D over A's end fails: %d", ret);
    check_mapped(r, ctx, a, 32, PFN_BASE);
    check_unmapped(r, ctx, a + 32 * PG, 8);
    check_dma_lands(r, a + 31 * PG, pfn_to_gfn(PFN_BASE + 31), "A after the failed maps");

    un = iommu_unmap(d, a, 32 * PG);
    wb_check(r, un == 32 * PG, "unmap A: 0x%zx bytes", un);
    check_unmapped(r, ctx, a - 8 * PG, 48);
    detach_and_free(r, d);
}

static void scenario_pv(struct wb_run *r)
{
    const unsigned int n = 8;
    const unsigned long pfn = PFN_BASE + 0x800;
    struct iommu_domain *d;
    unsigned int i, scattered = 0;
    int ctx, ret;
    size_t un;

    for (i = 0; i + 1 < n; i++)
        scattered += pfn_to_gfn(pfn + i) + 1 != pfn_to_gfn(pfn + i + 1);
    wb_check(r, xen_pv_domain() && scattered == n - 1,
             "PV guest: pfns 0x%lx.. are at scattered gfns (0x%lx, 0x%lx, ...)", pfn,
             pfn_to_gfn(pfn), pfn_to_gfn(pfn + 1));
    d = attached_domain(r, &ctx);
    if (!d)
        return;
    ret = iommu_map(d, IOVA_BASE, PFN_PHYS(pfn), n * PG, RW, GFP_KERNEL);
    wb_check(r, ret == 0, "map %u pages of a PV guest: %d", n, ret);
    check_mapped(r, ctx, IOVA_BASE, n, pfn);
    check_translate(r, d, IOVA_BASE + 3 * PG + 0x10, PFN_PHYS(pfn + 3) + 0x10);
    check_dma_lands(r, IOVA_BASE + 3 * PG + 0x10, pfn_to_gfn(pfn + 3), "PV page 3");
    ret = iommu_map(d, IOVA_BASE + n * PG, PFN_PHYS(r->info.memory_pages), PG, RW, GFP_KERNEL);
    wb_check(r, ret < 0, "map a pfn past the domain's memory (no p2m entry): %d", ret);
    un = iommu_unmap(d, IOVA_BASE, n * PG);
    wb_check(r, un == n * PG, "unmap: 0x%zx bytes", un);
    check_unmapped(r, ctx, IOVA_BASE, n + 1);
    detach_and_free(r, d);
}

#define CPUS        4
#define PER_CPU     32              /* buffers each CPU maps */
#define BUF_PAGES   2

struct cpu {
    struct wb_run *r;
    struct iommu_domain *d;
    unsigned int id, errors;
    pthread_t thread;
};

static unsigned long cpu_iova(unsigned int cpu, unsigned int k)
{
    return IOVA_BASE + ((unsigned long)cpu * PER_CPU + k) * BUF_PAGES * PG;
}

static unsigned long cpu_pfn(unsigned int cpu, unsigned int k)
{
    return PFN_BASE + ((unsigned long)cpu * PER_CPU + k) * BUF_PAGES;
}

/* One CPU's DMA user: map its buffers, translate them, unmap the even ones. */
static void *cpu_main(void *arg)
{
    struct cpu *c = arg;
    unsigned int k;

    for (k = 0; k < PER_CPU; k++) {
        unsigned long iova = cpu_iova(c->id, k);

        if (iommu_map(c->d, iova, PFN_PHYS(cpu_pfn(c->id, k)), BUF_PAGES * PG, RW, GFP_ATOMIC))
            c->errors++;
        else if (c->d->ops->iova_to_phys &&
                 iommu_iova_to_phys(c->d, iova + PG) != PFN_PHYS(cpu_pfn(c->id, k) + 1))
            c->errors++;
    }
    for (k = 0; k < PER_CPU; k += 2)
        if (iommu_unmap(c->d, cpu_iova(c->id, k), BUF_PAGES * PG) != BUF_PAGES * PG)
            c->errors++;
    return NULL;
}

static void scenario_threads(struct wb_run *r)
{
    struct cpu cpus[CPUS];
    struct iommu_domain *d;
    unsigned int i, k, errors = 0, started = 0;
    int ctx;
    size_t un;

    d = attached_domain(r, &ctx);
    if (!d)
        return;
    for (i = 0; i < CPUS; i++) {
        cpus[i] = (struct cpu){ .r = r, .d = d, .id = i };
        if (pthread_create(&cpus[i].thread, NULL, cpu_main, &cpus[i]) == 0)
            started++;
        else
            break;
    }
    for (i = 0; i < started; i++) {
        pthread_join(cpus[i].thread, NULL);
        errors += cpus[i].errors;
    }
    wb_check(r, started == CPUS && errors == 0,
             "%u CPUs each mapped %u buffers of %u pages and unmapped half: %u errors", started,
             PER_CPU, BUF_PAGES, errors);
    for (i = 0; i < CPUS; i++) {
        char why[160];
        bool ok = true;

        for (k = 0; k < PER_CPU && ok; k++)
            ok = dump_is(r, ctx, cpu_iova(i, k), BUF_PAGES, k % 2 ? cpu_pfn(i, k) : ~0UL, why, sizeof(why));
        wb_check(r, ok, "dump: CPU %u's odd buffers mapped, even ones not: %s", i, why);
    }
    for (i = 0; i < CPUS; i++)
        for (k = 1; k < PER_CPU; k += 2) {
            un = iommu_unmap(d, cpu_iova(i, k), BUF_PAGES * PG);
            errors += un != BUF_PAGES * PG;
        }
    wb_check(r, errors == 0, "unmap the rest from one CPU: %u errors", errors);
    check_unmapped(r, ctx, IOVA_BASE, CPUS * PER_CPU * BUF_PAGES);
    detach_and_free(r, d);
}

#define MANY_MAX 4096

static void scenario_many(struct wb_run *r)
{
    static struct iommu_domain *doms[MANY_MAX];
    struct wb_domain_info before, full;
    struct iommu_domain *d = NULL;
    unsigned int n = 0, i;
    int infos;

    infos = wb_ctl_domain_info(r->ctl, r->domid, &before);
    while (n < MANY_MAX) {
        d = iommu_paging_domain_alloc(r->dev);
        if (IS_ERR(d))
            break;
        doms[n++] = d;
    }
    infos |= wb_ctl_domain_info(r->ctl, r->domid, &full);
    wb_check(r, n > 0 && n < MANY_MAX && IS_ERR(d) && PTR_ERR(d) == -ENOSPC,
             "%u paging domains, then %ld (want -ENOSPC)", n, IS_ERR(d) ? PTR_ERR(d) : 0L);
    /* `allocated` counts context 0, the pool (`contexts`) does not. */
    wb_check(r, !infos && full.nr_allocated == before.nr_allocated + n &&
             full.nr_allocated == full.nr_contexts + 1,
             "daemon: the pool is full: %u contexts allocated besides context 0, of %llu; %u before",
             full.nr_allocated - 1, (unsigned long long)full.nr_contexts, before.nr_allocated - 1);
    for (i = 0; i < n; i++)
        iommu_domain_free(doms[i]);
    infos = wb_ctl_domain_info(r->ctl, r->domid, &full);
    wb_check(r, !infos && full.nr_allocated == before.nr_allocated,
             "daemon: all %u freed (%u contexts allocated)", n, full.nr_allocated);
}

static void scenario_resv(struct wb_run *r)
{
    unsigned int i;

    for (i = 0; i < wb_core_nr_devices(); i++) {
        struct pci_dev *p = wb_core_device(i);
        struct xen_reserved_device_memory rdm[16];
        struct xen_reserved_device_memory_map map = { .flags = 0, .nr_entries = 16 };
        struct iommu_resv_region *reg;
        LIST_HEAD(regions);
        unsigned int msi = 0, direct = 0, matched = 0, k;
        long ret;

        /* The daemon's ranges for this device, asked on the core's own connection. */
        map.dev.pci.seg = (u16)pci_domain_nr(p->bus);
        map.dev.pci.bus = p->bus->number;
        map.dev.pci.devfn = (u8)p->devfn;
        map.buffer = rdm;
        ret = xenemu_memory_op(xenemu_default_conn(), XENMEM_reserved_device_memory_map, &map);

        iommu_get_resv_regions(&p->dev, &regions);
        list_for_each_entry(reg, &regions, list) {
            if (reg->type == IOMMU_RESV_MSI && reg->start == 0xfee00000 && reg->length == 0x100000)
                msi++;
            /* An RMRR is direct (mapped 1:1, Linux's VT-d way) or reserved (kept out of the
             * DMA API's iovas: Xen keeps the 1:1 map in every context): either fits. */
            if (reg->type == IOMMU_RESV_DIRECT || reg->type == IOMMU_RESV_DIRECT_RELAXABLE ||
                reg->type == IOMMU_RESV_RESERVED) {
                direct++;
                for (k = 0; ret == 0 && k < map.nr_entries && k < 16; k++)
                    matched += reg->start == PFN_PHYS(rdm[k].start_pfn) &&
                               reg->length == rdm[k].nr_pages * PG &&
                               (reg->type == IOMMU_RESV_RESERVED || (reg->prot & RW) == RW);
            }
        }
        iommu_put_resv_regions(&p->dev, &regions);
        wb_check(r, msi == 1, "%s: the MSI window 0xfee00000-0xfeefffff reserved (%u)", p->name, msi);
        wb_check(r, ret == 0 && direct == map.nr_entries && matched == direct,
                 "%s: %u RMRR regions (direct or reserved), the daemon has %u for it, %u match", p->name,
                 direct, ret == 0 ? map.nr_entries : 0, matched);
    }
}

const struct wb_scenario wb_scenarios[] = {
    { "basic", false, scenario_basic },
    { "chunked", false, scenario_chunked },
    { "overlap", false, scenario_overlap },
    { "pv", true, scenario_pv },
    { "threads", false, scenario_threads },
    { "many", false, scenario_many },
    { "resv", false, scenario_resv },
};
const unsigned int wb_nr_scenarios = sizeof(wb_scenarios) / sizeof(wb_scenarios[0]);
