/* The scheduler: every job that is pending or running lives here, in memory,
 * from the commit of its submission (or its recovery at start) to the commit
 * of its end. Pools pull ready jobs with sched_take() and hand results back
 * with sched_finish(); the scheduler decides retry or end, writes that
 * through the writer, and only after the commit announces it.
 *
 * Order: higher priority first, then older id. A job that failed with a
 * retryable error waits its backoff (base * 2^(attempts-1), capped, with
 * +-20 % jitter) out of the ready queues. One mutex guards everything; no
 * call here blocks on I/O while holding it.
 *
 * Batches are not held whole: a sealed batch's pending jobs stay in the
 * store and a feeder thread loads them a page at a time, in id (item)
 * order, outside the lock, whenever fewer than a page of the batch is
 * loaded. Memory is bounded by the pages in flight, not by batch size.
 *
 * Limits cap how many jobs run at once and how often they start:
 * - a batch's "limits" ({"concurrency": N, "per_second": R}, stored with
 *   the batch, read by the feeder) apply to every job of the batch,
 *   whatever its task;
 * - host_concurrency and host_per_second apply to http jobs only, per host
 *   (scheme, host and port of args.url, in lower case).
 * A job under both runs only when both let it. A job held back by a limit
 * waits here, not in a pool: sched_take() never hands it out before its
 * slot, and it is taken once a run of its batch or host ends or the rate
 * lets it start. A cancel takes it out at once; a retry passes the limits
 * again. */
#ifndef FUTURED_SCHEDULER_H
#define FUTURED_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "storage/histogram.h"
#include "storage/job.h"
#include "storage/store.h"
#include "storage/writer.h"

struct sched;
struct sched_job;

struct sched_options {
        struct writer *writer;
        size_t max_pending;             /* submissions past this get -EAGAIN */
        double retry_base;              /* seconds */
        double retry_max;               /* seconds */
        struct store *store;            /* the feeder opens its own reader */
        /* Called on the writer thread once a job's end is committed; batch is
         * the job's batch, 0 for none. id 0: many jobs of batch ended at once
         * (a batch cancel), each with its own seq. */
        void (*on_finished)(int64_t id, int64_t batch, void *userdata);
        void *userdata;
        unsigned host_concurrency;      /* http runs at once per host; 0: no limit */
        double host_per_second;         /* http starts per host and second; 0: no limit */
};

int sched_new(const struct sched_options *o, struct sched **ret);
/* Frees what is left; the pools must be stopped first. Accepts NULL. */
void sched_free(struct sched *s);

/* Start-up: takes a recovered pending job (owned from now on). */
int sched_restore(struct sched *s, struct job *j);

/* ---- submission ---- */

struct sched_submission {
        struct job *job;        /* in; the scheduler owns it from the call on */
        /* Out, when done() runs (on the writer thread): 0 stored and queued;
         * -EEXIST the key was taken: job->id is the existing job's; -EIO the
         * store failed. job may be read during done() only. */
        int result;
        void (*done)(struct sched_submission *sub);
        void *userdata;
        struct wop op;          /* private */
};

/* 0, and done() follows; or at once -EAGAIN (queue full) or -ESHUTDOWN
 * (stopping), and done() is not called and the job is the caller's again. */
int sched_submit(struct sched *s, struct sched_submission *sub);

/* Cancels job id; batch is its batch as the store has it (0: none), so a
 * batch job not loaded yet is found too. 0: the job was pending, its
 * cancellation is being committed; -EINPROGRESS: it is running and has been
 * told to stop; -EALREADY: it is running (or on its way back from a failed
 * attempt) and an earlier call already told it to stop (this call changed
 * nothing); -ENOENT: not held here (finished, finishing, or unknown). Each
 * of the first three ends in on_finished(id). */
int sched_cancel(struct sched *s, int64_t id, int64_t batch);

/* ---- batches ---- */

/* A sealed batch whose pending jobs are in the store (after its SEAL
 * committed, or at recovery): they run in id order at the batch's
 * priority. An empty or finished batch is accepted and forgotten. Never
 * blocks on I/O; may be called from a writer done(). -ENOMEM. */
int sched_add_batch(struct sched *s, int64_t batch, int priority);

struct sched_batch_cancel {
        int64_t batch;          /* in */
        /* Out, when done() runs (writer thread): 0 every pending job of the
         * batch is cancelled and committed, and every running one told to
         * stop; -EIO the store failed. */
        int result;
        void (*done)(struct sched_batch_cancel *c);
        void *userdata;
        struct wop op;          /* private */
};

/* Cancels what has not finished of a sealed batch: stops feeding it,
 * drops its loaded pending and delayed jobs, commits the cancellation of
 * every pending one in the store (WOP_BATCH_CANCEL, chunk after chunk, each
 * chunk announced with on_finished(0, batch)), interrupts its running jobs
 * (each ends cancelled with its own on_finished). 0, and done() follows;
 * -ESHUTDOWN while stopping (done() not called). */
int sched_cancel_batch(struct sched *s, struct sched_batch_cancel *c);

/* ---- the pools' side ---- */

/* Blocks until a job of this kind is ready; NULL once the scheduler stops.
 * interrupt(arg) is how the scheduler later asks this run to stop (cancel or
 * shutdown); it is called under the scheduler's lock and must not block. */
struct sched_job *sched_take(struct sched *s, enum job_kind kind,
                             void (*interrupt)(void *arg), void *arg);

/* The job being run: read-only, valid until sched_finish(). */
const struct job *sched_job_job(const struct sched_job *sj);

/* How a run ended. result (success) or error (an object with "type" and
 * "message") is set, and owned by the scheduler from this call on. */
struct sched_outcome {
        json_t *result;
        json_t *error;
        bool retryable;
};

/* Hands the run back; sj is gone after this. An interrupted run may report
 * anything: the scheduler knows why it stopped it. */
void sched_finish(struct sched *s, struct sched_job *sj, struct sched_outcome *o);

/* ---- life ---- */

/* Stops handing out jobs and refuses submissions, lets running jobs finish
 * for up to grace seconds, interrupts the rest and requeues them (their
 * attempt not counted), and returns once their requeue is committed. */
void sched_drain(struct sched *s, double grace);

struct sched_stats {
        size_t pending[JOB_KIND__COUNT];        /* ready to run, loaded */
        size_t delayed;                         /* waiting for a retry or a rate slot */
        size_t limited;                         /* held back by a concurrency or rate limit */
        size_t running[JOB_KIND__COUNT];
};
void sched_get_stats(struct sched *s, struct sched_stats *ret);

/* Seconds, by kind: each run from its start to its end (every attempt,
 * whatever the outcome), and each job's wait in the queue from its
 * submission to the start of its first attempt (a retry's wait is its
 * backoff, a policy, not queueing). */
struct sched_timings {
        struct histogram run[JOB_KIND__COUNT];
        struct histogram wait[JOB_KIND__COUNT];
};
void sched_get_timings(struct sched *s, struct sched_timings *ret);

/* Returns a new {"type", "message"} object for sched_outcome.error, or NULL on ENOMEM. */
json_t *sched_error_new(const char *type, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

#endif
