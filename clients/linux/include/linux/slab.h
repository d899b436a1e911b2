/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: kmalloc and friends on malloc. GFP flags are accepted and
 * ignored (userspace allocations may sleep). Live allocations are counted: the
 * runner checks that module exit leaves none.
 */
#ifndef _WB_LINUX_SLAB_H
#define _WB_LINUX_SLAB_H

#include <linux/types.h>

#define GFP_KERNEL  0x1u
#define GFP_ATOMIC  0x2u
#define GFP_NOWAIT  0x4u
#define __GFP_ZERO  0x100u

void *kmalloc(size_t size, gfp_t flags);
void *kzalloc(size_t size, gfp_t flags);
void *kcalloc(size_t n, size_t size, gfp_t flags);
void *kmalloc_array(size_t n, size_t size, gfp_t flags);
void kfree(const void *ptr);

#endif
