/* GET /metrics. Every name starts with futured_; every family has its HELP
 * and TYPE before its samples.
 *
 * - Requests by route and status are lock-free counters, one per (route
 *   row, status) pair, written when a request ends; a scrape shows the
 *   pairs that are not zero.
 * - Jobs by task and state come from a query that reads the whole jobs
 *   table, so its result is kept and reused for METRICS_JOBS_MIN_AGE, or
 *   for METRICS_JOBS_COST_FACTOR times what the last query took when that
 *   is longer: scrapes of a big store then spend at most a small share of
 *   a reader's time counting. Every registered task shows all its states,
 *   zeros included, so a series does not vanish when its jobs are purged.
 * - The rest (pools, queues, the writer's and the scheduler's histograms)
 *   is a snapshot each owner takes under its own lock. */
#include "api/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "api/reply.h"
#include "api/request.h"
#include "api/routes.h"
#include "api/strbuf.h"
#include "daemon/iopool.h"
#include "daemon/procpool.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/task.h"

#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_JOBS_MIN_AGE 1.0        /* seconds */
#define METRICS_JOBS_COST_FACTOR 10.0
/* Status slots per route: 0 for no answer, then 100 .. 599. */
#define STATUS_FIRST 100
#define STATUS_LAST 599
#define STATUS_SLOTS (STATUS_LAST - STATUS_FIRST + 2)

struct task_counts {
        char *task;                     /* owned */
        int64_t n[JOB_STATE__COUNT];
};

struct metrics {
        /* (route_count() + 1) x STATUS_SLOTS; the last row: no route. */
        atomic_uint_fast64_t *requests;
        pthread_mutex_t lock;           /* the cached job counts below */
        struct task_counts *tasks;      /* owned */
        size_t n_tasks;
        size_t cap_tasks;
        double fetched_at;              /* task_monotonic(); 0: not valid */
        double cost;                    /* seconds the last count took */
};

static size_t status_slot(unsigned status)
{
        if (status < STATUS_FIRST || status > STATUS_LAST)
                return 0;
        return status - STATUS_FIRST + 1;
}

void metrics_count_request(struct metrics *m, const struct route *route, unsigned status)
{
        size_t row = route ? route_index(route) : route_count();

        atomic_fetch_add_explicit(&m->requests[row * STATUS_SLOTS + status_slot(status)], 1,
                                  memory_order_relaxed);
}

/* The entry of task, added (with zero counts) when new; NULL on ENOMEM. */
static struct task_counts *tasks_get(struct metrics *m, const char *task)
{
        struct task_counts *t;

        for (size_t i = 0; i < m->n_tasks; i++)
                if (strcmp(m->tasks[i].task, task) == 0)
                        return &m->tasks[i];
        if (m->n_tasks == m->cap_tasks) {
                size_t cap = m->cap_tasks ? m->cap_tasks * 2 : 16;

                t = realloc(m->tasks, cap * sizeof(*t));
                if (!t)
                        return NULL;
                m->tasks = t;
                m->cap_tasks = cap;
        }
        t = &m->tasks[m->n_tasks];
        *t = (struct task_counts) { .task = strdup(task) };
        if (!t->task)
                return NULL;
        m->n_tasks++;
        return t;
}

int metrics_new(struct metrics **ret)
{
        struct metrics *m = calloc(1, sizeof(*m));
        int r;

        if (!m)
                return -ENOMEM;
        m->requests = calloc((route_count() + 1) * STATUS_SLOTS, sizeof(*m->requests));
        if (!m->requests) {
                free(m);
                return -ENOMEM;
        }
        r = -pthread_mutex_init(&m->lock, NULL);
        if (r < 0) {
                free(m->requests);
                free(m);
                return r;
        }
        for (const struct task *const *t = task_all(); *t; t++)
                if (!tasks_get(m, (*t)->name)) {
                        metrics_free(m);
                        return -ENOMEM;
                }
        *ret = m;
        return 0;
}

void metrics_free(struct metrics *m)
{
        if (!m)
                return;
        for (size_t i = 0; i < m->n_tasks; i++)
                free(m->tasks[i].task);
        free(m->tasks);
        pthread_mutex_destroy(&m->lock);
        free(m->requests);
        free(m);
}

static int count_one(const char *task, enum job_state state, int64_t n, void *ud)
{
        struct task_counts *t = tasks_get(ud, task);

        if (!t)
                return -ENOMEM;
        t->n[state] = n;
        return 0;
}

/* Under m->lock: the counts, fresh enough. */
static int jobs_refresh(struct metrics *m, struct api *a)
{
        double now = task_monotonic(), age = METRICS_JOBS_MIN_AGE;
        struct store_reader *reader;
        int r;

        if (METRICS_JOBS_COST_FACTOR * m->cost > age)
                age = METRICS_JOBS_COST_FACTOR * m->cost;
        if (m->fetched_at > 0 && now - m->fetched_at < age)
                return 0;
        for (size_t i = 0; i < m->n_tasks; i++)
                memset(m->tasks[i].n, 0, sizeof(m->tasks[i].n));
        m->fetched_at = 0;
        r = api_reader(a, &reader);
        if (r == 0)
                r = store_count_tasks(reader, count_one, m);
        if (r < 0)
                return r;
        m->fetched_at = task_monotonic();
        m->cost = m->fetched_at - now;
        return 0;
}

static void family(struct strbuf *b, const char *name, const char *type, const char *help)
{
        strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* labels: the inside of {}, made of fixed names only; NULL for none. */
static void put_uint(struct strbuf *b, const char *name, const char *labels, uint64_t v)
{
        if (labels)
                strbuf_printf(b, "%s{%s} %" PRIu64 "\n", name, labels, v);
        else
                strbuf_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void put_double(struct strbuf *b, const char *name, const char *labels, double v)
{
        if (labels)
                strbuf_printf(b, "%s{%s} %.15g\n", name, labels, v);
        else
                strbuf_printf(b, "%s %.15g\n", name, v);
}

/* A label value as the format quotes it. */
static void put_label_value(struct strbuf *b, const char *s)
{
        strbuf_puts(b, "\"");
        for (; *s; s++) {
                if (*s == '\\' || *s == '"')
                        strbuf_printf(b, "\\%c", *s);
                else if (*s == '\n')
                        strbuf_puts(b, "\\n");
                else
                        strbuf_append(b, s, 1);
        }
        strbuf_puts(b, "\"");
}

static void put_histogram(struct strbuf *b, const char *name, const char *labels,
                          const struct histogram *h)
{
        const char *sep = labels ? "," : "";
        uint64_t cum = 0;

        if (!labels)
                labels = "";
        for (unsigned i = 0; i < h->n_bounds; i++) {
                cum += h->counts[i];
                strbuf_printf(b, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, labels, sep,
                              h->bounds[i], cum);
        }
        strbuf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep,
                      h->count);
        strbuf_printf(b, "%s_sum%s%s%s %.15g\n", name, *labels ? "{" : "", labels,
                      *labels ? "}" : "", h->sum);
        strbuf_printf(b, "%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "", labels,
                      *labels ? "}" : "", h->count);
}

/* Resident set size from /proc/self/statm; 0 when it cannot be read. */
static uint64_t resident_bytes(void)
{
        unsigned long long size, resident = 0;
        long page = sysconf(_SC_PAGESIZE);
        FILE *f = fopen("/proc/self/statm", "re");

        if (!f)
                return 0;
        if (fscanf(f, "%llu %llu", &size, &resident) != 2)
                resident = 0;
        fclose(f);
        return page > 0 ? (uint64_t) resident * (uint64_t) page : 0;
}

static void put_process(struct strbuf *b, const struct api_deps *d)
{
        family(b, "futured_uptime_seconds", "gauge", "Seconds since futured started.");
        put_double(b, "futured_uptime_seconds", NULL, task_monotonic() - d->started_at);
        family(b, "futured_resident_memory_bytes", "gauge",
               "Resident memory of the daemon process (CPU workers not included).");
        put_uint(b, "futured_resident_memory_bytes", NULL, resident_bytes());
}

static void put_jobs(struct strbuf *b, const struct metrics *m)
{
        family(b, "futured_jobs", "gauge",
               "Jobs in the store by task and state (refreshed at most once a second).");
        for (size_t i = 0; i < m->n_tasks; i++)
                for (int s = 0; s < JOB_STATE__COUNT; s++) {
                        strbuf_puts(b, "futured_jobs{task=");
                        put_label_value(b, m->tasks[i].task);
                        strbuf_printf(b, ",state=\"%s\"} %" PRId64 "\n",
                                      job_state_name((enum job_state) s), m->tasks[i].n[s]);
                }
}

static void put_pools(struct strbuf *b, const struct api_deps *d)
{
        struct procpool_stats cpu;
        struct iopool_stats io;
        struct sched_stats ss;

        iopool_get_stats(d->iopool, &io);
        procpool_get_stats(d->procpool, &cpu);
        sched_get_stats(d->sched, &ss);

        family(b, "futured_queue_pending", "gauge", "Jobs ready to run, waiting for a worker.");
        put_uint(b, "futured_queue_pending", "pool=\"io\"", ss.pending[JOB_KIND_IO]);
        put_uint(b, "futured_queue_pending", "pool=\"cpu\"", ss.pending[JOB_KIND_CPU]);
        family(b, "futured_queue_delayed", "gauge",
               "Jobs waiting for a retry's backoff or a rate limit's slot.");
        put_uint(b, "futured_queue_delayed", NULL, ss.delayed);
        family(b, "futured_queue_limited", "gauge",
               "Jobs held back by a concurrency or rate limit.");
        put_uint(b, "futured_queue_limited", NULL, ss.limited);
        family(b, "futured_jobs_running", "gauge", "Jobs running now.");
        put_uint(b, "futured_jobs_running", "pool=\"io\"", ss.running[JOB_KIND_IO]);
        put_uint(b, "futured_jobs_running", "pool=\"cpu\"", ss.running[JOB_KIND_CPU]);
        family(b, "futured_pool_workers", "gauge",
               "Workers of each pool: I/O threads, CPU worker processes.");
        put_uint(b, "futured_pool_workers", "pool=\"io\"", io.size);
        put_uint(b, "futured_pool_workers", "pool=\"cpu\"", cpu.size);
        family(b, "futured_pool_busy_workers", "gauge", "Workers running a job now.");
        put_uint(b, "futured_pool_busy_workers", "pool=\"io\"", io.busy);
        put_uint(b, "futured_pool_busy_workers", "pool=\"cpu\"", cpu.busy);
        family(b, "futured_worker_restarts_total", "counter",
               "CPU worker processes replaced after they died or were killed.");
        put_uint(b, "futured_worker_restarts_total", NULL, cpu.restarts);
}

static void put_timings(struct strbuf *b, const struct api_deps *d)
{
        struct sched_timings t;
        char labels[32];

        sched_get_timings(d->sched, &t);
        family(b, "futured_job_run_seconds", "histogram",
               "Run time of each attempt, from its start to its end, by kind.");
        for (int k = 0; k < JOB_KIND__COUNT; k++) {
                snprintf(labels, sizeof(labels), "kind=\"%s\"", job_kind_name((enum job_kind) k));
                put_histogram(b, "futured_job_run_seconds", labels, &t.run[k]);
        }
        family(b, "futured_job_queue_wait_seconds", "histogram",
               "Time from a job's submission to the start of its first attempt, by kind.");
        for (int k = 0; k < JOB_KIND__COUNT; k++) {
                snprintf(labels, sizeof(labels), "kind=\"%s\"", job_kind_name((enum job_kind) k));
                put_histogram(b, "futured_job_queue_wait_seconds", labels, &t.wait[k]);
        }
}

static void put_requests(struct strbuf *b, const struct metrics *m)
{
        size_t routes = route_count();

        family(b, "futured_http_requests_total", "counter",
               "HTTP requests by route pattern and status code, counted when they end "
               "(code 0: no answer was sent; route \"unmatched\": no route matched).");
        for (size_t row = 0; row <= routes; row++)
                for (size_t slot = 0; slot < STATUS_SLOTS; slot++) {
                        uint64_t n = atomic_load_explicit(&m->requests[row * STATUS_SLOTS + slot],
                                                          memory_order_relaxed);
                        unsigned code = slot ? (unsigned) (slot - 1 + STATUS_FIRST) : 0;

                        if (n == 0)
                                continue;
                        if (row < routes)
                                strbuf_printf(b, "futured_http_requests_total{method=\"%s\","
                                              "route=\"%s\",code=\"%u\"} %" PRIu64 "\n",
                                              route_at(row)->method, route_at(row)->pattern,
                                              code, n);
                        else
                                strbuf_printf(b, "futured_http_requests_total{method=\"\","
                                              "route=\"unmatched\",code=\"%u\"} %" PRIu64 "\n",
                                              code, n);
                }
}

static void put_bodies(struct strbuf *b, const struct api *a)
{
        family(b, "futured_http_body_bytes", "gauge",
               "Memory held by the request bodies being received.");
        put_uint(b, "futured_http_body_bytes", NULL, atomic_load(&a->body_bytes));
        family(b, "futured_http_body_budget_bytes", "gauge",
               "The most the request bodies being received may hold together; "
               "a body past it is answered 503 server_busy.");
        put_uint(b, "futured_http_body_budget_bytes", NULL, request_body_budget(a));
}

static void put_store(struct strbuf *b, const struct api_deps *d)
{
        struct writer_stats ws;

        writer_get_stats(d->writer, &ws);
        family(b, "futured_store_commits_total", "counter", "Transactions committed.");
        put_uint(b, "futured_store_commits_total", NULL, ws.commits);
        family(b, "futured_store_commit_failures_total", "counter",
               "Transactions that failed and were rolled back.");
        put_uint(b, "futured_store_commit_failures_total", NULL, ws.failures);
        family(b, "futured_store_ops_total", "counter", "Operations in committed transactions.");
        put_uint(b, "futured_store_ops_total", NULL, ws.ops);
        family(b, "futured_store_commit_ops", "histogram",
               "Operations per committed transaction (group commit batch size).");
        put_histogram(b, "futured_store_commit_ops", NULL, &ws.commit_ops);
        family(b, "futured_store_commit_duration_seconds", "histogram",
               "Time of each committed transaction, from BEGIN to the end of COMMIT's sync.");
        put_histogram(b, "futured_store_commit_duration_seconds", NULL, &ws.commit_seconds);
        family(b, "futured_store_healthy", "gauge", "1 while the store takes writes, else 0.");
        put_uint(b, "futured_store_healthy", NULL, writer_healthy(d->writer));
}

/* Queues text as the exposition format; reply.c's answers are JSON. */
static enum MHD_Result reply_text(struct request *req, struct strbuf *body)
{
        struct MHD_Response *resp;
        enum MHD_Result ret;
        size_t len;
        char *text;

        if (strbuf_steal(body, &text, &len) < 0)
                return reply_value(req, MHD_HTTP_OK, NULL);
        resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return reply_value(req, MHD_HTTP_OK, NULL);
        }
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_TYPE) != MHD_YES) {
                MHD_destroy_response(resp);
                return reply_value(req, MHD_HTTP_OK, NULL);
        }
        ret = MHD_queue_response(req->conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
}

enum MHD_Result metrics_get(struct request *req)
{
        struct metrics *m = req->api->metrics;
        const struct api_deps *d = &req->api->d;
        struct strbuf b = { 0 };
        int r;

        put_process(&b, d);
        pthread_mutex_lock(&m->lock);
        r = jobs_refresh(m, req->api);
        if (r == 0)
                put_jobs(&b, m);
        pthread_mutex_unlock(&m->lock);
        if (r < 0) {
                strbuf_reset(&b);
                return reply_store_error(req, r);
        }
        put_pools(&b, d);
        put_timings(&b, d);
        put_requests(&b, m);
        put_bodies(&b, req->api);
        put_store(&b, d);
        return reply_text(req, &b);
}
