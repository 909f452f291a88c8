/*
 * kstatus: what the worker knows of its access to Kafka, for readiness
 * (/readyz), the kafka_mailer_kafka_* metrics and the log.
 *
 * Its clients report what librdkafka tells them: errors (classified by
 * kcause_of()) and the answers of a periodic probe. Thread-safe: the
 * loop and the consumers' helper threads report; the loop reads.
 */
#ifndef KM_KSTATUS_H
#define KM_KSTATUS_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "kcause.h"

typedef struct kstatus kstatus_t;

/* @window_ms: how long an authentication, TLS or authorization error keeps
 * the worker not ready after it was last seen. */
kstatus_t *kstatus_new(int window_ms);
void kstatus_destroy(kstatus_t *ks);

/* Notes error @err from @client ("consumer", "results producer"...) with
 * librdkafka's @reason (may be NULL) at @now_ms. Errors of no cause are
 * ignored. */
void kstatus_error(kstatus_t *ks, int64_t now_ms, const char *client,
                   rd_kafka_resp_err_t err, const char *reason);

/* Notes a probe's outcome at @now_ms: @ok when the broker answered it. */
void kstatus_probe(kstatus_t *ks, int64_t now_ms, int ok);

/*
 * @returns 1 when ready at @now_ms: a probe was answered last and no
 * authentication, TLS or authorization error was seen within the window;
 * else 0 with the cause in @cause and "<cause>: <client>: <reason>" in
 * @reason. Logs a warning when it turns not ready and a line at info when
 * it is ready again.
 */
int kstatus_ready(kstatus_t *ks, int64_t now_ms, enum kcause *cause,
                  char *reason, size_t reason_size);

/* @returns how many errors of @cause were noted. */
uint64_t kstatus_errors(kstatus_t *ks, enum kcause cause);

#endif
