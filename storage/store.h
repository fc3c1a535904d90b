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

#include "storage/job.h"

struct store;
struct store_reader;

struct store_options {
        const char *path;
        bool sync_full;         /* synchronous=FULL, else NORMAL */
};

int store_open(const struct store_options *o, struct store **ret);
void store_close(struct store *s);

/* Start-up recovery, run once before the writer starts: jobs left running
 * go back to pending while attempts remain, else fail with "interrupted".
 * Then every pending job is handed to cb in id order; cb owns the job it is
 * given and returns 0, or a negative code that stops the walk and is
 * returned. */
int store_recover(struct store *s, int (*cb)(struct job *j, void *ud), void *ud);

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

#endif
