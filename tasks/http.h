/* Process-wide setup of the http task: libcurl's global state and the
 * operator's limits ([http] in the config). main() calls http_global_init()
 * before starting any thread, then http_configure() once; the settings are
 * read-only while jobs run. Each thread that runs http jobs keeps its own
 * libcurl handles and up to 4 idle connections between jobs; they are freed
 * when the thread ends, with nothing to call. */
#ifndef FUTURED_TASK_HTTP_H
#define FUTURED_TASK_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_RESPONSE_DEFAULT (16u << 20)

/* A default Authorization for one host: sent when a job gives none. */
struct http_auth {
        const char *host;       /* URL host, matched without case */
        const char *file;       /* holds the header's whole value, e.g. "Bearer sk-..." */
};

struct http_options {
        size_t max_response;            /* bytes of headers and body; 0: the default */
        /* URL prefixes ("https://api.example.com/v1/"), NULL-terminated;
         * NULL or empty: any http(s) URL. A prefix matches on scheme, host
         * and port, then on whole path segments. */
        const char *const *allow;
        const struct http_auth *auth;
        size_t n_auth;
        bool check_only;                /* checks o (files read), keeps the settings in force */
};

/* curl_global_init() and the per-thread handles' key: 0, -EIO or
 * -EAGAIN. */
int http_global_init(void);
/* Releases the configuration, the calling thread's handles and libcurl's
 * global state; every other thread that ran http jobs must have ended. */
void http_global_cleanup(void);

/* Copies o (NULL: the defaults) and reads the auth files. 0; -EINVAL with a
 * reason in err for a bad prefix, host or file content; -errno when a file
 * cannot be read. On failure, or with o->check_only, the previous settings
 * stay. */
int http_configure(const struct http_options *o, char *err, size_t errlen);

#endif
