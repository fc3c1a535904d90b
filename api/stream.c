/* GET /v1/batches/{id}/results: a batch's finished jobs, streamed as they
 * finish, as NDJSON or as Server-Sent Events.
 *
 * The body comes from MHD's content reader, which never blocks: it serves
 * what is rendered in the stream's buffer and, when that is empty, reads
 * the next page of results after the cursor (on the MHD thread that owns
 * the connection, with that thread's store reader). When nothing more has
 * finished, it suspends the connection, registers a hub waiter on the
 * batch, reads once more (a job may have ended in between: then it fires
 * the waiter itself) and returns 0; the waiter's fire resumes the
 * connection, once per suspend, and MHD calls the reader again. The
 * waiter's deadline doubles as a keepalive: a suspended connection never
 * notices a client that left, a write does. MHD's free callback (body sent
 * or client gone) is the one end of a stream: it forgets the waiter under
 * the hub's lock and frees. A suspended stream counts in api->suspended
 * until its reader runs again, and a stopping server ends every stream at
 * its next wake, so shutdown waits for none.
 *
 * Done: the batch row says every job had finished, and a page read after
 * it is empty; no job of the batch can end after that.
 *
 * ?format=openai renders each job as a line of an OpenAI Batch API output
 * file instead (render_openai()); cursors, order and SSE are the same. */
#include <errno.h>
#include <float.h>
#include <math.h>
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

#define STREAM_PAGE 256                 /* jobs read at once */
#define STREAM_BUFFER (256 * 1024)      /* bytes rendered at once, past which a page stops */
/* The response's own buffer, which MHD allocates but does not use for a
 * chunked body: that is read straight into the connection's buffer. */
#define STREAM_BLOCK 1024
#define STREAM_KEEPALIVE 15.0           /* seconds of silence before a keepalive line */

#define NDJSON_TYPE "application/x-ndjson"
#define SSE_TYPE "text/event-stream"

struct stream {
        struct api *api;
        struct MHD_Connection *conn;
        int64_t batch;
        enum store_order order;
        bool sse;
        bool openai;                    /* OpenAI batch output lines */
        int64_t cursor;                 /* of the last job rendered: its seq or id */
        double until;                   /* CLOCK_MONOTONIC end of ?wait=; INFINITY: none */
        struct strbuf out;              /* rendered; sent up to `sent` */
        size_t sent;
        bool last;                      /* out ends the body: nothing follows */
        double written_at;              /* CLOCK_MONOTONIC of the last bytes sent, or the start */
        bool suspended;                 /* counted in api->suspended */
        int error;                      /* a failure while suspended: end on the next read */
        struct hub_waiter waiter;       /* on any job of the batch */
};

/* An OpenAI response object, {"status_code", "request_id", "body"}, from
 * what the http task reports: its result (status, headers, json | body |
 * body_base64), or the error of a non-2xx answer, which holds the status
 * and body but no headers (so no request id). */
static json_t *openai_response(const json_t *from)
{
        const json_t *id = json_object_get(json_object_get(from, "headers"), "x-request-id");
        const json_t *body = json_object_get(from, "json");

        if (!body)
                body = json_object_get(from, "body");
        if (!body)
                body = json_object_get(from, "body_base64");
        return json_pack("{s:I, s:s, s:O}", "status_code",
                         (json_int_t) json_integer_value(json_object_get(from, "status")),
                         "request_id", json_is_string(id) ? json_string_value(id) : "",
                         "body", body ? (json_t *) body : json_null());
}

/* Stored texts may hold \u0000: results and errors carry bytes from
 * outside (an http body, a command's output). */
#define STORED_JSON (JSON_DECODE_ANY | JSON_ALLOW_NUL)

/* The job as a line of an OpenAI batch output file: "response" for every
 * job that got an HTTP answer, 2xx or not (OpenAI's own rule), "error"
 * ({"code": the error type, "message"}) for one that got none. A job of
 * another task that succeeded answers 200 with its result as the body;
 * custom_id is the tag's, null when it has none. Stored text that does not
 * parse reads as null. */
static int render_openai(struct strbuf *b, const struct job *j)
{
        json_t *result = j->result ? json_loads(j->result, STORED_JSON, NULL) : NULL;
        json_t *error = j->error ? json_loads(j->error, STORED_JSON, NULL) : NULL;
        json_t *tag = j->tag ? json_loads(j->tag, STORED_JSON, NULL) : NULL;
        const json_t *custom_id = json_object_get(tag, "custom_id");
        const char *type = json_string_value(json_object_get(error, "type"));
        const char *message = json_string_value(json_object_get(error, "message"));
        json_t *response = NULL, *failure = NULL, *line = NULL;
        char id[48], *text = NULL;
        int r = -ENOMEM;

        if (j->state == JOB_SUCCEEDED && strcmp(j->task, "http") == 0)
                response = openai_response(result);
        else if (j->state == JOB_SUCCEEDED)
                response = json_pack("{s:i, s:s, s:O}", "status_code", 200, "request_id", "",
                                     "body", result ? result : json_null());
        else if (type && strcmp(type, "http_status") == 0)
                response = openai_response(error);
        else
                failure = json_pack("{s:s, s:s}", "code", type ? type : job_state_name(j->state),
                                    "message", message ? message : "");
        snprintf(id, sizeof(id), "batch_req_%lld", (long long) j->id);
        if (response || failure)
                line = json_pack("{s:s, s:O, s:O, s:O}", "id", id, "custom_id",
                                 json_is_string(custom_id) ? (json_t *) custom_id : json_null(),
                                 "response", response ? response : json_null(),
                                 "error", failure ? failure : json_null());
        if (line)
                text = json_dumps(line, JSON_COMPACT);
        if (text) {
                strbuf_puts(b, text);
                free(text);
                r = 0;
        }
        json_decref(line);
        json_decref(response);
        json_decref(failure);
        json_decref(tag);
        json_decref(error);
        json_decref(result);
        return r;
}

/* A store walk callback: one finished job as a line or an event. A full
 * buffer stops the page early (-ENOBUFS, not an error). */
static int render_job(struct job *j, void *userdata)
{
        struct stream *s = userdata;
        int r = 0;

        s->cursor = s->order == STORE_ORDER_COMPLETION ? j->seq : j->id;
        if (s->sse)
                strbuf_printf(&s->out, "id: %lld\nevent: result\ndata: ", (long long) s->cursor);
        if (s->openai)
                r = render_openai(&s->out, j);
        else
                reply_job(&s->out, j);
        strbuf_puts(&s->out, s->sse ? "\n\n" : "\n");
        job_free(j);
        if (r < 0)
                return r;
        return s->out.len >= STREAM_BUFFER ? -ENOBUFS : 0;
}

/* Renders what finished after the cursor, a page at most, into the empty
 * buffer. */
static int stream_page(struct stream *s, struct store_reader *rd)
{
        int r;

        strbuf_reset(&s->out);
        s->sent = 0;
        r = store_batch_results(rd, s->batch, s->order, s->cursor, STREAM_PAGE, render_job, s);
        if (r == -ENOBUFS)
                r = 0;
        if (r == 0 && s->out.failed)
                r = -ENOMEM;
        return r;
}

/* The next page; when it is empty and with_end, whether the batch is done,
 * and then its end. */
static int stream_fill(struct stream *s, bool with_end)
{
        struct store_reader *rd;
        struct batch *b;
        int r;

        r = api_reader(s->api, &rd);
        if (r == 0)
                r = stream_page(s, rd);
        if (r < 0 || s->out.len > 0 || !with_end)
                return r;
        r = store_get_batch(rd, s->batch, &b);
        if (r == -ENOENT) {
                /* Deleted (only a done batch can be): nothing more comes. */
                s->last = true;
                return 0;
        }
        if (r < 0)
                return r;
        /* Jobs that ended between the page and the batch come first. */
        if (b->finished_at != 0)
                r = stream_page(s, rd);
        if (r == 0 && b->finished_at != 0 && s->out.len == 0) {
                s->last = true;
                if (s->sse) {
                        /* The cursor of the last result: a client that
                         * reconnects with it is told the end again. */
                        strbuf_printf(&s->out, "id: %lld\nevent: done\ndata: ",
                                      (long long) s->cursor);
                        reply_batch(&s->out, b);
                        strbuf_puts(&s->out, "\n\n");
                        if (s->out.failed)
                                r = -ENOMEM;
                }
        }
        batch_free(b);
        return r;
}

static void stream_fired(struct hub_waiter *w)
{
        struct stream *s = (struct stream *) ((char *) w - offsetof(struct stream, waiter));

        MHD_resume_connection(s->conn);
}

/* Nothing to send and the batch is not done: suspends until a job of the
 * batch ends, the keepalive is due or ?wait= runs out. Returns what the
 * reader returns. The keepalive is due STREAM_KEEPALIVE after the last
 * write, not after the last wake: in submission order a job that ends
 * behind a slow first item wakes the stream with nothing to send. */
static ssize_t stream_park(struct stream *s)
{
        double now = task_monotonic(), left = s->until - now;
        double quiet = s->written_at + STREAM_KEEPALIVE - now;
        int r;

        if (left <= 0 || atomic_load(&s->api->stopping))
                return MHD_CONTENT_READER_END_OF_STREAM;
        s->waiter = (struct hub_waiter) {
                .batch = s->batch,
                .fire = stream_fired,
        };
        api_suspended_add(s->api);
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        r = hub_add(s->api->hub, &s->waiter, left < quiet ? left : quiet > 0 ? quiet : 0);
        if (r < 0) {
                s->error = r;
                MHD_resume_connection(s->conn);
                return 0;
        }
        /* Only new results matter here: the batch cannot be done without
         * one, since its last end is committed with its finished_at. */
        r = stream_fill(s, false);
        if (r < 0)
                s->error = r;
        if (r < 0 || s->out.len > 0)
                hub_fire(s->api->hub, &s->waiter);
        return 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
        struct stream *s = cls;
        size_t n;

        (void) pos;
        if (s->suspended) {
                s->suspended = false;
                api_suspended_sub(s->api);
        }
        if (s->error)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->sent == s->out.len && !s->last) {
                double now;

                if (stream_fill(s, true) < 0)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
                /* Silent for too long with nothing to say: a line that
                 * readers skip, whose write finds a client that left. */
                now = task_monotonic();
                if (s->out.len == 0 && !s->last && now < s->until &&
                    now - s->written_at >= STREAM_KEEPALIVE)
                        strbuf_puts(&s->out, s->sse ? ": keepalive\n\n" : "\n");
                if (s->out.failed)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (s->sent < s->out.len) {
                n = s->out.len - s->sent;
                if (n > max)
                        n = max;
                memcpy(buf, s->out.data + s->sent, n);
                s->sent += n;
                s->written_at = task_monotonic();
                if (s->sent == s->out.len) {
                        strbuf_reset(&s->out);
                        s->sent = 0;
                }
                return (ssize_t) n;
        }
        if (s->last)
                return MHD_CONTENT_READER_END_OF_STREAM;
        return stream_park(s);
}

static void stream_free(void *cls)
{
        struct stream *s = cls;

        hub_remove(s->api->hub, &s->waiter);
        if (s->suspended)
                api_suspended_sub(s->api);
        strbuf_reset(&s->out);
        free(s);
}

/* Reads order, after (or Last-Event-ID, which wins: an EventSource sends
 * it on reconnecting to the same URL), wait and format into s; a 400
 * otherwise. */
static int parse_args(struct request *req, struct stream *s, const char **ret_message)
{
        const char *order = request_arg(req, "order");
        const char *after = request_arg(req, "after");
        const char *wait = request_arg(req, "wait");
        const char *format = request_arg(req, "format");
        const char *last = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                       "Last-Event-ID");
        const char *accept = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_ACCEPT);
        double seconds;

        if (!order || strcmp(order, "completion") == 0)
                s->order = STORE_ORDER_COMPLETION;
        else if (strcmp(order, "submission") == 0)
                s->order = STORE_ORDER_SUBMISSION;
        else {
                *ret_message = "\"order\" must be completion or submission";
                return -EINVAL;
        }
        if (after && query_parse_int(after, INT64_MAX, &s->cursor) < 0) {
                *ret_message = "\"after\" must be a cursor: a non-negative integer";
                return -EINVAL;
        }
        /* An empty id is how SSE says "no last event". */
        if (last && *last && query_parse_int(last, INT64_MAX, &s->cursor) < 0) {
                *ret_message = "Last-Event-ID must be an event id: a non-negative integer";
                return -EINVAL;
        }
        s->until = INFINITY;
        if (wait) {
                if (query_parse_seconds(wait, DBL_MAX, &seconds) < 0) {
                        *ret_message = "\"wait\" must be a plain decimal number of seconds";
                        return -EINVAL;
                }
                s->until = task_monotonic() + seconds;
        }
        if (format && strcmp(format, "openai") != 0) {
                *ret_message = "\"format\" must be openai";
                return -EINVAL;
        }
        s->openai = format != NULL;
        s->sse = accept && strcasestr(accept, SSE_TYPE);
        return 0;
}

enum MHD_Result stream_results(struct request *req)
{
        struct MHD_Response *resp;
        struct store_reader *rd;
        const char *message;
        enum MHD_Result ret;
        struct stream *s;
        struct batch *b;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "out of memory");
        s->api = req->api;
        s->conn = req->conn;
        s->batch = req->id;
        s->written_at = task_monotonic();
        if (parse_args(req, s, &message) < 0) {
                free(s);
                return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request", "%s",
                                   message);
        }
        r = api_reader(req->api, &rd);
        if (r == 0)
                r = store_get_batch(rd, s->batch, &b);
        if (r < 0) {
                free(s);
                if (r == -ENOENT)
                        return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no batch %lld",
                                           (long long) req->id);
                return reply_store_error(req, r);
        }
        batch_free(b);

        /* From here on s is the response's, freed by stream_free(). */
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, s,
                                                 stream_free);
        if (!resp) {
                free(s);
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "out of memory");
        }
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                    s->sse ? SSE_TYPE : NDJSON_TYPE) != MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES) {
                MHD_destroy_response(resp);
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "out of memory");
        }
        ret = MHD_queue_response(req->conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
}
