/* The scheduler and the I/O pool against a real store and writer in a
 * temporary directory. Nothing sleeps: the test waits on its own condvar,
 * woken by submission done(), on_finished(), writer op done() and the
 * writer's commit hook, each wait with a bounded deadline. The feeder
 * announces nothing, so waits also re-check every POLL_MS for predicates
 * over sched_get_stats(). Batches are
 * stored through the writer as the api stores them (OPEN, ITEMS, SEAL) and
 * run by a fake pool of threads that take and finish jobs at once. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <sqlite3.h>

#include "daemon/iopool.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/task.h"
#include "tests/unit/tempdb.h"

#define MAX_FINISHED 64
#define WAIT_S 30.0
/* A test that fails while it holds a job it took by hand leaves its
 * teardown's drain waiting for that run forever: the alarm ends the
 * process instead (SIGALRM kills it, and the run reports the failure). */
#define TEST_ALARM_S 120
#define POLL_MS 5
/* The scheduler's page of a batch (BATCH_PAGE in scheduler.c) and the slack
 * the tests allow above it. */
#define PAGE 1024
#define PAGE_SLACK 64
#define ITEMS_CHUNK 1000
#define BACKOFF_SLACK_S 0.003

struct fixture {
        struct tempdb tmp;
        struct store *store;
        struct store_reader *reader;
        struct writer *writer;
        struct sched *sched;
        struct iopool *pool;

        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC */
        int64_t finished[MAX_FINISHED];        /* the first ones */
        size_t nfinished;                       /* all, batch chunks aside */
        size_t nchunks;                         /* on_finished(0, batch) */
        unsigned commits;
        bool fail_commits;                      /* the disk refuses every commit */
        unsigned refused;                       /* commits refused */
        /* The batch under test: its ids are base .. base + n - 1. */
        int64_t batch;
        int64_t base;
        size_t n;
        unsigned *ended;                        /* on_finished per job */
        unsigned *taken;                        /* sched_take per job */
        bool batch_cancelled;
        int batch_cancel_result;
};

struct test_sub {
        struct sched_submission sub;
        struct fixture *fx;
        bool done;
        int result;
        int64_t id;
};

/* The commit hook has no userdata: the one fixture of the running test. */
static struct fixture *current;

static int commit_hook(void)
{
        bool fail;

        pthread_mutex_lock(&current->lock);
        fail = current->fail_commits;
        if (fail)
                current->refused++;
        else
                current->commits++;
        pthread_cond_broadcast(&current->cond);
        pthread_mutex_unlock(&current->lock);
        return fail ? -ENOSPC : 0;
}

static void set_fail_commits(struct fixture *fx, bool fail)
{
        pthread_mutex_lock(&fx->lock);
        fx->fail_commits = fail;
        pthread_mutex_unlock(&fx->lock);
}

/* Runs on the writer thread: no cmocka assert here, the test checks the
 * counts. */
static void on_finished(int64_t id, int64_t batch, void *userdata)
{
        struct fixture *fx = userdata;

        pthread_mutex_lock(&fx->lock);
        if (id == 0 && batch == fx->batch)
                fx->nchunks++;
        else if (id != 0) {
                if (fx->nfinished < MAX_FINISHED)
                        fx->finished[fx->nfinished] = id;
                fx->nfinished++;
                if (fx->ended && batch == fx->batch && id >= fx->base &&
                    id < fx->base + (int64_t)fx->n)
                        fx->ended[id - fx->base]++;
        }
        pthread_cond_broadcast(&fx->cond);
        pthread_mutex_unlock(&fx->lock);
}

static void submit_done(struct sched_submission *sub)
{
        struct test_sub *ts = sub->userdata;

        pthread_mutex_lock(&ts->fx->lock);
        ts->result = sub->result;
        ts->id = sub->job->id;
        ts->done = true;
        pthread_cond_broadcast(&ts->fx->cond);
        pthread_mutex_unlock(&ts->fx->lock);
}

static double now_s(void)
{
        return task_monotonic();
}

/* Waits, under fx->lock, until pred holds or WAIT_S passed; returns pred. */
static bool wait_until(struct fixture *fx, bool (*pred)(struct fixture *fx, const void *arg),
                       const void *arg)
{
        double deadline = now_s() + WAIT_S;
        bool ok;

        pthread_mutex_lock(&fx->lock);
        while (!(ok = pred(fx, arg)) && now_s() < deadline) {
                struct timespec ts;

                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_nsec += POLL_MS * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&fx->cond, &fx->lock, &ts);
        }
        pthread_mutex_unlock(&fx->lock);
        return ok;
}

static bool sub_done(struct fixture *fx, const void *arg)
{
        return ((const struct test_sub *)arg)->done;
}

static bool finished_id(struct fixture *fx, const void *arg)
{
        for (size_t i = 0; i < fx->nfinished && i < MAX_FINISHED; i++)
                if (fx->finished[i] == *(const int64_t *)arg)
                        return true;
        return false;
}

static bool finished_count(struct fixture *fx, const void *arg)
{
        return fx->nfinished >= *(const size_t *)arg;
}

static bool io_running(struct fixture *fx, const void *arg)
{
        struct sched_stats st;

        sched_get_stats(fx->sched, &st);
        return st.running[JOB_KIND_IO] == *(const size_t *)arg;
}

static int setup(void **state)
{
        struct fixture *fx = calloc(1, sizeof(*fx));
        pthread_condattr_t attr;

        assert_non_null(fx);
        assert_int_equal(tempdb_make(&fx->tmp, "test_scheduler"), 0);
        assert_int_equal(store_open(&(struct store_options) { .path = fx->tmp.path }, &fx->store), 0);
        assert_int_equal(store_reader_open(fx->store, &fx->reader), 0);
        assert_int_equal(writer_start(fx->store, &fx->writer), 0);

        pthread_mutex_init(&fx->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&fx->cond, &attr);
        pthread_condattr_destroy(&attr);

        current = fx;
        writer_commit_hook = commit_hook;
        alarm(TEST_ALARM_S);
        *state = fx;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *fx = *state;

        if (fx->sched)
                sched_drain(fx->sched, 0);
        iopool_stop(fx->pool);
        writer_stop(fx->writer);
        writer_commit_hook = NULL;
        current = NULL;
        sched_free(fx->sched);
        store_reader_close(fx->reader);
        store_close(fx->store);
        assert_int_equal(tempdb_remove(&fx->tmp), 0);
        free(fx->ended);
        free(fx->taken);
        pthread_cond_destroy(&fx->cond);
        pthread_mutex_destroy(&fx->lock);
        free(fx);
        alarm(0);
        return 0;
}

static void start_sched_limited(struct fixture *fx, size_t max_pending,
                                unsigned host_concurrency, double host_per_second)
{
        struct sched_options o = {
                .host_concurrency = host_concurrency,
                .host_per_second = host_per_second,
                .writer = fx->writer,
                .max_pending = max_pending,
                .retry_base = 0.05,
                .retry_max = 1,
                .store = fx->store,
                .on_finished = on_finished,
                .userdata = fx,
        };

        assert_int_equal(sched_new(&o, &fx->sched), 0);
}

static void start_sched(struct fixture *fx, size_t max_pending)
{
        start_sched_limited(fx, max_pending, 0, 0);
}

static void start_pool(struct fixture *fx, unsigned threads)
{
        assert_int_equal(iopool_start(fx->sched, threads, &fx->pool), 0);
}

static struct job *make_job(const char *task, const char *args, double timeout,
                            int max_attempts, int priority)
{
        struct job *j = job_new();

        assert_non_null(j);
        j->task = strdup(task);
        j->args = strdup(args);
        assert_non_null(j->task);
        assert_non_null(j->args);
        j->kind = JOB_KIND_IO;
        j->timeout = timeout;
        j->max_attempts = max_attempts;
        j->priority = priority;
        return j;
}

/* Submits without waiting for the commit; ts is filled by done(). */
static int submit_async(struct fixture *fx, struct job *j, struct test_sub *ts)
{
        *ts = (struct test_sub) {
                .sub = { .job = j, .done = submit_done, .userdata = ts },
                .fx = fx,
        };
        return sched_submit(fx->sched, &ts->sub);
}

/* Submits and waits for the commit; returns the new job's id. */
static int64_t submit(struct fixture *fx, struct job *j)
{
        struct test_sub ts;

        assert_int_equal(submit_async(fx, j, &ts), 0);
        assert_true(wait_until(fx, sub_done, &ts));
        assert_int_equal(ts.result, 0);
        assert_true(ts.id > 0);
        return ts.id;
}

static int64_t submit_sleep(struct fixture *fx, double seconds, double timeout)
{
        char args[64];

        snprintf(args, sizeof(args), "{\"seconds\": %g}", seconds);
        return submit(fx, make_job("sleep", args, timeout, 1, 0));
}

static void wait_finished(struct fixture *fx, int64_t id)
{
        assert_true(wait_until(fx, finished_id, &id));
}

static struct job *stored(struct fixture *fx, int64_t id)
{
        struct job *j = NULL;

        assert_int_equal(store_get_job(fx->reader, id, &j), 0);
        return j;
}

/* The stored job's error object has this type (and message, when given). */
static void assert_error(const struct job *j, const char *type, const char *message)
{
        json_t *e;

        assert_non_null(j->error);
        e = json_loads(j->error, 0, NULL);
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "type")), type);
        if (message)
                assert_string_equal(json_string_value(json_object_get(e, "message")), message);
        json_decref(e);
}

static void no_interrupt(void *arg)
{
}

/* Takes n io jobs by hand, ends them all, then checks their order (ended
 * first, so a failed check leaves nothing running for the teardown). */
static void take_expect(struct fixture *fx, const int64_t *ids, size_t n)
{
        int64_t taken[16];

        assert_true(n <= 16);
        for (size_t i = 0; i < n; i++) {
                struct sched_job *sj = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL);
                struct sched_outcome o = { .result = json_object() };

                assert_non_null(sj);
                taken[i] = sched_job_job(sj)->id;
                sched_finish(fx->sched, sj, &o);
        }
        assert_true(wait_until(fx, finished_count, &n));
        for (size_t i = 0; i < n; i++)
                assert_int_equal(taken[i], ids[i]);
}

static void test_priority_order(void **state)
{
        struct fixture *fx = *state;
        static const int prio[] = { 0, 5, 1, 5, -3, 0 };
        int64_t id[6];

        start_sched(fx, 100);
        for (int i = 0; i < 6; i++)
                id[i] = submit(fx, make_job("noop", "{}", 10, 1, prio[i]));
        take_expect(fx, (const int64_t[]) { id[1], id[3], id[2], id[0], id[5], id[4] }, 6);
}

static void test_fifo_within_priority(void **state)
{
        struct fixture *fx = *state;
        int64_t id[8];

        start_sched(fx, 100);
        for (int i = 0; i < 8; i++)
                id[i] = submit(fx, make_job("noop", "{}", 10, 1, 2));
        for (int i = 1; i < 8; i++)
                assert_true(id[i] > id[i - 1]);
        take_expect(fx, id, 8);
}

static void test_cancel_pending(void **state)
{
        struct fixture *fx = *state;
        struct sched_stats st;
        struct job *j;
        int64_t id;

        start_sched(fx, 100);
        id = submit(fx, make_job("noop", "{}", 10, 1, 0));
        assert_int_equal(sched_cancel(fx->sched, id, 0), 0);
        wait_finished(fx, id);
        assert_int_equal(sched_cancel(fx->sched, id, 0), -ENOENT);
        sched_get_stats(fx->sched, &st);
        assert_int_equal(st.pending[JOB_KIND_IO], 0);

        j = stored(fx, id);
        assert_int_equal(j->state, JOB_CANCELLED);
        assert_int_equal(j->attempts, 0);
        assert_error(j, "cancelled", "cancelled by request");
        job_free(j);
}

static void test_cancel_running_io(void **state)
{
        struct fixture *fx = *state;
        size_t one = 1;
        struct job *j;
        int64_t id;
        double t0;

        start_sched(fx, 100);
        start_pool(fx, 2);
        id = submit_sleep(fx, 30, 60);
        assert_true(wait_until(fx, io_running, &one));

        t0 = now_s();
        assert_int_equal(sched_cancel(fx->sched, id, 0), -EINPROGRESS);
        wait_finished(fx, id);
        assert_true(now_s() - t0 < 1.0);

        j = stored(fx, id);
        assert_int_equal(j->state, JOB_CANCELLED);
        assert_int_equal(j->attempts, 1);
        assert_error(j, "cancelled", "cancelled by request");
        job_free(j);
}

/* Takes the only io job by hand and fails it retryably. */
static void take_and_fail(struct fixture *fx, int64_t id, int attempts)
{
        struct sched_job *sj = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL);
        struct sched_outcome o = {
                .error = json_pack("{s:s, s:s}", "type", "task_error", "message", "boom"),
                .retryable = true,
        };
        int64_t taken_id;
        int taken_attempts;

        assert_non_null(sj);
        taken_id = sched_job_job(sj)->id;
        taken_attempts = sched_job_job(sj)->attempts;
        sched_finish(fx->sched, sj, &o);
        assert_int_equal(taken_id, id);
        assert_int_equal(taken_attempts, attempts);
}

static void test_retry_backoff(void **state)
{
        struct fixture *fx = *state;
        struct job *j;
        int64_t id;
        double t0;

        start_sched(fx, 100);
        id = submit(fx, make_job("noop", "{}", 10, 3, 0));

        /* The backoff counts from the failure, t0 is taken just after it,
         * and ready_at is in whole ms: BACKOFF_SLACK_S under the least. */
        take_and_fail(fx, id, 1);
        t0 = now_s();
        /* backoff 0.05 s +-20 % */
        take_and_fail(fx, id, 2);
        assert_true(now_s() - t0 >= 0.04 - BACKOFF_SLACK_S);
        t0 = now_s();
        /* 0.1 s +-20 %; the third failure is the last attempt */
        take_and_fail(fx, id, 3);
        assert_true(now_s() - t0 >= 0.08 - BACKOFF_SLACK_S);
        wait_finished(fx, id);

        j = stored(fx, id);
        assert_int_equal(j->state, JOB_FAILED);
        assert_int_equal(j->attempts, 3);
        assert_error(j, "task_error", "boom");
        job_free(j);
}

static void test_max_pending(void **state)
{
        struct fixture *fx = *state;
        struct test_sub ts[4];
        struct job *extra;

        start_sched(fx, 3);
        /* in flight at the writer counts as pending too */
        for (int i = 0; i < 3; i++)
                assert_int_equal(submit_async(fx, make_job("noop", "{}", 10, 1, 0), &ts[i]), 0);
        extra = make_job("noop", "{}", 10, 1, 0);
        assert_int_equal(submit_async(fx, extra, &ts[3]), -EAGAIN);
        for (int i = 0; i < 3; i++)
                assert_true(wait_until(fx, sub_done, &ts[i]));
        assert_int_equal(submit_async(fx, extra, &ts[3]), -EAGAIN);
        job_free(extra);

        assert_int_equal(sched_cancel(fx->sched, ts[0].id, 0), 0);
        wait_finished(fx, ts[0].id);
        submit(fx, make_job("noop", "{}", 10, 1, 0));
}

static void test_drain_requeues(void **state)
{
        struct fixture *fx = *state;
        struct test_sub ts;
        struct job *j, *late;
        size_t one = 1;
        int64_t id;
        double t0;

        start_sched(fx, 100);
        start_pool(fx, 1);
        id = submit_sleep(fx, 30, 60);
        assert_true(wait_until(fx, io_running, &one));

        t0 = now_s();
        sched_drain(fx->sched, 0.05);
        assert_true(now_s() - t0 < 2.0);

        j = stored(fx, id);
        assert_int_equal(j->state, JOB_PENDING);
        assert_int_equal(j->attempts, 0);
        assert_null(j->error);
        job_free(j);

        assert_null(sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL));
        late = make_job("noop", "{}", 10, 1, 0);
        assert_int_equal(submit_async(fx, late, &ts), -ESHUTDOWN);
        job_free(late);
        iopool_stop(fx->pool);
        fx->pool = NULL;
}

static void test_iopool_parallel(void **state)
{
        struct fixture *fx = *state;
        struct iopool_stats st;
        int64_t id[16];
        size_t n = 16;
        double t0;

        start_sched(fx, 100);
        start_pool(fx, 16);
        iopool_get_stats(fx->pool, &st);
        assert_int_equal(st.size, 16);
        assert_true(iopool_alive(fx->pool));

        t0 = now_s();
        for (size_t i = 0; i < n; i++)
                id[i] = submit_sleep(fx, 0.2, 10);
        assert_true(wait_until(fx, finished_count, &n));
        assert_true(now_s() - t0 < 1.5);

        for (size_t i = 0; i < n; i++) {
                struct job *j = stored(fx, id[i]);
                json_t *r;

                assert_int_equal(j->state, JOB_SUCCEEDED);
                r = json_loads(j->result, 0, NULL);
                assert_non_null(r);
                assert_true(json_number_value(json_object_get(r, "slept")) == 0.2);
                json_decref(r);
                job_free(j);
        }
}

static void test_timeout(void **state)
{
        struct fixture *fx = *state;
        struct job *j;
        int64_t id;
        double t0;

        start_sched(fx, 100);
        start_pool(fx, 1);
        t0 = now_s();
        id = submit_sleep(fx, 5, 0.2);
        wait_finished(fx, id);
        assert_true(now_s() - t0 < 2.0);

        j = stored(fx, id);
        assert_int_equal(j->state, JOB_FAILED);
        assert_error(j, "timeout", "timed out after 0.2 s");
        job_free(j);
}

/* ---- batches ---- */

struct writer_call {
        struct wop op;
        struct fixture *fx;
        bool done;
};

static void writer_call_done(struct wop *op)
{
        struct writer_call *wc = op->userdata;

        pthread_mutex_lock(&wc->fx->lock);
        wc->done = true;
        pthread_cond_broadcast(&wc->fx->cond);
        pthread_mutex_unlock(&wc->fx->lock);
}

static bool call_done(struct fixture *fx, const void *arg)
{
        return ((const struct writer_call *)arg)->done;
}

/* Pushes op to the writer and waits for its done(); returns its result. */
static int writer_call(struct fixture *fx, const struct wop *op)
{
        struct writer_call wc = { .op = *op, .fx = fx };

        wc.op.done = writer_call_done;
        wc.op.userdata = &wc;
        writer_push(fx->writer, &wc.op);
        assert_true(wait_until(fx, call_done, &wc));
        return wc.op.result;
}

/* Stores a sealed batch of n noop jobs as the api does (OPEN, ITEMS, SEAL)
 * with these limits (JSON text or NULL) and makes it the fixture's batch
 * under test. */
static void store_limited_batch(struct fixture *fx, size_t n, int priority, const char *limits)
{
        struct job *chunk[ITEMS_CHUNK];
        struct batch *b = batch_new();
        int64_t base = 0;

        assert_non_null(b);
        b->priority = priority;
        if (limits) {
                b->limits = strdup(limits);
                assert_non_null(b->limits);
        }
        assert_int_equal(writer_call(fx, &(struct wop) { .type = WOP_BATCH_OPEN, .batch = b }), 0);
        for (size_t i = 0; i < n; i += ITEMS_CHUNK) {
                size_t m = n - i < ITEMS_CHUNK ? n - i : ITEMS_CHUNK;

                for (size_t k = 0; k < m; k++) {
                        /* two attempts, so that recovery requeues a run */
                        chunk[k] = make_job("noop", "{}", 10, 2, priority);
                        chunk[k]->batch = b->id;
                        chunk[k]->index = (int64_t)(i + k);
                }
                assert_int_equal(writer_call(fx, &(struct wop) {
                                                         .type = WOP_BATCH_ITEMS,
                                                         .batch = b,
                                                         .jobs = chunk,
                                                         .n_jobs = m,
                                                 }), 0);
                if (i == 0)
                        base = chunk[0]->id;
                /* a fresh store numbers them one after the other */
                assert_int_equal(chunk[m - 1]->id, base + (int64_t)(i + m - 1));
                for (size_t k = 0; k < m; k++)
                        job_free(chunk[k]);
        }
        b->size = (int64_t)n;
        assert_int_equal(writer_call(fx, &(struct wop) { .type = WOP_BATCH_SEAL, .batch = b }), 0);

        pthread_mutex_lock(&fx->lock);
        fx->batch = b->id;
        fx->base = base;
        fx->n = n;
        fx->ended = calloc(n, sizeof(*fx->ended));
        fx->taken = calloc(n, sizeof(*fx->taken));
        pthread_mutex_unlock(&fx->lock);
        assert_non_null(fx->ended);
        assert_non_null(fx->taken);
        batch_free(b);
}

static void store_batch(struct fixture *fx, size_t n, int priority)
{
        store_limited_batch(fx, n, priority, NULL);
}

static struct batch *stored_batch(struct fixture *fx)
{
        struct batch *b = NULL;

        assert_int_equal(store_get_batch(fx->reader, fx->batch, &b), 0);
        return b;
}

static bool io_pending(struct fixture *fx, const void *arg)
{
        struct sched_stats st;

        sched_get_stats(fx->sched, &st);
        return st.pending[JOB_KIND_IO] == *(const size_t *)arg;
}

static bool commits_refused(struct fixture *fx, const void *arg)
{
        return fx->refused >= *(const unsigned *)arg;
}
/* A batch of n jobs stored, handed to the scheduler and fed a first page. */
static void store_batch_fed(struct fixture *fx, size_t n)
{
        size_t page = PAGE;

        store_batch(fx, n, 0);
        assert_int_equal(sched_add_batch(fx->sched, fx->batch, 0), 0);
        assert_true(wait_until(fx, io_pending, &page));
}

/* Threads that take io jobs, hold each for hold_ms of "work" and succeed
 * it, noting under fx->lock what the scheduler held after each take, how
 * many ran at once and when each was taken. */
#define FAKE_THREADS_MAX 16

struct fake_pool {
        struct fixture *fx;
        pthread_t threads[FAKE_THREADS_MAX];
        size_t nthreads;
        long hold_ms;
        size_t max_loaded;      /* ready and delayed */
        int64_t last;           /* the batch job taken last */
        bool in_order;          /* each batch job taken after those before it */
        size_t in_flight;
        size_t max_in_flight;
        size_t ntaken;
        double first_at, last_at;       /* monotonic seconds of the first and last take */
        double before_last_at;          /* of the take before the last */
        double min_two_gaps;            /* from a take to the next but one */
};

/* Under fx->lock: notes the take of id at t with loaded jobs left. */
static void fake_pool_note(struct fake_pool *fp, int64_t id, double t, size_t loaded)
{
        struct fixture *fx = fp->fx;

        if (loaded > fp->max_loaded)
                fp->max_loaded = loaded;
        if (id >= fx->base && id < fx->base + (int64_t)fx->n) {
                fx->taken[id - fx->base]++;
                if (id <= fp->last)
                        fp->in_order = false;
                fp->last = id;
        }
        if (fp->ntaken == 0)
                fp->first_at = t;
        if (fp->ntaken >= 2 && t - fp->before_last_at < fp->min_two_gaps)
                fp->min_two_gaps = t - fp->before_last_at;
        fp->ntaken++;
        fp->before_last_at = fp->last_at;
        fp->last_at = t;
        if (++fp->in_flight > fp->max_in_flight)
                fp->max_in_flight = fp->in_flight;
}

static void *fake_pool_main(void *arg)
{
        struct fake_pool *fp = arg;
        struct fixture *fx = fp->fx;
        struct sched_job *sj;

        while ((sj = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL))) {
                struct sched_outcome o = { .result = json_object() };
                struct timespec hold = { .tv_nsec = fp->hold_ms * 1000000L };
                int64_t id = sched_job_job(sj)->id;
                double t = now_s();
                struct sched_stats st;

                sched_get_stats(fx->sched, &st);
                pthread_mutex_lock(&fx->lock);
                fake_pool_note(fp, id, t, st.pending[JOB_KIND_IO] + st.delayed);
                pthread_mutex_unlock(&fx->lock);
                if (fp->hold_ms > 0)
                        nanosleep(&hold, NULL);
                pthread_mutex_lock(&fx->lock);
                fp->in_flight--;
                pthread_mutex_unlock(&fx->lock);
                sched_finish(fx->sched, sj, &o);
        }
        return NULL;
}

static void fake_pool_start_holding(struct fake_pool *fp, struct fixture *fx, size_t threads,
                                    long hold_ms)
{
        assert_true(threads <= FAKE_THREADS_MAX && hold_ms < 1000);
        *fp = (struct fake_pool) {
                .fx = fx, .nthreads = threads, .hold_ms = hold_ms, .in_order = true, .min_two_gaps = 1e9,
        };
        for (size_t i = 0; i < threads; i++)
                assert_int_equal(pthread_create(&fp->threads[i], NULL, fake_pool_main, fp), 0);
}

static void fake_pool_start(struct fake_pool *fp, struct fixture *fx, size_t threads)
{
        fake_pool_start_holding(fp, fx, threads, 0);
}

static void fake_pool_stop(struct fake_pool *fp)
{
        sched_drain(fp->fx->sched, 1);
        for (size_t i = 0; i < fp->nthreads; i++)
                pthread_join(fp->threads[i], NULL);
}

/* Every job of the batch under test announced once, and taken as often as
 * said (except those in skip, never taken). */
static void assert_batch_ended(struct fixture *fx, const int64_t *skip, size_t nskip)
{
        for (size_t i = 0; i < fx->n; i++) {
                unsigned taken = 1;

                for (size_t k = 0; k < nskip; k++)
                        if (fx->base + (int64_t)i == skip[k])
                                taken = 0;
                assert_int_equal(fx->ended[i], 1);
                assert_int_equal(fx->taken[i], taken);
        }
}

static void test_batch_runs_in_order(void **state)
{
        struct fixture *fx = *state;
        struct fake_pool fp;
        size_t n = 5000, all = n + 1;
        struct batch *b;
        int64_t lone;

        /* batch jobs do not count toward max_pending */
        start_sched(fx, 1);
        store_batch_fed(fx, n);
        lone = submit(fx, make_job("noop", "{}", 10, 1, 9));

        fake_pool_start(&fp, fx, 1);
        assert_true(wait_until(fx, finished_count, &all));
        fake_pool_stop(&fp);

        /* the lone job's priority put it first */
        assert_int_equal(fx->finished[0], lone);
        assert_true(fp.in_order);
        assert_true(fp.max_loaded >= PAGE / 2);
        assert_true(fp.max_loaded <= PAGE + PAGE_SLACK);
        assert_batch_ended(fx, NULL, 0);
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_SUCCEEDED], n);
        assert_true(b->finished_at > 0);
        batch_free(b);
}

static void test_batch_cancel_unloaded(void **state)
{
        struct fixture *fx = *state;
        struct fake_pool fp;
        size_t n = 3000;
        int64_t far, near;
        struct batch *b;
        struct job *j;

        start_sched(fx, 100);
        store_batch_fed(fx, n);
        far = fx->base + 2000;
        near = fx->base + 10;

        assert_int_equal(sched_cancel(fx->sched, far, fx->batch), 0);
        wait_finished(fx, far);
        assert_int_equal(sched_cancel(fx->sched, far, fx->batch), -ENOENT);
        assert_int_equal(sched_cancel(fx->sched, near, fx->batch), 0);
        wait_finished(fx, near);
        assert_int_equal(sched_cancel(fx->sched, near, fx->batch), -ENOENT);
        assert_int_equal(sched_cancel(fx->sched, far, fx->batch + 1), -ENOENT);

        fake_pool_start(&fp, fx, 3);
        assert_true(wait_until(fx, finished_count, &n));
        fake_pool_stop(&fp);

        assert_batch_ended(fx, (const int64_t[]) { far, near }, 2);
        j = stored(fx, far);
        assert_int_equal(j->state, JOB_CANCELLED);
        assert_int_equal(j->attempts, 0);
        assert_error(j, "cancelled", "cancelled by request");
        job_free(j);
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_SUCCEEDED], n - 2);
        assert_int_equal(b->counts[JOB_CANCELLED], 2);
        batch_free(b);
}

static void batch_cancel_done(struct sched_batch_cancel *c)
{
        struct fixture *fx = c->userdata;

        pthread_mutex_lock(&fx->lock);
        fx->batch_cancelled = true;
        fx->batch_cancel_result = c->result;
        pthread_cond_broadcast(&fx->cond);
        pthread_mutex_unlock(&fx->lock);
}

static bool batch_cancelled(struct fixture *fx, const void *arg)
{
        return fx->batch_cancelled;
}

static void finish_success(struct fixture *fx, struct sched_job *sj)
{
        struct sched_outcome o = { .result = json_object() };

        sched_finish(fx->sched, sj, &o);
}

/* More than WRITER_CHUNK jobs pending, so the cancel takes two chunks. */
static void test_batch_cancel_while_running(void **state)
{
        struct fixture *fx = *state;
        size_t n = WRITER_CHUNK + 2000, zero = 0;
        struct sched_batch_cancel c = { .done = batch_cancel_done, .userdata = fx };
        struct sched_job *sj[3];
        int64_t id[3];
        struct batch *b;
        struct job *j;

        start_sched(fx, 100);
        store_batch_fed(fx, n);
        for (int i = 0; i < 3; i++) {
                sj[i] = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL);
                assert_non_null(sj[i]);
                id[i] = sched_job_job(sj[i])->id;
                assert_int_equal(id[i], fx->base + i);
        }
        finish_success(fx, sj[0]);
        wait_finished(fx, id[0]);

        c.batch = fx->batch;
        assert_int_equal(sched_cancel_batch(fx->sched, &c), 0);
        assert_true(wait_until(fx, batch_cancelled, NULL));
        assert_int_equal(fx->batch_cancel_result, 0);
        assert_int_equal(fx->nchunks, 2);
        assert_true(wait_until(fx, io_pending, &zero));
        assert_int_equal(sched_cancel(fx->sched, id[1], fx->batch), -EALREADY);
        assert_int_equal(sched_cancel(fx->sched, fx->base + 5000, fx->batch), -ENOENT);

        /* runs told to stop end cancelled whatever they report */
        finish_success(fx, sj[1]);
        finish_success(fx, sj[2]);
        wait_finished(fx, id[1]);
        wait_finished(fx, id[2]);

        for (size_t i = 0; i < n; i++)
                assert_int_equal(fx->ended[i], i < 3 ? 1 : 0);
        j = stored(fx, id[2]);
        assert_int_equal(j->state, JOB_CANCELLED);
        job_free(j);
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_SUCCEEDED], 1);
        assert_int_equal(b->counts[JOB_CANCELLED], n - 1);
        assert_true(b->finished_at > 0);
        batch_free(b);
}

/* What store_recover() hands over, in the fixture's test. */
struct recovered {
        int64_t batch;
        int priority;
        size_t batches;
        size_t jobs;
};

static int recovered_job(struct job *j, void *userdata)
{
        ((struct recovered *)userdata)->jobs++;
        job_free(j);
        return 0;
}

static int recovered_batch(int64_t batch, int priority, void *userdata)
{
        struct recovered *rec = userdata;

        rec->batch = batch;
        rec->priority = priority;
        rec->batches++;
        return 0;
}

/* As if the daemon died while these jobs ran. */
static void mark_running(struct fixture *fx, int64_t first, int64_t last)
{
        char sql[128];
        sqlite3 *db;

        snprintf(sql, sizeof(sql), "UPDATE jobs SET state = 'running', attempts = 1 "
                 "WHERE id BETWEEN %lld AND %lld", (long long)first, (long long)last);
        assert_int_equal(sqlite3_open(fx->tmp.path, &db), SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
}

static bool loaded_after_recovery(struct fixture *fx, const void *arg)
{
        struct sched_stats st;

        sched_get_stats(fx->sched, &st);
        return st.delayed == 2 && st.pending[JOB_KIND_IO] == PAGE - 2;
}

/* Recovery's jobs that were running wait their ready_at, loaded like the
 * others, fed before any pool runs or op is pushed. */
static void test_batch_recovered(void **state)
{
        struct fixture *fx = *state;
        struct recovered rec = { .batches = 0 };
        struct fake_pool fp;
        size_t n = 1500;
        struct batch *b;

        store_batch(fx, n, 3);
        writer_stop(fx->writer);
        fx->writer = NULL;
        mark_running(fx, fx->base, fx->base + 1);
        assert_int_equal(store_recover(fx->store, &(struct store_recovery) {
                                                          .retry_delay_ms = 300,
                                                          .job = recovered_job,
                                                          .batch = recovered_batch,
                                                          .userdata = &rec,
                                                  }), 0);
        assert_int_equal(rec.jobs, 0);
        assert_int_equal(rec.batches, 1);
        assert_int_equal(rec.batch, fx->batch);
        assert_int_equal(rec.priority, 3);

        assert_int_equal(writer_start(fx->store, &fx->writer), 0);
        start_sched(fx, 100);
        assert_int_equal(sched_add_batch(fx->sched, rec.batch, rec.priority), 0);
        assert_true(wait_until(fx, loaded_after_recovery, NULL));

        fake_pool_start(&fp, fx, 2);
        assert_true(wait_until(fx, finished_count, &n));
        fake_pool_stop(&fp);

        assert_batch_ended(fx, NULL, 0);
        for (int64_t id = fx->base; id < fx->base + 2; id++) {
                struct job *j = stored(fx, id);

                assert_int_equal(j->state, JOB_SUCCEEDED);
                assert_int_equal(j->attempts, 2);
                assert_true(j->started_at >= j->ready_at);
                job_free(j);
        }
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_SUCCEEDED], n);
        batch_free(b);
}

/* Cancels spread over the batch while the feeder reads and the pool runs:
 * whatever each cancel met, every job ends once, and none runs after its
 * end was committed: each take of a job cancelled as pending (0) is a
 * START the store took, so none of those is lost to a START refused
 * (-ENOENT) for a job already cancelled. */
static void test_batch_cancel_racing(void **state)
{
        struct fixture *fx = *state;
        size_t n = 5000, cancelled = 0;
        int64_t pending[64];
        size_t npending = 0;
        struct fake_pool fp;
        struct batch *b;

        start_sched(fx, 100);
        store_batch(fx, n, 0);
        assert_int_equal(sched_add_batch(fx->sched, fx->batch, 0), 0);
        fake_pool_start(&fp, fx, 3);
        for (size_t i = 7; i < n; i += 97) {
                int r = sched_cancel(fx->sched, fx->base + (int64_t)i, fx->batch);

                if (r == 0) {
                        assert_true(npending < 64);
                        pending[npending++] = fx->base + (int64_t)i;
                } else if (r != -EINPROGRESS)
                        assert_int_equal(r, -ENOENT);
                if (r == 0 || r == -EINPROGRESS)
                        cancelled++;
        }
        assert_true(wait_until(fx, finished_count, &n));
        fake_pool_stop(&fp);

        for (size_t i = 0; i < n; i++) {
                assert_int_equal(fx->ended[i], 1);
                assert_true(fx->taken[i] <= 1);
        }
        for (size_t k = 0; k < npending; k++) {
                struct job *j = stored(fx, pending[k]);

                assert_int_equal(j->state, JOB_CANCELLED);
                assert_int_equal(j->attempts, fx->taken[pending[k] - fx->base]);
                job_free(j);
        }
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_CANCELLED], cancelled);
        assert_int_equal(b->counts[JOB_SUCCEEDED], n - cancelled);
        batch_free(b);
}

/* ---- limits ---- */

/* The pool the limit tests run on: more threads than any limit. */
#define LIMIT_THREADS 16
#define HOLD_MS 5

static void test_batch_limit_concurrency(void **state)
{
        struct fixture *fx = *state;
        struct fake_pool fp;
        size_t n = 200;

        start_sched(fx, 100);
        store_limited_batch(fx, n, 0, "{\"concurrency\":4}");
        fake_pool_start_holding(&fp, fx, LIMIT_THREADS, HOLD_MS);
        assert_int_equal(sched_add_batch(fx->sched, fx->batch, 0), 0);
        assert_true(wait_until(fx, finished_count, &n));
        fake_pool_stop(&fp);

        assert_int_equal(fp.max_in_flight, 4);
        assert_batch_ended(fx, NULL, 0);
}

static void test_batch_limit_rate(void **state)
{
        struct fixture *fx = *state;
        struct fake_pool fp;
        size_t n = 40;
        double span;

        start_sched(fx, 100);
        store_limited_batch(fx, n, 0, "{\"per_second\":20}");
        fake_pool_start_holding(&fp, fx, LIMIT_THREADS, HOLD_MS);
        assert_int_equal(sched_add_batch(fx->sched, fx->batch, 0), 0);
        assert_true(wait_until(fx, finished_count, &n));
        fake_pool_stop(&fp);

        /* 39 gaps of 50 ms. A gap is measured by the takers, so a taker
         * woken late for one job makes the gap before it long and the one
         * after it short, but not the two together: at least one gap's
         * worth tells spacing from a burst. */
        span = fp.last_at - fp.first_at;
        assert_true(span > 1.95 * 0.9 && span < 1.95 * 1.1);
        assert_true(fp.min_two_gaps > 0.05);
        assert_batch_ended(fx, NULL, 0);
}

static bool limited_count(struct fixture *fx, const void *arg)
{
        struct sched_stats st;

        sched_get_stats(fx->sched, &st);
        return st.limited == *(const size_t *)arg;
}

static int64_t submit_http(struct fixture *fx, const char *url, int priority)
{
        char args[128];

        snprintf(args, sizeof(args), "{\"url\": \"%s\"}", url);
        return submit(fx, make_job("http", args, 10, 1, priority));
}

static struct sched_job *take_now(struct fixture *fx, int64_t expected)
{
        struct sched_job *sj = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL);

        assert_non_null(sj);
        assert_int_equal(sched_job_job(sj)->id, expected);
        return sj;
}

/* Per host: two at once, whatever the spelling of the host; a held job is
 * not ready, waits in priority order, and can be cancelled. Released jobs
 * keep their slots: a later job of higher priority waits behind them. */
static void test_host_concurrency(void **state)
{
        struct fixture *fx = *state;
        struct sched_job *sj[4];
        struct sched_stats st;
        int64_t a[5], b;
        struct job *j;

        start_sched_limited(fx, 100, 2, 0);
        a[0] = submit_http(fx, "http://A.example/x", 0);
        a[1] = submit_http(fx, "HTTP://a.example:80/y", 0);
        a[2] = submit_http(fx, "http://a.example/z", 0);
        a[3] = submit_http(fx, "http://a.example/z", 5);
        a[4] = submit_http(fx, "http://a.example/z", 0);
        b = submit_http(fx, "http://a.example:8080/", 0);

        sj[0] = take_now(fx, a[0]);
        sj[1] = take_now(fx, a[1]);
        sj[2] = take_now(fx, b);
        sched_get_stats(fx->sched, &st);
        assert_int_equal(st.pending[JOB_KIND_IO], 0);
        assert_int_equal(st.limited, 3);

        assert_int_equal(sched_cancel(fx->sched, a[2], 0), 0);
        wait_finished(fx, a[2]);
        assert_true(wait_until(fx, limited_count, &(size_t){ 2 }));

        finish_success(fx, sj[0]);
        sj[3] = take_now(fx, a[3]);
        finish_success(fx, sj[1]);
        finish_success(fx, sj[2]);
        finish_success(fx, sj[3]);
        take_expect(fx, (const int64_t[]) { a[4] }, 1);
        assert_true(wait_until(fx, limited_count, &(size_t){ 0 }));
        assert_true(wait_until(fx, io_pending, &(size_t){ 0 }));

        j = stored(fx, a[2]);
        assert_int_equal(j->state, JOB_CANCELLED);
        assert_int_equal(j->attempts, 0);
        job_free(j);
}

static void test_host_rate(void **state)
{
        struct fixture *fx = *state;
        int64_t id[5];
        double t0, t;

        start_sched_limited(fx, 100, 0, 10);
        for (int i = 0; i < 5; i++)
                id[i] = submit_http(fx, "http://127.0.0.1:9/", 0);
        t0 = now_s();
        take_expect(fx, id, 5);
        t = now_s() - t0;
        /* four gaps of 100 ms */
        assert_true(t > 0.36 && t < 0.6);
}

/* A batch at its limit holds its jobs back; a cancel of one of them, then
 * of the batch, leaves nothing held; a retry waits for a slot again. */
static void test_batch_limit_cancel(void **state)
{
        struct fixture *fx = *state;
        struct sched_batch_cancel c = { .done = batch_cancel_done, .userdata = fx };
        size_t n = 10, held = 9, fewer = 7, zero = 0;
        struct sched_job *sj;
        struct sched_outcome o;

        start_sched(fx, 100);
        store_limited_batch(fx, n, 0, "{\"concurrency\":1}");
        assert_int_equal(sched_add_batch(fx->sched, fx->batch, 0), 0);
        assert_true(wait_until(fx, io_pending, &(size_t){ 1 }));
        assert_true(wait_until(fx, limited_count, &held));

        sj = take_now(fx, fx->base);
        /* fails retryably: the next one gets the slot, the retry waits its
         * backoff (no taker promotes it meanwhile) */
        o = (struct sched_outcome) {
                .error = json_pack("{s:s, s:s}", "type", "task_error", "message", "boom"),
                .retryable = true,
        };
        sched_finish(fx->sched, sj, &o);
        sj = take_now(fx, fx->base + 1);

        assert_int_equal(sched_cancel(fx->sched, fx->base + 5, fx->batch), 0);
        wait_finished(fx, fx->base + 5);
        assert_true(wait_until(fx, limited_count, &fewer));

        c.batch = fx->batch;
        assert_int_equal(sched_cancel_batch(fx->sched, &c), 0);
        assert_true(wait_until(fx, batch_cancelled, NULL));
        assert_int_equal(c.result, 0);
        assert_true(wait_until(fx, limited_count, &zero));
        assert_true(wait_until(fx, io_pending, &zero));
        finish_success(fx, sj);
        wait_finished(fx, fx->base + 1);
}

/* A batch cancel is retried while the store refuses it, and answered once
 * stored: the jobs the scheduler dropped end cancelled, none runs. */
static void test_batch_cancel_retried(void **state)
{
        struct fixture *fx = *state;
        struct sched_batch_cancel c = { .done = batch_cancel_done, .userdata = fx };
        size_t n = 3000, zero = 0;
        unsigned refused = 2;
        struct sched_job *sj;
        struct batch *b;
        int64_t first;

        start_sched(fx, 100);
        store_batch_fed(fx, n);
        sj = sched_take(fx->sched, JOB_KIND_IO, no_interrupt, NULL);
        assert_non_null(sj);
        first = sched_job_job(sj)->id;

        set_fail_commits(fx, true);
        c.batch = fx->batch;
        assert_int_equal(sched_cancel_batch(fx->sched, &c), 0);
        assert_true(wait_until(fx, commits_refused, &refused));
        assert_false(fx->batch_cancelled);
        set_fail_commits(fx, false);

        assert_true(wait_until(fx, batch_cancelled, NULL));
        assert_int_equal(c.result, 0);
        assert_true(wait_until(fx, io_pending, &zero));
        finish_success(fx, sj);
        wait_finished(fx, first);
        b = stored_batch(fx);
        assert_int_equal(b->counts[JOB_CANCELLED], n);
        assert_true(b->finished_at > 0);
        batch_free(b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_priority_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_within_priority, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_running_io, setup, teardown),
                cmocka_unit_test_setup_teardown(test_retry_backoff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_max_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_drain_requeues, setup, teardown),
                cmocka_unit_test_setup_teardown(test_iopool_parallel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_runs_in_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_cancel_unloaded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_cancel_while_running, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_cancel_racing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_recovered, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_limit_concurrency, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_limit_rate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_host_concurrency, setup, teardown),
                cmocka_unit_test_setup_teardown(test_host_rate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_limit_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_cancel_retried, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
