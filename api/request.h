/* One HTTP request, from its first callback to NOTIFY_COMPLETED (the one
 * place it is freed). It carries the body, the parsed JSON, and what a
 * suspended handler needs to finish when resumed: the submission, the delete
 * op, or the hub waiter, each filled by the thread that resumes it before
 * resuming (MHD's resume lock orders those writes before the re-entry). */
#ifndef FUTURED_API_REQUEST_H
#define FUTURED_API_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <microhttpd.h>

#include "api/hub.h"
#include "api/strbuf.h"
#include "daemon/scheduler.h"
#include "storage/writer.h"

struct api;
struct route;

#define REQUEST_INLINE_BODY 1024
#define REQUEST_NDJSON_TYPE "application/x-ndjson"

/* Why a body was not taken; the answer comes once it has gone by. */
enum request_refusal {
        REQUEST_TAKEN,
        REQUEST_TOO_LARGE,              /* past max_body: 413 */
        REQUEST_UNWANTED,               /* a route that takes no body: 413 */
        REQUEST_BUSY,                   /* past the budget of all bodies: 503 */
};

struct request {
        struct api *api;
        struct MHD_Connection *conn;
        size_t path_len;                /* of the path as sent, before MHD decoded it */
        bool begun;                     /* request_begin() ran */
        const struct route *route;
        int64_t id;                     /* the {id} of the path; 0: none */

        char *body;                     /* body_inline or heap */
        size_t body_len;
        size_t body_cap;
        size_t body_charged;            /* bytes of api->body_bytes this body holds */
        enum request_refusal refused;   /* stopped buffering; answered at the end */
        json_t *json;                   /* the parsed body (routes that take one) */

        /* NDJSON (a ROUTE_NDJSON route sent Content-Type
         * application/x-ndjson): the body is never held whole. The handler
         * runs once when the headers are in (no line: it may answer
         * there), then once per line, with the line in body/body_len (no
         * newline, at most max_body) and line_no counting lines from 1, and
         * last once with body_done. It takes a line by setting line_taken
         * or by not suspending; a line it suspends without taking comes
         * again after the resume. After a refusal (a line past max_body or
         * past the budget) or req->error no line comes, only the end. */
        bool ndjson;
        bool line_ready;                /* request.c's: body holds a line not taken */
        bool line_taken;
        bool body_done;
        int64_t line_no;

        bool suspended;                 /* MHD thread only */
        bool resumed;                   /* the handler runs again after a suspend */
        int query_args;                 /* the query's arguments (route_check_query()) */
        int error;                      /* what went wrong while suspended, or 0 */

        struct sched_submission sub;    /* POST /v1/jobs */
        int64_t created_at;
        struct strbuf out;              /* the job body rendered before submitting */

        struct wop op;                  /* DELETE */
        struct job op_job;

        struct hub_waiter waiter;       /* long-poll and cancel */
        bool waiting;
        int cancel_result;              /* sched_cancel()'s answer */

        /* A handler's own state (a batch upload, a wait on many jobs),
         * freed with the request by ctx_free(ctx). */
        void *ctx;
        void (*ctx_free)(void *ctx);

        char body_inline[REQUEST_INLINE_BODY];
};

/* MHD's URI log callback, the first of a request: allocates it (freed by
 * request_free()) with the raw uri, before MHD decodes it. NULL when out of
 * memory. */
struct request *request_new(struct api *a, struct MHD_Connection *conn, const char *uri);
/* The first call of the access handler: answers at once what needs no
 * body: 503 while stopping, 404, 405, 413 from Content-Length or a body on a
 * route that takes none, 415. */
enum MHD_Result request_begin(struct request *req, const char *url, const char *method);
/* Every later call. */
enum MHD_Result request_continue(struct request *req, const char *data, size_t *size);
/* Answers a refused body (req->refused): 413, or 503 past the budget. */
enum MHD_Result request_refuse(struct request *req);
/* The bytes that the bodies being received may hold together: the bound of
 * api->body_bytes. */
size_t request_body_budget(const struct api *a);
/* NOTIFY_COMPLETED. Accepts NULL. */
void request_free(struct request *req);

/* Suspends the connection; call from the handler, before handing the
 * request to whatever resumes it. */
void request_suspend(struct request *req);
/* Resumes a suspended request, once per suspend, from any thread. req may
 * be gone when this returns. */
void request_wake(struct request *req);
/* Suspends and hands op (type and payload set by the caller, living as
 * long as the request) to the writer; its commit resumes the request, whose
 * handler then finds the outcome in op->result. */
void request_write(struct request *req, struct wop *op);
/* Suspends, then registers the waiter on req->id for seconds. On failure
 * the request resumes at once with req->error set. */
void request_watch(struct request *req, double seconds);

/* A query string argument, or NULL. */
const char *request_arg(struct request *req, const char *name);

#endif
