/* SPDX-License-Identifier: MIT */
/*
 * xenemu_client.h - issue Xen hypercalls to the xenemu daemon from userspace.
 *
 * Guest-driver code calls HYPERVISOR_iommu_op(&op) as it would in a kernel
 * (revision 1, -Iabi), or HYPERVISOR_iommu_op(subop, &arg) (revision 2: build
 * with -Iabi/rev2 -Iabi, which picks abi/rev2/xen/pv-iommu.h); one library
 * serves both. Here the call travels to the daemon over the Unix socket named by the
 * environment variable XENEMU_SOCKET (connected on first use), and the
 * struct comes back as Xen wrote it. Harnesses that act as several domains
 * open one connection per domain socket with xenemu_connect() and use the
 * xenemu_* calls that take a connection.
 *
 * Return values are the hypercall's: 0 or -XEN_E*. When the daemon cannot be
 * reached or the connection breaks, calls return -XEN_ENOSYS (what a kernel
 * sees when the hypervisor lacks the hypercall) and xenemu_last_error() says
 * why.
 *
 * Threads (link with -pthread). Every call may be made from any thread:
 * - HYPERVISOR_iommu_op() uses the calling thread's own connection to
 *   $XENEMU_SOCKET, made on its first call (a thread is a vCPU: vCPUs do not
 *   wait for each other). It is closed when the thread exits; the main
 *   thread's is left to the OS at process exit (closed by pthread_exit()).
 * - A connection from xenemu_connect() may be shared by threads: its calls
 *   take turns (one request in flight per connection; a lock held for the
 *   whole call), so sharing just works, as one vCPU's hypercalls are one
 *   after the other. For calls that overlap, give each thread a connection.
 * - xenemu_close() ends a connection: closing one that another thread is
 *   using, or using it after, is the caller's bug (as free() would be).
 * - xenemu_last_error() is per thread: it describes the calling thread's
 *   last call only.
 * - A call is not a cancellation point: pthread_cancel() takes effect after it.
 * - After fork(), HYPERVISOR_iommu_op() in the child connects anew; a
 *   connection from xenemu_connect() made before fork() is the parent's socket
 *   and must not be used in the child.
 */
#ifndef XENEMU_CLIENT_H
#define XENEMU_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <xen/errno.h>
#include <xen/pv-iommu.h>
#include <xenemu/wire.h>

#ifdef __cplusplus
extern "C" {
#endif

struct xenemu_conn;

/* A region of the caller's memory a hypercall may read and write. */
struct xenemu_buf {
    void *ptr;        /* its guest address is (uintptr_t)ptr */
    uint32_t len;
};

/* Connect to a domain socket; NULL on failure (see xenemu_last_error()). */
struct xenemu_conn *xenemu_connect(const char *path);
/* Close a connection (NULL is fine); no thread may be using it or use it after. */
void xenemu_close(struct xenemu_conn *conn);

/*
 * The connection HYPERVISOR_iommu_op uses in the calling thread ($XENEMU_SOCKET),
 * made on first use; NULL when that fails (retried on the next call). Owned by
 * the thread: do not close it.
 */
struct xenemu_conn *xenemu_default_conn(void);

/*
 * Any hypercall: number, five arguments, and the buffers handle arguments
 * point to (at most XENEMU_MAX_REGIONS). The buffers are sent, and on return
 * hold what the hypervisor wrote back.
 */
long xenemu_hypercall(struct xenemu_conn *conn, uint64_t op, const uint64_t args[XENEMU_NR_ARGS],
                      const struct xenemu_buf *bufs, unsigned int nr_bufs);

/*
 * __HYPERVISOR_iommu_op of revision 2 (Xen RFC v4-v7, abi/rev2/xen/pv-iommu.h)
 * on a given connection: subop in the first argument register, arg (the
 * struct that sub-op names, or NULL) in the second. The client sends the
 * struct the sub-op's number names, plus, for IOMMU_remote_cmd, the struct
 * its arg handle points to (the inner sub-op's), and copies both back. arg
 * is not read for sub-ops Xen does not read it for (noop, 9-12, unknown
 * ones), so any value may be passed there, as to Xen. Declared whichever
 * header a program includes: a harness may speak either revision.
 */
long xenemu_iommu_op2(struct xenemu_conn *conn, unsigned int subop, void *arg);

/* The same on the calling thread's connection, xenemu_default_conn(). */
long xenemu_iommu_op2_default(unsigned int subop, void *arg);

#if defined(XENEMU_PV_IOMMU_REVISION) && XENEMU_PV_IOMMU_REVISION == 2
/*
 * Built against revision 2 (-Iabi/rev2 -Iabi): Linux's prototype, as its
 * asm/xen/hypercall.h defines it, a static inline function too. The two
 * revisions' HYPERVISOR_iommu_op differ in type, so the library cannot export
 * both under that name: revision 1 keeps the symbol, revision 2 is this
 * inline wrapper around xenemu_iommu_op2_default().
 */
static inline long HYPERVISOR_iommu_op(unsigned int subop, void *arg)
{
    return xenemu_iommu_op2_default(subop, arg);
}
#else
/* __HYPERVISOR_iommu_op (revision 1) on a given connection. */
long xenemu_iommu_op(struct xenemu_conn *conn, struct pv_iommu_op *op);

/* __HYPERVISOR_iommu_op (revision 1) as a guest kernel calls it. */
long HYPERVISOR_iommu_op(struct pv_iommu_op *op);
#endif

/*
 * __HYPERVISOR_memory_op, Linux's prototype, on the calling thread's
 * connection; xenemu_memory_op on a given one. For
 * XENMEM_reserved_device_memory_map (<xen/memory.h>) the struct at arg and
 * the nr_entries entries its buffer handle points to (none for a NULL
 * handle) are sent and copied back; other commands send nothing (-ENOSYS).
 */
long xenemu_memory_op(struct xenemu_conn *conn, unsigned int cmd, void *arg);
long HYPERVISOR_memory_op(unsigned int cmd, void *arg);

/*
 * Why the calling thread's last failed call failed at the transport level
 * ("" after a call that reached the daemon). Per thread.
 */
const char *xenemu_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* XENEMU_CLIENT_H */
