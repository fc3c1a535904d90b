/* The scheduler and the I/O pool against a real store and writer in a
 * temporary directory. Nothing sleeps: the test waits on its own condvar,
 * woken by submission done(), on_finished() and the writer's commit hook,
 * each wait with a bounded deadline. */
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

#include "daemon/iopool.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/task.h"

#define MAX_FINISHED 64
#define WAIT_S 5.0

struct fixture {
        char dir[64];
        char path[96];
        struct store *store;
        struct store_reader *reader;
        struct writer *writer;
        struct sched *sched;
        struct iopool *pool;

        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC */
        int64_t finished[MAX_FINISHED];
        size_t nfinished;
        unsigned commits;
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
        pthread_mutex_lock(&current->lock);
        current->commits++;
        pthread_cond_broadcast(&current->cond);
        pthread_mutex_unlock(&current->lock);
        return 0;
}

static void on_finished(int64_t id, void *userdata)
{
        struct fixture *fx = userdata;

        pthread_mutex_lock(&fx->lock);
        assert_true(fx->nfinished < MAX_FINISHED);
        fx->finished[fx->nfinished++] = id;
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
        struct timespec ts;
        bool ok;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t)WAIT_S;
        pthread_mutex_lock(&fx->lock);
        while (!(ok = pred(fx, arg)))
                if (pthread_cond_timedwait(&fx->cond, &fx->lock, &ts) == ETIMEDOUT) {
                        ok = pred(fx, arg);
                        break;
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
        for (size_t i = 0; i < fx->nfinished; i++)
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
        snprintf(fx->dir, sizeof(fx->dir), "/tmp/futured-test-sched-XXXXXX");
        assert_non_null(mkdtemp(fx->dir));
        snprintf(fx->path, sizeof(fx->path), "%s/jobs.db", fx->dir);
        assert_int_equal(store_open(&(struct store_options) { .path = fx->path }, &fx->store), 0);
        assert_int_equal(store_reader_open(fx->store, &fx->reader), 0);
        assert_int_equal(writer_start(fx->store, &fx->writer), 0);

        pthread_mutex_init(&fx->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&fx->cond, &attr);
        pthread_condattr_destroy(&attr);

        current = fx;
        writer_commit_hook = commit_hook;
        *state = fx;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *fx = *state;
        static const char *const suffixes[] = { "", "-wal", "-shm" };
        char p[128];

        if (fx->sched)
                sched_drain(fx->sched, 0);
        iopool_stop(fx->pool);
        writer_stop(fx->writer);
        writer_commit_hook = NULL;
        current = NULL;
        sched_free(fx->sched);
        store_reader_close(fx->reader);
        store_close(fx->store);
        for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
                snprintf(p, sizeof(p), "%s%s", fx->path, suffixes[i]);
                unlink(p);
        }
        rmdir(fx->dir);
        pthread_cond_destroy(&fx->cond);
        pthread_mutex_destroy(&fx->lock);
        free(fx);
        return 0;
}

static void start_sched(struct fixture *fx, size_t max_pending)
{
        struct sched_options o = {
                .writer = fx->writer,
                .max_pending = max_pending,
                .retry_base = 0.05,
                .retry_max = 1,
                .on_finished = on_finished,
                .userdata = fx,
        };

        assert_int_equal(sched_new(&o, &fx->sched), 0);
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
        assert_int_equal(sched_cancel(fx->sched, id), 0);
        wait_finished(fx, id);
        assert_int_equal(sched_cancel(fx->sched, id), -ENOENT);
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
        assert_int_equal(sched_cancel(fx->sched, id), -EINPROGRESS);
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

        take_and_fail(fx, id, 1);
        t0 = now_s();
        /* backoff 0.05 s +-20 % */
        take_and_fail(fx, id, 2);
        assert_true(now_s() - t0 >= 0.039);
        t0 = now_s();
        /* 0.1 s +-20 %; the third failure is the last attempt */
        take_and_fail(fx, id, 3);
        assert_true(now_s() - t0 >= 0.079);
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

        assert_int_equal(sched_cancel(fx->sched, ts[0].id), 0);
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
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
