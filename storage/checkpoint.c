/* The checkpoint thread. The write connection's WAL hook (run by SQLite on
 * the writer thread after each commit, with the WAL's size in pages) only
 * compares and signals; the thread sleeps on its condvar otherwise.
 *
 * A checkpoint on another connection copies the WAL into the database but
 * cannot make the WAL start over: SQLite restarts it only when a write
 * transaction begins with every frame already copied, which under steady
 * commits the writer never sees. So the thread's next pass is due
 * CHECKPOINT_PAGES past the size the last one left (not at a fixed size,
 * or every commit of a long WAL would ask for one), and once the WAL is
 * twice that long the hook itself checkpoints on the writer's connection,
 * as SQLite's automatic checkpoint does: the thread has copied nearly
 * everything, so that costs little, and the next transaction starts the
 * WAL over. A checkpoint that cannot finish (readers on the WAL) is
 * harmless: the data is safe in the WAL and the next one goes on. */
#include "storage/checkpoint.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "storage/store-internal.h"

/* SQLite's own default threshold: about 4 MiB of WAL between checkpoints. */
#define CHECKPOINT_PAGES 1000

struct checkpointer {
        struct store *store;
        sqlite3 *db;                    /* the thread's own connection */
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        atomic_int due_at;              /* WAL pages that make the next one due */
        int hook_pages;                 /* the WAL's size at the last commit; writer thread only */
        bool due;
        bool stopping;
};

/* The writer thread, right after a commit. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
        struct checkpointer *c = arg;

        /* The WAL started over (after the checkpoint below, or the
         * writer's idle one): the next pass is due CHECKPOINT_PAGES into
         * it, not past where the last pass left the old one. */
        if (pages < c->hook_pages)
                atomic_store(&c->due_at, CHECKPOINT_PAGES);
        c->hook_pages = pages;
        /* The WAL did not start over since the thread copied most of it:
         * a checkpoint here, on the writer's own connection, copies the
         * little that is left and lets its next transaction start the WAL
         * over, as SQLite's automatic checkpoint would. */
        if (pages >= 2 * CHECKPOINT_PAGES) {
                sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
                return SQLITE_OK;
        }
        if (pages >= atomic_load(&c->due_at)) {
                pthread_mutex_lock(&c->lock);
                if (!c->due) {
                        c->due = true;
                        pthread_cond_signal(&c->wake);
                }
                pthread_mutex_unlock(&c->lock);
        }
        return SQLITE_OK;
}

/* One pass; returns the WAL's size in pages when it ended. */
static int checkpoint_pass(struct checkpointer *c)
{
        int log = 0;

        if (sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, NULL) !=
            SQLITE_OK)
                return 0;
        return log;
}

static void *checkpointer_main(void *arg)
{
        struct checkpointer *c = arg;
        int log;

        pthread_mutex_lock(&c->lock);
        for (;;) {
                while (!c->due && !c->stopping)
                        pthread_cond_wait(&c->wake, &c->lock);
                if (c->stopping)
                        break;
                c->due = false;
                pthread_mutex_unlock(&c->lock);
                log = checkpoint_pass(c);
                atomic_store(&c->due_at, log + CHECKPOINT_PAGES);
                pthread_mutex_lock(&c->lock);
        }
        pthread_mutex_unlock(&c->lock);
        return NULL;
}

int checkpointer_start(struct store *s, struct checkpointer **ret)
{
        struct checkpointer *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->store = s;
        atomic_init(&c->due_at, CHECKPOINT_PAGES);
        r = store_open_connection(s, &c->db);
        if (r < 0)
                goto fail_free;
        r = -pthread_mutex_init(&c->lock, NULL);
        if (r < 0)
                goto fail_db;
        r = -pthread_cond_init(&c->wake, NULL);
        if (r < 0)
                goto fail_lock;
        r = -pthread_create(&c->thread, NULL, checkpointer_main, c);
        if (r < 0)
                goto fail_cond;
        /* Replaces the automatic checkpoint, which is itself a WAL hook. */
        sqlite3_wal_hook(store_db(s), wal_hook, c);
        *ret = c;
        return 0;

fail_cond:
        pthread_cond_destroy(&c->wake);
fail_lock:
        pthread_mutex_destroy(&c->lock);
fail_db:
        sqlite3_close_v2(c->db);
fail_free:
        free(c);
        return r;
}

void checkpointer_stop(struct checkpointer *c)
{
        if (!c)
                return;
        sqlite3_wal_autocheckpoint(store_db(c->store), CHECKPOINT_PAGES);
        pthread_mutex_lock(&c->lock);
        c->stopping = true;
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->thread, NULL);
        pthread_cond_destroy(&c->wake);
        pthread_mutex_destroy(&c->lock);
        sqlite3_close_v2(c->db);
        free(c);
}
