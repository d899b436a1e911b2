/* SPDX-License-Identifier: MIT */
/*
 * xen.h - the pieces of Xen's public xen.h that pv-iommu.h needs.
 *
 * xenemu ships only what its hypercalls use, with the values of upstream
 * Xen's xen/include/public/xen.h (x86-64 flavour), so that guest code written
 * against the real headers compiles unchanged against these.
 */
#ifndef __XEN_PUBLIC_XEN_H__
#define __XEN_PUBLIC_XEN_H__

#if defined(__cplusplus)
#include <cstdint>
#else
#include <stdint.h>
#endif

/* Hypercall numbers served by xenemu. */
#define __HYPERVISOR_memory_op            12
#define __HYPERVISOR_iommu_op             43

/*
 * Guest handles. On x86 a handle is a struct wrapping a pointer, which keeps
 * handles of different types from being mixed up by accident.
 */
#define ___DEFINE_XEN_GUEST_HANDLE(name, type) \
    typedef struct { type *p; } __guest_handle_ ## name
#define __DEFINE_XEN_GUEST_HANDLE(name, type) \
    ___DEFINE_XEN_GUEST_HANDLE(name, type);   \
    ___DEFINE_XEN_GUEST_HANDLE(const_##name, const type)
#define DEFINE_XEN_GUEST_HANDLE(name)   __DEFINE_XEN_GUEST_HANDLE(name, name)
#define __XEN_GUEST_HANDLE(name)        __guest_handle_ ## name
#define XEN_GUEST_HANDLE(name)          __XEN_GUEST_HANDLE(name)
#define XEN_GUEST_HANDLE_PARAM(name)    XEN_GUEST_HANDLE(name)
#define set_xen_guest_handle_raw(hnd, val)  do { (hnd).p = val; } while (0)
#define set_xen_guest_handle(hnd, val)      set_xen_guest_handle_raw(hnd, val)

typedef uint16_t domid_t;

/*
 * Handles for primitive types (upstream defines these in public/xen.h too).
 * XEN_GUEST_HANDLE(void) is the untyped handle of revision 2's remote_cmd.
 */
DEFINE_XEN_GUEST_HANDLE(void);

#endif /* __XEN_PUBLIC_XEN_H__ */
