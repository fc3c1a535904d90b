/* The I/O pool. Each thread owns a slot; the scheduler's interrupt reaches a
 * run through the slot: its lock guards the run's task_ctx and an
 * "interrupted" flag, so an interrupt that comes before the ctx exists is
 * not lost (the ctx is stopped as soon as it is made). The flag is cleared
 * only between runs, when no job is assigned to the slot and the scheduler
 * cannot call in.
 *
 * Threads wait at a start gate until all of them exist, so a failed start
 * can send them home without draining the scheduler.
 *
 * A failed run is a "timeout" only when its context told the task that the
 * deadline passed; an error of the task's own that comes just past the
 * deadline stays the task's. */
#include "daemon/iopool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "daemon/log.h"
#include "daemon/scheduler.h"
#include "tasks/task.h"

struct io_slot {
        struct iopool *pool;
        pthread_t thread;
        pthread_mutex_t lock;
        struct task_ctx *ctx;           /* the current run's, or NULL */
        bool interrupted;
};

enum gate {
        GATE_WAIT,
        GATE_OPEN,
        GATE_ABORT,
};

struct iopool {
        struct sched *sched;
        unsigned size;
        atomic_uint busy;
        atomic_uint alive;
        pthread_mutex_t gate_lock;
        pthread_cond_t gate_cond;
        enum gate gate;
        struct io_slot slots[];
};

static void slot_interrupt(void *arg)
{
        struct io_slot *slot = arg;

        pthread_mutex_lock(&slot->lock);
        slot->interrupted = true;
        if (slot->ctx)
                task_ctx_stop(slot->ctx);
        pthread_mutex_unlock(&slot->lock);
}

/* The job's error object from the task's: type and message, then its detail
 * fields (which cannot override those two); err->detail is consumed. NULL on
 * ENOMEM. */
static json_t *error_from_task(struct task_error *err)
{
        json_t *e = sched_error_new(err->type, "%s", err->message);

        if (e && err->detail)
                json_object_update_missing(e, err->detail);
        json_decref(err->detail);
        err->detail = NULL;
        return e;
}

static void outcome_fail(struct sched_outcome *o, const char *type, const char *message,
                         bool retryable)
{
        o->error = sched_error_new(type, "%s", message);
        o->retryable = retryable;
}

/* Runs job's task in slot with the job's timeout and fills o. */
static void run_job(struct io_slot *slot, const struct job *job, struct sched_outcome *o)
{
        struct task_error err = { .type = "task_error" };
        const struct task *t = task_find(job->task);
        struct task_ctx *ctx = NULL;
        json_t *args, *result = NULL;
        json_error_t jerr;
        int r;

        if (!t) {
                outcome_fail(o, "task_error", "no such task", false);
                return;
        }
        args = json_loads(job->args, 0, &jerr);
        if (!args) {
                outcome_fail(o, "task_error", "stored args are not JSON", false);
                return;
        }

        pthread_mutex_lock(&slot->lock);
        r = task_ctx_new(task_monotonic() + job->timeout, &ctx);
        if (r == 0) {
                slot->ctx = ctx;
                if (slot->interrupted)
                        task_ctx_stop(ctx);
        }
        pthread_mutex_unlock(&slot->lock);
        if (r < 0) {
                json_decref(args);
                outcome_fail(o, "task_error", "out of memory", true);
                return;
        }

        r = t->run(ctx, args, &result, &err);
        if (r >= 0) {
                o->result = result ? result : json_null();
        } else if (task_ctx_timed_out(ctx)) {
                json_decref(err.detail);
                o->error = sched_error_new("timeout", "timed out after %g s", job->timeout);
                o->retryable = true;
        } else {
                o->error = error_from_task(&err);
                o->retryable = err.retryable;
        }

        pthread_mutex_lock(&slot->lock);
        slot->ctx = NULL;
        pthread_mutex_unlock(&slot->lock);
        task_ctx_free(ctx);
        json_decref(args);
}

static bool gate_pass(struct iopool *p)
{
        enum gate g;

        pthread_mutex_lock(&p->gate_lock);
        while (p->gate == GATE_WAIT)
                pthread_cond_wait(&p->gate_cond, &p->gate_lock);
        g = p->gate;
        pthread_mutex_unlock(&p->gate_lock);
        return g == GATE_OPEN;
}

static void *slot_main(void *arg)
{
        struct io_slot *slot = arg;
        struct iopool *p = slot->pool;
        struct sched_job *sj;

        if (!gate_pass(p))
                return NULL;
        for (;;) {
                struct sched_outcome o = { .result = NULL };

                /* no job is assigned to the slot now, so nobody calls in */
                slot->interrupted = false;
                sj = sched_take(p->sched, JOB_KIND_IO, slot_interrupt, slot);
                if (!sj)
                        break;
                atomic_fetch_add(&p->busy, 1);
                run_job(slot, sched_job_job(sj), &o);
                sched_finish(p->sched, sj, &o);
                atomic_fetch_sub(&p->busy, 1);
        }
        atomic_fetch_sub(&p->alive, 1);
        return NULL;
}

static void gate_set(struct iopool *p, enum gate g)
{
        pthread_mutex_lock(&p->gate_lock);
        p->gate = g;
        pthread_cond_broadcast(&p->gate_cond);
        pthread_mutex_unlock(&p->gate_lock);
}

static void iopool_free(struct iopool *p, unsigned started)
{
        for (unsigned i = 0; i < started; i++)
                pthread_join(p->slots[i].thread, NULL);
        for (unsigned i = 0; i < p->size; i++)
                pthread_mutex_destroy(&p->slots[i].lock);
        pthread_cond_destroy(&p->gate_cond);
        pthread_mutex_destroy(&p->gate_lock);
        free(p);
}

int iopool_start(struct sched *s, unsigned threads, struct iopool **ret)
{
        struct iopool *p;
        unsigned i;
        int r = 0;

        if (threads == 0)
                return -EINVAL;
        p = calloc(1, sizeof(*p) + threads * sizeof(p->slots[0]));
        if (!p)
                return -ENOMEM;
        p->sched = s;
        p->size = threads;
        atomic_init(&p->busy, 0);
        atomic_init(&p->alive, threads);
        pthread_mutex_init(&p->gate_lock, NULL);
        pthread_cond_init(&p->gate_cond, NULL);
        for (i = 0; i < threads; i++) {
                p->slots[i].pool = p;
                pthread_mutex_init(&p->slots[i].lock, NULL);
        }

        for (i = 0; i < threads; i++) {
                r = -pthread_create(&p->slots[i].thread, NULL, slot_main, &p->slots[i]);
                if (r < 0)
                        break;
        }
        if (r < 0) {
                gate_set(p, GATE_ABORT);
                iopool_free(p, i);
                return log_errno(LOG_ERR, r, "starting I/O thread %u of %u", i + 1, threads);
        }
        gate_set(p, GATE_OPEN);
        *ret = p;
        return 0;
}

void iopool_stop(struct iopool *p)
{
        if (!p)
                return;
        iopool_free(p, p->size);
}

void iopool_get_stats(struct iopool *p, struct iopool_stats *ret)
{
        ret->size = p->size;
        ret->busy = atomic_load(&p->busy);
}

bool iopool_alive(struct iopool *p)
{
        return atomic_load(&p->alive) == p->size;
}
