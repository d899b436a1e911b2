/* SPDX-License-Identifier: MIT */
/*
 * xenemu_client.c - the C client of the xenemu wire protocol (abi/PROTOCOL.md).
 *
 * One request in flight per call: build the CALL frame, send it, read frames
 * until the REPLY with our req_id, copy each region back into its buffer.
 *
 * Threads: a connection's lock is held for a whole call, so threads sharing a
 * connection take turns (its frame buffer and req_id are the connection's).
 * HYPERVISOR_iommu_op() gives each thread its own connection, as each vCPU of
 * a guest enters the hypervisor on its own, so threads never wait for each
 * other there. The error text is per thread too (struct thread_state).
 */
#include "xenemu_client.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct xenemu_conn {
    pthread_mutex_t lock;       /* held for a whole call: guards everything below */
    int fd;
    uint64_t next_id;
    int broken;                 /* set after a transport or protocol failure */
    uint8_t *buf;               /* frame buffer, XENEMU_MAX_FRAME bytes */
};

/* What each thread has of its own: its $XENEMU_SOCKET connection and its error text. */
struct thread_state {
    struct xenemu_conn *conn;   /* made on first HYPERVISOR_iommu_op(), closed at thread exit */
    char last_error[256];
};

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static int state_key_made;

/* Runs when a thread exits (not for the main thread returning from main()). */
static void free_thread_state(void *p)
{
    struct thread_state *state = p;

    xenemu_close(state->conn);
    free(state);
}

/*
 * In a child of fork(), the forking thread's connection is its parent's socket:
 * a call there would mix its frames with the parent's. The child forgets it
 * (closing only its copy of the descriptor) and connects anew on first use.
 */
static void forget_conn_in_child(void)
{
    struct thread_state *state = pthread_getspecific(state_key);

    if (state) {
        xenemu_close(state->conn);
        state->conn = NULL;
    }
}

static void make_state_key(void)
{
    state_key_made = pthread_key_create(&state_key, free_thread_state) == 0;
    if (state_key_made)
        pthread_atfork(NULL, NULL, forget_conn_in_child);
}

/* The calling thread's state, made on first use; NULL only when out of memory or keys. */
static struct thread_state *thread_state(void)
{
    struct thread_state *state;

    if (pthread_once(&state_once, make_state_key) != 0 || !state_key_made)
        return NULL;
    state = pthread_getspecific(state_key);
    if (!state) {
        state = calloc(1, sizeof(*state));
        if (state && pthread_setspecific(state_key, state) != 0) {
            free(state);
            state = NULL;
        }
    }
    return state;
}

static const char no_state_error[] = "out of memory for the xenemu client's per-thread state";

static void set_error(const char *fmt, va_list ap)
{
    struct thread_state *state = thread_state();

    if (state)
        vsnprintf(state->last_error, sizeof(state->last_error), fmt, ap);
}

static void clear_error(void)
{
    struct thread_state *state = thread_state();

    if (state)
        state->last_error[0] = '\0';
}

/* Record why a call failed (for this thread) and mark the connection unusable. */
static long fail(struct xenemu_conn *conn, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    set_error(fmt, ap);
    va_end(ap);
    if (conn)
        conn->broken = 1;
    return -XEN_ENOSYS;
}

const char *xenemu_last_error(void)
{
    struct thread_state *state = thread_state();

    return state ? state->last_error : no_state_error;
}

struct xenemu_conn *xenemu_connect(const char *path)
{
    struct sockaddr_un addr;
    struct xenemu_conn *conn;
    int fd;

    if (!path || strlen(path) >= sizeof(addr.sun_path)) {
        fail(NULL, "socket path missing or too long");
        return NULL;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);

    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        fail(NULL, "socket: %s", strerror(errno));
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fail(NULL, "connect %s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    conn = calloc(1, sizeof(*conn));
    if (conn)
        conn->buf = malloc(XENEMU_MAX_FRAME);
    if (!conn || !conn->buf) {
        if (conn)
            free(conn->buf);
        free(conn);
        close(fd);
        fail(NULL, "out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&conn->lock, NULL) != 0) {
        free(conn->buf);
        free(conn);
        close(fd);
        fail(NULL, "pthread_mutex_init failed");
        return NULL;
    }
    conn->fd = fd;
    conn->next_id = 1;
    return conn;
}

void xenemu_close(struct xenemu_conn *conn)
{
    if (!conn)
        return;
    pthread_mutex_destroy(&conn->lock);
    close(conn->fd);
    free(conn->buf);
    free(conn);
}

static int send_all(int fd, const uint8_t *p, size_t n)
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

static int recv_all(int fd, uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static void put_header(uint8_t *p, uint16_t type, uint32_t length, uint16_t nr_regions,
                       uint64_t req_id)
{
    put32(p, XENEMU_MAGIC);
    put16(p + 4, XENEMU_WIRE_VERSION);
    put16(p + 6, type);
    put32(p + 8, length);
    put16(p + 12, nr_regions);
    put16(p + 14, 0);
    put64(p + 16, req_id);
}

/* Read one frame into conn->buf; returns its length or -1 (error recorded). */
static long read_frame(struct xenemu_conn *conn)
{
    uint8_t *b = conn->buf;
    uint32_t length;

    if (recv_all(conn->fd, b, XENEMU_HDR_SIZE) < 0)
        return fail(conn, "daemon closed the connection"), -1;
    if (get32(b) != XENEMU_MAGIC || get16(b + 4) != XENEMU_WIRE_VERSION)
        return fail(conn, "bad frame header from the daemon"), -1;
    length = get32(b + 8);
    if (length < XENEMU_HDR_SIZE || length > XENEMU_MAX_FRAME)
        return fail(conn, "bad frame length %u from the daemon", length), -1;
    if (recv_all(conn->fd, b + XENEMU_HDR_SIZE, length - XENEMU_HDR_SIZE) < 0)
        return fail(conn, "daemon closed the connection mid-frame"), -1;
    return (long)length;
}

/* Copy the reply's regions back into the caller's buffers, checking each. */
static int copy_back(struct xenemu_conn *conn, uint32_t length, const struct xenemu_buf *bufs,
                     unsigned int nr_bufs)
{
    const uint8_t *b = conn->buf;
    uint32_t off = XENEMU_HDR_SIZE + XENEMU_REPLY_SIZE;
    unsigned int i;

    if (get16(b + 12) != nr_bufs)
        return fail(conn, "reply has %u regions, sent %u", get16(b + 12), nr_bufs), -1;
    for (i = 0; i < nr_bufs; i++) {
        uint64_t gaddr;
        uint32_t len;

        if (length - off < XENEMU_REGION_SIZE)
            return fail(conn, "reply region %u truncated", i), -1;
        gaddr = get64(b + off);
        len = get32(b + off + 8);
        off += XENEMU_REGION_SIZE;
        if (gaddr != (uint64_t)(uintptr_t)bufs[i].ptr || len != bufs[i].len || length - off < len)
            return fail(conn, "reply region %u does not match the request", i), -1;
        memcpy(bufs[i].ptr, b + off, len);
        off += len;
    }
    return 0;
}

/* One call on a connection whose lock the caller holds. */
static long call_locked(struct xenemu_conn *conn, uint64_t op, const uint64_t args[XENEMU_NR_ARGS],
                        const struct xenemu_buf *bufs, unsigned int nr_bufs)
{
    uint8_t *b;
    uint64_t req_id;
    size_t length = XENEMU_HDR_SIZE + XENEMU_CALL_SIZE;
    unsigned int i;

    if (conn->broken)
        return fail(conn, "connection broken by an earlier failure");
    if (nr_bufs > XENEMU_MAX_REGIONS)
        return -XEN_E2BIG;
    for (i = 0; i < nr_bufs; i++)
        length += XENEMU_REGION_SIZE + (size_t)bufs[i].len;
    if (length > XENEMU_MAX_FRAME)
        return -XEN_E2BIG;

    b = conn->buf;
    req_id = conn->next_id++;
    put_header(b, XENEMU_FRAME_CALL, (uint32_t)length, (uint16_t)nr_bufs, req_id);
    put64(b + XENEMU_HDR_SIZE, op);
    for (i = 0; i < XENEMU_NR_ARGS; i++)
        put64(b + XENEMU_HDR_SIZE + 8 + 8 * i, args ? args[i] : 0);
    length = XENEMU_HDR_SIZE + XENEMU_CALL_SIZE;
    for (i = 0; i < nr_bufs; i++) {
        put64(b + length, (uint64_t)(uintptr_t)bufs[i].ptr);
        put32(b + length + 8, bufs[i].len);
        put32(b + length + 12, 0);
        memcpy(b + length + XENEMU_REGION_SIZE, bufs[i].ptr, bufs[i].len);
        length += XENEMU_REGION_SIZE + bufs[i].len;
    }
    if (send_all(conn->fd, b, length) < 0)
        return fail(conn, "send: %s", strerror(errno));

    for (;;) {
        long got = read_frame(conn);
        uint16_t type;

        if (got < 0)
            return -XEN_ENOSYS;
        type = get16(b + 6);
        if (type == XENEMU_FRAME_ERROR) {
            uint32_t msg_len = get32(b + XENEMU_HDR_SIZE + 4);
            if (msg_len > (uint32_t)got - XENEMU_HDR_SIZE - XENEMU_ERROR_SIZE)
                msg_len = (uint32_t)got - XENEMU_HDR_SIZE - XENEMU_ERROR_SIZE;
            return fail(conn, "daemon: %.*s", (int)msg_len,
                        (const char *)b + XENEMU_HDR_SIZE + XENEMU_ERROR_SIZE);
        }
        if (type != XENEMU_FRAME_REPLY || got < (long)(XENEMU_HDR_SIZE + XENEMU_REPLY_SIZE))
            return fail(conn, "unexpected frame type %u", type);
        if (get64(b + 16) != req_id)
            continue;           /* not ours: only one is in flight, so a stray */
        if (copy_back(conn, (uint32_t)got, bufs, nr_bufs) < 0)
            return -XEN_ENOSYS;
        return (long)(int64_t)get64(b + XENEMU_HDR_SIZE);
    }
}

long xenemu_hypercall(struct xenemu_conn *conn, uint64_t op, const uint64_t args[XENEMU_NR_ARGS],
                      const struct xenemu_buf *bufs, unsigned int nr_bufs)
{
    long ret;
    int cancel_state;

    if (!conn) {
        if (!xenemu_last_error()[0])    /* keep the reason xenemu_connect() gave */
            fail(NULL, "no connection");
        return -XEN_ENOSYS;
    }
    clear_error();
    /*
     * Like a hypercall, a call runs to its end: a thread cancelled inside it
     * would leave the lock held and half a frame on the wire.
     */
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    if (pthread_mutex_lock(&conn->lock) != 0) {
        pthread_setcancelstate(cancel_state, NULL);
        return fail(NULL, "cannot lock the connection");
    }
    ret = call_locked(conn, op, args, bufs, nr_bufs);
    pthread_mutex_unlock(&conn->lock);
    pthread_setcancelstate(cancel_state, NULL);
    return ret;
}

long xenemu_iommu_op(struct xenemu_conn *conn, struct pv_iommu_op *op)
{
    uint64_t args[XENEMU_NR_ARGS] = { (uint64_t)(uintptr_t)op, 0, 0, 0, 0 };
    struct xenemu_buf buf = { op, sizeof(*op) };

    return xenemu_hypercall(conn, __HYPERVISOR_iommu_op, args, &buf, 1);
}

struct xenemu_conn *xenemu_default_conn(void)
{
    struct thread_state *state = thread_state();
    const char *path;

    if (!state)
        return NULL;            /* xenemu_last_error() says out of memory */
    if (state->conn)
        return state->conn;
    path = getenv("XENEMU_SOCKET");
    if (!path || !*path) {
        fail(NULL, "XENEMU_SOCKET is not set");
        return NULL;
    }
    state->conn = xenemu_connect(path);   /* NULL: retried on the next call */
    return state->conn;
}

long HYPERVISOR_iommu_op(struct pv_iommu_op *op)
{
    return xenemu_iommu_op(xenemu_default_conn(), op);
}
