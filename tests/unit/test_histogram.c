/* Fixed-bucket histograms: an observation lands in the first bucket whose
 * bound is not below it ("le"), past the last bound in the overflow
 * bucket; count and sum follow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "storage/histogram.h"

static const double bounds[] = { 0.001, 0.01, 0.1, 1 };

static void test_buckets(void **state)
{
        struct histogram h;

        (void)state;
        histogram_init_array(&h, bounds);
        assert_int_equal(h.n_bounds, 4);
        assert_int_equal(h.count, 0);
        histogram_observe(&h, 0);               /* below the first bound */
        histogram_observe(&h, 0.001);           /* on a bound: that bucket */
        histogram_observe(&h, 0.0011);
        histogram_observe(&h, 0.5);
        histogram_observe(&h, 1);
        histogram_observe(&h, 3600);            /* past every bound */
        assert_int_equal(h.counts[0], 2);
        assert_int_equal(h.counts[1], 1);
        assert_int_equal(h.counts[2], 0);
        assert_int_equal(h.counts[3], 2);
        assert_int_equal(h.counts[4], 1);
        assert_int_equal(h.count, 6);
        assert_true(h.sum > 3601.50209 && h.sum < 3601.50211);
}

static void test_copy_is_snapshot(void **state)
{
        struct histogram h, copy;

        (void)state;
        histogram_init_array(&h, bounds);
        histogram_observe(&h, 0.05);
        copy = h;
        histogram_observe(&h, 0.05);
        assert_int_equal(copy.count, 1);
        assert_int_equal(copy.counts[2], 1);
        assert_ptr_equal(copy.bounds, bounds);
        assert_int_equal(h.counts[2], 2);
}

static void test_too_many_bounds(void **state)
{
        double many[HISTOGRAM_MAX_BOUNDS + 5];
        struct histogram h;

        (void)state;
        for (unsigned i = 0; i < sizeof(many) / sizeof(many[0]); i++)
                many[i] = i + 1;
        histogram_init_array(&h, many);
        assert_int_equal(h.n_bounds, HISTOGRAM_MAX_BOUNDS);
        histogram_observe(&h, 1e9);
        assert_int_equal(h.counts[HISTOGRAM_MAX_BOUNDS], 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_buckets),
                cmocka_unit_test(test_copy_is_snapshot),
                cmocka_unit_test(test_too_many_bounds),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
