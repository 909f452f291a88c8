/*
 * fuzz_message: builds a struct mail_request straight from the fuzz bytes
 * (within the contract request_parse() guarantees: header text without NUL,
 * CR or LF, addresses from a valid alphabet, header names printable and not
 * reserved) and checks message_build()'s output with message_check(). It
 * reaches shapes of message.c that JSON mutation finds slowly: long white
 * space runs, long words, many folds, binary attachments.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"
#include "message_check.h"
#include "request.h"

#define LIST_MAX 4
#define HEADERS_MAX 4
#define ATTACH_MAX 3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct src {
        const uint8_t *p;
        size_t left;
};

static uint8_t take_byte(struct src *s) {
        uint8_t c;

        if (s->left == 0)
                return 0;
        c = *s->p++;
        s->left--;
        return c;
}

/* A length: one byte, or two when the first has its top bit set, so
 * strings of up to ~32k appear. */
static size_t take_len(struct src *s) {
        size_t n = take_byte(s);

        if (n & 0x80)
                n = (n & 0x7f) << 8 | take_byte(s);
        return n < s->left ? n : s->left;
}

static char *xmalloc(size_t n) {
        char *p = malloc(n);

        if (p == NULL)
                abort();
        return p;
}

/* A string of take_len() bytes with NUL (and, when @header, CR and LF)
 * replaced by a space. */
static char *take_text(struct src *s, int header) {
        size_t n = take_len(s);
        char *out = xmalloc(n + 1);

        for (size_t i = 0; i < n; i++) {
                char c = (char)take_byte(s);

                if (c == '\0' || (header && (c == '\r' || c == '\n')))
                        c = ' ';
                out[i] = c;
        }
        out[n] = '\0';
        return out;
}

/* A dot-atom of 1..@max chars from an atext-ish alphabet. */
static void take_atom(struct src *s, char *out, size_t max, size_t *o) {
        static const char alpha[] = "abcdefghijklmnopqrstuvwxyz0123456789"
                                    "-_+=!#$%&'*/?^`{|}~.";
        size_t n = (take_byte(s) % max) + 1;
        size_t start = *o;

        for (size_t i = 0; i < n; i++) {
                char c = alpha[take_byte(s) % (sizeof(alpha) - 1)];

                if (c == '.' &&
                    (*o == start || out[*o - 1] == '.' || i + 1 == n))
                        c = 'x';
                out[(*o)++] = c;
        }
}

static void take_address(struct src *s, struct mail_address *a) {
        char buf[160];
        size_t o = 0;
        uint8_t shape = take_byte(s);

        take_atom(s, buf, 64, &o);
        buf[o++] = '@';
        take_atom(s, buf, 60, &o);
        buf[o] = '\0';
        a->addr = strdup(buf);
        if (a->addr == NULL)
                abort();
        a->display = NULL;
        if (shape & 1) {
                a->display = take_text(s, 1);
                if (a->display[0] == '\0') {
                        free(a->display); /* request_parse gives NULL */
                        a->display = NULL;
                }
        }
}

static void take_list(struct src *s, struct mail_address **list, size_t *cnt) {
        size_t n = take_byte(s) % (LIST_MAX + 1);

        *cnt = n;
        *list = n ? calloc(n, sizeof(**list)) : NULL;
        if (n && *list == NULL)
                abort();
        for (size_t i = 0; i < n; i++)
                take_address(s, &(*list)[i]);
}

static char *take_header_name(struct src *s) {
        size_t n = take_byte(s) % 76 + 1;
        char *out = xmalloc(n + 3);

        for (size_t i = 0; i < n; i++) {
                char c = (char)(33 + take_byte(s) % 94);

                out[i] = c == ':' ? '-' : c;
        }
        out[n] = '\0';
        if (request_header_reserved(out)) {
                out[n] = 'X';
                out[n + 1] = '\0';
        }
        return out;
}

static char *take_content_type(struct src *s) {
        static const char *const types[] = {
                "application/octet-stream", "text/plain", "image/png",
                "application/vnd.ms-excel.sheet.macroEnabled.12",
                "x-a!#$%&'*+-.^_`{|}~/b"};

        return strdup(types[take_byte(s) % (sizeof(types) / sizeof(types[0]))]);
}

/* A body part as request_parse() leaves it: kept in a JSON string. */
static const char *take_body(struct src *s, json_t **ref) {
        char *text = take_text(s, 0);

        *ref = json_string_nocheck(text);
        free(text);
        if (*ref == NULL)
                abort();
        return json_string_value(*ref);
}

static struct mail_request *take_request(struct src *s) {
        struct mail_request *req = calloc(1, sizeof(*req));
        char idbuf[220];
        size_t o = 0;
        uint8_t flags;

        if (req == NULL)
                abort();
        take_atom(s, idbuf, 200, &o);
        idbuf[o] = '\0';
        req->id = strdup(idbuf);
        take_address(s, &req->from);
        take_list(s, &req->to, &req->to_cnt);
        take_list(s, &req->cc, &req->cc_cnt);
        take_list(s, &req->bcc, &req->bcc_cnt);
        if (request_recipient_count(req) == 0) {
                req->to_cnt = 1;
                req->to = calloc(1, sizeof(*req->to));
                if (req->to == NULL)
                        abort();
                take_address(s, &req->to[0]);
        }
        take_list(s, &req->reply_to, &req->reply_to_cnt);
        req->subject = take_text(s, 1);
        flags = take_byte(s);
        if ((flags & 3) != 2)
                req->text = take_body(s, &req->text_json);
        if ((flags & 3) != 1)
                req->html = take_body(s, &req->html_json);
        req->header_cnt = take_byte(s) % (HEADERS_MAX + 1);
        req->headers = calloc(req->header_cnt + 1, sizeof(*req->headers));
        if (req->headers == NULL)
                abort();
        for (size_t i = 0; i < req->header_cnt; i++) {
                req->headers[i].name = take_header_name(s);
                req->headers[i].value = take_text(s, 1);
        }
        req->attachment_cnt = take_byte(s) % (ATTACH_MAX + 1);
        req->attachments =
                calloc(req->attachment_cnt + 1, sizeof(*req->attachments));
        if (req->attachments == NULL)
                abort();
        for (size_t i = 0; i < req->attachment_cnt; i++) {
                struct mail_attachment *a = &req->attachments[i];
                size_t n;

                a->filename = take_text(s, 1);
                if (strlen(a->filename) > 255)
                        a->filename[255] = '\0'; /* REQUEST_FILENAME_MAX */
                if (a->filename[0] == '\0') {
                        free(a->filename);
                        a->filename = strdup("f");
                }
                a->content_type = take_content_type(s);
                n = take_len(s);
                a->data = (unsigned char *)xmalloc(n ? n : 1);
                memcpy(a->data, s->p, n);
                s->p += n;
                s->left -= n;
                a->data_len = n;
        }
        return req;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct src s = {data, size};
        struct mail_request *req = take_request(&s);
        struct message_opts opts = {.message_id_domain = "fuzz.example",
                                    .date_ms = 1700000000123};
        struct message *msg;
        char err[256] = "";

        msg = message_build(req, &opts, err, sizeof(err));
        if (msg == NULL)
                fuzz_fail("message_build failed on a valid request");
        message_check(req, msg);
        message_destroy(msg);
        request_destroy(req);
        return 0;
}
