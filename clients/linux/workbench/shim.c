/* SPDX-License-Identifier: MIT */
/*
 * shim.c - the kernel services a driver calls that are not the IOMMU core:
 * printk, WARN/BUG, kmalloc, module registration, the Xen guest flavour and
 * the PV p2m, and io-pgtable's format table. What each keeps of the kernel's
 * behaviour: clients/linux/README.md.
 */
#define _GNU_SOURCE
#include <asm/iommu.h>
#include <linux/io-pgtable.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <xen/features.h>
#include <xen/page.h>
#include <xen/xen.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "workbench.h"

int wb_debug;
static atomic_long live_allocations;
static atomic_ulong warnings;

/* -- printing ---------------------------------------------------------------- */

static const char *const level_names[] = {
    "emerg", "alert", "crit", "err", "warn", "notice", "info", "debug",
};

int printk(const char *fmt, ...)
{
    int level = 4;      /* the kernel's default message level */
    char line[1024];
    va_list ap;

    if (fmt[0] == KERN_SOH[0] && fmt[1] == 'c') {
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt + 2, ap);
        va_end(ap);
        return fprintf(stderr, "%s", line);
    }
    if (fmt[0] == KERN_SOH[0] && fmt[1] >= '0' && fmt[1] <= '7') {
        level = fmt[1] - '0';
        fmt += 2;
    }
    if (level == 7 && !wb_debug)
        return 0;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One write per message, so that CPUs' lines do not interleave mid-line. */
    return fprintf(stderr, "<%s> %s", level_names[level], line);
}

void wb_warn(const char *file, int line, const char *cond)
{
    atomic_fetch_add(&warnings, 1);
    fprintf(stderr, "<warn> WARNING: %s:%d: %s\n", file, line, cond);
}

void wb_bug(const char *file, int line, const char *cond)
{
    fprintf(stderr, "<crit> kernel BUG at %s:%d: %s\n", file, line, cond);
    fflush(NULL);
    abort();
}

unsigned long wb_warnings(void)
{
    return atomic_load(&warnings);
}

/* -- memory -------------------------------------------------------------------- */

void *kmalloc(size_t size, gfp_t flags)
{
    void *p = (flags & __GFP_ZERO) ? calloc(1, size ? size : 1) : malloc(size ? size : 1);

    if (p)
        atomic_fetch_add(&live_allocations, 1);
    return p;
}

void *kzalloc(size_t size, gfp_t flags)
{
    return kmalloc(size, flags | __GFP_ZERO);
}

void *kmalloc_array(size_t n, size_t size, gfp_t flags)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return kmalloc(n * size, flags);
}

void *kcalloc(size_t n, size_t size, gfp_t flags)
{
    return kmalloc_array(n, size, flags | __GFP_ZERO);
}

void kfree(const void *ptr)
{
    if (!ptr)
        return;
    atomic_fetch_sub(&live_allocations, 1);
    free((void *)ptr);
}

long wb_live_allocations(void)
{
    return atomic_load(&live_allocations);
}

/* -- modules ------------------------------------------------------------------- */

static initcall_t module_init_fn;
static exitcall_t module_exit_fn;

void wb_register_module_init(initcall_t fn, const char *name)
{
    if (module_init_fn) {
        fprintf(stderr, "workbench: a second module_init (%s): one driver per program\n", name);
        exit(2);
    }
    module_init_fn = fn;
}

void wb_register_module_exit(exitcall_t fn, const char *name)
{
    if (module_exit_fn) {
        fprintf(stderr, "workbench: a second module_exit (%s): one driver per program\n", name);
        exit(2);
    }
    module_exit_fn = fn;
}

bool wb_have_module(void)
{
    return module_init_fn != NULL;
}

bool wb_have_module_exit(void)
{
    return module_exit_fn != NULL;
}

int wb_module_init(void)
{
    return module_init_fn();
}

void wb_module_exit(void)
{
    if (module_exit_fn)
        module_exit_fn();
}

/* x86's boot-time IOMMU flags (<asm/iommu.h>): drivers may set them; nothing reads them. */
int force_iommu, no_iommu, iommu_detected;
bool x86_swiotlb_enable;

/* -- Xen guest flavour and the PV p2m ------------------------------------------- */

enum xen_domain_type xen_domain_type = XEN_HVM_DOMAIN;
bool xen_pvh;
uint32_t xen_start_flags;
bool xen_features[XENFEAT_NR_SUBMAPS * 32];

void wb_set_guest(bool pv, bool initial_domain)
{
    xen_domain_type = pv ? XEN_PV_DOMAIN : XEN_HVM_DOMAIN;
    xen_features[XENFEAT_auto_translated_physmap] = !pv;
    xen_start_flags = initial_domain ? (SIF_INITDOMAIN | SIF_PRIVILEGED) : 0;
}

static unsigned long *p2m, *m2p;
static unsigned long p2m_size;

/*
 * A PV guest's p2m scatters its pfns over the frames Xen gave it. Here: the
 * domain's gfns 0 .. n-1 (the daemon's view), pfn i at gfn (i * STRIDE + 1)
 * mod n with STRIDE odd and prime to n, a permutation in which consecutive
 * pfns are never consecutive gfns (for n > 2). The daemon's domains have a
 * whole number of MiB, so n is a multiple of 256 and any odd stride is prime to it.
 */
#define P2M_STRIDE 40503UL

static unsigned long gcd(unsigned long a, unsigned long b)
{
    while (b) {
        unsigned long t = a % b;

        a = b;
        b = t;
    }
    return a;
}

int wb_p2m_setup(unsigned long nr_pages)
{
    unsigned long i, stride = P2M_STRIDE;

    wb_p2m_teardown();
    if (nr_pages < 3)
        return -EINVAL;
    while (gcd(stride, nr_pages) != 1)
        stride += 2;
    p2m = calloc(nr_pages, sizeof(*p2m));
    m2p = calloc(nr_pages, sizeof(*m2p));
    if (!p2m || !m2p) {
        wb_p2m_teardown();
        return -ENOMEM;
    }
    for (i = 0; i < nr_pages; i++) {
        p2m[i] = (unsigned long)((i * (unsigned __int128)stride + 1) % nr_pages);
        m2p[p2m[i]] = i;
    }
    p2m_size = nr_pages;
    return 0;
}

void wb_p2m_teardown(void)
{
    free(p2m);
    free(m2p);
    p2m = m2p = NULL;
    p2m_size = 0;
}

unsigned long __pfn_to_mfn(unsigned long pfn)
{
    return pfn < p2m_size ? p2m[pfn] : INVALID_P2M_ENTRY;
}

unsigned long mfn_to_pfn(unsigned long mfn)
{
    return mfn < p2m_size ? m2p[mfn] : INVALID_P2M_ENTRY;
}

/* -- io-pgtable ------------------------------------------------------------------ */

static const struct io_pgtable_init_fns *io_pgtable_formats[IO_PGTABLE_NUM_FMTS] = {
    [XEN_IOMMU_GENERIC] = &wb_io_pgtable_generic_fns,
};

int io_pgtable_register_format(enum io_pgtable_fmt fmt, const struct io_pgtable_init_fns *fns)
{
    if ((unsigned int)fmt >= IO_PGTABLE_NUM_FMTS)
        return -EINVAL;
    if (fns && io_pgtable_formats[fmt])
        return -EBUSY;
    io_pgtable_formats[fmt] = fns;
    return 0;
}

struct io_pgtable_ops *alloc_io_pgtable_ops(enum io_pgtable_fmt fmt, struct io_pgtable_cfg *cfg,
                                            void *cookie)
{
    const struct io_pgtable_init_fns *fns;
    struct io_pgtable *iop;

    if ((unsigned int)fmt >= IO_PGTABLE_NUM_FMTS)
        return NULL;
    fns = io_pgtable_formats[fmt];
    if (!fns)
        return NULL;
    iop = fns->alloc(cfg, cookie);
    if (!iop)
        return NULL;
    iop->fmt = fmt;
    iop->cookie = cookie;
    iop->cfg = *cfg;
    return &iop->ops;
}

void free_io_pgtable_ops(struct io_pgtable_ops *ops)
{
    struct io_pgtable *iop;

    if (!ops)
        return;
    iop = io_pgtable_ops_to_pgtable(ops);
    io_pgtable_tlb_flush_all(iop);
    io_pgtable_formats[iop->fmt]->free(iop);
}
