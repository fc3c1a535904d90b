/* Worker mode: what a CPU worker process runs. The daemon starts its own
 * binary as `futured --worker` with the job socket on fd 3; the worker reads
 * one job at a time, runs its task, answers, and exits when the socket
 * closes. It is single-threaded and dies with its parent. */
#ifndef FUTURED_WORKER_H
#define FUTURED_WORKER_H

#include <signal.h>

#define WORKER_ARG "--worker"
#define WORKER_FD 3

/* The signals a worker leaves to the daemon (those a signal to the whole
 * process group brings): spawned with them blocked, it ignores them. */
void worker_signals(sigset_t *ret);

/* Returns the process exit code. */
int worker_main(int fd);

#endif
