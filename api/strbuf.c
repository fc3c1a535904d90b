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

void strbuf_json_string(struct strbuf *b, const char *s)
{
        const char *run = s;

        strbuf_append(b, "\"", 1);
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                char esc[8];

                if (c >= 0x20 && c != '"' && c != '\\')
                        continue;
                strbuf_append(b, run, (size_t) (s - run));
                run = s + 1;
                if (c == '"' || c == '\\')
                        snprintf(esc, sizeof(esc), "\\%c", c);
                else if (c == '\n')
                        snprintf(esc, sizeof(esc), "\\n");
                else if (c == '\t')
                        snprintf(esc, sizeof(esc), "\\t");
                else
                        snprintf(esc, sizeof(esc), "\\u%04x", c);
                strbuf_puts(b, esc);
        }
        strbuf_append(b, run, (size_t) (s - run));
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
