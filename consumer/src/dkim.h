/*
 * dkim: DKIM signatures (RFC 6376) for outgoing messages, rsa-sha256 and
 * ed25519-sha256 (RFC 8463), relaxed/relaxed canonicalisation.
 *
 * A key (dkim_key_t) is one signing domain's private key with its selector
 * and the list of header fields to sign, read once at start. dkim_sign()
 * then makes the DKIM-Signature field for a complete message, to be sent
 * in front of it. A key is never written to after dkim_key_new(): any
 * number of threads may sign with the same key at once.
 *
 * Key material never appears in an error text, a log line or the output.
 */
#ifndef KM_DKIM_H
#define KM_DKIM_H

#include <stddef.h>
#include <stdint.h>

struct dynbuf;

typedef struct dkim_key dkim_key_t;

/* The header fields signed when the caller gives no list. */
#define DKIM_HEADERS_DEFAULT                                                   \
        "from:to:cc:subject:date:message-id:reply-to:in-reply-to:"             \
        "references:mime-version:content-type:content-transfer-encoding:"      \
        "sender:list-unsubscribe:list-unsubscribe-post"

/* At most this many names in a list of header fields to sign. */
#define DKIM_HEADERS_MAX 32

/* At most this many header fields of a message are signed (the fields
 * whose names are listed, counted with their repeats). */
#define DKIM_FIELDS_MAX 128

/* RSA keys of this size in bits are accepted (RFC 8301: at least 1024;
 * above 4096 a signature costs too much at the worker's rates). */
#define DKIM_RSA_BITS_MIN 1024
#define DKIM_RSA_BITS_MAX 4096

/* A key file larger than this is refused. */
#define DKIM_KEY_FILE_MAX 65536

/*
 * Reads the private key in the PEM file @pem_path: RSA (PKCS#8 "PRIVATE
 * KEY" or PKCS#1 "RSA PRIVATE KEY", DKIM_RSA_BITS_MIN to DKIM_RSA_BITS_MAX
 * bits) signs rsa-sha256, Ed25519 (PKCS#8 "PRIVATE KEY") ed25519-sha256.
 * Encrypted keys are refused (nothing prompts for a passphrase).
 * @domain (d=) and @selector (s=) are DNS names in ASCII (A-labels).
 * @headers is the colon-separated list of header field names to sign, any
 * case, at most DKIM_HEADERS_MAX, each once, "from" among them; NULL means
 * DKIM_HEADERS_DEFAULT. From is over-signed (listed once more in h= than
 * the message has it), so a From added on the way breaks the signature.
 * @returns the key (free with dkim_key_destroy()), or NULL with the reason
 * in @errstr (which names the file, never its content).
 */
dkim_key_t *dkim_key_new(const char *domain, const char *selector,
                         const char *pem_path, const char *headers,
                         char *errstr, size_t errstr_size);

/* Frees @k (NULL: nothing). The private key is wiped first. */
void dkim_key_destroy(dkim_key_t *k);

/* @returns the signing domain (d=) of @k. */
const char *dkim_key_domain(const dkim_key_t *k);

/* @returns the selector (s=) of @k. */
const char *dkim_key_selector(const dkim_key_t *k);

/* @returns the signing algorithm (a=) of @k: "rsa-sha256" or
 * "ed25519-sha256". */
const char *dkim_key_algorithm(const dkim_key_t *k);

/* @returns the size of @k in bits (Ed25519: 256). */
int dkim_key_bits(const dkim_key_t *k);

/*
 * Appends the content of the DNS TXT record that publishes the public half
 * of @k at <selector>._domainkey.<domain>: "v=DKIM1; k=rsa; p=..." or
 * "v=DKIM1; k=ed25519; p=..." (no quotes, not split into strings).
 * @returns 0, or -1 (out of memory, or @out's limit) with @out's content
 * as it was.
 */
int dkim_key_dns_record(const dkim_key_t *k, struct dynbuf *out);

/*
 * Signs the message @msg (@msg_len bytes: the header fields, an empty
 * line, the body; CRLF line ends; not dot-stuffed) with @k at @now
 * (seconds since the epoch: t=; no x=), and appends to @out the
 * DKIM-Signature field, folded to lines of at most 78 characters where
 * the domain and selector allow, ending with CRLF, to be sent in front of
 * the message. The body is hashed in one pass; nothing of the message is
 * copied. A message without an empty line has an empty body.
 * @returns 0, or -1 with the reason in @errstr: the message has no From
 * field, has more than DKIM_FIELDS_MAX fields to sign, @out's limit (@out
 * then stays failed, see dynbuf_error()), out of memory, or OpenSSL
 * failed; @out's content is as it was.
 */
int dkim_sign(const dkim_key_t *k, const char *msg, size_t msg_len, int64_t now,
              struct dynbuf *out, char *errstr, size_t errstr_size);

/*
 * Like dkim_sign(), for the message in SMTP DATA form (RFC 5321 4.5.2):
 * @data is dot-stuffed (a line that starts with '.' has one more in
 * front) and does not include the final ".\r\n". The signature covers the
 * message the receiver gets, the stuffing taken out; nothing is copied.
 * @returns 0, or -1 with @errstr as dkim_sign().
 */
int dkim_sign_data(const dkim_key_t *k, const char *data, size_t data_len,
                   int64_t now, struct dynbuf *out, char *errstr,
                   size_t errstr_size);

/*
 * @returns a length the DKIM-Signature field dkim_sign() or
 * dkim_sign_data() makes with @k does not pass when the message has each
 * header field that @k signs at most once (repeated fields lengthen h=):
 * the room to keep in front of a message for it.
 */
size_t dkim_key_field_max(const dkim_key_t *k);

/*
 * The relaxed canonical form (RFC 6376 3.4.2) of the header field @field
 * (@len bytes, its final CRLF optional): the name in lower case, ":", the
 * value unfolded with each run of spaces and tabs made one space and none
 * at its ends, CRLF. Appended to @out. @returns 0 or -1 (@out's limit).
 */
int dkim_canon_header(const char *field, size_t len, struct dynbuf *out);

/*
 * The relaxed canonical form (RFC 6376 3.4.4) of the body @body (@len
 * bytes): spaces and tabs at line ends removed, other runs of them made one
 * space, empty lines at the end removed, a CRLF added to a last line
 * without one; an empty body stays empty. Appended to @out.
 * @returns 0 or -1 (@out's limit).
 */
int dkim_canon_body(const char *body, size_t len, struct dynbuf *out);

#endif
