/* SPDX-License-Identifier: MIT */
/*
 * control.h - a small client of the daemon's control socket (msgpack maps in
 * and out, README "The control socket"), for the ops the runner checks with:
 * info, contexts, dump, dma, mem_read, faults, check. One connection, one
 * request at a time (the runner calls it from its main thread only).
 */
#ifndef WB_CONTROL_H
#define WB_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msgpack.h"

struct wb_ctl;

#define WB_MAX_DEVICES 64

struct wb_sbdf {
    uint16_t seg;
    uint8_t bus, devfn;
};

/* One domain as `info` describes it. */
struct wb_domain_info {
    bool found, hardware;
    uint64_t memory_pages;
    unsigned int nr_devices;
    struct wb_sbdf devices[WB_MAX_DEVICES];
    unsigned int device_ctx[WB_MAX_DEVICES];     /* the context each device is in */
    unsigned int nr_allocated;                   /* contexts allocated, 0 included */
    uint64_t nr_contexts;                        /* its pool: contexts it may have, 0 included */
    unsigned int revision;                       /* the PV-IOMMU ABI the machine serves (0: not said) */
};

/* NULL on failure, with why in err (errlen bytes). */
struct wb_ctl *wb_ctl_open(const char *path, char *err, size_t errlen);
void wb_ctl_close(struct wb_ctl *ctl);
/* Why the last call failed: the daemon's refusal or a transport error. */
const char *wb_ctl_error(const struct wb_ctl *ctl);

/*
 * Send the request in b (a msgpack map with "op") and decode the reply into
 * *reply (mp_free it). 0 when the reply says ok, -1 otherwise.
 */
int wb_ctl_request(struct wb_ctl *ctl, struct mp_buf *b, struct mp_obj *reply);

int wb_ctl_domain_info(struct wb_ctl *ctl, unsigned int domid, struct wb_domain_info *out);
/* Entries [dfn, dfn + count) of a context: gfns[] and perms[] (0: not mapped). */
int wb_ctl_dump(struct wb_ctl *ctl, unsigned int domid, unsigned int ctx_no, uint64_t dfn,
                unsigned int count, uint64_t *gfns, uint8_t *perms);
/* The device's DMA at addr: a write of len bytes of data, or a read into data. */
int wb_ctl_dma(struct wb_ctl *ctl, struct wb_sbdf dev, uint64_t addr, bool write, void *data,
               uint32_t len, bool *faulted);
/* Guest memory: len bytes at offset of the domain's page gfn (within the page). */
int wb_ctl_mem_read(struct wb_ctl *ctl, unsigned int domid, uint64_t gfn, uint32_t offset, void *data,
                    uint32_t len);
int wb_ctl_clear_faults(struct wb_ctl *ctl);
/* The daemon's invariant check: 1 consistent, 0 not (first problem in problem), -1 error. */
int wb_ctl_check(struct wb_ctl *ctl, char *problem, size_t len);

void wb_format_sbdf(struct wb_sbdf d, char *out, size_t len);
int wb_parse_sbdf(const char *s, size_t n, struct wb_sbdf *out);

#endif
