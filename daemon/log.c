#include "daemon/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Atomic: a reload (SIGHUP) changes it while every thread logs. */
static int log_level = LOG_INFO;

void log_set_level(int level)
{
        __atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
}

int log_get_level(void)
{
        return __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

int log_level_parse(const char *s)
{
        static const struct {
                const char *name;
                int level;
        } levels[] = {
                { "error", LOG_ERR },     { "warning", LOG_WARNING }, { "notice", LOG_NOTICE },
                { "info", LOG_INFO },     { "debug", LOG_DEBUG },
        };

        for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
                if (strcmp(s, levels[i].name) == 0)
                        return levels[i].level;
        return -EINVAL;
}

static void log_write(int level, const char *suffix, const char *fmt, va_list ap)
{
        char line[2048];
        int n = snprintf(line, sizeof(line), "<%d>", level);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);

        if (m < 0)
                return;
        n = (size_t)(n + m) >= sizeof(line) - 1 ? (int)sizeof(line) - 2 : n + m;
        if (suffix) {
                m = snprintf(line + n, sizeof(line) - (size_t)n, ": %s", suffix);
                if (m > 0)
                        n = (size_t)(n + m) >= sizeof(line) - 1 ? (int)sizeof(line) - 2 : n + m;
        }
        line[n++] = '\n';
        /* One write per line keeps lines from threads whole; nothing useful
         * can be done when stderr itself fails. */
        if (write(STDERR_FILENO, line, (size_t)n) < 0)
                return;
}

void log_msg(int level, const char *fmt, ...)
{
        va_list ap;

        if (level > log_get_level())
                return;
        va_start(ap, fmt);
        log_write(level, NULL, fmt, ap);
        va_end(ap);
}

int log_errno(int level, int err, const char *fmt, ...)
{
        va_list ap;
        char buf[128];

        if (level <= log_get_level()) {
                va_start(ap, fmt);
                log_write(level, strerror_r(-err, buf, sizeof(buf)), fmt, ap);
                va_end(ap);
        }
        return err;
}
