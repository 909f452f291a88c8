#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "offsets.h"

static void test_nothing_tracked_is_minus_one(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_non_null(o);
        assert_int_equal(offsets_committable(o), -1);
        assert_int_equal(offsets_pending(o), 0);
        assert_int_equal(offsets_done(o, 0), -1);
        offsets_destroy(o);
}

static void test_destroy_accepts_null(void **state) {
        (void)state;
        offsets_destroy(NULL);
}

static void test_in_order_completion_advances(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_int_equal(offsets_track(o, 10), 0);
        assert_int_equal(offsets_track(o, 11), 0);
        assert_int_equal(offsets_committable(o), 10);
        assert_int_equal(offsets_pending(o), 2);
        assert_int_equal(offsets_done(o, 10), 0);
        assert_int_equal(offsets_committable(o), 11);
        assert_int_equal(offsets_done(o, 11), 0);
        assert_int_equal(offsets_committable(o), 12);
        assert_int_equal(offsets_committable(o), 12);
        assert_int_equal(offsets_pending(o), 0);
        offsets_destroy(o);
}

static void test_out_of_order_completion_holds_watermark(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        for (int64_t i = 0; i < 5; i++)
                assert_int_equal(offsets_track(o, i), 0);
        assert_int_equal(offsets_done(o, 3), 0);
        assert_int_equal(offsets_done(o, 1), 0);
        assert_int_equal(offsets_done(o, 4), 0);
        assert_int_equal(offsets_committable(o), 0);
        assert_int_equal(offsets_pending(o), 2);
        assert_int_equal(offsets_done(o, 0), 0);
        assert_int_equal(offsets_committable(o), 2);
        assert_int_equal(offsets_done(o, 2), 0);
        assert_int_equal(offsets_committable(o), 5);
        assert_int_equal(offsets_pending(o), 0);
        offsets_destroy(o);
}

static void test_gaps_commit_past_untracked_offsets(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_int_equal(offsets_track(o, 100), 0);
        assert_int_equal(offsets_track(o, 105), 0);
        assert_int_equal(offsets_track(o, 200), 0);
        assert_int_equal(offsets_done(o, 105), 0);
        assert_int_equal(offsets_committable(o), 100);
        assert_int_equal(offsets_done(o, 100), 0);
        assert_int_equal(offsets_committable(o), 200);
        assert_int_equal(offsets_done(o, 200), 0);
        assert_int_equal(offsets_committable(o), 201);
        /* Tracking resumes after a gap once everything was done. */
        assert_int_equal(offsets_track(o, 300), 0);
        assert_int_equal(offsets_committable(o), 300);
        offsets_destroy(o);
}

static void test_front_tag_follows_watermark(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_int_equal(offsets_front_tag(o), -1);
        assert_int_equal(offsets_track_tag(o, 10, 500), 0);
        assert_int_equal(offsets_track_tag(o, 11, 520), 0);
        assert_int_equal(offsets_track(o, 12), 0); /* untagged: -1 */
        assert_int_equal(offsets_front_tag(o), 500);
        assert_int_equal(offsets_done(o, 11), 0);
        assert_int_equal(offsets_front_tag(o), 500);
        assert_int_equal(offsets_done(o, 10), 0);
        assert_int_equal(offsets_front_tag(o), -1);
        assert_int_equal(offsets_committable(o), 12);
        assert_int_equal(offsets_done(o, 12), 0);
        assert_int_equal(offsets_front_tag(o), -1);
        /* Tags survive the ring growing and wrapping. */
        for (int64_t i = 13; i < 13 + 300; i++)
                assert_int_equal(offsets_track_tag(o, i, 1000 + i), 0);
        for (int64_t i = 13; i < 13 + 200; i++)
                assert_int_equal(offsets_done(o, i), 0);
        assert_int_equal(offsets_front_tag(o), 1000 + 213);
        assert_int_equal(offsets_committable(o), 213);
        offsets_destroy(o);
}

static void test_duplicate_and_unknown_done_rejected(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_int_equal(offsets_track(o, 5), 0);
        assert_int_equal(offsets_track(o, 7), 0);
        assert_int_equal(offsets_track(o, 9), 0);
        assert_int_equal(offsets_done(o, 6), -1); /* in a gap */
        assert_int_equal(offsets_done(o, 4), -1); /* below the first */
        assert_int_equal(offsets_done(o, 10), -1); /* past the last */
        assert_int_equal(offsets_done(o, 7), 0);
        assert_int_equal(offsets_done(o, 7), -1); /* done, still in ring */
        assert_int_equal(offsets_done(o, 5), 0);
        assert_int_equal(offsets_done(o, 5), -1); /* done, popped */
        assert_int_equal(offsets_done(o, 7), -1); /* done, popped */
        assert_int_equal(offsets_committable(o), 9);
        assert_int_equal(offsets_pending(o), 1);
        offsets_destroy(o);
}

static void test_non_increasing_track_rejected(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        assert_int_equal(offsets_track(o, -1), -1);
        assert_int_equal(offsets_track(o, 10), 0);
        assert_int_equal(offsets_track(o, 10), -1);
        assert_int_equal(offsets_track(o, 9), -1);
        assert_int_equal(offsets_pending(o), 1);
        assert_int_equal(offsets_done(o, 10), 0);
        /* Also after the ring emptied: the last tracked offset is kept. */
        assert_int_equal(offsets_track(o, 10), -1);
        assert_int_equal(offsets_track(o, 3), -1);
        assert_int_equal(offsets_committable(o), 11);
        assert_int_equal(offsets_track(o, INT64_MAX), -1);
        offsets_destroy(o);
}

static void test_ring_grows_while_wrapped(void **state) {
        offsets_t *o = offsets_new();
        const int64_t n = 100000;

        (void)state;
        /* Move the front into the middle of the initial ring, so that the
         * ring is wrapped when it grows. */
        for (int64_t i = 0; i < 40; i++)
                assert_int_equal(offsets_track(o, i), 0);
        for (int64_t i = 0; i < 30; i++)
                assert_int_equal(offsets_done(o, i), 0);
        for (int64_t i = 40; i < n; i++)
                assert_int_equal(offsets_track(o, i * 2), 0);
        assert_int_equal(offsets_committable(o), 30);
        assert_int_equal(offsets_pending(o), (size_t)(n - 30));
        /* Every entry survived the copies: complete them newest first. */
        for (int64_t i = n - 1; i >= 40; i--)
                assert_int_equal(offsets_done(o, i * 2), 0);
        assert_int_equal(offsets_committable(o), 30);
        for (int64_t i = 30; i < 40; i++)
                assert_int_equal(offsets_done(o, i), 0);
        assert_int_equal(offsets_committable(o), (n - 1) * 2 + 1);
        assert_int_equal(offsets_pending(o), 0);
        offsets_destroy(o);
}

/* A reference model: every tracked offset kept forever in an array, the
 * committable offset found by scanning it. */
struct model {
        int64_t *off;
        int *done;
        size_t cnt;
        size_t cap;
        size_t low; /* every entry below is done */
};

static void model_track(struct model *m, int64_t offset) {
        if (m->cnt == m->cap) {
                m->cap = m->cap ? m->cap * 2 : 1024;
                m->off = realloc(m->off, m->cap * sizeof(*m->off));
                m->done = realloc(m->done, m->cap * sizeof(*m->done));
                assert_non_null(m->off);
                assert_non_null(m->done);
        }
        m->off[m->cnt] = offset;
        m->done[m->cnt] = 0;
        m->cnt++;
}

static int64_t model_committable_scan(const struct model *m) {
        for (size_t i = 0; i < m->cnt; i++) {
                if (!m->done[i])
                        return m->off[i];
        }
        return m->cnt ? m->off[m->cnt - 1] + 1 : -1;
}

static int64_t model_committable(struct model *m) {
        while (m->low < m->cnt && m->done[m->low])
                m->low++;
        if (m->low < m->cnt)
                return m->off[m->low];
        return m->cnt ? m->off[m->cnt - 1] + 1 : -1;
}

static size_t model_pending(const struct model *m) {
        size_t n = 0;

        for (size_t i = m->low; i < m->cnt; i++)
                n += !m->done[i];
        return n;
}

static int model_is_tracked(const struct model *m, int64_t offset) {
        for (size_t i = m->cnt; i > 0; i--) {
                if (m->off[i - 1] == offset)
                        return 1;
                if (m->off[i - 1] < offset)
                        return 0;
        }
        return 0;
}

static void test_random_ops_match_reference_model(void **state) {
        offsets_t *o = offsets_new();
        struct model m = {0};
        int64_t next = 0;

        (void)state;
        srand(12345);
        for (int op = 0; op < 100000; op++) {
                int r = rand() % 100;

                if (r < 45 || m.cnt == m.low) {
                        /* Track with a random gap, bounded pending window. */
                        next += rand() % 3;
                        assert_int_equal(offsets_track(o, next), 0);
                        model_track(&m, next);
                        next++;
                } else if (r < 88) {
                        /* Complete a random not-yet-final entry; it may
                         * already be done, then it must be refused. */
                        size_t span = m.cnt - m.low;
                        size_t i = m.low +
                                   (size_t)rand() % (span < 500 ? span : 500);
                        int expect = m.done[i] ? -1 : 0;

                        assert_int_equal(offsets_done(o, m.off[i]), expect);
                        m.done[i] = 1;
                } else if (r < 94) {
                        /* An offset near the end that may be in a gap
                         * or past the last tracked. */
                        int64_t off = next + 1 - rand() % 1000;

                        if (off >= 0 && !model_is_tracked(&m, off))
                                assert_int_equal(offsets_done(o, off), -1);
                } else {
                        /* A non-increasing track. */
                        int64_t off = next - 1 - rand() % 3;

                        if (off >= 0 && m.cnt > 0)
                                assert_int_equal(offsets_track(o, off), -1);
                }
                assert_int_equal(offsets_committable(o), model_committable(&m));
                if (op % 997 == 0) {
                        assert_int_equal(offsets_committable(o),
                                         model_committable_scan(&m));
                        assert_int_equal(offsets_pending(o), model_pending(&m));
                }
        }
        assert_int_equal(offsets_pending(o), model_pending(&m));
        free(m.off);
        free(m.done);
        offsets_destroy(o);
}

static void test_counts_cover_what_a_commit_covers(void **state) {
        offsets_t *o = offsets_new();

        (void)state;
        for (int64_t off = 10; off < 20; off += 2)
                assert_int_equal(offsets_track(o, off), 0);
        assert_true(offsets_tracked(o) == 5);
        assert_true(offsets_below_watermark(o) == 0);
        assert_int_equal(offsets_done(o, 12), 0);
        assert_true(offsets_below_watermark(o) == 0); /* 10 still pending */
        assert_int_equal(offsets_done(o, 10), 0);
        assert_true(offsets_below_watermark(o) == 2);
        assert_true(offsets_committable(o) == 14);
        offsets_destroy(o);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_counts_cover_what_a_commit_covers),
                cmocka_unit_test(test_nothing_tracked_is_minus_one),
                cmocka_unit_test(test_destroy_accepts_null),
                cmocka_unit_test(test_in_order_completion_advances),
                cmocka_unit_test(test_out_of_order_completion_holds_watermark),
                cmocka_unit_test(test_gaps_commit_past_untracked_offsets),
                cmocka_unit_test(test_front_tag_follows_watermark),
                cmocka_unit_test(test_duplicate_and_unknown_done_rejected),
                cmocka_unit_test(test_non_increasing_track_rejected),
                cmocka_unit_test(test_ring_grows_while_wrapped),
                cmocka_unit_test(test_random_ops_match_reference_model),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
