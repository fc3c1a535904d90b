/* noop: returns its args. For tests and benchmarks of everything around a
 * task; it runs in either pool. */
#include "tasks/task.h"

static int noop_validate(const json_t *args, char *msg, size_t msglen)
{
        return 0;
}

static int noop_run(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                    struct task_error *err)
{
        json_t *copy = json_deep_copy(args);

        if (!copy)
                return task_fail(err, "task_error", false, "out of memory");
        *ret_result = copy;
        return 0;
}

const struct task task_noop = {
        .name = "noop",
        .description = "Returns its args unchanged.",
        .kinds = (1u << JOB_KIND_IO) | (1u << JOB_KIND_CPU),
        .default_kind = JOB_KIND_IO,
        .default_max_attempts = 1,
        .params = NULL,
        .validate = noop_validate,
        .run = noop_run,
};
