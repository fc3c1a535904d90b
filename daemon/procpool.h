/* The CPU pool: cpu_workers worker processes, each the daemon's own binary
 * started with posix_spawn in worker mode (never a bare fork of this
 * threaded process), each running one kind-cpu job at a time over a socket
 * pair. One supervising thread per worker feeds it and enforces the job's
 * timeout and cancel: it tells the worker to stop the job, and a worker that
 * does not answer at once (a task busy computing) is killed with SIGKILL.
 * A worker that died or was killed is replaced at once. The job then fails
 * with "timeout", "cancelled" or "crashed". Workers get the exec settings
 * (tasks/exec.h) as they are when the pool starts. */
#ifndef FUTURED_PROCPOOL_H
#define FUTURED_PROCPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct sched;
struct procpool;

struct procpool_options {
        unsigned workers;
        const char *exe;        /* the futured binary to start in worker mode */
};

int procpool_start(struct sched *s, const struct procpool_options *o,
                   struct procpool **ret);
/* Kills and reaps every worker and joins; call after sched_drain(). Accepts
 * NULL. */
void procpool_stop(struct procpool *p);

struct procpool_stats {
        unsigned size;
        unsigned busy;
        uint64_t restarts;
};
void procpool_get_stats(struct procpool *p, struct procpool_stats *ret);
bool procpool_alive(struct procpool *p);
/* Fills up to n worker pids; returns how many. */
unsigned procpool_pids(struct procpool *p, pid_t *ret, unsigned n);

#endif
