/* kstatus: the worker's readiness from librdkafka's errors and its probe;
 * kcause: the classification of librdkafka's errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "kstatus.h"

/* One librdkafka error and the cause it stands for. */
struct cause_case {
        const char *name;
        rd_kafka_resp_err_t err;
        enum kcause cause;
};

static const struct cause_case cause_cases[] = {
        {"local_authentication", RD_KAFKA_RESP_ERR__AUTHENTICATION,
         KCAUSE_AUTHENTICATION},
        {"sasl_authentication_failed",
         RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED, KCAUSE_AUTHENTICATION},
        {"unsupported_sasl_mechanism",
         RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM, KCAUSE_AUTHENTICATION},
        {"illegal_sasl_state", RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE,
         KCAUSE_AUTHENTICATION},
        {"ssl", RD_KAFKA_RESP_ERR__SSL, KCAUSE_TLS},
        {"topic_authorization", RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
         KCAUSE_AUTHORIZATION},
        {"group_authorization", RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
         KCAUSE_AUTHORIZATION},
        {"cluster_authorization",
         RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED, KCAUSE_AUTHORIZATION},
        {"transactional_id_authorization",
         RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
         KCAUSE_AUTHORIZATION},
        {"transport", RD_KAFKA_RESP_ERR__TRANSPORT, KCAUSE_TRANSPORT},
        {"all_brokers_down", RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN,
         KCAUSE_TRANSPORT},
        {"resolve", RD_KAFKA_RESP_ERR__RESOLVE, KCAUSE_TRANSPORT},
        {"no_error", RD_KAFKA_RESP_ERR_NO_ERROR, KCAUSE_NONE},
        {"timed_out", RD_KAFKA_RESP_ERR__TIMED_OUT, KCAUSE_NONE},
        {"unknown_topic", RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, KCAUSE_NONE},
        {"msg_timed_out", RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, KCAUSE_NONE},
};

static void test_cause_case(void **state) {
        const struct cause_case *c = *state;

        assert_int_equal(kcause_of(c->err), c->cause);
}

static void test_cause_names(void **state) {
        (void)state;
        assert_string_equal(kcause_name(KCAUSE_NONE), "");
        assert_string_equal(kcause_name(KCAUSE_AUTHENTICATION),
                            "authentication");
        assert_string_equal(kcause_name(KCAUSE_TLS), "tls");
        assert_string_equal(kcause_name(KCAUSE_AUTHORIZATION), "authorization");
        assert_string_equal(kcause_name(KCAUSE_TRANSPORT), "transport");
        assert_string_equal(kcause_name(KCAUSE_CNT), "");
}

static void test_not_ready_before_the_first_probe(void **state) {
        kstatus_t *ks = kstatus_new(1000);
        enum kcause cause = KCAUSE_NONE;
        char reason[256];

        (void)state;
        assert_int_equal(kstatus_ready(ks, 0, &cause, reason, sizeof(reason)),
                         0);
        assert_int_equal(cause, KCAUSE_TRANSPORT);
        assert_string_equal(reason, "transport: no broker answered yet");
        kstatus_destroy(ks);
}

static void test_error_makes_not_ready_until_the_window_passes(void **state) {
        kstatus_t *ks = kstatus_new(1000);
        enum kcause cause = KCAUSE_NONE;
        char reason[256];

        (void)state;
        kstatus_probe(ks, 0, 1);
        assert_int_equal(kstatus_ready(ks, 0, &cause, reason, sizeof(reason)),
                         1);
        assert_int_equal(cause, KCAUSE_NONE);
        assert_string_equal(reason, "");

        kstatus_error(ks, 100, "consumer", RD_KAFKA_RESP_ERR__AUTHENTICATION,
                      "SASL authentication error");
        kstatus_probe(ks, 200, 1);
        assert_int_equal(kstatus_ready(ks, 500, &cause, reason, sizeof(reason)),
                         0);
        assert_int_equal(cause, KCAUSE_AUTHENTICATION);
        assert_string_equal(reason, "authentication: consumer: SASL "
                                    "authentication error");
        assert_int_equal(kstatus_errors(ks, KCAUSE_AUTHENTICATION), 1);

        /* The window passes with successful probes: ready again. */
        kstatus_probe(ks, 1200, 1);
        assert_int_equal(
                kstatus_ready(ks, 1200, &cause, reason, sizeof(reason)), 1);
        assert_int_equal(cause, KCAUSE_NONE);
        kstatus_destroy(ks);
}

static void
test_transport_errors_alone_keep_ready_while_probes_answer(void **state) {
        kstatus_t *ks = kstatus_new(1000);
        enum kcause cause = KCAUSE_NONE;

        (void)state;
        kstatus_probe(ks, 0, 1);
        kstatus_error(ks, 10, "producer", RD_KAFKA_RESP_ERR__TRANSPORT, NULL);
        assert_int_equal(kstatus_ready(ks, 20, &cause, NULL, 0), 1);
        assert_int_equal(kstatus_errors(ks, KCAUSE_TRANSPORT), 1);
        kstatus_destroy(ks);
}

static void test_failed_probe_names_the_last_cause(void **state) {
        kstatus_t *ks = kstatus_new(1000);
        enum kcause cause = KCAUSE_NONE;
        char reason[256];

        (void)state;
        kstatus_probe(ks, 0, 0);
        assert_int_equal(kstatus_ready(ks, 0, &cause, reason, sizeof(reason)),
                         0);
        assert_int_equal(cause, KCAUSE_TRANSPORT);
        assert_string_equal(reason, "transport: no broker answered");
        kstatus_error(ks, 10, "consumer", RD_KAFKA_RESP_ERR__SSL,
                      "certificate verify failed");
        /* Long after the window, the probe still fails: TLS still says why. */
        assert_int_equal(
                kstatus_ready(ks, 5000, &cause, reason, sizeof(reason)), 0);
        assert_int_equal(cause, KCAUSE_TLS);
        assert_string_equal(reason, "tls: consumer: certificate verify failed");
        kstatus_destroy(ks);
}

static void test_errors_of_no_cause_are_ignored(void **state) {
        kstatus_t *ks = kstatus_new(1000);

        (void)state;
        kstatus_probe(ks, 0, 1);
        kstatus_error(ks, 10, "consumer", RD_KAFKA_RESP_ERR__TIMED_OUT, NULL);
        assert_int_equal(kstatus_ready(ks, 20, NULL, NULL, 0), 1);
        for (int c = KCAUSE_NONE; c < KCAUSE_CNT; c++)
                assert_int_equal(kstatus_errors(ks, (enum kcause)c), 0);
        kstatus_destroy(ks);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_cause_names),
                cmocka_unit_test(test_not_ready_before_the_first_probe),
                cmocka_unit_test(
                        test_error_makes_not_ready_until_the_window_passes),
                cmocka_unit_test(
                        test_transport_errors_alone_keep_ready_while_probes_answer),
                cmocka_unit_test(test_failed_probe_names_the_last_cause),
                cmocka_unit_test(test_errors_of_no_cause_are_ignored),
        };
        const struct fixture_cases sets[] = {
                {"cause", test_cause_case, cause_cases, sizeof(cause_cases[0]),
                 FIXTURE_LEN(cause_cases)},
        };

        return fixture_run_group("kstatus", tests, FIXTURE_LEN(tests), sets,
                                 FIXTURE_LEN(sets));
}
