#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "fixture_result.h"
#include "recall.h"
#include "results.h"

static void test_meta_round_trip(void **state) {
        char buf[64];
        size_t len;
        int32_t rp = -1;
        int64_t off = -1;

        (void)state;
        len = recall_meta_format(buf, sizeof(buf), 7, 123456789012LL);
        assert_string_equal(buf, "kafka-mailer/1 results=7@123456789012");
        assert_int_equal(len, strlen(buf));
        assert_int_equal(recall_meta_parse(buf, len, &rp, &off), 0);
        assert_int_equal(rp, 7);
        assert_int_equal(off, 123456789012LL);
        /* Not NUL-terminated, as Kafka hands it back. */
        assert_int_equal(recall_meta_parse("kafka-mailer/1 results=0@0xx", 26,
                                           &rp, &off),
                         0);
        assert_int_equal(rp, 0);
        assert_int_equal(off, 0);
}

static void test_meta_refuses_what_it_did_not_write(void **state) {
        static const char *const bad[] = {
                "",
                "kafka-mailer/1 results=",
                "kafka-mailer/1 results=3",
                "kafka-mailer/1 results=3@",
                "kafka-mailer/1 results=-3@5",
                "kafka-mailer/1 results=3@-5",
                "kafka-mailer/1 results=3@5 ",
                "kafka-mailer/1 results=3@5x",
                "kafka-mailer/2 results=3@5",
                "kafka-mailer/1 results=99999999999@5",
                "kafka-mailer/1 results=3@99999999999999999999999",
                "{\"owner\":\"someone else\"}",
        };
        int32_t rp = 42;
        int64_t off = 42;

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(bad); i++)
                assert_int_equal(
                        recall_meta_parse(bad[i], strlen(bad[i]), &rp, &off),
                        -1);
        assert_int_equal(recall_meta_parse(NULL, 0, &rp, &off), -1);
        assert_int_equal(rp, 42);
        assert_int_equal(off, 42);
}

/* What the worker writes is what it reads back. */
static void test_result_record_read_back(void **state) {
        struct result_rec rec = fixture_result_sent(
                "order-1", "2.0.0 Ok: queued", "<order-1@shop.example>");
        struct result_source dup = {"email.requests", 2, 77};
        struct recall_item item;
        size_t len;
        char *text;

        (void)state;
        text = results_format(&rec, "smtp://relay:25", "w1", &len);
        assert_int_equal(recall_parse_result(text, len, &item), 0);
        assert_string_equal(item.id, "order-1");
        assert_int_equal(item.done.status, RESULT_SENT);
        assert_int_equal(item.done.attempts, 2);
        assert_int_equal(item.done.smtp_code, 250);
        assert_string_equal(item.done.smtp_reply, "2.0.0 Ok: queued");
        assert_string_equal(item.done.message_id, "<order-1@shop.example>");
        assert_string_equal(item.done.error, "");
        assert_string_equal(item.done.source_topic, "email.requests");
        assert_int_equal(item.done.source_partition, 3);
        assert_int_equal(item.done.source_offset, 1842);
        free(item.id);
        free(text);

        /* A repeat's result points at the request that was sent. */
        rec.status = RESULT_FAILED;
        rec.smtp_code = 550;
        rec.error = "permanent SMTP rejection";
        rec.duplicate_of = &dup;
        text = results_format(&rec, "smtp://relay:25", "w1", &len);
        assert_int_equal(recall_parse_result(text, len, &item), 0);
        assert_int_equal(item.done.status, RESULT_FAILED);
        assert_string_equal(item.done.error, "permanent SMTP rejection");
        assert_int_equal(item.done.source_partition, 2);
        assert_int_equal(item.done.source_offset, 77);
        assert_int_equal(item.done.delivered, 2); /* none */
        free(item.id);
        free(text);

        /* Sent to some recipients: the repeat says so too. */
        rec.status = RESULT_SENT;
        rec.delivered = "some";
        text = results_format(&rec, "smtp://relay:25", "w1", &len);
        assert_int_equal(recall_parse_result(text, len, &item), 0);
        assert_int_equal(item.done.delivered, 1);
        free(item.id);
        free(text);
}

static void test_records_without_a_final_id_are_skipped(void **state) {
        static const char *const skipped[] = {
                "",
                "not json",
                "[1]",
                "{\"v\":1,\"status\":\"sent\"}",
                "{\"v\":1,\"id\":null,\"status\":\"rejected\"}",
                "{\"v\":1,\"id\":\"\",\"status\":\"sent\"}",
                "{\"v\":1,\"id\":\"x\",\"status\":\"queued\"}",
                "{\"v\":1,\"id\":\"x\"}",
                "{\"v\":1,\"id\":7,\"status\":\"sent\"}",
        };
        struct recall_item item;

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(skipped); i++) {
                assert_int_equal(recall_parse_result(skipped[i],
                                                     strlen(skipped[i]), &item),
                                 -1);
                assert_null(item.id);
        }
        /* Fields of other types or missing read as empty. */
        {
                const char *odd = "{\"id\":\"y\",\"status\":\"expired\","
                                  "\"smtp_code\":\"x\",\"source\":5}";

                assert_int_equal(recall_parse_result(odd, strlen(odd), &item),
                                 0);
        }
        assert_int_equal(item.done.status, RESULT_EXPIRED);
        assert_int_equal(item.done.smtp_code, 0);
        assert_string_equal(item.done.source_topic, "");
        free(item.id);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_meta_round_trip),
                cmocka_unit_test(test_meta_refuses_what_it_did_not_write),
                cmocka_unit_test(test_result_record_read_back),
                cmocka_unit_test(test_records_without_a_final_id_are_skipped),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
