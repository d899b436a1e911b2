"""cffi build script for the simulated hardware (cext/*.c -> xenemu.hw._hwlib).

The cdef repeats only what Python calls; cext/hw.h is the authoritative
description (and explains each item). Structs Python never looks inside are
opaque; the others are declared partially (`...;`) so their layout comes
from the compiler, not from this file.
"""
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CEXT = ROOT / "cext"

CDEF = """
#define HW_PAGE_SIZE ...
#define HW_PTE_R ...
#define HW_PTE_W ...
#define HW_OWNER_NONE ...
#define HW_CTX_NONE ...
#define HW_MAX_CTX ...
#define HW_MAX_DEV ...
#define HW_MAX_FAULTS ...
#define HW_MAX_POOLS ...
#define HW_INTR_FIRST ...
#define HW_INTR_LAST ...

enum hw_status { HW_OK, HW_E_INVAL, HW_E_NOCTX, HW_E_RANGE, HW_E_BADFRAME,
                 HW_E_PRESENT, HW_E_NOTPRESENT, HW_E_NOMEM, HW_E_BUSY,
                 HW_E_NODEV, HW_E_EXISTS, HW_E_NOSPC, HW_E_STALE, HW_E_FAULT,
                 HW_E_REFCOUNT, HW_E_INJECTED, ... };
enum hw_inject_site { HW_INJECT_TABLE, HW_INJECT_FLUSH, HW_INJECT_REF,
                      HW_INJECT_ALL, ... };
struct hw_inject { uint64_t countdown; uint64_t seen; uint32_t sites;
                   uint32_t fired; };
enum hw_fault { HW_FAULT_NONE, HW_FAULT_NOT_PRESENT, HW_FAULT_WRITE,
                HW_FAULT_READ, HW_FAULT_WIDTH, HW_FAULT_INTR,
                HW_FAULT_BLOCKED, ... };

struct hw_machine { uint64_t nframes; uint64_t used; struct hw_inject inject;
                   ...; };
struct hw_iommu { uint32_t width; uint32_t levels; uint64_t max_iova;
                  uint32_t max_ctx; uint32_t max_dev; uint32_t fault_cap;
                  uint8_t check; ...; };
struct hw_counters { uint64_t hits; uint64_t misses; uint64_t walks;
                     uint64_t invalidations; uint64_t stale; };
struct hw_fault_rec { uint64_t addr; uint32_t sbdf; uint8_t kind;
                      uint8_t write; ...; };

struct hw_machine *hw_machine_create(uint64_t size);
void hw_machine_put(struct hw_machine *m);
int hw_frames_alloc(struct hw_machine *m, uint16_t owner, uint64_t n,
                    uint64_t *out);
int hw_frames_free(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                   uint64_t *bad);
int hw_refs_adjust(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                   uint64_t n, int delta, uint64_t *bad);
int hw_refs_take(struct hw_machine *m, const uint64_t *mfns, uint64_t first,
                 uint64_t n, uint64_t *done);
int hw_inject_arm(struct hw_machine *m, uint32_t sites, uint64_t n);
int hw_frames_info(const struct hw_machine *m, const uint64_t *mfns,
                   uint64_t n, uint32_t *refs, uint16_t *owners,
                   uint64_t *bad);
int hw_frames_set_owner(struct hw_machine *m, const uint64_t *mfns,
                        uint64_t n, uint16_t owner, uint64_t *bad);
int hw_m2p_set(struct hw_machine *m, const uint64_t *mfns, uint64_t n,
               uint64_t first_gfn, uint64_t *bad);
void hw_m2p_read(const struct hw_machine *m, const uint64_t *mfns, uint64_t n,
                 uint64_t *gfns);
int hw_mem_read(const struct hw_machine *m, uint64_t maddr, void *buf,
                uint64_t len);
int hw_mem_write(struct hw_machine *m, uint64_t maddr, const void *buf,
                 uint64_t len);

struct hw_iommu *hw_iommu_create(struct hw_machine *m, uint32_t width,
                                 uint32_t max_ctx, uint32_t max_dev,
                                 uint32_t iotlb_entries, uint32_t iotlb_ways,
                                 uint32_t fault_cap);
void hw_iommu_destroy(struct hw_iommu *io);
void hw_iommu_set_check(struct hw_iommu *io, int on);
int hw_ctx_alloc(struct hw_iommu *io, uint32_t *id);
int hw_ctx_teardown(struct hw_iommu *io, uint32_t id, uint64_t budget,
                    uint64_t *out, uint64_t out_cap, uint64_t *written,
                    int *finished);
int hw_ctx_info(const struct hw_iommu *io, uint32_t id, uint64_t *mapped,
                uint64_t *tables, struct hw_counters *cnt);
void hw_iommu_counters(const struct hw_iommu *io, struct hw_counters *cnt);
int hw_pool_set_limit(struct hw_iommu *io, uint32_t pool, uint64_t limit);
int hw_pool_usage(const struct hw_iommu *io, uint32_t pool, uint64_t *used,
                  uint64_t *limit);
int hw_ctx_set_pool(struct hw_iommu *io, uint32_t id, uint32_t pool);
int hw_map(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
           const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
           uint64_t *done);
int hw_map_ref(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
               const uint64_t *mfns, uint64_t first_mfn, uint32_t perm,
               uint64_t *done);
int hw_unmap(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
             uint64_t *out, uint64_t out_cap, int flush, uint64_t *done);
int hw_lookup(struct hw_iommu *io, uint32_t id, uint64_t dfn,
              uint64_t *mfn, uint32_t *perm);
int hw_lookup_run(struct hw_iommu *io, uint32_t id, uint64_t dfn, uint64_t n,
                  uint64_t *mfns, uint8_t *perms);
int hw_next_mapped(struct hw_iommu *io, uint32_t id, uint64_t dfn,
                   uint64_t *next);
int hw_translate(struct hw_iommu *io, uint32_t id, const uint64_t *addrs,
                 uint64_t n, int write, uint64_t *maddr, uint8_t *fault,
                 uint64_t *done);
int hw_inval_pages(struct hw_iommu *io, uint32_t id, uint64_t dfn,
                   uint64_t n);
int hw_inval_ctx(struct hw_iommu *io, uint32_t id);
void hw_inval_all(struct hw_iommu *io);
void hw_tlb_audit(struct hw_iommu *io, uint64_t *stale);
int hw_dev_add(struct hw_iommu *io, uint32_t sbdf);
int hw_dev_remove(struct hw_iommu *io, uint32_t sbdf);
int hw_dev_attach(struct hw_iommu *io, uint32_t sbdf, uint32_t ctx);
int hw_dev_context(const struct hw_iommu *io, uint32_t sbdf, uint32_t *ctx);
int hw_dma(struct hw_iommu *io, uint32_t sbdf, uint64_t addr, void *buf,
           uint64_t len, int write, uint64_t *done,
           struct hw_fault_rec *fault);
uint32_t hw_faults_read(const struct hw_iommu *io, struct hw_fault_rec *out,
                        uint32_t cap, int *overflow);
void hw_faults_clear(struct hw_iommu *io);
int hw_floor_gather(const uint64_t *table, uint64_t n_table,
                    const uint64_t *addrs, uint64_t n, uint64_t *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
# Paths relative to the project root, where setup.py runs the build.
ffibuilder.set_source(
    "xenemu.hw._hwlib",
    '#include "hw.h"',
    sources=sorted(str(p.relative_to(ROOT)) for p in CEXT.glob("*.c")),
    include_dirs=["cext"],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
