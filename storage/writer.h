/* The single writer: one thread owns the store's write connection and
 * commits what is queued (up to a couple of thousand ops) in one
 * transaction (group commit). An op's done() runs on the writer thread only
 * after its transaction committed, or with an error after it failed, so
 * nobody hears of a change that is not durable. done() must not block: it hands the answer on and returns.
 *
 * When a commit fails, SUBMIT and DELETE ops end with -EIO (the client is
 * told); START, FINISH and REQUEUE are kept and committed again after a
 * pause, because a finished job must never be forgotten. */
#ifndef FUTURED_WRITER_H
#define FUTURED_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/batch.h"
#include "storage/histogram.h"
#include "storage/job.h"
#include "storage/store.h"

enum wop_type {
        WOP_SUBMIT,     /* insert job; fills job->id, job->created_at */
        WOP_START,      /* job->id now running: attempts, started_at */
        WOP_FINISH,     /* job->id finished: state, result, error, finished_at
                         * (and its START's fields when folded: op->start);
                         * fills job->seq; a batch job also counts in its batch */
        WOP_REQUEUE,    /* job->id back to pending: attempts, ready_at (and
                         * started_at when its START is folded) */
        WOP_DELETE,     /* forget finished job->id */
        /* Batches (storage/batch.h), all through op->batch: */
        WOP_BATCH_OPEN,         /* insert unsealed; fills batch->id, created_at.
                                 * With op->jobs, the whole batch: OPEN, ITEMS
                                 * (the jobs' batch set here) and SEAL of
                                 * batch->size == n_jobs items in one, stored
                                 * sealed or not at all */
        WOP_BATCH_ITEMS,        /* insert op->jobs[0..n_jobs) into the open batch;
                                 * each job's batch and index are set by the
                                 * caller; fills their ids and created_at */
        WOP_BATCH_SEAL,         /* batch->size items stored: visible from now on */
        /* Forget the unsealed batch and its jobs, at most WRITER_CHUNK
         * jobs per op and the row with the last: op->count says how many
         * jobs went; the caller pushes again while it is WRITER_CHUNK. */
        WOP_BATCH_ABORT,
        /* Every pending job of the sealed batch ends cancelled, each with its
         * own seq, at most WRITER_CHUNK per op: op->count says how many; the
         * caller pushes again while it is WRITER_CHUNK. */
        WOP_BATCH_CANCEL,
        /* Forget a sealed batch and its jobs; -EBUSY while any is pending or
         * running, -ENOENT when there is no such sealed batch. The batch is
         * unsealed (gone for readers) and loses its first WRITER_CHUNK
         * jobs: when op->count is WRITER_CHUNK, the caller goes on with
         * BATCH_ABORT. */
        WOP_BATCH_DELETE,
        /* Retention: delete at most WRITER_CHUNK finished jobs outside
         * batches and whole finished batches (their jobs counted) whose
         * finished_at < op->cutoff; op->count says how many jobs went. */
        WOP_PURGE,
};

#define WRITER_CHUNK 10000

struct wop {
        enum wop_type type;
        struct job *job;        /* not owned by the writer */
        struct batch *batch;    /* batch ops; not owned */
        struct job **jobs;      /* WOP_BATCH_ITEMS; not owned */
        size_t n_jobs;
        int64_t cutoff;         /* WOP_PURGE: ms since the epoch */
        size_t count;           /* out: WOP_BATCH_ABORT, _CANCEL, _DELETE, WOP_PURGE */
        /* Out: 0, or:
         * SUBMIT: -EEXIST when job->key was taken (job->id is then the
         *   existing job's);
         * SUBMIT, FINISH, BATCH_OPEN: -EINVAL or -E2BIG when the schema
         *   refused a value (a missing field, a text too big): the op fails
         *   alone, the rest of its transaction commits;
         * START, FINISH, REQUEUE: -ENOENT when the job is absent or finished;
         * DELETE: -ENOENT, or -EBUSY when not finished;
         * BATCH_ITEMS: -EEXIST when a key was taken, -EINVAL or -E2BIG when
         *   a value was refused or a job names another batch: no job of the
         *   op is stored;
         * BATCH_ITEMS, BATCH_SEAL, BATCH_ABORT: -ENOENT unless the batch is
         *   open (stored, unsealed);
         * BATCH_SEAL: -EINVAL when batch->size is not the items stored;
         * BATCH_CANCEL: -ENOENT unless the batch is sealed;
         * any op: -EIO when the store failed. */
        int result;
        void (*done)(struct wop *op);
        void *userdata;
        /* START, FINISH, REQUEUE: the job's attempts to store. Not read
         * from the job: a drained run gives its attempt back while its
         * START may still be queued. */
        int attempts;
        /* FINISH, REQUEUE: the job's START pushed before it, or NULL. Taken
         * in the same transaction with no batch cancel between them, the
         * START writes nothing: this op writes all it would (a noop job's
         * start and end cost one row update). */
        struct wop *start;
        /* The writer's: */
        struct wop *next;       /* queue link */
        uint64_t txn;           /* the transaction that took it */
        bool skip;              /* START: written by a later op */
};

struct writer;

struct writer_stats {
        uint64_t commits;
        uint64_t ops;
        uint64_t failures;
        struct histogram commit_ops;    /* ops per committed transaction */
        struct histogram commit_seconds;        /* BEGIN to COMMIT's return, fsync included */
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
