/* Bearer tokens. They live in the file's text, cut in place, each
 * NUL-terminated, wiped when freed. A check walks every token and every
 * byte the client sent whatever matched, so a wrong guess takes as long as
 * a nearly right one. */
#include "api/auth.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/log.h"

#define AUTH_SCHEME "Bearer"

struct auth {
        char *text;             /* owned: the tokens, each NUL-terminated */
        size_t text_len;
        size_t *offsets;        /* owned: where each token starts in text */
        size_t *lengths;
        size_t n;
};

void auth_free(struct auth *a)
{
        if (!a)
                return;
        if (a->text)
                explicit_bzero(a->text, a->text_len);
        free(a->text);
        free(a->offsets);
        free(a->lengths);
        free(a);
}

/* RFC 6750: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static bool token_valid(const char *s, size_t n)
{
        size_t i = 0;

        while (i < n && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ||
                         (s[i] >= '0' && s[i] <= '9') || (s[i] && strchr("-._~+/", s[i]))))
                i++;
        if (i == 0)
                return false;
        while (i < n && s[i] == '=')
                i++;
        return i == n;
}

/* Cuts text into tokens in place; -EINVAL (logged) at the first bad line. */
static int parse(struct auth *a, const char *origin)
{
        size_t lines = 1, line = 0;
        char *s = a->text, *end = a->text + a->text_len;

        for (size_t i = 0; i < a->text_len; i++)
                lines += a->text[i] == '\n';
        a->offsets = calloc(lines, sizeof(*a->offsets));
        a->lengths = calloc(lines, sizeof(*a->lengths));
        if (!a->offsets || !a->lengths)
                return -ENOMEM;
        while (s < end) {
                char *nl = memchr(s, '\n', (size_t) (end - s)), *e = nl ? nl : end;

                line++;
                *e = '\0';
                s += strspn(s, " \t\r");
                while (e > s && strchr(" \t\r", e[-1]))
                        *--e = '\0';
                if (*s != '\0' && *s != '#') {
                        if (!token_valid(s, (size_t) (e - s))) {
                                log_error("%s:%zu: not a bearer token (RFC 6750 b64token)",
                                          origin, line);
                                return -EINVAL;
                        }
                        a->offsets[a->n] = (size_t) (s - a->text);
                        a->lengths[a->n] = (size_t) (e - s);
                        a->n++;
                }
                s = (nl ? nl : end) + 1;
        }
        if (a->n == 0) {
                log_error("%s: no token in the tokens file", origin);
                return -EINVAL;
        }
        return 0;
}

int auth_new(char *text, size_t len, const char *origin, struct auth **ret)
{
        struct auth *a = calloc(1, sizeof(*a));
        int r;

        if (!a) {
                explicit_bzero(text, len);
                free(text);
                return log_errno(LOG_ERR, -ENOMEM, "tokens file %s", origin);
        }
        a->text = text;
        a->text_len = len;
        r = parse(a, origin);
        if (r < 0) {
                if (r != -EINVAL)
                        log_errno(LOG_ERR, r, "tokens file %s", origin);
                auth_free(a);
                return r;
        }
        *ret = a;
        return 0;
}

/* 0 when the n bytes of s are the token, in time that depends on n only. */
static unsigned token_differs(const char *s, size_t n, const char *token, size_t len)
{
        unsigned diff = n != len;

        for (size_t i = 0; i < n; i++)
                diff |= (unsigned char) s[i] ^ (unsigned char) token[i % len];
        return diff;
}

/* The token of a "Bearer <token>" header value, its length in *ret_len;
 * NULL when header (NULL: none sent) is not one. */
static const char *bearer_token(const char *header, size_t *ret_len)
{
        size_t scheme = sizeof(AUTH_SCHEME) - 1, n;

        if (!header || strncasecmp(header, AUTH_SCHEME, scheme) != 0 ||
            (header[scheme] != ' ' && header[scheme] != '\t'))
                return NULL;
        header += scheme;
        header += strspn(header, " \t");
        n = strcspn(header, " \t");
        if (n == 0 || header[n + strspn(header + n, " \t")] != '\0')
                return NULL;
        *ret_len = n;
        return header;
}

bool auth_is_bearer(const char *header)
{
        size_t n;

        return bearer_token(header, &n) != NULL;
}

bool auth_check(const struct auth *a, const char *header)
{
        const char *token;
        unsigned match = 0;
        size_t n;

        token = bearer_token(header, &n);
        if (!token)
                return false;
        for (size_t i = 0; i < a->n; i++)
                match |= !token_differs(token, n, a->text + a->offsets[i], a->lengths[i]);
        return match;
}
