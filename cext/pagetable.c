/* pagetable.c - the VT-d-like second-level I/O page tables of a context:
 * map, unmap, lookup, the hardware walk and the teardown walk. Tables are
 * 4 KiB machine frames holding 512 little-endian 64-bit entries. */
#include <stddef.h>

#include "hw_internal.h"

/* The leaf table covering dfn, creating missing tables when `create` is
 * set. NULL with *st = HW_E_NOTPRESENT (no create) or HW_E_NOMEM. */
static uint64_t *leaf_table(struct hw_iommu *io, struct hw_ctx *c,
                            uint64_t dfn, int create, int *st)
{
    uint64_t mfn = c->root;
    for (uint32_t l = io->levels; l > 1; l--) {
        uint64_t *pte = &hw_table(io->m, mfn)[hw_index_at(dfn, l)];
        if (!hw_pte_present(io->m, *pte)) {
            uint64_t fresh;
            if (!create) {
                *st = HW_E_NOTPRESENT;
                return NULL;
            }
            if (!hw_pool_charge(io, c)) {
                *st = HW_E_NOMEM;
                return NULL;
            }
            if (hw_frame_take(io->m, HW_OWNER_NONE, &fresh) != HW_OK) {
                hw_pool_release(io, c);
                *st = HW_E_NOMEM;
                return NULL;
            }
            *pte = (fresh << HW_PAGE_SHIFT) | HW_PTE_PERM;
        }
        mfn = hw_pte_mfn(*pte);
    }
    return hw_table(io->m, mfn);
}

static uint64_t max_dfn(const struct hw_iommu *io)
{
    return io->max_iova >> HW_PAGE_SHIFT;
}

/* hw_map, and with `ref` hw_map_ref: each page's frame gains a reference
 * before its entry is written, given back if the entry is not written. */
static int map_run(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                   const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
                   int ref, uint64_t *done)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    *done = 0;
    if (st != HW_OK)
        return st;
    if (perm == 0 || (perm & ~HW_PTE_PERM))
        return HW_E_INVAL;
    uint64_t *leaf = NULL, i;
    /* The count is kept in a local and stored once: through the pointers
     * it would be reloaded after every PTE store (they may alias). */
    for (i = 0; i < n; i++) {
        uint64_t d = dfn + i;
        uint64_t mfn = mfns ? mfns[i] : first_mfn + i;
        if (d < dfn || d > max_dfn(io)) {
            st = HW_E_RANGE;
            break;
        }
        if (mfn >= io->m->nframes || (!mfns && mfn < first_mfn)) {
            st = HW_E_BADFRAME;
            break;
        }
        if (ref && (st = hw_ref_take_one(io->m, mfn)) != HW_OK)
            break;
        /* One walk per leaf table, not per page. */
        if (!leaf || hw_index_at(d, 1) == 0) {
            leaf = leaf_table(io, c, d, 1, &st);
            if (!leaf) {
                if (ref)
                    hw_ref_undo_one(io->m, mfn);
                break;
            }
        }
        uint64_t *pte = &leaf[hw_index_at(d, 1)];
        if (hw_pte_present(io->m, *pte)) {
            if (ref)
                hw_ref_undo_one(io->m, mfn);
            st = HW_E_PRESENT;
            break;
        }
        *pte = (mfn << HW_PAGE_SHIFT) | perm;
    }
    c->mapped += i;
    *done = i;
    return st;
}

int hw_map(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
           const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
           uint64_t *done)
{
    return map_run(io, id, dfn, n, mfns, first_mfn, perm, 0, done);
}

int hw_map_ref(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
               const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
               uint64_t *done)
{
    return map_run(io, id, dfn, n, mfns, first_mfn, perm, 1, done);
}

int hw_unmap(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
             uint64_t *out, uint64_t out_cap, int flush, uint64_t *done)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    *done = 0;
    if (st != HW_OK)
        return st;
    if (out_cap < n)
        return HW_E_INVAL;
    uint64_t *leaf = NULL, i;
    for (i = 0; i < n; i++) {   /* counts stored once, as in hw_map */
        uint64_t d = dfn + i;
        if (d < dfn || d > max_dfn(io)) {
            st = HW_E_RANGE;
            break;
        }
        if (!leaf || hw_index_at(d, 1) == 0) {
            leaf = leaf_table(io, c, d, 0, &st);
            if (!leaf)
                break;
        }
        uint64_t *pte = &leaf[hw_index_at(d, 1)];
        if (!hw_pte_present(io->m, *pte)) {
            st = HW_E_NOTPRESENT;
            break;
        }
        out[i] = hw_pte_mfn(*pte);
        *pte = 0;
    }
    c->mapped -= i;
    *done = i;
    /* The pages done are gone from the tables whatever stopped the run, so
     * the flush covers exactly them. */
    if (flush && *done) {
        hw_tlb_drop_range(&io->tlb, id, dfn, *done);
        hw_stage2_changed(io, c, id);
        hw_count_inval(io, c);
    }
    return st;
}

int hw_lookup(struct hw_iommu *io, uint32_t id, uint64_t dfn,
              uint64_t *mfn, uint32_t *perm)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    if (dfn > max_dfn(io))
        return HW_E_RANGE;
    uint64_t *leaf = leaf_table(io, c, dfn, 0, &st);
    if (!leaf)
        return st;
    uint64_t pte = leaf[hw_index_at(dfn, 1)];
    if (!hw_pte_present(io->m, pte))
        return HW_E_NOTPRESENT;
    *mfn = hw_pte_mfn(pte);
    *perm = (uint32_t)(pte & HW_PTE_PERM);
    return HW_OK;
}

int hw_lookup_run(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  uint64_t *mfns, uint8_t *perms)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    if (n && (dfn > max_dfn(io) || n - 1 > max_dfn(io) - dfn))
        return HW_E_RANGE;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t *leaf = leaf_table(io, c, dfn + i, 0, &st);
        uint64_t pte = leaf ? leaf[hw_index_at(dfn + i, 1)] : 0;
        int here = leaf && hw_pte_present(io->m, pte);
        mfns[i] = here ? hw_pte_mfn(pte) : 0;
        perms[i] = here ? (uint8_t)(pte & HW_PTE_PERM) : 0;
    }
    return HW_OK;
}

int hw_next_mapped(struct hw_iommu *io, uint32_t id, uint64_t dfn,
                   uint64_t *next)
{
    struct hw_ctx *c;
    int st = hw_ctx_get(io, id, &c);
    if (st != HW_OK)
        return st;
    while (dfn <= max_dfn(io)) {
        /* Down toward dfn; a non-present entry at level l skips the dfns
         * it covers, so empty tables cost one entry read, not 512^l. */
        uint64_t mfn = c->root;
        uint32_t l;
        for (l = io->levels; l >= 1; l--) {
            uint64_t pte = hw_table(io->m, mfn)[hw_index_at(dfn, l)];
            if (!hw_pte_present(io->m, pte))
                break;
            if (l == 1) {
                *next = dfn;
                return HW_OK;
            }
            mfn = hw_pte_mfn(pte);
        }
        uint64_t span = 1ULL << (HW_PT_SHIFT * (l - 1));
        dfn = (dfn & ~(span - 1)) + span;
    }
    return HW_E_NOTPRESENT;
}

/* hw_pt_walk giving the slot: its own loop, since hw_pt_walk written over
 * it (even inlined) made nested misses, five stage-2 walks each, 9% slower. */
uint64_t *hw_pt_walk_entry(const struct hw_iommu *io, const struct hw_ctx *c,
                           uint64_t dfn, uint64_t *walks)
{
    uint64_t mfn = c->root;
    for (uint32_t l = io->levels; l >= 1; l--) {
        uint64_t *slot = &hw_table(io->m, mfn)[hw_index_at(dfn, l)];
        uint64_t pte = *slot;   /* once: *walks may alias it */
        (*walks)++;
        if (!hw_pte_present(io->m, pte))
            return NULL;
        if (l == 1)
            return slot;
        mfn = hw_pte_mfn(pte);
    }
    return NULL;
}

uint64_t hw_pt_walk(const struct hw_iommu *io, const struct hw_ctx *c,
                    uint64_t dfn, uint64_t *walks)
{
    uint64_t mfn = c->root;
    for (uint32_t l = io->levels; l >= 1; l--) {
        uint64_t pte = hw_table(io->m, mfn)[hw_index_at(dfn, l)];
        (*walks)++;
        if (!hw_pte_present(io->m, pte))
            return 0;
        if (l == 1)
            return pte;
        mfn = hw_pte_mfn(pte);
    }
    return 0;
}

/* Clears the subtree of the table at `mfn` (covering dfns from `base`),
 * resuming at c->td_cursor. Returns 1 when the table is empty (the caller
 * frees it), 0 when the budget ran out, the cursor then naming the next
 * leaf slot to examine. */
static int td_table(struct hw_iommu *io, struct hw_ctx *c, struct hw_td *s,
                    uint64_t mfn, uint32_t level, uint64_t base)
{
    uint64_t *t = hw_table(io->m, mfn);
    uint32_t shift = HW_PT_SHIFT * (level - 1);
    /* Slots before the cursor were cleared by earlier calls. */
    uint32_t i = c->td_cursor > base
                     ? (uint32_t)((c->td_cursor - base) >> shift) : 0;
    for (; i < HW_PT_ENTRIES; i++) {
        uint64_t d = base + ((uint64_t)i << shift);
        if (level == 1) {
            if (!s->budget) {
                c->td_cursor = d;
                return 0;
            }
            s->budget--;
            if (hw_pte_present(io->m, t[i])) {
                if (s->out)
                    s->out[s->written++] = hw_pte_mfn(t[i]);
                c->mapped--;
            }
            t[i] = 0;
            continue;
        }
        if (!hw_pte_present(io->m, t[i]))
            continue;
        uint64_t child = hw_pte_mfn(t[i]);
        if (!td_table(io, c, s, child, level - 1, d))
            return 0;
        hw_frame_release(io->m, child);
        hw_pool_release(io, c);
        t[i] = 0;
    }
    return 1;
}

int hw_pt_teardown(struct hw_iommu *io, struct hw_ctx *c, struct hw_td *s)
{
    if (!td_table(io, c, s, c->root, io->levels, 0))
        return 0;
    hw_frame_release(io->m, c->root);
    hw_pool_release(io, c);
    return 1;
}
