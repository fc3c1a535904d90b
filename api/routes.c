/* The routing table. Adding an endpoint is one row here and one handler;
 * a path that matches some row but not its method is a 405 listing the
 * methods that would work. */
#include "api/routes.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const struct route routes[] = {
        { "POST", "/v1/jobs", ROUTE_BODY, jobs_submit },
        { "GET", "/v1/jobs", 0, jobs_list },
        { "GET", "/v1/jobs/{id}", 0, jobs_get },
        { "DELETE", "/v1/jobs/{id}", 0, jobs_delete },
        { "POST", "/v1/jobs/{id}/cancel", 0, jobs_cancel },
        { "POST", "/v1/batches", ROUTE_BODY | ROUTE_NDJSON, batches_submit },
        { "GET", "/v1/batches/{id}", 0, batches_get },
        { "DELETE", "/v1/batches/{id}", 0, batches_delete },
        { "POST", "/v1/batches/{id}/cancel", 0, batches_cancel },
        { "GET", "/v1/batches/{id}/results", 0, stream_results },
        { "POST", "/v1/wait", ROUTE_BODY, wait_post },
        { "GET", "/v1/tasks", 0, misc_tasks },
        { "GET", "/v1/stats", 0, misc_stats },
        { "GET", "/healthz", ROUTE_OPEN, misc_healthz },
        { "GET", "/metrics", 0, metrics_get },
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
