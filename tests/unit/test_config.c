#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "fixture.h"

#define SECRET_VALUE "hunter2-do-not-print"

static char errstr[512];

static int set(struct config *conf, const char *key, const char *value) {
        errstr[0] = '\0';
        return config_set(conf, key, value, "-X", errstr, sizeof(errstr));
}

static void assert_set_fails(struct config *conf, const char *key,
                             const char *value, const char *expected) {
        assert_int_equal(set(conf, key, value), -1);
        assert_string_equal(errstr, expected);
}

/* Writes @content to a new temporary file. @path gets its name. */
static void write_tmp(const char *content, char *path, size_t path_size) {
        snprintf(path, path_size, "/tmp/test_config.XXXXXX");
        fixture_write_tmp(content, path);
}

/* @returns a malloc'd string of everything @conf's dump prints (or help
 * when @conf is NULL). */
static char *capture(const struct config *conf) {
        char *buf = NULL;
        size_t size = 0;
        FILE *fp = open_memstream(&buf, &size);

        assert_non_null(fp);
        if (conf)
                config_dump(conf, fp);
        else
                config_print_help(fp);
        fclose(fp);
        return buf;
}

static const char *kv_get(const struct config_kv *kvs, size_t cnt,
                          const char *key) {
        for (size_t i = 0; i < cnt; i++) {
                if (strcmp(kvs[i].key, key) == 0)
                        return kvs[i].value;
        }
        return NULL;
}

static const char *consumer_get(const struct config *conf, const char *key) {
        return kv_get(conf->kafka_consumer, conf->kafka_consumer_cnt, key);
}

static const char *producer_get(const struct config *conf, const char *key) {
        return kv_get(conf->kafka_producer, conf->kafka_producer_cnt, key);
}

static int setup(void **state) {
        *state = config_new();
        return *state ? 0 : -1;
}

static int teardown(void **state) {
        config_destroy(*state);
        return 0;
}

static void test_defaults(void **state) {
        struct config *conf = *state;

        assert_string_equal(conf->topic_requests, "email.requests");
        assert_string_equal(conf->topic_results, "email.results");
        assert_string_equal(conf->topic_deadletter, "email.deadletter");
        assert_string_equal(conf->worker_id, "");
        assert_string_equal(conf->smtp_url, "smtp://127.0.0.1:25");
        assert_int_equal(conf->smtp_starttls, CONFIG_TLS_REQUIRED);
        assert_string_equal(conf->smtp_username, "");
        assert_string_equal(conf->smtp_password, "");
        assert_string_equal(conf->smtp_password_file, "");
        assert_string_equal(conf->smtp_ca_file, "");
        assert_int_equal(conf->smtp_tls_verify, 1);
        assert_string_equal(conf->smtp_helo_name, "");
        assert_int_equal(conf->smtp_pipelining, 1);
        assert_int_equal(conf->smtp_sessions_max, 100);
        assert_int_equal(conf->smtp_session_max_messages, 1000);
        assert_int_equal(conf->smtp_session_idle_ms, 10000);
        assert_int_equal(conf->smtp_timeout_connect_ms, 30000);
        assert_int_equal(conf->smtp_timeout_command_ms, 60000);
        assert_int_equal(conf->smtp_timeout_data_ms, 300000);
        assert_int_equal(conf->smtp_relay_backoff_initial_ms, 1000);
        assert_int_equal(conf->smtp_relay_backoff_max_ms, 60000);
        assert_int_equal(conf->inflight_max, 1000);
        assert_int_equal(conf->inflight_resume_percent, 100);
        assert_int_equal(conf->retry_attempts_max, 5);
        assert_int_equal(conf->retry_backoff_initial_ms, 1000);
        assert_int_equal(conf->retry_backoff_max_ms, 60000);
        assert_int_equal(conf->retry_jitter_percent, 20);
        assert_int_equal(conf->request_max_bytes, 4194304);
        assert_int_equal(conf->request_max_recipients, 100);
        assert_string_equal(conf->message_id_domain, "");
        assert_int_equal(conf->commit_interval_ms, 1000);
        assert_int_equal(conf->rebalance_drain_timeout_ms, 10000);
        assert_int_equal(conf->shutdown_timeout_ms, 30000);
        assert_string_equal(conf->log_level, "info");
        assert_string_equal(consumer_get(conf, "bootstrap.servers"),
                            "127.0.0.1:9092");
        assert_string_equal(producer_get(conf, "bootstrap.servers"),
                            "127.0.0.1:9092");
        assert_string_equal(consumer_get(conf, "group.id"), "kafka-mailer");
        assert_null(producer_get(conf, "group.id"));
}

static void test_defaults_pass_finish(void **state) {
        struct config *conf = *state;

        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
}

/* The bounds of every int key, as specified. */
static const struct {
        const char *key;
        long min, max;
} int_keys[] = {
        {"smtp.sessions.max", 1, 20000},
        {"smtp.session.max.messages", 1, 1000000},
        {"smtp.session.idle.ms", 100, 3600000},
        {"smtp.timeout.connect.ms", 100, 600000},
        {"smtp.timeout.command.ms", 100, 900000},
        {"smtp.timeout.data.ms", 100, 3600000},
        {"smtp.relay.backoff.initial.ms", 10, 600000},
        {"smtp.relay.backoff.max.ms", 10, 3600000},
        {"inflight.max", 1, 100000},
        {"inflight.resume.percent", 0, 100},
        {"retry.attempts.max", 1, 100},
        {"retry.backoff.initial.ms", 1, 3600000},
        {"retry.backoff.max.ms", 1, 86400000},
        {"retry.jitter.percent", 0, 100},
        {"request.max.bytes", 1024, 104857600},
        {"request.max.recipients", 1, 10000},
        {"commit.interval.ms", 10, 600000},
        {"rebalance.drain.timeout.ms", 0, 600000},
        {"shutdown.timeout.ms", 0, 3600000},
};

static void test_int_bounds_of_every_int_key(void **state) {
        struct config *conf = *state;
        char value[32], expected[256];

        for (size_t i = 0; i < FIXTURE_LEN(int_keys); i++) {
                const char *key = int_keys[i].key;

                snprintf(value, sizeof(value), "%ld", int_keys[i].min);
                assert_int_equal(set(conf, key, value), 0);
                snprintf(value, sizeof(value), "%ld", int_keys[i].max);
                assert_int_equal(set(conf, key, value), 0);

                snprintf(value, sizeof(value), "%ld", int_keys[i].min - 1);
                snprintf(expected, sizeof(expected),
                         "-X: %s: %ld is below the minimum %ld", key,
                         int_keys[i].min - 1, int_keys[i].min);
                assert_set_fails(conf, key, value, expected);

                snprintf(value, sizeof(value), "%ld", int_keys[i].max + 1);
                snprintf(expected, sizeof(expected),
                         "-X: %s: %ld is above the maximum %ld", key,
                         int_keys[i].max + 1, int_keys[i].max);
                assert_set_fails(conf, key, value, expected);
        }
}

static void test_int_parsing(void **state) {
        struct config *conf = *state;

        assert_int_equal(set(conf, "smtp.sessions.max", "1"), 0);
        assert_int_equal(conf->smtp_sessions_max, 1);
        assert_int_equal(set(conf, "smtp.sessions.max", "20000"), 0);
        assert_int_equal(conf->smtp_sessions_max, 20000);
        assert_int_equal(set(conf, "smtp.sessions.max", "+7"), 0);
        assert_int_equal(conf->smtp_sessions_max, 7);
}

static void test_bool_parsing(void **state) {
        struct config *conf = *state;
        static const char *const yes[] = {"true", "1",    "yes",
                                          "on",   "TRUE", "On"};
        static const char *const no[] = {"false", "0",     "no",
                                         "off",   "FALSE", "Off"};

        for (size_t i = 0; i < FIXTURE_LEN(yes); i++) {
                assert_int_equal(set(conf, "smtp.tls.verify", no[i]), 0);
                assert_int_equal(conf->smtp_tls_verify, 0);
                assert_int_equal(set(conf, "smtp.tls.verify", yes[i]), 0);
                assert_int_equal(conf->smtp_tls_verify, 1);
        }
}

static void test_enum_parsing(void **state) {
        struct config *conf = *state;

        assert_int_equal(set(conf, "smtp.starttls", "opportunistic"), 0);
        assert_int_equal(conf->smtp_starttls, CONFIG_TLS_OPPORTUNISTIC);
        assert_int_equal(set(conf, "smtp.starttls", "off"), 0);
        assert_int_equal(conf->smtp_starttls, CONFIG_TLS_OFF);
        assert_int_equal(set(conf, "smtp.starttls", "required"), 0);
        assert_int_equal(conf->smtp_starttls, CONFIG_TLS_REQUIRED);

        assert_int_equal(set(conf, "log.level", "debug"), 0);
        assert_string_equal(conf->log_level, "debug");
        assert_int_equal(set(conf, "log.level", "error"), 0);
        assert_string_equal(conf->log_level, "error");
}

static void test_enum_error_truncates_safely(void **state) {
        struct config *conf = *state;
        char small[40];

        assert_int_equal(config_set(conf, "smtp.starttls", "maybe", "-X", small,
                                    sizeof(small)),
                         -1);
        assert_int_equal(strlen(small), sizeof(small) - 1);
        assert_int_equal(
                config_set(conf, "smtp.starttls", "maybe", "-X", small, 20),
                -1);
        assert_int_equal(strlen(small), 19);
}

static void test_string_set_and_replace(void **state) {
        struct config *conf = *state;

        assert_int_equal(set(conf, "topic.requests", "a"), 0);
        assert_int_equal(set(conf, "topic.requests", "b.c-d"), 0);
        assert_string_equal(conf->topic_requests, "b.c-d");
        assert_int_equal(set(conf, "smtp.helo.name", ""), 0);
        assert_string_equal(conf->smtp_helo_name, "");
        assert_int_equal(set(conf, "message.id.domain", "mail.example"), 0);
        assert_string_equal(conf->message_id_domain, "mail.example");
}

static void test_file_parsing(void **state) {
        struct config *conf = *state;
        char path[64];

        write_tmp("# a comment\n"
                  "   # an indented comment\n"
                  "\n"
                  "   \t\n"
                  "topic.requests=in\n"
                  "  topic.results \t=  \tout  \n"
                  "topic.deadletter=dead\r\n"
                  "message.id.domain=a=b#c\n"
                  "smtp.helo.name=\n"
                  "smtp.sessions.max = 7\n"
                  "kafka.client.id=km",
                  path, sizeof(path));
        assert_int_equal(config_load_file(conf, path, errstr, sizeof(errstr)),
                         0);
        assert_string_equal(conf->topic_requests, "in");
        assert_string_equal(conf->topic_results, "out");
        assert_string_equal(conf->topic_deadletter, "dead");
        assert_string_equal(conf->message_id_domain, "a=b#c");
        assert_string_equal(conf->smtp_helo_name, "");
        assert_int_equal(conf->smtp_sessions_max, 7);
        assert_string_equal(consumer_get(conf, "client.id"), "km");
        unlink(path);
}

/* file < env < -X: the caller applies the sources in that order and the
 * last config_set of a key wins. */
static void test_precedence_file_env_x(void **state) {
        struct config *conf = *state;
        char *envp[] = {"KAFKA_MAILER_SMTP_URL=smtp://env:25",
                        "KAFKA_MAILER_INFLIGHT_MAX=20",
                        "KAFKA_MAILER_KAFKA_CLIENT_ID=env", NULL};
        char path[64];

        write_tmp("smtp.url=smtp://file:25\ninflight.max=10\n"
                  "retry.attempts.max=3\nkafka.client.id=file\n",
                  path, sizeof(path));
        assert_int_equal(config_load_file(conf, path, errstr, sizeof(errstr)),
                         0);
        assert_int_equal(config_load_env(conf, envp, errstr, sizeof(errstr)),
                         0);
        assert_int_equal(set(conf, "inflight.max", "30"), 0);

        assert_string_equal(conf->smtp_url, "smtp://env:25");
        assert_int_equal(conf->inflight_max, 30);
        assert_int_equal(conf->retry_attempts_max, 3);
        assert_string_equal(consumer_get(conf, "client.id"), "env");
        assert_string_equal(producer_get(conf, "client.id"), "env");
        unlink(path);
}

static void test_kafka_routing(void **state) {
        struct config *conf = *state;
        size_t ccnt;

        assert_int_equal(set(conf, "kafka.bootstrap.servers", "k1:9092"), 0);
        assert_string_equal(consumer_get(conf, "bootstrap.servers"), "k1:9092");
        assert_string_equal(producer_get(conf, "bootstrap.servers"), "k1:9092");

        assert_int_equal(set(conf, "kafka.consumer.group.id", "g"), 0);
        assert_string_equal(consumer_get(conf, "group.id"), "g");
        assert_null(producer_get(conf, "group.id"));

        assert_int_equal(set(conf, "kafka.producer.linger.ms", "5"), 0);
        assert_string_equal(producer_get(conf, "linger.ms"), "5");
        assert_null(consumer_get(conf, "linger.ms"));

        /* Later values replace earlier ones, in whichever list they hit. */
        ccnt = conf->kafka_consumer_cnt;
        assert_int_equal(set(conf, "kafka.consumer.bootstrap.servers", "k2"),
                         0);
        assert_int_equal(conf->kafka_consumer_cnt, ccnt);
        assert_string_equal(consumer_get(conf, "bootstrap.servers"), "k2");
        assert_string_equal(producer_get(conf, "bootstrap.servers"), "k1:9092");
        assert_int_equal(set(conf, "kafka.bootstrap.servers", "k3"), 0);
        assert_string_equal(consumer_get(conf, "bootstrap.servers"), "k3");
        assert_string_equal(producer_get(conf, "bootstrap.servers"), "k3");
}

static void test_env_mapping(void **state) {
        struct config *conf = *state;
        /* The client-specific variable comes first: it still wins. */
        char *envp[] = {"HOME=/root",
                        "KAFKA_MAILER_KAFKA_CONSUMER_CLIENT_ID=c",
                        "KAFKA_MAILER_KAFKA_CLIENT_ID=both",
                        "KAFKA_MAILER_KAFKA_BOOTSTRAP_SERVERS=kafka:9092",
                        "KAFKA_MAILER_SMTP_STARTTLS=off",
                        "KAFKA_MAILER_SMTP_TLS_VERIFY=no",
                        "KAFKA_MAILER_SMTP_URL=smtps://relay:465",
                        "KAFKA_MAILER=ignored-not-the-prefix",
                        "KAFKA_MAILERX_Y=ignored",
                        NULL};

        assert_int_equal(config_load_env(conf, envp, errstr, sizeof(errstr)),
                         0);
        assert_string_equal(consumer_get(conf, "client.id"), "c");
        assert_string_equal(producer_get(conf, "client.id"), "both");
        assert_string_equal(consumer_get(conf, "bootstrap.servers"),
                            "kafka:9092");
        assert_string_equal(producer_get(conf, "bootstrap.servers"),
                            "kafka:9092");
        assert_int_equal(conf->smtp_starttls, CONFIG_TLS_OFF);
        assert_int_equal(conf->smtp_tls_verify, 0);
        assert_string_equal(conf->smtp_url, "smtps://relay:465");
}

static void test_password_and_password_file_exclusive(void **state) {
        struct config *conf = *state;
        char path[64];

        write_tmp("x\n", path, sizeof(path));
        assert_int_equal(set(conf, "smtp.password", SECRET_VALUE), 0);
        assert_int_equal(set(conf, "smtp.password.file", path), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_string_equal(errstr,
                            "smtp.password, smtp.password.file: set only one");
        unlink(path);
}

static void test_secrets_never_printed(void **state) {
        struct config *conf = *state;
        char *out;

        assert_int_equal(set(conf, "smtp.username", "mailer"), 0);
        assert_int_equal(set(conf, "smtp.password", SECRET_VALUE), 0);
        assert_int_equal(set(conf, "kafka.sasl.password", SECRET_VALUE), 0);
        assert_int_equal(
                set(conf, "kafka.producer.ssl.key.password", SECRET_VALUE), 0);
        assert_int_equal(
                set(conf, "kafka.sasl.oauthbearer.client.secret", SECRET_VALUE),
                0);
        assert_int_equal(set(conf, "kafka.sasl.username", "kuser"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);

        out = capture(conf);
        assert_null(strstr(out, SECRET_VALUE));
        assert_non_null(strstr(out, "\nsmtp.password=***\n"));
        assert_non_null(strstr(out, "\nkafka.consumer.sasl.password=***\n"));
        assert_non_null(strstr(out, "\nkafka.producer.sasl.password=***\n"));
        assert_non_null(strstr(out, "\nkafka.producer.ssl.key.password=***\n"));
        assert_non_null(strstr(
                out, "\nkafka.consumer.sasl.oauthbearer.client.secret=***\n"));
        assert_non_null(strstr(out, "\nkafka.consumer.sasl.username=kuser\n"));
        assert_non_null(strstr(out, "\nsmtp.username=mailer\n"));
        free(out);

        out = capture(NULL);
        assert_null(strstr(out, SECRET_VALUE));
        assert_non_null(strstr(out, "  smtp.password (secret string)\n"));
        free(out);

        /* Errors about the secret keys do not carry their values. */
        assert_int_equal(set(conf, "smtp.password.file", "/nonexistent"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_null(strstr(errstr, SECRET_VALUE));
        assert_int_equal(set(conf, "smpt.password", SECRET_VALUE), -1);
        assert_null(strstr(errstr, SECRET_VALUE));
        assert_int_equal(set(conf, "smtp.url",
                             "smtp://mailer:" SECRET_VALUE "@relay:25"),
                         0);
        assert_int_equal(set(conf, "smtp.password.file", ""), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_null(strstr(errstr, SECRET_VALUE));
        assert_int_equal(set(conf, "smtp.url",
                             "http://mailer:" SECRET_VALUE "@relay:25"),
                         0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_null(strstr(errstr, SECRET_VALUE));
}

static void test_empty_password_dumps_empty(void **state) {
        struct config *conf = *state;
        char *out = capture(conf);

        assert_non_null(strstr(out, "\nsmtp.password=\n"));
        assert_non_null(strstr(out, "\nsmtp.starttls=required\n"));
        assert_non_null(strstr(out, "\nsmtp.tls.verify=true\n"));
        assert_non_null(strstr(out, "\ninflight.max=1000\n"));
        assert_non_null(
                strstr(out, "\nkafka.consumer.group.id=kafka-mailer\n"));
        free(out);
}

/* Checks that config_finish() fails with @expected, or succeeds when
 * @expected is NULL. */
static void assert_finish(struct config *conf, const char *expected) {
        if (expected == NULL) {
                assert_int_equal(config_finish(conf, errstr, sizeof(errstr)),
                                 0);
                return;
        }
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_string_equal(errstr, expected);
}

static void test_worker_id_default_and_explicit(void **state) {
        struct config *conf = *state;
        char host[256], expected[320];

        assert_int_equal(gethostname(host, sizeof(host)), 0);
        host[sizeof(host) - 1] = '\0';
        snprintf(expected, sizeof(expected), "%s-%ld", host, (long)getpid());
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
        assert_string_equal(conf->worker_id, expected);

        assert_int_equal(set(conf, "worker.id", "w-1"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
        assert_string_equal(conf->worker_id, "w-1");
}

static void test_help_lists_every_key(void **state) {
        char *out = capture(NULL);
        char needle[128];

        (void)state;
        for (size_t i = 0; i < config_key_count(); i++) {
                snprintf(needle, sizeof(needle), "  %s (", config_key_name(i));
                assert_non_null(strstr(out, needle));
        }
        assert_non_null(strstr(out,
                               "  smtp.sessions.max (int, default \"100\", "
                               "1..20000)\n"));
        assert_non_null(strstr(out, "kafka.consumer.X"));
        free(out);
}

static void test_dump_lists_every_key(void **state) {
        struct config *conf = *state;
        char *out = capture(conf);
        char needle[128];

        for (size_t i = 0; i < config_key_count(); i++) {
                snprintf(needle, sizeof(needle), "%s=", config_key_name(i));
                assert_non_null(strstr(out, needle));
        }
        free(out);
}

/* docs/configuration.md names every key as `key`: the doc cannot drift. */
static void test_doc_names_every_key(void **state) {
        const char *fixtures = getenv("KM_FIXTURES");
        char path[4096], needle[128];
        char *doc = NULL;
        size_t size = 0;
        FILE *fp;
        long len;

        (void)state;
        assert_non_null(fixtures);
        snprintf(path, sizeof(path), "%s/../../docs/configuration.md",
                 fixtures);
        fp = fopen(path, "r");
        assert_non_null(fp);
        assert_int_equal(fseek(fp, 0, SEEK_END), 0);
        len = ftell(fp);
        assert_true(len > 0);
        rewind(fp);
        size = (size_t)len;
        doc = malloc(size + 1);
        assert_non_null(doc);
        assert_int_equal(fread(doc, 1, size, fp), size);
        doc[size] = '\0';
        fclose(fp);

        for (size_t i = 0; i < config_key_count(); i++) {
                snprintf(needle, sizeof(needle), "`%s`", config_key_name(i));
                if (!strstr(doc, needle))
                        fail_msg("%s does not document %s", path, needle);
        }
        free(doc);
}

static void test_group_protocol_default_and_choices(void **state) {
        struct config *conf = *state;

        assert_int_equal(conf->group_protocol, CONFIG_GROUP_CLASSIC);
        assert_int_equal(set(conf, "group.protocol", "consumer"), 0);
        assert_int_equal(conf->group_protocol, CONFIG_GROUP_CONSUMER);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
}

/* Each classic-only setting is refused under KIP-848 with the reason, and is
 * fine under classic; group.remote.assignor the other way round. */
static void test_settings_of_the_other_group_protocol_refused(void **state) {
        static const char *const classic_only[] = {
                "kafka.partition.assignment.strategy",
                "kafka.consumer.session.timeout.ms",
                "kafka.heartbeat.interval.ms", "kafka.group.protocol.type"};
        struct config *conf;

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(classic_only); i++) {
                conf = config_new();
                assert_non_null(conf);
                assert_int_equal(set(conf, classic_only[i], "1000"), 0);
                assert_int_equal(config_finish(conf, errstr, sizeof(errstr)),
                                 0);
                assert_int_equal(set(conf, "group.protocol", "consumer"), 0);
                assert_int_equal(config_finish(conf, errstr, sizeof(errstr)),
                                 -1);
                assert_non_null(strstr(errstr, "not allowed with "
                                               "group.protocol=consumer: "));
                config_destroy(conf);
        }
        conf = config_new();
        assert_non_null(conf);
        assert_int_equal(set(conf, "kafka.consumer.session.timeout.ms", "6000"),
                         0);
        assert_int_equal(set(conf, "group.protocol", "consumer"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_string_equal(
                errstr,
                "kafka.session.timeout.ms: not allowed with "
                "group.protocol=consumer: under group.protocol=consumer "
                "the broker sets it (group.consumer.session.timeout.ms)");
        config_destroy(conf);

        conf = config_new();
        assert_non_null(conf);
        assert_int_equal(set(conf, "kafka.group.remote.assignor", "range"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_non_null(strstr(errstr,
                               "kafka.group.remote.assignor: not allowed "
                               "with group.protocol=classic: "));
        assert_int_equal(set(conf, "group.protocol", "consumer"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
        config_destroy(conf);
}

/* A config_new() that must succeed, for the table cases (each starts from
 * the defaults). */
static struct config *config_fresh(void) {
        struct config *conf = config_new();

        assert_non_null(conf);
        return conf;
}

/* The file of a table case: a new temporary file holding @content, or
 * @missing (a path that does not exist) when @content is NULL. @path gets its
 * name. */
static void case_file(const char *content, const char *missing, char *path,
                      size_t path_size) {
        if (content != NULL)
                write_tmp(content, path, path_size);
        else
                snprintf(path, path_size, "%s", missing);
}

/* One config_set() that must fail with @expected, from @source ("-X" when
 * NULL), and leave the configuration as it was. */
struct set_fails_case {
        const char *name;
        const char *key;
        const char *value;
        const char *source;
        const char *expected;
};

static const struct set_fails_case set_fails_cases[] = {
        /* int parsing */
        {"int_0_below_minimum", "smtp.sessions.max", "0", NULL,
         "-X: smtp.sessions.max: 0 is below the minimum 1"},
        {"int_negative_below_minimum", "smtp.sessions.max", "-5", NULL,
         "-X: smtp.sessions.max: -5 is below the minimum 1"},
        {"int_above_maximum", "smtp.sessions.max", "20001", NULL,
         "-X: smtp.sessions.max: 20001 is above the maximum 20000"},
        {"int_word_not_an_integer", "smtp.sessions.max", "many", NULL,
         "-X: smtp.sessions.max: \"many\" is not an integer"},
        {"int_trailing_letters_not_an_integer", "smtp.sessions.max", "12abc",
         NULL, "-X: smtp.sessions.max: \"12abc\" is not an integer"},
        {"int_empty_not_an_integer", "smtp.sessions.max", "", NULL,
         "-X: smtp.sessions.max: \"\" is not an integer"},
        {"int_leading_space_not_an_integer", "smtp.sessions.max", " 5", NULL,
         "-X: smtp.sessions.max: \" 5\" is not an integer"},
        {"int_hex_not_an_integer", "smtp.sessions.max", "0x10", NULL,
         "-X: smtp.sessions.max: \"0x10\" is not an integer"},
        {"int_lone_minus_not_an_integer", "smtp.sessions.max", "-", NULL,
         "-X: smtp.sessions.max: \"-\" is not an integer"},
        {"int_huge_out_of_range", "smtp.sessions.max", "99999999999999999999",
         NULL,
         "-X: smtp.sessions.max: 99999999999999999999 is out of range "
         "(1..20000)"},
        {"int_huge_negative_out_of_range", "smtp.sessions.max",
         "-99999999999999999999", NULL,
         "-X: smtp.sessions.max: -99999999999999999999 is out of range "
         "(1..20000)"},
        /* above INT_MAX but within long: a bounds error, not a wrap */
        {"int_above_int_max_is_a_bounds_error", "request.max.bytes",
         "4294967297", NULL,
         "-X: request.max.bytes: 4294967297 is above the maximum 104857600"},
        /* bool parsing */
        {"bool_maybe", "smtp.pipelining", "maybe", NULL,
         "-X: smtp.pipelining: \"maybe\" is not a boolean (true, false, 1, "
         "0, yes, no, on, off)"},
        {"bool_empty", "smtp.pipelining", "", NULL,
         "-X: smtp.pipelining: \"\" is not a boolean (true, false, 1, 0, yes, "
         "no, on, off)"},
        {"bool_2", "smtp.pipelining", "2", NULL,
         "-X: smtp.pipelining: \"2\" is not a boolean (true, false, 1, 0, "
         "yes, no, on, off)"},
        /* enum parsing: the error names the source */
        {"enum_error_names_env_source", "smtp.starttls", "maybe",
         "env KAFKA_MAILER_SMTP_STARTTLS",
         "env KAFKA_MAILER_SMTP_STARTTLS: smtp.starttls: \"maybe\" is not one "
         "of required, opportunistic, off"},
        {"enum_is_case_sensitive", "smtp.starttls", "Required", NULL,
         "-X: smtp.starttls: \"Required\" is not one of required, "
         "opportunistic, off"},
        {"log_level_unknown", "log.level", "trace", NULL,
         "-X: log.level: \"trace\" is not one of error, warn, info, debug"},
        {"group_protocol_unknown", "group.protocol", "eager", NULL,
         "-X: group.protocol: \"eager\" is not one of classic, consumer"},
        /* keys */
        {"unknown_key_names_source", "smpt.url", "x", NULL,
         "-X: unknown key \"smpt.url\""},
        {"kafka_prefix_without_property", "kafka.", "x", NULL,
         "-X: kafka.: no librdkafka property name after the prefix"},
        {"kafka_consumer_prefix_without_property", "kafka.consumer.", "x", NULL,
         "-X: kafka.consumer.: no librdkafka property name after the prefix"},
        {"kafka_producer_without_property", "kafka.producer", "x", NULL,
         "-X: kafka.producer: no librdkafka property name after the prefix"},
        {"kafka_alone_unknown", "kafka", "x", NULL,
         "-X: unknown key \"kafka\""},
        /* dkim.key.<name>.* */
        {"dkim_key_name_upper_case", "dkim.key.Main.domain", "shop.example",
         NULL,
         "-X: dkim.key.Main.domain: expected dkim.key.<name>.<setting> with a "
         "name of 1 to 32 characters a-z, 0-9 and '-'"},
        {"dkim_key_name_too_long",
         "dkim.key.a23456789012345678901234567890123.file", "/k.pem", NULL,
         "-X: dkim.key.a23456789012345678901234567890123.file: expected "
         "dkim.key.<name>.<setting> with a name of 1 to 32 characters a-z, 0-9 "
         "and '-'"},
        {"dkim_key_without_setting", "dkim.key.main", "x", NULL,
         "-X: dkim.key.main: expected dkim.key.<name>.<setting> with a name of "
         "1 to 32 characters a-z, 0-9 and '-'"},
        {"dkim_key_unknown_setting", "dkim.key.main.algorithm", "rsa", NULL,
         "-X: unknown key \"dkim.key.main.algorithm\""},
        {"dkim_key_relay_setting", "dkim.key.main.url", "smtp://x", NULL,
         "-X: unknown key \"dkim.key.main.url\""},
        {"dkim_key_empty_value", "dkim.key.main.selector", "",
         "env KAFKA_MAILER_DKIM_KEY_MAIN_SELECTOR",
         "env KAFKA_MAILER_DKIM_KEY_MAIN_SELECTOR: dkim.key.main.selector: "
         "must not be empty"},
        {"dkim_alone_unknown", "dkim.key", "x", NULL,
         "-X: unknown key \"dkim.key\""},
};

static void test_set_fails_case(void **state) {
        const struct set_fails_case *c = *state;
        struct config *conf = config_fresh();
        const char *source = c->source != NULL ? c->source : "-X";
        char *before = capture(conf);
        char *after;

        errstr[0] = '\0';
        assert_int_equal(config_set(conf, c->key, c->value, source, errstr,
                                    sizeof(errstr)),
                         -1);
        assert_string_equal(errstr, c->expected);
        /* A failed set leaves every value as it was. */
        after = capture(conf);
        assert_string_equal(after, before);
        free(after);
        free(before);
        config_destroy(conf);
}

/* Settings (key, value pairs) after which config_finish() fails with
 * @expected, or succeeds when it is NULL. */
struct finish_case {
        const char *name;
        const char *settings[3][2];
        const char *expected;
};

static const struct finish_case finish_cases[] = {
        {"relay_backoff_initial_above_max",
         {{"smtp.relay.backoff.initial.ms", "5000"},
          {"smtp.relay.backoff.max.ms", "4000"}},
         "smtp.relay.backoff.initial.ms: 5000 is above "
         "smtp.relay.backoff.max.ms 4000"},
        {"relay_backoff_initial_equal_to_max",
         {{"smtp.relay.backoff.initial.ms", "5000"},
          {"smtp.relay.backoff.max.ms", "5000"}},
         NULL},
        {"retry_backoff_initial_above_max",
         {{"retry.backoff.initial.ms", "61000"}},
         "retry.backoff.initial.ms: 61000 is above retry.backoff.max.ms "
         "60000"},
        {"helo_name_with_a_space",
         {{"smtp.helo.name", "mail host"}},
         "smtp.helo.name: only printable ASCII without spaces"},
        {"helo_name_plain", {{"smtp.helo.name", "mailer-1.example.com"}}, NULL},
        {"url_http_scheme",
         {{"smtp.url", "http://relay:25"}},
         "smtp.url: \"http://relay:25\" must start with smtp:// or smtps://"},
        {"url_without_scheme",
         {{"smtp.url", "relay:25"}},
         "smtp.url: \"relay:25\" must start with smtp:// or smtps://"},
        {"url_without_host",
         {{"smtp.url", "smtp://"}},
         "smtp.url: \"smtp://\" has no host"},
        {"url_user_and_password",
         {{"smtp.url", "smtp://u:p@relay:25"}},
         "smtp.url: has credentials in it: put credentials in "
         "smtp.username/smtp.password"},
        {"url_user",
         {{"smtp.url", "smtps://u@relay"}},
         "smtp.url: has credentials in it: put credentials in "
         "smtp.username/smtp.password"},
        /* an '@' after the authority is not a credential */
        {"url_at_in_path_is_not_a_credential",
         {{"smtp.url", "smtp://relay:25/x@y"}},
         NULL},
        /* implicit TLS with STARTTLS off is fine */
        {"url_smtps_with_starttls_off",
         {{"smtp.url", "smtps://relay:465"}, {"smtp.starttls", "off"}},
         NULL},
        {"username_without_password",
         {{"smtp.username", "mailer"}},
         "smtp.username: set without smtp.password or smtp.password.file"},
        {"username_with_password",
         {{"smtp.username", "mailer"}, {"smtp.password", "pw"}},
         NULL},
        {"empty_topic",
         {{"topic.results", ""}},
         "topic.results: must not be empty"},
        {"dkim_key_complete",
         {{"dkim.key.main.domain", "shop.example"},
          {"dkim.key.main.selector", "s2026"},
          {"dkim.key.main.file", "/etc/kafka-mailer/dkim.pem"}},
         NULL},
        {"dkim_key_without_domain",
         {{"dkim.key.main.selector", "s2026"},
          {"dkim.key.main.file", "/etc/kafka-mailer/dkim.pem"}},
         "dkim.key.main.domain: not set (a DKIM key needs domain, selector and "
         "file)"},
        {"dkim_key_without_selector",
         {{"dkim.key.main.domain", "shop.example"},
          {"dkim.key.main.file", "/etc/kafka-mailer/dkim.pem"}},
         "dkim.key.main.selector: not set (a DKIM key needs domain, selector "
         "and file)"},
        {"dkim_key_without_file",
         {{"dkim.key.ed.domain", "shop.example"},
          {"dkim.key.ed.selector", "s2026"}},
         "dkim.key.ed.file: not set (a DKIM key needs domain, selector and "
         "file)"},
        {"dkim_headers_empty",
         {{"dkim.headers", ""}},
         "dkim.headers: must not be empty (from at least)"},
        {"kafka_group_protocol_refused",
         {{"kafka.consumer.group.protocol", "consumer"}},
         "kafka.group.protocol: set group.protocol instead (the worker picks "
         "the settings that go with it)"},
};

static void test_finish_case(void **state) {
        const struct finish_case *c = *state;
        struct config *conf = config_fresh();

        for (size_t i = 0; i < FIXTURE_LEN(c->settings); i++) {
                if (c->settings[i][0] != NULL)
                        assert_int_equal(
                                set(conf, c->settings[i][0], c->settings[i][1]),
                                0);
        }
        assert_finish(conf, c->expected);
        config_destroy(conf);
}

/* A config file with @content (or the missing file @path when @content is
 * NULL) that config_load_file() refuses with "<path>@expected". */
struct file_error_case {
        const char *name;
        const char *content;
        const char *path;
        const char *expected;
};

static const struct file_error_case file_error_cases[] = {
        {"unknown_key_names_path_and_line",
         "# settings\n\nsmtp.url = smtp://a:25\nsmpt.url=x\n", NULL,
         ":4: unknown key \"smpt.url\""},
        {"bad_value_names_path_and_line",
         "topic.requests=in\n\n# x\nsmtp.sessions.max=0\n", NULL,
         ":4: smtp.sessions.max: 0 is below the minimum 1"},
        {"line_without_equals",
         "topic.requests=in\nsmtp.password " SECRET_VALUE "\n", NULL,
         ":2: expected key=value"},
        {"no_key_before_equals", " = value\n", NULL, ":1: no key before '='"},
        {"missing_file", NULL, "/nonexistent/km.properties",
         ": cannot open: No such file or directory"},
};

static void test_file_error_case(void **state) {
        const struct file_error_case *c = *state;
        struct config *conf = config_fresh();
        char path[64], expected[256];

        case_file(c->content, c->path, path, sizeof(path));
        assert_int_equal(config_load_file(conf, path, errstr, sizeof(errstr)),
                         -1);
        snprintf(expected, sizeof(expected), "%s%s", path, c->expected);
        assert_string_equal(errstr, expected);
        if (c->content != NULL)
                unlink(path);
        config_destroy(conf);
}

/* An environment that config_load_env() refuses: the error is @expected,
 * or (when @part) contains it. */
struct env_error_case {
        const char *name;
        const char *var;
        int part;
        const char *expected;
};

static const struct env_error_case env_error_cases[] = {
        {"unknown_key", "KAFKA_MAILER_SMTP_URLL=smtp://x", 0,
         "env KAFKA_MAILER_SMTP_URLL: unknown key \"smtp.urll\""},
        {"lower_case_name", "KAFKA_MAILER_smtp_url=x", 1,
         "env KAFKA_MAILER_smtp_url: "},
        {"empty_name", "KAFKA_MAILER_=x", 1, "env KAFKA_MAILER_: "},
        {"bad_value", "KAFKA_MAILER_INFLIGHT_MAX=0", 0,
         "env KAFKA_MAILER_INFLIGHT_MAX: inflight.max: 0 is below the minimum "
         "1"},
};

static void test_env_error_case(void **state) {
        const struct env_error_case *c = *state;
        struct config *conf = config_fresh();
        char var[128];
        char *envp[] = {"PATH=/bin", var, NULL};

        snprintf(var, sizeof(var), "%s", c->var);
        assert_int_equal(config_load_env(conf, envp, errstr, sizeof(errstr)),
                         -1);
        if (c->part)
                assert_non_null(strstr(errstr, c->expected));
        else
                assert_string_equal(errstr, c->expected);
        config_destroy(conf);
}

/* smtp.password.file, or the secret file setting @setting (a kafka.* one),
 * (with smtp.username when @username) holding @content, or the missing file
 * @path when @content is NULL: config_finish() reads SECRET_VALUE from it,
 * or fails with @before "<path>" @after when @before is not NULL. */
struct password_file_case {
        const char *name;
        const char *content;
        const char *path;
        const char *username;
        const char *before;
        const char *after;
        const char *setting;
};

static const struct password_file_case password_file_cases[] = {
        {"first_line", SECRET_VALUE "\r\nsecond line\n", NULL, "mailer", NULL,
         NULL, NULL},
        {"without_newline", SECRET_VALUE, NULL, NULL, NULL, NULL, NULL},
        {"missing", NULL, "/nonexistent/pw", NULL,
         "smtp.password.file: cannot open \"", "\": No such file or directory",
         NULL},
        {"empty", "", NULL, NULL, "smtp.password.file: \"", "\" is empty",
         NULL},
        {"first_line_empty", "\nsecond\n", NULL, NULL, "smtp.password.file: \"",
         "\": first line is empty", NULL},
        {"kafka_sasl_password", SECRET_VALUE "\nsecond line\n", NULL, NULL,
         NULL, NULL, "kafka.sasl.password.file"},
        {"kafka_consumer_ssl_key_password", SECRET_VALUE, NULL, NULL, NULL,
         NULL, "kafka.consumer.ssl.key.password.file"},
        {"kafka_producer_oauthbearer_secret", SECRET_VALUE "\r\n", NULL, NULL,
         NULL, NULL, "kafka.producer.sasl.oauthbearer.client.secret.file"},
        {"kafka_missing", NULL, "/nonexistent/pw", NULL,
         "kafka.consumer.sasl.password.file: cannot open \"",
         "\": No such file or directory", "kafka.sasl.password.file"},
        {"kafka_empty", "", NULL, NULL,
         "kafka.producer.ssl.keystore.password.file: \"", "\" is empty",
         "kafka.producer.ssl.keystore.password.file"},
};

/* @returns the value of librdkafka property @key in @kvs, or NULL. */
static const char *kv_value(const struct config_kv *kvs, size_t cnt,
                            const char *key) {
        for (size_t i = 0; i < cnt; i++)
                if (strcmp(kvs[i].key, key) == 0)
                        return kvs[i].value;
        return NULL;
}

/* A kafka.* secret file was read into the lists of the clients it names,
 * and --dump-config shows its path, never the secret. */
static void check_kafka_secret(struct config *conf, const char *setting,
                               const char *path) {
        const char *prop = setting + strlen("kafka.");
        int consumer = 1, producer = 1;
        char key[128], line[256];
        char *dump;

        if (strncmp(prop, "consumer.", strlen("consumer.")) == 0) {
                prop += strlen("consumer.");
                producer = 0;
        } else if (strncmp(prop, "producer.", strlen("producer.")) == 0) {
                prop += strlen("producer.");
                consumer = 0;
        }
        snprintf(key, sizeof(key), "%.*s",
                 (int)(strlen(prop) - strlen(".file")), prop);
        if (consumer)
                assert_string_equal(kv_value(conf->kafka_consumer,
                                             conf->kafka_consumer_cnt, key),
                                    SECRET_VALUE);
        else
                assert_null(kv_value(conf->kafka_consumer,
                                     conf->kafka_consumer_cnt, key));
        if (producer)
                assert_string_equal(kv_value(conf->kafka_producer,
                                             conf->kafka_producer_cnt, key),
                                    SECRET_VALUE);
        else
                assert_null(kv_value(conf->kafka_producer,
                                     conf->kafka_producer_cnt, key));
        dump = capture(conf);
        assert_null(strstr(dump, SECRET_VALUE));
        snprintf(line, sizeof(line), "kafka.%s.%s.file=%s\n",
                 consumer ? "consumer" : "producer", key, path);
        assert_non_null(strstr(dump, line));
        free(dump);
}

static void test_password_file_case(void **state) {
        const struct password_file_case *c = *state;
        struct config *conf = config_fresh();
        char path[64], expected[256];

        case_file(c->content, c->path, path, sizeof(path));
        if (c->username != NULL)
                assert_int_equal(set(conf, "smtp.username", c->username), 0);
        assert_int_equal(
                set(conf, c->setting ? c->setting : "smtp.password.file", path),
                0);
        if (c->before == NULL) {
                assert_int_equal(config_finish(conf, errstr, sizeof(errstr)),
                                 0);
                if (c->setting)
                        check_kafka_secret(conf, c->setting, path);
                else
                        assert_string_equal(conf->smtp_password, SECRET_VALUE);
        } else {
                snprintf(expected, sizeof(expected), "%s%s%s", c->before, path,
                         c->after);
                assert_finish(conf, expected);
        }
        if (c->content != NULL)
                unlink(path);
        config_destroy(conf);
}

static void test_dkim_keys_by_name_from_every_source(void **state) {
        struct config *conf = *state;
        char *const envp[] = {
                "KAFKA_MAILER_DKIM_KEY_RSA_FILE=/keys/rsa.pem",
                "KAFKA_MAILER_DKIM_HEADERS=from:to:subject",
                NULL,
        };
        char path[64];
        char *dump;

        assert_int_equal(conf->dkim_key_cnt, 0);
        assert_string_equal(conf->dkim_headers,
                            "from:to:cc:subject:date:message-id:reply-to:"
                            "in-reply-to:references:mime-version:content-type:"
                            "content-transfer-encoding:sender:list-unsubscribe:"
                            "list-unsubscribe-post");
        write_tmp("dkim.key.rsa.domain = Shop.Example\n"
                  "dkim.key.rsa.selector = r2026\n"
                  "dkim.key.ed-1.domain = shop.example\n"
                  "dkim.key.ed-1.selector = e2026\n"
                  "dkim.key.ed-1.file = /keys/ed.pem\n",
                  path, sizeof(path));
        assert_int_equal(config_load_file(conf, path, errstr, sizeof(errstr)),
                         0);
        unlink(path);
        assert_int_equal(config_load_env(conf, envp, errstr, sizeof(errstr)),
                         0);
        assert_int_equal(set(conf, "dkim.key.ed-1.headers", "from:subject"), 0);
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);

        assert_int_equal(conf->dkim_key_cnt, 2);
        assert_string_equal(conf->dkim_keys[0].name, "rsa");
        assert_string_equal(conf->dkim_keys[0].domain, "Shop.Example");
        assert_string_equal(conf->dkim_keys[0].selector, "r2026");
        assert_string_equal(conf->dkim_keys[0].file, "/keys/rsa.pem");
        assert_string_equal(conf->dkim_keys[0].headers, "");
        assert_string_equal(conf->dkim_keys[1].name, "ed-1");
        assert_string_equal(conf->dkim_keys[1].file, "/keys/ed.pem");
        assert_string_equal(conf->dkim_keys[1].headers, "from:subject");
        assert_string_equal(conf->dkim_headers, "from:to:subject");

        dump = capture(conf);
        assert_non_null(strstr(dump, "\ndkim.headers=from:to:subject\n"));
        assert_non_null(strstr(dump, "\ndkim.key.rsa.file=/keys/rsa.pem\n"));
        assert_non_null(strstr(dump, "\ndkim.key.ed-1.selector=e2026\n"));
        free(dump);

        /* finishing again builds the same keys */
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), 0);
        assert_int_equal(conf->dkim_key_cnt, 2);
}

static void test_more_than_the_most_dkim_keys_refused(void **state) {
        struct config *conf = *state;
        char key[64];

        for (int i = 0; i <= CONFIG_DKIM_KEYS_MAX; i++) {
                snprintf(key, sizeof(key), "dkim.key.k%d.domain", i);
                assert_int_equal(set(conf, key, "shop.example"), 0);
        }
        assert_int_equal(config_finish(conf, errstr, sizeof(errstr)), -1);
        assert_string_equal(errstr, "dkim.key.k16: more than 16 DKIM keys");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_defaults),
                T(test_defaults_pass_finish),
                T(test_int_bounds_of_every_int_key),
                T(test_int_parsing),
                T(test_bool_parsing),
                T(test_enum_parsing),
                T(test_enum_error_truncates_safely),
                T(test_string_set_and_replace),
                T(test_file_parsing),
                T(test_precedence_file_env_x),
                T(test_kafka_routing),
                T(test_env_mapping),
                T(test_password_and_password_file_exclusive),
                T(test_secrets_never_printed),
                T(test_empty_password_dumps_empty),
                T(test_worker_id_default_and_explicit),
                T(test_help_lists_every_key),
                T(test_dump_lists_every_key),
                T(test_doc_names_every_key),
                T(test_group_protocol_default_and_choices),
                T(test_settings_of_the_other_group_protocol_refused),
                T(test_dkim_keys_by_name_from_every_source),
                T(test_more_than_the_most_dkim_keys_refused),
        };

        const struct fixture_cases sets[] = {
                {"set_fails", test_set_fails_case, set_fails_cases,
                 sizeof(set_fails_cases[0]), FIXTURE_LEN(set_fails_cases)},
                {"finish", test_finish_case, finish_cases,
                 sizeof(finish_cases[0]), FIXTURE_LEN(finish_cases)},
                {"file_error", test_file_error_case, file_error_cases,
                 sizeof(file_error_cases[0]), FIXTURE_LEN(file_error_cases)},
                {"env_error", test_env_error_case, env_error_cases,
                 sizeof(env_error_cases[0]), FIXTURE_LEN(env_error_cases)},
                {"password_file", test_password_file_case, password_file_cases,
                 sizeof(password_file_cases[0]),
                 FIXTURE_LEN(password_file_cases)},
        };

        return fixture_run_group("config", tests, FIXTURE_LEN(tests), sets,
                                 FIXTURE_LEN(sets));
}
