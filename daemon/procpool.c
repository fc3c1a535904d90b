/* The CPU pool. A slot is one worker process and the thread that owns it:
 * the thread spawns the worker, feeds it jobs, watches each job's deadline
 * and interrupt, and kills, reaps and replaces the worker. One monitor
 * thread per pool replaces a worker that dies while its slot is idle.
 *
 * - A slot's worker (fds and pid) has one owner at a time, switched under
 *   the pool lock: its slot thread, except while that thread waits in
 *   sched_take(); then the monitor may claim it, and a slot thread back
 *   with a job waits until the monitor is done. pid, busy and spawn_failed
 *   are written under the lock too, so stats and pids read them whole.
 * - The monitor watches the pidfds in an epoll set, one-shot: a death while
 *   the slot is busy fires once and is left to the slot thread's own poll,
 *   and the slot thread re-arms the watch each time it goes idle, so a
 *   death just before that is still seen and the monitor never spins.
 * - Workers are the daemon's own binary started with posix_spawn (never a
 *   fork of this threaded process), with a clean signal mask and default
 *   dispositions, and fd 3 as their only extra descriptor.
 * - A worker is reaped with waitpid() on its own pid, never -1, so no other
 *   child of the daemon is stolen; its pidfd is held until then, so a signal
 *   never reaches a recycled pid.
 * - The slot's eventfd is cleared only between sched_finish() and the next
 *   sched_take(), when no run can be interrupted: a stale interrupt never
 *   kills the next job, and a live one is never lost.
 * - The worker's PR_SET_PDEATHSIG follows the thread that spawned it: its
 *   slot thread or the monitor, and both outlive every worker (the monitor
 *   is joined after the slot threads have reaped theirs).
 * - Every worker gets the same setup frame first (daemon/worker.c): the
 *   exec settings, taken once at start, so no worker reads the config.
 * - A job ended by its timeout or an interrupt is first stopped: the pool
 *   sends a stop frame and gives the worker STOP_GRACE to answer. A task
 *   waiting on a command ends it and answers, and the worker takes the next
 *   job; one computing never looks, and its worker is killed and replaced,
 *   as is one whose answer is not a stopped reply or a valid one. */
#include "daemon/procpool.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>

#include "daemon/frame.h"
#include "daemon/log.h"
#include "daemon/scheduler.h"
#include "daemon/worker.h"
#include "tasks/exec.h"
#include "tasks/task.h"

#define SPAWN_PAUSE_MIN 0.1     /* seconds, doubled after each failed spawn */
#define SPAWN_PAUSE_MAX 10.0
/* How long a worker that closed its socket, or was told to exit, may take
 * before SIGKILL. */
#define EXIT_WAIT 2.0
/* How long a worker told to stop its job may take to answer: killing a
 * process group and reaping it takes milliseconds. */
#define STOP_GRACE 0.5
/* How long the pool waits in the middle of a reply: the worker writes it
 * at once, so only a stalled worker leaves one half-sent. Past this the
 * worker is killed, rather than the slot thread blocked in a read. */
#define REPLY_STALL 5.0

enum slot_owner {
        OWNER_THREAD,           /* the slot thread */
        OWNER_NONE,             /* the slot thread waits in sched_take() */
        OWNER_MONITOR,
};

struct slot {
        struct procpool *pool;
        unsigned index;
        pthread_t thread;
        bool started;
        int efd;                /* interrupts: cancel, drain, stop */
        int sock;               /* the job socket; -1 without a worker */
        int pidfd;
        pid_t pid;              /* 0: no worker */
        pid_t group;            /* the running job's command group (exec); 0: none */
        enum slot_owner owner;
        bool busy;
        bool spawn_failed;
};

struct procpool {
        struct sched *sched;
        char *exe;              /* owned */
        char *setup;            /* owned: the first frame to every worker */
        pthread_mutex_t lock;
        pthread_cond_t released;        /* the monitor gave a slot back */
        uint64_t restarts;
        atomic_bool stopping;
        int epfd;               /* the monitor's: pidfds (u32 = slot index), stop_efd (u32 = n) */
        int stop_efd;
        pthread_t monitor;
        bool monitor_started;
        unsigned n;
        struct slot slots[];
};

enum run_end { RUN_REPLY, RUN_TIMEOUT, RUN_INTERRUPT, RUN_DEAD, RUN_BAD_REPLY };

/* poll() until an event or the CLOCK_MONOTONIC deadline; EINTR resumes with
 * the time left. Returns poll()'s count or -errno. */
static int poll_until(struct pollfd *fds, nfds_t n, double deadline)
{
        for (;;) {
                double left = deadline - task_monotonic();
                int ms = left <= 0 ? 0 : left >= INT_MAX / 1000 ? INT_MAX : (int)(left * 1000) + 1;
                int r = poll(fds, n, ms);

                if (r >= 0)
                        return r;
                if (errno != EINTR)
                        return -errno;
        }
}

static void describe_status(int status, char *buf, size_t len)
{
        if (WIFSIGNALED(status)) {
                const char *abbrev = sigabbrev_np(WTERMSIG(status));

                snprintf(buf, len, "worker killed by signal %d (SIG%s)", WTERMSIG(status),
                         abbrev ? abbrev : "?");
        } else {
                snprintf(buf, len, "worker exited with status %d", WEXITSTATUS(status));
        }
}

static void slot_set_worker(struct slot *sl, pid_t pid, bool spawn_failed)
{
        pthread_mutex_lock(&sl->pool->lock);
        sl->pid = pid;
        sl->spawn_failed = spawn_failed;
        pthread_mutex_unlock(&sl->pool->lock);
}

static void slot_set_busy(struct slot *sl, bool busy)
{
        pthread_mutex_lock(&sl->pool->lock);
        sl->busy = busy;
        pthread_mutex_unlock(&sl->pool->lock);
}

/* The slot thread is about to wait in sched_take(): the monitor may now
 * replace its worker. */
static void slot_release(struct slot *sl)
{
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u32 = sl->index };

        pthread_mutex_lock(&sl->pool->lock);
        sl->owner = OWNER_NONE;
        if (sl->pid != 0 && epoll_ctl(sl->pool->epfd, EPOLL_CTL_MOD, sl->pidfd, &ev) < 0)
                log_errno(LOG_WARNING, -errno, "CPU worker %u: cannot watch pid %d", sl->index,
                          (int)sl->pid);
        pthread_mutex_unlock(&sl->pool->lock);
}

/* The slot thread is back from sched_take() and owns its worker again. */
static void slot_claim(struct slot *sl, bool busy)
{
        struct procpool *p = sl->pool;

        pthread_mutex_lock(&p->lock);
        while (sl->owner == OWNER_MONITOR)
                pthread_cond_wait(&p->released, &p->lock);
        sl->owner = OWNER_THREAD;
        sl->busy = busy;
        pthread_mutex_unlock(&p->lock);
}

/* Starts exe as a worker with child_fd as its fd 3. */
static int spawn_worker(const char *exe, int child_fd, pid_t *ret)
{
        char *argv[] = { (char *)exe, (char *)WORKER_ARG, NULL };
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t mask, def;
        int r;

        worker_signals(&mask);
        /* Whatever else the daemon blocks or ignores (SIGPIPE, SIGCHLD,
         * ...) is the daemon's business, not the worker's. */
        sigfillset(&def);

        r = posix_spawn_file_actions_init(&fa);
        if (r != 0)
                return -r;
        r = posix_spawnattr_init(&attr);
        if (r != 0)
                goto out_fa;
        r = posix_spawn_file_actions_adddup2(&fa, child_fd, WORKER_FD);
        if (r == 0)
                r = posix_spawn_file_actions_addclosefrom_np(&fa, WORKER_FD + 1);
        if (r == 0)
                r = posix_spawnattr_setsigmask(&attr, &mask);
        if (r == 0)
                r = posix_spawnattr_setsigdefault(&attr, &def);
        if (r == 0)
                r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        if (r == 0)
                r = posix_spawn(ret, exe, &fa, &attr, argv, environ);
        posix_spawnattr_destroy(&attr);
out_fa:
        posix_spawn_file_actions_destroy(&fa);
        return -r;
}

static void reap(pid_t pid, int *ret_status)
{
        int status = 0;

        while (waitpid(pid, &status, 0) < 0) {
                if (errno != EINTR) {
                        /* Only when SIGCHLD is ignored, against the rule. */
                        log_errno(LOG_ERR, -errno, "waitpid(%d)", (int)pid);
                        break;
                }
        }
        if (ret_status)
                *ret_status = status;
}

/* Ends the slot's worker: closes its socket (its order to exit), gives it
 * up to wait seconds to do so, then SIGKILLs it, and reaps it. */
static int slot_reap(struct slot *sl, double wait)
{
        struct pollfd pfd = { .fd = sl->pidfd, .events = POLLIN };
        int status;

        (void)epoll_ctl(sl->pool->epfd, EPOLL_CTL_DEL, sl->pidfd, NULL);
        close(sl->sock);
        sl->sock = -1;
        if (wait <= 0 || poll_until(&pfd, 1, task_monotonic() + wait) <= 0)
                (void)pidfd_send_signal(sl->pidfd, SIGKILL, NULL, 0);
        reap(sl->pid, &status);
        close(sl->pidfd);
        sl->pidfd = -1;
        slot_set_worker(sl, 0, false);
        return status;
}

/* Gives the slot a new worker, watched by the monitor; on failure the slot
 * stays without one. */
static int slot_spawn(struct slot *sl)
{
        struct procpool *p = sl->pool;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u32 = sl->index };
        int sv[2], pidfd, r;
        pid_t pid;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
                r = -errno;
                goto fail;
        }
        r = frame_set_read_timeout(sv[0], REPLY_STALL);
        if (r < 0) {
                close(sv[0]);
                close(sv[1]);
                goto fail;
        }
        r = spawn_worker(p->exe, sv[1], &pid);
        close(sv[1]);
        if (r < 0) {
                close(sv[0]);
                goto fail;
        }
        pidfd = pidfd_open(pid, 0);
        if (pidfd < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, pidfd, &ev) < 0) {
                r = -errno;
                kill(pid, SIGKILL);
                reap(pid, NULL);
                if (pidfd >= 0)
                        close(pidfd);
                close(sv[0]);
                goto fail;
        }
        sl->sock = sv[0];
        sl->pidfd = pidfd;
        slot_set_worker(sl, pid, false);
        /* The worker reads it first, so this blocks no longer than its
         * start-up; a worker that dies first fails it. */
        r = frame_write(sl->sock, p->setup, strlen(p->setup));
        if (r < 0) {
                (void)slot_reap(sl, 0);
                goto fail;
        }
        log_debug("CPU worker %u started as pid %d", sl->index, (int)pid);
        return 0;
fail:
        slot_set_worker(sl, 0, true);
        return log_errno(LOG_ERR, r, "cannot start CPU worker %u (%s %s)", sl->index, p->exe, WORKER_ARG);
}

static bool slot_worker_exited(struct slot *sl)
{
        struct pollfd pfd = { .fd = sl->pidfd, .events = POLLIN };

        return poll(&pfd, 1, 0) > 0;
}

/* Reaps the slot's worker and tries once to start its replacement. */
static int slot_replace(struct slot *sl, double wait)
{
        int status = slot_reap(sl, wait);

        pthread_mutex_lock(&sl->pool->lock);
        sl->pool->restarts++;
        pthread_mutex_unlock(&sl->pool->lock);
        (void)slot_spawn(sl);
        return status;
}

/* For a worker whose slot was idle: no job of it fails. */
static void slot_replace_dead(struct slot *sl)
{
        char what[128];

        describe_status(slot_replace(sl, 0), what, sizeof(what));
        log_warning("CPU worker %u died while idle (%s); replaced", sl->index, what);
}

/* Gives the slot a live worker before it takes a job, pausing between failed
 * spawns; -ECANCELED when the pool stops meanwhile. */
static int slot_ready(struct slot *sl)
{
        double pause = SPAWN_PAUSE_MIN;

        while (sl->pid == 0 && slot_spawn(sl) < 0) {
                struct pollfd pfd = { .fd = sl->efd, .events = POLLIN };

                (void)poll_until(&pfd, 1, task_monotonic() + pause);
                if (atomic_load(&sl->pool->stopping))
                        return -ECANCELED;
                pause = pause * 2 < SPAWN_PAUSE_MAX ? pause * 2 : SPAWN_PAUSE_MAX;
        }
        return 0;
}

/* The job message for daemon/worker.c; *ret malloc'd, the caller's. */
static int job_encode(const struct job *j, char **ret, size_t *ret_len)
{
        json_t *args, *msg;
        char *text;
        size_t len;

        args = json_loads(j->args ? j->args : "{}", 0, NULL);
        if (!args)
                return -EINVAL;
        msg = json_pack("{s:s, s:o, s:f}", "task", j->task, "args", args, "timeout", j->timeout);
        if (!msg)
                return -ENOMEM;
        text = json_dumps(msg, JSON_COMPACT);
        json_decref(msg);
        if (!text)
                return -ENOMEM;
        len = strlen(text);
        if (len > FRAME_MAX) {
                free(text);
                return -EMSGSIZE;
        }
        *ret = text;
        *ret_len = len;
        return 0;
}

/* Fills out from the worker's reply, and *ret_stopped with whether it
 * answers a stop; -EBADMSG when it is malformed. */
static int reply_parse(const char *msg, size_t len, struct sched_outcome *out, bool *ret_stopped)
{
        /* A result may hold \u0000, from a command's output. */
        json_t *reply = json_loadb(msg, len, JSON_ALLOW_NUL, NULL);
        json_t *result = json_object_get(reply, "result");
        json_t *error = json_object_get(reply, "error");
        json_t *retryable = json_object_get(reply, "retryable");
        int r = 0;

        *ret_stopped = json_is_true(json_object_get(reply, "stopped"));
        if (result) {
                out->result = json_incref(result);
        } else if (json_is_object(error) && json_is_string(json_object_get(error, "type")) &&
                   json_is_string(json_object_get(error, "message")) && json_is_boolean(retryable)) {
                out->error = json_incref(error);
                out->retryable = json_is_true(retryable);
        } else {
                r = -EBADMSG;
        }
        json_decref(reply);
        return r;
}

/* The next frame of the job's run, readable now: RUN_REPLY with *ret_msg
 * set, or RUN_BAD_REPLY, RUN_DEAD. A notice of the command's process group
 * ({"group":N}, 0 once it is gone: daemon/worker.c) is taken in passing
 * and read past. */
static enum run_end slot_read(struct slot *sl, char **ret_msg, size_t *ret_len, bool *ret_notice)
{
        json_t *notice;
        int r = frame_read(sl->sock, ret_msg, ret_len);

        /* too big, or left half-sent past REPLY_STALL */
        if (r == -EMSGSIZE || r == -EAGAIN)
                return RUN_BAD_REPLY;
        if (r < 0)
                return RUN_DEAD;
        *ret_notice = *ret_len < 64 && strncmp(*ret_msg, "{\"group\":", 9) == 0;
        if (!*ret_notice)
                return RUN_REPLY;
        notice = json_loadb(*ret_msg, *ret_len, 0, NULL);
        free(*ret_msg);
        *ret_msg = NULL;
        sl->group = (pid_t)json_integer_value(json_object_get(notice, "group"));
        json_decref(notice);
        return sl->group >= 0 ? RUN_REPLY : RUN_BAD_REPLY;
}

/* Waits for the reply to the job just sent; *ret_msg set on RUN_REPLY. */
static enum run_end slot_wait(struct slot *sl, double deadline, char **ret_msg, size_t *ret_len)
{
        struct pollfd fds[] = {
                { .fd = sl->sock, .events = POLLIN },
                { .fd = sl->efd, .events = POLLIN },
                { .fd = sl->pidfd, .events = POLLIN },
        };
        enum run_end end;
        bool notice;
        int r;

        for (;;) {
                r = poll_until(fds, 3, deadline);
                if (r < 0) {
                        log_errno(LOG_ERR, r, "CPU worker %u: poll", sl->index);
                        return RUN_DEAD;
                }
                if (r == 0)
                        return RUN_TIMEOUT;
                /* A reply that raced with an interrupt is still taken: the
                 * scheduler knows why it interrupted, and the worker need
                 * not die. */
                if (!fds[0].revents)
                        return fds[1].revents ? RUN_INTERRUPT : RUN_DEAD;
                end = slot_read(sl, ret_msg, ret_len, &notice);
                if (end != RUN_REPLY || !notice)
                        return end;
        }
}

/* Asks the worker to stop the job it runs and waits STOP_GRACE for its
 * reply: RUN_REPLY with *ret_msg set, or RUN_DEAD when the worker must go. */
static enum run_end slot_stop(struct slot *sl, char **ret_msg, size_t *ret_len)
{
        static const char stop[] = "{\"stop\":true}";
        struct pollfd fds[] = {
                { .fd = sl->sock, .events = POLLIN },
                { .fd = sl->pidfd, .events = POLLIN },
        };
        double deadline = task_monotonic() + STOP_GRACE;
        enum run_end end;
        bool notice;

        /* A worker that cannot be told is gone or stuck; what it queued
         * (a group notice) is still read. */
        if (frame_try_write(sl->sock, stop, sizeof(stop) - 1) < 0)
                deadline = task_monotonic();
        do {
                if (poll_until(fds, 2, deadline) <= 0 || !fds[0].revents)
                        return RUN_DEAD;
                end = slot_read(sl, ret_msg, ret_len, &notice);
        } while (end == RUN_REPLY && notice);
        return end == RUN_REPLY ? RUN_REPLY : RUN_DEAD;
}

/* A worker that goes mid-run (killed, crashed) leaves its command's
 * children behind: the command itself dies with its worker, the rest of
 * its group does not. The worker names the group only while it holds the
 * leader unreaped, and a dead worker's queued frames are read before it
 * is: while the group is named, its id names no other group. */
static void slot_kill_group(struct slot *sl)
{
        if (sl->group > 0)
                (void)kill(-sl->group, SIGKILL);
        sl->group = 0;
}

/* The error of a job the pool ended: its deadline or an interrupt. */
static void outcome_ended(enum run_end end, const struct job *j, struct sched_outcome *out)
{
        if (end == RUN_TIMEOUT) {
                out->error = sched_error_new("timeout", "timed out after %g s", j->timeout);
                out->retryable = true;
        } else {
                out->error = sched_error_new("cancelled", "stopped while running");
        }
}

/* Takes the worker's reply into out: 0, or -EBADMSG. A reply to a stop
 * leaves the job ended by end, with the worker kept. */
static int slot_take_reply(struct slot *sl, const struct job *j, enum run_end end, char *reply,
                           size_t len, struct sched_outcome *out)
{
        bool stopped;
        int r = reply_parse(reply, len, out, &stopped);

        free(reply);
        if (r < 0 || !stopped || end == RUN_REPLY)
                return r;
        json_decref(out->result);
        json_decref(out->error);
        *out = (struct sched_outcome){ 0 };
        outcome_ended(end, j, out);
        log_info("job %" PRId64 ": %s; its command was stopped, CPU worker %u kept", j->id,
                 end == RUN_TIMEOUT ? "timed out" : "interrupted", sl->index);
        return 0;
}

/* Runs one job on the slot's worker. A job past its deadline or
 * interrupted is stopped (slot_stop()); whatever else ends it without a
 * reply kills the worker and replaces it at once. */
static void slot_run(struct slot *sl, const struct job *j, struct sched_outcome *out)
{
        /* The pool's clock is the one that counts: a task busy computing is
         * never asked to watch one. */
        double deadline = task_monotonic() + j->timeout;
        enum run_end end = RUN_DEAD, stop = RUN_DEAD;
        char *msg, *reply = NULL, what[128];
        size_t len;
        int r;

        r = job_encode(j, &msg, &len);
        if (r < 0) {
                out->error = sched_error_new("task_error", "cannot hand the job to a worker: %s",
                                             strerror(-r));
                return;
        }
        /* A death the monitor had not yet handled when the job came, or a
         * replacement it could not start. */
        if (sl->pid != 0 && slot_worker_exited(sl))
                slot_replace_dead(sl);
        else if (sl->pid == 0)
                (void)slot_spawn(sl);
        if (sl->pid == 0) {
                free(msg);
                out->error = sched_error_new("crashed", "no CPU worker could be started");
                out->retryable = true;
                return;
        }

        sl->group = 0;
        r = frame_write(sl->sock, msg, len);
        free(msg);
        if (r == 0)
                end = slot_wait(sl, deadline, &reply, &len);
        if (end == RUN_TIMEOUT || end == RUN_INTERRUPT)
                stop = slot_stop(sl, &reply, &len);
        if (end == RUN_REPLY || stop == RUN_REPLY) {
                if (slot_take_reply(sl, j, end, reply, len, out) == 0) {
                        sl->group = 0;
                        return;
                }
                end = RUN_BAD_REPLY;
        }

        slot_kill_group(sl);
        describe_status(slot_replace(sl, end == RUN_DEAD ? EXIT_WAIT : 0), what, sizeof(what));
        switch (end) {
        case RUN_TIMEOUT:
        case RUN_INTERRUPT:
                log_info("job %" PRId64 ": %s; CPU worker %u did not stop it and was killed", j->id,
                         end == RUN_TIMEOUT ? "timed out" : "interrupted", sl->index);
                outcome_ended(end, j, out);
                break;
        case RUN_BAD_REPLY:
                log_error("job %" PRId64 ": CPU worker %u sent a malformed reply; killed", j->id, sl->index);
                out->error = sched_error_new("crashed", "worker sent a malformed reply");
                out->retryable = true;
                break;
        default:
                log_warning("job %" PRId64 ": CPU worker %u: %s", j->id, sl->index, what);
                out->error = sched_error_new("crashed", "%s", what);
                out->retryable = true;
                break;
        }
}

/* Called by the scheduler under its lock: must not block, and does not (the
 * eventfd is non-blocking and never near overflow). */
static void slot_interrupt(void *arg)
{
        struct slot *sl = arg;

        (void)eventfd_write(sl->efd, 1);
}

static void *slot_main(void *arg)
{
        struct slot *sl = arg;
        struct procpool *p = sl->pool;

        /* procpool_start() holds the lock until every thread exists, so a
         * failed start can stop them before any takes a job. */
        pthread_mutex_lock(&p->lock);
        pthread_mutex_unlock(&p->lock);

        for (;;) {
                struct sched_outcome out = { 0 };
                struct sched_job *sj;
                eventfd_t stale;

                /* No run is active: anything here is an interrupt that raced
                 * with the last reply. A stop is seen through the flag. */
                (void)eventfd_read(sl->efd, &stale);
                if (atomic_load(&p->stopping) || slot_ready(sl) < 0)
                        break;
                slot_release(sl);
                sj = sched_take(p->sched, JOB_KIND_CPU, slot_interrupt, sl);
                slot_claim(sl, sj != NULL);
                if (!sj)
                        break;
                slot_run(sl, sched_job_job(sj), &out);
                slot_set_busy(sl, false);
                sched_finish(p->sched, sj, &out);
        }
        if (sl->pid != 0)
                (void)slot_reap(sl, EXIT_WAIT);
        return NULL;
}

/* A watched worker exited, or an event outlived the pidfd it came from:
 * replaces the worker if its slot is idle. */
static void monitor_check(struct slot *sl)
{
        struct procpool *p = sl->pool;
        bool take;

        pthread_mutex_lock(&p->lock);
        take = sl->owner == OWNER_NONE && !atomic_load(&p->stopping);
        if (take)
                sl->owner = OWNER_MONITOR;
        pthread_mutex_unlock(&p->lock);
        if (!take)
                return;

        if (sl->pid != 0 && slot_worker_exited(sl))
                slot_replace_dead(sl);

        pthread_mutex_lock(&p->lock);
        sl->owner = OWNER_NONE;
        pthread_cond_broadcast(&p->released);
        pthread_mutex_unlock(&p->lock);
}

static void *monitor_main(void *arg)
{
        struct procpool *p = arg;

        for (;;) {
                struct epoll_event ev[16];
                int k = epoll_wait(p->epfd, ev, sizeof(ev) / sizeof(ev[0]), -1);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        log_errno(LOG_ERR, -errno, "CPU pool monitor: epoll_wait");
                        return NULL;
                }
                for (int i = 0; i < k; i++) {
                        if (ev[i].data.u32 == p->n)
                                return NULL;
                        monitor_check(&p->slots[ev[i].data.u32]);
                }
        }
}

/* The setup frame (daemon/worker.c); *ret malloc'd, the caller's. */
static int setup_encode(char **ret)
{
        json_t *msg = json_pack("{s:{s:o}}", "setup", "exec", exec_settings_dump());
        char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;

        json_decref(msg);
        if (!text)
                return -ENOMEM;
        if (strlen(text) > FRAME_MAX) {
                free(text);
                return -EMSGSIZE;
        }
        *ret = text;
        return 0;
}

/* The monitor's epoll set with its stop eventfd in it. */
static int monitor_setup(struct procpool *p)
{
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = p->n };

        p->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (p->epfd < 0)
                return -errno;
        p->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->stop_efd < 0)
                return -errno;
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->stop_efd, &ev) < 0)
                return -errno;
        return 0;
}

int procpool_start(struct sched *s, const struct procpool_options *o, struct procpool **ret)
{
        struct procpool *p;
        int r = 0;

        if (!s || !o || o->workers == 0 || !o->exe)
                return -EINVAL;
        /* Fail at start, not in a respawn loop, on a wrong path. */
        if (access(o->exe, X_OK) < 0)
                return -errno;

        p = calloc(1, sizeof(*p) + o->workers * sizeof(p->slots[0]));
        if (!p)
                return -ENOMEM;
        p->sched = s;
        p->n = o->workers;
        p->epfd = p->stop_efd = -1;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->released, NULL);
        atomic_init(&p->stopping, false);
        for (unsigned i = 0; i < p->n; i++) {
                struct slot *sl = &p->slots[i];

                sl->pool = p;
                sl->index = i;
                sl->sock = sl->pidfd = -1;
                sl->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (sl->efd < 0 && r == 0)
                        r = -errno;
        }
        p->exe = strdup(o->exe);
        if (!p->exe && r == 0)
                r = -ENOMEM;
        if (r == 0)
                r = setup_encode(&p->setup);
        if (r == 0)
                r = monitor_setup(p);

        pthread_mutex_lock(&p->lock);
        if (r == 0) {
                r = -pthread_create(&p->monitor, NULL, monitor_main, p);
                p->monitor_started = r == 0;
        }
        for (unsigned i = 0; i < p->n && r == 0; i++) {
                r = -pthread_create(&p->slots[i].thread, NULL, slot_main, &p->slots[i]);
                p->slots[i].started = r == 0;
        }
        if (r < 0)
                atomic_store(&p->stopping, true);
        pthread_mutex_unlock(&p->lock);

        if (r < 0) {
                procpool_stop(p);
                return r;
        }
        *ret = p;
        return 0;
}

void procpool_stop(struct procpool *p)
{
        if (!p)
                return;
        atomic_store(&p->stopping, true);
        /* Wakes a slot pausing between failed spawns. */
        for (unsigned i = 0; i < p->n; i++)
                if (p->slots[i].efd >= 0)
                        (void)eventfd_write(p->slots[i].efd, 1);
        for (unsigned i = 0; i < p->n; i++) {
                if (p->slots[i].started)
                        pthread_join(p->slots[i].thread, NULL);
                if (p->slots[i].efd >= 0)
                        close(p->slots[i].efd);
        }
        /* Last: it may have spawned workers, whose death signal follows it. */
        if (p->monitor_started) {
                (void)eventfd_write(p->stop_efd, 1);
                pthread_join(p->monitor, NULL);
        }
        if (p->stop_efd >= 0)
                close(p->stop_efd);
        if (p->epfd >= 0)
                close(p->epfd);
        pthread_cond_destroy(&p->released);
        pthread_mutex_destroy(&p->lock);
        free(p->exe);
        free(p->setup);
        free(p);
}

void procpool_get_stats(struct procpool *p, struct procpool_stats *ret)
{
        struct procpool_stats st = { .size = p->n };

        pthread_mutex_lock(&p->lock);
        for (unsigned i = 0; i < p->n; i++)
                st.busy += p->slots[i].busy;
        st.restarts = p->restarts;
        pthread_mutex_unlock(&p->lock);
        *ret = st;
}

bool procpool_alive(struct procpool *p)
{
        bool alive = !atomic_load(&p->stopping);

        pthread_mutex_lock(&p->lock);
        for (unsigned i = 0; i < p->n; i++)
                if (p->slots[i].spawn_failed)
                        alive = false;
        pthread_mutex_unlock(&p->lock);
        return alive;
}

unsigned procpool_pids(struct procpool *p, pid_t *ret, unsigned n)
{
        unsigned k = 0;

        pthread_mutex_lock(&p->lock);
        for (unsigned i = 0; i < p->n && k < n; i++)
                if (p->slots[i].pid != 0)
                        ret[k++] = p->slots[i].pid;
        pthread_mutex_unlock(&p->lock);
        return k;
}
