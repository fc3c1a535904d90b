/* Tests of storage/: schema, store reads and recovery, the writer, and
 * batches, each in a fresh directory. Ops are waited for through their
 * done() callbacks on a condvar; the commit hook stands in for a failing
 * disk. test_batch_throughput measures BATCH_ITEMS: STORE_BENCH_ITEMS
 * items (default 100000) in chunks of 1000. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "storage/batch.h"
#include "storage/checkpoint.h"
#include "storage/job.h"
#include "storage/store.h"
#include "storage/store-internal.h"
#include "storage/writer.h"
#include "tests/unit/tempdb.h"

struct fixture {
        struct tempdb tmp;
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
        *op = (struct wop) { .type = type, .job = j, .attempts = j->attempts, .done = op_done,
                             .userdata = wt };
}

/* Pushes op and waits for it; returns its result. */
static int run_wop(struct writer *w, struct wop *op)
{
        struct waiter wt;

        waiter_init(&wt, 1);
        op->done = op_done;
        op->userdata = &wt;
        writer_push(w, op);
        waiter_wait(&wt);
        return op->result;
}

static int run_op(struct writer *w, enum wop_type type, struct job *j)
{
        struct wop op = { .type = type, .job = j, .attempts = j->attempts };

        return run_wop(w, &op);
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

/* The stored row of j's run, checked for its state, attempts and start;
 * the caller's. */
static struct job *stored_run(struct fixture *f, const struct job *j, enum job_state state,
                              int attempts)
{
        struct job *got = NULL;

        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_int_equal(got->state, state);
        assert_int_equal(got->attempts, attempts);
        assert_int_equal(got->started_at, j->started_at);
        return got;
}

static void store_up(struct fixture *f)
{
        struct store_options o = { .path = f->tmp.path, .sync_full = true };

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
        assert_int_equal(tempdb_make(&f->tmp, "test_store"), 0);
        writer_commit_hook = NULL;
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        store_down(f);
        writer_commit_hook = NULL;
        assert_int_equal(tempdb_remove(&f->tmp), 0);
        free(f);
        return 0;
}

/* A single-row, single-column query on the file, outside the store. */
static int64_t query_int64(const char *path, const char *sql)
{
        sqlite3 *db;
        sqlite3_stmt *st;
        int64_t v;

        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
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
        struct store_options o = { .path = f->tmp.path };
        struct store *s = NULL;
        struct job *j, *got;

        store_up(f);
        j = submit(f, "noop", NULL);
        store_down(f);
        assert_int_equal(user_version(f->tmp.path, -1), 3);
        assert_int_equal(query_int64(f->tmp.path, "PRAGMA application_id"), 0x46555452);

        /* Reopening keeps the data and does not migrate again. */
        store_up(f);
        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        assert_string_equal(got->task, "noop");
        job_free(got);
        store_down(f);
        assert_int_equal(user_version(f->tmp.path, -1), 3);

        /* One futured per file: an open store keeps others out. */
        store_up(f);
        assert_int_equal(store_open(&o, &s), -EBUSY);
        assert_null(s);
        store_down(f);

        /* A file from a newer futured is refused, not misread. */
        user_version(f->tmp.path, 4);
        assert_int_equal(store_open(&o, &s), -EPROTO);
        assert_null(s);
        user_version(f->tmp.path, 3);
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

/* The gate for the first commit, then one failed commit: the transaction
 * after the held one is rolled back and retried. */
static atomic_int hook_calls;

static int gate_then_fail_once(void)
{
        int n = ++hook_calls;

        if (n == 1)
                return gate_hook();
        return n == 2 ? -ENOSPC : 0;
}

/* Runs ops[0..n) queued together, in order, so that the writer takes them
 * as one transaction (cut after a bulk op): it is held in the commit of a
 * submission of its own (by hook, which must call gate_hook() first; NULL:
 * gate_hook) while they queue behind it. */
static void run_together_hooked(struct fixture *f, struct wop *ops, size_t n, int (*hook)(void))
{
        struct job *x = make_job("noop", NULL);
        struct waiter wt;
        struct wop hold;

        gate.entered = gate.open = false;
        hook_calls = 0;
        writer_commit_hook = hook ? hook : gate_hook;
        waiter_init(&wt, n + 1);
        op_init(&hold, WOP_SUBMIT, x, &wt);
        writer_push(f->writer, &hold);
        pthread_mutex_lock(&gate.lock);
        while (!gate.entered)
                pthread_cond_wait(&gate.cond, &gate.lock);
        pthread_mutex_unlock(&gate.lock);
        for (size_t i = 0; i < n; i++) {
                ops[i].done = op_done;
                ops[i].userdata = &wt;
                writer_push(f->writer, &ops[i]);
        }
        pthread_mutex_lock(&gate.lock);
        gate.open = true;
        pthread_cond_broadcast(&gate.cond);
        pthread_mutex_unlock(&gate.lock);
        waiter_wait(&wt);
        writer_commit_hook = NULL;
        assert_int_equal(hold.result, 0);
        job_free(x);
}

static void run_together(struct fixture *f, struct wop *ops, size_t n)
{
        run_together_hooked(f, ops, n, NULL);
}

static void test_key_conflict(void **state)
{
        struct fixture *f = *state;
        struct job *a, *b, *c, *d, *e;
        struct writer_stats before, after;
        struct wop ops[2];

        store_up(f);
        a = submit(f, "noop", "k");
        b = make_job("noop", "k");
        assert_int_equal(run_op(f->writer, WOP_SUBMIT, b), -EEXIST);
        assert_int_equal(b->id, a->id);
        /* A taken key uses up no id: a client repeating a keyed
         * submission leaves no gap. */
        e = submit(f, "noop", NULL);
        assert_int_equal(e->id, a->id + 1);
        job_free(e);

        /* Two submissions of one key in one transaction. */
        c = make_job("noop", "same");
        d = make_job("noop", "same");
        writer_get_stats(f->writer, &before);
        op_init(&ops[0], WOP_SUBMIT, c, NULL);
        op_init(&ops[1], WOP_SUBMIT, d, NULL);
        run_together(f, ops, 2);
        writer_get_stats(f->writer, &after);

        assert_int_equal(after.commits - before.commits, 2);
        assert_int_equal(ops[0].result, 0);
        assert_int_equal(ops[1].result, -EEXIST);
        assert_int_equal(d->id, c->id);
        e = submit(f, "noop", NULL);
        assert_int_equal(e->id, c->id + 1);

        job_free(a);
        job_free(b);
        job_free(c);
        job_free(d);
        job_free(e);
}

/* Two stored jobs in their first run: *ret_j and *ret_k (the caller's),
 * their STARTs made in starts[0] and [1], not pushed. */
static void start_two(struct fixture *f, struct job **ret_j, struct job **ret_k,
                      struct wop starts[2])
{
        struct job *j = submit(f, "noop", NULL), *k = submit(f, "noop", NULL);

        j->attempts = k->attempts = 1;
        j->started_at = k->started_at = job_now_ms() - 5;
        op_init(&starts[0], WOP_START, j, NULL);
        op_init(&starts[1], WOP_START, k, NULL);
        *ret_j = j;
        *ret_k = k;
}

/* The end (FINISH or REQUEUE) of j's run whose START is start. */
static void end_init(struct wop *op, enum wop_type type, struct job *j, struct wop *start)
{
        op_init(op, type, j, NULL);
        op->start = start;
}

/* A START and the end of its run in one transaction: the end writes what
 * the START would have, so the START is skipped; when the end fails alone,
 * the START is written after all. */
static void test_start_folded(void **state)
{
        struct fixture *f = *state;
        struct job *j, *k, *got;
        struct wop ops[4];

        store_up(f);
        start_two(f, &j, &k, ops);
        j->state = JOB_SUCCEEDED;
        j->result = strdup("1");
        j->finished_at = job_now_ms();
        end_init(&ops[2], WOP_FINISH, j, &ops[0]);
        /* pending is no end: the schema refuses it, this op alone */
        k->state = JOB_PENDING;
        k->finished_at = job_now_ms();
        end_init(&ops[3], WOP_FINISH, k, &ops[1]);
        run_together(f, ops, 4);

        assert_int_equal(ops[0].result, 0);
        assert_true(ops[0].skip);
        assert_int_equal(ops[2].result, 0);
        got = stored_run(f, j, JOB_SUCCEEDED, 1);
        assert_int_equal(got->finished_at, j->finished_at);
        job_free(got);

        assert_int_equal(ops[1].result, 0);
        assert_false(ops[1].skip);
        assert_int_equal(ops[3].result, -EINVAL);
        got = stored_run(f, k, JOB_RUNNING, 1);
        job_free(got);

        /* Apart, each writes its own. */
        k->attempts = 2;
        k->started_at = job_now_ms();
        op_init(&ops[1], WOP_START, k, NULL);
        assert_int_equal(run_wop(f->writer, &ops[1]), 0);
        k->state = JOB_FAILED;
        k->error = strdup("{\"type\":\"x\",\"message\":\"y\"}");
        end_init(&ops[3], WOP_FINISH, k, &ops[1]);
        assert_int_equal(run_wop(f->writer, &ops[3]), 0);
        assert_false(ops[1].skip);
        assert_int_equal(store_get_job(f->reader, k->id, &got), 0);
        assert_int_equal(got->state, JOB_FAILED);
        assert_int_equal(got->attempts, 2);
        job_free(got);

        /* An end that knows no start (a tombstone's) keeps the stored one. */
        j->id = k->id = 0;
        job_free(k);
        k = submit(f, "noop", NULL);
        k->attempts = 1;
        k->started_at = job_now_ms();
        assert_int_equal(run_op(f->writer, WOP_START, k), 0);
        j->id = k->id;
        j->attempts = 0;
        j->started_at = 0;
        j->state = JOB_CANCELLED;
        j->error = strdup("{\"type\":\"cancelled\",\"message\":\"x\"}");
        free(j->result);
        j->result = NULL;
        j->finished_at = 0;
        assert_int_equal(run_op(f->writer, WOP_FINISH, j), 0);
        got = stored_run(f, k, JOB_CANCELLED, 1);
        job_free(got);

        job_free(j);
        job_free(k);
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
        struct store_options o = { .path = f->tmp.path, .sync_full = false };
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

                assert_int_equal(sqlite3_open(f->tmp.path, &db), SQLITE_OK);
                snprintf(sql, sizeof(sql), "UPDATE jobs SET max_attempts = 3 WHERE id = %lld",
                         (long long) retry->id);
                assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
                sqlite3_close(db);
        }

        assert_int_equal(store_open(&o, &f->store), 0);
        assert_int_equal(store_recover(f->store, &(struct store_recovery){ .job = collect, .userdata = &c }),
                         0);
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

/* The version-1 format as released, to test the migration from it. */
static const char v1_schema[] =
        "CREATE TABLE jobs ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL,"
        "  kind TEXT NOT NULL CHECK (kind IN ('io', 'cpu')),"
        "  state TEXT NOT NULL CHECK (state IN"
        "    ('pending', 'running', 'succeeded', 'failed', 'cancelled')),"
        "  args TEXT NOT NULL, tag TEXT, key TEXT, result TEXT, error TEXT,"
        "  timeout REAL NOT NULL CHECK (timeout > 0),"
        "  priority INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
        "  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),"
        "  batch INTEGER, batch_index INTEGER, seq INTEGER,"
        "  created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,"
        "  ready_at INTEGER NOT NULL DEFAULT 0,"
        "  CHECK ((seq IS NULL) = (state IN ('pending', 'running')))"
        ");"
        "CREATE UNIQUE INDEX jobs_key ON jobs(key) WHERE key IS NOT NULL;"
        "CREATE INDEX jobs_state ON jobs(state, id);"
        "CREATE INDEX jobs_task ON jobs(task, id);"
        "CREATE INDEX jobs_batch ON jobs(batch, id) WHERE batch IS NOT NULL;"
        "CREATE UNIQUE INDEX jobs_seq ON jobs(seq) WHERE seq IS NOT NULL;"
        "INSERT INTO jobs (task, kind, state, args, timeout, max_attempts, seq, created_at, finished_at)"
        "  VALUES ('noop', 'io', 'succeeded', '{}', 30, 1, 1, 1000, 2000);"
        "PRAGMA user_version = 1;";


static int batch_op(struct fixture *f, enum wop_type type, struct batch *b, size_t *ret_count)
{
        struct wop op = { .type = type, .batch = b };
        int r = run_wop(f->writer, &op);

        if (ret_count)
                *ret_count = op.count;
        return r;
}

static int batch_items(struct fixture *f, struct batch *b, struct job **jobs, size_t n)
{
        struct wop op = { .type = WOP_BATCH_ITEMS, .batch = b, .jobs = jobs, .n_jobs = n };

        return run_wop(f->writer, &op);
}

static struct batch *batch_open(struct fixture *f, int priority)
{
        struct batch *b = batch_new();

        assert_non_null(b);
        b->priority = priority;
        assert_int_equal(batch_op(f, WOP_BATCH_OPEN, b, NULL), 0);
        assert_true(b->id > 0);
        assert_true(b->created_at > 0);
        return b;
}

/* n items of b; the array and its jobs are the caller's (free_items). */
static struct job **make_items(struct batch *b, size_t n)
{
        struct job **jobs = calloc(n, sizeof(*jobs));

        assert_non_null(jobs);
        for (size_t i = 0; i < n; i++) {
                jobs[i] = make_job("noop", NULL);
                jobs[i]->batch = b->id;
                jobs[i]->index = (int64_t) i;
                jobs[i]->priority = b->priority;
        }
        return jobs;
}

static void free_items(struct job **jobs, size_t n)
{
        for (size_t i = 0; i < n; i++)
                job_free(jobs[i]);
        free(jobs);
}

/* A sealed batch of n items stored in chunks of chunk. */
static struct batch *upload(struct fixture *f, size_t n, size_t chunk, struct job ***ret_jobs)
{
        struct batch *b = batch_open(f, 0);
        struct job **jobs = make_items(b, n);

        for (size_t i = 0; i < n; i += chunk)
                assert_int_equal(batch_items(f, b, jobs + i, n - i < chunk ? n - i : chunk), 0);
        b->size = (int64_t) n;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), 0);
        *ret_jobs = jobs;
        return b;
}

static struct batch *get_batch(struct fixture *f, int64_t id)
{
        struct batch *b = NULL;
        int64_t sum = 0;

        assert_int_equal(store_get_batch(f->reader, id, &b), 0);
        for (int s = 0; s < JOB_STATE__COUNT; s++) {
                assert_true(b->counts[s] >= 0);
                sum += b->counts[s];
        }
        assert_int_equal(sum, b->size);
        return b;
}

static void start(struct fixture *f, struct job *j)
{
        j->attempts++;
        j->started_at = job_now_ms();
        assert_int_equal(run_op(f->writer, WOP_START, j), 0);
}

static int count_jobs(struct job *j, void *ud)
{
        (*(int64_t *) ud)++;
        job_free(j);
        return 0;
}

static void test_migrate_from_v1(void **state)
{
        struct fixture *f = *state;
        struct job *got;
        struct batch *b;
        sqlite3 *db;

        assert_int_equal(sqlite3_open(f->tmp.path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, v1_schema, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        assert_int_equal(user_version(f->tmp.path, -1), 1);

        store_up(f);
        assert_int_equal(user_version(f->tmp.path, -1), 3);
        assert_int_equal(store_get_job(f->reader, 1, &got), 0);
        assert_int_equal(got->state, JOB_SUCCEEDED);
        assert_int_equal(got->seq, 1);
        job_free(got);
        b = batch_open(f, 1);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM sqlite_master "
                                              "WHERE name IN ('jobs_batch_seq', 'jobs_finished', "
                                              "'batches_open', 'batches_finished')"),
                         4);
        batch_free(b);
}

static void test_batch_upload(void **state)
{
        struct fixture *f = *state;
        struct batch *b, *got, *empty;
        struct job **jobs, *taken, *j, *bad;
        int64_t counts[JOB_STATE__COUNT], n = 0;
        struct collected c;

        store_up(f);
        b = batch_open(f, 3);
        jobs = make_items(b, 10);
        assert_int_equal(batch_items(f, b, jobs, 4), 0);
        assert_int_equal(batch_items(f, b, jobs + 4, 4), 0);
        for (int i = 1; i < 8; i++)
                assert_true(jobs[i]->id > jobs[i - 1]->id);

        /* A chunk with a taken key fails whole and leaves the batch as it
         * was; so does one whose job names another batch. */
        taken = submit(f, "noop", "taken");
        free(jobs[9]->key);
        jobs[9]->key = strdup("taken");
        assert_int_equal(batch_items(f, b, jobs + 8, 2), -EEXIST);
        assert_int_equal(jobs[8]->id, 0);
        assert_int_equal(jobs[9]->id, 0);
        free(jobs[9]->key);
        jobs[9]->key = NULL;
        jobs[9]->batch = b->id + 1;
        assert_int_equal(batch_items(f, b, jobs + 8, 2), -EINVAL);
        assert_int_equal(jobs[8]->id, 0);
        jobs[9]->batch = b->id;

        /* Unsealed: nobody sees the batch or its jobs. */
        assert_int_equal(store_get_batch(f->reader, b->id, &got), -ENOENT);
        assert_int_equal(store_get_job(f->reader, jobs[0]->id, &j), -ENOENT);
        c = list(f, -1, NULL, 0, 0, 10);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.ids[0], taken->id);
        c = list(f, -1, NULL, b->id, 0, 10);
        assert_int_equal(c.n, 0);
        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_PENDING], 1);
        assert_int_equal(store_batch_pending(f->reader, b->id, 0, 100, count_jobs, &n), 0);
        assert_int_equal(n, 0);

        assert_int_equal(batch_items(f, b, jobs + 8, 2), 0);
        b->size = 9;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), -EINVAL);
        b->size = 10;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), 0);
        assert_true(b->sealed);
        assert_true(b->sealed_at > 0);
        assert_int_equal(b->finished_at, 0);
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), -ENOENT);
        bad = make_job("noop", NULL);
        bad->batch = b->id;
        assert_int_equal(batch_items(f, b, &bad, 1), -ENOENT);
        assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, NULL), -ENOENT);

        got = get_batch(f, b->id);
        assert_int_equal(got->size, 10);
        assert_int_equal(got->priority, 3);
        assert_int_equal(got->counts[JOB_PENDING], 10);
        assert_int_equal(got->created_at, b->created_at);
        assert_int_equal(got->sealed_at, b->sealed_at);
        assert_int_equal(got->finished_at, 0);
        batch_free(got);
        assert_int_equal(store_get_job(f->reader, jobs[9]->id, &j), 0);
        assert_int_equal(j->batch, b->id);
        assert_int_equal(j->index, 9);
        job_free(j);
        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_PENDING], 11);
        assert_int_equal(store_batch_pending(f->reader, b->id, 0, 100, count_jobs, &n), 0);
        assert_int_equal(n, 10);

        /* An empty batch is finished once sealed. */
        empty = batch_open(f, 0);
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, empty, NULL), 0);
        assert_true(empty->finished_at > 0);
        got = get_batch(f, empty->id);
        assert_int_equal(got->size, 0);
        assert_int_equal(got->finished_at, empty->finished_at);
        batch_free(got);

        free_items(jobs, 10);
        job_free(taken);
        job_free(bad);
        batch_free(b);
        batch_free(empty);
}

static void test_batch_abort(void **state)
{
        struct fixture *f = *state;
        struct batch *b;
        struct job **jobs;

        store_up(f);
        b = batch_open(f, 0);
        jobs = make_items(b, 6);
        assert_int_equal(batch_items(f, b, jobs, 3), 0);
        assert_int_equal(batch_items(f, b, jobs + 3, 3), 0);
        assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, NULL), 0);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs"), 0);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM batches"), 0);
        assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, NULL), -ENOENT);
        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, b, NULL), -ENOENT);
        assert_int_equal(batch_items(f, b, jobs, 3), -ENOENT);
        free_items(jobs, 6);
        batch_free(b);
}

/* OPEN with the jobs: the whole batch sealed in one commit, or, refused,
 * nothing of it. */
static void test_batch_whole(void **state)
{
        struct fixture *f = *state;
        struct writer_stats before, after;
        struct batch *b, *got, *bad;
        struct job **jobs, **dup;
        struct wop op;

        store_up(f);
        b = batch_new();
        assert_non_null(b);
        jobs = make_items(b, 5);
        b->size = 5;
        writer_get_stats(f->writer, &before);
        op = (struct wop) { .type = WOP_BATCH_OPEN, .batch = b, .jobs = jobs, .n_jobs = 5 };
        assert_int_equal(run_wop(f->writer, &op), 0);
        writer_get_stats(f->writer, &after);
        assert_int_equal(after.commits - before.commits, 1);
        assert_true(b->id > 0);
        assert_true(b->sealed);
        for (int i = 0; i < 5; i++) {
                assert_int_equal(jobs[i]->batch, b->id);
                assert_true(jobs[i]->id > 0);
        }
        got = get_batch(f, b->id);
        assert_int_equal(got->size, 5);
        assert_int_equal(got->counts[JOB_PENDING], 5);
        batch_free(got);

        /* a key taken by another job refuses the batch whole */
        bad = batch_new();
        assert_non_null(bad);
        dup = make_items(bad, 3);
        dup[2]->key = strdup("mine");
        job_free(submit(f, "noop", "mine"));
        bad->size = 3;
        op = (struct wop) { .type = WOP_BATCH_OPEN, .batch = bad, .jobs = dup, .n_jobs = 3 };
        assert_int_equal(run_wop(f->writer, &op), -EEXIST);
        assert_int_equal(bad->id, 0);
        assert_false(bad->sealed);
        for (int i = 0; i < 3; i++)
                assert_int_equal(dup[i]->id, 0);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM batches"), 1);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs"), 6);

        free_items(dup, 3);
        batch_free(bad);
        free_items(jobs, 5);
        batch_free(b);
}

/* A REQUEUE folds its START in like a FINISH, and a fold survives its
 * transaction's rollback and retry. */
static void test_start_folded_requeue_retry(void **state)
{
        struct fixture *f = *state;
        struct job *j, *k, *got;
        struct wop ops[4];

        store_up(f);
        start_two(f, &j, &k, ops);
        j->ready_at = job_now_ms() + 60000;
        end_init(&ops[2], WOP_REQUEUE, j, &ops[0]);
        k->state = JOB_SUCCEEDED;
        k->result = strdup("2");
        end_init(&ops[3], WOP_FINISH, k, &ops[1]);
        run_together_hooked(f, ops, 4, gate_then_fail_once);

        assert_int_equal(hook_calls, 3);
        for (int i = 0; i < 4; i++)
                assert_int_equal(ops[i].result, 0);
        assert_true(ops[0].skip && ops[1].skip);
        got = stored_run(f, j, JOB_PENDING, 1);
        assert_int_equal(got->ready_at, j->ready_at);
        job_free(got);
        got = stored_run(f, k, JOB_SUCCEEDED, 1);
        assert_int_equal(got->seq, k->seq);
        job_free(got);
        job_free(j);
        job_free(k);
}

/* A batch cancel between a START and its end: the START is written, so
 * the cancel leaves the running job to its end, which keeps the run's
 * attempts and start. */
static void test_fold_stops_at_batch_cancel(void **state)
{
        struct fixture *f = *state;
        struct job **jobs, *j, *got;
        struct batch *b;
        struct wop ops[3];

        store_up(f);
        b = upload(f, 1, 1, &jobs);
        j = jobs[0];
        j->attempts = 1;
        j->started_at = job_now_ms() - 5;
        op_init(&ops[0], WOP_START, j, NULL);
        ops[1] = (struct wop) { .type = WOP_BATCH_CANCEL, .batch = b };
        j->state = JOB_CANCELLED;
        j->error = strdup("{\"type\":\"cancelled\",\"message\":\"cancelled by request\"}");
        end_init(&ops[2], WOP_FINISH, j, &ops[0]);
        run_together(f, ops, 3);

        assert_false(ops[0].skip);
        assert_int_equal(ops[0].result, 0);
        assert_int_equal(ops[1].result, 0);
        assert_int_equal(ops[1].count, 0);
        assert_int_equal(ops[2].result, 0);
        got = stored_run(f, j, JOB_CANCELLED, 1);
        job_free(got);
        free_items(jobs, 1);
        batch_free(b);
}

/* A bulk op (up to WRITER_CHUNK jobs) ends its transaction: submissions
 * queued behind several do not wait for all of them. */
static void test_bulk_op_ends_transaction(void **state)
{
        struct fixture *f = *state;
        struct writer_stats before, after;
        struct wop ops[4];
        struct job *j = make_job("noop", NULL), *k = make_job("noop", NULL);

        store_up(f);
        ops[0] = (struct wop) { .type = WOP_PURGE, .cutoff = 1 };
        ops[1] = (struct wop) { .type = WOP_PURGE, .cutoff = 1 };
        op_init(&ops[2], WOP_SUBMIT, j, NULL);
        op_init(&ops[3], WOP_SUBMIT, k, NULL);
        writer_get_stats(f->writer, &before);
        run_together(f, ops, 4);
        writer_get_stats(f->writer, &after);
        /* the holding submission's, one per purge, one for both submissions */
        assert_int_equal(after.commits - before.commits, 4);
        for (int i = 0; i < 4; i++)
                assert_int_equal(ops[i].result, 0);
        job_free(j);
        job_free(k);
}

static void test_batch_finish_counts(void **state)
{
        struct fixture *f = *state;
        struct batch *b, *got;
        struct job **jobs;

        store_up(f);
        b = upload(f, 5, 2, &jobs);
        start(f, jobs[0]);
        start(f, jobs[1]);
        finish(f, jobs[1], JOB_SUCCEEDED);
        finish(f, jobs[2], JOB_FAILED);
        got = get_batch(f, b->id);
        assert_int_equal(got->counts[JOB_PENDING], 2);
        assert_int_equal(got->counts[JOB_RUNNING], 1);
        assert_int_equal(got->counts[JOB_SUCCEEDED], 1);
        assert_int_equal(got->counts[JOB_FAILED], 1);
        assert_int_equal(got->counts[JOB_CANCELLED], 0);
        assert_int_equal(got->finished_at, 0);
        batch_free(got);

        /* A FINISH that does not apply counts nothing. */
        assert_int_equal(run_op(f->writer, WOP_FINISH, jobs[1]), -ENOENT);
        finish(f, jobs[3], JOB_CANCELLED);
        finish(f, jobs[0], JOB_SUCCEEDED);
        got = get_batch(f, b->id);
        assert_int_equal(got->counts[JOB_PENDING], 1);
        assert_int_equal(got->counts[JOB_SUCCEEDED], 2);
        assert_int_equal(got->finished_at, 0);
        batch_free(got);

        jobs[4]->finished_at = 0;
        jobs[4]->state = JOB_SUCCEEDED;
        assert_int_equal(run_op(f->writer, WOP_FINISH, jobs[4]), 0);
        assert_true(jobs[4]->finished_at > 0);
        got = get_batch(f, b->id);
        assert_int_equal(got->counts[JOB_PENDING], 0);
        assert_int_equal(got->counts[JOB_RUNNING], 0);
        assert_int_equal(got->counts[JOB_SUCCEEDED], 3);
        assert_int_equal(got->counts[JOB_FAILED], 1);
        assert_int_equal(got->counts[JOB_CANCELLED], 1);
        assert_int_equal(got->finished_at, jobs[4]->finished_at);
        batch_free(got);
        free_items(jobs, 5);
        batch_free(b);
}

/* Cursor pages of a batch's results: checks the order, no duplicate, and
 * moves the cursor. */
struct page {
        enum store_order order;
        int64_t cursor;
        int64_t ids[64];
        int n;
};

static int page_add(struct job *j, void *ud)
{
        struct page *p = ud;

        assert_true(job_state_finished(j->state));
        if (p->order == STORE_ORDER_COMPLETION) {
                assert_true(j->seq > p->cursor);
                p->cursor = j->seq;
        } else {
                assert_true(j->id > p->cursor);
                p->cursor = j->id;
        }
        for (int i = 0; i < p->n; i++)
                assert_true(p->ids[i] != j->id);
        assert_true(p->n < 64);
        p->ids[p->n++] = j->id;
        job_free(j);
        return 0;
}

/* Reads every page of limit results from the start. */
static struct page read_pages(struct fixture *f, int64_t batch, enum store_order order, int limit)
{
        struct page p = { .order = order };
        int before;

        do {
                before = p.n;
                assert_int_equal(store_batch_results(f->reader, batch, order, p.cursor, limit,
                                                     page_add, &p),
                                 0);
                assert_true(p.n - before <= limit);
        } while (p.n - before == limit);
        return p;
}

static void test_batch_results(void **state)
{
        struct fixture *f = *state;
        static const int finish_order[] = { 3, 1, 5, 0, 6 };
        struct batch *b;
        struct job **jobs;
        struct page p;

        store_up(f);
        b = upload(f, 8, 3, &jobs);
        p = read_pages(f, b->id, STORE_ORDER_SUBMISSION, 2);
        assert_int_equal(p.n, 0);
        for (size_t i = 0; i < 5; i++)
                finish(f, jobs[finish_order[i]], i % 2 ? JOB_FAILED : JOB_SUCCEEDED);

        for (int limit = 1; limit <= 4; limit++) {
                p = read_pages(f, b->id, STORE_ORDER_COMPLETION, limit);
                assert_int_equal(p.n, 5);
                for (int i = 0; i < 5; i++)
                        assert_int_equal(p.ids[i], jobs[finish_order[i]]->id);

                /* 0 and 1 are done, 2 is not: the walk stops there. */
                p = read_pages(f, b->id, STORE_ORDER_SUBMISSION, limit);
                assert_int_equal(p.n, 2);
                assert_int_equal(p.ids[0], jobs[0]->id);
                assert_int_equal(p.ids[1], jobs[1]->id);
        }

        /* A cursor in the middle resumes right after it. */
        p = (struct page) { .order = STORE_ORDER_COMPLETION, .cursor = jobs[1]->seq };
        assert_int_equal(store_batch_results(f->reader, b->id, STORE_ORDER_COMPLETION, p.cursor, 10,
                                             page_add, &p),
                         0);
        assert_int_equal(p.n, 3);
        assert_int_equal(p.ids[0], jobs[5]->id);

        finish(f, jobs[2], JOB_CANCELLED);
        finish(f, jobs[4], JOB_SUCCEEDED);
        p = (struct page) { .order = STORE_ORDER_SUBMISSION, .cursor = jobs[1]->id };
        assert_int_equal(store_batch_results(f->reader, b->id, STORE_ORDER_SUBMISSION, p.cursor, 10,
                                             page_add, &p),
                         0);
        assert_int_equal(p.n, 5);
        assert_int_equal(p.ids[4], jobs[6]->id);

        assert_int_equal(store_batch_results(f->reader, b->id, STORE_ORDER_COMPLETION, 0, 0,
                                             page_add, &p),
                         -EINVAL);
        free_items(jobs, 8);
        batch_free(b);
}

static void test_batch_pending(void **state)
{
        struct fixture *f = *state;
        struct batch *b;
        struct job **jobs;
        struct collected c = { .n = 0 };

        store_up(f);
        b = upload(f, 6, 6, &jobs);
        start(f, jobs[1]);
        finish(f, jobs[3], JOB_SUCCEEDED);
        assert_int_equal(store_batch_pending(f->reader, b->id, 0, 2, collect, &c), 0);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.ids[0], jobs[0]->id);
        assert_int_equal(c.ids[1], jobs[2]->id);
        assert_int_equal(store_batch_pending(f->reader, b->id, c.ids[1], 2, collect, &c), 0);
        assert_int_equal(c.n, 4);
        assert_int_equal(c.ids[2], jobs[4]->id);
        assert_int_equal(c.ids[3], jobs[5]->id);
        assert_int_equal(store_batch_pending(f->reader, b->id, c.ids[3], 2, collect, &c), 0);
        assert_int_equal(c.n, 4);
        free_items(jobs, 6);
        batch_free(b);
}

/* Checks a batch's completion order: seqs unique and increasing. */
struct seq_check {
        int64_t last_seq;
        int64_t n;
        int64_t cancelled;
};

static int seq_check(struct job *j, void *ud)
{
        struct seq_check *sc = ud;

        assert_true(j->seq > sc->last_seq);
        sc->last_seq = j->seq;
        sc->n++;
        if (j->state == JOB_CANCELLED) {
                assert_string_equal(j->error, "{\"type\":\"cancelled\",\"message\":\"cancelled by request\"}");
                assert_true(j->finished_at > 0);
                sc->cancelled++;
        }
        job_free(j);
        return 0;
}

#define BIG_BATCH 25000

static void test_batch_cancel_delete(void **state)
{
        struct fixture *f = *state;
        struct batch *b, *got;
        struct job **jobs, *other, *got_job;
        int64_t counts[JOB_STATE__COUNT];
        struct seq_check sc = { 0 };
        size_t count, total = 0;
        int ops = 0;

        store_up(f);
        b = upload(f, BIG_BATCH, 1000, &jobs);
        start(f, jobs[7]);
        finish(f, jobs[8], JOB_SUCCEEDED);
        other = submit(f, "noop", NULL);

        do {
                assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, b, &count), 0);
                assert_true(count <= WRITER_CHUNK);
                total += count;
                ops++;
        } while (count == WRITER_CHUNK);
        assert_int_equal(total, BIG_BATCH - 2);
        assert_int_equal(ops, 3);
        assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, b, &count), 0);
        assert_int_equal(count, 0);

        got = get_batch(f, b->id);
        assert_int_equal(got->counts[JOB_PENDING], 0);
        assert_int_equal(got->counts[JOB_RUNNING], 1);
        assert_int_equal(got->counts[JOB_CANCELLED], BIG_BATCH - 2);
        assert_int_equal(got->finished_at, 0);
        batch_free(got);

        do {
                assert_int_equal(store_batch_results(f->reader, b->id, STORE_ORDER_COMPLETION,
                                                     sc.last_seq, 5000, seq_check, &sc),
                                 0);
        } while (sc.n % 5000 == 0 && sc.n < BIG_BATCH);
        assert_int_equal(sc.n, BIG_BATCH - 1);
        assert_int_equal(sc.cancelled, BIG_BATCH - 2);

        /* The writer's completion order goes on after the cancelled. */
        finish(f, other, JOB_SUCCEEDED);
        assert_int_equal(other->seq, sc.last_seq + 1);

        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, b, NULL), -EBUSY);
        finish(f, jobs[7], JOB_FAILED);
        got = get_batch(f, b->id);
        assert_true(got->finished_at > 0);
        assert_int_equal(got->counts[JOB_FAILED], 1);
        batch_free(got);
        /* The delete hides the batch with its first chunk; ABORTs take
         * the rest, the row with the last. */
        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, b, &count), 0);
        assert_int_equal(count, WRITER_CHUNK);
        assert_int_equal(store_get_batch(f->reader, b->id, &got), -ENOENT);
        assert_int_equal(store_get_job(f->reader, jobs[BIG_BATCH - 1]->id, &got_job), -ENOENT);
        for (int order = 0; order < 2; order++) {
                int64_t n = 0;

                assert_int_equal(store_batch_results(f->reader, b->id, (enum store_order)order, 0,
                                                     100, count_jobs, &n),
                                 0);
                assert_int_equal(n, 0);
        }
        assert_int_equal(store_count_states(f->reader, counts), 0);
        assert_int_equal(counts[JOB_CANCELLED] + counts[JOB_FAILED] + counts[JOB_SUCCEEDED], 1);
        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, b, NULL), -ENOENT);
        assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, b, NULL), -ENOENT);
        total = count;
        ops = 1;
        do {
                assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, &count), 0);
                total += count;
                ops++;
        } while (count == WRITER_CHUNK);
        assert_int_equal(total, BIG_BATCH);
        assert_int_equal(ops, 3);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs"), 1);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM batches"), 0);
        assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, NULL), -ENOENT);
        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, b, NULL), -ENOENT);
        assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, b, NULL), -ENOENT);

        free_items(jobs, BIG_BATCH);
        job_free(other);
        batch_free(b);
}

static size_t purge(struct fixture *f, int64_t cutoff)
{
        struct wop op = { .type = WOP_PURGE, .cutoff = cutoff };

        assert_int_equal(run_wop(f->writer, &op), 0);
        return op.count;
}

static void finish_at(struct fixture *f, struct job *j, int64_t at)
{
        j->state = JOB_SUCCEEDED;
        j->finished_at = at;
        assert_int_equal(run_op(f->writer, WOP_FINISH, j), 0);
}

static void test_purge(void **state)
{
        struct fixture *f = *state;
        int64_t now = job_now_ms(), old = now - 3600 * 1000, cutoff = now - 60 * 1000;
        struct job *old_job, *new_job, *pending, *gone, **old_items, **new_items, **open_items, **big_items;
        struct batch *old_b, *new_b, *open_b, *big, *got;
        size_t count;

        store_up(f);
        old_job = submit(f, "noop", NULL);
        new_job = submit(f, "noop", NULL);
        pending = submit(f, "noop", NULL);
        finish_at(f, old_job, old);
        finish_at(f, new_job, now);
        old_b = upload(f, 3, 3, &old_items);
        new_b = upload(f, 2, 2, &new_items);
        open_b = upload(f, 2, 2, &open_items);
        for (int i = 0; i < 3; i++)
                finish_at(f, old_items[i], old);
        finish_at(f, new_items[0], old);
        finish_at(f, new_items[1], now);
        finish_at(f, open_items[0], old);

        assert_int_equal(purge(f, cutoff), 4);
        assert_int_equal(store_get_job(f->reader, old_job->id, &gone), -ENOENT);
        assert_int_equal(store_get_batch(f->reader, old_b->id, &got), -ENOENT);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs"), 6);
        assert_int_equal(purge(f, cutoff), 0);
        got = get_batch(f, new_b->id);
        batch_free(got);
        got = get_batch(f, open_b->id);
        batch_free(got);

        /* A batch bigger than a chunk goes over several ops, its row last. */
        big = upload(f, WRITER_CHUNK + 100, 5000, &big_items);
        assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, big, &count), 0);
        assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, big, &count), 0);
        assert_int_equal(count, 100);
        cutoff = job_now_ms() + 1000;
        /* new_job, new_b's 2, then WRITER_CHUNK - 3 of big's; big's row
         * stays until its last job goes. */
        assert_int_equal(purge(f, cutoff), WRITER_CHUNK);
        got = get_batch(f, big->id);
        batch_free(got);
        assert_int_equal(purge(f, cutoff), 103);
        assert_int_equal(store_get_batch(f->reader, big->id, &got), -ENOENT);
        assert_int_equal(store_get_batch(f->reader, new_b->id, &got), -ENOENT);
        assert_int_equal(purge(f, cutoff), 0);
        /* What is left: the pending job and the unfinished batch. */
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs"), 3);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM batches"), 1);

        job_free(old_job);
        job_free(new_job);
        job_free(pending);
        free_items(old_items, 3);
        free_items(new_items, 2);
        free_items(open_items, 2);
        free_items(big_items, WRITER_CHUNK + 100);
        batch_free(old_b);
        batch_free(new_b);
        batch_free(open_b);
        batch_free(big);
}

struct recovered {
        struct collected jobs;
        int64_t batches[4];
        int priorities[4];
        int n_batches;
};

static int recovered_job(struct job *j, void *ud)
{
        return collect(j, &((struct recovered *) ud)->jobs);
}

static int recovered_batch(int64_t batch, int priority, void *ud)
{
        struct recovered *rec = ud;

        assert_true(rec->n_batches < 4);
        rec->batches[rec->n_batches] = batch;
        rec->priorities[rec->n_batches++] = priority;
        return 0;
}

static void test_recover_batches(void **state)
{
        struct fixture *f = *state;
        struct store_options o = { .path = f->tmp.path, .sync_full = true };
        struct batch *b1, *b2, *b3, *done_b, *open_b, *gone, *got;
        struct job **j1, **j2, **j3, **jd, **jo, **jg, *alone, *job;
        struct recovered rec = { .jobs.n = 0 };
        int64_t before;
        size_t count;

        store_up(f);
        /* b1: one finished, one running with no attempt left, one pending. */
        b1 = batch_open(f, 5);
        j1 = make_items(b1, 3);
        assert_int_equal(batch_items(f, b1, j1, 3), 0);
        b1->size = 3;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b1, NULL), 0);
        finish(f, j1[0], JOB_SUCCEEDED);
        start(f, j1[1]);
        /* b2: its only job running with attempts left. */
        b2 = batch_open(f, -2);
        j2 = make_items(b2, 1);
        j2[0]->max_attempts = 3;
        assert_int_equal(batch_items(f, b2, j2, 1), 0);
        b2->size = 1;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b2, NULL), 0);
        start(f, j2[0]);
        /* b3: its only job running, none left: recovery finishes it. */
        b3 = upload(f, 1, 1, &j3);
        start(f, j3[0]);
        done_b = upload(f, 1, 1, &jd);
        finish(f, jd[0], JOB_SUCCEEDED);
        open_b = batch_open(f, 0);
        jo = make_items(open_b, 2);
        assert_int_equal(batch_items(f, open_b, jo, 2), 0);
        alone = submit(f, "noop", NULL);
        /* gone: a delete of a batch bigger than a chunk, cut short after
         * its first op by the crash. */
        gone = upload(f, WRITER_CHUNK + 1, 5000, &jg);
        do
                assert_int_equal(batch_op(f, WOP_BATCH_CANCEL, gone, &count), 0);
        while (count == WRITER_CHUNK);
        assert_int_equal(batch_op(f, WOP_BATCH_DELETE, gone, &count), 0);
        assert_int_equal(count, WRITER_CHUNK);
        assert_int_equal(store_get_batch(f->reader, gone->id, &got), -ENOENT);
        assert_int_equal(store_get_job(f->reader, jg[WRITER_CHUNK]->id, &job), -ENOENT);
        store_down(f);

        before = job_now_ms();
        assert_int_equal(store_open(&o, &f->store), 0);
        assert_int_equal(store_recover(f->store, &(struct store_recovery){
                                                         .retry_delay_ms = 60000,
                                                         .job = recovered_job,
                                                         .batch = recovered_batch,
                                                         .userdata = &rec,
                                                 }),
                         0);
        assert_int_equal(rec.jobs.n, 1);
        assert_int_equal(rec.jobs.ids[0], alone->id);
        assert_int_equal(rec.n_batches, 2);
        assert_int_equal(rec.batches[0], b1->id);
        assert_int_equal(rec.priorities[0], 5);
        assert_int_equal(rec.batches[1], b2->id);
        assert_int_equal(rec.priorities[1], -2);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM batches WHERE sealed = 0"), 0);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs WHERE batch IS NOT NULL"),
                         3 + 1 + 1 + 1);
        assert_int_equal(query_int64(f->tmp.path, "SELECT count(*) FROM jobs WHERE batch IS NOT NULL "
                                              "AND batch NOT IN (SELECT id FROM batches)"),
                         0);
        assert_int_equal(writer_start(f->store, &f->writer), 0);
        assert_int_equal(store_reader_open(f->store, &f->reader), 0);

        assert_int_equal(store_get_job(f->reader, j1[1]->id, &job), 0);
        assert_int_equal(job->state, JOB_FAILED);
        assert_non_null(strstr(job->error, "\"type\":\"interrupted\""));
        job_free(job);
        got = get_batch(f, b1->id);
        assert_int_equal(got->counts[JOB_SUCCEEDED], 1);
        assert_int_equal(got->counts[JOB_FAILED], 1);
        assert_int_equal(got->counts[JOB_PENDING], 1);
        assert_int_equal(got->finished_at, 0);
        batch_free(got);
        got = get_batch(f, b3->id);
        assert_int_equal(got->counts[JOB_FAILED], 1);
        assert_true(got->finished_at > 0);
        batch_free(got);

        assert_int_equal(store_get_job(f->reader, j2[0]->id, &job), 0);
        assert_int_equal(job->state, JOB_PENDING);
        assert_int_equal(job->attempts, 1);
        assert_true(job->ready_at >= before + 60000);
        job_free(job);
        got = get_batch(f, b2->id);
        assert_int_equal(got->counts[JOB_PENDING], 1);
        assert_int_equal(got->counts[JOB_RUNNING], 0);
        batch_free(got);

        free_items(j1, 3);
        free_items(j2, 1);
        free_items(j3, 1);
        free_items(jd, 1);
        free_items(jo, 2);
        free_items(jg, WRITER_CHUNK + 1);
        job_free(alone);
        batch_free(gone);
        batch_free(b1);
        batch_free(b2);
        batch_free(b3);
        batch_free(done_b);
        batch_free(open_b);
}

static void test_batch_commit_failure(void **state)
{
        struct fixture *f = *state;
        struct batch *b;
        struct job **jobs;

        store_up(f);
        b = batch_open(f, 0);
        jobs = make_items(b, 3);
        failing = true;
        writer_commit_hook = fail_hook;
        assert_int_equal(batch_items(f, b, jobs, 3), -EIO);
        for (int i = 0; i < 3; i++)
                assert_int_equal(jobs[i]->id, 0);
        b->size = 0;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), -EIO);
        assert_false(b->sealed);
        assert_int_equal(b->finished_at, 0);
        failing = false;
        assert_int_equal(batch_items(f, b, jobs, 3), 0);
        b->size = 3;
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), 0);
        free_items(jobs, 3);
        batch_free(b);
}

#define BENCH_CHUNK 1000
#define BENCH_SLOTS 4

static void test_batch_throughput(void **state)
{
        struct fixture *f = *state;
        struct job **jobs[BENCH_SLOTS];
        struct wop ops[BENCH_SLOTS];
        struct waiter waiters[BENCH_SLOTS];
        bool busy[BENCH_SLOTS] = { false };
        const char *env = getenv("STORE_BENCH_ITEMS");
        size_t items = env ? strtoul(env, NULL, 10) : 100000, chunks, slot;
        struct timespec t0, t1;
        struct batch *b;
        double s;

        store_up(f);
        b = batch_open(f, 0);
        for (slot = 0; slot < BENCH_SLOTS; slot++)
                jobs[slot] = make_items(b, BENCH_CHUNK);
        chunks = (items + BENCH_CHUNK - 1) / BENCH_CHUNK;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        /* Several chunks in flight, as an upload that parses ahead of the
         * commits; each slot's jobs are reused once its op is done. */
        for (size_t c = 0; c < chunks; c++) {
                slot = c % BENCH_SLOTS;
                if (busy[slot]) {
                        waiter_wait(&waiters[slot]);
                        assert_int_equal(ops[slot].result, 0);
                }
                for (size_t i = 0; i < BENCH_CHUNK; i++) {
                        jobs[slot][i]->index = (int64_t) (c * BENCH_CHUNK + i);
                        jobs[slot][i]->id = 0;
                        jobs[slot][i]->created_at = 0;
                }
                waiter_init(&waiters[slot], 1);
                ops[slot] = (struct wop) {
                        .type = WOP_BATCH_ITEMS, .batch = b, .jobs = jobs[slot], .n_jobs = BENCH_CHUNK,
                        .done = op_done, .userdata = &waiters[slot],
                };
                writer_push(f->writer, &ops[slot]);
                busy[slot] = true;
        }
        for (slot = 0; slot < BENCH_SLOTS; slot++)
                if (busy[slot]) {
                        waiter_wait(&waiters[slot]);
                        assert_int_equal(ops[slot].result, 0);
                }
        b->size = (int64_t) (chunks * BENCH_CHUNK);
        assert_int_equal(batch_op(f, WOP_BATCH_SEAL, b, NULL), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        s = (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
        print_message("BATCH_ITEMS: %zu items in %.2f s: %.0f items/s (synchronous=FULL)\n",
                      chunks * BENCH_CHUNK, s, (double) (chunks * BENCH_CHUNK) / s);
        for (slot = 0; slot < BENCH_SLOTS; slot++)
                free_items(jobs[slot], BENCH_CHUNK);
        batch_free(b);
}

static off_t file_size(const char *path)
{
        struct stat st;

        assert_int_equal(stat(path, &st), 0);
        return st.st_size;
}

/* With the checkpointer, the WAL reaches the database file while the
 * writer never pauses (so its own idle checkpoint never runs), and the
 * WAL never grows past what the store wrote ahead. */
static void test_checkpointer(void **state)
{
        struct fixture *f = *state;
        struct store_options o = { .path = f->tmp.path, .sync_full = false };
        struct checkpointer *c;
        struct job **jobs;
        struct batch *b;
        char wal[128];
        off_t db0;

        assert_int_equal(store_open(&o, &f->store), 0);
        /* SQLite's own checkpoint off: what copies the WAL below is the
         * checkpointer's, or nothing. */
        sqlite3_wal_autocheckpoint(store_db(f->store), 0);
        assert_int_equal(checkpointer_start(f->store, &c), 0);
        assert_int_equal(writer_start(f->store, &f->writer), 0);
        db0 = file_size(f->tmp.path);
        b = batch_open(f, 0);
        jobs = make_items(b, BENCH_CHUNK);
        /* Some 20 MB of WAL at most, about five times the threshold. */
        for (int64_t c0 = 0; c0 < 100 && file_size(f->tmp.path) < db0 + (1 << 20); c0++) {
                for (size_t i = 0; i < BENCH_CHUNK; i++) {
                        jobs[i]->index = c0 * BENCH_CHUNK + (int64_t) i;
                        jobs[i]->id = 0;
                }
                assert_int_equal(batch_items(f, b, jobs, BENCH_CHUNK), 0);
        }
        assert_true(file_size(f->tmp.path) >= db0 + (1 << 20));
        snprintf(wal, sizeof(wal), "%s-wal", f->tmp.path);
        assert_int_equal(file_size(wal), STORE_WAL_PREALLOCATE);
        assert_int_equal(batch_op(f, WOP_BATCH_ABORT, b, NULL), 0);
        free_items(jobs, BENCH_CHUNK);
        batch_free(b);
        writer_stop(f->writer);
        f->writer = NULL;
        checkpointer_stop(c);
        store_close(f->store);
        f->store = NULL;
}

/* Copies in a child process: closing a descriptor of the database here
 * would drop every lock this process holds on it, SQLite's too. */
static void copy_file(const char *from, const char *to)
{
        int status;
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                char buf[1 << 16];
                int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                ssize_t n;

                if (in < 0 || out < 0)
                        _exit(1);
                while ((n = read(in, buf, sizeof(buf))) > 0)
                        if (write(out, buf, (size_t) n) != n)
                                _exit(1);
                _exit(n < 0 || close(out) < 0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The WAL is written ahead with zeros when the store opens, and a crash
 * image (the database and its WAL as the disk holds them, with the store
 * still open) reads back every committed job: recovery stops at the first
 * zero frame. */
static void test_wal_preallocated(void **state)
{
        struct fixture *f = *state;
        char wal[128], copy[128], copy_wal[160];
        struct job *j[3];
        sqlite3_stmt *st;
        sqlite3 *db;

        store_up(f);
        snprintf(wal, sizeof(wal), "%s-wal", f->tmp.path);
        assert_int_equal(file_size(wal), STORE_WAL_PREALLOCATE);
        for (int i = 0; i < 3; i++)
                j[i] = submit(f, "noop", NULL);
        finish(f, j[1], JOB_SUCCEEDED);

        snprintf(copy, sizeof(copy), "%s/crash.db", f->tmp.dir);
        snprintf(copy_wal, sizeof(copy_wal), "%s-wal", copy);
        copy_file(f->tmp.path, copy);
        copy_file(wal, copy_wal);
        assert_int_equal(sqlite3_open(copy, &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*), sum(state = 'succeeded') FROM jobs",
                                            -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), 3);
        assert_int_equal(sqlite3_column_int(st, 1), 1);
        sqlite3_finalize(st);
        assert_int_equal(sqlite3_close(db), SQLITE_OK);
        for (int i = 0; i < 3; i++)
                job_free(j[i]);
}

/* A disk with no room for the zeros (here a file size limit) keeps its
 * space: the WAL stays as SQLite left it, and the store works. */
static void test_wal_preallocate_no_room(void **state)
{
        struct fixture *f = *state;
        struct rlimit old, small;
        struct job *j, *got;
        char wal[128];
        off_t size;

        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
        small = (struct rlimit) { .rlim_cur = 4 << 20, .rlim_max = old.rlim_max };
        signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
        store_up(f);
        snprintf(wal, sizeof(wal), "%s-wal", f->tmp.path);
        size = file_size(wal);
        j = submit(f, "noop", NULL);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
        signal(SIGXFSZ, SIG_DFL);

        assert_true(size > 0 && size < (1 << 20));
        assert_int_equal(store_get_job(f->reader, j->id, &got), 0);
        job_free(got);
        job_free(j);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_open_migrate_reopen, setup, teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_key_conflict, setup, teardown),
                cmocka_unit_test_setup_teardown(test_start_folded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_count, setup, teardown),
                cmocka_unit_test_setup_teardown(test_recover, setup, teardown),
                cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stop_gives_up, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_threads, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migrate_from_v1, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_upload, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_abort, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_whole, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fold_stops_at_batch_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_start_folded_requeue_retry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bulk_op_ends_transaction, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_finish_counts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_results, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_cancel_delete, setup, teardown),
                cmocka_unit_test_setup_teardown(test_purge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_recover_batches, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_commit_failure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_throughput, setup, teardown),
                cmocka_unit_test_setup_teardown(test_checkpointer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wal_preallocated, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wal_preallocate_no_room, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
