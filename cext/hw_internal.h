/*
 * hw_internal.h - what the files of cext/ share among themselves and nobody
 * else sees: the inline helpers of the hot paths (reference taking, fault
 * injection, pool charging, IOTLB lookup) and the functions one .c file
 * provides to another. Included by the .c files of cext/ only; the public
 * interface, the one Python's cffi declarations are generated from, is hw.h.
 */
#ifndef XENEMU_HW_INTERNAL_H
#define XENEMU_HW_INTERNAL_H

#include "hw.h"

/* --- machine memory (memory.c) ------------------------------------------- */

/* One event at `site`; 1 when it must fail. */
static inline int hw_inject_fail(struct hw_machine *m, uint32_t site)
{
    struct hw_inject *f = &m->inject;
    if (!f->countdown || !(f->sites & site))
        return 0;
    f->seen++;
    if (--f->countdown)
        return 0;
    f->fired = site;
    return 1;
}

/* A frame in the machine and in use. */
static inline int hw_frame_ok(const struct hw_machine *m, uint64_t mfn)
{
    return mfn < m->nframes && m->in_use[mfn];
}
/* One reference more, as Xen's get_page (a REF event). */
static inline int hw_ref_take_one(struct hw_machine *m, uint64_t mfn)
{
    if (!hw_frame_ok(m, mfn))
        return HW_E_BADFRAME;
    if (m->refcount[mfn] == UINT32_MAX)
        return HW_E_REFCOUNT;
    if (hw_inject_fail(m, HW_INJECT_REF))
        return HW_E_INJECTED;
    m->refcount[mfn]++;
    return HW_OK;
}
/* Give back a reference hw_ref_take_one just took. */
static inline void hw_ref_undo_one(struct hw_machine *m, uint64_t mfn)
{
    m->refcount[mfn]--;
}

/* One zeroed frame for the IOMMU's tables (fails at an injected TABLE
 * event), and back. */
int hw_frame_take(struct hw_machine *m, uint16_t owner, uint64_t *mfn);
void hw_frame_release(struct hw_machine *m, uint64_t mfn);

/* --- table-page pools ----------------------------------------------------- */

/* One table page more (0 when the pool is spent) or less. */
static inline int hw_pool_charge(struct hw_iommu *io, struct hw_ctx *c)
{
    struct hw_pool *p = &io->pools[c->pool];
    if (p->limit && p->used >= p->limit)
        return 0;
    p->used++;
    c->tables++;
    return 1;
}
static inline void hw_pool_release(struct hw_iommu *io, struct hw_ctx *c)
{
    io->pools[c->pool].used--;
    c->tables--;
}

/* One IOTLB invalidation request for context c: counted for it, its pool
 * and the IOMMU. */
static inline void hw_count_inval(struct hw_iommu *io, struct hw_ctx *c)
{
    c->cnt.invalidations++;
    io->pools[c->pool].cnt.invalidations++;
    io->cnt.invalidations++;
}

/* --- IOTLB (iotlb.c): lookup, fill and drop of cached entries ------------- */

int hw_tlb_init(struct hw_iotlb *t, uint32_t entries, uint32_t ways);
void hw_tlb_fini(struct hw_iotlb *t);
/* Inline: a translation hit is little more than this lookup. Fibonacci-
 * style hashing spreads consecutive dfns and context ids over the sets; the
 * Python reference uses the same formula. */
static inline uint32_t hw_tlb_set(const struct hw_iotlb *t, uint32_t ctx,
                                  uint64_t dfn)
{
    uint64_t h = dfn * 0x9E3779B97F4A7C15ULL ^ ctx * 0xC2B2AE3D27D4EB4FULL;
    return (uint32_t)(h >> 32) & (t->nsets - 1);
}

static inline struct hw_tlb_entry *hw_tlb_find(struct hw_iotlb *t,
                                               uint32_t ctx, uint64_t dfn)
{
    struct hw_tlb_entry *set = t->e + (uint64_t)hw_tlb_set(t, ctx, dfn) * t->ways;
    for (uint32_t w = 0; w < t->ways; w++)
        if (set[w].valid && set[w].ctx == ctx && set[w].dfn == dfn)
            return &set[w];
    return NULL;
}

/* The entry a translation of (ctx, tag) for a read or a write may use, or
 * NULL (a miss). Dirty tracking: a write through a `clean` entry (cached
 * writable with D clear) drops it and misses, so the walk sets D. */
static inline struct hw_tlb_entry *hw_tlb_hit(struct hw_iotlb *t, uint32_t ctx,
                                              uint64_t tag, int write)
{
    struct hw_tlb_entry *e = hw_tlb_find(t, ctx, tag);
    if (e && write && e->clean) {
        e->valid = 0;
        return NULL;
    }
    return e;
}
struct hw_tlb_entry *hw_tlb_fill(struct hw_iotlb *t, uint32_t ctx,
                                 uint64_t dfn, uint64_t mfn, uint8_t perm);
void hw_tlb_drop_range(struct hw_iotlb *t, uint32_t ctx, uint64_t dfn,
                       uint64_t n);
void hw_tlb_drop_ctx(struct hw_iotlb *t, uint32_t ctx);
void hw_tlb_drop_all(struct hw_iotlb *t);

/* --- page tables (pagetable.c) and contexts (iommu.c) --------------------- */

/* A table page (4 KiB, 512 little-endian entries) in machine memory. */
static inline uint64_t *hw_table(const struct hw_machine *m, uint64_t mfn)
{
    return (uint64_t *)(void *)(m->mem + mfn * HW_PAGE_SIZE);
}

static inline uint64_t hw_pte_mfn(uint64_t pte)
{
    return (pte & HW_PTE_ADDR) >> HW_PAGE_SHIFT;
}

/* Tables live in simulated memory that raw writes can corrupt, so an entry
 * pointing outside the machine counts as not present: nothing ever follows
 * it out of bounds. */
static inline int hw_pte_present(const struct hw_machine *m, uint64_t pte)
{
    return (pte & HW_PTE_PERM) && hw_pte_mfn(pte) < m->nframes;
}

static inline uint32_t hw_index_at(uint64_t dfn, uint32_t level)
{
    return (uint32_t)(dfn >> (HW_PT_SHIFT * (level - 1))) & (HW_PT_ENTRIES - 1);
}

/* Adds a batch's counts to the context's, its pool's and the IOMMU's
 * counters (once per batch, so that translation loops keep them in
 * registers). */
static inline void hw_count(struct hw_iommu *io, struct hw_ctx *c,
                            const struct hw_counters *acc)
{
    struct hw_counters *all[3] = {&c->cnt, &io->pools[c->pool].cnt, &io->cnt};
    for (int i = 0; i < 3; i++) {
        all[i]->hits += acc->hits;
        all[i]->misses += acc->misses;
        all[i]->walks += acc->walks;
        all[i]->stale += acc->stale;
    }
}

/* Walk for the translation path; returns the leaf PTE or 0 and adds the
 * entries read to *walks. */
uint64_t hw_pt_walk(const struct hw_iommu *io, const struct hw_ctx *c,
                    uint64_t dfn, uint64_t *walks);
/* hw_pt_walk giving the present leaf entry itself (NULL if none), for
 * the walker to set A/D bits in. */
uint64_t *hw_pt_walk_entry(const struct hw_iommu *io, const struct hw_ctx *c,
                           uint64_t dfn, uint64_t *walks);
/* Dirty tracking on a walk: A when the walk loads the entry (it is then
 * cached, so hits need no update), D for an allowed write; returns the new
 * IOTLB entry's `clean` (writable, D still clear). */
static inline uint8_t hw_ad_update(uint64_t *pte, uint8_t perm, int write,
                                   int allowed)
{
    *pte |= write && allowed ? HW_PTE_A | HW_PTE_D : HW_PTE_A;
    return (perm & HW_PTE_W) && !(*pte & HW_PTE_D);
}
/* State of one teardown slice. out == NULL discards the mfns (used when the
 * whole IOMMU is destroyed). */
struct hw_td {
    uint64_t budget;  /* leaf slots still to examine in this slice */
    uint64_t *out;
    uint64_t written;
};
/* Clear and free a context's tables from c->td_cursor on; returns 1 when
 * everything, root included, is freed. */
int hw_pt_teardown(struct hw_iommu *io, struct hw_ctx *c, struct hw_td *s);
/* The live context `id` (HW_E_NOCTX if not allocated, HW_E_BUSY while it is
 * being torn down). */
int hw_ctx_get(const struct hw_iommu *io, uint32_t id, struct hw_ctx **c);
/* hw_ctx_get for either kind: HW_E_INVAL when the context is live but
 * nested is not what `nested` asks for. */
static inline int hw_ctx_find(const struct hw_iommu *io, uint32_t id,
                              int nested, struct hw_ctx **c)
{
    if (id >= io->max_ctx || io->ctx[id].state == HW_CTX_FREE)
        return HW_E_NOCTX;
    if (io->ctx[id].state == HW_CTX_DYING)
        return HW_E_BUSY;
    if (io->ctx[id].nested != nested)
        return HW_E_INVAL;
    *c = &io->ctx[id];
    return HW_OK;
}
/* Faults decided by the address alone, before any table: beyond the
 * width, or in the interrupt window. */
static inline int hw_addr_fault(const struct hw_iommu *io, uint64_t addr)
{
    if (addr > io->max_iova)
        return HW_FAULT_WIDTH;
    if (addr >= HW_INTR_FIRST && addr <= HW_INTR_LAST)
        return HW_FAULT_INTR;
    return HW_FAULT_NONE;
}
/* The fault of an access with a translation's permission, else NONE. */
static inline int hw_perm_fault(uint8_t perm, int write)
{
    if (write && !(perm & HW_PTE_W))
        return HW_FAULT_WRITE;
    if (!write && !(perm & HW_PTE_R))
        return HW_FAULT_READ;
    return HW_FAULT_NONE;
}
/* The next free context id (the caller checked there is one). */
uint32_t hw_ctx_take_id(struct hw_iommu *io);
/* hw_ctx_teardown of a nested context: at once (it has no tables). */
int hw_nested_teardown(struct hw_iommu *io, uint32_t id, int *finished);

/* --- nested contexts (nested.c) and devices (device.c) -------------------- */

/* A stage-2 invalidation of parent c (id) reached its nested children:
 * their cached translations all go (no reverse map from stage-2 pages). */
void hw_nested_drop_children(struct hw_iommu *io, uint32_t id);
static inline void hw_stage2_changed(struct hw_iommu *io, const struct hw_ctx *c,
                                     uint32_t id)
{
    if (c->nchildren)
        hw_nested_drop_children(io, id);
}
/* A device's bindings go with it (hw_dev_remove). */
void hw_pasid_drop_device(struct hw_iommu *io, uint32_t sbdf);
struct hw_device *hw_dev_find(const struct hw_iommu *io, uint32_t sbdf);
struct hw_pasid_bind *hw_pasid_find(const struct hw_iommu *io, uint32_t sbdf,
                                    uint32_t pasid);

/* --- I/O page faults (prq.c) ---------------------------------------------- */

/* What a DMA with a PASID does at the page of addr through nested context c
 * (id), page requests on, before translating: 0 nothing; else it consumed
 * the answered request of that page (the retry of a waiting DMA): 1 if the
 * answer was SUCCESS (translate, no new request), 2 if not (the DMA faults
 * NOT_PRESENT). */
int hw_prq_retry(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                 uint32_t pasid, uint64_t addr);
/* A stage-1 not-present fault at addr became a page request: HW_E_PENDING
 * (queued now, or already waiting for that page), or HW_OK when the queue
 * is full (the fault is non-recoverable). */
int hw_prq_queue(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                 uint32_t pasid, uint64_t addr, int write);
/* Drop the requests of a (device, PASID) pair (unbinding). */
void hw_prq_drop_pair(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid);
/* A DMA's translation of one page with a PASID through nested context id,
 * page requests included: HW_OK with *kind (the fault, NONE when *maddr is
 * good), HW_E_PENDING (a page request waits), or the context's status. */
int hw_nested_dma_xlate(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                        uint32_t pasid, uint64_t addr, int write,
                        uint64_t *maddr, uint8_t *kind);

#endif
