#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jsonparse.h"

static json_t *reference(const char *s, size_t len) {
        json_error_t err;

        return json_loadb(s, len,
                          JSON_REJECT_DUPLICATES | JSON_DECODE_ANY |
                                  JSON_ALLOW_NUL,
                          &err);
}

/* @s is parsed by the fast path, to a value equal to jansson's. */
static void assert_fast(const char *s, size_t len) {
        json_t *fast = jsonparse_loadb(s, len);
        json_t *ref = reference(s, len);

        if (fast == NULL || ref == NULL || !json_equal(fast, ref))
                fail_msg("not parsed alike: %.*s", (int)len, s);
        json_decref(fast);
        json_decref(ref);
}

/* @s is left to jansson, which accepts it (@ok) or rejects it. */
static void assert_left(const char *s, size_t len, int ok) {
        json_t *fast = jsonparse_loadb(s, len);
        json_t *ref = reference(s, len);

        if (fast != NULL)
                fail_msg("fast path took: %.*s", (int)len, s);
        if ((ref != NULL) != ok)
                fail_msg("jansson %s: %.*s", ref ? "accepts" : "rejects",
                         (int)len, s);
        json_decref(ref);
}

#define FAST(lit) assert_fast(lit, sizeof(lit) - 1)
#define LEFT_OK(lit) assert_left(lit, sizeof(lit) - 1, 1)
#define REJECTED(lit) assert_left(lit, sizeof(lit) - 1, 0)

static void test_a_request_takes_the_fast_path(void **state) {
        (void)state;
        FAST("{\"v\":1,\"id\":\"r-1\",\"from\":{\"email\":\"a@shop.example\",\"name\":\"Shop\"},"
             "\"to\":[\"c@example.com\",{\"email\":\"d@example.com\"}],\"subject\":\"Hi\","
             "\"text\":\"line 1\\nline 2\\r\\n\\tend\",\"html\":\"<p>x</p>\","
             "\"headers\":{\"X-Campaign\":\"c1\"},\"metadata\":{\"n\":-42,\"ok\":true,"
             "\"none\":null,\"off\":false,\"list\":[]},\"deadline_ms\":1700000000000}");
        FAST(" \t\r\n{ \"a\" : [ 1 , 2 ] } \n");
        FAST("[]");
        FAST("{}");
        FAST("\"\"");
        FAST("0");
        FAST("-0");
        FAST("123456789012345678");
        FAST("-123456789012345678");
}

static void test_escapes_and_utf8_decode_like_jansson(void **state) {
        json_t *v;

        (void)state;
        FAST("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"");
        FAST("\"caf\\u00e9 \\u20AC \\ud83d\\ude00 \\uDBFF\\uDFFF\"");
        FAST("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"");
        FAST("{\"k\\u00e9y\":\"v\\u00e9\",\"k\\u00e9z\":{\"\\u00e9\":\"\\u00e9\"}}");
        v = jsonparse_loadb("\"a\\u0000b\"", 10);
        assert_non_null(v);
        assert_int_equal(json_string_length(v), 3);
        assert_memory_equal(json_string_value(v), "a\0b", 3);
        json_decref(v);
        v = jsonparse_loadb("\"\\ud83d\\ude00\"", 14);
        assert_non_null(v);
        assert_string_equal(json_string_value(v), "\xf0\x9f\x98\x80");
        json_decref(v);
}

static void test_what_the_fast_path_leaves_to_jansson(void **state) {
        char deep[2 * (JSONPARSE_MAX_DEPTH + 1) + 1];

        (void)state;
        LEFT_OK("1.5");
        LEFT_OK("[1e3]");
        LEFT_OK("{\"n\":-2.5E-3}");
        LEFT_OK("1234567890123456789");
        memset(deep, '[', JSONPARSE_MAX_DEPTH + 1);
        memset(deep + JSONPARSE_MAX_DEPTH + 1, ']', JSONPARSE_MAX_DEPTH + 1);
        deep[sizeof(deep) - 1] = '\0';
        assert_left(deep, sizeof(deep) - 1, 1);
        memset(deep, '[', JSONPARSE_MAX_DEPTH);
        memset(deep + JSONPARSE_MAX_DEPTH, ']', JSONPARSE_MAX_DEPTH);
        assert_fast(deep, 2 * JSONPARSE_MAX_DEPTH);
}

static void test_invalid_json_is_rejected_by_both(void **state) {
        (void)state;
        REJECTED("");
        REJECTED("   ");
        REJECTED("01");
        REJECTED("-");
        REJECTED("+1");
        REJECTED("[1,]");
        REJECTED("{\"a\":1,}");
        REJECTED("{\"a\" 1}");
        REJECTED("{a:1}");
        REJECTED("{\"a\":1,\"a\":2}");
        REJECTED("{\"a\\u0000\":1}");
        REJECTED("\"\\ud800\"");
        REJECTED("\"\\udc00\"");
        REJECTED("\"\\ud800\\u0041\"");
        REJECTED("\"\\x\"");
        REJECTED("\"\\u12g4\"");
        REJECTED("\"tab\there\"");
        REJECTED("\"unterminated");
        REJECTED("\"\xc3\x28\"");
        REJECTED("\"\xc0\x80\"");
        REJECTED("\"\xed\xa0\x80\"");
        REJECTED("\"\xf4\x90\x80\x80\"");
        REJECTED("\"\xe2\x82\"");
        REJECTED("truex");
        REJECTED("nul");
        REJECTED("{} {}");
        REJECTED("[1] x");
        REJECTED("\xef\xbb\xbf{}");
        REJECTED("9223372036854775808");
        assert_left("{}\0", 3, 0);
        assert_left("\"a\0b\"", 5, 0);
}

static void test_a_json_string_of_any_bytes_is_valid_utf8(void **state) {
        static const struct {
                const char *in;
                const char *out;
        } cases[] = {
                {NULL, ""},
                {"250 2.0.0 Ok", "250 2.0.0 Ok"},
                {"caf\xc3\xa9", "caf\xc3\xa9"},
                /* 8-bit reply text: each bad sequence becomes U+FFFD */
                {"550 Empf\xe4nger unbekannt",
                 "550 Empf\xef\xbf\xbdnger unbekannt"},
                {"\xc3", "\xef\xbf\xbd"},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *v = jsonparse_string(cases[i].in);

                assert_non_null(v);
                assert_string_equal(json_string_value(v), cases[i].out);
                json_decref(v);
        }
}

/* A string is read 16 bytes at a time (SSE2), 8 without: a byte that ends a
 * plain run (a quote, a backslash, a control byte, UTF-8, each byte value
 * around those) is found at every position of a block and across three
 * blocks, alike with jansson (parsed the same, or rejected by both). */
static void test_string_bytes_found_at_every_position(void **state) {
        static const char *const specials[] = {
                "\\\"",    "\\\\",     "\\n",
                "\\u00e9", "\"",       "\x1f",
                "\x01",    "\xc3\xa9", "\xe2\x82\xac",
                "\xc3",    "\x7f",     " ",
                "!",       "#",        "[",
                "]",       "\x21",     "\x5b",
                "\x5d",
        };

        (void)state;
        for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]); k++) {
                for (size_t pos = 0; pos < 48; pos++) {
                        char s[128];
                        int n = snprintf(
                                s, sizeof(s), "\"%.*s%s%.*s\"", (int)pos,
                                "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijkl",
                                specials[k], (int)(47 - pos),
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGHIJKL");
                        json_t *fast = jsonparse_loadb(s, (size_t)n);
                        json_t *ref = reference(s, (size_t)n);

                        if (fast != NULL &&
                            (ref == NULL || !json_equal(fast, ref)))
                                fail_msg("not parsed alike: %s", s);
                        if (fast == NULL && ref != NULL &&
                            specials[k][0] != '"')
                                fail_msg("fast path left: %s", s);
                        json_decref(fast);
                        json_decref(ref);
                }
        }
}

/* Writes @len characters at @s + @n: @c, with an escape \@esc every 7th.
 * @returns the new length. */
static size_t put_escaped(char *s, size_t n, size_t len, char c, char esc) {
        for (size_t k = 0; k < len; k++) {
                if (k % 7 == 0) {
                        s[n++] = '\\';
                        s[n++] = esc;
                } else {
                        s[n++] = c;
                }
        }
        return n;
}

/* Escaped strings are decoded alike whether they fit the parser's stack
 * buffer or not: short, one past it, two long ones (the second larger). */
static void test_escaped_strings_of_any_length_decode_alike(void **state) {
        static const size_t lens[][2] = {
                {10, 10}, {3000, 10}, {5000, 10}, {5000, 9000}, {9000, 5000},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
                size_t cap = lens[i][0] * 2 + lens[i][1] * 2 + 64;
                char *s = malloc(cap);
                size_t n = 0;

                assert_non_null(s);
                n += (size_t)snprintf(s + n, cap - n, "{\"a\":\"");
                n = put_escaped(s, n, lens[i][0], 'x', 'n');
                n += (size_t)snprintf(s + n, cap - n, "\",\"b\\u0062\":\"");
                n = put_escaped(s, n, lens[i][1], 'y', 't');
                n += (size_t)snprintf(s + n, cap - n, "\"}");
                assert_fast(s, n);
                free(s);
        }
}

static const char *const field_names[] = {"id", "to", "text", "meta"};
#define FIELDS (sizeof(field_names) / sizeof(field_names[0]))

/* jsonparse_fields() of @s gives the members jansson reads, by name. */
static void assert_fields(const char *s) {
        json_t *f[FIELDS];
        json_t *ref = reference(s, strlen(s));
        size_t got = 0;

        if (jsonparse_fields(s, strlen(s), field_names, FIELDS, f) != 0)
                fail_msg("fields not read: %s", s);
        assert_non_null(ref);
        for (size_t i = 0; i < FIELDS; i++) {
                json_t *r = json_object_get(ref, field_names[i]);

                if ((f[i] == NULL) != (r == NULL) ||
                    (f[i] != NULL && !json_equal(f[i], r)))
                        fail_msg("field %s differs: %s", field_names[i], s);
                got += f[i] != NULL;
                json_decref(f[i]);
        }
        assert_int_equal(got, json_object_size(ref));
        json_decref(ref);
}

/* jsonparse_fields() of @s leaves it to jansson, every value NULL. */
static void assert_fields_left(const char *s) {
        json_t *f[FIELDS];

        memset(f, 0xff, sizeof(f)); /* not NULL before */
        if (jsonparse_fields(s, strlen(s), field_names, FIELDS, f) != -1)
                fail_msg("fields read: %s", s);
        for (size_t i = 0; i < FIELDS; i++)
                assert_null(f[i]);
}

static void test_fields_are_read_by_name_or_left_to_jansson(void **state) {
        char deep[2 * JSONPARSE_MAX_DEPTH + 32];
        size_t n;

        (void)state;
        assert_fields("{}");
        assert_fields(" { \"id\" : \"a.1\" } ");
        assert_fields(
                "{\"to\":[\"x@y.example\"],\"id\":\"a\","
                "\"text\":\"line\\nline\",\"meta\":{\"k\":[1,true,null]}}");
        /* an escaped key is the name it decodes to */
        assert_fields("{\"\\u0069d\":\"a\",\"te\\u0078t\":\"\\u00e9\"}");
        assert_fields("{\"meta\":null}");

        assert_fields_left("");
        assert_fields_left("[]");
        assert_fields_left("\"id\"");
        assert_fields_left("{\"id\":\"a\",\"other\":1}");
        assert_fields_left("{\"i\":1}"); /* a name's start */
        assert_fields_left("{\"\":1}");
        assert_fields_left("{\"idx\":1}"); /* longer than a name */
        assert_fields_left("{\"i\\u0000d\":1}");
        assert_fields_left("{\"id\":\"a\",\"id\":\"b\"}");
        assert_fields_left("{\"id\":\"a\"} x");
        assert_fields_left("{\"id\":\"a\",}");
        assert_fields_left("{\"id\":\"a\"");
        assert_fields_left("{\"id\" \"a\"}");
        assert_fields_left("{\"meta\":1.5}"); /* a real number: jansson's */
        assert_fields_left("{\"id\":\"a\"}{}");

        /* nesting: as deep as jsonparse_loadb() goes, and no deeper (the
         * object counts as a level) */
        for (int depth = JSONPARSE_MAX_DEPTH; depth <= JSONPARSE_MAX_DEPTH + 1;
             depth++) {
                json_t *whole;

                n = (size_t)snprintf(deep, sizeof(deep), "{\"meta\":");
                for (int i = 1; i < depth; i++)
                        deep[n++] = '[';
                for (int i = 1; i < depth; i++)
                        deep[n++] = ']';
                deep[n++] = '}';
                deep[n] = '\0';
                whole = jsonparse_loadb(deep, n);
                if (depth <= JSONPARSE_MAX_DEPTH) {
                        assert_non_null(whole);
                        assert_fields(deep);
                } else {
                        assert_null(whole);
                        assert_fields_left(deep);
                }
                json_decref(whole);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_a_request_takes_the_fast_path),
                cmocka_unit_test(test_escapes_and_utf8_decode_like_jansson),
                cmocka_unit_test(test_what_the_fast_path_leaves_to_jansson),
                cmocka_unit_test(test_invalid_json_is_rejected_by_both),
                cmocka_unit_test(test_a_json_string_of_any_bytes_is_valid_utf8),
                cmocka_unit_test(test_string_bytes_found_at_every_position),
                cmocka_unit_test(
                        test_escaped_strings_of_any_length_decode_alike),
                cmocka_unit_test(
                        test_fields_are_read_by_name_or_left_to_jansson),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
