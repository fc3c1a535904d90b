/* The limiter's arithmetic on a fake clock, and the parsing of limits and
 * host keys. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "daemon/limiter.h"

static void test_concurrency(void **state)
{
        struct limiter l;

        (void)state;
        limiter_init(&l, 2, 0);
        assert_true(limiter_can_release(&l));
        assert_int_equal(limiter_release(&l, 1000), 1000);
        assert_true(limiter_can_release(&l));
        assert_int_equal(limiter_release(&l, 1000), 1000);
        /* two released hold both slots */
        assert_false(limiter_can_release(&l));
        limiter_start(&l, 1000);
        limiter_start(&l, 1000);
        assert_false(limiter_can_release(&l));
        limiter_finish(&l);
        assert_true(limiter_can_release(&l));
        limiter_release(&l, 1001);
        assert_false(limiter_can_release(&l));
        limiter_unrelease(&l);
        assert_true(limiter_can_release(&l));
}

static void test_rate_spacing(void **state)
{
        struct limiter l;
        int64_t now = 5000, at;

        (void)state;
        limiter_init(&l, 0, 20);        /* a start every 50 ms */
        assert_int_equal(limiter_release(&l, now), now);
        /* one released at a time */
        assert_false(limiter_can_release(&l));
        limiter_start(&l, now);
        limiter_finish(&l);
        assert_true(limiter_can_release(&l));
        at = limiter_release(&l, now + 10);
        assert_int_equal(at, now + 50);
        limiter_start(&l, at);
        at = limiter_release(&l, at);
        assert_int_equal(at, now + 100);
        /* a start later than its slot spaces the next from itself */
        limiter_start(&l, now + 130);
        assert_int_equal(limiter_release(&l, now + 131), now + 180);
        limiter_unrelease(&l);
        /* an idle limiter starts at once */
        assert_int_equal(limiter_release(&l, now + 1000), now + 1000);
}

static void test_rate_over_many(void **state)
{
        struct limiter l;
        int64_t now = 0, first = -1, last = 0;

        (void)state;
        limiter_init(&l, 0, 20);
        for (int i = 0; i < 40; i++) {
                int64_t at = limiter_release(&l, now);

                if (at > now)
                        now = at;
                if (first < 0)
                        first = now;
                last = now;
                limiter_start(&l, now);
                limiter_finish(&l);
        }
        assert_int_equal(last - first, 39 * 50);
}

static void test_high_rate_within_a_ms(void **state)
{
        struct limiter l;
        int at_once = 0;

        (void)state;
        limiter_init(&l, 0, 5000);
        while (limiter_release(&l, 100) == 100 && at_once < 100) {
                limiter_start(&l, 100);
                at_once++;
        }
        assert_int_equal(at_once, 5);
}

static void test_concurrency_and_rate(void **state)
{
        struct limiter l;

        (void)state;
        limiter_init(&l, 1, 10);
        assert_int_equal(limiter_release(&l, 0), 0);
        limiter_start(&l, 0);
        assert_false(limiter_can_release(&l));
        limiter_finish(&l);
        assert_int_equal(limiter_release(&l, 20), 100);
}

static void assert_check(const char *text, int expected, const char *canonical,
                         const char *in_message)
{
        json_t *v = json_loads(text, 0, NULL);
        char msg[256] = "", *out = NULL;

        assert_non_null(v);
        assert_int_equal(limiter_limits_check(v, &out, msg, sizeof(msg)), expected);
        if (canonical)
                assert_string_equal(out, canonical);
        if (in_message)
                assert_non_null(strstr(msg, in_message));
        free(out);
        json_decref(v);
}

/* A rate below one a day (from the config, or stored before submissions
 * were refused below it) counts as one a day: the next start stays a
 * representable time. */
static void test_rate_floor(void **state)
{
        struct limiter l;
        int64_t now = 5000;

        (void)state;
        limiter_init(&l, 0, 1e-300);
        assert_int_equal(limiter_release(&l, now), now);
        limiter_start(&l, now);
        limiter_finish(&l);
        assert_int_equal(limiter_release(&l, now + 1), now + 86400 * 1000);
}

static void test_limits_check(void **state)
{
        unsigned c;
        double p;

        (void)state;
        assert_check("{\"per_second\": 2.5, \"concurrency\": 4}", 0,
                     "{\"concurrency\":4,\"per_second\":2.5}", NULL);
        assert_check("{}", 0, "{}", NULL);
        assert_check("[]", -EINVAL, NULL, "limits must be an object");
        assert_check("{\"concurrency\": 0}", -EINVAL, NULL, "limits.concurrency");
        assert_check("{\"concurrency\": 1.5}", -EINVAL, NULL, "limits.concurrency");
        assert_check("{\"concurrency\": \"4\"}", -EINVAL, NULL, "limits.concurrency");
        assert_check("{\"per_second\": 0}", -EINVAL, NULL, "limits.per_second");
        assert_check("{\"per_second\": -1}", -EINVAL, NULL, "limits.per_second");
        assert_check("{\"per_second\": 1e-300}", -EINVAL, NULL, "limits.per_second");
        assert_check("{\"per_second\": 0.00001}", -EINVAL, NULL, "limits.per_second");
        assert_check("{\"per_second\": 0.0000116}", 0, NULL, NULL);
        assert_check("{\"burst\": 1}", -EINVAL, NULL, "limits.burst");

        assert_int_equal(limiter_limits_parse("{\"concurrency\":4,\"per_second\":2.5}", &c, &p), 0);
        assert_int_equal(c, 4);
        assert_true(p == 2.5);
        assert_int_equal(limiter_limits_parse(NULL, &c, &p), 0);
        assert_int_equal(c, 0);
        assert_true(p == 0);
        c = 7;
        assert_int_equal(limiter_limits_parse("{\"concurrency\":-1}", &c, &p), -EINVAL);
        assert_int_equal(limiter_limits_parse("nope", &c, &p), -EINVAL);
}

static void assert_host(const char *task, const char *args, const char *expected)
{
        struct job j = { .task = (char *)task, .args = (char *)args };
        char *key = (char *)"untouched";

        assert_int_equal(limiter_host_key(&j, &key), 0);
        if (expected)
                assert_string_equal(key, expected);
        else
                assert_null(key);
        free(key);
}

static void test_host_key(void **state)
{
        (void)state;
        assert_host("http", "{\"url\": \"HTTPS://API.Example.COM/v1/chat?x=1\"}",
                    "https://api.example.com:443");
        assert_host("http", "{\"url\": \"http://127.0.0.1:8080/\"}", "http://127.0.0.1:8080");
        assert_host("http", "{\"url\": \"http://localhost/a\"}", "http://localhost:80");
        assert_host("http", "{\"url\": 5}", NULL);
        assert_host("http", "{}", NULL);
        assert_host("noop", "{\"url\": \"http://localhost/a\"}", NULL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_concurrency),
                cmocka_unit_test(test_rate_spacing),
                cmocka_unit_test(test_rate_over_many),
                cmocka_unit_test(test_high_rate_within_a_ms),
                cmocka_unit_test(test_concurrency_and_rate),
                cmocka_unit_test(test_rate_floor),
                cmocka_unit_test(test_limits_check),
                cmocka_unit_test(test_host_key),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
