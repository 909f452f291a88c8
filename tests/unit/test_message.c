/*
 * Unit tests of message: the built bytes are valid SMTP DATA (CRLF only,
 * lines <= 998, dot-stuffed), headers are encoded and folded per RFC 5322 /
 * RFC 2047, bodies and attachments decode back to what the request held.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "message.h"
#include "request.h"

#define TEST_DATE_MS 1795867200000LL /* Sat, 28 Nov 2026 12:00:00 +0000 */

static const struct request_limits test_limits = {
        .max_bytes = 1 << 24,
        .max_recipients = 100,
};

struct built {
        struct mail_request *req;
        struct message *msg;
        char *text; /* data with dot-stuffing undone, NUL-terminated */
};

/* Checks what every DATA payload must satisfy. @header_soft: header lines
 * must also fit 78. */
/* In the header block of @d: a line that holds an encoded word is at most
 * 76 characters (RFC 2047 section 2), and a B-encoded word with "="
 * padding is the last encoded word of its field (GMime 3.2.10 to 3.2.13
 * stop decoding after a padded one). */
static void check_encoded_words(const char *d, size_t n) {
        const char *end = memmem(d, n, "\r\n\r\n", 4);
        const char *line = d;
        int padded = 0; /* this field had a padded B word */

        assert_non_null(end);
        while (line < end + 2) {
                const char *eol =
                        memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
                size_t len = (size_t)(eol - line);
                const char *p = line;

                if (line[0] != ' ' && line[0] != '\t')
                        padded = 0; /* a new field */
                if (memmem(line, len, "=?", 2) && len > 76) {
                        print_error("line of %zu with an encoded word: %.*s\n",
                                    len, (int)len, line);
                        fail();
                }
                while ((p = memmem(p, (size_t)(eol - p), "=?UTF-8?", 8)) !=
                       NULL) {
                        const char *q =
                                memmem(p + 10, (size_t)(eol - p - 10), "?=", 2);

                        assert_non_null(q);
                        if (padded) {
                                print_error(
                                        "an encoded word after a padded one: "
                                        "%.*s\n",
                                        (int)len, line);
                                fail();
                        }
                        if (p[8] == 'B' && q[-1] == '=')
                                padded = 1;
                        p = q + 2;
                }
                line = eol + 2;
        }
}

static void check_wellformed(const struct message *msg, int header_soft) {
        const char *d = msg->data;
        size_t n = msg->data_len;
        size_t line = 0;
        size_t start = 0;
        int in_headers = 1;

        assert_true(n >= 2);
        assert_memory_equal(d + n - 2, "\r\n", 2);
        if (header_soft)
                check_encoded_words(d, n);
        for (size_t i = 0; i < n; i++) {
                if (d[i] == '\r') {
                        assert_true(i + 1 < n && d[i + 1] == '\n');
                        /* A line that is only "." would end DATA early, a
                         * line starting with '.' must be stuffed. */
                        assert_false(line == 1 && d[start] == '.');
                        if (line > 0 && d[start] == '.')
                                assert_true(line >= 2 && d[start + 1] == '.');
                        if (line > 998)
                                print_error("line of %zu octets\n", line);
                        assert_true(line <= 998);
                        if (in_headers && header_soft) {
                                if (line > 78)
                                        print_error(
                                                "header line of %zu: %.*s\n",
                                                line, (int)line, d + start);
                                assert_true(line <= 78);
                        }
                        if (line == 0)
                                in_headers = 0;
                        i++;
                        line = 0;
                        start = i + 1;
                        continue;
                }
                assert_true(d[i] != '\n');
                assert_true(d[i] != '\0');
                line++;
        }
}

/* @returns 1 when the raw (dot-stuffed) DATA contains @s. */
static int data_has(const struct message *msg, const char *s) {
        return memmem(msg->data, msg->data_len, s, strlen(s)) != NULL;
}

static int ends_with(const char *s, const char *suffix) {
        size_t n = strlen(s);
        size_t k = strlen(suffix);

        return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Undoes dot-stuffing. */
static char *unstuff(const char *d, size_t n) {
        char *out = malloc(n + 1);
        size_t o = 0;
        int bol = 1;

        assert_non_null(out);
        for (size_t i = 0; i < n; i++) {
                if (bol && d[i] == '.')
                        i++;
                out[o++] = d[i];
                bol = d[i] == '\n';
        }
        out[o] = '\0';
        return out;
}

static struct built build_opts(const char *json, const char *domain) {
        struct built b = {0};
        char id[256];
        char err[256];
        struct message_opts opts = {.message_id_domain = domain,
                                    .date_ms = TEST_DATE_MS};

        b.req = request_parse(json, strlen(json), &test_limits, id, sizeof(id),
                              err, sizeof(err));
        if (b.req == NULL)
                print_error("request rejected: %s\n", err);
        assert_non_null(b.req);
        b.msg = message_build(b.req, &opts, err, sizeof(err));
        assert_non_null(b.msg);
        /* The payload ends with CRLF and the terminator follows it. */
        assert_true(b.msg->data_len >= 2);
        assert_memory_equal(b.msg->data + b.msg->data_len - 2, "\r\n.\r\n", 5);
        b.text = unstuff(b.msg->data, b.msg->data_len);
        return b;
}

static struct built build(const char *json) {
        return build_opts(json, NULL);
}

/* Builds from a jansson object (stolen), so tests need not escape JSON. */
static struct built build_json(json_t *o, int header_soft) {
        char *s = json_dumps(o, 0);
        struct built b;

        json_decref(o);
        b = build(s);
        free(s);
        check_wellformed(b.msg, header_soft);
        return b;
}

/* A message built in kept buffers (a message_scratch shared by the builds,
 * one of them larger than what the buffers keep) is the one built without
 * them, byte for byte; the buffers keep at most MESSAGE_SCRATCH_KEEP. */
static void test_kept_buffers_build_the_same_messages(void **state) {
        const size_t big = MESSAGE_SCRATCH_KEEP + 4096;
        char *large = malloc(big + 200);
        const char *jsons[] = {
                "{\"id\":\"k.1\",\"from\":\"Shop <s@shop.example>\","
                "\"to\":[\"a@example.com\"],\"subject\":\"One\",\"text\":\"a\\nb\"}",
                NULL, /* large */
                "{\"id\":\"k.3\",\"from\":\"s@shop.example\",\"to\":[\"b@example.com\"],"
                "\"subject\":\"Caf\u00e9\",\"text\":\"T\",\"html\":\"<p>H</p>\","
                "\"attachments\":[{\"filename\":\"a.txt\",\"content_base64\":\"aGk=\"}]}",
                "{\"id\":\"k.4\",\"from\":\"s@shop.example\",\"to\":[\"c@example.com\"],"
                "\"text\":\".dot\\nline\"}",
        };
        struct message_scratch ms;
        size_t n;

        (void)state;
        assert_non_null(large);
        n = (size_t)snprintf(large, 200,
                             "{\"id\":\"k.2\",\"from\":\"s@shop.example\","
                             "\"to\":[\"d@example.com\"],\"text\":\"");
        for (size_t i = 0; i < big; i++)
                large[n++] = i % 64 == 63 ? ' ' : 'x';
        memcpy(large + n, "\"}", 3);
        jsons[1] = large;
        message_scratch_init(&ms);
        for (int round = 0; round < 2; round++)
                for (size_t k = 0; k < sizeof(jsons) / sizeof(jsons[0]); k++) {
                        char id[64], err[256];
                        struct mail_request *req = request_parse(
                                jsons[k], strlen(jsons[k]), &test_limits, id,
                                sizeof(id), err, sizeof(err));
                        struct message_opts plain = {.date_ms = TEST_DATE_MS,
                                                     .headroom = round * 100};
                        struct message_opts kept = plain;
                        struct message *a, *b;

                        if (req == NULL)
                                fail_msg("request %zu: %s", k, err);
                        kept.scratch = &ms;
                        a = message_build(req, &plain, err, sizeof(err));
                        b = message_build(req, &kept, err, sizeof(err));
                        assert_non_null(a);
                        assert_non_null(b);
                        assert_int_equal(a->data_len, b->data_len);
                        assert_memory_equal(a->data, b->data, a->data_len + 3);
                        assert_int_equal(a->headroom, b->headroom);
                        assert_string_equal(a->message_id, b->message_id);
                        assert_true(dynbuf_size(&ms.ms_buf) <=
                                    MESSAGE_SCRATCH_KEEP);
                        assert_true(dynbuf_size(&ms.ms_word) <=
                                    MESSAGE_SCRATCH_KEEP);
                        if (k == 0 && round == 1) /* kept, not freed */
                                assert_true(dynbuf_size(&ms.ms_buf) > 0);
                        message_destroy(a);
                        message_destroy(b);
                        request_destroy(req);
                }
        message_scratch_fini(&ms);
        free(large);
}

static void built_free(struct built *b) {
        message_destroy(b->msg);
        request_destroy(b->req);
        free(b->text);
}

/* @returns the header section (up to and with the blank line) as a copy. */
static char *headers_of(const char *text) {
        const char *end = strstr(text, "\r\n\r\n");

        assert_non_null(end);
        return strndup(text, (size_t)(end - text) + 2);
}

/* @returns the unfolded value of the first header @name in @text (malloc'd),
 * or NULL. */
static char *header_get(const char *text, const char *name) {
        char *hs = headers_of(text);
        size_t nlen = strlen(name);
        char *val = NULL;
        const char *p = hs;

        while (*p != '\0') {
                const char *eol = strstr(p, "\r\n");

                if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
                        size_t cap = strlen(p) + 1;
                        size_t o = 0;
                        const char *q = p + nlen + 1;

                        val = malloc(cap);
                        assert_non_null(val);
                        for (;;) {
                                const char *e = strstr(q, "\r\n");

                                memcpy(val + o, q, (size_t)(e - q));
                                o += (size_t)(e - q);
                                q = e + 2;
                                if (*q != ' ' && *q != '\t')
                                        break;
                        }
                        val[o] = '\0';
                        if (val[0] == ' ')
                                memmove(val, val + 1, o);
                        break;
                }
                p = eol + 2;
        }
        free(hs);
        return val;
}

static int utf8_valid(const unsigned char *s, size_t n) {
        size_t i = 0;

        while (i < n) {
                size_t len;

                if (s[i] < 0x80)
                        len = 1;
                else if ((s[i] & 0xe0) == 0xc0 && s[i] >= 0xc2)
                        len = 2;
                else if ((s[i] & 0xf0) == 0xe0)
                        len = 3;
                else if ((s[i] & 0xf8) == 0xf0 && s[i] <= 0xf4)
                        len = 4;
                else
                        return 0;
                if (i + len > n)
                        return 0;
                for (size_t k = 1; k < len; k++)
                        if ((s[i + k] & 0xc0) != 0x80)
                                return 0;
                i += len;
        }
        return 1;
}

static int b64v(int c) {
        const char *t =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *p = c ? strchr(t, c) : NULL;

        return p != NULL ? (int)(p - t) : -1;
}

/* Decodes base64, skipping CRLF. @returns the length written to @out. */
static size_t b64_decode(const char *s, size_t n, unsigned char *out) {
        size_t o = 0;
        uint32_t acc = 0;
        int bits = 0;

        for (size_t i = 0; i < n; i++) {
                int v;

                if (s[i] == '\r' || s[i] == '\n' || s[i] == '=')
                        continue;
                v = b64v(s[i]);
                assert_true(v >= 0);
                acc = (acc << 6) | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (unsigned char)(acc >> bits);
                }
        }
        return o;
}

static int hexv(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Decodes RFC 2047 encoded words in an unfolded header value; checks that
 * every word is at most 75 chars and holds whole UTF-8 characters.
 * @returns a malloc'd string. */
static char *rfc2047_decode(const char *v) {
        size_t n = strlen(v);
        char *out = malloc(n + 1);
        size_t o = 0;
        size_t i = 0;
        int prev_word = 0;
        size_t word_end = 0; /* output length after the last encoded word */

        assert_non_null(out);
        while (i < n) {
                if (strncmp(v + i, "=?UTF-8?", 8) == 0) {
                        char enc = v[i + 8];
                        const char *start = v + i + 10;
                        const char *end = strstr(start, "?=");
                        size_t wlen;
                        size_t before = o;

                        assert_non_null(end);
                        assert_true(enc == 'B' || enc == 'Q');
                        assert_int_equal(v[i + 9], '?');
                        wlen = (size_t)(end + 2 - (v + i));
                        assert_true(wlen <= 75);
                        /* white space between two encoded words is dropped */
                        if (prev_word) {
                                o = word_end;
                                before = o;
                        }
                        if (enc == 'B') {
                                o += b64_decode(start, (size_t)(end - start),
                                                (unsigned char *)out + o);
                        } else {
                                for (const char *p = start; p < end; p++) {
                                        if (*p == '_') {
                                                out[o++] = ' ';
                                        } else if (*p == '=') {
                                                assert_true(hexv(p[1]) >= 0 &&
                                                            hexv(p[2]) >= 0);
                                                out[o++] =
                                                        (char)(hexv(p[1]) * 16 +
                                                               hexv(p[2]));
                                                p += 2;
                                        } else {
                                                out[o++] = *p;
                                        }
                                }
                        }
                        assert_true(utf8_valid((unsigned char *)out + before,
                                               o - before));
                        i = (size_t)(end + 2 - v);
                        prev_word = 1;
                        word_end = o;
                        continue;
                }
                if (v[i] != ' ')
                        prev_word = 0;
                out[o++] = v[i++];
        }
        out[o] = '\0';
        return out;
}

/* Decodes a quoted-printable body; checks lines <= 76. */
static char *qp_decode(const char *s, size_t n) {
        char *out = malloc(n + 1);
        size_t o = 0;
        size_t line = 0;

        assert_non_null(out);
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') {
                        assert_true(line <= 76);
                        /* no unencoded white space at a line end */
                        if (o > 0 && line > 0)
                                assert_true(s[i - 1] != ' ' &&
                                            s[i - 1] != '\t');
                        out[o++] = '\r';
                        out[o++] = '\n';
                        i++;
                        line = 0;
                        continue;
                }
                if (s[i] == '=') {
                        if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
                                assert_true(line + 1 <= 76);
                                i += 2;
                                line = 0;
                                continue;
                        }
                        assert_true(i + 2 < n || i + 2 == n);
                        assert_true(hexv(s[i + 1]) >= 0 && hexv(s[i + 2]) >= 0);
                        out[o++] = (char)(hexv(s[i + 1]) * 16 + hexv(s[i + 2]));
                        i += 2;
                        line += 3;
                        continue;
                }
                assert_true((unsigned char)s[i] < 128);
                out[o++] = s[i];
                line++;
        }
        out[o] = '\0';
        return out;
}

/* @returns the body of the part whose headers contain @ctype (the text
 * between the blank line after its headers and the next delimiter
 * "\r\n--=_km_..."), as a
 * copy; its headers in @hdrs when not NULL. */
static char *part_body(const char *text, const char *ctype, char **hdrs) {
        const char *h = strstr(text, ctype);
        const char *hstart;
        const char *body;
        const char *end;

        assert_non_null(h);
        hstart = h;
        while (hstart > text && !(hstart[-1] == '\n'))
                hstart--;
        body = strstr(h, "\r\n\r\n");
        assert_non_null(body);
        if (hdrs != NULL)
                *hdrs = strndup(hstart, (size_t)(body + 4 - hstart));
        body += 4;
        end = strstr(body, "\r\n--=_km_");
        if (end == NULL)
                end = body + strlen(body);
        return strndup(body, (size_t)(end - body));
}

/* Checks that the body of the part whose headers contain @ctype is
 * @expected. */
static void assert_part_body(const char *text, const char *ctype,
                             const char *expected) {
        char *body = part_body(text, ctype, NULL);

        assert_string_equal(body, expected);
        free(body);
}

static json_t *base_req(const char *id) {
        return json_pack("{s:s, s:s, s:[s], s:s}", "id", id, "from",
                         "Shop <no-reply@shop.example>", "to",
                         "Ann <ann@example.com>", "text", "Hello");
}

/* Builds base_req(@id) with the request field @field set to @value. */
static struct built build_with(const char *id, const char *field,
                               const char *value) {
        json_t *o = base_req(id);

        json_object_set_new(o, field, json_string(value));
        return build_json(o, 1);
}

/* Builds base_req("att") with one attachment @filename holding 0, 1, 2. */
static struct built build_attachment(const char *filename) {
        json_t *o = base_req("att");

        json_object_set_new(o, "attachments",
                            json_pack("[{s:s, s:s}]", "filename", filename,
                                      "content_base64", "AAEC"));
        return build_json(o, 1);
}

/* Checks that the unfolded header @name of @text is @expected. */
static void assert_header_equal(const char *text, const char *name,
                                const char *expected) {
        char *v = header_get(text, name);

        assert_non_null(v);
        assert_string_equal(v, expected);
        free(v);
}

/* Checks that the header @name of @text decodes (RFC 2047) to @expected. */
static void assert_header_decodes(const char *text, const char *name,
                                  const char *expected) {
        char *raw = header_get(text, name);
        char *dec;

        assert_non_null(raw);
        dec = rfc2047_decode(raw);
        if (strcmp(dec, expected) != 0)
                print_error("raw: %s\n", raw);
        assert_string_equal(dec, expected);
        free(raw);
        free(dec);
}

/* --- tests --- */

static void test_headers_in_contract_order(void **state) {
        json_t *o = base_req("order-1");
        struct built b;
        static const char *const order[] = {
                "Date:",       "From:",         "To:",
                "Cc:",         "Reply-To:",     "Subject:",
                "Message-ID:", "MIME-Version:", "X-Campaign:",
                "X-Second:",   "Content-Type:", "Content-Transfer-Encoding:",
        };
        const char *p;

        (void)state;
        json_object_set_new(o, "cc", json_pack("[s]", "cc@example.com"));
        json_object_set_new(o, "reply_to", json_string("help@shop.example"));
        json_object_set_new(o, "subject", json_string("Receipt"));
        json_object_set_new(
                o, "headers",
                json_pack("{s:s, s:s}", "X-Campaign", "fall", "X-Second", "2"));
        b = build_json(o, 1);
        p = b.text;
        for (size_t i = 0; i < FIXTURE_LEN(order); i++) {
                const char *q = strstr(p, order[i]);

                if (q == NULL)
                        print_error("%s missing or out of order\n", order[i]);
                assert_non_null(q);
                assert_true(q == b.text || q[-1] == '\n');
                p = q;
        }
        assert_memory_equal(b.text, "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n",
                            39);
        assert_non_null(strstr(b.text, "\r\nMIME-Version: 1.0\r\n"));
        built_free(&b);
}

static void test_date_header_rfc5322_utc(void **state) {
        const char *json = "{\"id\":\"d\",\"from\":\"a@b.example\","
                           "\"to\":[\"c@d.example\"],\"text\":\"x\"}";
        char id[8];
        char err[128];
        struct mail_request *req =
                request_parse(json, strlen(json), &test_limits, id, sizeof(id),
                              err, sizeof(err));
        struct message_opts opts = {.date_ms = 951782400999LL};
        struct message *msg;

        (void)state;
        assert_non_null(req);
        msg = message_build(req, &opts, err, sizeof(err));
        assert_non_null(msg);
        /* 2000-02-29 (a leap day), milliseconds dropped */
        assert_memory_equal(msg->data,
                            "Date: Tue, 29 Feb 2000 00:00:00 +0000\r\n", 39);
        message_destroy(msg);
        request_destroy(req);
}

static void test_bcc_absent_from_headers_but_in_rcpts(void **state) {
        json_t *o = base_req("bcc-1");
        struct built b;
        char *hs;

        (void)state;
        json_object_set_new(o, "cc",
                            json_pack("[s]", "Carol <carol@example.com>"));
        json_object_set_new(o, "bcc",
                            json_pack("[s,s]", "Hidden <hidden@example.com>",
                                      "audit@example.com"));
        b = build_json(o, 1);
        hs = headers_of(b.text);
        assert_null(strstr(hs, "hidden@example.com"));
        assert_null(strstr(hs, "audit@example.com"));
        assert_null(strstr(hs, "Bcc"));
        assert_null(strstr(b.text, "hidden@example.com"));
        assert_string_equal(b.msg->mail_from, "no-reply@shop.example");
        assert_int_equal(b.msg->rcpt_cnt, 4);
        assert_string_equal(b.msg->rcpts[0], "ann@example.com");
        assert_string_equal(b.msg->rcpts[1], "carol@example.com");
        assert_string_equal(b.msg->rcpts[2], "hidden@example.com");
        assert_string_equal(b.msg->rcpts[3], "audit@example.com");
        free(hs);
        built_free(&b);
}

static void test_utf8_addresses_written_raw_and_message_marked(void **state) {
        struct built b;
        const char *hdr_end;

        (void)state;
        b = build(
                "{\"id\":\"u1\",\"from\":\"J\u00f6rg <j\u00f6rg@b\u00fccher.example>\","
                "\"to\":[\"z\u00f6e@example.com\"],\"subject\":\"Gr\u00fc\u00dfe\","
                "\"text\":\"x\"}");
        check_wellformed(b.msg, 0);
        assert_int_equal(b.msg->smtputf8, 1);
        assert_string_equal(b.msg->mail_from, "j\xc3\xb6rg@b\xc3\xbc"
                                              "cher.example");
        assert_string_equal(b.msg->rcpts[0], "z\xc3\xb6"
                                             "e@example.com");
        /* RFC 6532: addresses raw; display name and subject still encoded. */
        assert_non_null(strstr(b.text, "\r\nTo: z\xc3\xb6"
                                       "e@example.com\r\n"));
        assert_non_null(strstr(b.text, "<j\xc3\xb6rg@b\xc3\xbc"
                                       "cher.example>\r\n"));
        assert_non_null(strstr(b.text, "From: =?UTF-8?"));
        assert_non_null(strstr(b.text, "Subject: =?UTF-8?"));
        /* The Message-ID domain comes from the From address, UTF-8 too. */
        assert_string_equal(b.msg->message_id, "<u1@b\xc3\xbc"
                                               "cher.example>");
        built_free(&b);

        /* An ASCII message keeps an ASCII header block. */
        b = build("{\"id\":\"u2\",\"from\":\"J\u00f6rg <a@example.com>\","
                  "\"to\":[\"b@example.com\"],\"text\":\"Gr\u00fc\u00dfe\"}");
        assert_int_equal(b.msg->smtputf8, 0);
        hdr_end = strstr(b.text, "\r\n\r\n");
        assert_non_null(hdr_end);
        for (const char *p = b.text; p < hdr_end; p++)
                assert_true((unsigned char)*p < 0x80);
        built_free(&b);
}

static void test_bcc_only_request_has_no_to_header(void **state) {
        struct built b = build("{\"id\":\"b\",\"from\":\"a@b.example\","
                               "\"bcc\":[\"c@d.example\"],\"text\":\"x\"}");
        char *to;

        (void)state;
        check_wellformed(b.msg, 1);
        to = header_get(b.text, "To");
        assert_null(to);
        assert_int_equal(b.msg->rcpt_cnt, 1);
        built_free(&b);
}

static void test_message_id_deterministic_from_domain_or_option(void **state) {
        const char *json =
                "{\"id\":\"7f3c.abc\",\"from\":\"Shop <no-reply@shop.example>\","
                "\"to\":[\"c@d.example\"],\"text\":\"x\"}";
        struct built a = build(json);
        struct built b = build(json);
        struct built c = build_opts(json, "mail.example.net");
        char buf[64];

        (void)state;
        assert_string_equal(a.msg->message_id, "<7f3c.abc@shop.example>");
        assert_header_equal(a.text, "Message-ID", "<7f3c.abc@shop.example>");
        /* the same request gives the same bytes, boundaries included */
        assert_int_equal(a.msg->data_len, b.msg->data_len);
        assert_memory_equal(a.msg->data, b.msg->data, a.msg->data_len);
        assert_string_equal(c.msg->message_id, "<7f3c.abc@mail.example.net>");
        assert_int_equal(message_id_for(a.req, "", buf, sizeof(buf)), 0);
        assert_string_equal(buf, "<7f3c.abc@shop.example>");
        assert_int_equal(message_id_for(a.req, NULL, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "<7f3c.abc@shop.example>");
        assert_int_equal(message_id_for(a.req, "x.example", buf, sizeof(buf)),
                         0);
        assert_string_equal(buf, "<7f3c.abc@x.example>");
        built_free(&a);
        built_free(&b);
        built_free(&c);
}

static void test_headroom_leaves_the_message_as_it_is(void **state) {
        static const char field[] = "DKIM-Signature: v=1; a=ed25519-sha256;\r\n"
                                    " b=abc\r\n";
        struct built a = build("{\"id\":\"h\",\"from\":\"a@b.example\","
                               "\"to\":[\"c@d.example\"],\"text\":\".x\"}");
        struct message_opts opts = {.date_ms = TEST_DATE_MS, .headroom = 100};
        struct message *m;
        char err[128];
        const char *buf;
        size_t len = strlen(field);

        (void)state;
        m = message_build(a.req, &opts, err, sizeof(err));
        assert_non_null(m);
        /* the same bytes as without headroom, the terminator after them */
        assert_int_equal(m->data_len, a.msg->data_len);
        assert_memory_equal(m->data, a.msg->data, a.msg->data_len + 3);
        assert_int_equal(m->headroom, 100);
        assert_ptr_equal(m->data, m->buf + 100);

        /* within the headroom: in place */
        buf = m->buf;
        assert_int_equal(message_prepend(m, field, len), 0);
        assert_ptr_equal(m->buf, buf);
        assert_int_equal(m->headroom, 100 - len);
        assert_int_equal(m->data_len, a.msg->data_len + len);
        assert_memory_equal(m->data, field, len);
        assert_memory_equal(m->data + len, a.msg->data, a.msg->data_len + 3);

        /* beyond it: copied */
        assert_int_equal(message_prepend(m, field, len), 0);
        assert_int_equal(message_prepend(m, field, len), 0);
        assert_int_equal(m->headroom, 0);
        assert_ptr_equal(m->data, m->buf);
        assert_int_equal(m->data_len, a.msg->data_len + 3 * len);
        for (size_t i = 0; i < 3; i++)
                assert_memory_equal(m->data + i * len, field, len);
        assert_memory_equal(m->data + 3 * len, a.msg->data,
                            a.msg->data_len + 3);
        message_destroy(m);

        /* no headroom: copied at once */
        m = message_build(a.req,
                          &(struct message_opts){.date_ms = TEST_DATE_MS}, err,
                          sizeof(err));
        assert_non_null(m);
        assert_int_equal(message_prepend(m, field, len), 0);
        assert_memory_equal(m->data, field, len);
        assert_memory_equal(m->data + len, a.msg->data, a.msg->data_len + 3);
        message_destroy(m);
        built_free(&a);
}

static void
test_message_id_for_rejects_bad_domain_and_small_buffer(void **state) {
        struct built a = build("{\"id\":\"m\",\"from\":\"a@b.example\","
                               "\"to\":[\"c@d.example\"],\"text\":\"x\"}");
        char buf[64];
        char small[8];
        char err[128];
        struct message_opts opts = {.message_id_domain = "bad domain>",
                                    .date_ms = 0};

        (void)state;
        assert_int_equal(message_id_for(a.req, "bad domain", buf, sizeof(buf)),
                         -1);
        assert_int_equal(message_id_for(a.req, "x\r\ny", buf, sizeof(buf)), -1);
        assert_int_equal(message_id_for(a.req, NULL, small, sizeof(small)), -1);
        assert_null(message_build(a.req, &opts, err, sizeof(err)));
        assert_string_equal(err, "message: invalid Message-ID domain");
        built_free(&a);
}

/* Found by fuzz_request: a From address literal (valid in the wire format)
 * made message_build() fail when message.id.domain was unset. */
static void test_message_id_domain_from_address_literal(void **state) {
        struct built a =
                build("{\"id\":\"m\",\"from\":\"a@[IPv6:2001:db8::1]\","
                      "\"to\":[\"c@d.example\"],\"text\":\"x\"}");
        struct built b = build("{\"id\":\"m\",\"from\":\"a@[192.0.2.1]\","
                               "\"to\":[\"c@d.example\"],\"text\":\"x\"}");

        (void)state;
        assert_string_equal(a.msg->message_id, "<m@[IPv6:2001:db8::1]>");
        assert_string_equal(b.msg->message_id, "<m@[192.0.2.1]>");
        built_free(&a);
        built_free(&b);
}

/* Builds base_req("s") with @subject (and @from when not NULL) and checks
 * that the Subject is encoded, ASCII only, and decodes back to @subject. */
static void check_subject_round_trip(const char *subject, const char *from) {
        json_t *o = base_req("s");
        struct built b;
        char *raw;

        json_object_set_new(o, "subject", json_string(subject));
        if (from != NULL)
                json_object_set_new(o, "from", json_string(from));
        b = build_json(o, 1); /* check_encoded_words() */
        raw = header_get(b.text, "Subject");
        assert_non_null(raw);
        /* encoded, so nothing non-ASCII is left in the header */
        for (const char *p = raw; *p != '\0'; p++)
                assert_true((unsigned char)*p < 128 && *p != '\x01');
        assert_non_null(strstr(raw, "=?UTF-8?"));
        assert_header_decodes(b.text, "Subject", subject);
        free(raw);
        built_free(&b);
}

static void test_subject_rfc2047_encoded_and_decodes_back(void **state) {
        static const char *const subjects[] = {
                "Grüße aus Köln",
                "日本語のメールの件名はとても長くなることがありますので、折り返しが必要です",
                "Emoji 🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉 party",
                "Mostly ASCII text with one é near the end of a rather long subject line here",
                "literal =?UTF-8?B?notaword?= stays literal",
                "tab\tand control \x01 char",
                "é? equals= under_score and space",
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(subjects); i++)
                check_subject_round_trip(subjects[i], NULL);
}

static void test_encoded_words_every_parser_reads(void **state) {
        /* Subjects of the kind GMime 3.2.13 cut after the first word when a
         * padded B word came before another, and texts whose character
         * boundaries never fall on a 3-byte group ("a" then "é", "a"
         * repeated: 1, 2, 1, 2, ... bytes). */
        static const char *const subjects[] = {
                "[Магазин] Заказ отправлен: номер 123456, доставка завтра",
                "Ваш заказ №98765 отправлен и будет доставлен курьером в течение двух дней",
                "aaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaéaé",
                "Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega Ωmega",
                "🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a🎉a",
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(subjects); i++)
                check_subject_round_trip(subjects[i],
                                         "Отдел доставки интернет-магазина "
                                         "«Ромашка» <shop@example.com>");
}

static void test_encoded_word_uses_shorter_of_q_and_b(void **state) {
        static const struct {
                const char *subject;
                const char *encoded;
        } cases[] = {
                {"Café au lait", "=?UTF-8?Q?Caf=C3=A9_au_lait?="},
                {"日本語", "=?UTF-8?B?5pel5pys6Kqe?="},
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(cases); i++) {
                struct built b = build_with("s", "subject", cases[i].subject);

                assert_header_equal(b.text, "Subject", cases[i].encoded);
                built_free(&b);
        }
}

static void
test_long_ascii_subject_folded_and_unfolds_to_original(void **state) {
        const char *subject =
                "This is a rather long subject line that will certainly need "
                "folding because it goes well past seventy-eight characters, "
                "and then   keeps  going with odd   spacing for a while longer";
        struct built b = build_with("s", "subject", subject);
        char *hs;

        (void)state;
        hs = headers_of(b.text);
        /* folded: the Subject spans more than one line */
        assert_non_null(strstr(strstr(hs, "Subject:"), "\r\n "));
        assert_header_equal(b.text, "Subject", subject);
        free(hs);
        built_free(&b);
}

static void test_unfoldable_long_header_value_encoded_within_998(void **state) {
        char *word = malloc(3001);
        json_t *o = base_req("s");
        struct built b;

        (void)state;
        memset(word, 'x', 3000);
        word[3000] = '\0';
        json_object_set_new(o, "subject", json_string(word));
        json_object_set_new(o, "headers", json_pack("{s:s}", "X-Long", word));
        b = build_json(o, 1);
        assert_header_decodes(b.text, "Subject", word);
        assert_header_decodes(b.text, "X-Long", word);
        free(word);
        built_free(&b);
}

/* Found by fuzz_request (tests/fuzz/regressions/fuzz_request/): a fold goes
 * only before white space, so a long white space run (before a word, at the
 * end, or alone) used to make a header line over 998 octets. */
static void
test_long_white_space_runs_in_header_values_within_998(void **state) {
        char *v1 = malloc(1003);
        char *v2 = malloc(1801);
        char *v3 = malloc(1001);
        json_t *o = base_req("w");
        struct built b;

        (void)state;
        v1[0] = 'a';
        memset(v1 + 1, ' ', 1000);
        v1[1001] = 'b';
        v1[1002] = '\0';
        memset(v2, 'a', 900);
        memset(v2 + 900, ' ', 900);
        v2[1800] = '\0';
        memset(v3, ' ', 1000);
        v3[1000] = '\0';
        json_object_set_new(o, "subject", json_string(v1));
        json_object_set_new(
                o, "headers",
                json_pack("{s:s, s:s}", "X-Trail", v2, "X-Pad", v3));
        b = build_json(o, 1);
        assert_header_decodes(b.text, "Subject", v1);
        assert_header_decodes(b.text, "X-Trail", v2);
        assert_header_decodes(b.text, "X-Pad", v3);
        free(v1);
        free(v2);
        free(v3);
        built_free(&b);
}

static void test_display_name_with_specials_quoted(void **state) {
        json_t *o = json_pack("{s:s, s:s, s:[s,s,s], s:s}", "id", "q", "from",
                              "\"Shop, Inc.\" <no-reply@shop.example>", "to",
                              "\"Ann \\\"A\\\" \\\\ Lee\" <ann@example.com>",
                              "Plain Name <p@example.com>", "bare@example.com",
                              "text", "x");
        struct built b;

        (void)state;
        b = build_json(o, 1);
        assert_header_equal(b.text, "From",
                            "\"Shop, Inc.\" <no-reply@shop.example>");
        assert_header_equal(b.text, "To",
                            "\"Ann \\\"A\\\" \\\\ Lee\" <ann@example.com>, "
                            "Plain Name <p@example.com>, bare@example.com");
        assert_string_equal(b.req->to[0].display, "Ann \"A\" \\ Lee");
        built_free(&b);
}

static void test_display_name_non_ascii_encoded_and_decodes_back(void **state) {
        json_t *o;
        struct built b;
        char *to;

        (void)state;
        o = json_pack("{s:s, s:s, s:[s,s], s:s}", "id", "u", "from",
                      "Émilie Dupont-Lefèvre <emilie@example.fr>", "to",
                      "山田太郎 <taro@example.jp>",
                      "\"Zoë, \\\"the\\\" Ünal\" <z@example.com>", "text", "x");
        b = build_json(o, 1);
        assert_header_decodes(b.text, "From",
                              "Émilie Dupont-Lefèvre <emilie@example.fr>");
        assert_header_decodes(b.text, "To",
                              "山田太郎 <taro@example.jp>, "
                              "Zoë, \"the\" Ünal <z@example.com>");
        /* the Q words of a phrase carry no specials as they are */
        to = header_get(b.text, "To");
        assert_null(strstr(to, "\""));
        free(to);
        built_free(&b);
}

static void test_address_list_folded_between_addresses(void **state) {
        json_t *to = json_array();
        json_t *o = base_req("f");
        struct built b;
        char *hs;
        char *raw;
        const char *p;

        (void)state;
        for (int i = 0; i < 12; i++) {
                char a[64];

                snprintf(a, sizeof(a),
                         "Person Number %d <person%d@example.com>", i, i);
                json_array_append_new(to, json_string(a));
        }
        json_object_set_new(o, "to", to);
        b = build_json(o, 1);
        hs = headers_of(b.text);
        /* folded only between mailboxes: every continuation line of To
         * starts a mailbox and every line but the last ends with ',' */
        p = strstr(hs, "To:");
        while ((p = strstr(p, "\r\n ")) != NULL && p < strstr(hs, "Subject:")) {
                assert_int_equal(p[-1], ',');
                p += 3;
                assert_true(strncmp(p, "Person Number ", 14) == 0);
        }
        raw = header_get(b.text, "To");
        assert_true(strncmp(raw,
                            "Person Number 0 <person0@example.com>, "
                            "Person Number 1 <person1@example.com>",
                            76) == 0);
        assert_non_null(strstr(raw, "Person Number 11 <person11@example.com>"));
        free(raw);
        free(hs);
        built_free(&b);
}

static void test_custom_header_non_ascii_encoded_ascii_kept(void **state) {
        json_t *o = base_req("h");
        struct built b;
        char *v;

        (void)state;
        json_object_set_new(o, "headers",
                            json_pack("{s:s, s:s, s:s}", "X-Note", "naïve café",
                                      "List-Unsubscribe",
                                      "<https://shop.example/u/1>", "X-Empty",
                                      ""));
        b = build_json(o, 1);
        v = header_get(b.text, "X-Note");
        assert_non_null(strstr(v, "=?UTF-8?"));
        free(v);
        assert_header_decodes(b.text, "X-Note", "naïve café");
        assert_header_equal(b.text, "List-Unsubscribe",
                            "<https://shop.example/u/1>");
        assert_non_null(strstr(b.text, "\r\nX-Empty:\r\n"));
        built_free(&b);
}

static void test_header_name_starting_with_dot_is_stuffed(void **state) {
        json_t *o = base_req("h");
        struct built b;

        (void)state;
        json_object_set_new(o, "headers", json_pack("{s:s}", ".X-Dot", "1"));
        b = build_json(o, 1);
        assert_true(data_has(b.msg, "\r\n..X-Dot: 1\r\n"));
        assert_non_null(strstr(b.text, "\r\n.X-Dot: 1\r\n"));
        built_free(&b);
}

static void test_text_only_is_text_plain_7bit(void **state) {
        struct built b = build_with("t", "text", "Hello\r\nWorld\r\n");

        (void)state;
        assert_header_equal(b.text, "Content-Type",
                            "text/plain; charset=utf-8");
        assert_header_equal(b.text, "Content-Transfer-Encoding", "7bit");
        assert_non_null(strstr(b.text, "\r\n\r\nHello\r\nWorld\r\n"));
        /* no extra blank line added after a body that ends with a newline */
        assert_true(ends_with(b.text, "\r\n\r\nHello\r\nWorld\r\n"));
        built_free(&b);
}

static void test_body_without_final_newline_gets_crlf(void **state) {
        struct built b = build_json(base_req("t"), 1);

        (void)state;
        assert_true(ends_with(b.text, "\r\n\r\nHello\r\n"));
        built_free(&b);
}

static void test_html_only_is_text_html(void **state) {
        json_t *o = base_req("t");
        struct built b;

        (void)state;
        json_object_del(o, "text");
        json_object_set_new(o, "html", json_string("<p>Hi</p>"));
        b = build_json(o, 1);
        assert_header_equal(b.text, "Content-Type", "text/html; charset=utf-8");
        assert_null(strstr(b.text, "multipart"));
        built_free(&b);
}

static void test_text_and_html_multipart_alternative_text_first(void **state) {
        json_t *o = base_req("alt");
        struct built b;
        char *ct;
        char *boundary;
        char delim[128];
        char close[128];
        const char *plain;
        const char *html;

        (void)state;
        json_object_set_new(o, "html", json_string("<p>Hello</p>"));
        b = build_json(o, 1);
        ct = header_get(b.text, "Content-Type");
        assert_true(strncmp(ct, "multipart/alternative; boundary=\"", 33) == 0);
        boundary = strndup(ct + 33, strlen(ct) - 34);
        assert_null(header_get(b.text, "Content-Transfer-Encoding"));
        snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
        snprintf(close, sizeof(close), "\r\n--%s--\r\n", boundary);
        assert_non_null(strstr(b.text, delim));
        assert_non_null(strstr(b.text, close));
        plain = strstr(b.text, "Content-Type: text/plain");
        html = strstr(b.text, "Content-Type: text/html");
        assert_non_null(plain);
        assert_non_null(html);
        assert_true(plain < html);
        assert_true(html < strstr(b.text, close));
        assert_part_body(b.text, "Content-Type: text/plain", "Hello");
        assert_part_body(b.text, "Content-Type: text/html", "<p>Hello</p>");
        free(boundary);
        free(ct);
        built_free(&b);
}

static void test_attachment_base64_decodes_back_in_76_char_lines(void **state) {
        unsigned char data[5000];
        char *b64;
        size_t b64_len;
        json_t *o = base_req("att");
        struct built b;
        char *ct;
        char *hdrs;
        char *body;
        unsigned char *dec;
        size_t n;
        const char *line;

        (void)state;
        srand(7);
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (unsigned char)rand();
        b64_len = (sizeof(data) + 2) / 3 * 4;
        b64 = malloc(b64_len + 1);
        {
                static const char t[] =
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                size_t o2 = 0;

                for (size_t i = 0; i < sizeof(data); i += 3) {
                        uint32_t v = (uint32_t)data[i] << 16;

                        if (i + 1 < sizeof(data))
                                v |= (uint32_t)data[i + 1] << 8;
                        if (i + 2 < sizeof(data))
                                v |= data[i + 2];
                        b64[o2++] = t[v >> 18];
                        b64[o2++] = t[(v >> 12) & 63];
                        b64[o2++] =
                                i + 1 < sizeof(data) ? t[(v >> 6) & 63] : '=';
                        b64[o2++] = i + 2 < sizeof(data) ? t[v & 63] : '=';
                }
                b64[o2] = '\0';
        }
        json_object_set_new(o, "html", json_string("<p>x</p>"));
        json_object_set_new(
                o, "attachments",
                json_pack("[{s:s, s:s, s:s}, {s:s, s:s}]", "filename", "r.pdf",
                          "content_type", "application/pdf", "content_base64",
                          b64, "filename", "empty.txt", "content_base64", ""));
        b = build_json(o, 1);
        ct = header_get(b.text, "Content-Type");
        assert_true(strncmp(ct, "multipart/mixed; boundary=", 26) == 0);
        /* body (an alternative) comes first, then the attachments */
        assert_true(strstr(b.text, "multipart/alternative") <
                    strstr(b.text, "application/pdf"));
        body = part_body(b.text, "Content-Type: application/pdf", &hdrs);
        assert_non_null(strstr(
                hdrs, "Content-Type: application/pdf; name=\"r.pdf\"\r\n"));
        assert_non_null(strstr(
                hdrs,
                "Content-Disposition: attachment; filename=\"r.pdf\"\r\n"));
        assert_non_null(strstr(hdrs, "Content-Transfer-Encoding: base64\r\n"));
        for (line = body; *line != '\0';) {
                const char *e = strstr(line, "\r\n");
                size_t l = e != NULL ? (size_t)(e - line) : strlen(line);

                assert_true(l <= 76);
                if (e != NULL)
                        assert_int_equal(l, 76);
                line += l + (e != NULL ? 2 : 0);
        }
        dec = malloc(strlen(body));
        n = b64_decode(body, strlen(body), dec);
        assert_int_equal(n, sizeof(data));
        assert_memory_equal(dec, data, sizeof(data));
        free(dec);
        free(body);
        free(hdrs);
        assert_part_body(b.text, "name=\"empty.txt\"", "");
        assert_non_null(strstr(
                b.text,
                "Content-Type: application/octet-stream; name=\"empty.txt\""));
        free(ct);
        free(b64);
        built_free(&b);
}

/* Decodes an RFC 2231 value (name*=utf-8''.. or name*0*=..; name*1*=..)
 * of parameter @name from unfolded header @h. */
static char *rfc2231_get(const char *h, const char *name) {
        char *out = malloc(strlen(h) + 1);
        size_t o = 0;
        char key[64];
        const char *p;
        unsigned sec = 0;

        assert_non_null(out);
        snprintf(key, sizeof(key), " %s*=utf-8''", name);
        p = strstr(h, key);
        if (p != NULL) {
                p += strlen(key);
                goto decode_one;
        }
        for (;; sec++) {
                snprintf(key, sizeof(key), " %s*%u*=%s", name, sec,
                         sec == 0 ? "utf-8''" : "");
                p = strstr(h, key);
                if (p == NULL)
                        break;
                p += strlen(key);
        decode_one:
                while (*p != '\0' && *p != ';') {
                        if (*p == '%') {
                                out[o++] = (char)(hexv(p[1]) * 16 + hexv(p[2]));
                                p += 3;
                        } else {
                                out[o++] = *p++;
                        }
                }
                if (sec == 0 && strstr(h, "*0*=") == NULL)
                        break;
        }
        out[o] = '\0';
        return out;
}

/* Checks that parameter @param of header @name in the headers @hdrs decodes
 * (RFC 2231) to @expected. */
static void assert_param_decodes(const char *hdrs, const char *name,
                                 const char *param, const char *expected) {
        char *v = header_get(hdrs, name);
        char *dec;

        assert_non_null(v);
        dec = rfc2231_get(v, param);
        assert_string_equal(dec, expected);
        free(dec);
        free(v);
}

static void test_attachment_non_ascii_filename_uses_rfc2231(void **state) {
        static const char *const names[] = {
                "Überweisung März.pdf",
                "Überweisung für März 2026 — sehr langer Dateiname mit Umlauten äöü und noch mehr.pdf",
                "a very long plain ascii file name that does not fit on one header line.txt",
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(names); i++) {
                struct built b = build_attachment(names[i]);
                char *hdrs;
                char *body;
                char *disp;

                body = part_body(b.text,
                                 "Content-Type: application/octet-stream",
                                 &hdrs);
                assert_string_equal(body, "AAEC");
                disp = header_get(hdrs, "Content-Disposition");
                assert_non_null(disp);
                assert_true(strncmp(disp, "attachment;", 11) == 0);
                free(disp);
                assert_param_decodes(hdrs, "Content-Disposition", "filename",
                                     names[i]);
                assert_param_decodes(hdrs, "Content-Type", "name", names[i]);
                free(body);
                free(hdrs);
                built_free(&b);
        }
}

static void test_attachment_filename_with_quote_escaped(void **state) {
        struct built b = build_attachment("a \"b\".txt");

        (void)state;
        assert_non_null(strstr(b.text, "filename=\"a \\\"b\\\".txt\""));
        built_free(&b);
}

static void test_non_ascii_body_quoted_printable_decodes_back(void **state) {
        const char *text = "Schöne Grüße = equals\nline with trailing space \n"
                           "tab at end\t\n.starts with dot\n日本語";
        json_t *o = base_req("qp");
        struct built b;
        char *hdrs;
        char *body;
        char *dec;

        (void)state;
        json_object_set_new(o, "text", json_string(text));
        json_object_set_new(o, "html", json_string("<p>ok</p>"));
        b = build_json(o, 1);
        body = part_body(b.text, "Content-Type: text/plain", &hdrs);
        assert_non_null(
                strstr(hdrs, "Content-Transfer-Encoding: quoted-printable"));
        dec = qp_decode(body, strlen(body));
        assert_string_equal(dec,
                            "Schöne Grüße = equals\r\nline with trailing "
                            "space \r\ntab at end\t\r\n.starts with dot\r\n"
                            "日本語");
        /* a leading dot is encoded rather than left to dot-stuffing */
        assert_non_null(strstr(body, "\r\n=2Estarts with dot"));
        free(dec);
        free(body);
        free(hdrs);
        built_free(&b);
}

static void test_long_line_body_quoted_printable_lines_76(void **state) {
        char *text = malloc(5001);
        json_t *o = base_req("qp");
        struct built b;
        char *hdrs;
        char *body;
        char *dec;

        (void)state;
        for (int i = 0; i < 5000; i++)
                text[i] = (char)('a' + i % 26);
        text[5000] = '\0';
        text[1000] = '=';
        text[74] = '.';
        text[150] = '.';
        json_object_set_new(o, "text", json_string(text));
        json_object_set_new(o, "html", json_string("<p>x</p>"));
        b = build_json(o, 1);
        body = part_body(b.text, "Content-Type: text/plain", &hdrs);
        assert_non_null(strstr(hdrs, "quoted-printable"));
        dec = qp_decode(body, strlen(body)); /* checks lines <= 76 */
        assert_string_equal(dec, text);
        free(dec);
        free(body);
        free(hdrs);
        free(text);
        built_free(&b);
}

static void test_line_of_998_octets_stays_7bit_999_becomes_qp(void **state) {
        /* a first line of @len octets (@first, then 'a'), then "end" */
        static const struct {
                size_t len;
                char first;
                const char *encoding;
        } cases[] = {
                {998, 'a', "7bit"},
                {999, 'a', "quoted-printable"},
                /* 998 octets starting with '.' would be 999 once stuffed */
                {998, '.', "quoted-printable"},
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(cases); i++) {
                char text[1200];
                struct built b;

                memset(text, 'a', cases[i].len);
                text[0] = cases[i].first;
                memcpy(text + cases[i].len, "\nend", 5);
                b = build_with("l", "text", text);
                assert_header_equal(b.text, "Content-Transfer-Encoding",
                                    cases[i].encoding);
                built_free(&b);
        }
}

/* The transfer encoding a text body gets, at the edges of each rule:
 * ASCII only, lines within 998 octets once stuffed (whatever ends them),
 * no boundary prefix anywhere (also at the very end). */
static void test_text_body_encoding_choice_at_the_edges(void **state) {
        static const struct {
                const char *text;
                const char *encoding;
        } cases[] = {
                {"", "7bit"},
                {"plain words\nand more", "7bit"},
                {"a=b =_km =_k_m_ = _km_", "7bit"},
                {"ends with =_km_", "quoted-printable"},
                {"=_km_ starts", "quoted-printable"},
                {"==_km_x", "quoted-printable"},
                {"seven bytes\x7f", "7bit"},
                {"caf\xc3\xa9", "quoted-printable"},
                {"line\rline\r\nline\n\n.\r", "7bit"},
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(cases); i++) {
                struct built b = build_with("enc", "text", cases[i].text);

                assert_header_equal(b.text, "Content-Transfer-Encoding",
                                    cases[i].encoding);
                built_free(&b);
        }
}

/* A CR alone ends a line for the 998-octet rule, as LF and CRLF do. */
static void test_line_rule_counts_lines_ended_by_cr(void **state) {
        static const struct {
                const char *sep;
                const char *encoding;
        } cases[] = {
                {"\r", "7bit"},
                {"\n", "7bit"},
                {"\r\n", "7bit"},
                {"", "quoted-printable"},
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(cases); i++) {
                char text[2100];
                size_t n = strlen(cases[i].sep);
                struct built b;

                memset(text, 'a', 600);
                memcpy(text + 600, cases[i].sep, n);
                memset(text + 600 + n, 'b', 600);
                text[1200 + n] = '\0';
                b = build_with("cr", "text", text);
                assert_header_equal(b.text, "Content-Transfer-Encoding",
                                    cases[i].encoding);
                built_free(&b);
        }
}

/* The Date header's day has no leading zero, the time has. */
static void test_date_header_fields_padded_as_rfc5322(void **state) {
        static const struct {
                int64_t ms;
                const char *date;
        } cases[] = {
                {0, "Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"},
                {1795867200000LL, "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"},
                {1801472705123LL, "Date: Mon, 1 Feb 2027 09:05:05 +0000\r\n"},
                {253402300799000LL,
                 "Date: Fri, 31 Dec 9999 23:59:59 +0000\r\n"},
        };

        (void)state;
        for (size_t i = 0; i < FIXTURE_LEN(cases); i++) {
                const char *json = "{\"id\":\"d\",\"from\":\"a@b.example\","
                                   "\"to\":[\"c@d.example\"],\"text\":\"x\"}";
                char id[8];
                char err[128];
                struct mail_request *req =
                        request_parse(json, strlen(json), &test_limits, id,
                                      sizeof(id), err, sizeof(err));
                struct message_opts opts = {.date_ms = cases[i].ms};
                struct message *msg;

                assert_non_null(req);
                msg = message_build(req, &opts, err, sizeof(err));
                assert_non_null(msg);
                assert_true(msg->data_len > strlen(cases[i].date));
                assert_memory_equal(msg->data, cases[i].date,
                                    strlen(cases[i].date));
                message_destroy(msg);
                request_destroy(req);
        }
}

static void test_bare_lf_and_cr_normalised_to_crlf(void **state) {
        json_t *o = base_req("n");
        struct built b;

        (void)state;
        json_object_set_new(o, "text", json_string("a\nb\rc\r\nd\n\ne\r\rf"));
        json_object_set_new(o, "html", json_string("<p>\n</p>\r"));
        b = build_json(o, 1);
        assert_part_body(b.text, "Content-Type: text/plain",
                         "a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\nf");
        assert_part_body(b.text, "Content-Type: text/html", "<p>\r\n</p>\r\n");
        built_free(&b);
}

static void test_dot_stuffing_of_body_lines(void **state) {
        struct built b =
                build_with("dot", "text", ".\n..\n.hidden\nmid.dle\n.");

        (void)state;
        assert_true(data_has(b.msg, "\r\n\r\n..\r\n...\r\n..hidden\r\n"
                                    "mid.dle\r\n..\r\n"));
        /* undone, the body is the original */
        assert_non_null(strstr(
                b.text, "\r\n\r\n.\r\n..\r\n.hidden\r\nmid.dle\r\n.\r\n"));
        built_free(&b);
}

static void test_body_containing_boundary_prefix_forced_to_qp(void **state) {
        json_t *o;
        struct built b;
        char *ct;
        char *body;
        char *dec;
        char text[256];

        (void)state;
        /* a text that contains this very message's boundary */
        o = base_req("bnd");
        json_object_set_new(o, "html", json_string("<p>x</p>"));
        b = build_json(o, 1);
        ct = header_get(b.text, "Content-Type");
        snprintf(text, sizeof(text), "before\n--%.*s\nafter\n--%.*s--\n",
                 (int)(strlen(ct) - 34), ct + 33, (int)(strlen(ct) - 34),
                 ct + 33);
        free(ct);
        built_free(&b);

        o = base_req("bnd");
        json_object_set_new(o, "html", json_string("<p>x</p>"));
        json_object_set_new(o, "text", json_string(text));
        b = build_json(o, 1);
        body = part_body(b.text, "Content-Type: text/plain", NULL);
        dec = qp_decode(body, strlen(body));
        assert_non_null(strstr(text, "\n--=_km_"));
        for (char *p = text; (p = strchr(p, '\n')) != NULL; p++) {
                memmove(p + 1, p, strlen(p) + 1);
                *p++ = '\r';
        }
        assert_string_equal(dec, text);
        free(dec);
        free(body);
        /* the html part is still found: the boundary did not occur early */
        assert_part_body(b.text, "Content-Type: text/html", "<p>x</p>");
        built_free(&b);
}

/* Every valid request fixture builds a well-formed message. */
static void test_valid_fixture_builds_wellformed_message(void **state) {
        const char *dir = fixture_case_name(*state);
        char *input;
        struct built b;

        input = fixture_case_read(dir, "input.json", NULL);
        b = build(input);
        check_wellformed(b.msg, 1);
        assert_int_equal(b.msg->rcpt_cnt, request_recipient_count(b.req));
        assert_header_equal(b.text, "Message-ID", b.msg->message_id);
        built_free(&b);
        free(input);
}

int main(void) {
        static const struct CMUnitTest fixed[] = {
                cmocka_unit_test(test_headers_in_contract_order),
                cmocka_unit_test(test_date_header_rfc5322_utc),
                cmocka_unit_test(test_bcc_absent_from_headers_but_in_rcpts),
                cmocka_unit_test(test_bcc_only_request_has_no_to_header),
                cmocka_unit_test(
                        test_message_id_deterministic_from_domain_or_option),
                cmocka_unit_test(
                        test_message_id_for_rejects_bad_domain_and_small_buffer),
                cmocka_unit_test(test_message_id_domain_from_address_literal),
                cmocka_unit_test(test_subject_rfc2047_encoded_and_decodes_back),
                cmocka_unit_test(test_encoded_words_every_parser_reads),
                cmocka_unit_test(test_encoded_word_uses_shorter_of_q_and_b),
                cmocka_unit_test(
                        test_long_ascii_subject_folded_and_unfolds_to_original),
                cmocka_unit_test(
                        test_utf8_addresses_written_raw_and_message_marked),
                cmocka_unit_test(
                        test_unfoldable_long_header_value_encoded_within_998),
                cmocka_unit_test(
                        test_long_white_space_runs_in_header_values_within_998),
                cmocka_unit_test(test_display_name_with_specials_quoted),
                cmocka_unit_test(
                        test_display_name_non_ascii_encoded_and_decodes_back),
                cmocka_unit_test(test_address_list_folded_between_addresses),
                cmocka_unit_test(
                        test_custom_header_non_ascii_encoded_ascii_kept),
                cmocka_unit_test(test_header_name_starting_with_dot_is_stuffed),
                cmocka_unit_test(test_text_only_is_text_plain_7bit),
                cmocka_unit_test(test_body_without_final_newline_gets_crlf),
                cmocka_unit_test(test_html_only_is_text_html),
                cmocka_unit_test(
                        test_text_and_html_multipart_alternative_text_first),
                cmocka_unit_test(
                        test_attachment_base64_decodes_back_in_76_char_lines),
                cmocka_unit_test(
                        test_attachment_non_ascii_filename_uses_rfc2231),
                cmocka_unit_test(test_attachment_filename_with_quote_escaped),
                cmocka_unit_test(
                        test_non_ascii_body_quoted_printable_decodes_back),
                cmocka_unit_test(test_long_line_body_quoted_printable_lines_76),
                cmocka_unit_test(
                        test_line_of_998_octets_stays_7bit_999_becomes_qp),
                cmocka_unit_test(test_bare_lf_and_cr_normalised_to_crlf),
                cmocka_unit_test(test_dot_stuffing_of_body_lines),
                cmocka_unit_test(test_text_body_encoding_choice_at_the_edges),
                cmocka_unit_test(test_line_rule_counts_lines_ended_by_cr),
                cmocka_unit_test(test_date_header_fields_padded_as_rfc5322),
                cmocka_unit_test(test_headroom_leaves_the_message_as_it_is),
                cmocka_unit_test(
                        test_body_containing_boundary_prefix_forced_to_qp),
                cmocka_unit_test(test_kept_buffers_build_the_same_messages),
        };
        char **valid;
        size_t nv = fixture_list("requests/valid", &valid);
        const struct fixture_cases sets[] = {
                {"builds_wellformed",
                 test_valid_fixture_builds_wellformed_message, valid,
                 sizeof(*valid), nv},
        };
        int rc = fixture_run_group("message", fixed, FIXTURE_LEN(fixed), sets,
                                   FIXTURE_LEN(sets));

        fixture_free_list(valid, nv);
        return rc;
}
