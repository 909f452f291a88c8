/*
 * message: builds the RFC 5322 / MIME message for a request and the SMTP
 * envelope. Output uses CRLF line ends, keeps every line within 998
 * octets (78 where folding allows), encodes non-ASCII header text as RFC 2047
 * encoded words, bodies as quoted-printable when needed and attachments as
 * base64, and never writes Bcc into the headers. UTF-8 addresses are
 * written raw (RFC 6532); such a message is marked smtputf8.
 */
#ifndef KM_MESSAGE_H
#define KM_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "dynbuf.h"
#include "request.h"

/* What a message_scratch keeps between messages, at most, in each buffer. */
#define MESSAGE_SCRATCH_KEEP (256u * 1024)

/*
 * The buffers message_build() builds in, kept from one message to the next
 * (up to MESSAGE_SCRATCH_KEEP bytes each), so that a message costs one
 * allocation: it is copied out at its size (a larger one takes the buffer
 * with it). Embedded by its owner (message_scratch_init()/_fini()); used by
 * one thread at a time.
 */
struct message_scratch {
        struct dynbuf ms_buf; /* the message */
        struct dynbuf ms_word; /* a header word, while it is being folded */
};

void message_scratch_init(struct message_scratch *ms);

/* Frees what @ms kept. */
void message_scratch_fini(struct message_scratch *ms);

struct message_opts {
        const char
                *message_id_domain; /* NULL or "": the From address's domain */
        int64_t date_ms; /* Unix ms for the Date header */
        size_t headroom; /* bytes kept free in front of data, so that
                            message_prepend() of that much copies nothing */
        struct message_scratch *scratch; /* NULL: buffers of the call's own */
};

/* One built message, ready for SMTP. */
struct message {
        char *message_id; /* "<id@domain>", the Message-ID header value */
        char *mail_from; /* envelope sender: the From address */
        char **rcpts; /* envelope recipients: to, cc and bcc addresses */
        size_t rcpt_cnt;
        char *data; /* DATA payload: dot-stuffed, CRLF, ends with CRLF;
                       data_len does not count the terminating ".\r\n",
                       which follows it in memory */
        size_t data_len;
        char *buf; /* the allocation data is in (owned) */
        size_t headroom; /* free bytes in front of data */
        int smtputf8; /* 1 when an address is UTF-8: the envelope and the
                         header block carry it raw (RFC 6531, RFC 6532) and
                         the relay must offer SMTPUTF8. Otherwise the header
                         block is ASCII. */
};

/* @returns the Message-ID value ("<id@domain>") for a request, written to
 * @buf; the same request id always gives the same Message-ID. */
int message_id_for(const struct mail_request *req, const char *domain,
                   char *buf, size_t buf_size);

/* Builds the message. @returns a new message, or NULL with @errstr. */
struct message *message_build(const struct mail_request *req,
                              const struct message_opts *opts, char *errstr,
                              size_t errstr_size);

/*
 * Puts the @len bytes of @p (whole header fields with their CRLF, such as a
 * DKIM-Signature) in front of @msg's data. Within the headroom left in
 * front of it nothing is copied; beyond it the data is copied to a new
 * allocation. @returns 0, or -1 when out of memory (@msg unchanged).
 */
int message_prepend(struct message *msg, const char *p, size_t len);

void message_destroy(struct message *msg);

#endif
