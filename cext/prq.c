/* prq.c - xenemu's extension: I/O page faults. A nested context's stage-1
 * not-present faults become page requests the guest reads and answers, as
 * PCIe PRI with VT-d's page request queue (see hw.h and abi/NESTED.md).
 *
 * The requests of the whole IOMMU are one array in arrival order (removal
 * keeps the order: the guest reads oldest first). It holds at most
 * HW_MAX_PAGE_REQS and is scanned only on fault paths, when answering, and
 * when a context has answers waiting for their retry. */
#include <string.h>

#include "hw_internal.h"

static uint32_t ctx_count(const struct hw_iommu *io, uint32_t id)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < io->nprq; i++)
        n += io->prq[i].ctx == id;
    return n;
}

static int group_used(const struct hw_iommu *io, uint32_t id, uint32_t group)
{
    for (uint32_t i = 0; i < io->nprq; i++)
        if (io->prq[i].ctx == id && io->prq[i].group == group)
            return 1;
    return 0;
}

static int same_page(const struct hw_page_req *r, uint32_t sbdf,
                     uint32_t pasid, uint64_t addr)
{
    return r->sbdf == sbdf && r->pasid == pasid &&
           r->addr >> HW_PAGE_SHIFT == addr >> HW_PAGE_SHIFT;
}

static void drop(struct hw_iommu *io, uint32_t i)
{
    if (io->prq[i].state == HW_PRQ_ANSWERED)
        io->prq_answered--;
    memmove(&io->prq[i], &io->prq[i + 1],
            (io->nprq - i - 1) * sizeof(*io->prq));
    io->nprq--;
}

static int prq_ctx(const struct hw_iommu *io, uint32_t id, struct hw_ctx **c)
{
    int st = hw_ctx_find(io, id, 1, c);
    if (st != HW_OK)
        return st;
    return (*c)->prq ? HW_OK : HW_E_INVAL;
}

int hw_prq_enable(struct hw_iommu *io, uint32_t id)
{
    struct hw_ctx *c;
    int st = hw_ctx_find(io, id, 1, &c);
    if (st == HW_OK)
        c->prq = 1;
    return st;
}

int hw_prq_read(struct hw_iommu *io, uint32_t id, struct hw_page_req *out,
                uint32_t cap, int consume, uint32_t *n)
{
    struct hw_ctx *c;
    *n = 0;
    int st = prq_ctx(io, id, &c);
    if (st != HW_OK)
        return st;
    for (uint32_t i = 0; i < io->nprq && *n < cap; i++) {
        struct hw_page_req *r = &io->prq[i];
        if (r->ctx != id || r->state != HW_PRQ_QUEUED)
            continue;
        out[(*n)++] = *r;
        if (consume)
            r->state = HW_PRQ_READ;
    }
    return HW_OK;
}

int hw_prq_respond(struct hw_iommu *io, uint32_t id, uint32_t group,
                   uint32_t code)
{
    struct hw_ctx *c;
    int st = prq_ctx(io, id, &c);
    if (st != HW_OK)
        return st;
    if (code != HW_PRQ_SUCCESS && code != HW_PRQ_INVALID &&
        code != HW_PRQ_FAILURE)
        return HW_E_INVAL;
    for (uint32_t i = 0; i < io->nprq; i++) {
        struct hw_page_req *r = &io->prq[i];
        if (r->ctx == id && r->group == group &&
            r->state != HW_PRQ_ANSWERED) {
            r->state = HW_PRQ_ANSWERED;
            r->code = (uint8_t)code;
            io->prq_answered++;
            return HW_OK;
        }
    }
    return HW_E_NOTPRESENT;
}

int hw_prq_group(const struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                 uint64_t addr, uint32_t *group)
{
    for (uint32_t i = 0; i < io->nprq; i++)
        if (same_page(&io->prq[i], sbdf, pasid, addr)) {
            *group = io->prq[i].group;
            return HW_OK;
        }
    return HW_E_NOTPRESENT;
}

uint32_t hw_prq_list(const struct hw_iommu *io, struct hw_page_req *out,
                     uint32_t cap)
{
    uint32_t n = io->nprq < cap ? io->nprq : cap;
    memcpy(out, io->prq, n * sizeof(*out));
    return n;
}

int hw_prq_load(struct hw_iommu *io, const struct hw_page_req *r)
{
    struct hw_ctx *c;
    int st = prq_ctx(io, r->ctx, &c);
    if (st != HW_OK)
        return st;
    const struct hw_pasid_bind *b = hw_pasid_find(io, r->sbdf, r->pasid);
    if (!b || b->ctx != r->ctx)
        return HW_E_NOTPRESENT;
    if (r->state > HW_PRQ_ANSWERED || r->write > 1 || r->group == 0 ||
        (r->state == HW_PRQ_ANSWERED && r->code != HW_PRQ_SUCCESS &&
         r->code != HW_PRQ_INVALID && r->code != HW_PRQ_FAILURE) ||
        (r->state != HW_PRQ_ANSWERED && r->code != 0) ||
        hw_addr_fault(io, r->addr) != HW_FAULT_NONE ||
        group_used(io, r->ctx, r->group))
        return HW_E_INVAL;
    uint32_t dummy;
    if (hw_prq_group(io, r->sbdf, r->pasid, r->addr, &dummy) == HW_OK)
        return HW_E_INVAL;  /* one request per page, as hw_prq_queue */
    if (io->nprq == HW_MAX_PAGE_REQS || ctx_count(io, r->ctx) == HW_PRQ_PER_CTX)
        return HW_E_NOSPC;
    io->prq[io->nprq++] = *r;
    if (r->state == HW_PRQ_ANSWERED)
        io->prq_answered++;
    if (r->group > c->prq_group)
        c->prq_group = r->group;
    return HW_OK;
}

int hw_prq_retry(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                 uint32_t pasid, uint64_t addr)
{
    if (!io->prq_answered)
        return 0;
    for (uint32_t i = 0; i < io->nprq; i++) {
        const struct hw_page_req *r = &io->prq[i];
        if (r->ctx == id && r->state == HW_PRQ_ANSWERED &&
            same_page(r, sbdf, pasid, addr)) {
            int ok = r->code == HW_PRQ_SUCCESS;
            drop(io, i);
            return ok ? 1 : 2;
        }
    }
    return 0;
}

int hw_prq_queue(struct hw_iommu *io, uint32_t id, uint32_t sbdf,
                 uint32_t pasid, uint64_t addr, int write)
{
    struct hw_ctx *c = &io->ctx[id];
    uint32_t group;
    if (hw_prq_group(io, sbdf, pasid, addr, &group) == HW_OK)
        return HW_E_PENDING;  /* unanswered: answered ones were retried */
    if (io->nprq == HW_MAX_PAGE_REQS || ctx_count(io, id) == HW_PRQ_PER_CTX)
        return HW_OK;
    do {  /* 1, 2, ...; after 2^32 - 1, skip 0 and groups still in use */
        group = ++c->prq_group;
    } while (group == 0 || group_used(io, id, group));
    io->prq[io->nprq++] = (struct hw_page_req){
        .addr = addr, .sbdf = sbdf, .pasid = pasid, .ctx = id,
        .group = group, .write = (uint8_t)(write != 0),
        .state = HW_PRQ_QUEUED};
    return HW_E_PENDING;
}

void hw_prq_drop_pair(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid)
{
    for (uint32_t i = io->nprq; i-- > 0;)
        if (io->prq[i].sbdf == sbdf && io->prq[i].pasid == pasid)
            drop(io, i);
}
