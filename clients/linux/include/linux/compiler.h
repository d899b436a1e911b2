/* SPDX-License-Identifier: MIT */
/* xenemu workbench: the compiler annotations drivers use (GNU C, as Kbuild builds). */
#ifndef _WB_LINUX_COMPILER_H
#define _WB_LINUX_COMPILER_H

#define likely(x)       __builtin_expect(!!(x), 1)
#define unlikely(x)     __builtin_expect(!!(x), 0)
#define __must_check    __attribute__((warn_unused_result))
#define __maybe_unused  __attribute__((unused))
#define __always_unused __attribute__((unused))
#define __read_mostly
#define __iomem
#define __rcu
/* Sections are meaningless in userspace: __init code stays callable. */
#define __init
#define __exit
#define __initdata
/* A volatile access: one load or store the compiler does not merge or split. */
#define READ_ONCE(x)      (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v)  do { *(volatile __typeof__(x) *)&(x) = (v); } while (0)

#endif
