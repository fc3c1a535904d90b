/* api/spec.c: body parsing limits and every job spec rule, valid and not,
 * against the real task table (noop: any object, io or cpu; sleep: io,
 * params ["seconds"]; sqrt_sum: cpu, params ["n"]); and that its refusals,
 * which quote client strings cut to fit, reach the client as valid JSON
 * through strbuf_json_string(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/spec.h"
#include "api/strbuf.h"
#include "tasks/jsontext.h"

static const struct spec_defaults defaults = { .timeout = 30 };

/* Parses text and validates it as a job spec. */
static int submit(const char *text, struct job **ret, struct spec_error *err)
{
        json_t *v;
        int r;

        r = spec_parse(text, strlen(text), &v, err);
        if (r < 0)
                return r;
        r = spec_job(v, &defaults, ret, err);
        json_decref(v);
        return r;
}

static struct job *accept_spec(const char *text)
{
        struct spec_error err = { 0 };
        struct job *j = NULL;

        if (submit(text, &j, &err) < 0)
                fail_msg("refused %s: %s %s", text, err.code, err.message);
        return j;
}

/* Asserts text is refused with code and that the message mentions word. */
static void refuse(const char *text, const char *code, const char *word)
{
        struct spec_error err = { 0 };
        struct job *j = NULL;

        assert_int_equal(submit(text, &j, &err), -EINVAL);
        assert_null(j);
        assert_string_equal(err.code, code);
        if (word && !strstr(err.message, word))
                fail_msg("message \"%s\" does not mention \"%s\"", err.message, word);
}

static char *nested(int depth)
{
        char *s = malloc(2 * (size_t) depth + 1);

        assert_non_null(s);
        memset(s, '[', (size_t) depth);
        memset(s + depth, ']', (size_t) depth);
        s[2 * depth] = '\0';
        return s;
}

static void test_parse(void **state)
{
        struct spec_error err;
        json_t *v = NULL;

        (void) state;
        assert_int_equal(spec_parse("{\"a\":[1,{}]}", 12, &v, &err), 0);
        assert_true(json_is_object(v));
        json_decref(v);

        assert_int_equal(spec_parse("", 0, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
        assert_int_equal(spec_parse("{\"a\":", 5, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
        assert_int_equal(spec_parse("{\"a\":1,\"a\":2}", 13, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
        assert_non_null(strstr(err.message, "duplicate"));
        assert_int_equal(spec_parse("{\"a\":1e400}", 11, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
        assert_int_equal(spec_parse("{\"a\":99999999999999999999}", 26, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
        assert_int_equal(spec_parse("{\"a\":NaN}", 9, &v, &err), -EINVAL);
        assert_string_equal(err.code, "invalid_json");
}

static void test_depth(void **state)
{
        struct spec_error err;
        json_t *v = NULL;
        char *s, *text;

        (void) state;
        s = nested(SPEC_MAX_DEPTH);
        assert_int_equal(spec_parse(s, strlen(s), &v, &err), 0);
        json_decref(v);
        free(s);

        s = nested(SPEC_MAX_DEPTH + 1);
        assert_int_equal(spec_parse(s, strlen(s), &v, &err), -EINVAL);
        assert_string_equal(err.code, "too_deep");
        free(s);

        /* Brackets inside strings (even after an escaped quote) are text. */
        s = nested(SPEC_MAX_DEPTH + 1);
        text = malloc(strlen(s) + 16);
        assert_non_null(text);
        sprintf(text, "{\"a\":\"\\\"%s\"}", s);
        assert_int_equal(spec_parse(text, strlen(text), &v, &err), 0);
        json_decref(v);
        free(text);
        free(s);

        /* Deep tags are refused too. */
        refuse("{\"task\":\"noop\",\"tag\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]"
               "]]]]]]]]]]]}", "too_deep", NULL);
}

/* A task's output is kept as JSON up to JSONTEXT_OUTPUT_DEPTH levels, so
 * that stored and wrapped again it still parses; deeper, the task keeps it
 * as text. */
static void test_output_depth(void **state)
{
        char *s;
        json_t *v;

        (void) state;
        s = nested(JSONTEXT_OUTPUT_DEPTH);
        v = jsontext_load_output(s, strlen(s));
        assert_non_null(v);
        json_decref(v);
        free(s);
        s = nested(JSONTEXT_OUTPUT_DEPTH + 1);
        assert_null(jsontext_load_output(s, strlen(s)));
        free(s);
        v = jsontext_load_output("\"a\\u0000b\"", 10);
        assert_non_null(v);
        assert_int_equal(json_string_length(v), 3);
        json_decref(v);
        assert_null(jsontext_load_output("{\"a\":", 5));
}

static void test_defaults(void **state)
{
        struct job *j;

        (void) state;
        j = accept_spec("{\"task\":\"noop\"}");
        assert_string_equal(j->task, "noop");
        assert_int_equal(j->kind, JOB_KIND_IO);
        assert_int_equal(j->state, JOB_PENDING);
        assert_string_equal(j->args, "{}");
        assert_null(j->tag);
        assert_null(j->key);
        assert_true(j->timeout == 30);
        assert_int_equal(j->max_attempts, 1);
        assert_int_equal(j->priority, 0);
        assert_int_equal(j->attempts, 0);
        assert_int_equal(j->id, 0);
        assert_int_equal(j->batch, 0);
        assert_int_equal(j->index, -1);
        job_free(j);

        /* null means "the default" for every optional field. */
        j = accept_spec("{\"task\":\"sqrt_sum\",\"args\":{\"n\":10},\"kind\":null,\"timeout\":null,"
                        "\"max_attempts\":null,\"priority\":null,\"key\":null,\"tag\":null}");
        assert_int_equal(j->kind, JOB_KIND_CPU);
        assert_true(j->timeout == 30);
        assert_null(j->tag);
        assert_null(j->key);
        job_free(j);
}

static void test_full(void **state)
{
        struct job *j;

        (void) state;
        j = accept_spec("{\"task\":\"noop\",\"args\":{\"b\":1,\"a\":[true,null]},\"kind\":\"cpu\","
                        "\"timeout\":2.5,\"max_attempts\":3,\"priority\":-7,\"key\":\"k-1\","
                        "\"tag\":{\"custom_id\":\"x\"}}");
        assert_int_equal(j->kind, JOB_KIND_CPU);
        assert_string_equal(j->args, "{\"b\":1,\"a\":[true,null]}");
        assert_true(j->timeout == 2.5);
        assert_int_equal(j->max_attempts, 3);
        assert_int_equal(j->priority, -7);
        assert_string_equal(j->key, "k-1");
        assert_string_equal(j->tag, "{\"custom_id\":\"x\"}");
        job_free(j);

        j = accept_spec("{\"task\":\"noop\",\"tag\":\"plain\"}");
        assert_string_equal(j->tag, "\"plain\"");
        job_free(j);
}

static void test_spec_shape(void **state)
{
        (void) state;
        refuse("[]", "invalid_request", "object");
        refuse("\"noop\"", "invalid_request", "object");
        refuse("{}", "invalid_request", "task");
        refuse("{\"task\":null}", "invalid_request", "task");
        refuse("{\"task\":7}", "invalid_request", "task");
        refuse("{\"task\":\"nope\"}", "unknown_task", "nope");
        refuse("{\"task\":\"noop\",\"tags\":1}", "unknown_field", "tags");
        refuse("{\"task\":\"noop\",\"items\":[]}", "unknown_field", "items");
}

static void test_kind(void **state)
{
        struct job *j;

        (void) state;
        j = accept_spec("{\"task\":\"noop\",\"kind\":\"io\"}");
        assert_int_equal(j->kind, JOB_KIND_IO);
        job_free(j);
        j = accept_spec("{\"task\":\"sqrt_sum\",\"args\":[5]}");
        assert_int_equal(j->kind, JOB_KIND_CPU);
        job_free(j);

        refuse("{\"task\":\"noop\",\"kind\":\"gpu\"}", "invalid_kind", "io");
        refuse("{\"task\":\"noop\",\"kind\":\"IO\"}", "invalid_kind", NULL);
        refuse("{\"task\":\"noop\",\"kind\":1}", "invalid_request", "kind");
        refuse("{\"task\":\"sleep\",\"kind\":\"cpu\",\"args\":[1]}", "invalid_kind", "sleep");
        refuse("{\"task\":\"sqrt_sum\",\"kind\":\"io\",\"args\":[1]}", "invalid_kind", "sqrt_sum");
}

static void test_args(void **state)
{
        struct job *j;

        (void) state;
        j = accept_spec("{\"task\":\"sleep\",\"args\":[0.25]}");
        assert_string_equal(j->args, "{\"seconds\":0.25}");
        job_free(j);
        j = accept_spec("{\"task\":\"sleep\",\"args\":{\"seconds\":0}}");
        assert_string_equal(j->args, "{\"seconds\":0}");
        job_free(j);

        refuse("{\"task\":\"sleep\",\"args\":[1,2]}", "invalid_args", "at most 1");
        refuse("{\"task\":\"noop\",\"args\":[1]}", "invalid_args", "positional");
        refuse("{\"task\":\"sleep\",\"args\":[]}", "invalid_args", "seconds");
        refuse("{\"task\":\"sleep\",\"args\":{\"seconds\":-1}}", "invalid_args", "seconds");
        refuse("{\"task\":\"sleep\",\"args\":{\"seconds\":\"1\"}}", "invalid_args", "seconds");
        refuse("{\"task\":\"noop\",\"args\":\"x\"}", "invalid_request", "args");
        refuse("{\"task\":\"noop\",\"args\":5}", "invalid_request", "args");
}

static void test_numbers(void **state)
{
        struct job *j;

        (void) state;
        j = accept_spec("{\"task\":\"noop\",\"timeout\":86400,\"max_attempts\":100,"
                        "\"priority\":1000}");
        assert_true(j->timeout == 86400);
        assert_int_equal(j->max_attempts, 100);
        assert_int_equal(j->priority, 1000);
        job_free(j);
        j = accept_spec("{\"task\":\"noop\",\"timeout\":0.001,\"max_attempts\":1,"
                        "\"priority\":-1000}");
        assert_int_equal(j->priority, -1000);
        job_free(j);

        refuse("{\"task\":\"noop\",\"timeout\":0}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"timeout\":1e-300}", "invalid_request", "0.001");
        refuse("{\"task\":\"noop\",\"timeout\":0.0009}", "invalid_request", "0.001");
        refuse("{\"task\":\"noop\",\"timeout\":-1}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"timeout\":86400.5}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"timeout\":true}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"timeout\":\"5\"}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"timeout\":1e300}", "invalid_request", "timeout");
        refuse("{\"task\":\"noop\",\"max_attempts\":0}", "invalid_request", "max_attempts");
        refuse("{\"task\":\"noop\",\"max_attempts\":101}", "invalid_request", "max_attempts");
        refuse("{\"task\":\"noop\",\"max_attempts\":1.5}", "invalid_request", "max_attempts");
        refuse("{\"task\":\"noop\",\"max_attempts\":2.0}", "invalid_request", "max_attempts");
        refuse("{\"task\":\"noop\",\"max_attempts\":false}", "invalid_request", "max_attempts");
        refuse("{\"task\":\"noop\",\"max_attempts\":9223372036854775807}", "invalid_request",
               "max_attempts");
        refuse("{\"task\":\"noop\",\"priority\":1001}", "invalid_request", "priority");
        refuse("{\"task\":\"noop\",\"priority\":-1001}", "invalid_request", "priority");
        refuse("{\"task\":\"noop\",\"priority\":-9223372036854775807}", "invalid_request",
               "priority");
        refuse("{\"task\":\"noop\",\"priority\":\"high\"}", "invalid_request", "priority");
}

static void test_key_and_tag(void **state)
{
        char text[20000], big[SPEC_MAX_TAG + 1];
        struct job *j;

        (void) state;
        memset(big, 'k', SPEC_MAX_KEY);
        big[SPEC_MAX_KEY] = '\0';
        snprintf(text, sizeof(text), "{\"task\":\"noop\",\"key\":\"%s\"}", big);
        j = accept_spec(text);
        assert_int_equal(strlen(j->key), SPEC_MAX_KEY);
        job_free(j);
        snprintf(text, sizeof(text), "{\"task\":\"noop\",\"key\":\"%sk\"}", big);
        refuse(text, "invalid_request", "key");
        refuse("{\"task\":\"noop\",\"key\":\"\"}", "invalid_request", "key");
        refuse("{\"task\":\"noop\",\"key\":42}", "invalid_request", "key");

        /* "x" plus its quotes: exactly the limit, then one byte over. */
        memset(big, 'x', SPEC_MAX_TAG - 2);
        big[SPEC_MAX_TAG - 2] = '\0';
        snprintf(text, sizeof(text), "{\"task\":\"noop\",\"tag\":\"%s\"}", big);
        j = accept_spec(text);
        assert_int_equal(strlen(j->tag), SPEC_MAX_TAG);
        job_free(j);
        snprintf(text, sizeof(text), "{\"task\":\"noop\",\"tag\":\"%sx\"}", big);
        refuse(text, "invalid_request", "tag");
}

/* s written as a JSON string; the caller frees. */
static char *json_text(const char *s)
{
        struct strbuf b = { 0 };
        size_t len;
        char *text;

        strbuf_json_string(&b, s);
        assert_int_equal(strbuf_steal(&b, &text, &len), 0);
        return text;
}

/* Asserts s is written as want, and that jansson (which refuses invalid
 * UTF-8) reads it back. */
static void assert_json_string(const char *s, const char *want)
{
        char *text = json_text(s);
        json_t *v;

        assert_string_equal(text, want);
        v = json_loads(text, JSON_DECODE_ANY, NULL);
        if (!v)
                fail_msg("not valid JSON: %s", text);
        json_decref(v);
        free(text);
}

static void test_json_string(void **state)
{
        (void) state;
        assert_json_string("", "\"\"");
        assert_json_string("a\"b\\c\n\t\x01\x7f", "\"a\\\"b\\\\c\\n\\t\\u0001\x7f\"");
        assert_json_string("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf",
                           "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"");
        /* Cut short, at the end and before more text. */
        assert_json_string("a\xc3", "\"a\\ufffd\"");
        assert_json_string("\xe2\x82x", "\"\\ufffdx\"");
        assert_json_string("\xf0\x9f\x98", "\"\\ufffd\"");
        /* Never valid: stray continuation, C0/C1 and F5+ leads, overlong
         * forms, surrogates, past U+10FFFF. */
        assert_json_string("\x80\xbf", "\"\\ufffd\\ufffd\"");
        assert_json_string("\xc0\xaf\xc1\xbf", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
        assert_json_string("\xf5\xff", "\"\\ufffd\\ufffd\"");
        assert_json_string("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");
        assert_json_string("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
        assert_json_string("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
}

/* A refusal quoting a client string cut inside a character is still
 * valid JSON once written. */
static void assert_refusal_is_json(const char *text, const char *code)
{
        struct spec_error err = { 0 };
        struct job *j = NULL;
        char *out;
        json_t *v;

        assert_int_equal(submit(text, &j, &err), -EINVAL);
        assert_string_equal(err.code, code);
        out = json_text(err.message);
        v = json_loads(out, JSON_DECODE_ANY, NULL);
        if (!v)
                fail_msg("refusal of %s is not valid JSON: %s", text, out);
        assert_non_null(strstr(json_string_value(v), "\xef\xbf\xbd"));
        json_decref(v);
        free(out);
}

static void test_refusals_as_json(void **state)
{
        char a63[64], text[1024], *p = text;

        (void) state;
        memset(a63, 'a', 63);
        a63[63] = '\0';
        snprintf(text, sizeof(text), "{\"%s\xc3\xa9\":1,\"task\":\"noop\"}", a63);
        assert_refusal_is_json(text, "unknown_field");
        snprintf(text, sizeof(text), "{\"task\":\"%s\xc3\xa9\"}", a63);
        assert_refusal_is_json(text, "unknown_task");
        p += sprintf(p, "{\"task\":\"sleep\",\"args\":{\"");
        for (int i = 0; i < 200; i++)
                p += sprintf(p, "\xc3\xa9");
        sprintf(p, "\":1}}");
        assert_refusal_is_json(text, "invalid_args");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse),
                cmocka_unit_test(test_depth),
                cmocka_unit_test(test_output_depth),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_full),
                cmocka_unit_test(test_spec_shape),
                cmocka_unit_test(test_kind),
                cmocka_unit_test(test_args),
                cmocka_unit_test(test_numbers),
                cmocka_unit_test(test_key_and_tag),
                cmocka_unit_test(test_json_string),
                cmocka_unit_test(test_refusals_as_json),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
