/* Argument checks every task shares, so each validate() only states its own
 * ranges. Messages go to clients verbatim: they name the offending field. */
#include "tasks/args.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool name_known(const char *const *names, const char *key)
{
        for (; *names; names++)
                if (strcmp(*names, key) == 0)
                        return true;
        return false;
}

/* Appends to msg, keeping it NUL-terminated when it runs out of room. */
static void msg_append(char *msg, size_t msglen, size_t *len, const char *fmt,
                       const char *s)
{
        int n;

        if (*len >= msglen)
                return;
        n = snprintf(msg + *len, msglen - *len, fmt, s);
        if (n > 0)
                *len += (size_t)n;
}

int task_args_check_fields(const json_t *args, const char *const *names,
                           char *msg, size_t msglen)
{
        const char *key;
        json_t *value;
        size_t len = 0;
        bool any = false;

        if (!json_is_object(args)) {
                snprintf(msg, msglen, "args must be an object");
                return -EINVAL;
        }
        msg[0] = '\0';
        json_object_foreach((json_t *)args, key, value) {
                if (name_known(names, key))
                        continue;
                msg_append(msg, msglen, &len, any ? ", \"%s\"" : "unknown args field \"%s\"", key);
                any = true;
        }
        if (!any)
                return 0;
        for (const char *const *n = names; *n; n++)
                msg_append(msg, msglen, &len, n == names ? " (expected: %s" : ", %s", *n);
        msg_append(msg, msglen, &len, "%s", names[0] ? ")" : " (expected none)");
        return -EINVAL;
}
