/* A growable text buffer for building response bodies. Errors are sticky:
 * an append that runs out of memory marks the buffer and strbuf_steal()
 * reports -ENOMEM, so a renderer checks once, at the end. */
#ifndef FUTURED_API_STRBUF_H
#define FUTURED_API_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
        char *data;     /* owned; NUL-terminated while !failed */
        size_t len;
        size_t cap;
        bool failed;
};

void strbuf_append(struct strbuf *b, const char *s, size_t n);
void strbuf_puts(struct strbuf *b, const char *s);
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a quoted JSON string, valid whatever the bytes: a sequence that is
 * not UTF-8 (a client string cut short by a fixed-size message) becomes
 * U+FFFD. */
void strbuf_json_string(struct strbuf *b, const char *s);
void strbuf_insert(struct strbuf *b, size_t at, const char *s, size_t n);
/* True when s is UTF-8 throughout (what jansson takes for a string). */
bool strbuf_utf8_valid(const char *s);
/* Hands the text over (*ret is the caller's, free()) and empties b; -ENOMEM
 * when an append failed. */
int strbuf_steal(struct strbuf *b, char **ret, size_t *ret_len);
/* Frees and empties b. */
void strbuf_reset(struct strbuf *b);

#endif
