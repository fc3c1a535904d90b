/* What the service manager hears while the daemon serves (sd_notify; all of
 * it a no-op without NOTIFY_SOCKET): STATUS= with live counts, and
 * WATCHDOG=1 pings sent only while every part is alive. One thread, which
 * sleeps while nothing moves and no watchdog is asked for. */
#ifndef FUTURED_WATCHDOG_H
#define FUTURED_WATCHDOG_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/listen.h"

struct sched;
struct writer;
struct iopool;
struct procpool;
struct watchdog;

struct watchdog_options {
        uint64_t usec;                  /* WATCHDOG_USEC; 0: no pings */
        struct sched *sched;            /* none of these is owned */
        struct writer *writer;
        struct iopool *iopool;
        struct procpool *procpool;
        /* Where the HTTP probe reaches each listening socket; copied. */
        const struct listen_address *http;
        size_t n_http;
};

int watchdog_start(const struct watchdog_options *o, struct watchdog **ret);
/* The scheduler's on_finished (writer thread): job id ended (0: a chunk of
 * a batch cancel, not counted); STATUS= follows within a second or two.
 * Takes a lock for a moment, never blocks. */
void watchdog_job_finished(struct watchdog *w, int64_t id);
/* Stops, joins, and waits for the writer probe in flight: call while the
 * writer runs. Accepts NULL. */
void watchdog_stop(struct watchdog *w);

#endif
