/*
 * rev2_runner - revision-2 iommu_op calls through the C client, one per stdin
 * line, for tests/test_c_client_rev2.py. Built with -Iabi/rev2 -Iabi, so
 * HYPERVISOR_iommu_op is Linux's (unsigned int subop, void *arg).
 *
 *   in:  "<how> <subop> <arg> [<inner>]"
 *        how:   self (HYPERVISOR_iommu_op: the thread's $XENEMU_SOCKET connection),
 *               thread (the same from a new thread), conn (xenemu_iommu_op2 on one
 *               connection the runner opens with xenemu_connect($XENEMU_SOCKET))
 *        arg:   hex of the struct's bytes, "null", "bogus" (an address that
 *               is not mapped: the client must not read it), or "wrap" (an
 *               address where a struct would run past the top of memory)
 *        inner: for remote_cmd, where its arg handle points: hex of the inner
 *               struct, "null", "bogus", "wrap", or "self" (the remote_cmd itself)
 *   out: "<ret> <arg address> <arg hex after> [<inner address> <inner hex after>]"
 *        ("-" for memory not printed)
 * Exit 3 when the daemon cannot be reached (the client's reason on stderr).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenemu_client.h"

#define BUF_SIZE 64
#define BOGUS ((void *)(uintptr_t)0x10)     /* page 0: never mapped */
#define WRAP ((void *)(UINTPTR_MAX - 3))     /* a struct there would run past 2^64 */

/* Linux's prototype, checked by the compiler. */
static long (*const linux_hypercall)(unsigned int, void *) = HYPERVISOR_iommu_op;

/* Guest memory: bytes past the struct stay 0xEE, so a region too long shows. */
static union { uint64_t align; unsigned char b[BUF_SIZE]; } outer_mem, inner_mem;

struct call {
    unsigned int subop;
    void *arg;
    long ret;
};

static size_t from_hex(const char *hex, unsigned char *out)
{
    size_t n = strlen(hex) / 2, i;

    if (n > BUF_SIZE)
        exit(2);
    for (i = 0; i < n; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
            exit(2);
        out[i] = (unsigned char)byte;
    }
    return n;
}

static void print_mem(const void *p, size_t n)
{
    size_t i;

    printf(" %llu ", (unsigned long long)(uintptr_t)p);
    if (!n)
        printf("-");
    for (i = 0; i < n; i++)
        printf("%02x", ((const unsigned char *)p)[i]);
}

/* Point remote_cmd's arg handle (bytes 8-15) at where the inner word says. */
static size_t set_inner(const char *inner, struct pv_iommu_remote_cmd *cmd)
{
    size_t n = 0;

    memset(inner_mem.b, 0xEE, BUF_SIZE);
    if (!strcmp(inner, "null"))
        set_xen_guest_handle(cmd->arg, NULL);
    else if (!strcmp(inner, "bogus"))
        set_xen_guest_handle(cmd->arg, BOGUS);
    else if (!strcmp(inner, "wrap"))
        set_xen_guest_handle(cmd->arg, WRAP);
    else if (!strcmp(inner, "self"))
        set_xen_guest_handle(cmd->arg, cmd);
    else {
        n = from_hex(inner, inner_mem.b);
        set_xen_guest_handle(cmd->arg, inner_mem.b);
    }
    return n;
}

static void *in_thread(void *p)
{
    struct call *c = p;

    c->ret = linux_hypercall(c->subop, c->arg);
    return NULL;
}

int main(void)
{
    char line[512];
    struct xenemu_conn *conn = NULL;

    while (fgets(line, sizeof(line), stdin)) {
        char how[16], arg[256], inner[256] = "";
        struct call c;
        size_t n = 0, inner_n = 0;
        void *inner_ptr = NULL;     /* kept: the reply may rewrite the handle */
        int fields = sscanf(line, "%15s %u %255s %255s", how, &c.subop, arg, inner);

        if (fields < 3)
            return 2;
        memset(outer_mem.b, 0xEE, BUF_SIZE);
        if (!strcmp(arg, "null"))
            c.arg = NULL;
        else if (!strcmp(arg, "bogus"))
            c.arg = BOGUS;
        else if (!strcmp(arg, "wrap"))
            c.arg = WRAP;
        else {
            n = from_hex(arg, outer_mem.b);
            c.arg = outer_mem.b;
            if (fields == 4) {
                inner_n = set_inner(inner, c.arg);
                inner_ptr = ((struct pv_iommu_remote_cmd *)c.arg)->arg.p;
            }
        }

        if (!strcmp(how, "conn")) {
            if (!conn && !(conn = xenemu_connect(getenv("XENEMU_SOCKET"))))
                c.ret = -XEN_ENOSYS;
            else
                c.ret = xenemu_iommu_op2(conn, c.subop, c.arg);
        } else if (!strcmp(how, "thread")) {
            pthread_t t;
            if (pthread_create(&t, NULL, in_thread, &c) != 0 || pthread_join(t, NULL) != 0)
                return 2;
        } else {
            c.ret = linux_hypercall(c.subop, c.arg);
        }

        if (c.ret == -XEN_ENOSYS && *xenemu_last_error()) {
            fprintf(stderr, "rev2_runner: %s\n", xenemu_last_error());
            return 3;
        }
        printf("%ld", c.ret);
        print_mem(c.arg, n);
        if (fields == 4 && n)
            print_mem(inner_ptr, inner_n);
        printf("\n");
        fflush(stdout);
    }
    xenemu_close(conn);
    return 0;
}
