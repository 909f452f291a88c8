/*
 * ledger: what one consumed topic's assigned partitions hold, and what may be
 * committed for them. Pure: no Kafka handle, no loop; the worker turns its
 * answers into commits, pauses and releases.
 *
 * Per partition: the requests consumed (offsets, each tagged with the results
 * floor it was consumed at), which of them are done, the last offset sent in
 * a commit and the last Kafka confirmed, whether a revoke is emptying it,
 * whether it is held until the results topic was read (recall), and where its
 * results go. Per topic: how many requests are live (in flight) and how many
 * are held (consumed, not covered by a confirmed commit: what a crash would
 * deliver again), and the back-pressure thresholds on the larger of the two:
 * bounding what is held, not only what is in flight, keeps the duplicates
 * after a crash within the limit.
 *
 * A partition's handle (ledger_part_t) stays valid after it is released while
 * requests of it are live: each request counts itself in
 * (ledger_part_enter()) and out (ledger_part_leave()), and the last one out of
 * a released partition frees it. Single-threaded: the worker's loop thread.
 */
#ifndef KM_LEDGER_H
#define KM_LEDGER_H

#include <stddef.h>
#include <stdint.h>

/* Commit metadata is at most this long (docs/wire-format.md), NUL included. */
#define LEDGER_META_MAX 64

typedef struct ledger ledger_t;
typedef struct ledger_part ledger_part_t;

/* @returns one past the highest offset of results partition @partition known
 * to hold a result of this worker (0 when none): the results producer's
 * acknowledged end. */
typedef int64_t(ledger_results_end_cb)(void *opaque, int32_t partition);

struct ledger_conf {
        size_t limit; /* stop taking requests at this many (>= 1) */
        int resume_percent; /* take again at or below this % of limit */
        ledger_results_end_cb *results_end;
        void *opaque; /* for results_end */
};

/* One partition's watermark to commit (ledger_commit_take()). */
struct ledger_commit {
        int32_t partition;
        int64_t offset; /* the next offset to consume */
        /* "kafka-mailer/1 results=<p>@<offset>", or "" when no results floor
         * is known (commit no metadata). */
        char metadata[LEDGER_META_MAX];
        size_t metadata_len;
};

/* What intake of the topic should do now (ledger_pressure()). */
enum ledger_pressure {
        LEDGER_KEEP = 0, /* leave it as it is */
        LEDGER_PAUSE, /* at the limit: stop taking requests */
        LEDGER_RESUME, /* at or below the low-water mark: take again */
};

/* @returns an empty ledger, or NULL when out of memory. The resume mark is
 * @conf's percent of the limit, and below the limit. */
ledger_t *ledger_new(const struct ledger_conf *conf);

/* Frees @l and the partitions it holds. Partitions released with live
 * requests are freed by their last ledger_part_leave(), which must come
 * first. NULL ok. */
void ledger_destroy(ledger_t *l);

/* @returns partition @partition, added (empty, not held) when it was not
 * there; aborts when out of memory. */
ledger_part_t *ledger_part_add(ledger_t *l, int32_t partition);

/* @returns partition @partition, or NULL when it is not assigned. */
ledger_part_t *ledger_part_get(const ledger_t *l, int32_t partition);

/* Detaches @p: what it held no longer counts, its completions no longer
 * commit, and it is freed now or with its last request. */
void ledger_part_release(ledger_t *l, ledger_part_t *p);

/* Releases every partition (worker shutdown). */
void ledger_release_all(ledger_t *l);

int32_t ledger_part_partition(const ledger_part_t *p);

/* A request of @p becomes live / ends (whether done or not). The last
 * request out of a released partition frees it: @p is not to be used after
 * ledger_part_leave() returned 1. */
void ledger_part_enter(ledger_t *l, ledger_part_t *p);
int ledger_part_leave(ledger_t *l, ledger_part_t *p);

/* @returns the live requests of @p. */
size_t ledger_part_entries(const ledger_part_t *p);

/* ---- recall: partitions held until the results topic was read ---- */

/* Holds @p until ledger_part_let_through() with the same @seq. */
void ledger_part_hold(ledger_part_t *p, uint64_t seq);

/* The read at assignment answered for @p (asked as @seq): where its results
 * go (@results_partition, -1: by key), a lower bound of that partition's end
 * (@results_base, -1: none) and, from the committed metadata, the floor an
 * earlier owner stored (@inherit_floor, -1: none) for requests below
 * @inherit_until (-1: none).
 * @returns 0 when @p is let through, -1 when the answer is stale (not held,
 * held for a later @seq, or being revoked meanwhile): nothing changes. */
int ledger_part_let_through(ledger_part_t *p, uint64_t seq,
                            int32_t results_partition, int64_t results_base,
                            int64_t inherit_floor, int64_t inherit_until);

/* @returns how many partitions wait for the results topic to be read. */
size_t ledger_parts_held(const ledger_t *l);

/* @returns the partitions @l has (assigned, not yet released). */
size_t ledger_part_count(const ledger_t *l);

/* @returns where @p's requests' results go, -1 when by key. */
int32_t ledger_part_results_partition(const ledger_part_t *p);

/* ---- offsets ---- */

/* Starts tracking a consumed request at @offset of @p, tagged with the
 * results floor it is consumed at; it counts as held until a confirmed commit
 * covers it. @returns 0, or -1 when @offset was seen already in this
 * assignment (not increasing): nothing changes. */
int ledger_track(ledger_t *l, ledger_part_t *p, int64_t offset);

/* Marks @offset of @p done: its result (or hand-over) is acknowledged.
 * @returns 0, or -1 when it is not tracked or done already, or @p was
 * released. */
int ledger_done(ledger_t *l, ledger_part_t *p, int64_t offset);

/* ---- commits ---- */

/* Collects the watermark of each of the @cnt partitions in @partitions
 * (every assigned one when @partitions is NULL; ids not assigned are
 * skipped) that moved since it was last offered, with its metadata, and
 * records it as offered. @returns how many, written to *@out (malloc'd,
 * the caller frees it; NULL when 0). */
size_t ledger_commit_take(ledger_t *l, const int32_t *partitions, size_t cnt,
                          struct ledger_commit **out);

/* Kafka confirmed the commit of @offset for @partition: what the last offer
 * of it covered is no longer held. An answer about an older offer (or an
 * unknown partition) changes nothing. */
void ledger_committed(ledger_t *l, int32_t partition, int64_t offset);

/* A commit of @partition failed (or may have): its watermark is offered
 * again by the next ledger_commit_take(). */
void ledger_commit_failed(ledger_t *l, int32_t partition);

/* As ledger_commit_failed() for every assigned partition. */
void ledger_commit_failed_all(ledger_t *l);

/* ---- revoke ---- */

/* @p is being revoked: nothing new of it starts, and its watermark is
 * offered again (the last commit is made synchronously even when an async
 * commit of it is still open). */
void ledger_part_drain(ledger_part_t *p);

/* @returns whether @p is being emptied by a revoke / was released. */
int ledger_part_draining(const ledger_part_t *p);
int ledger_part_released(const ledger_part_t *p);

/* ---- back-pressure ---- */

/* @returns the live requests / held requests / the limit of the topic. */
size_t ledger_inflight(const ledger_t *l);
size_t ledger_held(const ledger_t *l);
size_t ledger_limit(const ledger_t *l);

/* @returns what intake should do, given whether it is @paused now: pause
 * when the larger of held and in-flight reached the limit, resume at or
 * below the low-water mark. */
enum ledger_pressure ledger_pressure(const ledger_t *l, int paused);

/* @returns whether half the limit is held: committing soon frees intake. */
int ledger_commit_urgent(const ledger_t *l);

/* @returns whether a watermark offered for commit (ledger_commit_take()) of
 * a partition still owned is not confirmed yet (ledger_committed()). */
int ledger_commit_outstanding(const ledger_t *l);

#endif
