/* The routing table: one row per {method, path pattern}, and the handlers
 * it names. A handler runs once the body is in (parsed when the route takes
 * one), and again after each resume with req->resumed set; it either queues
 * an answer or suspends and returns MHD_YES. */
#ifndef FUTURED_API_ROUTES_H
#define FUTURED_API_ROUTES_H

#include <stddef.h>
#include <stdint.h>
#include <microhttpd.h>

struct request;

enum {
        ROUTE_BODY = 1u << 0,   /* takes a JSON body */
        /* Also takes Content-Type application/x-ndjson, which is not
         * buffered: the handler parses it piece by piece as it arrives. */
        ROUTE_NDJSON = 1u << 1,
        /* Served without a bearer token when auth is on (/healthz, for
         * load balancers and systemd's checks). */
        ROUTE_OPEN = 1u << 2,
};

struct route {
        const char *method;
        const char *pattern;    /* "{id}": a decimal integer > 0, no leading 0 */
        unsigned flags;
        enum MHD_Result (*handler)(struct request *req);
        /* The query arguments it takes, space-separated; NULL: none. */
        const char *query;
};

/* The row for method and path, with the path's id (0 when none). -ENOENT
 * when no pattern matches the path; -EOPNOTSUPP when patterns match but not
 * the method, with the methods that do in allow ("GET, DELETE"). HEAD is
 * served as GET. */
int route_find(const char *method, const char *path, const struct route **ret,
               int64_t *ret_id, char *allow, size_t allowlen);

/* When each query argument of conn is one that r takes, given once, as
 * UTF-8 text without NUL: how many there are (empty pieces, "?&", aside).
 * Else -ENOENT for one it does not take, -EEXIST for one given twice,
 * -EILSEQ for other bytes, with a message saying which in msg. */
int route_check_query(const struct route *r, struct MHD_Connection *conn, char *msg,
                      size_t msglen);

/* The rows of the table, 0 .. route_count() - 1, for counting by route. */
size_t route_count(void);
const struct route *route_at(size_t i);
size_t route_index(const struct route *r);

/* jobs.c */
enum MHD_Result jobs_submit(struct request *req);
enum MHD_Result jobs_list(struct request *req);
enum MHD_Result jobs_get(struct request *req);
enum MHD_Result jobs_delete(struct request *req);
enum MHD_Result jobs_cancel(struct request *req);

/* batches.c */
enum MHD_Result batches_submit(struct request *req);
enum MHD_Result batches_get(struct request *req);
enum MHD_Result batches_cancel(struct request *req);
enum MHD_Result batches_delete(struct request *req);

/* stream.c */
enum MHD_Result stream_results(struct request *req);

/* wait.c */
enum MHD_Result wait_post(struct request *req);

/* misc.c */
enum MHD_Result misc_tasks(struct request *req);
enum MHD_Result misc_stats(struct request *req);
enum MHD_Result misc_healthz(struct request *req);

/* metrics.c */
enum MHD_Result metrics_get(struct request *req);

#endif
