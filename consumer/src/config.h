/*
 * config: the worker's settings. One table row per key (name, type, default,
 * bounds, help); values come from, in rising precedence: defaults, a
 * properties file (-c FILE), environment variables (KAFKA_MAILER_<KEY> with
 * the key upper-cased and '.' as '_'), and -X key=value.
 *
 * Keys under "kafka." are passed to librdkafka with the prefix removed:
 * "kafka.X" to both the consumer and the producer, "kafka.consumer.X" to the
 * consumer only, "kafka.producer.X" to the producer only. The worker's own
 * keys contain only [a-z0-9.].
 */
#ifndef KM_CONFIG_H
#define KM_CONFIG_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>

enum config_tls_mode {
        CONFIG_TLS_REQUIRED = 0, /* STARTTLS must succeed (smtp://) */
        CONFIG_TLS_OPPORTUNISTIC, /* STARTTLS when offered */
        CONFIG_TLS_OFF /* never STARTTLS */
};

/* smtp.tls.min.version: the oldest TLS version accepted from the relay. */
enum config_tls_version {
        CONFIG_TLS_V1_2 = 0, /* "1.2" */
        CONFIG_TLS_V1_3 /* "1.3" */
};

/* group.protocol: how the consumer group assigns partitions. */
enum config_group_protocol {
        CONFIG_GROUP_CLASSIC =
                0, /* "classic": JoinGroup/SyncGroup, cooperative-sticky */
        CONFIG_GROUP_CONSUMER /* "consumer": KIP-848, the broker assigns */
};

/* relay.<name>.route.priority: the requests a relay takes by priority. */
enum config_route_priority {
        CONFIG_ROUTE_ANY = 0, /* "any" */
        CONFIG_ROUTE_TRANSACTIONAL, /* "transactional" */
        CONFIG_ROUTE_BULK /* "bulk" */
};

struct config;

/* One SMTP relay: relay.<name>.* over the smtp.* defaults, or, when no
 * relay.* key is set, the single relay "default" made of smtp.*. */
struct config_relay {
        char *name; /* [a-z0-9-], at most CONFIG_RELAY_NAME_MAX bytes */
        /* The relay's smtp.* settings (every other field unused):
         * relay.<name>.<k> where set, else smtp.<k>, except the credentials
         * (username, password, password.file), which a named relay does not
         * take from smtp.* */
        struct config *smtp;
        int weight; /* relay.<name>.weight: share of the traffic, 0 = only
                       when no relay of weight > 0 for the request is
                       healthy */
        char *route_sender_domains; /* relay.<name>.route.sender.domains:
                                       comma-separated, "" = any */
        enum config_route_priority
                route_priority; /* relay.<name>.route.priority */
        int rate_max; /* relay.<name>.rate.max: msgs/s for the whole group,
                         0 = none */
};

/* limit.<name>.*: how fast and how many at once to a set of recipient
 * domains; "default" is the limit of every other domain, each on its own. */
struct config_limit {
        char *name;
        char *domains; /* limit.<name>.domains, comma-separated ("" for
                          default) */
        int rate_max; /* limit.<name>.rate.max: msgs/s for the whole group,
                         0 = none */
        int sessions_max; /* limit.<name>.sessions.max: transactions at
                             once per worker, 0 = none */
};

#define CONFIG_LIMITS_MAX 64
#define CONFIG_RELAY_NAME_MAX 32
#define CONFIG_RELAYS_MAX 16

/* One DKIM signing key: dkim.key.<name>.*. It signs every message whose
 * From address's domain is its domain (ASCII, any case). */
struct config_dkim_key {
        char *name; /* [a-z0-9-], at most CONFIG_DKIM_KEY_NAME_MAX bytes */
        char *domain; /* dkim.key.<name>.domain: d=, the From domain */
        char *selector; /* dkim.key.<name>.selector: s= */
        char *file; /* dkim.key.<name>.file: the PEM private key */
        char *headers; /* dkim.key.<name>.headers, "" = dkim.headers */
};

#define CONFIG_DKIM_KEY_NAME_MAX 32
#define CONFIG_DKIM_KEYS_MAX 16

/* The kafka.* passthrough pairs of one client. */
struct config_kv {
        char *key; /* without the "kafka.[consumer.|producer.]" prefix */
        char *value;
        /* kafka.*: the file the secret value was read from (<key>.file),
         * or NULL */
        char *file;
};

struct config {
        /* topics */
        char *topic_requests; /* topic.requests */
        char *topic_results; /* topic.results */
        char *topic_deadletter; /* topic.deadletter */
        char *topic_retry; /* topic.retry, "" = no retry topic */

        /* identity */
        char *worker_id; /* worker.id, default "<hostname>-<pid>" */

        /* SMTP relay */
        char *smtp_url; /* smtp.url: smtp://host:port or smtps://host:port */
        enum config_tls_mode smtp_starttls; /* smtp.starttls */
        char *smtp_username; /* smtp.username, "" = no AUTH */
        char *smtp_password; /* smtp.password or read from smtp.password.file */
        char *smtp_password_file; /* smtp.password.file, "" = none */
        char *smtp_ca_file; /* smtp.tls.ca.file, "" = system store */
        int smtp_tls_verify; /* smtp.tls.verify (bool) */
        enum config_tls_version smtp_tls_min_version; /* smtp.tls.min.version */
        char *smtp_helo_name; /* smtp.helo.name, "" = libcurl's default */
        int smtp_pipelining; /* smtp.pipelining (bool): use PIPELINING if offered */
        int smtp_pipelining_txns; /* smtp.pipelining.transactions (bool) */
        int smtp_chunking; /* smtp.chunking (bool) */
        int smtp_transaction_max_recipients; /* smtp.transaction.max.recipients */
        int smtp_sessions_max; /* smtp.sessions.max */
        int smtp_session_max_messages; /* smtp.session.max.messages */
        int smtp_session_idle_ms; /* smtp.session.idle.ms */
        int smtp_timeout_connect_ms; /* smtp.timeout.connect.ms (greeting..AUTH) */
        int smtp_timeout_command_ms; /* smtp.timeout.command.ms (MAIL/RCPT/DATA) */
        int smtp_timeout_data_ms; /* smtp.timeout.data.ms (reply to final .) */
        int smtp_relay_backoff_initial_ms; /* smtp.relay.backoff.initial.ms */
        int smtp_relay_backoff_max_ms; /* smtp.relay.backoff.max.ms */
        int smtp_relay_probe_ms; /* smtp.relay.probe.ms */

        /* in flight and retries */
        int inflight_max; /* inflight.max */
        int inflight_resume_percent; /* inflight.resume.percent */
        int retry_attempts_max; /* retry.attempts.max (total attempts) */
        int retry_backoff_initial_ms; /* retry.backoff.initial.ms */
        int retry_backoff_max_ms; /* retry.backoff.max.ms */
        int retry_jitter_percent; /* retry.jitter.percent */
        int retry_local_window_ms; /* retry.local.window.ms */
        int retry_window_ms; /* retry.window.ms */
        int retry_inflight_max; /* retry.inflight.max */

        /* duplicate suppression */
        int dedupe_capacity; /* dedupe.capacity, 0 = off */
        int dedupe_ttl_ms; /* dedupe.ttl.ms */
        int dedupe_recall_timeout_ms; /* dedupe.recall.timeout.ms, 0 = off */

        /* metrics */
        char *metrics_listen; /* metrics.listen, "" = off */
        int ready_error_window_ms; /* ready.error.window.ms */

        /* requests */
        int request_max_bytes; /* request.max.bytes */
        int request_max_recipients; /* request.max.recipients */
        int stall_warn_ms; /* stall.warn.ms */
        int request_max_subject_bytes; /* request.max.subject.bytes */
        int request_max_header_bytes; /* request.max.header.bytes */
        char *message_id_domain; /* message.id.domain, "" = the From domain */

        /* group membership, commits, rebalance, shutdown */
        enum config_group_protocol group_protocol; /* group.protocol */
        int commit_interval_ms; /* commit.interval.ms */
        int commit_timeout_ms; /* commit.timeout.ms */
        int commit_stall_exit_ms; /* commit.stall.exit.ms */
        int results_stall_ms; /* results.stall.ms */
        int fetch_nudge_ms; /* fetch.nudge.ms, -1 = by librdkafka version */
        int fetch_stall_ms; /* fetch.stall.ms */
        int rebalance_drain_timeout_ms; /* rebalance.drain.timeout.ms */
        int shutdown_timeout_ms; /* shutdown.timeout.ms */

        /* logging */
        char *log_level; /* log.level */
        int log_repeat_ms; /* log.repeat.ms */

        /* DKIM signing */
        char *dkim_headers; /* dkim.headers: the header fields a key signs
                               unless dkim.key.<name>.headers says */
        /* dkim.key.<name>.<k> as set (validated, applied by config_finish()) */
        struct config_kv *dkim_kv;
        size_t dkim_kv_cnt;
        /* the keys, by config_finish(); none: DKIM is off */
        struct config_dkim_key *dkim_keys;
        size_t dkim_key_cnt;

        /* relay.<name>.<k> as set (validated, applied by config_finish()) */
        struct config_kv *relay_kv;
        size_t relay_kv_cnt;
        /* limit.<name>.* as set, and the limits by config_finish() in the
         * order first named */
        struct config_kv *limit_kv;
        size_t limit_kv_cnt;
        struct config_limit *limits;
        size_t limit_cnt;
        int limit_queue_max_ms; /* limit.queue.max.ms */
        int throttle_decrease_percent; /* throttle.decrease.percent */
        int throttle_increase_percent; /* throttle.increase.percent */
        int throttle_rate_min; /* throttle.rate.min */

        /* the relays, by config_finish(): at least one */
        struct config_relay *relays;
        size_t relay_cnt;

        /* kafka.* passthrough, kafka.bootstrap.servers and kafka.group.id
         * have defaults ("127.0.0.1:9092", "kafka-mailer") */
        struct config_kv *kafka_consumer;
        size_t kafka_consumer_cnt;
        struct config_kv *kafka_producer;
        size_t kafka_producer_cnt;
};

/* @returns a config holding every default. */
struct config *config_new(void);
void config_destroy(struct config *conf);

/*
 * Sets one key. @source names where it came from for errors ("-X",
 * "env KAFKA_MAILER_X", "path:line").
 * @returns 0, or -1 with "<source>: <key>: <reason>" in @errstr (unknown key,
 * bad number, out of bounds, bad enum value).
 */
int config_set(struct config *conf, const char *key, const char *value,
               const char *source, char *errstr, size_t errstr_size);

/* Reads a properties file: "key=value" lines, '#' comments, blank lines,
 * whitespace around key and value trimmed. @returns 0 or -1 with
 * "path:line: key: reason" in @errstr. */
int config_load_file(struct config *conf, const char *path, char *errstr,
                     size_t errstr_size);

/* Applies KAFKA_MAILER_* variables from @envp (NULL-terminated).
 * @returns 0 or -1 with the variable named in @errstr. */
int config_load_env(struct config *conf, char *const *envp, char *errstr,
                    size_t errstr_size);

/* Checks cross-key rules and reads smtp.password.file when set.
 * @returns 0 or -1 with @errstr. Call once after all sources. */
int config_finish(struct config *conf, char *errstr, size_t errstr_size);

/* Prints every key with its default, bounds and help to @fp (for --help).
 * Secrets show no value. */
void config_print_help(FILE *fp);

/* Prints the effective configuration (secrets masked) to @fp. */
void config_dump(const struct config *conf, FILE *fp);

/* The key table, for tests and docs: @returns the number of keys, and the
 * name of key @i (< config_key_count()). kafka.* keys are not in it. */
size_t config_key_count(void);
const char *config_key_name(size_t i);

#endif
