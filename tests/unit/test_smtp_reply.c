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

#include "fixture.h"
#include "smtp.h"

static long parse(const char *s, int *code, char *text, size_t text_size) {
        return smtp_reply_parse(s, strlen(s), code, text, text_size);
}

/* A complete reply: smtp_reply_parse() consumes @consumed bytes of it (-1:
 * all of it) and gives @code (0: not checked) and @text (NULL: not
 * checked). */
struct reply_case {
        const char *name;
        const char *reply;
        long consumed;
        int code;
        const char *text;
};

static const struct reply_case reply_cases[] = {
        {"single_line_gives_code_text_and_length",
         "250 2.0.0 Ok: queued as 4XyZ\r\n", -1, 250,
         "2.0.0 Ok: queued as 4XyZ"},
        /* every reply class is accepted */
        {"class_2", "220 ready\r\n", -1, 220, NULL},
        {"class_3", "354 go ahead\r\n", -1, 354, NULL},
        {"class_4", "421 closing\r\n", -1, 421, NULL},
        {"class_5", "550 5.1.1 no\r\n", -1, 550, NULL},
        {"multi_line_uses_last_line",
         "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", -1, 250,
         "SIZE 1000"},
        /* a bare LF and no text are tolerated */
        {"bare_lf", "250 ok\n", 7, 0, "ok"},
        {"no_text", "250\r\n", 5, 250, ""},
        {"control_bytes_in_text_are_replaced",
         "250 a\x01"
         "b\tc\r\n",
         -1, 0, "a?b\tc"},
};

static void test_reply_case(void **state) {
        const struct reply_case *c = *state;
        long consumed = c->consumed >= 0 ? c->consumed : (long)strlen(c->reply);
        char text[64];
        int code = 0;

        assert_int_equal(parse(c->reply, &code, text, sizeof(text)), consumed);
        if (c->code != 0)
                assert_int_equal(code, c->code);
        if (c->text != NULL)
                assert_string_equal(text, c->text);
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
        for (size_t i = 0; i < FIXTURE_LEN(bad); i++)
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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_only_the_first_reply_is_consumed),
                cmocka_unit_test(test_partial_reply_needs_more),
                cmocka_unit_test(test_garbage_is_an_error),
                cmocka_unit_test(test_line_over_2048_bytes_is_an_error),
                cmocka_unit_test(test_text_is_truncated_and_terminated),
        };

        const struct fixture_cases sets[] = {
                {"reply", test_reply_case, reply_cases, sizeof(reply_cases[0]),
                 FIXTURE_LEN(reply_cases)},
        };

        return fixture_run_group("smtp_reply", tests, FIXTURE_LEN(tests), sets,
                                 FIXTURE_LEN(sets));
}
