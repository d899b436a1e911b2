/* iotlb.c - the set-associative IOTLB cache tagged by (context, dfn). */
#include <stdlib.h>
#include <string.h>

#include "hw_internal.h"

static int pow2(uint32_t x)
{
    return x && !(x & (x - 1));
}

int hw_tlb_init(struct hw_iotlb *t, uint32_t entries, uint32_t ways)
{
    if (!pow2(entries) || !pow2(ways) || ways > entries || ways > 64 ||
        entries > (1u << 20))
        return HW_E_INVAL;
    t->ways = ways;
    t->nsets = entries / ways;
    t->e = calloc(entries, sizeof(*t->e));
    t->rr = calloc(t->nsets, 1);
    if (!t->e || !t->rr) {
        hw_tlb_fini(t);
        return HW_E_NOMEM;
    }
    return HW_OK;
}

void hw_tlb_fini(struct hw_iotlb *t)
{
    free(t->e);
    free(t->rr);
    t->e = NULL;
    t->rr = NULL;
}

/* Callers fill only after a miss, so the tag is not already cached. */
struct hw_tlb_entry *hw_tlb_fill(struct hw_iotlb *t, uint32_t ctx,
                                 uint64_t dfn, uint64_t mfn, uint8_t perm)
{
    uint32_t s = hw_tlb_set(t, ctx, dfn);
    struct hw_tlb_entry *set = t->e + (uint64_t)s * t->ways;
    uint32_t w = 0;
    while (w < t->ways && set[w].valid)
        w++;
    if (w == t->ways) {
        w = t->rr[s];
        t->rr[s] = (uint8_t)((w + 1) % t->ways);
    }
    set[w] = (struct hw_tlb_entry){.dfn = dfn, .mfn = mfn, .ctx = ctx,
                                   .perm = perm, .valid = 1};
    return &set[w];
}

void hw_tlb_drop_range(struct hw_iotlb *t, uint32_t ctx, uint64_t dfn,
                       uint64_t n)
{
    uint64_t total = (uint64_t)t->nsets * t->ways;
    if (n <= total) {
        /* Probing each page's set is cheaper than scanning the cache. */
        for (uint64_t i = 0; i < n; i++) {
            struct hw_tlb_entry *e = hw_tlb_find(t, ctx, dfn + i);
            if (e)
                e->valid = 0;
        }
        return;
    }
    for (uint64_t i = 0; i < total; i++) {
        struct hw_tlb_entry *e = &t->e[i];
        /* Unsigned difference: in range even if dfn + n wraps. */
        if (e->valid && e->ctx == ctx && e->dfn - dfn < n)
            e->valid = 0;
    }
}

void hw_tlb_drop_ctx(struct hw_iotlb *t, uint32_t ctx)
{
    uint64_t total = (uint64_t)t->nsets * t->ways;
    for (uint64_t i = 0; i < total; i++)
        if (t->e[i].ctx == ctx)
            t->e[i].valid = 0;
}

void hw_tlb_drop_all(struct hw_iotlb *t)
{
    memset(t->e, 0, (uint64_t)t->nsets * t->ways * sizeof(*t->e));
}
