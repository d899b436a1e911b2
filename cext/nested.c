/* nested.c - xenemu's extension: nested contexts (a guest-owned stage-1
 * table in the x86-64 4-level format walked through a parent context as
 * stage 2), the PASID bindings that lead devices to them, their
 * translation, invalidation and audit. See hw.h and abi/NESTED.md. */
#include "hw_internal.h"

static uint64_t max_dfn(const struct hw_iommu *io)
{
    return io->max_iova >> HW_PAGE_SHIFT;
}

static int pasid_ok(uint32_t pasid)
{
    return pasid != 0 && pasid <= HW_PASID_MAX;
}

/* What a request with `pasid` through nested context id needs: a PASID it
 * may carry (HW_E_INVAL) and the context live and nested (hw_ctx_find). */
static int nested_target(const struct hw_iommu *io, uint32_t id, uint32_t pasid,
                         struct hw_ctx **c)
{
    if (!pasid_ok(pasid))
        return HW_E_INVAL;
    return hw_ctx_find(io, id, 1, c);
}

/* walk()'s stage-1 not-present fault, told apart from stage 2's (only the
 * guest's table can be fixed by a page request); fault_kind() makes it
 * NOT_PRESENT for everyone else. */
#define S1_NOT_PRESENT (0x100 | HW_FAULT_NOT_PRESENT)

static uint8_t fault_kind(int f)
{
    return (uint8_t)(f & 0xFF);
}

static uint64_t tag(uint64_t dfn, uint32_t pasid)
{
    return dfn | (uint64_t)pasid << HW_TLB_PASID_SHIFT;
}

int hw_ctx_alloc_nested(struct hw_iommu *io, uint32_t parent,
                        uint64_t s1_root, uint32_t *id)
{
    struct hw_ctx *p;
    int st = hw_ctx_get(io, parent, &p);
    if (st != HW_OK)
        return st;  /* HW_E_INVAL too: a nested parent */
    if (s1_root > max_dfn(io))
        return HW_E_RANGE;
    if (!io->ctx_free_top && io->ctx_watermark == io->max_ctx)
        return HW_E_NOSPC;
    uint32_t i = hw_ctx_take_id(io);
    io->ctx[i] = (struct hw_ctx){.s1_root = s1_root, .parent = parent,
                                 .nested = 1, .state = HW_CTX_LIVE};
    p->nchildren++;
    *id = i;
    return HW_OK;
}

int hw_nested_teardown(struct hw_iommu *io, uint32_t id, int *finished)
{
    struct hw_ctx *c = &io->ctx[id];
    if (c->npasids)
        return HW_E_BUSY;
    hw_tlb_drop_ctx(&io->tlb, id);
    hw_count_inval(io, c);
    io->ctx[c->parent].nchildren--;
    c->state = HW_CTX_FREE;
    c->nested = 0;
    io->ctx_free[io->ctx_free_top++] = id;
    *finished = 1;
    return HW_OK;
}

void hw_nested_drop_children(struct hw_iommu *io, uint32_t id)
{
    struct hw_iotlb *t = &io->tlb;
    uint64_t total = (uint64_t)t->nsets * t->ways;
    for (uint64_t i = 0; i < total; i++) {
        struct hw_tlb_entry *e = &t->e[i];
        if (e->valid && e->ctx < io->max_ctx && io->ctx[e->ctx].nested &&
            io->ctx[e->ctx].parent == id)
            e->valid = 0;
    }
}

/* --- PASID bindings ------------------------------------------------------- */

struct hw_pasid_bind *hw_pasid_find(const struct hw_iommu *io, uint32_t sbdf,
                                    uint32_t pasid)
{
    for (uint32_t i = 0; i < io->npasids; i++)
        if (io->pasids[i].sbdf == sbdf && io->pasids[i].pasid == pasid)
            return &io->pasids[i];
    return NULL;
}

int hw_pasid_attach(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                    uint32_t ctx)
{
    struct hw_ctx *c;
    if (!hw_dev_find(io, sbdf))
        return HW_E_NODEV;
    int st = nested_target(io, ctx, pasid, &c);
    if (st != HW_OK)
        return st;
    if (hw_pasid_find(io, sbdf, pasid))
        return HW_E_EXISTS;
    if (io->npasids == HW_MAX_PASID_BINDS)
        return HW_E_NOSPC;
    io->pasids[io->npasids++] = (struct hw_pasid_bind){
        .sbdf = sbdf, .pasid = pasid, .ctx = ctx};
    c->npasids++;
    return HW_OK;
}

/* Unbind entry b: its cached translations go, the last entry fills its
 * slot (order does not matter: lookups match the whole key). */
static void unbind(struct hw_iommu *io, struct hw_pasid_bind *b)
{
    hw_tlb_drop_range(&io->tlb, b->ctx, tag(0, b->pasid),
                      1ULL << HW_TLB_PASID_SHIFT);
    io->ctx[b->ctx].npasids--;
    hw_prq_drop_pair(io, b->sbdf, b->pasid);
    *b = io->pasids[--io->npasids];
}

int hw_pasid_detach(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid)
{
    struct hw_pasid_bind *b = hw_pasid_find(io, sbdf, pasid);
    if (!b)
        return HW_E_NOTPRESENT;
    unbind(io, b);
    return HW_OK;
}

void hw_pasid_drop_device(struct hw_iommu *io, uint32_t sbdf)
{
    for (uint32_t i = 0; i < io->npasids;) {
        if (io->pasids[i].sbdf == sbdf)
            unbind(io, &io->pasids[i]);  /* slot i now holds another */
        else
            i++;
    }
}

int hw_pasid_context(const struct hw_iommu *io, uint32_t sbdf,
                     uint32_t pasid, uint32_t *ctx)
{
    const struct hw_pasid_bind *b = hw_pasid_find(io, sbdf, pasid);
    if (!b)
        return HW_E_NOTPRESENT;
    *ctx = b->ctx;
    return HW_OK;
}

/* --- translation ---------------------------------------------------------- */

/* Stage 2: the machine frame and permission of the parent's frame `dfn`;
 * 0 when it is not mapped (or beyond the width). */
static int stage2(const struct hw_iommu *io, const struct hw_ctx *p,
                  uint64_t dfn, uint64_t *mfn, uint8_t *perm, uint64_t *walks)
{
    if (dfn > max_dfn(io))
        return 0;
    uint64_t pte = hw_pt_walk(io, p, dfn, walks);
    if (!pte)
        return 0;
    *mfn = hw_pte_mfn(pte);
    *perm = (uint8_t)(pte & HW_PTE_PERM);
    return 1;
}

/* Stage 2 of a parent with dirty tracking on: its leaf entry for `dfn`
 * (NULL when not mapped or beyond the width), whose A/D bits the walk sets. */
static uint64_t *stage2_leaf(const struct hw_iommu *io, const struct hw_ctx *p,
                             uint64_t dfn, uint64_t *walks)
{
    return dfn > max_dfn(io) ? NULL : hw_pt_walk_entry(io, p, dfn, walks);
}

/* The walk of a miss: stage 1 from c's root, each table page read through
 * stage 2, then stage 2 of the output. A fault kind; on HW_FAULT_NONE the
 * combined translation in *mfn, *perm (read as stage 2 allows it, write if
 * both stages allow it). With `track` (a DMA's walk, not an audit) and
 * dirty tracking on the parent, the stage-2 entries the walk loads get A
 * (a table page's when it is read) and the output's D for an allowed write,
 * as VT-d's second-level A/D on nested walks (hw_ad_update); *clean is then
 * the IOTLB entry's mark (writable, D still clear), else 0. */
static int walk(const struct hw_iommu *io, const struct hw_ctx *c, uint64_t dfn,
                int write, int track, uint64_t *mfn, uint8_t *perm, uint8_t *clean,
                uint64_t *walks)
{
    const struct hw_ctx *p = &io->ctx[c->parent];
    uint64_t frame = c->s1_root, tm;
    uint8_t tp, s1w = HW_PTE_W;
    track = track && p->dirty_track;
    *clean = 0;
    for (uint32_t l = HW_S1_LEVELS; l >= 1; l--) {
        if (track) {
            uint64_t *s = stage2_leaf(io, p, frame, walks);
            if (!s || !(*s & HW_PTE_R))
                return HW_FAULT_S1_TABLE;
            *s |= HW_PTE_A;
            tm = hw_pte_mfn(*s);
        } else if (!stage2(io, p, frame, &tm, &tp, walks) || !(tp & HW_PTE_R)) {
            return HW_FAULT_S1_TABLE;
        }
        uint64_t e = hw_table(io->m, tm)[hw_index_at(dfn, l)];
        (*walks)++;
        if (!(e & HW_S1_P))
            return S1_NOT_PRESENT;
        if (l > 1 && (e & HW_S1_PS))
            return HW_FAULT_S1_TABLE;
        if (!(e & HW_S1_RW))
            s1w = 0;
        frame = hw_pte_mfn(e);
    }
    if (track) {
        uint64_t *s = stage2_leaf(io, p, frame, walks);
        if (!s)
            return HW_FAULT_NOT_PRESENT;
        *mfn = hw_pte_mfn(*s);
        *perm = (uint8_t)((*s & HW_PTE_R) | (*s & s1w));
        /* Cached even if this access faults, as a direct walk's entry is. */
        *clean = hw_ad_update(s, *perm, write,
                              hw_perm_fault(*perm, write) == HW_FAULT_NONE);
        return HW_FAULT_NONE;
    }
    if (!stage2(io, p, frame, mfn, &tp, walks))
        return HW_FAULT_NOT_PRESENT;
    *perm = (uint8_t)((tp & HW_PTE_R) | (tp & s1w));
    return HW_FAULT_NONE;
}

/* One address of a request with `pasid` through nested context c (id). The
 * guest keeps stage 1 coherent, so a hit is used as it is, in check mode
 * too (hw_tlb_audit_nested counts what the guest left stale). */
static int xlate(struct hw_iommu *io, struct hw_ctx *c, uint32_t id,
                 uint32_t pasid, uint64_t addr, int write, uint64_t *maddr,
                 struct hw_counters *acc)
{
    uint64_t dfn = addr >> HW_PAGE_SHIFT, mfn = 0;
    uint8_t perm = 0;
    *maddr = 0;
    int f = hw_addr_fault(io, addr);
    if (f != HW_FAULT_NONE)
        return f;
    struct hw_tlb_entry *e = hw_tlb_hit(&io->tlb, id, tag(dfn, pasid), write);
    if (e) {
        acc->hits++;
        mfn = e->mfn;
        perm = e->perm;
    } else {
        uint8_t clean;
        acc->misses++;
        f = walk(io, c, dfn, write, 1, &mfn, &perm, &clean, &acc->walks);
        if (f != HW_FAULT_NONE)
            return f;
        hw_tlb_fill(&io->tlb, id, tag(dfn, pasid), mfn, perm)->clean = clean;
    }
    f = hw_perm_fault(perm, write);
    if (f != HW_FAULT_NONE)
        return f;
    *maddr = (mfn << HW_PAGE_SHIFT) | (addr & (HW_PAGE_SIZE - 1));
    return HW_FAULT_NONE;
}

int hw_translate_nested(struct hw_iommu *io, uint32_t id, uint32_t pasid,
                        const uint64_t *addrs, uint64_t n, int write,
                        uint64_t *maddr, uint8_t *fault, uint64_t *done)
{
    struct hw_ctx *c;
    *done = 0;
    int st = nested_target(io, id, pasid, &c);
    if (st != HW_OK)
        return st;
    struct hw_counters acc = {0};
    for (uint64_t i = 0; i < n; i++)
        fault[i] = fault_kind(xlate(io, c, id, pasid, addrs[i], write,
                                    &maddr[i], &acc));
    *done = n;
    hw_count(io, c, &acc);
    return HW_OK;
}

int hw_nested_dma_xlate(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                        uint32_t pasid, uint64_t addr, int write,
                        uint64_t *maddr, uint8_t *kind)
{
    struct hw_ctx *c;
    int st = nested_target(io, id, pasid, &c);
    if (st != HW_OK)
        return st;
    int retried = c->prq ? hw_prq_retry(io, id, sbdf, pasid, addr) : 0;
    if (retried == 2) {  /* answered INVALID or FAILURE */
        *maddr = 0;
        *kind = HW_FAULT_NOT_PRESENT;
        return HW_OK;
    }
    struct hw_counters acc = {0};
    int f = xlate(io, c, id, pasid, addr, write, maddr, &acc);
    hw_count(io, c, &acc);
    *kind = fault_kind(f);
    if (f == S1_NOT_PRESENT && c->prq && !retried)
        return hw_prq_queue(io, id, sbdf, pasid, addr, write);
    return HW_OK;
}

int hw_inval_nested(struct hw_iommu *io, uint32_t id, uint32_t pasid,
                    uint64_t dfn, uint64_t n)
{
    struct hw_ctx *c;
    int st = hw_ctx_find(io, id, 1, &c);
    if (st != HW_OK)
        return st;
    if (pasid != HW_PASID_ANY && !pasid_ok(pasid))
        return HW_E_INVAL;
    if (hw_inject_fail(io->m, HW_INJECT_FLUSH))
        return HW_E_INJECTED;
    uint64_t space = 1ULL << HW_TLB_PASID_SHIFT;
    if (pasid == HW_PASID_ANY)
        hw_tlb_drop_ctx(&io->tlb, id);
    else if (dfn < space)
        hw_tlb_drop_range(&io->tlb, id, tag(dfn, pasid),
                          n < space - dfn ? n : space - dfn);
    hw_count_inval(io, c);
    return HW_OK;
}

void hw_tlb_audit_nested(struct hw_iommu *io, uint64_t *guest_stale)
{
    const struct hw_iotlb *t = &io->tlb;
    uint64_t total = (uint64_t)t->nsets * t->ways;
    *guest_stale = 0;
    for (uint64_t i = 0; i < total; i++) {
        const struct hw_tlb_entry *e = &t->e[i];
        if (!e->valid || e->ctx >= io->max_ctx || !io->ctx[e->ctx].nested)
            continue;
        uint64_t walks = 0, mfn = 0;
        uint8_t perm = 0, clean;
        uint64_t dfn = e->dfn & ((1ULL << HW_TLB_PASID_SHIFT) - 1);
        if (walk(io, &io->ctx[e->ctx], dfn, 0, 0, &mfn, &perm, &clean, &walks) !=
                HW_FAULT_NONE || mfn != e->mfn || perm != e->perm)
            (*guest_stale)++;
    }
}
