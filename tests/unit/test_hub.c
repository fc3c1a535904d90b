/* api/hub.c: who fires on a job end (its waiters, its batch's streams, and
 * on a batch-wide end every waiter of the batch), fire-once, deadlines
 * from the hub's thread, remove, stop, and indexes grown past their first
 * size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <time.h>

#include "api/hub.h"

struct probe {
        struct hub_waiter w;
        int fired;
        sem_t *sem;                     /* posted on fire, or NULL */
};

static void probe_fired(struct hub_waiter *w)
{
        struct probe *p = (struct probe *) ((char *) w - offsetof(struct probe, w));

        p->fired++;
        if (p->sem)
                sem_post(p->sem);
}

static void probe_init(struct probe *p, int64_t id, int64_t batch)
{
        *p = (struct probe) { .w = { .id = id, .batch = batch, .fire = probe_fired } };
}

static struct hub *hub_make(void)
{
        struct hub *h = NULL;

        assert_int_equal(hub_new(&h), 0);
        return h;
}

static void test_job_end_fires_its_waiters_once(void **state)
{
        struct hub *h = hub_make();
        struct probe a, b, other;

        (void) state;
        probe_init(&a, 7, 0);
        probe_init(&b, 7, 0);
        probe_init(&other, 8, 0);
        assert_int_equal(hub_add(h, &a.w, 60), 0);
        assert_int_equal(hub_add(h, &b.w, 60), 0);
        assert_int_equal(hub_add(h, &other.w, 60), 0);
        hub_fire_job(h, 7, 0);
        hub_fire_job(h, 7, 0);
        assert_int_equal(a.fired, 1);
        assert_int_equal(b.fired, 1);
        assert_int_equal(other.fired, 0);
        hub_fire(h, &a.w);
        assert_int_equal(a.fired, 1);
        assert_true(hub_remove(h, &other.w));
        assert_false(hub_remove(h, &a.w));
        hub_free(h);
}

static void test_batch_ends(void **state)
{
        struct hub *h = hub_make();
        struct probe stream, stream_other, job1, job2, loose;

        (void) state;
        probe_init(&stream, 0, 5);
        probe_init(&stream_other, 0, 6);
        probe_init(&job1, 11, 5);
        probe_init(&job2, 12, 5);
        probe_init(&loose, 13, 0);
        assert_int_equal(hub_add(h, &stream.w, 60), 0);
        assert_int_equal(hub_add(h, &stream_other.w, 60), 0);
        assert_int_equal(hub_add(h, &job1.w, 60), 0);
        assert_int_equal(hub_add(h, &job2.w, 60), 0);
        assert_int_equal(hub_add(h, &loose.w, 60), 0);

        /* One job of batch 5: its waiters and the batch's streams only. */
        hub_fire_job(h, 11, 5);
        assert_int_equal(job1.fired, 1);
        assert_int_equal(stream.fired, 1);
        assert_int_equal(job2.fired, 0);
        assert_int_equal(stream_other.fired, 0);

        /* Many jobs of batch 5 at once: every waiter of the batch. */
        assert_int_equal(hub_add(h, &stream.w, 60), 0);
        hub_fire_job(h, 0, 5);
        assert_int_equal(stream.fired, 2);
        assert_int_equal(job2.fired, 1);
        assert_int_equal(stream_other.fired, 0);
        assert_int_equal(loose.fired, 0);

        hub_stop(h);
        assert_int_equal(stream_other.fired, 1);
        assert_int_equal(loose.fired, 1);
        hub_free(h);
}

static void test_deadline(void **state)
{
        struct hub *h = hub_make();
        struct probe late, soon;
        struct timespec until;
        sem_t sem;

        (void) state;
        assert_int_equal(sem_init(&sem, 0, 0), 0);
        probe_init(&late, 1, 0);
        probe_init(&soon, 2, 0);
        soon.sem = &sem;
        assert_int_equal(hub_add(h, &late.w, 60), 0);
        assert_int_equal(hub_add(h, &soon.w, 0.05), 0);
        assert_true(hub_left(&soon.w) > 0);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        assert_int_equal(sem_timedwait(&sem, &until), 0);
        assert_int_equal(soon.fired, 1);
        assert_true(hub_left(&soon.w) <= 0);
        assert_int_equal(late.fired, 0);
        assert_true(hub_left(&late.w) > 50);
        hub_stop(h);
        assert_int_equal(late.fired, 1);
        sem_destroy(&sem);
        hub_free(h);
}

static void test_stopped_fires_at_once(void **state)
{
        struct hub *h = hub_make();
        struct probe p;

        (void) state;
        hub_stop(h);
        probe_init(&p, 3, 3);
        assert_int_equal(hub_add(h, &p.w, 60), 0);
        assert_int_equal(p.fired, 1);
        assert_false(hub_remove(h, &p.w));
        hub_free(h);
}

/* Past the first table size, with ids and batches shared: every waiter is
 * still found, and removal in any order keeps the others. */
static void test_many(void **state)
{
        enum { N = 5000 };
        struct probe *p = calloc(N, sizeof(*p));
        struct hub *h = hub_make();
        int i;

        (void) state;
        assert_non_null(p);
        for (i = 0; i < N; i++) {
                probe_init(&p[i], 1 + i / 2, 1 + i % 7);
                assert_int_equal(hub_add(h, &p[i].w, 60 + i % 13), 0);
        }
        for (i = 0; i < N; i += 3)
                assert_true(hub_remove(h, &p[i].w));
        for (i = 0; i < N / 2; i++)
                hub_fire_job(h, 1 + i, 0);
        for (i = 0; i < N; i++)
                assert_int_equal(p[i].fired, i % 3 == 0 ? 0 : 1);
        hub_free(h);
        free(p);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_job_end_fires_its_waiters_once),
                cmocka_unit_test(test_batch_ends),
                cmocka_unit_test(test_deadline),
                cmocka_unit_test(test_stopped_fires_at_once),
                cmocka_unit_test(test_many),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
