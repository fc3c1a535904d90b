/* The running server as its handlers see it: options, the parts it reads,
 * and the state shared by every MHD thread. server.c owns it. */
#ifndef FUTURED_API_API_H
#define FUTURED_API_API_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "api/server.h"

struct MHD_Daemon;
struct auth;
struct hub;
struct metrics;
struct store_reader;

/* One libmicrohttpd daemon per listening socket; everything else is shared. */
struct api {
        struct api_options o;           /* listen_fds cleared: given to the daemons */
        struct api_deps d;
        struct MHD_Daemon **daemons;    /* owned; n_daemons of them started */
        size_t n_daemons;
        struct hub *hub;
        struct metrics *metrics;
        struct auth *auth;              /* NULL: no tokens_file, every request served */
        char *tls_cert;                 /* the PEM texts MHD serves from; NULL: plain HTTP */
        char *tls_key;
        pthread_key_t reader_key;       /* each MHD thread's store_reader */
        atomic_bool serving;            /* started: MHD's messages are client noise now */
        atomic_bool stopping;           /* set by api_quiesce: new requests get 503 */
        atomic_size_t body_bytes;       /* heap bytes of request bodies, all connections */
        pthread_mutex_t probe_lock;     /* one api_probe() at a time */
        /* The connection api_probe() has in flight: the fd MHD got, and the
         * inode of its socket, since the number outlives the socket; -1:
         * none. */
        atomic_int probe_fd;
        _Atomic(ino_t) probe_ino;
        pthread_mutex_t lock;
        pthread_cond_t idle;            /* suspended dropped to 0 */
        unsigned suspended;             /* connections suspended right now */
};

/* A connection suspended by other means than request_suspend() (a stream
 * in its content reader) counts in suspended too, so api_stop() waits for
 * it: add at each suspend, sub when it runs again or ends. */
void api_suspended_add(struct api *a);
void api_suspended_sub(struct api *a);

/* The calling MHD thread's read-only store handle, opened on first use and
 * closed when the thread ends. */
int api_reader(struct api *a, struct store_reader **ret);

#endif
