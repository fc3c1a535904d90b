/* The daemon's settings: embedded defaults, then the INI file named by -c,
 * then command-line flags, each overriding the one before. One table in
 * config.c describes every key once; the INI parser, getopt and --help are
 * all driven by it, so a key and its flag cannot drift apart. */
#ifndef FUTURED_CONFIG_H
#define FUTURED_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

struct config {
        char listen[256];
        char db[PATH_MAX];
        unsigned http_threads;
        unsigned max_connections;
        unsigned connection_timeout;
        size_t max_body;
        double max_wait;
        bool sync_full;
        unsigned io_threads;
        unsigned cpu_workers;
        double default_timeout;
        size_t max_pending;
        double retry_base;
        double retry_max;
        double shutdown_grace;
        int log_level;
};

/* The embedded defaults, for a first run with no file at all. */
void config_defaults(struct config *ret);

/* Returns 0 when the daemon should run, 1 when --help or --version was
 * answered on stdout, or -EINVAL with a one-line reason in err. */
int config_parse(int argc, char **argv, struct config *ret, char *err, size_t errlen);

#endif
