/*
 * query_caps - the first thing a PV-IOMMU driver does: ask what it may use.
 *
 *   XENEMU_SOCKET=/tmp/xenemu-$UID/dom0.sock build/query_caps
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "xenemu_client.h"

int main(void)
{
    struct pv_iommu_op op;
    long ret;

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_query_capabilities;
    ret = HYPERVISOR_iommu_op(&op);
    if (ret == -XEN_ENOSYS && *xenemu_last_error()) {
        fprintf(stderr, "query_caps: no PV-IOMMU: %s\n", xenemu_last_error());
        return 1;
    }
    printf("ret=%ld\n", ret);
    printf("max_ctx_no=%u\n", (unsigned)op.cap.max_ctx_no);
    printf("max_nr_pages=%" PRIu32 "\n", op.cap.max_nr_pages);
    printf("max_iova_addr=0x%" PRIx64 "\n", op.cap.max_iova_addr);
    return ret == 0 ? 0 : 2;
}
