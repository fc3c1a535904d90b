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
 * Anything else is a store failure: the transaction is rolled back, SUBMIT
 * and DELETE end with -EIO, the other ops go back to the head of the queue
 * and are retried after RETRY_PAUSE_S, unless stopping: then they end with
 * -EIO too, so that writer_stop() cannot hang on a dead disk.
 *
 * seq is the last completion-order number handed out; only the writer
 * thread touches it, and a rolled-back transaction gives its numbers back.
 * Stats: commits and failures count transactions, ops counts the ops of
 * committed ones. */
#include "storage/writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "storage/store-internal.h"

#define RETRY_PAUSE_S 1
/* Checkpoint once the queue has been this long idle after a commit: not
 * after every commit, which would add a sync to each under light load. */
#define IDLE_CHECKPOINT_MS 200

int (*writer_commit_hook)(void);

enum stmt {
        ST_BEGIN,
        ST_COMMIT,
        ST_ROLLBACK,
        ST_INSERT,
        ST_KEY_ID,
        ST_START,
        ST_FINISH,
        ST_REQUEUE,
        ST_DELETE,
        ST_EXISTS,
        ST_MAX_SEQ,
        ST__COUNT,
};

static const char *const stmt_sql[ST__COUNT] = {
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
        /* DO NOTHING only on a uniqueness conflict, and key is the only
         * unique column an insert can collide on. */
        [ST_INSERT] = "INSERT INTO jobs (task, kind, state, args, tag, key, timeout, "
                      "priority, attempts, max_attempts, batch, batch_index, created_at, ready_at) "
                      "VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?12) "
                      "ON CONFLICT DO NOTHING",
        [ST_KEY_ID] = "SELECT id FROM jobs WHERE key = ?1",
        [ST_START] = "UPDATE jobs SET state = 'running', attempts = ?2, started_at = ?3 "
                     "WHERE id = ?1 AND state IN ('pending', 'running')",
        [ST_FINISH] = "UPDATE jobs SET state = ?2, result = ?3, error = ?4, finished_at = ?5, seq = ?6 "
                      "WHERE id = ?1 AND state IN ('pending', 'running')",
        [ST_REQUEUE] = "UPDATE jobs SET state = 'pending', attempts = ?2, ready_at = ?3 "
                       "WHERE id = ?1 AND state IN ('pending', 'running')",
        [ST_DELETE] = "DELETE FROM jobs WHERE id = ?1 AND state NOT IN ('pending', 'running')",
        [ST_EXISTS] = "SELECT 1 FROM jobs WHERE id = ?1",
        [ST_MAX_SEQ] = "SELECT COALESCE(MAX(seq), 0) FROM jobs WHERE seq IS NOT NULL",
};

struct writer {
        sqlite3 *db;                    /* the store's; this thread's alone */
        sqlite3_stmt *st[ST__COUNT];
        int64_t seq;                    /* writer thread only */
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

static int apply_submit(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_INSERT];
        struct job *j = op->job;
        int rc = SQLITE_OK;

        if (j->created_at == 0)
                j->created_at = job_now_ms();
        store_bind_text(st, 1, j->task, &rc);
        store_bind_text(st, 2, job_kind_name(j->kind), &rc);
        store_bind_text(st, 3, j->args, &rc);
        store_bind_text(st, 4, j->tag, &rc);
        store_bind_text(st, 5, j->key, &rc);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_double(st, 6, j->timeout);
        store_bind_int64(st, 7, j->priority, &rc);
        store_bind_int64(st, 8, j->max_attempts, &rc);
        store_bind_opt_int64(st, 9, j->batch, 0, &rc);
        store_bind_opt_int64(st, 10, j->index, -1, &rc);
        store_bind_int64(st, 11, j->created_at, &rc);
        store_bind_int64(st, 12, j->ready_at, &rc);
        if (rc == SQLITE_OK)
                rc = step(st);
        if (rc != SQLITE_DONE)
                return op_fail(op, rc);
        if (sqlite3_changes(w->db) > 0) {
                j->id = sqlite3_last_insert_rowid(w->db);
                op->result = 0;
                return 0;
        }

        /* The key is taken, maybe by an insert earlier in this very
         * transaction: this connection sees it either way. */
        st = w->st[ST_KEY_ID];
        rc = SQLITE_OK;
        store_bind_text(st, 1, j->key, &rc);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
                j->id = sqlite3_column_int64(st, 0);
                op->result = -EEXIST;
        }
        sqlite3_reset(st);
        return rc == SQLITE_ROW ? 0 : op_fail(op, rc);
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

        store_bind_int64(st, 2, op->job->attempts, &rc);
        store_bind_opt_int64(st, 3, op->job->started_at, 0, &rc);
        return apply_update(w, op, st, rc);
}

static int apply_finish(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_FINISH];
        struct job *j = op->job;
        int rc = SQLITE_OK, r;

        store_bind_text(st, 2, job_state_name(j->state), &rc);
        store_bind_text(st, 3, j->result, &rc);
        store_bind_text(st, 4, j->error, &rc);
        store_bind_opt_int64(st, 5, j->finished_at, 0, &rc);
        store_bind_int64(st, 6, w->seq + 1, &rc);
        r = apply_update(w, op, st, rc);
        if (r == 0 && op->result == 0)
                j->seq = ++w->seq;
        return r;
}

static int apply_requeue(struct writer *w, struct wop *op)
{
        sqlite3_stmt *st = w->st[ST_REQUEUE];
        int rc = SQLITE_OK;

        store_bind_int64(st, 2, op->job->attempts, &rc);
        store_bind_int64(st, 3, op->job->ready_at, &rc);
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

static int writer_apply(struct writer *w, struct wop *op)
{
        switch (op->type) {
        case WOP_SUBMIT:
                return apply_submit(w, op);
        case WOP_START:
                return apply_start(w, op);
        case WOP_FINISH:
                return apply_finish(w, op);
        case WOP_REQUEUE:
                return apply_requeue(w, op);
        case WOP_DELETE:
                return apply_delete(w, op);
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

/* After a rollback: undoes what the ops wrote into their jobs, moves the
 * ops that end now (with -EIO) to *ret_failed and returns those kept for a
 * retry, both in queue order; *ret_kept_tail is the last kept op. */
static struct wop *split_failed(struct wop *batch, bool give_up,
                                struct wop **ret_failed, struct wop **ret_kept_tail)
{
        struct wop *kept = NULL, **kept_end = &kept, *failed = NULL, **failed_end = &failed;
        struct wop *op, *next, *kept_tail = NULL;

        for (op = batch; op; op = next) {
                next = op->next;
                op->next = NULL;
                if (op->type == WOP_SUBMIT)
                        op->job->id = 0;
                else if (op->type == WOP_FINISH)
                        op->job->seq = 0;
                if (give_up || op->type == WOP_SUBMIT || op->type == WOP_DELETE) {
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

static void *writer_main(void *userdata)
{
        struct writer *w = userdata;
        struct wop *batch, *kept, *kept_tail, *failed;
        bool dirty = false, give_up;
        int n;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                if (!w->head) {
                        if (w->stopping)
                                break;
                        if (wait_for_work(w, dirty)) {
                                pthread_mutex_unlock(&w->lock);
                                /* Not checked: a checkpoint that fails or
                                 * cannot finish leaves the data safe in the
                                 * WAL, and the next one tries again. */
                                sqlite3_wal_checkpoint_v2(w->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                                          NULL, NULL);
                                pthread_mutex_lock(&w->lock);
                                dirty = false;
                        }
                        continue;
                }
                batch = w->head;
                w->head = w->tail = NULL;
                give_up = w->stopping;
                pthread_mutex_unlock(&w->lock);

                n = writer_commit(w, batch);
                if (n >= 0) {
                        pthread_mutex_lock(&w->lock);
                        w->stats.commits++;
                        w->stats.ops += (uint64_t) n;
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

        for (int i = 0; i < ST__COUNT; i++) {
                rc = sqlite3_prepare_v3(w->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &w->st[i], NULL);
                if (rc != SQLITE_OK) {
                        r = store_errno(rc);
                        goto fail;
                }
        }
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
