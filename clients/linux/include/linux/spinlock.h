/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: spinlocks on pthread mutexes (threads are the CPUs).
 * Interrupts do not exist: the _irqsave forms set flags to 0 and take the
 * lock. A lock is not recursive; taking one twice deadlocks, as in the kernel.
 */
#ifndef _WB_LINUX_SPINLOCK_H
#define _WB_LINUX_SPINLOCK_H

#include <pthread.h>

typedef struct { pthread_mutex_t m; } spinlock_t;

#define __SPIN_LOCK_UNLOCKED(name) { PTHREAD_MUTEX_INITIALIZER }
#define DEFINE_SPINLOCK(name) spinlock_t name = __SPIN_LOCK_UNLOCKED(name)

static inline void spin_lock_init(spinlock_t *l) { pthread_mutex_init(&l->m, NULL); }
static inline void spin_lock(spinlock_t *l) { pthread_mutex_lock(&l->m); }
static inline void spin_unlock(spinlock_t *l) { pthread_mutex_unlock(&l->m); }
#define spin_lock_irqsave(l, flags) do { (flags) = 0; spin_lock(l); } while (0)
#define spin_unlock_irqrestore(l, flags) do { (void)(flags); spin_unlock(l); } while (0)

#endif
