/* /v1/batches: submit (a JSON body or an NDJSON stream), read, cancel,
 * delete.
 *
 * Both forms of a submission feed one upload, stored in steps
 * (storage/batch.h): OPEN once the first chunk is full or the items end,
 * ITEMS for each chunk of UPLOAD_CHUNK jobs, SEAL at the end; once anything
 * goes wrong after OPEN, ABORT (after the op in flight is done), so a
 * refused batch leaves nothing. A batch whose items all ended within the
 * first chunk goes in one OPEN that carries them and seals it: one commit.
 * One op is in flight at a time, and the upload holds two chunks: the one
 * the op stores (held) and the one it fills meanwhile (fill). The request
 * is suspended ("parked") only when it cannot go on until the op is done:
 * fill is full, the items ended, or something failed. So an NDJSON upload
 * holds two chunks of jobs and one line, whatever its size, and parsing
 * overlaps the writer's inserts.
 *
 * The op's state (enum flight) is the handshake with done(), which runs on
 * the writer thread while the MHD thread may still be taking items. The
 * MHD thread parks (marks the op parked and suspends) only while the op is
 * not done, and done() marks it done, under park_lock both: so the request
 * is resumed once per park, never before its suspend (MHD then misses a
 * client that goes away) and never when not parked; and past done()'s
 * mark the upload is the MHD thread's again.
 *
 * Ownership: the upload is the request's (req->ctx) and holds the op in
 * flight and the held chunk, which the writer reads until done(). A parked
 * request cannot be freed (MHD does not look at a suspended connection,
 * and api_stop() waits until none is), and done() touches nothing after
 * request_wake(). A request that ends while an op is in flight unparked
 * (the client went away between lines) leaves the upload to that op's
 * done(), which goes on as below. A request that ends while the batch is
 * open hands the upload to an ABORT op instead of freeing it; that op's
 * done() frees it. SEAL (and a whole OPEN) is never in flight unparked, so
 * an upload left to done() never has a batch to schedule.
 *
 * An NDJSON upload with ?format=openai takes an OpenAI Batch API input file:
 * each line becomes an http job (spec_openai_line()), and every custom_id
 * seen so far is kept, with its line, to refuse a duplicate. Those are at
 * most SPEC_OPENAI_MAX_LINES of SPEC_OPENAI_MAX_CUSTOM_ID bytes, held in a
 * jansson object, whose hash is seeded at random so no file can make it
 * degrade. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/reply.h"
#include "api/request.h"
#include "api/routes.h"
#include "api/spec.h"
#include "daemon/limiter.h"
#include "daemon/log.h"
#include "daemon/scheduler.h"
#include "storage/batch.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/task.h"

/* Jobs per ITEMS op: the memory an upload holds, and a commit per chunk.
 * Lines may be long, so a chunk also ends at UPLOAD_CHUNK_BYTES of args
 * and tags. */
#define UPLOAD_CHUNK WRITER_CHUNK
#define UPLOAD_CHUNK_BYTES (8u << 20)

/* The fields of a JSON batch; all but items, jobs and limits are the
 * items' defaults. */
static const char *const batch_fields[] = {
        "task", "kind", "timeout", "max_attempts", "priority", "limits", "items", "jobs", NULL,
};

enum upload_failure {
        UPLOAD_OK,
        UPLOAD_ITEM,            /* a bad item: 400 naming it */
        UPLOAD_TOO_MANY,        /* past max_batch_items: 413 */
        UPLOAD_REFUSED,         /* the body was refused (request.c): its answer */
        UPLOAD_WRITE,           /* the store or memory failed: error */
};

/* Where the upload's op is. */
enum flight {
        FLIGHT_NONE,            /* none pushed, or its outcome taken in */
        FLIGHT_SENT,            /* pushed; the request goes on taking items */
        FLIGHT_PARKED,          /* pushed; the request is suspended until done() */
        FLIGHT_DONE,            /* done() ran: op.result is there to take in */
        FLIGHT_ORPHANED,        /* pushed; the request is gone: done() goes on */
};

struct chunk {
        struct job *jobs[UPLOAD_CHUNK]; /* owned */
        size_t n_jobs;
        size_t bytes;                   /* of the jobs' args and tags */
};

struct upload {
        struct request *req;            /* NULL once the request is gone */
        struct api *api;
        struct batch *batch;            /* owned */
        struct spec_defaults defaults;
        struct chunk chunks[2];
        struct chunk *fill;             /* taking items */
        struct chunk *held;             /* full, waiting for its ITEMS op or in it */
        int64_t items;                  /* so far: the index of the next */
        int64_t max_items;              /* 413 batch_too_large past this */
        /* ?format=openai: where the lines' paths go, and custom_id -> line. */
        char *base_url;                 /* owned; NULL: not an OpenAI file */
        json_t *custom_ids;             /* owned */
        /* The JSON form: the array and the next item of it to take. */
        const json_t *array;            /* borrowed from req->json */
        bool items_form;                /* array holds args, not job specs */
        json_t *wrapper;                /* {"args": item}, reused; owned */
        size_t next;
        struct wop op;
        atomic_int flight;              /* enum flight */
        pthread_mutex_t park_lock;      /* orders a park against done() */
        bool open;                      /* OPEN committed, not yet sealed or aborted */
        /* The first failure, answered once the batch is gone. */
        enum upload_failure failure;
        int error;                      /* UPLOAD_WRITE */
        struct spec_error err;          /* UPLOAD_ITEM */
        int64_t err_index;
        int64_t err_line;               /* 0: not NDJSON */
};

static void chunk_drop(struct chunk *c)
{
        while (c->n_jobs > 0)
                job_free(c->jobs[--c->n_jobs]);
        c->bytes = 0;
}

static bool chunk_full(const struct chunk *c)
{
        return c->n_jobs == UPLOAD_CHUNK || c->bytes >= UPLOAD_CHUNK_BYTES;
}

static void upload_destroy(struct upload *u)
{
        chunk_drop(&u->chunks[0]);
        chunk_drop(&u->chunks[1]);
        batch_free(u->batch);
        json_decref(u->wrapper);
        free(u->base_url);
        json_decref(u->custom_ids);
        pthread_mutex_destroy(&u->park_lock);
        free(u);
}

static void upload_abandon(struct upload *u);

/* The writer thread. */
static void upload_done(struct wop *op)
{
        struct upload *u = op->userdata;
        int was;

        pthread_mutex_lock(&u->park_lock);
        was = atomic_exchange(&u->flight, FLIGHT_DONE);
        pthread_mutex_unlock(&u->park_lock);
        switch (was) {
        case FLIGHT_PARKED:
                request_wake(u->req);
                break;
        case FLIGHT_ORPHANED:
                upload_abandon(u);
                break;
        default:
                /* The MHD thread takes the outcome in when it next looks,
                 * and may already be pushing the next op. */
                break;
        }
}

/* With no op in flight; with_jobs: ITEMS, or OPEN of the whole batch. */
static void upload_push(struct upload *u, enum wop_type type, bool with_jobs)
{
        u->op = (struct wop) {
                .type = type,
                .batch = u->batch,
                .jobs = u->held->jobs,
                .n_jobs = with_jobs ? u->held->n_jobs : 0,
                .done = upload_done,
                .userdata = u,
        };
        atomic_store(&u->flight, u->req ? FLIGHT_SENT : FLIGHT_ORPHANED);
        writer_push(u->api->d.writer, &u->op);
}

/* Suspends the request until the op in flight is done; false when it is
 * done already. Under the lock, so done() finds the connection suspended
 * whenever it finds the op parked: a resume never comes before its
 * suspend, nor one for a connection not suspended. */
static bool upload_park(struct upload *u)
{
        bool parked;

        pthread_mutex_lock(&u->park_lock);
        parked = atomic_load(&u->flight) == FLIGHT_SENT;
        if (parked) {
                atomic_store(&u->flight, FLIGHT_PARKED);
                request_suspend(u->req);
        }
        pthread_mutex_unlock(&u->park_lock);
        return parked;
}

static void fail_write(struct upload *u, int r)
{
        if (u->failure)
                return;
        u->failure = UPLOAD_WRITE;
        u->error = r;
}

static void fail_item(struct upload *u, int r, const struct spec_error *err, int64_t line)
{
        if (u->failure)
                return;
        if (r == -ENOMEM) {
                fail_write(u, r);
                return;
        }
        u->failure = UPLOAD_ITEM;
        u->err = *err;
        u->err_index = u->items;
        u->err_line = line;
}

/* The batch is durable now: its jobs run whatever the request comes to,
 * at the latest after a restart. */
static void upload_sealed(struct upload *u)
{
        int r;

        u->open = false;
        r = sched_add_batch(u->api->d.sched, u->batch->id, u->batch->priority);
        if (r < 0)
                log_error("batch %lld: not scheduled until a restart: %s",
                          (long long) u->batch->id, strerror(-r));
}

/* Takes in what the op in flight did, once it is done. */
static void upload_settle(struct upload *u)
{
        int r;

        if (atomic_load(&u->flight) != FLIGHT_DONE)
                return;
        atomic_store(&u->flight, FLIGHT_NONE);
        r = u->op.result;
        switch (u->op.type) {
        case WOP_BATCH_OPEN:
                u->open = r == 0;
                if (r == 0 && u->op.n_jobs > 0) {
                        chunk_drop(u->held);
                        upload_sealed(u);
                }
                break;
        case WOP_BATCH_ITEMS:
                if (r == 0)
                        chunk_drop(u->held);
                break;
        case WOP_BATCH_SEAL:
                if (r == 0)
                        upload_sealed(u);
                break;
        default:
                /* ABORT: open while chunks of the batch are left, unless
                 * the server stops; else, whatever came of it, not open
                 * any more for this upload (recovery deletes what stayed). */
                u->open = r == 0 && u->op.count == WRITER_CHUNK &&
                          !atomic_load(&u->api->stopping);
                return;
        }
        if (r < 0)
                fail_write(u, r);
}

/* The request is gone and no op is in flight: on the MHD thread from
 * ctx_free, or on the writer thread from the done() of the op that was in
 * flight when the request went. What the batch stored goes with it. */
static void upload_abandon(struct upload *u)
{
        upload_settle(u);
        if (!u->open) {
                upload_destroy(u);
                return;
        }
        chunk_drop(&u->chunks[0]);
        chunk_drop(&u->chunks[1]);
        upload_push(u, WOP_BATCH_ABORT, false);
}

/* req->ctx_free: the request ends; never while parked. */
static void upload_release(void *ctx)
{
        struct upload *u = ctx;
        int sent = FLIGHT_SENT;

        if (!u)
                return;
        u->req = NULL;
        if (atomic_compare_exchange_strong(&u->flight, &sent, FLIGHT_ORPHANED))
                return;
        upload_abandon(u);
}

/* With no op in flight: pushes the op due next, if any; true when it
 * did. */
static bool upload_push_next(struct upload *u, bool ending)
{
        struct chunk *c;

        /* A stopping server waits for suspended requests only so long:
         * an upload does not start another op then. */
        if (!u->failure && atomic_load(&u->api->stopping))
                fail_write(u, -ESHUTDOWN);
        if (u->failure) {
                if (!u->open)
                        return false;
                upload_push(u, WOP_BATCH_ABORT, false);
                return true;
        }
        if (u->batch->sealed)
                return false;
        /* A full chunk, or the last, moves to held for its ITEMS op, and
         * fill takes the next items meanwhile (the first chunk's wait for
         * OPEN included). */
        if (u->held->n_jobs == 0 && (chunk_full(u->fill) || ending)) {
                c = u->held;
                u->held = u->fill;
                u->fill = c;
        }
        if (!u->open) {
                /* every item in held: the whole batch in one commit */
                bool whole = ending && u->held->n_jobs > 0 && (int64_t) u->held->n_jobs == u->items;

                if (u->held->n_jobs == 0 && !ending)
                        return false;
                if (whole)
                        u->batch->size = u->items;
                upload_push(u, WOP_BATCH_OPEN, whole);
        } else if (u->held->n_jobs > 0) {
                for (size_t i = 0; i < u->held->n_jobs; i++)
                        u->held->jobs[i]->batch = u->batch->id;
                upload_push(u, WOP_BATCH_ITEMS, true);
        } else if (ending) {
                u->batch->size = u->items;
                upload_push(u, WOP_BATCH_SEAL, false);
        } else
                return false;
        return true;
}

/* Moves the upload on as far as it goes without waiting: takes in the op
 * that is done and pushes the one due next. True when it can only wait for
 * the op in flight (fill is full, the items ended, or something failed):
 * the request is parked. False when it takes more items, or, when ending,
 * when it is over (sealed, or failed with nothing left stored). */
static bool upload_step(struct upload *u, bool ending)
{
        for (;;) {
                upload_settle(u);
                if (atomic_load(&u->flight) == FLIGHT_NONE && !upload_push_next(u, ending))
                        return false;
                if (!ending && !u->failure && !chunk_full(u->fill))
                        return false;
                if (upload_park(u))
                        return true;
        }
}

/* One more item from its spec; line is its NDJSON line, 0 for none. */
static void upload_add(struct upload *u, const json_t *spec, int64_t line)
{
        struct chunk *c = u->fill;
        struct spec_error err;
        struct job *j;
        int r;

        if (u->items >= u->max_items) {
                u->failure = UPLOAD_TOO_MANY;
                return;
        }
        r = spec_job(spec, &u->defaults, &j, &err);
        if (r < 0) {
                fail_item(u, r, &err, line);
                return;
        }
        j->index = u->items++;
        c->jobs[c->n_jobs++] = j;
        c->bytes += strlen(j->args) + (j->tag ? strlen(j->tag) : 0);
}

/* The batch's "limits" (absent or null: none) as stored text in *ret (the
 * caller's, NULL for none). -EINVAL with err filled, or -ENOMEM. */
static int batch_limits(const json_t *obj, char **ret, struct spec_error *err)
{
        const json_t *v = json_object_get(obj, "limits");
        char *text = NULL;
        int r;

        if (v && !json_is_null(v)) {
                r = limiter_limits_check(v, &text, err->message, sizeof(err->message));
                if (r < 0) {
                        err->code = "invalid_request";
                        return r;
                }
        }
        *ret = text;
        return 0;
}

/* limits: stored text or NULL; base_url: an OpenAI batch file's, or NULL
 * for any other batch; both taken in every case. */
static int upload_new(struct request *req, const struct spec_defaults *d, char *limits,
                      char *base_url, struct upload **ret)
{
        struct upload *u = calloc(1, sizeof(*u));

        if (!u) {
                free(limits);
                free(base_url);
                return -ENOMEM;
        }
        pthread_mutex_init(&u->park_lock, NULL);
        u->batch = batch_new();
        u->base_url = base_url;
        u->custom_ids = base_url ? json_object() : NULL;
        if (!u->batch || (base_url && !u->custom_ids)) {
                free(limits);
                upload_destroy(u);
                return -ENOMEM;
        }
        u->req = req;
        u->api = req->api;
        u->max_items = req->api->o.max_batch_items;
        if (base_url && u->max_items > SPEC_OPENAI_MAX_LINES)
                u->max_items = SPEC_OPENAI_MAX_LINES;
        u->fill = &u->chunks[0];
        u->held = &u->chunks[1];
        u->defaults = *d;
        u->batch->priority = d->priority;
        u->batch->limits = limits;
        req->ctx = u;
        req->ctx_free = upload_release;
        *ret = u;
        return 0;
}

static enum MHD_Result item_error(struct request *req, const struct upload *u)
{
        struct strbuf b = { 0 };
        char msg[512];

        if (u->err_line > 0)
                snprintf(msg, sizeof(msg), "item %lld (line %lld): %s", (long long) u->err_index,
                         (long long) u->err_line, u->err.message);
        else
                snprintf(msg, sizeof(msg), "item %lld: %s", (long long) u->err_index,
                         u->err.message);
        strbuf_puts(&b, "{\"error\":{\"code\":");
        strbuf_json_string(&b, u->err.code);
        strbuf_puts(&b, ",\"message\":");
        strbuf_json_string(&b, msg);
        strbuf_printf(&b, ",\"index\":%lld", (long long) u->err_index);
        if (u->err_line > 0)
                strbuf_printf(&b, ",\"line\":%lld", (long long) u->err_line);
        strbuf_puts(&b, "}}");
        return reply_body(req, MHD_HTTP_BAD_REQUEST, &b, NULL, NULL);
}

/* The answer once the upload is over. */
static enum MHD_Result upload_answer(struct request *req, struct upload *u)
{
        struct strbuf b = { 0 };
        char location[64];

        switch (u->failure) {
        case UPLOAD_OK:
                break;
        case UPLOAD_ITEM:
                return item_error(req, u);
        case UPLOAD_TOO_MANY:
                return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "batch_too_large",
                                   "a batch has at most %lld items", (long long) u->max_items);
        case UPLOAD_REFUSED:
                return request_refuse(req);
        case UPLOAD_WRITE:
                return reply_write_error(req, u->error, "storing the batch");
        }
        /* Just sealed: every item is pending. */
        u->batch->counts[JOB_PENDING] = u->batch->size;
        reply_batch(&b, u->batch);
        snprintf(location, sizeof(location), "/v1/batches/%lld", (long long) u->batch->id);
        return reply_body(req, MHD_HTTP_ACCEPTED, &b, MHD_HTTP_HEADER_LOCATION, location);
}

/* ---- POST /v1/batches, JSON ---- */

static enum MHD_Result bad_batch(struct request *req, const char *code, const char *msg)
{
        return reply_error(req, MHD_HTTP_BAD_REQUEST, code, "%s", msg);
}

static const char *unknown_field(const json_t *body)
{
        const char *name;
        json_t *v;

        json_object_foreach((json_t *) body, name, v) {
                const char *const *f;

                for (f = batch_fields; *f; f++)
                        if (strcmp(*f, name) == 0)
                                break;
                if (!*f)
                        return name;
        }
        return NULL;
}

/* The field, or NULL when absent or null. */
static const json_t *field(const json_t *obj, const char *name)
{
        const json_t *v = json_object_get(obj, name);

        return json_is_null(v) ? NULL : v;
}

/* Validates what does not depend on the items and makes the upload
 * (req->ctx); otherwise answers. */
static enum MHD_Result json_start(struct request *req, struct upload **ret)
{
        const json_t *body = req->json, *items, *jobs;
        json_t *wrapper;
        struct spec_defaults d;
        struct spec_error err;
        struct upload *u;
        const char *name;
        char *limits;
        int r;

        if (!json_is_object(body))
                return bad_batch(req, "invalid_request", "a batch must be a JSON object");
        name = unknown_field(body);
        if (name)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "unknown_field",
                                   "unknown field \"%.64s\"; a batch has task, kind, timeout, "
                                   "max_attempts, priority, limits, and items or jobs", name);
        items = field(body, "items");
        jobs = field(body, "jobs");
        if (!items == !jobs)
                return bad_batch(req, "invalid_request",
                                 "a batch has either \"items\" or \"jobs\"");
        if (!json_is_array(items ? items : jobs))
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "\"%s\" must be an array", items ? "items" : "jobs");
        r = spec_batch_defaults(body, req->api->o.default_timeout, &d, &err);
        if (r < 0)
                return bad_batch(req, err.code, err.message);
        if (items && !d.task)
                return bad_batch(req, "invalid_request", "\"task\" is required with \"items\"");
        if ((int64_t) json_array_size(items ? items : jobs) > req->api->o.max_batch_items)
                return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "batch_too_large",
                                   "a batch has at most %lld items",
                                   (long long) req->api->o.max_batch_items);
        r = batch_limits(body, &limits, &err);
        if (r == -EINVAL)
                return bad_batch(req, err.code, err.message);
        wrapper = items ? json_object() : NULL;
        if (r == 0 && items && !wrapper) {
                free(limits);
                r = -ENOMEM;
        }
        if (r == 0)
                r = upload_new(req, &d, limits, NULL, &u);
        if (r < 0) {
                json_decref(wrapper);
                return reply_write_error(req, r, "starting the batch");
        }
        u->wrapper = wrapper;
        u->array = items ? items : jobs;
        u->items_form = items != NULL;
        *ret = u;
        return MHD_YES;
}

/* The items form: each item is the args of a job of the batch's task. */
static void json_add_item(struct upload *u, const json_t *item)
{
        struct spec_error err = { .code = "invalid_request" };

        if (!json_is_object(item) && !json_is_array(item)) {
                snprintf(err.message, sizeof(err.message),
                         "an item must be an object or an array of args");
                fail_item(u, -EINVAL, &err, 0);
                return;
        }
        if (json_object_set(u->wrapper, "args", (json_t *) item) < 0) {
                fail_write(u, -ENOMEM);
                return;
        }
        upload_add(u, u->wrapper, 0);
}

static enum MHD_Result submit_json(struct request *req)
{
        struct upload *u = req->ctx;
        size_t total;
        enum MHD_Result ret;

        if (!u && request_arg(req, "format"))
                return reply_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   "?format= takes a JSONL file: send it with Content-Type: "
                                   "application/x-ndjson");
        if (!u && req->query_args > 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                   "a JSON batch has its fields in the body; the query string "
                                   "is for an NDJSON one");
        if (!u) {
                ret = json_start(req, &u);
                if (!req->ctx)
                        return ret;
        }
        total = json_array_size(u->array);
        for (;;) {
                if (upload_step(u, u->next == total))
                        return MHD_YES;
                if (u->failure || u->batch->sealed)
                        return upload_answer(req, u);
                while (!chunk_full(u->fill) && u->next < total && !u->failure) {
                        const json_t *v = json_array_get(u->array, u->next++);

                        if (u->items_form)
                                json_add_item(u, v);
                        else
                                upload_add(u, v, 0);
                }
        }
}

/* ---- POST /v1/batches, NDJSON ---- */

struct query {
        json_t *obj;
        bool oom;
};

/* The route lets through only the batch fields (and format, base_url),
 * each once. Numbers come as JSON text, so they are checked as in a JSON
 * batch; what does not parse as JSON stays a string, which those checks
 * refuse. */
static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
        struct query *q = cls;
        json_t *v = NULL;

        (void) kind;
        /* Not defaults: openai_query() reads them. */
        if (strcmp(key, "format") == 0 || strcmp(key, "base_url") == 0)
                return MHD_YES;
        if (!value)
                value = "";
        if (strcmp(key, "task") != 0 && strcmp(key, "kind") != 0)
                v = json_loads(value, JSON_DECODE_ANY, NULL);
        if (!v)
                v = json_string(value);
        if (!v || json_object_set_new(q->obj, key, v) < 0) {
                q->oom = true;
                return MHD_NO;
        }
        return MHD_YES;
}

static int query_fail(struct spec_error *err, const char *message)
{
        err->code = "invalid_request";
        snprintf(err->message, sizeof(err->message), "%s", message);
        return -EINVAL;
}

/* ?format= and ?base_url=: for an OpenAI batch file, its base URL in *ret
 * (the caller's) and the http task in d; NULL for a plain NDJSON batch.
 * -EINVAL with err filled, or -ENOMEM. */
static int openai_query(struct request *req, struct spec_defaults *d, char **ret,
                        struct spec_error *err)
{
        const char *format = request_arg(req, "format");
        const char *base = request_arg(req, "base_url");
        int r;

        if (!format) {
                if (base)
                        return query_fail(err, "\"base_url\" is for ?format=openai");
                *ret = NULL;
                return 0;
        }
        if (strcmp(format, "openai") != 0)
                return query_fail(err, "\"format\" must be openai");
        if (request_arg(req, "task") || request_arg(req, "kind"))
                return query_fail(err, "a format=openai batch runs the http task: it takes "
                                  "no task or kind");
        if (!base)
                base = req->api->o.openai_base_url;
        if (!base)
                return query_fail(err, "no base URL for the file's paths: give ?base_url= "
                                  "or set [openai] base_url in the config");
        r = spec_openai_base_url(base, ret, err);
        if (r == 0)
                d->task = task_find("http");
        return r;
}

static enum MHD_Result ndjson_start(struct request *req)
{
        struct query q = { .obj = json_object() };
        struct spec_defaults d;
        struct spec_error err;
        struct upload *u;
        char *limits = NULL, *base_url = NULL;
        int r = -ENOMEM;

        if (q.obj)
                MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, query_arg, &q);
        if (!q.obj || q.oom)
                goto fail;
        r = spec_batch_defaults(q.obj, req->api->o.default_timeout, &d, &err);
        if (r == 0)
                r = openai_query(req, &d, &base_url, &err);
        if (r == 0)
                r = batch_limits(q.obj, &limits, &err);
        json_decref(q.obj);
        q.obj = NULL;
        if (r == 0)
                r = upload_new(req, &d, limits, base_url, &u);
        else
                free(base_url);
        if (r == 0)
                return MHD_YES;
        if (r == -EINVAL)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, err.code, "query: %s", err.message);
fail:
        json_decref(q.obj);
        return reply_write_error(req, r, "starting the batch");
}

static bool blank(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
                        return false;
        return true;
}

/* A line of an OpenAI batch file as its job's spec (*ret, the caller's),
 * once its custom_id is known to be the file's only one. */
static int openai_spec(struct upload *u, const json_t *line, int64_t line_no, json_t **ret,
                       struct spec_error *err)
{
        const json_t *id, *first;
        json_t *spec;
        int r;

        r = spec_openai_line(line, u->base_url, &spec, &id, err);
        if (r < 0)
                return r;
        first = json_object_getn(u->custom_ids, json_string_value(id), json_string_length(id));
        if (first) {
                err->code = "duplicate_custom_id";
                snprintf(err->message, sizeof(err->message),
                         "custom_id \"%.64s\" is also on line %lld", json_string_value(id),
                         (long long) json_integer_value(first));
                r = -EINVAL;
        } else if (json_object_setn_new_nocheck(u->custom_ids, json_string_value(id),
                                                json_string_length(id),
                                                json_integer(line_no)) < 0)
                r = -ENOMEM;
        if (r < 0) {
                json_decref(spec);
                return r;
        }
        *ret = spec;
        return 0;
}

static void ndjson_add_line(struct upload *u, struct request *req)
{
        struct spec_error err;
        json_t *spec, *line;
        int r;

        r = spec_parse(req->body, req->body_len, &spec, &err);
        if (r == 0 && u->base_url) {
                line = spec;
                r = openai_spec(u, line, req->line_no, &spec, &err);
                json_decref(line);
        }
        if (r < 0) {
                fail_item(u, r, &err, req->line_no);
                return;
        }
        upload_add(u, spec, req->line_no);
        json_decref(spec);
}

static enum MHD_Result submit_ndjson(struct request *req)
{
        struct upload *u = req->ctx;

        if (!u)
                return ndjson_start(req);
        if (req->body_done) {
                if (req->refused && !u->failure)
                        u->failure = UPLOAD_REFUSED;
                if (req->error)
                        fail_write(u, req->error);
                if (upload_step(u, true))
                        return MHD_YES;
                return upload_answer(req, u);
        }
        /* A line; while the upload is parked it stays untaken. */
        if (upload_step(u, false))
                return MHD_YES;
        req->line_taken = true;
        if (!u->failure && !blank(req->body, req->body_len))
                ndjson_add_line(u, req);
        /* Pushes the chunk this line filled, or parks. */
        upload_step(u, false);
        return MHD_YES;
}

enum MHD_Result batches_submit(struct request *req)
{
        return req->ndjson ? submit_ndjson(req) : submit_json(req);
}

/* ---- GET /v1/batches/{id} ---- */

static enum MHD_Result no_such_batch(struct request *req)
{
        return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no batch %lld",
                           (long long) req->id);
}

static int read_batch(struct request *req, struct batch **ret)
{
        struct store_reader *r;
        int k;

        k = api_reader(req->api, &r);
        if (k < 0)
                return k;
        return store_get_batch(r, req->id, ret);
}

static enum MHD_Result answer_batch(struct request *req)
{
        struct strbuf b = { 0 };
        struct batch *bt;
        int r;

        r = read_batch(req, &bt);
        if (r == -ENOENT)
                return no_such_batch(req);
        if (r < 0)
                return reply_store_error(req, r);
        reply_batch(&b, bt);
        batch_free(bt);
        return reply_body(req, MHD_HTTP_OK, &b, NULL, NULL);
}

enum MHD_Result batches_get(struct request *req)
{
        return answer_batch(req);
}

/* ---- POST /v1/batches/{id}/cancel ---- */

/* The writer thread, once the cancellation is committed. */
static void cancel_done(struct sched_batch_cancel *c)
{
        request_wake(c->userdata);
}

enum MHD_Result batches_cancel(struct request *req)
{
        struct sched_batch_cancel *c = req->ctx;
        struct batch *bt;
        bool finished;
        int r;

        if (req->resumed) {
                /* Finished by another cancel and deleted meanwhile. */
                if (c->result == -ENOENT)
                        return no_such_batch(req);
                if (c->result < 0)
                        return reply_write_error(req, c->result, "cancelling the batch");
                return answer_batch(req);
        }
        r = read_batch(req, &bt);
        if (r == -ENOENT)
                return no_such_batch(req);
        if (r < 0)
                return reply_store_error(req, r);
        finished = bt->finished_at > 0;
        batch_free(bt);
        if (finished)
                return reply_error(req, MHD_HTTP_CONFLICT, "already_finished",
                                   "batch %lld has already finished", (long long) req->id);
        /* The request's until it ends; the connection stays suspended
         * until done(), so it outlives the scheduler's use of it. */
        c = calloc(1, sizeof(*c));
        if (!c)
                return reply_write_error(req, -ENOMEM, "cancelling the batch");
        c->batch = req->id;
        c->done = cancel_done;
        c->userdata = req;
        req->ctx = c;
        req->ctx_free = free;
        request_suspend(req);
        r = sched_cancel_batch(req->api->d.sched, c);
        if (r < 0) {
                c->result = r;
                request_wake(req);
        }
        return MHD_YES;
}

/* ---- DELETE /v1/batches/{id} ---- */

static void batch_release(void *b)
{
        batch_free(b);
}

enum MHD_Result batches_delete(struct request *req)
{
        struct batch *b;
        bool more;

        if (!req->resumed) {
                b = batch_new();
                if (!b)
                        return reply_write_error(req, -ENOMEM, "deleting the batch");
                b->id = req->id;
                req->ctx = b;
                req->ctx_free = batch_release;
                req->op = (struct wop) { .type = WOP_BATCH_DELETE, .batch = b };
                request_write(req, &req->op);
                return MHD_YES;
        }
        if (req->op.type == WOP_BATCH_DELETE && (req->op.result < 0 || req->op.count < WRITER_CHUNK))
                return reply_deleted(req, req->op.result, "batch");
        /* The batch is hidden and its first chunk gone: it is deleted for
         * every client, and recovery deletes what a crash would leave of
         * it. The rest goes chunk by chunk as an aborted upload's does,
         * until a chunk fails or the server stops, which leave it to the
         * next start. */
        more = req->op.result == 0 && req->op.count == WRITER_CHUNK;
        if (more && !atomic_load(&req->api->stopping)) {
                req->op = (struct wop) { .type = WOP_BATCH_ABORT, .batch = req->ctx };
                request_write(req, &req->op);
                return MHD_YES;
        }
        if (more || (req->op.result < 0 && req->op.result != -ENOENT))
                log_warning("batch %lld: deleted; the rest of its jobs go at the next start (%s)",
                            (long long) req->id, more ? "stopping" : strerror(-req->op.result));
        return reply_deleted(req, 0, "batch");
}
