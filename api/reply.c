/* Answers. Stored JSON (args, tag, result, error) is already compact JSON
 * text, so the job is written as text around it, never re-parsed. Every
 * response body ends with a newline, for people reading it in a terminal. */
#include "api/reply.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "api/request.h"

void reply_time(char buf[static REPLY_TIME_MAX], int64_t ms)
{
        time_t secs = (time_t) (ms / 1000);
        struct tm tm;
        size_t n;

        if (!gmtime_r(&secs, &tm) ||
            (n = strftime(buf, REPLY_TIME_MAX, "%Y-%m-%dT%H:%M:%S", &tm)) == 0) {
                snprintf(buf, REPLY_TIME_MAX, "1970-01-01T00:00:00.000Z");
                return;
        }
        snprintf(buf + n, REPLY_TIME_MAX - n, ".%03uZ", (unsigned) (ms % 1000));
}

static void put_name(struct strbuf *b, const char *field, const char *name)
{
        strbuf_printf(b, ",\"%s\":\"%s\"", field, name ? name : "unknown");
}

/* JSON text spliced as is, or null. */
static void put_raw(struct strbuf *b, const char *field, const char *json)
{
        strbuf_printf(b, ",\"%s\":%s", field, json ? json : "null");
}

/* A number, or null when it is unset (unset_below and lower). */
static void put_int(struct strbuf *b, const char *field, int64_t v, int64_t unset_below,
                    bool quoted)
{
        if (v <= unset_below)
                strbuf_printf(b, ",\"%s\":null", field);
        else
                strbuf_printf(b, quoted ? ",\"%s\":\"%lld\"" : ",\"%s\":%lld", field,
                              (long long) v);
}

static void put_time(struct strbuf *b, const char *field, int64_t ms)
{
        char t[REPLY_TIME_MAX];

        if (ms <= 0) {
                strbuf_printf(b, ",\"%s\":null", field);
                return;
        }
        reply_time(t, ms);
        strbuf_printf(b, ",\"%s\":\"%s\"", field, t);
}

size_t reply_job_open(char buf[static REPLY_OPEN_MAX], int64_t id)
{
        return (size_t) snprintf(buf, REPLY_OPEN_MAX, "{\"id\":\"%lld\",", (long long) id);
}

void reply_job_fields(struct strbuf *b, const struct job *j)
{
        strbuf_puts(b, "\"task\":");
        strbuf_json_string(b, j->task ? j->task : "");
        put_name(b, "kind", job_kind_name(j->kind));
        put_name(b, "state", job_state_name(j->state));
        put_raw(b, "args", j->args ? j->args : "{}");
        put_raw(b, "tag", j->tag);
        put_raw(b, "result", j->result);
        put_raw(b, "error", j->error);
        strbuf_printf(b, ",\"attempts\":%d,\"max_attempts\":%d,\"priority\":%d,\"timeout\":%.15g",
                      j->attempts, j->max_attempts, j->priority, j->timeout);
        strbuf_puts(b, ",\"key\":");
        if (j->key)
                strbuf_json_string(b, j->key);
        else
                strbuf_puts(b, "null");
        put_int(b, "batch", j->batch, 0, true);
        put_int(b, "index", j->index, -1, false);
        put_int(b, "seq", j->seq, 0, false);
}

void reply_job_close(struct strbuf *b, int64_t created_at, int64_t started_at,
                     int64_t finished_at)
{
        put_time(b, "created_at", created_at);
        put_time(b, "started_at", started_at);
        put_time(b, "finished_at", finished_at);
        strbuf_puts(b, "}");
}

void reply_job(struct strbuf *b, const struct job *j)
{
        char open[REPLY_OPEN_MAX];

        strbuf_append(b, open, reply_job_open(open, j->id));
        reply_job_fields(b, j);
        reply_job_close(b, j->created_at, j->started_at, j->finished_at);
}

void reply_batch(struct strbuf *b, const struct batch *bt)
{
        strbuf_printf(b, "{\"id\":\"%lld\",\"size\":%lld,\"counts\":{", (long long) bt->id,
                      (long long) bt->size);
        for (int s = 0; s < JOB_STATE__COUNT; s++)
                strbuf_printf(b, "%s\"%s\":%lld", s ? "," : "", job_state_name(s),
                              (long long) bt->counts[s]);
        strbuf_printf(b, "},\"done\":%s,\"priority\":%d", bt->finished_at > 0 ? "true" : "false",
                      bt->priority);
        put_time(b, "created_at", bt->created_at);
        put_time(b, "finished_at", bt->finished_at);
        strbuf_puts(b, "}");
}

/* A response owning body's text; NULL when out of memory. */
static struct MHD_Response *response_new(struct strbuf *body, const char *header,
                                         const char *value)
{
        struct MHD_Response *resp;
        size_t len;
        char *text;

        strbuf_puts(body, "\n");
        if (strbuf_steal(body, &text, &len) < 0)
                return NULL;
        resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return NULL;
        }
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                    REPLY_JSON_TYPE) != MHD_YES ||
            (header && MHD_add_response_header(resp, header, value) != MHD_YES)) {
                MHD_destroy_response(resp);
                return NULL;
        }
        return resp;
}

/* Queues resp (NULL: out of memory, answered with a static 500). */
static enum MHD_Result queue(struct request *req, unsigned status, struct MHD_Response *resp)
{
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";
        enum MHD_Result ret;

        if (!resp) {
                status = MHD_HTTP_INTERNAL_SERVER_ERROR;
                resp = MHD_create_response_from_buffer(sizeof(oom) - 1, (void *) oom,
                                                       MHD_RESPMEM_PERSISTENT);
                if (!resp)
                        return MHD_NO;
        }
        /* While stopping, keep-alive clients are told to go. */
        if (atomic_load(&req->api->stopping) &&
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES) {
                MHD_destroy_response(resp);
                return MHD_NO;
        }
        ret = MHD_queue_response(req->conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

enum MHD_Result reply_body(struct request *req, unsigned status, struct strbuf *body,
                           const char *header, const char *value)
{
        return queue(req, status, response_new(body, header, value));
}

static int dump_to_strbuf(const char *s, size_t n, void *data)
{
        strbuf_append(data, s, n);
        return 0;
}

enum MHD_Result reply_value(struct request *req, unsigned status, json_t *v)
{
        struct strbuf b = { 0 };

        if (!v)
                return queue(req, status, NULL);
        if (json_dump_callback(v, dump_to_strbuf, &b, JSON_COMPACT) < 0)
                b.failed = true;
        json_decref(v);
        return reply_body(req, status, &b, NULL, NULL);
}

enum MHD_Result reply_job_answer(struct request *req, unsigned status, const struct job *j)
{
        struct strbuf b = { 0 };

        reply_job(&b, j);
        return reply_body(req, status, &b, NULL, NULL);
}

enum MHD_Result reply_empty(struct request *req, unsigned status)
{
        return queue(req, status, MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
}

static enum MHD_Result error_va(struct request *req, unsigned status, const char *header,
                                const char *value, const char *code, const char *fmt, va_list ap)
{
        struct strbuf b = { 0 };
        char msg[512];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        strbuf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", code);
        strbuf_json_string(&b, msg);
        strbuf_puts(&b, "}}");
        return reply_body(req, status, &b, header, value);
}

enum MHD_Result reply_error(struct request *req, unsigned status, const char *code,
                            const char *fmt, ...)
{
        enum MHD_Result ret;
        va_list ap;

        va_start(ap, fmt);
        ret = error_va(req, status, NULL, NULL, code, fmt, ap);
        va_end(ap);
        return ret;
}

enum MHD_Result reply_error_with(struct request *req, unsigned status, const char *header,
                                 const char *value, const char *code, const char *fmt, ...)
{
        enum MHD_Result ret;
        va_list ap;

        va_start(ap, fmt);
        ret = error_va(req, status, header, value, code, fmt, ap);
        va_end(ap);
        return ret;
}

enum MHD_Result reply_store_error(struct request *req, int r)
{
        return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                           "reading the job store failed: %s", strerror(-r));
}

enum MHD_Result reply_write_error(struct request *req, int r, const char *what)
{
        switch (r) {
        case -EIO:
                return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                                   "the job store cannot take writes now");
        case -ESHUTDOWN:
                return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                                   "futured is shutting down");
        default:
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "%s failed: %s", what, strerror(-r));
        }
}

enum MHD_Result reply_deleted(struct request *req, int result, const char *what)
{
        switch (result) {
        case 0:
                return reply_empty(req, MHD_HTTP_NO_CONTENT);
        case -ENOENT:
                return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no %s %lld", what,
                                   (long long) req->id);
        case -EBUSY:
                return reply_error(req, MHD_HTTP_CONFLICT, "not_finished",
                                   "%s %lld has not finished; cancel it first", what,
                                   (long long) req->id);
        default:
                return reply_write_error(req, result, "the delete");
        }
}
