/* SPDX-License-Identifier: MIT */
/*
 * xenemu_client_v2.c - revision 2 of __HYPERVISOR_iommu_op (Xen RFC v4-v7) in
 * the C client: which guest memory a call hands the daemon.
 *
 * Built with -Iabi/rev2 -Iabi, so <xen/pv-iommu.h> is the revision-2 header;
 * the transport is xenemu_client.c's xenemu_hypercall(). A revision-2 call is
 * do_iommu_op(subop, arg): subop in args[0] (rdi), the guest address of arg in
 * args[1] (rsi), and as regions the guest memory Xen would copy from and to:
 * the struct the sub-op names, and for remote_cmd also the inner sub-op's
 * struct its handle points to. Xen reads nothing for noop, 9-12 and unknown
 * sub-ops, and neither does this client: their arg may be any value.
 */
#include "xenemu_client.h"


/*
 * Bytes Xen copies at arg for each sub-op (v7, x86-64); 0: arg is not read.
 * Indexed by subop, which Xen takes as an int: values >= 2^31 are negative
 * there and unknown, as they are here (out of the table).
 */
static const uint32_t arg_size[] = {
    [IOMMU_noop] = 0,
    [IOMMU_query_capabilities] = sizeof(struct pv_iommu_capabilities),
    [IOMMU_init] = sizeof(struct pv_iommu_init),
    [IOMMU_alloc_context] = sizeof(struct pv_iommu_alloc),
    [IOMMU_free_context] = sizeof(struct pv_iommu_free),
    [IOMMU_reattach_device] = sizeof(struct pv_iommu_reattach_device),
    [IOMMU_map_pages] = sizeof(struct pv_iommu_map_pages),
    [IOMMU_unmap_pages] = sizeof(struct pv_iommu_unmap_pages),
    [IOMMU_remote_cmd] = sizeof(struct pv_iommu_remote_cmd),
    /* alloc_nested, flush_nested, attach_pasid, detach_pasid: -EOPNOTSUPP, arg untouched */
    [IOMMU_alloc_nested] = 0,
    [IOMMU_flush_nested] = 0,
    [IOMMU_attach_pasid] = 0,
    [IOMMU_detach_pasid] = 0,
};

static uint32_t size_of_arg(unsigned int subop)
{
    return subop < sizeof(arg_size) / sizeof(arg_size[0]) ? arg_size[subop] : 0;
}

/*
 * Whether len bytes at p are a region to send: not for a null handle, nor for
 * memory that would run past the top of the address space (no guest has it:
 * Xen's copy fails with -EFAULT, and so does the daemon without the region).
 */
static int is_region(const void *p, uint32_t len)
{
    return p && len && (uintptr_t)p <= UINTPTR_MAX - len;
}

/*
 * remote_cmd's inner struct: in the caller's memory, read and written there by
 * the inner sub-op. A nested remote_cmd is refused (-EINVAL) before its arg is
 * read, so it has none. Guest memory has one content per address, and the
 * protocol refuses overlapping regions: an inner struct that shares bytes with
 * the remote_cmd is sent as one region spanning both.
 */
static unsigned int add_inner_region(const struct pv_iommu_remote_cmd *cmd, struct xenemu_buf *bufs)
{
    uint32_t len = cmd->subop == IOMMU_remote_cmd ? 0 : size_of_arg(cmd->subop);
    uintptr_t outer = (uintptr_t)bufs[0].ptr, inner = (uintptr_t)cmd->arg.p;
    uintptr_t start, end;

    if (!is_region(cmd->arg.p, len))
        return 1;
    if (inner >= outer + bufs[0].len || outer >= inner + len) {
        bufs[1].ptr = cmd->arg.p;
        bufs[1].len = len;
        return 2;
    }
    start = inner < outer ? inner : outer;
    end = inner + len > outer + bufs[0].len ? inner + len : outer + bufs[0].len;
    bufs[0].ptr = (void *)start;
    bufs[0].len = (uint32_t)(end - start);
    return 1;
}

long xenemu_iommu_op2(struct xenemu_conn *conn, unsigned int subop, void *arg)
{
    uint64_t args[XENEMU_NR_ARGS] = { subop, (uint64_t)(uintptr_t)arg, 0, 0, 0 };
    struct xenemu_buf bufs[2];
    unsigned int nr_bufs = 0;

    if (is_region(arg, size_of_arg(subop))) {
        bufs[0].ptr = arg;
        bufs[0].len = size_of_arg(subop);
        nr_bufs = subop == IOMMU_remote_cmd ? add_inner_region(arg, bufs) : 1;
    }
    return xenemu_hypercall(conn, __HYPERVISOR_iommu_op, args, bufs, nr_bufs);
}

long xenemu_iommu_op2_default(unsigned int subop, void *arg)
{
    return xenemu_iommu_op2(xenemu_default_conn(), subop, arg);
}
