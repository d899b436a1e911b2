/* SPDX-License-Identifier: MIT */
/* xenemu workbench: min/max evaluating each argument once (the kernel also type-checks them). */
#ifndef _WB_LINUX_MINMAX_H
#define _WB_LINUX_MINMAX_H

#define __wb_cmp(x, y, op) ({ __typeof__(x) __x = (x); __typeof__(y) __y = (y); \
                              __x op __y ? __x : __y; })
#define min(x, y)        __wb_cmp(x, y, <)
#define max(x, y)        __wb_cmp(x, y, >)
#define min_t(t, x, y)   __wb_cmp((t)(x), (t)(y), <)
#define max_t(t, x, y)   __wb_cmp((t)(x), (t)(y), >)
#define clamp(v, lo, hi) min(max(v, lo), hi)

#endif
