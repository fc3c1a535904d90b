/* http: one HTTP(S) request with libcurl, on the I/O thread that runs it.
 *
 * The transfer runs in the thread's multi handle, waiting in
 * curl_multi_poll() bounded by the job's deadline, so task_ctx_stop() (which
 * calls curl_multi_wakeup()) and the deadline end it at once: a progress
 * callback would only be called about once a second while nothing flows.
 *
 * Connections outlive jobs: each thread keeps one multi handle (connection
 * and DNS caches, at most HTTP_THREAD_CONNS idle connections, so one socket
 * each to a few hosts) and one easy handle (TLS session cache), made on its
 * first http job and freed by a thread-specific key's destructor when the
 * thread ends; no other thread ever touches them. A job borrows both and
 * resets the easy handle when it ends, so none of its options, headers or
 * pointers into its memory reach the next job. libcurl closes a connection a
 * transfer left half done (response cap, timeout, stop, transport error) and
 * does not reuse one the server closed. A stop whose wakeup comes after the
 * last poll makes the next job's first poll return at once, which is
 * harmless. Should the multi handle itself fail, the thread's handles are
 * dropped and the next job makes new ones.
 *
 * Memory is bounded by max_response: header and body bytes together are
 * counted in the callbacks, which abort the transfer past it; the
 * Content-Length check (CURLOPT_MAXFILESIZE_LARGE) only refuses earlier.
 *
 * Request header values carry API keys: none of them reaches a message, a
 * result or an error. The settings are written by http_configure() before
 * any job runs and only read afterwards. */
#include "tasks/http.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <curl/curl.h>

#include "tasks/args.h"
#include "tasks/base64.h"
#include "tasks/jsontext.h"
#include "tasks/task.h"

#define HTTP_TIMEOUT_MAX 86400.0
#define HTTP_AUTH_FILE_MAX 8192
#define HTTP_POLL_MAX_MS 60000
#define HTTP_THREAD_CONNS 4L

/* One URL cut into the pieces an allowlist prefix is compared on; each
 * string is curl's (curl_free()). */
struct url_parts {
        char *scheme;
        char *host;
        char *port;
        char *path;
};

struct auth_entry {
        char *host;
        char *header;           /* "Authorization: ..." */
};

struct settings {
        size_t max_response;
        struct url_parts *allow;
        size_t n_allow;
        struct auth_entry *auth;
        size_t n_auth;
};

static struct settings settings = { .max_response = HTTP_MAX_RESPONSE_DEFAULT };

/* One I/O thread's handles, kept from one job to the next. */
struct http_thread {
        CURLM *multi;
        CURL *easy;             /* never in multi between jobs */
};

/* Created by http_global_init(); each value is owned by its thread. */
static pthread_key_t thread_key;

/* A request in flight and what has come back of it. */
struct transfer {
        CURL *easy;                     /* the thread's, borrowed */
        CURLM *multi;                   /* the thread's, borrowed */
        bool added;                     /* easy is in multi */
        bool broken;                    /* multi failed: drop the thread's handles */
        CURLU *url;
        struct curl_slist *request_headers;
        char *json_body;                /* the serialized `json` arg, or NULL */
        size_t cap;
        size_t received;                /* header and body bytes so far */
        bool too_large;
        bool out_of_memory;
        char *body;
        size_t body_len;
        size_t body_size;
        json_t *headers;                /* of the last response seen */
        char errbuf[CURL_ERROR_SIZE];
};

static const char *const http_fields[] = {
        "url", "method", "headers", "body", "json", "timeout", NULL,
};

static const char *const http_methods[] = {
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", NULL,
};

/* Set by libcurl from the request itself; a job must not contradict it. */
static const char *const http_reserved_headers[] = {
        "content-length", "host", "transfer-encoding", NULL,
};

static bool name_in(const char *const *names, const char *s, bool nocase)
{
        for (; *names; names++)
                if ((nocase ? strcasecmp(*names, s) : strcmp(*names, s)) == 0)
                        return true;
        return false;
}

static void url_parts_done(struct url_parts *p)
{
        curl_free(p->scheme);
        curl_free(p->host);
        curl_free(p->port);
        curl_free(p->path);
        *p = (struct url_parts) { NULL };
}

/* Parses an http(s) URL; on success *ret_url (if wanted) is the parsed
 * handle, owned by the caller. */
static int url_parts_get(const char *url, struct url_parts *ret, CURLU **ret_url)
{
        struct url_parts p = { NULL };
        CURLU *u = curl_url();
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
                goto out;
        if (curl_url_get(u, CURLUPART_SCHEME, &p.scheme, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &p.host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &p.port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PATH, &p.path, 0) != CURLUE_OK)
                goto out;
        if ((strcmp(p.scheme, "http") != 0 && strcmp(p.scheme, "https") != 0) || !p.host[0])
                goto out;
        *ret = p;
        p = (struct url_parts) { NULL };
        if (ret_url) {
                *ret_url = u;
                u = NULL;
        }
        r = 0;
out:
        url_parts_done(&p);
        curl_url_cleanup(u);
        return r;
}

/* Scheme, host and port equal, and the prefix's path ends on a segment
 * boundary of the URL's: "/v1" covers "/v1" and "/v1/x", not "/v10". */
static bool url_prefix_matches(const struct url_parts *prefix, const struct url_parts *u)
{
        size_t n = strlen(prefix->path);

        if (strcmp(prefix->scheme, u->scheme) != 0 || strcasecmp(prefix->host, u->host) != 0 ||
            strcmp(prefix->port, u->port) != 0 || strncmp(prefix->path, u->path, n) != 0)
                return false;
        return n > 0 && (prefix->path[n - 1] == '/' || u->path[n] == '\0' || u->path[n] == '/');
}

static bool url_allowed(const struct url_parts *u)
{
        if (settings.n_allow == 0)
                return true;
        /* a server may decode these after the prefix was compared */
        if (strcasestr(u->path, "%2e") || strcasestr(u->path, "%2f"))
                return false;
        for (size_t i = 0; i < settings.n_allow; i++)
                if (url_prefix_matches(&settings.allow[i], u))
                        return true;
        return false;
}

static const char *auth_for_host(const char *host)
{
        for (size_t i = 0; i < settings.n_auth; i++)
                if (strcasecmp(settings.auth[i].host, host) == 0)
                        return settings.auth[i].header;
        return NULL;
}

/* RFC 9110 token characters. */
static bool header_name_ok(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!(('a' <= *s && *s <= 'z') || ('A' <= *s && *s <= 'Z') ||
                      ('0' <= *s && *s <= '9') || strchr("!#$%&'*+-.^_`|~", *s)))
                        return false;
        return true;
}

static bool header_value_ok(const char *s, size_t len)
{
        return !memchr(s, '\r', len) && !memchr(s, '\n', len) && !memchr(s, '\0', len);
}

static int fail_arg(char *msg, size_t msglen, const char *text)
{
        snprintf(msg, msglen, "%s", text);
        return -EINVAL;
}

static int http_check_headers(const json_t *headers, char *msg, size_t msglen)
{
        const char *name;
        json_t *value;

        if (!json_is_object(headers))
                return fail_arg(msg, msglen, "headers must be an object of strings");
        json_object_foreach((json_t *)headers, name, value) {
                if (!header_name_ok(name)) {
                        snprintf(msg, msglen, "header name \"%.64s\" is not a valid token", name);
                        return -EINVAL;
                }
                if (name_in(http_reserved_headers, name, true)) {
                        snprintf(msg, msglen, "header \"%s\" is set by the request itself", name);
                        return -EINVAL;
                }
                /* the value itself never goes into a message */
                if (!json_is_string(value) ||
                    !header_value_ok(json_string_value(value), json_string_length(value))) {
                        snprintf(msg, msglen,
                                 "header \"%s\" must be a string without CR, LF or NUL", name);
                        return -EINVAL;
                }
        }
        return 0;
}

/* The method the request will use; args already validated. */
static const char *http_method(const json_t *args)
{
        const json_t *m = json_object_get(args, "method");

        if (m)
                return json_string_value(m);
        if (json_object_get(args, "body") || json_object_get(args, "json"))
                return "POST";
        return "GET";
}

static int http_validate(const json_t *args, char *msg, size_t msglen)
{
        const json_t *url, *method, *headers, *body, *timeout;
        struct url_parts u;
        bool allowed;
        int r;

        r = task_args_check_fields(args, http_fields, msg, msglen);
        if (r < 0)
                return r;

        url = json_object_get(args, "url");
        if (!json_is_string(url) || url_parts_get(json_string_value(url), &u, NULL) < 0)
                return fail_arg(msg, msglen, "url must be an http:// or https:// URL with a host");
        allowed = url_allowed(&u);
        url_parts_done(&u);
        if (!allowed)
                return fail_arg(msg, msglen, "url is outside the configured allowlist");

        method = json_object_get(args, "method");
        if (method && (!json_is_string(method) ||
                       !name_in(http_methods, json_string_value(method), false)))
                return fail_arg(msg, msglen,
                                "method must be one of GET, POST, PUT, PATCH, DELETE, HEAD");

        headers = json_object_get(args, "headers");
        if (headers) {
                r = http_check_headers(headers, msg, msglen);
                if (r < 0)
                        return r;
        }

        body = json_object_get(args, "body");
        if (body && json_object_get(args, "json"))
                return fail_arg(msg, msglen, "give body or json, not both");
        if (body && !json_is_string(body))
                return fail_arg(msg, msglen, "body must be a string (use json for JSON)");
        if (strcmp(http_method(args), "HEAD") == 0 && (body || json_object_get(args, "json")))
                return fail_arg(msg, msglen, "a HEAD request has no body");

        timeout = json_object_get(args, "timeout");
        if (timeout && !(json_is_number(timeout) && json_number_value(timeout) > 0 &&
                         json_number_value(timeout) <= HTTP_TIMEOUT_MAX)) {
                snprintf(msg, msglen, "timeout must be a number of seconds above 0, up to %.0f",
                         HTTP_TIMEOUT_MAX);
                return -EINVAL;
        }
        return 0;
}

/* Counts n more bytes against the cap. */
static bool transfer_account(struct transfer *t, size_t n)
{
        if (n > t->cap - t->received) {
                t->too_large = true;
                return false;
        }
        t->received += n;
        return true;
}

static size_t on_body(char *data, size_t size, size_t n, void *userdata)
{
        struct transfer *t = userdata;
        size_t len = size * n;

        if (!transfer_account(t, len))
                return 0;
        if (len > t->body_size - t->body_len) {
                /* doubling, but never past the cap, which bounds the buffer */
                size_t want = t->body_size ? t->body_size * 2 : 16384;
                char *p;

                if (want < t->body_len + len)
                        want = t->body_len + len;
                if (want > t->cap)
                        want = t->cap;
                p = realloc(t->body, want);
                if (!p) {
                        t->out_of_memory = true;
                        return 0;
                }
                t->body = p;
                t->body_size = want;
        }
        memcpy(t->body + t->body_len, data, len);
        t->body_len += len;
        return len;
}

/* Adds a response header under its lowercased name; a repeated one is
 * joined with ", ". A header whose name is not a token or whose value is
 * not UTF-8 is left out. */
static int headers_add(json_t *headers, const char *line, size_t len)
{
        const char *colon = memchr(line, ':', len), *value, *end = line + len;
        const char *old;
        json_t *joined;
        char *name;
        int r = 0;

        if (!colon || colon == line)
                return 0;
        value = colon + 1;
        while (value < end && (*value == ' ' || *value == '\t'))
                value++;
        while (end > value && strchr(" \t\r\n", end[-1]))
                end--;
        name = strndup(line, (size_t)(colon - line));
        if (!name)
                return -ENOMEM;
        if (!header_name_ok(name)) {
                free(name);
                return 0;
        }
        for (char *c = name; *c; c++)
                *c = (char)((*c >= 'A' && *c <= 'Z') ? *c - 'A' + 'a' : *c);

        old = json_string_value(json_object_get(headers, name));
        if (old) {
                char *s = NULL;

                if (asprintf(&s, "%s, %.*s", old, (int)(end - value), value) < 0) {
                        free(name);
                        return -ENOMEM;
                }
                joined = json_string(s);
                free(s);
        } else {
                joined = json_stringn(value, (size_t)(end - value));
        }
        if (joined && json_object_set_new(headers, name, joined) < 0)
                r = -ENOMEM;
        free(name);
        return r;
}

static size_t on_header(char *data, size_t size, size_t n, void *userdata)
{
        struct transfer *t = userdata;
        size_t len = size * n;

        if (!transfer_account(t, len))
                return 0;
        /* a status line starts another response (after 1xx): keep the last */
        if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
                json_object_clear(t->headers);
        else if (headers_add(t->headers, data, len) < 0) {
                t->out_of_memory = true;
                return 0;
        }
        return len;
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *address)
{
        return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

static void http_thread_free(void *p)
{
        struct http_thread *h = p;

        if (!h)
                return;
        curl_multi_cleanup(h->multi);
        curl_easy_cleanup(h->easy);
        free(h);
}

/* The calling thread's handles, made on its first call. */
static int http_thread_get(struct http_thread **ret)
{
        struct http_thread *h = pthread_getspecific(thread_key);
        int r;

        if (h) {
                *ret = h;
                return 0;
        }
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->multi = curl_multi_init();
        h->easy = curl_easy_init();
        if (!h->multi || !h->easy ||
            curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, HTTP_THREAD_CONNS) != CURLM_OK) {
                http_thread_free(h);
                return -ENOMEM;
        }
        r = -pthread_setspecific(thread_key, h);
        if (r < 0) {
                http_thread_free(h);
                return r;
        }
        *ret = h;
        return 0;
}

/* Frees the calling thread's handles and cached connections. */
static void http_thread_drop(void)
{
        http_thread_free(pthread_getspecific(thread_key));
        pthread_setspecific(thread_key, NULL);
}

static void transfer_wake(void *arg)
{
        curl_multi_wakeup(arg);
}

static void transfer_done(struct transfer *t)
{
        if (t->added && curl_multi_remove_handle(t->multi, t->easy) != CURLM_OK)
                t->broken = true;
        /* before the memory its options point into goes */
        if (t->easy)
                curl_easy_reset(t->easy);
        if (t->broken)
                http_thread_drop();
        curl_url_cleanup(t->url);
        curl_slist_free_all(t->request_headers);
        free(t->json_body);
        free(t->body);
        json_decref(t->headers);
}

static int headers_append(struct curl_slist **list, const char *line)
{
        struct curl_slist *l = curl_slist_append(*list, line);

        if (!l)
                return -ENOMEM;
        *list = l;
        return 0;
}

/* The request's header list: the job's own, then a JSON Content-Type and
 * the host's configured Authorization unless the job set those. */
static int request_headers_build(struct transfer *t, const json_t *args, const char *host)
{
        const json_t *headers = json_object_get(args, "headers");
        bool has_type = false, has_auth = false;
        const char *name, *auth;
        json_t *value;
        int r;

        /* no 100-continue round trip before a large body */
        r = headers_append(&t->request_headers, "Expect:");
        json_object_foreach((json_t *)headers, name, value) {
                const char *v = json_string_value(value);
                char *line = NULL;

                if (r < 0)
                        return r;
                has_type |= strcasecmp(name, "content-type") == 0;
                has_auth |= strcasecmp(name, "authorization") == 0;
                /* "Name;" is libcurl's way to send an empty value */
                if (asprintf(&line, v[0] ? "%s: %s" : "%s;", name, v) < 0)
                        return -ENOMEM;
                r = headers_append(&t->request_headers, line);
                free(line);
        }
        if (r == 0 && !has_type && json_object_get(args, "json"))
                r = headers_append(&t->request_headers, "Content-Type: application/json");
        auth = has_auth ? NULL : auth_for_host(host);
        if (r == 0 && auth)
                r = headers_append(&t->request_headers, auth);
        return r;
}

#define SETOPT(t, opt, val) \
        do { if (curl_easy_setopt((t)->easy, opt, val) != CURLE_OK) return -EIO; } while (0)

static int transfer_set_method(struct transfer *t, const json_t *args)
{
        const char *method = http_method(args);
        const json_t *body = json_object_get(args, "body"), *json = json_object_get(args, "json");

        if (json) {
                t->json_body = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
                if (!t->json_body)
                        return -ENOMEM;
        }
        if (strcmp(method, "HEAD") == 0) {
                SETOPT(t, CURLOPT_NOBODY, 1L);
                return 0;
        }
        /* Not for HEAD: its Content-Length announces a body that never
         * comes. */
        SETOPT(t, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->cap);
        /* libcurl's POSTFIELDS does not copy: the data lives in args or t */
        if (t->json_body) {
                SETOPT(t, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(t->json_body));
                SETOPT(t, CURLOPT_POSTFIELDS, t->json_body);
        } else if (body) {
                SETOPT(t, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)json_string_length(body));
                SETOPT(t, CURLOPT_POSTFIELDS, json_string_value(body));
        } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                   strcmp(method, "PATCH") == 0) {
                SETOPT(t, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
                SETOPT(t, CURLOPT_POSTFIELDS, "");
        }
        /* A body makes libcurl send POST, whatever was asked: GET too is
         * named. */
        if (strcmp(method, "POST") != 0)
                SETOPT(t, CURLOPT_CUSTOMREQUEST, method);
        return 0;
}

static int transfer_setup(struct transfer *t, const json_t *args)
{
        const json_t *timeout = json_object_get(args, "timeout");
        struct http_thread *h;
        struct url_parts u;
        int r;

        t->cap = settings.max_response;
        t->headers = json_object();
        if (!t->headers)
                return -ENOMEM;
        r = http_thread_get(&h);
        if (r < 0)
                return r;
        t->easy = h->easy;
        t->multi = h->multi;
        r = url_parts_get(json_string_value(json_object_get(args, "url")), &u, &t->url);
        if (r < 0)
                return r;
        r = request_headers_build(t, args, u.host);
        url_parts_done(&u);
        if (r < 0)
                return r;

        SETOPT(t, CURLOPT_CURLU, t->url);
        SETOPT(t, CURLOPT_NOSIGNAL, 1L);
        SETOPT(t, CURLOPT_PROTOCOLS_STR, "http,https");
        SETOPT(t, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        SETOPT(t, CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(t, CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(t, CURLOPT_SSL_VERIFYHOST, 2L);
        SETOPT(t, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        SETOPT(t, CURLOPT_USERAGENT, "futured");
        SETOPT(t, CURLOPT_HTTPHEADER, t->request_headers);
        SETOPT(t, CURLOPT_WRITEFUNCTION, on_body);
        SETOPT(t, CURLOPT_WRITEDATA, t);
        SETOPT(t, CURLOPT_HEADERFUNCTION, on_header);
        SETOPT(t, CURLOPT_HEADERDATA, t);
        SETOPT(t, CURLOPT_ERRORBUFFER, t->errbuf);
        if (timeout) {
                /* 0 would mean no timeout at all */
                long ms = (long)(json_number_value(timeout) * 1000);

                SETOPT(t, CURLOPT_TIMEOUT_MS, ms > 0 ? ms : 1L);
        }
        return transfer_set_method(t, args);
}

/* Milliseconds to wait in curl_multi_poll(): up to the deadline, rounded up
 * so that waking finds it passed. */
static int poll_timeout_ms(double deadline)
{
        double ms;

        if (deadline <= 0)
                return HTTP_POLL_MAX_MS;
        ms = (deadline - task_monotonic()) * 1000 + 1;
        if (ms <= 0)
                return 0;
        return ms < HTTP_POLL_MAX_MS ? (int)ms : HTTP_POLL_MAX_MS;
}

/* Runs the transfer to its end: 0 with *ret its result, -ECANCELED when the
 * context stopped it, -EIO when the multi handle failed. */
static int transfer_perform(struct transfer *t, struct task_ctx *ctx, CURLcode *ret)
{
        double deadline = task_ctx_deadline(ctx);
        int running = 1, left, r = 0;
        CURLMsg *m;

        if (curl_multi_add_handle(t->multi, t->easy) != CURLM_OK) {
                t->broken = true;
                return -EIO;
        }
        t->added = true;
        task_ctx_set_waker(ctx, transfer_wake, t->multi);
        while (running) {
                /* a stop before the poll still ends it: the wakeup is kept */
                if (task_ctx_stopped(ctx)) {
                        r = -ECANCELED;
                        break;
                }
                if (curl_multi_perform(t->multi, &running) != CURLM_OK ||
                    (running && curl_multi_poll(t->multi, NULL, 0, poll_timeout_ms(deadline),
                                                NULL) != CURLM_OK)) {
                        t->broken = true;
                        r = -EIO;
                        break;
                }
        }
        /* from here on no stop reaches this multi handle */
        task_ctx_set_waker(ctx, NULL, NULL);
        if (r < 0)
                return r;
        m = curl_multi_info_read(t->multi, &left);
        if (!m || m->msg != CURLMSG_DONE)
                return -EIO;
        *ret = m->data.result;
        return 0;
}

/* application/json or any +json type, parameters ignored. */
static bool content_type_is_json(const char *type)
{
        size_t n;

        if (!type)
                return false;
        n = strcspn(type, "; \t");
        return (n == 16 && strncasecmp(type, "application/json", 16) == 0) ||
               (n > 5 && strncasecmp(type + n - 5, "+json", 5) == 0);
}

/* Puts the response body into o: "json" when typed and parsed as JSON
 * (not too deep), else "body" when it is UTF-8 text, else "body_base64". */
static int response_put_body(json_t *o, struct transfer *t)
{
        const char *type = NULL;
        json_t *v = NULL;
        char *b64;

        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &type);
        if (content_type_is_json(type)) {
                v = jsontext_load_output(t->body ? t->body : "", t->body_len);
                if (v)
                        return json_object_set_new(o, "json", v) < 0 ? -ENOMEM : 0;
        }
        v = json_stringn(t->body ? t->body : "", t->body_len);
        if (v)
                return json_object_set_new(o, "body", v) < 0 ? -ENOMEM : 0;
        b64 = base64_encode(t->body ? t->body : "", t->body_len);
        if (b64)
                v = json_string(b64);
        free(b64);
        return v && json_object_set_new(o, "body_base64", v) == 0 ? 0 : -ENOMEM;
}

/* Transport errors worth another attempt: not a bad URL, a failed TLS
 * verification or a local misconfiguration, which would fail again. */
static bool curl_code_retryable(CURLcode c)
{
        switch (c) {
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
        case CURLE_NOT_BUILT_IN:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CIPHER:
        case CURLE_BAD_FUNCTION_ARGUMENT:
        case CURLE_TOO_MANY_REDIRECTS:
                return false;
        default:
                return true;
        }
}

/* The seconds a Retry-After header asks for, -1 for none or one that is
 * neither form. Delay-seconds are read here, saturating: libcurl's own
 * reading wraps a huge one to 0, which would retry at once. */
static curl_off_t retry_after_seconds(const struct transfer *t)
{
        const char *v = json_string_value(json_object_get(t->headers, "retry-after"));
        curl_off_t seconds = -1;
        unsigned long long n;

        if (!v)
                return -1;
        if (*v >= '0' && *v <= '9' && v[strspn(v, "0123456789")] == '\0') {
                errno = 0;
                n = strtoull(v, NULL, 10);
                return errno == ERANGE || n > INT64_MAX ? INT64_MAX : (curl_off_t)n;
        }
        /* A date; libcurl gives 0 for one past and for what it cannot
         * read, neither of which asks for a wait. */
        if (curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &seconds) != CURLE_OK ||
            seconds <= 0)
                return -1;
        return seconds;
}

static int fail_status(struct transfer *t, long status, struct task_error *err)
{
        bool retryable = status == 429 || status >= 500;
        json_t *detail = json_pack("{s:i}", "status", (int)status);
        curl_off_t retry_after = retry_after_seconds(t);

        if (!detail || response_put_body(detail, t) < 0) {
                json_decref(detail);
                return task_fail(err, "task_error", true, "out of memory");
        }
        if (retry_after >= 0 &&
            json_object_set_new(detail, "retry_after", json_integer(retry_after)) < 0) {
                json_decref(detail);
                return task_fail(err, "task_error", true, "out of memory");
        }
        err->detail = detail;
        return task_fail(err, "http_status", retryable, "HTTP status %ld", status);
}

static int http_run(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                    struct task_error *err)
{
        struct transfer t = { .easy = NULL };
        CURLcode code = CURLE_OK;
        json_t *result = NULL;
        char msg[sizeof(err->message)];
        long status = 0;
        int r;

        /* The job may have been stored under another configuration (a
         * narrower allowlist). */
        if (http_validate(args, msg, sizeof(msg)) < 0)
                return task_fail(err, "task_error", false, "%s", msg);
        r = transfer_setup(&t, args);
        if (r == -ENOMEM) {
                r = task_fail(err, "task_error", true, "out of memory");
                goto out;
        }
        if (r < 0) {
                r = task_fail(err, "task_error", false, "cannot set up the request");
                goto out;
        }

        r = transfer_perform(&t, ctx, &code);
        if (r == -ECANCELED) {
                r = task_ctx_timed_out(ctx) ?
                        task_fail(err, "timeout", true, "deadline reached during the request") :
                        task_fail(err, "cancelled", false, "stopped during the request");
                goto out;
        }
        if (r < 0) {
                r = task_fail(err, "http_error", true, "libcurl's transfer loop failed");
                goto out;
        }
        if (t.too_large || code == CURLE_FILESIZE_EXCEEDED) {
                r = task_fail(err, "response_too_large", false,
                              "response larger than %zu bytes", t.cap);
                goto out;
        }
        if (t.out_of_memory) {
                r = task_fail(err, "task_error", true, "out of memory");
                goto out;
        }
        if (code != CURLE_OK) {
                r = task_fail(err, "http_error", curl_code_retryable(code), "%s%s%s",
                              curl_easy_strerror(code), t.errbuf[0] ? ": " : "", t.errbuf);
                goto out;
        }

        curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
        if (status < 200 || status > 299) {
                r = fail_status(&t, status, err);
                goto out;
        }
        result = json_pack("{s:i, s:O}", "status", (int)status, "headers", t.headers);
        if (!result || response_put_body(result, &t) < 0) {
                json_decref(result);
                r = task_fail(err, "task_error", true, "out of memory");
                goto out;
        }
        *ret_result = result;
        r = 0;
out:
        transfer_done(&t);
        return r;
}

static void settings_free(struct settings *s)
{
        for (size_t i = 0; i < s->n_allow; i++)
                url_parts_done(&s->allow[i]);
        free(s->allow);
        for (size_t i = 0; i < s->n_auth; i++) {
                free(s->auth[i].host);
                free(s->auth[i].header);
        }
        free(s->auth);
        *s = (struct settings) { .max_response = HTTP_MAX_RESPONSE_DEFAULT };
}

/* "Authorization: <the file's content less trailing whitespace>". */
static int auth_header_read(const char *path, char **ret, char *err, size_t errlen)
{
        char buf[HTTP_AUTH_FILE_MAX + 1];
        size_t len;
        FILE *f;
        int r;

        f = fopen(path, "re");
        if (!f) {
                r = -errno;
                snprintf(err, errlen, "cannot open %s: %s", path, strerror(-r));
                return r;
        }
        len = fread(buf, 1, sizeof(buf), f);
        r = ferror(f) ? -EIO : 0;
        fclose(f);
        if (r < 0) {
                snprintf(err, errlen, "cannot read %s", path);
                return r;
        }
        while (len > 0 && strchr(" \t\r\n", buf[len - 1]))
                len--;
        if (len == 0 || len > HTTP_AUTH_FILE_MAX || !header_value_ok(buf, len)) {
                snprintf(err, errlen, "%s must hold one line, the Authorization value "
                         "(at most %d bytes)", path, HTTP_AUTH_FILE_MAX);
                return -EINVAL;
        }
        if (asprintf(ret, "Authorization: %.*s", (int)len, buf) < 0)
                return -ENOMEM;
        return 0;
}

static int settings_add_allow(struct settings *s, const char *prefix, char *err, size_t errlen)
{
        char *query = NULL;
        CURLU *u = NULL;
        int r;

        r = url_parts_get(prefix, &s->allow[s->n_allow], &u);
        if (r == -EINVAL)
                snprintf(err, errlen, "allowlist entry \"%s\" is not an http(s) URL", prefix);
        if (r < 0)
                return r;
        s->n_allow++;
        if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
                snprintf(err, errlen, "allowlist entry \"%s\" has a query", prefix);
                r = -EINVAL;
        }
        curl_free(query);
        curl_url_cleanup(u);
        return r;
}

int http_configure(const struct http_options *o, char *err, size_t errlen)
{
        struct settings s = { .max_response = HTTP_MAX_RESPONSE_DEFAULT };
        size_t n_allow = 0;
        int r = 0;

        if (!o)
                goto done;
        if (o->max_response)
                s.max_response = o->max_response;
        while (o->allow && o->allow[n_allow])
                n_allow++;
        s.allow = calloc(n_allow ? n_allow : 1, sizeof(*s.allow));
        s.auth = calloc(o->n_auth ? o->n_auth : 1, sizeof(*s.auth));
        if (!s.allow || !s.auth) {
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < n_allow && r == 0; i++)
                r = settings_add_allow(&s, o->allow[i], err, errlen);
        for (size_t i = 0; i < o->n_auth && r == 0; i++) {
                struct auth_entry *a = &s.auth[i];
                const char *h = o->auth[i].host, *colon = strrchr(h, ':');

                /* A port would never match: jobs' hosts are compared
                 * without theirs. An IPv6 address is bracketed, and its
                 * colons end at the bracket. */
                if (!h[0] || strpbrk(h, "/ \t\r\n") ||
                    (colon && (h[0] != '[' || strchr(colon, ']') != h + strlen(h) - 1))) {
                        snprintf(err, errlen, "auth host \"%s\" is not a host name (no scheme, "
                                 "port or path)", h);
                        r = -EINVAL;
                        break;
                }
                a->host = strdup(o->auth[i].host);
                r = a->host ? auth_header_read(o->auth[i].file, &a->header, err, errlen) : -ENOMEM;
                s.n_auth++;
        }
        if (r < 0)
                goto fail;
        if (o->check_only) {
                settings_free(&s);
                return 0;
        }
done:
        settings_free(&settings);
        settings = s;
        return 0;
fail:
        if (r == -ENOMEM)
                snprintf(err, errlen, "out of memory");
        settings_free(&s);
        return r;
}

int http_global_init(void)
{
        int r;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        r = -pthread_key_create(&thread_key, http_thread_free);
        if (r < 0)
                curl_global_cleanup();
        return r;
}

void http_global_cleanup(void)
{
        http_thread_drop();
        pthread_key_delete(thread_key);
        settings_free(&settings);
        curl_global_cleanup();
}

const struct task task_http = {
        .name = "http",
        .description = "One HTTP(S) request: url, method, headers, body (string) or json, "
                       "timeout. Result: status, headers, and json or body. 429, 5xx and "
                       "transport errors are retried.",
        .kinds = 1u << JOB_KIND_IO,
        .default_kind = JOB_KIND_IO,
        .default_max_attempts = 5,
        .params = NULL,
        .validate = http_validate,
        .run = http_run,
};
