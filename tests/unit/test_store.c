/* Tests of storage/: schema, store reads and recovery, and the writer,
 * each in a fresh directory. Ops are waited for through their done()
 * callbacks on a condvar; the commit hook stands in for a failing disk. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/job.h"
#include "storage/store.h"
#include "storage/writer.h"

struct fixture {
        char dir[64];
        char path[96];
        struct store *store;
        struct writer *writer;
        struct store_reader *reader;
};

/* Counts done() calls down to zero. */
struct waiter {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int left;
};

static void waiter_init(struct waiter *wt, int n)
{
        pthread_mutex_init(&wt->lock, NULL);
        pthread_cond_init(&wt->cond, NULL);
        wt->left = n;
}

static void waiter_wait(struct waiter *wt)
{
        pthread_mutex_lock(&wt->lock);
        while (wt->left > 0)
                pthread_cond_wait(&wt->cond, &wt->lock);
        pthread_mutex_unlock(&wt->lock);
        pthread_cond_destroy(&wt->cond);
        pthread_mutex_destroy(&wt->lock);
}

static void op_done(struct wop *op)
{
        struct waiter *wt = op->userdata;

        pthread_mutex_lock(&wt->lock);
        wt->left--;
        pthread_cond_broadcast(&wt->cond);
        pthread_mutex_unlock(&wt->lock);
}

static void op_init(struct wop *op, enum wop_type type, struct job *j, struct waiter *wt)
{
        *op = (struct wop) { .type = type, .job = j, .done = op_done, .userdata = wt };
}

/* Pushes one op and waits for it; returns its result. */
static int run_op(struct writer *w, enum wop_type type, struct job *j)
{
        struct waiter wt;
        struct wop op;

        waiter_init(&wt, 1);
        op_init(&op, type, j, &wt);
        writer_push(w, &op);
        waiter_wait(&wt);
        return op.result;
}

static struct job *make_job(const char *task, const char *key)
{
        struct job *j = job_new();

        assert_non_null(j);
        j->task = strdup(task);
        j->args = strdup("{\"n\":1}");
        j->key = key ? strdup(key) : NULL;
        j->kind = JOB_KIND_IO;
        j->timeout = 30;
        j->max_attempts = 1;
        return j;
}

/* A stored job, by id: submitted and committed. */
static struct job *submit(struct fixture *f, const char *task, const char *key)
{
        struct job *j = make_job(task, key);

        assert_int_equal(run_op(f->writer, WOP_SUBMIT, j), 0);
        assert_true(j->id > 0);
        return j;
}

static void finish(struct fixture *f, struct job *j, enum job_state state)
{
        j->state = state;
        j->finished_at = job_now_ms();
        assert_int_equal(run_op(f->writer, WOP_FINISH, j), 0);
}

static void store_up(struct fixture *f)
{
        struct store_options o = { .path = f->path, .sync_full = true };

        assert_int_equal(store_open(&o, &f->store), 0);
        assert_int_equal(writer_start(f->store, &f->writer), 0);
        assert_int_equal(store_reader_open(f->store, &f->reader), 0);
}

static void store_down(struct fixture *f)
{
        store_reader_close(f->reader);
        writer_stop(f->writer);
        store_close(f->store);
        f->reader = NULL;
        f->writer = NULL;
        f->store = NULL;
}

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test_store.XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof(f->path), "%s/jobs.db", f->dir);
        writer_commit_hook = NULL;
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;
        char p[128];

        store_down(f);
        writer_commit_hook = NULL;
        unlink(f->path);
        snprintf(p, sizeof(p), "%s-wal", f->path);
        unlink(p);
        snprintf(p, sizeof(p), "%s-shm", f->path);
        unlink(p);
        assert_int_equal(rmdir(f->dir), 0);
        free(f);
        return 0;
}

static int64_t user_version(const char *path, int set)
{
        sqlite3 *db;
        sqlite3_stmt *st;
        char sql[64];
        int64_t v;

        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        if (set >= 0) {
                snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", set);
                assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        }
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
}

static void test_open_migrate_reopen(void **state)
{
        struct fixture *f = *state;
        struct store_options o = { .path = f->path };
        struct store *s = NULL;
        struct job *j, *got;

        store_up(f);
        j = submit(f, "noop", NULL);
        store_down(f);
        assert_int_equal(user_version(f->path, -1), 1);

        /* Reopening keeps the data and does not migrate again. */
        store_up(f);
        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_string_equal(got->task, "noop");
        job_free(got);
        store_down(f);
        assert_int_equal(user_version(f->path, -1), 1);

        /* A file from a newer futured is refused, not misread. */
        user_version(f->path, 2);
        assert_int_equal(store_open(&o, &s), -EPROTO);
        assert_null(s);
        user_version(f->path, 1);
        job_free(j);
}

static void test_roundtrip(void **state)
{
        struct fixture *f = *state;
        struct job *j = make_job("sleep", "key-1"), *got;

        store_up(f);
        j->kind = JOB_KIND_CPU;
        j->tag = strdup("{\"custom_id\":\"x\"}");
        j->timeout = 2.5;
        j->priority = -3;
        j->max_attempts = 4;
        j->batch = 7;
        j->index = 3;
        j->ready_at = 1234;
        assert_int_equal(run_op(f->writer, WOP_SUBMIT, j), 0);
        assert_true(j->id > 0);
        assert_true(j->created_at > 0);

        j->attempts = 1;
        j->started_at = j->created_at + 5;
        assert_int_equal(run_op(f->writer, WOP_START, j), 0);
        j->result = strdup("{\"ok\":true}");
        j->error = strdup("{\"type\":\"task_error\",\"message\":\"m\"}");
        finish(f, j, JOB_SUCCEEDED);
        assert_int_equal(j->seq, 1);

        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_int_equal(got->id, j->id);
        assert_string_equal(got->task, "sleep");
        assert_int_equal(got->kind, JOB_KIND_CPU);
        assert_int_equal(got->state, JOB_SUCCEEDED);
        assert_string_equal(got->args, j->args);
        assert_string_equal(got->tag, j->tag);
        assert_string_equal(got->key, "key-1");
        assert_string_equal(got->result, j->result);
        assert_string_equal(got->error, j->error);
        assert_true(got->timeout == 2.5);
        assert_int_equal(got->priority, -3);
        assert_int_equal(got->attempts, 1);
        assert_int_equal(got->max_attempts, 4);
        assert_int_equal(got->batch, 7);
        assert_int_equal(got->index, 3);
        assert_int_equal(got->seq, 1);
        assert_int_equal(got->created_at, j->created_at);
        assert_int_equal(got->started_at, j->started_at);
        assert_int_equal(got->finished_at, j->finished_at);
        assert_int_equal(got->ready_at, 1234);
        job_free(got);

        /* Unset fields come back unset. */
        job_free(j);
        j = submit(f, "noop", NULL);
        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_int_equal(got->state, JOB_PENDING);
        assert_null(got->tag);
        assert_null(got->key);
        assert_null(got->result);
        assert_null(got->error);
        assert_int_equal(got->batch, 0);
        assert_int_equal(got->index, -1);
        assert_int_equal(got->seq, 0);
        assert_int_equal(got->started_at, 0);
        assert_int_equal(got->finished_at, 0);
        job_free(got);
        job_free(j);

        assert_int_equal(store_get_job(f->reader, 999, &got), -ENOENT);
}

/* Holds the writer inside its commit until opened. */
static struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool entered, open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false };

static int gate_hook(void)
{
        pthread_mutex_lock(&gate.lock);
        gate.entered = true;
        pthread_cond_broadcast(&gate.cond);
        while (!gate.open)
                pthread_cond_wait(&gate.cond, &gate.lock);
        pthread_mutex_unlock(&gate.lock);
        return 0;
}

static void test_key_conflict(void **state)
{
        struct fixture *f = *state;
        struct job *a, *b, *x, *c, *d;
        struct writer_stats before, after;
        struct waiter wt;
        struct wop ops[3];

        store_up(f);
        a = submit(f, "noop", "k");
        b = make_job("noop", "k");
        assert_int_equal(run_op(f->writer, WOP_SUBMIT, b), -EEXIST);
        assert_int_equal(b->id, a->id);

        /* Two submissions of one key in one transaction: hold the writer
         * in the commit of x while c and d queue behind it. */
        x = make_job("noop", NULL);
        c = make_job("noop", "same");
        d = make_job("noop", "same");
        writer_get_stats(f->writer, &before);
        gate.entered = gate.open = false;
        writer_commit_hook = gate_hook;
        waiter_init(&wt, 3);
        op_init(&ops[0], WOP_SUBMIT, x, &wt);
        writer_push(f->writer, &ops[0]);
        pthread_mutex_lock(&gate.lock);
        while (!gate.entered)
                pthread_cond_wait(&gate.cond, &gate.lock);
        pthread_mutex_unlock(&gate.lock);
        op_init(&ops[1], WOP_SUBMIT, c, &wt);
        op_init(&ops[2], WOP_SUBMIT, d, &wt);
        writer_push(f->writer, &ops[1]);
        writer_push(f->writer, &ops[2]);
        pthread_mutex_lock(&gate.lock);
        gate.open = true;
        pthread_cond_broadcast(&gate.cond);
        pthread_mutex_unlock(&gate.lock);
        waiter_wait(&wt);
        writer_commit_hook = NULL;
        writer_get_stats(f->writer, &after);

        assert_int_equal(after.commits - before.commits, 2);
        assert_int_equal(ops[0].result, 0);
        assert_int_equal(ops[1].result, 0);
        assert_int_equal(ops[2].result, -EEXIST);
        assert_int_equal(d->id, c->id);
        assert_true(c->id > x->id);

        job_free(a);
        job_free(b);
        job_free(x);
        job_free(c);
        job_free(d);
}

static void test_lifecycle(void **state)
{
        struct fixture *f = *state;
        struct job *a, *b, *bad, *missing, *got;

        store_up(f);
        a = submit(f, "noop", NULL);
        b = submit(f, "noop", NULL);

        a->attempts = 1;
        a->started_at = job_now_ms();
        assert_int_equal(run_op(f->writer, WOP_START, a), 0);
        assert_int_equal(store_get_job(f->reader, a->id, &got), 0);
        assert_int_equal(got->state, JOB_RUNNING);
        assert_int_equal(got->attempts, 1);
        job_free(got);

        /* Back to pending with its backoff, then run and finish. */
        a->ready_at = job_now_ms() + 1000;
        assert_int_equal(run_op(f->writer, WOP_REQUEUE, a), 0);
        assert_int_equal(store_get_job(f->reader, a->id, &got), 0);
        assert_int_equal(got->state, JOB_PENDING);
        assert_int_equal(got->ready_at, a->ready_at);
        job_free(got);

        assert_int_equal(run_op(f->writer, WOP_DELETE, a), -EBUSY);
        finish(f, b, JOB_CANCELLED);
        finish(f, a, JOB_FAILED);
        assert_int_equal(b->seq, 1);
        assert_int_equal(a->seq, 2);

        /* A finished job never changes again. */
        assert_int_equal(run_op(f->writer, WOP_FINISH, a), -ENOENT);
        assert_int_equal(a->seq, 2);
        assert_int_equal(run_op(f->writer, WOP_START, a), -ENOENT);
        assert_int_equal(run_op(f->writer, WOP_REQUEUE, a), -ENOENT);

        assert_int_equal(run_op(f->writer, WOP_DELETE, a), 0);
        assert_int_equal(store_get_job(f->reader, a->id, &got), -ENOENT);
        assert_int_equal(run_op(f->writer, WOP_DELETE, a), -ENOENT);

        missing = job_new();
        missing->id = 4242;
        assert_int_equal(run_op(f->writer, WOP_START, missing), -ENOENT);
        assert_int_equal(run_op(f->writer, WOP_DELETE, missing), -ENOENT);

        /* A job the schema refuses fails alone. */
        bad = make_job("noop", NULL);
        free(bad->args);
        bad->args = NULL;
        assert_int_equal(run_op(f->writer, WOP_SUBMIT, bad), -EINVAL);
        assert_int_equal(bad->id, 0);

        /* Ids are never reused, even after the newest was deleted. */
        assert_int_equal(run_op(f->writer, WOP_DELETE, b), 0);
        job_free(b);
        b = submit(f, "noop", NULL);
        assert_true(b->id > a->id + 1);
        job_free(a);
        job_free(b);
        job_free(bad);
        job_free(missing);
}

struct collected {
        int64_t ids[16];
        int n;
};

static int collect(struct job *j, void *ud)
{
        struct collected *c = ud;

        assert_true(c->n < 16);
        c->ids[c->n++] = j->id;
        job_free(j);
        return 0;
}

static int stop_after_one(struct job *j, void *ud)
{
        collect(j, ud);
        return -ECANCELED;
}

static struct collected list(struct fixture *f, int state_filter, const char *task,
                             int64_t batch, int64_t before_id, int limit)
{
        struct store_filter flt = {
                .state = state_filter, .task = task, .batch = batch,
                .before_id = before_id, .limit = limit,
        };
        struct collected c = { .n = 0 };

        assert_int_equal(store_list_jobs(f->reader, &flt, collect, &c), 0);
        return c;
}

static void test_list_count(void **state)
{
        struct fixture *f = *state;
        struct job *j[6];
        struct collected c;
        struct store_filter flt = { .state = -1, .limit = 10 };
        int64_t counts[JOB_STATE__COUNT];

        store_up(f);
        for (int i = 0; i < 6; i++) {
                j[i] = make_job(i % 2 ? "odd" : "even", NULL);
                j[i]->batch = i < 3 ? 0 : 9;
                j[i]->index = i < 3 ? -1 : i - 3;
                assert_int_equal(run_op(f->writer, WOP_SUBMIT, j[i]), 0);
        }
        finish(f, j[1], JOB_SUCCEEDED);
        finish(f, j[4], JOB_FAILED);

        c = list(f, -1, NULL, 0, 0, 10);
        assert_int_equal(c.n, 6);
        for (int i = 0; i < 6; i++)
                assert_int_equal(c.ids[i], j[5 - i]->id);

        c = list(f, JOB_PENDING, NULL, 0, 0, 10);
        assert_int_equal(c.n, 4);
        assert_int_equal(c.ids[0], j[5]->id);
        assert_int_equal(c.ids[3], j[0]->id);

        c = list(f, -1, "odd", 0, 0, 10);
        assert_int_equal(c.n, 3);
        assert_int_equal(c.ids[0], j[5]->id);
        assert_int_equal(c.ids[2], j[1]->id);

        c = list(f, -1, NULL, 9, 0, 10);
        assert_int_equal(c.n, 3);
        assert_int_equal(c.ids[2], j[3]->id);

        c = list(f, JOB_FAILED, "even", 9, 0, 10);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.ids[0], j[4]->id);

        /* Pages of two, each starting below the last id seen. */
        c = list(f, -1, NULL, 0, 0, 2);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.ids[1], j[4]->id);
        c = list(f, -1, NULL, 0, c.ids[1], 2);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.ids[0], j[3]->id);
        assert_int_equal(c.ids[1], j[2]->id);
        c = list(f, -1, NULL, 0, j[0]->id, 2);
        assert_int_equal(c.n, 0);

        c.n = 0;
        assert_int_equal(store_list_jobs(f->reader, &flt, stop_after_one, &c), -ECANCELED);
        assert_int_equal(c.n, 1);
        flt.limit = 0;
        assert_int_equal(store_list_jobs(f->reader, &flt, collect, &c), -EINVAL);

        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_PENDING], 4);
        assert_int_equal(counts[JOB_RUNNING], 0);
        assert_int_equal(counts[JOB_SUCCEEDED], 1);
        assert_int_equal(counts[JOB_FAILED], 1);
        assert_int_equal(counts[JOB_CANCELLED], 0);
        for (int i = 0; i < 6; i++)
                job_free(j[i]);
}

static void test_recover(void **state)
{
        struct fixture *f = *state;
        struct store_options o = { .path = f->path, .sync_full = false };
        struct job *pending, *retry, *spent, *done, *got;
        struct collected c = { .n = 0 };

        store_up(f);
        pending = submit(f, "noop", NULL);
        retry = submit(f, "noop", NULL);
        spent = submit(f, "noop", NULL);
        done = submit(f, "noop", NULL);
        retry->max_attempts = 3;
        retry->attempts = 1;
        spent->attempts = 1;
        done->attempts = 1;
        assert_int_equal(run_op(f->writer, WOP_START, retry), 0);
        assert_int_equal(run_op(f->writer, WOP_START, spent), 0);
        assert_int_equal(run_op(f->writer, WOP_START, done), 0);
        finish(f, done, JOB_SUCCEEDED);
        store_down(f);

        /* max_attempts is stored at submission: give retry its attempts. */
        {
                sqlite3 *db;
                char sql[96];

                assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
                snprintf(sql, sizeof(sql), "UPDATE jobs SET max_attempts = 3 WHERE id = %lld",
                         (long long) retry->id);
                assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
                sqlite3_close(db);
        }

        assert_int_equal(store_open(&o, &f->store), 0);
        assert_int_equal(store_recover(f->store, collect, &c), 0);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.ids[0], pending->id);
        assert_int_equal(c.ids[1], retry->id);
        assert_int_equal(writer_start(f->store, &f->writer), 0);
        assert_int_equal(store_reader_open(f->store, &f->reader), 0);

        assert_int_equal(store_get_job(f->reader, retry->id, &got), 0);
        assert_int_equal(got->state, JOB_PENDING);
        assert_int_equal(got->attempts, 1);
        job_free(got);

        assert_int_equal(store_get_job(f->reader, spent->id, &got), 0);
        assert_int_equal(got->state, JOB_FAILED);
        assert_non_null(strstr(got->error, "\"type\":\"interrupted\""));
        assert_int_equal(got->seq, 2);
        assert_true(got->finished_at > 0);
        job_free(got);

        /* The writer continues the completion order after recovery's. */
        finish(f, pending, JOB_SUCCEEDED);
        assert_int_equal(pending->seq, 3);

        job_free(pending);
        job_free(retry);
        job_free(spent);
        job_free(done);
}

/* A disk that refuses every commit while failing is set. */
static atomic_bool failing;

static int fail_hook(void)
{
        return failing ? -ENOSPC : 0;
}

static void test_commit_failure(void **state)
{
        struct fixture *f = *state;
        struct job *j, *doomed, *got;
        struct waiter wt, wt_finish;
        struct wop submit_op, finish_op;
        struct writer_stats stats;
        int64_t counts[JOB_STATE__COUNT];

        store_up(f);
        j = submit(f, "noop", NULL);
        j->attempts = 1;
        assert_int_equal(run_op(f->writer, WOP_START, j), 0);
        assert_true(writer_healthy(f->writer));

        failing = true;
        writer_commit_hook = fail_hook;
        j->state = JOB_SUCCEEDED;
        j->result = strdup("42");
        j->finished_at = job_now_ms();
        waiter_init(&wt_finish, 1);
        op_init(&finish_op, WOP_FINISH, j, &wt_finish);
        writer_push(f->writer, &finish_op);

        doomed = make_job("noop", "doomed");
        waiter_init(&wt, 1);
        op_init(&submit_op, WOP_SUBMIT, doomed, &wt);
        writer_push(f->writer, &submit_op);
        waiter_wait(&wt);
        assert_int_equal(submit_op.result, -EIO);
        assert_int_equal(doomed->id, 0);
        assert_false(writer_healthy(f->writer));

        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_PENDING], 0);
        assert_int_equal(counts[JOB_RUNNING], 1);
        assert_int_equal(counts[JOB_SUCCEEDED], 0);

        /* The disk recovers: the kept FINISH lands after the pause. */
        failing = false;
        waiter_wait(&wt_finish);
        assert_int_equal(finish_op.result, 0);
        assert_int_equal(j->seq, 1);
        assert_true(writer_healthy(f->writer));
        writer_get_stats(f->writer, &stats);
        assert_true(stats.failures >= 1);

        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_int_equal(got->state, JOB_SUCCEEDED);
        assert_string_equal(got->result, "42");
        assert_int_equal(got->seq, 1);
        job_free(got);

        /* The key of the failed submission is still free. */
        assert_int_equal(run_op(f->writer, WOP_SUBMIT, doomed), 0);
        job_free(doomed);
        job_free(j);
}

static void test_stop_gives_up(void **state)
{
        struct fixture *f = *state;
        struct job *j;
        struct waiter wt;
        struct wop op;

        store_up(f);
        j = submit(f, "noop", NULL);

        failing = true;
        writer_commit_hook = fail_hook;
        j->state = JOB_FAILED;
        waiter_init(&wt, 1);
        op_init(&op, WOP_FINISH, j, &wt);
        writer_push(f->writer, &op);
        /* Stopping on a dead disk ends the kept op rather than hang. */
        writer_stop(f->writer);
        f->writer = NULL;
        waiter_wait(&wt);
        assert_int_equal(op.result, -EIO);
        assert_int_equal(j->seq, 0);
        failing = false;
        job_free(j);
}

#define PUSHERS 4
#define PER_PUSHER 500

struct pusher {
        struct writer *writer;
        struct waiter *waiter;
        struct job *jobs[PER_PUSHER];
        struct wop ops[PER_PUSHER];
};

static void *push_all(void *userdata)
{
        struct pusher *p = userdata;

        for (int i = 0; i < PER_PUSHER; i++) {
                op_init(&p->ops[i], WOP_SUBMIT, p->jobs[i], p->waiter);
                writer_push(p->writer, &p->ops[i]);
        }
        return NULL;
}

static void test_many_threads(void **state)
{
        struct fixture *f = *state;
        static struct pusher pushers[PUSHERS];
        pthread_t threads[PUSHERS];
        struct writer_stats stats;
        struct waiter wt;
        int64_t counts[JOB_STATE__COUNT];

        store_up(f);
        waiter_init(&wt, PUSHERS * PER_PUSHER);
        for (int t = 0; t < PUSHERS; t++) {
                pushers[t].writer = f->writer;
                pushers[t].waiter = &wt;
                for (int i = 0; i < PER_PUSHER; i++)
                        pushers[t].jobs[i] = make_job("noop", NULL);
        }
        for (int t = 0; t < PUSHERS; t++)
                assert_int_equal(pthread_create(&threads[t], NULL, push_all, &pushers[t]), 0);
        for (int t = 0; t < PUSHERS; t++)
                pthread_join(threads[t], NULL);
        waiter_wait(&wt);

        for (int t = 0; t < PUSHERS; t++)
                for (int i = 0; i < PER_PUSHER; i++) {
                        assert_int_equal(pushers[t].ops[i].result, 0);
                        job_free(pushers[t].jobs[i]);
                }
        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_PENDING], PUSHERS * PER_PUSHER);
        writer_get_stats(f->writer, &stats);
        assert_int_equal(stats.ops, PUSHERS * PER_PUSHER);
        assert_true(stats.commits < stats.ops);
        assert_int_equal(stats.failures, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_open_migrate_reopen, setup, teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_key_conflict, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_count, setup, teardown),
                cmocka_unit_test_setup_teardown(test_recover, setup, teardown),
                cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stop_gives_up, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_threads, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
