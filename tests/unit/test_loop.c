/*
 * Unit tests of loop: timer order and cancellation, fd readiness, removing
 * watches from inside a dispatch, wakeup.
 */
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

struct rec {
        int order[16];
        int cnt;
};

struct tctx {
        struct rec *rec;
        int id;
};

static void rec_timer_cb(loop_t *loop, void *opaque) {
        struct tctx *c = opaque;

        (void)loop;
        if (c->rec->cnt < 16)
                c->rec->order[c->rec->cnt++] = c->id;
}

/* Runs the loop until @cnt callbacks ran or 2 s passed. */
static void run_until(loop_t *loop, const struct rec *rec, int cnt) {
        int64_t end = loop_clock_ms() + 2000;

        while (rec->cnt < cnt && loop_clock_ms() < end)
                assert_true(loop_run_once(loop, 100) >= 0);
}

static void test_timers_fire_in_due_order(void **state) {
        loop_t *loop = loop_new();
        struct rec rec = {0};
        struct tctx c[5];
        loop_timer_t t[5];
        const int64_t delays[5] = {40, 10, 30, 0, 20};

        (void)state;
        assert_non_null(loop);
        for (int i = 0; i < 5; i++) {
                c[i].rec = &rec;
                c[i].id = (int)delays[i];
                loop_timer_init(&t[i], rec_timer_cb, &c[i]);
                loop_timer_start(loop, &t[i], delays[i]);
                assert_true(loop_timer_pending(&t[i]));
        }
        run_until(loop, &rec, 5);
        assert_int_equal(rec.cnt, 5);
        for (int i = 0; i < 5; i++)
                assert_int_equal(rec.order[i], i * 10);
        for (int i = 0; i < 5; i++)
                assert_false(loop_timer_pending(&t[i]));
        loop_destroy(loop);
}

static void test_timer_start_within_only_moves_a_timer_earlier(void **state) {
        loop_t *loop = loop_new();
        struct rec rec = {0};
        struct tctx c[3] = {{&rec, 1}, {&rec, 2}, {&rec, 3}};
        loop_timer_t t[3];

        (void)state;
        for (int i = 0; i < 3; i++)
                loop_timer_init(&t[i], rec_timer_cb, &c[i]);
        loop_timer_start_within(loop, &t[0], 30); /* idle: started */
        assert_true(loop_timer_pending(&t[0]));
        loop_timer_start(loop, &t[1], 10);
        loop_timer_start_within(loop, &t[1], 60); /* due sooner: stays */
        loop_timer_start(loop, &t[2], 80);
        loop_timer_start_within(loop, &t[2], 20); /* due later: moved */
        run_until(loop, &rec, 3);
        assert_int_equal(rec.cnt, 3);
        assert_int_equal(rec.order[0], 2);
        assert_int_equal(rec.order[1], 3);
        assert_int_equal(rec.order[2], 1);
        loop_destroy(loop);
}

static void test_timers_with_equal_due_run_in_start_order(void **state) {
        loop_t *loop = loop_new();
        struct rec rec = {0};
        struct tctx c[8];
        loop_timer_t t[8];

        (void)state;
        for (int i = 0; i < 8; i++) {
                c[i].rec = &rec;
                c[i].id = i;
                loop_timer_init(&t[i], rec_timer_cb, &c[i]);
                loop_timer_start(loop, &t[i], 5);
        }
        run_until(loop, &rec, 8);
        for (int i = 0; i < 8; i++)
                assert_int_equal(rec.order[i], i);
        loop_destroy(loop);
}

static void test_timer_stop_and_restart(void **state) {
        loop_t *loop = loop_new();
        struct rec rec = {0};
        struct tctx c[3] = {{&rec, 1}, {&rec, 2}, {&rec, 3}};
        loop_timer_t t[3];

        (void)state;
        for (int i = 0; i < 3; i++) {
                loop_timer_init(&t[i], rec_timer_cb, &c[i]);
                loop_timer_start(loop, &t[i], 10 * (i + 1));
        }
        loop_timer_stop(loop, &t[1]);
        assert_false(loop_timer_pending(&t[1]));
        loop_timer_stop(loop, &t[1]); /* idle: no-op */
        loop_timer_start(loop, &t[0], 50); /* moves behind t[2] */
        run_until(loop, &rec, 2);
        assert_int_equal(rec.cnt, 2);
        assert_int_equal(rec.order[0], 3);
        assert_int_equal(rec.order[1], 1);
        /* the stopped one never fires */
        assert_true(loop_run_once(loop, 30) >= 0);
        assert_int_equal(rec.cnt, 2);
        loop_destroy(loop);
}

struct self_ctx {
        loop_timer_t t;
        int runs;
};

static void self_restart_cb(loop_t *loop, void *opaque) {
        struct self_ctx *s = opaque;

        s->runs++;
        loop_timer_start(loop, &s->t, 0);
}

static void
test_timer_restarted_from_callback_waits_an_iteration(void **state) {
        loop_t *loop = loop_new();
        struct self_ctx s = {0};

        (void)state;
        loop_timer_init(&s.t, self_restart_cb, &s);
        loop_timer_start(loop, &s.t, 0);
        assert_int_equal(loop_run_once(loop, 0), 1);
        assert_int_equal(s.runs, 1);
        assert_int_equal(loop_run_once(loop, 0), 1);
        assert_int_equal(s.runs, 2);
        loop_timer_stop(loop, &s.t);
        loop_destroy(loop);
}

static int64_t lcg_next(uint64_t *x) {
        *x = *x * 6364136223846793005ull + 1442695040888963407ull;
        return (int64_t)((*x >> 33) % 1000);
}

struct heap_ctx {
        int cnt;
};

static void heap_cb(loop_t *loop, void *opaque) {
        struct heap_ctx *h = opaque;

        (void)loop;
        h->cnt++;
}

static void test_timer_heap_random_stop_keeps_order(void **state) {
        enum { N = 500 };
        loop_t *loop = loop_new();
        static loop_timer_t t[N];
        struct heap_ctx h = {0};
        uint64_t x = 42;
        int64_t last = INT64_MIN;
        int pending = 0;

        (void)state;
        for (int i = 0; i < N; i++) {
                loop_timer_init(&t[i], heap_cb, &h);
                loop_timer_start(loop, &t[i], 100000 + lcg_next(&x));
        }
        for (int i = 0; i < N; i += 3)
                loop_timer_stop(loop, &t[i]);
        for (int i = 1; i < N; i += 7)
                loop_timer_start(loop, &t[i], 100000 + lcg_next(&x));
        for (int i = 0; i < N; i++)
                pending += loop_timer_pending(&t[i]) ? 1 : 0;
        /* Every pending timer sits where lt_heap_idx says, and the heap
         * order holds: check by stopping them earliest-first. */
        for (int k = 0; k < pending; k++) {
                loop_timer_t *min = NULL;

                for (int i = 0; i < N; i++) {
                        if (!loop_timer_pending(&t[i]))
                                continue;
                        if (!min || t[i].lt_due_ms < min->lt_due_ms ||
                            (t[i].lt_due_ms == min->lt_due_ms &&
                             t[i].lt_seq < min->lt_seq))
                                min = &t[i];
                }
                assert_non_null(min);
                assert_int_equal(min->lt_heap_idx, 0);
                assert_true(min->lt_due_ms >= last);
                last = min->lt_due_ms;
                loop_timer_stop(loop, min);
        }
        for (int i = 0; i < N; i++)
                assert_false(loop_timer_pending(&t[i]));
        assert_int_equal(h.cnt, 0);
        loop_destroy(loop);
}

struct io_ctx {
        int fds[4][2];
        int calls[4];
        int del_others; /* the first callback deletes every other watch */
        int readd; /* ...and adds them back (new generation) */
};

static void io_cb(loop_t *loop, int fd, unsigned events, void *opaque) {
        struct io_ctx *c = opaque;
        char buf[16];
        int idx = -1;

        for (int i = 0; i < 4; i++)
                if (c->fds[i][0] == fd)
                        idx = i;
        assert_true(idx >= 0);
        assert_true(events & LOOP_READ);
        c->calls[idx]++;
        (void)!read(fd, buf, sizeof(buf));
        if (c->del_others) {
                c->del_others = 0;
                for (int i = 0; i < 4; i++) {
                        if (i == idx)
                                continue;
                        loop_io_del(loop, c->fds[i][0]);
                        if (c->readd)
                                assert_int_equal(loop_io_add(loop, c->fds[i][0],
                                                             LOOP_READ, io_cb,
                                                             c),
                                                 0);
                }
                /* the fd being dispatched, too */
                loop_io_del(loop, fd);
        }
}

static void io_setup(loop_t *loop, struct io_ctx *c) {
        for (int i = 0; i < 4; i++) {
                assert_int_equal(pipe2(c->fds[i], O_NONBLOCK | O_CLOEXEC), 0);
                assert_int_equal(
                        loop_io_add(loop, c->fds[i][0], LOOP_READ, io_cb, c),
                        0);
                assert_int_equal(write(c->fds[i][1], "x", 1), 1);
        }
}

static void io_teardown(loop_t *loop, struct io_ctx *c) {
        for (int i = 0; i < 4; i++) {
                loop_io_del(loop, c->fds[i][0]);
                close(c->fds[i][0]);
                close(c->fds[i][1]);
        }
}

static void test_io_readiness_of_a_pipe(void **state) {
        loop_t *loop = loop_new();
        struct io_ctx c;

        (void)state;
        memset(&c, 0, sizeof(c));
        io_setup(loop, &c);
        assert_int_equal(loop_run_once(loop, 1000), 4);
        for (int i = 0; i < 4; i++)
                assert_int_equal(c.calls[i], 1);
        /* drained: nothing is ready */
        assert_int_equal(loop_run_once(loop, 10), 0);
        assert_int_equal(loop_io_add(loop, c.fds[0][0], LOOP_READ, io_cb, &c),
                         -1);
        /* not readable while only LOOP_WRITE is asked for */
        assert_int_equal(loop_io_mod(loop, c.fds[1][0], 0), 0);
        assert_int_equal(write(c.fds[1][1], "y", 1), 1);
        assert_int_equal(loop_run_once(loop, 10), 0);
        assert_int_equal(loop_io_mod(loop, c.fds[1][0], LOOP_READ), 0);
        assert_int_equal(loop_run_once(loop, 1000), 1);
        assert_int_equal(c.calls[1], 2);
        io_teardown(loop, &c);
        loop_destroy(loop);
}

static void test_io_removed_during_dispatch_is_not_called(void **state) {
        loop_t *loop = loop_new();
        struct io_ctx c;

        (void)state;
        memset(&c, 0, sizeof(c));
        c.del_others = 1;
        io_setup(loop, &c);
        assert_int_equal(loop_run_once(loop, 1000), 1);
        assert_int_equal(c.calls[0] + c.calls[1] + c.calls[2] + c.calls[3], 1);
        io_teardown(loop, &c);
        loop_destroy(loop);
}

static void test_io_readded_during_dispatch_waits_for_next_batch(void **state) {
        loop_t *loop = loop_new();
        struct io_ctx c;
        int first = -1;

        (void)state;
        memset(&c, 0, sizeof(c));
        c.del_others = 1;
        c.readd = 1;
        io_setup(loop, &c);
        /* the stale events of the batch are dropped... */
        assert_int_equal(loop_run_once(loop, 1000), 1);
        for (int i = 0; i < 4; i++)
                if (c.calls[i])
                        first = i;
        /* ...and the re-added watches report on the next iteration */
        assert_int_equal(loop_run_once(loop, 1000), 3);
        for (int i = 0; i < 4; i++)
                assert_int_equal(c.calls[i], 1);
        assert_true(first >= 0);
        io_teardown(loop, &c);
        loop_destroy(loop);
}

static void hup_cb(loop_t *loop, int fd, unsigned events, void *opaque) {
        unsigned *got = opaque;

        *got = events;
        loop_io_del(loop, fd);
}

static void test_io_hangup_reports_error(void **state) {
        loop_t *loop = loop_new();
        unsigned got = 0;
        int p[2];

        (void)state;
        assert_int_equal(pipe2(p, O_NONBLOCK), 0);
        assert_int_equal(loop_io_add(loop, p[0], LOOP_READ, hup_cb, &got), 0);
        close(p[1]);
        assert_int_equal(loop_run_once(loop, 1000), 1);
        assert_true(got & LOOP_ERROR);
        close(p[0]);
        loop_destroy(loop);
}

static void test_io_fd_table_grows(void **state) {
        loop_t *loop = loop_new();
        int p[2], big;
        unsigned got = 0;

        (void)state;
        assert_int_equal(pipe2(p, O_NONBLOCK), 0);
        big = fcntl(p[0], F_DUPFD_CLOEXEC, 900);
        assert_true(big >= 900);
        assert_int_equal(loop_io_add(loop, big, LOOP_READ, hup_cb, &got), 0);
        assert_int_equal(write(p[1], "z", 1), 1);
        assert_int_equal(loop_run_once(loop, 1000), 1);
        assert_true(got & LOOP_READ);
        close(big);
        close(p[0]);
        close(p[1]);
        loop_destroy(loop);
}

static void *wake_thread(void *arg) {
        usleep(50 * 1000);
        loop_wakeup(arg);
        return NULL;
}

static void test_wakeup_from_another_thread_ends_the_wait(void **state) {
        loop_t *loop = loop_new();
        pthread_t th;
        int64_t t0;

        (void)state;
        t0 = loop_clock_ms();
        assert_int_equal(pthread_create(&th, NULL, wake_thread, loop), 0);
        assert_int_equal(loop_run_once(loop, 5000), 0);
        assert_true(loop_clock_ms() - t0 < 2000);
        pthread_join(th, NULL);
        /* the wakeup was consumed */
        t0 = loop_clock_ms();
        assert_int_equal(loop_run_once(loop, 30), 0);
        assert_true(loop_clock_ms() - t0 >= 25);
        loop_destroy(loop);
}

static void test_now_is_cached_per_iteration(void **state) {
        loop_t *loop = loop_new();
        int64_t a;

        (void)state;
        a = loop_now_ms(loop);
        usleep(20 * 1000);
        assert_int_equal(loop_now_ms(loop), a);
        loop_run_once(loop, 0);
        assert_true(loop_now_ms(loop) >= a + 20);
        loop_destroy(loop);
}

/* The wall clock is read once per iteration by the callbacks of that
 * iteration (two timers 20 ms apart in one run see one reading), afresh in
 * the next, and read each time outside an iteration. */
static int64_t wall_seen[3];
static int wall_calls;

static void wall_timer_cb(loop_t *l, void *o) {
        (void)o;
        wall_seen[wall_calls++] = loop_wall_ms(l);
        usleep(20 * 1000);
}

static int64_t wall_now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_wall_clock_is_read_once_per_iteration(void **state) {
        loop_t *loop = loop_new();
        loop_timer_t t1, t2, t3;
        int64_t before = wall_now_ms();
        int64_t a;

        (void)state;
        a = loop_wall_ms(loop);
        assert_true(a >= before && a <= wall_now_ms());
        usleep(20 * 1000);
        assert_true(loop_wall_ms(loop) >= a + 20);
        loop_timer_init(&t1, wall_timer_cb, NULL);
        loop_timer_init(&t2, wall_timer_cb, NULL);
        loop_timer_init(&t3, wall_timer_cb, NULL);
        loop_timer_start(loop, &t1, 0);
        loop_timer_start(loop, &t2, 0);
        before = wall_now_ms();
        loop_run_once(loop, 1000);
        assert_int_equal(wall_calls, 2);
        assert_true(wall_seen[0] >= before);
        assert_true(wall_seen[1] == wall_seen[0]);
        loop_timer_start(loop, &t3, 0);
        loop_run_once(loop, 1000);
        assert_int_equal(wall_calls, 3);
        assert_true(wall_seen[2] >= wall_seen[0] + 40);
        loop_destroy(loop);
}

/* The loop is not re-entrant: run from one of its callbacks, it refuses
 * (EDEADLK) and the outer run goes on as if nothing happened. */
static int nest_result = 1, nest_errno, nest_calls_b;
static int nest_tag_a, nest_tag_b; /* which pipe a callback is for */

static void nest_cb(loop_t *l, int fd, unsigned ev, void *o) {
        char c;

        (void)ev;
        assert_int_equal(read(fd, &c, 1), 1);
        if (o == &nest_tag_a) {
                nest_result = loop_run_once(l, 0);
                nest_errno = errno;
        } else {
                nest_calls_b++;
        }
}

static void nest_timer_cb(loop_t *l, void *o) {
        (void)o;
        assert_int_equal(loop_run_once(l, 0), -1);
        assert_int_equal(errno, EDEADLK);
}

static void test_a_callback_cannot_run_the_loop_again(void **state) {
        int pa[2], pb[2];
        loop_t *l = loop_new();
        loop_timer_t t;

        (void)state;
        assert_int_equal(pipe2(pa, O_NONBLOCK), 0);
        assert_int_equal(pipe2(pb, O_NONBLOCK), 0);
        assert_int_equal(loop_io_add(l, pa[0], LOOP_READ, nest_cb, &nest_tag_a),
                         0);
        assert_int_equal(loop_io_add(l, pb[0], LOOP_READ, nest_cb, &nest_tag_b),
                         0);
        loop_timer_init(&t, nest_timer_cb, NULL);
        loop_timer_start(l, &t, 0);
        assert_int_equal(write(pa[1], "x", 1), 1);
        assert_int_equal(write(pb[1], "x", 1), 1);
        assert_int_equal(loop_run_once(l, 0), 3);
        assert_int_equal(nest_result, -1);
        assert_int_equal(nest_errno, EDEADLK);
        assert_int_equal(nest_calls_b, 1);
        /* Usable again once the outer run returned. */
        assert_int_equal(write(pb[1], "x", 1), 1);
        assert_int_equal(loop_run_once(l, 100), 1);
        assert_int_equal(nest_calls_b, 2);
        loop_destroy(l);
        for (int i = 0; i < 2; i++) {
                close(pa[i]);
                close(pb[i]);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_timers_fire_in_due_order),
                cmocka_unit_test(
                        test_timer_start_within_only_moves_a_timer_earlier),
                cmocka_unit_test(test_timers_with_equal_due_run_in_start_order),
                cmocka_unit_test(test_timer_stop_and_restart),
                cmocka_unit_test(
                        test_timer_restarted_from_callback_waits_an_iteration),
                cmocka_unit_test(test_timer_heap_random_stop_keeps_order),
                cmocka_unit_test(test_io_readiness_of_a_pipe),
                cmocka_unit_test(test_io_removed_during_dispatch_is_not_called),
                cmocka_unit_test(
                        test_io_readded_during_dispatch_waits_for_next_batch),
                cmocka_unit_test(test_io_hangup_reports_error),
                cmocka_unit_test(test_io_fd_table_grows),
                cmocka_unit_test(test_wakeup_from_another_thread_ends_the_wait),
                cmocka_unit_test(test_now_is_cached_per_iteration),
                cmocka_unit_test(test_wall_clock_is_read_once_per_iteration),
                cmocka_unit_test(test_a_callback_cannot_run_the_loop_again),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
