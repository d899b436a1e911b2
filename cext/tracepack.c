/*
 * tracepack.c - msgpack for the hot trace records (see tracepack.h).
 *
 * A record is appended in two steps: room is reserved for the most it can
 * take (its frames and a fixed part), then a cursor writes its pieces, each
 * through one bounds check. A record that does not fit after all (a bug in
 * the reservation) is dropped whole, never written past the buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "tracepack.h"

#define FIRST_CAP (64 * 1024)
/* msgpack's largest `bin` (bin 32). */
#define BIN_MAX UINT32_MAX

struct tp_buffer *tp_buffer_create(void)
{
    struct tp_buffer *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->data = malloc(FIRST_CAP);
    if (b->data == NULL) {
        free(b);
        return NULL;
    }
    b->cap = FIRST_CAP;
    return b;
}

void tp_buffer_free(struct tp_buffer *b)
{
    if (b != NULL)
        free(b->data);
    free(b);
}

void tp_buffer_reset(struct tp_buffer *b, size_t keep)
{
    b->len = 0;
    if (b->cap > keep && keep > 0) {
        uint8_t *smaller = realloc(b->data, keep);
        if (smaller != NULL) {
            b->data = smaller;
            b->cap = keep;
        }
    }
}

int tp_reserve(struct tp_buffer *b, size_t n)
{
    if (n <= b->cap - b->len)
        return 0;
    if (n > SIZE_MAX / 2 - b->len)
        return -1;
    size_t cap = b->cap;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *bigger = realloc(b->data, cap);
    if (bigger == NULL)
        return -1;
    b->data = bigger;
    b->cap = cap;
    return 0;
}

struct cursor {
    struct tp_buffer *b;
    size_t at;
    int overflow;
};

static void put(struct cursor *c, const void *src, size_t n)
{
    if (c->overflow || n > c->b->cap - c->at) {
        c->overflow = 1;
        return;
    }
    if (n > 0)
        memcpy(c->b->data + c->at, src, n);
    c->at += n;
}

static void put_byte(struct cursor *c, uint8_t byte)
{
    put(c, &byte, 1);
}

/* `tag`, then the low `n` bytes of `v`, big-endian (msgpack's byte order). */
static void put_tagged(struct cursor *c, uint8_t tag, uint64_t v, unsigned n)
{
    uint8_t bytes[9];
    bytes[0] = tag;
    for (unsigned i = 0; i < n; i++)
        bytes[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    put(c, bytes, 1 + n);
}

/* A non-negative integer in its smallest encoding, as msgpack-python picks it. */
static void put_uint(struct cursor *c, uint64_t v)
{
    if (v < 0x80)
        put_byte(c, (uint8_t)v);                /* positive fixint */
    else if (v <= UINT8_MAX)
        put_tagged(c, 0xcc, v, 1);
    else if (v <= UINT16_MAX)
        put_tagged(c, 0xcd, v, 2);
    else if (v <= UINT32_MAX)
        put_tagged(c, 0xce, v, 4);
    else
        put_tagged(c, 0xcf, v, 8);
}

static void put_float64(struct cursor *c, double t)
{
    uint64_t bits;
    memcpy(&bits, &t, sizeof bits);
    put_tagged(c, 0xcb, bits, 8);
}

/* A key or a kind: a fixstr (under 32 bytes). */
static void put_fixstr(struct cursor *c, const char *s)
{
    size_t n = strlen(s);
    put_byte(c, (uint8_t)(0xa0 | n));
    put(c, s, n);
}

static void put_fixmap(struct cursor *c, unsigned n)
{
    put_byte(c, (uint8_t)(0x80 | n));
}

/* Bytes (at most BIN_MAX) as `bin` in its smallest encoding; nil for NULL. */
static void put_bin(struct cursor *c, const char *p, size_t n)
{
    if (p == NULL) {
        put_byte(c, 0xc0);
        return;
    }
    if (n <= UINT8_MAX)
        put_tagged(c, 0xc4, n, 1);
    else if (n <= UINT16_MAX)
        put_tagged(c, 0xc5, n, 2);
    else
        put_tagged(c, 0xc6, n, 4);
    put(c, p, n);
}

/* A cursor at the end of `b` with room for a record holding these frames. */
static int begin(struct cursor *c, struct tp_buffer *b, size_t frame1, size_t frame2)
{
    c->b = b;
    c->at = b->len;
    c->overflow = 0;
    if (frame1 > BIN_MAX || frame2 > BIN_MAX)
        return -1;
    return tp_reserve(b, TP_RECORD_FIXED + frame1 + frame2);
}

/* The record the cursor wrote, kept if it was written whole. */
static int end(struct cursor *c)
{
    if (c->overflow)
        return -1;
    c->b->len = c->at;
    return 0;
}

int tp_append(struct tp_buffer *b, const char *data, size_t n)
{
    if (tp_reserve(b, n) != 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

int tp_pack_hypercall(struct tp_buffer *b, double t, uint32_t domid,
                      const char *req, size_t req_len,
                      const char *rep, size_t rep_len, uint64_t cont)
{
    struct cursor c;
    if (req == NULL || begin(&c, b, req_len, rep == NULL ? 0 : rep_len) != 0)
        return -1;
    put_fixmap(&c, rep == NULL ? 6 : 5);
    put_fixstr(&c, "k");
    put_fixstr(&c, "hc");
    put_fixstr(&c, "t");
    put_float64(&c, t);
    put_fixstr(&c, "d");
    put_uint(&c, domid);
    put_fixstr(&c, "req");
    put_bin(&c, req, req_len);
    put_fixstr(&c, "rep");
    put_bin(&c, rep, rep_len);
    if (rep == NULL) {
        put_fixstr(&c, "c");
        put_uint(&c, cont);
    }
    return end(&c);
}

int tp_pack_round(struct tp_buffer *b, double t, uint64_t cont,
                  const char *rep, size_t rep_len)
{
    struct cursor c;
    if (begin(&c, b, rep == NULL ? 0 : rep_len, 0) != 0)
        return -1;
    put_fixmap(&c, 4);
    put_fixstr(&c, "k");
    put_fixstr(&c, "cont");
    put_fixstr(&c, "t");
    put_float64(&c, t);
    put_fixstr(&c, "c");
    put_uint(&c, cont);
    put_fixstr(&c, "rep");
    put_bin(&c, rep, rep_len);
    return end(&c);
}
