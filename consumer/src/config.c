#include "config.h"

#include "dkim.h"
#include "kconf.h"
#include "log.h"
#include "props.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define CONFIG_ENV_PREFIX "KAFKA_MAILER_"

enum config_type {
        CONFIG_T_STR, /* char *, copied */
        CONFIG_T_SECRET, /* char *, never printed */
        CONFIG_T_INT, /* int within [min, max] */
        CONFIG_T_BOOL, /* int 0 or 1 */
        CONFIG_T_ENUM, /* an enum: the index of the value in choices */
        CONFIG_T_ENUM_STR /* char *, one of choices */
};

struct config_key {
        const char *name;
        enum config_type type;
        size_t offset; /* of the field in struct config */
        const char *def; /* default, parsed like any other value */
        long min, max; /* CONFIG_T_INT */
        const char *const *choices; /* CONFIG_T_ENUM*, NULL-terminated */
        const char *help;
};

/* CONFIG_T_ENUM fields are written through an int pointer. */
_Static_assert(sizeof(enum config_tls_mode) == sizeof(int),
               "enum config_tls_mode is not int-sized");
_Static_assert(sizeof(enum config_tls_version) == sizeof(int),
               "enum config_tls_version is not int-sized");
_Static_assert(sizeof(enum config_group_protocol) == sizeof(int),
               "enum config_group_protocol is not int-sized");

static const char *const config_tls_choices[] = {"required", "opportunistic",
                                                 "off", NULL};
static const char *const config_tls_version_choices[] = {"1.2", "1.3", NULL};
static const char *const config_group_protocol_choices[] = {"classic",
                                                            "consumer", NULL};
static const char *const config_log_choices[] = {"error", "warn", "info",
                                                 "debug", NULL};

#define F(field) offsetof(struct config, field)
#define STR(n, field, def, help)                                               \
        { n, CONFIG_T_STR, F(field), def, 0, 0, NULL, help }
#define SECRET(n, field, help)                                                 \
        { n, CONFIG_T_SECRET, F(field), "", 0, 0, NULL, help }
#define INT(n, field, def, min, max, help)                                     \
        { n, CONFIG_T_INT, F(field), def, min, max, NULL, help }
#define BOOL(n, field, def, help)                                              \
        { n, CONFIG_T_BOOL, F(field), def, 0, 1, NULL, help }

static const struct config_key config_keys[] = {
        STR("topic.requests", topic_requests, "email.requests",
            "topic the email requests are consumed from"),
        STR("topic.results", topic_results, "email.results",
            "topic one delivery result per request is published to"),
        STR("topic.deadletter", topic_deadletter, "email.deadletter",
            "topic the original bytes of rejected requests are copied to"),
        STR("topic.retry", topic_retry, "email.retry",
            "topic that holds requests waiting for a later retry, \"\" = none "
            "(retries then stay in memory)"),
        STR("worker.id", worker_id, "",
            "name of this worker in results and logs, \"\" = <hostname>-<pid>"),
        STR("smtp.url", smtp_url, "smtp://127.0.0.1:25",
            "SMTP relay, smtp://host:port or smtps://host:port (implicit TLS)"),
        {"smtp.starttls", CONFIG_T_ENUM, F(smtp_starttls), "required", 0, 0,
         config_tls_choices,
         "STARTTLS on smtp:// URLs: required, opportunistic or off"},
        STR("smtp.username", smtp_username, "",
            "user name for SMTP AUTH, \"\" = no AUTH"),
        SECRET("smtp.password", smtp_password,
               "password for SMTP AUTH (prefer smtp.password.file)"),
        STR("smtp.password.file", smtp_password_file, "",
            "file whose first line is the SMTP AUTH password"),
        STR("smtp.tls.ca.file", smtp_ca_file, "",
            "CA bundle to verify the relay with, \"\" = system store"),
        BOOL("smtp.tls.verify", smtp_tls_verify, "true",
             "verify the relay's certificate and host name"),
        {"smtp.tls.min.version", CONFIG_T_ENUM, F(smtp_tls_min_version), "1.2",
         0, 0, config_tls_version_choices,
         "oldest TLS version accepted from the relay: 1.2 or 1.3"},
        STR("smtp.helo.name", smtp_helo_name, "",
            "name sent in EHLO, \"\" = the host name up to its first dot"),
        BOOL("smtp.pipelining", smtp_pipelining, "true",
             "pipeline MAIL/RCPT/DATA when the relay offers PIPELINING"),
        BOOL("smtp.pipelining.transactions", smtp_pipelining_txns, "true",
             "with smtp.pipelining: write the next message's MAIL/RCPT/DATA "
             "right after the end of data of the one before, without waiting "
             "for its reply"),
        BOOL("smtp.chunking", smtp_chunking, "true",
             "send the message with BDAT (RFC 3030) when the relay offers "
             "CHUNKING: with pipelining, a message's commands and body go in "
             "one write, one round trip a message"),
        INT("smtp.sessions.max", smtp_sessions_max, "100", 1, 20000,
            "most SMTP sessions open to the relay at once"),
        INT("smtp.transaction.max.recipients", smtp_transaction_max_recipients,
            "1000", 1, 100000,
            "most recipients in one SMTP transaction: a request with more is "
            "sent in several (a relay that answers 452 to a RCPT gets the rest "
            "in the next one at once)"),
        INT("smtp.session.max.messages", smtp_session_max_messages, "1000", 1,
            1000000, "messages sent on one session before it is closed"),
        INT("smtp.session.idle.ms", smtp_session_idle_ms, "10000", 100, 3600000,
            "an idle session is closed after this long"),
        INT("smtp.timeout.connect.ms", smtp_timeout_connect_ms, "30000", 100,
            600000, "time from connect to the end of AUTH"),
        INT("smtp.timeout.command.ms", smtp_timeout_command_ms, "60000", 100,
            900000, "time to wait for the reply to MAIL, RCPT or DATA"),
        INT("smtp.timeout.data.ms", smtp_timeout_data_ms, "300000", 100,
            3600000, "time to wait for the reply to the final dot of DATA"),
        INT("smtp.relay.backoff.initial.ms", smtp_relay_backoff_initial_ms,
            "1000", 10, 600000,
            "first wait after the relay failed a session's set-up"),
        INT("smtp.relay.backoff.max.ms", smtp_relay_backoff_max_ms, "60000", 10,
            3600000,
            "longest wait between attempts to reach an unhealthy relay"),
        INT("smtp.relay.probe.ms", smtp_relay_probe_ms, "1000", 100, 600000,
            "longest wait between attempts to reach a relay that cannot be "
            "reached at all (connection refused, unknown host, connect timeout)"),
        INT("inflight.max", inflight_max, "1000", 1, 100000,
            "requests consumed and not yet committed before the worker stops taking more"),
        INT("inflight.resume.percent", inflight_resume_percent, "100", 0, 100,
            "consumption restarts at or below this percentage of inflight.max"),
        INT("retry.attempts.max", retry_attempts_max, "5", 1, 100,
            "send attempts per request, the first included"),
        INT("retry.backoff.initial.ms", retry_backoff_initial_ms, "1000", 1,
            3600000, "wait before the first retry, doubled on each retry"),
        INT("retry.backoff.max.ms", retry_backoff_max_ms, "60000", 1, 86400000,
            "longest wait between retries"),
        INT("retry.jitter.percent", retry_jitter_percent, "20", 0, 100,
            "random spread added to each retry wait, in percent"),
        INT("retry.local.window.ms", retry_local_window_ms, "30000", 0,
            86400000,
            "how long a request is retried in memory before it moves to "
            "topic.retry (and its offset commits)"),
        INT("retry.window.ms", retry_window_ms, "14400000", 1000, 604800000,
            "how long after it was first consumed a request may still be "
            "retried before it is failed"),
        INT("retry.inflight.max", retry_inflight_max, "1000", 1, 100000,
            "retry-topic requests held at once (waiting for their due time or "
            "being sent)"),
        INT("dedupe.capacity", dedupe_capacity, "20000", 0, 10000000,
            "request ids remembered after they finish (about 250 bytes each), so "
            "that a repeated id is not sent again, 0 = off"),
        INT("dedupe.ttl.ms", dedupe_ttl_ms, "3600000", 1000, 604800000,
            "how long a finished request id is remembered"),
        INT("dedupe.recall.timeout.ms", dedupe_recall_timeout_ms, "10000", 0,
            600000,
            "longest time a newly assigned partition waits while the worker "
            "reads which of its requests already have a result on "
            "topic.results, 0 = no reading (and no repeat check across "
            "workers)"),
        STR("metrics.listen", metrics_listen, "",
            "address:port of the HTTP endpoint for /metrics, /healthz and "
            "/readyz, \"\" = off"),
        INT("ready.error.window.ms", ready_error_window_ms, "15000", 1000,
            3600000,
            "how long an authentication, TLS or authorization error from "
            "Kafka keeps /readyz at 503 after it was last seen"),
        INT("request.max.bytes", request_max_bytes, "4194304", 1024, 104857600,
            "largest request accepted, in bytes"),
        INT("request.max.recipients", request_max_recipients, "100", 1, 10000,
            "most recipients (to+cc+bcc) in one request"),
        INT("request.max.subject.bytes", request_max_subject_bytes, "2048", 1,
            1048576, "longest subject accepted, in bytes of UTF-8"),
        INT("request.max.header.bytes", request_max_header_bytes, "4096", 1,
            1048576,
            "longest value of a header in headers, and longest "
            "display name of an address, in bytes of UTF-8"),
        STR("message.id.domain", message_id_domain, "",
            "domain of generated Message-IDs, \"\" = the From domain"),
        {"group.protocol", CONFIG_T_ENUM, F(group_protocol), "classic", 0, 0,
         config_group_protocol_choices,
         "consumer group protocol: classic (cooperative-sticky, any broker) or "
         "consumer (KIP-848, Kafka 4.0+ and librdkafka 2.12+)"},
        INT("commit.interval.ms", commit_interval_ms, "1000", 10, 600000,
            "how often committable offsets are committed"),
        INT("commit.timeout.ms", commit_timeout_ms, "5000", 100, 600000,
            "longest wait for the answer to a commit: a routine one is then "
            "offered again, the one on revoke and SIGTERM given up (there also "
            "within shutdown.timeout.ms)"),
        INT("commit.stall.exit.ms", commit_stall_exit_ms, "120000", 0, 86400000,
            "offsets offered for commit and none of a topic stored for this "
            "long since Kafka answered (a Kafka client stuck after an outage): "
            "the worker stops as on SIGTERM and exits with status 3, for its "
            "supervisor to start it anew, 0 = never"),
        INT("results.stall.ms", results_stall_ms, "60000", 0, 86400000,
            "records handed to the results producer and no delivery report "
            "for this long since Kafka answered (a producer stuck after an "
            "outage): the producer is replaced by a new one that takes over "
            "its records, 0 = never"),
        INT("stall.warn.ms", stall_warn_ms, "30000", 0, 3600000,
            "requests held with nothing consumed, finished or committed for "
            "this long: a warning with what the worker waits on, again every "
            "such period, 0 = off"),
        INT("fetch.nudge.ms", fetch_nudge_ms, "-1", -1, 10000,
            "least gap between two fetch nudges, 0 = none, -1 = 50 on "
            "librdkafka before 2.2 and none from 2.2 on (operations.md)"),
        INT("fetch.stall.ms", fetch_stall_ms, "30000", 0, 3600000,
            "an assigned partition behind its end that delivers nothing for "
            "this long while the worker waits for messages: a warning, and its "
            "fetch restarted from the worker's position, again every such "
            "period, 0 = off"),
        INT("rebalance.drain.timeout.ms", rebalance_drain_timeout_ms, "10000",
            0, 600000,
            "time revoked partitions' in-flight sends get to finish"),
        INT("shutdown.timeout.ms", shutdown_timeout_ms, "30000", 0, 3600000,
            "time in-flight sends get to finish on SIGTERM/SIGINT"),
        STR("dkim.headers", dkim_headers, DKIM_HEADERS_DEFAULT,
            "colon-separated header fields a DKIM key signs unless "
            "dkim.key.NAME.headers says (from among them)"),
        INT("limit.queue.max.ms", limit_queue_max_ms, "5000", 0, 3600000,
            "longest wait for a rate or session limit (relay.<name>.rate.max, "
            "limit.<name>.*) before the request goes to topic.retry (and its "
            "offset commits), due when the limit lets it through"),
        INT("throttle.decrease.percent", throttle_decrease_percent, "30", 1, 90,
            "a reply that says the sender goes too fast cuts the rate of its "
            "relay or destination by this much (at most once a second)"),
        INT("throttle.increase.percent", throttle_increase_percent, "5", 1, 100,
            "each second without such a reply raises a cut rate by this "
            "percentage of the rate before the cut, up to the limit"),
        INT("throttle.rate.min", throttle_rate_min, "1", 1, 1000000,
            "msgs/s a relay or destination is never cut below"),
        {"log.level", CONFIG_T_ENUM_STR, F(log_level), "info", 0, 0,
         config_log_choices,
         "least severe level logged: error, warn, info, debug"},
        INT("log.repeat.ms", log_repeat_ms, "10000", 0, 3600000,
            "the same Kafka client error (by code, per client) again within "
            "this long of the last written is counted, not written; the next "
            "one written says how many (repeated=), 0 = write every one"),
};

#undef F
#undef STR
#undef SECRET
#undef INT
#undef BOOL

static const char *const config_route_priority_choices[] = {
        "any", "transactional", "bulk", NULL};

_Static_assert(sizeof(enum config_route_priority) == sizeof(int),
               "enum config_route_priority is not int-sized");

/* The keys of a relay that smtp.* has no counterpart for; the others of
 * relay.<name>.* are smtp.* keys (config_relay_smtp_key()). */
#define RF(field) offsetof(struct config_relay, field)
static const struct config_key config_relay_keys[] = {
        {"weight", CONFIG_T_INT, RF(weight), "1", 0, 1000, NULL,
         "share of the traffic among the healthy relays a request may use; "
         "0 = a standby, used only while none of weight > 0 is healthy"},
        {"route.sender.domains", CONFIG_T_STR, RF(route_sender_domains), "", 0,
         0, NULL,
         "comma-separated sender (From) domains this relay takes, \"\" = "
         "any; \"*.example.com\" matches its subdomains"},
        {"route.priority", CONFIG_T_ENUM, RF(route_priority), "any", 0, 0,
         config_route_priority_choices,
         "requests of this priority only: any, transactional, bulk"},
        {"rate.max", CONFIG_T_INT, RF(rate_max), "0", 0, 1000000, NULL,
         "msgs/s through this relay for the whole group (its account's "
         "limit), shared among the workers by the partitions each owns; 0 = "
         "none"},
};
#undef RF

/* The keys of a DKIM key, dkim.key.<name>.* */
#define DF(field) offsetof(struct config_dkim_key, field)
static const struct config_key config_dkim_keys[] = {
        {"domain", CONFIG_T_STR, DF(domain), "", 0, 0, NULL,
         "signing domain (d=): the key signs mail whose From address is in "
         "it (ASCII, any case); required"},
        {"selector", CONFIG_T_STR, DF(selector), "", 0, 0, NULL,
         "selector (s=): the public key is published at "
         "<selector>._domainkey.<domain>; required"},
        {"file", CONFIG_T_STR, DF(file), "", 0, 0, NULL,
         "PEM file of the private key, RSA (1024-4096 bits) or Ed25519, read "
         "once at start; required"},
        {"headers", CONFIG_T_STR, DF(headers), "", 0, 0, NULL,
         "colon-separated header fields this key signs, \"\" = dkim.headers"},
};

#define LF(field) offsetof(struct config_limit, field)
static const struct config_key config_limit_keys[] = {
        {"domains", CONFIG_T_STR, LF(domains), "", 0, 0, NULL,
         "comma-separated recipient domains the limit covers together "
         "(\"*.example.com\": its subdomains); not for limit.default"},
        {"rate.max", CONFIG_T_INT, LF(rate_max), "0", 0, 1000000, NULL,
         "msgs/s to these domains for the whole group, shared among the "
         "workers by the partitions each owns; 0 = none"},
        {"sessions.max", CONFIG_T_INT, LF(sessions_max), "0", 0, 100000, NULL,
         "transactions to these domains at once, per worker; 0 = none"},
};
#undef LF
#undef DF

_Static_assert(offsetof(struct config_relay, name) == 0,
               "a family's entry starts with its name");
_Static_assert(offsetof(struct config_dkim_key, name) == 0,
               "a family's entry starts with its name");

#define CONFIG_KEY_CNT (sizeof(config_keys) / sizeof(config_keys[0]))

size_t config_key_count(void) {
        return CONFIG_KEY_CNT;
}

const char *config_key_name(size_t i) {
        return config_keys[i].name;
}

static const struct config_key *config_key_find(const char *name) {
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                if (strcmp(config_keys[i].name, name) == 0)
                        return &config_keys[i];
        }
        return NULL;
}

/* @base: the struct config, or struct config_relay, @k describes. */
static char **config_str_field(void *base, const struct config_key *k) {
        return (char **)(void *)((char *)base + k->offset);
}

static int *config_int_field(void *base, const struct config_key *k) {
        return (int *)(void *)((char *)base + k->offset);
}

static char *const *config_str_field_c(const struct config *conf,
                                       const struct config_key *k) {
        return (char *const *)(const void *)((const char *)conf + k->offset);
}

static const int *config_int_field_c(const struct config *conf,
                                     const struct config_key *k) {
        return (const int *)(const void *)((const char *)conf + k->offset);
}

/* Replaces the string *@dst with a copy of @value.
 * @returns 0 or -1 when out of memory (*@dst is then unchanged). */
static int config_str_replace(char **dst, const char *value) {
        char *copy = strdup(value);

        if (!copy)
                return -1;
        free(*dst);
        *dst = copy;
        return 0;
}

/* @returns 0 with *@out set, or -1 with the reason in @errstr. */
static int config_parse_int(const struct config_key *k, const char *value,
                            int *out, const char *source, char *errstr,
                            size_t errstr_size) {
        char *end = NULL;
        long v;

        /* strtol skips leading white space and accepts an empty string. */
        if (!((value[0] >= '0' && value[0] <= '9') || value[0] == '-' ||
              value[0] == '+')) {
                snprintf(errstr, errstr_size,
                         "%s: %s: \"%s\" is not an integer", source, k->name,
                         value);
                return -1;
        }
        errno = 0;
        v = strtol(value, &end, 10);
        if (end == value || *end != '\0') {
                snprintf(errstr, errstr_size,
                         "%s: %s: \"%s\" is not an integer", source, k->name,
                         value);
                return -1;
        }
        if (errno == ERANGE) {
                snprintf(errstr, errstr_size,
                         "%s: %s: %s is out of range (%ld..%ld)", source,
                         k->name, value, k->min, k->max);
                return -1;
        }
        if (v < k->min) {
                snprintf(errstr, errstr_size,
                         "%s: %s: %ld is below the minimum %ld", source,
                         k->name, v, k->min);
                return -1;
        }
        if (v > k->max) {
                snprintf(errstr, errstr_size,
                         "%s: %s: %ld is above the maximum %ld", source,
                         k->name, v, k->max);
                return -1;
        }
        *out = (int)v;
        return 0;
}

static int config_parse_bool(const struct config_key *k, const char *value,
                             int *out, const char *source, char *errstr,
                             size_t errstr_size) {
        static const char *const yes[] = {"true", "1", "yes", "on"};
        static const char *const no[] = {"false", "0", "no", "off"};

        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
                if (strcasecmp(value, yes[i]) == 0) {
                        *out = 1;
                        return 0;
                }
                if (strcasecmp(value, no[i]) == 0) {
                        *out = 0;
                        return 0;
                }
        }
        snprintf(errstr, errstr_size,
                 "%s: %s: \"%s\" is not a boolean (true, false, 1, 0, yes, no, "
                 "on, off)",
                 source, k->name, value);
        return -1;
}

/* @returns the index of @value in @k's choices, or -1 with @errstr. */
static int config_parse_enum(const struct config_key *k, const char *value,
                             const char *source, char *errstr,
                             size_t errstr_size) {
        size_t len;
        int n;

        for (int i = 0; k->choices[i]; i++) {
                if (strcmp(value, k->choices[i]) == 0)
                        return i;
        }
        n = snprintf(errstr, errstr_size, "%s: %s: \"%s\" is not one of ",
                     source, k->name, value);
        if (n < 0 || (size_t)n >= errstr_size)
                return -1;
        len = (size_t)n;
        for (int i = 0; k->choices[i] && len < errstr_size; i++) {
                n = snprintf(errstr + len, errstr_size - len, "%s%s",
                             i > 0 ? ", " : "", k->choices[i]);
                if (n < 0)
                        break;
                len += (size_t)n;
        }
        return -1;
}

static int config_set_key(void *conf, const struct config_key *k,
                          const char *value, const char *source, char *errstr,
                          size_t errstr_size) {
        int v;

        switch (k->type) {
        case CONFIG_T_STR:
        case CONFIG_T_SECRET:
                break;
        case CONFIG_T_INT:
                if (config_parse_int(k, value, &v, source, errstr,
                                     errstr_size) == -1)
                        return -1;
                *config_int_field(conf, k) = v;
                return 0;
        case CONFIG_T_BOOL:
                if (config_parse_bool(k, value, &v, source, errstr,
                                      errstr_size) == -1)
                        return -1;
                *config_int_field(conf, k) = v;
                return 0;
        case CONFIG_T_ENUM:
                v = config_parse_enum(k, value, source, errstr, errstr_size);
                if (v == -1)
                        return -1;
                *config_int_field(conf, k) = v;
                return 0;
        case CONFIG_T_ENUM_STR:
                if (config_parse_enum(k, value, source, errstr, errstr_size) ==
                    -1)
                        return -1;
                break;
        }
        if (config_str_replace(config_str_field(conf, k), value) == -1) {
                snprintf(errstr, errstr_size, "%s: %s: out of memory", source,
                         k->name);
                return -1;
        }
        return 0;
}

/* Sets @key=@value in one client's kafka.* list, replacing an earlier value.
 * @returns 0 or -1 when out of memory. */
static int config_kv_set(struct config_kv **kvs, size_t *cnt, const char *key,
                         const char *value) {
        struct config_kv *grown;
        char *k, *v;

        for (size_t i = 0; i < *cnt; i++) {
                if (strcmp((*kvs)[i].key, key) == 0)
                        return config_str_replace(&(*kvs)[i].value, value);
        }
        k = strdup(key);
        v = strdup(value);
        grown = realloc(*kvs, (*cnt + 1) * sizeof(**kvs));
        if (!k || !v || !grown) {
                free(k);
                free(v);
                if (grown)
                        *kvs = grown;
                return -1;
        }
        *kvs = grown;
        (*kvs)[*cnt].key = k;
        (*kvs)[*cnt].value = v;
        (*kvs)[*cnt].file = NULL;
        (*cnt)++;
        return 0;
}

/* Routes a "kafka." key to the consumer's and/or the producer's list. */
static int config_set_kafka(struct config *conf, const char *key,
                            const char *value, const char *source, char *errstr,
                            size_t errstr_size) {
        const char *prop = key + strlen("kafka.");
        int consumer = 1, producer = 1;
        int r = 0;

        if (strncmp(prop, "consumer.", strlen("consumer.")) == 0) {
                prop += strlen("consumer.");
                producer = 0;
        } else if (strncmp(prop, "producer.", strlen("producer.")) == 0) {
                prop += strlen("producer.");
                consumer = 0;
        } else if (strcmp(prop, "consumer") == 0 ||
                   strcmp(prop, "producer") == 0) {
                prop = "";
        }
        if (prop[0] == '\0') {
                snprintf(errstr, errstr_size,
                         "%s: %s: no librdkafka property name after the prefix",
                         source, key);
                return -1;
        }
        if (consumer)
                r |= config_kv_set(&conf->kafka_consumer,
                                   &conf->kafka_consumer_cnt, prop, value);
        if (producer)
                r |= config_kv_set(&conf->kafka_producer,
                                   &conf->kafka_producer_cnt, prop, value);
        if (r != 0) {
                snprintf(errstr, errstr_size, "%s: %s: out of memory", source,
                         key);
                return -1;
        }
        return 0;
}

static const char *config_type_name(enum config_type type) {
        switch (type) {
        case CONFIG_T_STR:
                return "string";
        case CONFIG_T_SECRET:
                return "secret string";
        case CONFIG_T_INT:
                return "int";
        case CONFIG_T_BOOL:
                return "bool";
        case CONFIG_T_ENUM:
        case CONFIG_T_ENUM_STR:
                return "enum";
        }
        return "?";
}

/* @returns the smtp.* key a relay's @suffix ("url", "tls.verify") stands
 * for, or NULL when a relay has no such setting. */
static const struct config_key *config_relay_smtp_key(const char *suffix) {
        char name[128];

        if (strcmp(suffix, "transaction.max.recipients") == 0)
                return NULL; /* the worker's, not a relay's */
        if (snprintf(name, sizeof(name), "smtp.%s", suffix) >=
            (int)sizeof(name))
                return NULL;
        return config_key_find(name);
}

/*
 * A family of named settings, "<prefix>.<name>.<suffix>" (relay.<name>.*,
 * dkim.key.<name>.*). config_set() checks a value on a scratch entry and
 * keeps the pair as set (the family's kv list in struct config);
 * config_finish() makes the entries from them, in the order their names
 * first appear. An entry is a struct whose first field is its name
 * (char *); the suffixes are a key table with offsets into it.
 */
struct config_family {
        const char *prefix; /* "relay", without the dot */
        const char *noun; /* "relays", in "more than 16 relays" */
        size_t name_max; /* a name's length: 1 to this */
        size_t entry_max; /* most entries */
        size_t entry_size;
        const struct config_key *keys; /* the suffixes of the entry */
        size_t key_cnt;
        int no_empty; /* a value may not be "" */
        /* where struct config keeps the pairs set and the entries */
        size_t kv_off, kv_cnt_off, entries_off, entry_cnt_off;
        /* optional: more suffixes, kept in the struct config the entry
         * points to at sub_off (a relay's smtp.* settings) */
        const struct config_key *(*sub_key)(const char *suffix);
        size_t sub_off;
};

#define CF(field) offsetof(struct config, field)
static const struct config_family config_relay_family = {
        "relay",
        "relays",
        CONFIG_RELAY_NAME_MAX,
        CONFIG_RELAYS_MAX,
        sizeof(struct config_relay),
        config_relay_keys,
        sizeof(config_relay_keys) / sizeof(config_relay_keys[0]),
        0,
        CF(relay_kv),
        CF(relay_kv_cnt),
        CF(relays),
        CF(relay_cnt),
        config_relay_smtp_key,
        offsetof(struct config_relay, smtp),
};

static const struct config_family config_limit_family = {
        "limit",
        "limits",
        CONFIG_RELAY_NAME_MAX,
        CONFIG_LIMITS_MAX,
        sizeof(struct config_limit),
        config_limit_keys,
        sizeof(config_limit_keys) / sizeof(config_limit_keys[0]),
        0,
        CF(limit_kv),
        CF(limit_kv_cnt),
        CF(limits),
        CF(limit_cnt),
        NULL,
        0,
};

static const struct config_family config_dkim_family = {
        "dkim.key",
        "DKIM keys",
        CONFIG_DKIM_KEY_NAME_MAX,
        CONFIG_DKIM_KEYS_MAX,
        sizeof(struct config_dkim_key),
        config_dkim_keys,
        sizeof(config_dkim_keys) / sizeof(config_dkim_keys[0]),
        1,
        CF(dkim_kv),
        CF(dkim_kv_cnt),
        CF(dkim_keys),
        CF(dkim_key_cnt),
        NULL,
        0,
};
#undef CF

static struct config_kv **config_family_kv(struct config *conf,
                                           const struct config_family *f,
                                           size_t **cnt) {
        *cnt = (size_t *)(void *)((char *)conf + f->kv_cnt_off);
        return (struct config_kv **)(void *)((char *)conf + f->kv_off);
}

/* @returns where @conf points to the family's entries (an array of
 * entry_size structs), with their count in *@cnt. */
static char **config_family_entries(struct config *conf,
                                    const struct config_family *f,
                                    size_t **cnt) {
        *cnt = (size_t *)(void *)((char *)conf + f->entry_cnt_off);
        return (char **)(void *)((char *)conf + f->entries_off);
}

/* @returns the struct config the entry @e points to, when the family has
 * one. */
static struct config **config_family_sub(const struct config_family *f,
                                         void *e) {
        return (struct config **)(void *)((char *)e + f->sub_off);
}

static const struct config_key *config_family_key(const struct config_family *f,
                                                  const char *suffix) {
        for (size_t i = 0; i < f->key_cnt; i++) {
                if (strcmp(f->keys[i].name, suffix) == 0)
                        return &f->keys[i];
        }
        return NULL;
}

/* Splits "<prefix>.<name>.<suffix>": @returns the suffix with the name's
 * length in *@name_len, or NULL when the name is empty, too long or has a
 * character other than [a-z0-9-]. */
static const char *config_family_split(const struct config_family *f,
                                       const char *key, size_t *name_len) {
        const char *name = key + strlen(f->prefix) + 1;
        size_t n = strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-");

        if (n == 0 || n > f->name_max || name[n] != '.' || name[n + 1] == '\0')
                return NULL;
        *name_len = n;
        return name + n + 1;
}

/* Frees what the entry @e holds (not @e). */
static void config_family_entry_fini(const struct config_family *f, void *e) {
        free(*(char **)e);
        for (size_t i = 0; i < f->key_cnt; i++) {
                const struct config_key *k = &f->keys[i];

                if (k->type == CONFIG_T_STR || k->type == CONFIG_T_SECRET ||
                    k->type == CONFIG_T_ENUM_STR)
                        free(*config_str_field(e, k));
        }
        if (f->sub_key)
                config_destroy(*config_family_sub(f, e));
}

/* Fills the new (zeroed) entry @e: its name (@len bytes of @name), the
 * defaults of its keys, and an empty struct config when the family has
 * one. @returns 0 or -1 when out of memory. */
static int config_family_entry_init(const struct config_family *f, void *e,
                                    const char *name, size_t len) {
        char err[256];

        *(char **)e = strndup(name, len);
        if (!*(char **)e)
                return -1;
        for (size_t i = 0; i < f->key_cnt; i++) {
                if (config_set_key(e, &f->keys[i], f->keys[i].def, "default",
                                   err, sizeof(err)) == -1)
                        return -1;
        }
        if (f->sub_key) {
                *config_family_sub(f, e) = config_new();
                if (!*config_family_sub(f, e))
                        return -1;
        }
        return 0;
}

static void config_family_free(struct config *conf,
                               const struct config_family *f) {
        size_t *cnt;
        char **entries = config_family_entries(conf, f, &cnt);

        for (size_t i = 0; i < *cnt; i++)
                config_family_entry_fini(f, *entries + i * f->entry_size);
        free(*entries);
        *entries = NULL;
        *cnt = 0;
}

/* @returns the entry called @name (@len bytes), added if it is new (then
 * *@added is 1); NULL with @errstr. */
static void *config_family_get(struct config *conf,
                               const struct config_family *f, const char *name,
                               size_t len, int *added, char *errstr,
                               size_t errstr_size) {
        size_t *cnt;
        char **entries = config_family_entries(conf, f, &cnt);
        char *grown, *e;

        *added = 0;
        for (size_t i = 0; i < *cnt; i++) {
                const char *have = *(char **)(*entries + i * f->entry_size);

                if (strlen(have) == len && memcmp(have, name, len) == 0)
                        return *entries + i * f->entry_size;
        }
        if (*cnt == f->entry_max) {
                snprintf(errstr, errstr_size, "%s.%.*s: more than %zu %s",
                         f->prefix, (int)len, name, f->entry_max, f->noun);
                return NULL;
        }
        grown = realloc(*entries, (*cnt + 1) * f->entry_size);
        if (!grown)
                goto oom;
        *entries = grown;
        e = grown + *cnt * f->entry_size;
        memset(e, 0, f->entry_size);
        (*cnt)++;
        if (config_family_entry_init(f, e, name, len) == -1)
                goto oom;
        *added = 1;
        return e;

oom:
        snprintf(errstr, errstr_size, "%s.%.*s: out of memory", f->prefix,
                 (int)len, name);
        return NULL;
}

/* Applies <prefix>.<name>.<suffix>=@value (@key) to the entry @e, or to
 * the struct config it points to, naming @key in errors. */
static int config_family_apply(const struct config_family *f, void *e,
                               const char *key, const char *value,
                               const char *source, char *errstr,
                               size_t errstr_size) {
        size_t name_len;
        const char *suffix = config_family_split(f, key, &name_len);
        const struct config_key *k;
        struct config_key named;

        if (!suffix) {
                snprintf(errstr, errstr_size,
                         "%s: %s: expected %s.<name>.<setting> with a name "
                         "of 1 to %zu characters a-z, 0-9 and '-'",
                         source, key, f->prefix, f->name_max);
                return -1;
        }
        if ((k = config_family_key(f, suffix)) == NULL && f->sub_key &&
            (k = f->sub_key(suffix)) != NULL)
                e = *config_family_sub(f, e);
        if (!k) {
                snprintf(errstr, errstr_size, "%s: unknown key \"%s\"", source,
                         key);
                return -1;
        }
        if (f->no_empty && value[0] == '\0') {
                snprintf(errstr, errstr_size, "%s: %s: must not be empty",
                         source, key);
                return -1;
        }
        named = *k;
        named.name = key;
        return config_set_key(e, &named, value, source, errstr, errstr_size);
}

/* Checks <prefix>.<name>.<suffix>=@value on a scratch entry and keeps it
 * for config_finish() (values it falls back on may come later). */
static int config_family_set(struct config *conf, const struct config_family *f,
                             const char *key, const char *value,
                             const char *source, char *errstr,
                             size_t errstr_size) {
        char *e = calloc(1, f->entry_size);
        struct config_kv **kv;
        size_t *kv_cnt;
        int ret = -1;

        if (!e || config_family_entry_init(f, e, "", 0) == -1) {
                snprintf(errstr, errstr_size, "%s: %s: out of memory", source,
                         key);
                goto out;
        }
        if (config_family_apply(f, e, key, value, source, errstr,
                                errstr_size) == 0) {
                kv = config_family_kv(conf, f, &kv_cnt);
                ret = config_kv_set(kv, kv_cnt, key, value);
                if (ret != 0)
                        snprintf(errstr, errstr_size, "%s: %s: out of memory",
                                 source, key);
        }
out:
        if (e)
                config_family_entry_fini(f, e);
        free(e);
        return ret;
}

/* Makes the family's entries from the pairs set; @on_add (NULL: none)
 * fills in a new entry first. */
static int config_family_build(struct config *conf,
                               const struct config_family *f,
                               int (*on_add)(struct config *conf, void *e),
                               char *errstr, size_t errstr_size) {
        size_t *kv_cnt;
        struct config_kv **kv = config_family_kv(conf, f, &kv_cnt);

        config_family_free(conf, f);
        for (size_t i = 0; i < *kv_cnt; i++) {
                const char *key = (*kv)[i].key;
                size_t len = 0; /* set: the key was checked by config_set() */
                int added;
                void *e;

                config_family_split(f, key, &len);
                e = config_family_get(conf, f, key + strlen(f->prefix) + 1, len,
                                      &added, errstr, errstr_size);
                if (!e)
                        return -1;
                if (added && on_add && on_add(conf, e) == -1) {
                        snprintf(errstr, errstr_size, "%s: out of memory", key);
                        return -1;
                }
                if (config_family_apply(f, e, key, (*kv)[i].value, f->prefix,
                                        errstr, errstr_size) == -1)
                        return -1;
        }
        return 0;
}

/* Prints the family's keys for --help. */
static void config_family_help(const struct config_family *f, FILE *fp) {
        for (size_t i = 0; i < f->key_cnt; i++) {
                const struct config_key *k = &f->keys[i];

                fprintf(fp, "  %s.NAME.%s (%s, default \"%s\"", f->prefix,
                        k->name, config_type_name(k->type), k->def);
                if (k->type == CONFIG_T_INT)
                        fprintf(fp, ", %ld..%ld", k->min, k->max);
                fprintf(fp, ")\n      %s\n", k->help);
        }
}

/* Prints the pairs set in the family, secrets masked. */
static void config_family_dump(const struct config *conf,
                               const struct config_family *f, FILE *fp) {
        size_t *kv_cnt;
        struct config_kv **kv =
                config_family_kv((struct config *)conf, f, &kv_cnt);

        for (size_t i = 0; i < *kv_cnt; i++) {
                const char *key = (*kv)[i].key;
                size_t len;
                const char *suffix = config_family_split(f, key, &len);
                const struct config_key *k =
                        suffix ? config_family_key(f, suffix) : NULL;

                if (!k && suffix && f->sub_key)
                        k = f->sub_key(suffix);
                fprintf(fp, "%s=%s\n", key,
                        k && k->type == CONFIG_T_SECRET ? "***"
                                                        : (*kv)[i].value);
        }
}

int config_set(struct config *conf, const char *key, const char *value,
               const char *source, char *errstr, size_t errstr_size) {
        const struct config_key *k;

        if (strncmp(key, "kafka.", strlen("kafka.")) == 0)
                return config_set_kafka(conf, key, value, source, errstr,
                                        errstr_size);
        if (strncmp(key, "relay.", strlen("relay.")) == 0)
                return config_family_set(conf, &config_relay_family, key, value,
                                         source, errstr, errstr_size);
        if (strncmp(key, "dkim.key.", strlen("dkim.key.")) == 0)
                return config_family_set(conf, &config_dkim_family, key, value,
                                         source, errstr, errstr_size);
        k = config_key_find(key);
        if (!k && strncmp(key, "limit.", strlen("limit.")) == 0)
                return config_family_set(conf, &config_limit_family, key, value,
                                         source, errstr, errstr_size);
        if (!k) {
                snprintf(errstr, errstr_size, "%s: unknown key \"%s\"", source,
                         key);
                return -1;
        }
        return config_set_key(conf, k, value, source, errstr, errstr_size);
}

struct config *config_new(void) {
        struct config *conf;
        char errstr[256];

        conf = calloc(1, sizeof(*conf));
        if (!conf)
                return NULL;
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                if (config_set_key(conf, &config_keys[i], config_keys[i].def,
                                   "default", errstr, sizeof(errstr)) == -1)
                        goto err;
        }
        if (config_set(conf, "kafka.bootstrap.servers", "127.0.0.1:9092",
                       "default", errstr, sizeof(errstr)) == -1 ||
            config_set(conf, "kafka.consumer.group.id", "kafka-mailer",
                       "default", errstr, sizeof(errstr)) == -1)
                goto err;
        return conf;

err:
        config_destroy(conf);
        return NULL;
}

static void config_kv_free(struct config_kv *kvs, size_t cnt) {
        for (size_t i = 0; i < cnt; i++) {
                free(kvs[i].key);
                free(kvs[i].value);
                free(kvs[i].file);
        }
        free(kvs);
}

void config_destroy(struct config *conf) {
        if (!conf)
                return;
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                const struct config_key *k = &config_keys[i];

                if (k->type == CONFIG_T_STR || k->type == CONFIG_T_SECRET ||
                    k->type == CONFIG_T_ENUM_STR)
                        free(*config_str_field(conf, k));
        }
        config_kv_free(conf->kafka_consumer, conf->kafka_consumer_cnt);
        config_kv_free(conf->kafka_producer, conf->kafka_producer_cnt);
        config_kv_free(conf->relay_kv, conf->relay_kv_cnt);
        config_family_free(conf, &config_relay_family);
        config_kv_free(conf->dkim_kv, conf->dkim_kv_cnt);
        config_family_free(conf, &config_dkim_family);
        config_kv_free(conf->limit_kv, conf->limit_kv_cnt);
        config_family_free(conf, &config_limit_family);
        free(conf);
}

/* props_read_file()'s callback: sets one line's key in the config. */
static int config_set_line(const char *key, const char *value,
                           const char *source, void *arg, char *errstr,
                           size_t errstr_size) {
        return config_set(arg, key, value, source, errstr, errstr_size);
}

int config_load_file(struct config *conf, const char *path, char *errstr,
                     size_t errstr_size) {
        return props_read_file(path, config_set_line, conf, errstr,
                               errstr_size);
}

/* Turns the part of a variable's name after KAFKA_MAILER_ into a key:
 * "SMTP_URL" -> "smtp.url". @returns 0, or -1 when the name has characters
 * no key has (only A-Z, 0-9 and '_' are). */
static int config_env_key(const char *name, size_t len, char *key,
                          size_t key_size) {
        if (len == 0 || len >= key_size)
                return -1;
        for (size_t i = 0; i < len; i++) {
                char c = name[i];

                if (c >= 'A' && c <= 'Z')
                        key[i] = (char)(c - 'A' + 'a');
                else if (c >= '0' && c <= '9')
                        key[i] = c;
                else if (c == '_')
                        key[i] = '.';
                else
                        return -1;
        }
        key[len] = '\0';
        return 0;
}

/* Applies the KAFKA_MAILER_* variables of @envp. @pass 0 takes every
 * variable but kafka.consumer.* and kafka.producer.*, pass 1 takes those, so
 * a client-specific kafka value wins over a shared one whatever the order of
 * the environment. */
static int config_load_env_pass(struct config *conf, char *const *envp,
                                int pass, char *errstr, size_t errstr_size) {
        const size_t plen = strlen(CONFIG_ENV_PREFIX);

        for (size_t i = 0; envp[i]; i++) {
                const char *var = envp[i];
                const char *eq = strchr(var, '=');
                char source[512];
                char key[256];
                size_t nlen;
                int specific;

                if (strncmp(var, CONFIG_ENV_PREFIX, plen) != 0 || !eq)
                        continue;
                nlen = (size_t)(eq - var);
                snprintf(source, sizeof(source), "env %.*s", (int)nlen, var);
                if (config_env_key(var + plen, nlen - plen, key, sizeof(key)) ==
                    -1) {
                        snprintf(errstr, errstr_size,
                                 "%s: unknown variable (expected "
                                 "KAFKA_MAILER_<KEY>, KEY upper case with '_' "
                                 "for '.')",
                                 source);
                        return -1;
                }
                specific = strncmp(key, "kafka.consumer.",
                                   strlen("kafka.consumer.")) == 0 ||
                           strncmp(key, "kafka.producer.",
                                   strlen("kafka.producer.")) == 0;
                if (specific != pass)
                        continue;
                if (config_set(conf, key, eq + 1, source, errstr,
                               errstr_size) == -1)
                        return -1;
        }
        return 0;
}

int config_load_env(struct config *conf, char *const *envp, char *errstr,
                    size_t errstr_size) {
        if (config_load_env_pass(conf, envp, 0, errstr, errstr_size) == -1)
                return -1;
        return config_load_env_pass(conf, envp, 1, errstr, errstr_size);
}

/* Reads the first line of the file @path that setting @name (e.g.
 * "smtp.password.file") names into *@out. */
static int config_read_secret_file(const char *name, const char *path,
                                   char **out, char *errstr,
                                   size_t errstr_size) {
        char buf[PROPS_SECRET_MAX + 2];
        int r = -1;

        if (props_read_secret(name, path, buf, sizeof(buf), errstr,
                              errstr_size) == -1)
                goto out;
        if (config_str_replace(out, buf) == -1) {
                snprintf(errstr, errstr_size, "%s: out of memory", name);
                goto out;
        }
        r = 0;

out:
        explicit_bzero(buf, sizeof(buf));
        return r;
}

/* Checks smtp.url: scheme smtp:// or smtps://, a host, no credentials.
 * The URL is not echoed when it may hold credentials. */
static int config_check_url(const struct config *conf, char *errstr,
                            size_t errstr_size) {
        const char *url = conf->smtp_url;
        const char *authority;
        size_t alen;

        if (strncmp(url, "smtp://", strlen("smtp://")) == 0)
                authority = url + strlen("smtp://");
        else if (strncmp(url, "smtps://", strlen("smtps://")) == 0)
                authority = url + strlen("smtps://");
        else
                authority = NULL;
        if (authority) {
                alen = strcspn(authority, "/?#");
                if (memchr(authority, '@', alen)) {
                        snprintf(errstr, errstr_size,
                                 "smtp.url: has credentials in it: put "
                                 "credentials in smtp.username/smtp.password");
                        return -1;
                }
                if (alen == 0) {
                        snprintf(errstr, errstr_size,
                                 "smtp.url: \"%s\" has no host", url);
                        return -1;
                }
                return 0;
        }
        if (strchr(url, '@')) {
                snprintf(errstr, errstr_size,
                         "smtp.url: must start with smtp:// or smtps:// (and "
                         "put credentials in smtp.username/smtp.password)");
                return -1;
        }
        snprintf(errstr, errstr_size,
                 "smtp.url: \"%s\" must start with smtp:// or smtps://", url);
        return -1;
}

static int config_check_backoff(const char *initial_name, int initial,
                                const char *max_name, int max, char *errstr,
                                size_t errstr_size) {
        if (initial <= max)
                return 0;
        snprintf(errstr, errstr_size, "%s: %d is above %s %d", initial_name,
                 initial, max_name, max);
        return -1;
}

/* Fills worker.id with "<hostname>-<pid>". */
static int config_default_worker_id(struct config *conf, char *errstr,
                                    size_t errstr_size) {
        char host[256];
        char id[320];

        if (gethostname(host, sizeof(host)) == -1)
                snprintf(host, sizeof(host), "unknown");
        host[sizeof(host) - 1] = '\0';
        snprintf(id, sizeof(id), "%s-%ld", host, (long)getpid());
        if (config_str_replace(&conf->worker_id, id) == -1) {
                snprintf(errstr, errstr_size, "worker.id: out of memory");
                return -1;
        }
        return 0;
}

/* librdkafka group settings that only one group protocol takes: the worker
 * refuses them under the other, with the reason, rather than let librdkafka
 * refuse to start or ignore them. */
static const struct {
        const char *key;
        enum config_group_protocol only_under;
        const char *why;
} config_group_only[] = {
        {"partition.assignment.strategy", CONFIG_GROUP_CLASSIC,
         "under group.protocol=consumer the broker assigns partitions "
         "(group.remote.assignor picks its assignor)"},
        {"session.timeout.ms", CONFIG_GROUP_CLASSIC,
         "under group.protocol=consumer the broker sets it "
         "(group.consumer.session.timeout.ms)"},
        {"heartbeat.interval.ms", CONFIG_GROUP_CLASSIC,
         "under group.protocol=consumer the broker sets it "
         "(group.consumer.heartbeat.interval.ms)"},
        {"group.protocol.type", CONFIG_GROUP_CLASSIC,
         "it belongs to the classic protocol"},
        {"group.remote.assignor", CONFIG_GROUP_CONSUMER,
         "it is a setting of group.protocol=consumer; the classic protocol "
         "assigns with partition.assignment.strategy"},
};

/* Turns each secret's <prop>.file=PATH in one client's kafka.* list into
 * <prop>=<the first line of PATH>, keeping the path for config_dump(). */
static int config_read_kafka_files(struct config_kv *kvs, size_t cnt,
                                   const char *scope, char *errstr,
                                   size_t errstr_size) {
        for (size_t i = 0; i < cnt; i++) {
                size_t len = props_secret_file_key(kvs[i].key);
                char name[256];
                char *secret = NULL;

                /* librdkafka's own *.file properties are left alone. */
                if (kvs[i].file || len == 0)
                        continue;
                kvs[i].key[len] = '\0';
                snprintf(name, sizeof(name), "%s.%s.file", scope, kvs[i].key);
                for (size_t j = 0; j < cnt; j++) {
                        if (j != i && strcmp(kvs[j].key, kvs[i].key) == 0) {
                                snprintf(errstr, errstr_size,
                                         "%s.%s, %s: set only one", scope,
                                         kvs[i].key, name);
                                return -1;
                        }
                }
                if (config_read_secret_file(name, kvs[i].value, &secret, errstr,
                                            errstr_size) == -1) {
                        free(secret);
                        return -1;
                }
                kvs[i].file = kvs[i].value;
                kvs[i].value = secret;
        }
        return 0;
}

/* Checks the consumer's kafka.* settings against group.protocol. */
static int config_check_group(const struct config *conf, char *errstr,
                              size_t errstr_size) {
        for (size_t i = 0; i < conf->kafka_consumer_cnt; i++) {
                const char *key = conf->kafka_consumer[i].key;

                if (strcmp(key, "group.protocol") == 0) {
                        snprintf(errstr, errstr_size,
                                 "kafka.group.protocol: set group.protocol "
                                 "instead (the worker picks the settings that "
                                 "go with it)");
                        return -1;
                }
                for (size_t j = 0; j < sizeof(config_group_only) /
                                               sizeof(config_group_only[0]);
                     j++) {
                        if (strcmp(key, config_group_only[j].key) != 0 ||
                            conf->group_protocol ==
                                    config_group_only[j].only_under)
                                continue;
                        snprintf(
                                errstr, errstr_size,
                                "kafka.%s: not allowed with group.protocol=%s: "
                                "%s",
                                key,
                                config_group_protocol_choices
                                        [conf->group_protocol],
                                config_group_only[j].why);
                        return -1;
                }
        }
        return 0;
}

/* Checks the relay settings (smtp.*) of @conf and reads its password
 * file. */
static int config_check_smtp(struct config *conf, char *errstr,
                             size_t errstr_size) {
        if (config_check_url(conf, errstr, errstr_size) == -1)
                return -1;
        if (strncmp(conf->smtp_url, "smtps://", strlen("smtps://")) == 0 &&
            conf->smtp_starttls == CONFIG_TLS_OFF)
                LOG(LL_INFO,
                    "smtp.url is smtps://: TLS is implicit, smtp.starttls=off "
                    "does not turn it off");

        for (const char *p = conf->smtp_helo_name; *p; p++) {
                if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
                        snprintf(errstr, errstr_size,
                                 "smtp.helo.name: only printable ASCII "
                                 "without spaces");
                        return -1;
                }
        }
        if (conf->smtp_password[0] != '\0' &&
            conf->smtp_password_file[0] != '\0') {
                snprintf(errstr, errstr_size,
                         "smtp.password, smtp.password.file: set only one");
                return -1;
        }
        if (conf->smtp_password_file[0] != '\0' &&
            config_read_secret_file(
                    "smtp.password.file", conf->smtp_password_file,
                    &conf->smtp_password, errstr, errstr_size) == -1)
                return -1;
        if (conf->smtp_username[0] != '\0' && conf->smtp_password[0] == '\0') {
                snprintf(errstr, errstr_size,
                         "smtp.username: set without smtp.password or "
                         "smtp.password.file");
                return -1;
        }
        if (conf->smtp_username[0] != '\0' &&
            strncmp(conf->smtp_url, "smtp://", strlen("smtp://")) == 0 &&
            conf->smtp_starttls == CONFIG_TLS_OFF)
                LOG(LL_WARN, "smtp.starttls=off with smtp.username set: the "
                             "password crosses the network in clear");
        return config_check_backoff("smtp.relay.backoff.initial.ms",
                                    conf->smtp_relay_backoff_initial_ms,
                                    "smtp.relay.backoff.max.ms",
                                    conf->smtp_relay_backoff_max_ms, errstr,
                                    errstr_size);
}

static int config_is_credential(const char *name) {
        return strcmp(name, "smtp.username") == 0 ||
               strcmp(name, "smtp.password") == 0 ||
               strcmp(name, "smtp.password.file") == 0;
}

/* Copies the smtp.* settings of @from to @to, the credentials only when
 * @creds. @returns 0 or -1 when out of memory. */
static int config_copy_smtp(struct config *to, const struct config *from,
                            int creds) {
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                const struct config_key *k = &config_keys[i];

                if (strncmp(k->name, "smtp.", strlen("smtp.")) != 0 ||
                    (!creds && config_is_credential(k->name)))
                        continue;
                if (k->type == CONFIG_T_STR || k->type == CONFIG_T_SECRET ||
                    k->type == CONFIG_T_ENUM_STR) {
                        if (config_str_replace(config_str_field(to, k),
                                               *config_str_field_c(from, k)) ==
                            -1)
                                return -1;
                } else {
                        *config_int_field(to, k) = *config_int_field_c(from, k);
                }
        }
        return 0;
}

/* A relay named in relay.<name>.* starts from the smtp.* settings but
 * the credentials. */
static int config_relay_add(struct config *conf, void *e) {
        struct config_relay *r = e;

        return config_copy_smtp(r->smtp, conf, 0);
}

/* Writes @msg to @errstr with every "smtp." turned into "relay.<name>.". */
static void config_relay_error(const char *name, const char *msg, char *errstr,
                               size_t errstr_size) {
        size_t o = 0;

        while (*msg && o + 1 < errstr_size) {
                if (strncmp(msg, "smtp.", strlen("smtp.")) == 0) {
                        int n = snprintf(errstr + o, errstr_size - o,
                                         "relay.%s.", name);

                        if (n < 0 || (size_t)n >= errstr_size - o)
                                break;
                        o += (size_t)n;
                        msg += strlen("smtp.");
                        continue;
                }
                errstr[o++] = *msg++;
        }
        errstr[o] = '\0';
}

/* Makes conf->relays from relay.<name>.* (or smtp.* alone) and checks that
 * every request has a relay to go to. */
static int config_build_relays(struct config *conf, char *errstr,
                               size_t errstr_size) {
        static const enum config_route_priority prios[] = {
                CONFIG_ROUTE_TRANSACTIONAL, CONFIG_ROUTE_BULK};
        char err[512];

        if (conf->relay_kv_cnt == 0) {
                struct config_relay *r;
                int added;

                config_family_free(conf, &config_relay_family);
                r = config_family_get(conf, &config_relay_family, "default",
                                      strlen("default"), &added, errstr,
                                      errstr_size);
                if (!r)
                        return -1;
                if (config_copy_smtp(r->smtp, conf, 1) == -1) {
                        snprintf(errstr, errstr_size,
                                 "relay.default: out of memory");
                        return -1;
                }
                return 0;
        }
        if (config_family_build(conf, &config_relay_family, config_relay_add,
                                errstr, errstr_size) == -1)
                return -1;
        for (size_t i = 0; i < conf->relay_cnt; i++) {
                struct config_relay *r = &conf->relays[i];

                if (config_check_smtp(r->smtp, err, sizeof(err)) == -1) {
                        config_relay_error(r->name, err, errstr, errstr_size);
                        return -1;
                }
        }
        for (size_t p = 0; p < sizeof(prios) / sizeof(prios[0]); p++) {
                size_t i;

                for (i = 0; i < conf->relay_cnt; i++) {
                        const struct config_relay *r = &conf->relays[i];

                        if (r->route_sender_domains[0] == '\0' &&
                            (r->route_priority == CONFIG_ROUTE_ANY ||
                             r->route_priority == prios[p]))
                                break;
                }
                if (i == conf->relay_cnt) {
                        snprintf(errstr, errstr_size,
                                 "relay.*: no relay takes %s requests from "
                                 "every sender domain: give one "
                                 "route.priority any or %s and no "
                                 "route.sender.domains",
                                 config_route_priority_choices[prios[p]],
                                 config_route_priority_choices[prios[p]]);
                        return -1;
                }
        }
        return 0;
}

/* Makes conf->dkim_keys from dkim.key.<name>.* and checks that each has
 * what it needs to sign. */
static int config_build_dkim(struct config *conf, char *errstr,
                             size_t errstr_size) {
        if (conf->dkim_headers[0] == '\0') {
                snprintf(errstr, errstr_size,
                         "dkim.headers: must not be empty (from at least)");
                return -1;
        }
        if (config_family_build(conf, &config_dkim_family, NULL, errstr,
                                errstr_size) == -1)
                return -1;
        for (size_t i = 0; i < conf->dkim_key_cnt; i++) {
                const struct config_dkim_key *d = &conf->dkim_keys[i];
                const char *missing = d->domain[0] == '\0'     ? "domain"
                                      : d->selector[0] == '\0' ? "selector"
                                      : d->file[0] == '\0'     ? "file"
                                                               : NULL;

                if (missing) {
                        snprintf(errstr, errstr_size,
                                 "dkim.key.%s.%s: not set (a DKIM key needs "
                                 "domain, selector and file)",
                                 d->name, missing);
                        return -1;
                }
        }
        return 0;
}

/* Makes the limits: a named one covers domains, default covers no list. */
static int config_build_limits(struct config *conf, char *errstr,
                               size_t errstr_size) {
        if (config_family_build(conf, &config_limit_family, NULL, errstr,
                                errstr_size) == -1)
                return -1;
        for (size_t i = 0; i < conf->limit_cnt; i++) {
                const struct config_limit *l = &conf->limits[i];
                int is_default = strcmp(l->name, "default") == 0;

                if (is_default && l->domains[0] != '\0') {
                        snprintf(errstr, errstr_size,
                                 "limit.default.domains: not allowed: "
                                 "limit.default covers every domain no other "
                                 "limit names");
                        return -1;
                }
                if (!is_default && l->domains[0] == '\0') {
                        snprintf(errstr, errstr_size,
                                 "limit.%s.domains: must not be empty",
                                 l->name);
                        return -1;
                }
        }
        return 0;
}

int config_finish(struct config *conf, char *errstr, size_t errstr_size) {
        static const char *const topics[] = {"topic.requests", "topic.results",
                                             "topic.deadletter"};

        for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
                const struct config_key *k = config_key_find(topics[i]);

                if ((*config_str_field(conf, k))[0] == '\0') {
                        snprintf(errstr, errstr_size, "%s: must not be empty",
                                 topics[i]);
                        return -1;
                }
        }
        if (conf->worker_id[0] == '\0' &&
            config_default_worker_id(conf, errstr, errstr_size) == -1)
                return -1;

        if (config_read_kafka_files(conf->kafka_consumer,
                                    conf->kafka_consumer_cnt, "kafka.consumer",
                                    errstr, errstr_size) == -1 ||
            config_read_kafka_files(conf->kafka_producer,
                                    conf->kafka_producer_cnt, "kafka.producer",
                                    errstr, errstr_size) == -1 ||
            config_check_group(conf, errstr, errstr_size) == -1 ||
            config_check_smtp(conf, errstr, errstr_size) == -1 ||
            config_build_relays(conf, errstr, errstr_size) == -1 ||
            config_build_dkim(conf, errstr, errstr_size) == -1 ||
            config_build_limits(conf, errstr, errstr_size) == -1)
                return -1;

        if (config_check_backoff(
                    "retry.backoff.initial.ms", conf->retry_backoff_initial_ms,
                    "retry.backoff.max.ms", conf->retry_backoff_max_ms, errstr,
                    errstr_size) == -1)
                return -1;
        return 0;
}

void config_print_help(FILE *fp) {
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                const struct config_key *k = &config_keys[i];

                fprintf(fp, "  %s (%s", k->name, config_type_name(k->type));
                if (k->type != CONFIG_T_SECRET)
                        fprintf(fp, ", default \"%s\"", k->def);
                if (k->type == CONFIG_T_INT)
                        fprintf(fp, ", %ld..%ld", k->min, k->max);
                fprintf(fp, ")\n      %s\n", k->help);
        }
        fprintf(fp, "  relay.NAME.K (K one of the smtp.* keys above but "
                    "transaction.max.recipients, or:)\n");
        config_family_help(&config_relay_family, fp);
        config_family_help(&config_dkim_family, fp);
        config_family_help(&config_limit_family, fp);
        fprintf(fp, "  kafka.X, kafka.consumer.X, kafka.producer.X (string)\n"
                    "      librdkafka property X for both clients, the "
                    "consumer or the producer\n");
}

static void config_dump_kv(const char *prefix, const struct config_kv *kvs,
                           size_t cnt, FILE *fp) {
        for (size_t i = 0; i < cnt; i++) {
                if (kvs[i].file)
                        fprintf(fp, "%s%s.file=%s\n", prefix, kvs[i].key,
                                kvs[i].file);
                else
                        fprintf(fp, "%s%s=%s\n", prefix, kvs[i].key,
                                props_is_secret(kvs[i].key) ? "***"
                                                            : kvs[i].value);
        }
}

void config_dump(const struct config *conf, FILE *fp) {
        for (size_t i = 0; i < CONFIG_KEY_CNT; i++) {
                const struct config_key *k = &config_keys[i];
                const char *s;
                int v;

                switch (k->type) {
                case CONFIG_T_STR:
                case CONFIG_T_ENUM_STR:
                        fprintf(fp, "%s=%s\n", k->name,
                                *config_str_field_c(conf, k));
                        break;
                case CONFIG_T_SECRET:
                        s = *config_str_field_c(conf, k);
                        fprintf(fp, "%s=%s\n", k->name, s[0] ? "***" : "");
                        break;
                case CONFIG_T_INT:
                        fprintf(fp, "%s=%d\n", k->name,
                                *config_int_field_c(conf, k));
                        break;
                case CONFIG_T_BOOL:
                        v = *config_int_field_c(conf, k);
                        fprintf(fp, "%s=%s\n", k->name, v ? "true" : "false");
                        break;
                case CONFIG_T_ENUM:
                        v = *config_int_field_c(conf, k);
                        fprintf(fp, "%s=%s\n", k->name, k->choices[v]);
                        break;
                }
        }
        config_dump_kv("kafka.consumer.", conf->kafka_consumer,
                       conf->kafka_consumer_cnt, fp);
        config_dump_kv("kafka.producer.", conf->kafka_producer,
                       conf->kafka_producer_cnt, fp);
        config_family_dump(conf, &config_relay_family, fp);
        config_family_dump(conf, &config_dkim_family, fp);
        config_family_dump(conf, &config_limit_family, fp);
}