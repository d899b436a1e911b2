/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: x86's <asm/iommu.h>. The kernel's declares the boot-time
 * IOMMU detection flags; no driver under the workbench reads them, so this
 * header only exists for drivers that include it.
 */
#ifndef _WB_ASM_IOMMU_H
#define _WB_ASM_IOMMU_H
#include <linux/iommu.h>
#endif
