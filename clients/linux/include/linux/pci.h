/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: PCI devices as the IOMMU core hands them to a driver.
 * The runner makes one struct pci_dev per device the daemon says the domain
 * owns (segment, bus, devfn); there is no config space, no resources, no
 * driver binding. pci_device_group gives each device its own group (no
 * ACS/alias walk: the daemon's devices are isolated functions).
 */
#ifndef _WB_LINUX_PCI_H
#define _WB_LINUX_PCI_H

#include <linux/device.h>

extern const struct bus_type pci_bus_type;

struct pci_bus {
    int domain_nr;               /* the segment */
    unsigned char number;
};

struct pci_dev {
    struct device dev;
    struct pci_bus *bus;
    unsigned int devfn;
    unsigned short vendor, device;
    u8 hdr_type;                 /* PCI_HEADER_TYPE_NORMAL: the daemon's devices are endpoints */
    char name[16];               /* "SSSS:BB:DD.F", dev.init_name */
};

#define PCI_HEADER_TYPE_NORMAL  0
#define PCI_HEADER_TYPE_BRIDGE  1
#define PCI_HEADER_TYPE_CARDBUS 2

#define PCI_DEVFN(slot, func) ((((slot) & 0x1f) << 3) | ((func) & 0x07))
#define PCI_SLOT(devfn)       (((devfn) >> 3) & 0x1f)
#define PCI_FUNC(devfn)       ((devfn) & 0x07)

#define to_pci_dev(d) container_of(d, struct pci_dev, dev)
static inline bool dev_is_pci(const struct device *dev) { return dev->bus == &pci_bus_type; }
static inline int pci_domain_nr(const struct pci_bus *bus) { return bus->domain_nr; }
static inline const char *pci_name(const struct pci_dev *pdev) { return dev_name(&pdev->dev); }
static inline u16 pci_dev_id(const struct pci_dev *pdev) { return (u16)(pdev->bus->number << 8 | pdev->devfn); }

struct iommu_group *pci_device_group(struct device *dev);

#endif
