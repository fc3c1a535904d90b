/* The run context: how a running task hears that it must stop and how it
 * waits. One mutex guards the stop flag and the timed-out latch; the latch
 * is set only when the task is told of the deadline, so a pool can tell a run
 * that gave up for its deadline from one that failed on its own just past
 * it. The condvar runs on CLOCK_MONOTONIC so a wall-clock jump neither
 * shortens nor stretches a sleep. The waker is called under the lock, so
 * clearing it is enough to know it no longer runs. The deadline never
 * changes after task_ctx_new(), so it is read without the lock. */
#include "tasks/task.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct task_ctx {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopped;
        bool timed_out;
        double deadline;
        void (*waker)(void *arg);
        void *waker_arg;
};

double task_monotonic(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int task_fail(struct task_error *err, const char *type, bool retryable,
              const char *fmt, ...)
{
        va_list ap;

        err->type = type;
        err->retryable = retryable;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        return -EIO;
}

int task_ctx_new(double deadline, struct task_ctx **ret)
{
        struct task_ctx *c;
        pthread_condattr_t attr;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->deadline = deadline;

        r = pthread_condattr_init(&attr);
        if (r != 0)
                goto fail;
        r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
                r = pthread_cond_init(&c->cond, &attr);
        pthread_condattr_destroy(&attr);
        if (r != 0)
                goto fail;
        r = pthread_mutex_init(&c->lock, NULL);
        if (r != 0) {
                pthread_cond_destroy(&c->cond);
                goto fail;
        }
        *ret = c;
        return 0;
fail:
        free(c);
        return -r;
}

void task_ctx_free(struct task_ctx *c)
{
        if (!c)
                return;
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

void task_ctx_stop(struct task_ctx *c)
{
        pthread_mutex_lock(&c->lock);
        c->stopped = true;
        pthread_cond_broadcast(&c->cond);
        if (c->waker)
                c->waker(c->waker_arg);
        pthread_mutex_unlock(&c->lock);
}

void task_ctx_set_waker(struct task_ctx *c, void (*fn)(void *arg), void *arg)
{
        pthread_mutex_lock(&c->lock);
        c->waker = fn;
        c->waker_arg = arg;
        pthread_mutex_unlock(&c->lock);
}

double task_ctx_deadline(const struct task_ctx *c)
{
        return c->deadline;
}

/* Asked to stop, or out of time: either way the task should give up. */
bool task_ctx_stopped(struct task_ctx *c)
{
        bool stopped;

        pthread_mutex_lock(&c->lock);
        if (!c->stopped && c->deadline > 0 && task_monotonic() >= c->deadline)
                c->timed_out = true;
        stopped = c->stopped || c->timed_out;
        pthread_mutex_unlock(&c->lock);
        return stopped;
}

bool task_ctx_timed_out(struct task_ctx *c)
{
        bool timed_out;

        pthread_mutex_lock(&c->lock);
        timed_out = c->timed_out;
        pthread_mutex_unlock(&c->lock);
        return timed_out;
}

static struct timespec timespec_from(double t)
{
        struct timespec ts;
        double sec = floor(t);

        ts.tv_sec = (time_t)sec;
        ts.tv_nsec = (long)((t - sec) * 1e9);
        if (ts.tv_nsec >= 1000000000L)
                ts.tv_nsec = 999999999L;
        return ts;
}

int task_ctx_sleep(struct task_ctx *c, double seconds)
{
        double end = task_monotonic() + (seconds > 0 ? seconds : 0);
        bool by_deadline = c->deadline > 0 && c->deadline <= end;
        struct timespec ts;
        int r = 0;

        if (by_deadline)
                end = c->deadline;
        ts = timespec_from(end);

        pthread_mutex_lock(&c->lock);
        while (!c->stopped && task_monotonic() < end)
                if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) == ETIMEDOUT)
                        break;
        if (c->stopped)
                r = -ECANCELED;
        else if (by_deadline) {
                c->timed_out = true;
                r = -ETIMEDOUT;
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}
