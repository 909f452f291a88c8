/*
 * message_check: the invariants every built message must keep, shared by the
 * fuzz targets that call message_build(). A broken invariant prints what
 * broke to stderr and calls abort(), which libFuzzer reports as a crash.
 */
#ifndef KM_FUZZ_MESSAGE_CHECK_H
#define KM_FUZZ_MESSAGE_CHECK_H

#include "message.h"
#include "request.h"

/*
 * Checks @msg, built from @req with Message-ID domain @domain (NULL: the
 * From domain): CRLF-only line ends, no NUL, no line over 998 octets, no line
 * "." and every line starting with '.' dot-stuffed, a well-formed header
 * block without Bcc (and no Bcc address unless the same text is in a visible
 * field), and an envelope that matches the request.
 */
void message_check(const struct mail_request *req, const struct message *msg);

/* Prints @what and aborts. */
void fuzz_fail(const char *what) __attribute__((noreturn));

#endif
