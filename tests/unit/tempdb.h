/* A database path in a fresh directory under /tmp, for the unit tests that
 * open a store; removed afterwards with all that SQLite or the test left in
 * it (-wal, -shm, files of exec jobs). */
#ifndef FUTURED_TEMPDB_H
#define FUTURED_TEMPDB_H

struct tempdb {
        char dir[64];
        char path[96];          /* dir/jobs.db */
};

/* name: a prefix for the directory. 0 or a negative errno code. */
int tempdb_make(struct tempdb *t, const char *name);
/* Removes the directory and the files in it (not subdirectories). */
int tempdb_remove(struct tempdb *t);

#endif
