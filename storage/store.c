/* The job store: opening, recovery and reads.
 *
 * The write connection lives here but is driven only by writer.c (and by
 * store_recover() before the writer starts). Each reader is its own
 * read-only connection with statements prepared once; every statement is
 * reset as soon as its last row is read, because an open read transaction
 * pins the WAL and keeps checkpoints from finishing.
 *
 * The jobs of an unsealed batch exist for no reader (storage/batch.h):
 * queries that could meet one filter it out with VISIBLE, a lookup in the
 * few unsealed batches. */
#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/schema.h"
#include "storage/store-internal.h"

/* The columns of a job row in the order of enum col. */
#define JOB_COLUMNS \
        "id, task, kind, state, args, tag, key, result, error, timeout, " \
        "priority, attempts, max_attempts, batch, batch_index, seq, " \
        "created_at, started_at, finished_at, ready_at"

enum col {
        COL_ID, COL_TASK, COL_KIND, COL_STATE, COL_ARGS, COL_TAG, COL_KEY,
        COL_RESULT, COL_ERROR, COL_TIMEOUT, COL_PRIORITY, COL_ATTEMPTS,
        COL_MAX_ATTEMPTS, COL_BATCH, COL_BATCH_INDEX, COL_SEQ, COL_CREATED_AT,
        COL_STARTED_AT, COL_FINISHED_AT, COL_READY_AT,
};

/* True for a job row that is not part of an unsealed batch. */
#define VISIBLE \
        "(batch IS NULL OR NOT EXISTS (SELECT 1 FROM batches " \
        "  WHERE batches.id = jobs.batch AND batches.sealed = 0))"

/* A sealed batch's row and its running jobs in one statement, so that both
 * come from one snapshot and the counts sum to size. "+batch" keeps SQLite
 * from reading the batch's every job through jobs_batch: jobs_state finds
 * the few running ones. Columns in the order of enum batch_col. */
#define BATCH_SELECT \
        "SELECT size, priority, limits, done, succeeded, failed, cancelled, " \
        "  created_at, sealed_at, finished_at, " \
        "  (SELECT count(*) FROM jobs WHERE state = 'running' AND +batch = ?1) " \
        "FROM batches WHERE id = ?1 AND sealed = 1"

enum batch_col {
        BCOL_SIZE, BCOL_PRIORITY, BCOL_LIMITS, BCOL_DONE, BCOL_SUCCEEDED,
        BCOL_FAILED, BCOL_CANCELLED, BCOL_CREATED_AT, BCOL_SEALED_AT,
        BCOL_FINISHED_AT, BCOL_RUNNING,
};

/* List statements exist for every combination of these filters; a query
 * that names only the columns it filters on lets SQLite pick the index. */
enum {
        LIST_STATE = 1 << 0,
        LIST_TASK = 1 << 1,
        LIST_BATCH = 1 << 2,
        LIST__COMBINATIONS = 1 << 3,
};

struct store {
        sqlite3 *db;
        char *path;
        /* flock()ed for the store's life, closed only once SQLite has let
         * go: closing a descriptor of the file would drop the process's
         * POSIX locks on it, SQLite's too. */
        int lock_fd;
};

struct store_reader {
        sqlite3 *db;
        sqlite3_stmt *get;
        sqlite3_stmt *count;
        sqlite3_stmt *count_tasks;
        sqlite3_stmt *list[LIST__COMBINATIONS];
        sqlite3_stmt *batch;
        sqlite3_stmt *results[2];       /* by enum store_order */
        sqlite3_stmt *pending;
};

int store_errno(int sqlite_rc)
{
        switch (sqlite_rc & 0xff) {
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_READONLY:
                return -EROFS;
        case SQLITE_PERM:
        case SQLITE_AUTH:
                return -EACCES;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_CONSTRAINT:
        case SQLITE_MISMATCH:
        case SQLITE_RANGE:
                return -EINVAL;
        case SQLITE_TOOBIG:
                return -E2BIG;
        default:
                return -EIO;
        }
}

void store_bind_text(sqlite3_stmt *st, int i, const char *v, int *rc)
{
        if (*rc != SQLITE_OK)
                return;
        *rc = v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

void store_bind_int64(sqlite3_stmt *st, int i, int64_t v, int *rc)
{
        if (*rc == SQLITE_OK)
                *rc = sqlite3_bind_int64(st, i, v);
}

void store_bind_opt_int64(sqlite3_stmt *st, int i, int64_t v, int64_t none, int *rc)
{
        if (*rc != SQLITE_OK)
                return;
        *rc = v == none ? sqlite3_bind_null(st, i) : sqlite3_bind_int64(st, i, v);
}

sqlite3 *store_db(struct store *s)
{
        return s->db;
}

int store_exec(sqlite3 *db, const char *sql)
{
        int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

        return rc == SQLITE_OK ? 0 : store_errno(rc);
}

static int db_open(const char *path, int flags, sqlite3 **ret)
{
        sqlite3 *db = NULL;
        int rc;

        rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
        if (rc != SQLITE_OK) {
                sqlite3_close(db);
                return store_errno(rc);
        }
        *ret = db;
        return 0;
}

static int set_wal(sqlite3 *db)
{
        sqlite3_stmt *st;
        const unsigned char *mode;
        int rc, r;

        rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
                /* The pragma answers with the mode in force, which stays the
                 * old one where WAL is impossible. */
                mode = sqlite3_column_text(st, 0);
                r = mode && strcmp((const char *) mode, "wal") == 0 ? 0 : -EOPNOTSUPP;
        } else
                r = store_errno(rc);
        sqlite3_finalize(st);
        return r;
}

int store_open_connection(struct store *s, sqlite3 **ret)
{
        sqlite3 *db = NULL;
        int r;

        r = db_open(s->path, SQLITE_OPEN_READWRITE, &db);
        /* A connection learns the file is in WAL mode only once it reads
         * it; until then a checkpoint on it does nothing. */
        if (r == 0)
                r = set_wal(db);
        if (r < 0) {
                sqlite3_close_v2(db);
                return r;
        }
        *ret = db;
        return 0;
}

/* Writes zeros past the end of the WAL up to STORE_WAL_PREALLOCATE bytes
 * and syncs them. Until the WAL first starts over, every commit appends to
 * it, and syncing a file that grew writes its inode too: two synchronous
 * writes per commit instead of one. Zeros past the last valid frame are
 * what a WAL that started over holds anyway: SQLite reads frames up to
 * the first whose salt does not match the header's, which no zero frame
 * does. Called before the writer starts, when nothing else writes the
 * file. A failure costs only speed: a disk too full for the zeros gets
 * its space back (the file its old size). */
static void wal_preallocate(const char *db_path)
{
        static const char zeros[64 * 1024];
        char *path = NULL;
        struct stat st;
        ssize_t n = 0;
        off_t at;
        int fd;

        if (asprintf(&path, "%s-wal", db_path) < 0)
                return;
        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        free(path);
        if (fd < 0)
                return;
        if (fstat(fd, &st) < 0 || st.st_size >= STORE_WAL_PREALLOCATE) {
                close(fd);
                return;
        }
        for (at = st.st_size; at < STORE_WAL_PREALLOCATE; at += n) {
                n = STORE_WAL_PREALLOCATE - at;
                if (n > (ssize_t) sizeof(zeros))
                        n = sizeof(zeros);
                n = pwrite(fd, zeros, (size_t) n, at);
                if (n < 0 && errno == EINTR)
                        n = 0;
                else if (n <= 0)
                        break;
        }
        if (at < STORE_WAL_PREALLOCATE)
                (void)!ftruncate(fd, st.st_size);
        else
                fdatasync(fd);
        close(fd);
}

int store_open(const struct store_options *o, struct store **ret)
{
        struct store *s;
        struct stat st;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->lock_fd = -1;
        s->path = strdup(o->path);
        if (!s->path) {
                r = -ENOMEM;
                goto fail;
        }
        /* Jobs carry credentials (http headers, exec input): the file is
         * created private here, and SQLite gives its -wal and -shm files
         * the database's mode. */
        s->lock_fd = open(o->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
        if (s->lock_fd < 0) {
                r = -errno;
                goto fail;
        }
        /* A device or a FIFO is no database, and SQLite would create its
         * -wal and -shm files beside it (/dev/null-wal). */
        r = fstat(s->lock_fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EBADMSG;
        if (r < 0)
                goto fail;
        /* flock(), not SQLite's fcntl() locks, which it takes and drops
         * by itself: the two kinds do not see each other. */
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                goto fail;
        }

        r = db_open(o->path, SQLITE_OPEN_READWRITE, &s->db);
        if (r < 0)
                goto fail;
        /* Before the journal mode changes the file: a newer futured's
         * database is refused as it is. */
        r = schema_check(s->db);
        if (r < 0)
                goto fail;
        r = set_wal(s->db);
        if (r < 0)
                goto fail;
        r = store_exec(s->db, o->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
        if (r < 0)
                goto fail;
        /* A WAL that grew under load is cut back to 64 MiB once reset. */
        r = store_exec(s->db, "PRAGMA journal_size_limit = 67108864");
        if (r < 0)
                goto fail;
        r = schema_migrate(s->db);
        if (r < 0)
                goto fail;
        wal_preallocate(o->path);
        *ret = s;
        return 0;

fail:
        store_close(s);
        return r;
}

void store_close(struct store *s)
{
        if (!s)
                return;
        /* _v2: a statement the writer failed to finalize must not keep the
         * file open forever; the close completes when it is finalized. */
        sqlite3_close_v2(s->db);
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        free(s->path);
        free(s);
}

/* NULL column: NULL string. */
static int column_strdup(sqlite3_stmt *st, int col, char **ret)
{
        const unsigned char *v;

        if (sqlite3_column_type(st, col) == SQLITE_NULL) {
                *ret = NULL;
                return 0;
        }
        v = sqlite3_column_text(st, col);
        *ret = v ? strdup((const char *) v) : NULL;
        return *ret ? 0 : -ENOMEM;
}

static int64_t column_int64(sqlite3_stmt *st, int col, int64_t none)
{
        return sqlite3_column_type(st, col) == SQLITE_NULL ? none : sqlite3_column_int64(st, col);
}

static int job_from_row(sqlite3_stmt *st, struct job **ret)
{
        struct job *j;
        int r;

        j = job_new();
        if (!j)
                return -ENOMEM;
        r = job_kind_parse((const char *) sqlite3_column_text(st, COL_KIND), &j->kind);
        if (r == 0)
                r = job_state_parse((const char *) sqlite3_column_text(st, COL_STATE), &j->state);
        if (r < 0) {
                /* The CHECKs keep both to known names: this row is damaged. */
                r = -EBADMSG;
                goto fail;
        }
        if ((r = column_strdup(st, COL_TASK, &j->task)) < 0 ||
            (r = column_strdup(st, COL_ARGS, &j->args)) < 0 ||
            (r = column_strdup(st, COL_TAG, &j->tag)) < 0 ||
            (r = column_strdup(st, COL_KEY, &j->key)) < 0 ||
            (r = column_strdup(st, COL_RESULT, &j->result)) < 0 ||
            (r = column_strdup(st, COL_ERROR, &j->error)) < 0)
                goto fail;
        j->id = sqlite3_column_int64(st, COL_ID);
        j->timeout = sqlite3_column_double(st, COL_TIMEOUT);
        j->priority = sqlite3_column_int(st, COL_PRIORITY);
        j->attempts = sqlite3_column_int(st, COL_ATTEMPTS);
        j->max_attempts = sqlite3_column_int(st, COL_MAX_ATTEMPTS);
        j->batch = column_int64(st, COL_BATCH, 0);
        j->index = column_int64(st, COL_BATCH_INDEX, -1);
        j->seq = column_int64(st, COL_SEQ, 0);
        j->created_at = sqlite3_column_int64(st, COL_CREATED_AT);
        j->started_at = column_int64(st, COL_STARTED_AT, 0);
        j->finished_at = column_int64(st, COL_FINISHED_AT, 0);
        j->ready_at = sqlite3_column_int64(st, COL_READY_AT);
        *ret = j;
        return 0;

fail:
        job_free(j);
        return r;
}

/* Hands every row of st to cb, or each up to the first job not finished
 * when until_unfinished, then resets st. */
static int walk_jobs(sqlite3_stmt *st, bool until_unfinished,
                     int (*cb)(struct job *j, void *ud), void *ud)
{
        struct job *j;
        int rc, r = 0;

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                if (until_unfinished && sqlite3_column_type(st, COL_SEQ) == SQLITE_NULL) {
                        rc = SQLITE_DONE;
                        break;
                }
                r = job_from_row(st, &j);
                if (r < 0)
                        break;
                r = cb(j, ud);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = store_errno(rc);
        sqlite3_reset(st);
        return r;
}

/* Jobs that were running when the daemon died: retried while attempts
 * remain, else failed as interrupted, taking the next places in the
 * completion order in id order. UPDATE ... FROM computes every new row
 * before it changes any, so MAX(seq) is read once. */
static const char recover_failed_sql[] =
        "UPDATE jobs SET state = 'failed', finished_at = ?1, seq = top.seq + r.n, "
        "  error = '{\"type\":\"interrupted\",\"message\":"
        "\"the daemon stopped while the job ran and no attempt was left\"}' "
        "FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs "
        "      WHERE state = 'running' AND attempts >= max_attempts) AS r, "
        "     (SELECT COALESCE(MAX(seq), 0) AS seq FROM jobs WHERE seq IS NOT NULL) AS top "
        "WHERE jobs.id = r.id";

/* The batch counters of the jobs that recover_failed_sql fails, read while
 * they are still running. */
static const char recover_counts_sql[] =
        "UPDATE batches SET done = done + r.n, failed = failed + r.n, "
        "  finished_at = CASE WHEN sealed = 1 AND done + r.n = size THEN ?1 ELSE finished_at END "
        "FROM (SELECT batch, count(*) AS n FROM jobs "
        "      WHERE state = 'running' AND attempts >= max_attempts AND batch IS NOT NULL "
        "      GROUP BY batch) AS r "
        "WHERE batches.id = r.batch";

/* Sealed batches with work left, for the scheduler to feed again: once
 * nothing runs, a batch has pending jobs exactly while done < size. */
static const char recover_batches_sql[] =
        "SELECT id, priority FROM batches WHERE sealed = 1 AND done < size ORDER BY id";

/* Runs sql with ?1 bound to v. */
static int exec_int64(sqlite3 *db, const char *sql, int64_t v)
{
        sqlite3_stmt *st;
        int rc;

        rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        rc = sqlite3_bind_int64(st, 1, v);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        sqlite3_finalize(st);
        return rc == SQLITE_DONE ? 0 : store_errno(rc);
}

/* The changes of recovery, inside one transaction. */
static int recover_rows(sqlite3 *db, int64_t retry_delay_ms)
{
        int64_t now = job_now_ms();
        int r;

        r = store_exec(db, "DELETE FROM jobs WHERE batch IN (SELECT id FROM batches WHERE sealed = 0)");
        if (r == 0)
                r = store_exec(db, "DELETE FROM batches WHERE sealed = 0");
        if (r == 0)
                r = exec_int64(db, recover_counts_sql, now);
        if (r == 0)
                r = exec_int64(db, recover_failed_sql, now);
        if (r == 0)
                r = exec_int64(db, "UPDATE jobs SET state = 'pending', ready_at = ?1 WHERE state = 'running'",
                               now + retry_delay_ms);
        return r;
}

static int recover_batches(sqlite3 *db, const struct store_recovery *rec)
{
        sqlite3_stmt *st;
        int rc, r = 0;

        rc = sqlite3_prepare_v2(db, recover_batches_sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                r = rec->batch(sqlite3_column_int64(st, 0), sqlite3_column_int(st, 1), rec->userdata);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = store_errno(rc);
        sqlite3_finalize(st);
        return r;
}

int store_recover(struct store *s, const struct store_recovery *rec)
{
        sqlite3_stmt *st;
        int rc, r;

        r = store_exec(s->db, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        r = recover_rows(s->db, rec->retry_delay_ms);
        if (r == 0)
                r = store_exec(s->db, "COMMIT");
        if (r < 0) {
                if (!sqlite3_get_autocommit(s->db))
                        store_exec(s->db, "ROLLBACK");
                return r;
        }

        rc = sqlite3_prepare_v2(s->db,
                                "SELECT " JOB_COLUMNS " FROM jobs "
                                "WHERE state = 'pending' AND batch IS NULL ORDER BY id",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        r = walk_jobs(st, false, rec->job, rec->userdata);
        sqlite3_finalize(st);
        if (r < 0)
                return r;
        return recover_batches(s->db, rec);
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret)
{
        int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, ret, NULL);

        return rc == SQLITE_OK ? 0 : store_errno(rc);
}

/* Counts by state less the jobs of unsealed batches, found through the
 * few unsealed batch rows. */
static const char count_sql[] =
        "SELECT state, sum(n) FROM ("
        "  SELECT state, count(*) AS n FROM jobs GROUP BY state"
        "  UNION ALL"
        "  SELECT state, -count(*) FROM jobs"
        "  WHERE batch IN (SELECT id FROM batches WHERE sealed = 0) GROUP BY state"
        ") GROUP BY state";

/* The same by task and state. No index has both, so this reads the whole
 * table. */
static const char count_tasks_sql[] =
        "SELECT task, state, sum(n) FROM ("
        "  SELECT task, state, count(*) AS n FROM jobs GROUP BY task, state"
        "  UNION ALL"
        "  SELECT task, state, -count(*) FROM jobs"
        "  WHERE batch IN (SELECT id FROM batches WHERE sealed = 0) GROUP BY task, state"
        ") GROUP BY task, state";

/* The reader's fixed statements, prepared once per reader: where each
 * lives in struct store_reader, and its SQL. The list statements, one per
 * combination of filters, are made by prepare_list(). */
static const struct {
        size_t offset;
        const char *sql;
} reader_sql[] = {
        { offsetof(struct store_reader, get),
          "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?1 AND " VISIBLE },
        { offsetof(struct store_reader, count), count_sql },
        { offsetof(struct store_reader, count_tasks), count_tasks_sql },
        { offsetof(struct store_reader, batch), BATCH_SELECT },
        /* Sealed: a batch being deleted is unsealed, its finished jobs
         * going chunk by chunk, and a stream open on it must see none of
         * them. The EXISTS is constant, looked up once per page. */
        { offsetof(struct store_reader, results[STORE_ORDER_COMPLETION]),
          "SELECT " JOB_COLUMNS " FROM jobs WHERE batch = ?1 AND seq > ?2 "
          "  AND EXISTS (SELECT 1 FROM batches WHERE id = ?1 AND sealed = 1) "
          "ORDER BY seq LIMIT ?3" },
        { offsetof(struct store_reader, results[STORE_ORDER_SUBMISSION]),
          "SELECT " JOB_COLUMNS " FROM jobs WHERE batch = ?1 AND id > ?2 "
          "  AND EXISTS (SELECT 1 FROM batches WHERE id = ?1 AND sealed = 1) "
          "ORDER BY id LIMIT ?3" },
        { offsetof(struct store_reader, pending),
          "SELECT " JOB_COLUMNS " FROM jobs "
          "WHERE batch = ?1 AND state = 'pending' AND id > ?2 "
          "  AND EXISTS (SELECT 1 FROM batches WHERE id = ?1 AND sealed = 1) "
          "ORDER BY id LIMIT ?3" },
};

static sqlite3_stmt **reader_stmt(struct store_reader *rd, size_t i)
{
        return (sqlite3_stmt **)((char *)rd + reader_sql[i].offset);
}

/* ?1 the cursor (ids below it), ?2 state, ?3 task, ?4 batch, ?5 limit. */
static int prepare_list(sqlite3 *db, int filters, sqlite3_stmt **ret)
{
        char sql[1024];

        snprintf(sql, sizeof(sql),
                 "SELECT " JOB_COLUMNS " FROM jobs WHERE id < ?1 AND " VISIBLE "%s%s%s "
                 "ORDER BY id DESC LIMIT ?5",
                 filters & LIST_STATE ? " AND state = ?2" : "",
                 filters & LIST_TASK ? " AND task = ?3" : "",
                 filters & LIST_BATCH ? " AND batch = ?4" : "");
        return prepare(db, sql, ret);
}

int store_reader_open(struct store *s, struct store_reader **ret)
{
        struct store_reader *rd;
        int r;

        rd = calloc(1, sizeof(*rd));
        if (!rd)
                return -ENOMEM;
        r = db_open(s->path, SQLITE_OPEN_READONLY, &rd->db);
        if (r < 0)
                goto fail;
        r = store_exec(rd->db, "PRAGMA query_only = ON");
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < sizeof(reader_sql) / sizeof(reader_sql[0]); i++) {
                r = prepare(rd->db, reader_sql[i].sql, reader_stmt(rd, i));
                if (r < 0)
                        goto fail;
        }
        for (int i = 0; i < LIST__COMBINATIONS; i++) {
                r = prepare_list(rd->db, i, &rd->list[i]);
                if (r < 0)
                        goto fail;
        }
        *ret = rd;
        return 0;

fail:
        store_reader_close(rd);
        return r;
}

void store_reader_close(struct store_reader *rd)
{
        if (!rd)
                return;
        for (size_t i = 0; i < sizeof(reader_sql) / sizeof(reader_sql[0]); i++)
                sqlite3_finalize(*reader_stmt(rd, i));
        for (int i = 0; i < LIST__COMBINATIONS; i++)
                sqlite3_finalize(rd->list[i]);
        sqlite3_close(rd->db);
        free(rd);
}

/* Steps st, whose ?1 is id, to its one row: 0 with the row ready to read,
 * -ENOENT when there is none, or the error (st reset then). On 0 the
 * caller reads the row and resets st. */
static int step_by_id(sqlite3_stmt *st, int64_t id)
{
        int rc;

        rc = sqlite3_bind_int64(st, 1, id);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
                return 0;
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? -ENOENT : store_errno(rc);
}

int store_get_job(struct store_reader *rd, int64_t id, struct job **ret)
{
        int r = step_by_id(rd->get, id);

        if (r < 0)
                return r;
        r = job_from_row(rd->get, ret);
        sqlite3_reset(rd->get);
        return r;
}

int store_list_jobs(struct store_reader *rd, const struct store_filter *f,
                    int (*cb)(struct job *j, void *ud), void *ud)
{
        sqlite3_stmt *st;
        int filters = 0, rc = SQLITE_OK;

        if (f->limit <= 0 || f->before_id < 0 || f->state < -1 || f->state >= JOB_STATE__COUNT)
                return -EINVAL;
        if (f->state >= 0)
                filters |= LIST_STATE;
        if (f->task)
                filters |= LIST_TASK;
        if (f->batch != 0)
                filters |= LIST_BATCH;
        st = rd->list[filters];

        store_bind_int64(st, 1, f->before_id > 0 ? f->before_id : INT64_MAX, &rc);
        if (filters & LIST_STATE)
                store_bind_text(st, 2, job_state_name(f->state), &rc);
        if (filters & LIST_TASK)
                store_bind_text(st, 3, f->task, &rc);
        if (filters & LIST_BATCH)
                store_bind_int64(st, 4, f->batch, &rc);
        store_bind_int64(st, 5, f->limit, &rc);
        if (rc != SQLITE_OK)
                return store_errno(rc);
        return walk_jobs(st, false, cb, ud);
}

int store_count_states(struct store_reader *rd, int64_t ret_counts[JOB_STATE__COUNT])
{
        int64_t counts[JOB_STATE__COUNT] = { 0 };
        enum job_state state;
        int rc, r = 0;

        while ((rc = sqlite3_step(rd->count)) == SQLITE_ROW) {
                r = job_state_parse((const char *) sqlite3_column_text(rd->count, 0), &state);
                if (r < 0) {
                        r = -EBADMSG;
                        break;
                }
                counts[state] = sqlite3_column_int64(rd->count, 1);
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = store_errno(rc);
        sqlite3_reset(rd->count);
        if (r < 0)
                return r;
        memcpy(ret_counts, counts, sizeof(counts));
        return 0;
}

int store_count_tasks(struct store_reader *rd,
                      int (*cb)(const char *task, enum job_state state, int64_t n, void *ud),
                      void *ud)
{
        sqlite3_stmt *st = rd->count_tasks;
        enum job_state state;
        int rc, r = 0;

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *task = (const char *) sqlite3_column_text(st, 0);

                if (!task ||
                    job_state_parse((const char *) sqlite3_column_text(st, 1), &state) < 0) {
                        r = -EBADMSG;
                        break;
                }
                r = cb(task, state, sqlite3_column_int64(st, 2), ud);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = store_errno(rc);
        sqlite3_reset(st);
        return r;
}

static int batch_from_row(sqlite3_stmt *st, int64_t id, struct batch **ret)
{
        struct batch *b;
        int64_t done, running;
        int r;

        b = batch_new();
        if (!b)
                return -ENOMEM;
        r = column_strdup(st, BCOL_LIMITS, &b->limits);
        if (r < 0) {
                batch_free(b);
                return r;
        }
        b->id = id;
        b->sealed = true;
        b->size = sqlite3_column_int64(st, BCOL_SIZE);
        b->priority = sqlite3_column_int(st, BCOL_PRIORITY);
        done = sqlite3_column_int64(st, BCOL_DONE);
        running = sqlite3_column_int64(st, BCOL_RUNNING);
        b->counts[JOB_PENDING] = b->size - done - running;
        b->counts[JOB_RUNNING] = running;
        b->counts[JOB_SUCCEEDED] = sqlite3_column_int64(st, BCOL_SUCCEEDED);
        b->counts[JOB_FAILED] = sqlite3_column_int64(st, BCOL_FAILED);
        b->counts[JOB_CANCELLED] = sqlite3_column_int64(st, BCOL_CANCELLED);
        b->created_at = sqlite3_column_int64(st, BCOL_CREATED_AT);
        b->sealed_at = column_int64(st, BCOL_SEALED_AT, 0);
        b->finished_at = column_int64(st, BCOL_FINISHED_AT, 0);
        *ret = b;
        return 0;
}

int store_get_batch(struct store_reader *rd, int64_t id, struct batch **ret)
{
        int r = step_by_id(rd->batch, id);

        if (r < 0)
                return r;
        r = batch_from_row(rd->batch, id, ret);
        sqlite3_reset(rd->batch);
        return r;
}

/* Binds a batch walk's batch, cursor and limit as ?1..?3. */
static int bind_walk(sqlite3_stmt *st, int64_t batch, int64_t after, int limit)
{
        int rc = SQLITE_OK;

        if (limit <= 0 || after < 0)
                return -EINVAL;
        store_bind_int64(st, 1, batch, &rc);
        store_bind_int64(st, 2, after, &rc);
        store_bind_int64(st, 3, limit, &rc);
        return rc == SQLITE_OK ? 0 : store_errno(rc);
}

int store_batch_results(struct store_reader *rd, int64_t batch, enum store_order order,
                        int64_t after, int limit, int (*cb)(struct job *j, void *ud), void *ud)
{
        sqlite3_stmt *st;
        int r;

        if (order != STORE_ORDER_COMPLETION && order != STORE_ORDER_SUBMISSION)
                return -EINVAL;
        st = rd->results[order];
        r = bind_walk(st, batch, after, limit);
        if (r < 0)
                return r;
        return walk_jobs(st, order == STORE_ORDER_SUBMISSION, cb, ud);
}

int store_batch_pending(struct store_reader *rd, int64_t batch, int64_t after_id, int limit,
                        int (*cb)(struct job *j, void *ud), void *ud)
{
        int r;

        r = bind_walk(rd->pending, batch, after_id, limit);
        if (r < 0)
                return r;
        return walk_jobs(rd->pending, false, cb, ud);
}
