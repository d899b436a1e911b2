/* SPDX-License-Identifier: MIT */
#include <linux/bits.h>
