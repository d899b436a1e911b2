/* SPDX-License-Identifier: MIT */
/* control.c - see control.h. */
#define _POSIX_C_SOURCE 200809L
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A reply larger than this is refused (a dump of the op's 65536 entries is ~600 KiB). */
#define WB_CTL_MAX_REPLY (16u << 20)

struct wb_ctl {
    int fd;
    unsigned char *buf;          /* bytes received and not yet decoded */
    size_t len, cap;
    char error[256];
};

static int fail(struct wb_ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct wb_ctl *ctl, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ctl->error, sizeof(ctl->error), fmt, ap);
    va_end(ap);
    return -1;
}

struct wb_ctl *wb_ctl_open(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un addr;
    struct wb_ctl *ctl;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        snprintf(err, errlen, "control socket path too long: %s", path);
        return NULL;
    }
    ctl = calloc(1, sizeof(*ctl));
    if (!ctl) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    ctl->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (ctl->fd < 0 || connect(ctl->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        snprintf(err, errlen, "cannot connect to the control socket %s: %s", path, strerror(errno));
        if (ctl->fd >= 0)
            close(ctl->fd);
        free(ctl);
        return NULL;
    }
    return ctl;
}

void wb_ctl_close(struct wb_ctl *ctl)
{
    if (!ctl)
        return;
    close(ctl->fd);
    free(ctl->buf);
    free(ctl);
}

const char *wb_ctl_error(const struct wb_ctl *ctl)
{
    return ctl->error;
}

static int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One reply: decode what is buffered, read more until an object is whole. */
static int read_reply(struct wb_ctl *ctl, struct mp_obj *reply)
{
    for (;;) {
        long used = ctl->len ? mp_decode(ctl->buf, ctl->len, reply) : 0;
        ssize_t r;

        if (used < 0)
            return fail(ctl, "the daemon's reply is not msgpack");
        if (used > 0) {
            /* The reply's strings point into buf: keep it until the next request. */
            return (int)used;
        }
        if (ctl->len == ctl->cap) {
            size_t cap = ctl->cap ? 2 * ctl->cap : 1u << 16;
            unsigned char *b;

            if (cap > WB_CTL_MAX_REPLY)
                return fail(ctl, "reply larger than %u bytes", WB_CTL_MAX_REPLY);
            b = realloc(ctl->buf, cap);
            if (!b)
                return fail(ctl, "out of memory");
            ctl->buf = b;
            ctl->cap = cap;
        }
        r = recv(ctl->fd, ctl->buf + ctl->len, ctl->cap - ctl->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return fail(ctl, "the daemon closed the control connection");
        ctl->len += (size_t)r;
    }
}

int wb_ctl_request(struct wb_ctl *ctl, struct mp_buf *b, struct mp_obj *reply)
{
    const struct mp_obj *ok, *error;
    int used;

    memset(reply, 0, sizeof(*reply));
    ctl->len = 0;                 /* one request in flight: nothing is left over */
    if (b->failed)
        return fail(ctl, "out of memory building a request");
    if (send_all(ctl->fd, b->data, b->len))
        return fail(ctl, "cannot send to the control socket: %s", strerror(errno));
    used = read_reply(ctl, reply);
    if (used < 0)
        return -1;
    ok = mp_get(reply, "ok");
    if (!ok || ok->type != MP_BOOL)
        return fail(ctl, "reply without ok");
    if (!ok->u) {
        error = mp_get(reply, "error");
        if (error && error->type == MP_STR)
            return fail(ctl, "refused: %.*s", (int)error->n, error->bytes);
        return fail(ctl, "refused");
    }
    ctl->error[0] = '\0';
    return 0;
}

/* A request with no argument but the op, or with domid. */
static void op_header(struct mp_buf *b, const char *op, uint32_t nargs)
{
    mp_map(b, nargs + 1);
    mp_str(b, "op");
    mp_str(b, op);
}

int wb_parse_sbdf(const char *s, size_t n, struct wb_sbdf *out)
{
    char text[16];
    unsigned int seg, bus, dev, fn;
    char end;

    if (n >= sizeof(text))
        return -1;
    memcpy(text, s, n);
    text[n] = '\0';
    if (sscanf(text, "%4x:%2x:%2x.%1x%c", &seg, &bus, &dev, &fn, &end) != 4 || dev > 31 || fn > 7)
        return -1;
    out->seg = (uint16_t)seg;
    out->bus = (uint8_t)bus;
    out->devfn = (uint8_t)(dev << 3 | fn);
    return 0;
}

void wb_format_sbdf(struct wb_sbdf d, char *out, size_t len)
{
    snprintf(out, len, "%04x:%02x:%02x.%x", d.seg, d.bus, d.devfn >> 3, d.devfn & 7);
}

static int read_domain(struct wb_ctl *ctl, const struct mp_obj *d, struct wb_domain_info *out)
{
    const struct mp_obj *devices = mp_get(d, "devices"), *allocated = mp_get(d, "allocated");
    const struct mp_obj *hw = mp_get(d, "hardware");
    uint32_t i;

    if (!devices || devices->type != MP_MAP || !allocated || allocated->type != MP_ARRAY ||
        !hw || hw->type != MP_BOOL || !mp_get_uint(d, "memory_pages", &out->memory_pages) ||
        !mp_get_uint(d, "contexts", &out->nr_contexts))
        return fail(ctl, "info: a domain without devices, allocated, hardware, memory_pages or contexts");
    out->found = true;
    out->hardware = hw->u != 0;
    out->nr_allocated = allocated->n;
    if (devices->n > WB_MAX_DEVICES)
        return fail(ctl, "info: more than %d devices", WB_MAX_DEVICES);
    for (i = 0; i < devices->n; i++) {
        const struct mp_obj *k = &devices->items[2 * i], *v = &devices->items[2 * i + 1];

        if (k->type != MP_STR || wb_parse_sbdf(k->bytes, k->n, &out->devices[i]) ||
            v->type != MP_INT || v->negative)
            return fail(ctl, "info: a device that is not SSSS:BB:DD.F -> context");
        out->device_ctx[i] = (unsigned int)v->u;
    }
    out->nr_devices = devices->n;
    return 0;
}

int wb_ctl_domain_info(struct wb_ctl *ctl, unsigned int domid, struct wb_domain_info *out)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    const struct mp_obj *domains;
    uint32_t i;
    int ret = -1;

    memset(out, 0, sizeof(*out));
    op_header(&b, "info", 0);
    if (wb_ctl_request(ctl, &b, &reply) == 0) {
        const struct mp_obj *abi = mp_get(&reply, "abi");
        uint64_t revision;

        if (abi && abi->type == MP_MAP && mp_get_uint(abi, "pv_iommu_revision", &revision) &&
            revision <= 2)
            out->revision = (unsigned int)revision;
        domains = mp_get(&reply, "domains");
        if (!domains || domains->type != MP_ARRAY) {
            fail(ctl, "info: no domains");
        } else {
            for (i = 0; i < domains->n && !out->found; i++) {
                uint64_t id;

                if (mp_get_uint(&domains->items[i], "domid", &id) && id == domid)
                    ret = read_domain(ctl, &domains->items[i], out);
            }
            if (!out->found)
                fail(ctl, "info: no domain %u", domid);
        }
    }
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}

int wb_ctl_dump(struct wb_ctl *ctl, unsigned int domid, unsigned int ctx_no, uint64_t dfn,
                unsigned int count, uint64_t *gfns, uint8_t *perms)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    const struct mp_obj *g, *p;
    unsigned int i;
    int ret = -1;

    op_header(&b, "dump", 4);
    mp_str(&b, "domid");
    mp_uint(&b, domid);
    mp_str(&b, "ctx_no");
    mp_uint(&b, ctx_no);
    mp_str(&b, "dfn");
    mp_uint(&b, dfn);
    mp_str(&b, "count");
    mp_uint(&b, count);
    if (wb_ctl_request(ctl, &b, &reply) == 0) {
        g = mp_get(&reply, "gfns");
        p = mp_get(&reply, "perms");
        if (!g || !p || g->type != MP_BIN || p->type != MP_BIN || g->n != 8u * count || p->n != count) {
            fail(ctl, "dump: gfns and perms are not %u entries", count);
        } else {
            for (i = 0; i < count; i++) {
                uint64_t v = 0;
                int k;

                for (k = 7; k >= 0; k--)     /* little-endian u64 */
                    v = v << 8 | (unsigned char)g->bytes[8 * i + (unsigned)k];
                gfns[i] = v;
                perms[i] = (uint8_t)p->bytes[i];
            }
            ret = 0;
        }
    }
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}

int wb_ctl_dma(struct wb_ctl *ctl, struct wb_sbdf dev, uint64_t addr, bool write, void *data,
               uint32_t len, bool *faulted)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    const struct mp_obj *f, *got;
    char sbdf[16];
    int ret = -1;

    wb_format_sbdf(dev, sbdf, sizeof(sbdf));
    op_header(&b, "dma", 4);
    mp_str(&b, "sbdf");
    mp_str(&b, sbdf);
    mp_str(&b, "addr");
    mp_uint(&b, addr);
    mp_str(&b, "write");
    mp_bool(&b, write);
    if (write) {
        mp_str(&b, "data");
        mp_bin(&b, data, len);
    } else {
        mp_str(&b, "length");
        mp_uint(&b, len);
    }
    if (wb_ctl_request(ctl, &b, &reply) == 0) {
        f = mp_get(&reply, "faulted");
        got = mp_get(&reply, "data");
        if (!f || f->type != MP_BOOL) {
            fail(ctl, "dma: no faulted");
        } else {
            *faulted = f->u != 0;
            if (!write && !*faulted && (!got || got->type != MP_BIN || got->n != len))
                fail(ctl, "dma: a read without its %u bytes", len);
            else {
                if (!write && !*faulted)
                    memcpy(data, got->bytes, len);
                ret = 0;
            }
        }
    }
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}

int wb_ctl_mem_read(struct wb_ctl *ctl, unsigned int domid, uint64_t gfn, uint32_t offset, void *data,
                    uint32_t len)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    const struct mp_obj *got;
    int ret = -1;

    op_header(&b, "mem_read", 4);
    mp_str(&b, "offset");
    mp_uint(&b, offset);
    mp_str(&b, "domid");
    mp_uint(&b, domid);
    mp_str(&b, "gfn");
    mp_uint(&b, gfn);
    mp_str(&b, "length");
    mp_uint(&b, len);
    if (wb_ctl_request(ctl, &b, &reply) == 0) {
        got = mp_get(&reply, "data");
        if (!got || got->type != MP_BIN || got->n != len) {
            fail(ctl, "mem_read: not %u bytes", len);
        } else {
            memcpy(data, got->bytes, len);
            ret = 0;
        }
    }
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}

int wb_ctl_clear_faults(struct wb_ctl *ctl)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    int ret;

    op_header(&b, "faults", 1);
    mp_str(&b, "clear");
    mp_bool(&b, true);
    ret = wb_ctl_request(ctl, &b, &reply);
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}

int wb_ctl_check(struct wb_ctl *ctl, char *problem, size_t len)
{
    struct mp_buf b = { 0 };
    struct mp_obj reply;
    const struct mp_obj *c, *problems;
    int ret = -1;

    problem[0] = '\0';
    op_header(&b, "check", 0);
    if (wb_ctl_request(ctl, &b, &reply) == 0) {
        c = mp_get(&reply, "consistent");
        problems = mp_get(&reply, "problems");
        if (!c || c->type != MP_BOOL) {
            fail(ctl, "check: no consistent");
        } else {
            ret = c->u != 0;
            if (!ret && problems && problems->type == MP_ARRAY && problems->n &&
                problems->items[0].type == MP_STR)
                snprintf(problem, len, "%.*s", (int)problems->items[0].n, problems->items[0].bytes);
        }
    }
    mp_free(&reply);
    mp_buf_free(&b);
    return ret;
}
