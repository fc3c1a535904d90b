/* The hub: requests waiting for jobs to end (long-polls, cancels, waits on
 * many jobs, streams of a batch). A waiter waits on one job (id, with that
 * job's batch), or on any job of a batch (id 0: a stream). Each has a
 * deadline and fires exactly once, on the first of: what it waits on ended
 * (hub_fire_job), its deadline passed (the hub's own thread), the hub
 * stopped, or its owner fired it. fire() runs without the hub's lock, and
 * the hub does not touch the waiter after calling it. */
#ifndef FUTURED_API_HUB_H
#define FUTURED_API_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hub;

/* The indexes a waiter is in, each keyed on the job id or the batch; a
 * waiter whose key is 0 is not in that index. A job's end looks up its id
 * and its batch's streams; a batch cancel its batch's job waiters and
 * streams: neither walks waiters it does not fire. */
enum {
        HUB_BY_ID,              /* job waiters, by job */
        HUB_BY_BATCH,           /* job waiters of a batch job, by batch */
        HUB_BY_STREAM,          /* streams (id 0), by batch */
        HUB__INDEXES,
};

struct hub_waiter {
        int64_t id;                             /* the job waited for; 0: any of batch */
        /* The job's batch (0: none), so a batch cancel, which announces its
         * jobs' ends at once, reaches it; with id 0, the batch waited on. */
        int64_t batch;
        void (*fire)(struct hub_waiter *w);     /* any thread; must not block */
        /* The hub's, under its lock; deadline stays readable by the owner
         * once w fired. */
        double deadline;                        /* CLOCK_MONOTONIC seconds */
        bool registered;
        bool fired;
        size_t heap_pos;
        struct hub_waiter *next[HUB__INDEXES], *prev[HUB__INDEXES];
        struct hub_waiter *fire_next;
};

int hub_new(struct hub **ret);
/* Joins the deadline thread. Every waiter must have fired. Accepts NULL. */
void hub_free(struct hub *h);

/* Registers w (id, batch and fire set by the caller) for at most seconds.
 * Once the hub is stopped, w fires at once. */
int hub_add(struct hub *h, struct hub_waiter *w, double seconds);
/* Fires w unless it already fired. */
void hub_fire(struct hub *h, struct hub_waiter *w);
/* Job id of batch (0: none) ended: fires its waiters and the waiters on
 * any job of batch. id 0: many jobs of batch ended at once: fires every
 * waiter of batch, whatever job it waits on (some may still be running:
 * their owners look again). */
void hub_fire_job(struct hub *h, int64_t id, int64_t batch);
/* Forgets w if it is still registered, without firing it; true if it was
 * (so it will never fire), false if it fired already. */
bool hub_remove(struct hub *h, struct hub_waiter *w);
/* Seconds left until w's deadline (<= 0 once past): for w's owner, after
 * w fired, to wait on for the rest of the time. */
double hub_left(const struct hub_waiter *w);
/* Fires every waiter; later ones fire as they are added. Accepts NULL. */
void hub_stop(struct hub *h);

#endif
