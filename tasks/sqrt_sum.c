/* sqrt_sum: sum(sqrt(i) for i in range(n)), the tutorial's CPU workload.
 * The sum is accumulated in order, as written (no fast-math anywhere in the
 * build), so every worker gives the same bits. The result names the pid that
 * computed it, so a client can see the work spread over processes. It runs
 * only in a worker, whose timeout and cancel are a SIGKILL, so the loop never
 * looks at its context. */
#include "tasks/task.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "tasks/args.h"

#define SQRT_SUM_MAX 10000000000LL

static const char *const sqrt_sum_params[] = { "n", NULL };

/* n as an integer within range; an integral real such as 1e6 counts too. */
static int sqrt_sum_get_n(const json_t *args, int64_t *ret)
{
        const json_t *n = json_object_get(args, "n");
        double d;

        if (json_is_integer(n)) {
                json_int_t v = json_integer_value(n);

                if (v < 0 || v > SQRT_SUM_MAX)
                        return -ERANGE;
                *ret = (int64_t)v;
                return 0;
        }
        if (!json_is_real(n))
                return -EINVAL;
        d = json_real_value(n);
        if (!(d >= 0 && d <= (double)SQRT_SUM_MAX) || d != floor(d))
                return -ERANGE;
        *ret = (int64_t)d;
        return 0;
}

static int sqrt_sum_validate(const json_t *args, char *msg, size_t msglen)
{
        int64_t n;
        int r;

        r = task_args_check_fields(args, sqrt_sum_params, msg, msglen);
        if (r < 0)
                return r;
        if (sqrt_sum_get_n(args, &n) < 0) {
                snprintf(msg, msglen, "n must be an integer between 0 and %lld", SQRT_SUM_MAX);
                return -EINVAL;
        }
        return 0;
}

static int sqrt_sum_run(struct task_ctx *ctx, const json_t *args, json_t **ret_result,
                        struct task_error *err)
{
        double sum = 0;
        json_t *result;
        int64_t n;

        if (sqrt_sum_get_n(args, &n) < 0)
                return task_fail(err, "task_error", false, "bad argument n");
        for (int64_t i = 0; i < n; i++)
                sum += sqrt((double)i);
        result = json_pack("{s:f, s:I}", "sum", sum, "pid", (json_int_t)getpid());
        if (!result)
                return task_fail(err, "task_error", false, "out of memory");
        *ret_result = result;
        return 0;
}

const struct task task_sqrt_sum = {
        .name = "sqrt_sum",
        .description = "Computes sum(sqrt(i) for i in range(n)), n up to 1e10, in a worker "
                       "process; the result names the worker's pid.",
        .kinds = 1u << JOB_KIND_CPU,
        .default_kind = JOB_KIND_CPU,
        .default_max_attempts = 1,
        .params = sqrt_sum_params,
        .validate = sqrt_sum_validate,
        .run = sqrt_sum_run,
};
