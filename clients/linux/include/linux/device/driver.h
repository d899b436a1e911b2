/* SPDX-License-Identifier: MIT */
/* xenemu workbench: <linux/device/driver.h>: no driver model here; struct device is <linux/device.h>'s. */
#include <linux/device.h>
