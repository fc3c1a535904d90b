/* The CPU pool: cpu_workers worker processes, each the daemon's own binary
 * started with posix_spawn in worker mode (never a bare fork of this
 * threaded process), each running one kind-cpu job at a time over a socket
 * pair. One supervising thread per worker feeds it, enforces the job's
 * timeout and cancel by SIGKILL, and replaces a worker that died or was
 * killed at once; the job then fails with "timeout", "cancelled" or
 * "crashed". */
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
