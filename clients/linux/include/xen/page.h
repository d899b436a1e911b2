/* SPDX-License-Identifier: MIT */
/* xenemu workbench: Linux's <xen/page.h>: Xen's 4 KiB pages and the p2m (asm/xen/page.h). */
#ifndef _WB_XEN_PAGE_H
#define _WB_XEN_PAGE_H

#include <asm/xen/page.h>

#define XEN_PAGE_SHIFT   12
#define XEN_PAGE_SIZE    (1UL << XEN_PAGE_SHIFT)
#define XEN_PAGE_MASK    (~(XEN_PAGE_SIZE - 1))
#define xen_offset_in_page(p) ((unsigned long)(p) & ~XEN_PAGE_MASK)
#define XEN_PFN_DOWN(x)  ((x) >> XEN_PAGE_SHIFT)
#define XEN_PFN_UP(x)    (((x) + XEN_PAGE_SIZE - 1) >> XEN_PAGE_SHIFT)
#define XEN_PFN_PHYS(x)  ((phys_addr_t)(x) << XEN_PAGE_SHIFT)
#define XEN_PFN_PER_PAGE (PAGE_SIZE / XEN_PAGE_SIZE)

#endif
