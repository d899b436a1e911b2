/* SPDX-License-Identifier: MIT */
/* xenemu workbench: the kernel's fixed-size types, on the C library's. */
#ifndef _WB_LINUX_TYPES_H
#define _WB_LINUX_TYPES_H

/* The system's (userspace) <linux/types.h> first: system headers reach for it by that name. */
#if defined(__has_include_next)
#if __has_include_next(<linux/types.h>)
#include_next <linux/types.h>
#endif
#endif
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;
typedef u64 phys_addr_t;        /* x86-64: CONFIG_PHYS_ADDR_T_64BIT */
typedef u64 dma_addr_t;
typedef unsigned int gfp_t;

#endif
