/* Number parsers for query strings and headers. strtoll() and strtod()
 * alone accept leading blanks, signs, hex and exponents; the digits are
 * checked first, and the conversion only then. */
#include "api/query.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DIGITS "0123456789"

int query_parse_int(const char *s, int64_t max, int64_t *ret)
{
        size_t n = strspn(s, DIGITS);
        long long v;

        if (n == 0 || s[n] != '\0')
                return -EINVAL;
        errno = 0;
        v = strtoll(s, NULL, 10);
        if (errno != 0 || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

int query_parse_seconds(const char *s, double max, double *ret)
{
        const char *p = s + strspn(s, DIGITS);
        size_t frac;
        double v;

        if (p == s)
                return -EINVAL;
        if (*p == '.') {
                frac = strspn(p + 1, DIGITS);
                if (frac == 0)
                        return -EINVAL;
                p += 1 + frac;
        }
        if (*p != '\0')
                return -EINVAL;
        /* Overflow gives HUGE_VAL, past any max. */
        v = strtod(s, NULL);
        if (v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}
