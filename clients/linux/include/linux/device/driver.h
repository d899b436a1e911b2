/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: <linux/device/driver.h>: no driver model here; struct
 * device is <linux/device.h>'s, and the kernel's header brings
 * <linux/module.h> (MODULE_*, module_init) as this one does.
 */
#include <linux/device.h>
#include <linux/module.h>
