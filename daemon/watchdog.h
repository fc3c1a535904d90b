/* What the service manager hears while the daemon serves (sd_notify; all of
 * it a no-op without NOTIFY_SOCKET): STATUS= with live counts, and
 * WATCHDOG=1 pings sent only while every part is alive. One thread, which
 * sleeps while nothing moves and no watchdog is asked for. */
#ifndef FUTURED_WATCHDOG_H
#define FUTURED_WATCHDOG_H

#include <stdint.h>

struct api;
struct sched;
struct writer;
struct iopool;
struct procpool;
struct watchdog;

/* The shortest WATCHDOG_USEC taken: pings every 100 ms. */
#define WATCHDOG_USEC_MIN 200000

struct watchdog_options {
        uint64_t usec;                  /* WATCHDOG_USEC (>= WATCHDOG_USEC_MIN); 0: no pings */
        struct sched *sched;            /* none of these is owned */
        struct writer *writer;
        struct iopool *iopool;
        struct procpool *procpool;
        struct api *api;                /* probed with api_probe() */
};

int watchdog_start(const struct watchdog_options *o, struct watchdog **ret);
/* The scheduler's on_finished (writer thread): job id ended (0: a chunk of
 * a batch cancel, not counted); STATUS= follows within a second or two.
 * Takes a lock for a moment, never blocks. */
void watchdog_job_finished(struct watchdog *w, int64_t id);
/* The counts may have changed (a submission went through): STATUS=
 * follows as after a job's end. Any thread; mostly lock-free. */
void watchdog_poke(struct watchdog *w);
/* Stops, joins, and waits for the writer probe in flight: call while the
 * writer runs, and before the api stops. Accepts NULL. */
void watchdog_stop(struct watchdog *w);

#endif
