/* SPDX-License-Identifier: MIT */
/*
 * workbench.h - between the workbench's parts: the kernel shim (shim.c), the
 * IOMMU core (core.c) and the runner (runner.c, scenarios.c). Not for drivers:
 * they see the Linux headers under clients/linux/include only.
 */
#ifndef WB_WORKBENCH_H
#define WB_WORKBENCH_H

#include <linux/io-pgtable.h>
#include <linux/iommu.h>
#include <linux/pci.h>

#include "control.h"

/* -- shim.c ------------------------------------------------------------------ */
extern int wb_debug;                      /* pr_debug / dev_dbg print */
long wb_live_allocations(void);           /* kmalloc'ed and not kfree'd */
unsigned long wb_warnings(void);          /* WARN_ON* that fired */
bool wb_have_module(void);
bool wb_have_module_exit(void);
int wb_module_init(void);                 /* the driver's module_init function */
void wb_module_exit(void);
/* Xen flavour of the guest: PV (p2m scattered) or HVM; the hardware domain or not. */
void wb_set_guest(bool pv, bool initial_domain);
/* The PV p2m over the domain's nr_pages gfns (a permutation); -ENOMEM, -EINVAL. */
int wb_p2m_setup(unsigned long nr_pages);
void wb_p2m_teardown(void);

/* -- io_pgtable_generic.c: the built-in format XEN_IOMMU_GENERIC ----------------- */
extern const struct io_pgtable_init_fns wb_io_pgtable_generic_fns;

/* -- core.c ------------------------------------------------------------------ */
/* The devices the domain owns, made before module init; the core probes them on register. */
int wb_core_add_devices(const struct wb_sbdf *devs, unsigned int n);
void wb_core_remove_devices(void);
unsigned int wb_core_nr_devices(void);
struct pci_dev *wb_core_device(unsigned int i);
/* What probing the device gave: 0, or the error (-ENODEV: the driver does not handle it). */
int wb_core_probe_status(unsigned int i);
bool wb_core_registered(void);
/* Unregister the IOMMU (releasing its devices) for a driver without module_exit; false if none. */
bool wb_core_unregister_for_driver(void);
/* The identity domain, the blocked domain (or the core's empty paging stand-in). */
int wb_core_attach_identity(struct device *dev);
int wb_core_attach_blocked(struct device *dev);
/* The domain probe gave the device (identity or a DMA domain), NULL if not probed. */
struct iommu_domain *wb_core_default_domain(struct device *dev);
/* Bytes the calling thread's last failed iommu_map unmapped again (its unwind); 0 after success. */
size_t wb_core_last_unwound(void);

#endif
