/* sleep: waits `seconds`, the stand-in for a slow I/O call. It waits on its
 * context, so cancel and timeout end it at once. */
#include "tasks/task.h"

#include <errno.h>
#include <stdio.h>

#include "tasks/args.h"

#define SLEEP_MAX 86400.0

static const char *const sleep_params[] = { "seconds", NULL };

static int sleep_validate(const json_t *args, char *msg, size_t msglen)
{
        const json_t *seconds;
        double v;
        int r;

        r = task_args_check_fields(args, sleep_params, msg, msglen);
        if (r < 0)
                return r;
        seconds = json_object_get(args, "seconds");
        v = json_is_number(seconds) ? json_number_value(seconds) : -1;
        if (!(v >= 0 && v <= SLEEP_MAX)) {
                snprintf(msg, msglen, "seconds must be a number between 0 and %.0f", SLEEP_MAX);
                return -EINVAL;
        }
        return 0;
}

static int sleep_run(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                     struct task_error *err)
{
        double seconds = json_number_value(json_object_get(args, "seconds"));
        json_t *result;
        int r;

        r = task_ctx_sleep(ctx, seconds);
        if (r == -ETIMEDOUT)
                return task_fail(err, "timeout", true, "deadline reached while sleeping");
        if (r < 0)
                return task_fail(err, "cancelled", false, "stopped while sleeping");
        result = json_pack("{s:f}", "slept", seconds);
        if (!result)
                return task_fail(err, "task_error", false, "out of memory");
        *ret_result = result;
        return 0;
}

const struct task task_sleep = {
        .name = "sleep",
        .description = "Waits `seconds` (0 to 86400), like a slow I/O call.",
        .kinds = 1u << JOB_KIND_IO,
        .default_kind = JOB_KIND_IO,
        .default_max_attempts = 1,
        .params = sleep_params,
        .validate = sleep_validate,
        .run = sleep_run,
};
