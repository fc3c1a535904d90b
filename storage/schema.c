/* The futured database format.
 *
 * One SQLite file in WAL mode. PRAGMA user_version is the number of
 * migrations applied; migrations[] below is append-only: a released step is
 * never edited, a change of format is a new step. Each step runs in its own
 * BEGIN IMMEDIATE transaction together with the bump of user_version, so a
 * crash leaves the file at one version or the next, never between. A file
 * whose user_version is above ARRAY_SIZE(migrations) was written by a newer
 * futured and is refused rather than misread.
 *
 * Version 1: table jobs, one row per job the daemon accepted and has not
 * forgotten (DELETE, retention). Columns, in the order of struct job:
 *
 *   id            INTEGER PRIMARY KEY AUTOINCREMENT: AUTOINCREMENT so that an
 *                 id is never handed out twice, even after the newest job was
 *                 deleted: clients keep ids.
 *   task          TEXT: the task's name, as registered in tasks/.
 *   kind          TEXT 'io' | 'cpu': which pool runs it.
 *   state         TEXT 'pending' | 'running' | 'succeeded' | 'failed' |
 *                 'cancelled'. Text, not the enum's number, so that the file
 *                 reads well in the sqlite3 shell and does not depend on the
 *                 order of enum job_state; a CHECK keeps it to these names.
 *   args          TEXT: JSON object, positional args already named.
 *   tag           TEXT: the client's JSON, echoed back; NULL if none.
 *   key           TEXT: idempotency key; NULL if none; unique among non-NULL.
 *   result        TEXT: JSON result of a succeeded job; else NULL.
 *   error         TEXT: JSON {"type","message",...} of a failed or cancelled
 *                 job; else NULL.
 *   timeout       REAL: seconds a run may take, > 0.
 *   priority      INTEGER: higher runs first.
 *   attempts      INTEGER: runs started so far.
 *   max_attempts  INTEGER: runs allowed in all (>= 1).
 *   batch         INTEGER: the batch the job belongs to; NULL if none. A
 *                 later version adds the batches table it refers to.
 *   batch_index   INTEGER: the job's place in its batch (struct job's
 *                 "index", a keyword in SQL); NULL if none.
 *   seq           INTEGER: place in the global completion order, assigned
 *                 when the job finishes, strictly increasing and unique;
 *                 NULL exactly while the job is pending or running (CHECK).
 *   created_at    INTEGER ms since the epoch (UTC): accepted.
 *   started_at    INTEGER ms: the latest run started; NULL if never.
 *   finished_at   INTEGER ms: finished; NULL if not.
 *   ready_at      INTEGER ms: not to be run before (retry backoff); 0: now.
 *
 * NULL stands where struct job says 0 (or -1 for index) means "unset", so
 * that the partial indexes below hold only rows that have the value. A
 * partial index serves only a query whose WHERE implies its condition:
 * "batch = ?" does, a bare MAX(seq) does not (say "WHERE seq IS NOT NULL").
 *
 * Indexes, each for a query that must not scan the table:
 *   jobs_key    lookup by idempotency key, and its uniqueness.
 *   jobs_state  listing newest-first by state (id < cursor), counting by
 *               state, and recovery of pending and running jobs at start.
 *   jobs_task   listing newest-first by task.
 *   jobs_batch  listing newest-first by batch.
 *   jobs_seq    MAX(seq) at start, and completion order for streams.
 *
 * Version 2: table batches, one row per batch whose upload began and that
 * has not been forgotten (DELETE, retention). A batch is stored in steps
 * (storage/batch.h): its row, then its jobs chunk by chunk, then the seal.
 *
 *   id            INTEGER PRIMARY KEY AUTOINCREMENT: never reused, as jobs.id.
 *   sealed        INTEGER 0 | 1: 0 while the upload runs. An unsealed batch
 *                 and its jobs exist for nobody but the writer: readers skip
 *                 them and recovery deletes them, since no client was told.
 *   size          INTEGER: items stored. While unsealed it grows with each
 *                 chunk, so that the seal can check the count the client
 *                 sent without counting rows; fixed from the seal on.
 *   priority      INTEGER: the priority of every item.
 *   limits        TEXT: JSON object of per-batch limits; NULL if none.
 *   done          INTEGER: items finished, = succeeded + failed + cancelled.
 *   succeeded, failed, cancelled
 *                 INTEGER: items finished in each state.
 *                 The writer keeps these four counters in the transaction
 *                 that finishes each job, so that reading a batch never
 *                 scans its jobs: running is counted over the few running
 *                 jobs, and pending = size - done - running.
 *   created_at    INTEGER ms: the upload began.
 *   sealed_at     INTEGER ms: sealed; NULL while unsealed.
 *   finished_at   INTEGER ms: the last item finished (done reached size
 *                 after the seal; the seal itself for an empty batch); NULL
 *                 until then. Only a finished batch may be forgotten.
 *
 * Indexes, each for a query that must not scan a table:
 *   batches_open        unsealed batches: recovery, and readers hiding their
 *                       jobs (there are few at any time).
 *   batches_finished    retention, oldest finished batch first.
 *   jobs_batch_seq      a batch's results in completion order, seq > cursor.
 *   jobs_finished       retention of finished jobs outside batches, oldest
 *                       first (batch jobs go with their batch).
 * A batch's pending jobs get no index of their own, which would cost every
 * upload one more b-tree insert per item: jobs_batch walks them from a
 * cursor, and jobs_state, which files them apart from finished jobs, lets
 * a cancel in chunks skip those cancelled before.
 *
 * Version 3: PRAGMA application_id = SCHEMA_APPLICATION_ID ("FUTR"), so
 * that another program's database, whatever its user_version, is never
 * taken for a futured one. Versions 1 and 2 had none: such a file must
 * hold the tables those versions made, and no application_id. */
#include "storage/schema.h"

#include <errno.h>
#include <stdio.h>

#include "storage/store-internal.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
/* "FUTR" */
#define SCHEMA_APPLICATION_ID 0x46555452
#define SCHEMA_APPLICATION_ID_SINCE 3

static const char *const migrations[] = {
        /* 1 */
        "CREATE TABLE jobs ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  task TEXT NOT NULL,"
        "  kind TEXT NOT NULL CHECK (kind IN ('io', 'cpu')),"
        "  state TEXT NOT NULL CHECK (state IN"
        "    ('pending', 'running', 'succeeded', 'failed', 'cancelled')),"
        "  args TEXT NOT NULL,"
        "  tag TEXT,"
        "  key TEXT,"
        "  result TEXT,"
        "  error TEXT,"
        "  timeout REAL NOT NULL CHECK (timeout > 0),"
        "  priority INTEGER NOT NULL DEFAULT 0,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),"
        "  batch INTEGER,"
        "  batch_index INTEGER,"
        "  seq INTEGER,"
        "  created_at INTEGER NOT NULL,"
        "  started_at INTEGER,"
        "  finished_at INTEGER,"
        "  ready_at INTEGER NOT NULL DEFAULT 0,"
        "  CHECK ((seq IS NULL) = (state IN ('pending', 'running')))"
        ");"
        "CREATE UNIQUE INDEX jobs_key ON jobs(key) WHERE key IS NOT NULL;"
        "CREATE INDEX jobs_state ON jobs(state, id);"
        "CREATE INDEX jobs_task ON jobs(task, id);"
        "CREATE INDEX jobs_batch ON jobs(batch, id) WHERE batch IS NOT NULL;"
        "CREATE UNIQUE INDEX jobs_seq ON jobs(seq) WHERE seq IS NOT NULL;",
        /* 2 */
        "CREATE TABLE batches ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  sealed INTEGER NOT NULL DEFAULT 0 CHECK (sealed IN (0, 1)),"
        "  size INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),"
        "  priority INTEGER NOT NULL DEFAULT 0,"
        "  limits TEXT,"
        "  done INTEGER NOT NULL DEFAULT 0,"
        "  succeeded INTEGER NOT NULL DEFAULT 0,"
        "  failed INTEGER NOT NULL DEFAULT 0,"
        "  cancelled INTEGER NOT NULL DEFAULT 0,"
        "  created_at INTEGER NOT NULL,"
        "  sealed_at INTEGER,"
        "  finished_at INTEGER"
        ");"
        "CREATE INDEX batches_open ON batches(id) WHERE sealed = 0;"
        "CREATE INDEX batches_finished ON batches(finished_at) WHERE finished_at IS NOT NULL;"
        "CREATE INDEX jobs_batch_seq ON jobs(batch, seq)"
        "  WHERE batch IS NOT NULL AND seq IS NOT NULL;"
        "CREATE INDEX jobs_finished ON jobs(finished_at)"
        "  WHERE batch IS NULL AND finished_at IS NOT NULL;",
        /* 3 */
        "PRAGMA application_id = 1179997266;",
};

_Static_assert(SCHEMA_APPLICATION_ID == 1179997266, "migration 3 writes SCHEMA_APPLICATION_ID");

/* The integer a one-row query (a PRAGMA, a count) gives. */
static int query_int(sqlite3 *db, const char *sql, int *ret)
{
        sqlite3_stmt *st;
        int rc;

        rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
                *ret = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        return rc == SQLITE_ROW ? 0 : store_errno(rc);
}

static int user_version(sqlite3 *db, int *ret)
{
        return query_int(db, "PRAGMA user_version", ret);
}

/* -EPROTO for a version no migration of this futured wrote. */
static int version_check(int version)
{
        return version < 0 || (size_t) version > ARRAY_SIZE(migrations) ? -EPROTO : 0;
}

/* 0 when db is futured's at version, or a new file (version 0, nothing in
 * it); -EBADMSG when it is another program's. */
static int owner_check(sqlite3 *db, int version)
{
        int app = 0, n = 0, r;

        r = query_int(db, "PRAGMA application_id", &app);
        if (r < 0)
                return r;
        if (version >= SCHEMA_APPLICATION_ID_SINCE)
                return app == SCHEMA_APPLICATION_ID ? 0 : -EBADMSG;
        if (app != 0)
                return -EBADMSG;
        r = query_int(db, version == 0 ? "SELECT count(*) FROM sqlite_master"
                                       : "SELECT count(*) FROM sqlite_master "
                                         "WHERE type = 'table' AND name = 'jobs'",
                      &n);
        if (r < 0)
                return r;
        return (version == 0) == (n == 0) ? 0 : -EBADMSG;
}

int schema_check(sqlite3 *db)
{
        int version = 0, r;

        r = user_version(db, &version);
        if (r == 0)
                r = owner_check(db, version);
        return r < 0 ? r : version_check(version);
}

/* Applies the step after the current version, if any. Returns 1 when a step
 * was applied, 0 when the schema is current. */
static int migrate_step(sqlite3 *db)
{
        char bump[64];
        int version = 0, r;

        r = store_exec(db, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        /* Read inside the write transaction: another process cannot migrate
         * between the check and the step. */
        r = user_version(db, &version);
        if (r < 0)
                goto rollback;
        r = version_check(version);
        if (r < 0)
                goto rollback;
        if ((size_t) version == ARRAY_SIZE(migrations)) {
                r = store_exec(db, "COMMIT");
                return r < 0 ? r : 0;
        }
        r = store_exec(db, migrations[version]);
        if (r < 0)
                goto rollback;
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", version + 1);
        r = store_exec(db, bump);
        if (r < 0)
                goto rollback;
        r = store_exec(db, "COMMIT");
        if (r < 0)
                goto rollback;
        return 1;

rollback:
        if (!sqlite3_get_autocommit(db))
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return r;
}

int schema_migrate(sqlite3 *db)
{
        int r;

        do
                r = migrate_step(db);
        while (r > 0);
        return r;
}
