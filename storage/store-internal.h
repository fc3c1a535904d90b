/* What storage/ shares inside itself and nobody else may use: the write
 * connection (owned by the store, driven only by the writer thread once it
 * runs), the mapping of SQLite result codes to errno codes, plain SQL
 * execution, and bind helpers that keep the first error so that a run of
 * binds is checked once. */
#ifndef FUTURED_STORE_INTERNAL_H
#define FUTURED_STORE_INTERNAL_H

#include <stdint.h>
#include <sqlite3.h>

#include "storage/store.h"

/* Every connection waits this long for a lock; the writer shortens it only
 * around its idle checkpoint. */
#define STORE_BUSY_TIMEOUT_MS 5000

/* WAL bytes the store writes ahead of use when it opens: more than the WAL
 * reaches between two restarts (storage/checkpoint.c keeps it near 8 MiB). */
#define STORE_WAL_PREALLOCATE (16 << 20)

sqlite3 *store_db(struct store *s);
/* Another read-write connection to the store's file (*ret the caller's). */
int store_open_connection(struct store *s, sqlite3 **ret);

/* Runs SQL that takes no values and returns no rows. */
int store_exec(sqlite3 *db, const char *sql);

/* A negative errno code for a SQLite result code other than OK/ROW/DONE:
 * -EINVAL and -E2BIG mean the statement's values were refused (constraint,
 * type, size), every other code means the database failed. */
int store_errno(int sqlite_rc);

/* Both do nothing once *rc is not SQLITE_OK. Text is bound SQLITE_STATIC:
 * it must outlive the statement's next step. NULL text binds NULL. */
void store_bind_text(sqlite3_stmt *st, int i, const char *v, int *rc);
void store_bind_int64(sqlite3_stmt *st, int i, int64_t v, int *rc);
/* Binds NULL when v == none: the stored form of "unset". */
void store_bind_opt_int64(sqlite3_stmt *st, int i, int64_t v, int64_t none, int *rc);

#endif
