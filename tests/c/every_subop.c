/*
 * every_subop - one HYPERVISOR_iommu_op per sub-op (and an unknown one), as
 * driver code would issue them. Prints "<subop> <ret> <hex of the struct
 * after the call>" per call. Exit 3 when the daemon cannot be reached.
 */
#include <stdio.h>
#include <string.h>

#include "xenemu_client.h"

static int issue(struct pv_iommu_op *op)
{
    const unsigned char *p = (const unsigned char *)op;
    unsigned int subop = op->subop_id;
    long ret = HYPERVISOR_iommu_op(op);
    size_t i;

    printf("%u %ld ", subop, ret);
    for (i = 0; i < sizeof(*op); i++)
        printf("%02x", p[i]);
    printf("\n");
    if (ret == -XEN_ENOSYS && *xenemu_last_error()) {
        fprintf(stderr, "every_subop: %s\n", xenemu_last_error());
        return -1;
    }
    return 0;
}

int main(void)
{
    struct pv_iommu_op op;

#define ISSUE() do { if (issue(&op) < 0) return 3; } while (0)
    memset(&op, 0, sizeof(op));
    op.subop_id = 0;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_query_capabilities;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_alloc_context;
    op.flags = IOMMU_CREATE_clone;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_free_context;
    op.ctx_no = 4;
    op.flags = IOMMU_TEARDOWN_REATTACH_DEFAULT;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_reattach_device;
    op.ctx_no = 3;
    op.reattach_device.dev.seg = 0;
    op.reattach_device.dev.bus = 2;
    op.reattach_device.dev.devfn = 9;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_map_pages;
    op.ctx_no = 1;
    op.flags = IOMMU_OP_readable | IOMMU_OP_writeable;
    op.map_pages.gfn = 0x1000;
    op.map_pages.dfn = 0x2000;
    op.map_pages.nr_pages = 256;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_unmap_pages;
    op.ctx_no = 1;
    op.unmap_pages.dfn = 0x2000;
    op.unmap_pages.nr_pages = 256;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_lookup_page;
    op.ctx_no = 1;
    op.lookup_page.dfn = 0x2000;
    ISSUE();

    memset(&op, 0, sizeof(op));
    op.subop_id = 99;
    ISSUE();
    return 0;
}
