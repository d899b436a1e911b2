/* SPDX-License-Identifier: MIT */
/*
 * xenemu_client.h - issue Xen hypercalls to the xenemu daemon from userspace.
 *
 * Guest-driver code calls HYPERVISOR_iommu_op(&op) as it would in a kernel;
 * here the call travels to the daemon over the Unix socket named by the
 * environment variable XENEMU_SOCKET (connected on first use), and the
 * struct comes back as Xen wrote it. Harnesses that act as several domains
 * open one connection per domain socket with xenemu_connect() and use the
 * xenemu_* calls that take a connection.
 *
 * Return values are the hypercall's: 0 or -XEN_E*. When the daemon cannot be
 * reached or the connection breaks, calls return -XEN_ENOSYS (what a kernel
 * sees when the hypervisor lacks the hypercall) and xenemu_last_error() says
 * why. Connections are not thread-safe: use one per thread (the error text
 * is shared by all threads).
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
void xenemu_close(struct xenemu_conn *conn);

/* The connection HYPERVISOR_iommu_op uses ($XENEMU_SOCKET), made on first use. */
struct xenemu_conn *xenemu_default_conn(void);

/*
 * Any hypercall: number, five arguments, and the buffers handle arguments
 * point to (at most XENEMU_MAX_REGIONS). The buffers are sent, and on return
 * hold what the hypervisor wrote back.
 */
long xenemu_hypercall(struct xenemu_conn *conn, uint64_t op, const uint64_t args[XENEMU_NR_ARGS],
                      const struct xenemu_buf *bufs, unsigned int nr_bufs);

/* __HYPERVISOR_iommu_op on a given connection. */
long xenemu_iommu_op(struct xenemu_conn *conn, struct pv_iommu_op *op);

/* __HYPERVISOR_iommu_op as a guest kernel calls it. */
long HYPERVISOR_iommu_op(struct pv_iommu_op *op);

/* Why the last failed call failed at the transport level ("" after a call that reached the daemon). */
const char *xenemu_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* XENEMU_CLIENT_H */
