/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: <linux/dma-map-ops.h>. There is no DMA API here: the
 * runner plays the DMA user (iommu_map / iommu_unmap on the domains it owns)
 * and the device (the daemon's `dma` control op). The header exists so that a
 * driver including it builds; it offers DMA_BIT_MASK and nothing else.
 */
#ifndef _WB_LINUX_DMA_MAP_OPS_H
#define _WB_LINUX_DMA_MAP_OPS_H

#include <linux/device.h>

#define DMA_BIT_MASK(n) (((n) == 64) ? ~0ULL : ((1ULL << (n)) - 1))

#endif
