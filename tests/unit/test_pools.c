/* daemon/procpool.c and daemon/worker.c: CPU jobs run in separate worker
 * processes (the built futured binary in worker mode), in parallel; a
 * timeout, a cancel or a killed worker fails the job with its reason and the
 * pool replaces the worker; a worker that dies idle is reaped and replaced
 * with no job to notice it; stopping the pool leaves no child behind. An
 * exec job's timeout or cancel kills its command, and the same worker takes
 * the next job. And daemon/frame.c, the framing both sides speak.
 *
 * The tests share one pool on a real store, writer and scheduler, and run in
 * order: the last one stops the pool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "daemon/frame.h"
#include "daemon/procpool.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/exec.h"
#include "tasks/task.h"
#include "tests/unit/tempdb.h"

#define WORKERS 2
#define LONG_N "10000000000"    /* sqrt_sum's largest n: minutes of work */

static struct {
        struct tempdb tmp;
        struct store *store;
        struct store_reader *reader;
        struct writer *writer;
        struct sched *sched;
        struct procpool *pool;

        pthread_mutex_t lock;
        pthread_cond_t cond;
        int64_t finished[64];   /* ids whose end is committed */
        size_t nfinished;
} t = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .cond = PTHREAD_COND_INITIALIZER,
};

static void on_finished(int64_t id, int64_t batch, void *userdata)
{
        pthread_mutex_lock(&t.lock);
        if (t.nfinished < sizeof(t.finished) / sizeof(t.finished[0]))
                t.finished[t.nfinished++] = id;
        pthread_cond_broadcast(&t.cond);
        pthread_mutex_unlock(&t.lock);
}

static struct timespec after(double seconds)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)seconds;
        ts.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

struct submit_wait {
        bool done;
        int result;
        int64_t id;
};

static void submit_done(struct sched_submission *sub)
{
        struct submit_wait *w = sub->userdata;

        pthread_mutex_lock(&t.lock);
        w->done = true;
        w->result = sub->result;
        w->id = sub->job->id;
        pthread_cond_broadcast(&t.cond);
        pthread_mutex_unlock(&t.lock);
}

/* Submits a kind-cpu job and returns its id once it is stored. */
static int64_t submit(const char *task, const char *args, double timeout)
{
        struct submit_wait w = { 0 };
        struct sched_submission sub = { .done = submit_done, .userdata = &w };
        struct timespec ts = after(10);
        struct job *j = job_new();

        assert_non_null(j);
        j->task = strdup(task);
        j->args = strdup(args);
        assert_non_null(j->task);
        assert_non_null(j->args);
        j->kind = JOB_KIND_CPU;
        j->timeout = timeout;
        j->max_attempts = 1;
        sub.job = j;
        assert_int_equal(sched_submit(t.sched, &sub), 0);

        pthread_mutex_lock(&t.lock);
        while (!w.done)
                assert_int_equal(pthread_cond_timedwait(&t.cond, &t.lock, &ts), 0);
        pthread_mutex_unlock(&t.lock);
        assert_int_equal(w.result, 0);
        return w.id;
}

static bool finished(int64_t id)
{
        for (size_t i = 0; i < t.nfinished; i++)
                if (t.finished[i] == id)
                        return true;
        return false;
}

/* Waits for the job's end to be committed and returns it as stored. */
static struct job *wait_job(int64_t id, double seconds)
{
        struct timespec ts = after(seconds);
        struct job *j;

        pthread_mutex_lock(&t.lock);
        while (!finished(id))
                assert_int_equal(pthread_cond_timedwait(&t.cond, &t.lock, &ts), 0);
        pthread_mutex_unlock(&t.lock);
        assert_int_equal(store_get_job(t.reader, id, &j), 0);
        return j;
}

/* The test can see a worker start a job only through the pool's stats. */
static void wait_busy(unsigned n)
{
        struct timespec pause = { .tv_nsec = 5 * 1000 * 1000 };
        struct procpool_stats st;

        for (int i = 0; i < 2000; i++) {
                procpool_get_stats(t.pool, &st);
                if (st.busy >= n)
                        return;
                nanosleep(&pause, NULL);
        }
        fail_msg("the pool never had %u busy workers", n);
}

static uint64_t restarts(void)
{
        struct procpool_stats st;

        procpool_get_stats(t.pool, &st);
        return st.restarts;
}

static bool is_worker(pid_t pid)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);

        for (unsigned i = 0; i < n; i++)
                if (pids[i] == pid)
                        return true;
        return false;
}

/* Whether the pool has its full count of workers, none of them in old. */
static bool replaced_all(const pid_t *old, unsigned n)
{
        pid_t pids[WORKERS];

        if (procpool_pids(t.pool, pids, WORKERS) < WORKERS)
                return false;
        for (unsigned i = 0; i < n; i++)
                if (is_worker(old[i]))
                        return false;
        return true;
}

/* Nothing but the pool can report the change, so it is polled, bounded. */
static void wait_replaced(const pid_t *old, unsigned n)
{
        struct timespec pause = { .tv_nsec = 5 * 1000 * 1000 };

        for (int i = 0; i < 2000; i++) {
                if (replaced_all(old, n))
                        return;
                nanosleep(&pause, NULL);
        }
        fail_msg("the pool did not replace its dead workers");
}

/* The job's stored result or error as JSON; the caller's. */
static json_t *job_json(const char *text)
{
        json_t *v;

        assert_non_null(text);
        v = json_loads(text, JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        return v;
}

static void assert_succeeded_sqrt_sum(struct job *j, pid_t *ret_pid)
{
        json_t *result;

        if (j->state != JOB_SUCCEEDED)
                fail_msg("job %" PRId64 " did not succeed: %s", j->id, j->error ? j->error : "no error");
        result = job_json(j->result);
        assert_true(json_is_real(json_object_get(result, "sum")));
        *ret_pid = (pid_t)json_integer_value(json_object_get(result, "pid"));
        json_decref(result);
}

static void assert_error(struct job *j, enum job_state state, const char *type, const char *message)
{
        json_t *error;

        assert_int_equal(j->state, state);
        error = job_json(j->error);
        assert_string_equal(json_string_value(json_object_get(error, "type")), type);
        if (message)
                assert_non_null(strstr(json_string_value(json_object_get(error, "message")), message));
        json_decref(error);
}

/* A quick job must succeed, on a worker that is not this process. */
static void assert_pool_works(void)
{
        struct job *j = wait_job(submit("sqrt_sum", "{\"n\": 1000}", 10), 30);
        pid_t pid;

        assert_succeeded_sqrt_sum(j, &pid);
        assert_true(is_worker(pid));
        job_free(j);
}

static int setup(void **state)
{
        struct store_options so = { .path = t.tmp.path, .sync_full = false };
        struct sched_options sco = {
                .max_pending = 1000,
                .retry_base = 0.1,
                .retry_max = 1,
                .on_finished = on_finished,
        };
        struct procpool_options po = { .workers = WORKERS, .exe = FUTURED_BIN };
        static const struct exec_command commands[] = {
                /* The shell's pid is the command's; it becomes sleep. */
                { "hang", "/bin/sh -c \"echo $$ > hang.pid; exec /bin/sleep 60\"" },
                { "ppid", "/bin/sh -c \"echo $PPID\"" },
        };
        char err[256];

        if (tempdb_make(&t.tmp, "test_pools") < 0)
                return -1;
        /* Before the pool starts: it hands the settings to its workers. */
        if (exec_configure(&(struct exec_options){ .commands = commands, .n_commands = 2,
                                                   .work_dir = t.tmp.dir },
                           err, sizeof(err)) < 0) {
                fprintf(stderr, "exec_configure: %s\n", err);
                return -1;
        }
        if (store_open(&so, &t.store) < 0 || store_reader_open(t.store, &t.reader) < 0 ||
            writer_start(t.store, &t.writer) < 0)
                return -1;
        sco.writer = t.writer;
        sco.store = t.store;
        if (sched_new(&sco, &t.sched) < 0 || procpool_start(t.sched, &po, &t.pool) < 0)
                return -1;
        return 0;
}

static int teardown(void **state)
{
        if (t.sched)
                sched_drain(t.sched, 0);
        procpool_stop(t.pool);
        writer_stop(t.writer);
        sched_free(t.sched);
        store_reader_close(t.reader);
        store_close(t.store);
        exec_cleanup();
        return tempdb_remove(&t.tmp);
}

static void test_frame(void **state)
{
        static const uint8_t huge[] = { 0x01, 0x00, 0x00, 0x01 };       /* FRAME_MAX + 1 */
        int sv[2];
        char *msg;
        size_t len;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(frame_write(sv[0], "{\"a\":1}", 7), 0);
        assert_int_equal(frame_write(sv[0], "", 0), 0);
        assert_int_equal(frame_write(sv[0], "x", (size_t)FRAME_MAX + 1), -EMSGSIZE);
        assert_int_equal(frame_read(sv[1], &msg, &len), 0);
        assert_int_equal(len, 7);
        assert_string_equal(msg, "{\"a\":1}");
        free(msg);
        assert_int_equal(frame_read(sv[1], &msg, &len), 0);
        assert_int_equal(len, 0);
        free(msg);
        assert_int_equal(write(sv[0], huge, sizeof(huge)), sizeof(huge));
        assert_int_equal(frame_read(sv[1], &msg, &len), -EMSGSIZE);
        /* A header cut short, then nothing: end of file mid-message. */
        assert_int_equal(write(sv[0], huge, 2), 2);
        close(sv[0]);
        assert_int_equal(frame_read(sv[1], &msg, &len), -EPROTO);
        assert_int_equal(frame_read(sv[1], &msg, &len), -EPIPE);
        /* A peer gone is an error, not SIGPIPE. */
        assert_int_equal(frame_write(sv[1], "x", 1), -EPIPE);
        close(sv[1]);

        /* A message stalled halfway: the read gives up once the timeout
         * passes in silence, rather than block. */
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(frame_set_read_timeout(sv[1], 0.1), 0);
        assert_int_equal(write(sv[0], "\0\0\0\x0a{\"a\"", 8), 8);
        assert_int_equal(frame_read(sv[1], &msg, &len), -EAGAIN);
        close(sv[0]);
        close(sv[1]);
}

static void test_bad_exe(void **state)
{
        struct procpool_options po = { .workers = 1, .exe = "/nonexistent/futured" };
        struct procpool *p = NULL;

        assert_int_equal(procpool_start(t.sched, &po, &p), -ENOENT);
        assert_null(p);
}

static void test_runs_in_worker(void **state)
{
        struct job *j = wait_job(submit("sqrt_sum", "{\"n\": 1000}", 10), 30);
        pid_t pid;

        assert_succeeded_sqrt_sum(j, &pid);
        assert_int_not_equal(pid, getpid());
        assert_true(is_worker(pid));
        assert_true(procpool_alive(t.pool));
        job_free(j);
}

static void test_parallel(void **state)
{
        int64_t a = submit("sqrt_sum", "{\"n\": 200000000}", 120);
        int64_t b = submit("sqrt_sum", "{\"n\": 200000000}", 120);
        struct job *ja, *jb;
        pid_t pa, pb;

        wait_busy(WORKERS);
        ja = wait_job(a, 120);
        jb = wait_job(b, 120);
        assert_succeeded_sqrt_sum(ja, &pa);
        assert_succeeded_sqrt_sum(jb, &pb);
        assert_int_not_equal(pa, pb);
        /* Their runs overlapped. */
        assert_true(ja->started_at < jb->finished_at && jb->started_at < ja->finished_at);
        job_free(ja);
        job_free(jb);
}

/* Workers killed while idle are reaped (no zombie left) and replaced at
 * once, though no job comes to find them dead. */
static void test_idle_death(void **state)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);
        uint64_t before = restarts();
        char path[64];

        assert_int_equal(n, WORKERS);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(kill(pids[i], SIGKILL), 0);
        wait_replaced(pids, n);
        assert_int_equal(restarts(), before + n);
        for (unsigned i = 0; i < n; i++) {
                snprintf(path, sizeof(path), "/proc/%d/stat", (int)pids[i]);
                assert_int_equal(access(path, F_OK), -1);
        }
        assert_true(procpool_alive(t.pool));
        assert_pool_works();
}

/* A job past its timeout has its worker killed and replaced at once, busy
 * computing (a long sqrt_sum) or unable to answer at all (stopped). */
static void test_timeout_kills(void **state)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);
        uint64_t before = restarts();
        struct job *j = wait_job(submit("sqrt_sum", "{\"n\": " LONG_N "}", 0.3), 30);

        assert_error(j, JOB_FAILED, "timeout", "timed out after 0.3 s");
        assert_int_equal(restarts(), before + 1);
        job_free(j);
        assert_pool_works();

        n = procpool_pids(t.pool, pids, WORKERS);
        assert_int_equal(n, WORKERS);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(kill(pids[i], SIGSTOP), 0);
        j = wait_job(submit("sqrt_sum", "{\"n\": 1000}", 0.3), 30);
        for (unsigned i = 0; i < n; i++)
                kill(pids[i], SIGCONT);

        assert_error(j, JOB_FAILED, "timeout", "timed out after 0.3 s");
        assert_int_equal(restarts(), before + 2);
        job_free(j);
        assert_pool_works();
        assert_pool_works();
}

static void test_cancel_running(void **state)
{
        uint64_t before = restarts();
        int64_t id = submit("sqrt_sum", "{\"n\": " LONG_N "}", 600);
        struct job *j;

        wait_busy(1);
        assert_int_equal(sched_cancel(t.sched, id, 0), -EINPROGRESS);
        j = wait_job(id, 30);
        assert_int_equal(j->state, JOB_CANCELLED);
        assert_int_equal(restarts(), before + 1);
        job_free(j);
        assert_pool_works();
}

/* The hang command's pid, once it has written it. */
static pid_t hang_pid(void)
{
        struct timespec pause = { .tv_nsec = 5 * 1000 * 1000 };
        char path[128];
        long pid = 0;

        snprintf(path, sizeof(path), "%s/hang.pid", t.tmp.dir);
        for (int i = 0; i < 2000 && pid == 0; i++) {
                FILE *f = fopen(path, "re");

                if (!f || fscanf(f, "%ld", &pid) != 1)
                        nanosleep(&pause, NULL);
                if (f)
                        fclose(f);
        }
        if (pid == 0)
                fail_msg("the hang command never started");
        unlink(path);
        return (pid_t)pid;
}

/* After a stopped exec job: no worker was replaced, the command is gone
 * (its worker reaped it), and the next job runs on one of the same workers. */
static void assert_workers_kept(const pid_t *old, unsigned n, uint64_t before, pid_t command)
{
        struct job *j;
        json_t *result;
        pid_t pid;

        assert_int_equal(restarts(), before);
        for (unsigned i = 0; i < n; i++)
                assert_true(is_worker(old[i]));
        assert_int_equal(kill(command, 0), -1);
        assert_int_equal(errno, ESRCH);

        j = wait_job(submit("exec", "{\"command\": \"ppid\"}", 10), 30);
        assert_int_equal(j->state, JOB_SUCCEEDED);
        result = job_json(j->result);
        pid = (pid_t)strtol(json_string_value(json_object_get(result, "stdout")), NULL, 10);
        json_decref(result);
        job_free(j);
        assert_true(is_worker(pid));
}

static void test_exec_timeout_keeps_worker(void **state)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);
        uint64_t before = restarts();
        double t0 = task_monotonic();
        struct job *j;

        assert_int_equal(n, WORKERS);
        j = wait_job(submit("exec", "{\"command\": \"hang\"}", 0.5), 30);
        assert_error(j, JOB_FAILED, "timeout", "timed out after 0.5 s");
        assert_true(task_monotonic() - t0 < 3.0);
        job_free(j);
        assert_workers_kept(pids, n, before, hang_pid());
}

static void test_exec_cancel_keeps_worker(void **state)
{
        pid_t pids[WORKERS], command;
        unsigned n = procpool_pids(t.pool, pids, WORKERS);
        uint64_t before = restarts();
        int64_t id = submit("exec", "{\"command\": \"hang\"}", 600);
        struct job *j;

        assert_int_equal(n, WORKERS);
        command = hang_pid();
        assert_int_equal(sched_cancel(t.sched, id, 0), -EINPROGRESS);
        j = wait_job(id, 30);
        assert_int_equal(j->state, JOB_CANCELLED);
        job_free(j);
        assert_workers_kept(pids, n, before, command);
}

/* Killing every worker: the busy one fails its job as crashed, the idle one
 * dies unseen by any job; both are replaced at once, each counted once, and
 * the next jobs run. */
static void test_crash(void **state)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);
        uint64_t before = restarts();
        int64_t id = submit("sqrt_sum", "{\"n\": " LONG_N "}", 600);
        int64_t a, b;
        struct job *j;
        pid_t pa, pb;

        assert_int_equal(n, WORKERS);
        wait_busy(1);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(kill(pids[i], SIGKILL), 0);
        j = wait_job(id, 30);
        assert_error(j, JOB_FAILED, "crashed", "worker killed by signal 9 (SIGKILL)");
        job_free(j);
        /* Before any job could go to a worker still dying of its SIGKILL. */
        wait_replaced(pids, n);
        assert_int_equal(restarts(), before + n);

        a = submit("sqrt_sum", "{\"n\": 1000}", 30);
        b = submit("sqrt_sum", "{\"n\": 1000}", 30);
        j = wait_job(a, 30);
        assert_succeeded_sqrt_sum(j, &pa);
        job_free(j);
        j = wait_job(b, 30);
        assert_succeeded_sqrt_sum(j, &pb);
        job_free(j);
        assert_true(procpool_alive(t.pool));
        assert_int_equal(restarts(), before + n);
}

static void test_stop_leaves_no_child(void **state)
{
        pid_t pids[WORKERS];
        unsigned n = procpool_pids(t.pool, pids, WORKERS);

        assert_int_equal(n, WORKERS);
        sched_drain(t.sched, 0);
        procpool_stop(t.pool);
        t.pool = NULL;
        assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
        assert_int_equal(errno, ECHILD);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(kill(pids[i], 0), -1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_frame),
                cmocka_unit_test(test_bad_exe),
                cmocka_unit_test(test_runs_in_worker),
                cmocka_unit_test(test_parallel),
                cmocka_unit_test(test_idle_death),
                cmocka_unit_test(test_timeout_kills),
                cmocka_unit_test(test_cancel_running),
                cmocka_unit_test(test_exec_timeout_keeps_worker),
                cmocka_unit_test(test_exec_cancel_keeps_worker),
                cmocka_unit_test(test_crash),
                cmocka_unit_test(test_stop_leaves_no_child),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
