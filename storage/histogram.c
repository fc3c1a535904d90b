/* Fixed-bucket histograms. A bucket holds the observations up to and
 * including its bound, as Prometheus' "le" says. */
#include "storage/histogram.h"

#include <string.h>

void histogram_init(struct histogram *h, const double *bounds, unsigned n)
{
        memset(h, 0, sizeof(*h));
        h->bounds = bounds;
        h->n_bounds = n < HISTOGRAM_MAX_BOUNDS ? n : HISTOGRAM_MAX_BOUNDS;
}

void histogram_observe(struct histogram *h, double v)
{
        unsigned i = 0;

        while (i < h->n_bounds && v > h->bounds[i])
                i++;
        h->counts[i]++;
        h->count++;
        h->sum += v;
}
