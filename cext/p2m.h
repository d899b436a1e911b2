/*
 * p2m.h - a domain's physical-to-machine map, as C reads it: the one copy.
 *
 * The frames of guest RAM are one uint64 array indexed by gfn, lent by
 * Python's array('Q') (xenemu/p2m.py holds a buffer export on it, so it is
 * never resized while lent). The gfns that are not plain RAM are kept here
 * as sorted, disjoint runs [start, end) of one kind, adjacent runs of one
 * kind joined, so that checking or setting a run of gfns is a binary search
 * and a move of a few entries whatever its length. Python's P2m (page-in
 * times, foreign owners, settling a page-in whose time has come) changes
 * the runs only through p2m_set_run, and reads them through the functions
 * below: there is no other copy to go stale.
 *
 * The number of runs is bounded by nr_pages (each holds at least one gfn);
 * the run array grows by realloc and a failure changes nothing
 * (P2M_ENOMEM: Python raises MemoryError).
 *
 * Like hw.h, the part between the marks is the cffi declaration
 * (xenemu/hw/_build.py reads it): declarations and `#define NAME value` only.
 */
#ifndef XENEMU_P2M_H
#define XENEMU_P2M_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN cffi public */

/* xenemu.p2m.P2mType, in this order (P2m's _KINDS maps one to the other). */
enum p2m_kind { P2M_RAM = 0, P2M_INVALID = 1, P2M_PAGED_OUT = 2, P2M_PAGING_IN = 3,
                P2M_SHARED = 4, P2M_MMIO = 5, P2M_FOREIGN = 6 };

/* What p2m_set_run returns. */
#define P2M_OK 0
#define P2M_ERANGE 1        /* count 0, or gfns beyond nr_pages */
#define P2M_EKIND 2         /* not an enum p2m_kind */
#define P2M_ENOMEM 3        /* the run array could not grow: nothing changed */

struct p2m_run {
    uint64_t start;         /* first gfn */
    uint64_t end;           /* one past the last: start < end <= nr_pages */
    enum p2m_kind kind;     /* never P2M_RAM */
};

struct p2m {                 /* one domain's p2m */
    const uint64_t *mfns;    /* gfn -> mfn, nr_pages entries: lent by Python's array('Q') for the p2m's life */
    uint64_t nr_pages;
    struct p2m_run *runs;    /* the non-RAM runs: sorted, disjoint, adjacent runs of one kind joined */
    size_t nr_runs;
    size_t cap;              /* entries allocated at runs */
};

struct p2m *p2m_create(const uint64_t *mfns, uint64_t nr_pages);   /* NULL: no memory */
void p2m_destroy(struct p2m *p);

/* How many pages from gfn, at most n, are RAM and below nr_pages (0 if gfn >= nr_pages). */
uint64_t p2m_ram_run(const struct p2m *p, uint64_t gfn, uint64_t n);

/* The kind of gfn (P2M_INVALID at or beyond nr_pages). */
enum p2m_kind p2m_kind_at(const struct p2m *p, uint64_t gfn);

/* gfns [gfn, gfn + count) become `kind`: the runs they cut are split, and
 * what touches and has one kind is joined. P2M_OK or an error above, the
 * p2m unchanged on error. */
int p2m_set_run(struct p2m *p, uint64_t gfn, uint64_t count, enum p2m_kind kind);

/* The index of the first run ending after gfn (nr_runs if none): the run
 * holding gfn if one does, else the next non-RAM run after it. */
size_t p2m_run_after(const struct p2m *p, uint64_t gfn);

/* The end of the run holding gfn; gfn itself when no run holds it (RAM, or
 * at or beyond nr_pages). */
uint64_t p2m_run_end(const struct p2m *p, uint64_t gfn);

/* The number of runs, and the i-th in order: 0, or -1 if i >= nr_runs. */
size_t p2m_run_count(const struct p2m *p);
int p2m_run_get(const struct p2m *p, size_t i, struct p2m_run *out);

/* END cffi public */

#endif
