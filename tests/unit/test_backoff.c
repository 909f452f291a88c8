#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"

static void test_without_jitter_the_delay_doubles_up_to_the_max(void **state) {
        (void)state;
        assert_int_equal(backoff_ms(1000, 60000, 0, 0, 12345), 1000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 1, 12345), 1000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 2, 12345), 2000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 3, 12345), 4000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 6, 12345), 32000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 7, 12345), 60000);
        assert_int_equal(backoff_ms(1000, 60000, 0, 1000000, 12345), 60000);
}

static void test_an_initial_delay_above_the_max_is_cut_to_it(void **state) {
        (void)state;
        assert_int_equal(backoff_ms(5000, 3000, 0, 1, 0), 3000);
        assert_int_equal(backoff_ms(5000, 3000, 0, 4, 0), 3000);
}

static void test_huge_attempts_and_limits_do_not_overflow(void **state) {
        (void)state;
        assert_int_equal(backoff_ms(1, INT64_MAX / 4, 0, 1 << 30, 0),
                         INT64_MAX / 4);
        assert_true(backoff_ms(1, INT64_MAX / 4, 100, 1 << 30, UINT64_MAX) <=
                    INT64_MAX / 2);
}

static void test_jitter_stays_within_the_percent_and_covers_it(void **state) {
        int64_t lo = INT64_MAX, hi = 0;
        uint64_t x = 88172645463325252ull;

        (void)state;
        for (int i = 0; i < 100000; i++) {
                int64_t d;

                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                d = backoff_ms(1000, 60000, 20, 3, x);
                assert_true(d >= 3200 && d <= 4800);
                lo = d < lo ? d : lo;
                hi = d > hi ? d : hi;
        }
        assert_int_equal(lo, 3200);
        assert_int_equal(hi, 4800);
}

static void test_the_random_value_decides_the_point_in_the_range(void **state) {
        (void)state;
        assert_int_equal(backoff_ms(1000, 60000, 20, 1, 0), 800);
        assert_int_equal(backoff_ms(1000, 60000, 20, 1, 400), 1200);
        assert_int_equal(backoff_ms(1000, 60000, 20, 1, 200), 1000);
        assert_int_equal(backoff_ms(1000, 60000, 20, 1, 401), 800);
        /* at the max the jitter still spreads both ways */
        assert_int_equal(backoff_ms(1000, 60000, 20, 10, 24000), 72000);
}

static void test_the_delay_is_at_least_one_ms(void **state) {
        (void)state;
        assert_int_equal(backoff_ms(1, 10, 100, 1, 0), 1);
        assert_int_equal(backoff_ms(2, 10, 100, 1, 0), 1);
        assert_int_equal(backoff_ms(2, 10, 100, 1, 4), 4);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_without_jitter_the_delay_doubles_up_to_the_max),
                cmocka_unit_test(
                        test_an_initial_delay_above_the_max_is_cut_to_it),
                cmocka_unit_test(test_huge_attempts_and_limits_do_not_overflow),
                cmocka_unit_test(
                        test_jitter_stays_within_the_percent_and_covers_it),
                cmocka_unit_test(
                        test_the_random_value_decides_the_point_in_the_range),
                cmocka_unit_test(test_the_delay_is_at_least_one_ms),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
