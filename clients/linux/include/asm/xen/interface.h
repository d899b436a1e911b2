/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's x86 guest handles (arch/x86/include/asm/xen/
 * interface.h's documented shape): a handle is a struct holding one pointer,
 * the same layout as Xen's XEN_GUEST_HANDLE. Linux names a struct's handle
 * after the struct (GUEST_HANDLE(xen_reserved_device_memory)), Xen after its
 * typedef (XEN_GUEST_HANDLE(xen_reserved_device_memory_t)); both exist here,
 * and set_xen_guest_handle fills either.
 */
#ifndef _WB_ASM_XEN_INTERFACE_H
#define _WB_ASM_XEN_INTERFACE_H

#define __DEFINE_GUEST_HANDLE(name, type) typedef struct { type *p; } __guest_handle_ ## name
#define DEFINE_GUEST_HANDLE_STRUCT(name)  __DEFINE_GUEST_HANDLE(name, struct name)
#define DEFINE_GUEST_HANDLE(name)         __DEFINE_GUEST_HANDLE(name, name)
#define __GUEST_HANDLE(name)              __guest_handle_ ## name
#define GUEST_HANDLE(name)                __GUEST_HANDLE(name)
#define GUEST_HANDLE_PTR(type)            type *
/* Xen's public xen.h defines it too, to the same effect: keep the first. */
#ifndef set_xen_guest_handle
#define set_xen_guest_handle(hnd, val)    do { (hnd).p = val; } while (0)
#endif

#endif
