#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "utf8.h"

static size_t dec(const char *s, size_t n, uint32_t *cp) {
        return utf8_decode((const unsigned char *)s, n, cp);
}

/* Passed as the code point of a case: utf8_decode() gets no pointer. */
#define NO_CP UINT32_MAX

/* One utf8_decode() of the first @len bytes of @s: it takes @n bytes (0:
 * refused) and gives @cp. */
struct decode_case {
        const char *name;
        const char *s;
        size_t len;
        size_t n;
        uint32_t cp;
};

static const struct decode_case decode_cases[] = {
        /* well-formed sequences decode to their code point */
        {"well_formed_1_byte", "A", 1, 1, 0x41},
        {"well_formed_2_bytes", "\xc3\xa9", 2, 2, 0xe9},
        {"well_formed_3_bytes", "\xe2\x82\xac", 3, 3, 0x20ac},
        {"well_formed_4_bytes", "\xf0\x9f\x98\x80", 4, 4, 0x1f600},
        /* the edges */
        {"well_formed_lowest_2_bytes", "\xc2\x80", 2, 2, 0x80},
        {"well_formed_below_surrogates", "\xed\x9f\xbf", 3, 3, 0xd7ff},
        {"well_formed_above_surrogates", "\xee\x80\x80", 3, 3, 0xe000},
        {"well_formed_highest", "\xf4\x8f\xbf\xbf", 4, 4, 0x10ffff},
        {"well_formed_no_code_point_wanted", "\xc3\xa9", 2, 2, NO_CP},
        /* overlong forms are refused */
        {"overlong_c0", "\xc0\xaf", 2, 0, NO_CP},
        {"overlong_c1", "\xc1\xbf", 2, 0, NO_CP},
        {"overlong_e0_80", "\xe0\x80\xaf", 3, 0, NO_CP},
        {"overlong_e0_9f", "\xe0\x9f\xbf", 3, 0, NO_CP},
        {"overlong_f0_80", "\xf0\x80\x80\xaf", 4, 0, NO_CP},
        {"overlong_f0_8f", "\xf0\x8f\xbf\xbf", 4, 0, NO_CP},
        /* surrogates and code points above 10ffff are refused */
        {"surrogate_lowest", "\xed\xa0\x80", 3, 0, NO_CP},
        {"surrogate_highest", "\xed\xbf\xbf", 3, 0, NO_CP},
        {"above_10ffff_f4_90", "\xf4\x90\x80\x80", 4, 0, NO_CP},
        {"above_10ffff_f5", "\xf5\x80\x80\x80", 4, 0, NO_CP},
        {"above_10ffff_ff", "\xff", 1, 0, NO_CP},
        /* truncated sequences and stray continuations are refused */
        {"truncated_2_bytes", "\xc3", 1, 0, NO_CP},
        {"truncated_3_bytes", "\xe2\x82", 2, 0, NO_CP},
        {"truncated_4_bytes", "\xf0\x9f\x98", 3, 0, NO_CP},
        /* the bytes are there but the caller's length ends before them */
        {"truncated_by_the_length", "\xe2\x82\xac", 2, 0, NO_CP},
        {"truncated_ascii_inside", "\xe2\x41\xac", 3, 0, NO_CP},
        {"stray_continuation_80", "\x80", 1, 0, NO_CP},
        {"stray_continuation_bf_bf", "\xbf\xbf", 2, 0, NO_CP},
};

static void test_decode_case(void **state) {
        const struct decode_case *c = *state;
        uint32_t cp = 0;

        assert_int_equal(dec(c->s, c->len, c->cp == NO_CP ? NULL : &cp), c->n);
        if (c->cp != NO_CP)
                assert_int_equal(cp, c->cp);
}

/* utf8_invalid_len() of the first @len bytes of @s is @n: the maximal
 * subpart of an ill-formed sequence. */
struct invalid_len_case {
        const char *name;
        const char *s;
        size_t len;
        size_t n;
};

static const struct invalid_len_case invalid_len_cases[] = {
        {"truncated_3_then_ascii", "\xe2\x82x", 3, 2},
        {"truncated_4_then_ascii", "\xf0\x9f\x98x", 4, 3},
        {"truncated_4_at_end", "\xf0\x9f\x98", 3, 3},
        {"surrogate", "\xed\xa0\x80", 3, 1},
        {"overlong", "\xc0\xaf", 2, 1},
        {"stray_continuations", "\x80\x80", 2, 1},
        {"ff", "\xff", 1, 1},
};

static void test_invalid_len_case(void **state) {
        const struct invalid_len_case *c = *state;

        assert_int_equal(utf8_invalid_len((const unsigned char *)c->s, c->len),
                         c->n);
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
        static const struct CMUnitTest fixed[] = {
                cmocka_unit_test(test_encode_round_trips_every_scalar_value),
                cmocka_unit_test(test_char_len_never_passes_the_end),
                cmocka_unit_test(test_valid_checks_the_whole_text),
                cmocka_unit_test(
                        test_repair_replaces_each_invalid_part_and_keeps_the_rest),
                cmocka_unit_test(test_repair_output_is_valid_for_any_bytes),
        };
        const struct fixture_cases sets[] = {
                {"decode", test_decode_case, decode_cases,
                 sizeof(decode_cases[0]), FIXTURE_LEN(decode_cases)},
                {"invalid_len_is_the_maximal_subpart", test_invalid_len_case,
                 invalid_len_cases, sizeof(invalid_len_cases[0]),
                 FIXTURE_LEN(invalid_len_cases)},
        };

        return fixture_run_group("utf8", fixed, FIXTURE_LEN(fixed), sets,
                                 FIXTURE_LEN(sets));
}
