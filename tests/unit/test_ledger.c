#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ledger.h"

/* The results producer's acknowledged end, as the test sets it. */
static int64_t fake_results_end;

static int64_t results_end_of(void *opaque, int32_t partition) {
        (void)opaque;
        (void)partition;
        return fake_results_end;
}

static ledger_t *ledger_for(size_t limit, int resume_percent) {
        struct ledger_conf lc = {limit, resume_percent, results_end_of, NULL};
        ledger_t *l = ledger_new(&lc);

        assert_non_null(l);
        fake_results_end = 0;
        return l;
}

/* Consumes @offset of @p as the worker does: tracked, one live request. */
static void consume(ledger_t *l, ledger_part_t *p, int64_t offset) {
        assert_int_equal(ledger_track(l, p, offset), 0);
        ledger_part_enter(l, p);
}

/* Its result was acknowledged: done, and the request ends. */
static void finish(ledger_t *l, ledger_part_t *p, int64_t offset) {
        assert_int_equal(ledger_done(l, p, offset), 0);
        ledger_part_leave(l, p);
}

/* Takes the commits of the @cnt partitions of @ask (every one when @ask is
 * NULL): there must be @n. */
static void take_n(ledger_t *l, const int32_t *ask, size_t cnt, size_t n) {
        struct ledger_commit *c;

        assert_int_equal(ledger_commit_take(l, ask, cnt, &c), n);
        if (n == 0)
                assert_null(c);
        free(c);
}

/* Takes the commits of the @cnt partitions of @ask (every one when @ask is
 * NULL): there must be one, of @partition at @offset with @metadata (and its
 * length); a -1 or NULL is not checked. */
static void take_one(ledger_t *l, const int32_t *ask, size_t cnt,
                     int32_t partition, int64_t offset, const char *metadata) {
        struct ledger_commit *c;

        assert_int_equal(ledger_commit_take(l, ask, cnt, &c), 1);
        if (partition != -1)
                assert_int_equal(c[0].partition, partition);
        if (offset != -1)
                assert_int_equal(c[0].offset, offset);
        if (metadata != NULL) {
                assert_string_equal(c[0].metadata, metadata);
                assert_int_equal(c[0].metadata_len, strlen(metadata));
        }
        free(c);
}

static void test_destroy_accepts_null(void **state) {
        (void)state;
        ledger_destroy(NULL);
}

static void test_nothing_to_commit_before_anything_is_consumed(void **state) {
        ledger_t *l = ledger_for(10, 50);

        (void)state;
        ledger_part_add(l, 3);
        take_n(l, NULL, 0, 0); /* and no array */
        ledger_destroy(l);
}

static void
test_out_of_order_completion_commits_contiguous_watermark(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        consume(l, p, 5);
        consume(l, p, 6);
        consume(l, p, 7);
        finish(l, p, 7);
        finish(l, p, 6);
        /* 5 is not done: the watermark stays at 5. */
        take_one(l, NULL, 0, 0, 5, NULL);
        /* Offered already, nothing moved. */
        take_n(l, NULL, 0, 0);
        finish(l, p, 5);
        take_one(l, NULL, 0, -1, 8, NULL);
        ledger_destroy(l);
}

static void test_offset_seen_again_is_refused(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        consume(l, p, 4);
        assert_int_equal(ledger_track(l, p, 4), -1);
        assert_int_equal(ledger_track(l, p, 2), -1);
        assert_int_equal(ledger_held(l), 1);
        assert_int_equal(ledger_done(l, p, 9), -1);
        finish(l, p, 4);
        assert_int_equal(ledger_done(l, p, 4), -1);
        ledger_destroy(l);
}

static void test_confirmed_commit_frees_what_it_covered(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 1);

        (void)state;
        consume(l, p, 0);
        consume(l, p, 1);
        consume(l, p, 2);
        finish(l, p, 0);
        finish(l, p, 1);
        assert_int_equal(ledger_held(l), 3);
        assert_int_equal(ledger_inflight(l), 1);
        take_one(l, NULL, 0, -1, 2, NULL);
        /* An answer about another offset (an older offer) changes nothing. */
        ledger_committed(l, 1, 1);
        assert_int_equal(ledger_held(l), 3);
        ledger_committed(l, 1, 2);
        assert_int_equal(ledger_held(l), 1);
        /* The same answer twice counts once. */
        ledger_committed(l, 1, 2);
        assert_int_equal(ledger_held(l), 1);
        /* A partition not assigned. */
        ledger_committed(l, 7, 2);
        assert_int_equal(ledger_held(l), 1);
        ledger_destroy(l);
}

/* ledger_commit_outstanding(): from an offer until its confirmation, also
 * through a failed one (offered again), and not for a released partition. */
static void test_an_offer_is_outstanding_until_confirmed(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 1);

        (void)state;
        assert_false(ledger_commit_outstanding(l));
        consume(l, p, 0);
        finish(l, p, 0);
        assert_false(ledger_commit_outstanding(l)); /* not offered yet */
        take_one(l, NULL, 0, 1, 1, NULL);
        assert_true(ledger_commit_outstanding(l));
        ledger_commit_failed(l, 1);
        assert_true(ledger_commit_outstanding(l));
        take_one(l, NULL, 0, 1, 1, NULL);
        ledger_committed(l, 1, 1);
        assert_false(ledger_commit_outstanding(l));
        consume(l, p, 1);
        finish(l, p, 1);
        take_one(l, NULL, 0, 1, 2, NULL);
        assert_true(ledger_commit_outstanding(l));
        ledger_part_release(l, p);
        assert_false(ledger_commit_outstanding(l));
        ledger_destroy(l);
}

static void test_failed_commit_is_offered_again(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p0 = ledger_part_add(l, 0);
        ledger_part_t *p1 = ledger_part_add(l, 1);

        (void)state;
        consume(l, p0, 10);
        consume(l, p1, 20);
        finish(l, p0, 10);
        finish(l, p1, 20);
        take_n(l, NULL, 0, 2);
        ledger_commit_failed(l, 1);
        take_one(l, NULL, 0, 1, 21, NULL);
        assert_int_equal(ledger_held(l), 2); /* nothing confirmed */
        ledger_commit_failed_all(l);
        take_n(l, NULL, 0, 2);
        ledger_destroy(l);
}

static void test_commit_of_some_partitions_only(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p0 = ledger_part_add(l, 0);
        ledger_part_t *p2 = ledger_part_add(l, 2);
        int32_t ask[] = {2, 9};

        (void)state;
        consume(l, p0, 0);
        consume(l, p2, 0);
        finish(l, p0, 0);
        finish(l, p2, 0);
        take_one(l, ask, 2, 2, -1, NULL);
        /* None asked for. */
        take_n(l, ask, 0, 0);
        take_one(l, NULL, 0, 0, -1, NULL);
        ledger_destroy(l);
}

static void test_no_metadata_without_results_partition(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        fake_results_end = 100;
        consume(l, p, 0);
        finish(l, p, 0);
        take_one(l, NULL, 0, -1, -1, "");
        ledger_destroy(l);
}

/* docs/wire-format.md: "kafka-mailer/1 results=<results partition>@<results
 * offset>", the floor tagged on the request at the watermark. */
static void test_metadata_names_floor_of_request_at_watermark(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 3);

        (void)state;
        ledger_part_hold(p, 1);
        assert_int_equal(ledger_parts_held(l), 1);
        assert_int_equal(ledger_part_let_through(p, 1, 3, 40, -1, -1), 0);
        assert_int_equal(ledger_parts_held(l), 0);
        assert_int_equal(ledger_part_results_partition(p), 3);
        fake_results_end = 42;
        consume(l, p, 100); /* floor 42 */
        fake_results_end = 50;
        consume(l, p, 101); /* floor 50 */
        finish(l, p, 101);
        take_one(l, NULL, 0, -1, 100, "kafka-mailer/1 results=3@42");
        /* Every request done: the floor of the next one to come. */
        fake_results_end = 57;
        finish(l, p, 100);
        take_one(l, NULL, 0, -1, 102, "kafka-mailer/1 results=3@57");
        ledger_destroy(l);
}

static void test_results_base_bounds_floor_from_below(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        ledger_part_hold(p, 5);
        assert_int_equal(ledger_part_let_through(p, 5, 0, 30, -1, -1), 0);
        fake_results_end = 0; /* nothing of ours acknowledged yet */
        consume(l, p, 0);
        take_one(l, NULL, 0, -1, -1, "kafka-mailer/1 results=0@30");
        ledger_destroy(l);
}

static void test_requests_below_inherited_end_keep_stored_floor(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 2);

        (void)state;
        ledger_part_hold(p, 1);
        /* The earlier owner stored 2@7 and the partition ended at 20. */
        assert_int_equal(ledger_part_let_through(p, 1, 2, 90, 7, 20), 0);
        consume(l, p, 19);
        consume(l, p, 20);
        finish(l, p, 20);
        take_one(l, NULL, 0, -1, 19, "kafka-mailer/1 results=2@7");
        finish(l, p, 19);
        take_one(l, NULL, 0, -1, -1, "kafka-mailer/1 results=2@90");
        ledger_destroy(l);
}

static void test_stale_recall_answer_is_ignored(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        /* Not held. */
        assert_int_equal(ledger_part_let_through(p, 1, 0, 5, -1, -1), -1);
        ledger_part_hold(p, 2);
        /* Asked again since. */
        assert_int_equal(ledger_part_let_through(p, 1, 0, 5, -1, -1), -1);
        /* Revoked meanwhile. */
        ledger_part_drain(p);
        assert_int_equal(ledger_part_let_through(p, 2, 0, 5, -1, -1), -1);
        assert_int_equal(ledger_parts_held(l), 1);
        assert_int_equal(ledger_part_results_partition(p), -1);
        ledger_destroy(l);
}

static void test_drain_offers_watermark_again(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        consume(l, p, 0);
        finish(l, p, 0);
        take_one(l, NULL, 0, -1, -1, NULL);
        assert_int_equal(ledger_part_draining(p), 0);
        ledger_part_drain(p);
        assert_int_equal(ledger_part_draining(p), 1);
        take_one(l, NULL, 0, -1, 1, NULL);
        ledger_destroy(l);
}

static void test_revoke_leaves_entries_and_release_drops_held(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 4);
        ledger_part_t *q = ledger_part_add(l, 5);

        (void)state;
        consume(l, p, 0);
        consume(l, p, 1);
        consume(l, q, 0);
        finish(l, p, 0);
        ledger_part_drain(p);
        /* What the revoke must still finish: one request of p. */
        assert_int_equal(ledger_part_entries(p), 1);
        assert_int_equal(ledger_held(l), 3);
        ledger_part_release(l, p);
        assert_int_equal(ledger_part_released(p), 1);
        assert_null(ledger_part_get(l, 4));
        /* p's two no longer count as held; its live request still counts
         * as in flight until it ends. */
        assert_int_equal(ledger_held(l), 1);
        assert_int_equal(ledger_inflight(l), 2);
        /* Its completion no longer commits. */
        assert_int_equal(ledger_done(l, p, 1), -1);
        assert_int_equal(ledger_part_leave(l, p), 1); /* freed */
        assert_int_equal(ledger_inflight(l), 1);
        take_one(l, NULL, 0, 5, -1, NULL);
        /* The partition assigned again is a new one. */
        assert_int_equal(ledger_part_entries(ledger_part_add(l, 4)), 0);
        ledger_destroy(l);
}

static void test_release_of_empty_partition_frees_it(void **state) {
        ledger_t *l = ledger_for(10, 50);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        consume(l, p, 0);
        finish(l, p, 0);
        ledger_release_all(l);
        assert_null(ledger_part_get(l, 0));
        assert_int_equal(ledger_held(l), 0);
        ledger_destroy(l);
}

static void test_pause_at_limit_resume_at_low_water(void **state) {
        ledger_t *l = ledger_for(4, 50); /* resume at 2 */
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        consume(l, p, 0);
        consume(l, p, 1);
        consume(l, p, 2);
        assert_int_equal(ledger_pressure(l, 0), LEDGER_KEEP);
        assert_int_equal(ledger_commit_urgent(l), 1); /* 3 * 2 >= 4 */
        consume(l, p, 3);
        assert_int_equal(ledger_pressure(l, 0), LEDGER_PAUSE);
        assert_int_equal(ledger_pressure(l, 1), LEDGER_KEEP);
        /* Finished is not enough: held until a commit is confirmed. */
        finish(l, p, 0);
        finish(l, p, 1);
        finish(l, p, 2);
        assert_int_equal(ledger_inflight(l), 1);
        assert_int_equal(ledger_pressure(l, 1), LEDGER_KEEP);
        take_one(l, NULL, 0, -1, 3, NULL);
        ledger_committed(l, 0, 3);
        assert_int_equal(ledger_held(l), 1);
        assert_int_equal(ledger_pressure(l, 1), LEDGER_RESUME);
        assert_int_equal(ledger_pressure(l, 0), LEDGER_KEEP);
        assert_int_equal(ledger_commit_urgent(l), 0);
        ledger_destroy(l);
}

static void test_inflight_alone_pauses(void **state) {
        ledger_t *l = ledger_for(2, 50); /* resume at 1 */
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        ledger_part_enter(l, p);
        ledger_part_enter(l, p);
        assert_int_equal(ledger_held(l), 0);
        assert_int_equal(ledger_pressure(l, 0), LEDGER_PAUSE);
        ledger_part_leave(l, p);
        assert_int_equal(ledger_pressure(l, 1), LEDGER_RESUME);
        ledger_part_leave(l, p);
        ledger_destroy(l);
}

static void test_resume_mark_stays_below_limit(void **state) {
        ledger_t *l = ledger_for(1, 100);
        ledger_part_t *p = ledger_part_add(l, 0);

        (void)state;
        assert_int_equal(ledger_limit(l), 1);
        ledger_part_enter(l, p);
        assert_int_equal(ledger_pressure(l, 0), LEDGER_PAUSE);
        /* At the limit, a resume would take one over it. */
        assert_int_equal(ledger_pressure(l, 1), LEDGER_KEEP);
        ledger_part_leave(l, p);
        assert_int_equal(ledger_pressure(l, 1), LEDGER_RESUME);
        ledger_destroy(l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_destroy_accepts_null),
                cmocka_unit_test(
                        test_nothing_to_commit_before_anything_is_consumed),
                cmocka_unit_test(
                        test_out_of_order_completion_commits_contiguous_watermark),
                cmocka_unit_test(test_offset_seen_again_is_refused),
                cmocka_unit_test(test_confirmed_commit_frees_what_it_covered),
                cmocka_unit_test(test_an_offer_is_outstanding_until_confirmed),
                cmocka_unit_test(test_failed_commit_is_offered_again),
                cmocka_unit_test(test_commit_of_some_partitions_only),
                cmocka_unit_test(test_no_metadata_without_results_partition),
                cmocka_unit_test(
                        test_metadata_names_floor_of_request_at_watermark),
                cmocka_unit_test(test_results_base_bounds_floor_from_below),
                cmocka_unit_test(
                        test_requests_below_inherited_end_keep_stored_floor),
                cmocka_unit_test(test_stale_recall_answer_is_ignored),
                cmocka_unit_test(test_drain_offers_watermark_again),
                cmocka_unit_test(
                        test_revoke_leaves_entries_and_release_drops_held),
                cmocka_unit_test(test_release_of_empty_partition_frees_it),
                cmocka_unit_test(test_pause_at_limit_resume_at_low_water),
                cmocka_unit_test(test_inflight_alone_pauses),
                cmocka_unit_test(test_resume_mark_stays_below_limit),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
