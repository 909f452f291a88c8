#include "message.h"
#include "bytescan.h"
#include "civil.h"
#include "dynbuf.h"
#include "hash.h"
#include "utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_SOFT 78 /* RFC 5322 "SHOULD" line length */
#define LINE_HARD 998 /* RFC 5322 "MUST" line length */
#define WORD_MAX 75 /* RFC 2047 encoded-word length */
/* RFC 2047 section 2: a header line that holds an encoded word. */
#define LINE_ENCODED 76
/* Room an encoded word needs at the least: one 4-byte character in Q. */
#define WORD_MIN 24
#define QP_LINE 76 /* RFC 2045 quoted-printable line length */
#define B64_LINE_BYTES 57 /* 76 base64 characters per line */
/* A header word longer than this cannot be folded to fit LINE_HARD: the
 * value is sent as encoded words instead. */
#define WORD_UNFOLDABLE 900

/* The longest message built: more than the largest request
 * (request.max.bytes, at most 100 MiB) can grow to, every byte sent
 * quoted-printable (=XX and soft line breaks: under 3.2 times). */
#define MESSAGE_MAX_BYTES (1024u * 1024 * 1024)

static const char hex_upper[] = "0123456789ABCDEF";

/*
 * Header writer: tracks the length of the current line so that tokens can
 * be folded (CRLF + space) before they would pass LINE_SOFT.
 */
struct hdr {
        struct dynbuf *b;
        size_t line;
        int encoded; /* the current line holds an encoded word */
};

static void hdr_begin(struct hdr *h, struct dynbuf *b, const char *name) {
        size_t n = strlen(name);

        h->b = b;
        if (name[0] == '.')
                dynbuf_appendc(b, '.'); /* dot-stuffing */
        dynbuf_append(b, name, n);
        dynbuf_appendc(b, ':');
        h->line = n + 1;
        h->encoded = 0;
}

static void hdr_put(struct hdr *h, const char *s, size_t n) {
        dynbuf_append(h->b, s, n);
        h->line += n;
}

/* Writes the white space before a token of @toklen octets: a space, or a
 * fold when the token would not fit on the current line (LINE_SOFT, or
 * LINE_ENCODED on a line that holds or will hold an encoded word). */
static void hdr_sep_within(struct hdr *h, size_t toklen, size_t limit) {
        if (h->encoded && limit > LINE_ENCODED)
                limit = LINE_ENCODED;
        if (h->line > 1 && h->line + 1 + toklen > limit) {
                dynbuf_append(h->b, "\r\n ", 3);
                h->line = 1;
                h->encoded = 0;
        } else {
                dynbuf_appendc(h->b, ' ');
                h->line++;
        }
}

static void hdr_sep(struct hdr *h, size_t toklen) {
        hdr_sep_within(h, toklen, LINE_SOFT);
}

static void hdr_token(struct hdr *h, const char *s, size_t n) {
        hdr_sep(h, n);
        hdr_put(h, s, n);
}

static void hdr_end(struct hdr *h) {
        dynbuf_append(h->b, "\r\n", 2);
}

static int is_wsp(char c) {
        return c == ' ' || c == '\t';
}

static int is_atext(unsigned char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9'))
                return 1;
        return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Characters a Q encoded word may carry as they are (RFC 2047 5(3)). */
static int is_q_plain(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') || c == '!' || c == '*' || c == '+' ||
               c == '-' || c == '/';
}

/* Width of one byte in a Q encoded word: 1, or 3 for =XX. */
static size_t q_width(unsigned char c) {
        return (is_q_plain(c) || c == ' ') ? 1 : 3;
}

/*
 * @returns 1 when header text cannot go out as it is: non-ASCII, control
 * characters other than tab, a "=?" that a reader would take for an encoded
 * word, or a token too long to fold within LINE_HARD. A fold goes only before
 * white space, so a token is a white space run with the word after it, and
 * trailing white space stays on the line of the last token.
 */
static int needs_encoding(const char *s, size_t len) {
        size_t tok = 0; /* the current token */
        size_t prev = 0; /* the token before it */

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c >= 0x7f || (c < 0x20 && c != '\t'))
                        return 1;
                if (c == '=' && i + 1 < len && s[i + 1] == '?')
                        return 1;
                if (is_wsp((char)c) && i > 0 && !is_wsp(s[i - 1])) {
                        prev = tok;
                        tok = 0;
                }
                tok++;
                if (tok > WORD_UNFOLDABLE)
                        return 1;
        }
        /* Trailing white space: the last line holds at most LINE_SOFT or the
         * last token, then the white space. */
        if (len > 0 && is_wsp(s[len - 1]) &&
            (prev > LINE_SOFT ? prev : LINE_SOFT) + tok > WORD_UNFOLDABLE)
                return 1;
        return 0;
}

static const char b64_chars[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of @n bytes into @out (4 * ceil(n / 3) chars, no NUL). */
static size_t b64_encode(const unsigned char *in, size_t n, char *out) {
        size_t o = 0;
        size_t i = 0;

        for (; i + 3 <= n; i += 3) {
                uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
                             in[i + 2];

                out[o++] = b64_chars[v >> 18];
                out[o++] = b64_chars[(v >> 12) & 63];
                out[o++] = b64_chars[(v >> 6) & 63];
                out[o++] = b64_chars[v & 63];
        }
        if (i < n) {
                uint32_t v = (uint32_t)in[i] << 16;

                if (i + 1 < n)
                        v |= (uint32_t)in[i + 1] << 8;
                out[o++] = b64_chars[v >> 18];
                out[o++] = b64_chars[(v >> 12) & 63];
                out[o++] = i + 1 < n ? b64_chars[(v >> 6) & 63] : '=';
                out[o++] = '=';
        }
        return o;
}

/* @returns the end of the longest run of whole UTF-8 characters from @i
 * whose encoding (Q when @q, else B) fits @budget, at least one character. */
static size_t enc_span(const char *s, size_t i, size_t len, int q,
                       size_t budget) {
        size_t j = i;
        size_t enc = 0;

        while (j < len) {
                size_t cl = utf8_char_len(s + j, len - j);
                size_t next;

                if (q) {
                        next = enc;
                        for (size_t k = 0; k < cl; k++)
                                next += q_width((unsigned char)s[j + k]);
                } else {
                        next = (j + cl - i + 2) / 3 * 4;
                }
                if (next > budget && j > i)
                        break;
                enc = next;
                j += cl;
        }
        return j;
}

/* @returns the last character boundary in (@i, @j] that is a whole number
 * of 3-byte groups from @i, or @i when there is none. */
static size_t enc_b_cut(const char *s, size_t i, size_t j) {
        size_t best = i;

        for (size_t k = i; k < j;) {
                k += utf8_char_len(s + k, j - k);
                if ((k - i) % 3 == 0)
                        best = k;
        }
        return best;
}

/*
 * Writes @s as RFC 2047 encoded words (UTF-8, Q when that is shorter, else
 * B), each at most WORD_MAX long, on lines of at most LINE_ENCODED counting
 * the field name; a UTF-8 character is never split between words. A B word
 * that is not the last one holds a multiple of 3 bytes, so that it has no
 * "=" padding (GMime 3.2.10 to 3.2.13 stop decoding a header after a padded
 * word that is not the last); where no character boundary allows that, the
 * word is written in Q.
 */
static void hdr_encoded(struct hdr *h, const char *s, size_t len) {
        size_t qlen = 0;
        int use_q;
        size_t i = 0;
        char word[WORD_MAX + 1];

        for (size_t k = 0; k < len; k++)
                qlen += q_width((unsigned char)s[k]);
        use_q = qlen <= (len + 2) / 3 * 4;

        while (i < len) {
                size_t room, j;
                size_t w = 0;
                int q = use_q;

                /* The separator first: a fold when not even a short word
                 * fits on this line. */
                h->encoded = 1;
                hdr_sep_within(h, WORD_MIN, LINE_ENCODED);
                h->encoded = 1;
                room = LINE_ENCODED - h->line;
                if (room > WORD_MAX)
                        room = WORD_MAX;
                j = enc_span(s, i, len, q, room - 12); /* "=?UTF-8?B?", "?=" */
                if (!q && j < len) {
                        size_t cut = enc_b_cut(s, i, j);

                        if (cut > i) {
                                j = cut;
                        } else {
                                q = 1;
                                j = enc_span(s, i, len, q, room - 12);
                        }
                }
                memcpy(word, q ? "=?UTF-8?Q?" : "=?UTF-8?B?", 10);
                w = 10;
                if (q) {
                        for (size_t k = i; k < j; k++) {
                                unsigned char c = (unsigned char)s[k];

                                if (c == ' ') {
                                        word[w++] = '_';
                                } else if (is_q_plain(c)) {
                                        word[w++] = (char)c;
                                } else {
                                        word[w++] = '=';
                                        word[w++] = hex_upper[c >> 4];
                                        word[w++] = hex_upper[c & 15];
                                }
                        }
                } else {
                        w += b64_encode((const unsigned char *)s + i, j - i,
                                        word + w);
                }
                word[w++] = '?';
                word[w++] = '=';
                hdr_put(h, word, w);
                i = j;
        }
}

/*
 * Writes unstructured text (Subject, custom header values): as it is,
 * folded before white space, or as encoded words when needs_encoding().
 */
static void hdr_unstructured(struct hdr *h, const char *s) {
        size_t len = strlen(s);
        size_t i = 0;
        int first = 1;

        if (needs_encoding(s, len)) {
                hdr_encoded(h, s, len);
                return;
        }
        while (i < len) {
                size_t j = i;
                size_t k;

                while (j < len && is_wsp(s[j]))
                        j++;
                k = j;
                while (k < len && !is_wsp(s[k]))
                        k++;
                if (k == j && !first) {
                        hdr_put(h, s + i, k - i); /* trailing white space */
                        break;
                }
                if (h->line > 1 && h->line + (k - i) + first > LINE_SOFT) {
                        dynbuf_append(h->b, "\r\n", 2);
                        h->line = 0;
                        if (j == i)
                                hdr_put(h, " ", 1);
                } else if (first) {
                        hdr_put(h, " ", 1);
                }
                hdr_put(h, s + i, k - i);
                first = 0;
                i = k;
        }
}

/* Writes a display name: atoms, a quoted-string or encoded words. */
static void hdr_phrase(struct hdr *h, const char *s) {
        size_t len = strlen(s);
        int atoms = 1;
        size_t qlen = 2;

        if (needs_encoding(s, len) || len > WORD_UNFOLDABLE / 2) {
                hdr_encoded(h, s, len);
                return;
        }
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];

                if (!is_atext(c) && c != ' ')
                        atoms = 0;
                qlen += (c == '"' || c == '\\') ? 2 : 1;
        }
        if (atoms) {
                size_t i = 0;

                while (i < len) {
                        size_t j;

                        while (i < len && s[i] == ' ')
                                i++;
                        j = i;
                        while (j < len && s[j] != ' ')
                                j++;
                        if (j > i)
                                hdr_token(h, s + i, j - i);
                        i = j;
                }
                return;
        }
        hdr_sep(h, qlen);
        (void)dynbuf_reserve(h->b, qlen); /* one allocation */
        dynbuf_appendc(h->b, '"');
        for (size_t i = 0; i < len; i++) {
                if (s[i] == '"' || s[i] == '\\')
                        dynbuf_appendc(h->b, '\\');
                dynbuf_appendc(h->b, s[i]);
        }
        dynbuf_appendc(h->b, '"');
        h->line += qlen;
}

/* Writes one mailbox token by token, with a trailing ',' when @comma. */
static void hdr_mailbox(struct hdr *h, const struct mail_address *a,
                        int comma) {
        size_t alen = strlen(a->addr);

        if (a->display != NULL) {
                hdr_phrase(h, a->display);
                hdr_sep(h, alen + 2 + (size_t)comma);
                hdr_put(h, "<", 1);
                hdr_put(h, a->addr, alen);
                hdr_put(h, comma ? ">," : ">", comma ? 2 : 1);
        } else {
                hdr_sep(h, alen + (size_t)comma);
                hdr_put(h, a->addr, alen);
                if (comma)
                        hdr_put(h, ",", 1);
        }
}

/*
 * Writes an address header. A mailbox that fits on a line of its own is
 * never split: the fold goes before it. Only a mailbox longer than a line
 * is folded between its own words. @scratch is reused between calls.
 */
static void write_addresses(struct dynbuf *b, struct dynbuf *scratch,
                            const char *name, const struct mail_address *a,
                            size_t cnt) {
        struct hdr h;

        if (cnt == 0)
                return;
        hdr_begin(&h, b, name);
        for (size_t i = 0; i < cnt; i++) {
                int comma = i + 1 < cnt;
                struct hdr t = {scratch, 0, 0};

                /* Rendered alone as on a fresh line: " Display <addr>,". */
                dynbuf_reset(scratch);
                hdr_mailbox(&t, &a[i], comma);
                if (dynbuf_error(scratch) != DYNBUF_OK) {
                        dynbuf_fail(b, dynbuf_error(scratch));
                        return;
                }
                if (memmem(dynbuf_ptr(scratch), dynbuf_len(scratch), "\r\n",
                           2) != NULL) {
                        hdr_mailbox(&h, &a[i], comma);
                        continue;
                }
                if (h.line > 1 &&
                    h.line + dynbuf_len(scratch) > (t.encoded || h.encoded
                                                            ? LINE_ENCODED
                                                            : LINE_SOFT)) {
                        dynbuf_append(b, "\r\n", 2);
                        h.line = 0;
                        h.encoded = 0;
                }
                hdr_put(&h, dynbuf_ptr(scratch), dynbuf_len(scratch));
                h.encoded |= t.encoded;
        }
        hdr_end(&h);
}

/* Appends the @width low decimal digits of @v (0 <= @v), zero-padded. */
static void put_digits(struct dynbuf *b, int v, int width) {
        char d[10];

        for (int i = width - 1; i >= 0; i--) {
                d[i] = (char)('0' + v % 10);
                v /= 10;
        }
        dynbuf_append(b, d, (size_t)width);
}

static void write_date(struct dynbuf *b, int64_t ms) {
        static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
                                           "Thu", "Fri", "Sat"};
        static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                             "May", "Jun", "Jul", "Aug",
                                             "Sep", "Oct", "Nov", "Dec"};
        struct civil c;

        civil_from_unix(ms / 1000, &c);
        if (c.year < 1000 || c.year > 9999) {
                dynbuf_appendf(
                        b, "Date: %s, %d %s %04lld %02d:%02d:%02d +0000\r\n",
                        days[c.wday], c.day, months[c.month - 1],
                        (long long)c.year, c.hour, c.min, c.sec);
                return;
        }
        /* The common case without printf: "Date: Www, D Mmm YYYY HH:MM:SS
         * +0000" */
        dynbuf_appendlit(b, "Date: ");
        dynbuf_appends(b, days[c.wday]);
        dynbuf_append(b, ", ", 2);
        if (c.day >= 10)
                dynbuf_appendc(b, (char)('0' + c.day / 10));
        dynbuf_appendc(b, (char)('0' + c.day % 10));
        dynbuf_appendc(b, ' ');
        dynbuf_appends(b, months[c.month - 1]);
        dynbuf_appendc(b, ' ');
        put_digits(b, (int)c.year, 4);
        dynbuf_appendc(b, ' ');
        put_digits(b, c.hour, 2);
        dynbuf_appendc(b, ':');
        put_digits(b, c.min, 2);
        dynbuf_appendc(b, ':');
        put_digits(b, c.sec, 2);
        dynbuf_appendlit(b, " +0000\r\n");
}

/* RFC 5987 attr-char: sent as it is in an extended parameter value. */
static int is_attr_char(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') ||
               (c != '\0' && strchr("!#$&+-.^_`|~", c) != NULL);
}

/*
 * Writes a parameter ("; name=value" where the caller already wrote the
 * ';'): a quoted-string when @value is short printable ASCII, else RFC 2231
 * utf-8'' percent-encoding, split into numbered sections when long.
 */
static void hdr_param(struct hdr *h, const char *name, const char *value) {
        size_t nlen = strlen(name);
        size_t vlen = strlen(value);
        int plain = 1;
        size_t qlen = 2;
        size_t elen = 0;
        char tok[LINE_SOFT + 1];

        for (size_t i = 0; i < vlen; i++) {
                unsigned char c = (unsigned char)value[i];

                if (c < 0x20 || c >= 0x7f)
                        plain = 0;
                qlen += (c == '"' || c == '\\') ? 2 : 1;
                elen += is_attr_char(c) ? 1 : 3;
        }
        if (plain && nlen + 1 + qlen <= LINE_SOFT - 2) {
                hdr_sep(h, nlen + 1 + qlen);
                hdr_put(h, name, nlen);
                hdr_put(h, "=\"", 2);
                for (size_t i = 0; i < vlen; i++) {
                        if (value[i] == '"' || value[i] == '\\')
                                hdr_put(h, "\\", 1);
                        hdr_put(h, value + i, 1);
                }
                hdr_put(h, "\"", 1);
                return;
        }
        if (nlen + 9 + elen <= LINE_SOFT - 2) {
                /* name*=utf-8''value */
                hdr_sep(h, nlen + 9 + elen);
                hdr_put(h, name, nlen);
                hdr_put(h, "*=utf-8''", 9);
                for (size_t i = 0; i < vlen; i++) {
                        unsigned char c = (unsigned char)value[i];
                        char pct[3] = {'%', hex_upper[c >> 4],
                                       hex_upper[c & 15]};

                        if (is_attr_char(c))
                                hdr_put(h, value + i, 1);
                        else
                                hdr_put(h, pct, 3);
                }
                return;
        }
        /* name*0*=utf-8''...; name*1*=...; sections of at most ~70 chars,
         * never splitting a UTF-8 character. */
        size_t i = 0;

        for (unsigned sec = 0; i < vlen; sec++) {
                int n = snprintf(tok, sizeof(tok), "%s*%u*=%s", name, sec,
                                 sec == 0 ? "utf-8''" : "");
                size_t t;

                if (n < 0 || (size_t)n >= sizeof(tok) - 16) {
                        dynbuf_fail(h->b, DYNBUF_ENOMEM);
                        return;
                }
                t = (size_t)n;
                while (i < vlen) {
                        size_t cl = utf8_char_len(value + i, vlen - i);
                        size_t need = 0;

                        for (size_t k = 0; k < cl; k++)
                                need += is_attr_char(
                                                (unsigned char)value[i + k])
                                                ? 1
                                                : 3;
                        if (t + need + 1 > LINE_SOFT - 2 && t > (size_t)n)
                                break;
                        for (size_t k = 0; k < cl; k++) {
                                unsigned char c = (unsigned char)value[i + k];

                                if (is_attr_char(c)) {
                                        tok[t++] = (char)c;
                                } else {
                                        tok[t++] = '%';
                                        tok[t++] = hex_upper[c >> 4];
                                        tok[t++] = hex_upper[c & 15];
                                }
                        }
                        i += cl;
                }
                if (i < vlen)
                        tok[t++] = ';';
                hdr_token(h, tok, t);
        }
}

struct body_info {
        int qp; /* 1: quoted-printable, 0: 7bit */
        size_t out7; /* 7bit output length: CRLF line ends, dot-stuffed */
};

/* @returns the length of the line at @s + @i: bytes up to CR, LF or @len. */
static size_t line_len(const char *s, size_t i, size_t len) {
        return bytescan_eol(s + i, len - i);
}

/* @returns the index past the line end (CRLF, CR or LF) at @s + @i, which
 * is below @len. */
static size_t past_line_end(const char *s, size_t i, size_t len) {
        if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n')
                i++;
        return i + 1;
}

/* @returns whether @len bytes at @s hold "=_km_", how every boundary
 * starts. */
static int has_boundary_prefix(const char *s, size_t len) {
        const char *end = s + len;
        const char *p = s;

        while ((p = memchr(p, '=', (size_t)(end - p))) != NULL) {
                if ((size_t)(end - p) >= 5 && memcmp(p, "=_km_", 5) == 0)
                        return 1;
                p++;
        }
        return 0;
}

/*
 * Chooses the transfer encoding of a text body: 7bit when it is ASCII, each
 * line (dot-stuffed) fits LINE_HARD and it cannot contain a boundary ("=_km_"),
 * quoted-printable otherwise.
 */
static void body_scan(const char *s, size_t len, struct body_info *bi) {
        size_t out = 0;
        int too_long = 0;
        size_t i = 0;

        for (;;) {
                size_t n = line_len(s, i, len);
                size_t dot = n > 0 && s[i] == '.';

                out += n + dot;
                if (n + dot > LINE_HARD)
                        too_long = 1;
                i += n;
                if (i >= len)
                        break;
                i = past_line_end(s, i, len);
                out += 2;
        }
        bi->out7 = out;
        bi->qp = too_long || bytescan_has_8bit(s, len) ||
                 has_boundary_prefix(s, len);
}

/* Writes a 7bit body: line ends to CRLF, lines starting with '.' stuffed. */
static void write_7bit(struct dynbuf *b, const char *s, size_t len,
                       size_t out) {
        char *start = dynbuf_reserve(b, out);
        char *o = start;
        size_t i = 0;

        if (start == NULL)
                return;
        while (i < len) {
                const char *nl = s + i;
                size_t n = line_len(s, i, len);

                if (n > 0 && nl[0] == '.')
                        *o++ = '.';
                memcpy(o, nl, n);
                o += n;
                i += n;
                if (i < len) {
                        i = past_line_end(s, i, len);
                        *o++ = '\r';
                        *o++ = '\n';
                }
        }
        dynbuf_setlen(b, dynbuf_len(b) + (size_t)(o - start));
}

/*
 * Writes a quoted-printable body (RFC 2045 6.7): line ends to CRLF (hard
 * breaks), lines at most QP_LINE, trailing white space and a leading '.'
 * encoded.
 */
static void write_qp(struct dynbuf *b, const char *s, size_t len) {
        size_t i = 0;

        while (i <= len) {
                size_t n = line_len(s, i, len);
                size_t col = 0;
                char *start;
                char *o;

                /* Worst case: every byte as =XX, a soft break per 25. */
                start = dynbuf_reserve(b, 3 * n + 3 * (n / 24 + 1) + 2);
                if (start == NULL)
                        return;
                o = start;
                for (size_t k = 0; k < n; k++) {
                        unsigned char c = (unsigned char)s[i + k];
                        int last = k + 1 == n;
                        int enc = !((c >= 33 && c <= 126 && c != '=') ||
                                    ((c == ' ' || c == '\t') && !last)) ||
                                  (c == '.' && col == 0);
                        size_t w = enc ? 3 : 1;

                        /* Soft break unless the token ends the line within
                         * QP_LINE. */
                        if (col + w > QP_LINE - 1 &&
                            !(last && col + w <= QP_LINE)) {
                                *o++ = '=';
                                *o++ = '\r';
                                *o++ = '\n';
                                col = 0;
                                if (c == '.') {
                                        enc = 1;
                                        w = 3;
                                }
                        }
                        if (enc) {
                                *o++ = '=';
                                *o++ = hex_upper[c >> 4];
                                *o++ = hex_upper[c & 15];
                        } else {
                                *o++ = (char)c;
                        }
                        col += w;
                }
                i += n;
                if (i < len) {
                        i = past_line_end(s, i, len);
                        *o++ = '\r';
                        *o++ = '\n';
                        dynbuf_setlen(b, dynbuf_len(b) + (size_t)(o - start));
                        continue;
                }
                dynbuf_setlen(b, dynbuf_len(b) + (size_t)(o - start));
                break;
        }
}

/* Writes a text part's headers, blank line and body. */
static void write_text_part(struct dynbuf *b, const char *subtype,
                            const char *body) {
        size_t len = strlen(body);
        struct body_info bi;

        body_scan(body, len, &bi);
        dynbuf_appendlit(b, "Content-Type: text/");
        dynbuf_appends(b, subtype);
        if (bi.qp)
                dynbuf_appendlit(b, "; charset=utf-8\r\n"
                                    "Content-Transfer-Encoding: "
                                    "quoted-printable\r\n\r\n");
        else
                dynbuf_appendlit(b, "; charset=utf-8\r\n"
                                    "Content-Transfer-Encoding: 7bit\r\n\r\n");
        if (bi.qp)
                write_qp(b, body, len);
        else
                write_7bit(b, body, len, bi.out7);
}

static void write_base64_lines(struct dynbuf *b, const unsigned char *data,
                               size_t len) {
        size_t lines = (len + B64_LINE_BYTES - 1) / B64_LINE_BYTES;
        char *start;
        char *o;

        if (len == 0)
                return;
        start = dynbuf_reserve(b, (len + 2) / 3 * 4 + 2 * lines);
        if (start == NULL)
                return;
        o = start;
        for (size_t i = 0; i < len; i += B64_LINE_BYTES) {
                size_t n = len - i < B64_LINE_BYTES ? len - i : B64_LINE_BYTES;

                if (i > 0) {
                        *o++ = '\r';
                        *o++ = '\n';
                }
                o += b64_encode(data + i, n, o);
        }
        dynbuf_setlen(b, dynbuf_len(b) + (size_t)(o - start));
}

static void write_attachment(struct dynbuf *b,
                             const struct mail_attachment *a) {
        struct hdr h;

        hdr_begin(&h, b, "Content-Type");
        hdr_sep(&h, strlen(a->content_type) + 1);
        hdr_put(&h, a->content_type, strlen(a->content_type));
        hdr_put(&h, ";", 1);
        hdr_param(&h, "name", a->filename);
        hdr_end(&h);
        hdr_begin(&h, b, "Content-Disposition");
        hdr_token(&h, "attachment;", 11);
        hdr_param(&h, "filename", a->filename);
        hdr_end(&h);
        dynbuf_appendlit(b, "Content-Transfer-Encoding: base64\r\n\r\n");
        write_base64_lines(b, a->data, a->data_len);
}

/* Appends @pre, @boundary and @post. */
static void write_boundary(struct dynbuf *b, const char *pre,
                           const char *boundary, const char *post) {
        dynbuf_appends(b, pre);
        dynbuf_appends(b, boundary);
        dynbuf_appends(b, post);
}

static void write_multipart_header(struct dynbuf *b, const char *subtype,
                                   const char *boundary) {
        dynbuf_appendlit(b, "Content-Type: multipart/");
        dynbuf_appends(b, subtype);
        write_boundary(b, ";\r\n boundary=\"", boundary, "\"\r\n\r\n");
}

/* Writes the body part(s) of @req: one text part or a multipart/alternative. */
static void write_body(struct dynbuf *b, const struct mail_request *req,
                       const char *alt_boundary) {
        if (req->text != NULL && req->html != NULL) {
                write_multipart_header(b, "alternative", alt_boundary);
                write_boundary(b, "--", alt_boundary, "\r\n");
                write_text_part(b, "plain", req->text);
                write_boundary(b, "\r\n--", alt_boundary, "\r\n");
                write_text_part(b, "html", req->html);
                write_boundary(b, "\r\n--", alt_boundary, "--\r\n");
        } else if (req->text != NULL) {
                write_text_part(b, "plain", req->text);
        } else {
                write_text_part(b, "html", req->html);
        }
}

/* A domain for a Message-ID: printable ASCII without specials, or an
 * address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"), which RFC 5322's
 * no-fold-literal allows with ':' inside. With @utf8 (a message sent with
 * SMTPUTF8, whose headers may hold UTF-8: RFC 6532), UTF-8 bytes too. */
static int check_msgid_domain(const char *d, int utf8) {
        size_t len = strlen(d);

        if (len == 0)
                return -1;
        if (d[0] == '[' && len > 2 && d[len - 1] == ']') {
                for (size_t i = 1; i + 1 < len; i++) {
                        unsigned char c = (unsigned char)d[i];

                        if (c <= 32 || c >= 127 || c == '[' || c == ']' ||
                            c == '\\')
                                return -1;
                }
                return 0;
        }
        for (; *d != '\0'; d++) {
                unsigned char c = (unsigned char)*d;

                if (c >= 128 && utf8)
                        continue;
                if (c <= 32 || c >= 127 || strchr("<>@()\",;:\\", c) != NULL)
                        return -1;
        }
        return 0;
}

int message_id_for(const struct mail_request *req, const char *domain,
                   char *buf, size_t buf_size) {
        size_t id_len, domain_len;

        if (domain == NULL || *domain == '\0') {
                const char *at = strrchr(req->from.addr, '@');

                if (at == NULL)
                        return -1;
                domain = at + 1;
        }
        if (check_msgid_domain(domain, req->smtputf8) != 0)
                return -1;
        id_len = strlen(req->id);
        domain_len = strlen(domain);
        if (id_len + domain_len + 3 >= buf_size)
                return -1;
        buf[0] = '<';
        memcpy(buf + 1, req->id, id_len);
        buf[1 + id_len] = '@';
        memcpy(buf + 2 + id_len, domain, domain_len);
        memcpy(buf + 2 + id_len + domain_len, ">", 2);
        return 0;
}

/* Writes the boundary "=_km_<@hash, 16 hex digits>_<@kind>" at @out (at
 * least 24 bytes). */
static void boundary_of(char *out, uint64_t hash, char kind) {
        static const char hex_lower[] = "0123456789abcdef";

        memcpy(out, "=_km_", 5);
        for (int i = 15; i >= 0; i--) {
                out[5 + i] = hex_lower[hash & 15];
                hash >>= 4;
        }
        out[21] = '_';
        out[22] = kind;
        out[23] = '\0';
}

/* A first guess of the output size, so most messages need one allocation. */
static size_t estimate_size(const struct mail_request *req) {
        size_t n = 2048 + strlen(req->subject) * 3;
        const struct mail_address *lists[] = {req->to, req->cc, req->reply_to};
        const size_t cnts[] = {req->to_cnt, req->cc_cnt, req->reply_to_cnt};

        for (size_t l = 0; l < 3; l++)
                for (size_t i = 0; i < cnts[l]; i++)
                        n += strlen(lists[l][i].addr) + 8 +
                             (lists[l][i].display != NULL
                                      ? strlen(lists[l][i].display) * 3
                                      : 0);
        for (size_t i = 0; i < req->header_cnt; i++)
                n += strlen(req->headers[i].name) +
                     strlen(req->headers[i].value) * 3 + 8;
        if (req->text != NULL)
                n += strlen(req->text) * 9 / 8 + 64;
        if (req->html != NULL)
                n += strlen(req->html) * 9 / 8 + 64;
        for (size_t i = 0; i < req->attachment_cnt; i++)
                n += req->attachments[i].data_len / 57 * 78 + 78 + 512 +
                     strlen(req->attachments[i].filename) * 6;
        return n;
}

/* @returns a new message, its envelope filled: the rcpts array and every
 * string of the envelope follow the struct in its allocation. NULL when out
 * of memory. */
static struct message *message_new(const struct mail_request *req,
                                   const char *mid) {
        const struct mail_address *lists[] = {req->to, req->cc, req->bcc};
        const size_t cnts[] = {req->to_cnt, req->cc_cnt, req->bcc_cnt};
        size_t cnt = request_recipient_count(req);
        size_t mid_size = strlen(mid) + 1;
        size_t from_size = strlen(req->from.addr) + 1;
        size_t size = sizeof(struct message) + (cnt + 1) * sizeof(char *) +
                      mid_size + from_size;
        struct message *msg;
        char **block;
        char *p;
        size_t r = 0;

        for (size_t l = 0; l < 3; l++)
                for (size_t i = 0; i < cnts[l]; i++)
                        size += strlen(lists[l][i].addr) + 1;
        msg = malloc(size);
        if (msg == NULL)
                return NULL;
        memset(msg, 0, sizeof(*msg));
        block = (char **)(msg + 1);
        p = (char *)(block + cnt + 1);
        for (size_t l = 0; l < 3; l++) {
                for (size_t i = 0; i < cnts[l]; i++) {
                        size_t n = strlen(lists[l][i].addr) + 1;

                        memcpy(p, lists[l][i].addr, n);
                        block[r++] = p;
                        p += n;
                }
        }
        block[r] = NULL;
        msg->rcpts = block;
        msg->rcpt_cnt = cnt;
        msg->message_id = p;
        memcpy(p, mid, mid_size);
        p += mid_size;
        msg->mail_from = p;
        memcpy(p, req->from.addr, from_size);
        return msg;
}

void message_scratch_init(struct message_scratch *ms) {
        dynbuf_init(&ms->ms_buf, MESSAGE_MAX_BYTES);
        dynbuf_init(&ms->ms_word, MESSAGE_MAX_BYTES);
}

void message_scratch_fini(struct message_scratch *ms) {
        dynbuf_fini(&ms->ms_buf);
        dynbuf_fini(&ms->ms_word);
}

struct message *message_build(const struct mail_request *req,
                              const struct message_opts *opts, char *errstr,
                              size_t errstr_size) {
        struct message *msg = NULL;
        struct message_scratch own;
        struct message_scratch *ms = opts->scratch ? opts->scratch : &own;
        struct dynbuf *const b = &ms->ms_buf;
        struct dynbuf *const scratch = &ms->ms_word;
        struct hdr h;
        char mid[512];
        char alt[40];
        char mixed[40];
        uint64_t hash = hash_fnv1a64_str(req->id);
        size_t estimate;
        size_t data_len;
        int ok = 0;

        if (opts->headroom > MESSAGE_MAX_BYTES) {
                snprintf(errstr, errstr_size, "message: headroom too large");
                return NULL;
        }
        if (!opts->scratch)
                message_scratch_init(&own);
        dynbuf_reuse(b, MESSAGE_MAX_BYTES + opts->headroom,
                     MESSAGE_SCRATCH_KEEP);
        dynbuf_reuse(scratch, MESSAGE_MAX_BYTES, MESSAGE_SCRATCH_KEEP);
        if (message_id_for(req, opts->message_id_domain, mid, sizeof(mid)) !=
            0) {
                snprintf(errstr, errstr_size,
                         "message: invalid Message-ID "
                         "domain");
                goto out;
        }
        msg = message_new(req, mid);
        if (msg == NULL)
                goto oom;
        msg->smtputf8 = req->smtputf8;
        boundary_of(alt, hash, 'a');
        boundary_of(mixed, hash, 'm');
        estimate = estimate_size(req);
        if (dynbuf_reserve(b, opts->headroom + (estimate < MESSAGE_MAX_BYTES
                                                        ? estimate
                                                        : MESSAGE_MAX_BYTES)) ==
            NULL)
                goto oom;
        dynbuf_setlen(b, opts->headroom); /* filled by message_prepend() */

        write_date(b, opts->date_ms);
        write_addresses(b, scratch, "From", &req->from, 1);
        write_addresses(b, scratch, "To", req->to, req->to_cnt);
        write_addresses(b, scratch, "Cc", req->cc, req->cc_cnt);
        write_addresses(b, scratch, "Reply-To", req->reply_to,
                        req->reply_to_cnt);
        hdr_begin(&h, b, "Subject");
        hdr_unstructured(&h, req->subject);
        hdr_end(&h);
        hdr_begin(&h, b, "Message-ID");
        hdr_token(&h, mid, strlen(mid));
        hdr_end(&h);
        dynbuf_appendlit(b, "MIME-Version: 1.0\r\n");
        for (size_t i = 0; i < req->header_cnt; i++) {
                hdr_begin(&h, b, req->headers[i].name);
                hdr_unstructured(&h, req->headers[i].value);
                hdr_end(&h);
        }

        if (req->attachment_cnt > 0) {
                write_multipart_header(b, "mixed", mixed);
                write_boundary(b, "--", mixed, "\r\n");
                write_body(b, req, alt);
                for (size_t i = 0; i < req->attachment_cnt; i++) {
                        write_boundary(b, "\r\n--", mixed, "\r\n");
                        write_attachment(b, &req->attachments[i]);
                }
                write_boundary(b, "\r\n--", mixed, "--\r\n");
        } else {
                write_body(b, req, alt);
                size_t len = dynbuf_len(b);
                const char *p = dynbuf_ptr(b);

                if (len < 2 || p[len - 2] != '\r' || p[len - 1] != '\n')
                        dynbuf_append(b, "\r\n", 2);
        }
        /* The terminator follows the payload, so that a session sends both
         * from here in one write (struct message). */
        dynbuf_append(b, ".\r\n", 3);
        if (dynbuf_error(b) == DYNBUF_ELIMIT) {
                snprintf(errstr, errstr_size, "message: larger than %u bytes",
                         MESSAGE_MAX_BYTES);
                goto out;
        }
        if (!opts->scratch || dynbuf_size(b) > MESSAGE_SCRATCH_KEEP) {
                /* the buffer goes with the message (not copied) */
                msg->buf = dynbuf_take(b, &data_len);
        } else if (dynbuf_error(b) == DYNBUF_OK) {
                data_len = dynbuf_len(b);
                msg->buf = malloc(data_len + 1);
                if (msg->buf != NULL)
                        memcpy(msg->buf, dynbuf_ptr(b), data_len + 1);
        }
        if (msg->buf == NULL)
                goto oom;
        msg->headroom = opts->headroom;
        msg->data = msg->buf + opts->headroom;
        msg->data_len = data_len - opts->headroom - 3;
        ok = 1;
        goto out;

oom:
        snprintf(errstr, errstr_size, "message: out of memory");
out:
        if (opts->scratch) {
                dynbuf_reuse(b, MESSAGE_MAX_BYTES, MESSAGE_SCRATCH_KEEP);
                dynbuf_reuse(scratch, MESSAGE_MAX_BYTES, MESSAGE_SCRATCH_KEEP);
        } else {
                message_scratch_fini(&own);
        }
        if (!ok) {
                message_destroy(msg);
                msg = NULL;
        }
        return msg;
}

int message_prepend(struct message *msg, const char *p, size_t len) {
        char *buf;

        if (len <= msg->headroom) {
                msg->data -= len;
                msg->headroom -= len;
        } else {
                /* + 4: the terminator that follows the data, and a NUL */
                buf = malloc(len + msg->data_len + 4);
                if (buf == NULL)
                        return -1;
                memcpy(buf + len, msg->data, msg->data_len + 4);
                free(msg->buf);
                msg->buf = buf;
                msg->data = buf;
                msg->headroom = 0;
        }
        memcpy(msg->data, p, len);
        msg->data_len += len;
        return 0;
}

void message_destroy(struct message *msg) {
        if (msg == NULL)
                return;
        free(msg->buf);
        free(msg); /* with the rcpts, message_id and mail_from */
}
