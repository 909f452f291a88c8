/*
 * kcause: why Kafka cannot be used, from librdkafka's error codes. The
 * worker's readiness (kstatus) and the tools' messages (producer-tools/)
 * classify errors the same way.
 */
#ifndef KM_KCAUSE_H
#define KM_KCAUSE_H

#include <librdkafka/rdkafka.h>

/* Why Kafka cannot be used. */
enum kcause {
        KCAUSE_NONE = 0,
        KCAUSE_AUTHENTICATION, /* SASL refused the credentials */
        KCAUSE_TLS, /* the handshake failed (certificate...) */
        KCAUSE_AUTHORIZATION, /* an ACL is missing */
        KCAUSE_TRANSPORT, /* no broker answers */
        KCAUSE_CNT
};

/* @returns the cause @err stands for, or KCAUSE_NONE when it is not about
 * access to Kafka. */
enum kcause kcause_of(rd_kafka_resp_err_t err);

/* @returns "authentication", "tls", "authorization", "transport" or "". */
const char *kcause_name(enum kcause cause);

#endif
