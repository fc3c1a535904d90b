/* Bearer tokens: the file's grammar (comments, blanks, RFC 6750 tokens),
 * and the Authorization header's: scheme in any case, one token, nothing
 * after it; only a whole token matches. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/auth.h"

/* auth_new() takes the text: hand it a heap copy. */
static int load(const char *text, struct auth **ret)
{
        char *copy = strdup(text);

        assert_non_null(copy);
        return auth_new(copy, strlen(copy), "test", ret);
}

static void test_file_grammar(void **state)
{
        struct auth *a = NULL;

        (void)state;
        assert_int_equal(load("# comment\n\n  tok-1  \r\n\tAbc.def~g+h/i==\n# last", &a), 0);
        assert_true(auth_check(a, "Bearer tok-1"));
        assert_true(auth_check(a, "Bearer Abc.def~g+h/i=="));
        assert_false(auth_check(a, "Bearer # comment"));
        assert_false(auth_check(a, "Bearer "));
        auth_free(a);

        /* No trailing newline, one token. */
        assert_int_equal(load("only", &a), 0);
        assert_true(auth_check(a, "Bearer only"));
        auth_free(a);
}

static void test_file_refused(void **state)
{
        struct auth *a = NULL;

        (void)state;
        assert_int_equal(load("", &a), -EINVAL);
        assert_int_equal(load("# only comments\n\n   \n", &a), -EINVAL);
        assert_int_equal(load("good\ntwo words\n", &a), -EINVAL);
        assert_int_equal(load("=leading\n", &a), -EINVAL);
        assert_int_equal(load("pad=ding\n", &a), -EINVAL);
        assert_int_equal(load("quote\"d\n", &a), -EINVAL);
        assert_null(a);
        auth_free(NULL);
}

static void test_header(void **state)
{
        struct auth *a = NULL;

        (void)state;
        assert_int_equal(load("secret\nother-token\n", &a), 0);
        assert_true(auth_check(a, "Bearer secret"));
        assert_true(auth_check(a, "bearer other-token"));
        assert_true(auth_check(a, "BEARER \t secret"));
        assert_true(auth_check(a, "Bearer secret  "));
        assert_false(auth_check(a, NULL));
        assert_false(auth_check(a, ""));
        assert_false(auth_check(a, "secret"));
        assert_false(auth_check(a, "Bearersecret"));
        assert_false(auth_check(a, "Basic secret"));
        assert_false(auth_check(a, "Bearer secre"));
        assert_false(auth_check(a, "Bearer secrett"));
        assert_false(auth_check(a, "Bearer secret other-token"));
        assert_false(auth_check(a, "Bearer SECRET"));
        /* A prefix of a token repeated to its length is not it. */
        assert_false(auth_check(a, "Bearer secsec"));
        auth_free(a);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_file_grammar),
                cmocka_unit_test(test_file_refused),
                cmocka_unit_test(test_header),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
