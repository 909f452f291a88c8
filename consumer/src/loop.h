/*
 * loop: one epoll event loop with file-descriptor watches and timers.
 *
 * Everything in a worker runs on one loop thread: the Kafka queues (through
 * rd_kafka_queue_io_event_enable), SMTP session sockets, libcurl's sockets
 * and all timers. Nothing here is thread-safe; loop_wakeup() is the one call
 * that may be made from another thread or a signal handler.
 */
#ifndef KM_LOOP_H
#define KM_LOOP_H

#include <stdint.h>
#include <stddef.h>

typedef struct loop loop_t;

/* Event bits for loop_io_add()/loop_io_mod(): */
#define LOOP_READ 0x1u
#define LOOP_WRITE 0x2u
/* Reported to callbacks only: */
#define LOOP_ERROR 0x4u /* EPOLLERR or EPOLLHUP */

/* Called on the loop thread when @fd is ready for @events. */
typedef void(loop_io_cb)(loop_t *loop, int fd, unsigned events, void *opaque);

/* Called on the loop thread when a timer is due. */
typedef void(loop_timer_cb)(loop_t *loop, void *opaque);

/*
 * A timer, embedded in its owner's struct (no allocation). Initialise with
 * loop_timer_init(); a timer may be started again while pending (it moves).
 * The owner must stop a pending timer before freeing its memory.
 */
typedef struct loop_timer {
        int64_t lt_due_ms; /* monotonic ms */
        size_t lt_heap_idx; /* position in the heap, SIZE_MAX when idle */
        uint64_t lt_seq; /* start order: ties on lt_due_ms run first-started
                          * first; a timer (re)started by a timer callback
                          * runs on the next iteration at the earliest */
        loop_timer_cb *lt_cb;
        void *lt_opaque;
} loop_timer_t;

/* @returns a new loop, or NULL with errno set. */
loop_t *loop_new(void);
/* Frees the loop. Watches and timers still registered are dropped. NULL ok. */
void loop_destroy(loop_t *loop);

/*
 * Watches @fd for @events (LOOP_READ|LOOP_WRITE). One watch per fd.
 * @returns 0, or -1 with errno set (EEXIST when @fd is already watched).
 */
int loop_io_add(loop_t *loop, int fd, unsigned events, loop_io_cb *cb,
                void *opaque);
/* Changes the events of a watched fd. @returns 0 or -1. */
int loop_io_mod(loop_t *loop, int fd, unsigned events);
/* Stops watching @fd; a no-op when it is not watched. Call before close(). */
void loop_io_del(loop_t *loop, int fd);

void loop_timer_init(loop_timer_t *t, loop_timer_cb *cb, void *opaque);
/* (Re)starts @t to fire once, @delay_ms from now (0 = next iteration). */
void loop_timer_start(loop_t *loop, loop_timer_t *t, int64_t delay_ms);
/* Makes @t fire within @delay_ms: starts it, or moves it earlier when it is
 * due later; a @t due sooner stays as it is. */
void loop_timer_start_within(loop_t *loop, loop_timer_t *t, int64_t delay_ms);
/* Stops @t if pending. */
void loop_timer_stop(loop_t *loop, loop_timer_t *t);
/* @returns non-zero when @t is pending. */
int loop_timer_pending(const loop_timer_t *t);

/*
 * Runs one iteration: waits up to @max_wait_ms (-1: until an event or the
 * next timer) and dispatches ready fds and due timers. Not from one of its
 * callbacks: that call fails with EDEADLK.
 * @returns the number of callbacks run, or -1 on an epoll error.
 */
int loop_run_once(loop_t *loop, int max_wait_ms);

/* Makes a blocked loop_run_once() return. Async-signal-safe, thread-safe. */
void loop_wakeup(loop_t *loop);

/* @returns the loop's monotonic clock in ms, refreshed once per iteration. */
int64_t loop_now_ms(const loop_t *loop);

/* @returns the wall clock in Unix ms. In a callback of an iteration, the
 * first call reads the clock and later ones of the same iteration return that
 * reading (at most the iteration's own run time old); outside an iteration,
 * it is read each time. */
int64_t loop_wall_ms(loop_t *loop);

/* @returns the current monotonic time in ms (not cached). */
int64_t loop_clock_ms(void);

#endif
