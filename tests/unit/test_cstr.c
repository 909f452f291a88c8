#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cstr.h"

/* cstr_copy() writes what snprintf(dst, size, "%s", src) writes, and
 * nothing past it. */
static void test_copy_writes_what_snprintf_writes(void **state) {
        static const struct {
                const char *src;
                size_t size;
                const char *out;
        } cases[] = {
                {"", 1, ""},
                {"", 8, ""},
                {"abc", 1, ""},
                {"abc", 3, "ab"},
                {"abc", 4, "abc"},
                {"abc", 8, "abc"},
                {"caf\xc3\xa9", 5, "caf\xc3"},
                {"250 Ok", 7, "250 Ok"},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char got[16], want[16];
                size_t n;

                memset(got, 'x', sizeof(got));
                memset(want, 'x', sizeof(want));
                n = cstr_copy(got, cases[i].size, cases[i].src);
                snprintf(want, cases[i].size, "%s", cases[i].src);
                assert_memory_equal(got, want, sizeof(got));
                assert_string_equal(got, cases[i].out);
                assert_int_equal(n, strlen(cases[i].out));
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_copy_writes_what_snprintf_writes),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
