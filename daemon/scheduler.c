/* The scheduler's memory of live jobs.
 *
 * Invariants, all under s->lock:
 * - Every job from the commit of its submission (or its recovery, or the
 *   load of its batch's page) to the commit of its end is in the id map,
 *   and in exactly one place: a ready heap of its kind (priority desc, id
 *   asc), a delayed heap of its kind (due asc), a pool (running), or
 *   at the writer (requeueing or finishing). Each heap entry knows its
 *   position, so cancel is O(log n).
 * - Each heap of a kind has room for every live job of that kind, reserved
 *   at submission or load, so moving a job between heaps never allocates
 *   and cannot fail inside a writer callback.
 * - A job has at most two ops at the writer: its START and then its end
 *   (FINISH or REQUEUE), which need not wait for the START's commit. The
 *   writer reads job fields nobody changes while they are queued (the
 *   attempts, which a drained run gives back, travel in the op).
 * - Ops are pushed under the lock (writer_push only takes the writer's queue
 *   lock); submitters' done() and on_finished() are called without it, as
 *   they may take locks of their own that are held around sched_submit().
 * Takers sleep on a condvar of their kind, with a deadline only when a
 * delayed job of that kind is due; stored times are wall-clock ms, turned
 * into CLOCK_MONOTONIC ones (sj->due, steady_ms()) when a job is delayed,
 * so a clock stepped back holds nothing up.
 *
 * Batches (one struct sched_batch each, while the scheduler knows it):
 * - Its jobs with id <= cursor have been read from the store; those still
 *   unfinished are in the map. A job above the cursor is pending in the
 *   store and nowhere here, unless it is a tombstone: a job cancelled while
 *   not loaded, kept in the map (finishing, then gone) until the cursor
 *   passes its id, so that a page read before its end was committed skips
 *   it rather than run it, and a second cancel finds it.
 * - The feeder thread reads one page at a time, outside the lock, and
 *   inserts it under the lock. A batch is on its want list while fewer
 *   than BATCH_PAGE / 2 of its jobs are queued, it is not closed, no page
 *   of it is being read and the scheduler is not stopping.
 * - Closed (a short page came, or the batch was cancelled): nothing more
 *   is read; the record goes once nothing of it is held. A batch cancel
 *   drops its queued jobs (pending in the store, where WOP_BATCH_CANCEL
 *   ends them: the writer retries it until it is stored, since nothing
 *   here would load them again) and cancels its others one by one.
 * - Batch jobs do not count toward max_pending; the pages bound them.
 *   Batches are few next to jobs: they are found by a walk of a list.
 *
 * Limits (a batch's "limits", the per-host ones of http jobs): a job is
 * attached to at most one limiter of each sort, from the moment it enters
 * the map; its batch's limits are read by the feeder before its first page.
 * - A due job goes through gate_job(): it is released (counted in every
 *   limiter of it, into the ready heap, or into the delayed heap until the
 *   rate lets it start) or held in the waiting heap of the first limiter
 *   that cannot release it or has others waiting (no overtaking). Takers
 *   thus never see a job they may not run, and a held job holds no thread.
 * - A limiter that could release has nobody waiting: every change of its
 *   counts (a start, an end, a released job cancelled) is followed by
 *   lim_settle(), which releases its waiting jobs while it can.
 * - A job delayed for a retry is not released: it goes through the gate
 *   again when due, so a retry re-enters the limits. */
#include "daemon/scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/limiter.h"
#include "daemon/log.h"

#define MAP_MIN_BUCKETS 1024
/* Jobs of a batch loaded at most at once; the next page is read when
 * fewer than half of it is left. */
#define BATCH_PAGE 1024
/* Jobs of one batch held at most: queued, running, and finished but not
 * yet committed. Without it a batch of fast jobs runs ahead of the writer
 * and its uncommitted ends pile up in memory. */
#define BATCH_HELD_MAX (2 * BATCH_PAGE)
/* Host limiters are looked up in a table of this many chains. */
#define HOST_BUCKETS 256
/* Seconds the feeder waits after the store refused a read. */
#define FEED_RETRY_S 1.0
/* Seconds sched_drain() waits for the writer to commit the requeues of the
 * runs it interrupted. */
#define DRAIN_OPS_WAIT 5.0
#define CANCELLED_ERROR "{\"type\":\"cancelled\",\"message\":\"cancelled by request\"}"
#define NO_RESULT_ERROR "{\"type\":\"task_error\",\"message\":\"the run reported neither result nor error\"}"

/* Seconds of a run or a queue wait: stored times are whole ms, so the first
 * bucket is 1 ms; the last is past the longest sensible timeout. */
static const double timing_bounds[] = {
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
        120, 300, 600, 1800, 3600,
};

enum sj_where {
        SJ_SUBMITTING,  /* SUBMIT at the writer; not in the map yet */
        SJ_READY,
        SJ_DELAYED,
        SJ_WAITING,     /* held back by a limiter, in its waiting heap */
        SJ_RUNNING,
        SJ_REQUEUEING,  /* REQUEUE at the writer */
        SJ_FINISHING,   /* end decided; FINISH at the writer or about to be */
        SJ_GONE,        /* a tombstone whose end is committed */
};

/* Why the scheduler asked a run to stop. */
enum sj_stop {
        SJ_STOP_NONE,
        SJ_STOP_CANCEL,
        SJ_STOP_DRAIN,
};

enum { LIM_BATCH, LIM_HOST, LIM__COUNT };

struct sched_job {
        struct sched *sched;
        struct job *job;                /* owned */
        enum sj_where where;
        enum sj_stop stop;
        size_t heap_pos;
        struct sched_job *hash_next;
        struct sched_submission *sub;   /* while SJ_SUBMITTING */
        void (*interrupt)(void *arg);
        void *interrupt_arg;
        /* A run's end need not wait for its start to be stored: the writer
         * keeps their order (and may fold the START into the end). */
        struct wop start_op;            /* START */
        struct wop op;                  /* REQUEUE or FINISH */
        bool start_busy, op_busy;
        struct sched_batch *batch;      /* NULL outside batches */
        struct sched_job *batch_prev, *batch_next;      /* batch->jobs */
        bool tomb;                      /* cancelled before it was loaded */
        struct sched_job *tomb_next;    /* batch->tombs */
        struct sched_limiter *lim[LIM__COUNT];  /* attached, or NULL */
        struct sched_limiter *waiting_in;       /* while SJ_WAITING */
        bool released;                  /* counted in its limiters, not started */
        /* While SJ_DELAYED: the steady_ms() from which it goes on. The
         * stored ready_at is wall-clock; a heap on it would hold every
         * delayed job for as long as the clock was stepped back. */
        int64_t due;
};

struct sched_batch {
        int64_t id;
        int priority;
        int64_t cursor;                 /* highest job id read so far */
        size_t queued;                  /* its jobs in a ready or delayed heap */
        size_t held;                    /* its jobs in the map, tombstones too */
        bool wanted;                    /* on the want list */
        bool loading;                   /* a page of it is being read */
        bool closed;                    /* nothing more to read */
        struct sched_job *tombs;
        struct sched_job *jobs;         /* every one of its jobs in the map */
        struct sched_batch *prev, *next;        /* sched->batches */
        struct sched_batch *want_next;
        struct sched_limiter *limiter;  /* owned; NULL: no limits */
        bool limits_read;
};

struct heap {
        struct sched_job **v;
        size_t n;
        size_t cap;
        bool (*before)(const struct sched_job *a, const struct sched_job *b);
};

/* A limit and the jobs it holds back, in ready order; waiting has room for
 * every job attached. A host's is freed with its last job, a batch's with
 * the batch. */
struct sched_limiter {
        struct limiter lim;
        struct heap waiting;
        size_t refs;                    /* jobs attached */
        char *host;                     /* owned; NULL for a batch's */
        struct sched_limiter *hash_next;        /* sched->hosts */
};

struct sched {
        struct sched_options o;
        pthread_mutex_t lock;
        pthread_cond_t wake[JOB_KIND__COUNT];   /* takers of a kind */
        size_t takers_idle[JOB_KIND__COUNT];    /* blocked on wake[] */
        size_t takers_called[JOB_KIND__COUNT];  /* signalled, not yet awake */
        pthread_cond_t idle;                    /* sched_drain() */
        struct heap ready[JOB_KIND__COUNT];
        struct heap delayed[JOB_KIND__COUNT];
        struct sched_job **buckets;
        size_t nbuckets;
        size_t count;                           /* jobs in the map */
        size_t live[JOB_KIND__COUNT];           /* submitting or in the map */
        size_t submitting;
        size_t running[JOB_KIND__COUNT];
        size_t ops;                             /* job and batch-cancel ops in flight */
        size_t waiting;                         /* jobs in limiters' waiting heaps */
        struct sched_timings timings;
        struct sched_limiter *hosts[HOST_BUCKETS];
        bool stopping;
        unsigned short rand[3];                 /* jitter, erand48 */

        struct sched_batch *batches;
        struct sched_batch *want_head, *want_tail;
        size_t batch_queued;                    /* queued jobs of batches */
        pthread_cond_t feed;                    /* the feeder */
        bool feed_paused;                       /* after a failed read, until feed_resume */
        struct timespec feed_resume;
        pthread_t feeder;
        /* The feeder thread's alone: */
        struct store_reader *reader;
        struct job *page[BATCH_PAGE];
        char *page_host[BATCH_PAGE];            /* the jobs' host keys, owned */
        size_t page_n;
};

/* A batch cancel's op and what the op names. */
struct batch_cancel {
        struct sched *sched;
        struct sched_batch_cancel *c;
        struct batch batch;
};

/* ---- heaps ---- */

static bool ready_before(const struct sched_job *a, const struct sched_job *b)
{
        if (a->job->priority != b->job->priority)
                return a->job->priority > b->job->priority;
        return a->job->id < b->job->id;
}

static bool delayed_before(const struct sched_job *a, const struct sched_job *b)
{
        if (a->due != b->due)
                return a->due < b->due;
        return a->job->id < b->job->id;
}

static void heap_set(struct heap *h, size_t i, struct sched_job *sj)
{
        h->v[i] = sj;
        sj->heap_pos = i;
}

static void heap_sift_up(struct heap *h, size_t i)
{
        struct sched_job *sj = h->v[i];

        while (i > 0 && h->before(sj, h->v[(i - 1) / 2])) {
                heap_set(h, i, h->v[(i - 1) / 2]);
                i = (i - 1) / 2;
        }
        heap_set(h, i, sj);
}

static void heap_sift_down(struct heap *h, size_t i)
{
        struct sched_job *sj = h->v[i];

        for (;;) {
                size_t c = 2 * i + 1;

                if (c >= h->n)
                        break;
                if (c + 1 < h->n && h->before(h->v[c + 1], h->v[c]))
                        c++;
                if (!h->before(h->v[c], sj))
                        break;
                heap_set(h, i, h->v[c]);
                i = c;
        }
        heap_set(h, i, sj);
}

static int heap_reserve(struct heap *h, size_t n)
{
        struct sched_job **v;
        size_t cap;

        if (n <= h->cap)
                return 0;
        cap = h->cap * 2 > n ? h->cap * 2 : n;
        v = realloc(h->v, cap * sizeof(*v));
        if (!v)
                return -ENOMEM;
        h->v = v;
        h->cap = cap;
        return 0;
}

/* Never allocates: room was reserved for every live job. */
static void heap_push(struct heap *h, struct sched_job *sj)
{
        h->v[h->n++] = sj;
        heap_sift_up(h, h->n - 1);
}

static void heap_remove(struct heap *h, struct sched_job *sj)
{
        size_t i = sj->heap_pos;
        struct sched_job *last = h->v[--h->n];

        if (i == h->n)
                return;
        heap_set(h, i, last);
        heap_sift_down(h, i);
        heap_sift_up(h, last->heap_pos);
}

static struct sched_job *heap_top(const struct heap *h)
{
        return h->n > 0 ? h->v[0] : NULL;
}

/* ---- the id map (chained, grows by doubling) ---- */

static size_t map_index(size_t nbuckets, int64_t id)
{
        return (size_t)(((uint64_t)id * 0x9E3779B97F4A7C15ull) >> 17) & (nbuckets - 1);
}

/* A failed growth only lengthens the chains. */
static void map_grow(struct sched *s)
{
        size_t n = s->nbuckets * 2;
        struct sched_job **b = calloc(n, sizeof(*b));

        if (!b)
                return;
        for (size_t i = 0; i < s->nbuckets; i++)
                while (s->buckets[i]) {
                        struct sched_job *sj = s->buckets[i];
                        size_t k = map_index(n, sj->job->id);

                        s->buckets[i] = sj->hash_next;
                        sj->hash_next = b[k];
                        b[k] = sj;
                }
        free(s->buckets);
        s->buckets = b;
        s->nbuckets = n;
}

static void map_add(struct sched *s, struct sched_job *sj)
{
        size_t k;

        if (s->count >= s->nbuckets)
                map_grow(s);
        k = map_index(s->nbuckets, sj->job->id);
        sj->hash_next = s->buckets[k];
        s->buckets[k] = sj;
        s->count++;
}

static struct sched_job *map_find(struct sched *s, int64_t id)
{
        struct sched_job *sj = s->buckets[map_index(s->nbuckets, id)];

        while (sj && sj->job->id != id)
                sj = sj->hash_next;
        return sj;
}

static void map_del(struct sched *s, struct sched_job *sj)
{
        struct sched_job **p = &s->buckets[map_index(s->nbuckets, sj->job->id)];

        while (*p != sj)
                p = &(*p)->hash_next;
        *p = sj->hash_next;
        s->count--;
}

/* ---- helpers ---- */

static struct timespec monotonic_after(double seconds)
{
        struct timespec ts;
        double whole = floor(seconds);

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t)whole;
        ts.tv_nsec += (long)((seconds - whole) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

/* The clock of the limiters and the delayed heaps, in ms: steady, unlike
 * the stored wall-clock times, so that a clock stepped back holds no rate
 * slot or retry back. */
static int64_t steady_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cond_init_monotonic(pthread_cond_t *c)
{
        pthread_condattr_t attr;
        int r;

        r = pthread_condattr_init(&attr);
        if (r != 0)
                return -r;
        r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
                r = pthread_cond_init(c, &attr);
        pthread_condattr_destroy(&attr);
        return -r;
}

/* Batch jobs do not count: their number is bounded by the pages. */
static size_t sched_pending(const struct sched *s)
{
        size_t n = s->submitting;

        for (int k = 0; k < JOB_KIND__COUNT; k++)
                n += s->ready[k].n + s->delayed[k].n;
        return n + s->waiting - s->batch_queued;
}

/* Something sched_drain() waits for: a run, or an op at the writer. */
static bool sched_running(const struct sched *s)
{
        for (int k = 0; k < JOB_KIND__COUNT; k++)
                if (s->running[k] > 0)
                        return true;
        return false;
}

static bool sched_busy(const struct sched *s)
{
        return sched_running(s) || s->ops > 0;
}

/* sched_drain() waits first for the runs to end, then (for a while) for
 * their ops: it is woken at the first as well, while ops may still wait
 * at a writer that cannot store them. */
static void wake_drain(struct sched *s)
{
        if (s->stopping && !sched_running(s))
                pthread_cond_broadcast(&s->idle);
}

/* ---- limiters ---- */

static struct sched_limiter *lim_new(unsigned concurrency, double per_second)
{
        struct sched_limiter *l = calloc(1, sizeof(*l));

        if (!l)
                return NULL;
        limiter_init(&l->lim, concurrency, per_second);
        l->waiting.before = ready_before;
        return l;
}

static void lim_free(struct sched_limiter *l)
{
        if (!l)
                return;
        free(l->waiting.v);
        free(l->host);
        free(l);
}

static size_t host_index(const char *host)
{
        uint64_t h = 0xcbf29ce484222325ull;

        for (; *host; host++)
                h = (h ^ (unsigned char)*host) * 0x100000001b3ull;
        return (size_t)(h >> 32) & (HOST_BUCKETS - 1);
}

/* The limiter of host, made on first use; NULL on ENOMEM. */
static struct sched_limiter *host_limiter_get(struct sched *s, const char *host)
{
        struct sched_limiter **p = &s->hosts[host_index(host)], *l;

        for (l = *p; l; l = l->hash_next)
                if (strcmp(l->host, host) == 0)
                        return l;
        l = lim_new(s->o.host_concurrency, s->o.host_per_second);
        if (!l)
                return NULL;
        l->host = strdup(host);
        if (!l->host) {
                lim_free(l);
                return NULL;
        }
        l->hash_next = *p;
        *p = l;
        return l;
}

static void host_limiter_forget(struct sched *s, struct sched_limiter *l)
{
        struct sched_limiter **p = &s->hosts[host_index(l->host)];

        while (*p != l)
                p = &(*p)->hash_next;
        *p = l->hash_next;
        lim_free(l);
}

/* Drops a reference; a host's limiter goes with its last job. */
static void lim_unref(struct sched *s, struct sched_limiter *l)
{
        if (--l->refs == 0 && l->host)
                host_limiter_forget(s, l);
}

static int lim_attach(struct sched_job *sj, int which, struct sched_limiter *l)
{
        if (heap_reserve(&l->waiting, l->refs + 1) < 0)
                return -ENOMEM;
        l->refs++;
        sj->lim[which] = l;
        return 0;
}

static void lims_detach(struct sched *s, struct sched_job *sj)
{
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i]) {
                        lim_unref(s, sj->lim[i]);
                        sj->lim[i] = NULL;
                }
}

/* A job of kind k is ready. An idle taker is woken only when none is on
 * its way already; the one that is wakes the next when it takes a job and
 * more are ready (sched_take()). Long jobs thus still get a taker each,
 * one wake-up after another, while a burst of short ones is run by the
 * takers already awake instead of waking one thread per job: a wake-up
 * costs more than a noop. */
static void wake_taker(struct sched *s, int k)
{
        if (s->takers_called[k] == 0 && s->takers_idle[k] > 0) {
                s->takers_called[k]++;
                pthread_cond_signal(&s->wake[k]);
        }
}

/* Releases sj through its limiters, or holds it in the first that cannot
 * take it or has others waiting. from (may be NULL) is the limiter whose
 * waiting heap sj just left: its other waiters come after sj. */
static void gate_job(struct sched *s, struct sched_job *sj, struct sched_limiter *from)
{
        int64_t now = steady_ms(), at = now;
        int k = sj->job->kind;

        for (int i = 0; i < LIM__COUNT; i++) {
                struct sched_limiter *l = sj->lim[i];

                if (l && ((l != from && l->waiting.n > 0) || !limiter_can_release(&l->lim))) {
                        sj->where = SJ_WAITING;
                        sj->waiting_in = l;
                        heap_push(&l->waiting, sj);
                        s->waiting++;
                        return;
                }
        }
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i]) {
                        int64_t t = limiter_release(&sj->lim[i]->lim, now);

                        if (t > at)
                                at = t;
                        sj->released = true;
                }
        if (at > now) {
                /* the rate's slot: in memory only, the stored ready_at stays */
                sj->due = at;
                sj->where = SJ_DELAYED;
                heap_push(&s->delayed[k], sj);
                pthread_cond_broadcast(&s->wake[k]);
        } else {
                sj->where = SJ_READY;
                heap_push(&s->ready[k], sj);
                wake_taker(s, k);
        }
}

/* After the counts of l changed: releases its waiting jobs while it can. A
 * job may move on to wait in its other limiter; none comes back to l. */
static void lim_settle(struct sched *s, struct sched_limiter *l)
{
        struct sched_job *sj;

        while (limiter_can_release(&l->lim) && (sj = heap_top(&l->waiting))) {
                heap_remove(&l->waiting, sj);
                s->waiting--;
                gate_job(s, sj, l);
        }
}

static void lims_settle(struct sched *s, struct sched_job *sj)
{
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i])
                        lim_settle(s, sj->lim[i]);
}

/* A released job leaves its heap without running. */
static void lims_unrelease(struct sched *s, struct sched_job *sj)
{
        if (!sj->released)
                return;
        sj->released = false;
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i])
                        limiter_unrelease(&sj->lim[i]->lim);
        lims_settle(s, sj);
}

static void lims_start(struct sched *s, struct sched_job *sj)
{
        int64_t now = steady_ms();

        if (!sj->released)
                return;
        sj->released = false;
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i])
                        limiter_start(&sj->lim[i]->lim, now);
        lims_settle(s, sj);
}

static void lims_finish(struct sched *s, struct sched_job *sj)
{
        for (int i = 0; i < LIM__COUNT; i++)
                if (sj->lim[i])
                        limiter_finish(&sj->lim[i]->lim);
        lims_settle(s, sj);
}

/* ---- jobs ---- */

/* A new scheduler entry for j, with heap room reserved, attached to the
 * limiters of host (a key, borrowed; NULL: none) and of its batch (NULL:
 * none); the job is only borrowed until it succeeds. */
static int sched_job_new(struct sched *s, struct job *j, const char *host,
                         struct sched_limiter *batch_lim, struct sched_job **ret)
{
        struct sched_limiter *hl = NULL;
        struct sched_job *sj;
        int k;

        if ((unsigned)j->kind >= JOB_KIND__COUNT)
                return -EINVAL;
        k = j->kind;
        if (heap_reserve(&s->ready[k], s->live[k] + 1) < 0 ||
            heap_reserve(&s->delayed[k], s->live[k] + 1) < 0)
                return -ENOMEM;
        sj = calloc(1, sizeof(*sj));
        if (!sj)
                return -ENOMEM;
        if (host) {
                hl = host_limiter_get(s, host);
                if (!hl || lim_attach(sj, LIM_HOST, hl) < 0)
                        goto fail;
        }
        if (batch_lim && lim_attach(sj, LIM_BATCH, batch_lim) < 0)
                goto fail;
        sj->sched = s;
        sj->job = j;
        s->live[k]++;
        *ret = sj;
        return 0;

fail:
        /* a host limiter made for this job alone */
        if (hl && !sj->lim[LIM_HOST] && hl->refs == 0)
                host_limiter_forget(s, hl);
        lims_detach(s, sj);
        free(sj);
        return -ENOMEM;
}

static void sched_job_free(struct sched *s, struct sched_job *sj)
{
        s->live[sj->job->kind]--;
        lims_detach(s, sj);
        job_free(sj->job);
        free(sj);
}

/* The key of j's host when host limits are set, else NULL, in *ret (the
 * caller's). 0 or -ENOMEM. Reads no scheduler state: called unlocked. */
static int host_key(const struct sched *s, const struct job *j, char **ret)
{
        if (s->o.host_concurrency == 0 && s->o.host_per_second <= 0) {
                *ret = NULL;
                return 0;
        }
        return limiter_host_key(j, ret);
}

/* sj, a job of b, joins the map. */
static void batch_hold(struct sched *s, struct sched_batch *b, struct sched_job *sj)
{
        sj->batch = b;
        sj->batch_prev = NULL;
        sj->batch_next = b->jobs;
        if (b->jobs)
                b->jobs->batch_prev = sj;
        b->jobs = sj;
        b->held++;
        map_add(s, sj);
}

/* Out of the map and freed. The caller settles its batch. */
static void forget_job(struct sched *s, struct sched_job *sj)
{
        struct sched_batch *b = sj->batch;

        map_del(s, sj);
        if (b) {
                if (sj->batch_prev)
                        sj->batch_prev->batch_next = sj->batch_next;
                else
                        b->jobs = sj->batch_next;
                if (sj->batch_next)
                        sj->batch_next->batch_prev = sj->batch_prev;
                b->held--;
        }
        sched_job_free(s, sj);
}

/* Into the delayed heap of its kind until its retry is due, else through
 * its limiters; tells the takers. */
static void queue_job(struct sched *s, struct sched_job *sj)
{
        int k = sj->job->kind;
        int64_t wait;

        if (sj->batch) {
                sj->batch->queued++;
                s->batch_queued++;
        }
        sj->stop = SJ_STOP_NONE;
        sj->interrupt = NULL;
        sj->interrupt_arg = NULL;
        sj->released = false;
        wait = sj->job->ready_at - job_now_ms();
        if (wait > 0) {
                /* + 1: each clock is cut to the ms, so without it the
                 * job could start in the ms before its ready_at */
                sj->due = steady_ms() + wait + 1;
                sj->where = SJ_DELAYED;
                heap_push(&s->delayed[k], sj);
                /* every waiter may need an earlier deadline */
                pthread_cond_broadcast(&s->wake[k]);
        } else
                gate_job(s, sj, NULL);
}

/* Out of its ready, delayed or waiting heap; a released job still counts
 * in its limiters. The caller settles its batch. */
static void unqueue_job(struct sched *s, struct sched_job *sj)
{
        int k = sj->job->kind;

        if (sj->where == SJ_WAITING) {
                heap_remove(&sj->waiting_in->waiting, sj);
                sj->waiting_in = NULL;
                s->waiting--;
        } else
                heap_remove(sj->where == SJ_READY ? &s->ready[k] : &s->delayed[k], sj);
        if (sj->batch) {
                sj->batch->queued--;
                s->batch_queued--;
        }
}

/* A queued job leaves for good (cancelled or dropped). */
static void drop_queued(struct sched *s, struct sched_job *sj)
{
        unqueue_job(s, sj);
        lims_unrelease(s, sj);
}

/* ---- batches ---- */

static struct sched_batch *batch_find(struct sched *s, int64_t id)
{
        struct sched_batch *b = s->batches;

        while (b && b->id != id)
                b = b->next;
        return b;
}

static void batch_forget(struct sched *s, struct sched_batch *b)
{
        if (b->prev)
                b->prev->next = b->next;
        else
                s->batches = b->next;
        if (b->next)
                b->next->prev = b->prev;
        lim_free(b->limiter);
        free(b);
}

/* Frees the tombstones the feeder can no longer meet: those whose end is
 * committed and that lie at or below the cursor, or all once closed. */
static void batch_release_tombs(struct sched *s, struct sched_batch *b)
{
        struct sched_job **p = &b->tombs;

        while (*p) {
                struct sched_job *sj = *p;

                if (sj->where == SJ_GONE && (b->closed || sj->job->id <= b->cursor)) {
                        *p = sj->tomb_next;
                        forget_job(s, sj);
                } else
                        p = &sj->tomb_next;
        }
}

static bool batch_hungry(const struct sched_batch *b)
{
        return b->queued < BATCH_PAGE / 2 && b->held < BATCH_HELD_MAX - BATCH_PAGE / 2;
}

/* After anything of b changed: wants its next page, or forgets it. */
static void batch_settle(struct sched *s, struct sched_batch *b)
{
        if (b->loading || b->wanted)
                return;
        batch_release_tombs(s, b);
        if (b->closed) {
                if (b->held == 0)
                        batch_forget(s, b);
                return;
        }
        if (s->stopping || !batch_hungry(b))
                return;
        b->wanted = true;
        b->want_next = NULL;
        if (s->want_tail)
                s->want_tail->want_next = b;
        else
                s->want_head = b;
        s->want_tail = b;
        pthread_cond_signal(&s->feed);
}

static void push_op(struct sched *s, struct sched_job *sj, enum wop_type type,
                    void (*done)(struct wop *op))
{
        bool start = type == WOP_START;
        struct wop *op = start ? &sj->start_op : &sj->op;

        *op = (struct wop) {
                .type = type,
                .job = sj->job,
                .done = done,
                .userdata = sj,
                .attempts = sj->job->attempts,
                .start = !start && sj->start_busy ? &sj->start_op : NULL,
        };
        *(start ? &sj->start_busy : &sj->op_busy) = true;
        s->ops++;
        writer_push(s->o.writer, op);
}

/* Called on the writer thread, under the lock, when an op of sj is done. */
static void op_settle(struct sched *s, struct sched_job *sj, const struct wop *op)
{
        *(op == &sj->start_op ? &sj->start_busy : &sj->op_busy) = false;
        s->ops--;
        /* A tombstone's job, or one being cancelled, may have ended
         * otherwise: by a batch cancel, which ends its stored pending jobs
         * (a retry on its way back to the queue among them). */
        if (op->result < 0 &&
            !(op->result == -ENOENT && (sj->tomb || sj->stop == SJ_STOP_CANCEL)))
                log_errno(LOG_ERR, op->result, "job %lld: storing its %s failed",
                          (long long)sj->job->id,
                          op->type == WOP_START ? "start" : op->type == WOP_REQUEUE ? "requeue" : "end");
}

static void finish_done(struct wop *op);
static void requeue_done(struct wop *op);

static char *json_text(const json_t *v)
{
        return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

/* Decides the end: texts are the job's from here on (NULL allowed). */
static void end_job(struct sched *s, struct sched_job *sj, enum job_state state,
                    char *result, char *error)
{
        struct job *j = sj->job;

        free(j->result);
        free(j->error);
        j->result = result;
        j->error = error;
        j->state = state;
        j->finished_at = job_now_ms();
        sj->where = SJ_FINISHING;
        push_op(s, sj, WOP_FINISH, finish_done);
}

static void end_cancelled(struct sched *s, struct sched_job *sj)
{
        end_job(s, sj, JOB_CANCELLED, NULL, strdup(CANCELLED_ERROR));
}

static void requeue_job(struct sched *s, struct sched_job *sj, int64_t ready_at)
{
        sj->job->state = JOB_PENDING;
        sj->job->ready_at = ready_at;
        sj->where = SJ_REQUEUEING;
        sj->stop = SJ_STOP_NONE;
        push_op(s, sj, WOP_REQUEUE, requeue_done);
}

/* The wait before the next attempt: exponential with jitter, but never
 * shorter than what the failure asked for ("retry_after" seconds in the
 * error, an HTTP server's Retry-After); retry_max caps both. */
static int64_t backoff_ms(struct sched *s, int attempts, const json_t *error)
{
        double d = s->o.retry_base * pow(2, attempts > 1 ? attempts - 1 : 0);
        double asked = json_number_value(json_object_get(error, "retry_after"));

        if (d > s->o.retry_max)
                d = s->o.retry_max;
        d *= 0.8 + 0.4 * erand48(s->rand);
        if (asked > d)
                d = asked;
        if (d > s->o.retry_max)
                d = s->o.retry_max;
        return (int64_t)(d * 1000);
}

/* What a finished run becomes; takes the outcome's objects. A run stopped by
 * drain that still succeeded keeps its result rather than run again. */
static void apply_outcome(struct sched *s, struct sched_job *sj, struct sched_outcome *o)
{
        struct job *j = sj->job;
        bool ok = !o->error && o->result;

        if (sj->stop == SJ_STOP_CANCEL)
                end_cancelled(s, sj);
        else if (ok)
                end_job(s, sj, JOB_SUCCEEDED, json_text(o->result), NULL);
        else if (sj->stop == SJ_STOP_DRAIN) {
                j->attempts--;
                requeue_job(s, sj, job_now_ms());
        } else if (o->error && o->retryable && j->attempts < j->max_attempts)
                requeue_job(s, sj, job_now_ms() + backoff_ms(s, j->attempts, o->error));
        else
                end_job(s, sj, JOB_FAILED, NULL,
                        o->error ? json_text(o->error) : strdup(NO_RESULT_ERROR));
        json_decref(o->result);
        json_decref(o->error);
        o->result = o->error = NULL;
}

/* ---- writer callbacks (writer thread) ---- */

static void start_done(struct wop *op)
{
        struct sched_job *sj = op->userdata;
        struct sched *s = sj->sched;

        pthread_mutex_lock(&s->lock);
        op_settle(s, sj, op);
        wake_drain(s);
        pthread_mutex_unlock(&s->lock);
}

static void requeue_done(struct wop *op)
{
        struct sched_job *sj = op->userdata;
        struct sched *s = sj->sched;

        pthread_mutex_lock(&s->lock);
        op_settle(s, sj, op);
        if (sj->stop == SJ_STOP_CANCEL)
                end_cancelled(s, sj);
        else
                queue_job(s, sj);
        wake_drain(s);
        pthread_mutex_unlock(&s->lock);
}

/* A tombstone stays until the feeder cannot meet it any more. */
static void finish_done(struct wop *op)
{
        struct sched_job *sj = op->userdata;
        struct sched *s = sj->sched;
        struct sched_batch *b = sj->batch;
        int64_t id = sj->job->id, batch = sj->job->batch;
        bool stored = op->result == 0;

        pthread_mutex_lock(&s->lock);
        op_settle(s, sj, op);
        if (sj->tomb)
                sj->where = SJ_GONE;
        else
                forget_job(s, sj);
        if (b)
                batch_settle(s, b);
        wake_drain(s);
        pthread_mutex_unlock(&s->lock);

        /* An end the store never took is nothing to announce. */
        if (stored && s->o.on_finished)
                s->o.on_finished(id, batch, s->o.userdata);
}

/* The job is queued before the submitter hears, so a cancel that follows
 * the answer finds it. It cannot be freed during done(): only this thread
 * (in finish_done()) frees jobs. A pool may take it meanwhile, so done()
 * reads only what the writer set and nobody changes: id, created_at. */
static void submit_done(struct wop *op)
{
        struct sched_job *sj = op->userdata;
        struct sched *s = sj->sched;
        struct sched_submission *sub = sj->sub;
        int result = op->result;

        pthread_mutex_lock(&s->lock);
        s->submitting--;
        sj->sub = NULL;
        if (result == 0) {
                map_add(s, sj);
                queue_job(s, sj);
        }
        pthread_mutex_unlock(&s->lock);

        sub->result = result;
        sub->done(sub);
        if (result == 0)
                return;
        pthread_mutex_lock(&s->lock);
        sched_job_free(s, sj);
        pthread_mutex_unlock(&s->lock);
}

/* ---- the feeder ---- */

/* Outside the lock: the host key is worked out here, not under it. */
static int page_add(struct job *j, void *userdata)
{
        struct sched *s = userdata;
        char *host;
        int r;

        r = host_key(s, j, &host);
        if (r < 0) {
                job_free(j);
                return r;
        }
        s->page_host[s->page_n] = host;
        s->page[s->page_n++] = j;
        return 0;
}

/* Takes j (from the store) as a loaded job of b. */
static int load_job(struct sched *s, struct sched_batch *b, struct job *j, const char *host)
{
        struct sched_job *sj;
        int r;

        r = sched_job_new(s, j, host, b->limiter, &sj);
        if (r < 0)
                return r;
        j->state = JOB_PENDING;
        j->priority = b->priority;
        batch_hold(s, b, sj);
        queue_job(s, sj);
        return 0;
}

/* Under the lock: the page read after cursor with at most limit jobs
 * (r: the read's result) goes in, unless the batch was closed or the
 * scheduler stopped meanwhile. A job already in the map is a tombstone. */
static void feed_insert(struct sched *s, struct sched_batch *b, int limit, int r)
{
        size_t i = 0;

        if (r < 0) {
                log_errno(LOG_ERR, r, "batch %lld: cannot read its pending jobs", (long long)b->id);
                s->feed_paused = true;
                s->feed_resume = monotonic_after(FEED_RETRY_S);
        } else if (!s->stopping && !b->closed) {
                for (; i < s->page_n; i++) {
                        struct job *j = s->page[i];
                        int64_t id = j->id;

                        if (map_find(s, id))
                                job_free(j);
                        else if (load_job(s, b, j, s->page_host[i]) < 0) {
                                log_error("batch %lld: out of memory loading job %lld",
                                          (long long)b->id, (long long)id);
                                s->feed_paused = true;
                                s->feed_resume = monotonic_after(FEED_RETRY_S);
                                break;
                        }
                        free(s->page_host[i]);
                        b->cursor = id;
                }
                if (i == s->page_n && s->page_n < (size_t)limit)
                        b->closed = true;
        }
        for (; i < s->page_n; i++) {
                job_free(s->page[i]);
                free(s->page_host[i]);
        }
        s->page_n = 0;
        b->loading = false;
        batch_settle(s, b);
}

/* Outside the lock: the limits stored with batch id. A batch that is gone
 * or whose limits do not parse runs without. */
static int feed_limits(struct sched *s, int64_t id, unsigned *ret_concurrency,
                       double *ret_per_second)
{
        struct batch *b;
        int r;

        *ret_concurrency = 0;
        *ret_per_second = 0;
        r = store_get_batch(s->reader, id, &b);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        if (limiter_limits_parse(b->limits, ret_concurrency, ret_per_second) < 0)
                log_warning("batch %lld: ignoring its unreadable limits", (long long)id);
        batch_free(b);
        return 0;
}

/* Under the lock, before b's first job is loaded. */
static int batch_set_limits(struct sched_batch *b, unsigned concurrency, double per_second)
{
        if (concurrency > 0 || per_second > 0) {
                b->limiter = lim_new(concurrency, per_second);
                if (!b->limiter)
                        return -ENOMEM;
        }
        b->limits_read = true;
        return 0;
}

/* Under the lock, which it drops while it reads the store: the batch's
 * limits the first time, then a page. */
static void feed_batch(struct sched *s, struct sched_batch *b)
{
        int64_t after = b->cursor;
        /* batch_hungry(): both are more than half a page */
        int limit = BATCH_PAGE - (int)b->queued;
        bool read_limits = !b->limits_read;
        unsigned concurrency = 0;
        double per_second = 0;
        int r = 0;

        if (limit > (int)(BATCH_HELD_MAX - b->held))
                limit = (int)(BATCH_HELD_MAX - b->held);

        b->loading = true;
        pthread_mutex_unlock(&s->lock);
        if (read_limits)
                r = feed_limits(s, b->id, &concurrency, &per_second);
        if (r == 0)
                r = store_batch_pending(s->reader, b->id, after, limit, page_add, s);
        pthread_mutex_lock(&s->lock);
        if (r == 0 && read_limits)
                r = batch_set_limits(b, concurrency, per_second);
        feed_insert(s, b, limit, r);
}

static void *feeder_main(void *userdata)
{
        struct sched *s = userdata;
        struct sched_batch *b;

        pthread_mutex_lock(&s->lock);
        while (!s->stopping) {
                b = s->want_head;
                if (!b) {
                        pthread_cond_wait(&s->feed, &s->lock);
                        continue;
                }
                if (s->feed_paused) {
                        if (pthread_cond_timedwait(&s->feed, &s->lock, &s->feed_resume) == ETIMEDOUT)
                                s->feed_paused = false;
                        continue;
                }
                s->want_head = b->want_next;
                if (!s->want_head)
                        s->want_tail = NULL;
                b->wanted = false;
                /* closed or refilled (by requeues) since it was wanted */
                if (b->closed || !batch_hungry(b))
                        batch_settle(s, b);
                else
                        feed_batch(s, b);
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

/* ---- public ---- */

int sched_new(const struct sched_options *o, struct sched **ret)
{
        struct sched *s;
        uint64_t seed;
        int k, r;

        if (!o->store)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->o = *o;
        s->nbuckets = MAP_MIN_BUCKETS;
        s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
        if (!s->buckets) {
                free(s);
                return -ENOMEM;
        }
        for (k = 0; k < JOB_KIND__COUNT; k++) {
                s->ready[k].before = ready_before;
                s->delayed[k].before = delayed_before;
                histogram_init_array(&s->timings.run[k], timing_bounds);
                histogram_init_array(&s->timings.wait[k], timing_bounds);
        }
        seed = (uint64_t)job_now_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(s->rand, &seed, sizeof(s->rand));

        r = store_reader_open(o->store, &s->reader);
        if (r < 0)
                goto fail_buckets;
        r = -pthread_mutex_init(&s->lock, NULL);
        if (r < 0)
                goto fail_reader;
        r = cond_init_monotonic(&s->idle);
        if (r < 0)
                goto fail_lock;
        r = cond_init_monotonic(&s->feed);
        if (r < 0)
                goto fail_idle;
        for (k = 0; k < JOB_KIND__COUNT; k++) {
                r = cond_init_monotonic(&s->wake[k]);
                if (r < 0)
                        goto fail_conds;
        }
        r = -pthread_create(&s->feeder, NULL, feeder_main, s);
        if (r < 0)
                goto fail_conds;
        *ret = s;
        return 0;

fail_conds:
        while (k-- > 0)
                pthread_cond_destroy(&s->wake[k]);
        pthread_cond_destroy(&s->feed);
fail_idle:
        pthread_cond_destroy(&s->idle);
fail_lock:
        pthread_mutex_destroy(&s->lock);
fail_reader:
        store_reader_close(s->reader);
fail_buckets:
        free(s->buckets);
        free(s);
        return r;
}

void sched_free(struct sched *s)
{
        if (!s)
                return;
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_signal(&s->feed);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->feeder, NULL);
        store_reader_close(s->reader);

        for (size_t i = 0; i < s->nbuckets; i++)
                while (s->buckets[i]) {
                        struct sched_job *sj = s->buckets[i];

                        s->buckets[i] = sj->hash_next;
                        sched_job_free(s, sj);
                }
        while (s->batches)
                batch_forget(s, s->batches);
        for (int k = 0; k < JOB_KIND__COUNT; k++) {
                free(s->ready[k].v);
                free(s->delayed[k].v);
                pthread_cond_destroy(&s->wake[k]);
        }
        free(s->buckets);
        pthread_cond_destroy(&s->feed);
        pthread_cond_destroy(&s->idle);
        pthread_mutex_destroy(&s->lock);
        free(s);
}

int sched_restore(struct sched *s, struct job *j)
{
        struct sched_job *sj;
        char *host;
        int r;

        r = host_key(s, j, &host);
        if (r < 0) {
                job_free(j);
                return r;
        }
        pthread_mutex_lock(&s->lock);
        r = sched_job_new(s, j, host, NULL, &sj);
        if (r == 0) {
                j->state = JOB_PENDING;
                map_add(s, sj);
                queue_job(s, sj);
        }
        pthread_mutex_unlock(&s->lock);
        free(host);
        if (r < 0)
                job_free(j);
        return r;
}

int sched_submit(struct sched *s, struct sched_submission *sub)
{
        struct sched_job *sj;
        char *host;
        int r;

        r = host_key(s, sub->job, &host);
        if (r < 0)
                return r;
        pthread_mutex_lock(&s->lock);
        if (s->stopping)
                r = -ESHUTDOWN;
        else if (sched_pending(s) >= s->o.max_pending)
                r = -EAGAIN;
        else
                r = sched_job_new(s, sub->job, host, NULL, &sj);
        if (r == 0) {
                sj->where = SJ_SUBMITTING;
                sj->sub = sub;
                s->submitting++;
                sub->op = (struct wop) {
                        .type = WOP_SUBMIT,
                        .job = sub->job,
                        .done = submit_done,
                        .userdata = sj,
                };
                writer_push(s->o.writer, &sub->op);
        }
        pthread_mutex_unlock(&s->lock);
        free(host);
        return r;
}

/* The cancel of a job in the map, as sched_cancel() answers it. */
static int cancel_job(struct sched *s, struct sched_job *sj)
{
        switch (sj->where) {
        case SJ_READY:
        case SJ_DELAYED:
        case SJ_WAITING:
                drop_queued(s, sj);
                end_cancelled(s, sj);
                return 0;
        case SJ_REQUEUEING:
                /* ends cancelled once the requeue is committed; only the
                 * first cancel is the one that ended it */
                if (sj->stop == SJ_STOP_CANCEL)
                        return -EALREADY;
                sj->stop = SJ_STOP_CANCEL;
                return 0;
        case SJ_RUNNING:
                /* an earlier cancel already stopped it */
                if (sj->stop == SJ_STOP_CANCEL)
                        return -EALREADY;
                /* a run stopped by drain is already interrupted */
                if (sj->stop == SJ_STOP_NONE && sj->interrupt)
                        sj->interrupt(sj->interrupt_arg);
                sj->stop = SJ_STOP_CANCEL;
                return -EINPROGRESS;
        case SJ_FINISHING:
        case SJ_SUBMITTING:
        case SJ_GONE:
                break;
        }
        return -ENOENT;
}

/* A job of a known batch above its cursor is pending in the store: its end
 * is committed from a tombstone (see the head comment). */
static int cancel_unloaded(struct sched *s, int64_t id, int64_t batch)
{
        struct sched_batch *b = batch_find(s, batch);
        struct sched_job *sj;
        struct job *j;
        int r;

        if (!b || b->closed || id <= b->cursor)
                return -ENOENT;
        j = job_new();
        if (!j)
                return -ENOMEM;
        j->id = id;
        j->batch = batch;
        r = sched_job_new(s, j, NULL, NULL, &sj);
        if (r < 0) {
                job_free(j);
                return r;
        }
        sj->tomb = true;
        sj->tomb_next = b->tombs;
        b->tombs = sj;
        batch_hold(s, b, sj);
        end_cancelled(s, sj);
        return 0;
}

int sched_cancel(struct sched *s, int64_t id, int64_t batch)
{
        struct sched_job *sj;
        int r = -ENOENT;

        pthread_mutex_lock(&s->lock);
        sj = map_find(s, id);
        if (sj) {
                r = cancel_job(s, sj);
                if (sj->batch)
                        batch_settle(s, sj->batch);
        } else if (batch != 0)
                r = cancel_unloaded(s, id, batch);
        pthread_mutex_unlock(&s->lock);
        return r;
}

int sched_add_batch(struct sched *s, int64_t batch, int priority)
{
        struct sched_batch *b;
        int r = 0;

        pthread_mutex_lock(&s->lock);
        if (batch_find(s, batch))
                goto out;
        b = calloc(1, sizeof(*b));
        if (!b) {
                r = -ENOMEM;
                goto out;
        }
        b->id = batch;
        b->priority = priority;
        b->next = s->batches;
        if (s->batches)
                s->batches->prev = b;
        s->batches = b;
        batch_settle(s, b);
out:
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* Stops what of b is held: queued jobs are dropped (they are pending in
 * the store, where the batch cancel ends them), the others cancelled as
 * one by one. */
static void batch_stop_jobs(struct sched *s, struct sched_batch *b)
{
        struct sched_job *sj, *next;

        for (sj = b->jobs; sj; sj = next) {
                next = sj->batch_next;
                if (sj->where == SJ_READY || sj->where == SJ_DELAYED ||
                    sj->where == SJ_WAITING) {
                        drop_queued(s, sj);
                        forget_job(s, sj);
                } else
                        cancel_job(s, sj);
        }
}

/* Chunk after chunk until one comes back short. The batch cancel is
 * counted in ops so that sched_drain() waits for it. */
static void batch_cancel_done(struct wop *op)
{
        struct batch_cancel *bc = op->userdata;
        struct sched *s = bc->sched;
        struct sched_batch_cancel *c = bc->c;

        if (op->result == 0 && op->count > 0 && s->o.on_finished)
                s->o.on_finished(0, c->batch, s->o.userdata);
        if (op->result == 0 && op->count == WRITER_CHUNK) {
                writer_push(s->o.writer, op);
                return;
        }
        /* Stopping: the pending jobs left run after the restart.
         * -ENOENT: the batch was deleted meanwhile, so it had ended. */
        if (op->result < 0 && op->result != -ENOENT)
                log_errno(LOG_ERR, op->result, "batch %lld: storing its cancel failed",
                          (long long)c->batch);

        pthread_mutex_lock(&s->lock);
        s->ops--;
        wake_drain(s);
        pthread_mutex_unlock(&s->lock);
        c->result = op->result;
        free(bc);
        c->done(c);
}

int sched_cancel_batch(struct sched *s, struct sched_batch_cancel *c)
{
        struct sched_batch *b;
        struct batch_cancel *bc;
        int r = 0;

        bc = calloc(1, sizeof(*bc));
        if (!bc)
                return -ENOMEM;
        bc->sched = s;
        bc->c = c;
        bc->batch.id = c->batch;

        pthread_mutex_lock(&s->lock);
        if (s->stopping) {
                r = -ESHUTDOWN;
                goto out;
        }
        b = batch_find(s, c->batch);
        if (b) {
                b->closed = true;
                batch_stop_jobs(s, b);
                batch_settle(s, b);
        }
        c->op = (struct wop) {
                .type = WOP_BATCH_CANCEL,
                .batch = &bc->batch,
                .done = batch_cancel_done,
                .userdata = bc,
        };
        s->ops++;
        writer_push(s->o.writer, &c->op);
out:
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                free(bc);
        return r;
}

/* Moves the delayed jobs of kind k whose time has come on: a released one
 * (its rate slot came) to the ready heap, a retry through its limiters. */
static void promote_due(struct sched *s, int k)
{
        int64_t now = steady_ms();
        struct sched_job *sj;

        while ((sj = heap_top(&s->delayed[k])) && sj->due <= now) {
                heap_remove(&s->delayed[k], sj);
                if (sj->released) {
                        sj->where = SJ_READY;
                        heap_push(&s->ready[k], sj);
                } else
                        gate_job(s, sj, NULL);
        }
}

/* Stored times are wall-clock: a clock stepped back must not make a
 * negative duration. */
static void observe_ms(struct histogram *h, int64_t from, int64_t to)
{
        histogram_observe(h, to > from ? (double) (to - from) / 1000.0 : 0.0);
}

struct sched_job *sched_take(struct sched *s, enum job_kind kind,
                             void (*interrupt)(void *arg), void *arg)
{
        struct sched_job *sj, *due;
        struct job *j;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                if (s->stopping) {
                        pthread_mutex_unlock(&s->lock);
                        return NULL;
                }
                promote_due(s, kind);
                if (s->ready[kind].n > 0)
                        break;
                due = heap_top(&s->delayed[kind]);
                s->takers_idle[kind]++;
                if (due) {
                        struct timespec ts = monotonic_after(
                                (double)(due->due - steady_ms()) / 1000.0);

                        pthread_cond_timedwait(&s->wake[kind], &s->lock, &ts);
                } else
                        pthread_cond_wait(&s->wake[kind], &s->lock);
                s->takers_idle[kind]--;
                /* A taker woken otherwise (a deadline, a broadcast) may
                 * count as the called one: another is then called early,
                 * never too late. */
                if (s->takers_called[kind] > 0)
                        s->takers_called[kind]--;
        }

        sj = heap_top(&s->ready[kind]);
        unqueue_job(s, sj);
        lims_start(s, sj);
        if (sj->batch)
                batch_settle(s, sj->batch);
        j = sj->job;
        sj->where = SJ_RUNNING;
        sj->stop = SJ_STOP_NONE;
        sj->interrupt = interrupt;
        sj->interrupt_arg = arg;
        j->state = JOB_RUNNING;
        j->attempts++;
        j->started_at = job_now_ms();
        if (j->attempts == 1)
                observe_ms(&s->timings.wait[kind], j->created_at, j->started_at);
        s->running[kind]++;
        push_op(s, sj, WOP_START, start_done);
        /* the next taker, if more are ready (promote_due() may have
         * readied more than one) */
        if (s->ready[kind].n > 0)
                wake_taker(s, kind);
        pthread_mutex_unlock(&s->lock);
        return sj;
}

const struct job *sched_job_job(const struct sched_job *sj)
{
        return sj->job;
}

void sched_finish(struct sched *s, struct sched_job *sj, struct sched_outcome *o)
{
        pthread_mutex_lock(&s->lock);
        s->running[sj->job->kind]--;
        observe_ms(&s->timings.run[sj->job->kind], sj->job->started_at, job_now_ms());
        lims_finish(s, sj);
        apply_outcome(s, sj, o);
        wake_drain(s);
        pthread_mutex_unlock(&s->lock);
}

void sched_drain(struct sched *s, double grace)
{
        struct timespec deadline = monotonic_after(grace > 0 ? grace : 0);

        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        for (int k = 0; k < JOB_KIND__COUNT; k++)
                pthread_cond_broadcast(&s->wake[k]);
        pthread_cond_signal(&s->feed);

        while (sched_busy(s))
                if (pthread_cond_timedwait(&s->idle, &s->lock, &deadline) == ETIMEDOUT)
                        break;

        for (size_t i = 0; i < s->nbuckets; i++)
                for (struct sched_job *sj = s->buckets[i]; sj; sj = sj->hash_next) {
                        if (sj->where != SJ_RUNNING || sj->stop != SJ_STOP_NONE)
                                continue;
                        sj->stop = SJ_STOP_DRAIN;
                        if (sj->interrupt)
                                sj->interrupt(sj->interrupt_arg);
                }

        /* Interrupted runs end promptly. Their requeues are waited for only
         * so long: on a store that refuses writes the writer retries them
         * until writer_stop(), which then ends them with -EIO. */
        while (sched_running(s))
                pthread_cond_wait(&s->idle, &s->lock);
        deadline = monotonic_after(DRAIN_OPS_WAIT);
        while (sched_busy(s))
                if (pthread_cond_timedwait(&s->idle, &s->lock, &deadline) == ETIMEDOUT)
                        break;
        pthread_mutex_unlock(&s->lock);
}

void sched_get_stats(struct sched *s, struct sched_stats *ret)
{
        pthread_mutex_lock(&s->lock);
        *ret = (struct sched_stats) { .delayed = 0 };
        for (int k = 0; k < JOB_KIND__COUNT; k++) {
                ret->pending[k] = s->ready[k].n;
                ret->delayed += s->delayed[k].n;
                ret->running[k] = s->running[k];
        }
        ret->limited = s->waiting;
        pthread_mutex_unlock(&s->lock);
}

void sched_get_timings(struct sched *s, struct sched_timings *ret)
{
        pthread_mutex_lock(&s->lock);
        *ret = s->timings;
        pthread_mutex_unlock(&s->lock);
}

json_t *sched_error_new(const char *type, const char *fmt, ...)
{
        json_t *message, *error;
        va_list ap;

        va_start(ap, fmt);
        message = json_vsprintf(fmt, ap);
        va_end(ap);
        if (!message)
                return NULL;
        error = json_pack("{s:s, s:O}", "type", type, "message", message);
        json_decref(message);
        return error;
}
