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

/* A dedupe table and what its last claim() reported. */
struct claims {
        dedupe_t *d;
        void *leader;
        const struct dedupe_done *done;
};

static struct claims claims_new(size_t capacity, int64_t ttl_ms) {
        struct claims c = {dedupe_new(capacity, ttl_ms), NULL, NULL};

        assert_non_null(c.d);
        return c;
}

/* dedupe_claim() of @id by @leader at @now_ms; c->leader and c->done get
 * what it reports. @returns its state. */
static enum dedupe_state claim(struct claims *c, const char *id, void *leader,
                               int64_t now_ms) {
        return dedupe_claim(c->d, id, leader, now_ms, &c->leader, &c->done);
}

/* @id claimed by @leader at @claim_ms (it must be new), then finished at
 * @finish_ms with @r. */
static void claim_and_finish(struct claims *c, const char *id, void *leader,
                             int64_t claim_ms, int64_t finish_ms,
                             const struct dedupe_done *r) {
        assert_int_equal(claim(c, id, leader, claim_ms), DEDUPE_NEW);
        dedupe_finish(c->d, id, r, finish_ms);
}

static void test_new_id_makes_the_caller_its_leader(void **state) {
        struct claims c = claims_new(10, 1000);
        int a, b;

        (void)state;
        assert_int_equal(claim(&c, "x", &a, 0), DEDUPE_NEW);
        assert_int_equal(claim(&c, "x", &b, 1), DEDUPE_INFLIGHT);
        assert_ptr_equal(c.leader, &a);
        assert_int_equal(dedupe_size(c.d), 1);
        dedupe_destroy(c.d);
}

static void test_finished_id_reports_its_result_until_the_ttl(void **state) {
        struct claims c = claims_new(10, 1000);
        struct dedupe_done r = done_with(0, "<x@y>");
        int a;

        (void)state;
        claim_and_finish(&c, "x", &a, 0, 100, &r);
        assert_int_equal(claim(&c, "x", &a, 1099), DEDUPE_DONE);
        assert_string_equal(c.done->message_id, "<x@y>");
        /* 1000 ms after it finished it is forgotten. */
        assert_int_equal(claim(&c, "x", &a, 1100), DEDUPE_NEW);
        dedupe_destroy(c.d);
}

static void test_finished_fields_come_back_unchanged(void **state) {
        struct claims c = claims_new(10, 1000);
        struct dedupe_done r = done_with(1, "<abc@example.com>");
        int a;

        (void)state;
        r.smtp_code = 550;
        r.attempts = 3;
        snprintf(r.smtp_reply, sizeof(r.smtp_reply), "5.1.1 no such user");
        snprintf(r.error, sizeof(r.error), "permanent SMTP rejection");
        snprintf(r.source_topic, sizeof(r.source_topic), "email.requests");
        r.source_partition = 7;
        r.source_offset = 123456789012;
        claim_and_finish(&c, "abc", &a, 0, 0, &r);
        assert_int_equal(claim(&c, "abc", &a, 1), DEDUPE_DONE);
        assert_int_equal(c.done->status, 1);
        assert_int_equal(c.done->smtp_code, 550);
        assert_int_equal(c.done->attempts, 3);
        assert_string_equal(c.done->smtp_reply, "5.1.1 no such user");
        assert_string_equal(c.done->error, "permanent SMTP rejection");
        assert_string_equal(c.done->message_id, "<abc@example.com>");
        assert_string_equal(c.done->source_topic, "email.requests");
        assert_int_equal(c.done->source_partition, 7);
        assert_true(c.done->source_offset == 123456789012);
        dedupe_destroy(c.d);
}

static void test_capacity_evicts_the_oldest_finished_ids(void **state) {
        struct claims c = claims_new(100, 1000000);
        struct dedupe_done r = done_with(0, "m");
        char id[32];
        int a;

        (void)state;
        for (int i = 0; i < 5000; i++) {
                snprintf(id, sizeof(id), "id-%d", i);
                claim_and_finish(&c, id, &a, i, i, &r);
        }
        assert_int_equal(dedupe_size(c.d), 100);
        assert_int_equal(claim(&c, "id-4999", &a, 5000), DEDUPE_DONE);
        assert_int_equal(claim(&c, "id-4899", &a, 5000), DEDUPE_NEW);
        dedupe_destroy(c.d);
}

static void test_ids_in_flight_are_never_evicted(void **state) {
        struct claims c = claims_new(1, 10);
        char id[32];
        int a;

        (void)state;
        for (int i = 0; i < 3000; i++) {
                snprintf(id, sizeof(id), "f-%d", i);
                claim(&c, id, &a, i);
        }
        assert_int_equal(dedupe_size(c.d), 3000);
        assert_int_equal(claim(&c, "f-0", &a, 100000), DEDUPE_INFLIGHT);
        dedupe_destroy(c.d);
}

static void test_released_id_can_be_claimed_again(void **state) {
        struct claims c = claims_new(10, 1000);
        int a, b;

        (void)state;
        claim(&c, "x", &a, 0);
        dedupe_release(c.d, "x");
        assert_int_equal(dedupe_size(c.d), 0);
        assert_int_equal(claim(&c, "x", &b, 0), DEDUPE_NEW);
        dedupe_destroy(c.d);
}

static void test_capacity_zero_remembers_nothing_finished(void **state) {
        struct claims c = claims_new(0, 1000);
        struct dedupe_done r = done_with(0, "m");
        int a;

        (void)state;
        claim_and_finish(&c, "x", &a, 0, 0, &r);
        assert_int_equal(dedupe_size(c.d), 0);
        assert_int_equal(claim(&c, "x", &a, 1), DEDUPE_NEW);
        dedupe_destroy(c.d);
}

static void test_remembered_id_is_done_and_leaders_win(void **state) {
        struct claims c = claims_new(10, 1000);
        struct dedupe_done r = done_with(1, "<r@y>");
        struct dedupe_done other = done_with(0, "<o@y>");
        int a, b;

        (void)state;
        dedupe_remember(c.d, "r", &r, 0);
        assert_int_equal(claim(&c, "r", &a, 1), DEDUPE_DONE);
        assert_int_equal(c.done->status, 1);
        assert_string_equal(c.done->message_id, "<r@y>");
        /* Known already: neither a leader nor an earlier result changes. */
        assert_int_equal(claim(&c, "f", &a, 1), DEDUPE_NEW);
        dedupe_remember(c.d, "f", &other, 2);
        assert_int_equal(claim(&c, "f", &b, 3), DEDUPE_INFLIGHT);
        assert_ptr_equal(c.leader, &a);
        dedupe_remember(c.d, "r", &other, 4);
        assert_int_equal(claim(&c, "r", &b, 5), DEDUPE_DONE);
        assert_string_equal(c.done->message_id, "<r@y>");
        /* Remembered ids expire like finished ones. */
        assert_int_equal(claim(&c, "r", &b, 1000), DEDUPE_NEW);
        dedupe_destroy(c.d);
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
