/*
 * results: the worker's producer. Publishes one result record (wire format
 * v1, docs/wire-format.md) per request to the results topic and the original
 * bytes of rejected requests to the dead-letter topic, through an idempotent
 * producer whose delivery reports are served on the loop.
 *
 * A record is never dropped: while Kafka is unavailable records stay queued
 * in librdkafka (message.timeout.ms defaults to 0, infinite); one Kafka
 * refuses is offered again after a growing delay, a result or dead-letter
 * copy too large for its topic is made smaller first.
 */
#ifndef KM_RESULTS_H
#define KM_RESULTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "kstatus.h"
#include "loop.h"

typedef struct results results_t;

/* Called on the loop thread once a record produced with @opaque is acknowledged
 * by Kafka (all in-sync replicas, idempotent). */
typedef void(results_ack_cb)(void *opaque);

/* Final statuses of a request. */
enum result_status {
        RESULT_SENT = 0,
        RESULT_FAILED,
        RESULT_REJECTED,
        RESULT_EXPIRED,
};

const char *result_status_name(enum result_status st);

/* Where a request came from. */
struct result_source {
        const char *topic;
        int32_t partition;
        int64_t offset;
};

/* A result record's fields; NULL / 0 fields are written as null or left out
 * as docs/wire-format.md says. */
struct result_rec {
        const char *id; /* NULL when the request had no usable id */
        int id_from_key; /* the id is the Kafka key: the value gave none */
        enum result_status status;
        int attempts;
        int smtp_code; /* 0: null */
        const char *smtp_reply;
        const char *message_id;
        const char *relay; /* URL of the relay that carried the last try;
                              NULL: the worker's (smtp.url) */
        const char *error; /* reason for failed/rejected/expired */
        json_t *failed_recipients; /* borrowed, NULL when none */
        /* Per recipient (borrowed, NULL: every recipient has the request's
         * status). */
        json_t *recipients;
        /* "all", "some" or "none" of the recipients got the message; NULL:
         * "all" when sent, else "none". */
        const char *delivered;
        struct result_source source;
        int64_t request_ts_ms; /* Kafka timestamp of the request, 0 unknown */
        int64_t received_ms; /* wall clock when consumed */
        int64_t completed_ms; /* wall clock when final */
        json_t *metadata; /* borrowed, echoed */
        /* Set for a repeated request id: where the earlier request was. */
        const struct result_source *duplicate_of;
        /* The results partition to publish to (the worker's choice, see
         * docs/design.md); -1: by the key. Not part of the record. */
        int32_t results_partition;
};

/* @returns a producer for the results, dead-letter and retry topics or NULL
 * with @errstr. @nack_cb runs when a retry record (results_handoff) cannot be
 * stored because it is too large: its request must be retried otherwise. */
results_t *results_new(loop_t *loop, const struct config *conf,
                       results_ack_cb *ack_cb, results_ack_cb *nack_cb,
                       kstatus_t *ks, char *errstr, size_t errstr_size);

/* @returns non-zero once the producer failed for good (a fatal idempotence
 * error): nothing more can be published, the worker must stop. */
int results_fatal(const results_t *r);

/* Flushes for at most @timeout_ms, then frees. Records not acknowledged by
 * then are lost from this process (their requests are not committed, so they
 * are consumed again). NULL ok. */
void results_destroy(results_t *r, int timeout_ms);

/* Publishes a result keyed by its id. @returns 0; the ack callback runs later
 * with @opaque. Never fails: a record librdkafka cannot take right now is
 * kept and offered again. */
int results_publish(results_t *r, const struct result_rec *rec, void *opaque);

/* @returns the result record's JSON text (wire format v1; caller frees),
 * its length in *@lenp. Strings that are not UTF-8 are repaired with
 * U+FFFD. */
char *results_format(const struct result_rec *rec, const char *relay,
                     const char *worker, size_t *lenp);

/* Publishes a rejected request's original bytes to the dead-letter topic with
 * headers km.reason, km.source.topic, km.source.partition, km.source.offset,
 * km.worker. The ack callback runs later with @opaque. */
int results_deadletter(results_t *r, const void *key, size_t key_len,
                       const void *value, size_t value_len, const char *reason,
                       const struct result_source *src, void *opaque);

/* Publishes a retry record (docs/wire-format.md) to the retry topic keyed by
 * @key. The ack callback runs later with @opaque. */
int results_handoff(results_t *r, const char *key, const char *value,
                    size_t value_len, void *opaque);

/* @returns one past the highest offset of results partition @partition that
 * Kafka acknowledged for this producer, or 0 when none yet: the partition's
 * end offset is at least this. */
int64_t results_end(const results_t *r, int32_t partition);

/* @returns the records handed to librdkafka and not yet acknowledged plus
 * those still waiting to be handed over. */
size_t results_pending(const results_t *r);

/* @returns how many delivery reports (acknowledged or not) were served so
 * far: the worker's watch on a producer that stopped answering. */
uint64_t results_reports(const results_t *r);

/* @returns the records handed to librdkafka with no delivery report yet. */
size_t results_unreported(const results_t *r);

/* Replaces the producer by a new one (results.stall.ms: one that has given no
 * delivery report for that long while Kafka answers is taken to be stuck).
 * What the old one held is purged from it and offered to the new one; a
 * record that was under way may be stored twice. @returns 0, or -1 with
 * @errstr when no new producer could be made or the one replaced before
 * still holds records (the worker then stops). */
int results_renew(results_t *r, char *errstr, size_t errstr_size);

/* @returns how many times results_renew() replaced the producer. */
int results_renewals(const results_t *r);

/* Serves delivery reports now (also done on the loop by itself). */
void results_poll(results_t *r);

/* Formats Unix ms as RFC 3339 UTC with milliseconds into @buf. */
void results_format_time(int64_t unix_ms, char *buf, size_t buf_size);

/* @returns the wall clock in Unix ms. */
int64_t results_wall_ms(void);

#endif
