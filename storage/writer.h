/* The single writer: one thread owns the store's write connection and
 * commits whatever is queued in one transaction (group commit). An op's
 * done() runs on the writer thread only after its transaction committed, or
 * with an error after it failed, so nobody hears of a change that is not
 * durable. done() must not block: it hands the answer on and returns.
 *
 * When a commit fails, SUBMIT and DELETE ops end with -EIO (the client is
 * told); START, FINISH and REQUEUE are kept and committed again after a
 * pause, because a finished job must never be forgotten. */
#ifndef FUTURED_WRITER_H
#define FUTURED_WRITER_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/job.h"
#include "storage/store.h"

enum wop_type {
        WOP_SUBMIT,     /* insert job; fills job->id, job->created_at */
        WOP_START,      /* job->id now running: attempts, started_at */
        WOP_FINISH,     /* job->id finished: state, result, error, finished_at; fills job->seq */
        WOP_REQUEUE,    /* job->id back to pending: attempts, ready_at */
        WOP_DELETE,     /* forget finished job->id */
};

struct wop {
        enum wop_type type;
        struct job *job;        /* not owned by the writer */
        /* Out: 0; SUBMIT: -EEXIST when job->key was taken (job->id is then
         * the existing job's); DELETE: -ENOENT, or -EBUSY when not finished;
         * any op: -EIO when the store failed. */
        int result;
        void (*done)(struct wop *op);
        void *userdata;
        struct wop *next;       /* the writer's queue link */
};

struct writer;

struct writer_stats {
        uint64_t commits;
        uint64_t ops;
        uint64_t failures;
};

int writer_start(struct store *s, struct writer **ret);
/* Never blocks on I/O; op stays the caller's and must live until done(). */
void writer_push(struct writer *w, struct wop *op);
/* Commits what is queued, then joins the thread. Accepts NULL. */
void writer_stop(struct writer *w);
/* False while the store refuses writes (disk full, I/O error). */
bool writer_healthy(struct writer *w);
void writer_get_stats(struct writer *w, struct writer_stats *ret);

/* Failure injection for tests: when set, called before each COMMIT; a
 * negative return makes that commit fail as if the disk were full. */
extern int (*writer_commit_hook)(void);

#endif
