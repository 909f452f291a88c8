/*
 * dedupe: the request ids this worker has in flight or finished recently, so
 * that a repeated id (published twice upstream, or consumed again after a
 * rebalance) is not sent again. Finished ids are remembered up to a capacity
 * and for a time to live, oldest evicted first: memory is bounded. Ids in
 * flight are never evicted (they are bounded by the in-flight limits).
 */
#ifndef KM_DEDUPE_H
#define KM_DEDUPE_H

#include <stddef.h>
#include <stdint.h>

typedef struct dedupe dedupe_t;

/* What is kept of a finished request: enough to report it again. */
struct dedupe_done {
        int status; /* enum result_status */
        int delivered; /* 0: all, 1: some, 2: none (the result's "delivered") */
        int smtp_code;
        int attempts;
        char smtp_reply[160];
        char error[160];
        char message_id[256];
        char source_topic[128];
        int32_t source_partition;
        int64_t source_offset;
};

/* @returns a table remembering at most @capacity finished ids for @ttl_ms,
 * or NULL when out of memory. */
dedupe_t *dedupe_new(size_t capacity, int64_t ttl_ms);
void dedupe_destroy(dedupe_t *d);

enum dedupe_state {
        DEDUPE_NEW = 0, /* not known: the caller is now its leader */
        DEDUPE_INFLIGHT, /* another request with this id is in flight */
        DEDUPE_DONE, /* finished recently: *done describes it */
};

/*
 * Looks @id up at @now_ms (expired entries are dropped first). When the id
 * is not known, records @leader as in flight for it and @returns DEDUPE_NEW.
 * When it is in flight @returns DEDUPE_INFLIGHT and *leader_out is the
 * leader; when finished @returns DEDUPE_DONE and *done points into the table
 * (valid until the next call).
 */
enum dedupe_state dedupe_claim(dedupe_t *d, const char *id, void *leader,
                               int64_t now_ms, void **leader_out,
                               const struct dedupe_done **done);

/* The leader of @id finished: remembers @done (copied) from @now_ms on. */
void dedupe_finish(dedupe_t *d, const char *id, const struct dedupe_done *done,
                   int64_t now_ms);

/* Remembers @id as finished with @done (copied) from @now_ms on, as if its
 * request had been sent here: a result another worker published. Nothing
 * changes when @id is known already (in flight or finished). */
void dedupe_remember(dedupe_t *d, const char *id,
                     const struct dedupe_done *done, int64_t now_ms);

/* The leader of @id stopped without a final result (abandoned or handed to
 * the retry topic): forgets the id. */
void dedupe_release(dedupe_t *d, const char *id);

/* @returns the number of ids known (in flight and finished). */
size_t dedupe_size(const dedupe_t *d);

#endif
