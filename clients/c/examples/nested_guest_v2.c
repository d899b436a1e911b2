/*
 * nested_guest_v2 - a guest driver trying xenemu's nested PV-IOMMU (a xenemu
 * extension of revision 2, abi/NESTED.md; not Xen's): it builds its own
 * stage-1 table in its memory, allocates a nested context over it, attaches
 * its device's PASID, DMAs, edits the table, sees the IOTLB keep the old
 * translation until it flushes, then flushes, services an I/O page fault (a
 * DMA to a page its stage 1 lacks waits; it reads the page request, maps
 * the page, flushes, answers, and the DMA completes), detaches and frees.
 *
 *   XENEMU_SOCKET=$DIR/dom1.sock XENEMU_CONTROL=$DIR/control.sock \
 *       build/nested_guest_v2 [--domid 1] [--device 0000:01:00.0] [--pasid 7] [--gfn 100]
 *
 * against a machine with pv_iommu_revision = 2 and nested = true (device and
 * gfn in hex; the gfn is the first of seven pages of the domain it uses).
 * The hypercalls go through the C client; the guest's stores to its RAM and
 * its device's DMA stand on the control socket ($XENEMU_CONTROL: mem_write,
 * mem_read, dma with a pasid), whose msgpack maps this file encodes itself.
 * One line per step (step=NAME ...); exit 0 when every step went as expected.
 */
#define _POSIX_C_SOURCE 200809L     /* sockets, read, write */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xen/pv-iommu-nested.h>
#include "example_args.h"
#include "xenemu_client.h"

/* --- the control socket: just enough msgpack ----------------------------- */

#define MSG_MAX 8192

struct msg {
    unsigned char b[MSG_MAX];
    size_t n;
    int bad;            /* it would not fit */
};

static void put(struct msg *m, const void *p, size_t n)
{
    if (m->bad || n > MSG_MAX - m->n) {
        m->bad = 1;
        return;
    }
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void put_be(struct msg *m, unsigned char tag, uint64_t v, int bytes)
{
    unsigned char b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++)
        b[1 + i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    put(m, b, 1 + (size_t)bytes);
}

static void put_str(struct msg *m, const char *s)
{
    unsigned char tag = (unsigned char)(0xa0 | strlen(s));   /* keys: < 32 bytes */
    put(m, &tag, 1);
    put(m, s, strlen(s));
}

static void put_uint(struct msg *m, uint64_t v)
{
    if (v < 128) {
        unsigned char b = (unsigned char)v;
        put(m, &b, 1);
    } else {
        put_be(m, 0xcf, v, 8);
    }
}

static void put_bin(struct msg *m, const void *p, size_t n)
{
    put_be(m, 0xc5, n, 2);      /* bin 16: the data here is small */
    put(m, p, n);
}

/* The size of the msgpack object at p (n bytes there), 0 if incomplete or
 * of a kind the replies here never hold. */
static size_t skip(const unsigned char *p, size_t n)
{
    size_t head = 1, body = 0, items = 0;
    uint64_t len = 0;
    if (!n)
        return 0;
    unsigned char t = p[0];
    if (t < 0x80 || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
        return 1;
    if (t >= 0xa0 && t < 0xc0)
        body = t & 0x1f;
    else if (t >= 0x80 && t < 0x90)
        items = 2 * (size_t)(t & 0x0f);
    else if (t >= 0x90 && t < 0xa0)
        items = t & 0x0f;
    else if (t >= 0xcc && t <= 0xd3)
        body = (size_t)1 << ((t - 0xcc) & 3);
    else if (t == 0xca || t == 0xcb)
        body = t == 0xca ? 4 : 8;
    else if (t == 0xc4 || t == 0xd9 || t == 0xc5 || t == 0xda || t == 0xde) {
        int w = (t == 0xc4 || t == 0xd9) ? 1 : 2;
        if (n < 1 + (size_t)w)
            return 0;
        for (int i = 0; i < w; i++)
            len = len << 8 | p[1 + i];
        head += (size_t)w;
        if (t == 0xde)
            items = 2 * (size_t)len;
        else
            body = (size_t)len;
    } else {
        return 0;
    }
    size_t at = head + body;
    if (at > n)
        return 0;
    for (size_t i = 0; i < items; i++) {
        size_t k = skip(p + at, n - at);
        if (!k)
            return 0;
        at += k;
    }
    return at;
}

/* The value of `key` in the map at p, or NULL. */
static const unsigned char *lookup(const unsigned char *p, size_t n, const char *key, size_t *vn)
{
    size_t count, at;
    if (!n || (p[0] & 0xf0) != 0x80)
        return NULL;
    count = p[0] & 0x0f;
    at = 1;
    for (size_t i = 0; i < count; i++) {
        size_t k = skip(p + at, n - at), v;
        if (!k)
            return NULL;
        v = skip(p + at + k, n - at - k);
        if (!v)
            return NULL;
        if (k == 1 + strlen(key) && p[at] == (0xa0 | strlen(key)) &&
            !memcmp(p + at + 1, key, strlen(key))) {
            *vn = v;
            return p + at + k;
        }
        at += k + v;
    }
    return NULL;
}

/* An unsigned integer, true/false as 1/0; UINT64_MAX for anything else. */
static uint64_t as_uint(const unsigned char *v, size_t vn)
{
    uint64_t x = 0;
    if (!v)
        return UINT64_MAX;
    if (v[0] < 0x80)
        return v[0];
    if (v[0] == 0xc2 || v[0] == 0xc3)
        return v[0] == 0xc3;
    if (v[0] >= 0xcc && v[0] <= 0xcf) {
        for (size_t i = 1; i < vn; i++)
            x = x << 8 | v[i];
        return x;
    }
    return UINT64_MAX;
}

/* The bytes of a str or bin value (length in *len), or NULL. */
static const unsigned char *as_bytes(const unsigned char *v, size_t vn, size_t *len)
{
    size_t head;
    if (!v)
        return NULL;
    if (v[0] >= 0xa0 && v[0] < 0xc0)
        head = 1;
    else if (v[0] == 0xc4 || v[0] == 0xd9)
        head = 2;
    else if (v[0] == 0xc5 || v[0] == 0xda)
        head = 3;
    else
        return NULL;
    *len = vn - head;
    return v + head;
}

/* `key`'s value in the map at p as an unsigned integer (UINT64_MAX if
 * absent or another kind), or as bytes (NULL if absent or another kind). */
static uint64_t field_uint(const unsigned char *p, size_t n, const char *key)
{
    size_t vn = 0;
    const unsigned char *v = lookup(p, n, key, &vn);
    return as_uint(v, vn);
}

static const unsigned char *field_bytes(const unsigned char *p, size_t n, const char *key,
                                        size_t *len)
{
    size_t vn = 0;
    const unsigned char *v = lookup(p, n, key, &vn);
    return as_bytes(v, vn, len);
}

static int control_fd = -1;
static struct msg reply;

/* Send the request map in `req`, read its reply into `reply`; 0 if ok. */
static int control(struct msg *req)
{
    size_t len = 0;
    const unsigned char *err;
    if (req->bad || write(control_fd, req->b, req->n) != (ssize_t)req->n)
        return -1;
    reply.n = 0;
    while (!skip(reply.b, reply.n)) {
        ssize_t got = read(control_fd, reply.b + reply.n, MSG_MAX - reply.n);
        if (got <= 0)
            return -1;
        reply.n += (size_t)got;
    }
    if (field_uint(reply.b, reply.n, "ok") == 1)
        return 0;
    err = field_bytes(reply.b, reply.n, "error", &len);
    fprintf(stderr, "nested_guest_v2: control: %.*s\n", err ? (int)len : 7,
            err ? (const char *)err : "refused");
    return -1;
}

static int connect_control(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof(sa.sun_path))
        return -1;
    strcpy(sa.sun_path, path);
    control_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    return control_fd < 0 || connect(control_fd, (struct sockaddr *)&sa, sizeof(sa)) ? -1 : 0;
}

static uint64_t domid = 1;

/* The guest's store of n bytes at gfn:offset of its RAM. */
static int guest_store(uint64_t gfn, uint64_t offset, const void *p, size_t n)
{
    struct msg m = {.n = 0};
    put(&m, "\x85", 1);
    put_str(&m, "op"), put_str(&m, "mem_write");
    put_str(&m, "domid"), put_uint(&m, domid);
    put_str(&m, "gfn"), put_uint(&m, gfn);
    put_str(&m, "offset"), put_uint(&m, offset);
    put_str(&m, "data"), put_bin(&m, p, n);
    return control(&m);
}

/* n bytes of its RAM at gfn into out; 0 when all were read. */
static int guest_load(uint64_t gfn, void *out, size_t n)
{
    struct msg m = {.n = 0};
    size_t len = 0;
    const unsigned char *data;
    put(&m, "\x85", 1);
    put_str(&m, "op"), put_str(&m, "mem_read");
    put_str(&m, "domid"), put_uint(&m, domid);
    put_str(&m, "gfn"), put_uint(&m, gfn);
    put_str(&m, "offset"), put_uint(&m, 0);
    put_str(&m, "length"), put_uint(&m, n);
    if (control(&m))
        return -1;
    data = field_bytes(reply.b, reply.n, "data", &len);
    if (!data || len != n)
        return -1;
    memcpy(out, data, n);
    return 0;
}

/* The device writes text at iova with a PASID; its fault kind into `kind`
 * ("none" if it had none) and, when group is not NULL, the page request it
 * waits on (0: none). 0 when the request was served. */
static int device_write_waiting(const char *sbdf, uint64_t pasid, uint64_t iova,
                                const char *text, char *kind, size_t kind_cap, uint64_t *group)
{
    struct msg m = {.n = 0};
    size_t fn = 0, len = 0;
    const unsigned char *fault, *k;
    put(&m, pasid ? "\x86" : "\x85", 1);     /* a map of 6 entries, or 5 without a PASID */
    put_str(&m, "op"), put_str(&m, "dma");
    put_str(&m, "sbdf"), put_str(&m, sbdf);
    put_str(&m, "addr"), put_uint(&m, iova);
    put_str(&m, "write"), put(&m, "\xc3", 1);
    put_str(&m, "data"), put_bin(&m, text, strlen(text));
    if (pasid)
        put_str(&m, "pasid"), put_uint(&m, pasid);
    if (control(&m))
        return -1;
    fault = lookup(reply.b, reply.n, "fault", &fn);
    k = fault ? field_bytes(fault, fn, "kind", &len) : NULL;
    snprintf(kind, kind_cap, "%.*s", k ? (int)len : 4, k ? (const char *)k : "none");
    if (group) {
        uint64_t g = field_uint(reply.b, reply.n, "page_request");
        *group = g == UINT64_MAX ? 0 : g;       /* nil: it waits on nothing */
    }
    return 0;
}

static int device_write(const char *sbdf, uint64_t pasid, uint64_t iova, const char *text,
                        char *kind, size_t kind_cap)
{
    return device_write_waiting(sbdf, pasid, iova, text, kind, kind_cap, NULL);
}

/* --- the hypercalls: xenemu's sub-ops send the struct the caller gives ---- */

static struct xenemu_conn *conn;

/* The C client does not send 9-12's structs (Xen reads none); the caller
 * names the region itself, as xenemu_hypercall allows. */
static long nested_op(unsigned int subop, void *arg, uint32_t size)
{
    uint64_t args[XENEMU_NR_ARGS] = { subop, (uint64_t)(uintptr_t)arg, 0, 0, 0 };
    struct xenemu_buf buf = { arg, size };
    return xenemu_hypercall(conn, __HYPERVISOR_iommu_op, args, &buf, 1);
}

/* --- the guest ------------------------------------------------------------ */

static int failures;

static void expect(const char *step, int ok, const char *detail)
{
    printf("step=%s %s%s\n", step, ok ? "ok" : "FAILED ", ok ? "" : detail);
    failures += !ok;
}

/* A stage-1 entry: present, read-write or read-only. */
static uint64_t s1_entry(uint64_t gfn, int writable)
{
    return gfn << 12 | XENEMU_S1_PTE_P | (writable ? XENEMU_S1_PTE_RW : 0);
}

static int set_entry(uint64_t table, unsigned int index, uint64_t value)
{
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(value >> (8 * i));
    return guest_store(table, 8u * index, le, sizeof(le));
}

int main(int argc, char **argv)
{
    uint64_t pasid = 7, gfn = 0x100;
    struct physdev_pci_device dev;
    char device[16], kind[32];
    int bad = parse_sbdf("0000:01:00.0", &dev) || argc % 2 == 0;

    for (int i = 1; !bad && i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--domid"))
            bad = parse_u64(argv[i + 1], 10, &domid) || domid > 0x7FEF;
        else if (!strcmp(argv[i], "--pasid"))
            bad = parse_u64(argv[i + 1], 10, &pasid) || pasid == 0 || pasid > XENEMU_PASID_MAX;
        else if (!strcmp(argv[i], "--gfn"))
            bad = parse_u64(argv[i + 1], 16, &gfn) || gfn > (1ULL << 36) - 7;
        else if (!strcmp(argv[i], "--device"))
            bad = parse_sbdf(argv[i + 1], &dev);
        else
            bad = 1;
    }
    if (bad) {
        fprintf(stderr, "usage: nested_guest_v2 [--domid N] [--device SSSS:BB:DD.F] "
                        "[--pasid 1..1048575] [--gfn G (hex)]\n");
        return 2;
    }
    format_sbdf(&dev, device, sizeof(device));
    conn = xenemu_connect(getenv("XENEMU_SOCKET"));
    if (!conn || connect_control(getenv("XENEMU_CONTROL"))) {
        fprintf(stderr, "nested_guest_v2: set XENEMU_SOCKET and XENEMU_CONTROL to a daemon's "
                        "sockets (%s)\n", conn ? "control socket" : xenemu_last_error());
        return 3;
    }

    /* 1. May it? The bits and max_pasid say so. */
    struct pv_iommu_capabilities caps;
    memset(&caps, 0, sizeof(caps));
    long ret = xenemu_iommu_op2(conn, IOMMU_query_capabilities, &caps);
    printf("caps ret=%ld cap_flags=0x%x max_pasid=%u max_ctx_no=%u\n", ret,
           caps.cap_flags, caps.max_pasid, caps.max_ctx_no);
    if (ret || !(caps.cap_flags & IOMMUCAP_nested) || !(caps.cap_flags & IOMMUCAP_pasid)) {
        fprintf(stderr, "nested_guest_v2: no nested PV-IOMMU here "
                        "(a machine with nested = true)\n");
        return 1;
    }
    if (caps.max_ctx_no == 0) {
        struct pv_iommu_init init = { .max_ctx_no = 4, .arena_order = 4 };
        ret = xenemu_iommu_op2(conn, IOMMU_init, &init);
        expect("init", ret == 0, "");
    }

    /* 2. Its own stage-1 table: gfn (root), +1, +2, +3 (leaf), IOVA page
     * 0 -> gfn+4, page 1 -> gfn+5; stage 2 is context 0, its RAM 1:1. */
    int st = 0;
    for (unsigned int level = 0; level < 3; level++)    /* root, level 3, level 2 */
        st |= set_entry(gfn + level, 0, s1_entry(gfn + level + 1, 1));
    st |= set_entry(gfn + 3, 0, s1_entry(gfn + 4, 1)) | set_entry(gfn + 3, 1, s1_entry(gfn + 5, 1));
    expect("build_stage1", st == 0, "");

    struct pv_iommu_alloc_nested alloc;
    memset(&alloc, 0, sizeof(alloc));
    alloc.ctx_no = 0;                   /* stage 2: the default context */
    alloc.pgtable_gfn = gfn;
    alloc.nested_flags = XENEMU_NESTED_FORMAT_X86_64 | XENEMU_NESTED_PAGE_REQUESTS;
    ret = nested_op(IOMMU_alloc_nested, &alloc, sizeof(alloc));
    printf("step=alloc_nested ret=%ld ctx_no=%u\n", ret, alloc.ctx_no);
    if (ret)
        return 1;

    struct pv_iommu_attach_pasid attach = { .ctx_no = alloc.ctx_no, .dev = dev,
                                            .pasid = (uint32_t)pasid };
    ret = nested_op(IOMMU_attach_pasid, &attach, sizeof(attach));
    expect("attach_pasid", ret == 0, "");

    /* 3. DMA with the PASID lands in gfn+4. */
    st = device_write(device, pasid, 0x10, "nested!", kind, sizeof(kind));
    {
        unsigned char page[0x18];
        st = st || guest_load(gfn + 4, page, sizeof(page));
        expect("dma", !st && !strcmp(kind, "none") && !memcmp(page + 0x10, "nested!", 7), kind);
    }

    /* 4. Remap IOVA page 0 to gfn+5 without flushing: the IOTLB keeps the old
     * translation, as hardware would. */
    st = set_entry(gfn + 3, 0, s1_entry(gfn + 5, 1)) ||
         device_write(device, pasid, 0x10, "stale!!", kind, sizeof(kind));
    {
        unsigned char page[0x18];
        st = st || guest_load(gfn + 4, page, sizeof(page));
        expect("edit_without_flush", !st && !memcmp(page + 0x10, "stale!!", 7), "");
    }

    /* 5. Flush that page of that PASID: the new translation is walked. */
    struct xenemu_iommu_flush_nested flush = { .ctx_no = alloc.ctx_no,
                                               .flush_type = XENEMU_IOMMU_FLUSH_NESTED_range,
                                               .pasid = (uint32_t)pasid, .nr_pages = 1, .dfn = 0 };
    ret = nested_op(IOMMU_flush_nested, &flush, sizeof(flush));
    st = ret || device_write(device, pasid, 0x10, "fresh!!", kind, sizeof(kind));
    {
        unsigned char page[0x18];
        st = st || guest_load(gfn + 5, page, sizeof(page));
        expect("flush_nested", !st && !memcmp(page + 0x10, "fresh!!", 7), "");
    }

    /* 6. An I/O page fault: IOVA page 2 has no stage-1 entry, so the DMA
     * waits on a page request. The guest reads it, maps the page (gfn+6),
     * flushes, answers success; the DMA, retried, completes. */
    uint64_t group = 0;
    st = device_write_waiting(device, pasid, 0x2020, "faulted", kind, sizeof(kind), &group);
    expect("dma_waits", !st && group != 0 && !strcmp(kind, "none"), kind);
    {
        struct xenemu_page_request reqs[XENEMU_PAGE_REQUESTS_MAX];
        struct xenemu_iommu_read_page_requests rd;
        memset(&rd, 0, sizeof(rd));
        memset(reqs, 0, sizeof(reqs));
        rd.ctx_no = alloc.ctx_no;
        rd.max = XENEMU_PAGE_REQUESTS_MAX;
        set_xen_guest_handle_raw(rd.requests, reqs);
        uint64_t args[XENEMU_NR_ARGS] = { IOMMU_read_page_requests, (uint64_t)(uintptr_t)&rd,
                                          0, 0, 0 };
        struct xenemu_buf bufs[2] = { { &rd, sizeof(rd) }, { reqs, sizeof(reqs) } };
        ret = xenemu_hypercall(conn, __HYPERVISOR_iommu_op, args, bufs, 2);
        printf("step=read_page_requests ret=%ld count=%u addr=0x%" PRIx64 " group=%u\n", ret,
               rd.count, rd.count ? reqs[0].addr : 0, rd.count ? reqs[0].group : 0);
        expect("page_request", ret == 0 && rd.count == 1 && reqs[0].addr == 0x2020 &&
               reqs[0].pasid == pasid && reqs[0].group == group &&
               (reqs[0].flags & XENEMU_PAGE_REQUEST_WRITE), "");
    }
    flush.dfn = 2;
    st = set_entry(gfn + 3, 2, s1_entry(gfn + 6, 1)) ||
         nested_op(IOMMU_flush_nested, &flush, sizeof(flush));
    struct xenemu_iommu_page_response resp = { .ctx_no = alloc.ctx_no,
                                               .code = XENEMU_PAGE_RESPONSE_SUCCESS,
                                               .group = (uint32_t)group };
    st = st || nested_op(IOMMU_page_response, &resp, sizeof(resp)) ||
         device_write_waiting(device, pasid, 0x2020, "faulted", kind, sizeof(kind), &group);
    {
        unsigned char page[0x28];
        st = st || guest_load(gfn + 6, page, sizeof(page));
        expect("page_fault_serviced", !st && group == 0 && !strcmp(kind, "none") &&
               !memcmp(page + 0x20, "faulted", 7), kind);
    }

    /* 7. Detach: the PASID's DMA faults; free the context. */
    struct pv_iommu_detach_pasid detach = { .dev = dev, .pasid = (uint32_t)pasid };
    ret = nested_op(IOMMU_detach_pasid, &detach, sizeof(detach));
    st = ret || device_write(device, pasid, 0, "x", kind, sizeof(kind));
    expect("detach_pasid", !st && !strcmp(kind, "NO_PASID"), kind);
    struct pv_iommu_free free_ = { .ctx_no = alloc.ctx_no };
    expect("free_context", xenemu_iommu_op2(conn, IOMMU_free_context, &free_) == 0, "");

    /* 8. Dirty tracking, as a migration would use it: a context that keeps
     * A/D bits (stage 2 of the device's own DMA, no PASID), pages gfn+4 and
     * gfn+5 at IOVA pages 0x80-0x81, the device writing the second; the
     * bitmap says so once, then reads clean (read-and-clear). */
    struct pv_iommu_alloc tracked = { .alloc_flags = XENEMU_IOMMU_ALLOC_dirty_tracking };
    ret = xenemu_iommu_op2(conn, IOMMU_alloc_context, &tracked);
    expect("alloc_tracked", ret == 0, "");
    struct pv_iommu_map_pages map = { .ctx_no = tracked.ctx_no, .gfn = gfn + 4, .dfn = 0x80,
                                      .map_flags = IOMMU_MAP_readable | IOMMU_MAP_writeable,
                                      .pgsize = 4096, .nr_pages = 2 };
    struct pv_iommu_reattach_device move = { .ctx_no = tracked.ctx_no, .dev = dev };
    st = xenemu_iommu_op2(conn, IOMMU_map_pages, &map) ||
         xenemu_iommu_op2(conn, IOMMU_reattach_device, &move) ||
         device_write(device, 0, (0x81 << 12) + 8, "dirty", kind, sizeof(kind));
    expect("dma_tracked", !st && !strcmp(kind, "none"), kind);
    for (int pass = 0; pass < 2; pass++) {
        uint8_t bitmap[1] = { 0xFF };
        struct xenemu_iommu_read_dirty rd = { .ctx_no = tracked.ctx_no, .nr_pages = 2,
                                              .dfn = 0x80,
                                              .bitmap = (uint64_t)(uintptr_t)bitmap };
        uint64_t args[XENEMU_NR_ARGS] = { XENEMU_IOMMU_read_dirty, (uint64_t)(uintptr_t)&rd,
                                          0, 0, 0 };
        struct xenemu_buf bufs[2] = { { &rd, sizeof(rd) }, { bitmap, sizeof(bitmap) } };
        ret = xenemu_hypercall(conn, __HYPERVISOR_iommu_op, args, bufs, 2);
        printf("step=read_dirty ret=%ld nr_dirty=%u bitmap=0x%02x\n", ret, rd.nr_dirty,
               bitmap[0]);
        expect(pass ? "dirty_cleared" : "dirty_page", ret == 0 &&
               rd.nr_dirty == (pass ? 0u : 1u) && bitmap[0] == (pass ? 0x0 : 0x2), "");
    }
    move.ctx_no = 0;
    struct pv_iommu_unmap_pages unmap = { .ctx_no = tracked.ctx_no, .dfn = 0x80,
                                          .pgsize = 4096, .nr_pages = 2 };
    struct pv_iommu_free free_tracked = { .ctx_no = tracked.ctx_no };
    st = xenemu_iommu_op2(conn, IOMMU_reattach_device, &move) ||
         xenemu_iommu_op2(conn, IOMMU_unmap_pages, &unmap) ||
         xenemu_iommu_op2(conn, IOMMU_free_context, &free_tracked);
    expect("free_tracked", !st, "");

    xenemu_close(conn);
    close(control_fd);
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
