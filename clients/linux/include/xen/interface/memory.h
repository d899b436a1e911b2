/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/interface/memory.h>: the one memory_op
 * command xenemu serves, XENMEM_reserved_device_memory_map, with abi/'s
 * byte-exact structs (their buffer handle a plain pointer, as Linux's: see
 * <xen/interface/xen.h>) and Linux's handle names for them.
 */
#ifndef _WB_XEN_INTERFACE_MEMORY_H
#define _WB_XEN_INTERFACE_MEMORY_H

#include <xen/interface/xen.h>
#include <xen/interface/physdev.h>
#include <xen/memory.h>

DEFINE_GUEST_HANDLE_STRUCT(xen_reserved_device_memory);
DEFINE_GUEST_HANDLE_STRUCT(xen_reserved_device_memory_map);
_Static_assert(sizeof(((struct xen_reserved_device_memory_map *)0)->buffer) ==
               sizeof(GUEST_HANDLE(xen_reserved_device_memory)), "a Linux handle");
_Static_assert(sizeof(struct xen_reserved_device_memory_map) == 24, "abi/xen/memory.h's layout");

#endif
