/* The arithmetic of one limit on starts: at most `concurrency` runs at once
 * and starts spaced by 1 / per_second, and the parsing of what limits apply
 * to a job (a batch's "limits" object, an http job's host).
 *
 * The scheduler keeps jobs held back by a limiter out of its ready queues;
 * a limiter only counts. Released jobs (let through, not started yet) hold
 * a slot, so at most concurrency - running are released; with a rate, at
 * most one is, and it may not start before the time limiter_release()
 * gives. Times are ms on a clock the caller keeps steady, never the wall
 * clock, whose steps back would push next_ms ahead (the tests use a
 * fake one). Not thread-safe: the scheduler's lock guards it. */
#ifndef FUTURED_LIMITER_H
#define FUTURED_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "storage/job.h"

struct limiter {
        unsigned concurrency;   /* 0: no limit */
        double interval_ms;     /* between starts; 0: no limit */
        unsigned running;
        unsigned released;
        double next_ms;         /* the earliest next start */
};

/* per_second 0: no rate limit. */
void limiter_init(struct limiter *l, unsigned concurrency, double per_second);
bool limiter_can_release(const struct limiter *l);
/* Lets one job through; returns the time from which it may start. */
int64_t limiter_release(struct limiter *l, int64_t now_ms);
/* A released job left without starting (cancelled). */
void limiter_unrelease(struct limiter *l);
/* A released job starts now. */
void limiter_start(struct limiter *l, int64_t now_ms);
/* A started job's run ended. */
void limiter_finish(struct limiter *l);

/* The limits of a batch, as POST /v1/batches takes them: an object with
 * optional positive "concurrency" (integer) and "per_second" (number).
 * 0 with *ret_text its compact JSON (the caller's); -EINVAL with msg naming
 * the field; -ENOMEM. */
int limiter_limits_check(const json_t *v, char **ret_text, char *msg, size_t msglen);
/* Reads stored limits text (NULL: none); 0 or -EINVAL. Absent values are 0. */
int limiter_limits_parse(const char *text, unsigned *ret_concurrency, double *ret_per_second);

/* The host an http job calls, "scheme://host:port" in lower case, in *ret
 * (the caller's); NULL for a job of another task or without a usable url.
 * 0 or -ENOMEM. */
int limiter_host_key(const struct job *j, char **ret);

#endif
