#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bytescan.h"

/* Longer than four 16-byte blocks and the 64-byte step, so that a byte is
 * found in every part of every loop (and the tails after them). */
#define SPAN 150

/* An offset of the buffer: the scans read unaligned. */
#define SHIFT 7

/* A byte of 0x80 or more is found at every position of every length, and
 * nothing is found in ASCII text. */
static void test_an_8bit_byte_is_found_at_every_position(void **state) {
        char buf[SPAN + SHIFT];

        (void)state;
        for (size_t len = 0; len <= SPAN - SHIFT; len++) {
                char *p = buf + SHIFT;

                memset(buf, 'a', sizeof(buf));
                assert_false(bytescan_has_8bit(p, len));
                for (size_t at = 0; at < len; at++) {
                        p[at] = (char)0x80;
                        if (!bytescan_has_8bit(p, len))
                                fail_msg("0x80 at %zu of %zu missed", at, len);
                        p[at] = (char)0xff;
                        assert_true(bytescan_has_8bit(p, len));
                        p[at] = 0x7f;
                        assert_false(bytescan_has_8bit(p, len));
                        p[at] = 'a';
                }
                /* beyond the length: not looked at */
                p[len] = (char)0xc3;
                assert_false(bytescan_has_8bit(p, len));
        }
}

/* The first CR or LF is found at every position of every length; the
 * length when there is none, also with one just past it. */
static void test_the_first_line_end_is_found_at_every_position(void **state) {
        char buf[SPAN + SHIFT];

        (void)state;
        for (size_t len = 0; len <= SPAN - SHIFT; len++) {
                char *p = buf + SHIFT;

                memset(buf, 'x', sizeof(buf));
                p[len] = '\n';
                assert_int_equal(bytescan_eol(p, len), len);
                for (size_t at = 0; at < len; at++) {
                        p[at] = '\n';
                        assert_int_equal(bytescan_eol(p, len), at);
                        p[at] = '\r';
                        assert_int_equal(bytescan_eol(p, len), at);
                        /* a later one does not count */
                        if (at + 1 < len) {
                                p[at + 1] = '\n';
                                assert_int_equal(bytescan_eol(p, len), at);
                                p[at + 1] = 'x';
                        }
                        /* bytes near CR and LF are not line ends */
                        p[at] = '\v';
                        assert_int_equal(bytescan_eol(p, len), len);
                        p[at] = (char)0x8a;
                        assert_int_equal(bytescan_eol(p, len), len);
                        p[at] = 'x';
                }
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_an_8bit_byte_is_found_at_every_position),
                cmocka_unit_test(
                        test_the_first_line_end_is_found_at_every_position),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
