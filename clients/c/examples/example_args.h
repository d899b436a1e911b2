/* SPDX-License-Identifier: MIT */
/*
 * example_args.h - command-line parsing shared by the driver examples
 * (xen_iommu_driver.c for revision 1, xen_iommu_driver_v2.c for revision 2):
 * numbers, a PCI device as SSSS:BB:DD.F and a list of reserved ranges.
 * Header-only (static inline), so each example stays one translation unit.
 */
#ifndef XENEMU_EXAMPLE_ARGS_H
#define XENEMU_EXAMPLE_ARGS_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include <xen/memory.h>
#include <xen/physdev.h>

/* A number in `base`; 0 on success. Refuses what strtoull would let through. */
static inline int parse_u64(const char *s, int base, uint64_t *out)
{
    char *end;
    unsigned long long v;

    /* strtoull would accept blanks, a sign and (base 16) a 0x prefix. */
    if (!*s || *s == ' ' || *s == '\t' || *s == '-' || *s == '+')
        return -1;
    if (base == 16 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (!*s)
        return -1;
    errno = 0;
    v = strtoull(s, &end, base);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

/* A field of SSSS:BB:DD.F: 1..width hex digits, then `sep`. */
static inline const char *parse_hex_field(const char *s, unsigned int width, char sep,
                                          unsigned int *out)
{
    unsigned int v = 0, n = 0;

    for (; *s && *s != sep; s++, n++) {
        unsigned int d;

        if (*s >= '0' && *s <= '9')
            d = (unsigned int)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (unsigned int)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F')
            d = (unsigned int)(*s - 'A' + 10);
        else
            return NULL;
        v = v * 16 + d;
        if (n + 1 > width)
            return NULL;
    }
    if (n == 0 || *s != sep)
        return NULL;
    *out = v;
    return sep ? s + 1 : s;
}

/* SSSS:BB:DD.F into a physdev_pci_device; 0 on success. */
static inline int parse_sbdf(const char *s, struct physdev_pci_device *dev)
{
    unsigned int seg, bus, slot, fn;

    if (!(s = parse_hex_field(s, 4, ':', &seg)) || !(s = parse_hex_field(s, 2, ':', &bus)) ||
        !(s = parse_hex_field(s, 2, '.', &slot)) || !(s = parse_hex_field(s, 1, '\0', &fn)) ||
        slot > 0x1f || fn > 7)
        return -1;
    dev->seg = (uint16_t)seg;
    dev->bus = (uint8_t)bus;
    dev->devfn = (uint8_t)(slot << 3 | fn);
    return 0;
}

/* The device back as text, for the output lines. */
static inline void format_sbdf(const struct physdev_pci_device *dev, char *buf, size_t len)
{
    snprintf(buf, len, "%04x:%02x:%02x.%u", (unsigned)dev->seg, (unsigned)dev->bus,
             (unsigned)(dev->devfn >> 3), (unsigned)(dev->devfn & 7));
}

/*
 * At most this many ranges in --expect-rmrr: a machine has at most 1024
 * (xenemu's bound on [[rmrr]] tables), so a longer list cannot match.
 */
#define RMRR_LIST_MAX 1024

/* The ranges --expect-rmrr names. */
struct rmrr_list {
    int given;
    unsigned int nr;
    xen_reserved_device_memory_t range[RMRR_LIST_MAX];
};

/*
 * "none", or START_PFN:NR_PAGES[,START_PFN:NR_PAGES...] (pfn in hex, pages in
 * decimal, at least 1) into `list`; 0 on success.
 */
static inline int parse_rmrr_list(const char *s, struct rmrr_list *list)
{
    char item[64];

    list->given = 1;
    list->nr = 0;
    if (!strcmp(s, "none"))
        return 0;
    for (;;) {
        const char *end = strchr(s, ','), *colon;
        size_t len = end ? (size_t)(end - s) : strlen(s);
        xen_reserved_device_memory_t *r = &list->range[list->nr];

        if (list->nr == RMRR_LIST_MAX || len >= sizeof(item))
            return -1;
        memcpy(item, s, len);
        item[len] = '\0';
        colon = strchr(item, ':');
        if (!colon)
            return -1;
        item[colon - item] = '\0';
        if (parse_u64(item, 16, &r->start_pfn) || parse_u64(colon + 1, 10, &r->nr_pages) ||
            r->nr_pages == 0)
            return -1;
        list->nr++;
        if (!end)
            return 0;
        s = end + 1;
    }
}

#endif
