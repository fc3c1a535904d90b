/* GET /metrics, in the Prometheus text exposition format 0.0.4. The api's
 * own counters (requests by route and status) live here; everything else
 * is read from the module that owns it when a scrape comes, so nothing is
 * done for metrics while nobody scrapes. */
#ifndef FUTURED_API_METRICS_H
#define FUTURED_API_METRICS_H

struct metrics;
struct route;

int metrics_new(struct metrics **ret);
/* Accepts NULL. */
void metrics_free(struct metrics *m);

/* A request ended: route NULL when none matched, status 0 when no answer
 * was sent. Any thread, lock-free. */
void metrics_count_request(struct metrics *m, const struct route *route, unsigned status);

#endif
