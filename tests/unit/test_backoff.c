#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"
#include "fixture.h"

/* One call of backoff_ms() and the delay it must give; @name says the
 * behaviour the row pins down. */
struct backoff_case {
        const char *name;
        int64_t initial_ms;
        int64_t max_ms;
        int jitter_percent;
        int attempt;
        uint64_t rnd;
        int64_t expected_ms;
};

static const struct backoff_case cases[] = {
        /* without jitter the delay doubles up to the max */
        {"no_jitter_attempt_0", 1000, 60000, 0, 0, 12345, 1000},
        {"no_jitter_attempt_1", 1000, 60000, 0, 1, 12345, 1000},
        {"no_jitter_attempt_2_doubles", 1000, 60000, 0, 2, 12345, 2000},
        {"no_jitter_attempt_3_doubles", 1000, 60000, 0, 3, 12345, 4000},
        {"no_jitter_attempt_6_doubles", 1000, 60000, 0, 6, 12345, 32000},
        {"no_jitter_attempt_7_at_max", 1000, 60000, 0, 7, 12345, 60000},
        {"no_jitter_attempt_1e6", 1000, 60000, 0, 1000000, 12345, 60000},
        /* an initial delay above the max is cut to it */
        {"initial_above_max_attempt_1", 5000, 3000, 0, 1, 0, 3000},
        {"initial_above_max_attempt_4", 5000, 3000, 0, 4, 0, 3000},
        /* the random value decides the point in the range */
        {"random_0_lowest", 1000, 60000, 20, 1, 0, 800},
        {"random_400_highest", 1000, 60000, 20, 1, 400, 1200},
        {"random_200_middle", 1000, 60000, 20, 1, 200, 1000},
        {"random_401_wraps_to_lowest", 1000, 60000, 20, 1, 401, 800},
        /* at the max the jitter still spreads both ways */
        {"random_at_max_spreads_up", 1000, 60000, 20, 10, 24000, 72000},
        /* the delay is at least one ms */
        {"at_least_1ms_initial_1", 1, 10, 100, 1, 0, 1},
        {"at_least_1ms_initial_2", 2, 10, 100, 1, 0, 1},
        {"at_least_1ms_initial_2_random_4", 2, 10, 100, 1, 4, 4},
};

static void test_backoff_case(void **state) {
        const struct backoff_case *c = *state;

        assert_int_equal(backoff_ms(c->initial_ms, c->max_ms, c->jitter_percent,
                                    c->attempt, c->rnd),
                         c->expected_ms);
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

int main(void) {
        static const struct CMUnitTest fixed[] = {
                cmocka_unit_test(test_huge_attempts_and_limits_do_not_overflow),
                cmocka_unit_test(
                        test_jitter_stays_within_the_percent_and_covers_it),
        };
        const struct fixture_cases sets[] = {
                {"delay", test_backoff_case, cases, sizeof(cases[0]),
                 FIXTURE_LEN(cases)},
        };

        return fixture_run_group("backoff", fixed, FIXTURE_LEN(fixed), sets,
                                 FIXTURE_LEN(sets));
}
