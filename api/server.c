/* The HTTP server: libmicrohttpd with an epoll thread pool and
 * suspend/resume. Invariants:
 * - per-request state is made in the URI log callback, the first of a
 *   request, and freed only in NOTIFY_COMPLETED (request.c), which MHD
 *   calls for every request that reached that callback;
 * - a suspended connection is resumed exactly once, by whatever it waits
 *   for (a commit, a hub waiter), and the answer is queued on MHD's thread
 *   when the handler runs again;
 * - MHD_stop_daemon() only runs once no connection is suspended: quiesce
 *   fires every hub waiter, and the writer (still running) resumes the
 *   submissions and deletes it holds;
 * - the tokens file and the TLS files are read once, at start: a missing or
 *   bad one stops the start rather than serve without what was asked. */
#include "api/server.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/hub.h"
#include "api/metrics.h"
#include "api/request.h"
#include "daemon/log.h"
#include "storage/store.h"

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

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
        return request_new(cls, conn, uri);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **con_cls)
{
        struct request *req = *con_cls;

        (void) cls;
        (void) conn;
        (void) version;
        /* request_new() ran out of memory: MHD closes the connection. */
        if (!req)
                return MHD_NO;
        if (!req->begun)
                return request_begin(req, url, method);
        return request_continue(req, data, size);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        (void) cls;
        (void) conn;
        (void) toe;
        request_free(*con_cls);
        *con_cls = NULL;
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

/* What api_start() made, half made or whole; accepts NULL. */
static void api_free(struct api *a)
{
        if (!a)
                return;
        hub_free(a->hub);
        metrics_free(a->metrics);
        auth_free(a->auth);
        free(a->tls_cert);
        secret_free(a->tls_key);
        pthread_key_delete(a->reader_key);
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
        a->d = *d;
        a->quiesced_fd = -1;
        if (pthread_mutex_init(&a->lock, NULL) != 0) {
                free(a);
                return NULL;
        }
        if (pthread_cond_init(&a->idle, NULL) != 0) {
                pthread_mutex_destroy(&a->lock);
                free(a);
                return NULL;
        }
        if (pthread_key_create(&a->reader_key, reader_destroy) != 0) {
                pthread_cond_destroy(&a->idle);
                pthread_mutex_destroy(&a->lock);
                free(a);
                return NULL;
        }
        return a;
}

int api_start(const struct api_options *o, const struct api_deps *d, struct api **ret)
{
        /* Empty, or the certificate and key: MHD_OPTION_ARRAY takes either. */
        struct MHD_OptionItem tls[3] = { { MHD_OPTION_END, 0, NULL } };
        unsigned flags = mhd_flags(o->listen_fd);
        struct api *a;
        int r;

        a = api_new(o, d);
        if (!a) {
                close(o->listen_fd);
                return -ENOMEM;
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
        if (r < 0) {
                api_free(a);
                close(o->listen_fd);
                return r;
        }
        if (a->tls_cert) {
                flags |= MHD_USE_TLS;
                tls[0] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_CERT, 0, a->tls_cert };
                tls[1] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_KEY, 0, a->tls_key };
                tls[2] = (struct MHD_OptionItem) { MHD_OPTION_END, 0, NULL };
        }

        a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_access, a,
                                  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, a,
                                  MHD_OPTION_LISTEN_SOCKET, (MHD_socket) o->listen_fd,
                                  MHD_OPTION_THREAD_POOL_SIZE, o->threads,
                                  MHD_OPTION_CONNECTION_TIMEOUT, o->connection_timeout,
                                  MHD_OPTION_CONNECTION_LIMIT, o->max_connections,
                                  MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                                  (size_t) API_CONNECTION_MEMORY,
                                  MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
                                  MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                                  MHD_OPTION_ARRAY, tls,
                                  MHD_OPTION_END);
        if (!a->mhd) {
                /* MHD logged why; it disposed of the socket it was given. */
                api_free(a);
                return -EIO;
        }
        atomic_store(&a->serving, true);
        if (a->auth)
                log_info("http: bearer tokens required (tokens file %s)", o->tokens_file);
        *ret = a;
        return 0;
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

void api_quiesce(struct api *a)
{
        MHD_socket fd;

        if (!a || atomic_exchange(&a->stopping, true))
                return;
        fd = MHD_quiesce_daemon(a->mhd);
        if (fd != MHD_INVALID_SOCKET) {
                /* MHD's threads may still hold the fd, so it is closed only
                 * after MHD_stop_daemon(); shutting it down now refuses new
                 * clients at once instead of leaving them in the backlog. */
                a->quiesced_fd = fd;
                if (shutdown(fd, SHUT_RDWR) < 0)
                        log_debug("http: shutdown of the listening socket: %m");
        }
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
                 * aborts; leaving the server to process exit is the lesser
                 * harm. */
                log_error("http: %u requests still suspended after %ds; not stopping the server",
                          left, API_STOP_WAIT);
                return;
        }
        MHD_stop_daemon(a->mhd);
        if (a->quiesced_fd >= 0)
                close(a->quiesced_fd);
        api_free(a);
}
