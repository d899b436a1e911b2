/* SPDX-License-Identifier: MIT */
/*
 * msgpack.h - the subset of msgpack the control socket speaks: requests are
 * maps of strings to integers, booleans, strings and bytes; replies are any
 * msgpack object except extension types, decoded into a tree.
 */
#ifndef WB_MSGPACK_H
#define WB_MSGPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* -- encoding: appends to a growable buffer; any allocation failure sticks in `failed` -- */
struct mp_buf {
    unsigned char *data;
    size_t len, cap;
    bool failed;
};

void mp_map(struct mp_buf *b, uint32_t n);
void mp_str(struct mp_buf *b, const char *s);
void mp_uint(struct mp_buf *b, uint64_t v);
void mp_bool(struct mp_buf *b, bool v);
void mp_bin(struct mp_buf *b, const void *p, uint32_t n);
void mp_buf_free(struct mp_buf *b);

/* -- decoding ------------------------------------------------------------------ */
enum mp_type { MP_NIL, MP_BOOL, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP };

struct mp_obj {
    enum mp_type type;
    bool negative;           /* MP_INT: value is (int64_t)u */
    uint64_t u;              /* MP_BOOL, MP_INT */
    double f;                /* MP_FLOAT */
    const char *bytes;       /* MP_STR, MP_BIN: into the decoded buffer (not NUL-terminated) */
    uint32_t n;              /* MP_STR, MP_BIN: bytes; MP_ARRAY: items; MP_MAP: pairs */
    struct mp_obj *items;    /* MP_ARRAY: n items; MP_MAP: 2n, key then value */
};

/*
 * Decode one object from data[0, len). Returns the bytes it took, 0 when the
 * data ends before the object does (read more), -1 when it is not msgpack we
 * take (ext types, nesting deeper than 32) or memory ran out. *out must be
 * freed with mp_free; its strings point into data.
 */
long mp_decode(const unsigned char *data, size_t len, struct mp_obj *out);
void mp_free(struct mp_obj *o);

/* A map's value for a string key, NULL if absent or o is not a map. */
const struct mp_obj *mp_get(const struct mp_obj *o, const char *key);
/* An unsigned integer value at key (false if absent, negative or not an int). */
bool mp_get_uint(const struct mp_obj *o, const char *key, uint64_t *out);

#endif
