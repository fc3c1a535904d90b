/* The exec task's settings: the commands an operator allows ([commands] in
 * the config) and how they run ([exec]). Clients name a command and fill
 * its placeholders; they never choose a path, an environment or a working
 * directory.
 *
 * The daemon calls exec_configure() once before the CPU pool starts, so
 * validate() knows the commands at submission. A worker never reads the
 * config file: the pool sends it exec_settings_dump() in its first frame and
 * the worker passes that to exec_worker_init(). The settings are read-only
 * while jobs run. */
#ifndef FUTURED_TASK_EXEC_H
#define FUTURED_TASK_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>

#define EXEC_MAX_OUTPUT_DEFAULT (1u << 20)
#define EXEC_ENVIRONMENT_DEFAULT "PATH=/usr/local/bin:/usr/bin:/bin"

struct exec_command {
        const char *name;       /* [A-Za-z0-9_.-], at most 63 characters */
        /* Words split at spaces; "a b" is one word; {name} is a parameter,
         * {{ and }} are literal braces; the first word is an absolute path. */
        const char *template;
};

struct exec_options {
        const struct exec_command *commands;
        size_t n_commands;
        const char *json_output;        /* command names, space-separated: stdout is JSON */
        const char *work_dir;           /* NULL or empty: the current directory */
        const char *environment;        /* K=V words, space-separated; NULL: the default */
        size_t max_output;              /* bytes of stdout and of stderr each; 0: the default */
        /* Soft open-file limit commands run with; 0: the caller's now. The
         * daemon raises its own, which commands must not inherit. */
        unsigned long nofile;
        bool check_only;                /* checks o, keeps the settings in force */
};

/* Parses every template and checks the programs and the directory. 0, or
 * -EINVAL with a reason naming the command in err (-ENOMEM likewise). On
 * failure, or with o->check_only, the previous settings stay. */
int exec_configure(const struct exec_options *o, char *err, size_t errlen);

/* The settings as exec_worker_init() takes them; the caller's, NULL when
 * out of memory. */
json_t *exec_settings_dump(void);

/* In a CPU worker: adopts the daemon's settings. stop_fd is the job
 * socket: while a command runs, data or end of file on it means stop now,
 * and the command's process group is killed; nothing is read from it.
 * group_named(pgid) is called once each command's process group exists,
 * before the run waits on it, and group_named(0) before its leader is
 * reaped, when the id may name another group: should the worker die
 * between the two, the group is left for the daemon to kill. Writes to a
 * command's stdin need SIGPIPE ignored in the caller. */
int exec_worker_init(const json_t *settings, int stop_fd, void (*group_named)(pid_t pgid),
                     char *err, size_t errlen);

/* Releases the settings. */
void exec_cleanup(void);

#endif
