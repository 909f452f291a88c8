/*
 * recall: what the results topic already says about newly assigned
 * partitions, read before the worker sends any of their requests.
 *
 * Every result of a request consumed from partition P of a consumed topic is
 * published to partition P mod N of the results topic (N: its partition
 * count), and every offset commit carries, as its metadata, the results
 * offset from which every result of a request at or past the committed offset
 * lies (recall_meta_format()). A worker given P reads the committed offset's
 * metadata and that results partition from the stored offset to its end, on a
 * thread of its own with a Kafka client of its own, within
 * dedupe.recall.timeout.ms; the ids read are final and the worker answers
 * them as repeats instead of sending them again (docs/design.md).
 */
#ifndef KM_RECALL_H
#define KM_RECALL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "consumer.h"
#include "dedupe.h"
#include "loop.h"

typedef struct recall recall_t;

/* A final outcome read from the results topic. */
struct recall_item {
        char *id;
        struct dedupe_done done;
};

/* One asked-about partition, as answered. */
struct recall_part {
        int32_t partition;
        uint64_t seq; /* as asked */
        int32_t results_partition; /* P mod N, -1 when N is not known */
        /* A lower bound of the results partition's end: where results of
         * requests consumed from now on will lie (-1: not known). */
        int64_t results_end;
        int complete; /* everything from the stored offset was read */
        /* The results offset stored with the committed offset (-1: none) and
         * the asked partition's end offset when asked (-1: not known): an
         * earlier owner may have finished requests below that end, and their
         * results lie at or past the stored offset, so a commit of a request
         * below it must store that offset again, not a later one. */
        int64_t stored_floor;
        int64_t consumed_end;
        uint64_t records; /* results records read for it */
};

/* What one recall_ask() found; owned by the callback's caller. */
struct recall_answer {
        int topic; /* as asked */
        struct recall_part *parts;
        int part_cnt;
        struct recall_item *items;
        size_t item_cnt;
        int64_t took_ms;
        char note[256]; /* why it is incomplete, "" when it is not */
};

/* Runs on the loop thread with each answer; @a is freed after it returns. */
typedef void(recall_cb)(void *opaque, const struct recall_answer *a);

/* @returns a reader of @conf's results topic (kafka.* consumer settings,
 * no group), or NULL with @errstr. @max_items bounds what one answer holds
 * (dedupe.capacity). */
recall_t *recall_new(loop_t *loop, const struct config *conf, size_t max_items,
                     recall_cb *cb, void *opaque, char *errstr,
                     size_t errstr_size);

/* Stops the reader (an answer under way is dropped) and frees it. Waits for
 * its thread at most for one Kafka request (RECALL_STEP_MS). NULL ok. */
void recall_destroy(recall_t *r);

/* Asks about @cnt partitions of @topic (number @topic_idx, echoed), whose
 * committed offsets @c reads. @c must stay open until recall_destroy(). */
void recall_ask(recall_t *r, consumer_t *c, int topic_idx, const char *topic,
                const int32_t *partitions, const uint64_t *seqs, int cnt);

/* Writes the commit metadata for results partition @rp and offset @off into
 * @buf: "kafka-mailer/1 results=<rp>@<off>". @returns its length. */
size_t recall_meta_format(char *buf, size_t buf_size, int32_t rp, int64_t off);

/* Reads commit metadata written by recall_meta_format(). @returns 0, or -1
 * when @meta is not such metadata (none, another tool's, damaged). */
int recall_meta_parse(const void *meta, size_t len, int32_t *rp, int64_t *off);

/* Reads one results record (wire format v1) into @item (id malloc'ed).
 * @returns 0, or -1 when it is not a final result with an id. */
int recall_parse_result(const void *value, size_t len,
                        struct recall_item *item);

#endif
