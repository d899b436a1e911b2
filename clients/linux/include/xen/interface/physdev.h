/* SPDX-License-Identifier: MIT */
/* xenemu workbench: Linux's <xen/interface/physdev.h>: struct physdev_pci_device from abi/. */
#ifndef _WB_XEN_INTERFACE_PHYSDEV_H
#define _WB_XEN_INTERFACE_PHYSDEV_H

#include <xen/interface/xen.h>
#include <xen/physdev.h>

DEFINE_GUEST_HANDLE_STRUCT(physdev_pci_device);
_Static_assert(sizeof(struct physdev_pci_device) == 4, "physdev_pci_device is 4 bytes");

#endif
