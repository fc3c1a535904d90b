/* Bearer-token authentication: the tokens are read once at start from a
 * file (server.c reads it), one a line, and every request but the open routes must present one
 * in "Authorization: Bearer <token>". Tokens are never logged. */
#ifndef FUTURED_API_AUTH_H
#define FUTURED_API_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct auth;

/* Parses the text of a tokens file (origin names it in messages): one
 * token a line, surrounding blanks trimmed, blank lines and lines starting
 * with '#' skipped. Takes text (len bytes, NUL-terminated) whatever the
 * outcome. Logs what is wrong: -EINVAL when a line is not a token (RFC
 * 6750's b64token) or there is none. *ret is the caller's, auth_free(). */
int auth_new(char *text, size_t len, const char *origin, struct auth **ret);
/* Accepts NULL; wipes the tokens from memory. */
void auth_free(struct auth *a);

/* Whether the Authorization header value (NULL: none sent) carries one of
 * the tokens. Its time depends on the header's length and the number of
 * tokens, never on how much of a token matched. */
bool auth_check(const struct auth *a, const char *header);
/* Whether header (NULL: none sent) is a bearer credential at all, known or
 * not: RFC 6750 names a wrong token invalid_token, and says nothing of a
 * request that sent none (or another scheme). */
bool auth_is_bearer(const char *header);

#endif
