/* A CPU worker process: `futured --worker`, started by procpool.c with the
 * job socket on fd 3 and default signal dispositions and mask.
 *
 * Protocol, one frame each way per job (daemon/frame.h):
 *   job:   {"task": name, "args": {...}}
 *   reply: {"result": any}
 *       or {"error": {"type", "message", ...detail}, "retryable": bool}
 * End of file on the socket is the order to exit 0. Anything else that goes
 * wrong with the protocol exits non-zero, which the pool reports as a crash:
 * a worker in doubt must not keep running jobs. The job's timeout and its
 * cancellation are the pool's: it kills this process. */
#include "daemon/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <jansson.h>

#include "daemon/frame.h"
#include "daemon/log.h"
#include "tasks/task.h"

/* Returns the reply for a run that failed; err->detail is consumed. */
static json_t *reply_error(struct task_error *err)
{
        json_t *error = json_object();

        if (!error) {
                json_decref(err->detail);
                return NULL;
        }
        /* Detail adds fields; it never replaces type and message. */
        if (err->detail && json_is_object(err->detail))
                json_object_update(error, err->detail);
        json_decref(err->detail);
        err->detail = NULL;
        if (json_object_set_new(error, "type", json_string(err->type ? err->type : "task_error")) < 0 ||
            json_object_set_new(error, "message", json_string(err->message)) < 0) {
                json_decref(error);
                return NULL;
        }
        return json_pack("{s:o, s:b}", "error", error, "retryable", err->retryable);
}

/* Runs one job message and returns its reply (the caller's), or NULL when
 * the message is malformed or memory ran out. */
static json_t *worker_run(const char *msg, size_t len)
{
        struct task_error err = { .type = "task_error" };
        struct task_ctx *ctx = NULL;
        json_t *job, *args, *result = NULL, *reply = NULL;
        const char *name;
        const struct task *t;
        json_error_t jerr;
        int r;

        job = json_loadb(msg, len, 0, &jerr);
        if (!job) {
                log_error("worker: unreadable job: %s", jerr.text);
                return NULL;
        }
        if (json_unpack_ex(job, &jerr, JSON_STRICT, "{s:s, s:o}", "task", &name, "args", &args) < 0) {
                log_error("worker: malformed job: %s", jerr.text);
                goto finish;
        }
        if (!json_is_object(args)) {
                log_error("worker: malformed job: args is not an object");
                goto finish;
        }

        t = task_find(name);
        if (!t) {
                task_fail(&err, "task_error", false, "unknown task \"%s\"", name);
                reply = reply_error(&err);
                goto finish;
        }
        r = task_ctx_new(0, &ctx);
        if (r < 0) {
                log_errno(LOG_ERR, r, "worker: cannot make a task context");
                goto finish;
        }
        r = t->run(ctx, args, &result, &err);
        if (r < 0)
                reply = reply_error(&err);
        else
                reply = json_pack("{s:o}", "result", result ? result : json_null());
finish:
        task_ctx_free(ctx);
        json_decref(job);
        return reply;
}

/* Returns the encoded reply (malloc'd, the caller's) or NULL on ENOMEM. A
 * result too large for a frame becomes an error the daemon can store. */
static char *reply_encode(json_t *reply)
{
        struct task_error err = { 0 };
        char *text = json_dumps(reply, JSON_COMPACT);
        size_t len;

        if (!text)
                return NULL;
        len = strlen(text);
        if (len <= FRAME_MAX)
                return text;
        free(text);

        task_fail(&err, "task_error", false, "the result of %zu bytes exceeds the %u-byte limit", len,
                  FRAME_MAX);
        reply = reply_error(&err);
        text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
        json_decref(reply);
        return text;
}

int worker_main(int fd)
{
        /* The death signal follows the spawning thread, which outlives this
         * worker. A daemon that died before prctl() closed its end of the
         * socket, so the first frame_read() sees end of file and we exit;
         * the parent's pid tells nothing (the daemon may be pid 1). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
                log_errno(LOG_ERR, -errno, "worker: prctl(PR_SET_PDEATHSIG)");
                return EXIT_FAILURE;
        }
        /* Commands a task runs must not hold the job socket open. */
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
                log_errno(LOG_ERR, -errno, "worker: fcntl(FD_CLOEXEC) on fd %d", fd);
                return EXIT_FAILURE;
        }

        for (;;) {
                char *msg, *text;
                size_t len;
                json_t *reply;
                int r;

                r = frame_read(fd, &msg, &len);
                if (r == -EPIPE)
                        return EXIT_SUCCESS;
                if (r < 0) {
                        log_errno(LOG_ERR, r, "worker: reading a job");
                        return EXIT_FAILURE;
                }
                reply = worker_run(msg, len);
                free(msg);
                if (!reply)
                        return EXIT_FAILURE;
                text = reply_encode(reply);
                json_decref(reply);
                if (!text) {
                        log_error("worker: out of memory encoding a reply");
                        return EXIT_FAILURE;
                }
                r = frame_write(fd, text, strlen(text));
                free(text);
                if (r == -EPIPE)
                        return EXIT_SUCCESS;
                if (r < 0) {
                        log_errno(LOG_ERR, r, "worker: writing a reply");
                        return EXIT_FAILURE;
                }
        }
}
