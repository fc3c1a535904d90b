/* futured: process life.
 *
 * Start-up order matters. Worker mode is decided before anything else, so a
 * CPU worker never runs the daemon's start-up. Signals are blocked before the
 * first thread so every thread inherits the mask and only this thread reads
 * them (sigwaitinfo). The environment systemd passes (LISTEN_*, WATCHDOG_*)
 * is read and unset before the first thread too. The store is recovered
 * before the writer starts, and READY=1 is sent only once the store is
 * open, the pools run and every listener accepts. Shutdown runs the same
 * chain backwards: STOPPING=1, stop accepting, answer the waiting, drain
 * the pools, close the store.
 *
 * One HTTP server serves every listening socket (several only through
 * socket activation). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "api/server.h"
#include "api/spec.h"
#include "daemon/config.h"
#include "daemon/iopool.h"
#include "daemon/listen.h"
#include "daemon/log.h"
#include "daemon/procpool.h"
#include "daemon/retention.h"
#include "daemon/scheduler.h"
#include "daemon/watchdog.h"
#include "daemon/worker.h"
#include "storage/checkpoint.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/exec.h"
#include "tasks/http.h"
#include "tasks/task.h"

/* What recovery hands over before the scheduler exists: pending jobs
 * outside batches (owned here until requeued) and sealed batches that
 * still have pending jobs. */
struct recovered {
        struct job **jobs;
        size_t n, cap;
        struct recovered_batch {
                int64_t id;
                int priority;
        } *batches;
        size_t n_batches, cap_batches;
};

/* array (capacity *cap, n used) with room for one more element of size:
 * array itself, or its reallocation, or NULL when out of memory (array is
 * then untouched). */
static void *grow(void *array, size_t *cap, size_t n, size_t size)
{
        void *p;
        size_t c;

        if (n < *cap)
                return array;
        c = *cap ? 2 * *cap : 256;
        p = realloc(array, c * size);
        if (p)
                *cap = c;
        return p;
}

static int recovered_add(struct job *j, void *userdata)
{
        struct recovered *rec = userdata;
        struct job **jobs = grow(rec->jobs, &rec->cap, rec->n, sizeof(*jobs));

        if (!jobs) {
                job_free(j);
                return -ENOMEM;
        }
        rec->jobs = jobs;
        rec->jobs[rec->n++] = j;
        return 0;
}

static int recovered_batch(int64_t batch, int priority, void *userdata)
{
        struct recovered *rec = userdata;
        struct recovered_batch *b = grow(rec->batches, &rec->cap_batches, rec->n_batches,
                                         sizeof(*b));

        if (!b)
                return -ENOMEM;
        rec->batches = b;
        rec->batches[rec->n_batches++] = (struct recovered_batch){ batch, priority };
        return 0;
}

/* Who hears of a job's end or a submission. The scheduler exists before
 * the server and the watchdog, and the server outlives the watchdog, so
 * their events (the writer thread, MHD's threads) go through here: each
 * listener is set once up and cleared, under the write lock, before it
 * goes. The events take the read lock, so they never wait for each
 * other. */
struct audience {
        pthread_rwlock_t lock;
        struct api *api;
        struct watchdog *watchdog;
};

/* Each sets its listener to p and returns the one it replaces. */
static struct api *audience_set_api(struct audience *l, struct api *p)
{
        struct api *old;

        pthread_rwlock_wrlock(&l->lock);
        old = l->api;
        l->api = p;
        pthread_rwlock_unlock(&l->lock);
        return old;
}

static struct watchdog *audience_set_watchdog(struct audience *l, struct watchdog *p)
{
        struct watchdog *old;

        pthread_rwlock_wrlock(&l->lock);
        old = l->watchdog;
        l->watchdog = p;
        pthread_rwlock_unlock(&l->lock);
        return old;
}

static void on_job_finished(int64_t id, int64_t batch, void *userdata)
{
        struct audience *l = userdata;

        pthread_rwlock_rdlock(&l->lock);
        if (l->api)
                api_job_finished(id, batch, l->api);
        if (l->watchdog)
                watchdog_job_finished(l->watchdog, id);
        pthread_rwlock_unlock(&l->lock);
}

static void on_api_change(void *userdata)
{
        struct audience *l = userdata;

        pthread_rwlock_rdlock(&l->lock);
        if (l->watchdog)
                watchdog_poke(l->watchdog);
        pthread_rwlock_unlock(&l->lock);
}

/* Splits text in place at spaces and tabs into words[], NULL-terminated;
 * words has room for every word text can hold. Returns the count. */
static size_t split_words(char *text, char **words)
{
        size_t n = 0;
        char *save, *w;

        for (w = strtok_r(text, " \t", &save); w; w = strtok_r(NULL, " \t", &save))
                words[n++] = w;
        words[n] = NULL;
        return n;
}

/* The [http] keys as the http task takes them (or, check_only, only
 * checks them); http_configure() copies what it keeps, so the split lists
 * live on this stack only. */
static int configure_http(const struct config *c, bool check_only)
{
        char allow[sizeof(c->allow)], auth[sizeof(c->auth)], err[256];
        char *prefixes[sizeof(c->allow) / 2 + 1], *pairs[sizeof(c->auth) / 2 + 1];
        struct http_auth hosts[sizeof(c->auth) / 2 + 1];
        size_t n;
        int r;

        memcpy(allow, c->allow, sizeof(allow));
        memcpy(auth, c->auth, sizeof(auth));
        split_words(allow, prefixes);
        n = split_words(auth, pairs);
        for (size_t i = 0; i < n; i++) {
                char *eq = strchr(pairs[i], '=');

                if (!eq || eq == pairs[i] || !eq[1]) {
                        log_error("[http] auth: '%s' is not HOST=FILE", pairs[i]);
                        return -EINVAL;
                }
                *eq = '\0';
                hosts[i] = (struct http_auth){ .host = pairs[i], .file = eq + 1 };
        }
        r = http_configure(&(struct http_options){
                                   .max_response = c->max_response,
                                   .allow = (const char *const *)prefixes,
                                   .auth = hosts,
                                   .n_auth = n,
                                   .check_only = check_only,
                           },
                           err, sizeof(err));
        if (r < 0)
                log_error("[http]: %s", err);
        return r;
}

/* The [commands] and [exec] keys as the exec task takes them (or, with
 * check_only, only checks them). Before the CPU pool starts: it hands them
 * to every worker it spawns. */
static int configure_exec(const struct config *c, bool check_only)
{
        struct exec_command commands[CONFIG_COMMANDS_MAX];
        char err[512];
        int r;

        for (unsigned i = 0; i < c->n_commands; i++)
                commands[i] = (struct exec_command){ .name = c->commands[i].name,
                                                     .template = c->commands[i].template };
        r = exec_configure(&(struct exec_options){
                                   .commands = commands,
                                   .n_commands = c->n_commands,
                                   .json_output = c->json_output,
                                   .work_dir = c->work_dir,
                                   .environment = c->environment,
                                   .max_output = c->max_output,
                                   .check_only = check_only,
                           },
                           err, sizeof(err));
        if (r < 0)
                log_error("[commands] or [exec]: %s", err);
        return r;
}

/* [openai] base_url is read per batch; checked here too, so that a bad one
 * stops the start rather than fails every batch that relies on it. */
static int check_openai(const struct config *c)
{
        struct spec_error err;
        char *url;

        if (!c->base_url[0])
                return 0;
        if (spec_openai_base_url(c->base_url, &url, &err) < 0) {
                log_error("[openai] base_url: %s", err.message);
                return -EINVAL;
        }
        free(url);
        return 0;
}

/* The tasks' settings from c, applied or, with check_only, only checked;
 * each check logs its reason. The start and a reload run the same ones. */
static int configure_tasks(const struct config *c, bool check_only)
{
        int r = configure_http(c, check_only);

        if (r == 0)
                r = configure_exec(c, check_only);
        if (r == 0)
                r = check_openai(c);
        return r;
}

/* The sockets systemd passed, or else the one of c->listen: their count in
 * *ret_n, fds[0..n) the caller's. */
static int open_listeners(const struct config *c, int fds[static LISTEN_MAX], size_t *ret_n)
{
        char where[300];
        int r = listen_inherited(fds, LISTEN_MAX);

        if (r == -E2BIG)
                return log_errno(LOG_ERR, r, "more than %d inherited sockets (LISTEN_FDS)",
                                 LISTEN_MAX);
        if (r < 0)
                return log_errno(LOG_ERR, r,
                                 "an inherited socket (LISTEN_FDS) is not a listening TCP or Unix stream socket");
        if (r > 0) {
                log_info("socket activation: %d inherited sockets; listen = %s is not used", r,
                         c->listen);
        } else {
                r = listen_open(c->listen, &fds[0]);
                if (r == -EINVAL) {
                        log_error("cannot listen on %s: not HOST:PORT, [IPV6]:PORT (port 0 to "
                                  "65535) or unix:PATH (at most 107 bytes)", c->listen);
                        return r;
                }
                if (r < 0)
                        return log_errno(LOG_ERR, r, "cannot listen on %s", c->listen);
                r = 1;
        }
        for (int i = 0; i < r; i++) {
                listen_describe(fds[i], where, sizeof(where));
                log_notice("listening on %s", where);
        }
        *ret_n = (size_t)r;
        return 0;
}

/* SIGHUP: the configuration again, from the same file and flags (flags
 * still win). Only log_level changes at run time; every other key that
 * differs is reported as needing a restart, and a bad file changes
 * nothing. */
static void reload(int argc, char **argv, struct config *c)
{
        const char *changed[64];
        char err[512], list[1024] = "";
        struct config fresh;
        size_t n, len = 0;
        int r;

        r = config_parse(argc, argv, &fresh, err, sizeof(err));
        if (r != 0) {
                log_error("SIGHUP: %s; nothing changed", r < 0 ? err : "nothing to reload");
                return;
        }
        /* What the next start would refuse is said now, not at that start. */
        if (configure_tasks(&fresh, true) < 0)
                log_error("SIGHUP: the next start would refuse this configuration");
        n = config_diff(c, &fresh, changed, sizeof(changed) / sizeof(changed[0]));
        for (size_t i = 0; i < n && i < sizeof(changed) / sizeof(changed[0]); i++)
                if (strcmp(changed[i], "log_level") != 0 && len < sizeof(list))
                        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s",
                                                len ? ", " : "", changed[i]);
        /* What the reload did is said under the more verbose of the two
         * levels, so that a lower one does not hide it. */
        if (fresh.log_level > c->log_level)
                log_set_level(fresh.log_level);
        if (list[0])
                log_warning("SIGHUP: %s changed and need a restart to apply", list);
        else if (n == 0)
                log_notice("SIGHUP: the configuration is unchanged");
        if (fresh.log_level != c->log_level) {
                log_notice("SIGHUP: the new log_level applies from now on");
                log_set_level(fresh.log_level);
                c->log_level = fresh.log_level;
                log_debug("SIGHUP: debug messages are logged now");
        }
}

static int wait_for_stop(int argc, char **argv, struct config *c)
{
        sigset_t set;
        siginfo_t si;

        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        for (;;) {
                int sig = sigwaitinfo(&set, &si);

                if (sig < 0) {
                        if (errno == EINTR)
                                continue;
                        return log_errno(LOG_ERR, -errno, "sigwaitinfo");
                }
                if (sig == SIGHUP) {
                        reload(argc, argv, c);
                        continue;
                }
                log_notice("%s: shutting down", strsignal(sig));
                return 0;
        }
}

static void block_signals(void)
{
        sigset_t set;

        /* SIGCHLD stays blocked, not ignored: the CPU pool reaps its own
         * workers by pid and needs their exit status. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        sigaddset(&set, SIGCHLD);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);
}

/* The HTTP server on fds[0..n), which it owns from the call on. */
static int start_server(const struct config *c, const struct api_deps *deps, const int *fds,
                        size_t n, struct audience *l)
{
        struct api *a;
        int r;

        r = api_start(&(struct api_options){
                              .listen_fds = fds,
                              .n_listen_fds = n,
                              .threads = c->http_threads,
                              .max_connections = c->max_connections,
                              .connection_timeout = c->connection_timeout,
                              .max_body = c->max_body,
                              .max_wait = c->max_wait,
                              .default_timeout = c->default_timeout,
                              .max_batch_items = (int64_t)c->max_batch_items,
                              .tokens_file = c->tokens_file[0] ? c->tokens_file : NULL,
                              .tls_cert = c->tls_cert[0] ? c->tls_cert : NULL,
                              .tls_key = c->tls_key[0] ? c->tls_key : NULL,
                              .openai_base_url = c->base_url[0] ? c->base_url : NULL,
                              .on_change = on_api_change,
                              .userdata = l,
                      },
                      deps, &a);
        if (r < 0)
                return log_errno(LOG_ERR, r, "cannot start the HTTP server");
        audience_set_api(l, a);
        return 0;
}

/* Every connection, idle upstream connection of the http task and worker
 * socket is a file descriptor, and the soft limit (often 1024) is far below
 * max_connections. Nothing here uses select(), so the soft limit goes up to
 * the hard one; exec commands get the old one back (tasks/exec.c). */
static void raise_nofile(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        log_warning("cannot raise the open file limit: %m");
        }
}

static int run(int argc, char **argv, struct config *c)
{
        struct store_options so = { .path = c->db, .sync_full = c->sync_full };
        struct audience l = { .lock = PTHREAD_RWLOCK_INITIALIZER };
        struct recovered rec = { 0 };
        struct store *store = NULL;
        struct writer *writer = NULL;
        struct checkpointer *checkpointer = NULL;
        struct sched *sched = NULL;
        struct iopool *iopool = NULL;
        struct procpool *procpool = NULL;
        struct retention *retention = NULL;
        struct watchdog *watchdog = NULL;
        bool drained = false;
        int fds[LISTEN_MAX];
        size_t n_fds = 0;
        uint64_t watchdog_usec = 0;
        int r;

        r = configure_tasks(c, false);
        if (r < 0)
                return r;
        /* After configure_exec(), which keeps the limit commands run with. */
        raise_nofile();
        /* Read (and unset, so no worker inherits it) before any thread. */
        r = sd_watchdog_enabled(1, &watchdog_usec);
        if (r < 0)
                return log_errno(LOG_ERR, r, "WATCHDOG_USEC is set but unusable");
        if (r == 0)
                watchdog_usec = 0;
        /* Each ping checks the writer, both pools and an HTTP round trip:
         * a period of microseconds would spin on it, and a commit alone
         * can take longer. */
        if (watchdog_usec > 0 && watchdog_usec < WATCHDOG_USEC_MIN) {
                log_error("WATCHDOG_USEC=%" PRIu64 " is below %d ms (WatchdogSec= is too short)",
                          watchdog_usec, WATCHDOG_USEC_MIN / 1000);
                return -EINVAL;
        }
        r = open_listeners(c, fds, &n_fds);
        if (r < 0)
                return r;
        r = store_open(&so, &store);
        if (r == -EBUSY || r == -EPROTO || r == -EBADMSG) {
                log_error("cannot open the store %s: %s", c->db,
                          r == -EBUSY ? "it is in use by another futured" :
                          r == -EPROTO ? "it was written by a newer futured" :
                          "it is not a futured database");
                goto out;
        }
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot open the store %s", c->db);
                goto out;
        }
        r = store_recover(store, &(struct store_recovery){
                                         .retry_delay_ms = (int64_t)(c->retry_base * 1000),
                                         .job = recovered_add,
                                         .batch = recovered_batch,
                                         .userdata = &rec,
                                 });
        if (r < 0) {
                log_errno(LOG_ERR, r, "recovery of %s failed", c->db);
                goto out;
        }
        r = checkpointer_start(store, &checkpointer);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the store checkpointer");
                goto out;
        }
        r = writer_start(store, &writer);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the store writer");
                goto out;
        }
        r = sched_new(&(struct sched_options){
                              .writer = writer,
                              .max_pending = c->max_pending,
                              .retry_base = c->retry_base,
                              .retry_max = c->retry_max,
                              .store = store,
                              .host_concurrency = c->host_concurrency,
                              .host_per_second = c->host_per_second,
                              .on_finished = on_job_finished,
                              .userdata = &l,
                      },
                      &sched);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot create the scheduler");
                goto out;
        }
        for (size_t i = 0; i < rec.n; i++) {
                r = sched_restore(sched, rec.jobs[i]);
                rec.jobs[i] = NULL;
                if (r < 0) {
                        log_errno(LOG_ERR, r, "cannot requeue recovered jobs");
                        goto out;
                }
        }
        for (size_t i = 0; i < rec.n_batches; i++) {
                r = sched_add_batch(sched, rec.batches[i].id, rec.batches[i].priority);
                if (r < 0) {
                        log_errno(LOG_ERR, r, "cannot requeue recovered batches");
                        goto out;
                }
        }
        if (rec.n || rec.n_batches)
                log_notice("recovered %zu pending jobs and %zu unfinished batches from %s", rec.n,
                           rec.n_batches, c->db);
        r = retention_start(writer, c->retention, &retention);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the retention purge");
                goto out;
        }

        r = iopool_start(sched, c->io_threads, &iopool);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the I/O pool");
                goto out;
        }
        r = procpool_start(sched,
                           &(struct procpool_options){ .workers = c->cpu_workers,
                                                       .exe = "/proc/self/exe" },
                           &procpool);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the CPU pool");
                goto out;
        }
        /* The server owns the fds from here on, started or not. */
        r = start_server(c,
                         &(struct api_deps){
                                 .store = store,
                                 .sched = sched,
                                 .writer = writer,
                                 .iopool = iopool,
                                 .procpool = procpool,
                                 .started_at = task_monotonic(),
                         },
                         fds, n_fds, &l);
        n_fds = 0;
        if (r < 0)
                goto out;

        log_notice("futured %s ready: %u I/O threads, %u CPU workers, store %s", PACKAGE_VERSION,
                   c->io_threads, c->cpu_workers, c->db);
        sd_notifyf(0, "READY=1\nSTATUS=serving: %u I/O threads, %u CPU workers", c->io_threads,
                   c->cpu_workers);
        r = watchdog_start(&(struct watchdog_options){
                                   .usec = watchdog_usec,
                                   .sched = sched,
                                   .writer = writer,
                                   .iopool = iopool,
                                   .procpool = procpool,
                                   .api = l.api,
                           },
                           &watchdog);
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the watchdog");
                goto out;
        }
        audience_set_watchdog(&l, watchdog);
        if (watchdog_usec)
                log_info("watchdog: a ping every %.1f s while every part is alive",
                         (double)watchdog_usec / 2e6);

        r = wait_for_stop(argc, argv, c);

        sd_notify(0, "STOPPING=1\nSTATUS=stopping: letting running jobs finish");
        /* The watchdog probes the server: it goes first. */
        watchdog_stop(audience_set_watchdog(&l, NULL));
        /* Only this thread changes l.api: no lock needed to read it. */
        api_quiesce(l.api);
        sched_drain(sched, c->shutdown_grace);
        drained = true;
out:
        /* The pools' threads wait in sched_take() until the scheduler stops. */
        if (sched && !drained)
                sched_drain(sched, 0);
        /* HTTP handlers read the pools and the scheduler: the servers go
         * first, while the writer still runs to answer suspended
         * submissions. */
        /* Out of the lock: api_stop() waits for suspended requests, which
         * the writer thread, calling on_job_finished(), may resume. */
        api_stop(audience_set_api(&l, NULL));
        iopool_stop(iopool);
        procpool_stop(procpool);
        retention_stop(retention);
        writer_stop(writer);
        checkpointer_stop(checkpointer);
        sched_free(sched);
        store_close(store);
        for (size_t i = 0; i < rec.n; i++)
                job_free(rec.jobs[i]);
        free(rec.jobs);
        free(rec.batches);
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        pthread_rwlock_destroy(&l.lock);
        if (r == 0)
                log_notice("stopped");
        return r;
}

/* glibc gives freed memory back to the kernel as soon as a little sits
 * free at the top of a heap, and each thread's heap does so with madvise().
 * Every request allocates on one thread and frees on another, so under
 * load that meant a madvise() per few requests, each a TLB flush on every
 * CPU: a third of the daemon's time in one profile. Keeping up to 32 MiB
 * per heap ends it. Fixing the trim threshold freezes the mmap threshold
 * too (glibc stops adapting it), so that is set, above any buffer a
 * request or job allocates often. */
static void tune_malloc(void)
{
        mallopt(M_TRIM_THRESHOLD, 32 << 20);
        mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

/* A daemon started with stdin, stdout or stderr closed would hand that
 * number to the next file it opens: its log lines would then go into the
 * database or a socket. /dev/null takes each closed one first. */
static int open_std_fds(void)
{
        for (int fd = 0; fd <= 2; fd++) {
                if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
                        continue;
                if (open("/dev/null", O_RDWR) != fd)
                        return -1;
        }
        return 0;
}

int main(int argc, char **argv)
{
        struct config c;
        char err[512];
        int r;

        if (open_std_fds() < 0)
                return EXIT_FAILURE;
        if (argc == 2 && strcmp(argv[1], WORKER_ARG) == 0)
                return worker_main(WORKER_FD);

        r = config_parse(argc, argv, &c, err, sizeof(err));
        if (r == 1)
                return EXIT_SUCCESS;
        if (r < 0) {
                log_error("%s", err);
                return 2;
        }
        log_set_level(c.log_level);
        tune_malloc();
        /* libcurl's global set-up is not thread-safe: before any thread. */
        if (http_global_init() < 0) {
                log_error("cannot initialise libcurl");
                return EXIT_FAILURE;
        }
        block_signals();
        r = run(argc, argv, &c);
        exec_cleanup();
        http_global_cleanup();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
