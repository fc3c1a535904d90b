/* Waiters on job ends. Three indexes over the same intrusive waiters, all
 * under one lock: two hashes of chains, by job id and by batch, so an end
 * finds its waiters without a scan, and a binary min-heap by deadline, so
 * one thread sleeps exactly until the earliest deadline (no polling: with no
 * waiter it sleeps until signalled). A registered waiter is in the heap and
 * in each hash whose key (id, batch) it has non-zero; `fired` is set once,
 * under the lock, when it leaves them, and only then is fire() called,
 * outside the lock, so fire() may take other locks (MHD's). */
#include "api/hub.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "tasks/task.h"

#define HUB_MIN_BUCKETS 256
#define HUB_MIN_HEAP 64

struct hub_index {
        struct hub_waiter **buckets;
        size_t n;                       /* a power of two */
};

struct hub {
        pthread_mutex_t lock;
        pthread_cond_t wake;            /* the earliest deadline changed, or quit */
        pthread_t thread;
        struct hub_index index[HUB__INDEXES];
        size_t count;                   /* registered waiters */
        struct hub_waiter **heap;
        size_t heap_cap;
        bool stopping;
        bool quit;
};

static int64_t key_of(const struct hub_waiter *w, int i)
{
        switch (i) {
        case HUB_BY_ID:
                return w->id;
        case HUB_BY_BATCH:
                return w->id != 0 ? w->batch : 0;
        default:
                return w->id == 0 ? w->batch : 0;
        }
}

static size_t bucket_of(size_t nbuckets, int64_t key)
{
        /* Fibonacci hashing spreads sequential ids over the table. */
        return (size_t) (((uint64_t) key * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (nbuckets - 1);
}

static void bucket_link(struct hub_waiter **buckets, size_t nbuckets, struct hub_waiter *w, int i)
{
        struct hub_waiter **head = &buckets[bucket_of(nbuckets, key_of(w, i))];

        w->prev[i] = NULL;
        w->next[i] = *head;
        if (*head)
                (*head)->prev[i] = w;
        *head = w;
}

static void bucket_unlink(struct hub_index *x, struct hub_waiter *w, int i)
{
        if (w->prev[i])
                w->prev[i]->next[i] = w->next[i];
        else
                x->buckets[bucket_of(x->n, key_of(w, i))] = w->next[i];
        if (w->next[i])
                w->next[i]->prev[i] = w->prev[i];
}

/* A table that cannot grow only makes chains longer, so failure is ignored. */
static void index_grow(struct hub_index *x, int i)
{
        size_t n = x->n * 2;
        struct hub_waiter **b = calloc(n, sizeof(*b));

        if (!b)
                return;
        for (size_t k = 0; k < x->n; k++) {
                struct hub_waiter *w, *next;

                for (w = x->buckets[k]; w; w = next) {
                        next = w->next[i];
                        bucket_link(b, n, w, i);
                }
        }
        free(x->buckets);
        x->buckets = b;
        x->n = n;
}

static void heap_set(struct hub *h, size_t pos, struct hub_waiter *w)
{
        h->heap[pos] = w;
        w->heap_pos = pos;
}

static void heap_up(struct hub *h, size_t pos)
{
        struct hub_waiter *w = h->heap[pos];

        while (pos > 0) {
                size_t parent = (pos - 1) / 2;

                if (h->heap[parent]->deadline <= w->deadline)
                        break;
                heap_set(h, pos, h->heap[parent]);
                pos = parent;
        }
        heap_set(h, pos, w);
}

static void heap_down(struct hub *h, size_t pos)
{
        struct hub_waiter *w = h->heap[pos];

        for (;;) {
                size_t child = 2 * pos + 1;

                if (child >= h->count)
                        break;
                if (child + 1 < h->count && h->heap[child + 1]->deadline < h->heap[child]->deadline)
                        child++;
                if (w->deadline <= h->heap[child]->deadline)
                        break;
                heap_set(h, pos, h->heap[child]);
                pos = child;
        }
        heap_set(h, pos, w);
}

/* Takes w out of every index; the heap holds exactly count waiters. */
static void unlink_waiter(struct hub *h, struct hub_waiter *w)
{
        size_t pos = w->heap_pos;
        struct hub_waiter *last;

        for (int i = 0; i < HUB__INDEXES; i++)
                if (key_of(w, i) != 0)
                        bucket_unlink(&h->index[i], w, i);

        last = h->heap[--h->count];
        if (last != w) {
                heap_set(h, pos, last);
                heap_up(h, pos);
                heap_down(h, last->heap_pos);
        }
        w->registered = false;
}

/* Marks w fired and queues it on *list, to be fired once the lock is gone. */
static void take(struct hub *h, struct hub_waiter *w, struct hub_waiter **list)
{
        if (w->registered)
                unlink_waiter(h, w);
        w->fired = true;
        w->fire_next = *list;
        *list = w;
}

static void fire_list(struct hub_waiter *list)
{
        struct hub_waiter *w, *next;

        for (w = list; w; w = next) {
                next = w->fire_next;
                w->fire(w);
        }
}

static void *hub_thread(void *arg)
{
        struct hub *h = arg;

        pthread_mutex_lock(&h->lock);
        while (!h->quit) {
                struct hub_waiter *list = NULL;
                double now, next;
                struct timespec ts;

                if (h->count == 0) {
                        pthread_cond_wait(&h->wake, &h->lock);
                        continue;
                }
                now = task_monotonic();
                next = h->heap[0]->deadline;
                if (next > now) {
                        ts.tv_sec = (time_t) next;
                        ts.tv_nsec = (long) ((next - (double) ts.tv_sec) * 1e9);
                        pthread_cond_timedwait(&h->wake, &h->lock, &ts);
                        continue;
                }
                while (h->count > 0 && h->heap[0]->deadline <= now)
                        take(h, h->heap[0], &list);
                pthread_mutex_unlock(&h->lock);
                fire_list(list);
                pthread_mutex_lock(&h->lock);
        }
        pthread_mutex_unlock(&h->lock);
        return NULL;
}

int hub_new(struct hub **ret)
{
        pthread_condattr_t attr;
        struct hub *h;
        int r;

        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        for (int i = 0; i < HUB__INDEXES; i++) {
                h->index[i].n = HUB_MIN_BUCKETS;
                h->index[i].buckets = calloc(HUB_MIN_BUCKETS, sizeof(*h->index[i].buckets));
                if (!h->index[i].buckets) {
                        r = -ENOMEM;
                        goto fail_mem;
                }
        }
        h->heap_cap = HUB_MIN_HEAP;
        h->heap = calloc(h->heap_cap, sizeof(*h->heap));
        if (!h->heap) {
                r = -ENOMEM;
                goto fail_mem;
        }
        r = -pthread_mutex_init(&h->lock, NULL);
        if (r < 0)
                goto fail_mem;
        r = -pthread_condattr_init(&attr);
        if (r < 0)
                goto fail_lock;
        r = -pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
                r = -pthread_cond_init(&h->wake, &attr);
        pthread_condattr_destroy(&attr);
        if (r < 0)
                goto fail_lock;
        r = -pthread_create(&h->thread, NULL, hub_thread, h);
        if (r < 0)
                goto fail_cond;
        *ret = h;
        return 0;

fail_cond:
        pthread_cond_destroy(&h->wake);
fail_lock:
        pthread_mutex_destroy(&h->lock);
fail_mem:
        free(h->heap);
        for (int i = 0; i < HUB__INDEXES; i++)
                free(h->index[i].buckets);
        free(h);
        return r;
}

void hub_free(struct hub *h)
{
        if (!h)
                return;
        pthread_mutex_lock(&h->lock);
        h->quit = true;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->thread, NULL);
        pthread_cond_destroy(&h->wake);
        pthread_mutex_destroy(&h->lock);
        free(h->heap);
        for (int i = 0; i < HUB__INDEXES; i++)
                free(h->index[i].buckets);
        free(h);
}

int hub_add(struct hub *h, struct hub_waiter *w, double seconds)
{
        struct hub_waiter *list = NULL;

        pthread_mutex_lock(&h->lock);
        w->registered = false;
        w->fired = false;
        if (h->stopping) {
                take(h, w, &list);
                pthread_mutex_unlock(&h->lock);
                fire_list(list);
                return 0;
        }
        if (h->count == h->heap_cap) {
                struct hub_waiter **heap = realloc(h->heap, 2 * h->heap_cap * sizeof(*heap));

                if (!heap) {
                        pthread_mutex_unlock(&h->lock);
                        return -ENOMEM;
                }
                h->heap = heap;
                h->heap_cap *= 2;
        }
        w->deadline = task_monotonic() + seconds;
        for (int i = 0; i < HUB__INDEXES; i++) {
                struct hub_index *x = &h->index[i];

                if (key_of(w, i) == 0)
                        continue;
                bucket_link(x->buckets, x->n, w, i);
                if (h->count > 2 * x->n)
                        index_grow(x, i);
        }
        heap_set(h, h->count++, w);
        heap_up(h, w->heap_pos);
        w->registered = true;
        if (w->heap_pos == 0)
                pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        return 0;
}

void hub_fire(struct hub *h, struct hub_waiter *w)
{
        struct hub_waiter *list = NULL;

        pthread_mutex_lock(&h->lock);
        if (!w->fired)
                take(h, w, &list);
        pthread_mutex_unlock(&h->lock);
        fire_list(list);
}

/* Takes the waiters of index i with that key. */
static void take_key(struct hub *h, int i, int64_t key, struct hub_waiter **list)
{
        struct hub_index *x = &h->index[i];
        struct hub_waiter *w, *next;

        for (w = x->buckets[bucket_of(x->n, key)]; w; w = next) {
                next = w->next[i];
                if (key_of(w, i) == key)
                        take(h, w, list);
        }
}

void hub_fire_job(struct hub *h, int64_t id, int64_t batch)
{
        struct hub_waiter *list = NULL;

        pthread_mutex_lock(&h->lock);
        if (id != 0)
                take_key(h, HUB_BY_ID, id, &list);
        else if (batch != 0)
                take_key(h, HUB_BY_BATCH, batch, &list);
        if (batch != 0)
                take_key(h, HUB_BY_STREAM, batch, &list);
        pthread_mutex_unlock(&h->lock);
        fire_list(list);
}

bool hub_remove(struct hub *h, struct hub_waiter *w)
{
        bool was;

        pthread_mutex_lock(&h->lock);
        was = w->registered;
        if (was)
                unlink_waiter(h, w);
        pthread_mutex_unlock(&h->lock);
        return was;
}

double hub_left(const struct hub_waiter *w)
{
        return w->deadline - task_monotonic();
}

void hub_stop(struct hub *h)
{
        struct hub_waiter *list = NULL;

        /* An api whose start failed before its hub existed stops too. */
        if (!h)
                return;
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        while (h->count > 0)
                take(h, h->heap[h->count - 1], &list);
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        fire_list(list);
}
