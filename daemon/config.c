/* Settings: one table of keys drives the INI file, the flags and --help.
 *
 * A key "io_threads" in section [pools] is the flag --io-threads; names are
 * unique across sections so that mapping is one-to-one. Values are checked
 * against the key's bounds wherever they come from, and the first bad one
 * stops the daemon with "where: what" before anything starts.
 *
 * [commands] is the one section of free keys: each is an exec command's
 * name, only from the file (a flag per command would make no sense). */
#include "daemon/config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/log.h"
#include "tasks/exec.h"

/* The longest line of the config file inih reads whole (see
 * config_check_lines()). */
#define CONFIG_LINE_MAX 198

enum cfg_type { CFG_STRING, CFG_TEXT, CFG_UINT, CFG_SIZE, CFG_SECONDS, CFG_SYNC, CFG_LOG_LEVEL };

struct cfg_key {
        const char *section;
        const char *name;
        enum cfg_type type;
        size_t offset;
        size_t size;            /* CFG_STRING, CFG_TEXT (may be empty): the buffer's size */
        double min, max;
        const char *help;
};

#define KEY(sec, field, t, lo, hi, h) \
        { sec, #field, t, offsetof(struct config, field), \
          sizeof(((struct config *)0)->field), lo, hi, h }

static const struct cfg_key cfg_keys[] = {
        KEY("server", listen, CFG_STRING, 0, 0,
            "ADDR:PORT or unix:PATH to listen on"),
        KEY("server", http_threads, CFG_UINT, 1, 64, "HTTP worker threads"),
        KEY("server", max_connections, CFG_UINT, 1, 1000000, "open connections at most"),
        KEY("server", connection_timeout, CFG_UINT, 1, 86400,
            "seconds a silent client keeps its connection"),
        KEY("server", max_body, CFG_SIZE, 1024, 1073741824.0,
            "largest request body in bytes (K, M, G suffixes)"),
        KEY("server", max_wait, CFG_SECONDS, 0, 86400,
            "longest GET /v1/jobs/ID?wait= in seconds; caps POST /v1/wait's timeout"),
        KEY("server", tokens_file, CFG_TEXT, 0, 0,
            "file of bearer tokens, one a line; empty: no authentication"),
        KEY("server", tls_cert, CFG_TEXT, 0, 0, "PEM certificate file; with tls_key: HTTPS"),
        KEY("server", tls_key, CFG_TEXT, 0, 0, "PEM private key file of tls_cert"),
        KEY("store", db, CFG_STRING, 0, 0, "SQLite database file"),
        KEY("store", sync_full, CFG_SYNC, 0, 0,
            "full (survives power loss) or normal (survives a crash)"),
        KEY("pools", io_threads, CFG_UINT, 1, 4096, "I/O pool threads"),
        KEY("pools", cpu_workers, CFG_UINT, 1, 1024, "CPU worker processes"),
        KEY("jobs", default_timeout, CFG_SECONDS, 0.001, 86400,
            "timeout of a job that gives none, in seconds"),
        KEY("jobs", max_pending, CFG_SIZE, 1, 1e9, "pending jobs at most before 429"),
        KEY("jobs", retry_base, CFG_SECONDS, 0.001, 3600, "first retry backoff in seconds"),
        KEY("jobs", retry_max, CFG_SECONDS, 0.001, 86400, "longest retry backoff in seconds"),
        KEY("jobs", shutdown_grace, CFG_SECONDS, 0, 3600,
            "seconds running jobs get to finish at shutdown"),
        KEY("jobs", retention, CFG_SECONDS, 1, 3153600000.0,
            "seconds finished jobs and batches are kept before they are purged"),
        KEY("jobs", max_batch_items, CFG_SIZE, 1, 1e9, "items in one batch at most"),
        KEY("log", log_level, CFG_LOG_LEVEL, 0, 0, "error, warning, notice, info or debug"),
        KEY("http", max_response, CFG_SIZE, 1024, 1073741824.0,
            "largest response an http job takes, in bytes (K, M, G suffixes)"),
        KEY("http", host_concurrency, CFG_UINT, 0, 100000,
            "http jobs in flight to one host at most; 0: no limit"),
        KEY("http", host_per_second, CFG_SECONDS, 0, 1e6,
            "http jobs started per second to one host at most; 0: no limit"),
        KEY("openai", base_url, CFG_TEXT, 0, 0,
            "where ?format=openai batches send their requests (e.g. https://api.openai.com)"),
        KEY("http", allow, CFG_TEXT, 0, 0,
            "URL prefixes http jobs may call, space-separated; empty: any"),
        KEY("http", auth, CFG_TEXT, 0, 0,
            "HOST=FILE pairs: the Authorization sent to HOST when a job gives none"),
        KEY("exec", work_dir, CFG_STRING, 0, 0,
            "working directory of exec commands (default: the daemon's)"),
        KEY("exec", environment, CFG_TEXT, 0, 0,
            "the whole environment of exec commands: NAME=VALUE words"),
        KEY("exec", max_output, CFG_SIZE, 1024, 4194304.0,
            "bytes kept of an exec command's stdout, and of its stderr (K, M suffixes)"),
        KEY("exec", json_output, CFG_TEXT, 0, 0,
            "exec commands whose stdout is parsed as JSON, space-separated"),
};

#define N_KEYS (sizeof(cfg_keys) / sizeof(cfg_keys[0]))

/* The config file key of sync_full reads better as "synchronous". */
static const char *key_name(const struct cfg_key *k)
{
        return k->type == CFG_SYNC ? "synchronous" : k->name;
}

void config_defaults(struct config *ret)
{
        long cores = sysconf(_SC_NPROCESSORS_ONLN);

        if (cores < 1)
                cores = 1;
        *ret = (struct config){
                .listen = "127.0.0.1:7700",
                .db = "futured.db",
                .http_threads = 2,
                .max_connections = 4096,
                .connection_timeout = 60,
                .max_body = 1 << 20,
                .max_wait = 300,
                .sync_full = true,
                /* I/O-bound work waits, so it wants a multiple of the cores;
                 * CPU-bound work wants exactly one process per core. */
                .io_threads = (unsigned)(4 * cores),
                .cpu_workers = (unsigned)cores,
                .default_timeout = 300,
                .max_pending = 1000000,
                .retry_base = 1,
                .retry_max = 300,
                .shutdown_grace = 10,
                .retention = 7 * 24 * 3600,
                .max_batch_items = 10000000,
                .log_level = LOG_INFO,
                .max_response = 16 << 20,
                .environment = EXEC_ENVIRONMENT_DEFAULT,
                .max_output = EXEC_MAX_OUTPUT_DEFAULT,
        };
}

/* Plain decimal only, digits with a fraction when fraction is true:
 * strtod() would also take " 8", "+8", "0x10", "1e3" and "inf". */
static int parse_number(const char *v, bool fraction, bool size_suffix, double *ret)
{
        static const char digits[] = "0123456789";
        size_t n = strspn(v, digits), frac;
        char *end;
        double d;

        if (n == 0)
                return -EINVAL;
        if (fraction && v[n] == '.') {
                frac = strspn(v + n + 1, digits);
                if (frac == 0)
                        return -EINVAL;
                n += 1 + frac;
        }
        errno = 0;
        d = strtod(v, &end);
        if (errno != 0 || !isfinite(d) || end != v + n)
                return -EINVAL;
        if (size_suffix && *end) {
                static const char suffixes[] = "KMG";
                const char *p = strchr(suffixes, *end);

                if (!p || !*p)
                        return -EINVAL;
                d *= (double)(1ull << (10 * (p - suffixes + 1)));
                end++;
        }
        if (*end)
                return -EINVAL;
        *ret = d;
        return 0;
}

/* Stores value v into the key's field; on error fills err with what is wrong. */
static int key_set(const struct cfg_key *k, struct config *c, const char *v, char *err,
                   size_t errlen)
{
        char *field = (char *)c + k->offset;
        double d = 0;
        int r;

        switch (k->type) {
        case CFG_STRING:
        case CFG_TEXT:
                if ((k->type == CFG_STRING && !*v) || strlen(v) >= k->size) {
                        snprintf(err, errlen, "%s must be %d to %zu characters", key_name(k),
                                 k->type == CFG_STRING, k->size - 1);
                        return -EINVAL;
                }
                memcpy(field, v, strlen(v) + 1);
                return 0;
        case CFG_SYNC:
                if (strcmp(v, "full") != 0 && strcmp(v, "normal") != 0) {
                        snprintf(err, errlen, "synchronous must be full or normal, not '%s'", v);
                        return -EINVAL;
                }
                *(bool *)field = strcmp(v, "full") == 0;
                return 0;
        case CFG_LOG_LEVEL:
                r = log_level_parse(v);
                if (r < 0) {
                        snprintf(err, errlen,
                                 "log_level must be error, warning, notice, info or debug, not '%s'",
                                 v);
                        return r;
                }
                *(int *)field = r;
                return 0;
        case CFG_UINT:
        case CFG_SIZE:
        case CFG_SECONDS:
                break;
        }

        r = parse_number(v, k->type != CFG_UINT, k->type == CFG_SIZE, &d);
        if (r == 0 && k->type != CFG_SECONDS && d != floor(d))
                r = -EINVAL;
        if (r < 0 || d < k->min || d > k->max) {
                snprintf(err, errlen, "%s must be %s from %.15g to %.15g, not '%s'", key_name(k),
                         k->type == CFG_SECONDS ? "a number" : "an integer", k->min, k->max, v);
                return -EINVAL;
        }
        if (k->type == CFG_UINT)
                *(unsigned *)field = (unsigned)d;
        else if (k->type == CFG_SIZE)
                *(size_t *)field = (size_t)d;
        else
                *(double *)field = d;
        return 0;
}

struct ini_state {
        struct config *config;
        char *err;
        size_t errlen;
};

static int config_add_command(struct config *c, const char *name, const char *value, char *err,
                              size_t errlen)
{
        struct config_command *cmd = &c->commands[c->n_commands];

        for (unsigned i = 0; i < c->n_commands; i++) {
                if (strcmp(c->commands[i].name, name) == 0) {
                        snprintf(err, errlen, "command '%s' is defined twice", name);
                        return -EINVAL;
                }
        }
        if (c->n_commands == CONFIG_COMMANDS_MAX) {
                snprintf(err, errlen, "more than %d commands", CONFIG_COMMANDS_MAX);
                return -EINVAL;
        }
        if (strlen(name) >= sizeof(cmd->name) || !*value || strlen(value) >= sizeof(cmd->template)) {
                snprintf(err, errlen, "command '%.64s': a name of at most %zu and a template of 1 to "
                         "%zu characters", name, sizeof(cmd->name) - 1, sizeof(cmd->template) - 1);
                return -EINVAL;
        }
        memcpy(cmd->name, name, strlen(name) + 1);
        memcpy(cmd->template, value, strlen(value) + 1);
        c->n_commands++;
        return 0;
}

static int config_line_apply(struct config *c, const char *section, const char *name,
                             const char *value, char *err, size_t errlen)
{
        if (strcmp(section, "commands") == 0)
                return config_add_command(c, name, value, err, errlen);

        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(section, cfg_keys[i].section) == 0 &&
                    strcmp(name, key_name(&cfg_keys[i])) == 0)
                        return key_set(&cfg_keys[i], c, value, err, errlen);
        snprintf(err, errlen, "unknown key '%s' in section [%s]", name, section);
        return -EINVAL;
}

/* inih goes on after an error and returns the first one's line: the
 * message kept is the first one's too. */
static int config_ini_line(void *user, const char *section, const char *name, const char *value)
{
        struct ini_state *st = user;
        char why[256];

        if (config_line_apply(st->config, section, name, value, why, sizeof(why)) == 0)
                return 1;
        if (!st->err[0])
                snprintf(st->err, st->errlen, "%s", why);
        return 0;
}

/* inih reads a line into a buffer of INI_MAX_LINE (200, as Debian builds
 * it), newline and NUL included, and parses the rest of a longer line as
 * a line of its own, and a NUL byte ends its line: such lines are refused
 * here, before they are misread, as is an unclosed section header. 0, or
 * -EINVAL with err filled (1-based line numbers). */
static int config_check_lines(FILE *f, const char *path, char *err, size_t errlen)
{
        size_t cap = 0, len;
        char *line = NULL;
        ssize_t n;
        int r = 0;

        for (int no = 1; r == 0 && (n = getline(&line, &cap, f)) >= 0; no++) {
                len = (size_t)n;
                while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                        len--;
                if (len > CONFIG_LINE_MAX) {
                        snprintf(err, errlen, "%s:%d: a line of %zu characters; at most %d are read "
                                 "(give a longer value as a flag)", path, no, len, CONFIG_LINE_MAX);
                        r = -EINVAL;
                } else if (memchr(line, '\0', len)) {
                        snprintf(err, errlen, "%s:%d: a NUL byte", path, no);
                        r = -EINVAL;
                } else if (line[0] == '[' && !memchr(line, ']', len)) {
                        /* inih would go on under section "", and the
                         * message kept would be of a later line's key. */
                        snprintf(err, errlen, "%s:%d: a section header without ']'", path, no);
                        r = -EINVAL;
                }
        }
        if (r == 0 && ferror(f)) {
                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
                r = -EINVAL;
        }
        free(line);
        return r;
}

static int config_load_file(const char *path, struct config *c, char *err, size_t errlen)
{
        char why[256] = "";
        struct ini_state st = { c, why, sizeof(why) };
        FILE *f = fopen(path, "re");
        struct stat sb;
        int line, r;

        if (!f) {
                snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
                return -EINVAL;
        }
        /* A directory opens, and reads as an empty file. */
        if (fstat(fileno(f), &sb) == 0 && !S_ISREG(sb.st_mode)) {
                fclose(f);
                snprintf(err, errlen, "%s: not a regular file", path);
                return -EINVAL;
        }
        r = config_check_lines(f, path, err, errlen);
        if (r < 0) {
                fclose(f);
                return r;
        }
        rewind(f);
        line = ini_parse_file(f, config_ini_line, &st);
        fclose(f);
        if (line != 0) {
                snprintf(err, errlen, "%s:%d: %s", path, line, why[0] ? why : "syntax error");
                return -EINVAL;
        }
        return 0;
}

static void config_usage(void)
{
        printf("Usage: futured [-c FILE] [OPTION...]\n"
               "Runs jobs submitted as JSON over HTTP, durably, in the foreground.\n\n"
               "  -c, --config FILE         read settings from this INI file first\n"
               "  -h, --help                show this help and exit\n"
               "  -V, --version             show the version and exit\n");
        for (size_t i = 0; i < N_KEYS; i++) {
                char flag[64];

                snprintf(flag, sizeof(flag), "--%s", key_name(&cfg_keys[i]));
                for (char *p = flag; *p; p++)
                        if (*p == '_')
                                *p = '-';
                printf("      %-20s  [%s] %s: %s\n", flag, cfg_keys[i].section,
                       key_name(&cfg_keys[i]), cfg_keys[i].help);
        }
        printf("\nFlags win over the file; the file wins over the defaults.\n");
}

int config_parse(int argc, char **argv, struct config *ret, char *err, size_t errlen)
{
        /* Flag names live in a static buffer that getopt keeps pointing at. */
        static char names[N_KEYS][64];
        struct option opts[N_KEYS + 4];
        const char *config_file = NULL;
        struct config c;
        int r, o;

        config_defaults(&c);
        for (size_t i = 0; i < N_KEYS; i++) {
                snprintf(names[i], sizeof(names[i]), "%s", key_name(&cfg_keys[i]));
                for (char *p = names[i]; *p; p++)
                        if (*p == '_')
                                *p = '-';
                opts[i] = (struct option){ names[i], required_argument, NULL, 256 + (int)i };
        }
        opts[N_KEYS] = (struct option){ "config", required_argument, NULL, 'c' };
        opts[N_KEYS + 1] = (struct option){ "help", no_argument, NULL, 'h' };
        opts[N_KEYS + 2] = (struct option){ "version", no_argument, NULL, 'V' };
        opts[N_KEYS + 3] = (struct option){ 0 };

        /* First pass: only -c, -h and -V, so the file is read before the
         * flags that override it. */
        opterr = 0;
        optind = 1;
        while ((o = getopt_long(argc, argv, "+:c:hV", opts, NULL)) != -1) {
                switch (o) {
                case 'c':
                        config_file = optarg;
                        break;
                case 'h':
                        config_usage();
                        return 1;
                case 'V':
                        printf("futured %s\n", PACKAGE_VERSION);
                        return 1;
                case '?':
                        if (optopt)
                                snprintf(err, errlen, "unknown option '-%c' (see --help)", optopt);
                        else
                                snprintf(err, errlen, "unknown option '%s' (see --help)",
                                         argv[optind - 1]);
                        return -EINVAL;
                case ':':
                        snprintf(err, errlen, "option '%s' needs a value", argv[optind - 1]);
                        return -EINVAL;
                default:
                        break;
                }
        }
        if (optind < argc) {
                snprintf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
                return -EINVAL;
        }
        if (config_file) {
                r = config_load_file(config_file, &c, err, errlen);
                if (r < 0)
                        return r;
        }

        optind = 1;
        while ((o = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
                char why[256];

                if (o < 256)
                        continue;
                r = key_set(&cfg_keys[o - 256], &c, optarg, why, sizeof(why));
                if (r < 0) {
                        snprintf(err, errlen, "--%s: %s", names[o - 256], why);
                        return r;
                }
        }
        if (c.retry_base > c.retry_max) {
                snprintf(err, errlen, "retry_base (%g) must not exceed retry_max (%g)",
                         c.retry_base, c.retry_max);
                return -EINVAL;
        }
        *ret = c;
        return 0;
}

static bool key_equal(const struct cfg_key *k, const struct config *a, const struct config *b)
{
        const char *fa = (const char *)a + k->offset, *fb = (const char *)b + k->offset;

        switch (k->type) {
        case CFG_STRING:
        case CFG_TEXT:
                return strcmp(fa, fb) == 0;
        case CFG_SECONDS:
                return *(const double *)fa == *(const double *)fb;
        case CFG_UINT:
        case CFG_SIZE:
        case CFG_SYNC:
        case CFG_LOG_LEVEL:
                break;
        }
        return memcmp(fa, fb, k->size) == 0;
}

static bool commands_equal(const struct config *a, const struct config *b)
{
        if (a->n_commands != b->n_commands)
                return false;
        for (unsigned i = 0; i < a->n_commands; i++)
                if (strcmp(a->commands[i].name, b->commands[i].name) != 0 ||
                    strcmp(a->commands[i].template, b->commands[i].template) != 0)
                        return false;
        return true;
}

size_t config_diff(const struct config *a, const struct config *b, const char **ret, size_t n)
{
        size_t count = 0;

        for (size_t i = 0; i < N_KEYS; i++) {
                if (key_equal(&cfg_keys[i], a, b))
                        continue;
                if (count < n)
                        ret[count] = key_name(&cfg_keys[i]);
                count++;
        }
        if (!commands_equal(a, b)) {
                if (count < n)
                        ret[count] = "commands";
                count++;
        }
        return count;
}
