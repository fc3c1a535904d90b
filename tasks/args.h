/* Checks shared by the tasks' validate functions. */
#ifndef FUTURED_TASK_ARGS_H
#define FUTURED_TASK_ARGS_H

#include <stddef.h>
#include <jansson.h>

/* 0 when args is an object with no field outside names (NULL-terminated);
 * else -EINVAL with a message naming every unknown field. */
int task_args_check_fields(const json_t *args, const char *const *names,
                           char *msg, size_t msglen);

#endif
