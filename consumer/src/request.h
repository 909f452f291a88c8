/*
 * request: one email request (wire format v1, docs/wire-format.md) parsed
 * from JSON bytes and validated into a struct mail_request. Every rejection
 * carries a reason naming the field, e.g. "to[2]: CR or LF not allowed".
 */
#ifndef KM_REQUEST_H
#define KM_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* The names of a request's fields (docs/wire-format.md), in the order
 * request_parse() reads them into; no other member is accepted. */
#define REQUEST_FIELDS 15
extern const char *const request_fields[REQUEST_FIELDS];

struct request_limits {
        size_t max_bytes; /* request.max.bytes: the whole JSON value */
        size_t max_recipients; /* request.max.recipients: to + cc + bcc */
        /* request.max.subject.bytes: the subject; 0 = no limit */
        size_t max_subject_bytes;
        /* request.max.header.bytes: each header value and display name;
         * 0 = no limit */
        size_t max_header_bytes;
};

/* An address as given: "Ann <ann@example.com>" gives
 * display "Ann" (UTF-8, unquoted; NULL when none) and addr "ann@example.com". */
struct mail_address {
        char *display;
        char *addr;
};

struct mail_header {
        char *name;
        char *value; /* UTF-8, encoded when the message is built */
};

struct mail_attachment {
        char *filename; /* UTF-8 */
        char *content_type; /* "type/subtype", default application/octet-stream */
        unsigned char *data; /* decoded bytes */
        size_t data_len;
};

/* "priority": which of two requests waiting for the same relay or
 * destination limit goes first. */
enum mail_priority {
        MAIL_PRIORITY_TRANSACTIONAL = 0, /* the default */
        MAIL_PRIORITY_BULK
};

struct mail_request {
        char *id; /* RFC 5322 atext and '.', 1..200 chars */
        struct mail_address from;
        struct mail_address *to;
        size_t to_cnt;
        struct mail_address *cc;
        size_t cc_cnt;
        struct mail_address *bcc;
        size_t bcc_cnt;
        struct mail_address *reply_to;
        size_t reply_to_cnt;
        char *subject; /* UTF-8, "" when absent */
        /* UTF-8 or NULL; at least one of text/html is set. Each points into
         * its JSON string (*_json), not copied. */
        const char *text;
        const char *html;
        json_t *text_json;
        json_t *html_json;
        struct mail_header *headers;
        size_t header_cnt;
        struct mail_attachment *attachments;
        size_t attachment_cnt;
        int64_t deadline_ms; /* Unix ms, 0 when none */
        json_t *metadata; /* owned reference, NULL when absent; echoed in the result */
        enum mail_priority priority; /* "priority", transactional when absent */
        int smtputf8; /* 1 when an address (from, to, cc, bcc, reply_to) has
                         UTF-8 text: the message needs SMTPUTF8 (RFC 6531) */
};

/*
 * Parses and validates @len bytes of JSON.
 * @returns a new request, or NULL with the reason in @errstr. When the
 * bytes are valid JSON with a string "id", @idbuf receives it (truncated to
 * @idbuf_size, "" otherwise) so a rejection can still be keyed by id.
 */
struct mail_request *request_parse(const char *json, size_t len,
                                   const struct request_limits *limits,
                                   char *idbuf, size_t idbuf_size, char *errstr,
                                   size_t errstr_size);

void request_destroy(struct mail_request *req);

/* Frees what only the message's building reads: text, html, the extra
 * headers and the attachments (counts set to 0, pointers to NULL). The id,
 * the addresses, the subject, the deadline, the metadata and the priority
 * stay. */
void request_drop_content(struct mail_request *req);

/* @returns 1 when @len bytes at @id make a valid request id (the rules of
 * the "id" field: docs/wire-format.md), 0 otherwise. */
int request_id_valid(const char *id, size_t len);

/* @returns the number of envelope recipients (to + cc + bcc). */
size_t request_recipient_count(const struct mail_request *req);

/* @returns whether header @name (any case) is one the worker writes itself,
 * which a request may not set. */
int request_header_reserved(const char *name);

/* Checks one bare address (local@domain): an RFC 5321 mailbox, or with
 * UTF-8 in the local part or the domain an RFC 6531 one. @utf8 (may be NULL)
 * is set to 1 when the address holds UTF-8 text, 0 otherwise.
 * @returns 0 or -1 with a reason in @errstr. */
int request_check_addr(const char *addr, int *utf8, char *errstr,
                       size_t errstr_size);

#endif
