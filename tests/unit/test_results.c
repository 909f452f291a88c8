#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "fixture_result.h"
#include "results.h"

static json_t *format_and_parse(const struct result_rec *rec) {
        size_t len;
        char *text = results_format(rec, "smtp://relay:587", "host-1", &len);
        json_error_t err;
        json_t *o;

        assert_non_null(text);
        assert_int_equal(strlen(text), len);
        o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
        if (!o)
                fail_msg("not JSON: %s in %s", err.text, text);
        free(text);
        return o;
}

static struct result_rec base_rec(void) {
        struct result_rec rec = fixture_result_sent(
                "7f3c", "2.0.0 Ok: queued as 4XyZ", "<7f3c@shop.example>");

        rec.request_ts_ms = 1795800000000;
        rec.received_ms = 1795800000020;
        rec.completed_ms = 1795800000104;
        return rec;
}

/* base_rec() rejected for @error. */
static struct result_rec rejected_rec(const char *error) {
        struct result_rec rec = base_rec();

        rec.status = RESULT_REJECTED;
        rec.error = error;
        return rec;
}

static void test_sent_result_has_every_v1_field(void **state) {
        struct result_rec rec = base_rec();
        json_t *meta = json_pack("{s:i}", "order", 1234);
        json_t *o;

        (void)state;
        rec.metadata = meta;
        o = format_and_parse(&rec);
        assert_int_equal(json_integer_value(json_object_get(o, "v")), 1);
        assert_string_equal(json_string_value(json_object_get(o, "id")),
                            "7f3c");
        assert_string_equal(json_string_value(json_object_get(o, "status")),
                            "sent");
        assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 2);
        assert_int_equal(json_integer_value(json_object_get(o, "smtp_code")),
                         250);
        assert_string_equal(json_string_value(json_object_get(o, "relay")),
                            "smtp://relay:587");
        assert_true(json_is_null(json_object_get(o, "error")));
        assert_int_equal(json_integer_value(json_object_get(
                                 json_object_get(o, "source"), "offset")),
                         1842);
        assert_string_equal(
                json_string_value(json_object_get(o, "received_at")),
                "2026-11-27T17:20:00.020Z");
        assert_int_equal(json_integer_value(json_object_get(o, "latency_ms")),
                         104);
        assert_string_equal(json_string_value(json_object_get(o, "worker")),
                            "host-1");
        assert_true(json_equal(json_object_get(o, "metadata"), meta));
        assert_null(json_object_get(o, "duplicate"));
        assert_string_equal(json_string_value(json_object_get(o, "delivered")),
                            "all");
        assert_null(json_object_get(o, "recipients"));
        json_decref(o);
        json_decref(meta);
}

static void test_delivered_and_recipients(void **state) {
        struct result_rec rec = base_rec();
        json_t *all = json_pack("[{s:s, s:s}, {s:s, s:s}]", "recipient",
                                "a@x.example", "status", "sent", "recipient",
                                "b@x.example", "status", "failed");
        json_t *o;

        (void)state;
        rec.status = RESULT_FAILED;
        o = format_and_parse(&rec); /* no per-recipient state */
        assert_string_equal(json_string_value(json_object_get(o, "delivered")),
                            "none");
        json_decref(o);
        rec.status = RESULT_SENT;
        rec.recipients = all;
        rec.delivered = "some";
        o = format_and_parse(&rec);
        assert_string_equal(json_string_value(json_object_get(o, "delivered")),
                            "some");
        assert_true(json_equal(json_object_get(o, "recipients"), all));
        json_decref(o);
        json_decref(all);
}

static void test_reply_text_that_is_not_utf8_or_has_controls_stays_valid_json(
        void **state) {
        struct result_rec rec = base_rec();
        json_t *o;

        (void)state;
        rec.smtp_reply = "bad \xff\xfe bytes \"quoted\" back\\slash \x01 tab\t "
                         "caf\xc3\xa9 \xed\xa0\x80 end";
        o = format_and_parse(&rec);
        assert_string_equal(json_string_value(json_object_get(o, "smtp_reply")),
                            "bad \xef\xbf\xbd\xef\xbf\xbd bytes \"quoted\" "
                            "back\\slash \x01 tab\t caf\xc3\xa9 "
                            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
        json_decref(o);
}

/* A byte that needs a look is found and written right wherever it stands,
 * before, in and after the 16- and 8-byte steps of the scan. */
static void
test_special_bytes_at_every_position_are_written_right(void **state) {
        static const struct {
                const char *in;
                const char *out; /* decoded from the JSON */
        } specials[] = {
                {"\"", "\""},
                {"\\", "\\"},
                {"\x01", "\x01"},
                {"\x1f", "\x1f"},
                {"\xc3\xa9", "\xc3\xa9"},
                {"\xff", "\xef\xbf\xbd"},
        };
        static const char as[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        char in[96];
        char want[96];

        (void)state;
        for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]); k++)
                for (size_t len = 1; len <= 40; len++)
                        for (size_t at = 0; at < len; at++) {
                                struct result_rec rec = base_rec();
                                json_t *o;
                                const char *got;

                                /* "a" * at, the byte(s), "a" up to len */
                                snprintf(in, sizeof(in), "%.*s%s%.*s", (int)at,
                                         as, specials[k].in,
                                         (int)(len - at - 1), as);
                                snprintf(want, sizeof(want), "%.*s%s%.*s",
                                         (int)at, as, specials[k].out,
                                         (int)(len - at - 1), as);
                                rec.smtp_reply = in;
                                o = format_and_parse(&rec);
                                got = json_string_value(
                                        json_object_get(o, "smtp_reply"));
                                if (got == NULL || strcmp(got, want) != 0)
                                        fail_msg("special %zu at %zu of %zu: "
                                                 "%s",
                                                 k, at, len, got ? got : "-");
                                json_decref(o);
                        }
}

static void test_missing_id_code_and_metadata_are_null(void **state) {
        struct result_rec rec = rejected_rec("to[0]: CR or LF not allowed");
        json_t *o;

        (void)state;
        rec.id = NULL;
        rec.smtp_code = 0;
        rec.smtp_reply = NULL;
        rec.message_id = NULL;
        o = format_and_parse(&rec);
        assert_true(json_is_null(json_object_get(o, "id")));
        assert_true(json_is_null(json_object_get(o, "smtp_code")));
        assert_true(json_is_null(json_object_get(o, "metadata")));
        assert_string_equal(json_string_value(json_object_get(o, "status")),
                            "rejected");
        assert_string_equal(json_string_value(json_object_get(o, "error")),
                            "to[0]: CR or LF not allowed");
        json_decref(o);
}

static void test_an_id_from_the_key_says_so(void **state) {
        struct result_rec rec = rejected_rec(
                "request: 5000 bytes exceeds request.max.bytes (2048)");
        json_t *o;

        (void)state;
        o = format_and_parse(&rec);
        assert_null(json_object_get(o, "id_from"));
        json_decref(o);
        rec.id_from_key = 1;
        o = format_and_parse(&rec);
        assert_string_equal(json_string_value(json_object_get(o, "id")),
                            "7f3c");
        assert_string_equal(json_string_value(json_object_get(o, "id_from")),
                            "key");
        json_decref(o);
        rec.id = NULL; /* no id at all: nothing to say where it came from */
        o = format_and_parse(&rec);
        assert_true(json_is_null(json_object_get(o, "id")));
        assert_null(json_object_get(o, "id_from"));
        json_decref(o);
}

static void test_duplicate_names_the_earlier_request(void **state) {
        struct result_rec rec = base_rec();
        struct result_source dup = {"email.requests", 1, 99};
        json_t *o;

        (void)state;
        rec.duplicate_of = &dup;
        o = format_and_parse(&rec);
        assert_true(json_is_true(json_object_get(o, "duplicate")));
        assert_int_equal(json_integer_value(json_object_get(
                                 json_object_get(o, "duplicate_of"), "offset")),
                         99);
        json_decref(o);
}

static void test_long_values_grow_past_the_stack_buffer(void **state) {
        struct result_rec rec = base_rec();
        char *big = malloc(100000);
        json_t *o;

        (void)state;
        memset(big, 'a', 99999);
        big[99999] = '\0';
        rec.smtp_reply = big;
        o = format_and_parse(&rec);
        assert_int_equal(json_string_length(json_object_get(o, "smtp_reply")),
                         99999);
        json_decref(o);
        free(big);
}

/* Times are RFC 3339 UTC with milliseconds, zero-padded, at the edges of
 * each field. */
static void test_times_formatted_rfc3339_with_milliseconds(void **state) {
        static const struct {
                int64_t ms;
                const char *text;
        } cases[] = {
                {0, "1970-01-01T00:00:00.000Z"},
                {1795800000104LL, "2026-11-27T17:20:00.104Z"},
                {951782400999LL, "2000-02-29T00:00:00.999Z"},
                {253402300799001LL, "9999-12-31T23:59:59.001Z"},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char buf[40];

                results_format_time(cases[i].ms, buf, sizeof(buf));
                assert_string_equal(buf, cases[i].text);
        }
}

/* Partitions and offsets are written as JSON integers, negative ones
 * and the int64 extremes too. */
static void test_source_numbers_at_their_extremes(void **state) {
        static const struct {
                int32_t partition;
                int64_t offset;
        } cases[] = {
                {0, 0},
                {-1, -1001},
                {2147483647, INT64_MAX},
                {-2147483647 - 1, INT64_MIN},
                {9, 1000000000000LL},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct result_rec rec = base_rec();
                json_t *o, *src;

                rec.source.partition = cases[i].partition;
                rec.source.offset = cases[i].offset;
                o = format_and_parse(&rec);
                src = json_object_get(o, "source");
                assert_int_equal(
                        json_integer_value(json_object_get(src, "partition")),
                        cases[i].partition);
                assert_true(json_integer_value(json_object_get(
                                    src, "offset")) == cases[i].offset);
                json_decref(o);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sent_result_has_every_v1_field),
                cmocka_unit_test(
                        test_reply_text_that_is_not_utf8_or_has_controls_stays_valid_json),
                cmocka_unit_test(
                        test_special_bytes_at_every_position_are_written_right),
                cmocka_unit_test(test_missing_id_code_and_metadata_are_null),
                cmocka_unit_test(test_an_id_from_the_key_says_so),
                cmocka_unit_test(test_delivered_and_recipients),
                cmocka_unit_test(test_duplicate_names_the_earlier_request),
                cmocka_unit_test(test_long_values_grow_past_the_stack_buffer),
                cmocka_unit_test(
                        test_times_formatted_rfc3339_with_milliseconds),
                cmocka_unit_test(test_source_numbers_at_their_extremes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
