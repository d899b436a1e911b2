/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: printk and pr_*. Lines go to stderr as "<level> text"
 * (a message without a level is the kernel's default, warn); pr_cont's text
 * follows the previous message without a prefix; pr_debug prints only when
 * the runner is given --debug. pr_fmt is honoured (define it before the
 * first include, as in the kernel).
 */
#ifndef _WB_LINUX_PRINTK_H
#define _WB_LINUX_PRINTK_H

#define KERN_SOH    "\001"
#define KERN_EMERG  KERN_SOH "0"
#define KERN_ALERT  KERN_SOH "1"
#define KERN_CRIT   KERN_SOH "2"
#define KERN_ERR    KERN_SOH "3"
#define KERN_WARNING KERN_SOH "4"
#define KERN_NOTICE KERN_SOH "5"
#define KERN_INFO   KERN_SOH "6"
#define KERN_DEBUG  KERN_SOH "7"
#define KERN_CONT   KERN_SOH "c"

#ifndef pr_fmt
#define pr_fmt(fmt) fmt
#endif

int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define pr_emerg(fmt, ...)  printk(KERN_EMERG pr_fmt(fmt), ##__VA_ARGS__)
#define pr_alert(fmt, ...)  printk(KERN_ALERT pr_fmt(fmt), ##__VA_ARGS__)
#define pr_crit(fmt, ...)   printk(KERN_CRIT pr_fmt(fmt), ##__VA_ARGS__)
#define pr_err(fmt, ...)    printk(KERN_ERR pr_fmt(fmt), ##__VA_ARGS__)
#define pr_warn(fmt, ...)   printk(KERN_WARNING pr_fmt(fmt), ##__VA_ARGS__)
#define pr_notice(fmt, ...) printk(KERN_NOTICE pr_fmt(fmt), ##__VA_ARGS__)
#define pr_info(fmt, ...)   printk(KERN_INFO pr_fmt(fmt), ##__VA_ARGS__)
#define pr_debug(fmt, ...)  printk(KERN_DEBUG pr_fmt(fmt), ##__VA_ARGS__)
#define pr_cont(fmt, ...)   printk(KERN_CONT fmt, ##__VA_ARGS__)

#endif
