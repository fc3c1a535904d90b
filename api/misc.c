/* The small read-only endpoints: /v1/tasks, /v1/stats, /healthz. They are
 * built with jansson; none is on a hot path. */
#include <stdlib.h>
#include <sys/types.h>

#include "api/api.h"
#include "api/reply.h"
#include "api/request.h"
#include "api/routes.h"
#include "daemon/iopool.h"
#include "daemon/procpool.h"
#include "daemon/scheduler.h"
#include "storage/store.h"
#include "storage/writer.h"
#include "tasks/task.h"

/* Appends v (reference taken) to array; false when either failed. */
static bool push(json_t *array, json_t *v)
{
        return v && json_array_append_new(array, v) == 0;
}

static json_t *task_describe(const struct task *t)
{
        json_t *kinds = json_array(), *params = t->params ? json_array() : json_null();
        bool ok = kinds && params;

        for (int k = 0; ok && k < JOB_KIND__COUNT; k++)
                if (task_can_run(t, (enum job_kind) k))
                        ok = push(kinds, json_string(job_kind_name((enum job_kind) k)));
        for (const char *const *p = t->params; ok && p && *p; p++)
                ok = push(params, json_string(*p));
        if (!ok) {
                json_decref(kinds);
                json_decref(params);
                return NULL;
        }
        return json_pack("{s:s, s:o, s:s, s:o, s:s}", "name", t->name, "kinds", kinds,
                         "default_kind", job_kind_name(t->default_kind), "params", params,
                         "description", t->description ? t->description : "");
}

enum MHD_Result misc_tasks(struct request *req)
{
        json_t *list = json_array();

        for (const struct task *const *t = task_all(); list && *t; t++)
                if (!push(list, task_describe(*t))) {
                        json_decref(list);
                        list = NULL;
                }
        return reply_value(req, MHD_HTTP_OK, list);
}

static json_t *cpu_pids(struct procpool *p, unsigned size)
{
        pid_t *pids = calloc(size ? size : 1, sizeof(*pids));
        json_t *list = json_array();
        unsigned n;

        if (!pids || !list) {
                free(pids);
                json_decref(list);
                return NULL;
        }
        n = procpool_pids(p, pids, size);
        for (unsigned i = 0; list && i < n; i++)
                if (!push(list, json_integer(pids[i]))) {
                        json_decref(list);
                        list = NULL;
                }
        free(pids);
        return list;
}

static json_t *job_counts(const int64_t counts[JOB_STATE__COUNT])
{
        json_t *o = json_object();

        for (int s = 0; o && s < JOB_STATE__COUNT; s++)
                if (json_object_set_new(o, job_state_name((enum job_state) s),
                                        json_integer(counts[s])) < 0) {
                        json_decref(o);
                        o = NULL;
                }
        return o;
}

enum MHD_Result misc_stats(struct request *req)
{
        const struct api_deps *d = &req->api->d;
        int64_t counts[JOB_STATE__COUNT];
        struct procpool_stats cpu;
        struct store_reader *reader;
        struct iopool_stats io;
        struct writer_stats ws;
        struct sched_stats ss;
        json_t *pids, *jobs;
        int r;

        r = api_reader(req->api, &reader);
        if (r == 0)
                r = store_count_states(reader, counts);
        if (r < 0)
                return reply_store_error(req, r);
        iopool_get_stats(d->iopool, &io);
        procpool_get_stats(d->procpool, &cpu);
        sched_get_stats(d->sched, &ss);
        writer_get_stats(d->writer, &ws);
        pids = cpu_pids(d->procpool, cpu.size);
        jobs = job_counts(counts);
        if (!pids || !jobs) {
                json_decref(pids);
                json_decref(jobs);
                return reply_value(req, MHD_HTTP_OK, NULL);
        }
        return reply_value(req, MHD_HTTP_OK, json_pack(
                "{s:f,"
                " s:{s:{s:I, s:I}, s:{s:I, s:I, s:I, s:o}},"
                " s:{s:I, s:I, s:I},"
                " s:{s:I, s:I},"
                " s:o,"
                " s:{s:I, s:I, s:I, s:b}}",
                "uptime_seconds", task_monotonic() - d->started_at,
                "pools",
                "io", "size", (json_int_t) io.size, "busy", (json_int_t) io.busy,
                "cpu", "size", (json_int_t) cpu.size, "busy", (json_int_t) cpu.busy,
                "restarts", (json_int_t) cpu.restarts, "pids", pids,
                "queue",
                "io", (json_int_t) ss.pending[JOB_KIND_IO],
                "cpu", (json_int_t) ss.pending[JOB_KIND_CPU],
                "delayed", (json_int_t) ss.delayed,
                "running",
                "io", (json_int_t) ss.running[JOB_KIND_IO],
                "cpu", (json_int_t) ss.running[JOB_KIND_CPU],
                "jobs", jobs,
                "store",
                "commits", (json_int_t) ws.commits, "ops", (json_int_t) ws.ops,
                "failures", (json_int_t) ws.failures,
                "healthy", (int) writer_healthy(d->writer)));
}

enum MHD_Result misc_healthz(struct request *req)
{
        const struct api_deps *d = &req->api->d;
        bool store = writer_healthy(d->writer);
        bool io = iopool_alive(d->iopool);
        bool cpu = procpool_alive(d->procpool);

        if (store && io && cpu)
                return reply_value(req, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
        return reply_value(req, MHD_HTTP_SERVICE_UNAVAILABLE,
                           json_pack("{s:s, s:b, s:b, s:b}", "status", "unhealthy", "store",
                                     (int) store, "io_pool", (int) io, "cpu_pool", (int) cpu));
}
