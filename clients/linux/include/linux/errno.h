/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: errno values. The C library's <errno.h> reaches for the
 * system's <linux/errno.h> (the kernel's userspace values, which on x86-64
 * are the kernel's), so this header passes that one through and adds the
 * kernel-internal values userspace never sees.
 */
#ifndef _WB_LINUX_ERRNO_H
#define _WB_LINUX_ERRNO_H

#include_next <linux/errno.h>

#define ERESTARTSYS   512
#define EPROBE_DEFER  517
#define ENOTSUPP      524

#endif
