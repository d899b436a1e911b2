/* SPDX-License-Identifier: MIT */
/*
 * xenemu workbench: circular doubly-linked lists with a head node, the
 * kernel's documented interface. list_del leaves the entry's pointers NULL
 * (the kernel poisons them); using a deleted entry is the caller's bug.
 */
#ifndef _WB_LINUX_LIST_H
#define _WB_LINUX_LIST_H

#include <linux/container_of.h>
#include <stdbool.h>

struct list_head { struct list_head *next, *prev; };

#define LIST_HEAD_INIT(name) { &(name), &(name) }
#define LIST_HEAD(name) struct list_head name = LIST_HEAD_INIT(name)

static inline void INIT_LIST_HEAD(struct list_head *h) { h->next = h; h->prev = h; }

static inline void __wb_list_insert(struct list_head *e, struct list_head *prev, struct list_head *next)
{
    next->prev = e;
    e->next = next;
    e->prev = prev;
    prev->next = e;
}
/* After head (a stack) / before head (a queue). */
static inline void list_add(struct list_head *e, struct list_head *head) { __wb_list_insert(e, head, head->next); }
static inline void list_add_tail(struct list_head *e, struct list_head *head) { __wb_list_insert(e, head->prev, head); }
static inline void list_del(struct list_head *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->next = e->prev = NULL;
}
static inline void list_del_init(struct list_head *e) { list_del(e); INIT_LIST_HEAD(e); }
static inline bool list_empty(const struct list_head *h) { return h->next == h; }

#define list_entry(ptr, type, member) container_of(ptr, type, member)
#define list_first_entry(head, type, member) list_entry((head)->next, type, member)
#define list_first_entry_or_null(head, type, member) \
        (list_empty(head) ? NULL : list_first_entry(head, type, member))
#define list_next_entry(pos, member) list_entry((pos)->member.next, __typeof__(*(pos)), member)
#define list_for_each(pos, head) for (pos = (head)->next; pos != (head); pos = pos->next)
#define list_for_each_entry(pos, head, member)                                 \
        for (pos = list_first_entry(head, __typeof__(*pos), member);           \
             &pos->member != (head); pos = list_next_entry(pos, member))
/* Safe against removal of pos. */
#define list_for_each_entry_safe(pos, n, head, member)                         \
        for (pos = list_first_entry(head, __typeof__(*pos), member),           \
             n = list_next_entry(pos, member);                                 \
             &pos->member != (head); pos = n, n = list_next_entry(n, member))

#endif
