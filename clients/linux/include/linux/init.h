/* SPDX-License-Identifier: MIT */
/* xenemu workbench: initcalls (see <linux/module.h>); every level is module_init's. */
#ifndef _WB_LINUX_INIT_H
#define _WB_LINUX_INIT_H

#include <linux/compiler.h>

typedef int (*initcall_t)(void);
typedef void (*exitcall_t)(void);

void wb_register_module_init(initcall_t fn, const char *name);
void wb_register_module_exit(exitcall_t fn, const char *name);

#define module_init(fn) \
        static void __attribute__((constructor)) __wb_module_init_ ## fn(void) \
        { wb_register_module_init(fn, #fn); }
#define module_exit(fn) \
        static void __attribute__((constructor)) __wb_module_exit_ ## fn(void) \
        { wb_register_module_exit(fn, #fn); }
#define subsys_initcall(fn) module_init(fn)
#define device_initcall(fn) module_init(fn)
#define late_initcall(fn)   module_init(fn)

#endif
