/*
 * fastpath.h - the Xen-side state the C fast path reads, owned here, and
 * the fast path itself: a connection's receive buffer answered in C.
 *
 * A domain's hypercall frames arrive in a receive buffer. fp_answer walks
 * its whole CALL frames and answers the hot sub-ops (revision 1: noop,
 * query_capabilities, map_pages, unmap_pages, lookup_page; revision 2:
 * noop, query_capabilities, map_pages, unmap_pages) exactly as the Python
 * handlers of xenemu/hypercalls/iommu_op_v1.py and iommu_op_v2.py would,
 * reply bytes and machine state alike. At the first frame it does not take
 * it stops, before any side effect of that frame, and the Python handlers
 * answer it; the engine then hands the rest back. It does not take: a frame
 * the protocol would refuse, another hypercall, a sub-op outside the mask,
 * a struct outside the frame's regions, any validation failure (the gate,
 * an unusable context, nr_pages over the limit, no permission), a run that
 * meets a gfn that is not RAM, an identity (RMRR) range or a context
 * holding another domain's frames, a revision-2 run longer than a round
 * (a continuation), and everything while the fault injector is armed. What
 * it does take can still fail in the act (a dfn already mapped, above the
 * width, no table page, an unmapped dfn): those answers are the handlers'.
 *
 * State the fast path reads and nothing else owns (the rule: never a
 * mirror of Python state):
 *   struct fp_domain   per domain: its flags, its context table (pointers
 *                      to contexts, NULL = free slot), its p2m (p2m.h) and
 *                      the counts of the calls the fast path answered;
 *   struct fp_context  per IOMMU context: its hardware id, dying, its
 *                      identity (RMRR) ranges and the references it holds
 *                      on other domains' frames. xenemu.domain.Context
 *                      owns one and reads its fields from it.
 * The hardware (hw.h) owns the rest: tables, frames, references, the M2P.
 *
 * Like hw.h, the part between the marks is the cffi declaration
 * (xenemu/hw/_build.py reads it): declarations and `#define NAME value` only.
 */
#ifndef XENEMU_FASTPATH_H
#define XENEMU_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

#include "hw.h"
#include "p2m.h"
#include "tracepack.h"

/* BEGIN cffi public */

/* The hypercall it answers: __HYPERVISOR_iommu_op. */
#define FP_HYPERCALL 43

/* Machine flags (struct fp_machine.flags): fixed when the machine is built. */
#define FP_M_IOMMU 0x1u          /* the machine's IOMMU is on (config.iommu) */
#define FP_M_NESTED 0x2u         /* revision 2: xenemu's nested extension */
#define FP_M_INTENDED 0x4u       /* revision 2: rev2_semantics "intended" */

/* Domain flags (struct fp_domain.flags). */
#define FP_D_HARDWARE 0x1u
#define FP_D_IOMMU_ENABLED 0x2u
#define FP_D_OPAQUE_DEFAULT 0x4u  /* context 0 shared with the CPU's tables */
#define FP_D_NO_DMA 0x8u          /* revision 2: context 0 maps nothing */

/* Call counters: sub-ops 0..FP_NSUBOPS-1, results 0 (success) and
 * -1..-(FP_NRESULTS-1) (negated Xen errno values). */
#define FP_NSUBOPS 16
#define FP_NRESULTS 128

/* Why a frame's answer is an error (struct fp_result.why), for its log line. */
enum fp_why {
    FP_WHY_NONE = 0,
    FP_WHY_MAP_STOP = 1,       /* the map run stopped: hw_status at dfn `at` */
    FP_WHY_NO_MAPPING = 2,     /* unmap or lookup: nothing mapped at dfn `at` */
};

/* The machine's settings the fast path reads (immutable once built). */
struct fp_machine {
    struct hw_iommu *io;
    uint32_t revision;         /* 1 or 2 */
    uint32_t flags;            /* FP_M_* */
    uint32_t pages_per_round;  /* revision 2: map/unmap's pages a round */
    uint32_t max_pasid;        /* revision 2, nested: query's max_pasid */
    uint32_t subops;           /* bit n: the fast path may take sub-op n */
};

/* An identity-mapped reserved range of a context: [start, start + pages)
 * mapped dfn == mfn while `users` devices attached there have it. */
struct fp_range {
    uint64_t start;
    uint64_t pages;
    uint32_t users;
};

struct fp_context {
    uint32_t hw_id;            /* the hardware context (hw.h) */
    uint8_t dying;             /* free_context's teardown is under way */
    uint32_t nidentity;        /* identity ranges, in the order they came */
    uint32_t identity_cap;
    struct fp_range *identity;
    uint64_t foreign_refs;     /* references held on other domains' frames */
};

struct fp_domain {
    uint32_t domid;
    uint32_t flags;            /* FP_D_* */
    uint32_t nslots;           /* context 0 and the pool: ctx_no < nslots */
    struct fp_context **slot;  /* ctx_no -> its context, NULL = not allocated */
    const struct p2m *p2m;
    uint64_t *calls;           /* [FP_NSUBOPS][FP_NRESULTS]: answered here */
};

/* One frame fp_answer answered, for the log line and the counters' reader. */
struct fp_result {
    uint64_t at;               /* the dfn `why` is about */
    uint64_t done;             /* pages mapped or unmapped */
    int32_t ret;               /* the hypercall's result */
    uint32_t subop;
    uint32_t call_len;         /* the CALL frame's bytes in the input */
    uint8_t why;               /* enum fp_why */
    uint8_t hw_status;         /* FP_WHY_MAP_STOP: the hardware's status */
};

/* A context (NULL: no memory) and its end. */
struct fp_context *fp_context_create(uint32_t hw_id);
void fp_context_destroy(struct fp_context *c);
/* Identity ranges: add one (users 1; -1 if no memory or the bound of
 * `limit` ranges is reached), change a range's users by delta: the users
 * left (the range goes at 0), or -1 if there is no such range (or fewer
 * users than -delta). */
int fp_identity_add(struct fp_context *c, uint64_t start, uint64_t pages,
                    uint32_t limit);
int fp_identity_users(struct fp_context *c, uint64_t start, uint64_t pages,
                      int delta);
/* The first dfn of [dfn, dfn + n) inside an identity range of c, in *first;
 * 0 if none. */
int fp_identity_at(const struct fp_context *c, uint64_t dfn, uint64_t n,
                   uint64_t *first);

/* A domain with nslots context slots, all free (NULL: no memory), and its
 * end; resize grows or shrinks the table (slots beyond it must be free;
 * -1 if no memory, the table unchanged). */
struct fp_domain *fp_domain_create(uint32_t domid, uint32_t flags,
                                   uint32_t nslots, const struct p2m *p2m);
void fp_domain_destroy(struct fp_domain *d);
int fp_domain_resize(struct fp_domain *d, uint32_t nslots);

/* Answer the whole CALL frames at in[0..len) of domain d, as described
 * above. Each answer's REPLY frame is appended to `replies`; with `trace`
 * (not NULL) its `hc` trace record too (time t); with `results` (not NULL,
 * cap entries) one fp_result per frame. Stops at the first frame it does
 * not take, at a partial frame, after `cap` frames, or when a buffer cannot
 * grow. *frames: frames answered; *consumed: their bytes. Returns 0, or -1
 * when a buffer could not grow (the frames before are answered). */
int fp_answer(const struct fp_machine *mc, struct fp_domain *d,
              const uint8_t *in, size_t len,
              struct tp_buffer *replies, struct tp_buffer *trace, double t,
              struct fp_result *results, uint32_t cap,
              uint32_t *frames, size_t *consumed);

/* END cffi public */

#endif
