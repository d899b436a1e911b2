/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: modules. module_init/module_exit register the functions
 * with the workbench (a constructor runs at program start); the runner calls
 * the init function where the kernel would load the module and the exit
 * function where it would unload it. One init and one exit per program; the
 * MODULE_* tags are accepted and ignored.
 */
#ifndef _WB_LINUX_MODULE_H
#define _WB_LINUX_MODULE_H

#include <linux/init.h>

struct module;
#define THIS_MODULE ((struct module *)0)
#define MODULE_LICENSE(x)
#define MODULE_DESCRIPTION(x)
#define MODULE_AUTHOR(x)
#define MODULE_ALIAS(x)
#define EXPORT_SYMBOL(x)
#define EXPORT_SYMBOL_GPL(x)

#endif
