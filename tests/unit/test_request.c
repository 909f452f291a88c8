/*
 * Unit tests of request: every invalid fixture is rejected with its reason,
 * every valid fixture parses, and the parsed fields are what the wire format
 * (docs/wire-format.md) says.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "jsonparse.h"
#include "request.h"

static const struct request_limits test_limits = {
        .max_bytes = 16384,
        .max_recipients = 10,
};

static struct mail_request *parse_str(const char *json, char *err,
                                      size_t err_size) {
        char id[64];

        return request_parse(json, strlen(json), &test_limits, id, sizeof(id),
                             err, err_size);
}

/* Parses @json, which must be accepted. @returns the request. */
static struct mail_request *parse_ok(const char *json) {
        char err[256];
        struct mail_request *req = parse_str(json, err, sizeof(err));

        if (req == NULL)
                print_error("%s: %s\n", json, err);
        assert_non_null(req);
        return req;
}

/* Checks that @json parses and is marked SMTPUTF8 or not, as @expected. */
static void assert_smtputf8(const char *json, int expected) {
        struct mail_request *req = parse_ok(json);

        assert_int_equal(req->smtputf8, expected);
        request_destroy(req);
}

/* One invalid fixture: request_parse fails and the reason contains the
 * text of the case's "error" file. */
static void test_invalid_fixture_rejected_with_reason(void **state) {
        const char *dir = fixture_case_name(*state);
        char *input;
        char *expect;
        size_t len = 0;
        size_t elen = 0;
        char id[64];
        char err[512] = "";
        struct mail_request *req;

        input = fixture_case_read(dir, "input.json", &len);
        expect = fixture_case_read(dir, "error", &elen);
        while (elen > 0 &&
               (expect[elen - 1] == '\n' || expect[elen - 1] == '\r'))
                expect[--elen] = '\0';
        assert_true(elen > 0);

        req = request_parse(input, len, &test_limits, id, sizeof(id), err,
                            sizeof(err));
        if (req != NULL)
                print_error("%s: accepted, expected \"%s\"\n",
                            fixture_name(dir), expect);
        assert_null(req);
        if (strstr(err, expect) == NULL)
                print_error("%s: reason \"%s\", expected \"%s\"\n",
                            fixture_name(dir), err, expect);
        assert_non_null(strstr(err, expect));
        /* Reasons are short and lower-case, without a trailing period and
         * without line breaks (they go into logs and result records). */
        assert_true(strlen(err) > 0 && err[strlen(err) - 1] != '.');
        assert_null(strpbrk(err, "\r\n"));
        free(input);
        free(expect);
}

static void test_valid_fixture_accepted(void **state) {
        const char *dir = fixture_case_name(*state);
        char *input;
        size_t len = 0;
        char id[64];
        char err[512] = "";
        struct mail_request *req;

        input = fixture_case_read(dir, "input.json", &len);
        req = request_parse(input, len, &test_limits, id, sizeof(id), err,
                            sizeof(err));
        if (req == NULL)
                print_error("%s: rejected: %s\n", fixture_name(dir), err);
        assert_non_null(req);
        assert_string_equal(id, req->id);
        assert_true(request_recipient_count(req) > 0);
        assert_true(req->text != NULL || req->html != NULL);
        assert_non_null(req->subject);
        request_destroy(req);
        free(input);
}

static void test_fixture_folders_hold_at_least_30_invalid_cases(void **state) {
        char **list;
        size_t n = fixture_list("requests/invalid", &list);

        (void)state;
        assert_true(n >= 30);
        fixture_free_list(list, n);
        n = fixture_list("requests/valid", &list);
        assert_true(n >= 1);
        fixture_free_list(list, n);
}

static void test_a_kafka_key_is_an_id_by_the_id_rules(void **state) {
        char longest[201], too_long[202];

        (void)state;
        memset(longest, 'a', 200);
        longest[200] = '\0';
        memset(too_long, 'a', 201);
        too_long[201] = '\0';
        assert_true(request_id_valid("order-17.reset", 14));
        assert_true(request_id_valid(longest, 200));
        assert_false(request_id_valid(too_long, 201));
        assert_false(request_id_valid(NULL, 0));
        assert_false(request_id_valid("", 0));
        assert_false(request_id_valid("a b", 3));
        assert_false(request_id_valid("a..b", 4));
        assert_false(request_id_valid(".a", 2));
        assert_false(request_id_valid("a\0b", 3));
        assert_false(request_id_valid("caf\xc3\xa9", 5));
}

/* Parses a request whose subject, header value and display name are @n
 * bytes each against limits of 40 bytes. */
static struct mail_request *parse_sized(size_t subject, size_t header,
                                        size_t display, char *err,
                                        size_t err_size) {
        static const struct request_limits small = {
                .max_bytes = 16384,
                .max_recipients = 10,
                .max_subject_bytes = 40,
                .max_header_bytes = 40,
        };
        char json[1024], s[200], h[200], d[200], id[64];

        memset(s, 'S', subject);
        s[subject] = '\0';
        memset(h, 'H', header);
        h[header] = '\0';
        memset(d, 'D', display);
        d[display] = '\0';
        snprintf(json, sizeof(json),
                 "{\"id\":\"l1\",\"from\":\"a@example.com\","
                 "\"to\":[\"b@example.com\",\"%s <c@example.com>\"],"
                 "\"subject\":\"%s\",\"headers\":{\"X-Tag\":\"%s\"},"
                 "\"text\":\"x\"}",
                 d, s, h);
        return request_parse(json, strlen(json), &small, id, sizeof(id), err,
                             err_size);
}

static void test_subject_header_and_display_name_limits_name_field_and_setting(
        void **state) {
        struct mail_request *req;
        char err[256];

        (void)state;
        req = parse_sized(40, 40, 40, err, sizeof(err));
        assert_non_null(req);
        request_destroy(req);
        assert_null(parse_sized(41, 10, 10, err, sizeof(err)));
        assert_string_equal(err, "subject: 41 bytes exceeds "
                                 "request.max.subject.bytes (40)");
        assert_null(parse_sized(10, 41, 10, err, sizeof(err)));
        assert_string_equal(err, "headers.X-Tag: 41 bytes exceeds "
                                 "request.max.header.bytes (40)");
        assert_null(parse_sized(10, 10, 41, err, sizeof(err)));
        assert_string_equal(err, "to[1]: 41 bytes exceeds "
                                 "request.max.header.bytes (40)");
}

static void test_full_request_fields_parsed(void **state) {
        const char *json =
                "{\"v\":1,\"id\":\"r.1\",\"from\":\"Shop <no-reply@shop.example>\","
                "\"to\":[\"Ann <ann@example.com>\",\"bob@example.com\"],"
                "\"cc\":[\"\\\"Smith, John\\\" <john@example.com>\"],"
                "\"bcc\":[\"<audit@example.com>\"],"
                "\"reply_to\":\"help@shop.example\",\"subject\":\"S\","
                "\"text\":\"T\",\"html\":\"H\",\"headers\":{\"X-A\":\"1\",\"X-B\":\"2\"},"
                "\"attachments\":[{\"filename\":\"a.txt\",\"content_base64\":\"aGk=\"},"
                "{\"filename\":\"b\",\"content_type\":\"image/png\",\"content_base64\":\"AA==\"}],"
                "\"deadline\":\"2026-11-28T12:00:00Z\",\"metadata\":{\"order\":1234}}";
        struct mail_request *req = parse_ok(json);
        json_t *f[REQUEST_FIELDS];
        size_t present = 0;

        (void)state;
        /* every field is one the fast path reads (no detour through
         * jansson's parser for a valid request) */
        assert_int_equal(jsonparse_fields(json, strlen(json), request_fields,
                                          REQUEST_FIELDS, f),
                         0);
        for (size_t i = 0; i < REQUEST_FIELDS; i++) {
                present += f[i] != NULL;
                json_decref(f[i]);
        }
        assert_int_equal(present, 14); /* all but priority */
        assert_string_equal(req->id, "r.1");
        assert_string_equal(req->from.display, "Shop");
        assert_string_equal(req->from.addr, "no-reply@shop.example");
        assert_int_equal(req->to_cnt, 2);
        assert_string_equal(req->to[0].display, "Ann");
        assert_null(req->to[1].display);
        assert_string_equal(req->to[1].addr, "bob@example.com");
        assert_int_equal(req->cc_cnt, 1);
        assert_string_equal(req->cc[0].display, "Smith, John");
        assert_int_equal(req->bcc_cnt, 1);
        assert_null(req->bcc[0].display);
        assert_string_equal(req->bcc[0].addr, "audit@example.com");
        assert_int_equal(req->reply_to_cnt, 1);
        assert_string_equal(req->reply_to[0].addr, "help@shop.example");
        assert_string_equal(req->subject, "S");
        assert_string_equal(req->text, "T");
        assert_string_equal(req->html, "H");
        assert_int_equal(req->header_cnt, 2);
        assert_string_equal(req->headers[0].name, "X-A");
        assert_string_equal(req->headers[1].value, "2");
        assert_int_equal(req->attachment_cnt, 2);
        assert_string_equal(req->attachments[0].content_type,
                            "application/octet-stream");
        assert_int_equal(req->attachments[0].data_len, 2);
        assert_memory_equal(req->attachments[0].data, "hi", 2);
        assert_string_equal(req->attachments[1].content_type, "image/png");
        assert_int_equal(req->attachments[1].data_len, 1);
        assert_int_equal(req->attachments[1].data[0], 0);
        assert_int_equal(req->deadline_ms, 1795867200000LL);
        assert_non_null(req->metadata);
        assert_int_equal(
                json_integer_value(json_object_get(req->metadata, "order")),
                1234);
        assert_int_equal(request_recipient_count(req), 4);
        request_destroy(req);
}

static int64_t deadline_of(const char *value) {
        char json[256];
        char err[256];
        struct mail_request *req;
        int64_t ms;

        snprintf(
                json, sizeof(json),
                "{\"id\":\"d\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"text\":\"x\",\"deadline\":\"%s\"}",
                value);
        req = parse_str(json, err, sizeof(err));
        if (req == NULL) {
                print_error("%s: %s\n", value, err);
                return -1;
        }
        ms = req->deadline_ms;
        request_destroy(req);
        return ms;
}

static void test_deadline_rfc3339_zone_offset_and_fraction(void **state) {
        (void)state;
        assert_int_equal(deadline_of("2026-11-28T12:00:00Z"), 1795867200000LL);
        assert_int_equal(deadline_of("2026-11-28T13:00:00+01:00"),
                         1795867200000LL);
        assert_int_equal(deadline_of("2026-11-28T06:30:00-05:30"),
                         1795867200000LL);
        assert_int_equal(deadline_of("2026-11-28T12:00:00.25Z"),
                         1795867200250LL);
        assert_int_equal(deadline_of("2026-11-28T12:00:00.123456789Z"),
                         1795867200123LL);
        assert_int_equal(deadline_of("2026-11-28t12:00:00z"), 1795867200000LL);
        assert_int_equal(deadline_of("2028-02-29T00:00:00Z"), 1835395200000LL);
        assert_int_equal(deadline_of("1970-01-01T00:00:00Z"), 1);
}

static void test_deadline_absent_is_zero(void **state) {
        struct mail_request *req = parse_ok(
                "{\"id\":\"d\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"text\":\"x\"}");

        (void)state;
        assert_int_equal(req->deadline_ms, 0);
        assert_string_equal(req->subject, "");
        assert_null(req->html);
        assert_null(req->metadata);
        request_destroy(req);
}

/* Checks that @json is rejected, with the id buffer (@id_size bytes, "x"
 * before) then holding @expected_id, and the reason @expected_err unless
 * that is NULL. */
static void assert_rejected_with_id(const char *json, size_t id_size,
                                    const char *expected_id,
                                    const char *expected_err) {
        char *id = malloc(id_size);
        char err[256];

        assert_non_null(id);
        snprintf(id, id_size, "x");
        assert_null(request_parse(json, strlen(json), &test_limits, id, id_size,
                                  err, sizeof(err)));
        assert_string_equal(id, expected_id);
        if (expected_err != NULL)
                assert_string_equal(err, expected_err);
        free(id);
}

static void test_idbuf_filled_on_rejection(void **state) {
        (void)state;
        assert_rejected_with_id("{\"id\":\"keep-me\",\"from\":\"nobody\"}", 64,
                                "keep-me", "from: missing '@' in address");
}

/* The request's id is known whichever parser reads it: the fast path, or
 * jansson for what the fast path leaves (an unknown field, a real number,
 * a key twice). */
static void test_idbuf_filled_whichever_parser_reads_the_request(void **state) {
        (void)state;
        assert_rejected_with_id("{\"id\":\"keep-me\",\"colour\":1}", 64,
                                "keep-me", "unknown field \"colour\"");
        assert_rejected_with_id("{\"colour\":1,\"id\":\"keep-me\"}", 64,
                                "keep-me", "unknown field \"colour\"");
        assert_rejected_with_id("{\"id\":\"keep-me\",\"v\":1.5}", 64, "keep-me",
                                "v: must be an integer");
        assert_rejected_with_id("{\"id\":\"keep-me\",\"v\":2}", 64, "keep-me",
                                "v: unsupported version 2");
        assert_rejected_with_id("{\"id\":\"keep-me\",\"id\":\"other\"}", 64, "",
                                NULL);
        assert_rejected_with_id("[{\"id\":\"keep-me\"}]", 64, "",
                                "request: must be a JSON object");
}

static void test_idbuf_empty_when_json_invalid(void **state) {
        (void)state;
        assert_rejected_with_id("{\"id\":\"keep-me\",", 64, "", NULL);
}

static void test_idbuf_truncated_to_its_size(void **state) {
        (void)state;
        assert_rejected_with_id("{\"id\":\"0123456789\"}", 5, "0123", NULL);
}

static void test_oversize_rejected_without_reading_bytes(void **state) {
        char err[256];
        char id[8];
        struct request_limits small = {.max_bytes = 10, .max_recipients = 10};

        (void)state;
        /* Not JSON at all: the size check comes first. */
        assert_null(request_parse("not json at all", 15, &small, id, sizeof(id),
                                  err, sizeof(err)));
        assert_string_equal(err,
                            "request: 15 bytes exceeds request.max.bytes (10)");
}

static void test_address_forms_accepted(void **state) {
        static const struct {
                const char *in;
                const char *display;
                const char *addr;
        } cases[] = {
                {"ann@example.com", NULL, "ann@example.com"},
                {"<ann@example.com>", NULL, "ann@example.com"},
                {"Ann <ann@example.com>", "Ann", "ann@example.com"},
                {"  Ann  Lee\t<ann@example.com>  ", "Ann  Lee",
                 "ann@example.com"},
                {"\"Lee, Ann\" <ann@example.com>", "Lee, Ann",
                 "ann@example.com"},
                {"\"a \\\"b\\\" \\\\c\"<ann@example.com>", "a \"b\" \\c",
                 "ann@example.com"},
                {"\"\" <ann@example.com>", NULL, "ann@example.com"},
                {"Zoë Ünal <z@example.com>", "Zoë Ünal", "z@example.com"},
                {"x@[192.0.2.1]", NULL, "x@[192.0.2.1]"},
                {"x@[IPv6:2001:db8::1]", NULL, "x@[IPv6:2001:db8::1]"},
                {"\"john doe\"@example.com", NULL, "\"john doe\"@example.com"},
                {"root@localhost", NULL, "root@localhost"},
                {"a.b+tag@sub-1.example.co", NULL, "a.b+tag@sub-1.example.co"},
        };
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *o = json_pack("{s:s, s:s, s:[s], s:s}", "id", "a",
                                      "from", cases[i].in, "to",
                                      "b@example.com", "text", "x");
                char *s = json_dumps(o, 0);
                char err[256];
                struct mail_request *req = parse_str(s, err, sizeof(err));

                if (req == NULL)
                        print_error("%s: %s\n", cases[i].in, err);
                assert_non_null(req);
                if (cases[i].display == NULL)
                        assert_null(req->from.display);
                else
                        assert_string_equal(req->from.display,
                                            cases[i].display);
                assert_string_equal(req->from.addr, cases[i].addr);
                request_destroy(req);
                free(s);
                json_decref(o);
        }
}

static void test_check_addr_limits_at_boundaries(void **state) {
        char addr[300];
        char err[128];
        char label[64];

        (void)state;
        memset(label, 'b', 63);
        label[63] = '\0';
        /* local part of exactly 64 is fine */
        snprintf(
                addr, sizeof(addr), "%.64s@example.com",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_int_equal(request_check_addr(addr, NULL, err, sizeof(err)), 0);
        /* label of exactly 63 is fine */
        snprintf(addr, sizeof(addr), "a@%s.com", label);
        assert_int_equal(request_check_addr(addr, NULL, err, sizeof(err)), 0);
        /* whole address of exactly 254 is fine, 255 is not */
        snprintf(addr, sizeof(addr), "a@%s.%s.%s.%.60s", label, label, label,
                 label);
        assert_int_equal(strlen(addr), 254);
        assert_int_equal(request_check_addr(addr, NULL, err, sizeof(err)), 0);
        snprintf(addr, sizeof(addr), "ab@%s.%s.%s.%.60s", label, label, label,
                 label);
        assert_int_equal(request_check_addr(addr, NULL, err, sizeof(err)), -1);
        assert_string_equal(err, "address longer than 254 characters");
        assert_int_equal(
                request_check_addr("a@b\r\n.com", NULL, err, sizeof(err)), -1);
        assert_string_equal(err, "CR or LF not allowed");
        assert_int_equal(request_check_addr("", NULL, err, sizeof(err)), -1);
        assert_string_equal(err, "empty address");
        assert_int_equal(request_check_addr("a@b-.com", NULL, err, sizeof(err)),
                         -1);
        assert_int_equal(
                request_check_addr("a@[1.2.3]", NULL, err, sizeof(err)), -1);
        assert_int_equal(
                request_check_addr("a@[1.2.3.4.5]", NULL, err, sizeof(err)),
                -1);
        assert_int_equal(
                request_check_addr("a@[01.2.3.4]", NULL, err, sizeof(err)), 0);
}

static void test_utf8_addresses_accepted_and_mark_smtputf8(void **state) {
        char err[256];
        int utf8 = -1;

        (void)state;
        assert_int_equal(request_check_addr("j\xc3\xb6rg@example.com", &utf8,
                                            err, sizeof(err)),
                         0);
        assert_int_equal(utf8, 1);
        assert_int_equal(request_check_addr("ann@b\xc3\xbc"
                                            "cher.example",
                                            &utf8, err, sizeof(err)),
                         0);
        assert_int_equal(utf8, 1);
        assert_int_equal(
                request_check_addr("ann@example.com", &utf8, err, sizeof(err)),
                0);
        assert_int_equal(utf8, 0);
        /* Not well-formed UTF-8: a stray continuation byte, an overlong '/',
         * a surrogate, a truncated sequence. */
        assert_int_equal(
                request_check_addr("a\x80@example.com", NULL, err, sizeof(err)),
                -1);
        assert_string_equal(err, "invalid UTF-8 in address");
        assert_int_equal(request_check_addr("a\xc0\xaf@example.com", NULL, err,
                                            sizeof(err)),
                         -1);
        assert_string_equal(err, "invalid UTF-8 in address");
        assert_int_equal(request_check_addr("a\xed\xa0\x80@example.com", NULL,
                                            err, sizeof(err)),
                         -1);
        assert_string_equal(err, "invalid UTF-8 in address");
        assert_int_equal(
                request_check_addr("a@example.co\xc3", NULL, err, sizeof(err)),
                -1);
        assert_string_equal(err, "invalid UTF-8 in address");
        /* C1 controls and line separators are control characters. */
        assert_int_equal(request_check_addr("a\xc2\x85@example.com", NULL, err,
                                            sizeof(err)),
                         -1);
        assert_string_equal(err, "control character U+0085 in address");
        assert_int_equal(request_check_addr("a@ex\xe2\x80\xa9.com", NULL, err,
                                            sizeof(err)),
                         -1);
        assert_string_equal(err, "control character U+2029 in address");

        assert_smtputf8("{\"id\":\"a\",\"from\":\"a@example.com\","
                        "\"to\":[\"b@example.com\"],\"text\":\"x\"}",
                        0);
        /* A UTF-8 address in any field, reply_to included, marks it. */
        assert_smtputf8("{\"id\":\"a\",\"from\":\"a@example.com\","
                        "\"to\":[\"b@example.com\"],\"text\":\"x\","
                        "\"reply_to\":\"J\u00f6rg <j\u00f6rg@example.com>\"}",
                        1);
        /* A UTF-8 display name alone does not. */
        assert_smtputf8("{\"id\":\"a\",\"from\":\"J\u00f6rg <a@example.com>\","
                        "\"to\":[\"b@example.com\"],\"text\":\"x\"}",
                        0);
}

static void test_null_optional_fields_are_absent(void **state) {
        struct mail_request *req = parse_ok(
                "{\"id\":\"n\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"cc\":null,\"subject\":null,\"text\":null,\"html\":\"h\","
                "\"headers\":null,\"attachments\":null,\"deadline\":null}");

        (void)state;
        assert_int_equal(req->cc_cnt, 0);
        assert_string_equal(req->subject, "");
        assert_null(req->text);
        assert_string_equal(req->html, "h");
        request_destroy(req);
}

static void test_recipient_limit_counts_to_cc_and_bcc(void **state) {
        char err[256];
        struct request_limits two = {.max_bytes = 4096, .max_recipients = 2};
        const char *ok =
                "{\"id\":\"n\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"bcc\":[\"e@f.example\"],\"text\":\"x\"}";
        const char *over =
                "{\"id\":\"n\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"cc\":[\"g@h.example\"],\"bcc\":[\"e@f.example\"],\"text\":\"x\"}";
        char id[8];
        struct mail_request *req;

        (void)state;
        req = request_parse(ok, strlen(ok), &two, id, sizeof(id), err,
                            sizeof(err));
        assert_non_null(req);
        request_destroy(req);
        assert_null(request_parse(over, strlen(over), &two, id, sizeof(id), err,
                                  sizeof(err)));
        assert_string_equal(err, "to: 3 recipients in to, cc and bcc exceed "
                                 "request.max.recipients (2)");
}

static void test_base64_with_line_breaks_decodes(void **state) {
        struct mail_request *req = parse_ok(
                "{\"id\":\"n\",\"from\":\"a@b.example\",\"to\":[\"c@d.example\"],"
                "\"text\":\"x\",\"attachments\":[{\"filename\":\"f\","
                "\"content_base64\":\"aGVs\\r\\nbG8g\\nd29y bGQ=\"}]}");

        (void)state;
        assert_int_equal(req->attachments[0].data_len, 11);
        assert_memory_equal(req->attachments[0].data, "hello world", 11);
        request_destroy(req);
}

/* Once the message is built only the envelope, the id and what the result
 * echoes are read: the content goes, the rest stays. */
static void test_drop_content_keeps_the_envelope(void **state) {
        struct mail_request *req =
                parse_ok("{\"id\":\"a1\",\"from\":\"f@x.example\","
                         "\"to\":[\"t@x.example\"],\"subject\":\"s\","
                         "\"text\":\"body\",\"html\":\"<p>b</p>\","
                         "\"headers\":{\"X-A\":\"1\"},\"metadata\":{\"k\":1},"
                         "\"attachments\":[{\"filename\":\"a.txt\","
                         "\"content_base64\":\"aGVsbG8gd29ybGQ=\"}]}");

        (void)state;
        request_drop_content(req);
        assert_null(req->text);
        assert_null(req->html);
        assert_null(req->headers);
        assert_int_equal(req->header_cnt, 0);
        assert_null(req->attachments);
        assert_int_equal(req->attachment_cnt, 0);
        assert_string_equal(req->id, "a1");
        assert_string_equal(req->from.addr, "f@x.example");
        assert_int_equal(req->to_cnt, 1);
        assert_string_equal(req->subject, "s");
        assert_non_null(req->metadata);
        request_drop_content(req); /* again: nothing left to free */
        request_destroy(req);
}

static void test_errstr_truncated_to_its_size(void **state) {
        char err[8];
        char id[8];
        const char *json = "{\"id\":\"a\",\"nope\":1}";

        (void)state;
        assert_null(request_parse(json, strlen(json), &test_limits, id,
                                  sizeof(id), err, sizeof(err)));
        assert_string_equal(err, "unknown");
}

int main(void) {
        static const struct CMUnitTest fixed[] = {
                cmocka_unit_test(test_drop_content_keeps_the_envelope),
                cmocka_unit_test(
                        test_fixture_folders_hold_at_least_30_invalid_cases),
                cmocka_unit_test(test_a_kafka_key_is_an_id_by_the_id_rules),
                cmocka_unit_test(
                        test_subject_header_and_display_name_limits_name_field_and_setting),
                cmocka_unit_test(test_full_request_fields_parsed),
                cmocka_unit_test(
                        test_deadline_rfc3339_zone_offset_and_fraction),
                cmocka_unit_test(test_deadline_absent_is_zero),
                cmocka_unit_test(test_idbuf_filled_on_rejection),
                cmocka_unit_test(test_idbuf_empty_when_json_invalid),
                cmocka_unit_test(
                        test_idbuf_filled_whichever_parser_reads_the_request),
                cmocka_unit_test(test_idbuf_truncated_to_its_size),
                cmocka_unit_test(test_oversize_rejected_without_reading_bytes),
                cmocka_unit_test(test_address_forms_accepted),
                cmocka_unit_test(test_check_addr_limits_at_boundaries),
                cmocka_unit_test(
                        test_utf8_addresses_accepted_and_mark_smtputf8),
                cmocka_unit_test(test_null_optional_fields_are_absent),
                cmocka_unit_test(test_recipient_limit_counts_to_cc_and_bcc),
                cmocka_unit_test(test_base64_with_line_breaks_decodes),
                cmocka_unit_test(test_errstr_truncated_to_its_size),
        };
        char **invalid;
        char **valid;
        size_t ni = fixture_list("requests/invalid", &invalid);
        size_t nv = fixture_list("requests/valid", &valid);
        const struct fixture_cases sets[] = {
                {"rejects_invalid", test_invalid_fixture_rejected_with_reason,
                 invalid, sizeof(*invalid), ni},
                {"accepts_valid", test_valid_fixture_accepted, valid,
                 sizeof(*valid), nv},
        };
        int rc = fixture_run_group("request", fixed, FIXTURE_LEN(fixed), sets,
                                   FIXTURE_LEN(sets));

        fixture_free_list(invalid, ni);
        fixture_free_list(valid, nv);
        return rc;
}
