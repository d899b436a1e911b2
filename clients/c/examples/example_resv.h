/* SPDX-License-Identifier: MIT */
/*
 * example_resv.h - the reserved-region step both driver examples share.
 * Linux's xen-iommu driver has the same xen_iommu_get_resv_regions() in its
 * revision-1 and revision-2 postings (__HYPERVISOR_memory_op is the same in
 * both ABIs, <xen/memory.h> under either include root); the IOMMU core calls
 * it for each device it probes. It reports the MSI window, then asks Xen for
 * the device's reserved memory (its RMRRs): XENMEM_reserved_device_memory_map
 * with a NULL buffer and nr_entries 0 to learn the count (-ENOBUFS and
 * nr_entries set; 0 when there are none), then again with a buffer of that
 * many. Header-only (static inline), as example_args.h.
 *
 * Output, after the probe (key=value pairs, as the step lines):
 *
 *   region=msi device=D start=0xfee00000 end=0xfeefffff
 *   step=resv_count ret=R nr_entries=N device=D flags=0xF
 *   step=resv_fetch ret=R nr_entries=N          only after a count of -ENOBUFS
 *   region=rmrr device=D start_pfn=0xP nr_pages=N
 *                                               one per range fetched, in the
 *                                               hypervisor's order (the machine
 *                                               file's); device=all with
 *                                               --rdm-flags 1 (XENMEM_RDM_ALL)
 *   step=resv_check expected=E fetched=F        only with --expect-rmrr
 *
 * resv_count failing otherwise ("Unable to get reserved region count", where
 * the driver carries on with the MSI window only), resv_fetch failing, or the
 * ranges fetched differing from --expect-rmrr (compared in any order) fail
 * the step: a line on stderr says why, and the example stops with exit 1.
 */
#ifndef XENEMU_EXAMPLE_RESV_H
#define XENEMU_EXAMPLE_RESV_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xen/memory.h>
#include <xen/physdev.h>

#include "xenemu_client.h"
#include "example_args.h"

/* Linux's MSI_RANGE_START/END: the interrupt window, reported as IOMMU_RESV_MSI. */
#define MSI_RANGE_START UINT64_C(0xfee00000)
#define MSI_RANGE_END   UINT64_C(0xfeefffff)

/* The driver warns above this many ranges ("something is probably wrong"). */
#define RESV_WARN_ENTRIES 256u

/* What the command line asks of the step: --rdm-flags and --expect-rmrr. */
struct resv_request {
    uint64_t flags;                 /* 0 as the driver, or XENMEM_RDM_ALL */
    struct rmrr_list want;
};

/* What xen_iommu_get_resv_regions() learnt from its two calls. */
struct resv_regions {
    long count_ret, fetch_ret;
    unsigned int count;             /* nr_entries after the counting call */
    unsigned int fetched;           /* nr_entries after the fetch */
    int fetch_made, no_memory;
    xen_reserved_device_memory_t *entries;   /* calloc'd, `count` of room */
};

/*
 * Linux xen_iommu_get_resv_regions(), its memory_op part: count, then fetch.
 * A count of 0 (no ranges) or an error ends it before the fetch, as there.
 */
static inline void xen_iommu_get_resv_regions(const struct physdev_pci_device *dev, uint32_t flags,
                                              const char *prog, struct resv_regions *out)
{
    struct xen_reserved_device_memory_map map;

    memset(out, 0, sizeof(*out));
    memset(&map, 0, sizeof(map));
    map.buffer.p = NULL;
    map.nr_entries = 0;
    map.flags = flags;
    map.dev.pci = *dev;
    out->count_ret = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    out->count = map.nr_entries;
    if (out->count_ret != -XEN_ENOBUFS)
        return;
    if (map.nr_entries > RESV_WARN_ENTRIES)
        fprintf(stderr, "%s: warning: Xen reporting many reserved regions (%u)\n", prog,
                map.nr_entries);
    out->entries = calloc(map.nr_entries ? map.nr_entries : 1, sizeof(*out->entries));
    if (!out->entries) {
        out->no_memory = 1;
        return;
    }
    map.buffer.p = out->entries;
    out->fetch_ret = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    out->fetch_made = 1;
    out->fetched = map.nr_entries;
}

static int compare_rdm(const void *a, const void *b)
{
    const xen_reserved_device_memory_t *x = a, *y = b;

    if (x->start_pfn != y->start_pfn)
        return x->start_pfn < y->start_pfn ? -1 : 1;
    return x->nr_pages < y->nr_pages ? -1 : x->nr_pages > y->nr_pages;
}

/* Ranges as --expect-rmrr spells them, for the mismatch line. */
static inline void print_rdm_list(const char *label, const xen_reserved_device_memory_t *v,
                                  unsigned int n)
{
    unsigned int i;

    fprintf(stderr, " %s ", label);
    if (n == 0)
        fprintf(stderr, "none");
    for (i = 0; i < n; i++)
        fprintf(stderr, "%s%" PRIx64 ":%" PRIu64, i ? "," : "", v[i].start_pfn, v[i].nr_pages);
}

/*
 * The fetched ranges against --expect-rmrr, in any order (sorted copies; the
 * hypervisor's order is its DMAR table's). 0 when they are the same.
 */
static inline int check_rdm(const char *prog, const char *device, const struct rmrr_list *want,
                            const xen_reserved_device_memory_t *got, unsigned int nr_got)
{
    xen_reserved_device_memory_t *a = NULL, *b = NULL;
    int same = want->nr == nr_got;

    printf("step=resv_check expected=%u fetched=%u\n", want->nr, nr_got);
    if (same && nr_got) {
        a = malloc(nr_got * sizeof(*a));
        b = malloc(nr_got * sizeof(*b));
        if (!a || !b) {
            free(a);
            free(b);
            fprintf(stderr, "%s: out of memory comparing reserved ranges\n", prog);
            return -1;
        }
        memcpy(a, want->range, nr_got * sizeof(*a));
        memcpy(b, got, nr_got * sizeof(*b));
        qsort(a, nr_got, sizeof(*a), compare_rdm);
        qsort(b, nr_got, sizeof(*b), compare_rdm);
        same = !memcmp(a, b, nr_got * sizeof(*a));
        free(a);
        free(b);
    }
    if (same)
        return 0;
    fprintf(stderr, "%s: reserved ranges of %s differ from --expect-rmrr:", prog, device);
    print_rdm_list("expected", want->range, want->nr);
    fprintf(stderr, ";");
    print_rdm_list("fetched", got, nr_got);
    fprintf(stderr, "\n");
    return -1;
}

/*
 * The step: the MSI window, the two calls, a line per range, the check.
 * Returns 0, or 1 with *step and *reason set for the example's fail().
 */
static inline int resv_regions_step(const char *prog, const struct physdev_pci_device *dev,
                                    const char *device, const struct resv_request *req,
                                    const char **step, const char **reason)
{
    struct resv_regions rr;
    const char *owner = req->flags & XENMEM_RDM_ALL ? "all" : device;
    unsigned int i, nr;
    int bad = 1;

    printf("region=msi device=%s start=0x%" PRIx64 " end=0x%" PRIx64 "\n", device,
           MSI_RANGE_START, MSI_RANGE_END);
    xen_iommu_get_resv_regions(dev, (uint32_t)req->flags, prog, &rr);
    printf("step=resv_count ret=%ld nr_entries=%u device=%s flags=0x%" PRIx64 "\n", rr.count_ret,
           rr.count, device, req->flags);
    *step = "resv_count";
    *reason = "error";
    if (rr.count_ret != 0 && rr.count_ret != -XEN_ENOBUFS) {
        fprintf(stderr, "%s: Unable to get reserved region count (%ld)\n", prog, rr.count_ret);
        goto out;
    }
    if (rr.no_memory) {
        fprintf(stderr, "%s: No memory for map entries (%u)\n", prog, rr.count);
        *step = "resv_fetch";
        *reason = "no-memory";
        goto out;
    }
    if (rr.fetch_made) {
        printf("step=resv_fetch ret=%ld nr_entries=%u\n", rr.fetch_ret, rr.fetched);
        *step = "resv_fetch";
        if (rr.fetch_ret) {
            fprintf(stderr, "%s: Unable to get reserved regions (%ld)\n", prog, rr.fetch_ret);
            goto out;
        }
    }
    /* Xen writes at most the room it was given: nr_entries above that is a count, not entries. */
    nr = rr.fetch_made && rr.fetched <= rr.count ? rr.fetched : 0;
    for (i = 0; i < nr; i++)
        printf("region=rmrr device=%s start_pfn=0x%" PRIx64 " nr_pages=%" PRIu64 "\n", owner,
               rr.entries[i].start_pfn, rr.entries[i].nr_pages);
    if (req->want.given && check_rdm(prog, device, &req->want, rr.entries, nr)) {
        *step = "resv_check";
        *reason = "mismatch";
        goto out;
    }
    bad = 0;
out:
    free(rr.entries);
    return bad;
}

#endif
