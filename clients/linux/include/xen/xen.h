/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/xen.h>: what kind of Xen guest this is.
 * The runner sets xen_domain_type (XEN_PV_DOMAIN for --pv and the pv
 * scenario, XEN_HVM_DOMAIN otherwise; xen_pvh stays false) and
 * xen_start_flags (SIF_INITDOMAIN | SIF_PRIVILEGED when the daemon says the
 * domain is the hardware domain) before module init.
 *
 * abi/'s revision-2 pv-iommu.h includes <xen/xen.h> meaning Xen's public one:
 * this header pulls that in too (<xen/interface/xen.h>).
 */
#ifndef _WB_XEN_XEN_H
#define _WB_XEN_XEN_H

#include <stdbool.h>
#include <stdint.h>
#include <xen/interface/xen.h>

enum xen_domain_type {
    XEN_NATIVE,
    XEN_PV_DOMAIN,
    XEN_HVM_DOMAIN,
};

extern enum xen_domain_type xen_domain_type;
extern bool xen_pvh;
extern uint32_t xen_start_flags;

#define xen_domain()         (xen_domain_type != XEN_NATIVE)
#define xen_pv_domain()      (xen_domain_type == XEN_PV_DOMAIN)
#define xen_hvm_domain()     (xen_domain_type == XEN_HVM_DOMAIN)
#define xen_pvh_domain()     (xen_pvh)
#define xen_initial_domain() (xen_domain() && (xen_start_flags & SIF_INITDOMAIN))

#endif
