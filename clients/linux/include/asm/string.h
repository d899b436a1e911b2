/* SPDX-License-Identifier: MIT */
/* xenemu workbench: <asm/string.h>: the C library's string functions. */
#include <linux/string.h>
