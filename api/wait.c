/* POST /v1/wait: concurrent.futures.wait() over HTTP. The answer comes the
 * moment return_when holds, or at the timeout.
 *
 * No thread waits and no event costs a scan of the ids: every id whose job
 * has not finished gets its own hub waiter, all sharing one deadline. A
 * fire only queues its item on the request's ready list, under the
 * request's small lock, and resumes the request if it is parked; the
 * handler, run again by MHD, re-reads just the queued jobs and answers or
 * parks again. The request is suspended before it is marked parked, so a
 * resume never precedes its suspend, and a fire that finds it not parked
 * leaves the item for the handler, which looks at the list before parking.
 * A batch cancel wakes every waiter of its batch, also of jobs still
 * running: those are armed again for the time left.
 *
 * Every hub_add() that succeeded ends in exactly one fire() or one
 * hub_remove() that returns true; the request's state is freed only once
 * the fires have caught up, so no fire() touches freed memory. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/hub.h"
#include "api/query.h"
#include "api/reply.h"
#include "api/request.h"
#include "api/routes.h"
#include "storage/store.h"
#include "tasks/task.h"

#define WAIT_MAX_IDS 10000

enum wait_mode {
        WAIT_FIRST_COMPLETED,
        WAIT_FIRST_EXCEPTION,
        WAIT_ALL_COMPLETED,
};

static const char *const wait_modes[] = {
        [WAIT_FIRST_COMPLETED] = "FIRST_COMPLETED",
        [WAIT_FIRST_EXCEPTION] = "FIRST_EXCEPTION",
        [WAIT_ALL_COMPLETED] = "ALL_COMPLETED",
};

struct wait_ctx;

/* One id of the request, in the order given. */
struct wait_item {
        struct hub_waiter waiter;       /* id: the job; batch: its batch */
        struct wait_ctx *ctx;
        bool finished;
        struct wait_item *ready_next;
};

struct wait_ctx {
        struct request *req;
        enum wait_mode mode;
        double until;                   /* CLOCK_MONOTONIC deadline */
        size_t n;
        struct wait_item *items;        /* n of them */
        size_t finished, failed;        /* items */

        pthread_mutex_t lock;           /* guards what follows */
        pthread_cond_t settled;         /* a fire() ran */
        struct wait_item *ready;        /* fired, not looked at yet */
        bool parked;                    /* suspended; the next fire resumes it */
        size_t armed, fired;            /* hub_add()s that succeeded, fire()s that ran */
};

static void item_fired(struct hub_waiter *w)
{
        struct wait_item *it = (struct wait_item *) ((char *) w -
                                                     offsetof(struct wait_item, waiter));
        struct wait_ctx *c = it->ctx;
        struct request *wake = NULL;

        pthread_mutex_lock(&c->lock);
        it->ready_next = c->ready;
        c->ready = it;
        if (c->parked) {
                c->parked = false;
                wake = c->req;
        }
        c->fired++;
        pthread_cond_signal(&c->settled);
        pthread_mutex_unlock(&c->lock);
        /* A parked request is suspended, so it outlives this. */
        if (wake)
                request_wake(wake);
}

static void wait_free(void *p)
{
        struct wait_ctx *c = p;
        size_t removed = 0;

        if (!c)
                return;
        for (size_t i = 0; i < c->n; i++)
                if (hub_remove(c->req->api->hub, &c->items[i].waiter))
                        removed++;
        /* Fires already taken by the hub are running; they do not block. */
        pthread_mutex_lock(&c->lock);
        while (c->fired + removed < c->armed)
                pthread_cond_wait(&c->settled, &c->lock);
        pthread_mutex_unlock(&c->lock);
        pthread_cond_destroy(&c->settled);
        pthread_mutex_destroy(&c->lock);
        free(c->items);
        free(c);
}

static int wait_new(struct request *req, size_t n, struct wait_ctx **ret)
{
        struct wait_ctx *c;
        int r = -ENOMEM;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->items = calloc(n, sizeof(*c->items));
        if (!c->items)
                goto fail;
        r = -pthread_mutex_init(&c->lock, NULL);
        if (r < 0)
                goto fail;
        r = -pthread_cond_init(&c->settled, NULL);
        if (r < 0) {
                pthread_mutex_destroy(&c->lock);
                goto fail;
        }
        c->req = req;
        c->n = n;
        for (size_t i = 0; i < n; i++) {
                c->items[i].ctx = c;
                c->items[i].waiter.fire = item_fired;
        }
        *ret = c;
        return 0;

fail:
        free(c->items);
        free(c);
        return r;
}

/* A job id as jobs are named: decimal, > 0, no leading zero. */
static bool parse_job_id(const char *s, int64_t *ret)
{
        return s[0] != '0' && query_parse_int(s, INT64_MAX, ret) == 0;
}

/* Checks the body's shape and fills req->ctx; a 400 with *ret_code and
 * message otherwise. */
static int wait_parse(struct request *req, const char **ret_code, char *message, size_t len)
{
        const json_t *body = req->json, *ids, *timeout, *v;
        struct wait_ctx *c;
        double seconds;
        const char *name, *mode;
        size_t i, n;
        int r;

        *ret_code = "invalid_request";
        if (!json_is_object(body)) {
                snprintf(message, len, "the body must be a JSON object");
                return -EINVAL;
        }
        json_object_foreach((json_t *) body, name, v)
                if (strcmp(name, "ids") != 0 && strcmp(name, "return_when") != 0 &&
                    strcmp(name, "timeout") != 0) {
                        *ret_code = "unknown_field";
                        snprintf(message, len, "unknown field \"%.64s\"; a wait has ids, "
                                 "return_when and timeout", name);
                        return -EINVAL;
                }
        ids = json_object_get(body, "ids");
        n = json_array_size(ids);
        if (!json_is_array(ids) || n == 0 || n > WAIT_MAX_IDS) {
                snprintf(message, len, "\"ids\" must be an array of 1 to %d job ids",
                         WAIT_MAX_IDS);
                return -EINVAL;
        }
        json_array_foreach(ids, i, v)
                if (!json_is_string(v)) {
                        snprintf(message, len, "\"ids\"[%zu] must be a string", i);
                        return -EINVAL;
                }

        r = wait_new(req, n, &c);
        if (r < 0)
                return r;
        req->ctx = c;
        req->ctx_free = wait_free;

        c->mode = WAIT_ALL_COMPLETED;
        if (json_object_get(body, "return_when")) {
                /* NULL when not a string. */
                mode = json_string_value(json_object_get(body, "return_when"));
                for (i = 0; i < sizeof(wait_modes) / sizeof(*wait_modes); i++)
                        if (mode && strcmp(mode, wait_modes[i]) == 0)
                                break;
                if (i == sizeof(wait_modes) / sizeof(*wait_modes)) {
                        snprintf(message, len, "\"return_when\" must be FIRST_COMPLETED, "
                                 "FIRST_EXCEPTION or ALL_COMPLETED");
                        return -EINVAL;
                }
                c->mode = (enum wait_mode) i;
        }
        seconds = req->api->o.max_wait;
        timeout = json_object_get(body, "timeout");
        if (timeout) {
                if (!json_is_number(timeout) || json_number_value(timeout) < 0) {
                        snprintf(message, len, "\"timeout\" must be a number of seconds >= 0");
                        return -EINVAL;
                }
                if (json_number_value(timeout) < seconds)
                        seconds = json_number_value(timeout);
        }
        c->until = task_monotonic() + seconds;
        return 0;
}

/* Reads item's job and notes whether it has finished; -ENOENT when there
 * is no such job. */
static int item_read(struct wait_ctx *c, struct wait_item *it)
{
        struct store_reader *rd;
        struct job *j;
        int r;

        r = api_reader(c->req->api, &rd);
        if (r < 0)
                return r;
        r = store_get_job(rd, it->waiter.id, &j);
        if (r < 0)
                return r;
        /* Known from the first read on, before any hub_add(): a registered
         * waiter's keys are the hub's to read, so they are not written again. */
        if (it->waiter.batch != j->batch)
                it->waiter.batch = j->batch;
        if (job_state_finished(j->state)) {
                it->finished = true;
                c->finished++;
                if (j->state == JOB_FAILED)
                        c->failed++;
        }
        job_free(j);
        return 0;
}

/* item_read() once the request was taken: a job gone since was finished
 * (only a finished job can be deleted). */
static int item_reread(struct wait_ctx *c, struct wait_item *it)
{
        int r = item_read(c, it);

        if (r == -ENOENT) {
                it->finished = true;
                c->finished++;
                return 0;
        }
        return r;
}

/* Registers item for the time left, then reads its job once more: an end
 * between the last read and the registration is not missed. */
static int item_arm(struct wait_ctx *c, struct wait_item *it)
{
        struct hub *hub = c->req->api->hub;
        int r;

        r = hub_add(hub, &it->waiter, c->until - task_monotonic());
        if (r < 0)
                return r;
        pthread_mutex_lock(&c->lock);
        c->armed++;
        pthread_mutex_unlock(&c->lock);
        r = item_reread(c, it);
        /* A waiter that fired anyway is skipped when its turn comes. */
        if (r == 0 && it->finished && hub_remove(hub, &it->waiter)) {
                pthread_mutex_lock(&c->lock);
                c->armed--;
                pthread_mutex_unlock(&c->lock);
        }
        return r;
}

static bool wait_over(const struct wait_ctx *c)
{
        switch (c->mode) {
        case WAIT_FIRST_COMPLETED:
                return c->finished > 0;
        case WAIT_FIRST_EXCEPTION:
                return c->failed > 0 || c->finished == c->n;
        case WAIT_ALL_COMPLETED:
                break;
        }
        return c->finished == c->n;
}

/* The fired items: their jobs read again, and those still running (a batch
 * cancel woke them) armed again while time is left. */
static int wait_drain(struct wait_ctx *c, bool arm)
{
        struct wait_item *it, *next;
        int r = 0;

        pthread_mutex_lock(&c->lock);
        it = c->ready;
        c->ready = NULL;
        pthread_mutex_unlock(&c->lock);
        for (; it; it = next) {
                next = it->ready_next;
                if (r < 0 || it->finished)
                        continue;
                r = item_reread(c, it);
                if (r == 0 && !it->finished && arm)
                        r = item_arm(c, it);
        }
        return r;
}

static void put_ids(struct strbuf *b, const struct wait_ctx *c, bool finished)
{
        bool first = true;

        for (size_t i = 0; i < c->n; i++) {
                if (c->items[i].finished != finished)
                        continue;
                strbuf_printf(b, first ? "\"%lld\"" : ",\"%lld\"",
                              (long long) c->items[i].waiter.id);
                first = false;
        }
}

static enum MHD_Result wait_answer(struct request *req, const struct wait_ctx *c)
{
        struct strbuf b = { 0 };

        strbuf_puts(&b, "{\"done\":[");
        put_ids(&b, c, true);
        strbuf_puts(&b, "],\"not_done\":[");
        put_ids(&b, c, false);
        strbuf_puts(&b, "]}");
        return reply_body(req, MHD_HTTP_OK, &b, NULL, NULL);
}

static enum MHD_Result wait_failed(struct request *req, int r)
{
        if (r == -ENOMEM)
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "out of memory");
        return reply_store_error(req, r);
}

/* Answers once the wait is over; else suspends until a fire. */
static enum MHD_Result wait_step(struct request *req, struct wait_ctx *c, int r)
{
        bool more;

        more = task_monotonic() < c->until && !atomic_load(&req->api->stopping);
        if (r == 0)
                r = wait_drain(c, more);
        if (r < 0)
                return wait_failed(req, r);
        if (wait_over(c) || !more)
                return wait_answer(req, c);
        request_suspend(req);
        pthread_mutex_lock(&c->lock);
        more = c->ready != NULL;
        c->parked = !more;
        pthread_mutex_unlock(&c->lock);
        if (more)
                request_wake(req);
        return MHD_YES;
}

enum MHD_Result wait_post(struct request *req)
{
        char message[160];
        const json_t *ids;
        const char *code;
        struct wait_ctx *c;
        size_t i;
        int r;

        if (req->resumed)
                return wait_step(req, req->ctx, 0);
        r = wait_parse(req, &code, message, sizeof(message));
        if (r == -EINVAL)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, code, "%s", message);
        if (r < 0)
                return wait_failed(req, r);
        c = req->ctx;
        ids = json_object_get(req->json, "ids");
        for (i = 0; i < c->n; i++) {
                const char *id = json_string_value(json_array_get(ids, i));

                if (!parse_job_id(id, &c->items[i].waiter.id))
                        return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found",
                                           "no job \"%.64s\" (ids[%zu])", id, i);
        }
        for (i = 0; i < c->n; i++) {
                r = item_read(c, &c->items[i]);
                if (r == -ENOENT)
                        return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found",
                                           "no job %lld (ids[%zu])",
                                           (long long) c->items[i].waiter.id, i);
                if (r < 0)
                        return wait_failed(req, r);
        }
        r = 0;
        if (!wait_over(c) && task_monotonic() < c->until)
                for (i = 0; i < c->n && r == 0; i++)
                        if (!c->items[i].finished)
                                r = item_arm(c, &c->items[i]);
        return wait_step(req, c, r);
}
