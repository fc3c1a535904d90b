/* tasks/exec.c: templates are checked at configuration, a placeholder's
 * value is exactly one argv element whatever it holds, clients cannot name
 * what is not configured, output is capped and typed, a non-zero exit or a
 * signal fails with exit_status, and a deadline or a stop kills the
 * command's whole process group. The commands really run, in this process's
 * children, as they would in a CPU worker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "tasks/exec.h"
#include "tasks/task.h"

#define MAX_OUTPUT 1024
/* Longer than any fixed buffer a name could be copied into. */
#define LONG_NAME "a_placeholder_name_well_past_sixty_three_bytes_as_an_operator_may_write_it"

static const struct exec_command commands[] = {
        { "args", "/usr/bin/printf \"[%s]\\n\" {a} x{b}y {{lit}} {a}" },
        { "affix", "/usr/bin/printf \"[%s]\\n\" {p}x x{q} {r}{s} {t}-n" },
        { "long", "/bin/echo {" LONG_NAME "}" },
        { "cat", "/bin/cat" },
        { "json", "/bin/cat" },
        { "sh", "/bin/sh -c {script}" },
        { "zeros", "/usr/bin/head -c {n} /dev/zero" },
        { "pwd", "/bin/sh -c \"pwd; echo $GREETING; env | wc -l\"" },
};

static char dir[] = "/tmp/futured-test-exec-XXXXXX";

static void configure(void)
{
        char err[256] = "";
        int r = exec_configure(&(struct exec_options){
                                       .commands = commands,
                                       .n_commands = sizeof(commands) / sizeof(commands[0]),
                                       .json_output = "json",
                                       .work_dir = dir,
                                       .environment = "PATH=/usr/bin:/bin \"GREETING=hello world\"",
                                       .max_output = MAX_OUTPUT,
                               },
                               err, sizeof(err));

        if (r < 0)
                fail_msg("exec_configure: %s", err);
}

static int setup(void **state)
{
        /* Writes to a command's stdin must fail, not kill, as in a worker. */
        signal(SIGPIPE, SIG_IGN);
        if (!mkdtemp(dir))
                return -1;
        configure();
        return 0;
}

static int teardown(void **state)
{
        exec_cleanup();
        return rmdir(dir);
}

static const struct task *exec_task(void)
{
        const struct task *t = task_find("exec");

        assert_non_null(t);
        return t;
}

static int validate(const char *args_text, char *msg, size_t msglen)
{
        json_t *args = json_loads(args_text, JSON_ALLOW_NUL, NULL);
        int r;

        assert_non_null(args);
        r = exec_task()->validate(args, msg, msglen);
        json_decref(args);
        return r;
}

/* Runs args (validated first) with a deadline seconds away; returns run()'s
 * value, the result or the error's detail in *ret (the caller's). */
static int run(const char *args_text, double seconds, json_t **ret, struct task_error *err)
{
        json_t *args = json_loads(args_text, 0, NULL), *result = NULL;
        struct task_ctx *ctx;
        char msg[256];
        int r;

        assert_non_null(args);
        if (exec_task()->validate(args, msg, sizeof(msg)) < 0)
                fail_msg("validate(%s): %s", args_text, msg);
        assert_int_equal(task_ctx_new(task_monotonic() + seconds, &ctx), 0);
        *err = (struct task_error){ .type = "task_error" };
        r = exec_task()->run(ctx, args, &result, err);
        task_ctx_free(ctx);
        json_decref(args);
        *ret = r == 0 ? result : err->detail;
        err->detail = NULL;
        return r;
}

static json_t *run_ok(const char *args_text)
{
        struct task_error err;
        json_t *result;

        if (run(args_text, 10, &result, &err) < 0)
                fail_msg("%s failed: %s: %s", args_text, err.type, err.message);
        assert_int_equal(json_integer_value(json_object_get(result, "exit_code")), 0);
        return result;
}

static const char *str(const json_t *o, const char *key)
{
        const char *s = json_string_value(json_object_get(o, key));

        if (!s)
                fail_msg("no string \"%s\"", key);
        return s;
}

static void assert_refused(const char *name, const char *template, const char *why)
{
        struct exec_command c = { name, template };
        char err[256] = "";

        assert_int_equal(exec_configure(&(struct exec_options){ .commands = &c, .n_commands = 1 },
                                        err, sizeof(err)),
                         -EINVAL);
        if (!strstr(err, why))
                fail_msg("template %s: \"%s\" does not say \"%s\"", template, err, why);
}

static void test_bad_templates(void **state)
{
        assert_refused("x", "/bin/echo {a", "brace");
        assert_refused("x", "/bin/echo a}b", "brace");
        assert_refused("x", "/bin/echo {1a}", "brace");
        assert_refused("x", "/bin/echo {a-b}", "brace");
        assert_refused("x", "/bin/echo {}", "brace");
        assert_refused("x", "/bin/echo {stdin}", "reserved");
        assert_refused("x", "/bin/echo \"a b", "double quote");
        assert_refused("x", "/bin/echo a\"b\"", "double quote");
        assert_refused("x", "echo {a}", "absolute path");
        assert_refused("x", "/bin/{a}", "absolute path");
        assert_refused("x", "", "absolute path");
        assert_refused("x", "/nonexistent/tool", "No such file");
        assert_refused("a b", "/bin/echo", "command name");
        /* A refused configuration leaves the previous one in place. */
        assert_int_equal(validate("{\"command\": \"cat\"}", (char[64]){ 0 }, 64), 0);
}

static void test_bad_settings(void **state)
{
        struct exec_command two[] = { { "x", "/bin/echo" }, { "x", "/bin/cat" } };
        char err[256] = "";

        assert_int_equal(exec_configure(&(struct exec_options){ .commands = two, .n_commands = 2 },
                                        err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "twice"));
        assert_int_equal(exec_configure(&(struct exec_options){ .commands = two, .n_commands = 1,
                                                                .json_output = "y" },
                                        err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "json_output"));
        assert_int_equal(exec_configure(&(struct exec_options){ .environment = "PATH" },
                                        err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "NAME=VALUE"));
        assert_int_equal(exec_configure(&(struct exec_options){ .work_dir = "/nonexistent" },
                                        err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "work_dir"));
        assert_int_equal(exec_configure(&(struct exec_options){ .work_dir = "relative" },
                                        err, sizeof(err)), -EINVAL);
        /* A check (a reload's) says the same and changes nothing, good or
         * bad: the configured commands still run. */
        assert_int_equal(exec_configure(&(struct exec_options){ .commands = two, .n_commands = 2,
                                                                .check_only = true },
                                        err, sizeof(err)), -EINVAL);
        assert_int_equal(exec_configure(&(struct exec_options){ .commands = two, .n_commands = 1,
                                                                .check_only = true },
                                        err, sizeof(err)), 0);
        json_decref(run_ok("{\"command\": \"cat\", \"stdin\": \"still configured\"}"));
}

static void assert_invalid(const char *args, const char *why)
{
        char msg[256] = "";

        assert_int_equal(validate(args, msg, sizeof(msg)), -EINVAL);
        if (!strstr(msg, why))
                fail_msg("%s: \"%s\" does not say \"%s\"", args, msg, why);
}

static void test_validate(void **state)
{
        char msg[256];

        assert_invalid("{}", "one of: args, affix, long, cat, json, sh, zeros, pwd");
        assert_invalid("{\"command\": \"rm\"}", "one of:");
        assert_invalid("{\"command\": 1}", "one of:");
        assert_invalid("{\"command\": \"args\", \"a\": \"1\"}", "missing parameter \"b\"");
        assert_invalid("{\"command\": \"args\", \"a\": \"1\", \"b\": \"2\", \"c\": 3}",
                       "unknown args field \"c\"");
        assert_invalid("{\"command\": \"cat\", \"path\": \"/etc/passwd\"}", "unknown args field");
        assert_invalid("{\"command\": \"cat\", \"stdin\": 5}", "stdin must be a string");
        assert_invalid("{\"command\": \"args\", \"a\": true, \"b\": \"2\"}", "string or an integer");
        assert_invalid("{\"command\": \"args\", \"a\": \"x\\u0000y\", \"b\": \"2\"}", "NUL");
        /* A value that would begin its argv element with '-' must not pass
         * for an option; after a literal it can do no harm. */
        assert_invalid("{\"command\": \"args\", \"a\": \"-rf\", \"b\": \"2\"}", "start with '-'");
        assert_invalid("{\"command\": \"args\", \"a\": -1, \"b\": \"2\"}", "start with '-'");
        assert_int_equal(validate("{\"command\": \"args\", \"a\": \"1\", \"b\": \"-2\"}", msg,
                                  sizeof(msg)), 0);
        assert_int_equal(validate("{\"command\": \"args\", \"a\": 7, \"b\": -2}", msg, sizeof(msg)), 0);
}

/* {p}x with "-a" would be the option -ax; x{q} with "-a" is x-a; {r}{s}
 * with r empty would start with s; {t}-n with t empty would be -n. */
static void test_leading_placeholder(void **state)
{
        char msg[256];
        json_t *r;

        assert_invalid("{\"command\": \"affix\", \"p\": \"-a\", \"q\": \"b\", \"r\": \"c\", "
                       "\"s\": \"d\", \"t\": \"e\"}", "\"{p}x\" start with '-'");
        assert_invalid("{\"command\": \"affix\", \"p\": -1, \"q\": \"b\", \"r\": \"c\", "
                       "\"s\": \"d\", \"t\": \"e\"}", "\"{p}x\" start with '-'");
        assert_invalid("{\"command\": \"affix\", \"p\": \"a\", \"q\": \"b\", \"r\": \"\", "
                       "\"s\": \"-d\", \"t\": \"e\"}", "\"{r}{s}\" start with '-'");
        assert_invalid("{\"command\": \"affix\", \"p\": \"a\", \"q\": \"b\", \"r\": \"c\", "
                       "\"s\": \"d\", \"t\": \"\"}", "\"{t}-n\" start with '-'");
        assert_int_equal(validate("{\"command\": \"affix\", \"p\": \"a\", \"q\": \"-a\", "
                                  "\"r\": \"c\", \"s\": \"d\", \"t\": \"e\"}", msg, sizeof(msg)), 0);
        assert_int_equal(validate("{\"command\": \"affix\", \"p\": 7, \"q\": -2, \"r\": \"c\", "
                                  "\"s\": \"d\", \"t\": 1}", msg, sizeof(msg)), 0);

        r = run_ok("{\"command\": \"affix\", \"p\": \"a\", \"q\": \"-a\", \"r\": \"\", "
                   "\"s\": \"d\", \"t\": \"e\"}");
        assert_string_equal(str(r, "stdout"), "[ax]\n[x-a]\n[d]\n[e-n]\n");
        json_decref(r);
}

/* A placeholder name has no length limit but the template's. */
static void test_long_placeholder(void **state)
{
        json_t *r = run_ok("{\"command\": \"long\", \"" LONG_NAME "\": \"value\"}");

        assert_string_equal(str(r, "stdout"), "value\n");
        json_decref(r);
}

/* Spaces, quotes, globs, $ and a newline stay inside one argument. */
static void test_one_argument(void **state)
{
        json_t *r = run_ok("{\"command\": \"args\", \"a\": \"it's a \\\"b c\\\" *; $HOME\\n2\", "
                           "\"b\": -5}");

        assert_string_equal(str(r, "stdout"),
                            "[it's a \"b c\" *; $HOME\n2]\n[x-5y]\n[{lit}]\n[it's a \"b c\" *; $HOME\n2]\n");
        assert_string_equal(str(r, "stderr"), "");
        json_decref(r);
}

static void test_stdin_env_dir(void **state)
{
        char expect[128];
        json_t *r = run_ok("{\"command\": \"cat\", \"stdin\": \"line 1\\nline 2\\n\"}");

        assert_string_equal(str(r, "stdout"), "line 1\nline 2\n");
        json_decref(r);
        /* The configured directory and environment, and nothing else. */
        r = run_ok("{\"command\": \"pwd\"}");
        snprintf(expect, sizeof(expect), "%s\nhello world\n", dir);
        assert_non_null(strstr(str(r, "stdout"), expect));
        assert_non_null(strstr(str(r, "stdout"), "world\n3\n"));       /* PATH, GREETING, PWD */
        json_decref(r);
}

static void test_json_output(void **state)
{
        json_t *r = run_ok("{\"command\": \"json\", \"stdin\": \"{\\\"a\\\": [1, 2]}\\n\"}");

        assert_int_equal(json_integer_value(json_array_get(json_object_get(json_object_get(r, "json"),
                                                                            "a"), 1)), 2);
        assert_null(json_object_get(r, "stdout"));
        json_decref(r);
        /* Not JSON: stdout stays text. */
        r = run_ok("{\"command\": \"json\", \"stdin\": \"{nope\"}");
        assert_string_equal(str(r, "stdout"), "{nope");
        assert_null(json_object_get(r, "json"));
        json_decref(r);
        /* Only where configured. */
        r = run_ok("{\"command\": \"cat\", \"stdin\": \"[1]\"}");
        assert_string_equal(str(r, "stdout"), "[1]");
        json_decref(r);
}

static void test_output_caps(void **state)
{
        json_t *r = run_ok("{\"command\": \"zeros\", \"n\": 100000}");

        assert_int_equal(json_string_length(json_object_get(r, "stdout")), MAX_OUTPUT);
        assert_true(json_is_true(json_object_get(r, "stdout_truncated")));
        assert_null(json_object_get(r, "stderr_truncated"));
        json_decref(r);

        r = run_ok("{\"command\": \"zeros\", \"n\": 10}");
        assert_int_equal(json_string_length(json_object_get(r, "stdout")), 10);
        assert_null(json_object_get(r, "stdout_truncated"));
        json_decref(r);

        /* Not UTF-8: base64, as the http task does with bodies. */
        r = run_ok("{\"command\": \"sh\", \"script\": \"printf '\\\\377\\\\376'; echo err >&2\"}");
        assert_string_equal(str(r, "stdout_base64"), "//4=");
        assert_null(json_object_get(r, "stdout"));
        assert_string_equal(str(r, "stderr"), "err\n");
        json_decref(r);
}

static void test_exit_status(void **state)
{
        struct task_error err;
        json_t *detail;

        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"echo out; echo oops >&2; exit 3\"}",
                             10, &detail, &err), -EIO);
        assert_string_equal(err.type, "exit_status");
        assert_false(err.retryable);
        assert_non_null(strstr(err.message, "exited with status 3"));
        assert_int_equal(json_integer_value(json_object_get(detail, "exit_code")), 3);
        assert_string_equal(str(detail, "stdout"), "out\n");
        assert_string_equal(str(detail, "stderr"), "oops\n");
        json_decref(detail);

        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"kill -TERM $$\"}", 10, &detail, &err),
                         -EIO);
        assert_string_equal(err.type, "exit_status");
        assert_non_null(strstr(err.message, "signal 15 (SIGTERM)"));
        assert_int_equal(json_integer_value(json_object_get(detail, "signal")), SIGTERM);
        assert_null(json_object_get(detail, "exit_code"));
        json_decref(detail);
}

/* Whether pid is gone or a zombie about to be reaped by init. */
static bool process_gone(long pid)
{
        char path[64], buf[256], *p;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        f = fopen(path, "re");
        if (!f)
                return true;
        p = fgets(buf, sizeof(buf), f);
        fclose(f);
        p = p ? strrchr(buf, ')') : NULL;
        return p && p[1] == ' ' && p[2] == 'Z';
}

static void assert_gone_soon(long pid)
{
        struct timespec pause = { .tv_nsec = 10 * 1000 * 1000 };

        for (int i = 0; i < 200; i++) {
                if (process_gone(pid))
                        return;
                nanosleep(&pause, NULL);
        }
        fail_msg("process %ld outlived its command", pid);
}

/* The job ends with the command's main process; what it left in its group
 * is killed, and its output up to then is kept. */
static void test_group_killed_on_exit(void **state)
{
        json_t *r = run_ok("{\"command\": \"sh\", \"script\": \"/bin/sleep 60 & echo $!\"}");

        assert_gone_soon(strtol(str(r, "stdout"), NULL, 10));
        json_decref(r);
}

static void test_deadline(void **state)
{
        double t0 = task_monotonic();
        struct task_error err;
        json_t *detail;
        FILE *f;
        long pid = 0;
        char path[128];

        snprintf(path, sizeof(path), "%s/pid", dir);
        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"/bin/sleep 60 & echo $! > pid; wait\"}",
                             0.3, &detail, &err), -EIO);
        assert_true(task_monotonic() - t0 < 2.0);
        assert_string_equal(err.type, "timeout");
        assert_true(err.retryable);
        f = fopen(path, "re");
        assert_non_null(f);
        assert_int_equal(fscanf(f, "%ld", &pid), 1);
        fclose(f);
        unlink(path);
        assert_gone_soon(pid);
}

/* A command that never stops writing still meets its deadline, though
 * poll() then seldom times out. */
static void test_deadline_busy_output(void **state)
{
        double t0 = task_monotonic();
        struct task_error err;
        json_t *detail;

        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"exec yes\"}", 0.3, &detail,
                             &err), -EIO);
        assert_true(task_monotonic() - t0 < 2.0);
        assert_string_equal(err.type, "timeout");
}

/* What the run told of its command's group: the id, then 0 when gone. */
static pid_t group_named, group_current;

static void record_group(pid_t pgid)
{
        if (pgid > 0)
                group_named = pgid;
        group_current = pgid;
}

/* A stop on the worker's socket (data or a hang-up) ends the run at once;
 * settings pass through exec_settings_dump() as a worker gets them. Each
 * run names its process group, then 0 before the group's id is free. */
static void test_stop(void **state)
{
        json_t *dump = exec_settings_dump(), *detail;
        double t0 = task_monotonic();
        struct task_error err;
        char msg[256];
        int sv[2];

        assert_non_null(dump);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(exec_worker_init(dump, sv[0], record_group, msg, sizeof(msg)), 0);
        json_decref(dump);
        json_decref(run_ok("{\"command\": \"cat\", \"stdin\": \"still configured\"}"));
        assert_true(group_named > 0);
        assert_int_equal(group_current, 0);
        assert_int_equal(kill(-group_named, 0), -1);
        assert_int_equal(errno, ESRCH);
        group_named = 0;

        assert_int_equal(write(sv[1], "x", 1), 1);
        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"exec /bin/sleep 60\"}", 30, &detail,
                             &err), -EIO);
        assert_string_equal(err.type, "cancelled");
        assert_true(task_monotonic() - t0 < 2.0);
        assert_true(group_named > 0);
        assert_int_equal(group_current, 0);
        close(sv[0]);
        close(sv[1]);

        /* A hang-up, as when the daemon is gone, stops it too. */
        dump = exec_settings_dump();
        assert_non_null(dump);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(exec_worker_init(dump, sv[0], record_group, msg, sizeof(msg)), 0);
        json_decref(dump);
        close(sv[1]);
        t0 = task_monotonic();
        assert_int_equal(run("{\"command\": \"sh\", \"script\": \"exec /bin/sleep 60\"}", 30, &detail,
                             &err), -EIO);
        assert_string_equal(err.type, "cancelled");
        assert_true(task_monotonic() - t0 < 2.0);
        close(sv[0]);
        exec_cleanup();
        configure();
}

static void test_unconfigured(void **state)
{
        char err[64];

        assert_int_equal(exec_configure(&(struct exec_options){ 0 }, err, sizeof(err)), 0);
        assert_invalid("{\"command\": \"cat\"}", "none is");
        configure();
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_templates),
                cmocka_unit_test(test_bad_settings),
                cmocka_unit_test(test_validate),
                cmocka_unit_test(test_leading_placeholder),
                cmocka_unit_test(test_long_placeholder),
                cmocka_unit_test(test_one_argument),
                cmocka_unit_test(test_stdin_env_dir),
                cmocka_unit_test(test_json_output),
                cmocka_unit_test(test_output_caps),
                cmocka_unit_test(test_exit_status),
                cmocka_unit_test(test_group_killed_on_exit),
                cmocka_unit_test(test_deadline),
                cmocka_unit_test(test_deadline_busy_output),
                cmocka_unit_test(test_stop),
                cmocka_unit_test(test_unconfigured),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
