/* SPDX-License-Identifier: MIT */
/* xenemu workbench: memset, memcpy, strcmp... the C library's (the kernel's have the same contracts). */
#ifndef _WB_LINUX_STRING_H
#define _WB_LINUX_STRING_H
#include <string.h>
#endif
