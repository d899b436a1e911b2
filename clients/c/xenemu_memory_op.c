/* SPDX-License-Identifier: MIT */
/*
 * xenemu_memory_op.c - __HYPERVISOR_memory_op in the C client: which guest
 * memory a call hands the daemon. Revision-independent (abi/xen/memory.h is
 * the same under both include roots), so HYPERVISOR_memory_op is one symbol.
 *
 * do_memory_op(cmd, arg): cmd in args[0], arg's address in args[1]. For
 * XENMEM_reserved_device_memory_map the regions are the struct at arg and the
 * entries its buffer handle points to (nr_entries of them; none for a NULL
 * handle, the Linux driver's counting call). Other commands: no region (the
 * daemon answers them -ENOSYS without reading arg).
 */
#include <xen/memory.h>

#include "xenemu_client.h"

/*
 * Xen writes at most one entry per range and a machine has at most 1024
 * (xenemu's [[rmrr]] bound): a larger buffer is sent as its first 1024
 * entries, which keeps the frame far below the protocol's 1 MiB.
 */
#define RDM_MAX_SENT 1024u

long xenemu_memory_op(struct xenemu_conn *conn, unsigned int cmd, void *arg)
{
    uint64_t args[XENEMU_NR_ARGS] = { cmd, (uint64_t)(uintptr_t)arg, 0, 0, 0 };
    struct xenemu_buf bufs[2];
    unsigned int nr_bufs = 0;
    const struct xen_reserved_device_memory_map *map = arg;
    uintptr_t s0, e0, s1, e1;
    uint32_t n;

    if ((cmd & MEMOP_CMD_MASK) != XENMEM_reserved_device_memory_map || !arg ||
        (uintptr_t)arg > UINTPTR_MAX - sizeof(*map))
        return xenemu_hypercall(conn, __HYPERVISOR_memory_op, args, NULL, 0);
    bufs[0].ptr = arg;
    bufs[0].len = sizeof(*map);
    nr_bufs = 1;
    n = map->nr_entries < RDM_MAX_SENT ? map->nr_entries : RDM_MAX_SENT;
    s1 = (uintptr_t)map->buffer.p;
    if (s1 && n && s1 <= UINTPTR_MAX - n * sizeof(xen_reserved_device_memory_t)) {
        e1 = s1 + n * sizeof(xen_reserved_device_memory_t);
        s0 = (uintptr_t)arg;
        e0 = s0 + sizeof(*map);
        if (e1 <= s0 || e0 <= s1) {
            bufs[1].ptr = map->buffer.p;
            bufs[1].len = (uint32_t)(e1 - s1);
            nr_bufs = 2;
        } else {
            /* One content per guest address: overlapping memory is one region. */
            bufs[0].ptr = (void *)(s0 < s1 ? s0 : s1);
            bufs[0].len = (uint32_t)((e0 > e1 ? e0 : e1) - (s0 < s1 ? s0 : s1));
        }
    }
    return xenemu_hypercall(conn, __HYPERVISOR_memory_op, args, bufs, nr_bufs);
}

long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
    return xenemu_memory_op(xenemu_default_conn(), cmd, arg);
}
