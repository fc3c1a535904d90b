/* The single writer: group commit on the store's write connection.
 *
 * Producers append ops to a queue under a mutex; the writer thread takes the
 * whole queue, runs it as one BEGIN IMMEDIATE ... COMMIT, and only then
 * calls each op's done(), in queue order and with no lock held. One fsync
 * thus covers every op that queued while the previous commit was syncing,
 * which is where the throughput of synchronous=FULL comes from.
 *
 * Results of an op: a refused value (constraint, size) fails that op alone
 * with -EINVAL or -E2BIG; START, FINISH and REQUEUE of a job that is absent
 * or already finished give -ENOENT, so a finished job never changes again.
 * Anything else is a store failure: the transaction is rolled back, START,
 * FINISH, REQUEUE and BATCH_CANCEL go back to the head of the queue and are
 * retried after RETRY_PAUSE_S, unless stopping; every other op (and those
 * when stopping, so that writer_stop() cannot hang on a dead disk) ends
 * with -EIO.
 *
 * An op that changes several rows either changes all it should or, when it
 * fails alone, nothing: BATCH_ITEMS runs inside a savepoint it rolls back
 * to. The counters of a batch (schema.c) change in the same transaction as
 * the jobs they count. Ops over a whole batch (CANCEL, ABORT, DELETE,
 * PURGE) touch at most WRITER_CHUNK jobs each and end their transaction,
 * so that neither one op nor several queued at once hold the writer for
 * long (a million jobs take seconds to delete).
 *
 * seq is the last completion-order number handed out; only the writer
 * thread touches it, and a rolled-back transaction gives its numbers back.
 * Stats: commits and failures count transactions, ops counts the ops of
 * committed ones; the histograms see each committed transaction's size
 * and how long it took, sync included. */
#include "storage/writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "storage/store-internal.h"

#define RETRY_PAUSE_S 1
#define TXN_OPS_MAX 2048
/* Checkpoint once the queue has been this long idle after a commit: not
 * after every commit, which would add a sync to each under light load. */
#define IDLE_CHECKPOINT_MS 200
/* How long that checkpoint waits for readers to move off the WAL: the queue
 * is not served meanwhile, and the next idle moment tries again. */
#define CHECKPOINT_BUSY_MS 20

/* Rows per statement of BATCH_ITEMS. A statement per row would cost more
 * than the row itself (a cursor on every index, AUTOINCREMENT's read and
 * write of sqlite_sequence), so a chunk goes in by ITEMS_ROWS, its rest
 * row by row. */
#define ITEMS_ROWS 100

/* Ops per commit: powers of two up to past WRITER_CHUNK. */
static const double commit_ops_bounds[] = {
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
};
/* Seconds per commit: from a page-cache write to a stalled disk. */
static const double commit_seconds_bounds[] = {
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1, 2.5, 5, 10,
};

/* An insert of one or more rows; the values of row r are parameters
 * r * INSERT_VALUES + 1 and on, in the order of bind_job(). DO NOTHING only
 * on a uniqueness conflict, and key is the only unique column an insert
 * can collide on.
 *
 * Rows that a CHECK or NOT NULL refuses would make a statement of many rows
 * undo the rows before them (ABORT), for which SQLite copies every page
 * the statement changes to a statement journal first: a dozen pages per
 * statement, more than its rows take, written to a temporary file. OR FAIL
 * leaves them, so no journal is kept: BATCH_ITEMS, the only user of many
 * rows, rolls back to its savepoint on any failure anyway. */
#define INSERT_ONE "INSERT "
#define INSERT_MANY "INSERT OR FAIL "
#define INSERT_HEAD \
        "INTO jobs (task, kind, state, args, tag, key, timeout, priority, attempts, " \
        "max_attempts, batch, batch_index, created_at, ready_at) VALUES "
#define INSERT_ROW "%s(?%d, ?%d, 'pending', ?%d, ?%d, ?%d, ?%d, ?%d, 0, ?%d, ?%d, ?%d, ?%d, ?%d)"
#define INSERT_ROW_MAX 128
#define INSERT_TAIL " ON CONFLICT DO NOTHING"
#define INSERT_VALUES 12

#define CANCELLED_ERROR "{\"type\":\"cancelled\",\"message\":\"cancelled by request\"}"

int (*writer_commit_hook)(void);

enum stmt {
        ST_BEGIN,
        ST_COMMIT,
        ST_ROLLBACK,
        ST_SAVEPOINT,
        ST_RELEASE,
        ST_ROLLBACK_TO,
        ST_KEY_ID,
        ST_START,
        ST_FINISH,
        ST_REQUEUE,
        ST_DELETE,
        ST_EXISTS,
        ST_MAX_SEQ,
        ST_BATCH_ROW,
        ST_BATCH_OPEN,
        ST_BATCH_GROW,
        ST_BATCH_SEAL,
        ST_BATCH_COUNT,
        ST_BATCH_CANCEL,
        ST_BATCH_HIDE,
        ST_BATCH_JOBS_DELETE,
        ST_BATCH_DELETE,
        ST_PURGE_JOBS,
        ST_PURGE_OLDEST,
        ST__FIXED,                      /* those above: SQL in stmt_sql[] */
        ST_INSERT = ST__FIXED,          /* one row */
        ST_INSERT_MANY,                 /* ITEMS_ROWS rows */
        ST__COUNT,
};

static const char *const stmt_sql[ST__FIXED] = {
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
        [ST_SAVEPOINT] = "SAVEPOINT op",
        [ST_RELEASE] = "RELEASE op",
        [ST_ROLLBACK_TO] = "ROLLBACK TO op",
        [ST_KEY_ID] = "SELECT id FROM jobs WHERE key = ?1",
        [ST_START] = "UPDATE jobs SET state = 'running', attempts = ?2, started_at = ?3 "
                     "WHERE id = ?1 AND state IN ('pending', 'running')",
        /* ?7, ?8 (FINISH) and ?4 (REQUEUE): NULL unless the START is
         * folded in (bind_folded_start()) */
        [ST_FINISH] = "UPDATE jobs SET state = ?2, result = ?3, error = ?4, finished_at = ?5, seq = ?6, "
                      "attempts = COALESCE(?7, attempts), started_at = COALESCE(?8, started_at) "
                      "WHERE id = ?1 AND state IN ('pending', 'running') RETURNING batch",
        [ST_REQUEUE] = "UPDATE jobs SET state = 'pending', attempts = ?2, ready_at = ?3, "
                       "started_at = COALESCE(?4, started_at) "
                       "WHERE id = ?1 AND state IN ('pending', 'running')",
        [ST_DELETE] = "DELETE FROM jobs WHERE id = ?1 AND state NOT IN ('pending', 'running')",
        [ST_EXISTS] = "SELECT 1 FROM jobs WHERE id = ?1",
        [ST_MAX_SEQ] = "SELECT COALESCE(MAX(seq), 0) FROM jobs WHERE seq IS NOT NULL",
        [ST_BATCH_ROW] = "SELECT sealed, size, done FROM batches WHERE id = ?1",
        [ST_BATCH_OPEN] = "INSERT INTO batches (priority, limits, created_at) VALUES (?1, ?2, ?3)",
        [ST_BATCH_GROW] = "UPDATE batches SET size = size + ?2 WHERE id = ?1 AND sealed = 0",
        [ST_BATCH_SEAL] = "UPDATE batches SET sealed = 1, sealed_at = ?2, "
                          "finished_at = CASE WHEN done = size THEN ?2 END WHERE id = ?1",
        /* ?2 jobs finished, ?3..?5 of them succeeded, failed, cancelled. */
        [ST_BATCH_COUNT] = "UPDATE batches SET done = done + ?2, succeeded = succeeded + ?3, "
                           "failed = failed + ?4, cancelled = cancelled + ?5, "
                           "finished_at = CASE WHEN sealed = 1 AND done + ?2 = size "
                           "THEN ?6 ELSE finished_at END WHERE id = ?1",
        /* The first ?4 pending jobs of batch ?1 in id order take the seqs
         * after ?3 in that order; UPDATE ... FROM computes the set before it
         * changes a row. jobs_state, not jobs_batch: it holds only pending
         * jobs, so a chunk does not step again over those cancelled by the
         * chunks before it; the batch's id range bounds the walk. */
        [ST_BATCH_CANCEL] = "UPDATE jobs SET state = 'cancelled', error = '" CANCELLED_ERROR "', "
                            "finished_at = ?2, seq = ?3 + c.n "
                            "FROM (SELECT id, row_number() OVER (ORDER BY id) AS n "
                            "      FROM (SELECT id FROM jobs INDEXED BY jobs_state "
                            "            WHERE state = 'pending' "
                            "              AND id BETWEEN (SELECT min(id) FROM jobs WHERE batch = ?1) "
                            "                         AND (SELECT max(id) FROM jobs WHERE batch = ?1) "
                            "              AND batch = ?1 "
                            "            ORDER BY id LIMIT ?4)) AS c "
                            "WHERE jobs.id = c.id",
        /* Unsealed, a batch exists for no reader and recovery deletes it:
         * what a delete does first, so that its later chunks need not be
         * in the same transaction. */
        [ST_BATCH_HIDE] = "UPDATE batches SET sealed = 0 WHERE id = ?1",
        [ST_BATCH_JOBS_DELETE] = "DELETE FROM jobs WHERE id IN "
                                 "(SELECT id FROM jobs WHERE batch = ?1 LIMIT ?2)",
        [ST_BATCH_DELETE] = "DELETE FROM batches WHERE id = ?1",
        [ST_PURGE_JOBS] = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs "
                          "WHERE batch IS NULL AND finished_at < ?1 ORDER BY finished_at LIMIT ?2)",
        [ST_PURGE_OLDEST] = "SELECT id FROM batches WHERE finished_at < ?1 ORDER BY finished_at LIMIT 1",
};

struct writer {
        sqlite3 *db;                    /* the store's; this thread's alone */
        sqlite3_stmt *st[ST__COUNT];
        int64_t seq;                    /* writer thread only */
        /* Under lock: stamps ops so an end finds a START it may fold;
         * one per transaction. */
        uint64_t txn;
        pthread_t thread;

        pthread_mutex_t lock;
        pthread_cond_t wake;            /* CLOCK_MONOTONIC */
        /* Under lock: */
        struct wop *head, *tail;
        bool waiting;                   /* the thread sleeps until a push */
        bool stopping;
        bool healthy;
        struct writer_stats stats;
};

static int step(sqlite3_stmt *st)
{
        int rc = sqlite3_step(st);

        sqlite3_reset(st);
        return rc;
}

/* A statement of op failed with rc: either op's own fault, which ends op,
 * or the store's, returned to fail the transaction. */
static int op_fail(struct wop *op, int rc)
{
        int r = store_errno(rc);

        if (r != -EINVAL && r != -E2BIG)
                return r;
        op->result = r;
        return 0;
}

/* Runs st with ?1 bound to id: SQLITE_DONE or the error. */
static int step_id(sqlite3_stmt *st, int64_t id)
{
        int rc = sqlite3_bind_int64(st, 1, id);

        return rc == SQLITE_OK ? step(st) : rc;
}

/* Binds j as the row of an insert whose values start after parameter
 * base. */
static void bind_job(sqlite3_stmt *st, int base, const struct job *j, int *rc)
{
        store_bind_text(st, base + 1, j->task, rc);
        store_bind_text(st, base + 2, job_kind_name(j->kind), rc);
        store_bind_text(st, base + 3, j->args, rc);
        store_bind_text(st, base + 4, j->tag, rc);
        store_bind_text(st, base + 5, j->key, rc);
        if (*rc == SQLITE_OK)
                *rc = sqlite3_bind_double(st, base + 6, j->timeout);
        store_bind_int64(st, base + 7, j->priority, rc);
        store_bind_int64(st, base + 8, j->max_attempts, rc);
        store_bind_opt_int64(st, base + 9, j->batch, 0, rc);
        store_bind_opt_int64(st, base + 10, j->index, -1, rc);
        store_bind_int64(st, base + 11, j->created_at, rc);
        store_bind_int64(st, base + 12, j->ready_at, rc);
}

/* Runs st, whose binds gave rc, for one row: 1 with the row's first
 * column in *ret, 0 when there is none, or a store failure. */
static int step_row_int64(sqlite3_stmt *st, int rc, int64_t *ret)
{
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
                *ret = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (rc == SQLITE_ROW)
                return 1;
        return rc == SQLITE_DONE ? 0 : store_errno(rc);
}

/* 1 with the id of the job that holds key in *ret, 0 when none does, or a
 * store failure. This connection sees inserts earlier in its own
 * transaction too. */
static int key_owner(struct writer *w, const char *key, int64_t *ret)
{
        sqlite3_stmt *st = w->st[ST_KEY_ID];
        int rc = SQLITE_OK;

        store_bind_text(st, 1, key, &rc);
        return step_row_int64(st, rc, ret);
}

/* A taken key is looked up before the insert, not found by its conflict:
 * an insert that does nothing still uses up an AUTOINCREMENT id, and a
 * client repeating a keyed submission should not leave gaps in the ids. */
static int apply_submit(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_INSERT];
        struct job *j = op->job;
        int rc = SQLITE_OK, r;

        if (j->key) {
                r = key_owner(w, j->key, &j->id);
                if (r < 0)
                        return r;
                if (r > 0) {
                        op->result = -EEXIST;
                        return 0;
                }
        }
        if (j->created_at == 0)
                j->created_at = job_now_ms();
        bind_job(st, 0, j, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc == SQLITE_DONE && sqlite3_changes(w->db) == 0)
                rc = SQLITE_CONSTRAINT;
        if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        j->id = sqlite3_last_insert_rowid(w->db);
        op->result = 0;
        return 0;
}

/* Binds the op's job id as ?1 and runs st; rc is the outcome of the
 * caller's binds of the other values. A job not there, or not in a state
 * the statement applies to, gives -ENOENT. */
static int apply_update(struct writer *w, struct wop *op, sqlite3_stmt *st, int rc)
{
        store_bind_int64(st, 1, op->job->id, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        op->result = sqlite3_changes(w->db) > 0 ? 0 : -ENOENT;
        return 0;
}

static int apply_start(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_START];
        int rc = SQLITE_OK;

        if (op->skip) {
                op->result = 0;
                return 0;
        }
        store_bind_int64(st, 2, op->attempts, &rc);
        store_bind_opt_int64(st, 3, op->job->started_at, 0, &rc);
        return apply_update(w, op, st, rc);
}

/* The attempts (?attempts, unless 0) and start (?started) of the run that
 * op ends, when its START was skipped for it (take_op()); else NULLs, which
 * keep the stored ones: an end of a job that never started here, such as
 * a tombstone's, knows neither. */
static void bind_folded_start(sqlite3_stmt *st, int attempts, int started, const struct wop *op,
                              int *rc)
{
        bool folded = op->start && op->start->skip;

        if (attempts > 0)
                store_bind_opt_int64(st, attempts, folded ? op->attempts : -1, -1, rc);
        store_bind_opt_int64(st, started, folded ? op->job->started_at : 0, 0, rc);
}

/* n jobs of batch finished in state, counted in its row. */
static int count_finished(struct writer *w, int64_t batch, enum job_state state, int64_t n,
                          int64_t now)
{
        sqlite3_stmt *st = w->st[ST_BATCH_COUNT];
        int rc = SQLITE_OK;

        store_bind_int64(st, 1, batch, &rc);
        store_bind_int64(st, 2, n, &rc);
        store_bind_int64(st, 3, state == JOB_SUCCEEDED ? n : 0, &rc);
        store_bind_int64(st, 4, state == JOB_FAILED ? n : 0, &rc);
        store_bind_int64(st, 5, state == JOB_CANCELLED ? n : 0, &rc);
        store_bind_int64(st, 6, now, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        return rc == SQLITE_DONE ? 0 : store_errno(rc);
}

static int apply_finish(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_FINISH];
        struct job *j = op->job;
        int64_t batch = 0;
        bool found = false;
        int rc = SQLITE_OK, r;

        /* Retention goes by finished_at: every finished job has one. */
        if (j->finished_at == 0)
                j->finished_at = job_now_ms();
        store_bind_int64(st, 1, j->id, &rc);
        store_bind_text(st, 2, job_state_name(j->state), &rc);
        store_bind_text(st, 3, j->result, &rc);
        store_bind_text(st, 4, j->error, &rc);
        store_bind_int64(st, 5, j->finished_at, &rc);
        store_bind_int64(st, 6, w->seq + 1, &rc);
        bind_folded_start(st, 7, 8, op, &rc);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
                found = true;
                batch = sqlite3_column_int64(st, 0);
                rc = sqlite3_step(st);
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        if (!found) {
                op->result = -ENOENT;
                return 0;
        }
        if (batch != 0) {
                r = count_finished(w, batch, j->state, 1, j->finished_at);
                if (r < 0)
                        return r;
        }
        j->seq = ++w->seq;
        op->result = 0;
        return 0;
}

static int apply_requeue(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_REQUEUE];
        int rc = SQLITE_OK;

        store_bind_int64(st, 2, op->attempts, &rc);
        store_bind_int64(st, 3, op->job->ready_at, &rc);
        bind_folded_start(st, 0, 4, op, &rc);
        return apply_update(w, op, st, rc);
}

static int apply_delete(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st;
        int rc = SQLITE_OK, r;

        r = apply_update(w, op, w->st[ST_DELETE], rc);
        if (r < 0 || op->result != -ENOENT)
                return r;

        /* Nothing deleted: absent, or there but not finished. */
        st = w->st[ST_EXISTS];
        store_bind_int64(st, 1, op->job->id, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc == SQLITE_ROW)
                op->result = -EBUSY;
        else if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        return 0;
}

/* What a batch op needs to know of its batch's row. */
struct batch_row {
        bool sealed;
        int64_t size;
        int64_t done;
};

/* 1 when op's batch exists and its sealed flag is as wanted, with *ret
 * filled; else 0 and op ends with -ENOENT; or a store failure. */
static int batch_find(struct writer *w, struct wop *op, bool sealed, struct batch_row *ret)
{
        sqlite3_stmt *st = w->st[ST_BATCH_ROW];
        int rc, r;

        rc = sqlite3_bind_int64(st, 1, op->batch->id);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
                ret->sealed = sqlite3_column_int(st, 0) != 0;
                ret->size = sqlite3_column_int64(st, 1);
                ret->done = sqlite3_column_int64(st, 2);
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return store_errno(rc);
        r = rc == SQLITE_ROW && ret->sealed == sealed;
        if (!r)
                op->result = -ENOENT;
        return r;
}

static int apply_batch_open(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_BATCH_OPEN];
        struct batch *b = op->batch;
        int rc = SQLITE_OK;

        if (b->created_at == 0)
                b->created_at = job_now_ms();
        store_bind_int64(st, 1, b->priority, &rc);
        store_bind_text(st, 2, b->limits, &rc);
        store_bind_int64(st, 3, b->created_at, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        b->id = sqlite3_last_insert_rowid(w->db);
        op->result = 0;
        return 0;
}

/* The hot path of a big upload: prepared inserts reused, ITEMS_ROWS rows
 * at a time, values bound in place, nothing allocated. The batch's size
 * grows first, which also checks that the batch is open. */
static int apply_batch_items(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_BATCH_GROW];
        struct batch *b = op->batch;
        int64_t now = job_now_ms(), last;
        int rc = SQLITE_OK, r;
        size_t i = 0, rows, k;

        store_bind_int64(st, 1, b->id, &rc);
        store_bind_int64(st, 2, (int64_t) op->n_jobs, &rc);
        if (rc == SQLITE_OK)
                rc = step(w->st[ST_SAVEPOINT]);
        if (rc == SQLITE_DONE)
                rc = step(st);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        if (sqlite3_changes(w->db) == 0) {
                op->result = -ENOENT;
                goto refuse;
        }
        while (i < op->n_jobs) {
                rows = op->n_jobs - i >= ITEMS_ROWS ? ITEMS_ROWS : 1;
                st = w->st[rows == 1 ? ST_INSERT : ST_INSERT_MANY];
                rc = SQLITE_OK;
                for (k = 0; k < rows; k++) {
                        struct job *j = op->jobs[i + k];

                        if (j->batch != b->id) {
                                op->result = -EINVAL;
                                goto refuse;
                        }
                        if (j->created_at == 0)
                                j->created_at = now;
                        bind_job(st, (int) k * INSERT_VALUES, j, &rc);
                }
                if (rc == SQLITE_OK)
                        rc = step(st);
                if (rc != SQLITE_DONE) {
                        r = op_fail(op, rc);
                        if (r < 0)
                                return r;
                        goto refuse;
                }
                if (sqlite3_changes(w->db) != (int) rows) {
                        op->result = -EEXIST;
                        goto refuse;
                }
                /* Only this connection inserts, and AUTOINCREMENT gives each
                 * row the largest id so far plus one: the rows of one
                 * statement have consecutive ids. */
                last = sqlite3_last_insert_rowid(w->db);
                for (k = 0; k < rows; k++)
                        op->jobs[i + k]->id = last - (int64_t) (rows - 1 - k);
                i += rows;
        }
        rc = step(w->st[ST_RELEASE]);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        op->result = 0;
        return 0;

refuse:
        /* The op fails alone: none of its rows stays, the rest of the
         * transaction does. */
        while (i > 0)
                op->jobs[--i]->id = 0;
        rc = step(w->st[ST_ROLLBACK_TO]);
        if (rc == SQLITE_DONE)
                rc = step(w->st[ST_RELEASE]);
        return rc == SQLITE_DONE ? 0 : store_errno(rc);
}

static int apply_batch_seal(struct writer *w, struct wop *op)
{
        struct batch *b = op->batch;
        struct batch_row row;
        int64_t now = job_now_ms();
        int rc = SQLITE_OK, r;

        r = batch_find(w, op, false, &row);
        if (r <= 0)
                return r;
        if (row.size != b->size) {
                op->result = -EINVAL;
                return 0;
        }
        store_bind_int64(w->st[ST_BATCH_SEAL], 1, b->id, &rc);
        store_bind_int64(w->st[ST_BATCH_SEAL], 2, now, &rc);
        if (rc == SQLITE_OK)
                rc = step(w->st[ST_BATCH_SEAL]);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        b->sealed = true;
        b->sealed_at = now;
        b->finished_at = row.done == row.size ? now : 0;
        op->result = 0;
        return 0;
}

static void undo_items(struct wop *op)
{
        for (size_t i = 0; i < op->n_jobs; i++)
                op->jobs[i]->id = 0;
}

static void undo_seal(struct batch *b)
{
        b->sealed = false;
        b->sealed_at = 0;
        b->finished_at = 0;
}

static void op_undo(struct wop *op);

/* OPEN with jobs: the whole batch at once, stored sealed or not at all, so
 * that a small batch costs one commit rather than three. The jobs take the
 * batch's id here, as nobody knew it before. */
static int apply_batch_whole(struct writer *w, struct wop *op)
{
        int rc, r;

        rc = step(w->st[ST_SAVEPOINT]);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        r = apply_batch_open(w, op);
        if (r == 0 && op->result == 0) {
                for (size_t i = 0; i < op->n_jobs; i++)
                        op->jobs[i]->batch = op->batch->id;
                r = apply_batch_items(w, op);
        }
        if (r == 0 && op->result == 0)
                r = apply_batch_seal(w, op);
        if (r < 0)
                return r;
        if (op->result < 0) {
                op_undo(op);
                rc = step(w->st[ST_ROLLBACK_TO]);
        } else
                rc = SQLITE_DONE;
        if (rc == SQLITE_DONE)
                rc = step(w->st[ST_RELEASE]);
        return rc == SQLITE_DONE ? 0 : store_errno(rc);
}

/* Runs a DELETE of at most ?2 rows chosen by ?1; returns how many went, or
 * a store failure. */
static int64_t delete_chunk(struct writer *w, sqlite3_stmt *st, int64_t key, int64_t limit)
{
        int rc = SQLITE_OK;

        store_bind_int64(st, 1, key, &rc);
        store_bind_int64(st, 2, limit, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        return rc == SQLITE_DONE ? sqlite3_changes(w->db) : store_errno(rc);
}

/* At most limit of batch id's jobs, and its row when they were its last;
 * returns how many jobs went, or a store failure. When limit went, the
 * row stays for the next chunk to find, even if none is left. */
static int64_t forget_batch(struct writer *w, int64_t id, int64_t limit)
{
        int64_t n = delete_chunk(w, w->st[ST_BATCH_JOBS_DELETE], id, limit);
        int rc;

        if (n < 0 || n == limit)
                return n;
        rc = step_id(w->st[ST_BATCH_DELETE], id);
        return rc == SQLITE_DONE ? n : store_errno(rc);
}

/* One chunk of op's batch, found unsealed or just hidden. */
static int abort_chunk(struct writer *w, struct wop *op)
{
        int64_t n = forget_batch(w, op->batch->id, WRITER_CHUNK);

        if (n < 0)
                return (int) n;
        op->count = (size_t) n;
        op->result = 0;
        return 0;
}

static int apply_batch_abort(struct writer *w, struct wop *op)
{
        struct batch_row row;
        int r;

        op->count = 0;
        r = batch_find(w, op, false, &row);
        if (r <= 0)
                return r;
        return abort_chunk(w, op);
}

/* Hides the batch first: the chunks after this op's are ABORTs, and a
 * crash between them leaves an unsealed batch, which recovery deletes. */
static int apply_batch_delete(struct writer *w, struct wop *op)
{
        struct batch_row row;
        int rc, r;

        op->count = 0;
        r = batch_find(w, op, true, &row);
        if (r <= 0)
                return r;
        if (row.done < row.size) {
                op->result = -EBUSY;
                return 0;
        }
        rc = step_id(w->st[ST_BATCH_HIDE], op->batch->id);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        return abort_chunk(w, op);
}

static int apply_batch_cancel(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_BATCH_CANCEL];
        struct batch_row row;
        int64_t now = job_now_ms(), n;
        int rc = SQLITE_OK, r;

        op->count = 0;
        r = batch_find(w, op, true, &row);
        if (r <= 0)
                return r;
        store_bind_int64(st, 1, op->batch->id, &rc);
        store_bind_int64(st, 2, now, &rc);
        store_bind_int64(st, 3, w->seq, &rc);
        store_bind_int64(st, 4, WRITER_CHUNK, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        n = sqlite3_changes(w->db);
        if (n > 0) {
                w->seq += n;
                r = count_finished(w, op->batch->id, JOB_CANCELLED, n, now);
                if (r < 0)
                        return r;
        }
        op->count = (size_t) n;
        op->result = 0;
        return 0;
}

/* 1 with the finished batch that is oldest and older than cutoff in *ret,
 * 0 when there is none, or a store failure. */
static int oldest_finished_batch(struct writer *w, int64_t cutoff, int64_t *ret)
{
        sqlite3_stmt *st = w->st[ST_PURGE_OLDEST];

        return step_row_int64(st, sqlite3_bind_int64(st, 1, cutoff), ret);
}

/* Standalone jobs first, then whole batches, WRITER_CHUNK jobs in all. A
 * batch with more jobs than the chunk has left loses only jobs here; its
 * row goes in the op that deletes its last job, so the next op finds it
 * again. */
static int apply_purge(struct writer *w, struct wop *op)
{
        int64_t left = WRITER_CHUNK, batch = 0, n;
        int r;

        op->count = 0;
        n = delete_chunk(w, w->st[ST_PURGE_JOBS], op->cutoff, left);
        if (n < 0)
                return (int) n;
        left -= n;
        while (left > 0) {
                r = oldest_finished_batch(w, op->cutoff, &batch);
                if (r <= 0) {
                        if (r < 0)
                                return r;
                        break;
                }
                n = forget_batch(w, batch, left);
                if (n < 0)
                        return (int) n;
                left -= n;
        }
        op->count = (size_t) (WRITER_CHUNK - left);
        op->result = 0;
        return 0;
}

/* r is what applying FINISH or REQUEUE op returned. When op failed alone
 * after its START was skipped, the START is written after all: the job
 * counts its attempt as if op had never been pushed. */
static int apply_ended(struct writer *w, struct wop *op, int r)
{
        if (r < 0 || op->result == 0 || op->result == -ENOENT || !op->start || !op->start->skip)
                return r;
        op->start->skip = false;
        return apply_start(w, op->start);
}

static int writer_apply(struct writer *w, struct wop *op)
{
        switch (op->type) {
        case WOP_SUBMIT:
                return apply_submit(w, op);
        case WOP_START:
                return apply_start(w, op);
        case WOP_FINISH:
                return apply_ended(w, op, apply_finish(w, op));
        case WOP_REQUEUE:
                return apply_ended(w, op, apply_requeue(w, op));
        case WOP_DELETE:
                return apply_delete(w, op);
        case WOP_BATCH_OPEN:
                return op->n_jobs > 0 ? apply_batch_whole(w, op) : apply_batch_open(w, op);
        case WOP_BATCH_ITEMS:
                return apply_batch_items(w, op);
        case WOP_BATCH_SEAL:
                return apply_batch_seal(w, op);
        case WOP_BATCH_ABORT:
                return apply_batch_abort(w, op);
        case WOP_BATCH_CANCEL:
                return apply_batch_cancel(w, op);
        case WOP_BATCH_DELETE:
                return apply_batch_delete(w, op);
        case WOP_PURGE:
                return apply_purge(w, op);
        }
        op->result = -EINVAL;
        return 0;
}

/* Runs the batch as one transaction. Returns the number of ops committed,
 * or a negative code when it was rolled back and nothing of it stored. */
static int writer_commit(struct writer *w, struct wop *batch)
{
        int64_t seq = w->seq;
        int rc, r, n = 0;

        rc = step(w->st[ST_BEGIN]);
        if (rc != SQLITE_DONE)
                return store_errno(rc);
        for (struct wop *op = batch; op; op = op->next, n++) {
                r = writer_apply(w, op);
                if (r < 0)
                        goto rollback;
        }
        if (writer_commit_hook && writer_commit_hook() < 0) {
                r = -ENOSPC;
                goto rollback;
        }
        rc = step(w->st[ST_COMMIT]);
        if (rc == SQLITE_DONE)
                return n;
        r = store_errno(rc);

rollback:
        /* A failed write may already have ended the transaction. */
        if (!sqlite3_get_autocommit(w->db))
                step(w->st[ST_ROLLBACK]);
        w->seq = seq;
        return r;
}

/* Calls done() of each op in list order; an op may be gone after it. */
static void complete(struct wop *list)
{
        struct wop *op, *next;

        for (op = list; op; op = next) {
                next = op->next;
                op->done(op);
        }
}

/* After a rollback: forgets what op wrote into its job, jobs or batch,
 * none of which is stored any more. */
static void op_undo(struct wop *op)
{
        switch (op->type) {
        case WOP_SUBMIT:
                op->job->id = 0;
                break;
        case WOP_FINISH:
                op->job->seq = 0;
                break;
        case WOP_BATCH_OPEN:
                op->batch->id = 0;
                if (op->n_jobs > 0) {   /* the whole batch */
                        undo_items(op);
                        undo_seal(op->batch);
                }
                break;
        case WOP_BATCH_ITEMS:
                undo_items(op);
                break;
        case WOP_BATCH_SEAL:
                undo_seal(op->batch);
                break;
        default:
                break;
        }
        op->count = 0;
}

/* The changes that must not be lost because nothing would make them again:
 * a run's steps, and a batch cancel, after which the scheduler no longer
 * holds the batch's pending jobs. */
static bool op_retried(enum wop_type type)
{
        return type == WOP_START || type == WOP_FINISH || type == WOP_REQUEUE ||
               type == WOP_BATCH_CANCEL;
}

/* After a rollback: undoes what the ops wrote, moves the ops that end now
 * (with -EIO) to *ret_failed and returns those kept for a retry, both in
 * queue order; *ret_kept_tail is the last kept op. */
static struct wop *split_failed(struct wop *batch, bool give_up,
                                struct wop **ret_failed, struct wop **ret_kept_tail)
{
        struct wop *kept = NULL, **kept_end = &kept, *failed = NULL, **failed_end = &failed;
        struct wop *op, *next, *kept_tail = NULL;

        for (op = batch; op; op = next) {
                next = op->next;
                op->next = NULL;
                op_undo(op);
                if (give_up || !op_retried(op->type)) {
                        op->result = -EIO;
                        *failed_end = op;
                        failed_end = &op->next;
                } else {
                        *kept_end = op;
                        kept_end = &op->next;
                        kept_tail = op;
                }
        }
        *ret_failed = failed;
        *ret_kept_tail = kept_tail;
        return kept;
}

static double monotonic_seconds(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void deadline_after_ms(struct timespec *ts, long ms)
{
        clock_gettime(CLOCK_MONOTONIC, ts);
        ts->tv_sec += ms / 1000;
        ts->tv_nsec += (ms % 1000) * 1000000;
        if (ts->tv_nsec >= 1000000000) {
                ts->tv_sec++;
                ts->tv_nsec -= 1000000000;
        }
}

/* Under lock, with the queue empty. Returns true when the queue stayed idle
 * for IDLE_CHECKPOINT_MS after a commit (dirty), the time to checkpoint. */
static bool wait_for_work(struct writer *w, bool dirty)
{
        struct timespec deadline;
        int r = 0;

        w->waiting = true;
        if (dirty) {
                deadline_after_ms(&deadline, IDLE_CHECKPOINT_MS);
                r = pthread_cond_timedwait(&w->wake, &w->lock, &deadline);
        } else
                pthread_cond_wait(&w->wake, &w->lock);
        w->waiting = false;
        return r == ETIMEDOUT && !w->head && !w->stopping;
}

/* Under lock: the pause before a retry, cut short by writer_stop(). Pushes
 * do not wake it (waiting is false), they join the retry. */
static void pause_before_retry(struct writer *w)
{
        struct timespec deadline;

        deadline_after_ms(&deadline, RETRY_PAUSE_S * 1000);
        while (!w->stopping && pthread_cond_timedwait(&w->wake, &w->lock, &deadline) != ETIMEDOUT)
                ;
}

/* RESTART, not PASSIVE: the next writes start again at the head of the WAL,
 * so it stops growing under constant readers (NOTES.md). Not checked: a
 * checkpoint that fails or cannot finish leaves the data safe in the WAL,
 * and the next one tries again. */
static void checkpoint(struct writer *w)
{
        sqlite3_busy_timeout(w->db, CHECKPOINT_BUSY_MS);
        sqlite3_wal_checkpoint_v2(w->db, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
        sqlite3_busy_timeout(w->db, STORE_BUSY_TIMEOUT_MS);
}

/* Stamps op as part of transaction w->txn, and skips its START when that
 * is too (queue order puts the START first). */
static void take_op(struct writer *w, struct wop *op)
{
        op->txn = w->txn;
        op->skip = false;
        if (op->start && op->start->txn == w->txn)
                op->start->skip = true;
}

/* Ops that change up to WRITER_CHUNK jobs each. */
static bool op_bulk(enum wop_type type)
{
        return type == WOP_BATCH_CANCEL || type == WOP_BATCH_ABORT || type == WOP_BATCH_DELETE ||
               type == WOP_PURGE;
}

/* Under lock, with the queue not empty: its first TXN_OPS_MAX ops, and no
 * op past a bulk one. Every op of a transaction waits for its commit, so a
 * flood (the ends of a batch of fast jobs), or several deletes of big
 * batches at once, must not make one transaction of seconds. */
static struct wop *take_ops(struct writer *w)
{
        struct wop *first = w->head, *last = first;

        w->txn++;
        for (size_t n = 1;; n++) {
                take_op(w, last);
                /* After a batch cancel too, which ends the batch's pending
                 * jobs: a START before it is written before it, not folded
                 * into an end after it. */
                if (n == TXN_OPS_MAX || !last->next || op_bulk(last->type))
                        break;
                last = last->next;
        }
        w->head = last->next;
        if (!w->head)
                w->tail = NULL;
        last->next = NULL;
        return first;
}

static void *writer_main(void *userdata)
{
        struct writer *w = userdata;
        struct wop *batch, *kept, *kept_tail, *failed;
        bool dirty = false, give_up;
        double began;
        int n;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                if (!w->head) {
                        if (w->stopping)
                                break;
                        if (wait_for_work(w, dirty)) {
                                pthread_mutex_unlock(&w->lock);
                                checkpoint(w);
                                pthread_mutex_lock(&w->lock);
                                dirty = false;
                        }
                        continue;
                }
                batch = take_ops(w);
                give_up = w->stopping;
                pthread_mutex_unlock(&w->lock);

                began = monotonic_seconds();
                n = writer_commit(w, batch);
                if (n >= 0) {
                        double took = monotonic_seconds() - began;

                        pthread_mutex_lock(&w->lock);
                        w->stats.commits++;
                        w->stats.ops += (uint64_t) n;
                        histogram_observe(&w->stats.commit_ops, n);
                        histogram_observe(&w->stats.commit_seconds, took);
                        w->healthy = true;
                        pthread_mutex_unlock(&w->lock);
                        complete(batch);
                        dirty = true;
                        pthread_mutex_lock(&w->lock);
                        continue;
                }

                kept = split_failed(batch, give_up, &failed, &kept_tail);
                pthread_mutex_lock(&w->lock);
                w->stats.failures++;
                w->healthy = false;
                if (kept) {
                        kept_tail->next = w->head;
                        if (!w->head)
                                w->tail = kept_tail;
                        w->head = kept;
                }
                pthread_mutex_unlock(&w->lock);
                complete(failed);
                pthread_mutex_lock(&w->lock);
                if (kept)
                        pause_before_retry(w);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

static void writer_free(struct writer *w)
{
        for (int i = 0; i < ST__COUNT; i++)
                sqlite3_finalize(w->st[i]);
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
}

static int prepare_insert(sqlite3 *db, int rows, sqlite3_stmt **ret)
{
        const char *verb = rows > 1 ? INSERT_MANY : INSERT_ONE;
        size_t size = sizeof(INSERT_MANY) + sizeof(INSERT_HEAD) + sizeof(INSERT_TAIL) +
                      (size_t) rows * INSERT_ROW_MAX;
        size_t len;
        char *sql;
        int rc;

        sql = malloc(size);
        if (!sql)
                return -ENOMEM;
        len = (size_t) snprintf(sql, size, "%s%s", verb, INSERT_HEAD);
        for (int r = 0, b = 0; r < rows; r++, b += INSERT_VALUES)
                len += (size_t) snprintf(sql + len, size - len, INSERT_ROW, r > 0 ? ", " : "",
                                         b + 1, b + 2, b + 3, b + 4, b + 5, b + 6,
                                         b + 7, b + 8, b + 9, b + 10, b + 11, b + 12);
        memcpy(sql + len, INSERT_TAIL, sizeof(INSERT_TAIL));
        rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, ret, NULL);
        free(sql);
        return rc == SQLITE_OK ? 0 : store_errno(rc);
}

int writer_start(struct store *s, struct writer **ret)
{
        pthread_condattr_t attr;
        struct writer *w;
        int rc, r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        r = -pthread_condattr_init(&attr);
        if (r < 0) {
                free(w);
                return r;
        }
        r = -pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
                r = -pthread_cond_init(&w->wake, &attr);
        pthread_condattr_destroy(&attr);
        if (r < 0) {
                free(w);
                return r;
        }
        pthread_mutex_init(&w->lock, NULL);
        w->db = store_db(s);
        w->healthy = true;
        histogram_init_array(&w->stats.commit_ops, commit_ops_bounds);
        histogram_init_array(&w->stats.commit_seconds, commit_seconds_bounds);

        for (int i = 0; i < ST__FIXED; i++) {
                rc = sqlite3_prepare_v3(w->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &w->st[i], NULL);
                if (rc != SQLITE_OK) {
                        r = store_errno(rc);
                        goto fail;
                }
        }
        r = prepare_insert(w->db, 1, &w->st[ST_INSERT]);
        if (r < 0)
                goto fail;
        r = prepare_insert(w->db, ITEMS_ROWS, &w->st[ST_INSERT_MANY]);
        if (r < 0)
                goto fail;
        rc = sqlite3_step(w->st[ST_MAX_SEQ]);
        if (rc == SQLITE_ROW)
                w->seq = sqlite3_column_int64(w->st[ST_MAX_SEQ], 0);
        sqlite3_reset(w->st[ST_MAX_SEQ]);
        if (rc != SQLITE_ROW) {
                r = store_errno(rc);
                goto fail;
        }

        r = -pthread_create(&w->thread, NULL, writer_main, w);
        if (r < 0)
                goto fail;
        *ret = w;
        return 0;

fail:
        writer_free(w);
        return r;
}

void writer_push(struct writer *w, struct wop *op)
{
        op->next = NULL;
        pthread_mutex_lock(&w->lock);
        if (w->tail)
                w->tail->next = op;
        else
                w->head = op;
        w->tail = op;
        if (w->waiting)
                pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
}

void writer_stop(struct writer *w)
{
        if (!w)
                return;
        pthread_mutex_lock(&w->lock);
        w->stopping = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        writer_free(w);
}

bool writer_healthy(struct writer *w)
{
        bool healthy;

        pthread_mutex_lock(&w->lock);
        healthy = w->healthy;
        pthread_mutex_unlock(&w->lock);
        return healthy;
}

void writer_get_stats(struct writer *w, struct writer_stats *ret)
{
        pthread_mutex_lock(&w->lock);
        *ret = w->stats;
        pthread_mutex_unlock(&w->lock);
}
