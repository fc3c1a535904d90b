/* Encoding only: nothing in futured reads base64 back. */
#include "tasks/base64.h"

#include <stdint.h>
#include <stdlib.h>

char *base64_encode(const void *data, size_t len)
{
        static const char digits[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const unsigned char *in = data;
        char *out, *o;

        if (len > (SIZE_MAX - 1) / 4 * 3 - 2)
                return NULL;
        out = malloc((len + 2) / 3 * 4 + 1);
        if (!out)
                return NULL;
        o = out;
        for (size_t i = 0; i < len; i += 3) {
                unsigned v = (unsigned)in[i] << 16;

                if (i + 1 < len)
                        v |= (unsigned)in[i + 1] << 8;
                if (i + 2 < len)
                        v |= in[i + 2];
                *o++ = digits[v >> 18 & 63];
                *o++ = digits[v >> 12 & 63];
                *o++ = i + 1 < len ? digits[v >> 6 & 63] : '=';
                *o++ = i + 2 < len ? digits[v & 63] : '=';
        }
        *o = '\0';
        return out;
}
