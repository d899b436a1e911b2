/* iommu.c - the IOMMU object: contexts (lifetime, counters), IOTLB
 * invalidation requests and address translation through the IOTLB. */
#include <stdlib.h>

#include "hw_internal.h"

struct hw_iommu *hw_iommu_create(struct hw_machine *m, uint32_t width,
                                 uint32_t max_ctx, uint32_t max_dev,
                                 uint32_t iotlb_entries, uint32_t iotlb_ways,
                                 uint32_t fault_cap)
{
    if (!m || (width != 39 && width != 48) || max_ctx == 0 ||
        max_ctx > HW_MAX_CTX || max_dev == 0 || max_dev > HW_MAX_DEV ||
        fault_cap == 0 || fault_cap > HW_MAX_FAULTS)
        return NULL;
    struct hw_iommu *io = calloc(1, sizeof(*io));
    if (!io)
        return NULL;
    io->m = m;
    m->holders++;
    io->width = width;
    /* 12 offset bits, then 9 bits per level. */
    io->levels = (width - HW_PAGE_SHIFT) / HW_PT_SHIFT;
    io->max_iova = (1ULL << width) - 1;
    io->max_ctx = max_ctx;
    io->max_dev = max_dev;
    io->fault_cap = fault_cap;
    io->ctx = calloc(max_ctx, sizeof(*io->ctx));
    io->ctx_free = calloc(max_ctx, sizeof(*io->ctx_free));
    io->pools = calloc(HW_MAX_POOLS, sizeof(*io->pools));
    io->dev = calloc(max_dev, sizeof(*io->dev));
    io->faults = calloc(fault_cap, sizeof(*io->faults));
    io->pasids = calloc(HW_MAX_PASID_BINDS, sizeof(*io->pasids));
    io->prq = calloc(HW_MAX_PAGE_REQS, sizeof(*io->prq));
    if (!io->ctx || !io->ctx_free || !io->pools || !io->dev || !io->faults ||
        !io->pasids || !io->prq ||
        hw_tlb_init(&io->tlb, iotlb_entries, iotlb_ways) != HW_OK) {
        hw_iommu_destroy(io);
        return NULL;
    }
    return io;
}

void hw_iommu_destroy(struct hw_iommu *io)
{
    if (!io)
        return;
    for (uint32_t i = 0; io->ctx && i < io->ctx_watermark; i++) {
        if (io->ctx[i].state == HW_CTX_FREE || io->ctx[i].nested)
            continue;       /* a nested context has no tables */
        struct hw_td all = {.budget = UINT64_MAX};
        hw_pt_teardown(io, &io->ctx[i], &all);
    }
    hw_tlb_fini(&io->tlb);
    free(io->ctx);
    free(io->ctx_free);
    free(io->pools);
    free(io->dev);
    free(io->faults);
    free(io->pasids);
    free(io->prq);
    hw_machine_put(io->m);
    free(io);
}

void hw_iommu_set_check(struct hw_iommu *io, int on)
{
    io->check = on != 0;
}

int hw_ctx_get(const struct hw_iommu *io, uint32_t id, struct hw_ctx **c)
{
    return hw_ctx_find(io, id, 0, c);   /* a nested one has no tables */
}

uint32_t hw_ctx_take_id(struct hw_iommu *io)
{
    return io->ctx_free_top ? io->ctx_free[--io->ctx_free_top]
                            : io->ctx_watermark++;
}

int hw_ctx_alloc(struct hw_iommu *io, uint32_t *id)
{
    uint64_t root;
    if (!io->ctx_free_top && io->ctx_watermark == io->max_ctx)
        return HW_E_NOSPC;
    if (hw_frame_take(io->m, HW_OWNER_NONE, &root) != HW_OK)
        return HW_E_NOMEM;  /* no frame left, or an injected TABLE failure */
    uint32_t i = hw_ctx_take_id(io);
    /* A reused id starts with fresh counters. */
    io->ctx[i] = (struct hw_ctx){.root = root, .tables = 1,
                                 .state = HW_CTX_LIVE};
    io->pools[0].used++;
    *id = i;
    return HW_OK;
}

int hw_pool_set_limit(struct hw_iommu *io, uint32_t pool, uint64_t limit)
{
    if (pool == 0 || pool >= HW_MAX_POOLS)
        return HW_E_INVAL;
    io->pools[pool].limit = limit;
    return HW_OK;
}

int hw_pool_usage(const struct hw_iommu *io, uint32_t pool, uint64_t *used,
                  uint64_t *limit)
{
    if (pool >= HW_MAX_POOLS)
        return HW_E_INVAL;
    *used = io->pools[pool].used;
    *limit = io->pools[pool].limit;
    return HW_OK;
}

int hw_ctx_set_pool(struct hw_iommu *io, uint32_t id, uint32_t pool)
{
    if (pool >= HW_MAX_POOLS)
        return HW_E_INVAL;
    if (id >= io->max_ctx || io->ctx[id].state != HW_CTX_LIVE)
        return HW_E_NOCTX;
    struct hw_ctx *c = &io->ctx[id];
    struct hw_pool *to = &io->pools[pool];
    if (to->limit && to->used + c->tables > to->limit)
        return HW_E_NOMEM;
    io->pools[c->pool].used -= c->tables;
    to->used += c->tables;
    c->pool = pool;
    return HW_OK;
}

static void inval_ctx(struct hw_iommu *io, uint32_t id)
{
    hw_tlb_drop_ctx(&io->tlb, id);
    hw_stage2_changed(io, &io->ctx[id], id);
    hw_count_inval(io, &io->ctx[id]);
}

int hw_ctx_teardown(struct hw_iommu *io, uint32_t id, uint64_t budget,
                    uint64_t *out, uint64_t out_cap, uint64_t *written,
                    int *finished)
{
    *written = 0;
    *finished = 0;
    if (budget == 0 || !out || out_cap < budget)
        return HW_E_INVAL;
    if (id >= io->max_ctx || io->ctx[id].state == HW_CTX_FREE)
        return HW_E_NOCTX;
    struct hw_ctx *c = &io->ctx[id];
    if (c->nested)
        return hw_nested_teardown(io, id, finished);
    if (c->state == HW_CTX_LIVE) {
        if (c->ndevices || c->nchildren)
            return HW_E_BUSY;
        /* Dying contexts refuse translation, so the IOTLB can't refill
         * with entries for it: one invalidation here covers the rest. */
        c->state = HW_CTX_DYING;
        c->td_cursor = 0;
        inval_ctx(io, id);
    }
    struct hw_td s = {.budget = budget, .out = out};
    int all = hw_pt_teardown(io, c, &s);
    *written = s.written;
    if (all) {
        c->state = HW_CTX_FREE;
        io->ctx_free[io->ctx_free_top++] = id;
        *finished = 1;
    }
    return HW_OK;
}

int hw_ctx_info(const struct hw_iommu *io, uint32_t id, uint64_t *mapped,
                uint64_t *tables, struct hw_counters *cnt)
{
    if (id >= io->max_ctx || io->ctx[id].state == HW_CTX_FREE)
        return HW_E_NOCTX;
    *mapped = io->ctx[id].mapped;
    *tables = io->ctx[id].tables;
    *cnt = io->ctx[id].cnt;
    return HW_OK;
}

void hw_iommu_counters(const struct hw_iommu *io, struct hw_counters *cnt)
{
    *cnt = io->cnt;
}

int hw_pool_counters(const struct hw_iommu *io, uint32_t pool,
                     struct hw_counters *cnt)
{
    if (pool >= HW_MAX_POOLS)
        return HW_E_INVAL;
    *cnt = io->pools[pool].cnt;
    return HW_OK;
}

int hw_pool_clear_counters(struct hw_iommu *io, uint32_t pool)
{
    if (pool >= HW_MAX_POOLS)
        return HW_E_INVAL;
    io->pools[pool].cnt = (struct hw_counters){0};
    return HW_OK;
}

int hw_inval_pages(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    if (hw_inject_fail(io->m, HW_INJECT_FLUSH))
        return HW_E_INJECTED;
    hw_tlb_drop_range(&io->tlb, id, dfn, n);
    hw_stage2_changed(io, c, id);
    hw_count_inval(io, c);
    return HW_OK;
}

int hw_inval_ctx(struct hw_iommu *io, uint32_t id)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    if (hw_inject_fail(io->m, HW_INJECT_FLUSH))
        return HW_E_INJECTED;
    inval_ctx(io, id);
    return HW_OK;
}

void hw_inval_all(struct hw_iommu *io)
{
    hw_tlb_drop_all(&io->tlb);
    io->cnt.invalidations++;
}

void hw_tlb_audit(struct hw_iommu *io, uint64_t *stale)
{
    const struct hw_iotlb *t = &io->tlb;
    uint64_t total = (uint64_t)t->nsets * t->ways;
    *stale = 0;
    for (uint64_t i = 0; i < total; i++) {
        const struct hw_tlb_entry *e = &t->e[i];
        if (!e->valid)
            continue;
        uint64_t walks = 0, pte = 0;
        if (e->ctx < io->max_ctx && io->ctx[e->ctx].nested)
            continue;       /* hw_tlb_audit_nested's */
        if (e->ctx < io->max_ctx && io->ctx[e->ctx].state == HW_CTX_LIVE)
            pte = hw_pt_walk(io, &io->ctx[e->ctx], e->dfn, &walks);
        if (!pte || (pte & HW_PTE_ADDR) >> HW_PAGE_SHIFT != e->mfn ||
            (pte & HW_PTE_PERM) != e->perm)
            (*stale)++;
    }
}

/* A miss: walk the tables and cache a present translation. 0 when the
 * address has no present entry. With dirty tracking the walk sets A/D for
 * this access (hw_ad_update). */
static int miss(struct hw_iommu *io, struct hw_ctx *c, uint32_t id,
                uint64_t dfn, int write, uint64_t *mfn, uint8_t *perm,
                struct hw_counters *acc)
{
    uint64_t *pte = hw_pt_walk_entry(io, c, dfn, &acc->walks);
    acc->misses++;
    if (!pte)
        return 0;
    *mfn = hw_pte_mfn(*pte);
    *perm = (uint8_t)(*pte & HW_PTE_PERM);
    /* Cached even if this access faults: the entry itself is valid. */
    struct hw_tlb_entry *e = hw_tlb_fill(&io->tlb, id, dfn, *mfn, *perm);
    if (c->dirty_track)
        e->clean = hw_ad_update(pte, *perm, write,
                                hw_perm_fault(*perm, write) == HW_FAULT_NONE);
    return 1;
}

/* One address through context c (live, id) and the IOTLB. Counts go to
 * *acc, added to the counters once per batch (hw_count()), so that
 * hw_translate's loop, where this is inlined, keeps them in registers. */
static int xlate(struct hw_iommu *io, struct hw_ctx *c, uint32_t id,
                        uint64_t addr, int write, uint64_t *maddr, int *stale,
                        struct hw_counters *acc)
{
    uint64_t dfn = addr >> HW_PAGE_SHIFT, mfn = 0;
    uint8_t perm = 0;
    *maddr = 0;
    *stale = 0;
    int f = hw_addr_fault(io, addr);
    if (f != HW_FAULT_NONE)
        return f;
    struct hw_tlb_entry *e = hw_tlb_hit(&io->tlb, id, dfn, write);
    if (e) {
        acc->hits++;
        mfn = e->mfn;
        perm = e->perm;
        if (io->check) {
            uint64_t walks = 0, pte = hw_pt_walk(io, c, dfn, &walks);
            if ((pte & HW_PTE_ADDR) >> HW_PAGE_SHIFT != mfn ||
                (pte & HW_PTE_PERM) != perm) {
                acc->stale++;
                *stale = 1;
                return HW_FAULT_NONE;
            }
        }
    } else if (!miss(io, c, id, dfn, write, &mfn, &perm, acc)) {
        return HW_FAULT_NOT_PRESENT;
    }
    f = hw_perm_fault(perm, write);
    if (f == HW_FAULT_NONE)
        *maddr = (mfn << HW_PAGE_SHIFT) | (addr & (HW_PAGE_SIZE - 1));
    return f;
}

int hw_translate(struct hw_iommu *io, uint32_t id, const uint64_t *addrs,
                 uint64_t n, int write, uint64_t *maddr, uint8_t *fault,
                 uint64_t *done)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    *done = 0;
    if (st != HW_OK)
        return st;
    struct hw_counters acc = {0};
    uint64_t i;
    for (i = 0; i < n; i++) {
        int stale;
        int f = xlate(io, c, id, addrs[i], write, &maddr[i], &stale, &acc);
        if (stale) {
            st = HW_E_STALE;
            break;
        }
        fault[i] = (uint8_t)f;
    }
    *done = i;
    hw_count(io, c, &acc);
    return st;
}
