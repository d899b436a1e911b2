/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/interface/xen.h>: Xen's public xen.h (abi/,
 * reached by #include_next since this root's <xen/xen.h> is Linux's) with
 * Linux's guest handles (<asm/xen/interface.h>). Xen's handle macros are
 * then made Linux's: XEN_GUEST_HANDLE(name) is a plain `name *` and
 * set_xen_guest_handle an assignment, so that abi's headers included after
 * this one (memory.h, pv-iommu.h: the one definition of the ABI) declare
 * their handles as Linux's structs do. Same layout: a pointer, 8 bytes,
 * asserted here and by abi's own asserts.
 */
#ifndef _WB_XEN_INTERFACE_XEN_H
#define _WB_XEN_INTERFACE_XEN_H

#include_next <xen/xen.h>
#include <asm/xen/interface.h>

_Static_assert(sizeof(XEN_GUEST_HANDLE(void)) == sizeof(void *), "Xen's handle is one pointer");

#undef XEN_GUEST_HANDLE
#undef XEN_GUEST_HANDLE_PARAM
#undef set_xen_guest_handle
#undef set_xen_guest_handle_raw
#define XEN_GUEST_HANDLE(name)              name *
#define XEN_GUEST_HANDLE_PARAM(name)        name *
#define set_xen_guest_handle_raw(hnd, val)  do { (hnd) = (val); } while (0)
#define set_xen_guest_handle(hnd, val)      set_xen_guest_handle_raw(hnd, val)

#define DOMID_SELF  ((domid_t)0x7FF0U)
#define SIF_PRIVILEGED  (1 << 0)
#define SIF_INITDOMAIN  (1 << 1)

#endif
