#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "hash.h"

static void test_fnv1a64_matches_the_published_vectors(void **state) {
        (void)state;
        assert_true(hash_fnv1a64("", 0) == 0xcbf29ce484222325ull);
        assert_true(hash_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cull);
        assert_true(hash_fnv1a64("foobar", 6) == 0x85944171f73967e8ull);
}

static void test_string_form_hashes_the_bytes_before_the_nul(void **state) {
        static const char *const s[] = {"", "a", "foobar", "req-123",
                                        "caf\xc3\xa9"};

        (void)state;
        for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
                assert_true(hash_fnv1a64_str(s[i]) ==
                            hash_fnv1a64(s[i], strlen(s[i])));
        assert_true(hash_fnv1a64_str("foobar") == 0x85944171f73967e8ull);
}

static void test_embedded_nul_bytes_count(void **state) {
        (void)state;
        assert_true(hash_fnv1a64("a\0b", 3) != hash_fnv1a64("a", 1));
        assert_true(hash_fnv1a64("\0", 1) != hash_fnv1a64("", 0));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fnv1a64_matches_the_published_vectors),
                cmocka_unit_test(
                        test_string_form_hashes_the_bytes_before_the_nul),
                cmocka_unit_test(test_embedded_nul_bytes_count),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
