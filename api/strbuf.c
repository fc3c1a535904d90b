/* Text buffers; see strbuf.h. The buffer keeps a terminating NUL so vsnprintf
 * can write straight into it. */
#include "api/strbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Makes room for n more bytes plus the NUL. */
static bool reserve(struct strbuf *b, size_t n)
{
        size_t cap;
        char *p;

        if (b->failed)
                return false;
        if (b->len + n < b->cap)
                return true;
        cap = b->cap ? b->cap : 256;
        while (cap <= b->len + n)
                cap *= 2;
        p = realloc(b->data, cap);
        if (!p) {
                b->failed = true;
                return false;
        }
        b->data = p;
        b->cap = cap;
        return true;
}

void strbuf_append(struct strbuf *b, const char *s, size_t n)
{
        if (!reserve(b, n))
                return;
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
}

void strbuf_puts(struct strbuf *b, const char *s)
{
        strbuf_append(b, s, strlen(s));
}

void strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0 || !reserve(b, (size_t) n))
                return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t) n;
}

/* Whether s starts with a valid UTF-8 sequence (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF). *ret_len is how many bytes
 * it covers either way: when invalid, its longest valid-looking prefix, which
 * one U+FFFD replaces. A NUL is never a continuation byte, so this never
 * reads past the string. */
static bool utf8_next(const unsigned char *s, size_t *ret_len)
{
        unsigned char lo = 0x80, hi = 0xbf;
        size_t n;

        if (s[0] >= 0xc2 && s[0] <= 0xdf)
                n = 2;
        else if (s[0] >= 0xe0 && s[0] <= 0xef) {
                n = 3;
                if (s[0] == 0xe0)
                        lo = 0xa0;
                else if (s[0] == 0xed)
                        hi = 0x9f;
        } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
                n = 4;
                if (s[0] == 0xf0)
                        lo = 0x90;
                else if (s[0] == 0xf4)
                        hi = 0x8f;
        } else {
                *ret_len = 1;
                return s[0] < 0x80;
        }
        for (size_t i = 1; i < n; i++) {
                if (s[i] < lo || s[i] > hi) {
                        *ret_len = i;
                        return false;
                }
                lo = 0x80;
                hi = 0xbf;
        }
        *ret_len = n;
        return true;
}

bool strbuf_utf8_valid(const char *s)
{
        const unsigned char *u = (const unsigned char *) s;
        size_t n;

        for (; *u; u += n)
                if (!utf8_next(u, &n))
                        return false;
        return true;
}

/* What replaces the byte c (ASCII) in a JSON string, or NULL: c stays. */
static const char *json_escape(unsigned char c, char buf[static 8])
{
        if (c >= 0x20 && c != '"' && c != '\\')
                return NULL;
        if (c == '"' || c == '\\')
                snprintf(buf, 8, "\\%c", c);
        else if (c == '\n')
                snprintf(buf, 8, "\\n");
        else if (c == '\t')
                snprintf(buf, 8, "\\t");
        else
                snprintf(buf, 8, "\\u%04x", c);
        return buf;
}

void strbuf_json_string(struct strbuf *b, const char *s)
{
        const unsigned char *u = (const unsigned char *) s, *run = u;

        strbuf_append(b, "\"", 1);
        while (*u) {
                const char *esc;
                char buf[8];
                size_t n = 1;

                if (*u >= 0x80)
                        esc = utf8_next(u, &n) ? NULL : "\\ufffd";
                else
                        esc = json_escape(*u, buf);
                if (esc) {
                        strbuf_append(b, (const char *) run, (size_t) (u - run));
                        strbuf_puts(b, esc);
                        run = u + n;
                }
                u += n;
        }
        strbuf_append(b, (const char *) run, (size_t) (u - run));
        strbuf_append(b, "\"", 1);
}

void strbuf_insert(struct strbuf *b, size_t at, const char *s, size_t n)
{
        if (at > b->len || !reserve(b, n))
                return;
        memmove(b->data + at + n, b->data + at, b->len - at + 1);
        memcpy(b->data + at, s, n);
        b->len += n;
}

int strbuf_steal(struct strbuf *b, char **ret, size_t *ret_len)
{
        if (b->failed || !reserve(b, 0)) {
                strbuf_reset(b);
                return -ENOMEM;
        }
        *ret = b->data;
        *ret_len = b->len;
        *b = (struct strbuf) { 0 };
        return 0;
}

void strbuf_reset(struct strbuf *b)
{
        free(b->data);
        *b = (struct strbuf) { 0 };
}
