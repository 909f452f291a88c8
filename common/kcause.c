#include "kcause.h"

enum kcause kcause_of(rd_kafka_resp_err_t err) {
        switch (err) {
        case RD_KAFKA_RESP_ERR__AUTHENTICATION:
        case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        case RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM:
        case RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE:
                return KCAUSE_AUTHENTICATION;
        case RD_KAFKA_RESP_ERR__SSL:
                return KCAUSE_TLS;
        case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
        case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                return KCAUSE_AUTHORIZATION;
        case RD_KAFKA_RESP_ERR__TRANSPORT:
        case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
        case RD_KAFKA_RESP_ERR__RESOLVE:
                return KCAUSE_TRANSPORT;
        default:
                return KCAUSE_NONE;
        }
}

const char *kcause_name(enum kcause cause) {
        static const char *const names[KCAUSE_CNT] = {
                "", "authentication", "tls", "authorization", "transport"};

        return cause < KCAUSE_CNT ? names[cause] : "";
}
