/* memory.c - machine frames, their allocator and per-frame metadata. */
#define _DEFAULT_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hw_internal.h"

/* Lazily-backed zeroed memory: the OS fills pages on first touch. */
static void *lazy_map(uint64_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void lazy_unmap(void *p, uint64_t bytes)
{
    if (p)
        munmap(p, bytes);
}

struct hw_machine *hw_machine_create(uint64_t size)
{
    if (size == 0 || size % HW_PAGE_SIZE || size / HW_PAGE_SIZE > HW_MAX_FRAMES)
        return NULL;
    struct hw_machine *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->holders = 1;
    m->nframes = size / HW_PAGE_SIZE;
    m->mem = lazy_map(size);
    m->refcount = lazy_map(m->nframes * sizeof(uint32_t));
    m->owner_x = lazy_map(m->nframes * sizeof(uint16_t));
    m->in_use = lazy_map(m->nframes);
    m->free_stack = lazy_map(m->nframes * sizeof(uint64_t));
    m->m2p = lazy_map(m->nframes * sizeof(uint64_t));
    if (!m->mem || !m->refcount || !m->owner_x || !m->in_use ||
        !m->free_stack || !m->m2p) {
        hw_machine_put(m);
        return NULL;
    }
    return m;
}

void hw_machine_put(struct hw_machine *m)
{
    if (!m || --m->holders)
        return;
    lazy_unmap(m->mem, m->nframes * HW_PAGE_SIZE);
    lazy_unmap(m->refcount, m->nframes * sizeof(uint32_t));
    lazy_unmap(m->owner_x, m->nframes * sizeof(uint16_t));
    lazy_unmap(m->in_use, m->nframes);
    lazy_unmap(m->free_stack, m->nframes * sizeof(uint64_t));
    lazy_unmap(m->m2p, m->nframes * sizeof(uint64_t));
    free(m);
}

static uint64_t frames_available(const struct hw_machine *m)
{
    return m->free_top + (m->nframes - m->watermark);
}

/* Caller has checked availability: never fails. */
static uint64_t take_one(struct hw_machine *m, uint16_t owner)
{
    uint64_t mfn = m->free_top ? m->free_stack[--m->free_top]
                               : m->watermark++;
    m->in_use[mfn] = 1;
    m->owner_x[mfn] = owner ^ HW_OWNER_NONE;
    m->refcount[mfn] = 0;
    m->used++;
    return mfn;
}

int hw_frame_take(struct hw_machine *m, uint16_t owner, uint64_t *mfn)
{
    if (!frames_available(m) || hw_inject_fail(m, HW_INJECT_TABLE))
        return HW_E_NOMEM;
    *mfn = take_one(m, owner);
    return HW_OK;
}

/* Keeps the invariant "a free frame is zero" and gives its memory back. */
void hw_frame_release(struct hw_machine *m, uint64_t mfn)
{
    if (mfn >= m->nframes || !m->in_use[mfn])
        return;
    madvise(m->mem + mfn * HW_PAGE_SIZE, HW_PAGE_SIZE, MADV_DONTNEED);
    m->in_use[mfn] = 0;
    m->owner_x[mfn] = 0;
    m->refcount[mfn] = 0;
    m->free_stack[m->free_top++] = mfn;
    m->used--;
}

int hw_frames_alloc(struct hw_machine *m, uint16_t owner, uint64_t n,
                    uint64_t *out)
{
    if (n > frames_available(m))
        return HW_E_NOMEM;
    for (uint64_t i = 0; i < n; i++)
        out[i] = take_one(m, owner);
    return HW_OK;
}


int hw_frames_free(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                   uint64_t *bad)
{
    for (uint64_t i = 0; i < n; i++) {
        *bad = i;
        if (!hw_frame_ok(m, mfns[i]))
            return HW_E_BADFRAME;
        if (m->refcount[mfns[i]])
            return HW_E_REFCOUNT;
    }
    /* hw_frame_release ignores a repeated mfn already freed here. */
    for (uint64_t i = 0; i < n; i++)
        hw_frame_release(m, mfns[i]);
    return HW_OK;
}

int hw_inject_arm(struct hw_machine *m, uint32_t sites, uint64_t n)
{
    if (n && (sites == 0 || (sites & ~(uint32_t)HW_INJECT_ALL)))
        return HW_E_INVAL;
    m->inject = (struct hw_inject){.countdown = n, .sites = n ? sites : 0};
    return HW_OK;
}

int hw_refs_take(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                 uint64_t n, uint64_t *done)
{
    for (*done = 0; *done < n; (*done)++) {
        uint64_t i = *done, mfn = mfns ? mfns[i] : first + i;
        if (mfns == NULL && mfn < first)
            return HW_E_BADFRAME;
        int st = hw_ref_take_one(m, mfn);
        if (st != HW_OK)
            return st;
    }
    return HW_OK;
}

int hw_refs_adjust(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                   uint64_t n, int delta, uint64_t *bad)
{
    if (delta != 1 && delta != -1)
        return HW_E_INVAL;
    /* All or nothing: validate the frames, then apply in order and undo
     * the applied prefix if a count would overflow or underflow (applying
     * is what catches a frame listed several times) or, taking references,
     * the injector refuses one. */
    for (uint64_t i = 0; i < n; i++) {
        uint64_t mfn = mfns ? mfns[i] : first + i;
        *bad = i;
        if (mfns == NULL && first + i < first)
            return HW_E_BADFRAME;
        if (!hw_frame_ok(m, mfn))
            return HW_E_BADFRAME;
    }
    uint64_t i;
    int st = HW_OK;
    if (delta > 0) {
        st = hw_refs_take(m, mfns, first, n, &i);
    } else {
        for (i = 0; i < n; i++) {
            uint64_t mfn = mfns ? mfns[i] : first + i;
            if (m->refcount[mfn] == 0) {
                st = HW_E_REFCOUNT;
                break;
            }
            m->refcount[mfn]--;
        }
    }
    if (st != HW_OK) {
        *bad = i;
        while (i--) /* undo the applied prefix */
            m->refcount[mfns ? mfns[i] : first + i] -= (uint32_t)delta;
    }
    return st;
}

int hw_frames_info(const struct hw_machine *m, const uint64_t *mfns,
                   uint64_t n, uint32_t *refs, uint16_t *owners,
                   uint64_t *bad)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t mfn = mfns[i];
        if (mfn >= m->nframes) {
            *bad = i;
            return HW_E_BADFRAME;
        }
        if (refs)
            refs[i] = m->refcount[mfn];
        if (owners)
            owners[i] = m->owner_x[mfn] ^ HW_OWNER_NONE;
    }
    return HW_OK;
}

int hw_frames_set_owner(struct hw_machine *m, const uint64_t *mfns,
                        uint64_t n, uint16_t owner, uint64_t *bad)
{
    for (uint64_t i = 0; i < n; i++) {
        if (!hw_frame_ok(m, mfns[i])) {
            *bad = i;
            return HW_E_BADFRAME;
        }
    }
    for (uint64_t i = 0; i < n; i++)
        m->owner_x[mfns[i]] = owner ^ HW_OWNER_NONE;
    return HW_OK;
}

int hw_m2p_set(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
               uint64_t first_gfn, uint64_t *bad)
{
    for (uint64_t i = 0; i < n; i++) {
        if (!hw_frame_ok(m, mfns[i])) {
            *bad = i;
            return HW_E_BADFRAME;
        }
    }
    for (uint64_t i = 0; i < n; i++)
        m->m2p[mfns[i]] = first_gfn + i;
    return HW_OK;
}

void hw_m2p_read(const struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                 uint64_t *gfns)
{
    for (uint64_t i = 0; i < n; i++)
        gfns[i] = hw_frame_ok(m, mfns[i]) ? m->m2p[mfns[i]] : HW_GFN_INVALID;
}

static int span_ok(const struct hw_machine *m, uint64_t maddr, uint64_t len)
{
    uint64_t size = m->nframes * HW_PAGE_SIZE;
    return maddr <= size && len <= size - maddr;
}

int hw_mem_read(const struct hw_machine *m, uint64_t maddr, void *buf,
                uint64_t len)
{
    if (!span_ok(m, maddr, len))
        return HW_E_BADFRAME;
    memcpy(buf, m->mem + maddr, len);
    return HW_OK;
}

int hw_mem_write(struct hw_machine *m, uint64_t maddr, const void *buf,
                 uint64_t len)
{
    if (!span_ok(m, maddr, len))
        return HW_E_BADFRAME;
    memcpy(m->mem + maddr, buf, len);
    return HW_OK;
}
