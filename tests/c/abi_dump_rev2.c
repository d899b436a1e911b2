/*
 * abi_dump_rev2 - revision 2's header as a compiler lays it out, for
 * tests/test_abi_rev2.py. Built with -Iabi/rev2 -Iabi as C99, C11 and C++.
 *
 *   "<struct> <size>"                  per struct
 *   "<struct>.<field> <offset> <size>" per field
 *   "const <name> <value>"             per constant
 */
#include <stddef.h>
#include <stdio.h>

#include <xen/pv-iommu.h>

#define STRUCT(type) printf("%s %zu\n", #type, sizeof(struct type))
#define FIELD(type, member) \
    printf("%s.%s %zu %zu\n", #type, #member, offsetof(struct type, member), \
           sizeof(((struct type *)0)->member))
#define CONST(name) printf("const %s %llu\n", #name, (unsigned long long)(name))

int main(void)
{
    STRUCT(pv_iommu_capabilities);
    FIELD(pv_iommu_capabilities, max_iova_addr);
    FIELD(pv_iommu_capabilities, cap_flags);
    FIELD(pv_iommu_capabilities, pgsize_mask);
    FIELD(pv_iommu_capabilities, max_pasid);
    FIELD(pv_iommu_capabilities, max_ctx_no);
    FIELD(pv_iommu_capabilities, pad0);
    STRUCT(pv_iommu_init);
    FIELD(pv_iommu_init, max_ctx_no);
    FIELD(pv_iommu_init, arena_order);
    STRUCT(pv_iommu_alloc);
    FIELD(pv_iommu_alloc, ctx_no);
    FIELD(pv_iommu_alloc, alloc_flags);
    STRUCT(pv_iommu_free);
    FIELD(pv_iommu_free, ctx_no);
    FIELD(pv_iommu_free, free_flags);
    STRUCT(pv_iommu_map_pages);
    FIELD(pv_iommu_map_pages, ctx_no);
    FIELD(pv_iommu_map_pages, gfn);
    FIELD(pv_iommu_map_pages, dfn);
    FIELD(pv_iommu_map_pages, map_flags);
    FIELD(pv_iommu_map_pages, pgsize);
    FIELD(pv_iommu_map_pages, nr_pages);
    FIELD(pv_iommu_map_pages, mapped);
    STRUCT(pv_iommu_unmap_pages);
    FIELD(pv_iommu_unmap_pages, ctx_no);
    FIELD(pv_iommu_unmap_pages, dfn);
    FIELD(pv_iommu_unmap_pages, pgsize);
    FIELD(pv_iommu_unmap_pages, nr_pages);
    FIELD(pv_iommu_unmap_pages, unmapped);
    STRUCT(pv_iommu_reattach_device);
    FIELD(pv_iommu_reattach_device, ctx_no);
    FIELD(pv_iommu_reattach_device, dev);
    FIELD(pv_iommu_reattach_device, dev.seg);
    FIELD(pv_iommu_reattach_device, dev.bus);
    FIELD(pv_iommu_reattach_device, dev.devfn);
    FIELD(pv_iommu_reattach_device, pasid);
    STRUCT(pv_iommu_remote_cmd);
    FIELD(pv_iommu_remote_cmd, domid);
    FIELD(pv_iommu_remote_cmd, subop);
    FIELD(pv_iommu_remote_cmd, arg);
    STRUCT(pv_iommu_alloc_nested);
    FIELD(pv_iommu_alloc_nested, ctx_no);
    FIELD(pv_iommu_alloc_nested, pgtable_gfn);
    FIELD(pv_iommu_alloc_nested, nested_flags);
    STRUCT(pv_iommu_flush_nested);
    STRUCT(pv_iommu_attach_pasid);
    FIELD(pv_iommu_attach_pasid, ctx_no);
    FIELD(pv_iommu_attach_pasid, dev);
    FIELD(pv_iommu_attach_pasid, pasid);
    STRUCT(pv_iommu_detach_pasid);
    FIELD(pv_iommu_detach_pasid, dev);
    FIELD(pv_iommu_detach_pasid, pasid);

    CONST(IOMMU_DEFAULT_CONTEXT);
    CONST(IOMMU_noop);
    CONST(IOMMU_query_capabilities);
    CONST(IOMMU_init);
    CONST(IOMMU_alloc_context);
    CONST(IOMMU_free_context);
    CONST(IOMMU_reattach_device);
    CONST(IOMMU_map_pages);
    CONST(IOMMU_unmap_pages);
    CONST(IOMMU_remote_cmd);
    CONST(IOMMU_alloc_nested);
    CONST(IOMMU_flush_nested);
    CONST(IOMMU_attach_pasid);
    CONST(IOMMU_detach_pasid);
    CONST(IOMMUCAP_default_identity);
    CONST(IOMMUCAP_cache);
    CONST(IOMMUCAP_nested);
    CONST(IOMMUCAP_pasid);
    CONST(IOMMUCAP_identity);
    CONST(IOMMU_ALLOC_identity);
    CONST(IOMMU_FREE_reattach_default);
    CONST(IOMMU_MAP_readable);
    CONST(IOMMU_MAP_writeable);
    CONST(IOMMU_MAP_cache);
    CONST(__HYPERVISOR_iommu_op);
    return 0;
}
