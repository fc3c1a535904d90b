/* exec: runs a command the operator named in the config, inside a CPU
 * worker. The client gives the command's name, a value per placeholder and
 * optionally stdin; never a path, an environment or a directory.
 *
 * Templates are split into words once, at configuration: spaces and tabs
 * separate words, a word wholly in double quotes keeps its spaces (no
 * escapes, no quotes inside a word), {name} is a placeholder and {{ }} are
 * literal braces. A placeholder's value is substituted inside its word and
 * never split, so a value with spaces, quotes or globs is one argv element.
 * Values are strings or integers. An argument may start with '-' only where
 * its template word does, so a client cannot turn an operand into an
 * option: "-a" in {p}.txt could, "" in {p}-n too; in --out={p} nothing can.
 *
 * A run: fork (the worker is single-threaded) then, in the child, only
 * async-signal-safe calls: death signal, own process group, default signal
 * dispositions and an empty mask (the worker ignores SIGINT and SIGPIPE,
 * and ignored dispositions survive execve), pipes on 0-2, every other fd
 * close-on-exec, chdir, execve with the configured environment. A failure
 * before execve is reported on a close-on-exec pipe. The parent feeds stdin,
 * reads stdout and stderr up to max_output each (the rest is read and
 * dropped, and flagged) and waits for the command's exit, the job's
 * deadline or a stop on stop_fd. Whatever ended the run, the whole process
 * group is killed before the command is reaped: the job ends when the
 * command's main process does, and nothing it started in its group outlives
 * it.
 *
 * If the worker dies, the command's death signal kills the command
 * itself, and the daemon, told of the group (group_named), kills what is
 * left in it. If the daemon dies too (kill -9), only the service manager
 * (systemd's cgroup) reaches the rest. */
#include "tasks/exec.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tasks/args.h"
#include "tasks/base64.h"
#include "tasks/jsontext.h"
#include "tasks/task.h"

#define COMMAND_NAME_MAX 63
#define COMMAND_WORDS_MAX 256
#define COMMAND_PARAMS_MAX 32
#define VALUE_MAX 65536
#define READ_CHUNK 65536
/* Fields every command takes besides its placeholders. */
#define FIXED_FIELDS 2

struct command {
        char *name;
        char *template;         /* as configured, for exec_settings_dump() */
        char **words;           /* NULL-terminated, quotes removed */
        /* The args a job may give: "command", "stdin", then each placeholder
         * once; NULL-terminated. */
        char **fields;
        size_t n_fields;
        bool json;
};

struct settings {
        struct command *commands;
        size_t n_commands;
        char *json_output;
        char *environment;
        char **env;             /* NULL-terminated */
        char *work_dir;         /* absolute */
        size_t max_output;
        rlim_t nofile;          /* commands' soft open-file limit */
};

static struct settings settings = { .max_output = EXEC_MAX_OUTPUT_DEFAULT };
static int stop_fd = -1;
static void (*group_named)(pid_t pgid);

static void words_free(char **words)
{
        if (!words)
                return;
        for (char **w = words; *w; w++)
                free(*w);
        free(words);
}

static void command_done(struct command *c)
{
        free(c->name);
        free(c->template);
        words_free(c->words);
        words_free(c->fields);
}

static void settings_free(struct settings *s)
{
        for (size_t i = 0; i < s->n_commands; i++)
                command_done(&s->commands[i]);
        free(s->commands);
        free(s->json_output);
        free(s->environment);
        words_free(s->env);
        free(s->work_dir);
        *s = (struct settings){ .max_output = EXEC_MAX_OUTPUT_DEFAULT };
}

/* Splits text into words at spaces and tabs, a word wholly in double quotes
 * keeping its spaces. *ret (NULL-terminated, each word malloc'd) and *ret_n
 * are the caller's. -EINVAL with *why set on a stray quote or too many
 * words. */
static int words_split(const char *text, char ***ret, size_t *ret_n, const char **why)
{
        char **words = calloc(COMMAND_WORDS_MAX + 1, sizeof(*words));
        const char *p = text;
        size_t n = 0;

        if (!words)
                return -ENOMEM;
        for (;;) {
                const char *start, *end;
                bool quoted;

                p += strspn(p, " \t");
                if (!*p)
                        break;
                quoted = *p == '"';
                start = quoted ? p + 1 : p;
                end = quoted ? strchr(start, '"') : start + strcspn(start, " \t");
                if (!end || (quoted && end[1] && !strchr(" \t", end[1])) ||
                    memchr(start, '"', (size_t)(end - start))) {
                        *why = "a double quote must enclose a whole word";
                        goto fail;
                }
                if (n == COMMAND_WORDS_MAX) {
                        *why = "too many words";
                        goto fail;
                }
                words[n] = strndup(start, (size_t)(end - start));
                if (!words[n]) {
                        words_free(words);
                        return -ENOMEM;
                }
                n++;
                p = quoted ? end + 1 : end;
        }
        *ret = words;
        *ret_n = n;
        return 0;
fail:
        words_free(words);
        return -EINVAL;
}

/* Called by word_walk() for each literal run (placeholder false, braces
 * unescaped) and each placeholder name, in order. */
typedef int (*piece_fn)(void *userdata, bool placeholder, const char *s, size_t n);

/* Walks one template word; -EINVAL on a lone brace or a bad name, or
 * fn's error. */
static int word_walk(const char *word, piece_fn fn, void *userdata)
{
        static const char name_chars[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
        const char *lit = word, *p = word;
        int r;

        while (*p) {
                size_t n;

                if ((p[0] == '{' || p[0] == '}') && p[1] == p[0]) {
                        r = fn(userdata, false, lit, (size_t)(p + 1 - lit));
                        if (r < 0)
                                return r;
                        p += 2;
                        lit = p;
                        continue;
                }
                if (*p == '}')
                        return -EINVAL;
                if (*p != '{') {
                        p++;
                        continue;
                }
                if (p > lit && (r = fn(userdata, false, lit, (size_t)(p - lit))) < 0)
                        return r;
                n = strspn(p + 1, name_chars);
                if (n == 0 || p[1 + n] != '}' || (p[1] >= '0' && p[1] <= '9'))
                        return -EINVAL;
                r = fn(userdata, true, p + 1, n);
                if (r < 0)
                        return r;
                p += n + 2;
                lit = p;
        }
        return p > lit ? fn(userdata, false, lit, (size_t)(p - lit)) : 0;
}

static ssize_t field_index(const struct command *c, const char *name, size_t n)
{
        for (size_t i = 0; i < c->n_fields; i++)
                if (strlen(c->fields[i]) == n && strncmp(c->fields[i], name, n) == 0)
                        return (ssize_t)i;
        return -1;
}

/* Collects a command's placeholders while its words are checked. */
struct collect {
        struct command *command;
        const char *why;
};

static int collect_piece(void *userdata, bool placeholder, const char *s, size_t n)
{
        struct collect *co = userdata;
        struct command *c = co->command;
        ssize_t i;

        if (!placeholder)
                return 0;
        i = field_index(c, s, n);
        if (i >= 0 && i < FIXED_FIELDS) {
                co->why = "{command} and {stdin} are reserved";
                return -EINVAL;
        }
        if (i < 0) {
                if (c->n_fields == FIXED_FIELDS + COMMAND_PARAMS_MAX) {
                        co->why = "too many placeholders";
                        return -EINVAL;
                }
                c->fields[c->n_fields] = strndup(s, n);
                if (!c->fields[c->n_fields])
                        return -ENOMEM;
                c->n_fields++;
        }
        return 0;
}

/* Parses the command's template into words and fields. */
static int command_parse(struct command *c, char *err, size_t errlen)
{
        struct collect co = { .command = c, .why = "a brace is neither {name}, {{ nor }}" };
        const char *why = NULL;
        size_t n_words;
        int r;

        r = words_split(c->template, &c->words, &n_words, &why);
        if (r == -EINVAL)
                snprintf(err, errlen, "command \"%s\": %s", c->name, why);
        if (r < 0)
                return r;
        if (n_words == 0 || c->words[0][0] != '/' || strpbrk(c->words[0], "{}")) {
                snprintf(err, errlen, "command \"%s\": the first word must be an absolute path "
                         "with no placeholder", c->name);
                return -EINVAL;
        }
        if (access(c->words[0], X_OK) < 0) {
                snprintf(err, errlen, "command \"%s\": %s: %s", c->name, c->words[0], strerror(errno));
                return -EINVAL;
        }
        c->fields = calloc(FIXED_FIELDS + COMMAND_PARAMS_MAX + 1, sizeof(*c->fields));
        if (!c->fields)
                return -ENOMEM;
        c->fields[0] = strdup("command");
        c->fields[1] = strdup("stdin");
        if (!c->fields[0] || !c->fields[1])
                return -ENOMEM;
        c->n_fields = FIXED_FIELDS;
        for (size_t i = 1; i < n_words; i++) {
                r = word_walk(c->words[i], collect_piece, &co);
                if (r == -EINVAL)
                        snprintf(err, errlen, "command \"%s\": word \"%s\": %s", c->name, c->words[i],
                                 co.why);
                if (r < 0)
                        return r;
        }
        return 0;
}

static bool command_name_valid(const char *name)
{
        size_t n = strlen(name);

        return n > 0 && n <= COMMAND_NAME_MAX &&
               strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static struct command *settings_find(const struct settings *s, const char *name)
{
        for (size_t i = 0; i < s->n_commands; i++)
                if (strcmp(s->commands[i].name, name) == 0)
                        return &s->commands[i];
        return NULL;
}

static int settings_add_commands(struct settings *s, const struct exec_options *o, char *err,
                                 size_t errlen)
{
        s->commands = calloc(o->n_commands ? o->n_commands : 1, sizeof(*s->commands));
        if (!s->commands)
                return -ENOMEM;
        for (size_t i = 0; i < o->n_commands; i++) {
                struct command *c = &s->commands[i];
                int r;

                if (!command_name_valid(o->commands[i].name)) {
                        snprintf(err, errlen, "command name \"%s\" is not 1 to %d of A-Z a-z 0-9 _ . -",
                                 o->commands[i].name, COMMAND_NAME_MAX);
                        return -EINVAL;
                }
                if (settings_find(s, o->commands[i].name)) {
                        snprintf(err, errlen, "command \"%s\" is defined twice", o->commands[i].name);
                        return -EINVAL;
                }
                c->name = strdup(o->commands[i].name);
                c->template = strdup(o->commands[i].template);
                s->n_commands++;
                if (!c->name || !c->template)
                        return -ENOMEM;
                r = command_parse(c, err, errlen);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int settings_mark_json(struct settings *s, const char *names, char *err, size_t errlen)
{
        const char *why = NULL;
        char **words;
        size_t n;
        int r;

        s->json_output = strdup(names);
        if (!s->json_output)
                return -ENOMEM;
        r = words_split(names, &words, &n, &why);
        if (r == -EINVAL)
                snprintf(err, errlen, "json_output: %s", why);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n && r == 0; i++) {
                struct command *c = settings_find(s, words[i]);

                if (c) {
                        c->json = true;
                } else {
                        snprintf(err, errlen, "json_output: no command \"%s\"", words[i]);
                        r = -EINVAL;
                }
        }
        words_free(words);
        return r;
}

static int settings_set_env(struct settings *s, const char *environment, char *err, size_t errlen)
{
        const char *why = NULL;
        size_t n;
        int r;

        s->environment = strdup(environment);
        if (!s->environment)
                return -ENOMEM;
        r = words_split(environment, &s->env, &n, &why);
        if (r == -EINVAL)
                snprintf(err, errlen, "environment: %s", why);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                if (s->env[i][0] == '=' || !strchr(s->env[i], '=')) {
                        snprintf(err, errlen, "environment: \"%s\" is not NAME=VALUE", s->env[i]);
                        return -EINVAL;
                }
        }
        return 0;
}

static int settings_set_dir(struct settings *s, const char *dir, char *err, size_t errlen)
{
        struct stat st;

        s->work_dir = dir && *dir ? strdup(dir) : getcwd(NULL, 0);
        if (!s->work_dir)
                return -errno;
        if (s->work_dir[0] != '/') {
                snprintf(err, errlen, "work_dir \"%s\" is not an absolute path", s->work_dir);
                return -EINVAL;
        }
        if (stat(s->work_dir, &st) < 0 || !S_ISDIR(st.st_mode) || access(s->work_dir, X_OK) < 0) {
                snprintf(err, errlen, "work_dir %s: %s", s->work_dir,
                         errno ? strerror(errno) : "not a directory");
                return -EINVAL;
        }
        return 0;
}

int exec_configure(const struct exec_options *o, char *err, size_t errlen)
{
        struct settings s = { .max_output = EXEC_MAX_OUTPUT_DEFAULT };
        int r;

        errno = 0;
        r = settings_add_commands(&s, o, err, errlen);
        if (r == 0)
                r = settings_mark_json(&s, o->json_output ? o->json_output : "", err, errlen);
        if (r == 0)
                r = settings_set_env(&s, o->environment ? o->environment : EXEC_ENVIRONMENT_DEFAULT,
                                     err, errlen);
        if (r == 0)
                r = settings_set_dir(&s, o->work_dir, err, errlen);
        if (r < 0) {
                if (r != -EINVAL)
                        snprintf(err, errlen, "%s", strerror(-r));
                settings_free(&s);
                return r;
        }
        if (o->max_output)
                s.max_output = o->max_output;
        s.nofile = o->nofile;
        if (!s.nofile) {
                struct rlimit rl;

                s.nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : RLIM_INFINITY;
        }
        if (!o->check_only) {
                settings_free(&settings);
                settings = s;
        } else
                settings_free(&s);
        return 0;
}

json_t *exec_settings_dump(void)
{
        json_t *commands = json_array();

        for (size_t i = 0; commands && i < settings.n_commands; i++) {
                if (json_array_append_new(commands, json_pack("[s, s]", settings.commands[i].name,
                                                              settings.commands[i].template)) < 0) {
                        json_decref(commands);
                        return NULL;
                }
        }
        if (!commands)
                return NULL;
        return json_pack("{s:o, s:s, s:s, s:s, s:I, s:I}", "commands", commands,
                         "json_output", settings.json_output ? settings.json_output : "",
                         "work_dir", settings.work_dir ? settings.work_dir : "",
                         "environment", settings.environment ? settings.environment
                                                             : EXEC_ENVIRONMENT_DEFAULT,
                         "max_output", (json_int_t)settings.max_output,
                         "nofile", (json_int_t)settings.nofile);
}

int exec_worker_init(const json_t *dump, int fd, void (*named)(pid_t pgid), char *err,
                     size_t errlen)
{
        struct exec_options o = { 0 };
        struct exec_command *commands;
        json_t *list, *pair;
        json_int_t max_output, nofile;
        size_t i;
        int r;

        if (json_unpack((json_t *)dump, "{s:o, s:s, s:s, s:s, s:I, s:I}", "commands", &list,
                        "json_output", &o.json_output, "work_dir", &o.work_dir,
                        "environment", &o.environment, "max_output", &max_output,
                        "nofile", &nofile) < 0 ||
            !json_is_array(list) || max_output <= 0 || nofile <= 0) {
                snprintf(err, errlen, "malformed exec settings");
                return -EINVAL;
        }
        commands = calloc(json_array_size(list) + 1, sizeof(*commands));
        if (!commands)
                return -ENOMEM;
        json_array_foreach(list, i, pair) {
                if (json_unpack(pair, "[s, s]", &commands[i].name, &commands[i].template) < 0) {
                        free(commands);
                        snprintf(err, errlen, "malformed exec command %zu", i);
                        return -EINVAL;
                }
        }
        o.commands = commands;
        o.n_commands = json_array_size(list);
        o.max_output = (size_t)max_output;
        o.nofile = (unsigned long)nofile;
        r = exec_configure(&o, err, errlen);
        free(commands);
        if (r == 0) {
                stop_fd = fd;
                group_named = named;
        }
        return r;
}

void exec_cleanup(void)
{
        settings_free(&settings);
        stop_fd = -1;
        group_named = NULL;
}

/* ---- arguments ---- */

/* The command the args name, or NULL with msg filled. */
static const struct command *args_command(const json_t *args, char *msg, size_t msglen)
{
        const char *name = json_string_value(json_object_get(args, "command"));
        const struct command *c = name ? settings_find(&settings, name) : NULL;
        size_t len;

        if (c)
                return c;
        len = (size_t)snprintf(msg, msglen, "command must be %s",
                               settings.n_commands ? "one of:" : "a configured command, and none is");
        for (size_t i = 0; i < settings.n_commands && len < msglen; i++)
                len += (size_t)snprintf(msg + len, msglen - len, "%s %s", i ? "," : "",
                                        settings.commands[i].name);
        return NULL;
}

static int fail_arg(char *msg, size_t msglen, const char *fmt, const char *name)
{
        snprintf(msg, msglen, fmt, name);
        return -EINVAL;
}

/* One argv element being built. */
struct expand {
        const struct command *command;
        const json_t *args;
        char *buf;
        size_t len, size;
};

static int expand_append(struct expand *e, const char *s, size_t n)
{
        if (e->len + n + 1 > e->size) {
                size_t size = e->len + n + 1 > 2 * e->size ? e->len + n + 1 : 2 * e->size;
                char *p = realloc(e->buf, size);

                if (!p)
                        return -ENOMEM;
                e->buf = p;
                e->size = size;
        }
        memcpy(e->buf + e->len, s, n);
        e->len += n;
        e->buf[e->len] = '\0';
        return 0;
}

static int expand_piece(void *userdata, bool placeholder, const char *s, size_t n)
{
        struct expand *e = userdata;
        char number[32];
        const json_t *v;
        ssize_t i;

        if (!placeholder)
                return expand_append(e, s, n);
        /* The field holds the name NUL-terminated, at any length:
         * json_object_getn() is newer than the jansson we require. */
        i = field_index(e->command, s, n);
        v = i >= 0 ? json_object_get(e->args, e->command->fields[i]) : NULL;
        if (json_is_integer(v)) {
                snprintf(number, sizeof(number), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                return expand_append(e, number, strlen(number));
        }
        return v ? expand_append(e, json_string_value(v), json_string_length(v)) : -EINVAL;
}

/* The command's argv filled from validated args; NULL-terminated, each
 * element and the array malloc'd, the caller's (words_free()). */
static int argv_build(const struct command *c, const json_t *args, char ***ret)
{
        size_t n = 0;
        char **argv;
        int r = 0;

        while (c->words[n])
                n++;
        argv = calloc(n + 1, sizeof(*argv));
        if (!argv)
                return -ENOMEM;
        for (size_t i = 0; i < n && r == 0; i++) {
                struct expand e = { .command = c, .args = args };

                r = expand_append(&e, "", 0);
                if (r == 0)
                        r = word_walk(c->words[i], expand_piece, &e);
                argv[i] = e.buf;
        }
        if (r < 0) {
                words_free(argv);
                return r;
        }
        *ret = argv;
        return 0;
}

/* An argument may start with '-' only where its template word does: a
 * value cannot turn an operand into an option, whether it starts the
 * argument itself, comes after empty ones, or is empty before a literal
 * '-' ({p}-n). */
static int argv_check(const struct command *c, char **argv, char *msg, size_t msglen)
{
        for (size_t i = 1; argv[i]; i++)
                if (argv[i][0] == '-' && c->words[i][0] != '-')
                        return fail_arg(msg, msglen, "these args make the argument \"%s\" start "
                                        "with '-', which would read as an option", c->words[i]);
        return 0;
}

/* Checks args; 0 with *ret_command their command and *ret_argv (the
 * caller's, words_free()) the argv they make; -EINVAL with msg filled, or
 * -ENOMEM. */
static int args_argv(const json_t *args, const struct command **ret_command, char ***ret_argv,
                     char *msg, size_t msglen)
{
        const struct command *c;
        const json_t *in;
        char **argv = NULL;
        int r;

        if (!json_is_object(args))
                return fail_arg(msg, msglen, "%s", "args must be an object");
        c = args_command(args, msg, msglen);
        if (!c)
                return -EINVAL;
        r = task_args_check_fields(args, (const char *const *)c->fields, msg, msglen);
        if (r < 0)
                return r;
        in = json_object_get(args, "stdin");
        if (in && !json_is_string(in))
                return fail_arg(msg, msglen, "%s must be a string", "stdin");
        for (size_t i = FIXED_FIELDS; i < c->n_fields; i++) {
                const char *name = c->fields[i];
                const json_t *v = json_object_get(args, name);
                const char *s = json_string_value(v);

                if (!v)
                        return fail_arg(msg, msglen, "missing parameter \"%s\"", name);
                if (json_is_integer(v))
                        continue;
                if (!s)
                        return fail_arg(msg, msglen, "%s must be a string or an integer", name);
                if (json_string_length(v) > VALUE_MAX || strlen(s) != json_string_length(v))
                        return fail_arg(msg, msglen, "%s must be at most 65536 bytes, without NUL",
                                        name);
        }
        r = argv_build(c, args, &argv);
        if (r == 0)
                r = argv_check(c, argv, msg, msglen);
        if (r < 0) {
                words_free(argv);
                return r;
        }
        *ret_command = c;
        *ret_argv = argv;
        return 0;
}

static int exec_validate(const json_t *args, char *msg, size_t msglen)
{
        const struct command *c;
        char **argv;
        int r;

        r = args_argv(args, &c, &argv, msg, msglen);
        if (r == 0)
                words_free(argv);
        return r;
}

/* ---- running ---- */

struct output {
        int fd;
        char *buf;              /* malloc'd, grown up to cap */
        size_t len, size, cap;
        bool truncated;
};

struct input {
        int fd;
        const char *data;
        size_t len, done;
};

/* What the child could not do before execve, sent on the report pipe. */
struct child_failure {
        int stage;
        int error;
};

enum { STAGE_SETUP, STAGE_CHDIR, STAGE_EXEC };

struct spawn {
        char **argv;
        char **envp;
        const char *dir;
        rlim_t nofile;
        int in, out, err;       /* the child's ends */
        int report;
        pid_t parent;
};

static void fd_close(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

/* In the forked child: async-signal-safe calls only. */
static _Noreturn void child_exec(const struct spawn *s)
{
        struct child_failure f = { STAGE_SETUP, 0 };
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        struct rlimit nofile;
        sigset_t none;

        /* A worker gone before prctl() would leave the command orphaned. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != s->parent)
                goto fail;
        if (setpgid(0, 0) < 0)
                goto fail;
        for (int sig = 1; sig < NSIG; sig++)
                (void)sigaction(sig, &dfl, NULL);
        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
                goto fail;
        if (dup2(s->in, STDIN_FILENO) < 0 || dup2(s->out, STDOUT_FILENO) < 0 ||
            dup2(s->err, STDERR_FILENO) < 0)
                goto fail;
        /* Every fd is close-on-exec already; this covers an embedding
         * process that was less careful. Old kernels refuse it: harmless. */
        (void)close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
        if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && s->nofile < nofile.rlim_cur) {
                nofile.rlim_cur = s->nofile;
                if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
                        goto fail;
        }
        f.stage = STAGE_CHDIR;
        if (chdir(s->dir) < 0)
                goto fail;
        f.stage = STAGE_EXEC;
        execve(s->argv[0], s->argv, s->envp);
fail:
        f.error = errno;
        (void)!write(s->report, &f, sizeof(f));
        _exit(127);
}

static int set_nonblock(int fd)
{
        int flags = fcntl(fd, F_GETFL);

        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

/* Reads once, or until the pipe is empty when drain: 1 at end of file,
 * else 0 or -errno. Past the cap bytes are read and dropped. */
static int output_read(struct output *o, bool drain)
{
        char chunk[READ_CHUNK];

        do {
                ssize_t n = read(o->fd, chunk, sizeof(chunk));
                size_t keep;

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN ? 0 : -errno;
                }
                if (n == 0)
                        return 1;
                keep = (size_t)n < o->cap - o->len ? (size_t)n : o->cap - o->len;
                o->truncated |= keep < (size_t)n;
                if (o->len + keep > o->size) {
                        size_t size = o->size * 2 > o->len + keep ? o->size * 2 : o->len + keep;
                        char *p;

                        size = size < o->cap ? size : o->cap;
                        p = realloc(o->buf, size);
                        if (!p)
                                return -ENOMEM;
                        o->buf = p;
                        o->size = size;
                }
                if (keep)
                        memcpy(o->buf + o->len, chunk, keep);
                o->len += keep;
        } while (drain);
        return 0;
}

/* Handles a pipe's poll event; closes it at end of file. */
static int output_event(struct output *o)
{
        int r = output_read(o, false);

        if (r > 0)
                fd_close(&o->fd);
        return r < 0 ? r : 0;
}

static void input_write(struct input *in)
{
        size_t left = in->len - in->done;
        ssize_t n = left ? write(in->fd, in->data + in->done, left < READ_CHUNK ? left : READ_CHUNK)
                         : 0;

        if (n < 0 && (errno == EINTR || errno == EAGAIN))
                return;
        /* A command that stops reading (EPIPE) just gets no more. */
        if (n > 0)
                in->done += (size_t)n;
        if (n < 0 || in->done == in->len)
                fd_close(&in->fd);
}

static int poll_ms(double deadline)
{
        double left;

        if (deadline <= 0)
                return -1;
        left = deadline - task_monotonic();
        return left <= 0 ? 0 : left >= INT_MAX / 1000 ? INT_MAX : (int)(left * 1000) + 1;
}

/* Waits for the command's exit (0), the deadline (-ETIMEDOUT) or a stop
 * (-ECANCELED), moving data through the pipes meanwhile. */
static int command_wait(int pidfd, struct input *in, struct output *out, struct output *err,
                        double deadline)
{
        for (;;) {
                struct pollfd fds[] = {
                        { .fd = out->fd, .events = POLLIN },
                        { .fd = err->fd, .events = POLLIN },
                        { .fd = in->fd, .events = POLLOUT },
                        { .fd = stop_fd, .events = POLLIN },
                        { .fd = pidfd, .events = POLLIN },
                };
                int k = poll(fds, sizeof(fds) / sizeof(fds[0]), poll_ms(deadline));
                int r = 0;

                if (k < 0 && errno != EINTR)
                        return -errno;
                if (k > 0) {
                        if (fds[3].revents)
                                return -ECANCELED;
                        if (fds[0].revents)
                                r = output_event(out);
                        if (r == 0 && fds[1].revents)
                                r = output_event(err);
                        if (r < 0)
                                return r;
                        if (fds[2].revents)
                                input_write(in);
                        if (fds[4].revents)
                                return 0;
                }
                /* On every turn: a command that writes without pause would
                 * keep poll() from ever timing out. */
                if (deadline > 0 && task_monotonic() >= deadline)
                        return -ETIMEDOUT;
        }
}

static void reap(pid_t pid, int *ret_status)
{
        while (waitpid(pid, ret_status, 0) < 0 && errno == EINTR)
                ;
}

/* The run's outcome: 0 with the wait status, -ETIMEDOUT, -ECANCELED, or a
 * failure described in err. */
struct run {
        struct output out, err;
        int status;
};

/* Reaps the command's leader, whose pid names its group until then. The
 * daemon is told first that the group is gone (group_named(0)): once the
 * leader is reaped the number may name another group, which the daemon,
 * should this worker die before its reply, must not kill. */
static void reap_leader(pid_t pid, int *ret_status)
{
        if (group_named)
                group_named(0);
        reap(pid, ret_status);
}

static int command_run(char **argv, const json_t *stdin_arg, double deadline, struct run *run,
                       struct task_error *terr)
{
        int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, report[2] = { -1, -1 };
        struct input input = { .fd = -1 };
        struct child_failure f;
        pid_t self = getpid(), pid;
        int pidfd = -1, r;
        ssize_t n;

        if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
            pipe2(report, O_CLOEXEC) < 0) {
                r = task_fail(terr, "task_error", true, "cannot make pipes: %s", strerror(errno));
                goto out;
        }
        pid = fork();
        if (pid == 0)
                child_exec(&(struct spawn){ .argv = argv, .envp = settings.env,
                                            .nofile = settings.nofile,
                                            .dir = settings.work_dir, .in = in[0], .out = out[1],
                                            .err = err[1], .report = report[1],
                                            .parent = self });
        if (pid < 0) {
                r = task_fail(terr, "task_error", true, "cannot fork: %s", strerror(errno));
                goto out;
        }
        /* The child makes its own group too; whichever comes first, the
         * group exists before it is named. */
        (void)setpgid(pid, pid);
        if (group_named)
                group_named(pid);
        fd_close(&in[0]);
        fd_close(&out[1]);
        fd_close(&err[1]);
        fd_close(&report[1]);
        /* Blocks only until the child's execve or its failure report. */
        while ((n = read(report[0], &f, sizeof(f))) < 0 && errno == EINTR)
                ;
        if (n == sizeof(f)) {
                reap_leader(pid, &run->status);
                r = task_fail(terr, "task_error", false, "%s %s: %s",
                              f.stage == STAGE_EXEC ? "cannot execute" :
                              f.stage == STAGE_CHDIR ? "cannot enter work_dir for" :
                                                       "cannot set up",
                              argv[0], strerror(f.error));
                goto out;
        }

        pidfd = pidfd_open(pid, 0);
        r = pidfd < 0 ? -errno : 0;
        input = (struct input){ .fd = in[1], .data = json_string_value(stdin_arg),
                                .len = json_string_length(stdin_arg) };
        in[1] = -1;
        run->out.fd = out[0];
        run->err.fd = err[0];
        out[0] = err[0] = -1;
        if (!stdin_arg)
                fd_close(&input.fd);
        if (r == 0 && input.fd >= 0)
                r = set_nonblock(input.fd);
        if (r == 0)
                r = set_nonblock(run->out.fd);
        if (r == 0)
                r = set_nonblock(run->err.fd);
        if (r == 0)
                r = command_wait(pidfd, &input, &run->out, &run->err, deadline);
        /* The group is the command's: it ends with the run. The leader is
         * not reaped yet, so its pid cannot name another group. */
        (void)kill(-pid, SIGKILL);
        if (r == 0 && run->out.fd >= 0)
                r = output_read(&run->out, true);
        if (r >= 0 && run->err.fd >= 0)
                r = output_read(&run->err, true);
        reap_leader(pid, &run->status);
        if (r > 0)
                r = 0;
        if (r == -ETIMEDOUT)
                r = task_fail(terr, "timeout", true, "timed out; command killed");
        else if (r == -ECANCELED)
                r = task_fail(terr, "cancelled", false, "stopped; command killed");
        else if (r < 0)
                r = task_fail(terr, "task_error", true, "running %s: %s", argv[0], strerror(-r));
out:
        fd_close(&pidfd);
        fd_close(&input.fd);
        fd_close(&run->out.fd);
        fd_close(&run->err.fd);
        for (int i = 0; i < 2; i++) {
                fd_close(&in[i]);
                fd_close(&out[i]);
                fd_close(&err[i]);
                fd_close(&report[i]);
        }
        return r;
}

/* A cut at the cap may split a UTF-8 sequence: drops its start, so text
 * stays text. */
static size_t utf8_trim(const char *s, size_t len)
{
        size_t i = len, cont = 0, need;
        unsigned char lead;

        while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
                i--;
                cont++;
        }
        if (i == 0)
                return len;
        lead = (unsigned char)s[i - 1];
        need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        return cont + 1 < need ? i - 1 : len;
}

/* Puts a stream into o as key (text), or key_base64 when it is not UTF-8,
 * and key_truncated when it was capped. */
static int output_put(json_t *o, const char *key, const struct output *out)
{
        const char *data = out->buf ? out->buf : "";
        size_t len = out->truncated ? utf8_trim(data, out->len) : out->len;
        json_t *v = json_stringn(data, len);
        char name[32];
        char *b64;

        if (v) {
                if (json_object_set_new(o, key, v) < 0)
                        return -ENOMEM;
        } else {
                b64 = base64_encode(data, out->len);
                v = b64 ? json_string(b64) : NULL;
                free(b64);
                snprintf(name, sizeof(name), "%s_base64", key);
                if (!v || json_object_set_new(o, name, v) < 0)
                        return -ENOMEM;
        }
        snprintf(name, sizeof(name), "%s_truncated", key);
        if (out->truncated && json_object_set_new(o, name, json_true()) < 0)
                return -ENOMEM;
        return 0;
}

/* {exit_code or signal, stdout or json, stderr}; the caller's. */
static json_t *run_result(const struct command *c, const struct run *run)
{
        json_t *o = json_object(), *parsed = NULL;
        int status = run->status;

        if (!o)
                return NULL;
        if (c->json && !run->out.truncated)
                parsed = jsontext_load_output(run->out.buf ? run->out.buf : "", run->out.len);
        if (json_object_set_new(o, WIFSIGNALED(status) ? "signal" : "exit_code",
                                json_integer(WIFSIGNALED(status) ? WTERMSIG(status)
                                                                  : WEXITSTATUS(status))) < 0 ||
            (parsed ? json_object_set_new(o, "json", parsed) : output_put(o, "stdout", &run->out)) < 0 ||
            output_put(o, "stderr", &run->err) < 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

static int exec_run(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                    struct task_error *err)
{
        struct run run = {
                .out = { .fd = -1, .cap = settings.max_output },
                .err = { .fd = -1, .cap = settings.max_output },
        };
        const struct command *c;
        json_t *result = NULL;
        char **argv = NULL, msg[sizeof(err->message)];
        int r, status;

        /* The job may have been stored under another configuration. */
        r = args_argv(args, &c, &argv, msg, sizeof(msg));
        if (r == -EINVAL)
                return task_fail(err, "task_error", false, "%s", msg);
        if (r < 0)
                return task_fail(err, "task_error", true, "cannot build the arguments: %s",
                                 strerror(-r));
        r = command_run(argv, json_object_get(args, "stdin"), task_ctx_deadline(ctx), &run, err);
        if (r < 0)
                goto out;
        result = run_result(c, &run);
        if (!result) {
                r = task_fail(err, "task_error", false, "out of memory");
                goto out;
        }
        status = run.status;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                *ret_result = result;
                goto out;
        }
        if (WIFSIGNALED(status)) {
                const char *abbrev = sigabbrev_np(WTERMSIG(status));

                r = task_fail(err, "exit_status", false, "%s killed by signal %d (SIG%s)", argv[0],
                              WTERMSIG(status), abbrev ? abbrev : "?");
        } else {
                r = task_fail(err, "exit_status", false, "%s exited with status %d", argv[0],
                              WEXITSTATUS(status));
        }
        err->detail = result;
out:
        words_free(argv);
        free(run.out.buf);
        free(run.err.buf);
        return r;
}

const struct task task_exec = {
        .name = "exec",
        .description = "Runs a command named in the configuration: command, a value for each of "
                       "its {placeholders} (each one argv element), optional stdin. Result: "
                       "exit_code, stdout, stderr (capped), json when configured. A non-zero "
                       "exit fails with exit_status.",
        .kinds = 1u << JOB_KIND_CPU,
        .default_kind = JOB_KIND_CPU,
        .default_max_attempts = 1,
        .params = NULL,
        .validate = exec_validate,
        .run = exec_run,
};
