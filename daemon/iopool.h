/* The I/O pool: io_threads threads, each taking kind-io jobs from the
 * scheduler and running their task in-process. Cancel and timeout reach the
 * task through its task_ctx. */
#ifndef FUTURED_IOPOOL_H
#define FUTURED_IOPOOL_H

#include <stdbool.h>

struct sched;
struct iopool;

int iopool_start(struct sched *s, unsigned threads, struct iopool **ret);
/* Joins the threads; call after sched_drain(). Accepts NULL. */
void iopool_stop(struct iopool *p);

struct iopool_stats {
        unsigned size;
        unsigned busy;
};
void iopool_get_stats(struct iopool *p, struct iopool_stats *ret);
bool iopool_alive(struct iopool *p);

#endif
