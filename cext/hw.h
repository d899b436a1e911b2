/*
 * hw.h - the simulated hardware under xenemu: machine memory, a VT-d-like
 * IOMMU (second-level I/O page tables, IOTLB, context entries) and DMA by PCI
 * devices with fault recording.
 *
 * This is the public header of cext/'s hardware (tracepack.h is the other
 * public header, for trace records). It describes every piece of data
 * the hardware owns, so that the hot state (page tables, per-frame metadata,
 * IOTLB) never becomes one Python object per page: Python calls in once per
 * operation or per batch and passes runs of numbers as flat arrays. What the
 * .c files share among themselves (inline helpers, cross-file functions) is
 * in hw_internal.h.
 *
 * Python's declarations are this text: xenemu/hw/_build.py hands the part
 * between the "BEGIN cffi public" and "END cffi public" marks to cffi's
 * cdef, so adding a function or a field here is all the binding needs. cffi
 * parses plain declarations only, so the marked part holds prototypes,
 * structs, enums and integer constants as `#define NAME value` (cffi takes
 * the value from the compiler): no other preprocessor line and no function
 * body (_build.py refuses them with the line at fault).
 *
 * Everything here is independent of Xen's semantics (domains, p2m, errno):
 * the Xen layer above maps these status codes to its own errors.
 */
#ifndef XENEMU_HW_H
#define XENEMU_HW_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN cffi public */

/* --- constants ----------------------------------------------------------- */

#define HW_PAGE_SHIFT 12
#define HW_PAGE_SIZE (1ULL << HW_PAGE_SHIFT)

/* A second-level PTE as in VT-d: bit 0 read, bit 1 write, the address field
 * (bits 12..51) holds mfn << 12. An entry is present when R or W is set, so a
 * zeroed table is an empty table, and non-leaf entries carry R|W. */
#define HW_PTE_R 0x1ULL
#define HW_PTE_W 0x2ULL
#define HW_PTE_PERM (HW_PTE_R | HW_PTE_W)
#define HW_PTE_ADDR 0x000FFFFFFFFFF000ULL
#define HW_PT_ENTRIES 512
#define HW_PT_SHIFT 9

/* The address field limits machine memory to 2^52 bytes; 2^40 frames. */
#define HW_MAX_FRAMES (1ULL << 40)

/* Owner of a free or hypervisor-owned (e.g. page-table) frame. */
#define HW_OWNER_NONE 0xFFFFu

/* No context: a device attached to it is blocked (all its DMA faults). */
#define HW_CTX_NONE 0xFFFFFFFFu

/* Table sizes: 16-bit domain ids as in VT-d, a bus number space of
 * devices, and a fault log far larger than hardware's few registers. */
#define HW_MAX_CTX 65535u
#define HW_MAX_DEV 65536u
#define HW_MAX_FAULTS 65536u

/* Interrupt (MSI) window: DMA writes there are interrupts, never memory. */
#define HW_INTR_FIRST 0xFEE00000ULL
#define HW_INTR_LAST 0xFEEFFFFFULL

/* Status codes returned by every operation (0 = success). */
enum hw_status {
    HW_OK = 0,
    HW_E_INVAL = 1,      /* argument out of its domain (perm, sizes, ...) */
    HW_E_NOCTX = 2,      /* context id not allocated */
    HW_E_RANGE = 3,      /* dfn/address beyond the IOMMU's address width */
    HW_E_BADFRAME = 4,   /* mfn outside the machine, or frame not in use */
    HW_E_PRESENT = 5,    /* map: dfn already mapped */
    HW_E_NOTPRESENT = 6, /* unmap/lookup: no mapping at dfn */
    HW_E_NOMEM = 7,      /* no free machine frame (e.g. for a table page) */
    HW_E_BUSY = 8,       /* context has devices, or is being torn down */
    HW_E_NODEV = 9,      /* device not registered */
    HW_E_EXISTS = 10,    /* device already registered */
    HW_E_NOSPC = 11,     /* context or device table full */
    HW_E_STALE = 12,     /* check mode: an IOTLB hit disagrees with tables */
    HW_E_FAULT = 13,     /* DMA stopped by a fault (recorded in the log) */
    HW_E_REFCOUNT = 14,  /* reference count would overflow / go below 0 */
    HW_E_INJECTED = 15,  /* a failure the fault injector asked for */
    HW_E_PENDING = 16,   /* DMA waits on a page request (hw_prq_*) */
};

/* Translation fault kinds (0 = translated), as recorded in the fault log
 * and returned per address by hw_translate. */
enum hw_fault {
    HW_FAULT_NONE = 0,
    HW_FAULT_NOT_PRESENT = 1, /* no present leaf entry */
    HW_FAULT_WRITE = 2,       /* write to an entry without W */
    HW_FAULT_READ = 3,        /* read from an entry without R */
    HW_FAULT_WIDTH = 4,       /* address above 2^width - 1 */
    HW_FAULT_INTR = 5,        /* DMA into the interrupt window */
    HW_FAULT_BLOCKED = 6,     /* device attached to no context */
    HW_FAULT_S1_TABLE = 7,    /* nested: stage 2 does not map a stage-1 table
                               * page readable, or a stage-1 PS entry */
    HW_FAULT_NO_PASID = 8,    /* nested: (device, PASID) bound to nothing */
};

/* --- fault injection ----------------------------------------------------- */

/*
 * Deterministic fault injection in the style of Linux's fail-nth (as
 * iommufd's self-tests use it): armed with a set of sites and n, the nth
 * event at one of those sites fails, once, and the injector disarms. A
 * harness walks n = 1, 2, ... over a scenario until nothing fires, so every
 * failure point of the scenario is taken once. The sites:
 *   TABLE  a page-table page (a context's root or a lower table) is taken
 *          from machine memory: fails as HW_E_NOMEM;
 *   FLUSH  an explicit IOTLB invalidation (hw_inval_pages / hw_inval_ctx):
 *          fails as HW_E_INJECTED and drops nothing, as a timed-out
 *          invalidation leaves the cache as it was;
 *   REF    one page reference is taken (hw_refs_take / hw_refs_adjust +1):
 *          fails as HW_E_INJECTED at that page.
 * Freeing a context, dropping references and DMA never fail.
 */
enum hw_inject_site {
    HW_INJECT_TABLE = 1u << 0,
    HW_INJECT_FLUSH = 1u << 1,
    HW_INJECT_REF = 1u << 2,
    HW_INJECT_ALL = 7u,
};

struct hw_inject {
    uint64_t countdown;    /* events until the failure; 0 = disarmed */
    uint64_t seen;         /* events at the armed sites since arming */
    uint32_t sites;        /* enum hw_inject_site bits */
    uint32_t fired;        /* the site that failed (0 = none yet) */
};

/* --- machine memory ------------------------------------------------------ */

/*
 * Machine frames and their metadata. Every array is one anonymous
 * MAP_NORESERVE mapping, so a 4 GiB machine costs only the pages touched and
 * a never-touched entry reads as zero. The encodings are chosen so that zero
 * is the right initial value: a free frame is all zero bytes, state 0, owner
 * stored XOR 0xFFFF (so a zero entry reads as HW_OWNER_NONE).
 *
 * Allocation is O(1): frames below `watermark` have been handed out at least
 * once; freed frames go on `free_stack` and are reused first (LIFO).
 * Invariant: every free frame is zero (never touched, or MADV_DONTNEED on
 * free), so page-table pages need no clearing and freeing returns memory.
 */
struct hw_machine {
    uint8_t *mem;         /* nframes * 4 KiB of machine memory */
    uint32_t *refcount;   /* page references (taken by the Xen layer) */
    uint16_t *owner_x;    /* owner domid XOR 0xFFFF */
    uint8_t *in_use;      /* 1 while allocated: catches double free */
    uint64_t *free_stack; /* freed mfns, top at free_top - 1 */
    uint64_t *m2p;        /* machine-to-phys: the gfn each frame backs (Xen's M2P) */
    uint64_t nframes;
    uint64_t watermark;
    uint64_t free_top;
    uint64_t used;        /* frames currently allocated */
    uint32_t holders;     /* creator + IOMMUs using it; freed at zero */
    struct hw_inject inject;
};

/* size is in bytes, a non-zero multiple of 4 KiB below HW_MAX_FRAMES pages.
 * Returns NULL on bad size or when the mappings can't be made. The machine
 * is counted: each IOMMU holds it (its tables live there), so whichever of
 * the creator and the IOMMUs lets go last frees it, in any order (Python's
 * collector does not order finalizers). */
struct hw_machine *hw_machine_create(uint64_t size);
void hw_machine_put(struct hw_machine *m);

/* Allocate n frames for `owner` into out[0..n): all or nothing
 * (HW_E_NOMEM leaves nothing allocated). Refcounts start at 0. */
int hw_frames_alloc(struct hw_machine *m, uint16_t owner, uint64_t n,
                    uint64_t *out);
/* Free n frames: all must be in use with refcount 0, else nothing is freed
 * and *bad is the index of the first offender (HW_E_BADFRAME/REFCOUNT). */
int hw_frames_free(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                   uint64_t *bad);
/* Take (delta +1) or drop (delta -1) one reference on each of n frames.
 * mfns == NULL means the contiguous run first..first+n-1. All or nothing:
 * on error *bad is the index of the first frame that is outside the
 * machine, not in use, or whose count would overflow or underflow. */
int hw_refs_adjust(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                   uint64_t n, int delta, uint64_t *bad);
/* Take one reference on each of n frames in order, as Xen's get_page does
 * page by page: stops at the first frame outside the machine or not in use
 * (HW_E_BADFRAME), at the maximum count (HW_E_REFCOUNT) or refused by the
 * injector (HW_E_INJECTED). *done = references taken; they are kept. */
int hw_refs_take(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                 uint64_t n, uint64_t *done);
/* Read refcounts and owners of n frames (either output may be NULL). */
int hw_frames_info(const struct hw_machine *m, const uint64_t *mfns,
                   uint64_t n, uint32_t *refs, uint16_t *owners,
                   uint64_t *bad);
/* Give n in-use frames to a new owner (all or nothing). */
int hw_frames_set_owner(struct hw_machine *m, const uint64_t *mfns,
                        uint64_t n, uint16_t owner, uint64_t *bad);
/* M2P: record that frames mfns[i] back gfns first_gfn + i (all or nothing,
 * frames must be in use), and read the gfns of n frames (HW_GFN_INVALID for
 * a frame not in use). */
#define HW_GFN_INVALID UINT64_MAX
int hw_m2p_set(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
               uint64_t first_gfn, uint64_t *bad);
void hw_m2p_read(const struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                 uint64_t *gfns);
/* Copy bytes out of / into machine memory at machine address maddr. */
int hw_mem_read(const struct hw_machine *m, uint64_t maddr, void *buf,
                uint64_t len);
int hw_mem_write(struct hw_machine *m, uint64_t maddr, const void *buf,
                 uint64_t len);

/* Arm the injector: the nth event (n >= 1) at one of `sites` fails; n = 0
 * disarms. Either way the counts start again (HW_E_INVAL: sites not a
 * non-empty subset of HW_INJECT_ALL while n > 0). */
int hw_inject_arm(struct hw_machine *m, uint32_t sites, uint64_t n);

/* --- IOTLB --------------------------------------------------------------- */

/* Counters kept per IOMMU and per context. `walks` counts page-table entries
 * read by the hardware walker (one per level visited), so a miss that stops
 * at a non-present upper entry costs fewer walks than a full one. */
struct hw_counters {
    uint64_t hits;
    uint64_t misses;
    uint64_t walks;
    uint64_t invalidations; /* invalidation requests, not entries dropped */
    uint64_t stale;         /* check mode: hits found stale */
};

/* One cached translation, tagged by (context id, dfn) so contexts never see
 * each other's entries. Only present translations are cached: a not-present
 * walk fills nothing, so map never needs an invalidation (there is no
 * negative entry to go stale), and map never overwrites a present entry. */
struct hw_tlb_entry {
    uint64_t dfn;
    uint64_t mfn;
    uint32_t ctx;
    uint8_t perm;  /* HW_PTE_R / HW_PTE_W */
    uint8_t valid;
    uint8_t clean; /* dirty tracking: writable, cached with D clear */
};

/* Set-associative: `ways` entries per set, set chosen by a hash of
 * (ctx, dfn); a full set evicts round-robin (rr[set]). Deterministic, so the
 * pure-Python reference reproduces hits and misses exactly. */
struct hw_iotlb {
    struct hw_tlb_entry *e; /* nsets * ways */
    uint8_t *rr;            /* next victim way per set */
    uint32_t nsets;         /* power of two */
    uint32_t ways;
};

/* --- IOMMU, contexts and devices ----------------------------------------- */

enum hw_ctx_state { HW_CTX_FREE = 0, HW_CTX_LIVE = 1, HW_CTX_DYING = 2 };

/* A budget of table pages shared by contexts: a domain's PV-IOMMU arena,
 * or its default context's tables. Pool 0 has no limit (a context starts
 * there); pools 1..HW_MAX_POOLS-1 have the limit the hypervisor sets
 * (0 = none): two per domain, for up to 1023 domains. A table page a map
 * needs beyond its pool's limit is HW_E_NOMEM, as a spent arena is in Xen. */
#define HW_MAX_POOLS 2048u
struct hw_pool {
    uint64_t limit;
    uint64_t used;         /* table pages of the pool's contexts, roots included */
    struct hw_counters cnt; /* of its contexts, freed ones included: a domain's */
};

/* A hardware translation domain (a VT-d domain id): one root table. */
struct hw_ctx {
    uint64_t root;         /* mfn of the top-level table */
    uint64_t mapped;       /* present leaf entries */
    uint64_t tables;       /* table pages, root included */
    uint64_t td_cursor;    /* teardown: next dfn to examine */
    uint32_t ndevices;     /* devices whose context entry points here */
    uint32_t pool;         /* whose budget its table pages count against */
    uint8_t state;         /* enum hw_ctx_state */
    struct hw_counters cnt;
    /* Nested contexts (xenemu's extension): no tables of their own, a
     * stage-1 root in the parent's input space and the parent (a live
     * context that is not nested) as stage 2. */
    uint64_t s1_root;      /* nested: stage-1 root frame (parent's dfn) */
    uint32_t parent;       /* nested: the stage-2 context */
    uint32_t nchildren;    /* nested contexts whose stage 2 this is */
    uint32_t npasids;      /* nested: (device, PASID) pairs bound here */
    uint8_t nested;
    /* Page requests (hw_prq_*): on for this nested context, last group. */
    uint8_t prq;
    uint32_t prq_group;
    uint8_t dirty_track;   /* the walker keeps A/D bits (hw_dirty_track) */
};

/* A PCI device's context entry: `ctx` is the only thing DMA reads, and
 * reattach replaces it with one aligned 32-bit store, so a device always
 * translates through either the old or the new context, never "none". */
struct hw_device {
    uint32_t sbdf;         /* seg << 16 | bus << 8 | devfn */
    uint32_t ctx;          /* HW_CTX_NONE = blocked */
    uint8_t used;
};

/* One fault-recording slot, like VT-d's fault recording registers. */
struct hw_fault_rec {
    uint64_t addr;
    uint32_t sbdf;
    uint8_t kind;          /* enum hw_fault */
    uint8_t write;
};

/* A (device, PASID) -> nested context binding: a device's PASID table
 * entry. The IOMMU keeps them in one compact array. */
struct hw_pasid_bind {
    uint32_t sbdf;
    uint32_t pasid;
    uint32_t ctx;
};

/* A page request (hw_prq_*): a recoverable stage-1 not-present fault of a
 * DMA with a PASID, waiting for the guest's answer. */
struct hw_page_req {
    uint64_t addr;         /* the faulting address */
    uint32_t sbdf;
    uint32_t pasid;
    uint32_t ctx;          /* the nested context */
    uint32_t group;        /* 1.., unique among the context's requests */
    uint8_t write;
    uint8_t state;         /* enum hw_prq_state */
    uint8_t code;          /* enum hw_prq_code, once answered */
};

struct hw_iommu {
    struct hw_machine *m;
    uint32_t width;        /* 39 (3 levels) or 48 (4 levels) */
    uint32_t levels;
    uint64_t max_iova;     /* 2^width - 1 */
    struct hw_ctx *ctx;    /* max_ctx slots, id = index */
    uint32_t *ctx_free;    /* freed ids, reused LIFO before the watermark */
    uint32_t max_ctx;
    uint32_t ctx_watermark;
    uint32_t ctx_free_top;
    struct hw_pool *pools; /* HW_MAX_POOLS */
    struct hw_device *dev;
    uint32_t max_dev;
    struct hw_fault_rec *faults;
    uint32_t fault_cap;
    uint32_t nfaults;
    uint8_t fault_overflow; /* a fault arrived with the log full: dropped */
    uint8_t check;          /* verify every IOTLB hit against the tables */
    struct hw_iotlb tlb;
    struct hw_counters cnt;
    struct hw_pasid_bind *pasids; /* HW_MAX_PASID_BINDS, npasids used */
    uint32_t npasids;
    struct hw_page_req *prq; /* HW_MAX_PAGE_REQS, nprq used, oldest first */
    uint32_t nprq;
    uint32_t prq_answered;   /* of them, answered and not yet retried */
};

/* width must be 39 or 48; iotlb_entries and ways powers of two with
 * ways <= entries <= 2^20 and ways <= 64. NULL on bad arguments. The IOMMU
 * takes its table pages from m, which must outlive it. */
struct hw_iommu *hw_iommu_create(struct hw_machine *m, uint32_t width,
                                 uint32_t max_ctx, uint32_t max_dev,
                                 uint32_t iotlb_entries, uint32_t iotlb_ways,
                                 uint32_t fault_cap);
/* Frees IOMMU bookkeeping and every table page still held. */
void hw_iommu_destroy(struct hw_iommu *io);
void hw_iommu_set_check(struct hw_iommu *io, int on);

/* Context lifetime. alloc takes a root table frame (HW_E_NOMEM) and an id
 * (HW_E_NOSPC). Teardown is preemptible: each call examines at most `budget`
 * leaf slots, writes the mfns it unmaps to out (out_cap >= budget), and
 * sets *finished when the context is gone (tables freed, id reusable). The
 * first call refuses a context with devices (HW_E_BUSY), invalidates its
 * IOTLB entries and marks it dying: from then on only teardown accepts it. */
int hw_ctx_alloc(struct hw_iommu *io, uint32_t *id);
int hw_ctx_teardown(struct hw_iommu *io, uint32_t id, uint64_t budget,
                    uint64_t *out, uint64_t out_cap, uint64_t *written,
                    int *finished);
/* Table-page budgets. set_limit: limit 0 means none (pool 0 always has
 * none; HW_E_INVAL). ctx_set_pool moves a context's table pages (its root
 * at least) to another pool: HW_E_NOMEM if they do not fit its limit. */
int hw_pool_set_limit(struct hw_iommu *io, uint32_t pool, uint64_t limit);
int hw_pool_usage(const struct hw_iommu *io, uint32_t pool, uint64_t *used,
                  uint64_t *limit);
int hw_ctx_set_pool(struct hw_iommu *io, uint32_t id, uint32_t pool);

/* Counts and counters of one context / of the whole IOMMU. */
int hw_ctx_info(const struct hw_iommu *io, uint32_t id, uint64_t *mapped,
                uint64_t *tables, struct hw_counters *cnt);
void hw_iommu_counters(const struct hw_iommu *io, struct hw_counters *cnt);
/* Counters of the contexts that counted against a pool while they did,
 * outliving the contexts (a domain's IOTLB counts, `xenemu top`); clear
 * starts them again (a pool given to a new domain). HW_E_INVAL: no pool. */
int hw_pool_counters(const struct hw_iommu *io, uint32_t pool,
                     struct hw_counters *cnt);
int hw_pool_clear_counters(struct hw_iommu *io, uint32_t pool);

/* Map n pages dfn.. -> mfns[i] (or first_mfn + i when mfns is NULL) with
 * perm (non-empty subset of R|W). Stops at the first page that is beyond the
 * width, has a bad mfn, is already present, or needs a table page when none
 * is left; *done counts pages mapped before it. */
int hw_map(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
           const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
           uint64_t *done);
/* hw_map that first takes one reference on each page's frame, as Xen's
 * map_pages does page by page (get_page, then iommu_map): a page whose
 * reference can't be taken stops the run (HW_E_BADFRAME for a frame not in
 * use, HW_E_REFCOUNT, HW_E_INJECTED), and a page not mapped keeps no
 * reference. Mapped pages keep theirs (the unmap caller drops them). */
int hw_map_ref(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
               const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
               uint64_t *done);
/* Unmap n pages from dfn, writing each unmapped mfn to out (out_cap >= n).
 * Stops at the first hole (HW_E_NOTPRESENT) or dfn beyond the width. With
 * flush set, the done pages are invalidated from the IOTLB; without it the
 * caller must invalidate (as Xen defers iommu_iotlb_flush). */
int hw_unmap(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
             uint64_t *out, uint64_t out_cap, int flush, uint64_t *done);
/* Software read of the tables (no IOTLB, no counters). */
int hw_lookup(struct hw_iommu *io, uint32_t id, uint64_t dfn,
              uint64_t *mfn, uint32_t *perm);
/* Software read of n entries from dfn (no IOTLB, no counters): mfns[i] and
 * perms[i] (0 = not present) for dfn + i. For dumps, not for DMA. */
int hw_lookup_run(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  uint64_t *mfns, uint8_t *perms);
/* The first mapped dfn at or above dfn (HW_E_NOTPRESENT if none): a
 * software read that skips empty tables whole, for dumps and snapshots. */
int hw_next_mapped(struct hw_iommu *io, uint32_t id, uint64_t dfn,
                   uint64_t *next);
/* Translate n device addresses through the IOTLB for a read or a write:
 * maddr[i] is the machine address, fault[i] the fault kind (0 = ok; maddr
 * is then 0). Returns HW_E_STALE (after counting it) at the first stale hit
 * in check mode, with *done the addresses translated before it. DMA uses it
 * page by page (n = 1). */
int hw_translate(struct hw_iommu *io, uint32_t id, const uint64_t *addrs,
                 uint64_t n, int write, uint64_t *maddr, uint8_t *fault,
                 uint64_t *done);

/* IOTLB invalidation: pages [dfn, dfn+n) of a context, a context, all. */
int hw_inval_pages(struct hw_iommu *io, uint32_t id, uint64_t dfn,
                   uint64_t n);
int hw_inval_ctx(struct hw_iommu *io, uint32_t id);
void hw_inval_all(struct hw_iommu *io);
/* Audit: *stale = valid IOTLB entries that disagree with the tables (their
 * context gone, or no longer the mapping cached). Zero unless an
 * invalidation was skipped or failed. */
void hw_tlb_audit(struct hw_iommu *io, uint64_t *stale);


/* Devices. add/remove register an sbdf (a removed device is detached).
 * attach points the device's context entry at a live context, or at none
 * (HW_CTX_NONE = blocked), in one store. */
int hw_dev_add(struct hw_iommu *io, uint32_t sbdf);
int hw_dev_remove(struct hw_iommu *io, uint32_t sbdf);
int hw_dev_attach(struct hw_iommu *io, uint32_t sbdf, uint32_t ctx);
int hw_dev_context(const struct hw_iommu *io, uint32_t sbdf, uint32_t *ctx);

/* DMA of len bytes at device address addr, page by page through the
 * device's current context. *done = bytes moved; a fault stops the transfer,
 * is recorded in the log (if it has room) and in *fault (if not NULL: the
 * caller learns its fault even when the log is full) and returns
 * HW_E_FAULT. */
int hw_dma(struct hw_iommu *io, uint32_t sbdf, uint64_t addr, void *buf,
           uint64_t len, int write, uint64_t *done,
           struct hw_fault_rec *fault);

/* Fault log: copy up to cap records (oldest first) and the overflow flag;
 * clear empties the log and resets the flag. */
uint32_t hw_faults_read(const struct hw_iommu *io, struct hw_fault_rec *out,
                        uint32_t cap, int *overflow);
void hw_faults_clear(struct hw_iommu *io);
/* Replace the log with n records and the overflow flag, as a restored
 * machine's log was (no DMA, no IOTLB or counter change). All or nothing:
 * each record must be a fault this IOMMU records, by a registered device
 * (HW_E_NODEV) of a kind its address allows (HW_E_INVAL: WIDTH above
 * max_iova, INTR in the interrupt window, NOT_PRESENT / READ (a read) /
 * WRITE (a write) elsewhere, BLOCKED anywhere); *bad is the index of the
 * first refused. The log as a whole: more records than it holds is
 * HW_E_NOSPC and overflow with room left HW_E_INVAL, both with *bad = n. */
int hw_faults_load(struct hw_iommu *io, const struct hw_fault_rec *recs,
                   uint32_t n, int overflow, uint32_t *bad);

/* --- nested translation and PASIDs (xenemu's extension) ------------------ */

/*
 * A nested context translates requests with a PASID in two stages: stage 1
 * is a table in the x86-64 4-level format (VT-d scalable-mode first-level
 * tables) rooted at a frame of its parent's input space, every table page
 * read through stage 2 (the parent's second-level tables); stage 2 then
 * translates stage 1's output. Both permission sets apply; the IOTLB caches
 * the combined translation tagged by (context, PASID, page): the tag is
 * page | pasid << HW_TLB_PASID_SHIFT, so requests without a PASID keep
 * their tags. The guest keeps stage 1 coherent (hw_inval_nested); any
 * invalidation of a parent drops all its children's cached translations.
 */
#define HW_S1_P 0x1ULL
#define HW_S1_RW 0x2ULL
#define HW_S1_PS 0x80ULL
#define HW_S1_LEVELS 4
#define HW_PASID_MAX 0xFFFFFu
#define HW_PASID_ANY 0xFFFFFFFFu
#define HW_TLB_PASID_SHIFT 36
#define HW_MAX_PASID_BINDS 4096u

/* A nested context over live, non-nested `parent` (HW_E_INVAL if nested,
 * HW_E_NOCTX / HW_E_BUSY), stage-1 root s1_root (HW_E_RANGE above the
 * width). It takes an id (HW_E_NOSPC) and no frame. hw_ctx_teardown frees
 * it (HW_E_BUSY while PASIDs are bound); a parent with children refuses
 * teardown (HW_E_BUSY). Nested contexts refuse map, unmap, lookup,
 * hw_translate, hw_inval_pages/ctx and device attach (HW_E_INVAL). */
int hw_ctx_alloc_nested(struct hw_iommu *io, uint32_t parent,
                        uint64_t s1_root, uint32_t *id);
/* Bind (sbdf, pasid) to nested context ctx: HW_E_NODEV, HW_E_INVAL (pasid
 * 0 or above HW_PASID_MAX, ctx not nested), HW_E_NOCTX/BUSY, HW_E_EXISTS
 * (already bound), HW_E_NOSPC (HW_MAX_PASID_BINDS in use). */
int hw_pasid_attach(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                    uint32_t ctx);
/* Unbind, dropping the pair's cached translations (HW_E_NOTPRESENT). */
int hw_pasid_detach(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid);
int hw_pasid_context(const struct hw_iommu *io, uint32_t sbdf,
                     uint32_t pasid, uint32_t *ctx);
/* hw_translate for a nested context and a PASID. */
int hw_translate_nested(struct hw_iommu *io, uint32_t id, uint32_t pasid,
                        const uint64_t *addrs, uint64_t n, int write,
                        uint64_t *maddr, uint8_t *fault, uint64_t *done);
/* Guest invalidation of a nested context: pages [dfn, dfn+n) of `pasid`
 * (clipped to the PASID's tags), or, pasid HW_PASID_ANY, everything of the
 * context. A FLUSH injection event, as the other invalidations. */
int hw_inval_nested(struct hw_iommu *io, uint32_t id, uint32_t pasid,
                    uint64_t dfn, uint64_t n);
/* hw_dma for a request with a PASID (1..HW_PASID_MAX): an unbound pair
 * faults HW_FAULT_NO_PASID. Through a context with page requests on, a
 * stage-1 not-present page stops it HW_E_PENDING instead (not logged;
 * *fault holds the page's address; hw_prq_group names the request). */
int hw_dma_pasid(struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                 uint64_t addr, void *buf, uint64_t len, int write,
                 uint64_t *done, struct hw_fault_rec *fault);
/* Audit of nested contexts' IOTLB entries: *guest_stale = those that
 * disagree with the tables now, the guest having edited stage 1 without
 * flushing (hw_tlb_audit leaves them out: hardware keeps them too). */
void hw_tlb_audit_nested(struct hw_iommu *io, uint64_t *guest_stale);

/* --- I/O page faults (xenemu's extension) --------------------------------- */

/*
 * A nested context with page requests on (hw_prq_enable) makes a DMA's
 * stage-1 not-present fault recoverable, as PCIe PRI with VT-d's page
 * request queue: instead of a fault-log record, a page request {device,
 * PASID, address, write, group} is queued and the DMA stops with
 * HW_E_PENDING (*done = bytes moved before the page). The guest reads the
 * requests (hw_prq_read) and answers each group (hw_prq_respond). The DMA
 * is then retried by its issuer, from the page that waited: after SUCCESS
 * the page is translated again, a fault now being non-recoverable (logged);
 * after INVALID or FAILURE it faults NOT_PRESENT (logged) without a walk.
 * While a request is unanswered, a retry of its page is HW_E_PENDING again
 * (no second request). The queue is bounded: HW_PRQ_PER_CTX requests of one
 * context outstanding (queued, read or answered and not yet retried), and
 * HW_MAX_PAGE_REQS for the IOMMU; a fault beyond either is non-recoverable
 * (logged NOT_PRESENT), as a full queue's request is answered as a failure.
 * Unbinding the (device, PASID) pair drops its requests.
 */
#define HW_PRQ_PER_CTX 32u
#define HW_MAX_PAGE_REQS 4096u
enum hw_prq_state { HW_PRQ_QUEUED = 0, HW_PRQ_READ = 1, HW_PRQ_ANSWERED = 2 };
/* PCIe's page request group response codes. */
enum hw_prq_code { HW_PRQ_SUCCESS = 0, HW_PRQ_INVALID = 1,
                   HW_PRQ_FAILURE = 15 };

/* Turn page requests on for nested context id (HW_E_NOCTX, HW_E_INVAL if
 * not nested). They stay on for its life. */
int hw_prq_enable(struct hw_iommu *io, uint32_t id);
/* Copy up to cap of context id's queued (not yet read) requests, oldest
 * first, to out; *n = how many. With consume set they become read (then
 * waiting for an answer); without it nothing changes (a caller that may
 * fail to deliver them peeks first). HW_E_NOCTX, HW_E_INVAL (not nested,
 * or page requests off). */
int hw_prq_read(struct hw_iommu *io, uint32_t id, struct hw_page_req *out,
                uint32_t cap, int consume, uint32_t *n);
/* Answer context id's request `group` (queued or read, not yet answered:
 * else HW_E_NOTPRESENT) with code (HW_E_INVAL if not an hw_prq_code). */
int hw_prq_respond(struct hw_iommu *io, uint32_t id, uint32_t group,
                   uint32_t code);
/* The group of the outstanding request for (sbdf, pasid, page of addr):
 * what a DMA that stopped HW_E_PENDING waits on (HW_E_NOTPRESENT). */
int hw_prq_group(const struct hw_iommu *io, uint32_t sbdf, uint32_t pasid,
                 uint64_t addr, uint32_t *group);
/* Every outstanding request of the IOMMU, oldest first (up to cap; the
 * count is returned): for dumps, snapshots and audits. */
uint32_t hw_prq_list(const struct hw_iommu *io, struct hw_page_req *out,
                     uint32_t cap);
/* Put a request back as a restored machine had it, at the end of the
 * queue: all its fields as hw_prq_list gave them (HW_E_INVAL for a state,
 * code, address or write the queue could not hold, or a group 0 or in use
 * by the context; HW_E_NOCTX / HW_E_NOTPRESENT for a context without page
 * requests or a pair not bound to it; HW_E_NOSPC past the bounds). */
int hw_prq_load(struct hw_iommu *io, const struct hw_page_req *r);

/* --- dirty tracking (xenemu's extension, dirty.c) ----------------------- */

/*
 * VT-d's second-level A/D support: in a context with dirty tracking on, the
 * walker sets A (bit 8) in every present leaf entry it loads into the IOTLB
 * (any access, even one its permissions then refuse: the entry is cached,
 * so a later hit needs no update) and D (bit 9) for a write the entry
 * allows. Upper-level entries keep no A/D bits. The IOTLB: an entry cached
 * writable while D was clear is marked `clean`, and a write that hits it is
 * handled as a miss (the entry dropped, the table walked again, D set, the
 * entry refilled), as VT-d sets D only through a walk. Contexts without
 * tracking never have clean entries, so their hits cost nothing more.
 */
#define HW_PTE_A (1ULL << 8)
#define HW_PTE_D (1ULL << 9)

/* Tracking on or off for a live, non-nested context (HW_E_INVAL if nested).
 * Turning it on drops the context's cached translations, so that every
 * write from then on walks and sets D; off leaves the bits as they are. */
int hw_dirty_track(struct hw_iommu *io, uint32_t id, int on);
/* Bitmaps of pages [dfn, dfn + n): bit i of dirty (byte i / 8, bit i % 8,
 * as iommufd's) is D of page dfn + i, bit i of accessed (may be NULL) its A
 * bit; pages not mapped read 0. len: the bytes of each bitmap, at least
 * (n + 7) / 8 (HW_E_INVAL). HW_E_RANGE: the range leaves the width. With
 * `clear`, D bits are cleared (A is kept) and the IOTLB entries of the
 * cleared pages dropped (with the context's nested children's), counted as
 * one invalidation, so the next write walks and sets D again. *ndirty: the
 * pages found dirty. A context without tracking reads all zero. */
int hw_dirty_read(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  int clear, uint8_t *dirty, uint8_t *accessed, uint64_t len,
                  uint64_t *ndirty);
/* Set A and D bits of pages [dfn, dfn + n) as a restored machine had them
 * (bitmaps as hw_dirty_read's; no IOTLB change: a restored IOTLB is empty).
 * All or nothing: a context without tracking, or a bitmap shorter than
 * (n + 7) / 8 bytes, is HW_E_INVAL; a bit of a page not mapped
 * HW_E_NOTPRESENT and D without A HW_E_INVAL, both with *bad the page's
 * index; HW_E_RANGE: the range leaves the width. */
int hw_dirty_load(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  const uint8_t *dirty, const uint8_t *accessed, uint64_t len,
                  uint64_t *bad);

/* END cffi public */

#endif
