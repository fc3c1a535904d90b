/* Names of kinds and states as they appear in JSON and in the database; the
 * tables are indexed by the enums, so a new value needs one new row here. */
#include "storage/job.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[JOB_KIND__COUNT] = {
        [JOB_KIND_IO] = "io",
        [JOB_KIND_CPU] = "cpu",
};

static const char *const state_names[JOB_STATE__COUNT] = {
        [JOB_PENDING] = "pending",
        [JOB_RUNNING] = "running",
        [JOB_SUCCEEDED] = "succeeded",
        [JOB_FAILED] = "failed",
        [JOB_CANCELLED] = "cancelled",
};

static int name_lookup(const char *const *names, int n, const char *s)
{
        if (!s)
                return -EINVAL;
        for (int i = 0; i < n; i++)
                if (strcmp(s, names[i]) == 0)
                        return i;
        return -EINVAL;
}

const char *job_kind_name(enum job_kind k)
{
        return (unsigned) k < JOB_KIND__COUNT ? kind_names[k] : NULL;
}

int job_kind_parse(const char *s, enum job_kind *ret)
{
        int i = name_lookup(kind_names, JOB_KIND__COUNT, s);

        if (i < 0)
                return i;
        *ret = (enum job_kind) i;
        return 0;
}

const char *job_state_name(enum job_state s)
{
        return (unsigned) s < JOB_STATE__COUNT ? state_names[s] : NULL;
}

int job_state_parse(const char *s, enum job_state *ret)
{
        int i = name_lookup(state_names, JOB_STATE__COUNT, s);

        if (i < 0)
                return i;
        *ret = (enum job_state) i;
        return 0;
}

int64_t job_now_ms(void)
{
        struct timespec ts;

        /* CLOCK_REALTIME cannot fail on Linux; the stored times are wall
         * clock because clients read them as dates. */
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct job *job_new(void)
{
        struct job *j = calloc(1, sizeof(*j));

        if (j)
                j->index = -1;
        return j;
}

void job_free(struct job *j)
{
        if (!j)
                return;
        free(j->task);
        free(j->args);
        free(j->tag);
        free(j->key);
        free(j->result);
        free(j->error);
        free(j);
}
