/* Logging to stderr with sd-daemon priority prefixes ("<3>"), so the journal
 * keeps levels and a terminal still reads well. Thread-safe: one write(2)
 * per line. Library-like modules (storage/, tasks/) do not log; they return
 * errors and let the daemon decide. */
#ifndef FUTURED_LOG_H
#define FUTURED_LOG_H

#include <syslog.h>

/* LOG_ERR .. LOG_DEBUG; messages above it are dropped. */
void log_set_level(int level);
int log_get_level(void);
/* "error", "warning", "notice", "info", "debug" → LOG_*; -EINVAL otherwise. */
int log_level_parse(const char *s);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(LOG_DEBUG, __VA_ARGS__)

/* Logs at level with ": strerror(-err)" appended; returns err (negative),
 * for `return log_errno(LOG_ERR, r, "...")`. */
int log_errno(int level, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
