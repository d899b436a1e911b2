/* dirty.c - dirty tracking (xenemu's extension, abi/NESTED.md): turning the
 * walker's A/D bits on per context, and the read-and-clear of a context's
 * dirty bitmap, as iommufd's IOMMU_HWPT_GET_DIRTY_BITMAP. The bits are set
 * by the translation path (iommu.c's miss, hw_ad_update). */
#include <string.h>

#include "hw_internal.h"

int hw_dirty_track(struct hw_iommu *io, uint32_t id, int on)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    if (on && !c->dirty_track)
        /* Entries cached before have no `clean` mark: drop them so that
         * the next write to each page walks. Not an invalidation request
         * (nothing the tables say has changed), so not counted. */
        hw_tlb_drop_ctx(&io->tlb, id);
    c->dirty_track = on != 0;
    return HW_OK;
}

/* The leaf table covering dfn, or NULL when an upper level is not
 * present (*span is then the dfns the missing entry covers). */
static uint64_t *leaf_of(const struct hw_iommu *io,
                         const struct hw_ctx *c, uint64_t dfn,
                         uint64_t *span)
{
    uint64_t mfn = c->root;
    for (uint32_t l = io->levels; l > 1; l--) {
        uint64_t pte = hw_table(io->m, mfn)[hw_index_at(dfn, l)];
        if (!hw_pte_present(io->m, pte)) {
            *span = 1ULL << (HW_PT_SHIFT * (l - 1));
            return NULL;
        }
        mfn = hw_pte_mfn(pte);
    }
    return hw_table(io->m, mfn);
}

int hw_dirty_read(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  int clear, uint8_t *dirty, uint8_t *accessed, uint64_t len,
                  uint64_t *ndirty)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    uint64_t max_dfn = io->max_iova >> HW_PAGE_SHIFT;
    *ndirty = 0;
    if (st != HW_OK)
        return st;
    if (!dirty || len < n / 8 + (n % 8 != 0))
        return HW_E_INVAL;
    if (n && (dfn > max_dfn || n - 1 > max_dfn - dfn))
        return HW_E_RANGE;
    memset(dirty, 0, len);
    if (accessed)
        memset(accessed, 0, len);
    uint64_t found = 0, i = 0;
    while (i < n) {
        uint64_t d = dfn + i, span = 0;
        uint64_t *leaf = leaf_of(io, c, d, &span);
        if (!leaf) {                /* a hole: skip what it covers */
            uint64_t skip = span - (d & (span - 1));
            i = skip > n - i ? n : i + skip;
            continue;
        }
        /* The pages of this leaf table within the range. */
        uint64_t end = i + (HW_PT_ENTRIES - hw_index_at(d, 1));
        if (end > n)
            end = n;
        for (; i < end; i++) {
            uint64_t *pte = &leaf[hw_index_at(dfn + i, 1)];
            if (!hw_pte_present(io->m, *pte))
                continue;
            if (accessed && (*pte & HW_PTE_A))
                accessed[i >> 3] |= (uint8_t)(1u << (i & 7));
            if (!(*pte & HW_PTE_D))
                continue;
            dirty[i >> 3] |= (uint8_t)(1u << (i & 7));
            found++;
            if (clear) {
                *pte &= ~HW_PTE_D;
                struct hw_tlb_entry *e = hw_tlb_find(&io->tlb, id, dfn + i);
                if (e)
                    e->valid = 0;
            }
        }
    }
    if (clear && found) {
        /* Nested children cache combined translations of these pages. */
        hw_stage2_changed(io, c, id);
        hw_count_inval(io, c);
    }
    *ndirty = found;
    return HW_OK;
}

int hw_dirty_load(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  const uint8_t *dirty, const uint8_t *accessed, uint64_t len,
                  uint64_t *bad)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    uint64_t max_dfn = io->max_iova >> HW_PAGE_SHIFT;
    *bad = 0;
    if (st != HW_OK)
        return st;
    if (!c->dirty_track || !dirty || !accessed || len < n / 8 + (n % 8 != 0))
        return HW_E_INVAL;
    if (n && (dfn > max_dfn || n - 1 > max_dfn - dfn))
        return HW_E_RANGE;
    /* Pass 0 checks every page with a bit, pass 1 sets them. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t a = accessed[i >> 3] >> (i & 7) & 1, d = dirty[i >> 3] >> (i & 7) & 1;
            if (!a && !d)
                continue;
            uint64_t span = 0, *leaf = leaf_of(io, c, dfn + i, &span);
            uint64_t *pte = leaf ? &leaf[hw_index_at(dfn + i, 1)] : NULL;
            if (!pte || !hw_pte_present(io->m, *pte)) {
                *bad = i;
                return HW_E_NOTPRESENT;
            }
            if (d && !a) {          /* the walker sets A with any D */
                *bad = i;
                return HW_E_INVAL;
            }
            if (pass)
                *pte |= HW_PTE_A | (d ? HW_PTE_D : 0);
        }
    }
    return HW_OK;
}
