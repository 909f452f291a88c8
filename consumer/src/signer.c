#include "signer.h"

#include "dkim.h"
#include "dynbuf.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

_Static_assert(CONFIG_DKIM_KEYS_MAX <= 32, "signer_sign() keeps a 32-bit mask");

/* The fields of one message: room for every key's, with repeats. */
#define SIGNER_FIELDS_MAX (CONFIG_DKIM_KEYS_MAX * 65536)

struct signer_key {
        const char *sk_name; /* dkim.key.<name>, from the config */
        dkim_key_t *sk_key;
        size_t sk_room; /* dkim_key_field_max() */
        uint64_t sk_signed;
        uint64_t sk_failed;
};

struct signer {
        struct signer_key *sg_keys;
        size_t sg_cnt;
        struct dynbuf sg_fields; /* the fields of the message being signed */
};

/* @returns the domain of the address @addr (after its last '@'). */
static const char *signer_domain(const char *addr) {
        const char *at = strrchr(addr, '@');

        return at ? at + 1 : "";
}

/* @returns 1 when the key @k signs mail of @domain. */
static int signer_key_matches(const struct signer_key *k, const char *domain) {
        return strcasecmp(dkim_key_domain(k->sk_key), domain) == 0;
}

/* Logs what to publish in DNS for @k. */
static void signer_log_key(const struct signer_key *k) {
        struct dynbuf rec;

        dynbuf_init(&rec, 4096);
        if (dkim_key_dns_record(k->sk_key, &rec) == 0)
                LOG(LL_INFO,
                    "dkim key key=%s domain=%s selector=%s algorithm=%s "
                    "bits=%d dns_name=%s._domainkey.%s dns_txt=%s",
                    k->sk_name, dkim_key_domain(k->sk_key),
                    dkim_key_selector(k->sk_key), dkim_key_algorithm(k->sk_key),
                    dkim_key_bits(k->sk_key), dkim_key_selector(k->sk_key),
                    dkim_key_domain(k->sk_key), dynbuf_ptr(&rec));
        dynbuf_fini(&rec);
}

signer_t *signer_new(const struct config *conf, char *errstr,
                     size_t errstr_size) {
        signer_t *s = calloc(1, sizeof(*s));
        char err[512];

        if (!s) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        dynbuf_init(&s->sg_fields, SIGNER_FIELDS_MAX);
        if (conf->dkim_key_cnt == 0)
                return s;
        s->sg_keys = calloc(conf->dkim_key_cnt, sizeof(*s->sg_keys));
        if (!s->sg_keys) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        for (size_t i = 0; i < conf->dkim_key_cnt; i++) {
                const struct config_dkim_key *d = &conf->dkim_keys[i];
                struct signer_key *k = &s->sg_keys[i];

                k->sk_name = d->name;
                k->sk_key = dkim_key_new(d->domain, d->selector, d->file,
                                         d->headers[0] ? d->headers
                                                       : conf->dkim_headers,
                                         err, sizeof(err));
                if (!k->sk_key) {
                        snprintf(errstr, errstr_size, "dkim.key.%s: %s",
                                 d->name, err);
                        goto fail;
                }
                s->sg_cnt++;
                k->sk_room = dkim_key_field_max(k->sk_key);
                signer_log_key(k);
        }
        return s;

fail:
        signer_destroy(s);
        return NULL;
}

void signer_destroy(signer_t *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->sg_cnt; i++)
                dkim_key_destroy(s->sg_keys[i].sk_key);
        free(s->sg_keys);
        dynbuf_fini(&s->sg_fields);
        free(s);
}

size_t signer_headroom(const signer_t *s, const char *from) {
        const char *domain;
        size_t room = 0;

        if (s->sg_cnt == 0)
                return 0;
        domain = signer_domain(from);
        for (size_t i = 0; i < s->sg_cnt; i++) {
                if (signer_key_matches(&s->sg_keys[i], domain))
                        room += s->sg_keys[i].sk_room;
        }
        return room;
}

int signer_sign(signer_t *s, struct message *msg, const char *from, int64_t now,
                const char *id) {
        const char *domain;
        char err[256];
        uint32_t made = 0; /* the keys that signed, by index */
        int n = 0;

        if (s->sg_cnt == 0)
                return 0;
        domain = signer_domain(from);
        dynbuf_reset(&s->sg_fields);
        for (size_t i = 0; i < s->sg_cnt; i++) {
                struct signer_key *k = &s->sg_keys[i];

                if (!signer_key_matches(k, domain))
                        continue;
                if (dkim_sign_data(k->sk_key, msg->data, msg->data_len, now,
                                   &s->sg_fields, err, sizeof(err)) != 0) {
                        k->sk_failed++;
                        LOG(LL_WARN,
                            "dkim signing failed, sent without this signature "
                            "id=%s key=%s error=%s",
                            id, k->sk_name, err);
                        continue;
                }
                made |= 1u << i;
                n++;
        }
        if (n > 0 && message_prepend(msg, dynbuf_ptr(&s->sg_fields),
                                     dynbuf_len(&s->sg_fields)) != 0) {
                LOG(LL_WARN,
                    "dkim signing failed, sent unsigned id=%s error=%s", id,
                    "out of memory");
                n = 0;
        }
        for (size_t i = 0; i < s->sg_cnt; i++) {
                if (!(made & (1u << i)))
                        continue;
                if (n > 0)
                        s->sg_keys[i].sk_signed++;
                else
                        s->sg_keys[i].sk_failed++;
        }
        return n;
}

void signer_render(const signer_t *s, metrics_out_t *out) {
        char label[64];

        for (size_t i = 0; i < s->sg_cnt; i++) {
                snprintf(label, sizeof(label), "key=\"%s\"",
                         s->sg_keys[i].sk_name);
                metrics_sample(out, "kafka_mailer_dkim_signed_total", "counter",
                               "messages signed, by DKIM key", label,
                               (double)s->sg_keys[i].sk_signed);
        }
        for (size_t i = 0; i < s->sg_cnt; i++) {
                snprintf(label, sizeof(label), "key=\"%s\"",
                         s->sg_keys[i].sk_name);
                metrics_sample(out, "kafka_mailer_dkim_failures_total",
                               "counter",
                               "signatures that could not be made (the "
                               "message was sent without them), by DKIM key",
                               label, (double)s->sg_keys[i].sk_failed);
        }
}
