/* A revision-2 guest built against abi/rev2 (Linux's HYPERVISOR_iommu_op(subop,
 * arg)) run against `xenemu serve --abi-revision 2`: the Linux v3 driver's
 * sequence on guest1, every answer checked (tests/test_rev2.py). */
#include <stdio.h>
#include <string.h>
#include <xen/pv-iommu.h>
#include "xenemu_client.h"
#define CHECK(c) do { if (!(c)) { printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)
int main(void) {
    struct pv_iommu_capabilities caps; memset(&caps, 0, sizeof caps);
    CHECK(HYPERVISOR_iommu_op(IOMMU_query_capabilities, &caps) == 0);
    CHECK(caps.max_ctx_no == 0 && caps.pgsize_mask == 0x1000 && caps.max_iova_addr == (1ULL << 48) - 1);
    struct pv_iommu_init init = { .max_ctx_no = 128, .arena_order = 12 };
    CHECK(HYPERVISOR_iommu_op(IOMMU_init, &init) == 0);
    CHECK((init.max_ctx_no & 0xffff) == 1);
    struct pv_iommu_alloc alloc = { 0 };
    CHECK(HYPERVISOR_iommu_op(IOMMU_alloc_context, &alloc) == 0 && alloc.ctx_no == 2);
    struct pv_iommu_reattach_device r = { .ctx_no = alloc.ctx_no, .dev = { .seg = 0, .bus = 1, .devfn = 0 } };
    CHECK(HYPERVISOR_iommu_op(IOMMU_reattach_device, &r) == 0);
    struct pv_iommu_map_pages map = { .ctx_no = alloc.ctx_no, .gfn = 0x10, .dfn = 0x100, .nr_pages = 10000,
        .map_flags = IOMMU_MAP_readable | IOMMU_MAP_writeable, .pgsize = 4096 };
    CHECK(HYPERVISOR_iommu_op(IOMMU_map_pages, &map) == 0 && map.mapped == 10000);
    CHECK(map.nr_pages == 10000 - 8192 && map.dfn == 0x100 + 8192);
    struct pv_iommu_unmap_pages un = { .ctx_no = alloc.ctx_no, .dfn = 0x100, .nr_pages = 10000, .pgsize = 4096 };
    CHECK(HYPERVISOR_iommu_op(IOMMU_unmap_pages, &un) == 0 && un.unmapped == 10000);
    CHECK(HYPERVISOR_iommu_op(IOMMU_alloc_nested, NULL) == -95);
    CHECK(HYPERVISOR_iommu_op(IOMMU_noop, NULL) == 0);
    r.ctx_no = 0;
    CHECK(HYPERVISOR_iommu_op(IOMMU_reattach_device, &r) == 0);
    struct pv_iommu_free fr = { .ctx_no = alloc.ctx_no };
    CHECK(HYPERVISOR_iommu_op(IOMMU_free_context, &fr) == 0);
    struct pv_iommu_remote_cmd rc = { .domid = 0, .subop = IOMMU_noop };
    CHECK(HYPERVISOR_iommu_op(IOMMU_remote_cmd, &rc) == -1);   /* -EPERM: not the hardware domain */
    printf("ok\n");
    return 0;
}
