/*
 * consumer: a Kafka consumer of one topic (the worker has one for the
 * requests topic and one for the retry topic). Joins the group (cooperative-sticky by default), hands messages and partition
 * changes to its owner on the loop, stops taking messages for back-pressure
 * (newly assigned partitions inherit that state) and commits offsets it is
 * given. Offsets are never committed automatically.
 */
#ifndef KM_CONSUMER_H
#define KM_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "kstatus.h"
#include "loop.h"

typedef struct consumer consumer_t;

struct consumer_handlers {
        /* A message from an assigned partition; @m is destroyed after the
         * call returns. */
        void (*on_message)(void *opaque, const rd_kafka_message_t *m);
        /* Partitions were added to the assignment (already assigned). */
        void (*on_assign)(void *opaque,
                          const rd_kafka_topic_partition_list_t *parts);
        /* Partitions are to be removed from the assignment. @lost: the group
         * already gave them to someone else, so nothing of them may be
         * committed. With @deferred they stay assigned (their messages no
         * longer come) until the owner calls consumer_revoke_done() from the
         * loop, once it has emptied them; else they are released when this
         * returns. Runs inside librdkafka's rebalance callback: it must not
         * run the loop. */
        void (*on_revoke)(void *opaque,
                          const rd_kafka_topic_partition_list_t *parts,
                          int lost, int deferred);
        /* A commit finished: @err for the whole request, and each element's
         * err for its partition (@offsets may be NULL on an error). Also
         * called for synchronous commits. */
        void (*on_commit)(void *opaque,
                          const rd_kafka_topic_partition_list_t *offsets,
                          rd_kafka_resp_err_t err);
};

/* @returns a consumer subscribed to @topic, in the group of the kafka.*
 * settings or, when @group_id is not NULL, in @group_id; or NULL with
 * @errstr. */
consumer_t *consumer_new(loop_t *loop, const struct config *conf,
                         const char *group_id, const char *topic,
                         const struct consumer_handlers *h, void *opaque,
                         kstatus_t *ks, char *errstr, size_t errstr_size);

/* Leaves the group (revoke handler runs) within @timeout_ms, then frees.
 * When the group was not left by then (Kafka away), the consumer is left as
 * it is until the process exits (librdkafka would wait for the group before
 * freeing it): call only when the process is about to exit. Its partitions
 * move when the member's session times out. NULL ok. */
void consumer_close(consumer_t *c, int timeout_ms);

/* Stops or restarts taking messages of every assigned partition, new ones
 * included. While paused, librdkafka keeps
 * prefetching only up to queued.max.messages.kbytes; group events are still
 * served. */
void consumer_set_paused(consumer_t *c, int paused);
int consumer_paused(const consumer_t *c);

/* From now on, partitions assigned are held: their messages wait in
 * librdkafka (up to queued.max.messages.kbytes) until consumer_release()
 * lets them through. The worker holds a partition until it has read what
 * the results topic says of it. */
void consumer_hold_assigned(consumer_t *c);

/* Gives back the partitions of the revoke handed over with deferred set; a
 * no-op when there is none. Call from the loop (or from on_revoke). */
void consumer_revoke_done(consumer_t *c);

/* @returns the partitions of the revoke handed over with deferred set and
 * not given back yet, or NULL. Valid until consumer_revoke_done(). */
const rd_kafka_topic_partition_list_t *
consumer_revoking_parts(const consumer_t *c);

/* Lets the messages of a held, assigned partition through. A no-op when the
 * partition is no longer assigned. */
void consumer_release(consumer_t *c, const char *topic, int32_t partition);

/* Reads the group's committed offsets (and their metadata) of @parts into
 * it, waiting at most @timeout_ms. The one call that may be made from
 * another thread, while the consumer is open. @returns the librdkafka
 * error. */
rd_kafka_resp_err_t consumer_committed(consumer_t *c,
                                       rd_kafka_topic_partition_list_t *parts,
                                       int timeout_ms);

/* Commits @offsets (next offset to consume per partition): asynchronously
 * when @wait_ms < 0 (the commit callback reports the answer), else waiting at
 * most @wait_ms for it. @returns 0, or -1 when a waited-for commit failed or
 * got no answer in time (logged). */
int consumer_commit(consumer_t *c,
                    const rd_kafka_topic_partition_list_t *offsets,
                    int wait_ms);

/* @returns non-zero after an incremental unassign until the assignment
 * callback librdkafka serves after it (at once, with what is left). Closing
 * the consumer in between was seen to leave librdkafka's closing unassign
 * waiting for ever (classic protocol, 2.14: its issues 4527 and 4884), so
 * consumer_close() then drops the handle without leaving the group. */
int consumer_awaits_assignment(const consumer_t *c);

/* @returns non-zero between the two rounds of a classic cooperative
 * rebalance on librdkafka before 2.10, when an async commit would only fail
 * and make librdkafka treat the assignment as lost; always 0 under KIP-848
 * and on later librdkafka. */
int consumer_rebalancing(const consumer_t *c);

/* @returns non-zero when a failed commit must be followed by a pause before
 * the next (classic protocol on librdkafka before 2.10, where committing in
 * a rebalance loses the assignment); else a refused commit is offered again
 * at once for the partitions still owned. */
int consumer_holds_commits(const consumer_t *c);

/* @returns why the consumer cannot go on (the broker lacks the chosen group
 * protocol), or NULL. The worker stops on it. */
const char *consumer_fatal(const consumer_t *c);

/* @returns how many commits failed so far (their offsets must be committed
 * again). */
uint64_t consumer_commit_errors(const consumer_t *c);

/* @returns how many times the fetcher was nudged (fetch.nudge.ms). */
uint64_t consumer_nudges(const consumer_t *c);

/* @returns how many times a partition that delivered nothing for
 * fetch.stall.ms had its fetch restarted. */
uint64_t consumer_fetch_restarts(const consumer_t *c);

/* @returns the topic's partition count as last learnt (a helper thread asks
 * at start, at each assignment and every 30 s), 0 while not known. */
int32_t consumer_partition_count(const consumer_t *c);

#endif
