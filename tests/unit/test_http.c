/* tasks/http.c against a stand-in server on loopback: results, the error
 * types and retryability of failing answers, the response cap, transport
 * errors, that a job is checked again when it runs, that a stop or the
 * deadline ends a transfer at once, and that a thread reuses its
 * connections from job to job and no more than that.
 *
 * The server is one thread answering one request at a time by path and
 * counting the connections it accepts. It closes every connection after its
 * answer, except under /ka/ (the same routes, kept alive: it polls those
 * connections for the next request; /ka/drop answers and closes anyway) and
 * /hang, which it keeps open unanswered until the end and announces through
 * a condvar, so the stop tests know the request is in flight without
 * sleeping. cmocka's asserts only work on the test's own thread: the other
 * threads record what happened and the test checks it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "tasks/http.h"
#include "tasks/task.h"

#define CAP (64 * 1024)
#define BIG (1024 * 1024)
#define MAX_HELD 8
#define MAX_LIVE 8
#define SEQ_MAX 8

/* What answer() did with the connection. */
enum conn_fate {
        CONN_CLOSE,
        CONN_KEEP,              /* kept alive for another request */
        CONN_HELD,              /* /hang: left unanswered */
};

static struct {
        int listen_fd;
        int stop_pipe[2];
        unsigned port;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int held[MAX_HELD];     /* /hang connections, closed at the end */
        unsigned n_held;
        unsigned accepted;      /* connections, under lock */
        int live[MAX_LIVE];     /* kept alive; server thread only */
        unsigned n_live;
        /* the request being answered; server thread only */
        bool keep_alive;
        bool head;
        const struct task *task;
        char dir[64];
} srv = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .cond = PTHREAD_COND_INITIALIZER,
        .dir = "/tmp/futured-test-http-XXXXXX",
};

/* ---- the stand-in server ---- */

static void send_all(int fd, const char *data, size_t len)
{
        while (len > 0) {
                ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

                if (n <= 0)
                        return;
                data += n;
                len -= (size_t)n;
        }
}

static void respond(int fd, int status, const char *extra_headers, const char *type,
                    const char *body, size_t len)
{
        char head[1024];
        int n;

        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nConnection: %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     status, srv.keep_alive ? "keep-alive" : "close", type, len,
                     extra_headers);
        send_all(fd, head, (size_t)n);
        if (!srv.head)
                send_all(fd, body, len);
}

static void respond_text(int fd, int status, const char *extra_headers, const char *type,
                         const char *body)
{
        respond(fd, status, extra_headers, type, body, strlen(body));
}

/* The value of header name in the request head, or NULL; owned by the
 * caller. */
static char *request_header(const char *head, const char *name)
{
        size_t n = strlen(name);

        for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
                const char *v = line + 2, *end;

                if (strncasecmp(v, name, n) != 0 || v[n] != ':')
                        continue;
                v += n + 1;
                while (*v == ' ')
                        v++;
                end = strstr(v, "\r\n");
                return strndup(v, (size_t)(end - v));
        }
        return NULL;
}

/* Reads a request into buf: 0 with *ret_body pointing at its body. */
static int request_read(int fd, char *buf, size_t size, char **ret_body, size_t *ret_len)
{
        size_t len = 0, want = 0;
        char *end = NULL, *cl;

        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (end && len >= want)
                        break;
                if (poll(&p, 1, 5000) <= 0 || len + 1 >= size)
                        return -EIO;
                n = read(fd, buf + len, size - 1 - len);
                if (n <= 0)
                        return -EIO;
                len += (size_t)n;
                buf[len] = '\0';
                if (!end && (end = strstr(buf, "\r\n\r\n"))) {
                        end[2] = '\0';
                        cl = request_header(buf, "Content-Length");
                        want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl, NULL, 10) : 0);
                        free(cl);
                }
        }
        *ret_body = end + 4;
        *ret_len = len - (size_t)(end + 4 - buf);
        return 0;
}

static void answer_echo(int fd, const char *head, const char *body, size_t len)
{
        char method[16] = "";
        char *type = request_header(head, "Content-Type");
        char *xtest = request_header(head, "X-Test");
        char *auth = request_header(head, "Authorization");
        char *expect = request_header(head, "Expect");
        json_t *o;
        char *text;

        sscanf(head, "%15s", method);
        o = json_pack("{s:s, s:s?, s:s?, s:s?, s:b, s:s%}", "method", method,
                      "content_type", type, "x_test", xtest, "authorization", auth,
                      "expect", expect != NULL, "body", body, len);
        text = json_dumps(o, JSON_COMPACT);
        respond_text(fd, 200, "", "application/json", text);
        free(text);
        json_decref(o);
        free(type);
        free(xtest);
        free(auth);
        free(expect);
}

static void answer_big(int fd, bool announce)
{
        static char chunk[16384];
        char head[256];
        int n;

        memset(chunk, 'x', sizeof(chunk));
        /* without Content-Length the body runs to the close */
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                     "Content-Type: text/plain\r\n%s\r\n",
                     announce ? "Content-Length: 1048576\r\n" : "");
        send_all(fd, head, (size_t)n);
        for (size_t sent = 0; sent < BIG; sent += sizeof(chunk))
                send_all(fd, chunk, sizeof(chunk));
}

static void answer_429_date(int fd)
{
        char date[64], extra[128];
        time_t later = time(NULL) + 30;
        struct tm tm;

        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&later, &tm));
        snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", date);
        respond_text(fd, 429, extra, "text/plain", "later");
}

/* Announces a body far past the cap and sends none of it: a HEAD has none,
 * and any other request must give up on the announcement alone. */
static void answer_huge_length(int fd)
{
        static const char head[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                   "Content-Type: text/plain\r\nContent-Length: 999999999\r\n\r\n";

        send_all(fd, head, sizeof(head) - 1);
}

static void answer_503_retry_after(int fd, const char *value)
{
        char extra[128];

        snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", value);
        respond_text(fd, 503, extra, "text/plain", "busy");
}

static enum conn_fate answer(int fd)
{
        static char buf[256 * 1024];
        char full[128] = "", *path = full, *body;
        size_t len;

        if (request_read(fd, buf, sizeof(buf), &body, &len) < 0)
                return CONN_CLOSE;
        sscanf(buf, "%*s %127s", full);
        srv.head = strncmp(buf, "HEAD ", 5) == 0;
        srv.keep_alive = strncmp(full, "/ka/", 4) == 0;
        if (srv.keep_alive)
                path += 3;
        if (strcmp(path, "/echo") == 0 || strncmp(path, "/api/", 5) == 0)
                answer_echo(fd, buf, body, len);
        else if (strcmp(path, "/json") == 0)
                respond_text(fd, 200, "", "application/json; charset=utf-8",
                             "{\"ok\": true, \"n\": [1, 2]}");
        else if (strcmp(path, "/text") == 0)
                respond_text(fd, 201, "X-Multi: a\r\nX-Multi: b\r\n", "text/plain", "hello");
        else if (strcmp(path, "/badname") == 0)
                respond_text(fd, 200, "X-\xff\xfe: 1\r\nX-Good: yes\r\n", "text/plain", "ok");
        else if (strcmp(path, "/spacename") == 0)
                respond_text(fd, 200, "X Space: 1\r\nX-Good: yes\r\n", "text/plain", "ok");
        else if (strcmp(path, "/binary") == 0)
                respond(fd, 200, "", "application/octet-stream", "\xff\xfe\0A", 4);
        else if (strcmp(path, "/badjson") == 0)
                respond_text(fd, 200, "", "application/json", "{nope");
        else if (strcmp(path, "/429") == 0)
                respond_text(fd, 429, "Retry-After: 2\r\n", "application/json",
                             "{\"error\": \"slow down\"}");
        else if (strcmp(path, "/429date") == 0)
                answer_429_date(fd);
        else if (strncmp(path, "/503/", 5) == 0)
                answer_503_retry_after(fd, path + 5);
        else if (strcmp(path, "/500") == 0)
                respond_text(fd, 500, "", "text/plain", "oops");
        else if (strcmp(path, "/400") == 0)
                respond_text(fd, 400, "", "application/json", "{\"error\": \"bad request\"}");
        else if (strcmp(path, "/big") == 0)
                answer_big(fd, false);
        else if (strcmp(path, "/bigcl") == 0)
                answer_big(fd, true);
        else if (strcmp(path, "/hugecl") == 0)
                answer_huge_length(fd);
        else if (strcmp(path, "/drop") == 0) {
                /* announced as kept alive, closed all the same */
                respond_text(fd, 200, "", "text/plain", "dropped");
                return CONN_CLOSE;
        } else if (strcmp(path, "/hang") == 0) {
                pthread_mutex_lock(&srv.lock);
                assert_true(srv.n_held < MAX_HELD);
                srv.held[srv.n_held++] = fd;
                pthread_cond_broadcast(&srv.cond);
                pthread_mutex_unlock(&srv.lock);
                return CONN_HELD;
        } else
                /* /close and anything else: no answer at all */
                return CONN_CLOSE;
        return srv.keep_alive ? CONN_KEEP : CONN_CLOSE;
}

static void live_remove(int fd)
{
        for (unsigned i = 0; i < srv.n_live; i++)
                if (srv.live[i] == fd) {
                        srv.live[i] = srv.live[--srv.n_live];
                        return;
                }
}

/* Answers one request on fd, then keeps it in the live set, leaves it held
 * or closes it. */
static void serve(int fd, bool was_live)
{
        enum conn_fate fate = answer(fd);

        if (fate == CONN_KEEP && (was_live || srv.n_live < MAX_LIVE)) {
                if (!was_live)
                        srv.live[srv.n_live++] = fd;
                return;
        }
        if (was_live)
                live_remove(fd);
        if (fate != CONN_HELD)
                close(fd);
}

static void *server_main(void *arg)
{
        for (;;) {
                struct pollfd p[2 + MAX_LIVE] = {
                        { .fd = srv.listen_fd, .events = POLLIN },
                        { .fd = srv.stop_pipe[0], .events = POLLIN },
                };
                unsigned n = srv.n_live;
                int fd;

                for (unsigned i = 0; i < n; i++)
                        p[2 + i] = (struct pollfd) { .fd = srv.live[i], .events = POLLIN };
                if (poll(p, 2 + n, -1) < 0 || p[1].revents)
                        break;
                for (unsigned i = 0; i < n; i++)
                        if (p[2 + i].revents)
                                serve(p[2 + i].fd, true);
                if (!p[0].revents)
                        continue;
                fd = accept4(srv.listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        continue;
                pthread_mutex_lock(&srv.lock);
                srv.accepted++;
                pthread_mutex_unlock(&srv.lock);
                serve(fd, false);
        }
        return NULL;
}

static unsigned accepted_count(void)
{
        unsigned n;

        pthread_mutex_lock(&srv.lock);
        n = srv.accepted;
        pthread_mutex_unlock(&srv.lock);
        return n;
}

static unsigned held_count(void)
{
        unsigned n;

        pthread_mutex_lock(&srv.lock);
        n = srv.n_held;
        pthread_mutex_unlock(&srv.lock);
        return n;
}

static void held_wait(unsigned n)
{
        pthread_mutex_lock(&srv.lock);
        while (srv.n_held < n)
                pthread_cond_wait(&srv.cond, &srv.lock);
        pthread_mutex_unlock(&srv.lock);
}

/* A loopback socket bound to a free port: listening, or closed again to
 * name a port where nothing listens. */
static int loopback_socket(bool listening, unsigned *ret_port)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
        *ret_port = ntohs(a.sin_port);
        if (listening) {
                assert_int_equal(listen(fd, 16), 0);
                return fd;
        }
        close(fd);
        return -1;
}

/* ---- helpers ---- */

static void configure(const char *const *allow, const struct http_auth *auth, size_t n_auth)
{
        struct http_options o = { .max_response = CAP, .allow = allow, .auth = auth,
                                  .n_auth = n_auth };
        char err[256];

        assert_int_equal(http_configure(&o, err, sizeof(err)), 0);
}

static const char *url(const char *path)
{
        static char buf[4][128];
        static unsigned i;
        char *u = buf[i++ % 4];

        snprintf(u, sizeof(buf[0]), "http://127.0.0.1:%u%s", srv.port, path);
        return u;
}

/* Validates and runs args (consumed) with a deadline that many seconds
 * away; returns run()'s answer. */
static int run(json_t *args, double deadline_in, json_t **ret_result, struct task_error *err)
{
        struct task_ctx *ctx;
        char msg[256];
        int r;

        assert_non_null(args);
        assert_int_equal(srv.task->validate(args, msg, sizeof(msg)), 0);
        assert_int_equal(task_ctx_new(task_monotonic() + deadline_in, &ctx), 0);
        *err = (struct task_error) { .type = "task_error" };
        r = srv.task->run(ctx, args, ret_result, err);
        task_ctx_free(ctx);
        json_decref(args);
        return r;
}

static json_t *run_ok(json_t *args)
{
        struct task_error err;
        json_t *result = NULL;

        assert_int_equal(run(args, 10, &result, &err), 0);
        assert_non_null(result);
        return result;
}

/* Runs args, which must fail with type; returns the error's detail. */
static json_t *run_fail(json_t *args, const char *type, bool retryable)
{
        struct task_error err;
        json_t *result = NULL;

        assert_true(run(args, 10, &result, &err) < 0);
        assert_null(result);
        assert_string_equal(err.type, type);
        assert_int_equal(err.retryable, retryable);
        return err.detail;
}

static void assert_refused(json_t *args, const char *words)
{
        char msg[256] = "";

        assert_non_null(args);
        assert_int_equal(srv.task->validate(args, msg, sizeof(msg)), -EINVAL);
        if (!strstr(msg, words))
                fail_msg("message \"%s\" lacks \"%s\"", msg, words);
        json_decref(args);
}

/* ---- tests ---- */

static void test_post_json_round_trip(void **state)
{
        json_t *r = run_ok(json_pack("{s:s, s:{s:s}, s:{s:[i,s]}}", "url", url("/echo"),
                                     "headers", "X-Test", "yes", "json", "a", 1, "b"));
        json_t *echo = json_object_get(r, "json");

        assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
        assert_string_equal(json_string_value(json_object_get(json_object_get(r, "headers"),
                                                              "content-type")),
                            "application/json");
        assert_string_equal(json_string_value(json_object_get(echo, "method")), "POST");
        assert_string_equal(json_string_value(json_object_get(echo, "content_type")),
                            "application/json");
        assert_string_equal(json_string_value(json_object_get(echo, "x_test")), "yes");
        assert_string_equal(json_string_value(json_object_get(echo, "body")), "{\"a\":[1,\"b\"]}");
        assert_true(json_is_false(json_object_get(echo, "expect")));
        json_decref(r);
}

static void test_methods_and_body(void **state)
{
        json_t *r = run_ok(json_pack("{s:s, s:s, s:s, s:{s:s}}", "url", url("/echo"),
                                     "method", "PUT", "body", "a=1", "headers",
                                     "Content-Type", "text/plain"));
        json_t *echo = json_object_get(r, "json");

        assert_string_equal(json_string_value(json_object_get(echo, "method")), "PUT");
        assert_string_equal(json_string_value(json_object_get(echo, "content_type")),
                            "text/plain");
        assert_string_equal(json_string_value(json_object_get(echo, "body")), "a=1");
        json_decref(r);

        r = run_ok(json_pack("{s:s, s:s}", "url", url("/echo"), "method", "DELETE"));
        echo = json_object_get(r, "json");
        assert_string_equal(json_string_value(json_object_get(echo, "method")), "DELETE");
        json_decref(r);

        r = run_ok(json_pack("{s:s, s:s}", "url", url("/json"), "method", "HEAD"));
        assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
        assert_null(json_object_get(r, "json"));
        assert_string_equal(json_string_value(json_object_get(r, "body")), "");
        json_decref(r);
}

/* A body does not turn an explicit GET into a POST. */
static void test_get_with_body(void **state)
{
        json_t *r = run_ok(json_pack("{s:s, s:s, s:s}", "url", url("/echo"), "method", "GET",
                                     "body", "hello"));
        json_t *echo = json_object_get(r, "json");

        assert_string_equal(json_string_value(json_object_get(echo, "method")), "GET");
        assert_string_equal(json_string_value(json_object_get(echo, "body")), "hello");
        json_decref(r);

        r = run_ok(json_pack("{s:s, s:s, s:{s:i}}", "url", url("/echo"), "method", "GET",
                             "json", "a", 1));
        echo = json_object_get(r, "json");
        assert_string_equal(json_string_value(json_object_get(echo, "method")), "GET");
        assert_string_equal(json_string_value(json_object_get(echo, "content_type")),
                            "application/json");
        assert_string_equal(json_string_value(json_object_get(echo, "body")), "{\"a\":1}");
        json_decref(r);
}

static void test_json_result(void **state)
{
        json_t *r = run_ok(json_pack("{s:s}", "url", url("/json")));
        json_t *want = json_pack("{s:b, s:[i,i]}", "ok", 1, "n", 1, 2);

        assert_true(json_equal(json_object_get(r, "json"), want));
        assert_null(json_object_get(r, "body"));
        json_decref(want);
        json_decref(r);

        r = run_ok(json_pack("{s:s}", "url", url("/badjson")));
        assert_string_equal(json_string_value(json_object_get(r, "body")), "{nope");
        json_decref(r);
}

static void test_text_and_binary_result(void **state)
{
        json_t *r = run_ok(json_pack("{s:s}", "url", url("/text")));
        json_t *headers = json_object_get(r, "headers");

        assert_int_equal(json_integer_value(json_object_get(r, "status")), 201);
        assert_string_equal(json_string_value(json_object_get(r, "body")), "hello");
        assert_string_equal(json_string_value(json_object_get(headers, "x-multi")), "a, b");
        assert_string_equal(json_string_value(json_object_get(headers, "content-type")),
                            "text/plain");
        json_decref(r);

        r = run_ok(json_pack("{s:s}", "url", url("/binary")));
        assert_null(json_object_get(r, "body"));
        assert_string_equal(json_string_value(json_object_get(r, "body_base64")), "//4AQQ==");
        json_decref(r);
}

/* A response header whose name is not a token is left out, the others
 * kept. */
static void test_bad_header_names(void **state)
{
        const char *const paths[] = { "/badname", "/spacename", NULL };

        for (const char *const *p = paths; *p; p++) {
                json_t *r = run_ok(json_pack("{s:s}", "url", url(*p)));
                json_t *headers = json_object_get(r, "headers");

                assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
                assert_string_equal(json_string_value(json_object_get(headers, "x-good")), "yes");
                /* connection, content-type, content-length and x-good */
                assert_int_equal(json_object_size(headers), 4);
                assert_null(json_object_get(headers, "x space"));
                json_decref(r);
        }
}

static void test_429_retry_after(void **state)
{
        json_t *d = run_fail(json_pack("{s:s}", "url", url("/429")), "http_status", true);
        json_t *want = json_pack("{s:s}", "error", "slow down");

        assert_int_equal(json_integer_value(json_object_get(d, "status")), 429);
        assert_int_equal(json_integer_value(json_object_get(d, "retry_after")), 2);
        assert_true(json_equal(json_object_get(d, "json"), want));
        json_decref(want);
        json_decref(d);

        d = run_fail(json_pack("{s:s}", "url", url("/429date")), "http_status", true);
        assert_in_range(json_integer_value(json_object_get(d, "retry_after")), 27, 31);
        json_decref(d);
}

/* Delay-seconds past what 64 bits hold saturate, where libcurl's reading
 * wraps them to 0; a value that is neither form asks for nothing (-1: no
 * retry_after). */
static void test_retry_after_saturates(void **state)
{
        static const struct {
                const char *value;
                json_int_t want;
        } cases[] = {
                { "120", 120 },
                { "9223372036854775807", INT64_MAX },
                { "9223372036854775808", INT64_MAX },
                { "99999999999999999999999", INT64_MAX },
                { "0", 0 },
                { "soon", -1 },
                { "0x10", -1 },
        };
        char path[64];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *d;

                snprintf(path, sizeof(path), "/503/%s", cases[i].value);
                d = run_fail(json_pack("{s:s}", "url", url(path)), "http_status", true);
                assert_int_equal(json_integer_value(json_object_get(d, "status")), 503);
                if (cases[i].want < 0 ? json_object_get(d, "retry_after") != NULL :
                    json_integer_value(json_object_get(d, "retry_after")) != cases[i].want)
                        fail_msg("Retry-After: %s gave retry_after %" JSON_INTEGER_FORMAT,
                                 cases[i].value,
                                 json_integer_value(json_object_get(d, "retry_after")));
                json_decref(d);
        }
}

static void test_500_retryable(void **state)
{
        json_t *d = run_fail(json_pack("{s:s}", "url", url("/500")), "http_status", true);

        assert_int_equal(json_integer_value(json_object_get(d, "status")), 500);
        assert_string_equal(json_string_value(json_object_get(d, "body")), "oops");
        assert_null(json_object_get(d, "retry_after"));
        json_decref(d);
}

static void test_400_not_retryable(void **state)
{
        json_t *d = run_fail(json_pack("{s:s}", "url", url("/400")), "http_status", false);
        json_t *want = json_pack("{s:s}", "error", "bad request");

        assert_int_equal(json_integer_value(json_object_get(d, "status")), 400);
        assert_true(json_equal(json_object_get(d, "json"), want));
        json_decref(want);
        json_decref(d);
}

static void test_response_too_large(void **state)
{
        json_t *d = run_fail(json_pack("{s:s}", "url", url("/big")), "response_too_large", false);

        assert_null(d);
        d = run_fail(json_pack("{s:s}", "url", url("/bigcl")), "response_too_large", false);
        assert_null(d);
}

/* HEAD's Content-Length announces no body: the cap is no reason to fail.
 * Any other method still fails on the announcement alone. */
static void test_head_past_cap(void **state)
{
        json_t *r = run_ok(json_pack("{s:s, s:s}", "url", url("/hugecl"), "method", "HEAD"));

        assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
        assert_string_equal(json_string_value(json_object_get(json_object_get(r, "headers"),
                                                              "content-length")), "999999999");
        assert_string_equal(json_string_value(json_object_get(r, "body")), "");
        json_decref(r);

        assert_null(run_fail(json_pack("{s:s}", "url", url("/hugecl")), "response_too_large",
                             false));
}

static void test_transport_errors(void **state)
{
        char refused[128];
        unsigned port;
        json_t *d;

        d = run_fail(json_pack("{s:s}", "url", url("/close")), "http_error", true);
        assert_null(d);

        loopback_socket(false, &port);
        snprintf(refused, sizeof(refused), "http://127.0.0.1:%u/", port);
        d = run_fail(json_pack("{s:s}", "url", refused), "http_error", true);
        assert_null(d);
}

/* The request's own timeout is a transport error; the job's is not its to
 * report. */
static void test_request_timeout(void **state)
{
        unsigned before = held_count();
        struct task_error err;
        json_t *result = NULL;
        double t0 = task_monotonic();

        assert_true(run(json_pack("{s:s, s:f}", "url", url("/hang"), "timeout", 0.2), 10,
                        &result, &err) < 0);
        assert_string_equal(err.type, "http_error");
        assert_true(err.retryable);
        assert_true(task_monotonic() - t0 < 2);
        held_wait(before + 1);
}

static void test_deadline_aborts(void **state)
{
        struct task_error err = { .type = "task_error" };
        struct task_ctx *ctx;
        json_t *args = json_pack("{s:s}", "url", url("/hang")), *result = NULL;
        double t0 = task_monotonic();

        assert_int_equal(task_ctx_new(t0 + 0.3, &ctx), 0);
        assert_true(srv.task->run(ctx, args, &result, &err) < 0);
        assert_true(task_ctx_timed_out(ctx));
        assert_true(task_monotonic() - t0 < 0.45);
        task_ctx_free(ctx);
        json_decref(args);
}

struct runner {
        struct task_ctx *ctx;
        json_t *args;
        int r;
        struct task_error err;
        double ended;
};

static void *runner_main(void *arg)
{
        struct runner *rn = arg;
        json_t *result = NULL;

        rn->err.type = "task_error";
        rn->r = srv.task->run(rn->ctx, rn->args, &result, &rn->err);
        rn->ended = task_monotonic();
        json_decref(result);
        return NULL;
}

static void test_stop_aborts(void **state)
{
        struct runner rn = { .args = json_pack("{s:s}", "url", url("/hang")) };
        unsigned before = held_count();
        pthread_t thread;
        double stopped;

        assert_int_equal(task_ctx_new(task_monotonic() + 30, &rn.ctx), 0);
        assert_int_equal(pthread_create(&thread, NULL, runner_main, &rn), 0);
        held_wait(before + 1);
        stopped = task_monotonic();
        task_ctx_stop(rn.ctx);
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_true(rn.r < 0);
        assert_false(task_ctx_timed_out(rn.ctx));
        assert_string_equal(rn.err.type, "cancelled");
        print_message("stopped %.1f ms after task_ctx_stop()\n", (rn.ended - stopped) * 1000);
        if (rn.ended - stopped > 0.2)
                fail_msg("took %.3f s to stop", rn.ended - stopped);
        task_ctx_free(rn.ctx);
        json_decref(rn.args);
}

/* Jobs run one after another on a thread of its own, which ends with them
 * (and frees its handles). */
struct seq {
        char urls[SEQ_MAX][128];
        size_t n;
        size_t n_ok;            /* answered with a 2xx status */
        pthread_t thread;
};

static void *seq_main(void *arg)
{
        struct seq *sq = arg;

        for (size_t i = 0; i < sq->n; i++) {
                struct task_error err = { .type = "task_error" };
                json_t *args = json_pack("{s:s}", "url", sq->urls[i]), *result = NULL;
                struct task_ctx *ctx = NULL;

                if (args && task_ctx_new(task_monotonic() + 10, &ctx) == 0 &&
                    srv.task->run(ctx, args, &result, &err) == 0 &&
                    json_integer_value(json_object_get(result, "status")) / 100 == 2)
                        sq->n_ok++;
                json_decref(err.detail);
                json_decref(result);
                json_decref(args);
                task_ctx_free(ctx);
        }
        return NULL;
}

/* Starts running paths (NULL-terminated) in order on a new thread. */
static void seq_start(struct seq *sq, const char *const *paths)
{
        *sq = (struct seq) { .n = 0 };
        for (; *paths; paths++) {
                assert_true(sq->n < SEQ_MAX);
                snprintf(sq->urls[sq->n++], sizeof(sq->urls[0]), "http://127.0.0.1:%u%s",
                         srv.port, *paths);
        }
        assert_int_equal(pthread_create(&sq->thread, NULL, seq_main, sq), 0);
}

/* Waits for the thread; every job must have succeeded. */
static void seq_join(struct seq *sq)
{
        assert_int_equal(pthread_join(sq->thread, NULL), 0);
        assert_int_equal(sq->n_ok, sq->n);
}

static void test_keepalive_one_connection(void **state)
{
        const char *const paths[] = { "/ka/echo", "/ka/json", "/ka/echo", "/ka/text",
                                      "/ka/echo", NULL };
        unsigned before = accepted_count();
        struct seq sq;

        seq_start(&sq, paths);
        seq_join(&sq);
        assert_int_equal(accepted_count() - before, 1);
}

/* The next job after the server closed the connection opens another. */
static void test_server_closed_connection(void **state)
{
        const char *const paths[] = { "/ka/drop", "/ka/echo", "/ka/echo", NULL };
        unsigned before = accepted_count();
        struct seq sq;

        seq_start(&sq, paths);
        seq_join(&sq);
        assert_int_equal(accepted_count() - before, 2);
}

/* Each thread has its own handles and its own connection. */
static void test_two_threads(void **state)
{
        const char *const paths[] = { "/ka/echo", "/ka/json", "/ka/echo", "/ka/echo",
                                      "/ka/echo", "/ka/json", NULL };
        unsigned before = accepted_count();
        struct seq a, b;

        seq_start(&a, paths);
        seq_start(&b, paths);
        seq_join(&a);
        seq_join(&b);
        assert_int_equal(accepted_count() - before, 2);
}

/* Nothing of a job's request reaches the next one on the same handle:
 * method, body, headers, HEAD's lack of a body. */
static void test_requests_independent(void **state)
{
        json_t *r, *echo;

        r = run_ok(json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "url", url("/ka/echo"),
                             "method", "PUT", "body", "a=1", "headers", "X-Test", "yes",
                             "Content-Type", "text/plain"));
        assert_string_equal(json_string_value(json_object_get(json_object_get(r, "json"),
                                                              "x_test")), "yes");
        json_decref(r);

        r = run_ok(json_pack("{s:s}", "url", url("/ka/echo")));
        echo = json_object_get(r, "json");
        assert_string_equal(json_string_value(json_object_get(echo, "method")), "GET");
        assert_null(json_string_value(json_object_get(echo, "x_test")));
        assert_null(json_string_value(json_object_get(echo, "content_type")));
        assert_string_equal(json_string_value(json_object_get(echo, "body")), "");
        json_decref(r);

        r = run_ok(json_pack("{s:s, s:s}", "url", url("/ka/json"), "method", "HEAD"));
        assert_null(json_object_get(r, "json"));
        json_decref(r);
        r = run_ok(json_pack("{s:s}", "url", url("/ka/json")));
        assert_true(json_is_true(json_object_get(json_object_get(r, "json"), "ok")));
        json_decref(r);
}

struct stopper {
        struct task_ctx *ctx;
        unsigned held;          /* stop once this many /hang are held */
};

static void *stopper_main(void *arg)
{
        struct stopper *st = arg;

        held_wait(st->held);
        task_ctx_stop(st->ctx);
        return NULL;
}

static void assert_echo_ok(void)
{
        json_t *r = run_ok(json_pack("{s:s}", "url", url("/ka/echo")));

        assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
        json_decref(r);
}

/* However a job ends, the thread's next job works: after the response cap,
 * the request's timeout, the deadline, a transport error and a stop. */
static void test_reuse_after_failures(void **state)
{
        struct stopper st = { .held = held_count() + 1 };
        struct task_error err = { .type = "task_error" };
        json_t *args, *result = NULL;
        pthread_t thread;

        assert_echo_ok();
        json_decref(run_fail(json_pack("{s:s}", "url", url("/big")), "response_too_large",
                             false));
        assert_echo_ok();
        json_decref(run_fail(json_pack("{s:s, s:f}", "url", url("/hang"), "timeout", 0.2),
                             "http_error", true));
        assert_echo_ok();
        assert_true(run(json_pack("{s:s}", "url", url("/hang")), 0.2, &result, &err) < 0);
        json_decref(err.detail);
        assert_echo_ok();
        json_decref(run_fail(json_pack("{s:s}", "url", url("/close")), "http_error", true));
        assert_echo_ok();

        args = json_pack("{s:s}", "url", url("/hang"));
        err = (struct task_error) { .type = "task_error" };
        assert_int_equal(task_ctx_new(task_monotonic() + 30, &st.ctx), 0);
        assert_int_equal(pthread_create(&thread, NULL, stopper_main, &st), 0);
        assert_true(srv.task->run(st.ctx, args, &result, &err) < 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_string_equal(err.type, "cancelled");
        task_ctx_free(st.ctx);
        json_decref(args);
        assert_echo_ok();
}

static void test_validate_refusals(void **state)
{
        char prefix[128];
        const char *const allow[] = { prefix, NULL };
        json_t *r;

        assert_refused(json_pack("{s:s}", "url", "ftp://127.0.0.1/x"), "url must be");
        assert_refused(json_pack("{s:s}", "url", "file:///etc/passwd"), "url must be");
        assert_refused(json_pack("{s:s}", "url", "not a url"), "url must be");
        assert_refused(json_pack("{}"), "url must be");
        assert_refused(json_pack("{s:s, s:s}", "url", url("/"), "method", "TRACE"), "method");
        assert_refused(json_pack("{s:s, s:s, s:{}}", "url", url("/"), "body", "x", "json"),
                       "not both");
        assert_refused(json_pack("{s:s, s:i}", "url", url("/"), "body", 3), "body must");
        assert_refused(json_pack("{s:s, s:{s:s}}", "url", url("/"), "headers", "X-A", "1\r\nB: 2"),
                       "CR, LF");
        assert_refused(json_pack("{s:s, s:{s:s}}", "url", url("/"), "headers", "X A", "1"),
                       "token");
        assert_refused(json_pack("{s:s, s:{s:s}}", "url", url("/"), "headers", "host", "x"),
                       "set by the request");
        assert_refused(json_pack("{s:s, s:{s:i}}", "url", url("/"), "headers", "X-A", 1),
                       "must be a string");
        assert_refused(json_pack("{s:s, s:i}", "url", url("/"), "timeout", 0), "timeout");
        assert_refused(json_pack("{s:s, s:s, s:s}", "url", url("/"), "method", "HEAD",
                                 "body", "x"), "HEAD");
        assert_refused(json_pack("{s:s, s:s}", "url", url("/"), "bogus", "x"), "bogus");

        snprintf(prefix, sizeof(prefix), "%s", url("/api/"));
        configure(allow, NULL, 0);
        assert_refused(json_pack("{s:s}", "url", url("/echo")), "allowlist");
        assert_refused(json_pack("{s:s}", "url", url("/api")), "allowlist");
        assert_refused(json_pack("{s:s}", "url", url("/api/%2e%2e/echo")), "allowlist");
        assert_refused(json_pack("{s:s}", "url", "http://localhost:1/api/"), "allowlist");
        r = run_ok(json_pack("{s:s}", "url", url("/api/x/../y")));
        assert_int_equal(json_integer_value(json_object_get(r, "status")), 200);
        json_decref(r);
        configure(NULL, NULL, 0);
}

/* A job stored under a wider allowlist is refused when it runs, before any
 * request. */
static void test_run_revalidates(void **state)
{
        char prefix[128], msg[256];
        const char *const allow[] = { prefix, NULL };
        struct runner rn = { .args = json_pack("{s:s}", "url", url("/echo")) };
        unsigned before;
        pthread_t thread;

        assert_int_equal(srv.task->validate(rn.args, msg, sizeof(msg)), 0);
        snprintf(prefix, sizeof(prefix), "%s", url("/api/"));
        configure(allow, NULL, 0);
        before = accepted_count();
        /* on a thread of its own, which has no connection to reuse: a
         * request would be an accepted connection */
        assert_int_equal(task_ctx_new(task_monotonic() + 10, &rn.ctx), 0);
        assert_int_equal(pthread_create(&thread, NULL, runner_main, &rn), 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        configure(NULL, NULL, 0);

        assert_true(rn.r < 0);
        assert_string_equal(rn.err.type, "task_error");
        assert_false(rn.err.retryable);
        if (!strstr(rn.err.message, "allowlist"))
                fail_msg("message \"%s\" lacks \"allowlist\"", rn.err.message);
        assert_int_equal(accepted_count(), before);
        task_ctx_free(rn.ctx);
        json_decref(rn.err.detail);

        json_decref(run_ok(rn.args));
}

/* Runs args, which must succeed, and checks the Authorization the server
 * saw (NULL: none). */
static void assert_authorization(json_t *args, const char *want)
{
        json_t *r = run_ok(args);
        const char *got = json_string_value(json_object_get(json_object_get(r, "json"),
                                                            "authorization"));

        if (want)
                assert_string_equal(got, want);
        else
                assert_null(got);
        json_decref(r);
}

/* The auth file of the tests, in srv.dir; its path into path. */
static void write_key(char *path, size_t size)
{
        FILE *f;

        snprintf(path, size, "%s/key", srv.dir);
        f = fopen(path, "we");
        assert_non_null(f);
        fputs("Bearer sk-secret\n", f);
        fclose(f);
}

static void test_default_authorization(void **state)
{
        char path[128];
        struct http_auth auth = { .host = "127.0.0.1", .file = path };

        write_key(path, sizeof(path));
        configure(NULL, &auth, 1);

        /* on one kept-alive connection: each request has its own */
        assert_authorization(json_pack("{s:s}", "url", url("/ka/echo")), "Bearer sk-secret");
        assert_authorization(json_pack("{s:s, s:{s:s}}", "url", url("/ka/echo"), "headers",
                                       "authorization", "Bearer mine"), "Bearer mine");
        assert_authorization(json_pack("{s:s}", "url", url("/ka/echo")), "Bearer sk-secret");
        configure(NULL, NULL, 0);
        assert_authorization(json_pack("{s:s}", "url", url("/ka/echo")), NULL);
        unlink(path);
}

static void test_configure_refusals(void **state)
{
        const char *const bad_allow[] = { "ftp://x/", NULL };
        const char *const only[] = { "http://example.invalid/", NULL };
        json_t *args;
        const struct http_auth missing = { .host = "h", .file = "/nonexistent/key" };
        struct http_options o = { .allow = bad_allow };
        char err[256];

        assert_int_equal(http_configure(&o, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "ftp://x/"));
        o = (struct http_options) { .auth = &missing, .n_auth = 1 };
        assert_int_equal(http_configure(&o, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "/nonexistent/key"));
        o.check_only = true;
        assert_int_equal(http_configure(&o, err, sizeof(err)), -ENOENT);
        configure(NULL, NULL, 0);

        /* A good check (a reload's) changes nothing either: any URL still
         * goes. */
        o = (struct http_options) { .allow = only, .check_only = true };
        assert_int_equal(http_configure(&o, err, sizeof(err)), 0);
        args = json_pack("{s:s}", "url", url("/x"));
        assert_int_equal(srv.task->validate(args, err, sizeof(err)), 0);
        json_decref(args);
}

/* An auth host is compared with a job's host, which has no port: one with
 * a port is refused, a bracketed IPv6 address is not. */
static void test_configure_auth_hosts(void **state)
{
        static const char *const refused[] = {
                "127.0.0.1:8080", "localhost:80", "::1", "[::1]:8080", "[::1", NULL,
        };
        char path[128], err[256], want[64];
        struct http_auth auth = { .host = "[::1]", .file = path };
        struct http_options o = { .auth = &auth, .n_auth = 1 };

        write_key(path, sizeof(path));

        assert_int_equal(http_configure(&o, err, sizeof(err)), 0);
        for (const char *const *host = refused; *host; host++) {
                auth.host = *host;
                assert_int_equal(http_configure(&o, err, sizeof(err)), -EINVAL);
                snprintf(want, sizeof(want), "\"%s\"", *host);
                if (!strstr(err, want))
                        fail_msg("message \"%s\" lacks %s", err, want);
        }
        configure(NULL, NULL, 0);
        unlink(path);
}

static int setup(void **state)
{
        assert_int_equal(http_global_init(), 0);
        configure(NULL, NULL, 0);
        srv.task = task_find("http");
        assert_non_null(srv.task);
        assert_non_null(mkdtemp(srv.dir));
        srv.listen_fd = loopback_socket(true, &srv.port);
        assert_int_equal(pipe2(srv.stop_pipe, O_CLOEXEC), 0);
        assert_int_equal(pthread_create(&srv.thread, NULL, server_main, NULL), 0);
        return 0;
}

static int teardown(void **state)
{
        assert_int_equal(write(srv.stop_pipe[1], "x", 1), 1);
        pthread_join(srv.thread, NULL);
        for (unsigned i = 0; i < srv.n_held; i++)
                close(srv.held[i]);
        for (unsigned i = 0; i < srv.n_live; i++)
                close(srv.live[i]);
        close(srv.listen_fd);
        close(srv.stop_pipe[0]);
        close(srv.stop_pipe[1]);
        rmdir(srv.dir);
        http_global_cleanup();
        return 0;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_post_json_round_trip),
                cmocka_unit_test(test_methods_and_body),
                cmocka_unit_test(test_get_with_body),
                cmocka_unit_test(test_json_result),
                cmocka_unit_test(test_text_and_binary_result),
                cmocka_unit_test(test_bad_header_names),
                cmocka_unit_test(test_429_retry_after),
                cmocka_unit_test(test_retry_after_saturates),
                cmocka_unit_test(test_500_retryable),
                cmocka_unit_test(test_400_not_retryable),
                cmocka_unit_test(test_response_too_large),
                cmocka_unit_test(test_head_past_cap),
                cmocka_unit_test(test_transport_errors),
                cmocka_unit_test(test_request_timeout),
                cmocka_unit_test(test_deadline_aborts),
                cmocka_unit_test(test_stop_aborts),
                cmocka_unit_test(test_keepalive_one_connection),
                cmocka_unit_test(test_server_closed_connection),
                cmocka_unit_test(test_two_threads),
                cmocka_unit_test(test_requests_independent),
                cmocka_unit_test(test_reuse_after_failures),
                cmocka_unit_test(test_validate_refusals),
                cmocka_unit_test(test_run_revalidates),
                cmocka_unit_test(test_default_authorization),
                cmocka_unit_test(test_configure_refusals),
                cmocka_unit_test(test_configure_auth_hosts),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
