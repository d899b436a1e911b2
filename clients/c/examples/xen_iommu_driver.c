/*
 * xen_iommu_driver - the life of one DMA domain, as Linux's xen-iommu guest
 * driver (revision 1 of PV-IOMMU, driver v1/v2) drives it.
 *
 *   XENEMU_SOCKET=/tmp/xenemu-$UID/dom0.sock build/xen_iommu_driver \
 *       [--device SSSS:BB:DD.F] [--pages N] [--gfn G] [--dfn D]
 *       [--rdm-flags F] [--expect-rmrr none|START_PFN:NR_PAGES[,...]]
 *
 * Defaults: --device 0000:00:03.0 --pages 600 --gfn 0x1000 --dfn 0x40000
 * --rdm-flags 0 (device, gfn, dfn, flags and pfns in hex, pages in decimal).
 * 600 pages need three map calls of at most max_nr_pages (256) each.
 * --rdm-flags 1 (XENMEM_RDM_ALL) asks for every device's reserved ranges;
 * --expect-rmrr checks the ranges fetched (on the default machine, 0000:00:04.0
 * has one: --device 0000:00:04.0 --expect-rmrr e8:2).
 *
 * The xen_iommu_* functions below, each named after the Linux driver's
 * function it stands for, issue HYPERVISOR_iommu_op() exactly as those do
 * (init, the probe; domain_alloc_paging, attach_dev, map_pages, unmap_pages,
 * iova_to_phys, release_device, free). The step_* functions, one per part of
 * the driver's life, run them in the order a DMA user causes them and check
 * every answer; a prototype puts its own code in a xen_iommu_* function and
 * keeps the checks:
 *
 *   probe            query_capabilities: 0, max_ctx_no > 0, max_nr_pages > 0
 *   resv_count       the device's reserved regions (example_resv.h): the MSI
 *   resv_fetch         window, memory_op XENMEM_reserved_device_memory_map
 *   resv_check         with a NULL buffer (-ENOBUFS and the count, or 0 for
 *                      none), then the fetch: 0; a line per range; checked
 *                      against --expect-rmrr when given
 *   alloc_context    alloc_context, flags 0: 0; the id is read from op.ctx_no
 *   attach           reattach_device(ctx, device): 0
 *   map              N pages gfn..gfn+N-1 at dfn..dfn+N-1, read/write, in
 *                    chunks of max_nr_pages: ret 0, mapped N, ceil(N/max) calls
 *   lookup_first     lookup_page of the first, middle (N/2) and last dfn:
 *   lookup_middle      ret 0 and gfn = gfn_base + offset (iova_to_phys reads
 *   lookup_last        an error as 0, as the driver does)
 *   lookup_unmapped  lookup_page of a dfn just past the buffer: -ENOENT
 *   remap            mapping the first chunk again: -EADDRINUSE, mapped 0
 *   free_busy        free_context, flags 0, device still attached: -EBUSY
 *   unmap            unmap in chunks (a failed chunk is warned about and the
 *                    next one still tried): every call 0, unmapped N
 *   release          reattach_device(0, device): 0
 *   free_context     free_context, flags 0: 0
 *   free_again       free_context of the same id again: -ENOENT
 *
 * Output: one line per step on stdout, space-separated key=value pairs, the
 * step first and its hypercall's return value (Xen's negated errno) next
 * (resv_check makes no hypercall: no ret), and a "region=" line per reserved
 * region of the device (example_resv.h):
 *
 *   step=probe ret=0 max_ctx_no=128 max_nr_pages=256 max_iova_addr=0x7fffffffff
 *   region=msi device=0000:00:03.0 start=0xfee00000 end=0xfeefffff
 *   step=resv_count ret=0 nr_entries=0 device=0000:00:03.0 flags=0x0
 *   step=alloc_context ret=0 ctx=1
 *   step=attach ret=0 ctx=1 device=0000:00:03.0
 *   step=map ret=0 mapped=600 calls=3 gfn=0x1000 dfn=0x40000 pages=600
 *   step=lookup_first ret=0 dfn=0x40000 gfn=0x1000 want=0x1000
 *   ...
 *   step=unmap ret=0 unmapped=600 calls=3 errors=0
 *   ...
 *   result=ok
 *
 * Every step name appears at most once. At the first step whose expectation
 * fails the program stops: it tears down what it built (best effort: the
 * device back to context 0, then free_context with
 * IOMMU_TEARDOWN_REATTACH_DEFAULT, which also drops the mappings), printing
 * "step=cleanup ret=R ctx=C", then prints
 * "result=fail step=<name> reason=<why>" and exits non-zero.
 *
 * Exit codes:
 *   0  every expectation held (result=ok)
 *   1  a step after the probe did not answer as expected
 *   2  bad command line
 *   3  no PV-IOMMU: query_capabilities returned -ENOSYS (xenemu: also when
 *      the daemon can't be reached; stderr then says why)
 *   4  PV-IOMMU present but unusable: max_ctx_no == 0 (or max_nr_pages == 0)
 *   5  the probe returned another error, e.g. -EPERM in a domain that is not
 *      the hardware domain (revision 1 serves the hardware domain only)
 *
 * A PV dom0's driver maps one page per call (its frames are not contiguous);
 * this program behaves like an HVM/PVH guest and uses max_nr_pages.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenemu_client.h"
#include "example_args.h"
#include "example_resv.h"

#define XEN_PAGE_SHIFT 12
#define XEN_PAGE_SIZE (UINT64_C(1) << XEN_PAGE_SHIFT)

enum {
    EXIT_OK = 0,
    EXIT_STEP_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_NO_PV_IOMMU = 3,
    EXIT_UNSUPPORTED = 4,
    EXIT_PROBE_ERROR = 5,
};

/* What the probe learnt (the driver keeps it in its global state). */
static struct pv_iommu_op caps;

/* ---- the driver ------------------------------------------------------- */

/* Linux xen_iommu_init(), the probe: -ENOSYS means no PV-IOMMU, max_ctx_no == 0 unsupported. */
static long xen_iommu_init(void)
{
    memset(&caps, 0, sizeof(caps));
    caps.subop_id = IOMMUOP_query_capabilities;
    return HYPERVISOR_iommu_op(&caps);
}

/* Linux xen_iommu_domain_alloc_paging(): a new context, flags 0; its id comes back in ctx_no. */
static long xen_iommu_domain_alloc_paging(uint16_t *ctx_no)
{
    struct pv_iommu_op op;
    long ret;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_alloc_context;
    op.flags = 0;
    ret = HYPERVISOR_iommu_op(&op);
    if (ret == 0)
        *ctx_no = op.ctx_no;
    return ret;
}

/* Linux xen_iommu_attach_dev() (and release_device with ctx_no 0): the return code is passed up. */
static long xen_iommu_attach_dev(uint16_t ctx_no, const struct physdev_pci_device *dev)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_reattach_device;
    op.ctx_no = ctx_no;
    op.reattach_device.dev = *dev;
    return HYPERVISOR_iommu_op(&op);
}

/* Linux xen_iommu_release_device(): the device back to the default context. */
static long xen_iommu_release_device(const struct physdev_pci_device *dev)
{
    return xen_iommu_attach_dev(IOMMU_DEFAULT_CONTEXT, dev);
}

/* The pages of one map or unmap call: what is left, at most max_nr_pages. */
static uint32_t chunk_pages(uint64_t left)
{
    return left < caps.cap.max_nr_pages ? (uint32_t)left : caps.cap.max_nr_pages;
}

/*
 * Linux xen_iommu_map_pages(): chunks of at most max_nr_pages; `mapped` is added to the count
 * after every call, and the first error ends the loop and is returned.
 */
static long xen_iommu_map_pages(uint16_t ctx_no, uint64_t iova, uint64_t paddr, uint64_t pgcount,
                                uint64_t *mapped, unsigned int *calls)
{
    struct pv_iommu_op op;
    uint64_t done = 0;
    long ret = 0;

    *mapped = 0;
    *calls = 0;
    while (done < pgcount) {
        uint32_t nr = chunk_pages(pgcount - done);

        memset(&op, 0, sizeof(op));
        op.subop_id = IOMMUOP_map_pages;
        op.ctx_no = ctx_no;
        op.flags = IOMMU_OP_readable | IOMMU_OP_writeable;
        op.map_pages.gfn = (paddr >> XEN_PAGE_SHIFT) + done;
        op.map_pages.dfn = (iova >> XEN_PAGE_SHIFT) + done;
        op.map_pages.nr_pages = nr;
        ret = HYPERVISOR_iommu_op(&op);
        ++*calls;
        *mapped += op.map_pages.mapped;   /* Xen copies the struct back on error too */
        if (ret)
            break;
        done += nr;
    }
    return ret;
}

/*
 * Linux xen_iommu_unmap_pages(): the same chunks. Linux requires unmap never to fail, so an
 * error is warned about and the next chunk is still unmapped. Returns the
 * number of pages unmapped; *errors counts the calls that failed and
 * *first_err holds the first failure's code (0 if none).
 */
static uint64_t xen_iommu_unmap_pages(uint16_t ctx_no, uint64_t iova, uint64_t pgcount,
                                      unsigned int *calls, unsigned int *errors, long *first_err)
{
    struct pv_iommu_op op;
    uint64_t done = 0, unmapped = 0;
    long ret;

    *calls = 0;
    *errors = 0;
    *first_err = 0;
    while (done < pgcount) {
        uint32_t nr = chunk_pages(pgcount - done);

        memset(&op, 0, sizeof(op));
        op.subop_id = IOMMUOP_unmap_pages;
        op.ctx_no = ctx_no;
        op.unmap_pages.dfn = (iova >> XEN_PAGE_SHIFT) + done;
        op.unmap_pages.nr_pages = nr;
        ret = HYPERVISOR_iommu_op(&op);
        ++*calls;
        unmapped += op.unmap_pages.unmapped;
        if (ret) {
            fprintf(stderr, "xen_iommu_driver: warning: unmap_pages ctx=%u dfn=0x%" PRIx64
                    " nr_pages=%" PRIu32 " failed (%ld), unmapped %" PRIu32 "\n",
                    (unsigned)ctx_no, op.unmap_pages.dfn, nr, ret, op.unmap_pages.unmapped);
            if (!*errors)
                *first_err = ret;
            ++*errors;
        }
        done += nr;
    }
    return unmapped;
}

/* Linux xen_iommu_iova_to_phys(): lookup_page with dfn = iova >> 12; an error reads as 0. */
static uint64_t xen_iommu_iova_to_phys(uint16_t ctx_no, uint64_t iova, long *ret)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_lookup_page;
    op.ctx_no = ctx_no;
    op.lookup_page.dfn = iova >> XEN_PAGE_SHIFT;
    *ret = HYPERVISOR_iommu_op(&op);
    if (*ret)
        return 0;
    return (op.lookup_page.gfn << XEN_PAGE_SHIFT) | (iova & (XEN_PAGE_SIZE - 1));
}

/* Linux xen_iommu_free(), the domain's free: free_context (with flags 0, no device attached). */
static long xen_iommu_free(uint16_t ctx_no, uint32_t flags)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_free_context;
    op.ctx_no = ctx_no;
    op.flags = flags;
    return HYPERVISOR_iommu_op(&op);
}

/* ---- the command line ---------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: xen_iommu_driver [--device SSSS:BB:DD.F] [--pages N] [--gfn G] [--dfn D]\n"
                    "         [--rdm-flags F] [--expect-rmrr none|START_PFN:NR_PAGES[,...]]\n"
                    "  device, gfn, dfn, flags and pfns in hex;"
                    " defaults 0000:00:03.0, 600, 0x1000, 0x40000, 0\n");
}


/* ---- the run ------------------------------------------------------------- */

/*
 * What the run has built and learnt. Each step below is one part of the
 * Linux driver's life, calls the xen_iommu_* function above that stands for
 * it, prints its line and checks the answer: it returns 0 when the
 * expectation held, else the exit code (fail() has cleaned up by then).
 */
struct run {
    struct physdev_pci_device dev;
    char device[16];
    uint64_t pages, gfn, dfn;
    uint64_t last_dfn;              /* dfn + pages - 1 */
    uint64_t chunk;                 /* pages in one map call: min(pages, max_nr_pages) */
    unsigned int want_calls;        /* map or unmap calls for the buffer */
    uint16_t ctx_no;
    int have_ctx, attached;
    struct resv_request resv;       /* --rdm-flags, --expect-rmrr */
};

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
            bad = parse_u64(val, 10, &r->pages) || r->pages == 0 || r->pages > UINT32_MAX;
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
            fprintf(stderr, "xen_iommu_driver: bad argument: %s %s\n", opt, val);
            usage();
            *code = EXIT_USAGE;
            return 0;
        }
    }
    if (r->gfn > UINT64_MAX - r->pages || r->dfn > (UINT64_MAX >> XEN_PAGE_SHIFT) - r->pages) {
        fprintf(stderr, "xen_iommu_driver: buffer wraps around\n");
        *code = EXIT_USAGE;
        return 0;
    }
    return 1;
}

/* Undo what is still set up, then report the failed step. */
static int fail(struct run *r, const char *step, const char *reason, int code)
{
    if (r->have_ctx) {
        long ret = 0;

        if (r->attached)
            ret = xen_iommu_release_device(&r->dev);
        if (ret == 0)
            ret = xen_iommu_free(r->ctx_no, IOMMU_TEARDOWN_REATTACH_DEFAULT);
        printf("step=cleanup ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    }
    printf("result=fail step=%s reason=%s\n", step, reason);
    return code;
}

/*
 * Linux: xen_iommu_init(), the driver's probe. Without PV-IOMMU (-ENOSYS),
 * or with one that offers no context, the driver does not register.
 */
static int step_probe(struct run *r)
{
    long ret = xen_iommu_init();

    printf("step=probe ret=%ld max_ctx_no=%u max_nr_pages=%" PRIu32 " max_iova_addr=0x%" PRIx64 "\n",
           ret, (unsigned)caps.cap.max_ctx_no, caps.cap.max_nr_pages, caps.cap.max_iova_addr);
    if (ret == -XEN_ENOSYS) {
        fprintf(stderr, "xen_iommu_driver: no PV-IOMMU (query_capabilities: -ENOSYS)%s%s\n",
                *xenemu_last_error() ? ": " : "", xenemu_last_error());
        return fail(r, "probe", "no-pv-iommu", EXIT_NO_PV_IOMMU);
    }
    if (ret) {
        fprintf(stderr, "xen_iommu_driver: query_capabilities failed (%ld)\n", ret);
        return fail(r, "probe", "error", EXIT_PROBE_ERROR);
    }
    if (caps.cap.max_ctx_no == 0 || caps.cap.max_nr_pages == 0) {
        fprintf(stderr, "xen_iommu_driver: PV-IOMMU unsupported (max_ctx_no=%u max_nr_pages=%" PRIu32 ")\n",
                (unsigned)caps.cap.max_ctx_no, caps.cap.max_nr_pages);
        return fail(r, "probe", "unsupported", EXIT_UNSUPPORTED);
    }
    /* The aperture the driver gives its domains ends at max_iova_addr. */
    r->last_dfn = r->dfn + r->pages - 1;
    if (r->last_dfn > caps.cap.max_iova_addr >> XEN_PAGE_SHIFT) {
        fprintf(stderr, "xen_iommu_driver: dfn 0x%" PRIx64 " is past the aperture (max_iova_addr 0x%"
                PRIx64 ")\n", r->last_dfn, caps.cap.max_iova_addr);
        return fail(r, "probe", "outside-aperture", EXIT_STEP_FAILED);
    }
    r->chunk = chunk_pages(r->pages);
    r->want_calls = (unsigned int)((r->pages + caps.cap.max_nr_pages - 1) / caps.cap.max_nr_pages);
    return 0;
}

/*
 * Linux: xen_iommu_get_resv_regions(), which the IOMMU core calls when it
 * probes the device: the MSI window and the device's RMRRs (example_resv.h).
 */
static int step_resv_regions(struct run *r)
{
    const char *step, *reason;

    if (resv_regions_step("xen_iommu_driver", &r->dev, r->device, &r->resv, &step, &reason))
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
    if (r->ctx_no == IOMMU_DEFAULT_CONTEXT || r->ctx_no > caps.cap.max_ctx_no)
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

/* Linux: xen_iommu_map_pages(), the buffer in chunks of max_nr_pages. */
static int step_map(struct run *r)
{
    uint64_t mapped;
    unsigned int calls;
    long ret = xen_iommu_map_pages(r->ctx_no, r->dfn << XEN_PAGE_SHIFT, r->gfn << XEN_PAGE_SHIFT,
                                   r->pages, &mapped, &calls);

    printf("step=map ret=%ld mapped=%" PRIu64 " calls=%u gfn=0x%" PRIx64 " dfn=0x%" PRIx64
           " pages=%" PRIu64 "\n", ret, mapped, calls, r->gfn, r->dfn, r->pages);
    if (ret)
        return fail(r, "map", "error", EXIT_STEP_FAILED);
    if (mapped != r->pages || calls != r->want_calls)
        return fail(r, "map", "count", EXIT_STEP_FAILED);
    return 0;
}

/* One lookup of the buffer's page `off`: must give back gfn + off. */
static int check_lookup(struct run *r, const char *step, uint64_t off)
{
    uint64_t iova = (r->dfn + off) << XEN_PAGE_SHIFT;
    uint64_t want = r->gfn + off;
    long ret;
    uint64_t gfn = xen_iommu_iova_to_phys(r->ctx_no, iova, &ret) >> XEN_PAGE_SHIFT;

    printf("step=%s ret=%ld dfn=0x%" PRIx64 " gfn=0x%" PRIx64 " want=0x%" PRIx64 "\n",
           step, ret, r->dfn + off, gfn, want);
    if (ret == 0 && gfn == want)
        return 0;
    return fail(r, step, "mismatch", EXIT_STEP_FAILED);
}

/*
 * Linux: xen_iommu_iova_to_phys() of the buffer's first, middle and last
 * page, then of a page next to it, which must not be mapped.
 */
static int step_lookup(struct run *r)
{
    uint64_t hole, phys;
    long ret;
    int code;

    if ((code = check_lookup(r, "lookup_first", 0)) ||
        (code = check_lookup(r, "lookup_middle", r->pages / 2)) ||
        (code = check_lookup(r, "lookup_last", r->pages - 1)))
        return code;
    hole = r->last_dfn + 1 <= caps.cap.max_iova_addr >> XEN_PAGE_SHIFT ? r->last_dfn + 1 : r->dfn - 1;
    phys = xen_iommu_iova_to_phys(r->ctx_no, hole << XEN_PAGE_SHIFT, &ret);
    printf("step=lookup_unmapped ret=%ld dfn=0x%" PRIx64 " gfn=0x%" PRIx64 "\n",
           ret, hole, phys >> XEN_PAGE_SHIFT);
    if (ret != -XEN_ENOENT || phys != 0)
        return fail(r, "lookup_unmapped", "want-enoent", EXIT_STEP_FAILED);
    return 0;
}

/*
 * The errors a driver must expect: xen_iommu_map_pages() over pages already
 * mapped (-EADDRINUSE, nothing mapped), and xen_iommu_free() of a context a
 * device is still attached to (-EBUSY).
 */
static int step_error_paths(struct run *r)
{
    uint64_t mapped;
    unsigned int calls;
    long ret = xen_iommu_map_pages(r->ctx_no, r->dfn << XEN_PAGE_SHIFT, r->gfn << XEN_PAGE_SHIFT,
                                   r->chunk, &mapped, &calls);

    printf("step=remap ret=%ld mapped=%" PRIu64 " calls=%u\n", ret, mapped, calls);
    if (ret != -XEN_EADDRINUSE || mapped != 0 || calls != 1)
        return fail(r, "remap", "want-eaddrinuse", EXIT_STEP_FAILED);

    ret = xen_iommu_free(r->ctx_no, 0);
    printf("step=free_busy ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret == 0)
        r->have_ctx = r->attached = 0;   /* gone after all: nothing left to clean up */
    if (ret != -XEN_EBUSY)
        return fail(r, "free_busy", "want-ebusy", EXIT_STEP_FAILED);
    return 0;
}

/* Linux: xen_iommu_unmap_pages(), the same chunks; a failed one is warned about. */
static int step_unmap(struct run *r)
{
    unsigned int calls, errors;
    long first_err;
    uint64_t unmapped = xen_iommu_unmap_pages(r->ctx_no, r->dfn << XEN_PAGE_SHIFT, r->pages,
                                              &calls, &errors, &first_err);

    printf("step=unmap ret=%ld unmapped=%" PRIu64 " calls=%u errors=%u\n",
           first_err, unmapped, calls, errors);
    if (errors)
        return fail(r, "unmap", "error", EXIT_STEP_FAILED);
    if (unmapped != r->pages || calls != r->want_calls)
        return fail(r, "unmap", "count", EXIT_STEP_FAILED);
    return 0;
}

/* Linux: xen_iommu_release_device(), the device back to context 0. */
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
    long ret = xen_iommu_free(r->ctx_no, 0);

    printf("step=free_context ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret)
        return fail(r, "free_context", "error", EXIT_STEP_FAILED);
    r->have_ctx = 0;

    ret = xen_iommu_free(r->ctx_no, 0);
    printf("step=free_again ret=%ld ctx=%u\n", ret, (unsigned)r->ctx_no);
    if (ret != -XEN_ENOENT)
        return fail(r, "free_again", "want-enoent", EXIT_STEP_FAILED);
    return 0;
}

/* The steps in the order a DMA user of the device causes them. */
static int (*const steps[])(struct run *) = {
    step_probe, step_resv_regions, step_domain_alloc, step_attach, step_map, step_lookup,
    step_error_paths, step_unmap, step_release, step_domain_free,
};

int main(int argc, char **argv)
{
    struct run r;
    size_t i;
    int code;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&r, 0, sizeof(r));
    r.pages = 600;
    r.gfn = 0x1000;
    r.dfn = 0x40000;
    parse_sbdf("0000:00:03.0", &r.dev);
    if (!parse_args(argc, argv, &r, &code))
        return code;
    format_sbdf(&r.dev, r.device, sizeof(r.device));

    for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        if ((code = steps[i](&r)) != 0)
            return code;
    printf("result=ok\n");
    return EXIT_OK;
}
