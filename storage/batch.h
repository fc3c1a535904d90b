/* A batch: many jobs submitted together and read back as one stream.
 *
 * A batch is stored in steps so that a million items never sit in memory
 * at once, yet it stays all or nothing: OPEN inserts the batch row, ITEMS
 * add its jobs chunk by chunk, and SEAL makes it visible. Until SEAL
 * commits, the batch and its jobs exist for nobody (readers, scheduler,
 * recovery deletes them); ABORT removes them. Within a batch, job ids grow
 * with the item index, so "submission order" is id order. */
#ifndef FUTURED_BATCH_H
#define FUTURED_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/job.h"

struct batch {
        int64_t id;             /* 0 until stored */
        bool sealed;
        int64_t size;           /* items; set by the caller before SEAL */
        int priority;           /* every item's: a batch runs in item order */
        char *limits;           /* JSON object text, or NULL; owned */
        /* Read side (store_get_batch): jobs by state, summing to size. */
        int64_t counts[JOB_STATE__COUNT];
        int64_t created_at;     /* ms since the epoch */
        int64_t sealed_at;
        int64_t finished_at;    /* 0 until every item has finished */
};

/* Returns a zeroed batch; NULL on ENOMEM. */
struct batch *batch_new(void);
/* Accepts NULL. */
void batch_free(struct batch *b);

#endif
