/* The purge thread. It sleeps on a condvar until the next period or stop;
 * a purge is a chain of WOP_PURGE ops, each pushed only after the one
 * before committed, so at most one is in flight and the writer interleaves
 * submissions between them. A failed purge is logged and tried again at the
 * next period. */
#include "daemon/retention.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "daemon/log.h"

/* The period is this fraction of the retention, within these bounds: a
 * short retention (tests, a tight disk) is honoured to within a fraction,
 * a long one costs a query a minute. */
#define RETENTION_PERIOD_FRACTION 0.25
#define RETENTION_PERIOD_MIN 0.1
#define RETENTION_PERIOD_MAX 60.0

struct retention {
        struct writer *writer;
        double seconds;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;    /* stop asked, or the op in flight is done */
        bool stopping;
        bool op_done;
        struct wop op;
};

static void purge_done(struct wop *op)
{
        struct retention *r = op->userdata;

        pthread_mutex_lock(&r->lock);
        r->op_done = true;
        pthread_cond_signal(&r->wake);
        pthread_mutex_unlock(&r->lock);
}

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One op, waited for even when stopping: the writer still holds it.
 * Called with the lock held. Returns how many jobs went, or -EIO. */
static int purge_chunk(struct retention *r, int64_t cutoff)
{
        r->op = (struct wop){ .type = WOP_PURGE, .cutoff = cutoff, .done = purge_done,
                              .userdata = r };
        r->op_done = false;
        pthread_mutex_unlock(&r->lock);
        writer_push(r->writer, &r->op);
        pthread_mutex_lock(&r->lock);
        while (!r->op_done)
                pthread_cond_wait(&r->wake, &r->lock);
        return r->op.result < 0 ? r->op.result : (int)r->op.count;
}

static void *retention_main(void *arg)
{
        struct retention *r = arg;
        double period = r->seconds * RETENTION_PERIOD_FRACTION;
        struct timespec next;
        size_t total;
        int n;

        if (period < RETENTION_PERIOD_MIN)
                period = RETENTION_PERIOD_MIN;
        if (period > RETENTION_PERIOD_MAX)
                period = RETENTION_PERIOD_MAX;
        pthread_mutex_lock(&r->lock);
        while (!r->stopping) {
                int64_t cutoff = now_ms() - (int64_t)(r->seconds * 1000);

                total = 0;
                do {
                        n = purge_chunk(r, cutoff);
                        if (n > 0)
                                total += (size_t)n;
                } while (n == WRITER_CHUNK && !r->stopping);
                if (n < 0)
                        log_errno(LOG_WARNING, n, "retention: purge failed; trying again later");
                else if (total > 0)
                        log_debug("retention: purged %zu finished jobs", total);

                clock_gettime(CLOCK_MONOTONIC, &next);
                next.tv_sec += (time_t)period;
                next.tv_nsec += (long)((period - (double)(time_t)period) * 1e9);
                if (next.tv_nsec >= 1000000000) {
                        next.tv_sec++;
                        next.tv_nsec -= 1000000000;
                }
                while (!r->stopping &&
                       pthread_cond_clockwait(&r->wake, &r->lock, CLOCK_MONOTONIC, &next) == 0)
                        continue;
        }
        pthread_mutex_unlock(&r->lock);
        return NULL;
}

int retention_start(struct writer *w, double seconds, struct retention **ret)
{
        struct retention *r;
        int k;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->writer = w;
        r->seconds = seconds;
        k = -pthread_mutex_init(&r->lock, NULL);
        if (k < 0)
                goto fail_free;
        k = -pthread_cond_init(&r->wake, NULL);
        if (k < 0)
                goto fail_lock;
        k = -pthread_create(&r->thread, NULL, retention_main, r);
        if (k < 0)
                goto fail_cond;
        *ret = r;
        return 0;

fail_cond:
        pthread_cond_destroy(&r->wake);
fail_lock:
        pthread_mutex_destroy(&r->lock);
fail_free:
        free(r);
        return k;
}

void retention_stop(struct retention *r)
{
        if (!r)
                return;
        pthread_mutex_lock(&r->lock);
        r->stopping = true;
        pthread_cond_broadcast(&r->wake);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->thread, NULL);
        pthread_cond_destroy(&r->wake);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
