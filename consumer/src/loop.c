/*
 * loop: epoll, an fd-indexed table of watches and a binary min-heap of
 * embedded timers. See loop.h.
 *
 * Each fd slot carries a generation number that changes whenever the slot is
 * added or deleted; it rides in the epoll event data next to the fd, so an
 * event for a watch that a callback removed (or removed and added again) in
 * the same epoll batch is recognised as stale and dropped.
 */
#include "loop.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_EVENTS_MAX 256
/* epoll data of the wakeup eventfd; a watch never has generation 0xffffffff
 * together with fd -1. */
#define LOOP_WAKEUP_TAG UINT64_MAX

struct loop_watch {
        loop_io_cb *lw_cb; /* NULL: slot not watched */
        void *lw_opaque;
        unsigned lw_events;
        uint32_t lw_gen;
};

struct loop {
        int l_epfd;
        int l_wakefd;
        struct loop_watch *l_watches; /* indexed by fd */
        size_t l_watch_cnt;
        loop_timer_t **l_heap;
        size_t l_heap_len;
        size_t l_heap_cap;
        uint64_t l_timer_seq;
        int l_running; /* in loop_run_once(): it is not re-entrant */
        int64_t l_now_ms;
        int64_t l_wall_ms; /* loop_wall_ms() of this iteration, 0: none yet */
};

int64_t loop_clock_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t loop_now_ms(const loop_t *loop) {
        return loop->l_now_ms;
}

int64_t loop_wall_ms(loop_t *loop) {
        struct timespec ts;
        int64_t ms;

        if (loop->l_running && loop->l_wall_ms != 0)
                return loop->l_wall_ms;
        clock_gettime(CLOCK_REALTIME, &ts);
        ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        if (loop->l_running)
                loop->l_wall_ms = ms;
        return ms;
}

loop_t *loop_new(void) {
        struct epoll_event ev;
        loop_t *loop;
        int saved;

        loop = calloc(1, sizeof(*loop));
        if (!loop)
                return NULL;
        loop->l_epfd = -1;
        loop->l_wakefd = -1;

        loop->l_epfd = epoll_create1(EPOLL_CLOEXEC);
        if (loop->l_epfd == -1)
                goto err;
        loop->l_wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (loop->l_wakefd == -1)
                goto err;
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN;
        ev.data.u64 = LOOP_WAKEUP_TAG;
        if (epoll_ctl(loop->l_epfd, EPOLL_CTL_ADD, loop->l_wakefd, &ev) == -1)
                goto err;
        loop->l_now_ms = loop_clock_ms();
        return loop;

err:
        saved = errno;
        loop_destroy(loop);
        errno = saved;
        return NULL;
}

void loop_destroy(loop_t *loop) {
        if (!loop)
                return;
        /* Timers still in the heap belong to their owners: only mark them
         * idle so loop_timer_pending() tells the truth. */
        for (size_t i = 0; i < loop->l_heap_len; i++)
                loop->l_heap[i]->lt_heap_idx = SIZE_MAX;
        free(loop->l_heap);
        free(loop->l_watches);
        if (loop->l_wakefd != -1)
                close(loop->l_wakefd);
        if (loop->l_epfd != -1)
                close(loop->l_epfd);
        free(loop);
}

static uint32_t loop_epoll_bits(unsigned events) {
        uint32_t bits = 0;

        if (events & LOOP_READ)
                bits |= EPOLLIN;
        if (events & LOOP_WRITE)
                bits |= EPOLLOUT;
        return bits;
}

/* Grows the watch table so that @fd is a valid index. @returns 0 or -1. */
static int loop_watches_reserve(loop_t *loop, int fd) {
        struct loop_watch *w;
        size_t cnt;

        if ((size_t)fd < loop->l_watch_cnt)
                return 0;
        cnt = loop->l_watch_cnt ? loop->l_watch_cnt : 64;
        while (cnt <= (size_t)fd)
                cnt *= 2;
        w = realloc(loop->l_watches, cnt * sizeof(*w));
        if (!w) {
                errno = ENOMEM;
                return -1;
        }
        memset(w + loop->l_watch_cnt, 0,
               (cnt - loop->l_watch_cnt) * sizeof(*w));
        loop->l_watches = w;
        loop->l_watch_cnt = cnt;
        return 0;
}

static uint64_t loop_watch_tag(int fd, uint32_t gen) {
        return ((uint64_t)gen << 32) | (uint32_t)fd;
}

int loop_io_add(loop_t *loop, int fd, unsigned events, loop_io_cb *cb,
                void *opaque) {
        struct epoll_event ev;
        struct loop_watch *w;

        if (fd < 0 || !cb) {
                errno = EINVAL;
                return -1;
        }
        if (loop_watches_reserve(loop, fd) == -1)
                return -1;
        w = &loop->l_watches[fd];
        if (w->lw_cb) {
                errno = EEXIST;
                return -1;
        }
        w->lw_gen++;
        if (w->lw_gen == UINT32_MAX)
                w->lw_gen = 0;
        memset(&ev, 0, sizeof(ev));
        ev.events = loop_epoll_bits(events);
        ev.data.u64 = loop_watch_tag(fd, w->lw_gen);
        if (epoll_ctl(loop->l_epfd, EPOLL_CTL_ADD, fd, &ev) == -1)
                return -1;
        w->lw_cb = cb;
        w->lw_opaque = opaque;
        w->lw_events = events & (LOOP_READ | LOOP_WRITE);
        return 0;
}

int loop_io_mod(loop_t *loop, int fd, unsigned events) {
        struct epoll_event ev;
        struct loop_watch *w;

        if (fd < 0 || (size_t)fd >= loop->l_watch_cnt ||
            !loop->l_watches[fd].lw_cb) {
                errno = ENOENT;
                return -1;
        }
        w = &loop->l_watches[fd];
        events &= LOOP_READ | LOOP_WRITE;
        if (events == w->lw_events)
                return 0;
        memset(&ev, 0, sizeof(ev));
        ev.events = loop_epoll_bits(events);
        ev.data.u64 = loop_watch_tag(fd, w->lw_gen);
        if (epoll_ctl(loop->l_epfd, EPOLL_CTL_MOD, fd, &ev) == -1)
                return -1;
        w->lw_events = events;
        return 0;
}

void loop_io_del(loop_t *loop, int fd) {
        struct loop_watch *w;

        if (fd < 0 || (size_t)fd >= loop->l_watch_cnt ||
            !loop->l_watches[fd].lw_cb)
                return;
        w = &loop->l_watches[fd];
        /* Fails with EBADF when the caller closed the fd first; the kernel
         * then dropped it from the epoll set already. */
        (void)epoll_ctl(loop->l_epfd, EPOLL_CTL_DEL, fd, NULL);
        w->lw_cb = NULL;
        w->lw_opaque = NULL;
        w->lw_events = 0;
        w->lw_gen++;
        if (w->lw_gen == UINT32_MAX)
                w->lw_gen = 0;
}

/*
 * Timer heap. Ordered by (lt_due_ms, lt_seq); every move updates the
 * timer's lt_heap_idx.
 */

static int loop_timer_before(const loop_timer_t *a, const loop_timer_t *b) {
        if (a->lt_due_ms != b->lt_due_ms)
                return a->lt_due_ms < b->lt_due_ms;
        return a->lt_seq < b->lt_seq;
}

static void loop_heap_set(loop_t *loop, size_t idx, loop_timer_t *t) {
        loop->l_heap[idx] = t;
        t->lt_heap_idx = idx;
}

static void loop_heap_up(loop_t *loop, size_t idx) {
        loop_timer_t *t = loop->l_heap[idx];

        while (idx > 0) {
                size_t parent = (idx - 1) / 2;

                if (!loop_timer_before(t, loop->l_heap[parent]))
                        break;
                loop_heap_set(loop, idx, loop->l_heap[parent]);
                idx = parent;
        }
        loop_heap_set(loop, idx, t);
}

static void loop_heap_down(loop_t *loop, size_t idx) {
        loop_timer_t *t = loop->l_heap[idx];
        size_t len = loop->l_heap_len;

        for (;;) {
                size_t child = 2 * idx + 1;

                if (child >= len)
                        break;
                if (child + 1 < len &&
                    loop_timer_before(loop->l_heap[child + 1],
                                      loop->l_heap[child]))
                        child++;
                if (!loop_timer_before(loop->l_heap[child], t))
                        break;
                loop_heap_set(loop, idx, loop->l_heap[child]);
                idx = child;
        }
        loop_heap_set(loop, idx, t);
}

static void loop_heap_remove(loop_t *loop, loop_timer_t *t) {
        size_t idx = t->lt_heap_idx;
        loop_timer_t *last;

        loop->l_heap_len--;
        last = loop->l_heap[loop->l_heap_len];
        t->lt_heap_idx = SIZE_MAX;
        if (last == t)
                return;
        loop_heap_set(loop, idx, last);
        if (idx > 0 && loop_timer_before(last, loop->l_heap[(idx - 1) / 2]))
                loop_heap_up(loop, idx);
        else
                loop_heap_down(loop, idx);
}

void loop_timer_init(loop_timer_t *t, loop_timer_cb *cb, void *opaque) {
        t->lt_due_ms = 0;
        t->lt_heap_idx = SIZE_MAX;
        t->lt_seq = 0;
        t->lt_cb = cb;
        t->lt_opaque = opaque;
}

void loop_timer_start_within(loop_t *loop, loop_timer_t *t, int64_t delay_ms) {
        if (!loop_timer_pending(t) || t->lt_due_ms > loop->l_now_ms + delay_ms)
                loop_timer_start(loop, t, delay_ms);
}

int loop_timer_pending(const loop_timer_t *t) {
        return t->lt_heap_idx != SIZE_MAX;
}

void loop_timer_stop(loop_t *loop, loop_timer_t *t) {
        if (loop_timer_pending(t))
                loop_heap_remove(loop, t);
}

void loop_timer_start(loop_t *loop, loop_timer_t *t, int64_t delay_ms) {
        if (delay_ms < 0)
                delay_ms = 0;
        if (loop_timer_pending(t))
                loop_heap_remove(loop, t);
        if (loop->l_heap_len == loop->l_heap_cap) {
                size_t cap = loop->l_heap_cap ? loop->l_heap_cap * 2 : 64;
                loop_timer_t **heap;

                heap = realloc(loop->l_heap, cap * sizeof(*heap));
                if (!heap)
                        abort(); /* a timer that silently never fires is
                                  * worse than a crash */
                loop->l_heap = heap;
                loop->l_heap_cap = cap;
        }
        t->lt_due_ms = loop->l_now_ms + delay_ms;
        t->lt_seq = ++loop->l_timer_seq;
        loop->l_heap[loop->l_heap_len] = t;
        t->lt_heap_idx = loop->l_heap_len;
        loop->l_heap_len++;
        loop_heap_up(loop, t->lt_heap_idx);
}

/* @returns the epoll_wait() timeout for @max_wait_ms and the next timer. */
static int loop_wait_ms(const loop_t *loop, int max_wait_ms) {
        int64_t until;

        if (loop->l_heap_len == 0)
                return max_wait_ms;
        until = loop->l_heap[0]->lt_due_ms - loop_clock_ms();
        if (until < 0)
                until = 0;
        if (max_wait_ms >= 0 && until > max_wait_ms)
                until = max_wait_ms;
        if (until > INT32_MAX)
                until = INT32_MAX;
        return (int)until;
}

static void loop_wakeup_drain(loop_t *loop) {
        uint64_t v;

        while (read(loop->l_wakefd, &v, sizeof(v)) == (ssize_t)sizeof(v))
                ;
}

/* Runs the timers due now that were started before this call. */
static int loop_run_timers(loop_t *loop) {
        uint64_t seq_limit = loop->l_timer_seq;
        int ran = 0;

        while (loop->l_heap_len > 0) {
                loop_timer_t *t = loop->l_heap[0];

                if (t->lt_due_ms > loop->l_now_ms || t->lt_seq > seq_limit)
                        break;
                loop_heap_remove(loop, t);
                t->lt_cb(loop, t->lt_opaque);
                ran++;
        }
        return ran;
}

int loop_run_once(loop_t *loop, int max_wait_ms) {
        struct epoll_event events_buf[LOOP_EVENTS_MAX];
        int n, ran = 0;

        if (loop->l_running) {
                /* From a callback: events would be served out of order, and
                 * the caller's state changed under it. */
                errno = EDEADLK;
                return -1;
        }
        loop->l_running = 1;
        n = epoll_wait(loop->l_epfd, events_buf, LOOP_EVENTS_MAX,
                       loop_wait_ms(loop, max_wait_ms));
        if (n == -1) {
                if (errno != EINTR) {
                        loop->l_running = 0;
                        return -1;
                }
                n = 0;
        }
        loop->l_now_ms = loop_clock_ms();
        loop->l_wall_ms = 0;

        for (int i = 0; i < n; i++) {
                const struct epoll_event *ev = &events_buf[i];
                struct loop_watch *w;
                unsigned events = 0;
                uint32_t gen;
                int fd;

                if (ev->data.u64 == LOOP_WAKEUP_TAG) {
                        loop_wakeup_drain(loop);
                        continue;
                }
                fd = (int)(uint32_t)(ev->data.u64 & 0xffffffffu);
                gen = (uint32_t)(ev->data.u64 >> 32);
                if ((size_t)fd >= loop->l_watch_cnt)
                        continue;
                w = &loop->l_watches[fd];
                /* Removed (or replaced) by an earlier callback. */
                if (!w->lw_cb || w->lw_gen != gen)
                        continue;
                if (ev->events & EPOLLIN)
                        events |= LOOP_READ;
                if (ev->events & EPOLLOUT)
                        events |= LOOP_WRITE;
                if (ev->events & (EPOLLERR | EPOLLHUP))
                        events |= LOOP_ERROR;
                /* A callback may have dropped the interest since epoll
                 * reported it. */
                events &= w->lw_events | LOOP_ERROR;
                if (!events)
                        continue;
                w->lw_cb(loop, fd, events, w->lw_opaque);
                ran++;
        }

        ran += loop_run_timers(loop);
        loop->l_running = 0;
        return ran;
}

void loop_wakeup(loop_t *loop) {
        uint64_t one = 1;
        ssize_t r;

        /* write(2) is async-signal-safe; EAGAIN means a wakeup is pending. */
        r = write(loop->l_wakefd, &one, sizeof(one));
        (void)r;
}
