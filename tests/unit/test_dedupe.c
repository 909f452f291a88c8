#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "dedupe.h"

static struct dedupe_done done_with(int status, const char *mid) {
        struct dedupe_done d;

        memset(&d, 0, sizeof(d));
        d.status = status;
        snprintf(d.message_id, sizeof(d.message_id), "%s", mid);
        return d;
}

static void test_new_id_makes_the_caller_its_leader(void **state) {
        dedupe_t *d = dedupe_new(10, 1000);
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a, b;

        (void)state;
        assert_int_equal(dedupe_claim(d, "x", &a, 0, &leader, &done),
                         DEDUPE_NEW);
        assert_int_equal(dedupe_claim(d, "x", &b, 1, &leader, &done),
                         DEDUPE_INFLIGHT);
        assert_ptr_equal(leader, &a);
        assert_int_equal(dedupe_size(d), 1);
        dedupe_destroy(d);
}

static void test_finished_id_reports_its_result_until_the_ttl(void **state) {
        dedupe_t *d = dedupe_new(10, 1000);
        struct dedupe_done r = done_with(0, "<x@y>");
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a;

        (void)state;
        dedupe_claim(d, "x", &a, 0, &leader, &done);
        dedupe_finish(d, "x", &r, 100);
        assert_int_equal(dedupe_claim(d, "x", &a, 1099, &leader, &done),
                         DEDUPE_DONE);
        assert_string_equal(done->message_id, "<x@y>");
        /* 1000 ms after it finished it is forgotten. */
        assert_int_equal(dedupe_claim(d, "x", &a, 1100, &leader, &done),
                         DEDUPE_NEW);
        dedupe_destroy(d);
}

static void test_finished_fields_come_back_unchanged(void **state) {
        dedupe_t *d = dedupe_new(10, 1000);
        struct dedupe_done r = done_with(1, "<abc@example.com>");
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a;

        (void)state;
        r.smtp_code = 550;
        r.attempts = 3;
        snprintf(r.smtp_reply, sizeof(r.smtp_reply), "5.1.1 no such user");
        snprintf(r.error, sizeof(r.error), "permanent SMTP rejection");
        snprintf(r.source_topic, sizeof(r.source_topic), "email.requests");
        r.source_partition = 7;
        r.source_offset = 123456789012;
        dedupe_claim(d, "abc", &a, 0, &leader, &done);
        dedupe_finish(d, "abc", &r, 0);
        assert_int_equal(dedupe_claim(d, "abc", &a, 1, &leader, &done),
                         DEDUPE_DONE);
        assert_int_equal(done->status, 1);
        assert_int_equal(done->smtp_code, 550);
        assert_int_equal(done->attempts, 3);
        assert_string_equal(done->smtp_reply, "5.1.1 no such user");
        assert_string_equal(done->error, "permanent SMTP rejection");
        assert_string_equal(done->message_id, "<abc@example.com>");
        assert_string_equal(done->source_topic, "email.requests");
        assert_int_equal(done->source_partition, 7);
        assert_true(done->source_offset == 123456789012);
        dedupe_destroy(d);
}

static void test_capacity_evicts_the_oldest_finished_ids(void **state) {
        dedupe_t *d = dedupe_new(100, 1000000);
        struct dedupe_done r = done_with(0, "m");
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        char id[32];
        int a;

        (void)state;
        for (int i = 0; i < 5000; i++) {
                snprintf(id, sizeof(id), "id-%d", i);
                assert_int_equal(dedupe_claim(d, id, &a, i, &leader, &done),
                                 DEDUPE_NEW);
                dedupe_finish(d, id, &r, i);
        }
        assert_int_equal(dedupe_size(d), 100);
        assert_int_equal(dedupe_claim(d, "id-4999", &a, 5000, &leader, &done),
                         DEDUPE_DONE);
        assert_int_equal(dedupe_claim(d, "id-4899", &a, 5000, &leader, &done),
                         DEDUPE_NEW);
        dedupe_destroy(d);
}

static void test_ids_in_flight_are_never_evicted(void **state) {
        dedupe_t *d = dedupe_new(1, 10);
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        char id[32];
        int a;

        (void)state;
        for (int i = 0; i < 3000; i++) {
                snprintf(id, sizeof(id), "f-%d", i);
                dedupe_claim(d, id, &a, i, &leader, &done);
        }
        assert_int_equal(dedupe_size(d), 3000);
        assert_int_equal(dedupe_claim(d, "f-0", &a, 100000, &leader, &done),
                         DEDUPE_INFLIGHT);
        dedupe_destroy(d);
}

static void test_released_id_can_be_claimed_again(void **state) {
        dedupe_t *d = dedupe_new(10, 1000);
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a, b;

        (void)state;
        dedupe_claim(d, "x", &a, 0, &leader, &done);
        dedupe_release(d, "x");
        assert_int_equal(dedupe_size(d), 0);
        assert_int_equal(dedupe_claim(d, "x", &b, 0, &leader, &done),
                         DEDUPE_NEW);
        dedupe_destroy(d);
}

static void test_capacity_zero_remembers_nothing_finished(void **state) {
        dedupe_t *d = dedupe_new(0, 1000);
        struct dedupe_done r = done_with(0, "m");
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a;

        (void)state;
        dedupe_claim(d, "x", &a, 0, &leader, &done);
        dedupe_finish(d, "x", &r, 0);
        assert_int_equal(dedupe_size(d), 0);
        assert_int_equal(dedupe_claim(d, "x", &a, 1, &leader, &done),
                         DEDUPE_NEW);
        dedupe_destroy(d);
}

static void test_remembered_id_is_done_and_leaders_win(void **state) {
        dedupe_t *d = dedupe_new(10, 1000);
        struct dedupe_done r = done_with(1, "<r@y>");
        struct dedupe_done other = done_with(0, "<o@y>");
        void *leader = NULL;
        const struct dedupe_done *done = NULL;
        int a, b;

        (void)state;
        dedupe_remember(d, "r", &r, 0);
        assert_int_equal(dedupe_claim(d, "r", &a, 1, &leader, &done),
                         DEDUPE_DONE);
        assert_int_equal(done->status, 1);
        assert_string_equal(done->message_id, "<r@y>");
        /* Known already: neither a leader nor an earlier result changes. */
        assert_int_equal(dedupe_claim(d, "f", &a, 1, &leader, &done),
                         DEDUPE_NEW);
        dedupe_remember(d, "f", &other, 2);
        assert_int_equal(dedupe_claim(d, "f", &b, 3, &leader, &done),
                         DEDUPE_INFLIGHT);
        assert_ptr_equal(leader, &a);
        dedupe_remember(d, "r", &other, 4);
        assert_int_equal(dedupe_claim(d, "r", &b, 5, &leader, &done),
                         DEDUPE_DONE);
        assert_string_equal(done->message_id, "<r@y>");
        /* Remembered ids expire like finished ones. */
        assert_int_equal(dedupe_claim(d, "r", &b, 1000, &leader, &done),
                         DEDUPE_NEW);
        dedupe_destroy(d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_new_id_makes_the_caller_its_leader),
                cmocka_unit_test(
                        test_finished_id_reports_its_result_until_the_ttl),
                cmocka_unit_test(test_finished_fields_come_back_unchanged),
                cmocka_unit_test(test_capacity_evicts_the_oldest_finished_ids),
                cmocka_unit_test(test_ids_in_flight_are_never_evicted),
                cmocka_unit_test(test_released_id_can_be_claimed_again),
                cmocka_unit_test(test_capacity_zero_remembers_nothing_finished),
                cmocka_unit_test(test_remembered_id_is_done_and_leaders_win),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
