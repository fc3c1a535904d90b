/* The HTTP server: libmicrohttpd with an epoll thread pool and
 * suspend/resume. Invariants:
 * - per-request state is made in the URI log callback, the first of a
 *   request, and freed in NOTIFY_COMPLETED (request.c). MHD calls that
 *   only for requests it handed to the access handler: one it gives up on
 *   before (query arguments that overflow its pool) is freed when its
 *   connection closes, from the connection's slot;
 * - a suspended connection is resumed exactly once, by whatever it waits
 *   for (a commit, a hub waiter), and the answer is queued on MHD's thread
 *   when the handler runs again;
 * - MHD_stop_daemon() only runs once no connection is suspended:
 *   api_quiesce() fires every hub waiter, and the writer (still running)
 *   resumes the submissions and deletes it holds;
 * - the tokens file and the TLS files are read once, at start: a missing or
 *   bad one stops the start rather than serve without what was asked;
 * - every listening socket has its own MHD daemon (MHD takes one listen
 *   socket each), and they share everything else: the hub, the metrics,
 *   the body budget, the readers. So any of them answers for all;
 * - a probe's connection (api_probe) is told apart by its socket, never by
 *   what it sends: its requests get the server's own empty answer and are
 *   neither handled nor counted. */
#include "api/server.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/hub.h"
#include "api/metrics.h"
#include "api/request.h"
#include "api/routes.h"
#include "daemon/log.h"
#include "storage/store.h"
#include "tasks/task.h"

/* Seconds api_stop() waits for suspended requests to be answered. */
#define API_STOP_WAIT 10
/* Bytes of MHD's per-connection pool, which holds the request line, the
 * headers and the answer's headers. With 32 KiB (MHD's default, pinned
 * here) a request line or headers past about 32 KiB get MHD's own 414 or
 * 431, or a closed connection when too little is left to answer. 64 KiB
 * only doubles those limits, and the memory each of max_connections holds. */
#define API_CONNECTION_MEMORY (32 * 1024)
/* A tokens, certificate or key file bigger than this is not one. */
#define API_FILE_MAX (1024 * 1024)

/* What a probe connection's requests carry instead of a struct request:
 * only its address matters. */
static char probe_tag;

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        struct api *a = cls;
        char line[512];
        size_t n;

        vsnprintf(line, sizeof(line), fmt, ap);
        n = strlen(line);
        while (n > 0 && line[n - 1] == '\n')
                line[--n] = '\0';
        /* Once serving, MHD mostly reports clients that went away. */
        log_msg(atomic_load(&a->serving) ? LOG_DEBUG : LOG_WARNING, "http: %s", line);
}

/* Whether conn is the probe in flight. Its fd number alone could be a
 * new client's already, once MHD closed the probe's socket. */
static bool is_probe(struct api *a, struct MHD_Connection *conn)
{
        const union MHD_ConnectionInfo *ci;
        struct stat st;

        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || ci->connect_fd != atomic_load(&a->probe_fd))
                return false;
        return fstat(ci->connect_fd, &st) == 0 && st.st_ino == atomic_load(&a->probe_ino);
}

/* Per connection (MHD's socket context): the request its URI log callback
 * made, until NOTIFY_COMPLETED frees it. */
struct conn_slot {
        struct request *req;
};

static struct conn_slot *conn_slot(struct MHD_Connection *conn)
{
        const union MHD_ConnectionInfo *ci;

        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return ci ? ci->socket_context : NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
        struct conn_slot *slot = *socket_context;

        (void) cls;
        (void) conn;
        if (code == MHD_CONNECTION_NOTIFY_STARTED) {
                /* NULL when out of memory: on_uri() then refuses its
                 * requests. */
                *socket_context = calloc(1, sizeof(*slot));
                return;
        }
        if (!slot)
                return;
        /* Counted as left unanswered, which is what its client saw. */
        request_free(slot->req);
        free(slot);
        *socket_context = NULL;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
        struct api *a = cls;
        struct conn_slot *slot;

        if (atomic_load(&a->probe_fd) >= 0 && is_probe(a, conn))
                return &probe_tag;
        slot = conn_slot(conn);
        if (!slot)
                return NULL;
        slot->req = request_new(a, conn, uri);
        return slot->req;
}

static enum MHD_Result probe_answer(struct MHD_Connection *conn)
{
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(0, (void *) "", MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;
        ret = MHD_queue_response(conn, MHD_HTTP_NO_CONTENT, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **con_cls)
{
        struct request *req = *con_cls;

        (void) cls;
        (void) version;
        /* request_new() ran out of memory: MHD closes the connection. */
        if (!req)
                return MHD_NO;
        if ((void *) req == &probe_tag)
                return probe_answer(conn);
        if (!req->begun)
                return request_begin(req, url, method);
        return request_continue(req, data, size);
}

/* Whether req, ending with status, may have changed the job counts: a
 * submission, a cancel or a delete went through. */
static bool changes_counts(const struct request *req, unsigned status)
{
        return req->route && status >= 200 && status < 300 &&
               (strcmp(req->route->method, "POST") == 0 ||
                strcmp(req->route->method, "DELETE") == 0);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct api *a = cls;
        struct request *req = *con_cls;
        const union MHD_ConnectionInfo *ci;
        struct conn_slot *slot;
        bool changed = false;

        (void) toe;
        *con_cls = NULL;
        if ((void *) req == &probe_tag)
                return;
        slot = conn_slot(conn);
        if (slot && slot->req == req)
                slot->req = NULL;
        if (req && a->o.on_change) {
                ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);
                changed = ci && changes_counts(req, ci->http_status);
        }
        request_free(req);
        if (changed)
                a->o.on_change(a->o.userdata);
}

static void reader_destroy(void *r)
{
        store_reader_close(r);
}

int api_reader(struct api *a, struct store_reader **ret)
{
        struct store_reader *r = pthread_getspecific(a->reader_key);
        int k;

        if (!r) {
                k = store_reader_open(a->d.store, &r);
                if (k < 0)
                        return k;
                k = -pthread_setspecific(a->reader_key, r);
                if (k < 0) {
                        store_reader_close(r);
                        return k;
                }
        }
        *ret = r;
        return 0;
}

static unsigned mhd_flags(int fd)
{
        unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                         MHD_USE_ERROR_LOG;
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) == 0 && ss.ss_family == AF_INET6)
                flags |= MHD_USE_DUAL_STACK;
        return flags;
}

/* Wipes and frees a text that may hold a secret. Accepts NULL. */
static void secret_free(char *text)
{
        if (!text)
                return;
        explicit_bzero(text, strlen(text));
        free(text);
}

/* Reads path whole (what names it in messages), NUL-terminated; *ret is the
 * caller's, secret_free(). A secret open to other users is served but
 * warned about. Logs what goes wrong. */
static int file_read(const char *path, const char *what, bool secret, char **ret,
                     size_t *ret_len)
{
        size_t len = 0;
        struct stat st;
        char *buf = NULL;
        ssize_t k;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_errno(LOG_ERR, -errno, "%s %s", what, path);
        if (fstat(fd, &st) < 0)
                r = -errno;
        else if (!S_ISREG(st.st_mode))
                r = -EINVAL;
        else if (st.st_size > API_FILE_MAX)
                r = -EFBIG;
        else if (!(buf = malloc((size_t) st.st_size + 1)))
                r = -ENOMEM;
        /* Up to the size fstat() saw: a file that grows meanwhile is cut. */
        while (r == 0 && len < (size_t) st.st_size) {
                k = read(fd, buf + len, (size_t) st.st_size - len);
                if (k < 0 && errno != EINTR)
                        r = -errno;
                else if (k == 0)
                        break;
                else if (k > 0)
                        len += (size_t) k;
        }
        close(fd);
        if (r < 0) {
                if (buf)
                        explicit_bzero(buf, len);
                free(buf);
                return log_errno(LOG_ERR, r, "%s %s", what, path);
        }
        buf[len] = '\0';
        if (secret && (st.st_mode & (S_IRWXG | S_IRWXO)))
                log_warning("%s %s is open to other users (mode %04o): chmod 600 it", what, path,
                            (unsigned) (st.st_mode & 07777));
        *ret = buf;
        *ret_len = len;
        return 0;
}

static int tokens_load(struct api *a)
{
        size_t len;
        char *text;
        int r;

        if (!a->o.tokens_file)
                return 0;
        r = file_read(a->o.tokens_file, "tokens file", true, &text, &len);
        if (r < 0)
                return r;
        return auth_new(text, len, a->o.tokens_file, &a->auth);
}

static int tls_load(struct api *a)
{
        size_t len;
        int r;

        if (!a->o.tls_cert && !a->o.tls_key)
                return 0;
        if (!a->o.tls_cert || !a->o.tls_key) {
                log_error("tls_cert and tls_key go together: set both, or neither for plain HTTP");
                return -EINVAL;
        }
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
                log_error("this libmicrohttpd was built without TLS: cannot serve HTTPS");
                return -EOPNOTSUPP;
        }
        r = file_read(a->o.tls_cert, "TLS certificate", false, &a->tls_cert, &len);
        if (r < 0)
                return r;
        return file_read(a->o.tls_key, "TLS key", true, &a->tls_key, &len);
}

/* What api_start() made, half made or whole, once no daemon runs; accepts
 * NULL. */
static void api_free(struct api *a)
{
        if (!a)
                return;
        hub_free(a->hub);
        metrics_free(a->metrics);
        auth_free(a->auth);
        free(a->tls_cert);
        secret_free(a->tls_key);
        free(a->daemons);
        pthread_key_delete(a->reader_key);
        pthread_mutex_destroy(&a->probe_lock);
        pthread_cond_destroy(&a->idle);
        pthread_mutex_destroy(&a->lock);
        free(a);
}

static struct api *api_new(const struct api_options *o, const struct api_deps *d)
{
        struct api *a = calloc(1, sizeof(*a));

        if (!a)
                return NULL;
        a->o = *o;
        a->o.listen_fds = NULL;
        a->o.n_listen_fds = 0;
        a->d = *d;
        atomic_init(&a->probe_fd, -1);
        a->daemons = calloc(o->n_listen_fds, sizeof(*a->daemons));
        if (!a->daemons)
                goto fail;
        if (pthread_mutex_init(&a->lock, NULL) != 0)
                goto fail;
        if (pthread_cond_init(&a->idle, NULL) != 0)
                goto fail_lock;
        if (pthread_mutex_init(&a->probe_lock, NULL) != 0)
                goto fail_idle;
        if (pthread_key_create(&a->reader_key, reader_destroy) != 0)
                goto fail_probe_lock;
        return a;

fail_probe_lock:
        pthread_mutex_destroy(&a->probe_lock);
fail_idle:
        pthread_cond_destroy(&a->idle);
fail_lock:
        pthread_mutex_destroy(&a->lock);
fail:
        free(a->daemons);
        free(a);
        return NULL;
}

/* The daemon serving listening socket fd, which MHD owns from here on,
 * started or not. */
static int daemon_start(struct api *a, int fd, struct MHD_Daemon **ret)
{
        /* Empty, or the certificate and key: MHD_OPTION_ARRAY takes either. */
        struct MHD_OptionItem tls[3] = { { MHD_OPTION_END, 0, NULL } };
        unsigned flags = mhd_flags(fd);
        struct MHD_Daemon *mhd;

        if (a->tls_cert) {
                flags |= MHD_USE_TLS;
                tls[0] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_CERT, 0, a->tls_cert };
                tls[1] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_KEY, 0, a->tls_key };
                tls[2] = (struct MHD_OptionItem) { MHD_OPTION_END, 0, NULL };
        }
        mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_access, a,
                               MHD_OPTION_EXTERNAL_LOGGER, mhd_log, a,
                               MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                               MHD_OPTION_THREAD_POOL_SIZE, a->o.threads,
                               MHD_OPTION_CONNECTION_TIMEOUT, a->o.connection_timeout,
                               MHD_OPTION_CONNECTION_LIMIT, a->o.max_connections,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) API_CONNECTION_MEMORY,
                               MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
                               MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                               MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
                               MHD_OPTION_ARRAY, tls,
                               MHD_OPTION_END);
        /* MHD logged why; it disposed of the socket it was given. */
        if (!mhd)
                return -EIO;
        *ret = mhd;
        return 0;
}

int api_start(const struct api_options *o, const struct api_deps *d, struct api **ret)
{
        struct api *a;
        size_t i = 0;
        int r;

        if (o->n_listen_fds == 0)
                return -EINVAL;
        a = api_new(o, d);
        if (!a) {
                r = -ENOMEM;
                goto fail;
        }
        r = hub_new(&a->hub);
        if (r == 0)
                r = metrics_new(&a->metrics);
        if (r < 0)
                log_errno(LOG_ERR, r, "http: cannot start");
        if (r == 0)
                r = tokens_load(a);
        if (r == 0)
                r = tls_load(a);
        for (; r == 0 && i < o->n_listen_fds; i++) {
                r = daemon_start(a, o->listen_fds[i], &a->daemons[i]);
                if (r == 0)
                        a->n_daemons++;
        }
        if (r < 0) {
                /* Daemons already started may hold requests: the full stop. */
                api_stop(a);
                goto fail;
        }
        atomic_store(&a->serving, true);
        if (a->auth)
                log_info("http: bearer tokens required (tokens file %s)", o->tokens_file);
        *ret = a;
        return 0;

fail:
        for (; i < o->n_listen_fds; i++)
                close(o->listen_fds[i]);
        return r;
}

void api_job_finished(int64_t id, int64_t batch, void *api)
{
        struct api *a = api;

        hub_fire_job(a->hub, id, batch);
}

void api_suspended_add(struct api *a)
{
        pthread_mutex_lock(&a->lock);
        a->suspended++;
        pthread_mutex_unlock(&a->lock);
}

void api_suspended_sub(struct api *a)
{
        pthread_mutex_lock(&a->lock);
        if (--a->suspended == 0)
                pthread_cond_broadcast(&a->idle);
        pthread_mutex_unlock(&a->lock);
}

/* 0 once fd has something to say (an answer, an end of file, an error),
 * -ETIMEDOUT at deadline. */
static int wait_readable(int fd, double deadline)
{
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                double left = deadline - task_monotonic();
                int r;

                if (left <= 0)
                        return -ETIMEDOUT;
                r = poll(&p, 1, (int) (left * 1000) + 1);
                if (r > 0)
                        return 0;
                if (r < 0 && errno != EINTR)
                        return -errno;
        }
}

/* Under probe_lock. */
static int probe_daemon(struct api *a, struct MHD_Daemon *mhd, double deadline)
{
        static const char request[] = "GET /healthz HTTP/1.0\r\n\r\n";
        /* What an unnamed Unix client, as a socketpair's end is, looks like. */
        const struct sockaddr_un peer = { .sun_family = AF_UNIX };
        struct stat st;
        int fds[2], r = 0;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
                return -errno;
        if (fstat(fds[1], &st) < 0) {
                r = -errno;
                close(fds[1]);
                goto out;
        }
        atomic_store(&a->probe_ino, st.st_ino);
        atomic_store(&a->probe_fd, fds[1]);
        /* MHD owns fds[1] from here, added or not. */
        if (MHD_add_connection(mhd, fds[1], (const struct sockaddr *) &peer,
                               sizeof(peer.sun_family)) != MHD_YES) {
                /* Every thread at the connection limit proves nothing
                 * either way; a busy server is no reason to restart it. */
                r = errno == ENFILE ? 0 : errno ? -errno : -EIO;
                goto out;
        }
        /* A TLS daemon would wait for a handshake; an end of file instead
         * ends it at once, and the close that follows is the reaction. */
        if (a->tls_cert) {
                if (shutdown(fds[0], SHUT_WR) < 0)
                        r = -errno;
        } else if (send(fds[0], request, sizeof(request) - 1, MSG_NOSIGNAL) < 0) {
                r = -errno;
        }
        if (r == 0)
                r = wait_readable(fds[0], deadline);
out:
        atomic_store(&a->probe_fd, -1);
        close(fds[0]);
        return r;
}

int api_probe(struct api *a, double timeout)
{
        double deadline = task_monotonic() + timeout;
        int r = 0;

        pthread_mutex_lock(&a->probe_lock);
        /* Quiesced: the servers are going away, nothing to prove. */
        if (atomic_load(&a->stopping))
                r = -ESHUTDOWN;
        for (size_t i = 0; r == 0 && i < a->n_daemons; i++)
                r = probe_daemon(a, a->daemons[i], deadline);
        pthread_mutex_unlock(&a->probe_lock);
        return r;
}

/* The servers keep accepting connections until they stop, and answer
 * every new request 503 shutting_down meanwhile. Not MHD_quiesce_daemon():
 * on an epoll thread pool it races with the pool's own removal of the
 * listening socket from its epoll set, and MHD aborts the process when
 * it loses ("Failed to remove listen FD from epoll set", MHD 0.9.75). */
void api_quiesce(struct api *a)
{
        if (!a || atomic_exchange(&a->stopping, true))
                return;
        hub_stop(a->hub);
}

/* Waits up to API_STOP_WAIT for no connection to be suspended; returns how
 * many still are. */
static unsigned wait_idle(struct api *a)
{
        struct timespec until;
        unsigned left;

        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += API_STOP_WAIT;
        pthread_mutex_lock(&a->lock);
        while (a->suspended > 0 &&
               pthread_cond_clockwait(&a->idle, &a->lock, CLOCK_MONOTONIC, &until) == 0)
                continue;
        left = a->suspended;
        pthread_mutex_unlock(&a->lock);
        return left;
}

void api_stop(struct api *a)
{
        unsigned left;

        if (!a)
                return;
        api_quiesce(a);
        left = wait_idle(a);
        if (left > 0) {
                /* MHD_stop_daemon() with suspended connections hangs or
                 * aborts; leaving the servers to process exit is the lesser
                 * harm. */
                log_error("http: %u requests still suspended after %ds; not stopping the server",
                          left, API_STOP_WAIT);
                return;
        }
        for (size_t i = 0; i < a->n_daemons; i++)
                MHD_stop_daemon(a->daemons[i]);
        api_free(a);
}
