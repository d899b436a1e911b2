/*
 * tracepack.h - the hot trace records (abi/TRACE.md) packed as msgpack in C.
 *
 * A recording daemon writes one `hc` record per hypercall and one `cont`
 * record per further round of a continued one; packing them was most of
 * what recording cost. These functions append exactly the bytes that
 * Python's msgpack.Packer(use_bin_type=True) writes for the record's map as
 * xenemu/trace/pack.py builds it: the keys in that order, each integer in
 * its smallest encoding, frames as `bin`, the time as a float64, nil for a
 * missing (NULL) reply. The other kinds of record are rare: Python packs
 * them and appends their bytes with tp_append, so that a batch of records
 * (what one receive buffer produced) is one run of bytes, written once.
 *
 * A tp_buffer owns its memory and grows as records arrive. Each function
 * returns 0, or -1 with the buffer unchanged when the record cannot be
 * appended (no memory; a frame over msgpack's 4 GiB `bin`).
 *
 * Like hw.h, the part between the marks is the cffi declaration
 * (xenemu/hw/_build.py reads it): declarations and `#define NAME value` only.
 */
#ifndef XENEMU_TRACEPACK_H
#define XENEMU_TRACEPACK_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN cffi public */

/* The most a record takes besides its frames: the map, keys, kind, time,
 * domid, two bin headers and a continuation id (53 bytes for `hc`). */
#define TP_RECORD_FIXED 64

struct tp_buffer {
    uint8_t *data;
    size_t len;             /* bytes appended since the last reset */
    size_t cap;             /* bytes allocated at data */
};

/* An empty buffer (NULL if there is no memory), and its end. */
struct tp_buffer *tp_buffer_create(void);
void tp_buffer_free(struct tp_buffer *b);

/* Empty the buffer, and shrink it to `keep` bytes if it has grown larger
 * (keep > 0: a large batch's memory is given back). */
void tp_buffer_reset(struct tp_buffer *b, size_t keep);

/* Room for n more bytes, so that appends of at most n bytes cannot fail:
 * 0, or -1 (no memory, or past any size_t) with the buffer unchanged. */
int tp_reserve(struct tp_buffer *b, size_t n);

/* `n` bytes packed elsewhere (a record of a rare kind). */
int tp_append(struct tp_buffer *b, const char *data, size_t n);

/* {"k": "hc", "t": t, "d": domid, "req": req, "rep": rep}, and "c": cont
 * after them when rep is NULL (the call continued). */
int tp_pack_hypercall(struct tp_buffer *b, double t, uint32_t domid,
                      const char *req, size_t req_len,
                      const char *rep, size_t rep_len, uint64_t cont);

/* {"k": "cont", "t": t, "c": cont, "rep": rep} */
int tp_pack_round(struct tp_buffer *b, double t, uint64_t cont,
                  const char *rep, size_t rep_len);

/* END cffi public */

#endif
