/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: x86's <asm/iommu.h>: the boot-time IOMMU flags. They
 * exist (a driver may set them) and nothing reads them: there is no swiotlb
 * and no boot here.
 */
#ifndef _WB_ASM_IOMMU_H
#define _WB_ASM_IOMMU_H
#include <linux/iommu.h>

extern int force_iommu, no_iommu, iommu_detected;
extern bool x86_swiotlb_enable;
#endif
