/* The life of one request. MHD's URI log callback makes it and notes how
 * long the path came, before MHD decodes it in place. The first call of the
 * access handler routes and refuses early what needs no body (so a 413 or
 * 415 costs no buffering); body pieces are buffered up to max_body, and all
 * bodies together up to a budget, past which the rest is dropped and the
 * request answered at its end (MHD takes no answer in the middle of a
 * body); the last call parses and dispatches. A suspended request counts in
 * api->suspended from its suspend until it has run again or is freed, so
 * api_stop() can wait for none to be left. With auth on, a request without
 * a valid bearer token is refused on its first call, before any body is
 * read and before it learns whether its path exists; it ends counted by
 * route and status like any other. */
#include "api/request.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/metrics.h"
#include "api/reply.h"
#include "api/routes.h"
#include "api/spec.h"

/* Bodies buffered at once, across all connections, take at most this many
 * max_body: plenty for concurrent submissions, where max_connections x
 * max_body (4 GiB by default) would let clients take the memory. */
#define REQUEST_BODY_BUDGET 64

/* Whether Content-Type ct is type; parameters (charset) are allowed. */
static bool media_type_is(const char *ct, const char *type)
{
        size_t n = strlen(type);

        ct += strspn(ct, " \t");
        if (strncasecmp(ct, type, n) != 0)
                return false;
        ct += n;
        ct += strspn(ct, " \t");
        return *ct == '\0' || *ct == ';';
}

/* No Content-Type is taken as JSON. */
static bool json_media_type(const char *ct)
{
        return !ct || media_type_is(ct, REPLY_JSON_TYPE);
}

enum MHD_Result request_refuse(struct request *req)
{
        switch (req->refused) {
        case REQUEST_UNWANTED:
                return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                   "this resource takes no request body");
        case REQUEST_BUSY:
                return reply_error_with(req, MHD_HTTP_SERVICE_UNAVAILABLE,
                                        MHD_HTTP_HEADER_RETRY_AFTER, "1", "server_busy",
                                        "too many request bodies are coming in; retry later");
        case REQUEST_TAKEN:
        case REQUEST_TOO_LARGE:
                break;
        }
        return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                           "the request body is larger than %zu bytes", req->api->o.max_body);
}

struct request *request_new(struct api *a, struct MHD_Connection *conn, const char *uri)
{
        struct request *req = calloc(1, sizeof(*req));

        if (!req)
                return NULL;
        req->api = a;
        req->conn = conn;
        /* MHD gives no uri for a request line without one. */
        req->path_len = uri ? strcspn(uri, "?") : 0;
        req->body = req->body_inline;
        req->body_cap = sizeof(req->body_inline);
        return req;
}

/* The 401 of RFC 6750: a token that was sent but is not known is named
 * invalid, so a client can tell a typo from a missing header. */
static enum MHD_Result refuse_unauthorized(struct request *req, bool sent)
{
        return reply_error_with(req, MHD_HTTP_UNAUTHORIZED, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                sent ? "Bearer realm=\"futured\", error=\"invalid_token\""
                                     : "Bearer realm=\"futured\"",
                                "unauthorized",
                                sent ? "the bearer token is not valid"
                                     : "send Authorization: Bearer <token>");
}

struct header_count {
        const char *name;
        unsigned n;
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
        struct header_count *c = cls;

        (void)kind;
        (void)value;
        if (strcasecmp(key, c->name) == 0)
                c->n++;
        return MHD_YES;
}

/* How many times the request carries the header name. */
static unsigned header_count(struct request *req, const char *name)
{
        struct header_count c = { .name = name };

        MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_header, &c);
        return c.n;
}

enum MHD_Result request_begin(struct request *req, const char *url, const char *method)
{
        struct api *a = req->api;
        const char *length, *type, *authorization;
        unsigned long long announced;
        char allow[64], message[192];
        int r;

        req->begun = true;
        if (atomic_load(&a->stopping))
                return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                                   "futured is shutting down");
        /* The token first, whatever the path: a client without one learns
         * nothing of which paths exist. */
        r = route_find(method, url, &req->route, &req->id, allow, sizeof(allow));
        if (a->auth && (r < 0 || !(req->route->flags & ROUTE_OPEN))) {
                authorization = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                            MHD_HTTP_HEADER_AUTHORIZATION);
                /* Not a list header: a second one (a proxy's, say) would
                 * leave which of them counts to the order. */
                if (header_count(req, MHD_HTTP_HEADER_AUTHORIZATION) > 1)
                        return reply_error(req, MHD_HTTP_BAD_REQUEST, "invalid_request",
                                           "more than one Authorization header");
                if (!auth_check(a->auth, authorization))
                        return refuse_unauthorized(req, auth_is_bearer(authorization));
        }
        /* MHD decodes the path in place, so an escape ("%31" for "1", or
         * "%00", which cuts the string short) leaves it shorter than it
         * came. No path here needs one: refusing them gives every resource
         * one name. The path is not echoed: it is raw client bytes. */
        if (strlen(url) != req->path_len)
                return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no such resource");
        if (r == -EOPNOTSUPP)
                return reply_error_with(req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_HEADER_ALLOW,
                                        allow, "method_not_allowed",
                                        "this method is not allowed here; allowed: %s", allow);
        if (r < 0)
                return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no such resource");
        /* A misspelt filter or a second value must not go unnoticed: the
         * answer would look right and not be. */
        r = route_check_query(req->route, req->conn, message, sizeof(message));
        if (r < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST,
                                   r == -ENOENT ? "unknown_field" : "invalid_request", "%s", message);
        req->query_args = r;

        type = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                           MHD_HTTP_HEADER_CONTENT_TYPE);
        /* JSON Lines is the same format under the name OpenAI's batch
         * files go by. */
        req->ndjson = (req->route->flags & ROUTE_NDJSON) && type &&
                      (media_type_is(type, REQUEST_NDJSON_TYPE) ||
                       media_type_is(type, "application/jsonl"));
        length = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
        announced = length ? strtoull(length, NULL, 10) : 0;
        if (announced > 0 && !(req->route->flags & ROUTE_BODY))
                req->refused = REQUEST_UNWANTED;
        else if (announced > a->o.max_body && !req->ndjson)
                req->refused = REQUEST_TOO_LARGE;
        if (req->refused)
                return request_refuse(req);
        if (req->ndjson)
                return req->route->handler(req);
        if ((req->route->flags & ROUTE_BODY) && !json_media_type(type))
                return reply_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   (req->route->flags & ROUTE_NDJSON)
                                           ? "the body must be JSON (Content-Type: application/json) "
                                             "or JSON Lines (application/x-ndjson)"
                                           : "the body must be JSON: send Content-Type: application/json");
        return MHD_YES;
}

/* Frees the heap body and gives its bytes back to the budget. */
static void body_drop(struct request *req)
{
        if (req->body != req->body_inline)
                free(req->body);
        req->body = req->body_inline;
        req->body_cap = sizeof(req->body_inline);
        req->body_len = 0;
        atomic_fetch_sub(&req->api->body_bytes, req->body_charged);
        req->body_charged = 0;
}

size_t request_body_budget(const struct api *a)
{
        size_t max = a->o.max_body;

        return max > SIZE_MAX / REQUEST_BODY_BUDGET ? SIZE_MAX : max * REQUEST_BODY_BUDGET;
}

/* Room for need bytes (at most max_body); -EBUSY past the budget. */
static int body_grow(struct request *req, size_t need)
{
        struct api *a = req->api;
        size_t max = a->o.max_body, cap = req->body_cap, more, budget = request_body_budget(a);
        char *p;

        while (cap < need)
                cap *= 2;
        if (cap > max)
                cap = max;
        /* Charged before it is allocated, so no two threads both take the
         * last of the budget. */
        more = cap - req->body_charged;
        if (atomic_fetch_add(&a->body_bytes, more) > budget - more) {
                atomic_fetch_sub(&a->body_bytes, more);
                return -EBUSY;
        }
        p = req->body == req->body_inline ? malloc(cap) : realloc(req->body, cap);
        if (!p) {
                atomic_fetch_sub(&a->body_bytes, more);
                return -ENOMEM;
        }
        if (req->body == req->body_inline)
                memcpy(p, req->body, req->body_len);
        req->body = p;
        req->body_cap = cap;
        req->body_charged = cap;
        return 0;
}

/* Stops buffering: what came is freed now, the rest is dropped. */
static void body_refuse(struct request *req, enum request_refusal why)
{
        req->refused = why;
        body_drop(req);
}

static void body_append(struct request *req, const char *data, size_t n)
{
        int r;

        if (req->refused || req->error)
                return;
        if (!(req->route->flags & ROUTE_BODY)) {
                body_refuse(req, REQUEST_UNWANTED);
                return;
        }
        if (n > req->api->o.max_body - req->body_len) {
                body_refuse(req, REQUEST_TOO_LARGE);
                return;
        }
        if (req->body_len + n > req->body_cap) {
                r = body_grow(req, req->body_len + n);
                if (r == -EBUSY) {
                        body_refuse(req, REQUEST_BUSY);
                        return;
                }
                if (r < 0) {
                        req->error = r;
                        return;
                }
        }
        memcpy(req->body + req->body_len, data, n);
        req->body_len += n;
}

static enum MHD_Result dispatch(struct request *req)
{
        struct spec_error err;

        if (req->refused)
                return request_refuse(req);
        if (req->error)
                return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                   "out of memory");
        if ((req->route->flags & ROUTE_BODY) &&
            spec_parse(req->body, req->body_len, &req->json, &err) < 0)
                return reply_error(req, MHD_HTTP_BAD_REQUEST, err.code, "%s", err.message);
        return req->route->handler(req);
}

/* The request runs again (or ends) after a suspend. */
static void unsuspend(struct request *req)
{
        if (!req->suspended)
                return;
        req->suspended = false;
        api_suspended_sub(req->api);
}

static bool still_suspended(struct request *req)
{
        const union MHD_ConnectionInfo *ci;

        ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_SUSPENDED);
        return ci && ci->suspended == MHD_YES;
}

/* The handler with the line in body; the line is gone after it unless the
 * handler suspended without taking it. */
static enum MHD_Result offer_line(struct request *req)
{
        enum MHD_Result ret;

        req->line_ready = true;
        req->line_taken = false;
        ret = req->route->handler(req);
        if (!req->suspended || req->line_taken) {
                req->line_ready = false;
                req->body_len = 0;
        }
        return ret;
}

/* NDJSON: each complete line of the piece goes to the handler, and at the
 * end of the body an unterminated last one. When the handler suspends, the
 * rest of the piece is left in *size: MHD keeps it in its read buffer,
 * reads no more from the client meanwhile, and offers it again after the
 * resume. So an upload holds one line, whatever the size of the body. */
static enum MHD_Result ndjson_continue(struct request *req, const char *data, size_t *size)
{
        bool end = *size == 0;
        enum MHD_Result ret;
        const char *nl;
        size_t n;

        if (req->line_ready) {
                ret = offer_line(req);
                if (ret != MHD_YES || req->suspended)
                        return ret;
        }
        while (*size > 0) {
                nl = memchr(data, '\n', *size);
                n = nl ? (size_t) (nl - data) : *size;
                body_append(req, data, n);
                n += nl != NULL;
                data += n;
                *size -= n;
                if (!nl)
                        break;
                req->line_no++;
                /* Refused: what is left of the body is only counted. */
                if (req->refused || req->error)
                        continue;
                ret = offer_line(req);
                if (ret != MHD_YES || req->suspended)
                        return ret;
        }
        if (!end)
                return MHD_YES;
        if (req->body_len > 0 && !req->refused && !req->error) {
                req->line_no++;
                ret = offer_line(req);
                if (ret != MHD_YES || req->suspended)
                        return ret;
        }
        req->body_done = true;
        return req->route->handler(req);
}

/* The first run after a resume. The request still counts as suspended
 * until the handler returns: api_stop() waits for none to be, and must not
 * see none in the moment between this resume and a handler's next
 * suspend (an upload's next chunk). */
static enum MHD_Result run_resumed(struct request *req, const char *data, size_t *size)
{
        enum MHD_Result ret;

        req->suspended = false;
        if (req->ndjson)
                ret = ndjson_continue(req, data, size);
        else {
                req->resumed = true;
                ret = req->route->handler(req);
        }
        api_suspended_sub(req->api);
        return ret;
}

enum MHD_Result request_continue(struct request *req, const char *data, size_t *size)
{
        /* Answered on the first call; MHD should not come back. */
        if (!req->route)
                return MHD_NO;
        if (req->suspended) {
                /* In the pass in which an NDJSON handler suspended, MHD goes
                 * on to the next chunk of a chunked body: until the resume,
                 * nothing is taken. */
                if (req->ndjson && still_suspended(req))
                        return MHD_YES;
                return run_resumed(req, data, size);
        }
        if (req->ndjson)
                return ndjson_continue(req, data, size);
        if (*size > 0) {
                body_append(req, data, *size);
                *size = 0;
                return MHD_YES;
        }
        return dispatch(req);
}

/* The status MHD queued, 0 when none was (the client went away first). */
static unsigned queued_status(struct request *req)
{
        const union MHD_ConnectionInfo *ci;

        ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_HTTP_STATUS);
        return ci ? ci->http_status : 0;
}

void request_free(struct request *req)
{
        if (!req)
                return;
        metrics_count_request(req->api->metrics, req->route, queued_status(req));
        if (req->ctx_free)
                req->ctx_free(req->ctx);
        unsuspend(req);
        if (req->waiting)
                hub_remove(req->api->hub, &req->waiter);
        json_decref(req->json);
        strbuf_reset(&req->out);
        body_drop(req);
        free(req);
}

void request_suspend(struct request *req)
{
        api_suspended_add(req->api);
        req->suspended = true;
        MHD_suspend_connection(req->conn);
}

void request_wake(struct request *req)
{
        MHD_resume_connection(req->conn);
}

static void write_done(struct wop *op)
{
        request_wake(op->userdata);
}

void request_write(struct request *req, struct wop *op)
{
        op->done = write_done;
        op->userdata = req;
        request_suspend(req);
        writer_push(req->api->d.writer, op);
}

static void waiter_fired(struct hub_waiter *w)
{
        request_wake((struct request *) ((char *) w - offsetof(struct request, waiter)));
}

void request_watch(struct request *req, double seconds)
{
        int r;

        req->waiter.id = req->id;
        req->waiter.fire = waiter_fired;
        request_suspend(req);
        r = hub_add(req->api->hub, &req->waiter, seconds);
        if (r < 0) {
                req->error = r;
                request_wake(req);
                return;
        }
        /* Still on the MHD thread, so the request cannot end before this. */
        req->waiting = true;
}

const char *request_arg(struct request *req, const char *name)
{
        return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}
