/* The job record: what a client submitted and what became of it.
 *
 * One struct serves the whole chain (validated spec, stored row, scheduler
 * entry) so no layer copies fields into a look-alike. Every string is owned
 * by the struct and released by job_free(). */
#ifndef FUTURED_JOB_H
#define FUTURED_JOB_H

#include <stdbool.h>
#include <stdint.h>

enum job_kind { JOB_KIND_IO, JOB_KIND_CPU, JOB_KIND__COUNT };

enum job_state {
        JOB_PENDING,
        JOB_RUNNING,
        JOB_SUCCEEDED,
        JOB_FAILED,
        JOB_CANCELLED,
        JOB_STATE__COUNT,
};

struct job {
        int64_t id;             /* 0 until stored */
        char *task;
        enum job_kind kind;
        enum job_state state;
        char *args;             /* JSON object text, positional args already named */
        char *tag;              /* JSON text, or NULL */
        char *key;              /* idempotency key, or NULL */
        char *result;           /* JSON text, or NULL */
        char *error;            /* JSON {"type","message",...} text, or NULL */
        double timeout;         /* seconds, > 0 */
        int priority;           /* higher runs first */
        int attempts;           /* attempts started so far */
        int max_attempts;
        int64_t batch;          /* 0: not in a batch */
        int64_t index;          /* place in its batch; -1: none */
        int64_t seq;            /* global completion order; 0: not finished */
        int64_t created_at;     /* ms since the epoch; 0: unset */
        int64_t started_at;
        int64_t finished_at;
        int64_t ready_at;       /* not run before this (retry backoff) */
};

const char *job_kind_name(enum job_kind k);
int job_kind_parse(const char *s, enum job_kind *ret);
const char *job_state_name(enum job_state s);
int job_state_parse(const char *s, enum job_state *ret);

static inline bool job_state_finished(enum job_state s)
{
        return s >= JOB_SUCCEEDED;
}

/* Wall-clock milliseconds since the epoch, the unit of every stored time. */
int64_t job_now_ms(void);

/* Returns a zeroed job with index -1; NULL on ENOMEM. */
struct job *job_new(void);
/* Accepts NULL and half-filled jobs. */
void job_free(struct job *j);

#endif
