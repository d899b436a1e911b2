/*
 * threads - the C client called from several threads at once, every answer
 * checked. Driven by tests/test_c_threads.py against a daemon on $XENEMU_SOCKET.
 *
 *   threads ops THREADS CALLS    each thread maps, looks up and unmaps (CALLS
 *                                hypercalls per thread) in its own context
 *                                through HYPERVISOR_iommu_op(), then in its own
 *                                dfn range of one context through one shared
 *                                xenemu_connect() connection
 *   threads caps THREADS CALLS   query_capabilities from every thread at once
 *   threads exits THREADS        THREADS short-lived threads one after another,
 *                                one call each: each closes its connection when
 *                                it exits (run under a small per-domain limit)
 *   threads errors               two threads fail differently: each reads its
 *                                own xenemu_last_error()
 *   threads fork CALLS           parent and child both call after fork(): the
 *                                child has its own connection
 *
 * Prints "<what>: <n> hypercalls in <s> s: <n> calls/s" per phase; exit 0 when
 * every answer was right, 1 with one line per wrong answer otherwise, 2 on
 * bad usage.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xenemu_client.h"

#define MAX_THREADS 64
#define RW (IOMMU_OP_readable | IOMMU_OP_writeable)

/* The explicit connection all threads share in the second phase of "ops", or NULL. */
static struct xenemu_conn *shared_conn;
static uint16_t shared_ctx;

struct worker {
    pthread_t thread;
    unsigned int id;
    unsigned long calls;        /* hypercalls to make */
    unsigned long made;         /* hypercalls made */
    char problem[256];          /* the first wrong answer, "" when none */
};

static long call(struct pv_iommu_op *op)
{
    return shared_conn ? xenemu_iommu_op(shared_conn, op) : HYPERVISOR_iommu_op(op);
}

/* Record the first wrong answer; later ones would only repeat it. */
static int wrong(struct worker *w, const char *fmt, long got, unsigned long round)
{
    if (!w->problem[0]) {
        int n = snprintf(w->problem, sizeof(w->problem), "thread %u round %lu: ", w->id, round);
        snprintf(w->problem + n, sizeof(w->problem) - (size_t)n, fmt, got);
        if (got == -XEN_ENOSYS && *xenemu_last_error())
            snprintf(w->problem + strlen(w->problem), sizeof(w->problem) - strlen(w->problem),
                     " (%s)", xenemu_last_error());
    }
    return -1;
}

/* A zeroed op for a sub-op in a context. */
static struct pv_iommu_op new_op(uint16_t subop_id, uint16_t ctx)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = subop_id;
    op.ctx_no = ctx;
    return op;
}

/* map_pages of one page: its return value, 1 when it says it mapped another count. */
static long op_map(struct worker *w, uint16_t ctx, uint64_t gfn, uint64_t dfn)
{
    struct pv_iommu_op op = new_op(IOMMUOP_map_pages, ctx);
    long ret;

    op.flags = RW;
    op.map_pages.gfn = gfn;
    op.map_pages.dfn = dfn;
    op.map_pages.nr_pages = 1;
    w->made++;
    ret = call(&op);
    return ret == 0 && op.map_pages.mapped != 1 ? 1 : ret;
}

/* unmap_pages of one page: its return value, 1 when it says it unmapped another count. */
static long op_unmap(struct worker *w, uint16_t ctx, uint64_t dfn)
{
    struct pv_iommu_op op = new_op(IOMMUOP_unmap_pages, ctx);
    long ret;

    op.unmap_pages.dfn = dfn;
    op.unmap_pages.nr_pages = 1;
    w->made++;
    ret = call(&op);
    return ret == 0 && op.unmap_pages.unmapped != 1 ? 1 : ret;
}

/* lookup_page: its return value, and the gfn it found in *gfn. */
static long op_lookup(struct worker *w, uint16_t ctx, uint64_t dfn, uint64_t *gfn)
{
    struct pv_iommu_op op = new_op(IOMMUOP_lookup_page, ctx);
    long ret;

    op.lookup_page.dfn = dfn;
    w->made++;
    ret = call(&op);
    *gfn = op.lookup_page.gfn;
    return ret;
}

/*
 * Rounds of: map dfn k to this thread's gfn for k, look it up, unmap dfn k-1
 * and see it gone. Each thread's gfns are its own, so an answer meant for
 * another thread shows up as a wrong gfn.
 */
static int map_lookup_unmap(struct worker *w, uint16_t ctx, uint64_t dfn_base)
{
    unsigned long k, rounds = w->calls / 4;
    uint64_t gfn_base = 0x1000 + (uint64_t)w->id * 0x1000, got;
    long ret;

    for (k = 0; k < rounds; k++) {
        uint64_t gfn = gfn_base + k % 0x1000;

        if ((ret = op_map(w, ctx, gfn, dfn_base + k)) != 0)
            return wrong(w, "map_pages: %ld (1: mapped != 1)", ret, k);
        ret = op_lookup(w, ctx, dfn_base + k, &got);
        if (ret != 0 || got != gfn)
            return wrong(w, "lookup_page of what it mapped: ret %ld or a wrong gfn", ret, k);
        if (k == 0)
            continue;
        ret = op_unmap(w, ctx, dfn_base + k - 1);
        if (ret != 0)
            return wrong(w, "unmap_pages: %ld (1: unmapped != 1)", ret, k);
        ret = op_lookup(w, ctx, dfn_base + k - 1, &got);
        if (ret != -XEN_ENOENT)
            return wrong(w, "lookup_page after unmap: %ld, not -ENOENT", ret, k);
    }
    if (rounds && (ret = op_unmap(w, ctx, dfn_base + rounds - 1)) != 0)
        return wrong(w, "last unmap_pages: %ld (1: unmapped != 1)", ret, rounds);
    return 0;
}

static long alloc_context(uint16_t *ctx)
{
    struct pv_iommu_op op = new_op(IOMMUOP_alloc_context, 0);
    long ret = call(&op);

    *ctx = op.ctx_no;
    return ret;
}

static long free_context(uint16_t ctx)
{
    struct pv_iommu_op op = new_op(IOMMUOP_free_context, ctx);

    return call(&op);
}

/* A thread with a context of its own, through its own implicit connection. */
static void *own_context(void *arg)
{
    struct worker *w = arg;
    uint16_t ctx;
    long ret = alloc_context(&ctx);

    if (ret != 0 || ctx == 0) {
        wrong(w, "alloc_context: %ld", ret, 0);
        return NULL;
    }
    if (map_lookup_unmap(w, ctx, 0x100) == 0 && (ret = free_context(ctx)) != 0)
        wrong(w, "free_context: %ld", ret, 0);
    return NULL;
}

/* A thread with a dfn range of its own in the shared connection's context. */
static void *own_range(void *arg)
{
    struct worker *w = arg;

    map_lookup_unmap(w, shared_ctx, (uint64_t)(w->id + 1) << 20);
    return NULL;
}

static struct pv_iommu_op caps;     /* what the main thread was answered */

/* The capabilities every thread must then be answered; 0, or 1 with the reason. */
static int ask_caps(void)
{
    caps = new_op(IOMMUOP_query_capabilities, 0);
    if (HYPERVISOR_iommu_op(&caps) != 0) {
        fprintf(stderr, "threads: query_capabilities: %s\n", xenemu_last_error());
        return 1;
    }
    return 0;
}

static void *query_caps(void *arg)
{
    struct worker *w = arg;
    unsigned long i;

    for (i = 0; i < w->calls; i++) {
        struct pv_iommu_op op = new_op(IOMMUOP_query_capabilities, 0);
        long ret = HYPERVISOR_iommu_op(&op);

        w->made++;
        if (ret != 0 || memcmp(&op, &caps, sizeof(op)) != 0)
            return wrong(w, "query_capabilities: %ld or other capabilities", ret, i), NULL;
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Run THREADS workers of fn at once; print the rate; 0 when every answer was right. */
static int run(const char *what, void *(*fn)(void *), unsigned int nr, unsigned long calls)
{
    static struct worker workers[MAX_THREADS];
    unsigned long made = 0;
    unsigned int i;
    double start = now(), took;
    int bad = 0;

    for (i = 0; i < nr; i++) {
        memset(&workers[i], 0, sizeof(workers[i]));
        workers[i].id = i;
        workers[i].calls = calls;
        if (pthread_create(&workers[i].thread, NULL, fn, &workers[i]) != 0) {
            fprintf(stderr, "threads: pthread_create failed\n");
            exit(1);
        }
    }
    for (i = 0; i < nr; i++) {
        pthread_join(workers[i].thread, NULL);
        made += workers[i].made;
        if (workers[i].problem[0]) {
            fprintf(stderr, "threads: %s: %s\n", what, workers[i].problem);
            bad = 1;
        }
    }
    took = now() - start;
    printf("%s: %u threads, %lu hypercalls in %.2f s: %.0f calls/s\n", what, nr, made, took,
           made / (took > 0 ? took : 1e-9));
    fflush(stdout);
    return bad;
}

static int ops(unsigned int nr, unsigned long calls)
{
    const char *path = getenv("XENEMU_SOCKET");
    long ret;
    int bad = run("own context, own implicit connection", own_context, nr, calls);

    shared_conn = xenemu_connect(path ? path : "");
    if (!shared_conn) {
        fprintf(stderr, "threads: xenemu_connect: %s\n", xenemu_last_error());
        return 1;
    }
    if ((ret = alloc_context(&shared_ctx)) != 0) {
        fprintf(stderr, "threads: alloc_context on the shared connection: %ld\n", ret);
        return 1;
    }
    bad |= run("own dfn range, one shared connection", own_range, nr, calls);
    if ((ret = free_context(shared_ctx)) != 0) {
        fprintf(stderr, "threads: free_context on the shared connection: %ld\n", ret);
        bad = 1;
    }
    xenemu_close(shared_conn);
    return bad;
}

static int caps_from_all(unsigned int nr, unsigned long calls)
{
    if (ask_caps() != 0)
        return 1;
    return run("query_capabilities", query_caps, nr, calls);
}

/* One thread after another, each with one call: a connection left open by an
 * exited thread would take a slot of the daemon's per-domain limit. */
static int exits(unsigned int nr)
{
    unsigned int i;

    if (ask_caps() != 0)
        return 1;
    for (i = 0; i < nr; i++) {
        struct worker w;

        memset(&w, 0, sizeof(w));
        w.id = i;
        w.calls = 1;
        if (pthread_create(&w.thread, NULL, query_caps, &w) != 0)
            return fprintf(stderr, "threads: pthread_create failed\n"), 1;
        pthread_join(w.thread, NULL);
        if (w.problem[0])
            return fprintf(stderr, "threads: exits: %s\n", w.problem), 1;
    }
    printf("exits: %u threads one after another, each answered\n", nr);
    return 0;
}

static pthread_barrier_t both_failed, b_called;

/* Thread A fails to connect; B fails differently, then succeeds. */
static void *fail_a(void *arg)
{
    int *bad = arg;

    if (xenemu_connect("/nonexistent/xenemu-a.sock") != NULL)
        *bad = 1;
    pthread_barrier_wait(&both_failed);
    pthread_barrier_wait(&b_called);
    if (!strstr(xenemu_last_error(), "xenemu-a.sock")) {
        fprintf(stderr, "threads: A sees another thread's error: \"%s\"\n", xenemu_last_error());
        *bad = 1;
    }
    return NULL;
}

static void *fail_b(void *arg)
{
    int *bad = arg;
    struct pv_iommu_op op = new_op(IOMMUOP_query_capabilities, 0);
    long ret;

    if (xenemu_connect(NULL) != NULL)
        *bad = 1;
    pthread_barrier_wait(&both_failed);
    if (!strstr(xenemu_last_error(), "path missing")) {
        fprintf(stderr, "threads: B sees another thread's error: \"%s\"\n", xenemu_last_error());
        *bad = 1;
    }
    ret = HYPERVISOR_iommu_op(&op);
    if (ret != 0 || *xenemu_last_error()) {
        fprintf(stderr, "threads: B's call: %ld \"%s\"\n", ret, xenemu_last_error());
        *bad = 1;
    }
    pthread_barrier_wait(&b_called);
    return NULL;
}

static int errors(void)
{
    pthread_t a, b;
    int bad_a = 0, bad_b = 0;

    pthread_barrier_init(&both_failed, NULL, 2);
    pthread_barrier_init(&b_called, NULL, 2);
    if (pthread_create(&a, NULL, fail_a, &bad_a) != 0 ||
        pthread_create(&b, NULL, fail_b, &bad_b) != 0)
        return fprintf(stderr, "threads: pthread_create failed\n"), 1;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    if (bad_a || bad_b)
        return 1;
    printf("errors: each thread reads its own\n");
    return 0;
}

/* Parent and child call at once after fork(); the parent connected before it. */
static int forked(unsigned long calls)
{
    struct worker w;
    pid_t child;
    int status;

    if (ask_caps() != 0)
        return 1;
    fflush(stdout);
    child = fork();
    if (child < 0)
        return perror("threads: fork"), 1;
    memset(&w, 0, sizeof(w));
    w.id = child == 0;
    w.calls = calls;
    query_caps(&w);
    if (w.problem[0])
        fprintf(stderr, "threads: fork: %s %s\n", child ? "parent" : "child", w.problem);
    if (child == 0)
        _exit(w.problem[0] ? 1 : 0);
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    if (w.problem[0])
        return 1;
    printf("fork: parent and child each made %lu calls\n", calls);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned int nr = argc > 2 ? (unsigned int)strtoul(argv[2], NULL, 10) : 0;
    unsigned long calls = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;

    if (argc > 1 && strcmp(argv[1], "errors") == 0)
        return errors();
    if (argc > 2 && strcmp(argv[1], "fork") == 0)
        return forked(strtoul(argv[2], NULL, 10));
    if (argc > 2 && strcmp(argv[1], "exits") == 0)
        return exits(nr);
    if (nr < 1 || nr > MAX_THREADS)
        return fprintf(stderr, "usage: see the comment at the top of threads.c\n"), 2;
    if (argc > 3 && strcmp(argv[1], "ops") == 0)
        return ops(nr, calls);
    if (argc > 3 && strcmp(argv[1], "caps") == 0)
        return caps_from_all(nr, calls);
    return fprintf(stderr, "usage: see the comment at the top of threads.c\n"), 2;
}
