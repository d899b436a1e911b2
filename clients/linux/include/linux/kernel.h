/* SPDX-License-Identifier: MIT */
/* xenemu workbench: what drivers take from <linux/kernel.h> (and the headers it pulls in). */
#ifndef _WB_LINUX_KERNEL_H
#define _WB_LINUX_KERNEL_H

#include <linux/bits.h>
#include <linux/bug.h>
#include <linux/compiler.h>
#include <linux/container_of.h>
#include <linux/err.h>
#include <linux/minmax.h>
#include <linux/printk.h>
#include <linux/string.h>   /* the kernel gets it through other headers */
#include <linux/types.h>

#define ARRAY_SIZE(a)        (sizeof(a) / sizeof((a)[0]))
#define ALIGN(x, a)          (((x) + ((__typeof__(x))(a) - 1)) & ~((__typeof__(x))(a) - 1))
#define ALIGN_DOWN(x, a)     ((x) & ~((__typeof__(x))(a) - 1))
#define IS_ALIGNED(x, a)     (((x) & ((__typeof__(x))(a) - 1)) == 0)
#define DIV_ROUND_UP(n, d)   (((n) + (d) - 1) / (d))
#define U16_MAX              ((u16)~0U)
#define U32_MAX              ((u32)~0U)
#define U64_MAX              ((u64)~0ULL)

#define PAGE_SHIFT   12
#define PAGE_SIZE    (1UL << PAGE_SHIFT)
#define PAGE_MASK    (~(PAGE_SIZE - 1))
#define PFN_DOWN(x)  ((unsigned long)((x) >> PAGE_SHIFT))
#define PFN_UP(x)    ((unsigned long)(((x) + PAGE_SIZE - 1) >> PAGE_SHIFT))
#define PFN_PHYS(x)  ((phys_addr_t)(x) << PAGE_SHIFT)

#endif
