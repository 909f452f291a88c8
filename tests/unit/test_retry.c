#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "retry.h"

/* No jitter: the backoff is 1000, 2000, 4000 ... ms, at most 8000. */
static const struct retry_conf conf = {
        .attempts_max = 5,
        .backoff_initial_ms = 1000,
        .backoff_max_ms = 8000,
        .jitter_percent = 0,
        .window_ms = 60000,
        .local_window_ms = 10000,
};

/* What a decision row says of the request besides its attempts and time. */
enum {
        PARTIAL = 1, /* some recipients have a final outcome */
        FROM_RETRY_TOPIC = 2,
        LEAVING = 4, /* its partition is being given up */
        NO_RETRY_TOPIC = 8, /* it cannot be handed over */
        LONG_LIMITS = 16, /* conf with 10 attempts, a 60000 ms local window */
};

/* Expected actions besides those of enum retry_action. */
enum {
        NOT_FINISH = -1, /* any action but RETRY_FINISH */
        ANY_ACTION = -2, /* not checked */
};

/* One retry_decide() for a request first consumed at 0, now at @now_ms,
 * after @attempts, with @flags. A field expected as -1 (NULL for the reason)
 * is not checked. */
struct decide_case {
        const char *name;
        int attempts;
        int64_t now_ms;
        unsigned flags;
        int action;
        int64_t delay_ms;
        int64_t due_ms;
        const char *reason;
};

static const struct decide_case decide_cases[] = {
        {"attempt_4_of_5_not_final", 4, 0, 0, NOT_FINISH, -1, -1, NULL},
        {"exhausted_at_attempts_max", 5, 0, 0, RETRY_FINISH, -1, 0,
         "retries exhausted after 5 attempts"},
        /* attempt 1: backoff 1000; the window counts the next attempt */
        {"window_holds_next_attempt", 1, 59000, 0, NOT_FINISH, -1, 60000, NULL},
        {"window_passed_by_next_attempt", 1, 59001, 0, RETRY_FINISH, -1, -1,
         "retry window of 60000 ms passed after 1 attempts"},
        /* attempt 2: backoff 2000, next at 10000, the local window's end */
        {"local_retry_within_local_window", 2, 8000, 0, RETRY_LOCAL, 2000,
         10000, ""},
        {"hand_over_past_local_window", 2, 8001, 0, RETRY_HAND_OVER, -1, 10001,
         NULL},
        /* past the local window without a retry topic: wait here */
        {"local_past_local_window_without_retry_topic", 2, 8001, NO_RETRY_TOPIC,
         RETRY_LOCAL, -1, -1, NULL},
        {"partial_recipients_hand_over_at_once", 1, 0, PARTIAL, RETRY_HAND_OVER,
         -1, 1000, NULL},
        {"from_retry_topic_goes_back_there", 1, 0, FROM_RETRY_TOPIC,
         RETRY_HAND_OVER, -1, -1, NULL},
        {"leaving_hands_over", 1, 0, LEAVING, RETRY_HAND_OVER, -1, -1, NULL},
        {"leaving_without_retry_topic_abandons", 1, 0, LEAVING | NO_RETRY_TOPIC,
         RETRY_ABANDON, -1, -1, NULL},
        /* limits come first */
        {"leaving_exhausted_finishes", 5, 0, LEAVING | NO_RETRY_TOPIC,
         RETRY_FINISH, -1, -1, NULL},
        {"backoff_grows_to_its_max", 4, 0, 0, ANY_ACTION, 8000, -1, NULL},
        {"backoff_stays_at_its_max", 8, 0, LONG_LIMITS, RETRY_LOCAL, 8000, -1,
         NULL},
};

static void test_decide_case(void **state) {
        const struct decide_case *c = *state;
        struct retry_state st;
        struct retry_decision d;
        struct retry_conf c_conf = conf;

        if (c->flags & LONG_LIMITS) {
                c_conf.attempts_max = 10;
                c_conf.local_window_ms = 60000;
        }
        memset(&st, 0, sizeof(st));
        st.attempts = c->attempts;
        st.now_ms = c->now_ms;
        st.received_ms = 0;
        st.can_hand_over = (c->flags & NO_RETRY_TOPIC) == 0;
        st.partial = (c->flags & PARTIAL) != 0;
        st.from_retry_topic = (c->flags & FROM_RETRY_TOPIC) != 0;
        st.leaving = (c->flags & LEAVING) != 0;
        retry_decide(&c_conf, &st, &d);
        if (c->action == NOT_FINISH)
                assert_int_not_equal(d.action, RETRY_FINISH);
        else if (c->action != ANY_ACTION)
                assert_int_equal(d.action, c->action);
        if (c->delay_ms != -1)
                assert_int_equal(d.delay_ms, c->delay_ms);
        if (c->due_ms != -1)
                assert_int_equal(d.due_ms, c->due_ms);
        if (c->reason != NULL)
                assert_string_equal(d.reason, c->reason);
}

/* ---- the record ---- */

static const char request_text[] = "{\"id\":\"7f3c\",\"from\":\"a@b.example\"}";

/* The record of docs/wire-format.md's example (a shorter request). */
static struct retry_record documented_record(void) {
        struct retry_record r;

        memset(&r, 0, sizeof(r));
        r.id = "7f3c";
        r.request = request_text;
        r.request_len = strlen(request_text);
        r.attempts = 3;
        r.due_ms = 1795830000000;
        r.first_received_ms = 1795829990000;
        r.request_ts_ms = 1795829989000;
        r.source_topic = "email.requests";
        r.source_partition = 3;
        r.source_offset = 1842;
        r.last_smtp_code = 451;
        r.last_smtp_reply = "4.3.0 try again later";
        return r;
}

static void test_record_without_recipients_has_documented_bytes(void **state) {
        struct retry_record r;
        char *v;

        (void)state;
        r = documented_record();
        v = retry_record_format(&r);
        assert_string_equal(
                v,
                "{\"v\":1,\"id\":\"7f3c\",\"request\":"
                "\"{\\\"id\\\":\\\"7f3c\\\",\\\"from\\\":\\\"a@b.example\\\"}\","
                "\"attempts\":3,\"due_ms\":1795830000000,"
                "\"first_received_ms\":1795829990000,"
                "\"request_ts_ms\":1795829989000,"
                "\"source\":{\"topic\":\"email.requests\",\"partition\":3,"
                "\"offset\":1842},\"last_smtp_code\":451,"
                "\"last_smtp_reply\":\"4.3.0 try again later\"}");
        free(v);
}

static void test_record_round_trips(void **state) {
        struct retry_rcpt rc[2] = {
                {0, "ann@example.com", 1, 250, "2.0.0 Ok"},
                {2, "bob@example.com", 0, 550, ""},
        };
        struct retry_record r, back;
        char errstr[256];
        char *v;

        (void)state;
        r = documented_record();
        r.last_smtp_code = 0;
        r.last_smtp_reply = NULL;
        r.rcpts = rc;
        r.rcpt_cnt = 2;
        v = retry_record_format(&r);
        assert_non_null(strstr(v, "\"last_smtp_reply\":\"\""));
        assert_int_equal(
                retry_record_parse(v, strlen(v), &back, errstr, sizeof(errstr)),
                0);
        assert_string_equal(back.id, r.id);
        assert_int_equal(back.request_len, r.request_len);
        assert_memory_equal(back.request, request_text, r.request_len);
        assert_int_equal(back.attempts, r.attempts);
        assert_int_equal(back.due_ms, r.due_ms);
        assert_int_equal(back.first_received_ms, r.first_received_ms);
        assert_int_equal(back.request_ts_ms, r.request_ts_ms);
        assert_int_equal(back.source_partition, r.source_partition);
        assert_int_equal(back.source_offset, r.source_offset);
        assert_int_equal(back.rcpt_cnt, 2);
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(back.rcpts[i].index, rc[i].index);
                assert_string_equal(back.rcpts[i].recipient, rc[i].recipient);
                assert_int_equal(back.rcpts[i].sent, rc[i].sent);
                assert_int_equal(back.rcpts[i].smtp_code, rc[i].smtp_code);
                assert_string_equal(back.rcpts[i].smtp_reply, rc[i].smtp_reply);
        }
        retry_record_clear(&back);
        assert_null(back.id);
        free(v);
}

static void test_reply_not_utf8_is_repaired(void **state) {
        struct retry_record r;
        char *v;

        (void)state;
        memset(&r, 0, sizeof(r));
        r.id = "x";
        r.request = "{}";
        r.request_len = 2;
        r.source_topic = "t";
        r.last_smtp_reply = "bad \xff reply";
        v = retry_record_format(&r);
        assert_non_null(
                strstr(v, "\"last_smtp_reply\":\"bad \xef\xbf\xbd reply\""));
        free(v);
}

/* The example of docs/wire-format.md, as written by earlier versions. */
static void test_documented_record_parses(void **state) {
        static const char doc[] =
                "{\"v\": 1, \"id\": \"7f3c\", \"request\": \"{\\\"id\\\":\\\"7f3c\\\"}\", "
                "\"attempts\": 3,\n \"due_ms\": 1795830000000, "
                "\"first_received_ms\": 1795829990000,\n \"request_ts_ms\": "
                "1795829989000,\n \"source\": {\"topic\": \"email.requests\", "
                "\"partition\": 3, \"offset\": 1842},\n \"last_smtp_code\": 451, "
                "\"last_smtp_reply\": \"4.3.0 try again later\",\n \"recipients\": "
                "[{\"index\": 0, \"recipient\": \"ann@example.com\", \"status\": "
                "\"sent\", \"smtp_code\": 250, \"smtp_reply\": \"2.0.0 Ok\"}]}";
        struct retry_record r;
        char errstr[256];

        (void)state;
        assert_int_equal(retry_record_parse(doc, strlen(doc), &r, errstr,
                                            sizeof(errstr)),
                         0);
        assert_string_equal(r.id, "7f3c");
        assert_int_equal(r.request_len, strlen("{\"id\":\"7f3c\"}"));
        assert_int_equal(r.attempts, 3);
        assert_int_equal(r.due_ms, 1795830000000);
        assert_int_equal(r.first_received_ms, 1795829990000);
        assert_int_equal(r.request_ts_ms, 1795829989000);
        assert_int_equal(r.source_partition, 3);
        assert_int_equal(r.source_offset, 1842);
        assert_int_equal(r.rcpt_cnt, 1);
        assert_string_equal(r.rcpts[0].recipient, "ann@example.com");
        assert_int_equal(r.rcpts[0].sent, 1);
        retry_record_clear(&r);
}

static void test_optional_fields_may_be_absent(void **state) {
        static const char rec[] =
                "{\"id\":\"a\",\"request\":\"{}\",\"attempts\":0,\"due_ms\":0,"
                "\"first_received_ms\":0,\"source\":{\"partition\":0,\"offset\":0},"
                "\"recipients\":null}";
        struct retry_record r;
        char errstr[256];

        (void)state;
        assert_int_equal(retry_record_parse(rec, strlen(rec), &r, errstr,
                                            sizeof(errstr)),
                         0);
        assert_int_equal(r.request_ts_ms, 0);
        assert_int_equal(r.rcpt_cnt, 0);
        assert_null(r.rcpts);
        retry_record_clear(&r);
}

/* Parses @rec, which must fail with an errstr starting with @want (what
 * jansson adds after it varies by version; @want names the field) and the
 * id @id ("" for none). */
static void assert_rejected(const char *rec, const char *want, const char *id) {
        struct retry_record r;
        char errstr[256];

        assert_int_equal(retry_record_parse(rec, strlen(rec), &r, errstr,
                                            sizeof(errstr)),
                         -1);
        if (strncmp(errstr, want, strlen(want)) != 0)
                fail_msg("errstr \"%s\", expected \"%s...\"", errstr, want);
        assert_string_equal(r.id ? r.id : "", id);
        retry_record_clear(&r);
}

#define GOOD_HEAD                                                              \
        "{\"id\":\"a\",\"request\":\"{}\",\"due_ms\":0,\"first_received_ms\":0,"

static void test_malformed_records_are_rejected(void **state) {
        (void)state;
        assert_rejected("{\"id\":", "retry record: invalid JSON: ", "");
        assert_rejected("[1]", "retry record: Expected object, got array", "");
        assert_rejected(GOOD_HEAD "\"source\":{\"partition\":0,\"offset\":0}}",
                        "retry record: Object item not", "a");
        assert_rejected(GOOD_HEAD
                        "\"attempts\":\"3\",\"source\":{\"partition\":0,"
                        "\"offset\":0}}",
                        "retry record: Expected integer, got string", "a");
        assert_rejected(GOOD_HEAD "\"attempts\":1,\"source\":{\"offset\":0}}",
                        "retry record: Object item not", "a");
        assert_rejected(
                GOOD_HEAD "\"attempts\":1001,\"source\":{\"partition\":0,"
                          "\"offset\":0}}",
                "retry record: attempts: 1001 out of range (0 to 1000)", "a");
        assert_rejected(GOOD_HEAD "\"attempts\":1,\"source\":{\"partition\":-1,"
                                  "\"offset\":0}}",
                        "retry record: source.partition: -1 out of range", "a");
        assert_rejected(GOOD_HEAD "\"attempts\":1,\"source\":{\"partition\":0,"
                                  "\"offset\":-5}}",
                        "retry record: source.offset: -5 is negative", "a");
        assert_rejected("{\"id\":7,\"request\":\"{}\"}",
                        "retry record: Expected string, got integer", "");
}

static void test_bad_recipient_entries_are_rejected(void **state) {
#define WITH_RCPTS(x)                                                          \
        GOOD_HEAD "\"attempts\":1,\"source\":{\"partition\":0,\"offset\":0},"  \
                  "\"recipients\":" x "}"
        (void)state;
        assert_rejected(WITH_RCPTS("{}"),
                        "retry record: recipients: must be an array", "a");
        assert_rejected(
                WITH_RCPTS("[3]"),
                "retry record: recipients[0]: Expected object, got integer",
                "a");
        assert_rejected(
                WITH_RCPTS("[{\"index\":0,\"recipient\":\"x@y\","
                           "\"status\":\"sent\"},{\"recipient\":\"x@y\","
                           "\"status\":\"sent\"}]"),
                "retry record: recipients[1]: Object item not", "a");
        assert_rejected(WITH_RCPTS("[{\"index\":-1,\"recipient\":\"x@y\","
                                   "\"status\":\"sent\"}]"),
                        "retry record: recipients[0]: negative index", "a");
        assert_rejected(
                WITH_RCPTS("[{\"index\":0,\"recipient\":\"x@y\","
                           "\"status\":\"maybe\"}]"),
                "retry record: recipients[0]: status must be \"sent\" or "
                "\"failed\"",
                "a");
        assert_rejected(
                WITH_RCPTS("[{\"index\":0,\"recipient\":1,"
                           "\"status\":\"sent\"}]"),
                "retry record: recipients[0]: Expected string, got integer",
                "a");
#undef WITH_RCPTS
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_record_without_recipients_has_documented_bytes),
                cmocka_unit_test(test_record_round_trips),
                cmocka_unit_test(test_reply_not_utf8_is_repaired),
                cmocka_unit_test(test_documented_record_parses),
                cmocka_unit_test(test_optional_fields_may_be_absent),
                cmocka_unit_test(test_malformed_records_are_rejected),
                cmocka_unit_test(test_bad_recipient_entries_are_rejected),
        };

        const struct fixture_cases sets[] = {
                {"decide", test_decide_case, decide_cases,
                 sizeof(decide_cases[0]), FIXTURE_LEN(decide_cases)},
        };

        return fixture_run_group("retry", tests, FIXTURE_LEN(tests), sets,
                                 FIXTURE_LEN(sets));
}
