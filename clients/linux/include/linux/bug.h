/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: WARN_ON and friends. A warning prints "WARNING: file:line"
 * to stderr and is counted: the runner fails a scenario during which the
 * driver warned. BUG_ON aborts the program, as a kernel BUG stops the machine.
 */
#ifndef _WB_LINUX_BUG_H
#define _WB_LINUX_BUG_H

#include <linux/compiler.h>

void wb_warn(const char *file, int line, const char *cond);
void wb_bug(const char *file, int line, const char *cond) __attribute__((noreturn));

#define WARN_ON(cond) ({ int __ret = !!(cond); \
        if (unlikely(__ret)) { wb_warn(__FILE__, __LINE__, #cond); } \
        unlikely(__ret); })
#define WARN(cond, fmt, ...) ({ int __ret = !!(cond); \
        if (unlikely(__ret)) { printk(KERN_WARNING fmt, ##__VA_ARGS__); \
                               wb_warn(__FILE__, __LINE__, #cond); } \
        unlikely(__ret); })
/* Once per call site, as the kernel's. */
#define WARN_ON_ONCE(cond) ({ static int __warned; int __ret = !!(cond); \
        if (unlikely(__ret) && !__warned) { __warned = 1; wb_warn(__FILE__, __LINE__, #cond); } \
        \
        unlikely(__ret); })
#define BUG() wb_bug(__FILE__, __LINE__, "BUG()")
#define BUG_ON(cond) do { if (unlikely(cond)) wb_bug(__FILE__, __LINE__, #cond); } while (0)
#define BUILD_BUG_ON(cond) _Static_assert(!(cond), "BUILD_BUG_ON(" #cond ")")

#include <linux/printk.h>

#endif
