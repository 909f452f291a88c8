/*
 * Unit tests of smtp_reply_parse(): complete, multi-line, partial, garbage
 * and over-long replies, and the text it extracts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "smtp.h"

static long parse(const char *s, int *code, char *text, size_t text_size) {
        return smtp_reply_parse(s, strlen(s), code, text, text_size);
}

static void test_single_line_reply_gives_code_text_and_length(void **state) {
        const char *r = "250 2.0.0 Ok: queued as 4XyZ\r\n";
        char text[64];
        int code = 0;

        (void)state;
        assert_int_equal(parse(r, &code, text, sizeof(text)), (long)strlen(r));
        assert_int_equal(code, 250);
        assert_string_equal(text, "2.0.0 Ok: queued as 4XyZ");
}

static void test_every_reply_class_is_accepted(void **state) {
        const char *r[] = {"220 ready\r\n", "354 go ahead\r\n",
                           "421 closing\r\n", "550 5.1.1 no\r\n"};
        const int want[] = {220, 354, 421, 550};
        char text[64];
        int code;

        (void)state;
        for (size_t i = 0; i < 4; i++) {
                code = 0;
                assert_int_equal(parse(r[i], &code, text, sizeof(text)),
                                 (long)strlen(r[i]));
                assert_int_equal(code, want[i]);
        }
}

static void test_multi_line_reply_uses_last_line(void **state) {
        const char *r = "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";
        char text[64];
        int code = 0;

        (void)state;
        assert_int_equal(parse(r, &code, text, sizeof(text)), (long)strlen(r));
        assert_int_equal(code, 250);
        assert_string_equal(text, "SIZE 1000");
}

static void test_only_the_first_reply_is_consumed(void **state) {
        const char *r = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n";
        char text[64];
        int code = 0;
        long n;

        (void)state;
        n = parse(r, &code, text, sizeof(text));
        assert_int_equal(n, 14);
        assert_string_equal(text, "2.1.0 Ok");
        n = parse(r + 14, &code, text, sizeof(text));
        assert_int_equal(n, 14);
        assert_string_equal(text, "2.1.5 Ok");
        n = parse(r + 28, &code, text, sizeof(text));
        assert_int_equal(n, (long)strlen(r + 28));
        assert_int_equal(code, 354);
}

static void test_partial_reply_needs_more(void **state) {
        const char *full = "250-first\r\n250 second\r\n";
        char text[64];
        int code = -7;

        (void)state;
        /* every strict prefix is incomplete, none is an error */
        for (size_t len = 0; len < strlen(full); len++) {
                assert_int_equal(
                        smtp_reply_parse(full, len, &code, text, sizeof(text)),
                        0);
        }
        assert_int_equal(code, -7); /* untouched */
}

static void test_bare_lf_and_no_text_are_tolerated(void **state) {
        char text[64];
        int code = 0;

        (void)state;
        assert_int_equal(parse("250 ok\n", &code, text, sizeof(text)), 7);
        assert_string_equal(text, "ok");
        assert_int_equal(parse("250\r\n", &code, text, sizeof(text)), 5);
        assert_int_equal(code, 250);
        assert_string_equal(text, "");
}

static void test_garbage_is_an_error(void **state) {
        const char *bad[] = {
                "HTTP/1.1 400 Bad Request\r\n", /* not digits */
                "2x0 ok\r\n",
                "150 not smtp\r\n", /* 1xx */
                "600 no\r\n", /* 6xx */
                "250x ok\r\n", /* no separator */
                "25\r\n", /* short line */
                "\r\n",
                "250-ok\r\nbogus\r\n", /* garbage continuation */
                "H", /* recognised early, before a line end */
                "25a",
        };
        char text[64];
        int code;

        (void)state;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_equal(parse(bad[i], &code, text, sizeof(text)), -1);
}

static void test_line_over_2048_bytes_is_an_error(void **state) {
        size_t len = 4000;
        char *buf = malloc(len);
        char text[64];
        int code;

        (void)state;
        assert_non_null(buf);
        memcpy(buf, "250 ", 4);
        memset(buf + 4, 'a', len - 4);
        /* no line end yet, but already too long to become one */
        assert_int_equal(smtp_reply_parse(buf, len, &code, text, sizeof(text)),
                         -1);
        /* the limit: 2048 bytes before CRLF is fine, 2049 is not */
        memcpy(buf + 2048, "\r\n", 2);
        assert_int_equal(smtp_reply_parse(buf, 2050, &code, text, sizeof(text)),
                         2050);
        memset(buf + 2048, 'a', 2);
        memcpy(buf + 2049, "\r\n", 2);
        assert_int_equal(smtp_reply_parse(buf, 2051, &code, text, sizeof(text)),
                         -1);
        /* just under the limit without a line end: wait for more */
        assert_int_equal(smtp_reply_parse(buf, 2000, &code, text, sizeof(text)),
                         0);
        free(buf);
}

static void test_text_is_truncated_and_terminated(void **state) {
        const char *r = "550 5.7.1 a rather long rejection text\r\n";
        char text[8];
        int code = 0;

        (void)state;
        memset(text, 'X', sizeof(text));
        assert_int_equal(parse(r, &code, text, sizeof(text)), (long)strlen(r));
        assert_int_equal(code, 550);
        assert_string_equal(text, "5.7.1 a");
        /* no text buffer at all */
        assert_int_equal(parse(r, &code, NULL, 0), (long)strlen(r));
}

static void test_control_bytes_in_text_are_replaced(void **state) {
        const char r[] = "250 a\x01"
                         "b\tc\r\n";
        char text[64];
        int code = 0;

        (void)state;
        assert_int_equal(
                smtp_reply_parse(r, sizeof(r) - 1, &code, text, sizeof(text)),
                (long)(sizeof(r) - 1));
        assert_string_equal(text, "a?b\tc");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_single_line_reply_gives_code_text_and_length),
                cmocka_unit_test(test_every_reply_class_is_accepted),
                cmocka_unit_test(test_multi_line_reply_uses_last_line),
                cmocka_unit_test(test_only_the_first_reply_is_consumed),
                cmocka_unit_test(test_partial_reply_needs_more),
                cmocka_unit_test(test_bare_lf_and_no_text_are_tolerated),
                cmocka_unit_test(test_garbage_is_an_error),
                cmocka_unit_test(test_line_over_2048_bytes_is_an_error),
                cmocka_unit_test(test_text_is_truncated_and_terminated),
                cmocka_unit_test(test_control_bytes_in_text_are_replaced),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
