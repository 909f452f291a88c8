#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dynbuf.h"

static void test_appends_accumulate_and_stay_nul_terminated(void **state) {
        struct dynbuf d;

        (void)state;
        dynbuf_init(&d, 1000);
        assert_null(dynbuf_ptr(&d));
        assert_int_equal(dynbuf_append(&d, "ab", 2), 0);
        assert_int_equal(dynbuf_appends(&d, "cd"), 0);
        assert_int_equal(dynbuf_appendc(&d, 'e'), 0);
        assert_int_equal(dynbuf_appendf(&d, "-%d-%s", 42, "x"), 0);
        assert_string_equal(dynbuf_ptr(&d), "abcde-42-x");
        assert_int_equal(dynbuf_len(&d), 10);
        assert_int_equal(dynbuf_error(&d), DYNBUF_OK);
        dynbuf_fini(&d);
        assert_null(dynbuf_ptr(&d));
        assert_int_equal(dynbuf_len(&d), 0);
}

/* A literal appended by dynbuf_appendlit() is appended whole, NULs inside
 * it too, as dynbuf_append() with its length would. */
static void test_literal_appends_take_the_whole_literal(void **state) {
        struct dynbuf d;

        (void)state;
        dynbuf_init(&d, 64);
        assert_int_equal(dynbuf_appendlit(&d, ""), 0);
        assert_int_equal(dynbuf_len(&d), 0);
        assert_int_equal(dynbuf_appendlit(&d, "ab"
                                              "c"),
                         0);
        assert_int_equal(dynbuf_appendlit(&d, "d\0e"), 0);
        assert_int_equal(dynbuf_len(&d), 6);
        assert_memory_equal(dynbuf_ptr(&d), "abcd\0e", 7);
        dynbuf_fini(&d);
}

static void test_growing_past_many_doublings_keeps_every_byte(void **state) {
        struct dynbuf d;

        (void)state;
        dynbuf_init(&d, 1 << 20);
        for (int i = 0; i < 10000; i++)
                assert_int_equal(dynbuf_appendf(&d, "%04d", i), 0);
        assert_int_equal(dynbuf_len(&d), 40000);
        assert_memory_equal(dynbuf_ptr(&d) + 4 * 1234, "1234", 4);
        assert_int_equal(dynbuf_ptr(&d)[40000], '\0');
        dynbuf_fini(&d);
}

static void test_the_limit_is_reached_exactly_and_not_passed(void **state) {
        struct dynbuf d;

        (void)state;
        dynbuf_init(&d, 8);
        assert_int_equal(dynbuf_append(&d, "12345678", 8), 0);
        assert_int_equal(dynbuf_appendc(&d, '9'), -1);
        assert_int_equal(dynbuf_error(&d), DYNBUF_ELIMIT);
        assert_string_equal(dynbuf_ptr(&d), "12345678");
        dynbuf_reset(&d);
        assert_int_equal(dynbuf_appendf(&d, "%s", "123456789"), -1);
        assert_int_equal(dynbuf_error(&d), DYNBUF_ELIMIT);
        assert_int_equal(dynbuf_len(&d), 0);
        assert_string_equal(dynbuf_ptr(&d), "");
        assert_null(dynbuf_reserve(&d, 1));
        dynbuf_fini(&d);
}

static void test_a_failure_sticks_until_reset(void **state) {
        struct dynbuf d;

        (void)state;
        dynbuf_init(&d, 4);
        assert_int_equal(dynbuf_append(&d, "abc", 3), 0);
        assert_int_equal(dynbuf_append(&d, "de", 2), -1);
        /* "d" alone would fit, but the text is already incomplete */
        assert_int_equal(dynbuf_append(&d, "d", 1), -1);
        assert_int_equal(dynbuf_len(&d), 3);
        assert_null(dynbuf_take(&d, NULL));
        assert_int_equal(dynbuf_len(&d), 0);
        dynbuf_reset(&d);
        assert_int_equal(dynbuf_error(&d), DYNBUF_OK);
        assert_int_equal(dynbuf_append(&d, "d", 1), 0);
        dynbuf_fail(&d, DYNBUF_ENOMEM);
        dynbuf_fail(&d, DYNBUF_ELIMIT);
        assert_int_equal(dynbuf_error(&d), DYNBUF_ENOMEM);
        assert_int_equal(dynbuf_appendc(&d, 'x'), -1);
        dynbuf_fini(&d);
}

static void test_reserve_then_setlen_writes_in_place(void **state) {
        struct dynbuf d;
        char *p;

        (void)state;
        dynbuf_init(&d, 100);
        dynbuf_appends(&d, "ab");
        p = dynbuf_reserve(&d, 10);
        assert_non_null(p);
        memcpy(p, "cdef", 4);
        dynbuf_setlen(&d, dynbuf_len(&d) + 4);
        assert_string_equal(dynbuf_ptr(&d), "abcdef");
        assert_null(dynbuf_reserve(&d, 95));
        assert_int_equal(dynbuf_error(&d), DYNBUF_ELIMIT);
        dynbuf_fini(&d);
}

static void test_take_hands_over_the_bytes_and_empties(void **state) {
        struct dynbuf d;
        size_t len = 0;
        char *p;

        (void)state;
        dynbuf_init(&d, 100);
        dynbuf_appends(&d, "hello");
        p = dynbuf_take(&d, &len);
        assert_string_equal(p, "hello");
        assert_int_equal(len, 5);
        assert_null(dynbuf_ptr(&d));
        assert_int_equal(dynbuf_len(&d), 0);
        free(p);
        /* still usable, with the same limit */
        assert_int_equal(dynbuf_append(&d, "x", 1), 0);
        dynbuf_fini(&d);
        p = dynbuf_take(&d, &len);
        assert_string_equal(p, "");
        assert_int_equal(len, 0);
        free(p);
        dynbuf_fini(&d);
}

/* A taken buffer lives on (a built message, while its request is in
 * flight): room reserved and not used is given back. */
static void test_take_gives_back_unused_room(void **state) {
        struct dynbuf d;
        size_t len = 0;
        char *p;

        (void)state;
        dynbuf_init(&d, 1 << 20);
        assert_non_null(dynbuf_reserve(&d, 8000));
        dynbuf_appends(&d, "short");
        p = dynbuf_take(&d, &len);
        assert_string_equal(p, "short");
        assert_int_equal(len, 5);
        assert_true(malloc_usable_size(p) < 64);
        free(p);
        dynbuf_fini(&d);
}

static void
test_consume_drops_from_the_front_and_avail_is_the_room(void **state) {
        struct dynbuf d;
        char *p;

        (void)state;
        dynbuf_init(&d, 64);
        assert_int_equal(dynbuf_avail(&d), 0);
        dynbuf_consume(&d, 5); /* nothing yet: no effect */
        p = dynbuf_reserve(&d, 16);
        assert_non_null(p);
        assert_true(dynbuf_avail(&d) >= 16);
        memcpy(p, "250 ok\r\n354 go", 15);
        dynbuf_setlen(&d, 15);
        dynbuf_consume(&d, 8);
        assert_int_equal(dynbuf_len(&d), 7);
        assert_string_equal(dynbuf_ptr(&d), "354 go");
        dynbuf_consume(&d, 100); /* more than held: empties */
        assert_int_equal(dynbuf_len(&d), 0);
        assert_string_equal(dynbuf_ptr(&d), "");
        /* the room is reused, the limit still holds */
        assert_non_null(dynbuf_reserve(&d, 63));
        assert_int_equal(dynbuf_avail(&d), 63);
        assert_null(dynbuf_reserve(&d, 65));
        dynbuf_fini(&d);
}

/* A reused buffer is empty, has its new limit and no failure, and keeps its
 * memory only up to the size given. */
static void test_reuse_empties_and_keeps_memory_up_to_a_size(void **state) {
        struct dynbuf d;
        const char *p;

        (void)state;
        memset(&d, 0, sizeof(d)); /* as a static buffer starts */
        dynbuf_reuse(&d, 8, 64);
        assert_int_equal(dynbuf_append(&d, "12345678", 8), 0);
        assert_int_equal(dynbuf_appendc(&d, '9'), -1);
        p = dynbuf_ptr(&d);
        dynbuf_reuse(&d, 100, 64);
        assert_int_equal(dynbuf_error(&d), DYNBUF_OK);
        assert_int_equal(dynbuf_len(&d), 0);
        assert_ptr_equal(dynbuf_ptr(&d), p); /* kept */
        assert_string_equal(dynbuf_ptr(&d), "");
        assert_int_equal(dynbuf_append(&d, "123456789", 9), 0);
        assert_non_null(dynbuf_reserve(&d, 90));
        assert_null(dynbuf_reserve(&d, 92)); /* 9 + 92 > 100 */
        dynbuf_reuse(&d, 100, 64); /* 100 bytes held: more than 64 */
        assert_null(dynbuf_ptr(&d));
        assert_int_equal(dynbuf_append(&d, "ab", 2), 0);
        /* a lower limit than the memory held: freed */
        assert_non_null(dynbuf_reserve(&d, 40));
        dynbuf_reuse(&d, 4, 64);
        assert_null(dynbuf_ptr(&d));
        assert_int_equal(dynbuf_append(&d, "abcde", 5), -1);
        assert_int_equal(dynbuf_error(&d), DYNBUF_ELIMIT);
        dynbuf_fini(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_appends_accumulate_and_stay_nul_terminated),
                cmocka_unit_test(
                        test_growing_past_many_doublings_keeps_every_byte),
                cmocka_unit_test(
                        test_the_limit_is_reached_exactly_and_not_passed),
                cmocka_unit_test(test_a_failure_sticks_until_reset),
                cmocka_unit_test(test_literal_appends_take_the_whole_literal),
                cmocka_unit_test(test_reserve_then_setlen_writes_in_place),
                cmocka_unit_test(test_take_hands_over_the_bytes_and_empties),
                cmocka_unit_test(test_take_gives_back_unused_room),
                cmocka_unit_test(
                        test_consume_drops_from_the_front_and_avail_is_the_room),
                cmocka_unit_test(
                        test_reuse_empties_and_keeps_memory_up_to_a_size),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
