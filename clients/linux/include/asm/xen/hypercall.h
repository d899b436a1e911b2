/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <asm/xen/hypercall.h>, the two hypercalls xenemu
 * serves, with Linux's prototypes, sent to the daemon through the C client
 * (clients/c/) on the calling thread's own connection to $XENEMU_SOCKET (a
 * thread is a vCPU; see xenemu_client.h for the threading rules):
 *
 *   revision 1 (-Iabi):            int HYPERVISOR_iommu_op(void *op)
 *   revision 2 (-Iabi/rev2 -Iabi): int HYPERVISOR_iommu_op(unsigned int subop, void *arg)
 *   both:                          int HYPERVISOR_memory_op(unsigned int cmd, void *arg)
 *
 * The return value is Xen's: 0 or -XEN_E*; -ENOSYS when the daemon cannot be
 * reached (xenemu_last_error() says why).
 */
#ifndef _WB_ASM_XEN_HYPERCALL_H
#define _WB_ASM_XEN_HYPERCALL_H

#include <xen/interface/xen.h>
#include <xen/interface/memory.h>
#include <xen/interface/pv-iommu.h>

/*
 * The client header declares its own HYPERVISOR_* (exported, of other
 * types): renamed here so that Linux's are the ones a driver sees.
 */
#define HYPERVISOR_iommu_op  xenemu_client_HYPERVISOR_iommu_op
#define HYPERVISOR_memory_op xenemu_client_HYPERVISOR_memory_op
#include "xenemu_client.h"
#undef HYPERVISOR_iommu_op
#undef HYPERVISOR_memory_op

#if defined(XENEMU_PV_IOMMU_REVISION) && XENEMU_PV_IOMMU_REVISION == 2
static inline int HYPERVISOR_iommu_op(unsigned int subop, void *arg)
{
    return (int)xenemu_iommu_op2_default(subop, arg);
}
#else
static inline int HYPERVISOR_iommu_op(void *op)
{
    return (int)xenemu_iommu_op(xenemu_default_conn(), (struct pv_iommu_op *)op);
}
#endif

static inline int HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
    return (int)xenemu_memory_op(xenemu_default_conn(), cmd, arg);
}

#endif
