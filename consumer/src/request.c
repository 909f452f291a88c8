#include "request.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "civil.h"
#include "cstr.h"
#include "jsonparse.h"
#include "utf8.h"

#define REQUEST_ID_MAX 200
#define REQUEST_ADDR_MAX 254
#define REQUEST_LOCAL_MAX 64
#define REQUEST_LABEL_MAX 63
#define REQUEST_HEADER_NAME_MAX 76
#define REQUEST_FILENAME_MAX 255
#define REQUEST_CONTENT_TYPE_MAX 127

/* Writes "<field>: <reason>" style text into @errstr. */
static void fail(char *errstr, size_t errstr_size, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void fail(char *errstr, size_t errstr_size, const char *fmt, ...) {
        va_list ap;

        if (errstr_size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(errstr, errstr_size, fmt, ap);
        va_end(ap);
}

/* The fields of a request, and their names (docs/wire-format.md). */
enum request_field {
        F_V,
        F_ID,
        F_FROM,
        F_TO,
        F_CC,
        F_BCC,
        F_REPLY_TO,
        F_SUBJECT,
        F_TEXT,
        F_HTML,
        F_HEADERS,
        F_ATTACHMENTS,
        F_DEADLINE,
        F_METADATA,
        F_PRIORITY,
        F_COUNT
};

_Static_assert(F_COUNT == REQUEST_FIELDS, "request_fields: one per field");

const char *const request_fields[REQUEST_FIELDS] = {
        [F_V] = "v",
        [F_ID] = "id",
        [F_FROM] = "from",
        [F_TO] = "to",
        [F_CC] = "cc",
        [F_BCC] = "bcc",
        [F_REPLY_TO] = "reply_to",
        [F_SUBJECT] = "subject",
        [F_TEXT] = "text",
        [F_HTML] = "html",
        [F_HEADERS] = "headers",
        [F_ATTACHMENTS] = "attachments",
        [F_DEADLINE] = "deadline",
        [F_METADATA] = "metadata",
        [F_PRIORITY] = "priority",
};

/* The headers the worker writes itself; a request may not set them. */
static const char *const reserved_headers[] = {
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Return-Path",
        "Received",
        "Sender",
};

int request_header_reserved(const char *name) {
        for (size_t k = 0;
             k < sizeof(reserved_headers) / sizeof(reserved_headers[0]); k++)
                if (strcasecmp(name, reserved_headers[k]) == 0)
                        return 1;
        return 0;
}

static int is_atext(unsigned char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9'))
                return 1;
        return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int is_alnum(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9');
}

/* RFC 2045 token character: printable ASCII but space and tspecials. */
static int is_mime_token(unsigned char c) {
        if (c <= 32 || c >= 127)
                return 0;
        return strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* Formats one character for an error message: 'x' or 0xNN. */
static const char *char_repr(unsigned char c, char *buf, size_t size) {
        if (c > 32 && c < 127 && c != '\'')
                snprintf(buf, size, "'%c'", c);
        else
                snprintf(buf, size, "0x%02x", c);
        return buf;
}

/* @returns 1 when the JSON string @v holds a NUL (written as \u0000). */
static int has_nul(const json_t *v) {
        return strlen(json_string_value(v)) != json_string_length(v);
}

static int has_crlf(const char *s) {
        return strpbrk(s, "\r\n") != NULL;
}

/*
 * Checks a string that ends up in a header: no NUL, CR or LF.
 * @returns 0 or -1 with "<field>: ..." in @errstr.
 */
static int check_header_text(const json_t *v, const char *field, char *errstr,
                             size_t errstr_size) {
        if (has_nul(v)) {
                fail(errstr, errstr_size, "%s: NUL not allowed", field);
                return -1;
        }
        if (has_crlf(json_string_value(v))) {
                fail(errstr, errstr_size, "%s: CR or LF not allowed", field);
                return -1;
        }
        return 0;
}

/* Checks a dot-atom (atext separated by single dots) of @len bytes; @what
 * ends the reason, e.g. " in local part". With @allow_utf8, bytes of UTF-8
 * sequences count as atext (RFC 6531 atext; the caller has checked the
 * sequences). @returns NULL or the reason (in @rbuf). */
static const char *check_dot_atom(const char *s, size_t len, int allow_utf8,
                                  char *rbuf, size_t rbuf_size,
                                  const char *what) {
        char cbuf[8];

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c == '.') {
                        if (i == 0 || i + 1 == len) {
                                snprintf(rbuf, rbuf_size,
                                         "dot at start or end%s", what);
                                return rbuf;
                        }
                        if (s[i + 1] == '.') {
                                snprintf(rbuf, rbuf_size, "consecutive dots%s",
                                         what);
                                return rbuf;
                        }
                        continue;
                }
                if (!is_atext(c) && !(allow_utf8 && c >= 0x80)) {
                        snprintf(rbuf, rbuf_size, "invalid character %s%s",
                                 char_repr(c, cbuf, sizeof(cbuf)), what);
                        return rbuf;
                }
        }
        return NULL;
}

/* RFC 5321 quoted-string local part, quotes included. */
static int check_quoted_local(const char *s, size_t len) {
        if (len < 2 || s[0] != '"' || s[len - 1] != '"')
                return -1;
        for (size_t i = 1; i + 1 < len; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c == '\\') {
                        i++;
                        if (i + 1 >= len)
                                return -1;
                        c = (unsigned char)s[i];
                        if (c < 32 || c > 126)
                                return -1;
                        continue;
                }
                if (c < 32 || c == 127 || c == '"')
                        return -1;
        }
        return 0;
}

/* IPv4 address literal body ("1.2.3.4") or "IPv6:" followed by hex, ':'
 * and '.'. @returns 0 or -1. */
static int check_addr_literal(const char *s, size_t len) {
        if (len > 5 && strncasecmp(s, "IPv6:", 5) == 0) {
                for (size_t i = 5; i < len; i++) {
                        unsigned char c = (unsigned char)s[i];

                        if (!(c == ':' || c == '.' || (c >= '0' && c <= '9') ||
                              (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
                                return -1;
                }
                return 0;
        }
        int parts = 0;
        size_t i = 0;

        while (i < len) {
                unsigned val = 0;
                size_t digits = 0;

                while (i < len && s[i] >= '0' && s[i] <= '9') {
                        val = val * 10 + (unsigned)(s[i] - '0');
                        digits++;
                        i++;
                        if (digits > 3)
                                return -1;
                }
                if (digits == 0 || val > 255)
                        return -1;
                parts++;
                if (i < len) {
                        if (s[i] != '.' || i + 1 == len)
                                return -1;
                        i++;
                }
        }
        return parts == 4 ? 0 : -1;
}

static const char *check_domain(const char *d, size_t len, char *rbuf,
                                size_t rbuf_size) {
        if (len == 0)
                return "empty domain";
        if (d[0] == '[') {
                if (len < 3 || d[len - 1] != ']' ||
                    check_addr_literal(d + 1, len - 2) != 0)
                        return "invalid address literal";
                return NULL;
        }
        size_t start = 0;

        for (size_t i = 0; i <= len; i++) {
                if (i == len || d[i] == '.') {
                        size_t l = i - start;

                        if (l == 0)
                                return "empty label in domain";
                        if (l > REQUEST_LABEL_MAX)
                                return "domain label longer than 63 characters";
                        if (d[start] == '-' || d[i - 1] == '-')
                                return "domain label starts or ends with '-'";
                        start = i + 1;
                        continue;
                }
                unsigned char c = (unsigned char)d[i];

                /* A UTF-8 sequence is part of a U-label (RFC 6531 IDN). */
                if (!is_alnum(c) && c != '-' && c < 0x80) {
                        char cb[8];

                        snprintf(rbuf, rbuf_size,
                                 "invalid character %s in "
                                 "domain",
                                 char_repr(c, cb, sizeof(cb)));
                        return rbuf;
                }
        }
        return NULL;
}

/*
 * Checks the bytes of an address before its structure: no CR or LF, and any
 * non-ASCII text well-formed UTF-8 without control characters (C1, U+2028,
 * U+2029). Sets *@utf8 when there is non-ASCII text.
 * @returns NULL or the reason (in @rbuf).
 */
static const char *check_addr_bytes(const unsigned char *a, size_t len,
                                    int *utf8, char *rbuf, size_t rbuf_size) {
        size_t i = 0;

        while (i < len) {
                uint32_t cp;
                size_t n;

                if (a[i] == '\r' || a[i] == '\n')
                        return "CR or LF not allowed";
                if (a[i] < 0x80) {
                        i++;
                        continue;
                }
                n = utf8_decode(a + i, len - i, &cp);
                if (n == 0)
                        return "invalid UTF-8 in address";
                if (cp < 0xa0 || cp == 0x2028 || cp == 0x2029) {
                        snprintf(rbuf, rbuf_size,
                                 "control character U+%04X "
                                 "in address",
                                 (unsigned)cp);
                        return rbuf;
                }
                *utf8 = 1;
                i += n;
        }
        return NULL;
}

int request_check_addr(const char *addr, int *utf8, char *errstr,
                       size_t errstr_size) {
        size_t len = strlen(addr);
        const char *at;
        const char *reason = NULL;
        char rbuf[64];
        int is_utf8 = 0;

        reason = check_addr_bytes((const unsigned char *)addr, len, &is_utf8,
                                  rbuf, sizeof(rbuf));
        if (reason != NULL) {
                fail(errstr, errstr_size, "%s", reason);
                return -1;
        }
        if (len == 0) {
                fail(errstr, errstr_size, "empty address");
                return -1;
        }
        if (len > REQUEST_ADDR_MAX) {
                fail(errstr, errstr_size, "address longer than 254 characters");
                return -1;
        }
        at = strrchr(addr, '@');
        if (at == NULL) {
                fail(errstr, errstr_size, "missing '@' in address");
                return -1;
        }
        size_t llen = (size_t)(at - addr);

        if (llen == 0) {
                fail(errstr, errstr_size, "empty local part");
                return -1;
        }
        if (llen > REQUEST_LOCAL_MAX) {
                fail(errstr, errstr_size,
                     "local part longer than 64 characters");
                return -1;
        }
        if (addr[0] == '"') {
                if (check_quoted_local(addr, llen) != 0)
                        reason = "invalid quoted local part";
        } else {
                reason = check_dot_atom(addr, llen, 1, rbuf, sizeof(rbuf),
                                        " in local part");
        }
        if (reason == NULL)
                reason = check_domain(at + 1, len - llen - 1, rbuf,
                                      sizeof(rbuf));
        if (reason != NULL) {
                fail(errstr, errstr_size, "%s", reason);
                return -1;
        }
        if (utf8 != NULL)
                *utf8 = is_utf8;
        return 0;
}

static char *dup_range(const char *s, size_t len) {
        char *p = malloc(len + 1);

        if (p == NULL)
                return NULL;
        memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

static int is_wsp(char c) {
        return c == ' ' || c == '\t';
}

/*
 * Parses "addr", "<addr>", "Display <addr>" or "\"Quoted\" <addr>" from the
 * JSON string @v into @out (fields owned by @out).
 * @returns 0 or -1 with "<field>: ..." in @errstr.
 */
static int parse_mailbox(const json_t *v, const char *field,
                         struct mail_address *out, int *utf8, char *errstr,
                         size_t errstr_size) {
        const char *s;
        const char *end;
        const char *lt;
        const char *addr_start;
        const char *addr_end;
        char *display = NULL;
        char reason[128];
        int is_utf8 = 0;

        if (!json_is_string(v)) {
                fail(errstr, errstr_size, "%s: must be a string", field);
                return -1;
        }
        if (check_header_text(v, field, errstr, errstr_size) != 0)
                return -1;
        s = json_string_value(v);
        end = s + strlen(s);
        while (is_wsp(*s))
                s++;
        while (end > s && is_wsp(end[-1]))
                end--;
        if (s == end) {
                fail(errstr, errstr_size, "%s: empty address", field);
                return -1;
        }

        if (end[-1] != '>') {
                if (memchr(s, '<', (size_t)(end - s)) != NULL ||
                    memchr(s, '>', (size_t)(end - s)) != NULL) {
                        fail(errstr, errstr_size,
                             "%s: missing '>' after "
                             "address",
                             field);
                        return -1;
                }
                addr_start = s;
                addr_end = end;
                goto addr;
        }

        if (*s == '"') {
                /* Quoted display name: unescape into a new string. */
                const char *p = s + 1;
                size_t n = 0;

                display = malloc((size_t)(end - s) + 1);
                if (display == NULL) {
                        fail(errstr, errstr_size, "%s: out of memory", field);
                        return -1;
                }
                while (p < end && *p != '"') {
                        if (*p == '\\' && p + 1 < end)
                                p++;
                        display[n++] = *p++;
                }
                if (p == end) {
                        fail(errstr, errstr_size,
                             "%s: unterminated quoted "
                             "display name",
                             field);
                        goto fail;
                }
                display[n] = '\0';
                p++;
                while (p < end && is_wsp(*p))
                        p++;
                if (*p != '<') {
                        fail(errstr, errstr_size,
                             "%s: expected '<' after "
                             "quoted display name",
                             field);
                        goto fail;
                }
                lt = p;
        } else {
                lt = memchr(s, '<', (size_t)(end - s));
                if (lt == NULL) {
                        fail(errstr, errstr_size,
                             "%s: missing '<' before "
                             "address",
                             field);
                        return -1;
                }
                const char *dend = lt;

                while (dend > s && is_wsp(dend[-1]))
                        dend--;
                if (memchr(s, '"', (size_t)(dend - s)) != NULL ||
                    memchr(s, '>', (size_t)(dend - s)) != NULL) {
                        fail(errstr, errstr_size,
                             "%s: '\"' or '>' in display "
                             "name must be quoted",
                             field);
                        return -1;
                }
                if (dend > s) {
                        display = dup_range(s, (size_t)(dend - s));
                        if (display == NULL) {
                                fail(errstr, errstr_size, "%s: out of memory",
                                     field);
                                return -1;
                        }
                }
        }
        addr_start = lt + 1;
        addr_end = end - 1;
        if (memchr(addr_start, '<', (size_t)(addr_end - addr_start)) != NULL ||
            memchr(addr_start, '>', (size_t)(addr_end - addr_start)) != NULL) {
                fail(errstr, errstr_size, "%s: '<' or '>' inside address",
                     field);
                goto fail;
        }
        if (display != NULL && display[0] == '\0') {
                free(display);
                display = NULL;
        }

addr:
        out->addr = dup_range(addr_start, (size_t)(addr_end - addr_start));
        if (out->addr == NULL) {
                fail(errstr, errstr_size, "%s: out of memory", field);
                goto fail;
        }
        if (request_check_addr(out->addr, &is_utf8, reason, sizeof(reason)) !=
            0) {
                fail(errstr, errstr_size, "%s: %s", field, reason);
                free(out->addr);
                out->addr = NULL;
                goto fail;
        }
        out->display = display;
        if (is_utf8)
                *utf8 = 1;
        return 0;

fail:
        free(display);
        return -1;
}

static void address_free(struct mail_address *a) {
        free(a->display);
        free(a->addr);
}

static void addresses_free(struct mail_address *a, size_t cnt) {
        for (size_t i = 0; i < cnt; i++)
                address_free(&a[i]);
        free(a);
}

/* Makes "@name: reason" in @errstr "@name[@i]: reason" (a reason about an
 * array element is written with the array's name, which is all that most
 * requests, those without an error, need). */
static void name_element(char *errstr, size_t errstr_size, const char *name,
                         size_t i) {
        size_t n = strlen(name);
        char *rest;

        if (errstr_size == 0 || strncmp(errstr, name, n) != 0)
                return;
        rest = strdup(errstr + n);
        if (rest == NULL)
                return;
        snprintf(errstr, errstr_size, "%s[%zu]%s", name, i, rest);
        free(rest);
}

/*
 * Parses @v, the optional array of addresses (or, with @allow_string, one
 * string) of the field @name. @returns 0 or -1 with @errstr.
 */
static int parse_address_list(const json_t *v, const char *name,
                              int allow_string, struct mail_address **out,
                              size_t *out_cnt, int *utf8, char *errstr,
                              size_t errstr_size) {
        struct mail_address *list = NULL;
        size_t cnt;

        *out = NULL;
        *out_cnt = 0;
        if (v == NULL || json_is_null(v))
                return 0;
        if (allow_string && json_is_string(v)) {
                list = calloc(1, sizeof(*list));
                if (list == NULL) {
                        fail(errstr, errstr_size, "%s: out of memory", name);
                        return -1;
                }
                if (parse_mailbox(v, name, &list[0], utf8, errstr,
                                  errstr_size) != 0) {
                        free(list);
                        return -1;
                }
                *out = list;
                *out_cnt = 1;
                return 0;
        }
        if (!json_is_array(v)) {
                fail(errstr, errstr_size, "%s: must be %s", name,
                     allow_string ? "a string or an array of strings"
                                  : "an array of strings");
                return -1;
        }
        cnt = json_array_size(v);
        if (cnt == 0)
                return 0;
        list = calloc(cnt, sizeof(*list));
        if (list == NULL) {
                fail(errstr, errstr_size, "%s: out of memory", name);
                return -1;
        }
        for (size_t i = 0; i < cnt; i++) {
                if (parse_mailbox(json_array_get(v, i), name, &list[i], utf8,
                                  errstr, errstr_size) != 0) {
                        name_element(errstr, errstr_size, name, i);
                        addresses_free(list, i);
                        return -1;
                }
        }
        *out = list;
        *out_cnt = cnt;
        return 0;
}

/* @v, the optional string field @name: *@out NULL when absent or null. */
static int get_opt_string(const json_t *v, const char *name, const json_t **out,
                          char *errstr, size_t errstr_size) {
        *out = NULL;
        if (v == NULL || json_is_null(v))
                return 0;
        if (!json_is_string(v)) {
                fail(errstr, errstr_size, "%s: must be a string", name);
                return -1;
        }
        *out = v;
        return 0;
}

static int check_id(const json_t *v, char *errstr, size_t errstr_size) {
        const char *id;
        size_t len;
        char rbuf[64];
        const char *reason;

        if (v == NULL) {
                fail(errstr, errstr_size, "id: missing");
                return -1;
        }
        if (!json_is_string(v)) {
                fail(errstr, errstr_size, "id: must be a string");
                return -1;
        }
        id = json_string_value(v);
        len = json_string_length(v);
        if (len == 0) {
                fail(errstr, errstr_size, "id: empty");
                return -1;
        }
        if (len > REQUEST_ID_MAX) {
                fail(errstr, errstr_size, "id: longer than 200 characters");
                return -1;
        }
        /* json_string_length counts past an embedded NUL, so a NUL shows up
         * as an invalid character here. */
        reason = check_dot_atom(id, len, 0, rbuf, sizeof(rbuf), "");
        if (reason != NULL) {
                fail(errstr, errstr_size, "id: %s", reason);
                return -1;
        }
        return 0;
}

int request_id_valid(const char *id, size_t len) {
        char rbuf[64];

        return id && len > 0 && len <= REQUEST_ID_MAX &&
               !memchr(id, '\0', len) &&
               check_dot_atom(id, len, 0, rbuf, sizeof(rbuf), "") == NULL;
}

/* Copies a header name into @buf for an error message, printable only. */
static const char *name_repr(const char *name, char *buf, size_t size) {
        size_t n = 0;

        for (const char *p = name; *p != '\0' && n + 1 < size; p++) {
                unsigned char c = (unsigned char)*p;

                buf[n++] = (c >= 32 && c < 127) ? (char)c : '?';
        }
        buf[n] = '\0';
        return buf;
}

/* Checks that @len bytes of @field are within @max (0: no limit), named
 * by its setting @setting. @returns 0 or -1 with the reason. */
static int check_length(const char *field, size_t len, size_t max,
                        const char *setting, char *errstr, size_t errstr_size) {
        if (max == 0 || len <= max)
                return 0;
        fail(errstr, errstr_size, "%s: %zu bytes exceeds %s (%zu)", field, len,
             setting, max);
        return -1;
}

/* Checks every display name against request.max.header.bytes. */
static int check_display_names(const struct mail_request *req,
                               const struct request_limits *limits,
                               char *errstr, size_t errstr_size) {
        const struct {
                const char *name;
                const struct mail_address *list;
                size_t cnt;
        } lists[] = {{"from", &req->from, 1},
                     {"to", req->to, req->to_cnt},
                     {"cc", req->cc, req->cc_cnt},
                     {"bcc", req->bcc, req->bcc_cnt},
                     {"reply_to", req->reply_to, req->reply_to_cnt}};
        char field[32];

        for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
                for (size_t i = 0; i < lists[l].cnt; i++) {
                        const char *d = lists[l].list[i].display;

                        if (!d)
                                continue;
                        if (l == 0)
                                snprintf(field, sizeof(field), "from");
                        else
                                snprintf(field, sizeof(field), "%s[%zu]",
                                         lists[l].name, i);
                        if (check_length(field, strlen(d),
                                         limits->max_header_bytes,
                                         "request.max.header.bytes", errstr,
                                         errstr_size) != 0)
                                return -1;
                }
        }
        return 0;
}

static int parse_headers(const json_t *obj, struct mail_request *req,
                         const struct request_limits *limits, char *errstr,
                         size_t errstr_size) {
        const char *name;
        json_t *val;
        size_t i = 0;
        char nbuf[80];
        char field[96];

        if (obj == NULL || json_is_null(obj))
                return 0;
        if (!json_is_object(obj)) {
                fail(errstr, errstr_size, "headers: must be an object");
                return -1;
        }
        if (json_object_size(obj) == 0)
                return 0;
        req->headers = calloc(json_object_size(obj), sizeof(*req->headers));
        if (req->headers == NULL) {
                fail(errstr, errstr_size, "headers: out of memory");
                return -1;
        }
        json_object_foreach((json_t *)obj, name, val) {
                size_t nlen = strlen(name);

                snprintf(field, sizeof(field), "headers.%s",
                         name_repr(name, nbuf, sizeof(nbuf)));
                if (nlen == 0) {
                        fail(errstr, errstr_size, "headers: empty header name");
                        return -1;
                }
                if (nlen > REQUEST_HEADER_NAME_MAX) {
                        fail(errstr, errstr_size,
                             "%s: header name longer than "
                             "76 characters",
                             field);
                        return -1;
                }
                for (size_t k = 0; k < nlen; k++) {
                        unsigned char c = (unsigned char)name[k];

                        if (c < 33 || c > 126 || c == ':') {
                                fail(errstr, errstr_size,
                                     "%s: invalid header "
                                     "name",
                                     field);
                                return -1;
                        }
                }
                if (request_header_reserved(name)) {
                        fail(errstr, errstr_size,
                             "%s: set by the worker, not allowed", field);
                        return -1;
                }
                if (!json_is_string(val)) {
                        fail(errstr, errstr_size, "%s: must be a string",
                             field);
                        return -1;
                }
                if (check_header_text(val, field, errstr, errstr_size) != 0 ||
                    check_length(field, json_string_length(val),
                                 limits->max_header_bytes,
                                 "request.max.header.bytes", errstr,
                                 errstr_size) != 0)
                        return -1;
                req->headers[i].name = strdup(name);
                req->headers[i].value = strdup(json_string_value(val));
                req->header_cnt = i + 1;
                if (req->headers[i].name == NULL ||
                    req->headers[i].value == NULL) {
                        fail(errstr, errstr_size, "headers: out of memory");
                        return -1;
                }
                i++;
        }
        return 0;
}

#define B64_WS 0x40 /* white space, skipped */
#define B64_PAD 0x41 /* '=' */
#define B64_BAD 0xff

/* Maps a byte to its base64 value (0..63), B64_WS, B64_PAD or B64_BAD. */
static const unsigned char b64_table[256] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x40, 0x40, 0xff,
        0xff, 0x40, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x40, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3e, 0xff, 0xff, 0xff, 0x3f,
        0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0xff, 0xff,
        0xff, 0x41, 0xff, 0xff, 0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12,
        0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24,
        0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30,
        0x31, 0x32, 0x33, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff,
};

/*
 * Strict base64 (RFC 4648 standard alphabet, padded). ASCII white space
 * between characters is skipped so wrapped input is accepted.
 * @returns 0 with a malloc'd buffer in @out (never NULL), or -1.
 */
static int b64_decode(const char *src, size_t len, unsigned char **out,
                      size_t *out_len) {
        const unsigned char *s = (const unsigned char *)src;
        unsigned char *buf = malloc(len / 4 * 3 + 3);
        size_t n = 0;
        size_t i = 0;
        uint32_t acc = 0;
        int quad = 0;
        int pad = 0;

        if (buf == NULL)
                return -1;
        while (i < len) {
                /* Fast path: four alphabet characters at a quad start. */
                if (quad == 0 && pad == 0 && i + 4 <= len) {
                        unsigned a = b64_table[s[i]];
                        unsigned b = b64_table[s[i + 1]];
                        unsigned c = b64_table[s[i + 2]];
                        unsigned d = b64_table[s[i + 3]];

                        if ((a | b | c | d) < 64) {
                                uint32_t v = a << 18 | b << 12 | c << 6 | d;

                                buf[n++] = (unsigned char)(v >> 16);
                                buf[n++] = (unsigned char)(v >> 8);
                                buf[n++] = (unsigned char)v;
                                i += 4;
                                continue;
                        }
                }
                unsigned v = b64_table[s[i++]];

                if (v == B64_WS)
                        continue;
                if (v == B64_PAD) {
                        /* Padding only in the last two places of a quad. */
                        if (quad < 2)
                                goto bad;
                        pad++;
                        quad++;
                        if (quad == 4) {
                                buf[n++] =
                                        (unsigned char)(pad == 2 ? acc >> 4
                                                                 : acc >> 10);
                                if (pad == 1)
                                        buf[n++] = (unsigned char)(acc >> 2);
                                quad = 0;
                                acc = 0;
                        }
                        continue;
                }
                if (v == B64_BAD || pad > 0)
                        goto bad;
                acc = (acc << 6) | v;
                quad++;
                if (quad == 4) {
                        buf[n++] = (unsigned char)(acc >> 16);
                        buf[n++] = (unsigned char)(acc >> 8);
                        buf[n++] = (unsigned char)acc;
                        quad = 0;
                        acc = 0;
                }
        }
        if (quad != 0)
                goto bad;
        *out = buf;
        *out_len = n;
        return 0;
bad:
        free(buf);
        return -1;
}

static int check_content_type(const char *s) {
        const char *slash = strchr(s, '/');
        size_t tlen;

        if (slash == NULL || strlen(s) > REQUEST_CONTENT_TYPE_MAX)
                return -1;
        tlen = (size_t)(slash - s);
        if (tlen == 0 || slash[1] == '\0')
                return -1;
        for (const char *p = s; *p != '\0'; p++) {
                if (p != slash && !is_mime_token((unsigned char)*p))
                        return -1;
        }
        return 0;
}

static int parse_attachment(const json_t *v, size_t idx,
                            struct mail_attachment *a, char *errstr,
                            size_t errstr_size) {
        char field[64];
        const char *key;
        json_t *val;
        const json_t *fn;
        const json_t *ct;
        const json_t *b64;

        if (!json_is_object(v)) {
                fail(errstr, errstr_size, "attachments[%zu]: must be an object",
                     idx);
                return -1;
        }
        json_object_foreach((json_t *)v, key, val) {
                if (strcmp(key, "filename") != 0 &&
                    strcmp(key, "content_type") != 0 &&
                    strcmp(key, "content_base64") != 0) {
                        char nbuf[40];

                        fail(errstr, errstr_size,
                             "attachments[%zu]: unknown "
                             "field \"%s\"",
                             idx, name_repr(key, nbuf, sizeof(nbuf)));
                        return -1;
                }
        }

        snprintf(field, sizeof(field), "attachments[%zu].filename", idx);
        fn = json_object_get(v, "filename");
        if (fn == NULL) {
                fail(errstr, errstr_size, "%s: missing", field);
                return -1;
        }
        if (!json_is_string(fn)) {
                fail(errstr, errstr_size, "%s: must be a string", field);
                return -1;
        }
        if (check_header_text(fn, field, errstr, errstr_size) != 0)
                return -1;
        if (json_string_length(fn) == 0) {
                fail(errstr, errstr_size, "%s: empty", field);
                return -1;
        }
        if (json_string_length(fn) > REQUEST_FILENAME_MAX) {
                fail(errstr, errstr_size, "%s: longer than 255 bytes", field);
                return -1;
        }

        snprintf(field, sizeof(field), "attachments[%zu].content_type", idx);
        ct = json_object_get(v, "content_type");
        if (ct != NULL && json_is_null(ct))
                ct = NULL;
        if (ct != NULL) {
                if (!json_is_string(ct)) {
                        fail(errstr, errstr_size, "%s: must be a string",
                             field);
                        return -1;
                }
                if (check_header_text(ct, field, errstr, errstr_size) != 0)
                        return -1;
                if (check_content_type(json_string_value(ct)) != 0) {
                        fail(errstr, errstr_size, "%s: expected type/subtype",
                             field);
                        return -1;
                }
        }

        snprintf(field, sizeof(field), "attachments[%zu].content_base64", idx);
        b64 = json_object_get(v, "content_base64");
        if (b64 == NULL) {
                fail(errstr, errstr_size, "%s: missing", field);
                return -1;
        }
        if (!json_is_string(b64)) {
                fail(errstr, errstr_size, "%s: must be a string", field);
                return -1;
        }

        a->filename = strdup(json_string_value(fn));
        a->content_type = strdup(ct != NULL ? json_string_value(ct)
                                            : "application/octet-stream");
        if (a->filename == NULL || a->content_type == NULL) {
                fail(errstr, errstr_size, "attachments[%zu]: out of memory",
                     idx);
                return -1;
        }
        if (b64_decode(json_string_value(b64), json_string_length(b64),
                       &a->data, &a->data_len) != 0) {
                fail(errstr, errstr_size, "%s: invalid base64", field);
                return -1;
        }
        return 0;
}

static int parse_attachments(const json_t *arr, struct mail_request *req,
                             char *errstr, size_t errstr_size) {
        size_t cnt;

        if (arr == NULL || json_is_null(arr))
                return 0;
        if (!json_is_array(arr)) {
                fail(errstr, errstr_size, "attachments: must be an array");
                return -1;
        }
        cnt = json_array_size(arr);
        if (cnt == 0)
                return 0;
        req->attachments = calloc(cnt, sizeof(*req->attachments));
        if (req->attachments == NULL) {
                fail(errstr, errstr_size, "attachments: out of memory");
                return -1;
        }
        for (size_t i = 0; i < cnt; i++) {
                req->attachment_cnt = i + 1;
                if (parse_attachment(json_array_get(arr, i), i,
                                     &req->attachments[i], errstr,
                                     errstr_size) != 0)
                        return -1;
        }
        return 0;
}

/* Reads exactly @n digits. @returns the value or -1. */
static int digits(const char **p, int n) {
        int v = 0;

        for (int i = 0; i < n; i++) {
                char c = (*p)[i];

                if (c < '0' || c > '9')
                        return -1;
                v = v * 10 + (c - '0');
        }
        *p += n;
        return v;
}

static int days_in_month(int y, int m) {
        static const int dm[] = {31, 28, 31, 30, 31, 30,
                                 31, 31, 30, 31, 30, 31};

        if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
                return 29;
        return dm[m - 1];
}

/*
 * RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM).
 * @returns 0 with Unix ms in @out, or -1.
 */
static int parse_rfc3339(const char *s, int64_t *out) {
        const char *p = s;
        int y, mo, d, h, mi, sec, ms = 0, off = 0;

        y = digits(&p, 4);
        if (y < 0 || *p++ != '-')
                return -1;
        mo = digits(&p, 2);
        if (mo < 1 || mo > 12 || *p++ != '-')
                return -1;
        d = digits(&p, 2);
        if (d < 1 || d > days_in_month(y, mo))
                return -1;
        if (*p != 'T' && *p != 't')
                return -1;
        p++;
        h = digits(&p, 2);
        if (h < 0 || h > 23 || *p++ != ':')
                return -1;
        mi = digits(&p, 2);
        if (mi < 0 || mi > 59 || *p++ != ':')
                return -1;
        sec = digits(&p, 2);
        if (sec < 0 || sec > 60)
                return -1;
        if (sec == 60)
                sec = 59; /* a leap second: close enough for a deadline */
        if (*p == '.') {
                int n = 0;

                p++;
                while (*p >= '0' && *p <= '9') {
                        if (n < 3)
                                ms = ms * 10 + (*p - '0');
                        n++;
                        p++;
                }
                if (n == 0)
                        return -1;
                for (; n < 3; n++)
                        ms *= 10;
        }
        if (*p == 'Z' || *p == 'z') {
                p++;
        } else if (*p == '+' || *p == '-') {
                int sign = *p == '-' ? -1 : 1;
                int oh, om;

                p++;
                oh = digits(&p, 2);
                if (oh < 0 || oh > 23 || *p++ != ':')
                        return -1;
                om = digits(&p, 2);
                if (om < 0 || om > 59)
                        return -1;
                off = sign * (oh * 60 + om);
        } else {
                return -1;
        }
        if (*p != '\0')
                return -1;
        int64_t secs = civil_days_from(y, mo, d) * 86400 + h * 3600 + mi * 60 +
                       sec - (int64_t)off * 60;

        *out = secs * 1000 + ms;
        return 0;
}

static int parse_deadline(const json_t *field, struct mail_request *req,
                          char *errstr, size_t errstr_size) {
        const json_t *v;
        int64_t ms;

        if (get_opt_string(field, "deadline", &v, errstr, errstr_size) != 0)
                return -1;
        if (v == NULL)
                return 0;
        if (has_nul(v) || parse_rfc3339(json_string_value(v), &ms) != 0) {
                fail(errstr, errstr_size,
                     "deadline: invalid RFC 3339 "
                     "date-time");
                return -1;
        }
        /* 0 means "no deadline"; an old deadline stays in the past. */
        req->deadline_ms = ms > 0 ? ms : 1;
        return 0;
}

static int parse_priority(const json_t *field, struct mail_request *req,
                          char *errstr, size_t errstr_size) {
        const json_t *v;
        const char *s;

        if (get_opt_string(field, "priority", &v, errstr, errstr_size) != 0)
                return -1;
        if (v == NULL)
                return 0;
        s = json_string_value(v);
        if (strcmp(s, "transactional") == 0 && !has_nul(v))
                req->priority = MAIL_PRIORITY_TRANSACTIONAL;
        else if (strcmp(s, "bulk") == 0 && !has_nul(v))
                req->priority = MAIL_PRIORITY_BULK;
        else {
                fail(errstr, errstr_size,
                     "priority: must be \"transactional\" or \"bulk\"");
                return -1;
        }
        return 0;
}

/* Checks @field, the optional string field @name (NUL rejected; @header:
 * CR/LF too). @returns 0 with *@out the value or NULL when absent, or -1. */
static int check_opt_string(const json_t *field, const char *name, int header,
                            const json_t **out, char *errstr,
                            size_t errstr_size) {
        if (get_opt_string(field, name, out, errstr, errstr_size) != 0)
                return -1;
        if (*out == NULL)
                return 0;
        if (header)
                return check_header_text(*out, name, errstr, errstr_size);
        if (has_nul(*out)) {
                fail(errstr, errstr_size, "%s: NUL not allowed", name);
                return -1;
        }
        return 0;
}

/* Copies an optional string field checked by check_opt_string(). */
static int copy_opt_string(const json_t *field, const char *name, int header,
                           char **out, char *errstr, size_t errstr_size) {
        const json_t *v;

        if (check_opt_string(field, name, header, &v, errstr, errstr_size) != 0)
                return -1;
        if (v == NULL)
                return 0;
        *out = strdup(json_string_value(v));
        if (*out == NULL) {
                fail(errstr, errstr_size, "%s: out of memory", name);
                return -1;
        }
        return 0;
}

/* For the body parts: no copy, the string value is kept (@ref, a new
 * reference) and *@out points into it until request_drop_content(). */
static int ref_opt_string(const json_t *field, const char *name,
                          const char **out, json_t **ref, char *errstr,
                          size_t errstr_size) {
        const json_t *v;

        if (check_opt_string(field, name, 0, &v, errstr, errstr_size) != 0)
                return -1;
        if (v == NULL)
                return 0;
        *ref = json_incref((json_t *)v);
        *out = json_string_value(v);
        return 0;
}

static int check_version(const json_t *v, char *errstr, size_t errstr_size) {
        if (v == NULL)
                return 0;
        if (!json_is_integer(v)) {
                fail(errstr, errstr_size, "v: must be an integer");
                return -1;
        }
        if (json_integer_value(v) != 1) {
                fail(errstr, errstr_size,
                     "v: unsupported version %" JSON_INTEGER_FORMAT,
                     json_integer_value(v));
                return -1;
        }
        return 0;
}

static int check_unknown_fields(const json_t *root, char *errstr,
                                size_t errstr_size) {
        const char *key;
        json_t *val;

        json_object_foreach((json_t *)root, key, val) {
                size_t k;

                for (k = 0; k < F_COUNT; k++) {
                        if (strcmp(key, request_fields[k]) == 0)
                                break;
                }
                if (k == F_COUNT) {
                        char nbuf[40];

                        fail(errstr, errstr_size, "unknown field \"%s\"",
                             name_repr(key, nbuf, sizeof(nbuf)));
                        return -1;
                }
        }
        return 0;
}

/* Reads the request's fields into @f with jansson, when the fast path
 * (jsonparse_fields()) left the request: jansson finds what is wrong with it,
 * or parses what the fast path does not. @returns 0 with a new reference in
 * each f[i] (NULL when absent), or -1 with @errstr: f[i] are filled then
 * too when the request is an object (its id names it in the result). */
static int parse_fields_slow(const char *json, size_t len, json_t **f,
                             char *errstr, size_t errstr_size) {
        json_error_t jerr;
        int rc;
        json_t *root = json_loadb(json, len,
                                  JSON_REJECT_DUPLICATES | JSON_DECODE_ANY |
                                          JSON_ALLOW_NUL,
                                  &jerr);

        if (root == NULL) {
                fail(errstr, errstr_size,
                     "request: invalid JSON at line %d "
                     "column %d: %s",
                     jerr.line, jerr.column, jerr.text);
                return -1;
        }
        if (!json_is_object(root)) {
                fail(errstr, errstr_size, "request: must be a JSON object");
                json_decref(root);
                return -1;
        }
        for (size_t i = 0; i < F_COUNT; i++)
                f[i] = json_incref(json_object_get(root, request_fields[i]));
        rc = check_unknown_fields(root, errstr, errstr_size);
        json_decref(root);
        return rc;
}

struct mail_request *request_parse(const char *json, size_t len,
                                   const struct request_limits *limits,
                                   char *idbuf, size_t idbuf_size, char *errstr,
                                   size_t errstr_size) {
        struct mail_request *req = NULL;
        json_t *f[F_COUNT] = {NULL};
        const json_t *idv;
        size_t rcpts;
        int rc = 0;
        int ok = 0;

        if (idbuf_size > 0)
                idbuf[0] = '\0';
        if (len > limits->max_bytes) {
                fail(errstr, errstr_size,
                     "request: %zu bytes exceeds "
                     "request.max.bytes (%zu)",
                     len, limits->max_bytes);
                goto out;
        }
        /* The fast path; jansson decides what it leaves (and gives the
         * error message). */
        if (jsonparse_fields(json, len, request_fields, F_COUNT, f) != 0)
                rc = parse_fields_slow(json, len, f, errstr, errstr_size);
        idv = f[F_ID];
        if (idv != NULL && json_is_string(idv) && idbuf_size > 0)
                cstr_copy(idbuf, idbuf_size, json_string_value(idv));

        if (rc != 0 || check_version(f[F_V], errstr, errstr_size) != 0 ||
            check_id(idv, errstr, errstr_size) != 0)
                goto out;

        req = calloc(1, sizeof(*req));
        if (req == NULL) {
                fail(errstr, errstr_size, "request: out of memory");
                goto out;
        }
        req->id = strdup(json_string_value(idv));
        if (req->id == NULL) {
                fail(errstr, errstr_size, "request: out of memory");
                goto out;
        }

        if (f[F_FROM] == NULL) {
                fail(errstr, errstr_size, "from: missing");
                goto out;
        }
        if (parse_mailbox(f[F_FROM], "from", &req->from, &req->smtputf8, errstr,
                          errstr_size) != 0)
                goto out;
        if (parse_address_list(f[F_TO], "to", 0, &req->to, &req->to_cnt,
                               &req->smtputf8, errstr, errstr_size) != 0 ||
            parse_address_list(f[F_CC], "cc", 0, &req->cc, &req->cc_cnt,
                               &req->smtputf8, errstr, errstr_size) != 0 ||
            parse_address_list(f[F_BCC], "bcc", 0, &req->bcc, &req->bcc_cnt,
                               &req->smtputf8, errstr, errstr_size) != 0)
                goto out;
        rcpts = request_recipient_count(req);
        if (rcpts == 0) {
                fail(errstr, errstr_size, "to: no recipients in to, cc or bcc");
                goto out;
        }
        if (rcpts > limits->max_recipients) {
                fail(errstr, errstr_size,
                     "to: %zu recipients in to, cc and "
                     "bcc exceed request.max.recipients (%zu)",
                     rcpts, limits->max_recipients);
                goto out;
        }
        if (parse_address_list(f[F_REPLY_TO], "reply_to", 1, &req->reply_to,
                               &req->reply_to_cnt, &req->smtputf8, errstr,
                               errstr_size) != 0)
                goto out;

        if (copy_opt_string(f[F_SUBJECT], "subject", 1, &req->subject, errstr,
                            errstr_size) != 0)
                goto out;
        if (req->subject &&
            check_length("subject", strlen(req->subject),
                         limits->max_subject_bytes, "request.max.subject.bytes",
                         errstr, errstr_size) != 0)
                goto out;
        if (check_display_names(req, limits, errstr, errstr_size) != 0)
                goto out;
        if (req->subject == NULL) {
                req->subject = strdup("");
                if (req->subject == NULL) {
                        fail(errstr, errstr_size, "request: out of memory");
                        goto out;
                }
        }
        if (ref_opt_string(f[F_TEXT], "text", &req->text, &req->text_json,
                           errstr, errstr_size) != 0 ||
            ref_opt_string(f[F_HTML], "html", &req->html, &req->html_json,
                           errstr, errstr_size) != 0)
                goto out;
        if (req->text == NULL && req->html == NULL) {
                fail(errstr, errstr_size, "text: one of text or html required");
                goto out;
        }
        if (parse_headers(f[F_HEADERS], req, limits, errstr, errstr_size) !=
                    0 ||
            parse_attachments(f[F_ATTACHMENTS], req, errstr, errstr_size) !=
                    0 ||
            parse_deadline(f[F_DEADLINE], req, errstr, errstr_size) != 0 ||
            parse_priority(f[F_PRIORITY], req, errstr, errstr_size) != 0)
                goto out;

        req->metadata = f[F_METADATA];
        f[F_METADATA] = NULL; /* the request's reference now */
        ok = 1;

out:
        for (size_t i = 0; i < F_COUNT; i++)
                json_decref(f[i]);
        if (!ok) {
                request_destroy(req);
                req = NULL;
        }
        return req;
}

void request_destroy(struct mail_request *req) {
        if (req == NULL)
                return;
        free(req->id);
        address_free(&req->from);
        addresses_free(req->to, req->to_cnt);
        addresses_free(req->cc, req->cc_cnt);
        addresses_free(req->bcc, req->bcc_cnt);
        addresses_free(req->reply_to, req->reply_to_cnt);
        free(req->subject);
        request_drop_content(req);
        json_decref(req->metadata);
        free(req);
}

void request_drop_content(struct mail_request *req) {
        json_decref(req->text_json);
        req->text_json = NULL;
        req->text = NULL;
        json_decref(req->html_json);
        req->html_json = NULL;
        req->html = NULL;
        for (size_t i = 0; i < req->header_cnt; i++) {
                free(req->headers[i].name);
                free(req->headers[i].value);
        }
        free(req->headers);
        req->headers = NULL;
        req->header_cnt = 0;
        for (size_t i = 0; i < req->attachment_cnt; i++) {
                free(req->attachments[i].filename);
                free(req->attachments[i].content_type);
                free(req->attachments[i].data);
        }
        free(req->attachments);
        req->attachments = NULL;
        req->attachment_cnt = 0;
}

size_t request_recipient_count(const struct mail_request *req) {
        return req->to_cnt + req->cc_cnt + req->bcc_cnt;
}
