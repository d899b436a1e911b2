/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/interface/memory.h>: the one memory_op
 * command xenemu serves, XENMEM_reserved_device_memory_map, with abi/'s
 * byte-exact structs. Linux's guest code fills the map's buffer as a plain
 * pointer (map.buffer = entries), where Xen's header has a handle (a struct
 * holding the pointer, the same 8 bytes): abi's header is read here with its
 * handle spelt as a pointer, and its static asserts pin the layout as ever.
 */
#ifndef _WB_XEN_INTERFACE_MEMORY_H
#define _WB_XEN_INTERFACE_MEMORY_H

#include <xen/interface/xen.h>
#include <xen/interface/physdev.h>

#pragma push_macro("XEN_GUEST_HANDLE")
#undef XEN_GUEST_HANDLE
#define XEN_GUEST_HANDLE(name) name *
#include <xen/memory.h>
#pragma pop_macro("XEN_GUEST_HANDLE")

DEFINE_GUEST_HANDLE_STRUCT(xen_reserved_device_memory);
DEFINE_GUEST_HANDLE_STRUCT(xen_reserved_device_memory_map);
_Static_assert(sizeof(GUEST_HANDLE(xen_reserved_device_memory)) ==
               sizeof(XEN_GUEST_HANDLE(xen_reserved_device_memory_t)), "one handle layout");
_Static_assert(sizeof(((struct xen_reserved_device_memory_map *)0)->buffer) ==
               sizeof(XEN_GUEST_HANDLE(xen_reserved_device_memory_t)), "a pointer where Xen has a handle");
_Static_assert(sizeof(struct xen_reserved_device_memory_map) == 24, "abi/xen/memory.h's layout");

#endif
