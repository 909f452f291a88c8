/*
 * signer: the worker's DKIM keys (dkim.key.*), read once at start, and the
 * signing of built messages. Every key whose domain is the domain of the
 * From address (ASCII, any case) signs the message; the DKIM-Signature
 * fields go in front of it, in the order of the keys. A message whose
 * domain has no key is left alone. Runs on the worker's loop thread.
 */
#ifndef KM_SIGNER_H
#define KM_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "message.h"
#include "metrics.h"

typedef struct signer signer_t;

/*
 * Reads the keys of @conf (conf->dkim_keys; none: a signer that signs
 * nothing) and logs each key's DNS record (public key only).
 * @returns the signer, or NULL with @errstr naming the key that could not
 * be read (never showing key material).
 */
signer_t *signer_new(const struct config *conf, char *errstr,
                     size_t errstr_size);

/* Frees @s (NULL: nothing), wiping the private keys. */
void signer_destroy(signer_t *s);

/* @returns the room to leave in front of a message from the address @from
 * for its signatures (message_opts.headroom): 0 when no key signs mail of
 * its domain. */
size_t signer_headroom(const signer_t *s, const char *from);

/*
 * Signs @msg, whose From address is @from, with each key of its domain at
 * @now (seconds since the epoch) and puts the fields in front of it
 * (message_prepend()). A key that fails to sign is logged (with the
 * request @id) and counted, and the message goes on without its
 * signature. @returns the number of signatures added.
 */
int signer_sign(signer_t *s, struct message *msg, const char *from, int64_t now,
                const char *id);

/* Writes kafka_mailer_dkim_signed_total{key} and
 * kafka_mailer_dkim_failures_total{key} (nothing without keys). */
void signer_render(const signer_t *s, metrics_out_t *out);

#endif
