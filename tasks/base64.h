/* Base64 (RFC 4648, with padding) for task results that must carry bytes
 * JSON strings cannot: output that is not UTF-8. */
#ifndef FUTURED_TASK_BASE64_H
#define FUTURED_TASK_BASE64_H

#include <stddef.h>

/* The encoding of len bytes, NUL-terminated and malloc'd (the caller's), or
 * NULL when out of memory. */
char *base64_encode(const void *data, size_t len);

#endif
