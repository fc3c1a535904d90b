/* What a client may send: the limits on a JSON body and the rules of a job
 * spec. Pure functions (no server, no store), so the tests can drive every
 * rule directly. Every refusal comes with a stable code and a message that
 * names the offending field. */
#ifndef FUTURED_API_SPEC_H
#define FUTURED_API_SPEC_H

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

struct spec_defaults {
        double timeout;                 /* seconds, for a spec without "timeout" */
};

/* Turns a job spec into a pending job (*ret, the caller's): args always an
 * object (positional args named after the task's parameters), defaults
 * filled. -EINVAL with err filled, or -ENOMEM (err "internal"). */
int spec_job(const json_t *spec, const struct spec_defaults *d, struct job **ret,
             struct spec_error *err);

#endif
