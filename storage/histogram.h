/* A fixed-bucket histogram of observations, the shape Prometheus exposes:
 * a count per bucket, the total count and the sum. Its owner guards it with
 * its own lock (the writer's, the scheduler's); a copy taken under that lock
 * is a consistent snapshot. */
#ifndef FUTURED_HISTOGRAM_H
#define FUTURED_HISTOGRAM_H

#include <stdint.h>

#define HISTOGRAM_MAX_BOUNDS 24

struct histogram {
        const double *bounds;   /* upper bounds, ascending; static, not owned */
        unsigned n_bounds;      /* at most HISTOGRAM_MAX_BOUNDS */
        /* Observations in (bounds[i-1], bounds[i]], not cumulative; the
         * last, counts[n_bounds], those above every bound. */
        uint64_t counts[HISTOGRAM_MAX_BOUNDS + 1];
        uint64_t count;
        double sum;
};

/* An empty histogram over bounds (n of them, ascending, static). */
void histogram_init(struct histogram *h, const double *bounds, unsigned n);
#define histogram_init_array(h, bounds) \
        histogram_init((h), (bounds), sizeof(bounds) / sizeof((bounds)[0]))
void histogram_observe(struct histogram *h, double v);

#endif
