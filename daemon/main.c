/* futured: process life.
 *
 * Start-up order matters. Worker mode is decided before anything else, so a
 * CPU worker never runs the daemon's start-up. Signals are blocked before the
 * first thread so every thread inherits the mask and only this thread reads
 * them (sigwaitinfo). The store is recovered before the writer starts, and
 * READY=1 is sent only once the listener accepts. Shutdown runs the same
 * chain backwards: stop accepting, answer the waiting, drain the pools,
 * close the store. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "api/server.h"
#include "daemon/config.h"
#include "daemon/iopool.h"
#include "daemon/listen.h"
#include "daemon/log.h"
#include "daemon/procpool.h"
#include "daemon/retention.h"
#include "daemon/scheduler.h"
#include "daemon/worker.h"
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

/* The scheduler exists before the api, so its completion events go through
 * this pointer, set once the api is up and cleared before it goes. */
static struct api *the_api;

static void on_job_finished(int64_t id, int64_t batch, void *userdata)
{
        struct api *a = __atomic_load_n(&the_api, __ATOMIC_ACQUIRE);

        if (a)
                api_job_finished(id, batch, a);
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

/* The [http] keys as the http task takes them; http_configure() copies
 * what it keeps, so the split lists live on this stack only. */
static int configure_http(const struct config *c)
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
                           },
                           err, sizeof(err));
        if (r < 0)
                log_error("[http]: %s", err);
        return r;
}

/* The [commands] and [exec] keys as the exec task takes them. Before the
 * CPU pool starts: it hands them to every worker it spawns. */
static int configure_exec(const struct config *c)
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
                           },
                           err, sizeof(err));
        if (r < 0)
                log_error("[commands] or [exec]: %s", err);
        return r;
}

static int open_listener(const struct config *c, int *ret)
{
        char where[300];
        int r = listen_inherited(ret);

        if (r < 0)
                return log_errno(LOG_ERR, r, "inherited socket (LISTEN_FDS) unusable");
        if (r == 0) {
                r = listen_open(c->listen, ret);
                if (r < 0)
                        return log_errno(LOG_ERR, r, "cannot listen on %s", c->listen);
        }
        listen_describe(*ret, where, sizeof(where));
        log_notice("listening on %s", where);
        return 0;
}

static int wait_for_stop(void)
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
                        log_notice("SIGHUP: nothing is reloaded at run time; restart to apply a new configuration");
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

static int run(const struct config *c)
{
        struct store_options so = { .path = c->db, .sync_full = c->sync_full };
        struct recovered rec = { 0 };
        struct store *store = NULL;
        struct writer *writer = NULL;
        struct sched *sched = NULL;
        struct iopool *iopool = NULL;
        struct procpool *procpool = NULL;
        struct api *api = NULL;
        struct retention *retention = NULL;
        bool drained = false;
        int fd = -1, r;

        r = configure_http(c);
        if (r < 0)
                return r;
        r = configure_exec(c);
        if (r < 0)
                return r;
        r = open_listener(c, &fd);
        if (r < 0)
                return r;
        r = store_open(&so, &store);
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
        r = api_start(&(struct api_options){
                              .listen_fd = fd,
                              .threads = c->http_threads,
                              .max_connections = c->max_connections,
                              .connection_timeout = c->connection_timeout,
                              .max_body = c->max_body,
                              .max_wait = c->max_wait,
                              .default_timeout = c->default_timeout,
                              .max_batch_items = (int64_t)c->max_batch_items,
                      },
                      &(struct api_deps){
                              .store = store,
                              .sched = sched,
                              .writer = writer,
                              .iopool = iopool,
                              .procpool = procpool,
                              .started_at = task_monotonic(),
                      },
                      &api);
        fd = -1; /* the api owns it now, started or not */
        if (r < 0) {
                log_errno(LOG_ERR, r, "cannot start the HTTP server");
                goto out;
        }
        __atomic_store_n(&the_api, api, __ATOMIC_RELEASE);

        log_notice("futured %s ready: %u I/O threads, %u CPU workers, store %s", PACKAGE_VERSION,
                   c->io_threads, c->cpu_workers, c->db);
        sd_notifyf(0, "READY=1\nSTATUS=serving: %u I/O threads, %u CPU workers", c->io_threads,
                   c->cpu_workers);

        r = wait_for_stop();

        sd_notify(0, "STOPPING=1");
        api_quiesce(api);
        sched_drain(sched, c->shutdown_grace);
        drained = true;
out:
        /* The pools' threads wait in sched_take() until the scheduler stops. */
        if (sched && !drained)
                sched_drain(sched, 0);
        /* HTTP handlers read the pools and the scheduler: the server goes
         * first, while the writer still runs to answer suspended
         * submissions. */
        __atomic_store_n(&the_api, NULL, __ATOMIC_RELEASE);
        api_stop(api);
        iopool_stop(iopool);
        procpool_stop(procpool);
        retention_stop(retention);
        writer_stop(writer);
        sched_free(sched);
        store_close(store);
        for (size_t i = 0; i < rec.n; i++)
                job_free(rec.jobs[i]);
        free(rec.jobs);
        free(rec.batches);
        if (fd >= 0)
                close(fd);
        if (r == 0)
                log_notice("stopped");
        return r;
}

int main(int argc, char **argv)
{
        struct config c;
        char err[512];
        int r;

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
        /* libcurl's global set-up is not thread-safe: before any thread. */
        if (http_global_init() < 0) {
                log_error("cannot initialise libcurl");
                return EXIT_FAILURE;
        }
        block_signals();
        r = run(&c);
        exec_cleanup();
        http_global_cleanup();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
