/* What a client may send: the limits on a JSON body and the rules of a job
 * spec. Pure functions (no server, no store), so the tests can drive every
 * rule directly. Every refusal comes with a stable code and a message that
 * names the offending field. */
#ifndef FUTURED_API_SPEC_H
#define FUTURED_API_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#include "storage/job.h"

#define SPEC_MAX_DEPTH 32               /* nesting of arrays and objects */
/* Seconds. A shorter timeout (1e-300) is shorter than any task can run, so
 * it could only ever fail the job. */
#define SPEC_MIN_TIMEOUT 0.001
#define SPEC_MAX_TIMEOUT 86400.0        /* seconds */
#define SPEC_MAX_ATTEMPTS 100
#define SPEC_MAX_PRIORITY 1000          /* and -SPEC_MAX_PRIORITY */
#define SPEC_MAX_KEY 256                /* bytes */
#define SPEC_MAX_TAG 16384              /* bytes of compact JSON */

struct spec_error {
        const char *code;               /* "invalid_json", "unknown_field", ... */
        char message[256];
};

/* Parses a request body. -EINVAL with err "too_deep" past SPEC_MAX_DEPTH, or
 * "invalid_json" (syntax, duplicate key, number out of range). *ret is the
 * caller's. */
int spec_parse(const char *text, size_t len, json_t **ret, struct spec_error *err);

struct task;

/* What a spec leaves out. A job of its own takes only the server's timeout;
 * a batch item also takes the batch's task, kind and max_attempts, and the
 * batch's priority, which an item may not set (nor a key: a batch is
 * submitted once, whole). Zeroed fields mean "no default". */
struct spec_defaults {
        double timeout;                 /* seconds, for a spec without "timeout" */
        const struct task *task;        /* NULL: "task" is required */
        bool has_kind;
        enum job_kind kind;             /* when has_kind, instead of the task's own */
        int max_attempts;               /* 0: the task's own */
        bool batch_item;
        int priority;                   /* every batch item's */
};

/* A batch's defaults from its top-level "task", "kind", "timeout",
 * "max_attempts" and "priority" (other fields are the caller's to check),
 * each validated as in a job spec; timeout is the server's. -EINVAL with
 * err filled. */
int spec_batch_defaults(const json_t *obj, double timeout, struct spec_defaults *ret,
                        struct spec_error *err);

/* Turns a job spec into a pending job (*ret, the caller's): args always an
 * object (positional args named after the task's parameters), defaults
 * from d filled. -EINVAL with err filled, or -ENOMEM (err "internal"). */
int spec_job(const json_t *spec, const struct spec_defaults *d, struct job **ret,
             struct spec_error *err);

/* OpenAI Batch API input files (POST /v1/batches?format=openai). A file
 * has at most SPEC_OPENAI_MAX_LINES lines (OpenAI's own limit), so the set
 * of custom_ids that finds duplicates stays bounded. */
#define SPEC_OPENAI_MAX_LINES 50000
#define SPEC_OPENAI_MAX_CUSTOM_ID 256   /* bytes */
#define SPEC_OPENAI_MAX_URL 2048        /* bytes of base URL, and of a line's path */

/* Checks a base URL (http:// or https://, no query or fragment) and returns
 * it without trailing slashes in *ret (the caller's). -EINVAL with err
 * filled, or -ENOMEM. */
int spec_openai_base_url(const char *url, char **ret, struct spec_error *err);

/* One line of an input file, {"custom_id", "method", "url", "body"}, as the
 * spec of an http job against base_url (from spec_openai_base_url()):
 * {"args": {"method", "url": base_url + url, "json": body}, "tag":
 * {"custom_id"}}, with no task (the batch's). *ret is the caller's;
 * *ret_custom_id is the line's string, borrowed. -EINVAL with err filled
 * (the http task's own checks come later, in spec_job()), or -ENOMEM. */
int spec_openai_line(const json_t *line, const char *base_url, json_t **ret,
                     const json_t **ret_custom_id, struct spec_error *err);

#endif
