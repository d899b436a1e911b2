/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's x86 guest handles (arch/x86/include/asm/xen/
 * interface.h, its documented shape outside Xen): a handle is a plain
 * pointer, filled by assignment (map.buffer = entries) or by
 * set_xen_guest_handle. Xen's own headers (abi/) spell a handle as a struct
 * holding the pointer, the same 8 bytes: <xen/interface/xen.h> makes them
 * read as Linux's, so that abi's structs are the ones a driver uses.
 *
 * Linux names a struct's handle after the struct (GUEST_HANDLE(xen_reserved_
 * device_memory)); its typedefs here are __linux_guest_handle_NAME, apart
 * from Xen's __guest_handle_NAME.
 */
#ifndef _WB_ASM_XEN_INTERFACE_H
#define _WB_ASM_XEN_INTERFACE_H

#define __DEFINE_GUEST_HANDLE(name, type) typedef type *__linux_guest_handle_ ## name
#define DEFINE_GUEST_HANDLE_STRUCT(name)  __DEFINE_GUEST_HANDLE(name, struct name)
#define DEFINE_GUEST_HANDLE(name)         __DEFINE_GUEST_HANDLE(name, name)
#define __GUEST_HANDLE(name)              __linux_guest_handle_ ## name
#define GUEST_HANDLE(name)                __GUEST_HANDLE(name)
#define GUEST_HANDLE_PTR(type)            type *

DEFINE_GUEST_HANDLE(char);
DEFINE_GUEST_HANDLE(int);
DEFINE_GUEST_HANDLE(void);
__DEFINE_GUEST_HANDLE(uchar, unsigned char);
__DEFINE_GUEST_HANDLE(uint, unsigned int);
__DEFINE_GUEST_HANDLE(ulong, unsigned long);
DEFINE_GUEST_HANDLE(uint64_t);
DEFINE_GUEST_HANDLE(uint32_t);

#endif
