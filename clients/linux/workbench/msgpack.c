/* SPDX-License-Identifier: MIT */
/* msgpack.c - see msgpack.h. Format: https://github.com/msgpack/msgpack/blob/master/spec.md */
#include "msgpack.h"

#include <stdlib.h>
#include <string.h>

#define MP_MAX_DEPTH 32

static void put(struct mp_buf *b, const void *p, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        unsigned char *d;

        while (cap < b->len + n)
            cap *= 2;
        d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* A type byte then v big-endian in `bytes` bytes. */
static void put_be(struct mp_buf *b, unsigned char type, uint64_t v, int bytes)
{
    unsigned char out[9];
    int i;

    out[0] = type;
    for (i = 0; i < bytes; i++)
        out[1 + i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    put(b, out, (size_t)bytes + 1);
}

void mp_map(struct mp_buf *b, uint32_t n)
{
    if (n < 16)
        put_be(b, (unsigned char)(0x80 | n), 0, 0);
    else if (n <= 0xffff)
        put_be(b, 0xde, n, 2);
    else
        put_be(b, 0xdf, n, 4);
}

void mp_str(struct mp_buf *b, const char *s)
{
    size_t n = strlen(s);

    if (n < 32)
        put_be(b, (unsigned char)(0xa0 | n), 0, 0);
    else if (n <= 0xff)
        put_be(b, 0xd9, n, 1);
    else if (n <= 0xffff)
        put_be(b, 0xda, n, 2);
    else
        put_be(b, 0xdb, n, 4);
    put(b, s, n);
}

void mp_uint(struct mp_buf *b, uint64_t v)
{
    if (v < 128)
        put_be(b, (unsigned char)v, 0, 0);
    else if (v <= 0xff)
        put_be(b, 0xcc, v, 1);
    else if (v <= 0xffff)
        put_be(b, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        put_be(b, 0xce, v, 4);
    else
        put_be(b, 0xcf, v, 8);
}

void mp_bool(struct mp_buf *b, bool v)
{
    put_be(b, v ? 0xc3 : 0xc2, 0, 0);
}

void mp_bin(struct mp_buf *b, const void *p, uint32_t n)
{
    if (n <= 0xff)
        put_be(b, 0xc4, n, 1);
    else if (n <= 0xffff)
        put_be(b, 0xc5, n, 2);
    else
        put_be(b, 0xc6, n, 4);
    put(b, p, n);
}

void mp_buf_free(struct mp_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* -- decoding -------------------------------------------------------------- */

struct reader {
    const unsigned char *p;
    size_t len, pos;
    int truncated;
};

static int take(struct reader *r, size_t n, const unsigned char **out)
{
    if (r->len - r->pos < n) {
        r->truncated = 1;
        return -1;
    }
    *out = r->p + r->pos;
    r->pos += n;
    return 0;
}

static int be(struct reader *r, int bytes, uint64_t *v)
{
    const unsigned char *p;
    int i;

    if (take(r, (size_t)bytes, &p))
        return -1;
    *v = 0;
    for (i = 0; i < bytes; i++)
        *v = *v << 8 | p[i];
    return 0;
}

static int decode(struct reader *r, struct mp_obj *o, int depth);

static int decode_items(struct reader *r, struct mp_obj *o, uint64_t count, int depth)
{
    uint64_t i;

    /* Every item takes at least a byte: a count past the data is truncation. */
    if (count > r->len - r->pos) {
        r->truncated = 1;
        return -1;
    }
    if (count == 0)
        return 0;
    o->items = calloc((size_t)count, sizeof(*o->items));
    if (!o->items)
        return -1;
    for (i = 0; i < count; i++)
        if (decode(r, &o->items[i], depth + 1))
            return -1;
    return 0;
}

static int decode_raw(struct reader *r, struct mp_obj *o, enum mp_type t, int len_bytes, uint64_t n)
{
    const unsigned char *p;

    if (len_bytes && be(r, len_bytes, &n))
        return -1;
    if (take(r, (size_t)n, &p))
        return -1;
    o->type = t;
    o->bytes = (const char *)p;
    o->n = (uint32_t)n;
    return 0;
}

static int decode_container(struct reader *r, struct mp_obj *o, enum mp_type t, int len_bytes,
                            uint64_t n, int depth)
{
    if (len_bytes && be(r, len_bytes, &n))
        return -1;
    o->type = t;
    o->n = (uint32_t)n;
    return decode_items(r, o, t == MP_MAP ? 2 * n : n, depth);
}

static int decode(struct reader *r, struct mp_obj *o, int depth)
{
    const unsigned char *p;
    uint64_t v;
    unsigned char c;

    memset(o, 0, sizeof(*o));
    if (depth > MP_MAX_DEPTH || take(r, 1, &p))
        return -1;
    c = *p;
    if (c <= 0x7f) {
        o->type = MP_INT;
        o->u = c;
        return 0;
    }
    if (c >= 0xe0) {
        o->type = MP_INT;
        o->negative = true;
        o->u = (uint64_t)(int64_t)(int8_t)c;
        return 0;
    }
    if ((c & 0xf0) == 0x80)
        return decode_container(r, o, MP_MAP, 0, c & 0x0f, depth);
    if ((c & 0xf0) == 0x90)
        return decode_container(r, o, MP_ARRAY, 0, c & 0x0f, depth);
    if ((c & 0xe0) == 0xa0)
        return decode_raw(r, o, MP_STR, 0, c & 0x1f);
    switch (c) {
    case 0xc0: o->type = MP_NIL; return 0;
    case 0xc2: case 0xc3: o->type = MP_BOOL; o->u = c == 0xc3; return 0;
    case 0xc4: return decode_raw(r, o, MP_BIN, 1, 0);
    case 0xc5: return decode_raw(r, o, MP_BIN, 2, 0);
    case 0xc6: return decode_raw(r, o, MP_BIN, 4, 0);
    case 0xca: case 0xcb: {
        int bytes = c == 0xca ? 4 : 8;

        if (be(r, bytes, &v))
            return -1;
        o->type = MP_FLOAT;
        if (bytes == 4) {
            uint32_t w = (uint32_t)v;
            float f;

            memcpy(&f, &w, 4);
            o->f = f;
        } else {
            memcpy(&o->f, &v, 8);
        }
        return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        o->type = MP_INT;
        return be(r, 1 << (c - 0xcc), &o->u);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int bytes = 1 << (c - 0xd0);

        if (be(r, bytes, &v))
            return -1;
        o->type = MP_INT;
        if (bytes < 8 && (v >> (8 * bytes - 1)) & 1)
            v |= ~UINT64_C(0) << (8 * bytes);      /* sign-extend */
        o->u = v;
        o->negative = (int64_t)v < 0;
        return 0;
    }
    case 0xd9: return decode_raw(r, o, MP_STR, 1, 0);
    case 0xda: return decode_raw(r, o, MP_STR, 2, 0);
    case 0xdb: return decode_raw(r, o, MP_STR, 4, 0);
    case 0xdc: return decode_container(r, o, MP_ARRAY, 2, 0, depth);
    case 0xdd: return decode_container(r, o, MP_ARRAY, 4, 0, depth);
    case 0xde: return decode_container(r, o, MP_MAP, 2, 0, depth);
    case 0xdf: return decode_container(r, o, MP_MAP, 4, 0, depth);
    default: return -1;      /* 0xc1 (never used) and extension types */
    }
}

long mp_decode(const unsigned char *data, size_t len, struct mp_obj *out)
{
    struct reader r = { data, len, 0, 0 };

    if (decode(&r, out, 0)) {
        mp_free(out);
        return r.truncated ? 0 : -1;
    }
    return (long)r.pos;
}

void mp_free(struct mp_obj *o)
{
    uint32_t i, n;

    if (o->type == MP_ARRAY || o->type == MP_MAP) {
        n = o->type == MP_MAP ? 2 * o->n : o->n;
        for (i = 0; o->items && i < n; i++)
            mp_free(&o->items[i]);
        free(o->items);
    }
    memset(o, 0, sizeof(*o));
}

const struct mp_obj *mp_get(const struct mp_obj *o, const char *key)
{
    size_t klen = strlen(key);
    uint32_t i;

    if (!o || o->type != MP_MAP)
        return NULL;
    for (i = 0; i < o->n; i++) {
        const struct mp_obj *k = &o->items[2 * i];

        if (k->type == MP_STR && k->n == klen && !memcmp(k->bytes, key, klen))
            return &o->items[2 * i + 1];
    }
    return NULL;
}

bool mp_get_uint(const struct mp_obj *o, const char *key, uint64_t *out)
{
    const struct mp_obj *v = mp_get(o, key);

    if (!v || v->type != MP_INT || v->negative)
        return false;
    *out = v->u;
    return true;
}
