/* SPDX-License-Identifier: MIT */
/* xenemu workbench: bit helpers on unsigned long (64 bits here). */
#ifndef _WB_LINUX_BITS_H
#define _WB_LINUX_BITS_H

#define BITS_PER_LONG   64
#define BIT(n)          (1UL << (n))
#define BIT_ULL(n)      (1ULL << (n))
#define GENMASK(h, l)   ((~0UL >> (BITS_PER_LONG - 1 - (h))) & (~0UL << (l)))
#define GENMASK_ULL(h, l) GENMASK(h, l)

/* Index of the lowest / highest set bit; undefined for 0, as the kernel's. */
static inline unsigned long __ffs(unsigned long word) { return (unsigned long)__builtin_ctzl(word); }
static inline unsigned long __fls(unsigned long word) { return 63UL - (unsigned long)__builtin_clzl(word); }
/* 1-based, 0 for 0. */
static inline int fls_long(unsigned long x) { return x ? (int)__fls(x) + 1 : 0; }

#endif
