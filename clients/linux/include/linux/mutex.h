/* SPDX-License-Identifier: MIT */
/* xenemu workbench: mutexes on pthread mutexes. mutex_lock_interruptible never is interrupted. */
#ifndef _WB_LINUX_MUTEX_H
#define _WB_LINUX_MUTEX_H

#include <pthread.h>

struct mutex { pthread_mutex_t m; };

#define DEFINE_MUTEX(name) struct mutex name = { PTHREAD_MUTEX_INITIALIZER }

static inline void mutex_init(struct mutex *l) { pthread_mutex_init(&l->m, NULL); }
static inline void mutex_destroy(struct mutex *l) { pthread_mutex_destroy(&l->m); }
static inline void mutex_lock(struct mutex *l) { pthread_mutex_lock(&l->m); }
static inline int mutex_lock_interruptible(struct mutex *l) { return pthread_mutex_lock(&l->m), 0; }
static inline int mutex_trylock(struct mutex *l) { return pthread_mutex_trylock(&l->m) == 0; }
static inline void mutex_unlock(struct mutex *l) { pthread_mutex_unlock(&l->m); }

#endif
