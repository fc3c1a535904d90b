/* The daemon's settings: embedded defaults, then the INI file named by -c,
 * then command-line flags, each overriding the one before. One table in
 * config.c describes every key once; the INI parser, getopt and --help are
 * all driven by it, so a key and its flag cannot drift apart. */
#ifndef FUTURED_CONFIG_H
#define FUTURED_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#define CONFIG_COMMANDS_MAX 64

struct config {
        char listen[256];
        char db[PATH_MAX];
        unsigned http_threads;
        unsigned max_connections;
        unsigned connection_timeout;
        size_t max_body;
        double max_wait;
        char tokens_file[PATH_MAX];     /* empty: no authentication */
        char tls_cert[PATH_MAX];        /* both empty: plain HTTP */
        char tls_key[PATH_MAX];
        bool sync_full;
        unsigned io_threads;
        unsigned cpu_workers;
        double default_timeout;
        size_t max_pending;
        double retry_base;
        double retry_max;
        double shutdown_grace;
        double retention;
        size_t max_batch_items;
        int log_level;
        size_t max_response;
        char base_url[1024];            /* [openai]; empty: the request names one */
        unsigned host_concurrency;      /* http requests in flight per host; 0: no limit */
        double host_per_second;         /* http requests started per host and second; 0: no limit */
        char allow[4096];               /* URL prefixes, space-separated; empty: any */
        char auth[4096];                /* host=FILE pairs, space-separated */
        char work_dir[PATH_MAX];        /* of exec commands; empty: the daemon's */
        char environment[4096];         /* of exec commands: K=V words */
        size_t max_output;              /* of an exec command's stdout, and of its stderr */
        char json_output[1024];         /* exec commands whose stdout is JSON */
        /* [commands], in file order; only the file sets them. */
        struct config_command {
                char name[64];
                char template[1024];    /* argv template (tasks/exec.h) */
        } commands[CONFIG_COMMANDS_MAX];
        unsigned n_commands;
};

/* The embedded defaults, for a first run with no file at all. */
void config_defaults(struct config *ret);

/* Returns 0 when the daemon should run, 1 when --help or --version was
 * answered on stdout, or -EINVAL with a one-line reason in err. */
int config_parse(int argc, char **argv, struct config *ret, char *err, size_t errlen);

/* The names of the keys whose values differ between a and b, in table
 * order ("commands" for the [commands] section): up to n stored in ret
 * (static strings), the count of all returned. For a reload (SIGHUP). */
size_t config_diff(const struct config *a, const struct config *b, const char **ret, size_t n);

#endif
