/* The routing table. Adding an endpoint is one row here and one handler;
 * a path that matches some row but not its method is a 405 listing the
 * methods that would work. */
#include "api/routes.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "api/strbuf.h"

#define BATCH_QUERY "task kind timeout max_attempts priority limits format base_url"

static const struct route routes[] = {
        { "POST", "/v1/jobs", ROUTE_BODY, jobs_submit, NULL },
        { "GET", "/v1/jobs", 0, jobs_list, "state task batch limit cursor" },
        { "GET", "/v1/jobs/{id}", 0, jobs_get, "wait" },
        { "DELETE", "/v1/jobs/{id}", 0, jobs_delete, NULL },
        { "POST", "/v1/jobs/{id}/cancel", 0, jobs_cancel, NULL },
        /* The query: an NDJSON body's batch fields (a JSON body has them
         * in it). */
        { "POST", "/v1/batches", ROUTE_BODY | ROUTE_NDJSON, batches_submit, BATCH_QUERY },
        { "GET", "/v1/batches/{id}", 0, batches_get, NULL },
        { "DELETE", "/v1/batches/{id}", 0, batches_delete, NULL },
        { "POST", "/v1/batches/{id}/cancel", 0, batches_cancel, NULL },
        { "GET", "/v1/batches/{id}/results", 0, stream_results, "order after wait format" },
        { "POST", "/v1/wait", ROUTE_BODY, wait_post, NULL },
        { "GET", "/v1/tasks", 0, misc_tasks, NULL },
        { "GET", "/v1/stats", 0, misc_stats, NULL },
        { "GET", "/healthz", ROUTE_OPEN, misc_healthz, NULL },
        { "GET", "/metrics", 0, metrics_get, NULL },
};

#define ROUTES (sizeof(routes) / sizeof(routes[0]))

size_t route_count(void)
{
        return ROUTES;
}

const struct route *route_at(size_t i)
{
        return &routes[i];
}

size_t route_index(const struct route *r)
{
        return (size_t) (r - routes);
}

/* A path segment that is a decimal integer > 0 (and fits) written the one
 * way an id is written, without leading zeros; *end is where the segment
 * ends. */
static bool parse_id(const char *s, const char **end, int64_t *ret)
{
        int64_t v = 0;

        if (*s == '0')
                return false;
        for (; *s >= '0' && *s <= '9'; s++) {
                if (v > (INT64_MAX - (*s - '0')) / 10)
                        return false;
                v = v * 10 + (*s - '0');
        }
        if (v == 0 || (*s != '/' && *s != '\0'))
                return false;
        *end = s;
        *ret = v;
        return true;
}

static bool match(const char *pattern, const char *path, int64_t *ret_id)
{
        int64_t id = 0;

        while (*pattern) {
                if (strncmp(pattern, "{id}", 4) == 0) {
                        if (!parse_id(path, &path, &id))
                                return false;
                        pattern += 4;
                } else if (*pattern++ != *path++)
                        return false;
        }
        if (*path)
                return false;
        *ret_id = id;
        return true;
}

static void allow_add(char *allow, size_t allowlen, const char *method)
{
        size_t n = strlen(allow);

        snprintf(allow + n, allowlen - n, "%s%s", n ? ", " : "", method);
}

int route_find(const char *method, const char *path, const struct route **ret,
               int64_t *ret_id, char *allow, size_t allowlen)
{
        const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
        bool path_known = false;
        int64_t id;

        allow[0] = '\0';
        for (size_t i = 0; i < ROUTES; i++) {
                if (!match(routes[i].pattern, path, &id))
                        continue;
                if (strcmp(routes[i].method, want) == 0) {
                        *ret = &routes[i];
                        *ret_id = id;
                        return 0;
                }
                path_known = true;
                allow_add(allow, allowlen, routes[i].method);
                if (strcmp(routes[i].method, "GET") == 0)
                        allow_add(allow, allowlen, "HEAD");
        }
        return path_known ? -EOPNOTSUPP : -ENOENT;
}

/* The place of key among the words of list, or -1. */
static int word_index(const char *list, const char *key)
{
        size_t n = strlen(key);
        int i = 0;

        for (const char *w = list; w && *w; i++) {
                size_t len = strcspn(w, " ");

                if (len == n && memcmp(w, key, n) == 0)
                        return i;
                w += len;
                w += *w == ' ';
        }
        return -1;
}

struct query_check {
        const char *list;
        unsigned seen;          /* bit i: word i of list came */
        int count;
        const char *bad;        /* the first key refused */
        int why;                /* -ENOENT, -EEXIST or -EILSEQ */
};

/* The sizes are those MHD decoded: a "%00" makes one longer than the
 * string, which would cut the value short unnoticed. */
static enum MHD_Result query_check_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                       size_t key_size, const char *value, size_t value_size)
{
        struct query_check *c = cls;
        int i = word_index(c->list, key);

        (void) kind;
        /* "?&limit=1": an empty piece, not an argument. */
        if (!*key && !value)
                return MHD_YES;
        if (strlen(key) != key_size || (value && strlen(value) != value_size) ||
            !strbuf_utf8_valid(key) || (value && !strbuf_utf8_valid(value)))
                c->why = -EILSEQ;
        else if (i < 0)
                c->why = -ENOENT;
        else if (c->seen & (1u << i))
                c->why = -EEXIST;
        else {
                c->seen |= 1u << i;
                c->count++;
                return MHD_YES;
        }
        c->bad = key;
        return MHD_NO;
}

int route_check_query(const struct route *r, struct MHD_Connection *conn, char *msg,
                      size_t msglen)
{
        struct query_check c = { .list = r->query };

        MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, query_check_arg, &c);
        switch (c.why) {
        case 0:
                return c.count;
        case -EILSEQ:
                snprintf(msg, msglen, "query argument \"%.64s\" is not UTF-8 text without NUL",
                         c.bad);
                break;
        case -EEXIST:
                snprintf(msg, msglen, "query argument \"%.64s\" given twice", c.bad);
                break;
        default:
                snprintf(msg, msglen, "unknown query argument \"%.64s\"; %s %s takes %s%s",
                         c.bad, r->method, r->pattern,
                         r->query ? "these: " : "no query arguments", r->query ? r->query : "");
        }
        return c.why;
}
