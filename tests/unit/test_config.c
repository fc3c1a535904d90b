/* daemon/config.c: defaults, the INI file, flags over the file, and clear
 * refusals of bad keys and values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon/config.h"

static char conf_path[] = "/tmp/futured-test-config-XXXXXX";

static void write_conf(const char *text)
{
        FILE *f = fopen(conf_path, "w");

        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static int parse(struct config *c, char *err, size_t errlen, ...)
{
        char *argv[32] = { "futured" };
        int argc = 1;
        va_list ap;

        va_start(ap, errlen);
        for (char *a; (a = va_arg(ap, char *)) && argc < 31;)
                argv[argc++] = a;
        va_end(ap);
        return config_parse(argc, argv, c, err, errlen);
}

static void test_defaults(void **state)
{
        struct config c;
        char err[256] = "";
        long cores = sysconf(_SC_NPROCESSORS_ONLN);

        assert_int_equal(parse(&c, err, sizeof(err), NULL), 0);
        assert_string_equal(c.listen, "127.0.0.1:7700");
        assert_string_equal(c.db, "futured.db");
        assert_int_equal(c.cpu_workers, cores);
        assert_int_equal(c.io_threads, 4 * cores);
        assert_true(c.sync_full);
        assert_int_equal(c.log_level, LOG_INFO);
}

static void test_file_then_flags(void **state)
{
        struct config c;
        char err[256] = "";

        write_conf("[server]\nlisten = 127.0.0.1:9000\nmax_body = 2M\n"
                   "[store]\ndb = /tmp/x.db\nsynchronous = normal\n"
                   "[pools]\nio_threads = 7\ncpu_workers = 3\n"
                   "[log]\nlog_level = debug\n");
        assert_int_equal(parse(&c, err, sizeof(err), "-c", conf_path, "--io-threads", "9",
                               "--listen=unix:/tmp/f.sock", NULL),
                         0);
        assert_string_equal(c.listen, "unix:/tmp/f.sock");
        assert_int_equal(c.io_threads, 9);
        assert_int_equal(c.cpu_workers, 3);
        assert_int_equal(c.max_body, 2 << 20);
        assert_string_equal(c.db, "/tmp/x.db");
        assert_false(c.sync_full);
        assert_int_equal(c.log_level, LOG_DEBUG);
}

static void test_flag_order_does_not_matter(void **state)
{
        struct config c;
        char err[256] = "";

        /* -c after a flag still loses to that flag. */
        write_conf("[pools]\ncpu_workers = 3\n");
        assert_int_equal(parse(&c, err, sizeof(err), "--cpu-workers", "5", "-c", conf_path, NULL),
                         0);
        assert_int_equal(c.cpu_workers, 5);
}

/* 200 characters: with its key, a line past what the INI reader takes. */
#define X50 "https://a.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/ "
#define LONG_VALUE X50 X50 X50 X50

static void test_bad_input(void **state)
{
        static const struct {
                const char *conf;       /* NULL: no file */
                const char *flag, *value;
                const char *expect;     /* in the message */
        } cases[] = {
                { NULL, "--io-threads", "0", "io_threads" },
                { NULL, "--io-threads", "abc", "io_threads" },
                { NULL, "--io-threads", "2.5", "io_threads" },
                /* plain decimal only */
                { NULL, "--io-threads", "1e3", "io_threads" },
                { NULL, "--io-threads", "0x10", "io_threads" },
                { NULL, "--io-threads", " 8", "io_threads" },
                { NULL, "--io-threads", "+8", "io_threads" },
                { NULL, "--io-threads", "2.0", "io_threads" },
                { NULL, "--shutdown-grace", "0x1p3", "shutdown_grace" },
                { NULL, "--shutdown-grace", "1.", "shutdown_grace" },
                { NULL, "--max-body", "1e6", "max_body" },
                { NULL, "--max-body", "99999999999", "from 1024 to 1073741824" },
                { NULL, "--cpu-workers", "-1", "cpu_workers" },
                { NULL, "--log-level", "loud", "log_level" },
                { NULL, "--synchronous", "sometimes", "synchronous" },
                { NULL, "--default-timeout", "nan", "default_timeout" },
                { NULL, "--max-body", "5T", "max_body" },
                { NULL, "--retention", "0", "retention" },
                { NULL, "--db", "", "db must be" },
                { NULL, "--no-such-flag", "1", "unknown option" },
                { NULL, "--io-threads", NULL, "'--io-threads' needs a value" },
                { NULL, "-c", NULL, "'-c' needs a value" },
                { "[pools]\nthreads = 4\n", NULL, NULL, "unknown key 'threads'" },
                { "[nowhere]\nio_threads = 4\n", NULL, NULL, "section [nowhere]" },
                { "[pools]\nio_threads = lots\n", NULL, NULL, ":2: io_threads" },
                { "[pools\n", NULL, NULL, ":1:" },
                { "[pools\nio_threads = 3\n", NULL, NULL, ":1: a section header without ']'" },
                /* the first error's line and its own message */
                { "[pools]\nio_thread = 3\nio_threads = 0\n", NULL, NULL,
                  ":2: unknown key 'io_thread'" },
                { "[http]\nallow = " LONG_VALUE "\n", NULL, NULL, ":2: a line of 208 characters" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct config c;
                char err[256] = "";
                int r;

                if (cases[i].conf) {
                        write_conf(cases[i].conf);
                        r = parse(&c, err, sizeof(err), "-c", conf_path, NULL);
                } else {
                        r = parse(&c, err, sizeof(err), cases[i].flag, cases[i].value, NULL);
                }
                assert_int_equal(r, -EINVAL);
                if (!strstr(err, cases[i].expect))
                        fail_msg("case %zu: '%s' does not mention '%s'", i, err, cases[i].expect);
        }
}

/* Lists may be empty (the default), and keep their words as written. */
static void test_lists(void **state)
{
        struct config c;
        char err[256] = "";

        assert_int_equal(parse(&c, err, sizeof(err), NULL), 0);
        assert_string_equal(c.allow, "");
        assert_int_equal(c.max_response, 16 << 20);
        write_conf("[http]\nallow = https://a.example/v1/ http://127.0.0.1:9/\n"
                   "auth = a.example=/etc/k\nmax_response = 1M\n"
                   "[jobs]\nretention = 60\nmax_batch_items = 5000\n");
        assert_int_equal(parse(&c, err, sizeof(err), "-c", conf_path, "--auth", "", NULL), 0);
        assert_string_equal(c.allow, "https://a.example/v1/ http://127.0.0.1:9/");
        assert_string_equal(c.auth, "");
        assert_int_equal(c.max_response, 1 << 20);
        assert_true(c.retention == 60);
        assert_int_equal(c.max_batch_items, 5000);
}

static void test_missing_file(void **state)
{
        struct config c;
        char err[256] = "";

        assert_int_equal(parse(&c, err, sizeof(err), "-c", "/nonexistent/futured.conf", NULL),
                         -EINVAL);
        assert_non_null(strstr(err, "/nonexistent/futured.conf"));
}

/* A directory opens and reads as an empty file; a NUL byte ends inih's
 * line early: both would pass for a file without those settings. */
static void test_not_a_config_file(void **state)
{
        static const char nul[] = "[pools]\n\0io_threads = 3\n";
        struct config c;
        char err[256] = "";
        FILE *f;

        assert_int_equal(parse(&c, err, sizeof(err), "-c", "/tmp", NULL), -EINVAL);
        assert_non_null(strstr(err, "/tmp: not a regular file"));
        f = fopen(conf_path, "w");
        assert_non_null(f);
        assert_int_equal(fwrite(nul, 1, sizeof(nul) - 1, f), sizeof(nul) - 1);
        fclose(f);
        assert_int_equal(parse(&c, err, sizeof(err), "-c", conf_path, NULL), -EINVAL);
        assert_non_null(strstr(err, ":2: a NUL byte"));
}

static void test_retry_bounds(void **state)
{
        struct config c;
        char err[256] = "";

        assert_int_equal(parse(&c, err, sizeof(err), "--retry-base", "10", "--retry-max", "5",
                               NULL),
                         -EINVAL);
        assert_non_null(strstr(err, "retry_base"));
}

static int setup(void **state)
{
        int fd = mkstemp(conf_path);

        if (fd < 0)
                return -1;
        close(fd);
        return 0;
}

static int teardown(void **state)
{
        unlink(conf_path);
        return 0;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_file_then_flags),
                cmocka_unit_test(test_flag_order_does_not_matter),
                cmocka_unit_test(test_bad_input),
                cmocka_unit_test(test_lists),
                cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_not_a_config_file),
                cmocka_unit_test(test_retry_bounds),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
