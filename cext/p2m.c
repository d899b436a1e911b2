/*
 * p2m.c - a domain's non-RAM gfns as sorted runs of one kind (see p2m.h).
 *
 * Every query is a binary search over the runs; p2m_set_run replaces the
 * few runs a range touches (at most the one before it, the ones it covers
 * or cuts, and the one after it) by at most five, joined, with one memmove
 * of the runs after them. Nothing loops over pages.
 */
#include "p2m.h"

#include <stdlib.h>
#include <string.h>

struct p2m *p2m_create(const uint64_t *mfns, uint64_t nr_pages)
{
    struct p2m *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->mfns = mfns;
    p->nr_pages = nr_pages;
    return p;
}

void p2m_destroy(struct p2m *p)
{
    if (!p)
        return;
    free(p->runs);
    free(p);
}

size_t p2m_run_after(const struct p2m *p, uint64_t gfn)
{
    size_t lo = 0, hi = p->nr_runs;        /* the first run with end > gfn */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->runs[mid].end > gfn)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The index of the first run starting at or after gfn (nr_runs if none). */
static size_t run_from(const struct p2m *p, uint64_t gfn)
{
    size_t lo = 0, hi = p->nr_runs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->runs[mid].start >= gfn)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

uint64_t p2m_ram_run(const struct p2m *p, uint64_t gfn, uint64_t n)
{
    if (gfn >= p->nr_pages)
        return 0;
    uint64_t limit = p->nr_pages - gfn < n ? p->nr_pages - gfn : n;
    size_t i = p2m_run_after(p, gfn);
    if (i == p->nr_runs)
        return limit;
    const struct p2m_run *r = &p->runs[i];
    if (r->start <= gfn)
        return 0;
    return r->start - gfn < limit ? r->start - gfn : limit;
}

enum p2m_kind p2m_kind_at(const struct p2m *p, uint64_t gfn)
{
    if (gfn >= p->nr_pages)
        return P2M_INVALID;
    size_t i = p2m_run_after(p, gfn);
    return i < p->nr_runs && p->runs[i].start <= gfn ? p->runs[i].kind : P2M_RAM;
}

uint64_t p2m_run_end(const struct p2m *p, uint64_t gfn)
{
    size_t i = p2m_run_after(p, gfn);
    return i < p->nr_runs && p->runs[i].start <= gfn ? p->runs[i].end : gfn;
}

size_t p2m_run_count(const struct p2m *p)
{
    return p->nr_runs;
}

int p2m_run_get(const struct p2m *p, size_t i, struct p2m_run *out)
{
    if (i >= p->nr_runs)
        return -1;
    *out = p->runs[i];
    return 0;
}

/* Room for `need` runs: 0, or -1 with the array unchanged. */
static int reserve(struct p2m *p, size_t need)
{
    if (need <= p->cap)
        return 0;
    size_t cap = p->cap ? p->cap : 8;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > SIZE_MAX / sizeof(*p->runs))
        return -1;
    struct p2m_run *runs = realloc(p->runs, cap * sizeof(*runs));
    if (!runs)
        return -1;
    p->runs = runs;
    p->cap = cap;
    return 0;
}

/* Append run r to out[*n], joined to the last one if it touches it and has its kind. */
static void put(struct p2m_run *out, size_t *n, struct p2m_run r)
{
    if (*n && out[*n - 1].end == r.start && out[*n - 1].kind == r.kind)
        out[*n - 1].end = r.end;
    else
        out[(*n)++] = r;
}

int p2m_set_run(struct p2m *p, uint64_t gfn, uint64_t count, enum p2m_kind kind)
{
    if (count == 0 || gfn > p->nr_pages || count > p->nr_pages - gfn)
        return P2M_ERANGE;
    if ((unsigned)kind > (unsigned)P2M_FOREIGN)
        return P2M_EKIND;
    /* A run cut on both sides is one run more on each: room first, so
     * that a failure changes nothing. */
    if (p->nr_runs > SIZE_MAX - 2 || reserve(p, p->nr_runs + 2))
        return P2M_ENOMEM;
    uint64_t end = gfn + count;
    size_t lo = p2m_run_after(p, gfn);     /* the first run ending after gfn */
    size_t hi = run_from(p, end);          /* the first run starting at or after end */
    struct p2m_run *runs = p->runs, out[5];
    size_t n = 0;
    /* In order: the run before, the part of a cut run left of the range,
     * the range, the part of a cut run right of it, the run after. */
    size_t first = lo > 0 ? lo - 1 : lo, last = hi < p->nr_runs ? hi + 1 : hi;
    if (lo > 0)
        put(out, &n, runs[lo - 1]);
    if (lo < hi && runs[lo].start < gfn)
        put(out, &n, (struct p2m_run){runs[lo].start, gfn, runs[lo].kind});
    if (kind != P2M_RAM)
        put(out, &n, (struct p2m_run){gfn, end, kind});
    if (lo < hi && runs[hi - 1].end > end)
        put(out, &n, (struct p2m_run){end, runs[hi - 1].end, runs[hi - 1].kind});
    if (hi < p->nr_runs)
        put(out, &n, runs[hi]);
    /* runs[first, last) become out[0, n). */
    memmove(&runs[first + n], &runs[last], (p->nr_runs - last) * sizeof(*runs));
    memcpy(&runs[first], out, n * sizeof(*runs));
    p->nr_runs = p->nr_runs - (last - first) + n;
    return P2M_OK;
}
