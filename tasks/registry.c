/* The one table of tasks. A new task is a file defining `task_<name>` and one
 * line here; the definitions need no header since only this table names
 * them. */
#include "tasks/task.h"

#include <string.h>

extern const struct task task_exec;
extern const struct task task_http;
extern const struct task task_noop;
extern const struct task task_sleep;
extern const struct task task_sqrt_sum;

static const struct task *const tasks[] = {
        &task_exec,
        &task_http,
        &task_noop,
        &task_sleep,
        &task_sqrt_sum,
        NULL,
};

const struct task *task_find(const char *name)
{
        for (const struct task *const *t = tasks; *t; t++)
                if (strcmp((*t)->name, name) == 0)
                        return *t;
        return NULL;
}

const struct task *const *task_all(void)
{
        return tasks;
}
