/* SPDX-License-Identifier: MIT */
/*
 * rdm_driver.c - the Linux xen-iommu driver's reserved-region calls, built
 * against either revision's headers: __HYPERVISOR_memory_op
 * XENMEM_reserved_device_memory_map with a NULL buffer and nr_entries 0 to
 * learn the count (-ENOBUFS), then again with a buffer of that many.
 *
 * usage: rdm_driver SEG BUS DEVFN FLAGS   (numbers, 0x.. accepted)
 * prints "count RC N", then "fetch RC N", then one "START NR" line per entry.
 */
#include <stdio.h>
#include <stdlib.h>

#include <xen/memory.h>

#include "xenemu_client.h"

int main(int argc, char **argv)
{
    struct xen_reserved_device_memory_map map = { 0 };
    xen_reserved_device_memory_t *entries;
    long rc;
    unsigned int i;

    if (argc != 5) {
        fprintf(stderr, "usage: %s SEG BUS DEVFN FLAGS\n", argv[0]);
        return 2;
    }
    map.dev.pci.seg = (uint16_t)strtoul(argv[1], NULL, 0);
    map.dev.pci.bus = (uint8_t)strtoul(argv[2], NULL, 0);
    map.dev.pci.devfn = (uint8_t)strtoul(argv[3], NULL, 0);
    map.flags = (uint32_t)strtoul(argv[4], NULL, 0);
    map.nr_entries = 0;
    map.buffer.p = NULL;
    rc = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    printf("count %ld %u\n", rc, map.nr_entries);
    if (rc != -XEN_ENOBUFS)
        return rc == 0 ? 0 : 1;
    entries = calloc(map.nr_entries, sizeof(*entries));
    if (!entries)
        return 1;
    map.buffer.p = entries;
    rc = HYPERVISOR_memory_op(XENMEM_reserved_device_memory_map, &map);
    printf("fetch %ld %u\n", rc, map.nr_entries);
    for (i = 0; rc == 0 && i < map.nr_entries; i++)
        printf("%#llx %llu\n", (unsigned long long)entries[i].start_pfn,
               (unsigned long long)entries[i].nr_pages);
    /* A command Xen does not implement, on the same connection. */
    printf("other %ld\n", HYPERVISOR_memory_op(2, NULL));
    free(entries);
    return rc == 0 ? 0 : 1;
}
