/* A CPU worker process: `futured --worker`, started by procpool.c with the
 * job socket on fd 3 and default signal dispositions and mask.
 *
 * Protocol (daemon/frame.h frames), daemon to worker:
 *   setup: {"setup": {"exec": settings}}       once, first: what the config
 *          says about commands (tasks/exec.h), so a worker never reads it
 *   job:   {"task": name, "args": {...}, "timeout": seconds}
 *   stop:  {"stop": true}                      at most once per job, after it
 * worker to daemon, one per job:
 *   reply: {"result": any}
 *       or {"error": {"type", "message", ...detail}, "retryable": bool}
 *       plus "stopped": true when a stop came before the reply was sent.
 * A task that waits on something (exec, in poll) sees a stop as the socket
 * turning readable and ends at once; one that computes never looks, and the
 * daemon kills this process when no reply comes soon after its stop. A stop
 * that arrives after the reply is read and ignored before the next job. The
 * job's timeout is enforced here too, through the task's deadline, but the
 * daemon's clock is the one that counts.
 *
 * End of file on the socket is the order to exit 0. Anything else that goes
 * wrong with the protocol exits non-zero, which the pool reports as a crash:
 * a worker in doubt must not keep running jobs. */
#include "daemon/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <jansson.h>

#include "daemon/frame.h"
#include "daemon/log.h"
#include "tasks/exec.h"
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

/* Runs one job and returns its reply (the caller's), or NULL when the job
 * is malformed or memory ran out. */
static json_t *worker_run(json_t *job)
{
        struct task_error err = { .type = "task_error" };
        struct task_ctx *ctx = NULL;
        json_t *args, *result = NULL, *reply = NULL;
        const char *name;
        const struct task *t;
        json_error_t jerr;
        double timeout;
        int r;

        if (json_unpack_ex(job, &jerr, JSON_STRICT, "{s:s, s:o, s:F}", "task", &name, "args", &args,
                           "timeout", &timeout) < 0) {
                log_error("worker: malformed job: %s", jerr.text);
                return NULL;
        }
        if (!json_is_object(args)) {
                log_error("worker: malformed job: args is not an object");
                return NULL;
        }

        t = task_find(name);
        if (!t) {
                task_fail(&err, "task_error", false, "unknown task \"%s\"", name);
                return reply_error(&err);
        }
        r = task_ctx_new(timeout > 0 ? task_monotonic() + timeout : 0, &ctx);
        if (r < 0) {
                log_errno(LOG_ERR, r, "worker: cannot make a task context");
                return NULL;
        }
        r = t->run(ctx, args, &result, &err);
        if (r < 0)
                reply = reply_error(&err);
        else
                reply = json_pack("{s:o}", "result", result ? result : json_null());
        task_ctx_free(ctx);
        if (!reply)
                log_error("worker: out of memory building a reply");
        return reply;
}

/* Whether the daemon said something (a stop) or hung up while the job ran. */
static bool stop_pending(int fd)
{
        struct pollfd pfd = { .fd = fd, .events = POLLIN };

        return poll(&pfd, 1, 0) > 0;
}

/* The job socket, for group_named(): the worker is single-threaded. */
static int job_fd = -1;

/* An exec command's process group (0: gone), named to the daemon, which
 * kills what is left of it should this worker die mid-run. A failed write
 * shows again at the reply's. */
static void group_named(pid_t pgid)
{
        char text[32];
        int n = snprintf(text, sizeof(text), "{\"group\":%d}", (int)pgid);

        (void)frame_write(job_fd, text, (size_t)n);
}

/* Takes the setup frame that precedes every job. */
static int worker_setup(int fd)
{
        json_t *msg = NULL, *exec;
        char *text, err[256];
        size_t len;
        int r;

        r = frame_read(fd, &text, &len);
        if (r < 0)
                return r == -EPIPE ? r : log_errno(LOG_ERR, r, "worker: reading the setup");
        msg = json_loadb(text, len, 0, NULL);
        free(text);
        if (json_unpack(msg, "{s:{s:o}}", "setup", "exec", &exec) < 0) {
                json_decref(msg);
                log_error("worker: malformed setup");
                return -EBADMSG;
        }
        job_fd = fd;
        r = exec_worker_init(exec, fd, group_named, err, sizeof(err));
        json_decref(msg);
        if (r < 0)
                log_error("worker: exec settings: %s", err);
        return r;
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

void worker_signals(sigset_t *ret)
{
        sigemptyset(ret);
        sigaddset(ret, SIGINT);
        sigaddset(ret, SIGTERM);
        sigaddset(ret, SIGHUP);
        sigaddset(ret, SIGQUIT);
}

int worker_main(int fd)
{
        sigset_t group;
        int r;

        /* The death signal follows the spawning thread, which outlives this
         * worker. A daemon that died before prctl() closed its end of the
         * socket, so the first frame_read() sees end of file and we exit;
         * the parent's pid tells nothing (the daemon may be pid 1). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
                log_errno(LOG_ERR, -errno, "worker: prctl(PR_SET_PDEATHSIG)");
                return EXIT_FAILURE;
        }
        /* A signal to the daemon's whole process group (a terminal's
         * Ctrl-C or hangup, kill -- -PGID, timeout(1), systemctl kill)
         * reaches the workers too. The daemon answers it with a clean stop
         * that requeues running jobs, or a reload, which a worker dying
         * first would turn into crashed jobs: the daemon ends its workers
         * itself. The pool spawns workers with these blocked, so one that
         * came before this point is pending, and ignoring it discards it.
         * Commands get every signal back to its default. */
        worker_signals(&group);
        for (int sig = 1; sig < NSIG; sig++)
                if (sigismember(&group, sig) == 1)
                        signal(sig, SIG_IGN);
        sigprocmask(SIG_UNBLOCK, &group, NULL);
        /* Started as /proc/self/exe, the worker would show in ps and top
         * as "exe". */
        prctl(PR_SET_NAME, "futured-worker");
        /* A command that stops reading its stdin must fail a write with
         * EPIPE, not kill the worker. */
        signal(SIGPIPE, SIG_IGN);
        /* Commands a task runs must not hold the job socket open. */
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
                log_errno(LOG_ERR, -errno, "worker: fcntl(FD_CLOEXEC) on fd %d", fd);
                return EXIT_FAILURE;
        }

        r = worker_setup(fd);
        if (r < 0)
                return r == -EPIPE ? EXIT_SUCCESS : EXIT_FAILURE;

        for (;;) {
                json_t *msg, *reply;
                char *text;
                size_t len;

                r = frame_read(fd, &text, &len);
                if (r == -EPIPE)
                        break;
                if (r < 0) {
                        log_errno(LOG_ERR, r, "worker: reading a job");
                        return EXIT_FAILURE;
                }
                msg = json_loadb(text, len, 0, NULL);
                free(text);
                if (!msg) {
                        log_error("worker: unreadable message");
                        return EXIT_FAILURE;
                }
                /* A stop that crossed the reply to its job. */
                if (json_is_true(json_object_get(msg, "stop"))) {
                        json_decref(msg);
                        continue;
                }
                reply = worker_run(msg);
                json_decref(msg);
                if (reply && stop_pending(fd) && json_object_set_new(reply, "stopped", json_true()) < 0) {
                        json_decref(reply);
                        reply = NULL;
                }
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
                        break;
                if (r < 0) {
                        log_errno(LOG_ERR, r, "worker: writing a reply");
                        return EXIT_FAILURE;
                }
        }
        exec_cleanup();
        return EXIT_SUCCESS;
}
