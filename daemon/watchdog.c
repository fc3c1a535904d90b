/* STATUS= and WATCHDOG=1, from one thread.
 *
 * STATUS= ("serving: Q queued, R running, D done") is sent a moment after a
 * job ends and then every STATUS_TICK while the counts keep changing; once
 * they stand still the thread sleeps until the next end, so an idle daemon
 * never wakes. queued and running are the scheduler's (sched_get_stats:
 * jobs loaded in memory, so a large batch counts by the page), done the
 * jobs that ended since start. A submission, a cancel or a delete wakes
 * the thread the same way (watchdog_poke, from the HTTP server), so a job
 * that waits or runs long shows before anything ends.
 *
 * WATCHDOG=1 goes every half WATCHDOG_USEC, and only when, at that moment:
 * - the writer committed the probe pushed one period before: a WOP_PURGE
 *   with cutoff 0, a real BEGIN IMMEDIATE ... COMMIT on the writer's thread
 *   that deletes and writes nothing (a store that refuses writes still
 *   answers it, with -EIO: a full disk is not cured by a restart);
 * - each HTTP daemon's loop took a connection handed to it (api_probe:
 *   a socketpair, not the listening address, so it works on any socket
 *   and takes no slot of the accept backlog) and reacted to it within half
 *   a period. Any reaction, an answer or a close (TLS), proves the loop
 *   runs: the health itself is /healthz's business, not a restart's. With
 *   a thread pool the probe reaches the thread MHD picks for it, and a
 *   server at its connection limit is not probed;
 * - both pools say they are alive: iopool_alive (no I/O thread returned)
 *   and procpool_alive (no worker failed to respawn). A thread that
 *   crashes takes the process with it anyway. Not covered: a task stuck
 *   in an I/O thread (its own timeout's business) and the batch feeder.
 * A withheld ping is logged once per reason, and the recovery once. */
#include "daemon/watchdog.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "api/server.h"
#include "daemon/iopool.h"
#include "daemon/log.h"
#include "daemon/procpool.h"
#include "daemon/scheduler.h"
#include "storage/writer.h"

#define USEC_PER_SEC 1000000ull
#define NEVER UINT64_MAX
/* From a job's end to the STATUS= that shows it. */
#define STATUS_DELAY (USEC_PER_SEC / 2)
/* Between STATUS= updates while the counts keep moving. */
#define STATUS_TICK (2 * USEC_PER_SEC)

struct watchdog {
        struct watchdog_options o;
        uint64_t period;                /* between pings; 0: none */
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;            /* stopping, moved, or the probe committed */
        bool stopping;
        /* The counts may have moved since the last look: set under lock,
         * read without it by watchdog_poke(). */
        atomic_bool moved;
        uint64_t ended;                 /* jobs ended since start */
        bool probe_pending;             /* probe pushed, its done() not run yet */
        struct wop probe;
};

static uint64_t now_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

static void probe_done(struct wop *op)
{
        struct watchdog *w = op->userdata;

        pthread_mutex_lock(&w->lock);
        w->probe_pending = false;
        pthread_cond_broadcast(&w->wake);
        pthread_mutex_unlock(&w->lock);
}

/* Only while no probe is pending: the writer is done with the op. */
static void probe_push(struct watchdog *w)
{
        w->probe = (struct wop){ .type = WOP_PURGE, .cutoff = 0, .done = probe_done, .userdata = w };
        pthread_mutex_lock(&w->lock);
        w->probe_pending = true;
        pthread_mutex_unlock(&w->lock);
        writer_push(w->o.writer, &w->probe);
}

/* Fills why (empty: all alive) and starts the next writer probe. */
static void check_alive(struct watchdog *w, char *why, size_t len)
{
        char err[128];
        bool writer_ok;
        int r;

        why[0] = '\0';
        pthread_mutex_lock(&w->lock);
        writer_ok = !w->probe_pending;
        pthread_mutex_unlock(&w->lock);
        if (!writer_ok)
                snprintf(why, len, "the store writer has not committed in %.1f s",
                         (double)w->period / USEC_PER_SEC);
        else if (!iopool_alive(w->o.iopool))
                snprintf(why, len, "a thread of the I/O pool is gone");
        else if (!procpool_alive(w->o.procpool))
                snprintf(why, len, "the CPU pool cannot start its workers");
        if (!why[0]) {
                r = api_probe(w->o.api, (double)w->period / 2 / USEC_PER_SEC);
                if (r < 0)
                        snprintf(why, len, "the HTTP server did not answer a probe: %s",
                                 strerror_r(-r, err, sizeof(err)));
        }
        if (writer_ok)
                probe_push(w);
}

/* failing: the reason last logged, empty while pings go. */
static void ping(struct watchdog *w, char *failing, size_t len)
{
        char why[512];

        check_alive(w, why, sizeof(why));
        if (!why[0]) {
                sd_notify(0, "WATCHDOG=1");
                if (failing[0])
                        log_notice("watchdog: every part is alive again; pinging");
                failing[0] = '\0';
        } else if (strcmp(why, failing) != 0) {
                log_error("watchdog: no ping: %s", why);
                snprintf(failing, len, "%s", why);
        }
}

/* Sends STATUS= when the counts differ from last (updated); returns whether
 * they did. */
static bool status_refresh(struct watchdog *w, char *last, size_t len)
{
        struct sched_stats st;
        size_t queued, running = 0;
        uint64_t ended;
        char status[160];

        sched_get_stats(w->o.sched, &st);
        queued = st.delayed + st.limited;
        for (int k = 0; k < JOB_KIND__COUNT; k++) {
                queued += st.pending[k];
                running += st.running[k];
        }
        pthread_mutex_lock(&w->lock);
        ended = w->ended;
        pthread_mutex_unlock(&w->lock);
        snprintf(status, sizeof(status), "STATUS=serving: %zu queued, %zu running, %" PRIu64 " done",
                 queued, running, ended);
        if (strcmp(status, last) == 0)
                return false;
        sd_notify(0, status);
        snprintf(last, len, "%s", status);
        return true;
}

/* Under lock: sleeps until stopping, a wake-up, or until (NEVER: none). */
static void sleep_until(struct watchdog *w, uint64_t until)
{
        struct timespec ts = { .tv_sec = (time_t)(until / USEC_PER_SEC),
                               .tv_nsec = (long)(until % USEC_PER_SEC) * 1000 };

        if (until == NEVER)
                pthread_cond_wait(&w->wake, &w->lock);
        else
                pthread_cond_clockwait(&w->wake, &w->lock, CLOCK_MONOTONIC, &ts);
}

static void *watchdog_main(void *userdata)
{
        struct watchdog *w = userdata;
        char status[160] = "", failing[512] = "";
        uint64_t next_ping = w->period ? now_usec() + w->period : NEVER;
        uint64_t next_status = NEVER, now;
        bool changed;

        pthread_mutex_lock(&w->lock);
        while (!w->stopping) {
                now = now_usec();
                if (w->moved && next_status == NEVER)
                        next_status = now + STATUS_DELAY;
                if (now < next_ping && now < next_status) {
                        sleep_until(w, next_ping < next_status ? next_ping : next_status);
                        continue;
                }
                w->moved = false;
                pthread_mutex_unlock(&w->lock);
                if (now >= next_ping) {
                        ping(w, failing, sizeof(failing));
                        /* A late ping (a slow probe) does not make the
                         * next ones come in a burst. */
                        next_ping += w->period;
                        if (next_ping <= now_usec())
                                next_ping = now_usec() + w->period;
                }
                changed = status_refresh(w, status, sizeof(status));
                if (changed && next_status == NEVER)
                        next_status = now_usec() + STATUS_TICK;
                else if (now >= next_status)
                        next_status = changed ? now_usec() + STATUS_TICK : NEVER;
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

int watchdog_start(const struct watchdog_options *o, struct watchdog **ret)
{
        struct watchdog *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->o = *o;
        w->period = o->usec ? (o->usec + 1) / 2 : 0;
        atomic_init(&w->moved, true);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        if (w->period)
                probe_push(w);
        r = -pthread_create(&w->thread, NULL, watchdog_main, w);
        if (r < 0) {
                w->stopping = true;
                watchdog_stop(w);
                return r;
        }
        *ret = w;
        return 0;
}

/* Under lock. One wake-up per count: the thread arms its own timer. */
static void wake_locked(struct watchdog *w)
{
        if (!w->moved) {
                w->moved = true;
                pthread_cond_signal(&w->wake);
        }
}

void watchdog_job_finished(struct watchdog *w, int64_t id)
{
        pthread_mutex_lock(&w->lock);
        if (id > 0)
                w->ended++;
        wake_locked(w);
        pthread_mutex_unlock(&w->lock);
}

void watchdog_poke(struct watchdog *w)
{
        /* Under a stream of submissions most calls find it set and take no
         * lock. One that finds it set just before the thread clears it is
         * still seen: the thread reads the counts after clearing it. */
        if (w->moved)
                return;
        pthread_mutex_lock(&w->lock);
        wake_locked(w);
        pthread_mutex_unlock(&w->lock);
}

/* Joins the thread unless it never started (stopping already set). */
void watchdog_stop(struct watchdog *w)
{
        bool started;

        if (!w)
                return;
        pthread_mutex_lock(&w->lock);
        started = !w->stopping;
        w->stopping = true;
        pthread_cond_broadcast(&w->wake);
        pthread_mutex_unlock(&w->lock);
        if (started)
                pthread_join(w->thread, NULL);
        /* The writer holds the probe until its done(). */
        pthread_mutex_lock(&w->lock);
        while (w->probe_pending)
                pthread_cond_wait(&w->wake, &w->lock);
        pthread_mutex_unlock(&w->lock);
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
}
