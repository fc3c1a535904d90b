/* Strict parsers of the numbers a client writes in a query string or a
 * header: one spelling per value, so " 5", "+5", "0x10", "1e3" and "inf"
 * are refused rather than read as something the client may not mean. */
#ifndef FUTURED_API_QUERY_H
#define FUTURED_API_QUERY_H

#include <stdint.h>

/* Decimal digits only, at most max; -EINVAL otherwise (empty, sign, junk,
 * overflow). */
int query_parse_int(const char *s, int64_t max, int64_t *ret);
/* Seconds as plain decimal, "5" or "0.25", at most max; -EINVAL otherwise. */
int query_parse_seconds(const char *s, double max, double *ret);

#endif
