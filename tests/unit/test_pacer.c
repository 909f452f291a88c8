/* pacer: the token bucket, its AIMD adjustments and the throttling replies,
 * on a clock the test moves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pacer.h"

static const struct pacer_conf pc = {30, 5, 1.0};

/* @returns how many sends @p lets go from @from_ms to @to_ms, trying every
 * ms. */
static int sends_between(struct pacer *p, int64_t from_ms, int64_t to_ms) {
        int n = 0;

        for (int64_t t = from_ms; t < to_ms; t++) {
                while (pacer_wait_ms(p, t) == 0) {
                        pacer_take(p, t);
                        n++;
                }
        }
        return n;
}

static void test_no_limit_never_waits(void **state) {
        struct pacer p;

        (void)state;
        pacer_init(&p, 0, 1000);
        for (int i = 0; i < 10000; i++) {
                assert_int_equal(pacer_wait_ms(&p, 1000), 0);
                pacer_take(&p, 1000);
        }
        assert_true(pacer_rate(&p) == 0);
        assert_int_equal(pacer_eta_ms(&p, 500), 0);
}

static void test_a_limit_paces_sends_without_bursts(void **state) {
        struct pacer p;
        int per_second[10];

        (void)state;
        pacer_init(&p, 10, 0);
        for (int s = 0; s < 10; s++)
                per_second[s] = sends_between(&p, s * 1000, (s + 1) * 1000);
        /* the bucket holds one send at 10/s: the first second gets it on
         * top of the ten paced ones at most */
        assert_true(per_second[0] <= 11);
        for (int s = 1; s < 10; s++)
                assert_int_equal(per_second[s], 10);
        /* a queue of 20 behind an empty bucket: about 2 s */
        assert_true(pacer_eta_ms(&p, 20) >= 1900 &&
                    pacer_eta_ms(&p, 20) <= 2100);
}

static void test_a_new_share_changes_the_rate(void **state) {
        struct pacer p;

        (void)state;
        pacer_init(&p, 200, 0);
        sends_between(&p, 0, 1000);
        pacer_set_limit(&p, 100, 1000);
        assert_true(pacer_rate(&p) == 100);
        assert_int_equal(sends_between(&p, 1001, 2001), 100);
        pacer_set_limit(&p, 0, 2001); /* no limit any more */
        assert_int_equal(pacer_wait_ms(&p, 2001), 0);
}

static void
test_throttling_cuts_once_a_second_then_rises_to_the_limit(void **state) {
        struct pacer p;
        int64_t t;

        (void)state;
        pacer_init(&p, 100, 0);
        sends_between(&p, 0, 2000); /* 100 a second went */
        pacer_throttled(&p, &pc, 2000);
        assert_true(pacer_rate(&p) > 69.9 && pacer_rate(&p) < 70.1);
        pacer_throttled(&p, &pc, 2500); /* within the second: no cut */
        assert_true(pacer_rate(&p) > 69.9 && pacer_rate(&p) < 70.1);
        assert_int_equal(p.p_throttled_total, 1);
        /* no raise in the second after the cut ... */
        pacer_tick(&p, &pc, 2900);
        assert_true(pacer_rate(&p) < 70.1);
        /* ... then 5 % of 100 per second: back at 100 six seconds later */
        for (t = 3000; t <= 9000; t += 250)
                pacer_tick(&p, &pc, t);
        assert_true(pacer_rate(&p) == 100);
        assert_int_equal(p.p_cut_ms, 0);
        pacer_tick(&p, &pc, 20000);
        assert_true(pacer_rate(&p) == 100); /* never above the limit */
}

/* A throttling reply after a quiet second cuts from what went, raises by
 * the share of the rate allowed before, and never above the limit. */
static void test_a_cut_after_a_quiet_second_is_undone_in_seconds(void **state) {
        struct pacer p;
        struct pacer small;

        (void)state;
        pacer_init(&p, 200, 0);
        pacer_take(&p, 500); /* one send */
        pacer_throttled(&p, &pc, 1200);
        assert_true(pacer_rate(&p) == 1.0);
        /* 5 % of 200 a second: back at 200 about 21 s later */
        for (int64_t t = 1450; t <= 23200; t += 250)
                pacer_tick(&p, &pc, t);
        assert_true(pacer_rate(&p) == 200);
        /* a limit below throttle.rate.min stays the ceiling of a cut */
        pacer_init(&small, 0.5, 0);
        pacer_throttled(&small, &pc, 1000);
        assert_true(pacer_rate(&small) <= 0.5);
}

static void test_throttling_without_a_limit_cuts_from_what_went(void **state) {
        struct pacer p;

        (void)state;
        pacer_init(&p, 0, 0);
        for (int i = 0; i < 300; i++)
                pacer_take(&p, 500 + i);
        pacer_throttled(&p, &pc, 1200);
        /* 300 went in the last second: cut to 210 */
        assert_true(pacer_rate(&p) > 209 && pacer_rate(&p) < 211);
        assert_true(pacer_wait_ms(&p, 1200) >= 0);
        /* cut after cut, never below throttle.rate.min */
        for (int64_t t = 2300; t < 40000; t += 1100)
                pacer_throttled(&p, &pc, t);
        assert_true(pacer_rate(&p) >= 1.0 && pacer_rate(&p) < 2.0);
        /* a long quiet time far above what is sent: unlimited again */
        for (int64_t t = 40000; t <= 200000; t += 250)
                pacer_tick(&p, &pc, t);
        assert_true(pacer_rate(&p) == 0);
}

static void test_which_replies_are_throttling(void **state) {
        static const struct {
                int code;
                const char *reply;
                int throttle;
        } cases[] = {
                {421, "4.3.2 Service shutting down", 1},
                {421, "", 1},
                {451, "4.7.1 Please try again later", 1},
                {450, "4.7.28 Gmail has detected an unusual rate", 1},
                {454, "Throttling failure: Maximum sending rate exceeded", 1},
                {451, "Too many messages, slow down", 1},
                {450, "Requested action aborted: rate-limited", 1},
                {451, "4.3.0 Temporary failure", 0},
                {451, "4.3.0 Try again separately", 0},
                {452, "4.5.3 Too many recipients", 0},
                {452, "4.2.2 Over quota limit", 0},
                {550, "5.7.1 Rate limit exceeded permanently", 0},
                {250, "2.0.0 Ok", 0},
                {450, NULL, 0},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                if (pacer_is_throttle(cases[i].code, cases[i].reply) !=
                    cases[i].throttle)
                        fail_msg("case %zu: %d %s", i, cases[i].code,
                                 cases[i].reply ? cases[i].reply : "(null)");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_no_limit_never_waits),
                cmocka_unit_test(test_a_limit_paces_sends_without_bursts),
                cmocka_unit_test(test_a_new_share_changes_the_rate),
                cmocka_unit_test(
                        test_throttling_cuts_once_a_second_then_rises_to_the_limit),
                cmocka_unit_test(
                        test_a_cut_after_a_quiet_second_is_undone_in_seconds),
                cmocka_unit_test(
                        test_throttling_without_a_limit_cuts_from_what_went),
                cmocka_unit_test(test_which_replies_are_throttling),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
