/* JSON text from outside the daemon (request bodies, HTTP answers, command
 * output): its nesting counted on the raw text before jansson builds
 * anything, so a body of a million '[' costs one pass and no allocation. */
#ifndef FUTURED_TASKS_JSONTEXT_H
#define FUTURED_TASKS_JSONTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

/* How deep a task's output may nest and still be kept as JSON. A result is
 * stored inside an object and read back inside others (a worker's reply,
 * an OpenAI output line); jansson refuses to parse past 2048 levels, so
 * what is stored must stay well below that. */
#define JSONTEXT_OUTPUT_DEPTH 1024

/* True when no array or object in text[0..len) nests deeper than max. */
bool jsontext_depth_ok(const char *text, size_t len, unsigned max);
/* text[0..len) (any JSON value, NUL bytes allowed) parsed, or NULL when it
 * is not JSON or nests deeper than JSONTEXT_OUTPUT_DEPTH: the caller keeps
 * it as text then. The caller's. */
json_t *jsontext_load_output(const char *text, size_t len);

#endif
