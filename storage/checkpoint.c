/* The checkpoint thread. The write connection's WAL hook (run by SQLite on
 * the writer thread after each commit, with the WAL's size in pages) only
 * compares and signals; the thread sleeps on its condvar otherwise. A
 * checkpoint that cannot finish (readers on the WAL) is harmless: the data
 * is safe in the WAL and the next one goes on from there. */
#include "storage/checkpoint.h"

#include <errno.h>
#include <pthread.h>
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
        bool due;
        bool stopping;
};

/* The writer thread, right after a commit. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
        struct checkpointer *c = arg;

        if (pages >= CHECKPOINT_PAGES) {
                pthread_mutex_lock(&c->lock);
                if (!c->due) {
                        c->due = true;
                        pthread_cond_signal(&c->wake);
                }
                pthread_mutex_unlock(&c->lock);
        }
        return SQLITE_OK;
}

static void *checkpointer_main(void *arg)
{
        struct checkpointer *c = arg;

        pthread_mutex_lock(&c->lock);
        for (;;) {
                while (!c->due && !c->stopping)
                        pthread_cond_wait(&c->wake, &c->lock);
                if (c->stopping)
                        break;
                /* Cleared first: commits during the checkpoint that ask
                 * again get one more pass. */
                c->due = false;
                pthread_mutex_unlock(&c->lock);
                sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
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
