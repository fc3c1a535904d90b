/* Job spec validation. Nothing here is trusted: every field is checked for
 * type and range before it is used, unknown fields are refused rather than
 * ignored (a typo must not silently fall back to a default), and a JSON
 * `null` for an optional field means "the default". Booleans are never
 * numbers, and jansson already refuses integers beyond int64 and reals that
 * overflow (1e400), so a number that reaches the range checks is finite. */
#include "api/spec.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/strbuf.h"
#include "tasks/jsontext.h"
#include "tasks/task.h"

static const char *const spec_fields[] = {
        "task", "args", "kind", "timeout", "max_attempts", "priority", "key", "tag", NULL,
};

static const char *const openai_fields[] = { "custom_id", "method", "url", "body", NULL };

__attribute__((format(printf, 3, 4)))
static int spec_fail(struct spec_error *err, const char *code, const char *fmt, ...)
{
        va_list ap;

        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        return strcmp(code, "internal") == 0 ? -ENOMEM : -EINVAL;
}

int spec_parse(const char *text, size_t len, json_t **ret, struct spec_error *err)
{
        json_error_t jerr;
        json_t *v;

        if (len == 0)
                return spec_fail(err, "invalid_json", "the request body is empty; send a JSON object");
        if (!jsontext_depth_ok(text, len, SPEC_MAX_DEPTH))
                return spec_fail(err, "too_deep", "JSON nesting is deeper than %d levels",
                                 SPEC_MAX_DEPTH);
        v = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!v)
                return spec_fail(err, "invalid_json", "invalid JSON at line %d, column %d: %s",
                                 jerr.line, jerr.column, jerr.text);
        *ret = v;
        return 0;
}

/* fields: what obj may have; has: how the refusal lists them. */
static int check_fields(const json_t *obj, const char *const *fields, const char *has,
                        struct spec_error *err)
{
        const char *name;
        json_t *v;

        json_object_foreach((json_t *) obj, name, v) {
                const char *const *f;

                for (f = fields; *f; f++)
                        if (strcmp(*f, name) == 0)
                                break;
                if (!*f)
                        return spec_fail(err, "unknown_field", "unknown field \"%.64s\"; %s",
                                         name, has);
        }
        return 0;
}

/* The field, or NULL when absent or null. */
static const json_t *field(const json_t *spec, const char *name)
{
        const json_t *v = json_object_get(spec, name);

        return json_is_null(v) ? NULL : v;
}

static int get_int(const json_t *spec, const char *name, int min, int max, int def, int *ret,
                   struct spec_error *err)
{
        const json_t *v = field(spec, name);
        json_int_t i;

        if (!v) {
                *ret = def;
                return 0;
        }
        i = json_is_integer(v) ? json_integer_value(v) : (json_int_t) min - 1;
        if (i < min || i > max)
                return spec_fail(err, "invalid_request", "\"%s\" must be an integer from %d to %d",
                                 name, min, max);
        *ret = (int) i;
        return 0;
}

static int get_timeout(const json_t *spec, double def, double *ret, struct spec_error *err)
{
        const json_t *v = field(spec, "timeout");
        double t;

        if (!v) {
                *ret = def;
                return 0;
        }
        t = json_is_number(v) ? json_number_value(v) : -1;
        if (!(t >= SPEC_MIN_TIMEOUT && t <= SPEC_MAX_TIMEOUT))
                return spec_fail(err, "invalid_request",
                                 "\"timeout\" must be a number of seconds from %g to %g",
                                 SPEC_MIN_TIMEOUT, SPEC_MAX_TIMEOUT);
        *ret = t;
        return 0;
}

static int get_task(const json_t *spec, const struct task *def, const struct task **ret,
                    struct spec_error *err)
{
        const json_t *v = field(spec, "task");
        const struct task *t;

        if (!v && def) {
                *ret = def;
                return 0;
        }
        if (!v)
                return spec_fail(err, "invalid_request", "\"task\" is required");
        if (!json_is_string(v))
                return spec_fail(err, "invalid_request", "\"task\" must be a string");
        t = task_find(json_string_value(v));
        if (!t)
                return spec_fail(err, "unknown_task",
                                 "unknown task \"%.64s\"; GET /v1/tasks lists them",
                                 json_string_value(v));
        *ret = t;
        return 0;
}

/* v: a present "kind". */
static int parse_kind(const json_t *v, enum job_kind *ret, struct spec_error *err)
{
        if (!json_is_string(v))
                return spec_fail(err, "invalid_request", "\"kind\" must be a string");
        if (job_kind_parse(json_string_value(v), ret) < 0)
                return spec_fail(err, "invalid_kind", "\"kind\" must be \"io\" or \"cpu\"");
        return 0;
}

static int get_kind(const json_t *spec, const struct task *t, const struct spec_defaults *d,
                    enum job_kind *ret, struct spec_error *err)
{
        const json_t *v = field(spec, "kind");
        enum job_kind k = d->has_kind ? d->kind : t->default_kind;
        int r;

        if (v) {
                r = parse_kind(v, &k, err);
                if (r < 0)
                        return r;
        }
        if (!task_can_run(t, k))
                return spec_fail(err, "invalid_kind", "task \"%s\" cannot run as kind \"%s\"",
                                 t->name, job_kind_name(k));
        *ret = k;
        return 0;
}

/* Names positional args after the task's parameters (starmap). */
static int name_args(const struct task *t, const json_t *array, json_t **ret,
                     struct spec_error *err)
{
        size_t nparams = 0, i;
        json_t *obj;

        if (!t->params)
                return spec_fail(err, "invalid_args",
                                 "task \"%s\" takes no positional args; give \"args\" as an object",
                                 t->name);
        while (t->params[nparams])
                nparams++;
        if (json_array_size(array) > nparams)
                return spec_fail(err, "invalid_args",
                                 "task \"%s\" takes at most %zu positional args, %zu given",
                                 t->name, nparams, json_array_size(array));
        obj = json_object();
        if (!obj)
                return spec_fail(err, "internal", "out of memory");
        for (i = 0; i < json_array_size(array); i++)
                if (json_object_set(obj, t->params[i], json_array_get(array, i)) < 0) {
                        json_decref(obj);
                        return spec_fail(err, "internal", "out of memory");
                }
        *ret = obj;
        return 0;
}

/* *ret: the args as compact JSON text, owned by the caller. */
static int get_args(const json_t *spec, const struct task *t, char **ret, struct spec_error *err)
{
        const json_t *v = field(spec, "args");
        char msg[sizeof(err->message) - 32];
        json_t *args;
        char *text;
        int r;

        if (!v)
                args = json_object();
        else if (json_is_object(v))
                args = json_incref((json_t *) v);
        else if (json_is_array(v)) {
                r = name_args(t, v, &args, err);
                if (r < 0)
                        return r;
        } else
                return spec_fail(err, "invalid_request", "\"args\" must be an object or an array");
        if (!args)
                return spec_fail(err, "internal", "out of memory");

        msg[0] = '\0';
        r = t->validate ? t->validate(args, msg, sizeof(msg)) : 0;
        if (r < 0) {
                json_decref(args);
                return spec_fail(err, "invalid_args", "task \"%s\": %s", t->name,
                                 msg[0] ? msg : "invalid args");
        }
        text = json_dumps(args, JSON_COMPACT);
        json_decref(args);
        if (!text)
                return spec_fail(err, "internal", "out of memory");
        *ret = text;
        return 0;
}

static int get_key(const json_t *spec, char **ret, struct spec_error *err)
{
        const json_t *v = field(spec, "key");
        size_t n;

        *ret = NULL;
        if (!v)
                return 0;
        n = json_is_string(v) ? json_string_length(v) : 0;
        if (n < 1 || n > SPEC_MAX_KEY)
                return spec_fail(err, "invalid_request", "\"key\" must be a string of 1 to %d bytes",
                                 SPEC_MAX_KEY);
        *ret = strdup(json_string_value(v));
        return *ret ? 0 : spec_fail(err, "internal", "out of memory");
}

static int get_tag(const json_t *spec, char **ret, struct spec_error *err)
{
        const json_t *v = field(spec, "tag");
        char *text;

        *ret = NULL;
        if (!v)
                return 0;
        text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
                return spec_fail(err, "internal", "out of memory");
        if (strlen(text) > SPEC_MAX_TAG) {
                free(text);
                return spec_fail(err, "invalid_request",
                                 "\"tag\" must be at most %d bytes as compact JSON", SPEC_MAX_TAG);
        }
        *ret = text;
        return 0;
}

int spec_job(const json_t *spec, const struct spec_defaults *d, struct job **ret,
             struct spec_error *err)
{
        const struct task *t = NULL;
        struct job *j;
        int r;

        if (!json_is_object(spec))
                return spec_fail(err, "invalid_request", "a job spec must be a JSON object");
        r = check_fields(spec, spec_fields, "a job spec has task, args, kind, timeout, "
                         "max_attempts, priority, key and tag", err);
        if (r < 0)
                return r;
        /* Refused before anything is built: the batch decides these. */
        if (d->batch_item && field(spec, "key"))
                return spec_fail(err, "invalid_request",
                                 "a batch item may not set \"key\"; a batch is submitted whole");
        if (d->batch_item && field(spec, "priority"))
                return spec_fail(err, "invalid_request",
                                 "a batch item may not set \"priority\"; the batch's applies");
        r = get_task(spec, d->task, &t, err);
        if (r < 0)
                return r;

        j = job_new();
        if (!j)
                return spec_fail(err, "internal", "out of memory");
        j->state = JOB_PENDING;
        j->task = strdup(t->name);
        if (!j->task) {
                r = spec_fail(err, "internal", "out of memory");
                goto fail;
        }
        r = get_kind(spec, t, d, &j->kind, err);
        if (r < 0)
                goto fail;
        r = get_timeout(spec, d->timeout, &j->timeout, err);
        if (r < 0)
                goto fail;
        r = get_int(spec, "max_attempts", 1, SPEC_MAX_ATTEMPTS,
                    d->max_attempts > 0 ? d->max_attempts : t->default_max_attempts,
                    &j->max_attempts, err);
        if (r < 0)
                goto fail;
        r = get_int(spec, "priority", -SPEC_MAX_PRIORITY, SPEC_MAX_PRIORITY, d->priority,
                    &j->priority, err);
        if (r < 0)
                goto fail;
        r = get_key(spec, &j->key, err);
        if (r < 0)
                goto fail;
        r = get_tag(spec, &j->tag, err);
        if (r < 0)
                goto fail;
        r = get_args(spec, t, &j->args, err);
        if (r < 0)
                goto fail;
        *ret = j;
        return 0;

fail:
        job_free(j);
        return r;
}

int spec_batch_defaults(const json_t *obj, double timeout, struct spec_defaults *ret,
                        struct spec_error *err)
{
        struct spec_defaults d = { .batch_item = true };
        const json_t *kind = field(obj, "kind");
        int r;

        if (field(obj, "task")) {
                r = get_task(obj, NULL, &d.task, err);
                if (r < 0)
                        return r;
        }
        if (kind) {
                r = parse_kind(kind, &d.kind, err);
                if (r < 0)
                        return r;
                d.has_kind = true;
                if (d.task && !task_can_run(d.task, d.kind))
                        return spec_fail(err, "invalid_kind",
                                         "task \"%s\" cannot run as kind \"%s\"",
                                         d.task->name, job_kind_name(d.kind));
        }
        r = get_timeout(obj, timeout, &d.timeout, err);
        if (r < 0)
                return r;
        r = get_int(obj, "max_attempts", 1, SPEC_MAX_ATTEMPTS, 0, &d.max_attempts, err);
        if (r < 0)
                return r;
        r = get_int(obj, "priority", -SPEC_MAX_PRIORITY, SPEC_MAX_PRIORITY, 0, &d.priority, err);
        if (r < 0)
                return r;
        *ret = d;
        return 0;
}

/* No space and no control byte: what a URL may hold unescaped (bytes
 * past ASCII are left to the URL parser, but must be UTF-8: the URL goes
 * into the job's JSON args). */
static bool url_text_ok(const char *s)
{
        for (const char *p = s; *p; p++)
                if ((unsigned char) *p <= ' ' || *p == 0x7f)
                        return false;
        return strbuf_utf8_valid(s);
}

int spec_openai_base_url(const char *url, char **ret, struct spec_error *err)
{
        size_t n = strlen(url), scheme = 0;
        char *s;

        if (strncasecmp(url, "http://", 7) == 0)
                scheme = 7;
        else if (strncasecmp(url, "https://", 8) == 0)
                scheme = 8;
        while (n > scheme && url[n - 1] == '/')
                n--;
        if (scheme == 0 || n == scheme || n > SPEC_OPENAI_MAX_URL || strpbrk(url, "?#") ||
            !url_text_ok(url))
                return spec_fail(err, "invalid_request",
                                 "base_url must be an http:// or https:// URL of at most %d "
                                 "bytes, with a host and no query or fragment",
                                 SPEC_OPENAI_MAX_URL);
        s = strndup(url, n);
        if (!s)
                return spec_fail(err, "internal", "out of memory");
        *ret = s;
        return 0;
}

int spec_openai_line(const json_t *line, const char *base_url, json_t **ret,
                     const json_t **ret_custom_id, struct spec_error *err)
{
        const json_t *id, *method, *url, *body;
        json_t *spec;
        char *full;
        int r;

        if (!json_is_object(line))
                return spec_fail(err, "invalid_request",
                                 "a line of an OpenAI batch file must be a JSON object");
        r = check_fields(line, openai_fields, "a line has custom_id, method, url and body", err);
        if (r < 0)
                return r;
        id = json_object_get(line, "custom_id");
        if (!json_is_string(id) || json_string_length(id) < 1 ||
            json_string_length(id) > SPEC_OPENAI_MAX_CUSTOM_ID)
                return spec_fail(err, "invalid_request",
                                 "\"custom_id\" must be a string of 1 to %d bytes",
                                 SPEC_OPENAI_MAX_CUSTOM_ID);
        method = json_object_get(line, "method");
        if (!json_is_string(method))
                return spec_fail(err, "invalid_request",
                                 "\"method\" must be a string, such as \"POST\"");
        url = json_object_get(line, "url");
        if (!json_is_string(url) || json_string_value(url)[0] != '/' ||
            json_string_length(url) > SPEC_OPENAI_MAX_URL ||
            strlen(json_string_value(url)) != json_string_length(url) ||
            !url_text_ok(json_string_value(url)))
                return spec_fail(err, "invalid_request",
                                 "\"url\" must be a path such as \"/v1/chat/completions\" "
                                 "(it is joined to the base URL), at most %d bytes",
                                 SPEC_OPENAI_MAX_URL);
        body = field(line, "body");
        if (body && !json_is_object(body))
                return spec_fail(err, "invalid_request", "\"body\" must be a JSON object");

        if (asprintf(&full, "%s%s", base_url, json_string_value(url)) < 0)
                return spec_fail(err, "internal", "out of memory");
        spec = json_pack("{s:{s:O, s:s}, s:{s:O}}", "args", "method", (json_t *) method,
                         "url", full, "tag", "custom_id", (json_t *) id);
        free(full);
        if (spec && body &&
            json_object_set(json_object_get(spec, "args"), "json", (json_t *) body) < 0) {
                json_decref(spec);
                spec = NULL;
        }
        if (!spec)
                return spec_fail(err, "internal", "out of memory");
        *ret = spec;
        *ret_custom_id = id;
        return 0;
}
