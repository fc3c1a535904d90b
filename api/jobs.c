/* /v1/jobs: submit, read (with long-poll), list, cancel, delete.
 *
 * Every wait is a suspended connection: a submission waits for its commit
 * (the scheduler's done() resumes it), a delete for its op, a long-poll or
 * a cancel for its job's end through a hub waiter. The thread that resumes
 * only records what happened; the handler, run again by MHD, answers. A
 * waiter is registered before the job is read again, so an end that lands
 * between the first read and the registration is not missed. A waiter
 * carries its job's batch: a batch cancel wakes every waiter of the batch
 * at once, and one whose job still runs waits again for what time is left. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/hub.h"
#include "api/query.h"
#include "api/reply.h"
#include "api/request.h"
#include "api/routes.h"
#include "api/spec.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"

/* Seconds a cancel waits for a running job to stop before answering 202. */
#define CANCEL_WAIT 5.0
#define LIST_DEFAULT 100
#define LIST_MAX 1000

static int read_job(struct request *req, struct job **ret)
{
        struct store_reader *r;
        int k;

        k = api_reader(req->api, &r);
        if (k < 0)
                return k;
        return store_get_job(r, req->id, ret);
}

static enum MHD_Result no_such_job(struct request *req)
{
        return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no job %lld",
                           (long long) req->id);
}

static enum MHD_Result out_of_memory(struct request *req)
{
        return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "out of memory");
}

/* Answers status with the job of the path, or 404 when it is gone. */
static enum MHD_Result answer_job(struct request *req, unsigned status)
{
        enum MHD_Result ret;
        struct job *j;
        int r;

        r = read_job(req, &j);
        if (r == -ENOENT)
                return no_such_job(req);
        if (r < 0)
                return reply_store_error(req, r);
        ret = reply_job_answer(req, status, j);
        job_free(j);
        return ret;
}

/* Fires the request's waiter at once when its job already finished (or is
 * gone, or cannot be read: the handler reports that when it runs again). */
static void recheck(struct request *req)
{
        struct job *j;
        bool finished = true;

        if (read_job(req, &j) == 0) {
                finished = job_state_finished(j->state);
                job_free(j);
        }
        if (finished)
                hub_fire(req->api->hub, &req->waiter);
}

/* Waits up to seconds for the job of the path to end. */
static void watch(struct request *req, double seconds)
{
        request_watch(req, seconds);
        if (!req->error)
                recheck(req);
}

/* After a wake: whether to wait on for the rest of the time (j has not
 * finished: the wake was its batch's cancel reaching other jobs). */
static bool wait_more(struct request *req, const struct job *j)
{
        return !job_state_finished(j->state) && !atomic_load(&req->api->stopping) &&
               hub_left(&req->waiter) > 0;
}

/* ---- POST /v1/jobs ---- */

/* The writer thread, after the commit: note the outcome and resume. */
static void submit_done(struct sched_submission *sub)
{
        struct request *req = sub->userdata;

        if (sub->result == 0 || sub->result == -EEXIST) {
                req->id = sub->job->id;
                req->created_at = sub->job->created_at;
        }
        request_wake(req);
}

static enum MHD_Result submit_answer(struct request *req)
{
        char open[REPLY_OPEN_MAX], location[64];

        switch (req->sub.result) {
        case 0:
                strbuf_insert(&req->out, 0, open, reply_job_open(open, req->id));
                reply_job_close(&req->out, req->created_at, 0, 0);
                snprintf(location, sizeof(location), "/v1/jobs/%lld", (long long) req->id);
                return reply_body(req, MHD_HTTP_ACCEPTED, &req->out, MHD_HTTP_HEADER_LOCATION,
                                  location);
        case -EEXIST:
                return answer_job(req, MHD_HTTP_OK);
        case -EAGAIN:
                return reply_error_with(req, MHD_HTTP_TOO_MANY_REQUESTS,
                                        MHD_HTTP_HEADER_RETRY_AFTER, "1", "queue_full",
                                        "the job queue is full; retry later");
        default:
                return reply_write_error(req, req->sub.result, "submission");
        }
}

enum MHD_Result jobs_submit(struct request *req)
{
        const struct spec_defaults defaults = { .timeout = req->api->o.default_timeout };
        struct spec_error err;
        struct job *job;
        int r;

        if (req->resumed)
                return submit_answer(req);
        r = spec_job(req->json, &defaults, &job, &err);
        if (r < 0)
                return reply_error(req, r == -ENOMEM ? MHD_HTTP_INTERNAL_SERVER_ERROR :
                                   MHD_HTTP_BAD_REQUEST, err.code, "%s", err.message);
        /* Rendered now, since from sched_submit() on the job is the
         * scheduler's; the answer adds the id and creation time. */
        reply_job_fields(&req->out, job);
        req->sub = (struct sched_submission) {
                .job = job,
                .done = submit_done,
                .userdata = req,
        };
        /* Suspended first, so done() always finds it suspended. */
        request_suspend(req);
        r = sched_submit(req->api->d.sched, &req->sub);
        if (r < 0) {
                job_free(job);
                req->sub.result = r;
                request_wake(req);
        }
        return MHD_YES;
}

/* ---- GET /v1/jobs/{id}[?wait=S] ---- */

enum MHD_Result jobs_get(struct request *req)
{
        const char *arg = request_arg(req, "wait");
        enum MHD_Result ret;
        double wait = 0;
        struct job *j;
        bool more;
        int r;

        if (req->resumed && req->error)
                return out_of_memory(req);
        if (!req->resumed && arg && query_parse_seconds(arg, req->api->o.max_wait, &wait) < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "\"wait\" must be a plain decimal number of seconds "
                                   "from 0 to %g", req->api->o.max_wait);
        r = read_job(req, &j);
        if (r == -ENOENT)
                return no_such_job(req);
        if (r < 0)
                return reply_store_error(req, r);
        if (req->resumed) {
                more = wait_more(req, j);
                wait = hub_left(&req->waiter);
        } else
                more = !job_state_finished(j->state) && wait > 0;
        if (more) {
                req->waiter.batch = j->batch;
                job_free(j);
                watch(req, wait);
                return MHD_YES;
        }
        ret = reply_job_answer(req, MHD_HTTP_OK, j);
        job_free(j);
        return ret;
}

/* ---- POST /v1/jobs/{id}/cancel ---- */

static enum MHD_Result already_finished(struct request *req, const struct job *j)
{
        return reply_error(req, MHD_HTTP_CONFLICT, "already_finished", "job %lld already %s",
                           (long long) j->id, job_state_name(j->state));
}

static enum MHD_Result cancel_answer(struct request *req)
{
        enum MHD_Result ret;
        struct job *j;
        int r;

        if (req->error)
                return out_of_memory(req);
        r = read_job(req, &j);
        if (r == -ENOENT)
                return no_such_job(req);
        if (r < 0)
                return reply_store_error(req, r);
        /* -EALREADY answers at once, without waiting for the end. */
        if (req->cancel_result != -EALREADY && wait_more(req, j)) {
                job_free(j);
                watch(req, hub_left(&req->waiter));
                return MHD_YES;
        }
        /* Only the request that stopped the job gets 200; a job that had
         * already ended (even cancelled) is a 409, also when another
         * request had told it to stop (-EALREADY). */
        if (j->state == JOB_CANCELLED &&
            (req->cancel_result == 0 || req->cancel_result == -EINPROGRESS))
                ret = reply_job_answer(req, MHD_HTTP_OK, j);
        else if (job_state_finished(j->state))
                ret = already_finished(req, j);
        else
                /* Told to stop, not stopped yet. */
                ret = reply_job_answer(req, MHD_HTTP_ACCEPTED, j);
        job_free(j);
        return ret;
}

enum MHD_Result jobs_cancel(struct request *req)
{
        enum MHD_Result ret;
        int64_t batch;
        struct job *j;
        int r;

        if (req->resumed)
                return cancel_answer(req);
        r = read_job(req, &j);
        if (r == -ENOENT)
                return no_such_job(req);
        if (r < 0)
                return reply_store_error(req, r);
        /* The scheduler cannot tell a finished job of a batch it has not
         * loaded from a pending one, so the store answers for it. */
        if (job_state_finished(j->state)) {
                ret = already_finished(req, j);
                job_free(j);
                return ret;
        }
        batch = req->waiter.batch = j->batch;
        job_free(j);
        request_watch(req, CANCEL_WAIT);
        if (req->error)
                return MHD_YES;
        /* 0 and -EINPROGRESS end in the job's end, which fires the waiter;
         * -ENOENT: finished, finishing (its end will fire it) or unknown;
         * -EALREADY: another cancel stopped it and gets the 200, so this
         * one answers now, without waiting for the end. */
        req->cancel_result = sched_cancel(req->api->d.sched, req->id, batch);
        if (req->cancel_result == -ENOENT)
                recheck(req);
        else if (req->cancel_result == -EALREADY)
                hub_fire(req->api->hub, &req->waiter);
        return MHD_YES;
}

/* ---- DELETE /v1/jobs/{id} ---- */

enum MHD_Result jobs_delete(struct request *req)
{
        int64_t batch;
        struct job *j;
        int r;

        if (req->resumed)
                return reply_deleted(req, req->op.result, "job");
        /* A batch's job goes with its batch: the batch's counts hold it,
         * and its streams' cursors count on its completion number, which
         * a restart would hand out again were it the highest. */
        r = read_job(req, &j);
        if (r == -ENOENT)
                return no_such_job(req);
        if (r < 0)
                return reply_store_error(req, r);
        batch = j->batch;
        job_free(j);
        if (batch != 0)
                return reply_error(req, MHD_HTTP_CONFLICT, "in_batch",
                                   "job %lld belongs to batch %lld: delete the batch",
                                   (long long) req->id, (long long) batch);
        req->op_job.id = req->id;
        req->op = (struct wop) { .type = WOP_DELETE, .job = &req->op_job };
        request_write(req, &req->op);
        return MHD_YES;
}

/* ---- GET /v1/jobs ---- */

/* A query argument that must be an integer in [min, max]; absent: def. */
static int int_arg(struct request *req, const char *name, int64_t min, int64_t max, int64_t def,
                   int64_t *ret)
{
        const char *s = request_arg(req, name);
        int64_t v;

        if (!s) {
                *ret = def;
                return 0;
        }
        if (query_parse_int(s, max, &v) < 0 || v < min)
                return -EINVAL;
        *ret = v;
        return 0;
}

struct list_page {
        struct strbuf *body;
        int64_t limit;
        int64_t n;
        int64_t last_id;
        bool more;
};

/* One more job than the page is asked for, to know whether there is a next
 * page. */
static int list_one(struct job *j, void *userdata)
{
        struct list_page *p = userdata;

        if (p->n == p->limit)
                p->more = true;
        else {
                if (p->n++ > 0)
                        strbuf_puts(p->body, ",");
                reply_job(p->body, j);
                p->last_id = j->id;
        }
        job_free(j);
        return 0;
}

enum MHD_Result jobs_list(struct request *req)
{
        struct store_filter f = { .state = -1, .task = request_arg(req, "task") };
        const char *state = request_arg(req, "state");
        struct strbuf body = { 0 };
        struct list_page page = { .body = &body };
        struct store_reader *reader;
        enum job_state st;
        int r;

        if (state) {
                if (job_state_parse(state, &st) < 0)
                        return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                           "\"state\" must be pending, running, succeeded, "
                                           "failed or cancelled");
                f.state = (int) st;
        }
        if (int_arg(req, "batch", 1, INT64_MAX, 0, &f.batch) < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "\"batch\" must be a batch id");
        if (int_arg(req, "limit", 1, LIST_MAX, LIST_DEFAULT, &page.limit) < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "\"limit\" must be an integer from 1 to %d", LIST_MAX);
        if (int_arg(req, "cursor", 1, INT64_MAX, 0, &f.before_id) < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "\"cursor\" must be a next_cursor from an earlier page");
        f.limit = (int) page.limit + 1;

        r = api_reader(req->api, &reader);
        if (r < 0)
                return reply_store_error(req, r);
        strbuf_puts(&body, "{\"jobs\":[");
        r = store_list_jobs(reader, &f, list_one, &page);
        if (r < 0) {
                strbuf_reset(&body);
                return reply_store_error(req, r);
        }
        if (page.more)
                strbuf_printf(&body, "],\"next_cursor\":\"%lld\"}", (long long) page.last_id);
        else
                strbuf_puts(&body, "],\"next_cursor\":null}");
        return reply_body(req, MHD_HTTP_OK, &body, NULL, NULL);
}
