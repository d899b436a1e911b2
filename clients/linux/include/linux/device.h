/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: struct device, the part IOMMU drivers touch: its name,
 * its bus, driver data, and the IOMMU core's per-device state (iommu_group,
 * the driver's private pointer behind dev_iommu_priv_get/set). dev_* print
 * "<name>: text" at the level of the pr_* of the same name.
 */
#ifndef _WB_LINUX_DEVICE_H
#define _WB_LINUX_DEVICE_H

#include <linux/kernel.h>
#include <linux/list.h>

struct bus_type { const char *name; };
struct iommu_group;
struct dev_iommu;

struct device {
    struct device *parent;
    const char *init_name;
    const struct bus_type *bus;
    void *driver_data;
    struct iommu_group *iommu_group;
    struct dev_iommu *iommu;          /* the core's record of the device */
};

static inline const char *dev_name(const struct device *dev)
{
    return dev->init_name ? dev->init_name : "(no name)";
}
static inline void *dev_get_drvdata(const struct device *dev) { return dev->driver_data; }
static inline void dev_set_drvdata(struct device *dev, void *data) { dev->driver_data = data; }

#define dev_printk(level, dev, fmt, ...) printk(level "%s: " fmt, dev_name(dev), ##__VA_ARGS__)
#define dev_err(dev, fmt, ...)    dev_printk(KERN_ERR, dev, fmt, ##__VA_ARGS__)
#define dev_warn(dev, fmt, ...)   dev_printk(KERN_WARNING, dev, fmt, ##__VA_ARGS__)
#define dev_notice(dev, fmt, ...) dev_printk(KERN_NOTICE, dev, fmt, ##__VA_ARGS__)
#define dev_info(dev, fmt, ...)   dev_printk(KERN_INFO, dev, fmt, ##__VA_ARGS__)
#define dev_dbg(dev, fmt, ...)    dev_printk(KERN_DEBUG, dev, fmt, ##__VA_ARGS__)

#endif
