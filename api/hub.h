/* The hub: requests waiting for a job to finish (long-polls, cancels). Each
 * waiter has a deadline; it fires exactly once, on the first of: its job
 * finished (hub_fire_id), its deadline passed (the hub's own thread), the
 * hub stopped, or its owner fired it. fire() runs without the hub's lock,
 * and the hub does not touch the waiter after calling it. */
#ifndef FUTURED_API_HUB_H
#define FUTURED_API_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hub;

struct hub_waiter {
        int64_t id;                             /* the job waited for */
        void (*fire)(struct hub_waiter *w);     /* any thread; must not block */
        /* The hub's, under its lock. */
        double deadline;                        /* CLOCK_MONOTONIC seconds */
        bool registered;
        bool fired;
        size_t heap_pos;
        struct hub_waiter *next, *prev;         /* id bucket chain */
        struct hub_waiter *fire_next;
};

int hub_new(struct hub **ret);
/* Joins the deadline thread. Every waiter must have fired. Accepts NULL. */
void hub_free(struct hub *h);

/* Registers w (id and fire set by the caller) for at most seconds. Once the
 * hub is stopped, w fires at once. */
int hub_add(struct hub *h, struct hub_waiter *w, double seconds);
/* Fires w unless it already fired. */
void hub_fire(struct hub *h, struct hub_waiter *w);
/* Fires every waiter on id. */
void hub_fire_id(struct hub *h, int64_t id);
/* Forgets w if it is still registered, without firing it. */
void hub_remove(struct hub *h, struct hub_waiter *w);
/* Fires every waiter; later ones fire as they are added. */
void hub_stop(struct hub *h);

#endif
