#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kconf.h"

static const char *get(rd_kafka_conf_t *kc, const char *key, char *buf,
                       size_t size) {
        if (rd_kafka_conf_get(kc, key, buf, &size) != RD_KAFKA_CONF_OK)
                return NULL;
        return buf;
}

static void test_set_sets_the_property(void **state) {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char errstr[256] = "";
        char v[64];

        (void)state;
        assert_int_equal(kconf_set(kc, "kafka.consumer", "client.id", "w1",
                                   errstr, sizeof(errstr)),
                         0);
        assert_string_equal(get(kc, "client.id", v, sizeof(v)), "w1");
        assert_string_equal(errstr, "");
        rd_kafka_conf_destroy(kc);
}

static void test_an_error_names_scope_key_value_and_reason(void **state) {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char errstr[256];

        (void)state;
        assert_int_equal(kconf_set(kc, "kafka.producer", "no.such.key", "1",
                                   errstr, sizeof(errstr)),
                         -1);
        assert_true(strncmp(errstr, "kafka.producer.no.such.key=1: ", 30) == 0);
        assert_true(strlen(errstr) > 30); /* librdkafka's reason */
        assert_int_equal(kconf_set(kc, "kafka.consumer", "linger.ms", "soon",
                                   errstr, sizeof(errstr)),
                         -1);
        assert_true(strncmp(errstr, "kafka.consumer.linger.ms=soon: ", 31) ==
                    0);
        rd_kafka_conf_destroy(kc);
}

static void test_an_error_never_shows_a_secret(void **state) {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char errstr[256];

        (void)state;
        assert_int_equal(kconf_set(kc, "kafka.consumer", "sasl.password.x",
                                   "hunter2", errstr, sizeof(errstr)),
                         -1);
        assert_null(strstr(errstr, "hunter2"));
        assert_true(strncmp(errstr,
                            "kafka.consumer.sasl.password.x=***: ", 36) == 0);
        rd_kafka_conf_destroy(kc);
}

static void test_a_table_is_set_in_order_until_a_failure(void **state) {
        static const char *const table[][2] = {
                {"client.id", "a"},
                {"client.id", "b"},
                {"bad.key", "x"},
                {"linger.ms", "7"},
        };
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char errstr[256];
        char v[64];

        (void)state;
        assert_int_equal(kconf_set_table(kc, "kafka.producer", table, 2, errstr,
                                         sizeof(errstr)),
                         0);
        assert_string_equal(get(kc, "client.id", v, sizeof(v)), "b");
        assert_int_equal(kconf_set_table(kc, "kafka.producer", table, 4, errstr,
                                         sizeof(errstr)),
                         -1);
        assert_true(strncmp(errstr, "kafka.producer.bad.key=x: ", 26) == 0);
        assert_string_not_equal(get(kc, "linger.ms", v, sizeof(v)), "7");
        rd_kafka_conf_destroy(kc);
}

static int takes_all_but_client_id(const char *key) {
        return strcmp(key, "client.id") != 0;
}

static void test_user_pairs_override_and_can_be_filtered(void **state) {
        struct config_kv kvs[] = {
                {"client.id", "user", NULL},
                {"linger.ms", "9", NULL},
        };
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char errstr[256];
        char v[64];

        (void)state;
        assert_int_equal(kconf_set(kc, "kafka.producer", "client.id", "ours",
                                   errstr, sizeof(errstr)),
                         0);
        assert_int_equal(kconf_set_kvs(kc, "kafka.producer", kvs, 2,
                                       takes_all_but_client_id, errstr,
                                       sizeof(errstr)),
                         0);
        assert_string_equal(get(kc, "client.id", v, sizeof(v)), "ours");
        assert_string_equal(get(kc, "linger.ms", v, sizeof(v)), "9");
        assert_int_equal(kconf_set_kvs(kc, "kafka.producer", kvs, 2, NULL,
                                       errstr, sizeof(errstr)),
                         0);
        assert_string_equal(get(kc, "client.id", v, sizeof(v)), "user");
        rd_kafka_conf_destroy(kc);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_set_sets_the_property),
                cmocka_unit_test(
                        test_an_error_names_scope_key_value_and_reason),
                cmocka_unit_test(test_an_error_never_shows_a_secret),
                cmocka_unit_test(test_a_table_is_set_in_order_until_a_failure),
                cmocka_unit_test(test_user_pairs_override_and_can_be_filtered),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
