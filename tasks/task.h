/* What a job can do. Each task is one file defining one `const struct task`
 * and one row in tasks/registry.c; nothing else changes to add a task.
 *
 * run() is called on an I/O pool thread (kind io) or inside a CPU worker
 * process (kind cpu). On a thread it must honour its context: give up when
 * task_ctx_stopped() says so, and wait only through task_ctx_sleep(). In a
 * worker the context carries the job's deadline; the pool stops a task by a
 * stop frame, then by killing the process. */
#ifndef FUTURED_TASK_H
#define FUTURED_TASK_H

#include <stdbool.h>
#include <jansson.h>

#include "storage/job.h"

struct task_ctx;

/* How a run failed. type is one of the design's error types ("task_error",
 * "timeout", "http_status", ...); detail (owned, may be NULL) adds fields to
 * the job's error object. */
struct task_error {
        const char *type;
        char message[512];
        bool retryable;
        json_t *detail;
};

struct task {
        const char *name;
        const char *description;
        unsigned kinds;                 /* bit (1u << kind) per kind it can run in */
        enum job_kind default_kind;
        int default_max_attempts;
        /* Positional parameter names, NULL-terminated, for args given as an
         * array; NULL: the task takes any object and no array. */
        const char *const *params;
        /* args is an object. 0, or -EINVAL with a message for the client. */
        int (*validate)(const json_t *args, char *msg, size_t msglen);
        /* 0 with *ret_result set (owned by the caller), or left NULL for a
         * result of JSON null, which both pools store as a success; or
         * negative with err filled. */
        int (*run)(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                   struct task_error *err);
};

const struct task *task_find(const char *name);
/* NULL-terminated table of every task, for GET /v1/tasks. */
const struct task *const *task_all(void);

static inline bool task_can_run(const struct task *t, enum job_kind k)
{
        return t->kinds & (1u << k);
}

/* Fills err from a printf-style message and returns -EIO, so run() can end
 * with `return task_fail(err, ...)`. */
int task_fail(struct task_error *err, const char *type, bool retryable,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- the run context (tasks/ctx.c) ---- */

/* deadline: CLOCK_MONOTONIC seconds; 0 for none. *ret owned by the caller. */
int task_ctx_new(double deadline, struct task_ctx **ret);
void task_ctx_free(struct task_ctx *c);
/* Asks the task to stop; wakes task_ctx_sleep(). Thread-safe, never blocks
 * for long: callable under other locks. */
void task_ctx_stop(struct task_ctx *c);
bool task_ctx_stopped(struct task_ctx *c);
/* For a task that waits outside task_ctx_sleep() (in poll, say): has
 * task_ctx_stop() call fn(arg), or nobody when fn is NULL. fn runs under the
 * ctx's lock, so it must be quick and must not call the ctx; once this
 * returns, a previous fn is no longer running. */
void task_ctx_set_waker(struct task_ctx *c, void (*fn)(void *arg), void *arg);
/* The deadline given to task_ctx_new(), to bound such a wait. */
double task_ctx_deadline(const struct task_ctx *c);
/* Whether task_ctx_stopped() or task_ctx_sleep() has told the task that the
 * deadline passed (and it was not stopped): a failed run then failed for
 * its deadline, whatever error it reports. */
bool task_ctx_timed_out(struct task_ctx *c);
/* Waits seconds: 0, -ETIMEDOUT when the deadline came first, -ECANCELED when
 * stopped. */
int task_ctx_sleep(struct task_ctx *c, double seconds);

/* CLOCK_MONOTONIC in seconds. */
double task_monotonic(void);

#endif
