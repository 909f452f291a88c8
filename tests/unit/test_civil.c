#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "civil.h"

/* Fails unless civil_from_unix(@secs) reads as gmtime_r() does. */
static void assert_like_gmtime(int64_t secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        struct civil c;

        assert_non_null(gmtime_r(&t, &tm));
        civil_from_unix(secs, &c);
        if (c.year != tm.tm_year + 1900LL || c.month != tm.tm_mon + 1 ||
            c.day != tm.tm_mday || c.hour != tm.tm_hour || c.min != tm.tm_min ||
            c.sec != tm.tm_sec || c.wday != tm.tm_wday)
                fail_msg("%lld: %lld-%d-%d %d:%d:%d wday %d", (long long)secs,
                         (long long)c.year, c.month, c.day, c.hour, c.min,
                         c.sec, c.wday);
}

/* Dates as gmtime_r() gives them: around the epoch, leap days (2000,
 * 2024, not 2100), the ends of years, before 1970, far ahead. */
static void test_unix_time_reads_as_gmtime_does(void **state) {
        static const int64_t secs[] = {
                0,
                -1,
                1,
                86399,
                86400,
                -86400,
                -86401,
                951782399,
                951782400,
                951868799,
                951868800,
                1709164800,
                4107542400,
                4107628800,
                1798761599,
                1798761600,
                -2208988800,
                -62135596800,
                253402300799,
                253402300800,
                1795867200,
                -1000000000001,
        };
        uint64_t x = 88172645463325252ull;

        (void)state;
        for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++)
                assert_like_gmtime(secs[i]);
        for (int i = 0; i < 200000; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                /* within +-3000 years of the epoch */
                assert_like_gmtime((int64_t)(x % 189000000000ull) -
                                   94500000000LL);
        }
}

/* civil_days_from() is the inverse of the date civil_from_unix() reads. */
static void test_days_from_a_date_invert_the_reading(void **state) {
        (void)state;
        for (int64_t d = -800000; d <= 800000; d += 7) {
                struct civil c;

                civil_from_unix(d * 86400, &c);
                assert_true(civil_days_from(c.year, c.month, c.day) == d);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_unix_time_reads_as_gmtime_does),
                cmocka_unit_test(test_days_from_a_date_invert_the_reading),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
