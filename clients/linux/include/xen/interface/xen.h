/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/interface/xen.h>: Xen's public xen.h (abi/,
 * byte-exact: the next <xen/xen.h> on the include path, -Iabi) with Linux's
 * guest-handle macros (<asm/xen/interface.h>).
 */
#ifndef _WB_XEN_INTERFACE_XEN_H
#define _WB_XEN_INTERFACE_XEN_H

/* abi/xen/xen.h: this root's own <xen/xen.h> is Linux's and comes first. */
#include_next <xen/xen.h>
#include <asm/xen/interface.h>

#define DOMID_SELF  ((domid_t)0x7FF0U)
#define SIF_PRIVILEGED  (1 << 0)
#define SIF_INITDOMAIN  (1 << 1)

/* Xen's xen.h has defined __guest_handle_void, which is GUEST_HANDLE(void) too. */
_Static_assert(sizeof(GUEST_HANDLE(void)) == sizeof(XEN_GUEST_HANDLE(void)),
               "Linux's and Xen's handles are one pointer");

#endif
