/*
 * abi_dump - the C side of the layout cross-check (tests/test_abi_layout.py).
 *
 *   abi_dump layout   one line per field: "<name> <offset> <size>"
 *   abi_dump frames   one pv_iommu_op per sub-op, filled by C field stores:
 *                     "<subop> <hex of the 32 bytes>"
 *   abi_dump read     reads such lines on stdin and prints every field of
 *                     every union view as C reads it: "<field>=<value> ..."
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <xen/pv-iommu.h>
#include <xenemu/wire.h>

#define FIELD(type, member) \
    printf("%s.%s %zu %zu\n", #type, #member, offsetof(struct type, member), \
           sizeof(((struct type *)0)->member))

static void layout(void)
{
    printf("pv_iommu_op %d %zu\n", 0, sizeof(struct pv_iommu_op));
    FIELD(pv_iommu_op, subop_id);
    FIELD(pv_iommu_op, ctx_no);
    FIELD(pv_iommu_op, flags);
    FIELD(pv_iommu_op, map_pages.gfn);
    FIELD(pv_iommu_op, map_pages.dfn);
    FIELD(pv_iommu_op, map_pages.nr_pages);
    FIELD(pv_iommu_op, map_pages.mapped);
    FIELD(pv_iommu_op, unmap_pages.dfn);
    FIELD(pv_iommu_op, unmap_pages.nr_pages);
    FIELD(pv_iommu_op, unmap_pages.unmapped);
    FIELD(pv_iommu_op, reattach_device.dev.seg);
    FIELD(pv_iommu_op, reattach_device.dev.bus);
    FIELD(pv_iommu_op, reattach_device.dev.devfn);
    FIELD(pv_iommu_op, lookup_page.gfn);
    FIELD(pv_iommu_op, lookup_page.dfn);
    FIELD(pv_iommu_op, cap.max_ctx_no);
    FIELD(pv_iommu_op, cap.max_nr_pages);
    FIELD(pv_iommu_op, cap.max_iova_addr);
    printf("xenemu_frame_hdr %d %zu\n", 0, sizeof(struct xenemu_frame_hdr));
    FIELD(xenemu_frame_hdr, magic);
    FIELD(xenemu_frame_hdr, version);
    FIELD(xenemu_frame_hdr, type);
    FIELD(xenemu_frame_hdr, length);
    FIELD(xenemu_frame_hdr, nr_regions);
    FIELD(xenemu_frame_hdr, reserved);
    FIELD(xenemu_frame_hdr, req_id);
    printf("xenemu_call %d %zu\n", 0, sizeof(struct xenemu_call));
    FIELD(xenemu_call, op);
    FIELD(xenemu_call, args);
    printf("xenemu_reply %d %zu\n", 0, sizeof(struct xenemu_reply));
    FIELD(xenemu_reply, ret);
    printf("xenemu_error %d %zu\n", 0, sizeof(struct xenemu_error));
    FIELD(xenemu_error, code);
    FIELD(xenemu_error, msg_len);
    printf("xenemu_region %d %zu\n", 0, sizeof(struct xenemu_region));
    FIELD(xenemu_region, gaddr);
    FIELD(xenemu_region, len);
    FIELD(xenemu_region, reserved);
}

static void emit(const struct pv_iommu_op *op)
{
    const unsigned char *p = (const unsigned char *)op;
    size_t i;

    printf("%u ", (unsigned)op->subop_id);
    for (i = 0; i < sizeof(*op); i++)
        printf("%02x", p[i]);
    printf("\n");
}

static void frames(void)
{
    struct pv_iommu_op op;

    memset(&op, 0, sizeof(op));
    op.subop_id = 0;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_query_capabilities;
    op.cap.max_ctx_no = 0x1234;
    op.cap.max_nr_pages = 0x89abcdefu;
    op.cap.max_iova_addr = UINT64_C(0x7fffffffff);
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_alloc_context;
    op.ctx_no = 0xbeef;
    op.flags = IOMMU_CREATE_clone;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_free_context;
    op.ctx_no = 7;
    op.flags = IOMMU_TEARDOWN_REATTACH_DEFAULT;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_reattach_device;
    op.ctx_no = 3;
    op.reattach_device.dev.seg = 0xabcd;
    op.reattach_device.dev.bus = 0x42;
    op.reattach_device.dev.devfn = 0x1f;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_map_pages;
    op.ctx_no = 2;
    op.flags = IOMMU_OP_readable | IOMMU_OP_writeable;
    op.map_pages.gfn = UINT64_C(0x0102030405060708);
    op.map_pages.dfn = UINT64_C(0x1112131415161718);
    op.map_pages.nr_pages = 256;
    op.map_pages.mapped = 0xa5a5a5a5u;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_unmap_pages;
    op.ctx_no = 0xffff;
    op.unmap_pages.dfn = UINT64_C(0xfedcba9876543210);
    op.unmap_pages.nr_pages = 17;
    op.unmap_pages.unmapped = 5;
    emit(&op);

    memset(&op, 0, sizeof(op));
    op.subop_id = IOMMUOP_lookup_page;
    op.ctx_no = 1;
    op.lookup_page.gfn = UINT64_C(0x123456789);
    op.lookup_page.dfn = UINT64_C(0x987654321);
    emit(&op);
}

static int read_ops(void)
{
    char line[256];

    while (fgets(line, sizeof(line), stdin)) {
        struct pv_iommu_op op;
        unsigned char *p = (unsigned char *)&op;
        size_t i;

        if (strlen(line) < 2 * sizeof(op))
            return 1;
        for (i = 0; i < sizeof(op); i++) {
            unsigned int byte;
            if (sscanf(line + 2 * i, "%2x", &byte) != 1)
                return 1;
            p[i] = (unsigned char)byte;
        }
        printf("subop_id=%u ctx_no=%u flags=%" PRIu32, (unsigned)op.subop_id,
               (unsigned)op.ctx_no, op.flags);
        printf(" map_pages.gfn=%" PRIu64 " map_pages.dfn=%" PRIu64 " map_pages.nr_pages=%" PRIu32
               " map_pages.mapped=%" PRIu32, op.map_pages.gfn, op.map_pages.dfn,
               op.map_pages.nr_pages, op.map_pages.mapped);
        printf(" unmap_pages.dfn=%" PRIu64 " unmap_pages.nr_pages=%" PRIu32
               " unmap_pages.unmapped=%" PRIu32, op.unmap_pages.dfn, op.unmap_pages.nr_pages,
               op.unmap_pages.unmapped);
        printf(" reattach_device.dev.seg=%u reattach_device.dev.bus=%u"
               " reattach_device.dev.devfn=%u", (unsigned)op.reattach_device.dev.seg,
               (unsigned)op.reattach_device.dev.bus, (unsigned)op.reattach_device.dev.devfn);
        printf(" lookup_page.gfn=%" PRIu64 " lookup_page.dfn=%" PRIu64, op.lookup_page.gfn,
               op.lookup_page.dfn);
        printf(" cap.max_ctx_no=%u cap.max_nr_pages=%" PRIu32 " cap.max_iova_addr=%" PRIu64 "\n",
               (unsigned)op.cap.max_ctx_no, op.cap.max_nr_pages, op.cap.max_iova_addr);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "layout"))
        layout();
    else if (argc == 2 && !strcmp(argv[1], "frames"))
        frames();
    else if (argc == 2 && !strcmp(argv[1], "read"))
        return read_ops();
    else {
        fprintf(stderr, "usage: abi_dump layout|frames|read\n");
        return 2;
    }
    return 0;
}
