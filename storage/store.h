/* The job store: one SQLite database in WAL mode.
 *
 * store_open() creates or migrates the schema (PRAGMA user_version) and keeps
 * the connection that writer.c uses; nothing else writes. Reads go through
 * store_reader handles, one per thread, each its own read-only connection.
 * No function here logs: errors come back as negative errno codes. */
#ifndef FUTURED_STORE_H
#define FUTURED_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/batch.h"
#include "storage/job.h"

struct store;
struct store_reader;

struct store_options {
        const char *path;
        bool sync_full;         /* synchronous=FULL, else NORMAL */
};

/* -EBUSY: another process holds the store open (one futured per file:
 * two would run the same jobs and hand out the same completion order);
 * -EPROTO: its schema is newer than this futured knows; -EBADMSG: the file
 * is not an SQLite database (or not a regular file), or is another
 * program's. */
int store_open(const struct store_options *o, struct store **ret);
void store_close(struct store *s);

/* Start-up recovery, run once before the writer starts: unsealed batches
 * and their jobs are deleted (their upload never finished, nobody was told
 * of them); jobs left running go back to pending, not to run before
 * now + retry_delay_ms, while attempts remain, else fail with
 * "interrupted". Then every pending job outside a batch is handed to job()
 * in id order (it owns the job it is given), and every sealed batch that
 * still has pending jobs to batch(). A negative return of a callback stops
 * the walk and is returned. */
struct store_recovery {
        int64_t retry_delay_ms;
        int (*job)(struct job *j, void *userdata);
        int (*batch)(int64_t batch, int priority, void *userdata);
        void *userdata;
};
int store_recover(struct store *s, const struct store_recovery *rec);

/* Readers: not thread-safe, use one per thread. */
int store_reader_open(struct store *s, struct store_reader **ret);
void store_reader_close(struct store_reader *r);

/* -ENOENT when there is no such job. *ret is the caller's. */
int store_get_job(struct store_reader *r, int64_t id, struct job **ret);

struct store_filter {
        int state;              /* an enum job_state, or -1 for any */
        const char *task;       /* NULL for any */
        int64_t batch;          /* 0 for any */
        int64_t before_id;      /* 0: from the newest; else ids < before_id */
        int limit;              /* > 0 */
};

/* Newest first. cb owns each job it is given; a negative return stops the
 * walk and is returned. */
int store_list_jobs(struct store_reader *r, const struct store_filter *f,
                    int (*cb)(struct job *j, void *ud), void *ud);

int store_count_states(struct store_reader *r, int64_t ret_counts[JOB_STATE__COUNT]);
/* Jobs by task and state, outside unsealed batches: cb once per pair that
 * has any. It reads the whole table: callers bound how often. A negative
 * return of cb stops the walk and is returned. */
int store_count_tasks(struct store_reader *r,
                      int (*cb)(const char *task, enum job_state state, int64_t n, void *ud),
                      void *ud);

/* A sealed batch with its counts by state; -ENOENT when there is none (or
 * it is not sealed). *ret is the caller's. */
int store_get_batch(struct store_reader *r, int64_t id, struct batch **ret);

enum store_order {
        STORE_ORDER_COMPLETION,         /* by seq; the cursor is a seq */
        STORE_ORDER_SUBMISSION,         /* by id; the cursor is a job id */
};

/* Up to limit finished jobs of a batch after the cursor `after` (0: from
 * the start), in the given order. In submission order the walk stops at the
 * first job not finished, so item i comes only after every item before it.
 * cb owns each job; a negative return stops the walk and is returned. */
int store_batch_results(struct store_reader *r, int64_t batch, enum store_order order,
                        int64_t after, int limit, int (*cb)(struct job *j, void *ud), void *ud);

/* Up to limit pending jobs of a sealed batch with id > after_id, in id
 * order: how the scheduler feeds a batch without holding it in memory. cb
 * owns each job. */
int store_batch_pending(struct store_reader *r, int64_t batch, int64_t after_id, int limit,
                        int (*cb)(struct job *j, void *ud), void *ud);

#endif
