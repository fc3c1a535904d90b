/* Retention: finished jobs and finished batches older than a period are
 * deleted in the background, through the writer, a chunk per op, so even
 * a purge of millions never holds the writer long enough to stall a
 * submission. Unfinished jobs are never touched, however old. */
#ifndef FUTURED_RETENTION_H
#define FUTURED_RETENTION_H

#include "storage/writer.h"

struct retention;

/* Starts the purge thread: a purge every period (a fraction of seconds,
 * at most a minute), deleting what finished more than seconds ago. */
int retention_start(struct writer *w, double seconds, struct retention **ret);
/* Waits for a purge in flight, then joins the thread; the writer must still
 * run. Accepts NULL. */
void retention_stop(struct retention *r);

#endif
