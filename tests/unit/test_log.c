#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"

static char out[LOG_LINE_MAX];

static const char *fmt_into(size_t size, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static const char *fmt_into(size_t size, const char *fmt, ...) {
        va_list ap;
        size_t n;

        va_start(ap, fmt);
        n = log_vformat(out, size, fmt, ap);
        va_end(ap);
        assert_int_equal(n, strlen(out));
        assert_true(n < size);
        return out;
}

#define FMT(...) fmt_into(sizeof(out), __VA_ARGS__)

static void test_message_is_quoted_and_plain_values_are_bare(void **state) {
        (void)state;
        assert_string_equal(
                FMT("relay healthy relay=%s fd=%d", "smtp://127.0.0.1:25", 7),
                "msg=\"relay healthy\" relay=smtp://127.0.0.1:25 fd=7");
        assert_string_equal(FMT("stopped"), "msg=stopped");
        assert_string_equal(FMT("worker started group.protocol=%s", "consumer"),
                            "msg=\"worker started\" group.protocol=consumer");
}

static void
test_values_with_spaces_quotes_or_equals_are_quoted_and_escaped(void **state) {
        (void)state;
        assert_string_equal(FMT("request failed id=%s reason=%s", "a=b",
                                "550 \"no\" such \\user"),
                            "msg=\"request failed\" id=\"a=b\" "
                            "reason=\"550 \\\"no\\\" such \\\\user\"");
        assert_string_equal(FMT("x reason=%s", ""), "msg=x reason=\"\"");
}

static void test_control_characters_cannot_forge_a_line(void **state) {
        (void)state;
        assert_string_equal(
                FMT("request rejected id=%s", "a\r\nts=x level=error"),
                "msg=\"request rejected\" id=\"a??ts=x level=error\"");
        assert_string_equal(FMT("m id=%s", "\x1b[31m"), "msg=m id=\"?[31m\"");
}

static void test_conversions_in_message_and_values(void **state) {
        (void)state;
        assert_string_equal(
                FMT("no progress for %d ms inflight=%zu took_ms=%lld "
                    "method=%.*s pct=%.1f%% big=%llu neg=%ld c=%c",
                    30000, (size_t)12, (long long)-5, 3, "GETX", 12.25,
                    18446744073709551615ull, -7L, 'z'),
                "msg=\"no progress for 30000 ms\" inflight=12 took_ms=-5 "
                "method=GET pct=12.2% big=18446744073709551615 neg=-7 c=z");
        assert_string_equal(FMT("a addr=%s:%d w=%5d|", "h", 25, 42),
                            "msg=a addr=h:25 w=\"   42|\"");
        assert_string_equal(FMT("a percent 100%% done"),
                            "msg=\"a percent 100% done\"");
}

static void test_text_that_is_not_a_key_stays_in_the_message(void **state) {
        (void)state;
        assert_string_equal(
                FMT("commit.timeout.ms (%d ms) passed = late topic=%s", 300,
                    "t"),
                "msg=\"commit.timeout.ms (300 ms) passed = late\" topic=t");
}

static void test_a_long_line_is_cut_with_its_quote_closed(void **state) {
        char big[3000];

        (void)state;
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        big[10] = ' ';
        fmt_into(64, "m reason=%s more=%d", big, 1);
        assert_int_equal(strlen(out), 63);
        assert_true(strncmp(out, "msg=m reason=\"aaaaaaaaaa a", 26) == 0);
        assert_int_equal(out[62], '"');
        /* A cut never leaves a lone escape before the closing quote. */
        for (size_t size = 16; size < 40; size++) {
                size_t n;

                fmt_into(size, "m v=%s",
                         "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"");
                n = strlen(out);
                assert_int_equal(out[n - 1], '"');
                assert_true(n < 2 || out[n - 2] != '\\' ||
                            (n >= 3 && out[n - 3] == '\\'));
        }
}

static void test_set_level(void **state) {
        (void)state;
        assert_int_equal(log_set_level("debug"), 0);
        assert_int_equal(log_threshold, LL_DEBUG);
        assert_int_equal(log_set_level("warn"), 0);
        assert_int_equal(log_threshold, LL_WARN);
        assert_int_equal(log_set_level("loud"), -1);
        assert_int_equal(log_threshold, LL_WARN);
}

/* One error code repeated: written once per log.repeat.ms, the next line
 * written carries the count of those not written; another code has its own
 * window; more codes than slots push out the one written longest ago. */
static void
test_repeated_errors_are_counted_within_log_repeat_ms(void **state) {
        struct log_repeat r;
        unsigned long held = 99;

        (void)state;
        memset(&r, 0, sizeof(r));
        log_repeat_ms = 10000;
        assert_int_equal(log_repeat_pass(&r, -187, 1000, &held), 1);
        assert_int_equal(held, 0);
        for (int64_t t = 1100; t < 11000; t += 100)
                assert_int_equal(log_repeat_pass(&r, -187, t, &held), 0);
        /* another code in the meantime: its own window */
        assert_int_equal(log_repeat_pass(&r, -195, 5000, &held), 1);
        assert_int_equal(held, 0);
        assert_int_equal(log_repeat_pass(&r, -195, 5100, &held), 0);
        assert_int_equal(log_repeat_pass(&r, -187, 11000, &held), 1);
        assert_int_equal(held, 99);
        assert_int_equal(log_repeat_pass(&r, -187, 11001, &held), 0);
        assert_int_equal(log_repeat_pass(&r, -195, 15000, &held), 1);
        assert_int_equal(held, 1);

        /* LOG_REPEAT_SLOTS other codes: -187 (written longest ago) goes */
        for (int i = 0; i < LOG_REPEAT_SLOTS - 1; i++)
                assert_int_equal(log_repeat_pass(&r, i, 20000 + i, &held), 1);
        assert_int_equal(log_repeat_pass(&r, -195, 20100, &held), 0);
        assert_int_equal(log_repeat_pass(&r, -187, 20200, &held), 1);
        assert_int_equal(held, 0);

        /* 0: every one written */
        log_repeat_ms = 0;
        assert_int_equal(log_repeat_pass(&r, -187, 20200, &held), 1);
        assert_int_equal(log_repeat_pass(&r, -187, 20200, &held), 1);
        log_repeat_ms = 10000;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_message_is_quoted_and_plain_values_are_bare),
                cmocka_unit_test(
                        test_values_with_spaces_quotes_or_equals_are_quoted_and_escaped),
                cmocka_unit_test(test_control_characters_cannot_forge_a_line),
                cmocka_unit_test(test_conversions_in_message_and_values),
                cmocka_unit_test(
                        test_text_that_is_not_a_key_stays_in_the_message),
                cmocka_unit_test(test_a_long_line_is_cut_with_its_quote_closed),
                cmocka_unit_test(test_set_level),
                cmocka_unit_test(
                        test_repeated_errors_are_counted_within_log_repeat_ms),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
