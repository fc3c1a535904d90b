/* Checkpoints mostly off the commit path. SQLite's automatic checkpoint
 * runs in the commit that crosses its threshold: that commit copies the WAL
 * into the database and syncs it while every op of the transaction, and
 * the queue behind it, waits. Here a thread of its own, on its own
 * connection, runs PASSIVE checkpoints beside the writer and the readers,
 * and the commit that finds the WAL long only copies the little left, so
 * the WAL can start over. (The writer still resets the WAL with a RESTART
 * checkpoint when it is idle.) */
#ifndef FUTURED_CHECKPOINT_H
#define FUTURED_CHECKPOINT_H

#include "storage/store.h"

struct checkpointer;

/* Takes over the write connection's checkpoints; call before the writer
 * starts. */
int checkpointer_start(struct store *s, struct checkpointer **ret);
/* Joins the thread and gives the checkpoints back to the write connection.
 * Call after writer_stop(). Accepts NULL. */
void checkpointer_stop(struct checkpointer *c);

#endif
