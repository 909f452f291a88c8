#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "utf8.h"

static size_t dec(const char *s, size_t n, uint32_t *cp) {
        return utf8_decode((const unsigned char *)s, n, cp);
}

static void
test_well_formed_sequences_decode_to_their_code_point(void **state) {
        uint32_t cp = 0;

        (void)state;
        assert_int_equal(dec("A", 1, &cp), 1);
        assert_int_equal(cp, 0x41);
        assert_int_equal(dec("\xc3\xa9", 2, &cp), 2);
        assert_int_equal(cp, 0xe9);
        assert_int_equal(dec("\xe2\x82\xac", 3, &cp), 3);
        assert_int_equal(cp, 0x20ac);
        assert_int_equal(dec("\xf0\x9f\x98\x80", 4, &cp), 4);
        assert_int_equal(cp, 0x1f600);
        /* the edges */
        assert_int_equal(dec("\xc2\x80", 2, &cp), 2);
        assert_int_equal(cp, 0x80);
        assert_int_equal(dec("\xed\x9f\xbf", 3, &cp), 3);
        assert_int_equal(cp, 0xd7ff);
        assert_int_equal(dec("\xee\x80\x80", 3, &cp), 3);
        assert_int_equal(cp, 0xe000);
        assert_int_equal(dec("\xf4\x8f\xbf\xbf", 4, &cp), 4);
        assert_int_equal(cp, 0x10ffff);
        assert_int_equal(dec("\xc3\xa9", 2, NULL), 2);
}

static void test_overlong_forms_are_refused(void **state) {
        (void)state;
        assert_int_equal(dec("\xc0\xaf", 2, NULL), 0);
        assert_int_equal(dec("\xc1\xbf", 2, NULL), 0);
        assert_int_equal(dec("\xe0\x80\xaf", 3, NULL), 0);
        assert_int_equal(dec("\xe0\x9f\xbf", 3, NULL), 0);
        assert_int_equal(dec("\xf0\x80\x80\xaf", 4, NULL), 0);
        assert_int_equal(dec("\xf0\x8f\xbf\xbf", 4, NULL), 0);
}

static void
test_surrogates_and_code_points_above_10ffff_are_refused(void **state) {
        (void)state;
        assert_int_equal(dec("\xed\xa0\x80", 3, NULL), 0);
        assert_int_equal(dec("\xed\xbf\xbf", 3, NULL), 0);
        assert_int_equal(dec("\xf4\x90\x80\x80", 4, NULL), 0);
        assert_int_equal(dec("\xf5\x80\x80\x80", 4, NULL), 0);
        assert_int_equal(dec("\xff", 1, NULL), 0);
}

static void
test_truncated_sequences_and_stray_continuations_are_refused(void **state) {
        (void)state;
        assert_int_equal(dec("\xc3", 1, NULL), 0);
        assert_int_equal(dec("\xe2\x82", 2, NULL), 0);
        assert_int_equal(dec("\xf0\x9f\x98", 3, NULL), 0);
        /* the bytes are there but the caller's length ends before them */
        assert_int_equal(dec("\xe2\x82\xac", 2, NULL), 0);
        assert_int_equal(dec("\xe2\x41\xac", 3, NULL), 0);
        assert_int_equal(dec("\x80", 1, NULL), 0);
        assert_int_equal(dec("\xbf\xbf", 2, NULL), 0);
}

static void test_invalid_len_is_the_maximal_subpart(void **state) {
        const unsigned char *u;

        (void)state;
        u = (const unsigned char *)"\xe2\x82x";
        assert_int_equal(utf8_invalid_len(u, 3), 2);
        u = (const unsigned char *)"\xf0\x9f\x98x";
        assert_int_equal(utf8_invalid_len(u, 4), 3);
        u = (const unsigned char *)"\xf0\x9f\x98";
        assert_int_equal(utf8_invalid_len(u, 3), 3);
        u = (const unsigned char *)"\xed\xa0\x80";
        assert_int_equal(utf8_invalid_len(u, 3), 1);
        u = (const unsigned char *)"\xc0\xaf";
        assert_int_equal(utf8_invalid_len(u, 2), 1);
        u = (const unsigned char *)"\x80\x80";
        assert_int_equal(utf8_invalid_len(u, 2), 1);
        u = (const unsigned char *)"\xff";
        assert_int_equal(utf8_invalid_len(u, 1), 1);
}

static void test_encode_round_trips_every_scalar_value(void **state) {
        char out[4];

        (void)state;
        for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
                uint32_t back = 0;
                size_t n;

                if (cp >= 0xd800 && cp <= 0xdfff)
                        continue;
                n = utf8_encode(out, cp);
                assert_int_equal(n, cp < 0x80      ? 1
                                    : cp < 0x800   ? 2
                                    : cp < 0x10000 ? 3
                                                   : 4);
                assert_int_equal(dec(out, n, &back), n);
                assert_int_equal(back, cp);
                assert_int_equal(utf8_char_len(out, 4), n);
        }
}

static void test_char_len_never_passes_the_end(void **state) {
        (void)state;
        assert_int_equal(utf8_char_len("\xf0\x9f", 2), 2);
        assert_int_equal(utf8_char_len("\xe2", 1), 1);
        assert_int_equal(utf8_char_len("a", 1), 1);
}

static void test_valid_checks_the_whole_text(void **state) {
        (void)state;
        assert_true(utf8_valid("", 0));
        assert_true(utf8_valid("caf\xc3\xa9 \xe2\x82\xac \x01\t", 11));
        assert_false(utf8_valid("caf\xc3", 4));
        assert_false(utf8_valid("a\xed\xa0\x80z", 5));
        /* a NUL is a character like any other */
        assert_true(utf8_valid("a\0b", 3));
}

static void
test_repair_replaces_each_invalid_part_and_keeps_the_rest(void **state) {
        static const struct {
                const char *in;
                size_t len;
                const char *out;
        } cases[] = {
                {"", 0, ""},
                {"plain \x01 ascii", 13, "plain \x01 ascii"},
                {"caf\xc3\xa9", 5, "caf\xc3\xa9"},
                {"bad \xff\xfe end", 10, "bad \xef\xbf\xbd\xef\xbf\xbd end"},
                /* a surrogate: no byte starts a well-formed sequence */
                {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
                /* overlong */
                {"\xc0\xaf/", 3, "\xef\xbf\xbd\xef\xbf\xbd/"},
                /* a truncated sequence is one part */
                {"\xe2\x82x", 3, "\xef\xbf\xbdx"},
                {"x\xf0\x9f\x98", 4, "x\xef\xbf\xbd"},
                {"\xf0\x9f\x98\xc3\xa9", 5, "\xef\xbf\xbd\xc3\xa9"},
                /* Latin-1 text */
                {"d\xe9j\xe0 vu", 7, "d\xef\xbf\xbdj\xef\xbf\xbd vu"},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                size_t len = 0;
                char *out = utf8_repair(cases[i].in, cases[i].len, &len);

                assert_non_null(out);
                assert_int_equal(len, strlen(cases[i].out));
                assert_memory_equal(out, cases[i].out, len);
                assert_int_equal(out[len], '\0');
                assert_true(utf8_valid(out, len));
                free(out);
        }
}

static void test_repair_output_is_valid_for_any_bytes(void **state) {
        unsigned char in[64];
        uint32_t x = 2463534242u;

        (void)state;
        for (int round = 0; round < 20000; round++) {
                size_t len = (size_t)(x % sizeof(in));
                char *out;
                size_t out_len;

                for (size_t i = 0; i < len; i++) {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        /* mostly high bytes, to hit partial sequences */
                        in[i] = (unsigned char)(x & 1 ? 0x80 | (x >> 8)
                                                      : x >> 8);
                }
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                out = utf8_repair((const char *)in, len, &out_len);
                assert_non_null(out);
                assert_true(utf8_valid(out, out_len));
                if (utf8_valid((const char *)in, len)) {
                        assert_int_equal(out_len, len);
                        assert_memory_equal(out, in, len);
                }
                free(out);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_well_formed_sequences_decode_to_their_code_point),
                cmocka_unit_test(test_overlong_forms_are_refused),
                cmocka_unit_test(
                        test_surrogates_and_code_points_above_10ffff_are_refused),
                cmocka_unit_test(
                        test_truncated_sequences_and_stray_continuations_are_refused),
                cmocka_unit_test(test_invalid_len_is_the_maximal_subpart),
                cmocka_unit_test(test_encode_round_trips_every_scalar_value),
                cmocka_unit_test(test_char_len_never_passes_the_end),
                cmocka_unit_test(test_valid_checks_the_whole_text),
                cmocka_unit_test(
                        test_repair_replaces_each_invalid_part_and_keeps_the_rest),
                cmocka_unit_test(test_repair_output_is_valid_for_any_bytes),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
