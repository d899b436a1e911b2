/* SPDX-License-Identifier: MIT */
/*
 * physdev.h - struct physdev_pci_device from Xen's public physdev.h.
 */
#ifndef __XEN_PUBLIC_PHYSDEV_H__
#define __XEN_PUBLIC_PHYSDEV_H__

#include "xen.h"

/* A PCI device by segment, bus and devfn (device << 3 | function). */
struct physdev_pci_device {
    uint16_t seg;
    uint8_t bus;
    uint8_t devfn;
};
typedef struct physdev_pci_device physdev_pci_device_t;

#endif /* __XEN_PUBLIC_PHYSDEV_H__ */
