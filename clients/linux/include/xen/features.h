/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: Linux's <xen/features.h>. One feature is modelled:
 * XENFEAT_auto_translated_physmap, set unless the domain is PV (the runner
 * sets it with xen_domain_type); every other feature reads 0.
 */
#ifndef _WB_XEN_FEATURES_H
#define _WB_XEN_FEATURES_H

#include <stdbool.h>

#define XENFEAT_auto_translated_physmap 2
#define XENFEAT_NR_SUBMAPS 1

extern bool xen_features[XENFEAT_NR_SUBMAPS * 32];

static inline int xen_feature(int flag)
{
    return flag >= 0 && flag < XENFEAT_NR_SUBMAPS * 32 && xen_features[flag];
}

#endif
