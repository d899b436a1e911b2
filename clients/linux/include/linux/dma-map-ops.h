/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: <linux/dma-map-ops.h>. There is no DMA API here: the
 * runner plays the DMA user (iommu_map / iommu_unmap on the domains it owns)
 * and the device (the daemon's `dma` control op). The header exists so that a
 * driver including it builds: DMA_BIT_MASK, and set_dma_ops and
 * iommu_setup_dma_ops accepted and ignored (any kernel version's arguments).
 */
#ifndef _WB_LINUX_DMA_MAP_OPS_H
#define _WB_LINUX_DMA_MAP_OPS_H

#include <linux/device.h>

#define DMA_BIT_MASK(n) (((n) == 64) ? ~0ULL : ((1ULL << (n)) - 1))

struct dma_map_ops;

static inline void set_dma_ops(struct device *dev, const struct dma_map_ops *ops)
{
    (void)dev;
    (void)ops;
}
#define iommu_setup_dma_ops(dev, ...) ((void)(dev))

#endif
