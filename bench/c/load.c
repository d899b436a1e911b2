/*
 * load.c - the C client of `make bench`: PV-IOMMU calls against a xenemu
 * daemon, or the same frames against an echo server, timed.
 *
 *   bench_load rtt SOCKET lookup|mapunmap COUNT
 *       One request in flight. An operation is one lookup_page, or a
 *       map_pages of one page followed by its unmap_pages (two round
 *       trips). Prints "ops N median_us M mean_us A p99_us P".
 *   bench_load pipe SOCKET CONNS WINDOW COUNT
 *       COUNT lookup_page calls over CONNS connections, each keeping
 *       WINDOW in flight. Prints "ops N seconds S".
 *   bench_load probe SOCKET SECONDS SLOW_US
 *       lookup_page round trips one at a time for SECONDS. Prints
 *       "slow START END" (CLOCK_MONOTONIC seconds) for each taking over
 *       SLOW_US microseconds, then "ops N median_us M max_us X".
 *
 * Frames are built here with the raw framing of abi/PROTOCOL.md rather than
 * through libxenemu, so the same code talks to the daemon and to an echo
 * server: a REPLY must carry ret 0, an echoed CALL must be the bytes sent,
 * and anything else stops the run with exit status 1. lookup_page asks
 * context 0 for dfn 0x100; map_pages maps gfn 0x10 at dfn 0x400000 (above
 * dom0's RAM, so free) in context 0.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <xen/pv-iommu.h>
#include <xenemu/wire.h>

#include "common.h"

#define OP_GADDR 0x7F0000000000ULL
#define FRAME_LEN (XENEMU_HDR_SIZE + XENEMU_CALL_SIZE + XENEMU_REGION_SIZE + \
                   sizeof(struct pv_iommu_op))
#define MAX_CONNS 64
#define MAX_WINDOW 1024

struct frame {
    unsigned char b[FRAME_LEN];
};

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_load: %s\n", what);
    exit(1);
}

/* A CALL frame of __HYPERVISOR_iommu_op carrying op at OP_GADDR. */
static void build(struct frame *f, const struct pv_iommu_op *op)
{
    unsigned char *b = f->b;

    memset(b, 0, sizeof(f->b));
    put_le(b, XENEMU_MAGIC, 4);
    put_le(b + 4, XENEMU_WIRE_VERSION, 2);
    put_le(b + 6, XENEMU_FRAME_CALL, 2);
    put_le(b + 8, FRAME_LEN, 4);
    put_le(b + 12, 1, 2);                       /* one region */
    put_le(b + 16, 1, 8);                       /* req_id */
    put_le(b + XENEMU_HDR_SIZE, __HYPERVISOR_iommu_op, 8);
    put_le(b + XENEMU_HDR_SIZE + 8, OP_GADDR, 8);
    b += XENEMU_HDR_SIZE + XENEMU_CALL_SIZE;
    put_le(b, OP_GADDR, 8);
    put_le(b + 8, sizeof(*op), 4);
    memcpy(b + XENEMU_REGION_SIZE, op, sizeof(*op)); /* guest memory: host order */
}

static void lookup_frame(struct frame *f)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_lookup_page;
    op.lookup_page.dfn = 0x100;
    build(f, &op);
}

static void map_frames(struct frame *map, struct frame *unmap)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_map_pages;
    op.flags = IOMMU_OP_readable | IOMMU_OP_writeable;
    op.map_pages.gfn = 0x10;
    op.map_pages.dfn = 0x400000;
    op.map_pages.nr_pages = 1;
    build(map, &op);
    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_unmap_pages;
    op.unmap_pages.dfn = 0x400000;
    op.unmap_pages.nr_pages = 1;
    build(unmap, &op);
}

static int connect_to(const char *path)
{
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    if (strlen(path) >= sizeof(addr.sun_path))
        die("socket path too long");
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror(path);
        exit(1);
    }
    return fd;
}

static void send_or_die(int fd, const unsigned char *p, size_t n)
{
    if (send_all(fd, p, n) < 0)
        die("send failed");
}

/* Check one whole frame answering `sent`; returns its length. */
static size_t check_frame(const unsigned char *b, size_t have, const struct frame *sent)
{
    uint64_t length = get_le(b + 8, 4);

    if (get_le(b, 4) != XENEMU_MAGIC || length < XENEMU_HDR_SIZE + 8 ||
        length > XENEMU_MAX_FRAME)
        die("bad frame header");
    if (have < length)
        return 0;
    switch (get_le(b + 6, 2)) {
    case XENEMU_FRAME_REPLY:
        if (get_le(b + XENEMU_HDR_SIZE, 8) != 0)
            die("the hypercall failed (ret != 0)");
        return length;
    case XENEMU_FRAME_CALL:
        if (length != FRAME_LEN || memcmp(b, sent->b, FRAME_LEN) != 0)
            die("the echo differs from the frame sent");
        return length;
    default:
        die("the daemon answered with an error frame");
        return 0;
    }
}

/* Send one frame and wait for its answer; buf holds RECEIVE_SIZE bytes. */
static void round_trip(int fd, const struct frame *f, unsigned char *buf)
{
    size_t have = 0;

    send_or_die(fd, f->b, FRAME_LEN);
    for (;;) {
        ssize_t r = recv(fd, buf + have, RECEIVE_SIZE - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("connection closed");
        have += (size_t)r;
        size_t len = have >= XENEMU_HDR_SIZE ? check_frame(buf, have, f) : 0;
        if (len == have)
            return;
        if (len)
            die("more bytes than one answer");
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int rtt(const char *path, const char *what, long count)
{
    struct frame first, second;
    int both = strcmp(what, "mapunmap") == 0;
    unsigned char *buf = malloc(RECEIVE_SIZE);
    double *t = malloc(sizeof(double) * (size_t)count), sum = 0;
    int fd = connect_to(path);

    if (!buf || !t)
        die("out of memory");
    if (both)
        map_frames(&first, &second);
    else if (strcmp(what, "lookup") == 0)
        lookup_frame(&first);
    else
        die("rtt: operation is lookup or mapunmap");
    for (long i = 0; i < count; i++) {
        double t0 = now_ns();
        round_trip(fd, &first, buf);
        if (both)
            round_trip(fd, &second, buf);
        t[i] = now_ns() - t0;
        sum += t[i];
    }
    qsort(t, (size_t)count, sizeof(double), cmp_double);
    printf("ops %ld median_us %.3f mean_us %.3f p99_us %.3f\n", count,
           t[count / 2] / 1e3, sum / (double)count / 1e3,
           t[count * 99 / 100] / 1e3);
    close(fd);
    return 0;
}

struct pconn {
    int fd;
    long sent, answered;
    size_t have;
    unsigned char buf[RECEIVE_SIZE];
};

static int pipe_load(const char *path, int nconns, int window, long count)
{
    static unsigned char burst[MAX_WINDOW * FRAME_LEN];
    struct frame f;
    struct pconn *c = calloc((size_t)nconns, sizeof(*c));
    struct pollfd pfd[MAX_CONNS];
    long quota = count / nconns, done = 0;

    if (!c)
        die("out of memory");
    lookup_frame(&f);
    for (int w = 0; w < window; w++)
        memcpy(burst + (size_t)w * FRAME_LEN, f.b, FRAME_LEN);
    for (int i = 0; i < nconns; i++)
        c[i].fd = connect_to(path);
    double t0 = now_ns();
    for (int i = 0; i < nconns; i++) {
        long n = quota < window ? quota : window;
        send_or_die(c[i].fd, burst, FRAME_LEN * (size_t)n);
        c[i].sent = n;
    }
    while (done < quota * nconns) {
        for (int i = 0; i < nconns; i++)
            pfd[i] = (struct pollfd){.fd = c[i].fd, .events = POLLIN};
        if (poll(pfd, (nfds_t)nconns, -1) < 0 && errno != EINTR)
            die("poll failed");
        for (int i = 0; i < nconns; i++) {
            struct pconn *k = &c[i];
            size_t used = 0, len;
            long got = 0;

            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = recv(k->fd, k->buf + k->have, RECEIVE_SIZE - k->have, 0);
            if (r <= 0)
                die("connection closed");
            k->have += (size_t)r;
            while (k->have - used >= XENEMU_HDR_SIZE &&
                   (len = check_frame(k->buf + used, k->have - used, &f)) != 0) {
                used += len;
                got++;
            }
            memmove(k->buf, k->buf + used, k->have - used);
            k->have -= used;
            k->answered += got;
            done += got;
            /* Refill the window by as many as were answered. */
            long more = quota - k->sent < got ? quota - k->sent : got;
            if (more > 0) {
                send_or_die(k->fd, burst, FRAME_LEN * (size_t)more);
                k->sent += more;
            }
        }
    }
    printf("ops %ld seconds %.6f\n", done, (now_ns() - t0) / 1e9);
    for (int i = 0; i < nconns; i++)
        close(c[i].fd);
    free(c);
    return 0;
}

static int probe(const char *path, double seconds, double slow_us)
{
    struct frame f;
    unsigned char *buf = malloc(RECEIVE_SIZE);
    size_t cap = 1 << 16;
    double *t = malloc(sizeof(double) * cap);
    int fd = connect_to(path);
    double start = now_ns(), worst = 0;
    long n = 0;

    if (!buf || !t)
        die("out of memory");
    lookup_frame(&f);
    while (now_ns() - start < seconds * 1e9) {
        double t0 = now_ns();
        round_trip(fd, &f, buf);
        double t1 = now_ns();
        if (t1 - t0 > slow_us * 1e3)
            printf("slow %.9f %.9f\n", t0 / 1e9, t1 / 1e9);
        if (t1 - t0 > worst)
            worst = t1 - t0;
        if ((size_t)n == cap && !(t = realloc(t, sizeof(double) * (cap *= 2))))
            die("out of memory");
        t[n++] = t1 - t0;
    }
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    printf("ops %ld median_us %.3f max_us %.3f\n", n, t[n / 2] / 1e3, worst / 1e3);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "rtt") == 0 && atol(argv[4]) > 0)
        return rtt(argv[2], argv[3], atol(argv[4]));
    if (argc == 6 && strcmp(argv[1], "pipe") == 0) {
        int conns = atoi(argv[3]), window = atoi(argv[4]);
        long count = atol(argv[5]);
        if (conns < 1 || conns > MAX_CONNS || window < 1 || window > MAX_WINDOW ||
            count < conns)
            die("pipe: 1..64 connections, window 1..1024, count >= connections");
        return pipe_load(argv[2], conns, window, count);
    }
    if (argc == 5 && strcmp(argv[1], "probe") == 0 && atof(argv[3]) > 0)
        return probe(argv[2], atof(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: bench_load rtt SOCKET lookup|mapunmap COUNT\n"
                    "       bench_load pipe SOCKET CONNS WINDOW COUNT\n"
                    "       bench_load probe SOCKET SECONDS SLOW_US\n");
    return 2;
}
