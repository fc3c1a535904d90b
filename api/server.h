/* The HTTP surface: libmicrohttpd in epoll mode with suspend/resume. A
 * request that must wait (a commit, a long-poll) suspends its connection and
 * is resumed by the event it waits for; no thread ever waits for a client. */
#ifndef FUTURED_API_SERVER_H
#define FUTURED_API_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct store;
struct sched;
struct writer;
struct iopool;
struct procpool;
struct api;

struct api_options {
        /* Bound, listening sockets (at least one), each served by its own
         * libmicrohttpd daemon; the api owns them from api_start() on, and
         * keeps neither the array nor its pointer. */
        const int *listen_fds;
        size_t n_listen_fds;
        unsigned threads;               /* libmicrohttpd worker threads */
        unsigned max_connections;
        unsigned connection_timeout;    /* seconds of client silence */
        size_t max_body;                /* bytes; 413 past this */
        double max_wait;                /* seconds; the cap of ?wait= */
        double default_timeout;         /* seconds; a job spec without "timeout" */
        int64_t max_batch_items;        /* 413 batch_too_large past this */
        const char *tokens_file;        /* bearer tokens, one a line; NULL: no auth */
        const char *tls_cert;           /* PEM files; NULL: plain HTTP */
        const char *tls_key;
        const char *openai_base_url;    /* ?format=openai batches; NULL: none set */
        /* A request that may have changed the job counts ended (a 2xx
         * answer to a POST or a DELETE): any MHD thread, so it must be
         * quick; NULL: nobody asks. */
        void (*on_change)(void *userdata);
        void *userdata;
};

/* The parts the handlers read; none is owned by the api. */
struct api_deps {
        struct store *store;
        struct sched *sched;
        struct writer *writer;
        struct iopool *iopool;
        struct procpool *procpool;
        double started_at;              /* task_monotonic() at start, for uptime */
};

int api_start(const struct api_options *o, const struct api_deps *d, struct api **ret);
/* The scheduler's on_finished: wakes every waiter on job id and every
 * stream of its batch (id 0: on any job of the batch). Any thread. */
void api_job_finished(int64_t id, int64_t batch, void *api);
/* Whether every daemon's loop still serves: each is handed, through
 * MHD_add_connection(), one end of a socketpair that asks for /healthz
 * (a TLS daemon gets an end of file instead of a handshake), and must
 * react, with an answer or a close, within timeout seconds all told. The
 * server answers these itself: no handler runs and nothing is counted.
 * 0, -ETIMEDOUT, -ESHUTDOWN once quiesced, or another negative errno.
 * Any thread; probes from several threads take turns. */
int api_probe(struct api *a, double timeout);
/* From now on every new request is answered 503 shutting_down (the
 * servers accept connections until api_stop()); every suspended request is
 * answered now. */
void api_quiesce(struct api *a);
/* Closes every connection and frees. Accepts NULL. */
void api_stop(struct api *a);

#endif
