/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's x86 <asm/xen/page.h>: the guest's pfn to the
 * frame number Xen wants (gfn). An auto-translated guest (HVM, PVH) passes
 * pfns unchanged. A PV guest's frames are machine frames: its p2m maps pfn i
 * to a frame that is in general not i, nor next to i+1's. In the workbench
 * the PV p2m is a fixed permutation of the gfns the daemon gives the domain
 * (0 .. memory_pages-1, learnt from the control socket's `info`), so that a
 * run of pfns is scattered over gfns as a PV dom0's is; __pfn_to_mfn of a pfn
 * past the domain's memory is INVALID_P2M_ENTRY, as for a pfn Xen never gave.
 */
#ifndef _WB_ASM_XEN_PAGE_H
#define _WB_ASM_XEN_PAGE_H

#include <linux/kernel.h>
#include <xen/features.h>

#define INVALID_P2M_ENTRY (~0UL)

/* The PV p2m and its inverse (the M2P); INVALID_P2M_ENTRY where there is no frame. */
unsigned long __pfn_to_mfn(unsigned long pfn);
unsigned long mfn_to_pfn(unsigned long mfn);

static inline unsigned long pfn_to_mfn(unsigned long pfn) { return __pfn_to_mfn(pfn); }

static inline unsigned long pfn_to_gfn(unsigned long pfn)
{
    return xen_feature(XENFEAT_auto_translated_physmap) ? pfn : pfn_to_mfn(pfn);
}

static inline unsigned long gfn_to_pfn(unsigned long gfn)
{
    return xen_feature(XENFEAT_auto_translated_physmap) ? gfn : mfn_to_pfn(gfn);
}

static inline phys_addr_t phys_to_machine_addr(phys_addr_t paddr)
{
    return ((phys_addr_t)pfn_to_mfn((unsigned long)(paddr >> PAGE_SHIFT)) << PAGE_SHIFT) |
           (paddr & ~PAGE_MASK);
}

#endif
