#include "message_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LINE_HARD 998

void fuzz_fail(const char *what) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
}

static int has_sub(const char *hay, size_t hay_len, const char *needle) {
        return memmem(hay, hay_len, needle, strlen(needle)) != NULL;
}

static int addr_in(const struct mail_address *a, size_t cnt, const char *s) {
        for (size_t i = 0; i < cnt; i++) {
                if (strstr(a[i].addr, s) != NULL)
                        return 1;
                if (a[i].display != NULL && strstr(a[i].display, s) != NULL)
                        return 1;
        }
        return 0;
}

/* @returns 1 when the text @s appears in a field the headers show. */
static int visible_elsewhere(const struct mail_request *req, const char *s,
                             const char *message_id) {
        if (strstr(req->subject, s) != NULL || strstr(message_id, s) != NULL)
                return 1;
        if (addr_in(&req->from, 1, s) || addr_in(req->to, req->to_cnt, s) ||
            addr_in(req->cc, req->cc_cnt, s) ||
            addr_in(req->reply_to, req->reply_to_cnt, s))
                return 1;
        for (size_t i = 0; i < req->header_cnt; i++) {
                if (strstr(req->headers[i].name, s) != NULL ||
                    strstr(req->headers[i].value, s) != NULL)
                        return 1;
        }
        return 0;
}

/* Checks line ends, lengths and dot-stuffing over the whole payload. */
static void check_lines(const char *d, size_t n) {
        size_t start = 0;

        if (n < 2 || d[n - 2] != '\r' || d[n - 1] != '\n')
                fuzz_fail("data does not end with CRLF");
        if (memchr(d, '\0', n) != NULL)
                fuzz_fail("NUL byte in data");
        for (size_t i = 0; i < n; i++) {
                if (d[i] == '\r' && (i + 1 == n || d[i + 1] != '\n'))
                        fuzz_fail("bare CR in data");
                if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r'))
                        fuzz_fail("bare LF in data");
                if (d[i] != '\n')
                        continue;
                size_t len = i - 1 - start; /* without the CRLF */

                if (len > LINE_HARD)
                        fuzz_fail("line longer than 998 octets");
                if (len == 1 && d[start] == '.')
                        fuzz_fail("line \".\" in data (ends DATA early)");
                if (len >= 1 && d[start] == '.' &&
                    (len < 2 || d[start + 1] != '.'))
                        fuzz_fail("line starting with '.' not dot-stuffed");
                start = i + 1;
        }
}

/* @returns the end of the encoded word at @p (after its "?="), or NULL when
 * @p does not start one: "=?UTF-8?B?" or "=?UTF-8?Q?", text without white
 * space, "?=", then white space or the end of the line (an address that
 * holds "=?" is followed by "@" or ">"). */
static const char *encoded_word_end(const char *p, const char *eol) {
        const char *q;

        if (eol - p < 12 || memcmp(p, "=?UTF-8?", 8) != 0 ||
            (p[8] != 'B' && p[8] != 'Q') || p[9] != '?')
                return NULL;
        for (q = p + 10; q + 1 < eol && !(q[0] == '?' && q[1] == '='); q++)
                if (*q == ' ' || *q == '\t')
                        return NULL;
        if (q + 1 >= eol)
                return NULL;
        q += 2;
        return q == eol || *q == ' ' || *q == '\t' ? q : NULL;
}

/* RFC 2047: a line that holds an encoded word is at most 76 characters; and
 * in a run of adjacent encoded words (a phrase, an unstructured value) a B
 * word with "=" padding is the last (GMime 3.2.10 to 3.2.13 stop decoding
 * the run after a padded one). @padded carries the run from line to line;
 * any other token ends it. */
static void check_encoded_words(const char *line, size_t len, int *padded) {
        const char *eol = line + len;
        const char *p = line;
        int words = 0;

        while (p < eol) {
                const char *tok = p, *end;

                while (tok < eol && (*tok == ' ' || *tok == '\t'))
                        tok++;
                if (tok == eol)
                        break;
                end = encoded_word_end(tok, eol);
                if (!end) {
                        *padded = 0;
                        for (p = tok; p < eol && *p != ' ' && *p != '\t'; p++)
                                ;
                        continue;
                }
                if (*padded)
                        fuzz_fail("encoded word after a padded B word");
                if (tok[8] == 'B' && end[-3] == '=')
                        *padded = 1;
                words++;
                p = end;
        }
        /* A line that starts with '.' has one more, dot-stuffed. */
        if (words > 0 && len - (line[0] == '.') > 76) {
                fprintf(stderr, "line: %.*s\n", (int)len, line);
                fuzz_fail("line with an encoded word longer than 76");
        }
}

/* Checks the header block: "Name:" lines and folded continuations. */
static void check_headers(const struct mail_request *req,
                          const struct message *msg, size_t hlen) {
        const char *d = msg->data;
        size_t start = 0;
        int from = 0, mid = 0, mime = 0, date = 0;
        int padded = 0;

        while (start < hlen) {
                const char *eol = memmem(d + start, hlen - start, "\r\n", 2);
                size_t len = (size_t)(eol - (d + start));
                const char *line = d + start;

                if (line[0] == ' ' || line[0] == '\t') {
                        if (start == 0)
                                fuzz_fail(
                                        "header block starts with a continuation");
                } else {
                        padded = 0;
                        const char *colon = memchr(line, ':', len);

                        if (colon == NULL || colon == line)
                                fuzz_fail("header line without a name");
                        for (const char *p = line; p < colon; p++) {
                                if (*p < 33 || *p > 126)
                                        fuzz_fail(
                                                "invalid character in header name");
                        }
                        size_t nlen = (size_t)(colon - line);

                        if (nlen == 3 && strncasecmp(line, "Bcc", 3) == 0)
                                fuzz_fail("Bcc header written");
                        if (nlen == 4 && strncasecmp(line, "From", 4) == 0)
                                from++;
                        if (nlen == 10 &&
                            strncasecmp(line, "Message-ID", 10) == 0)
                                mid++;
                        if (nlen == 12 &&
                            strncasecmp(line, "MIME-Version", 12) == 0)
                                mime++;
                        if (nlen == 4 && strncasecmp(line, "Date", 4) == 0)
                                date++;
                }
                check_encoded_words(line, len, &padded);
                start += len + 2;
        }
        if (from != 1 || mid != 1 || mime != 1 || date != 1)
                fuzz_fail(
                        "From, Date, Message-ID or MIME-Version not exactly once");
        for (size_t i = 0; i < req->bcc_cnt; i++) {
                const char *a = req->bcc[i].addr;

                if (has_sub(d, hlen, a) &&
                    !visible_elsewhere(req, a, msg->message_id))
                        fuzz_fail("Bcc address in the header block");
        }
}

static void check_envelope(const struct mail_request *req,
                           const struct message *msg) {
        const struct mail_address *lists[] = {req->to, req->cc, req->bcc};
        const size_t cnts[] = {req->to_cnt, req->cc_cnt, req->bcc_cnt};
        size_t r = 0;
        size_t idlen = strlen(req->id);
        size_t mlen = strlen(msg->message_id);

        if (strcmp(msg->mail_from, req->from.addr) != 0)
                fuzz_fail("envelope sender is not the From address");
        if (msg->rcpt_cnt != request_recipient_count(req))
                fuzz_fail("envelope recipient count differs");
        for (size_t l = 0; l < 3; l++) {
                for (size_t i = 0; i < cnts[l]; i++, r++) {
                        if (strcmp(msg->rcpts[r], lists[l][i].addr) != 0)
                                fuzz_fail("envelope recipient differs");
                }
        }
        if (msg->rcpts[r] != NULL)
                fuzz_fail("envelope recipients not NULL-terminated");
        if (mlen < idlen + 4 || msg->message_id[0] != '<' ||
            msg->message_id[mlen - 1] != '>' ||
            strncmp(msg->message_id + 1, req->id, idlen) != 0 ||
            msg->message_id[idlen + 1] != '@')
                fuzz_fail("Message-ID is not <id@domain>");
        if (strpbrk(msg->message_id, "\r\n") != NULL)
                fuzz_fail("CR or LF in Message-ID");
}

static int has_high_byte(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if ((unsigned char)s[i] & 0x80)
                        return 1;
        }
        return 0;
}

/* SMTPUTF8: the message is marked exactly when an address (envelope, From,
 * To, Cc, Reply-To) is UTF-8, and only then may the header block hold a
 * byte above 0x7f (an address written raw, RFC 6532). */
static void check_smtputf8(const struct mail_request *req,
                           const struct message *msg, size_t hlen) {
        const struct mail_address *lists[] = {&req->from, req->to, req->cc,
                                              req->bcc, req->reply_to};
        const size_t cnts[] = {1, req->to_cnt, req->cc_cnt, req->bcc_cnt,
                               req->reply_to_cnt};
        int utf8 = 0;

        for (size_t l = 0; l < 5; l++) {
                for (size_t i = 0; i < cnts[l]; i++)
                        utf8 |= has_high_byte(lists[l][i].addr,
                                              strlen(lists[l][i].addr));
        }
        if (msg->smtputf8 != req->smtputf8)
                fuzz_fail("message smtputf8 differs from the request's");
        if (req->smtputf8 != utf8)
                fuzz_fail("smtputf8 set without a UTF-8 address, or not set "
                          "with one");
        if (!msg->smtputf8 && has_high_byte(msg->data, hlen))
                fuzz_fail("non-ASCII header block without SMTPUTF8");
}

void message_check(const struct mail_request *req, const struct message *msg) {
        const char *sep;
        size_t hlen;

        if (msg->data == NULL || msg->data_len == 0)
                fuzz_fail("empty data");
        check_lines(msg->data, msg->data_len);
        sep = memmem(msg->data, msg->data_len, "\r\n\r\n", 4);
        if (sep == NULL)
                fuzz_fail("no blank line after the headers");
        hlen = (size_t)(sep - msg->data) + 2;
        check_headers(req, msg, hlen);
        check_envelope(req, msg);
        check_smtputf8(req, msg, hlen);
}
