/*
 * fastpath.c - a receive buffer's hot hypercalls answered in C (fastpath.h).
 *
 * Each sub-op it takes has its Python handler beside it in
 * xenemu/hypercalls/iommu_op_v1.py / iommu_op_v2.py (the row's `fast`), and
 * does what that handler does, step for step, in the cases it takes: every
 * check that could fail is made before the first side effect, and a check
 * that fails makes the frame Python's (DECLINE). The order of the effects
 * (references, tables, IOTLB) is the handler's, so the hardware's counters
 * come out the same.
 */
#include <stdlib.h>
#include <string.h>

#include "fastpath.h"

/* The wire protocol (abi/xenemu/wire.h, xenemu/wire.py). */
#define WIRE_MAGIC 0x554D4558u
#define WIRE_VERSION 1u
#define FRAME_CALL 1u
#define FRAME_REPLY 2u
#define HDR_SIZE 24u
#define CALL_FIXED (HDR_SIZE + 48u)     /* header, op, args[5] */
#define REPLY_FIXED (HDR_SIZE + 8u)     /* header, ret */
#define REGION_SIZE 16u
#define MAX_FRAME (1u << 20)
#define MAX_REGIONS 16u
#define NR_ARGS 5

/* Xen errno values the taken paths return (xenemu/errno.py). */
#define XEN_EPERM 1
#define XEN_ENOENT 2
#define XEN_ENOMEM 12
#define XEN_EINVAL 22
#define XEN_ERANGE 34
#define XEN_EADDRINUSE 98

#define DECLINE 0
#define TAKEN 1

/* --- little-endian fields ----------------------------------------------- */

static uint64_t ld(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    while (n--)
        v = v << 8 | p[n];
    return v;
}

static void st(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

/* --- contexts and domains -------------------------------------------------- */

struct fp_context *fp_context_create(uint32_t hw_id)
{
    struct fp_context *c = calloc(1, sizeof *c);
    if (c != NULL)
        c->hw_id = hw_id;
    return c;
}

void fp_context_destroy(struct fp_context *c)
{
    if (c != NULL)
        free(c->identity);
    free(c);
}

int fp_identity_add(struct fp_context *c, uint64_t start, uint64_t pages,
                    uint32_t limit)
{
    if (c->nidentity >= limit)
        return -1;
    if (c->nidentity == c->identity_cap) {
        uint32_t cap = c->identity_cap ? 2 * c->identity_cap : 4;
        struct fp_range *more = realloc(c->identity, cap * sizeof *more);
        if (more == NULL)
            return -1;
        c->identity = more;
        c->identity_cap = cap;
    }
    c->identity[c->nidentity++] = (struct fp_range){start, pages, 1};
    return 0;
}

int fp_identity_users(struct fp_context *c, uint64_t start, uint64_t pages,
                      int delta)
{
    for (uint32_t i = 0; i < c->nidentity; i++) {
        struct fp_range *r = &c->identity[i];
        if (r->start != start || r->pages != pages)
            continue;
        if (delta < 0 && r->users < (uint32_t)-delta)
            return -1;
        r->users += (uint32_t)delta;
        int left = (int)r->users;
        if (left == 0) {            /* gone: the rest keep their order */
            memmove(r, r + 1, (c->nidentity - i - 1) * sizeof *r);
            c->nidentity--;
        }
        return left;
    }
    return -1;
}

int fp_identity_at(const struct fp_context *c, uint64_t dfn, uint64_t n,
                   uint64_t *first)
{
    int found = 0;
    for (uint32_t i = 0; i < c->nidentity; i++) {
        const struct fp_range *r = &c->identity[i];
        /* [start, start + pages) meets [dfn, dfn + n), in u64 without overflow */
        if (n == 0 || r->pages == 0)
            continue;
        if (r->start >= dfn ? r->start - dfn >= n : dfn - r->start >= r->pages)
            continue;
        uint64_t hit = r->start > dfn ? r->start : dfn;
        if (!found || hit < *first)
            *first = hit;
        found = 1;
    }
    return found;
}

struct fp_domain *fp_domain_create(uint32_t domid, uint32_t flags,
                                   uint32_t nslots, const struct p2m *p2m)
{
    struct fp_domain *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->domid = domid;
    d->flags = flags;
    d->p2m = p2m;
    d->calls = calloc((size_t)FP_NSUBOPS * FP_NRESULTS, sizeof *d->calls);
    if (d->calls == NULL || fp_domain_resize(d, nslots) != 0) {
        fp_domain_destroy(d);
        return NULL;
    }
    return d;
}

void fp_domain_destroy(struct fp_domain *d)
{
    if (d != NULL) {
        free(d->slot);
        free(d->calls);
    }
    free(d);
}

int fp_domain_resize(struct fp_domain *d, uint32_t nslots)
{
    for (uint32_t i = nslots; i < d->nslots; i++)
        if (d->slot[i] != NULL)
            return -1;
    struct fp_context **slot = realloc(d->slot, (nslots ? nslots : 1) * sizeof *slot);
    if (slot == NULL)
        return -1;
    for (uint32_t i = d->nslots; i < nslots; i++)
        slot[i] = NULL;
    d->slot = slot;
    d->nslots = nslots;
    return 0;
}

/* --- frames ------------------------------------------------------------------ */

struct frame {
    const uint8_t *p;
    uint32_t len;
    uint32_t nregions;
    uint64_t op;
    uint64_t args[NR_ARGS];
    uint64_t gaddr[MAX_REGIONS];
    uint32_t size[MAX_REGIONS];
    uint32_t data[MAX_REGIONS];  /* where each region's bytes start in the frame */
};

/* FrameDecoder's checks of a CALL frame (xenemu/wire.py): 1 for a whole
 * frame it accepts, 0 when not all of it is here yet, -1 for one it
 * refuses (the decoder's to put in words). */
static int parse_call(const uint8_t *in, size_t avail, struct frame *f)
{
    if (avail < HDR_SIZE)
        return 0;
    uint32_t len = (uint32_t)ld(in + 8, 4);
    if (ld(in, 4) != WIRE_MAGIC || ld(in + 4, 2) != WIRE_VERSION ||
        ld(in + 6, 2) != FRAME_CALL || len < CALL_FIXED || len > MAX_FRAME ||
        ld(in + 14, 2) != 0 || ld(in + 12, 2) > MAX_REGIONS)
        return -1;
    if (avail < len)
        return 0;
    f->p = in;
    f->len = len;
    f->nregions = (uint32_t)ld(in + 12, 2);
    f->op = ld(in + HDR_SIZE, 8);
    for (int i = 0; i < NR_ARGS; i++)
        f->args[i] = ld(in + HDR_SIZE + 8 + 8 * i, 8);
    uint32_t off = CALL_FIXED;
    for (uint32_t i = 0; i < f->nregions; i++) {
        if (len - off < REGION_SIZE || ld(in + off + 12, 4) != 0)
            return -1;
        uint64_t gaddr = ld(in + off, 8);
        uint32_t size = (uint32_t)ld(in + off + 8, 4);
        off += REGION_SIZE;
        if (len - off < size || (size && gaddr > UINT64_MAX - size + 1))
            return -1;
        f->gaddr[i] = gaddr;
        f->size[i] = size;
        f->data[i] = off;
        off += size;
    }
    if (off != len)
        return -1;
    /* No byte of guest memory in two regions (last bytes: no overflow). */
    for (uint32_t i = 0; i < f->nregions; i++)
        for (uint32_t j = i + 1; j < f->nregions; j++)
            if (f->size[i] && f->size[j] &&
                f->gaddr[i] <= f->gaddr[j] + (f->size[j] - 1) &&
                f->gaddr[j] <= f->gaddr[i] + (f->size[i] - 1))
                return -1;
    return 1;
}

/* GuestMemory._find: where in the frame the `size` bytes at gaddr are, when
 * one region holds them all (the first that does); -1 else (-EFAULT). */
static long guest_find(const struct frame *f, uint64_t gaddr, uint32_t size)
{
    for (uint32_t i = 0; i < f->nregions; i++) {
        uint64_t base = f->gaddr[i];
        if (gaddr >= base && gaddr - base <= f->size[i] &&
            size <= f->size[i] - (gaddr - base))
            return (long)(f->data[i] + (gaddr - base));
    }
    return -1;
}

/* --- what the handlers share ------------------------------------------------- */

/* A frame's answer: its result, and the struct it copies back (if any). */
struct answer {
    int32_t ret;
    long at;                   /* the struct's place in the frame; -1: none */
    uint32_t size;
    uint8_t s[40];             /* the struct, as it goes back */
    struct fp_result res;
};

/* The struct a handler reads and rewrites: copied in from the frame. */
static uint8_t *copy_in(const struct frame *f, struct answer *a, uint64_t handle,
                        uint32_t size)
{
    a->at = guest_find(f, handle, size);
    if (a->at < 0)
        return NULL;
    a->size = size;
    memcpy(a->s, f->p + a->at, size);
    return a->s;
}

static uint32_t perm_of(uint32_t flags)
{
    return (flags & 1 ? (uint32_t)HW_PTE_R : 0) | (flags & 2 ? (uint32_t)HW_PTE_W : 0);
}

/* Why a map run stopped, as Xen's errno (the handlers' MAP_STOP). */
static int map_errno(int hw_status)
{
    switch (hw_status) {
    case HW_E_PRESENT: return XEN_EADDRINUSE;
    case HW_E_RANGE: return XEN_ERANGE;
    case HW_E_NOMEM: return XEN_ENOMEM;
    /* INJECTED, REFCOUNT: get_page failed. (BADFRAME, NOCTX, BUSY: a RAM
     * frame of the domain, a usable live context: not reached.) */
    default: return XEN_EPERM;
    }
}

static uint64_t last_dfn(const struct hw_iommu *io)
{
    return io->max_iova >> HW_PAGE_SHIFT;
}

/* IommuContexts.iotlb_flush: [dfn, dfn + n), clipped to the width. It
 * cannot fail here (a failure is only ever injected, and the injector is
 * not armed while the fast path runs). */
static void iotlb_flush(struct hw_iommu *io, const struct fp_context *c,
                        uint64_t dfn, uint64_t n)
{
    uint64_t last = last_dfn(io);
    if (n && dfn <= last)
        hw_inval_pages(io, c->hw_id, dfn, n < last - dfn + 1 ? n : last - dfn + 1);
}

/* The gfn run is RAM (else the handler's p2m paths), and mapped with one
 * reference a page: pages done, hardware status in *hs. */
static int map_ram(struct hw_iommu *io, const struct fp_domain *d,
                   const struct fp_context *c, uint64_t gfn, uint64_t dfn,
                   uint64_t n, uint32_t perm, uint64_t *done)
{
    const uint64_t *mfns = d->p2m->mfns + (n ? gfn : 0);
    return hw_map_ref(io, c->hw_id, dfn, n, mfns, 0, perm, done);
}

/* IommuContexts.unmap without its flush: up to the first hole, each page's
 * reference dropped. A chunk at a time, as the result is the same. */
static uint64_t unmap_run(struct hw_iommu *io, const struct fp_context *c,
                          uint64_t dfn, uint64_t n)
{
    uint64_t mfns[512], done = 0, bad;
    while (done < n) {
        uint64_t chunk = n - done < 512 ? n - done : 512, k = 0;
        hw_unmap(io, c->hw_id, dfn + done, chunk, mfns, 512, 0, &k);
        hw_refs_adjust(io->m, mfns, 0, k, -1, &bad);
        done += k;
        if (k < chunk)
            break;
    }
    return done;
}

static int touches_identity(const struct fp_context *c, uint64_t dfn, uint64_t n)
{
    uint64_t first;
    return fp_identity_at(c, dfn, n ? n : 1, &first);
}

static void stopped(struct answer *a, int err, uint8_t why, int hs, uint64_t at)
{
    a->ret = -err;
    a->res.why = why;
    a->res.hw_status = (uint8_t)hs;
    a->res.at = at;
}

/* --- revision 1 (iommu_op_v1.py): struct pv_iommu_op at args[0] ------------- */

#define V1_MAX_PAGES 256u          /* PVIOMMU_MAX_PAGES */

/* _usable_context: allocated, not dying, not an opaque context 0. */
static struct fp_context *v1_context(const struct fp_domain *d, uint32_t ctx_no)
{
    if (ctx_no >= d->nslots)
        return NULL;
    struct fp_context *c = d->slot[ctx_no];
    if (c == NULL || c->dying || (ctx_no == 0 && (d->flags & FP_D_OPAQUE_DEFAULT)))
        return NULL;
    return c;
}

/* query_cap_op */
static int v1_query(const struct fp_machine *mc, const struct fp_domain *d, uint8_t *s)
{
    st(s + 8, d->nslots - 1, 2);
    st(s + 12, V1_MAX_PAGES, 4);
    st(s + 16, mc->io->max_iova, 8);
    return TAKEN;
}

/* map_pages_op: gfn @8, dfn @16, nr_pages @24, mapped @28 */
static int v1_map(const struct fp_machine *mc, const struct fp_domain *d,
                  uint8_t *s, struct answer *a)
{
    uint64_t gfn = ld(s + 8, 8), dfn = ld(s + 16, 8), done = 0;
    uint32_t n = (uint32_t)ld(s + 24, 4), perm = perm_of((uint32_t)ld(s + 4, 4));
    struct fp_context *c = v1_context(d, (uint32_t)ld(s + 2, 2));
    if (n > V1_MAX_PAGES || c == NULL || !perm || p2m_ram_run(d->p2m, gfn, n) != n)
        return DECLINE;
    int hs = map_ram(mc->io, d, c, gfn, dfn, n, perm, &done);
    st(s + 28, done, 4);
    iotlb_flush(mc->io, c, dfn, n);
    if (done < n)
        stopped(a, map_errno(hs), FP_WHY_MAP_STOP, hs, dfn + done);
    a->res.done = done;
    return TAKEN;
}

/* unmap_pages_op: dfn @8, nr_pages @16, unmapped @20 */
static int v1_unmap(const struct fp_machine *mc, const struct fp_domain *d,
                    uint8_t *s, struct answer *a)
{
    uint64_t dfn = ld(s + 8, 8);
    uint32_t n = (uint32_t)ld(s + 16, 4);
    struct fp_context *c = v1_context(d, (uint32_t)ld(s + 2, 2));
    if (n > V1_MAX_PAGES || c == NULL || touches_identity(c, dfn, n) || c->foreign_refs)
        return DECLINE;
    uint64_t done = unmap_run(mc->io, c, dfn, n);
    st(s + 20, done, 4);
    iotlb_flush(mc->io, c, dfn, n);
    if (done < n)
        stopped(a, XEN_ENOENT, FP_WHY_NO_MAPPING, 0, dfn + done);
    a->res.done = done;
    return TAKEN;
}

/* lookup_page_op: gfn @8 (out), dfn @16 */
static int v1_lookup(const struct fp_machine *mc, const struct fp_domain *d,
                     uint8_t *s, struct answer *a)
{
    uint64_t dfn = ld(s + 16, 8), mfn, gfn;
    uint32_t perm;
    struct fp_context *c = v1_context(d, (uint32_t)ld(s + 2, 2));
    if (c == NULL)
        return DECLINE;
    if (dfn > last_dfn(mc->io) || hw_lookup(mc->io, c->hw_id, dfn, &mfn, &perm) != HW_OK) {
        stopped(a, XEN_ENOENT, FP_WHY_NO_MAPPING, 0, dfn);
        return TAKEN;
    }
    hw_m2p_read(mc->io->m, &mfn, 1, &gfn);
    st(s + 8, gfn, 8);
    return TAKEN;
}

static int v1_take(const struct fp_machine *mc, const struct fp_domain *d,
                   const struct frame *f, struct answer *a)
{
    uint8_t *s = copy_in(f, a, f->args[0], 32);
    if (s == NULL || !(mc->flags & FP_M_IOMMU) ||
        (d->flags & (FP_D_HARDWARE | FP_D_IOMMU_ENABLED)) !=
            (FP_D_HARDWARE | FP_D_IOMMU_ENABLED))
        return DECLINE;             /* -EFAULT, can_use_iommu's -EPERM */
    a->res.subop = (uint32_t)ld(s, 2);
    if (a->res.subop >= 32 || !(mc->subops >> a->res.subop & 1))
        return DECLINE;
    switch (a->res.subop) {
    case 0: return TAKEN;                       /* noop */
    case 1: return v1_query(mc, d, s);
    case 5: return v1_map(mc, d, s, a);
    case 6: return v1_unmap(mc, d, s, a);
    case 7: return v1_lookup(mc, d, s, a);
    default: return DECLINE;
    }
}

/* --- revision 2 (iommu_op_v2.py): (subop, struct at args[1]) ---------------- */

/* _context: not 0, allocated, not nested; dying contexts map in v7, but
 * their teardown's interleaving is Python's. */
static struct fp_context *v2_context(const struct fp_machine *mc,
                                     const struct fp_domain *d, uint32_t ctx_no)
{
    if (ctx_no == 0 || ctx_no >= d->nslots)
        return NULL;
    struct fp_context *c = d->slot[ctx_no];
    if (c == NULL || c->dying || mc->io->ctx[c->hw_id].nested)
        return NULL;
    return c;
}

/* capabilities_op: written, never read (24 bytes) */
static int v2_query(const struct fp_machine *mc, const struct fp_domain *d,
                    const struct frame *f, struct answer *a)
{
    a->at = guest_find(f, f->args[1], 24);
    if (a->at < 0)
        return DECLINE;
    a->size = 24;
    uint8_t *s = a->s;
    int nested = (mc->flags & FP_M_NESTED) != 0;
    st(s, mc->io->max_iova, 8);
    st(s + 8, (d->flags & FP_D_NO_DMA ? 0u : 1u) | (nested ? 4u | 8u : 0u), 4);
    st(s + 12, HW_PAGE_SIZE, 4);
    st(s + 16, nested ? mc->max_pasid : 0, 4);
    st(s + 20, d->nslots - 1, 2);
    st(s + 22, 0, 2);
    return TAKEN;
}

/* map_pages_op, one round that is the whole run: ctx_no @0, gfn @8, dfn @16,
 * map_flags @24, nr_pages @32, mapped @36 */
static int v2_map(const struct fp_machine *mc, const struct fp_domain *d,
                  const struct frame *f, struct answer *a)
{
    uint8_t *s = copy_in(f, a, f->args[1], 40);
    if (s == NULL)
        return DECLINE;
    uint64_t gfn = ld(s + 8, 8), dfn = ld(s + 16, 8), done = 0;
    uint32_t perm = perm_of((uint32_t)ld(s + 24, 4)), n = (uint32_t)ld(s + 32, 4);
    struct fp_context *c = v2_context(mc, d, (uint32_t)ld(s, 2));
    if (c == NULL || !perm || n > mc->pages_per_round || touches_identity(c, dfn, n) ||
        p2m_ram_run(d->p2m, gfn, n) != n)
        return DECLINE;
    int hs = map_ram(mc->io, d, c, gfn, dfn, n, perm, &done);
    if (done < n) {
        int err = map_errno(hs);
        if (err == XEN_EADDRINUSE && (mc->flags & FP_M_INTENDED))
            err = XEN_EINVAL;       /* the header's answer to a conflict */
        stopped(a, err, FP_WHY_MAP_STOP, hs, dfn + done);
    }
    iotlb_flush(mc->io, c, dfn, done);
    st(s + 36, (uint32_t)(ld(s + 36, 4) + done), 4);
    a->res.done = done;
    return TAKEN;
}

/* unmap_pages_op, one round that is the whole run: ctx_no @0, dfn @8,
 * nr_pages @20, unmapped @24 */
static int v2_unmap(const struct fp_machine *mc, const struct fp_domain *d,
                    const struct frame *f, struct answer *a)
{
    uint8_t *s = copy_in(f, a, f->args[1], 32);
    if (s == NULL)
        return DECLINE;
    uint64_t dfn = ld(s + 8, 8);
    uint32_t n = (uint32_t)ld(s + 20, 4);
    struct fp_context *c = v2_context(mc, d, (uint32_t)ld(s, 2));
    if (c == NULL || n > mc->pages_per_round || touches_identity(c, dfn, n) ||
        c->foreign_refs)
        return DECLINE;
    uint64_t done = unmap_run(mc->io, c, dfn, n);
    iotlb_flush(mc->io, c, dfn, done);
    if (done < n)
        stopped(a, XEN_ENOENT, FP_WHY_NO_MAPPING, 0, dfn + done);
    st(s + 24, (uint32_t)(ld(s + 24, 4) + done), 4);
    a->res.done = done;
    return TAKEN;
}

static int v2_take(const struct fp_machine *mc, const struct fp_domain *d,
                   const struct frame *f, struct answer *a)
{
    if (!(mc->flags & FP_M_IOMMU) || !(d->flags & FP_D_IOMMU_ENABLED))
        return DECLINE;             /* can_use_iommu_check's -ENODEV */
    uint32_t subop = (uint32_t)f->args[0];
    a->res.subop = subop;
    if (subop >= 32 || !(mc->subops >> subop & 1))
        return DECLINE;
    switch (subop) {
    case 0: return TAKEN;                       /* noop: no struct */
    case 1: return v2_query(mc, d, f, a);
    case 6: return v2_map(mc, d, f, a);
    case 7: return v2_unmap(mc, d, f, a);
    default: return DECLINE;
    }
}

/* --- the receive buffer ------------------------------------------------------ */

/* The REPLY frame of call f with answer a, at the end of `out` (room for
 * it is reserved): the call's regions as they are, with the struct back. */
static void put_reply(struct tp_buffer *out, const struct frame *f, const struct answer *a)
{
    uint8_t head[REPLY_FIXED];
    uint32_t len = f->len - CALL_FIXED + REPLY_FIXED;
    st(head, WIRE_MAGIC, 4);
    st(head + 4, WIRE_VERSION, 2);
    st(head + 6, FRAME_REPLY, 2);
    st(head + 8, len, 4);
    st(head + 12, f->nregions, 2);
    st(head + 14, 0, 2);
    memcpy(head + 16, f->p + 16, 8);            /* req_id */
    st(head + HDR_SIZE, (uint64_t)(int64_t)a->ret, 8);
    uint8_t *r = out->data + out->len;
    memcpy(r, head, REPLY_FIXED);
    memcpy(r + REPLY_FIXED, f->p + CALL_FIXED, f->len - CALL_FIXED);
    if (a->at >= 0)
        memcpy(r + REPLY_FIXED + (a->at - CALL_FIXED), a->s, a->size);
    out->len += len;
}

static void count(struct fp_domain *d, uint32_t subop, int32_t ret)
{
    uint32_t result = ret < 0 ? (uint32_t)-ret : 0;
    if (subop < FP_NSUBOPS && result < FP_NRESULTS)
        d->calls[subop * FP_NRESULTS + result]++;
}

int fp_answer(const struct fp_machine *mc, struct fp_domain *d,
              const uint8_t *in, size_t len,
              struct tp_buffer *replies, struct tp_buffer *trace, double t,
              struct fp_result *results, uint32_t cap,
              uint32_t *frames, size_t *consumed)
{
    size_t off = 0;
    uint32_t n = 0;
    int rc = 0;
    /* An armed injector counts events: every one is Python's to take. */
    while (n < cap && mc->io->m->inject.countdown == 0) {
        struct frame f;
        struct answer a;
        if (parse_call(in + off, len - off, &f) != 1 || f.op != FP_HYPERCALL)
            break;
        /* Room first: once a frame is acted on, its answer must be sent. */
        size_t reply_len = f.len - CALL_FIXED + REPLY_FIXED;
        if (tp_reserve(replies, reply_len) != 0 ||
            (trace && tp_reserve(trace, TP_RECORD_FIXED + f.len + reply_len) != 0)) {
            rc = -1;
            break;
        }
        memset(&a, 0, sizeof a);
        a.at = -1;
        if ((mc->revision == 1 ? v1_take : v2_take)(mc, d, &f, &a) != TAKEN)
            break;
        a.res.ret = a.ret;
        a.res.call_len = f.len;
        results[n] = a.res;
        count(d, a.res.subop, a.ret);
        put_reply(replies, &f, &a);
        if (trace)
            tp_pack_hypercall(trace, t, d->domid, (const char *)f.p, f.len,
                              (const char *)replies->data + replies->len - reply_len,
                              reply_len, 0);
        off += f.len;
        n++;
    }
    *frames = n;
    *consumed = off;
    return rc;
}
