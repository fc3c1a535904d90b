/* The life of one request. The first callback routes and refuses early what
 * needs no body (so a 413 or 415 costs no buffering); body pieces are
 * buffered up to max_body, past which they are dropped and the request is
 * answered 413 at its end; the last callback parses and dispatches. A
 * suspended request counts in api->suspended from its suspend until it runs
 * again or is freed, so api_stop() can wait for none to be left. */
#include "api/request.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/reply.h"
#include "api/routes.h"
#include "api/spec.h"

#define JSON_TYPE "application/json"

/* No Content-Type is taken as JSON; parameters (charset) are allowed. */
static bool json_media_type(const char *ct)
{
        size_t n = strlen(JSON_TYPE);

        if (!ct)
                return true;
        ct += strspn(ct, " \t");
        if (strncasecmp(ct, JSON_TYPE, n) != 0)
                return false;
        ct += n;
        ct += strspn(ct, " \t");
        return *ct == '\0' || *ct == ';';
}

static enum MHD_Result too_large(struct request *req)
{
        return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                           "the request body is larger than %zu bytes", req->api->o.max_body);
}

enum MHD_Result request_begin(struct api *a, struct MHD_Connection *conn, const char *url,
                              const char *method, struct request **ret)
{
        const char *length, *type;
        struct request *req;
        char allow[64];
        int r;

        req = calloc(1, sizeof(*req));
        if (!req)
                return MHD_NO;
        req->api = a;
        req->conn = conn;
        req->body = req->body_inline;
        req->body_cap = sizeof(req->body_inline);
        *ret = req;

        if (atomic_load(&a->stopping))
                return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                                   "futured is shutting down");
        r = route_find(method, url, &req->route, &req->id, allow, sizeof(allow));
        if (r == -EOPNOTSUPP)
                return reply_error_with(req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_HEADER_ALLOW,
                                        allow, "method_not_allowed",
                                        "this method is not allowed here; allowed: %s", allow);
        /* The path is not echoed: it is raw client bytes, maybe not UTF-8. */
        if (r < 0)
                return reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no such resource");

        length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && strtoull(length, NULL, 10) > a->o.max_body)
                return too_large(req);
        type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if ((req->route->flags & ROUTE_BODY) && !json_media_type(type))
                return reply_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                   "the body must be JSON: send Content-Type: application/json");
        return MHD_YES;
}

static void body_append(struct request *req, const char *data, size_t n)
{
        size_t max = req->api->o.max_body, cap;
        char *p;

        if (req->body_too_large || req->error)
                return;
        if (n > max - req->body_len) {
                req->body_too_large = true;
                return;
        }
        if (req->body_len + n > req->body_cap) {
                cap = req->body_cap;
                while (cap < req->body_len + n)
                        cap *= 2;
                p = req->body == req->body_inline ? malloc(cap) : realloc(req->body, cap);
                if (!p) {
                        req->error = -ENOMEM;
                        return;
                }
                if (req->body == req->body_inline)
                        memcpy(p, req->body, req->body_len);
                req->body = p;
                req->body_cap = cap;
        }
        memcpy(req->body + req->body_len, data, n);
        req->body_len += n;
}

static enum MHD_Result dispatch(struct request *req)
{
        struct spec_error err;

        if (req->body_too_large)
                return too_large(req);
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
        struct api *a = req->api;

        if (!req->suspended)
                return;
        req->suspended = false;
        pthread_mutex_lock(&a->lock);
        if (--a->suspended == 0)
                pthread_cond_broadcast(&a->idle);
        pthread_mutex_unlock(&a->lock);
}

enum MHD_Result request_continue(struct request *req, const char *data, size_t *size)
{
        /* Answered on the first call; MHD should not come back. */
        if (!req->route)
                return MHD_NO;
        if (req->suspended) {
                unsuspend(req);
                req->resumed = true;
                return req->route->handler(req);
        }
        if (*size > 0) {
                body_append(req, data, *size);
                *size = 0;
                return MHD_YES;
        }
        return dispatch(req);
}

void request_free(struct request *req)
{
        if (!req)
                return;
        unsuspend(req);
        if (req->waiting)
                hub_remove(req->api->hub, &req->waiter);
        json_decref(req->json);
        strbuf_reset(&req->out);
        if (req->body != req->body_inline)
                free(req->body);
        free(req);
}

void request_suspend(struct request *req)
{
        struct api *a = req->api;

        pthread_mutex_lock(&a->lock);
        a->suspended++;
        pthread_mutex_unlock(&a->lock);
        req->suspended = true;
        MHD_suspend_connection(req->conn);
}

void request_wake(struct request *req)
{
        MHD_resume_connection(req->conn);
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
