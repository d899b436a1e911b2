/*
 * xen_iommu_driver_v2 - the life of one DMA domain as Linux's xen-iommu guest
 * driver RFC v3 (revision 2 of PV-IOMMU, Xen RFC v4-v7) drives it. Built with
 * -Iabi/rev2 -Iabi: HYPERVISOR_iommu_op(unsigned int subop, void *arg).
 *
 *   XENEMU_SOCKET=/tmp/xenemu-$UID/dom1.sock build/xen_iommu_driver_v2 \
 *       [--device SSSS:BB:DD.F] [--pages N] [--pv-pages P] [--gfn G] [--dfn D]
 *       [--rdm-flags F] [--expect-rmrr none|START_PFN:NR_PAGES[,...]]
 *
 * Defaults: --device 0000:01:00.0 (guest1's on `xenemu serve --abi-revision 2`)
 * --pages 5000 --pv-pages 3 --gfn 0x10 --dfn 0x40000 --rdm-flags 0 (device,
 * gfn, dfn, flags and pfns in hex). Revision 2 has no page limit: the N pages
 * go in one map call, which the hypervisor preempts and continues on its own.
 * --rdm-flags 1 (XENMEM_RDM_ALL) asks for every device's reserved ranges;
 * --expect-rmrr checks the ranges fetched.
 *
 * The xen_iommu_* functions, each named after the Linux driver function it
 * stands for, issue HYPERVISOR_iommu_op() as those do; the step_* functions
 * run them in the driver's order and check every answer
 * (../shared/reference/pv-iommu-rev2.md §8):
 *
 *   probe         query_capabilities: 0, pgsize_mask has 4 KiB
 *   init          only if max_ctx_no == 0: init {128, 12}: 0 (-EACCES: warned,
 *                 exit 5). Xen v4-v7 fall through into alloc_context: the call
 *                 takes a context and writes its id over init's bytes 0-1,
 *                 printed as taken=
 *   probe_again   query_capabilities: 0, max_ctx_no > 0 (else -ENOTSUPP, exit 4)
 *   resv_count    the device's reserved regions (example_resv.h), as in
 *   resv_fetch    revision 1: the MSI window, memory_op's count (-ENOBUFS, or
 *   resv_check    0 for none) and fetch (0), a line per range, checked
 *                 against --expect-rmrr when given
 *   alloc_context alloc_context, flags 0: 0, 0 < ctx <= max_ctx_no (context 2
 *                 under the v7 semantics, init having taken 1)
 *   attach        reattach_device(ctx, device): 0
 *   map           one call for N pages (HVM/PVH): 0, mapped N
 *   map_pv        PV dom0's way: P one-page calls after the run, reusing the
 *                 struct without resetting `mapped`: every call 0, mapped P
 *   remap         the first page again: -EADDRINUSE, mapped 0
 *   unmap         one call for the N + P pages: 0, unmapped N + P
 *   release       reattach_device(0, device): 0 (the identity domain)
 *   free_context  free_context, flags 0: 0
 *   free_again    the same id again: -ENOENT
 *
 * Output: one line per step, key=value pairs, the step first and its return
 * value (Xen's negated errno) next, a "region=" line per reserved region
 * (example_resv.h), then "result=ok". At the first failed
 * expectation the program releases the device and frees the context (best
 * effort, "step=cleanup ret=R ctx=C"; never free with
 * IOMMU_FREE_reattach_default while a device is attached: Xen v7 livelocks),
 * prints "result=fail step=<name> reason=<why>" and exits non-zero.
 *
 * Exit codes: 0 ok; 1 a step failed; 2 bad command line; 3 no PV-IOMMU
 * (-ENOSYS, xenemu: also the daemon unreachable, stderr says why); 4 no
 * context after init (the driver's -ENOTSUPP); 5 the probe or init failed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <xen/pv-iommu.h>
#include "xenemu_client.h"
#include "example_args.h"
#include "example_resv.h"

#define XEN_PAGE_SHIFT 12
#define XEN_PAGE_SIZE 4096u

enum {
    EXIT_OK = 0,
    EXIT_STEP_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_NO_PV_IOMMU = 3,
    EXIT_UNSUPPORTED = 4,
    EXIT_PROBE_ERROR = 5,
};

/* The driver's global state: the capabilities the probe read. */
static struct pv_iommu_capabilities caps;

/* ---- the driver ------------------------------------------------------- */

/* Linux xen_iommu_init(), first half: query_capabilities (also its query again). */
static long xen_iommu_query(void)
{
    memset(&caps, 0, sizeof(caps));
    return HYPERVISOR_iommu_op(IOMMU_query_capabilities, &caps);
}

/* Linux xen_iommu_init(), when max_ctx_no == 0: init {128, 12} (the driver's FIXME values). */
static long xen_iommu_pv_init(struct pv_iommu_init *init)
{
    init->max_ctx_no = 128;
    init->arena_order = 12;
    return HYPERVISOR_iommu_op(IOMMU_init, init);
}

/* Linux xen_iommu_domain_alloc_paging(): alloc_flags 0; ctx_no is read back on success. */
static long xen_iommu_domain_alloc_paging(uint16_t *ctx_no)
{
    struct pv_iommu_alloc alloc;
    long ret;

    memset(&alloc, 0, sizeof(alloc));
    ret = HYPERVISOR_iommu_op(IOMMU_alloc_context, &alloc);
    if (ret == 0)
        *ctx_no = alloc.ctx_no;
    return ret;
}

/* Linux xen_iommu_attach_dev(): reattach with pasid 0; the return code is passed up. */
static long xen_iommu_attach_dev(uint16_t ctx_no, const struct physdev_pci_device *dev)
{
    struct pv_iommu_reattach_device r;

    memset(&r, 0, sizeof(r));
    r.ctx_no = ctx_no;
    r.dev = *dev;
    return HYPERVISOR_iommu_op(IOMMU_reattach_device, &r);
}

/* Linux: release_domain is the identity domain, context 0. */
static long xen_iommu_release_device(const struct physdev_pci_device *dev)
{
    return xen_iommu_attach_dev(IOMMU_DEFAULT_CONTEXT, dev);
}

/* The struct xen_iommu_map_pages() fills: pgsize 4096, read/write, mapped 0. */
static void map_struct(struct pv_iommu_map_pages *map, uint16_t ctx_no, uint64_t gfn, uint64_t dfn,
                       uint32_t nr_pages)
{
    memset(map, 0, sizeof(*map));
    map->ctx_no = ctx_no;
    map->gfn = gfn;
    map->dfn = dfn;
    map->map_flags = IOMMU_MAP_readable | IOMMU_MAP_writeable;
    map->pgsize = XEN_PAGE_SIZE;
    map->nr_pages = nr_pages;
}

/* Linux xen_iommu_map_pages(), HVM/PVH: the whole run in one call; *mapped from map.mapped. */
static long xen_iommu_map_pages(uint16_t ctx_no, uint64_t gfn, uint64_t dfn, uint32_t pgcount,
                                uint32_t *mapped)
{
    struct pv_iommu_map_pages map;
    long ret;

    map_struct(&map, ctx_no, gfn, dfn, pgcount);
    ret = HYPERVISOR_iommu_op(IOMMU_map_pages, &map);
    *mapped = map.mapped;     /* copied back on every path */
    return ret;
}

/*
 * Linux xen_iommu_map_pages(), XEN_PV_DOMAIN (map_single_pages): one page a
 * call, the struct reused and `mapped` never reset: it relies on Xen adding to
 * it. Stops at the first error. *calls counts the hypercalls.
 */
static long xen_iommu_map_single_pages(uint16_t ctx_no, uint64_t gfn, uint64_t dfn, uint32_t pgcount,
                                       uint32_t *mapped, unsigned int *calls)
{
    struct pv_iommu_map_pages map;
    uint32_t i;
    long ret = 0;

    map_struct(&map, ctx_no, gfn, dfn, 1);
    *calls = 0;
    for (i = 0; i < pgcount && ret == 0; i++) {
        map.gfn = gfn + i;    /* pfn_to_gfn() of each page: a PV guest's frames are scattered */
        map.dfn = dfn + i;
        map.nr_pages = 1;
        ret = HYPERVISOR_iommu_op(IOMMU_map_pages, &map);
        ++*calls;
    }
    *mapped = map.mapped;
    return ret;
}

/* Linux xen_iommu_unmap_pages(): one call, unmapped 0; the driver WARN_ONs an error. */
static long xen_iommu_unmap_pages(uint16_t ctx_no, uint64_t dfn, uint32_t pgcount, uint32_t *unmapped)
{
    struct pv_iommu_unmap_pages un;
    long ret;

    memset(&un, 0, sizeof(un));
    un.ctx_no = ctx_no;
    un.dfn = dfn;
    un.pgsize = XEN_PAGE_SIZE;
    un.nr_pages = pgcount;
    ret = HYPERVISOR_iommu_op(IOMMU_unmap_pages, &un);
    if (ret)
        fprintf(stderr, "xen_iommu_driver_v2: warning: unmap_pages ctx=%u dfn=0x%" PRIx64
                " nr_pages=%" PRIu32 " failed (%ld)\n", (unsigned)ctx_no, dfn, pgcount, ret);
    *unmapped = un.unmapped;
    return ret;
}

/* Linux xen_iommu_free(): free_flags 0 (the core has detached the devices); errors only logged. */
static long xen_iommu_free(uint16_t ctx_no)
{
    struct pv_iommu_free fr;

    memset(&fr, 0, sizeof(fr));
    fr.ctx_no = ctx_no;
    return HYPERVISOR_iommu_op(IOMMU_free_context, &fr);
}

/* ---- the run ------------------------------------------------------------- */

/* What the run has built: each step returns 0, or the exit code after fail(). */
struct run {
    struct physdev_pci_device dev;
    char device[16];
    uint64_t pages, pv_pages, gfn, dfn;
    uint16_t ctx_no;
    int have_ctx, attached;
    struct resv_request resv;       /* --rdm-flags, --expect-rmrr */
};

static void usage(void)
{
    fprintf(stderr, "usage: xen_iommu_driver_v2 [--device SSSS:BB:DD.F] [--pages N] [--pv-pages P]"
                    " [--gfn G] [--dfn D]\n"
                    "         [--rdm-flags F] [--expect-rmrr none|START_PFN:NR_PAGES[,...]]\n"
                    "  device, gfn, dfn, flags and pfns in hex;"
                    " defaults 0000:01:00.0, 5000, 3, 0x10, 0x40000, 0\n");
}

/* Options: exit with `*code` when this returns 0 (help, or bad arguments). */
static int parse_args(int argc, char **argv, struct run *r, int *code)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *opt = argv[i], *val;
        int bad;

        if (!strcmp(opt, "-h") || !strcmp(opt, "--help")) {
            usage();
            *code = EXIT_OK;
            return 0;
        }
        if (i + 1 >= argc) {
            usage();
            *code = EXIT_USAGE;
            return 0;
        }
        val = argv[++i];
        if (!strcmp(opt, "--device"))
            bad = parse_sbdf(val, &r->dev);
        else if (!strcmp(opt, "--pages"))
            bad = parse_u64(val, 10, &r->pages) || r->pages == 0 || r->pages > UINT32_MAX / 2;
        else if (!strcmp(opt, "--pv-pages"))
            bad = parse_u64(val, 10, &r->pv_pages) || r->pv_pages > 4096;
        else if (!strcmp(opt, "--gfn"))
            bad = parse_u64(val, 16, &r->gfn);
        else if (!strcmp(opt, "--dfn"))
            bad = parse_u64(val, 16, &r->dfn);
        else if (!strcmp(opt, "--rdm-flags"))
            bad = parse_u64(val, 16, &r->resv.flags) || r->resv.flags > UINT32_MAX;
        else if (!strcmp(opt, "--expect-rmrr"))
            bad = parse_rmrr_list(val, &r->resv.want);
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "xen_iommu_driver_v2: bad argument: %s %s\n", opt, val);
            usage();
            *code = EXIT_USAGE;
            return 0;
        }
    }
    if (r->gfn > UINT64_MAX - r->pages - r->pv_pages ||
        r->dfn > (UINT64_MAX >> XEN_PAGE_SHIFT) - r->pages - r->pv_pages) {
        fprintf(stderr, "xen_iommu_driver_v2: buffer wraps around\n");
        *code = EXIT_USAGE;
        return 0;
    }
    return 1;
}

/* Undo what is still set up (device out first: never free with it attached), then report. */
static int fail(struct run *r, const char *step, const char *reason, int code)
{
    if (r->have_ctx) {
        long ret = 0;

        if (r->attached)
            ret = xen_iommu_release_device(&r->dev);
        if (ret == 0)
            ret = xen_iommu_free(r->ctx_no);
        printf("step=cleanup ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    }
    printf("result=fail step=%s reason=%s\n", step, reason);
    return code;
}

static void print_caps(const char *step, long ret)
{
    printf("step=%s ret=%ld max_ctx_no=%u pgsize_mask=0x%" PRIx32 " max_iova_addr=0x%" PRIx64
           " cap_flags=0x%" PRIx32 "\n", step, ret, (unsigned)caps.max_ctx_no, caps.pgsize_mask,
           caps.max_iova_addr, caps.cap_flags);
}

/*
 * Linux: xen_iommu_init(), the probe: query, init when no context exists yet,
 * query again. Any query error is -ENODEV to the driver.
 */
static int step_probe(struct run *r)
{
    struct pv_iommu_init init;
    long ret = xen_iommu_query();

    print_caps("probe", ret);
    if (ret == -XEN_ENOSYS) {
        fprintf(stderr, "xen_iommu_driver_v2: no PV-IOMMU (query_capabilities: -ENOSYS)%s%s\n",
                *xenemu_last_error() ? ": " : "", xenemu_last_error());
        return fail(r, "probe", "no-pv-iommu", EXIT_NO_PV_IOMMU);
    }
    if (ret)
        return fail(r, "probe", "error", EXIT_PROBE_ERROR);
    if (!(caps.pgsize_mask & XEN_PAGE_SIZE))
        return fail(r, "probe", "no-4k-pages", EXIT_UNSUPPORTED);
    if (caps.max_ctx_no == 0) {
        ret = xen_iommu_pv_init(&init);
        printf("step=init ret=%ld taken=%u arena_order=%" PRIu32 "\n", ret,
               (unsigned)(init.max_ctx_no & 0xffff), init.arena_order);
        if (ret == -XEN_EACCES)
            fprintf(stderr, "xen_iommu_driver_v2: warning: PV-IOMMU already initialized, "
                            "guest may not be allowed\n");
        if (ret)
            return fail(r, "init", "error", EXIT_PROBE_ERROR);
        ret = xen_iommu_query();
        print_caps("probe_again", ret);
        if (ret)
            return fail(r, "probe_again", "error", EXIT_PROBE_ERROR);
    }
    if (caps.max_ctx_no == 0)
        return fail(r, "probe", "unsupported", EXIT_UNSUPPORTED);
    /* The aperture the driver gives its domains ends at max_iova_addr. */
    if (r->dfn + r->pages + r->pv_pages - 1 > caps.max_iova_addr >> XEN_PAGE_SHIFT)
        return fail(r, "probe", "outside-aperture", EXIT_STEP_FAILED);
    return 0;
}

/*
 * Linux: xen_iommu_get_resv_regions(), which the IOMMU core calls when it
 * probes the device: the MSI window and the device's RMRRs (example_resv.h).
 */
static int step_resv_regions(struct run *r)
{
    const char *step, *reason;

    if (resv_regions_step("xen_iommu_driver_v2", &r->dev, r->device, &r->resv, &step, &reason))
        return fail(r, step, reason, EXIT_STEP_FAILED);
    return 0;
}

/* Linux: xen_iommu_domain_alloc_paging(), a DMA domain is one context. */
static int step_domain_alloc(struct run *r)
{
    long ret = xen_iommu_domain_alloc_paging(&r->ctx_no);

    printf("step=alloc_context ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret)
        return fail(r, "alloc_context", "error", EXIT_STEP_FAILED);
    r->have_ctx = 1;
    if (r->ctx_no == IOMMU_DEFAULT_CONTEXT || r->ctx_no > caps.max_ctx_no)
        return fail(r, "alloc_context", "bad-ctx", EXIT_STEP_FAILED);
    return 0;
}

/* Linux: xen_iommu_attach_dev(), the device's DMA now goes through the context. */
static int step_attach(struct run *r)
{
    long ret = xen_iommu_attach_dev(r->ctx_no, &r->dev);

    printf("step=attach ret=%ld ctx=%u device=%s\n", ret, (unsigned)r->ctx_no, r->device);
    if (ret)
        return fail(r, "attach", "error", EXIT_STEP_FAILED);
    r->attached = 1;
    return 0;
}

/*
 * Linux: xen_iommu_map_pages(), both ways: the run in one call as HVM/PVH do,
 * then PV dom0's one-page calls just after it, then the run's first page again.
 */
static int step_map(struct run *r)
{
    uint32_t mapped;
    unsigned int calls;
    long ret = xen_iommu_map_pages(r->ctx_no, r->gfn, r->dfn, (uint32_t)r->pages, &mapped);

    printf("step=map ret=%ld mapped=%" PRIu32 " calls=1 gfn=0x%" PRIx64 " dfn=0x%" PRIx64
           " pages=%" PRIu64 "\n", ret, mapped, r->gfn, r->dfn, r->pages);
    if (ret)
        return fail(r, "map", "error", EXIT_STEP_FAILED);
    if (mapped != r->pages)
        return fail(r, "map", "count", EXIT_STEP_FAILED);

    ret = xen_iommu_map_single_pages(r->ctx_no, r->gfn + r->pages, r->dfn + r->pages,
                                     (uint32_t)r->pv_pages, &mapped, &calls);
    printf("step=map_pv ret=%ld mapped=%" PRIu32 " calls=%u\n", ret, mapped, calls);
    if (ret)
        return fail(r, "map_pv", "error", EXIT_STEP_FAILED);
    if (mapped != r->pv_pages || calls != r->pv_pages)
        return fail(r, "map_pv", "count", EXIT_STEP_FAILED);

    ret = xen_iommu_map_pages(r->ctx_no, r->gfn, r->dfn, 1, &mapped);
    printf("step=remap ret=%ld mapped=%" PRIu32 "\n", ret, mapped);
    if (ret != -XEN_EADDRINUSE || mapped != 0)
        return fail(r, "remap", "want-eaddrinuse", EXIT_STEP_FAILED);
    return 0;
}

/* Linux: xen_iommu_unmap_pages(), everything mapped in one call. */
static int step_unmap(struct run *r)
{
    uint32_t unmapped, want = (uint32_t)(r->pages + r->pv_pages);
    long ret = xen_iommu_unmap_pages(r->ctx_no, r->dfn, want, &unmapped);

    printf("step=unmap ret=%ld unmapped=%" PRIu32 " calls=1\n", ret, unmapped);
    if (ret)
        return fail(r, "unmap", "error", EXIT_STEP_FAILED);
    if (unmapped != want)
        return fail(r, "unmap", "count", EXIT_STEP_FAILED);
    return 0;
}

/* Linux: the core's release_device, the device back to the identity domain (context 0). */
static int step_release(struct run *r)
{
    long ret = xen_iommu_release_device(&r->dev);

    printf("step=release ret=%ld ctx=%u device=%s\n", ret, (unsigned)IOMMU_DEFAULT_CONTEXT, r->device);
    if (ret)
        return fail(r, "release", "error", EXIT_STEP_FAILED);
    r->attached = 0;
    return 0;
}

/* Linux: xen_iommu_free(), then once more: the id is gone. */
static int step_domain_free(struct run *r)
{
    long ret = xen_iommu_free(r->ctx_no);

    printf("step=free_context ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret)
        return fail(r, "free_context", "error", EXIT_STEP_FAILED);
    r->have_ctx = 0;

    ret = xen_iommu_free(r->ctx_no);
    printf("step=free_again ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret != -XEN_ENOENT)
        return fail(r, "free_again", "want-enoent", EXIT_STEP_FAILED);
    return 0;
}

/* The steps in the order a DMA user of the device causes them. */
static int (*const steps[])(struct run *) = {
    step_probe, step_resv_regions, step_domain_alloc, step_attach, step_map, step_unmap, step_release,
    step_domain_free,
};

int main(int argc, char **argv)
{
    struct run r;
    size_t i;
    int code;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&r, 0, sizeof(r));
    r.pages = 5000;
    r.pv_pages = 3;
    r.gfn = 0x10;
    r.dfn = 0x40000;
    parse_sbdf("0000:01:00.0", &r.dev);
    if (!parse_args(argc, argv, &r, &code))
        return code;
    format_sbdf(&r.dev, r.device, sizeof(r.device));

    for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        if ((code = steps[i](&r)) != 0)
            return code;
    printf("result=ok\n");
    return EXIT_OK;
}
