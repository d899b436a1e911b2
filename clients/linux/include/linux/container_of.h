/* SPDX-License-Identifier: MIT */
#ifndef _WB_LINUX_CONTAINER_OF_H
#define _WB_LINUX_CONTAINER_OF_H

#include <stddef.h>

/* The struct of `type` whose `member` ptr points to (the member's type is checked). */
#define container_of(ptr, type, member) ({                                  \
        const __typeof__(((type *)0)->member) *__mptr = (ptr);              \
        (type *)((char *)__mptr - offsetof(type, member)); })

#endif
