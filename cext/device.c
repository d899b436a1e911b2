/* device.c - PCI devices, their context entries, DMA and the fault log. */
#include <string.h>

#include "hw_internal.h"

/* Devices are few (a table of max_dev slots) and looked up once per call,
 * never per page, so a scan is enough. */
struct hw_device *hw_dev_find(const struct hw_iommu *io, uint32_t sbdf)
{
    for (uint32_t i = 0; i < io->max_dev; i++)
        if (io->dev[i].used && io->dev[i].sbdf == sbdf)
            return &io->dev[i];
    return NULL;
}

int hw_dev_add(struct hw_iommu *io, uint32_t sbdf)
{
    if (hw_dev_find(io, sbdf))
        return HW_E_EXISTS;
    for (uint32_t i = 0; i < io->max_dev; i++) {
        if (!io->dev[i].used) {
            io->dev[i] = (struct hw_device){.sbdf = sbdf, .ctx = HW_CTX_NONE,
                                            .used = 1};
            return HW_OK;
        }
    }
    return HW_E_NOSPC;
}

int hw_dev_remove(struct hw_iommu *io, uint32_t sbdf)
{
    struct hw_device *d = hw_dev_find(io, sbdf);
    if (!d)
        return HW_E_NODEV;
    if (d->ctx != HW_CTX_NONE)
        io->ctx[d->ctx].ndevices--;
    hw_pasid_drop_device(io, sbdf);
    d->used = 0;
    return HW_OK;
}

int hw_dev_attach(struct hw_iommu *io, uint32_t sbdf, uint32_t ctx)
{
    struct hw_device *d = hw_dev_find(io, sbdf);
    struct hw_ctx *c = NULL;
    if (!d)
        return HW_E_NODEV;
    if (ctx != HW_CTX_NONE) {
        int st = hw_ctx_get(io, ctx, &c);
        if (st != HW_OK)
            return st;
        c->ndevices++;
    }
    uint32_t old = d->ctx;
    /* The switch itself: one store of the context entry. The IOTLB is
     * tagged by context, so no invalidation is needed for the device. */
    d->ctx = ctx;
    if (old != HW_CTX_NONE)
        io->ctx[old].ndevices--;
    return HW_OK;
}

int hw_dev_context(const struct hw_iommu *io, uint32_t sbdf, uint32_t *ctx)
{
    const struct hw_device *d = hw_dev_find(io, sbdf);
    if (!d)
        return HW_E_NODEV;
    *ctx = d->ctx;
    return HW_OK;
}

/* Full log: the new fault is dropped and the overflow flag set, as VT-d
 * does when its fault-recording registers are all in use. */
static void record(struct hw_iommu *io, uint32_t sbdf, uint64_t addr,
                   int kind, int write)
{
    if (io->nfaults == io->fault_cap) {
        io->fault_overflow = 1;
        return;
    }
    io->faults[io->nfaults++] = (struct hw_fault_rec){
        .addr = addr, .sbdf = sbdf, .kind = (uint8_t)kind,
        .write = (uint8_t)(write != 0)};
}

/* DMA through a context entry: the device's (pasid 0), or a PASID
 * binding's. The entry is read per page, as hardware would; no context
 * (HW_CTX_NONE), or one being torn down, blocks the device; a request with a
 * PASID bound to nothing faults NO_PASID. */
static int dma(struct hw_iommu *io, uint32_t sbdf, const uint32_t *entry,
               uint32_t pasid, uint64_t addr, uint8_t *p, uint64_t len,
               int write, uint64_t *done, struct hw_fault_rec *fault)
{
    /* No wrap-around check on addr + *done: every page translated lies
     * below max_iova < 2^48 and the first one above it faults. */
    while (*done < len) {
        uint64_t a = addr + *done, maddr = 0, one;
        uint64_t chunk = HW_PAGE_SIZE - (a & (HW_PAGE_SIZE - 1));
        uint8_t kind = pasid ? HW_FAULT_NO_PASID : HW_FAULT_BLOCKED;
        int st = HW_E_NOCTX;
        if (!pasid)
            st = hw_translate(io, *entry, &a, 1, write, &maddr, &kind, &one);
        else if (entry)
            st = hw_nested_dma_xlate(io, *entry, sbdf, pasid, a, write,
                                     &maddr, &kind);
        if (st == HW_E_STALE || st == HW_E_PENDING) {
            if (fault && st == HW_E_PENDING)  /* not logged: recoverable */
                *fault = (struct hw_fault_rec){.addr = a, .sbdf = sbdf,
                                               .kind = kind,
                                               .write = write != 0};
            return st;
        }
        if (st != HW_OK)
            kind = pasid ? HW_FAULT_NO_PASID : HW_FAULT_BLOCKED;
        if (kind != HW_FAULT_NONE) {
            record(io, sbdf, a, kind, write);
            if (fault)
                *fault = (struct hw_fault_rec){.addr = a, .sbdf = sbdf,
                                               .kind = kind,
                                               .write = write != 0};
            return HW_E_FAULT;
        }
        if (chunk > len - *done)
            chunk = len - *done;
        if (write)
            memcpy(io->m->mem + maddr, p + *done, chunk);
        else
            memcpy(p + *done, io->m->mem + maddr, chunk);
        *done += chunk;
    }
    return HW_OK;
}

int hw_dma(struct hw_iommu *io, uint32_t sbdf, uint64_t addr, void *buf,
           uint64_t len, int write, uint64_t *done,
           struct hw_fault_rec *fault)
{
    const struct hw_device *d = hw_dev_find(io, sbdf);
    *done = 0;
    if (!d)
        return HW_E_NODEV;
    return dma(io, sbdf, &d->ctx, 0, addr, buf, len, write, done, fault);
}

int hw_dma_pasid(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                 uint64_t addr, void *buf, uint64_t len, int write,
                 uint64_t *done, struct hw_fault_rec *fault)
{
    *done = 0;
    if (!hw_dev_find(io, sbdf))
        return HW_E_NODEV;
    if (pasid == 0 || pasid > HW_PASID_MAX)
        return HW_E_INVAL;
    const struct hw_pasid_bind *b = hw_pasid_find(io, sbdf, pasid);
    return dma(io, sbdf, b ? &b->ctx : NULL, pasid, addr, buf, len, write,
               done, fault);
}

uint32_t hw_faults_read(const struct hw_iommu *io, struct hw_fault_rec *out,
                        uint32_t cap, int *overflow)
{
    uint32_t n = io->nfaults < cap ? io->nfaults : cap;
    memcpy(out, io->faults, n * sizeof(*out));
    *overflow = io->fault_overflow;
    return n;
}

void hw_faults_clear(struct hw_iommu *io)
{
    io->nfaults = 0;
    io->fault_overflow = 0;
}

/* Whether the IOMMU records a fault of this kind at this address (see
 * xlate: WIDTH first, then the interrupt window, then the tables). */
static int possible(const struct hw_iommu *io, const struct hw_fault_rec *r)
{
    int width = r->addr > io->max_iova;
    int intr = !width && r->addr >= HW_INTR_FIRST && r->addr <= HW_INTR_LAST;
    int tables = !width && !intr;
    if (r->write > 1)
        return 0;
    switch (r->kind) {
    case HW_FAULT_BLOCKED:
    case HW_FAULT_NO_PASID:
        return 1;
    case HW_FAULT_WIDTH:
        return width;
    case HW_FAULT_INTR:
        return intr;
    case HW_FAULT_NOT_PRESENT:
    case HW_FAULT_S1_TABLE:
        return tables;
    case HW_FAULT_READ:
        return tables && !r->write;
    case HW_FAULT_WRITE:
        return tables && r->write;
    default:
        return 0;
    }
}

int hw_faults_load(struct hw_iommu *io, const struct hw_fault_rec *recs,
                   uint32_t n, int overflow, uint32_t *bad)
{
    *bad = n;
    if (n > io->fault_cap)
        return HW_E_NOSPC;
    if (overflow && n < io->fault_cap)
        return HW_E_INVAL;
    for (uint32_t i = 0; i < n; i++) {
        *bad = i;
        if (!hw_dev_find(io, recs[i].sbdf))
            return HW_E_NODEV;
        if (!possible(io, &recs[i]))
            return HW_E_INVAL;
    }
    if (n)
        memcpy(io->faults, recs, n * sizeof(*recs));
    io->nfaults = n;
    io->fault_overflow = overflow != 0;
    *bad = 0;
    return HW_OK;
}
