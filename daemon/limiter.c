/* Limits on starts (see limiter.h). Invariants of a struct limiter:
 * running + released <= concurrency when concurrency > 0 (a release is
 * refused, not undone), released <= 1 when a rate is set, and next_ms only
 * moves forward, by interval_ms at each start, from the start's time when
 * the limiter was idle longer than that. */
#include "daemon/limiter.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

/* Beyond these a limit is a typo, not a limit. */
#define LIMIT_CONCURRENCY_MAX 1000000
#define LIMIT_PER_SECOND_MAX 1e6
/* One start a day. A slower rate would put next_ms past what an int64_t
 * holds (1e-300 per second did), and the conversion in limiter_release()
 * would be undefined. */
#define LIMIT_PER_SECOND_MIN (1.0 / 86400)

void limiter_init(struct limiter *l, unsigned concurrency, double per_second)
{
        /* Submissions are refused below the minimum; a config value or
         * one stored before that rule is raised to it. */
        if (per_second > 0 && per_second < LIMIT_PER_SECOND_MIN)
                per_second = LIMIT_PER_SECOND_MIN;
        *l = (struct limiter) {
                .concurrency = concurrency,
                .interval_ms = per_second > 0 ? 1000.0 / per_second : 0,
        };
}

bool limiter_can_release(const struct limiter *l)
{
        if (l->concurrency > 0 && l->running + l->released >= l->concurrency)
                return false;
        return l->interval_ms <= 0 || l->released == 0;
}

/* Starts are compared at ms resolution: next_ms within the current ms
 * counts as now, so rates above 1000/s still let several start per ms. */
int64_t limiter_release(struct limiter *l, int64_t now_ms)
{
        int64_t at = (int64_t)floor(l->next_ms);

        l->released++;
        return l->interval_ms > 0 && at > now_ms ? at : now_ms;
}

void limiter_unrelease(struct limiter *l)
{
        l->released--;
}

void limiter_start(struct limiter *l, int64_t now_ms)
{
        l->released--;
        l->running++;
        if (l->interval_ms <= 0)
                return;
        if (l->next_ms < (double)now_ms)
                l->next_ms = (double)now_ms;
        l->next_ms += l->interval_ms;
}

void limiter_finish(struct limiter *l)
{
        l->running--;
}

static int limits_fail(char *msg, size_t msglen, const char *text)
{
        snprintf(msg, msglen, "%s", text);
        return -EINVAL;
}

/* Validates a limits object into its values (absent: 0). */
static int limits_get(const json_t *v, unsigned *ret_concurrency, double *ret_per_second,
                      char *msg, size_t msglen)
{
        const json_t *c, *p;
        const char *name;
        json_t *value;

        if (!json_is_object(v))
                return limits_fail(msg, msglen,
                                   "limits must be an object with concurrency and/or per_second");
        json_object_foreach((json_t *)v, name, value)
                if (strcmp(name, "concurrency") != 0 && strcmp(name, "per_second") != 0) {
                        snprintf(msg, msglen, "unknown field \"limits.%.64s\"; limits have "
                                 "concurrency and per_second", name);
                        return -EINVAL;
                }
        c = json_object_get(v, "concurrency");
        p = json_object_get(v, "per_second");
        if (c && (!json_is_integer(c) || json_integer_value(c) < 1 ||
                  json_integer_value(c) > LIMIT_CONCURRENCY_MAX))
                return limits_fail(msg, msglen,
                                   "limits.concurrency must be an integer from 1 to 1000000");
        if (p && (!json_is_number(p) || !(json_number_value(p) > 0) ||
                  json_number_value(p) > LIMIT_PER_SECOND_MAX))
                return limits_fail(msg, msglen,
                                   "limits.per_second must be a number above 0, at most 1000000");
        *ret_concurrency = c ? (unsigned)json_integer_value(c) : 0;
        *ret_per_second = p ? json_number_value(p) : 0;
        return 0;
}

int limiter_limits_check(const json_t *v, char **ret_text, char *msg, size_t msglen)
{
        unsigned concurrency;
        double per_second;
        char *text;
        int r;

        r = limits_get(v, &concurrency, &per_second, msg, msglen);
        if (r < 0)
                return r;
        if (per_second > 0 && per_second < LIMIT_PER_SECOND_MIN)
                return limits_fail(msg, msglen,
                                   "limits.per_second must be at least 1/86400 (one start a day)");
        text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        if (!text)
                return -ENOMEM;
        *ret_text = text;
        return 0;
}

int limiter_limits_parse(const char *text, unsigned *ret_concurrency, double *ret_per_second)
{
        char msg[128];
        json_t *v;
        int r;

        if (!text) {
                *ret_concurrency = 0;
                *ret_per_second = 0;
                return 0;
        }
        v = json_loads(text, 0, NULL);
        r = v ? limits_get(v, ret_concurrency, ret_per_second, msg, sizeof(msg)) : -EINVAL;
        json_decref(v);
        return r;
}

static void lower(char *s)
{
        for (; *s; s++)
                *s = (char)tolower((unsigned char)*s);
}

/* The key of an http(s) URL, or NULL in *ret when it is not one. */
static int url_key(const char *url, char **ret)
{
        char *scheme = NULL, *host = NULL, *port = NULL, *key = NULL;
        CURLU *u = curl_url();
        int r = 0;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
            host[0]) {
                lower(scheme);
                lower(host);
                if (asprintf(&key, "%s://%s:%s", scheme, host, port) < 0) {
                        key = NULL;
                        r = -ENOMEM;
                }
        }
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        if (r == 0)
                *ret = key;
        return r;
}

int limiter_host_key(const struct job *j, char **ret)
{
        json_t *args;
        const char *url;
        int r;

        if (!j->task || strcmp(j->task, "http") != 0 || !j->args) {
                *ret = NULL;
                return 0;
        }
        args = json_loads(j->args, 0, NULL);
        url = json_string_value(json_object_get(args, "url"));
        if (url)
                r = url_key(url, ret);
        else {
                *ret = NULL;
                r = 0;
        }
        json_decref(args);
        return r;
}
