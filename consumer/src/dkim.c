/*
 * DKIM signing with OpenSSL's EVP interface, not Debian's libopendkim
 * (2.11.0~beta2, which does have ed25519-sha256): libopendkim wants a
 * library handle and a per-message DKIM handle with its own allocations,
 * takes the private key as PEM or DER bytes and decodes it again for every
 * signature, pulls in libbsd and libdb, and has had no release since 2018.
 * What DKIM signing needs is small: canonicalisation, two SHA-256 hashes
 * and one signature, with the key decoded once at start. OpenSSL is already
 * linked through libcurl, and its EVP interface signs both rsa-sha256
 * (PKCS#1 v1.5 over the SHA-256 of the header data) and ed25519-sha256
 * (pure Ed25519 over that SHA-256, RFC 8463 section 3) from a hash
 * computed here, so the body is hashed in one pass straight from the
 * message and nothing of the message is copied.
 */
#include "dkim.h"
#include "dynbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define LINE_SOFT 78 /* RFC 5322 "SHOULD" line length */
#define NAME_MAX_LEN 64 /* a header field name to sign */
#define DOMAIN_MAX_LEN 253
#define SELECTOR_MAX_LEN 63
#define HASH_LEN 32 /* SHA-256 */
#define SIG_MAX (DKIM_RSA_BITS_MAX / 8)
#define B64_LEN(n) (4 * (((n) + 2) / 3))

struct dkim_hname {
        char h_name[NAME_MAX_LEN + 1]; /* lower case */
        size_t h_len;
};

struct dkim_key {
        EVP_PKEY *k_pkey;
        EVP_MD *k_sha256;
        int k_ed25519; /* else RSA */
        int k_bits;
        size_t k_nhdr;
        size_t k_from; /* index of "from" in k_hdr */
        struct dkim_hname k_hdr[DKIM_HEADERS_MAX];
        char k_domain[DOMAIN_MAX_LEN + 1];
        char k_selector[SELECTOR_MAX_LEN + 1];
        /* "DKIM-Signature: v=1; a=...; c=...; d=...; s=...;", folded,
         * and the length of its last line */
        char k_prefix[DOMAIN_MAX_LEN + SELECTOR_MAX_LEN + 128];
        size_t k_prefix_len;
        size_t k_prefix_col;
};

/* A header field of the message to be signed. */
struct field {
        const char *f_p; /* from the start of its name */
        size_t f_len; /* to its final CRLF, included when there is one */
        size_t f_name; /* index in k_hdr */
};

/* What one signed name of h= stands for: a field, or none (over-signed). */
struct pick {
        const struct field *p_field; /* NULL: over-signed */
        size_t p_name;
};

/*
 * Sink: canonical text goes through a buffer into a hash or a dynbuf, so
 * that the canonicalisation code is the same for signing and for tests.
 */
struct sink {
        EVP_MD_CTX *s_md; /* hash into this, or */
        struct dynbuf *s_db; /* append to this */
        int s_err;
        size_t s_len;
        unsigned char s_buf[4096];
};

static void sink_write(struct sink *s, const void *p, size_t n) {
        if (s->s_md != NULL) {
                if (EVP_DigestUpdate(s->s_md, p, n) != 1)
                        s->s_err = 1;
        } else if (dynbuf_append(s->s_db, p, n) != 0) {
                s->s_err = 1;
        }
}

static void sink_flush(struct sink *s) {
        if (s->s_len > 0)
                sink_write(s, s->s_buf, s->s_len);
        s->s_len = 0;
}

static void sink_put(struct sink *s, const void *p, size_t n) {
        if (n > sizeof(s->s_buf) - s->s_len) {
                sink_flush(s);
                if (n >= sizeof(s->s_buf)) {
                        sink_write(s, p, n);
                        return;
                }
        }
        memcpy(s->s_buf + s->s_len, p, n);
        s->s_len += n;
}

static void sink_putc(struct sink *s, char c) {
        if (s->s_len == sizeof(s->s_buf))
                sink_flush(s);
        s->s_buf[s->s_len++] = (unsigned char)c;
}

static int is_wsp(char c) {
        return c == ' ' || c == '\t';
}

static char lower(char c) {
        return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Relaxed header canonicalisation (RFC 6376 3.4.2) of one field, with a
 * CRLF at the end when @crlf. */
static void canon_header(struct sink *s, const char *f, size_t len, int crlf) {
        const char *colon = memchr(f, ':', len);
        size_t name_end = colon != NULL ? (size_t)(colon - f) : len;
        size_t n = name_end;
        int pending = 0, started = 0;

        while (n > 0 &&
               (is_wsp(f[n - 1]) || f[n - 1] == '\r' || f[n - 1] == '\n'))
                n--;
        for (size_t i = 0; i < n; i++)
                sink_putc(s, lower(f[i]));
        sink_putc(s, ':');
        for (size_t i = name_end + 1; i < len; i++) {
                char c = f[i];

                if (c == '\r' && i + 1 < len && f[i + 1] == '\n') {
                        i++;
                        continue;
                }
                if (is_wsp(c)) {
                        pending = 1;
                        continue;
                }
                if (pending && started)
                        sink_putc(s, ' ');
                pending = 0;
                started = 1;
                sink_putc(s, c);
        }
        if (crlf)
                sink_put(s, "\r\n", 2);
}

/* Relaxed body canonicalisation (RFC 6376 3.4.4), in one pass. When
 * @stuffed, the body is dot-stuffed (SMTP DATA form): the first '.' of a
 * line that starts with one is not part of the message. */
static void canon_body(struct sink *s, const char *p, size_t len, int stuffed) {
        const char *end = p + len;
        size_t blank = 0; /* empty lines not written yet */
        int wsp = 0; /* white space not written yet */
        int content = 0; /* the current line has something */

        if (stuffed && p < end && *p == '.')
                p++;
        while (p < end) {
                const char *q;

                if (is_wsp(*p)) {
                        wsp = 1;
                        p++;
                        continue;
                }
                if (*p == '\r' && p + 1 < end && p[1] == '\n') {
                        if (content)
                                sink_put(s, "\r\n", 2);
                        else
                                blank++;
                        content = 0;
                        wsp = 0;
                        p += 2;
                        if (stuffed && p < end && *p == '.')
                                p++;
                        continue;
                }
                q = p + 1;
                while (q < end && !is_wsp(*q) && *q != '\r')
                        q++;
                for (; blank > 0; blank--)
                        sink_put(s, "\r\n", 2);
                if (wsp)
                        sink_putc(s, ' ');
                wsp = 0;
                sink_put(s, p, (size_t)(q - p));
                content = 1;
                p = q;
        }
        if (content)
                sink_put(s, "\r\n", 2);
}

int dkim_canon_header(const char *field, size_t len, struct dynbuf *out) {
        struct sink s = {.s_db = out};

        canon_header(&s, field, len, 1);
        sink_flush(&s);
        return s.s_err ? -1 : 0;
}

int dkim_canon_body(const char *body, size_t len, struct dynbuf *out) {
        struct sink s = {.s_db = out};

        canon_body(&s, body, len, 0);
        sink_flush(&s);
        return s.s_err ? -1 : 0;
}

/* Header writer: folds (CRLF + space) before a word that would pass
 * LINE_SOFT. */
struct fold {
        struct dynbuf *fo_b;
        size_t fo_col; /* length of the current line */
};

/* Writes @sep (" " or "") then the @n bytes of @w, or a fold then @w. */
static void fold_word(struct fold *fo, const char *sep, const char *w,
                      size_t n) {
        size_t sl = strlen(sep);

        if (fo->fo_col > 1 && fo->fo_col + sl + n > LINE_SOFT) {
                dynbuf_append(fo->fo_b, "\r\n ", 3);
                fo->fo_col = 1;
        } else {
                dynbuf_append(fo->fo_b, sep, sl);
                fo->fo_col += sl;
        }
        dynbuf_append(fo->fo_b, w, n);
        fo->fo_col += n;
}

static void fold_words(struct fold *fo, const char *w) {
        fold_word(fo, " ", w, strlen(w));
}

/* Writes @n bytes of base64 that may be folded anywhere. */
static void fold_b64(struct fold *fo, const char *p, size_t n) {
        while (n > 0) {
                size_t room, take;

                if (fo->fo_col >= LINE_SOFT) {
                        dynbuf_append(fo->fo_b, "\r\n ", 3);
                        fo->fo_col = 1;
                }
                room = LINE_SOFT - fo->fo_col;
                take = n < room ? n : room;
                dynbuf_append(fo->fo_b, p, take);
                fo->fo_col += take;
                p += take;
                n -= take;
        }
}

/* @returns OpenSSL's reason for its last error (static text, never key
 * material), and empties this thread's OpenSSL error queue. */
static const char *ssl_reason(void) {
        const char *r = ERR_reason_error_string(ERR_peek_last_error());

        ERR_clear_error();
        return r != NULL ? r : "unknown error";
}

/* @returns 1 when @s is a DNS name of at most @max characters: labels of
 * letters, digits and hyphens, separated by dots. */
static int dns_name_ok(const char *s, size_t max) {
        size_t n = strlen(s), label = 0;

        if (n == 0 || n > max)
                return 0;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];

                if (c == '.') {
                        if (label == 0)
                                return 0;
                        label = 0;
                } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '-') {
                        if (++label > 63)
                                return 0;
                } else {
                        return 0;
                }
        }
        return label > 0;
}

/* Parses the colon-separated list @list into @k. @returns 0 or -1 with
 * @errstr. */
static int headers_parse(dkim_key_t *k, const char *list, char *errstr,
                         size_t errstr_size) {
        const char *p = list;
        int have_from = 0;

        k->k_nhdr = 0;
        for (;;) {
                const char *e = strchr(p, ':');
                size_t n = e != NULL ? (size_t)(e - p) : strlen(p);
                struct dkim_hname *h;

                while (n > 0 && is_wsp(*p)) {
                        p++;
                        n--;
                }
                while (n > 0 && is_wsp(p[n - 1]))
                        n--;
                if (n == 0) {
                        snprintf(errstr, errstr_size,
                                 "header list \"%s\": an empty name", list);
                        return -1;
                }
                if (n > NAME_MAX_LEN) {
                        snprintf(errstr, errstr_size,
                                 "header list: a name longer than %d "
                                 "characters",
                                 NAME_MAX_LEN);
                        return -1;
                }
                if (k->k_nhdr == DKIM_HEADERS_MAX) {
                        snprintf(errstr, errstr_size,
                                 "header list: more than %d names",
                                 DKIM_HEADERS_MAX);
                        return -1;
                }
                h = &k->k_hdr[k->k_nhdr];
                for (size_t i = 0; i < n; i++) {
                        unsigned char c = (unsigned char)p[i];

                        if (c <= 32 || c >= 127) {
                                snprintf(errstr, errstr_size,
                                         "header list \"%s\": \"%.*s\" is not "
                                         "a header field name",
                                         list, (int)n, p);
                                return -1;
                        }
                        h->h_name[i] = lower((char)c);
                }
                h->h_name[n] = '\0';
                h->h_len = n;
                for (size_t i = 0; i < k->k_nhdr; i++) {
                        if (strcmp(k->k_hdr[i].h_name, h->h_name) == 0) {
                                snprintf(errstr, errstr_size,
                                         "header list: \"%s\" is listed twice",
                                         h->h_name);
                                return -1;
                        }
                }
                if (strcmp(h->h_name, "from") == 0) {
                        have_from = 1;
                        k->k_from = k->k_nhdr;
                }
                k->k_nhdr++;
                if (e == NULL)
                        break;
                p = e + 1;
        }
        if (!have_from) {
                snprintf(errstr, errstr_size,
                         "header list \"%s\": from is missing (RFC 6376 "
                         "requires From to be signed)",
                         list);
                return -1;
        }
        return 0;
}

/* Refuses to prompt for a passphrase; notes that one was wanted. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
        (void)buf;
        (void)size;
        (void)rwflag;
        *(int *)u = 1;
        return -1;
}

/* Reads the whole file @path (at most DKIM_KEY_FILE_MAX bytes) into a
 * malloc'd buffer. @returns 0 or -1 with @errstr. */
static int key_file_read(const char *path, unsigned char **bufp, size_t *lenp,
                         char *errstr, size_t errstr_size) {
        struct stat st;
        unsigned char *buf = NULL;
        size_t len = 0;
        int fd, ret = -1;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
                return -1;
        }
        if (fstat(fd, &st) != 0) {
                snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                snprintf(errstr, errstr_size, "%s: not a regular file", path);
                goto out;
        }
        if (st.st_size > DKIM_KEY_FILE_MAX) {
                snprintf(errstr, errstr_size,
                         "%s: larger than %d bytes: not a DKIM key", path,
                         DKIM_KEY_FILE_MAX);
                goto out;
        }
        buf = malloc((size_t)st.st_size + 1);
        if (buf == NULL) {
                snprintf(errstr, errstr_size, "%s: out of memory", path);
                goto out;
        }
        while (len < (size_t)st.st_size) {
                ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);

                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        snprintf(errstr, errstr_size, "%s: %s", path,
                                 strerror(errno));
                        goto out;
                }
                if (r == 0)
                        break;
                len += (size_t)r;
        }
        *bufp = buf;
        *lenp = len;
        buf = NULL;
        ret = 0;
out:
        if (buf != NULL) {
                OPENSSL_cleanse(buf, len);
                free(buf);
        }
        close(fd);
        return ret;
}

/* Writes the fixed start of the signature field of @k into k_prefix. */
static int prefix_build(dkim_key_t *k) {
        struct dynbuf b;
        struct fold fo = {.fo_b = &b};
        char w[DOMAIN_MAX_LEN + 8];
        int ret = -1;

        dynbuf_init(&b, sizeof(k->k_prefix) - 1);
        dynbuf_appends(&b, "DKIM-Signature:");
        fo.fo_col = strlen("DKIM-Signature:");
        fold_words(&fo, "v=1;");
        fold_words(&fo, k->k_ed25519 ? "a=ed25519-sha256;" : "a=rsa-sha256;");
        fold_words(&fo, "c=relaxed/relaxed;");
        snprintf(w, sizeof(w), "d=%s;", k->k_domain);
        fold_words(&fo, w);
        snprintf(w, sizeof(w), "s=%s;", k->k_selector);
        fold_words(&fo, w);
        if (dynbuf_error(&b) == DYNBUF_OK) {
                memcpy(k->k_prefix, dynbuf_ptr(&b), dynbuf_len(&b));
                k->k_prefix_len = dynbuf_len(&b);
                k->k_prefix_col = fo.fo_col;
                ret = 0;
        }
        dynbuf_fini(&b);
        return ret;
}

dkim_key_t *dkim_key_new(const char *domain, const char *selector,
                         const char *pem_path, const char *headers,
                         char *errstr, size_t errstr_size) {
        dkim_key_t *k = NULL, *ret = NULL;
        unsigned char *pem = NULL;
        size_t pem_len = 0;
        BIO *bio = NULL;
        EVP_PKEY *pkey = NULL;
        int asked = 0;

        if (!dns_name_ok(domain, DOMAIN_MAX_LEN)) {
                snprintf(errstr, errstr_size,
                         "domain \"%.64s\" is not a DNS name (letters, digits, "
                         "hyphens, dots; A-labels)",
                         domain);
                goto out;
        }
        if (!dns_name_ok(selector, SELECTOR_MAX_LEN)) {
                snprintf(errstr, errstr_size,
                         "selector \"%.64s\" is not a DNS name of at most %d "
                         "characters",
                         selector, SELECTOR_MAX_LEN);
                goto out;
        }
        k = calloc(1, sizeof(*k));
        if (k == NULL) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        memcpy(k->k_domain, domain, strlen(domain) + 1);
        memcpy(k->k_selector, selector, strlen(selector) + 1);
        if (headers_parse(k, headers != NULL ? headers : DKIM_HEADERS_DEFAULT,
                          errstr, errstr_size) != 0)
                goto out;
        if (key_file_read(pem_path, &pem, &pem_len, errstr, errstr_size) != 0)
                goto out;
        bio = BIO_new_mem_buf(pem, (int)pem_len);
        if (bio == NULL) {
                snprintf(errstr, errstr_size, "%s: %s", pem_path, ssl_reason());
                goto out;
        }
        pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &asked);
        if (pkey == NULL) {
                if (asked)
                        snprintf(errstr, errstr_size,
                                 "%s: the key is encrypted: give it without a "
                                 "passphrase",
                                 pem_path);
                else
                        snprintf(errstr, errstr_size,
                                 "%s: no PEM private key (%s)", pem_path,
                                 ssl_reason());
                goto out;
        }
        switch (EVP_PKEY_get_base_id(pkey)) {
        case EVP_PKEY_RSA:
                k->k_bits = EVP_PKEY_get_bits(pkey);
                if (k->k_bits < DKIM_RSA_BITS_MIN ||
                    k->k_bits > DKIM_RSA_BITS_MAX) {
                        snprintf(errstr, errstr_size,
                                 "%s: an RSA key of %d bits: %d to %d bits are "
                                 "accepted",
                                 pem_path, k->k_bits, DKIM_RSA_BITS_MIN,
                                 DKIM_RSA_BITS_MAX);
                        goto out;
                }
                break;
        case EVP_PKEY_ED25519:
                k->k_ed25519 = 1;
                k->k_bits = 256;
                break;
        default:
                snprintf(errstr, errstr_size,
                         "%s: not an RSA or Ed25519 key (DKIM signs with "
                         "rsa-sha256 or ed25519-sha256)",
                         pem_path);
                goto out;
        }
        k->k_pkey = pkey;
        pkey = NULL;
        k->k_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (k->k_sha256 == NULL) {
                snprintf(errstr, errstr_size, "SHA-256: %s", ssl_reason());
                goto out;
        }
        if (prefix_build(k) != 0) {
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        ret = k;
        k = NULL;
out:
        if (pem != NULL) {
                OPENSSL_cleanse(pem, pem_len);
                free(pem);
        }
        BIO_free(bio);
        EVP_PKEY_free(pkey);
        dkim_key_destroy(k);
        ERR_clear_error();
        return ret;
}

void dkim_key_destroy(dkim_key_t *k) {
        if (k == NULL)
                return;
        EVP_PKEY_free(k->k_pkey); /* OpenSSL clears private keys it frees */
        EVP_MD_free(k->k_sha256);
        free(k);
}

const char *dkim_key_domain(const dkim_key_t *k) {
        return k->k_domain;
}

const char *dkim_key_selector(const dkim_key_t *k) {
        return k->k_selector;
}

const char *dkim_key_algorithm(const dkim_key_t *k) {
        return k->k_ed25519 ? "ed25519-sha256" : "rsa-sha256";
}

int dkim_key_bits(const dkim_key_t *k) {
        return k->k_bits;
}

/* Appends @n bytes of @p in base64 to @out. @returns 0 or -1. */
static int b64_append(struct dynbuf *out, const unsigned char *p, size_t n) {
        char *w = dynbuf_reserve(out, B64_LEN(n) + 1);
        int len;

        if (w == NULL)
                return -1;
        len = EVP_EncodeBlock((unsigned char *)w, p, (int)n);
        dynbuf_setlen(out, dynbuf_len(out) + (size_t)len);
        return 0;
}

int dkim_key_dns_record(const dkim_key_t *k, struct dynbuf *out) {
        size_t start = dynbuf_len(out);
        int ret = -1;

        if (k->k_ed25519) {
                unsigned char raw[32];
                size_t n = sizeof(raw);

                if (EVP_PKEY_get_raw_public_key(k->k_pkey, raw, &n) != 1)
                        goto out;
                dynbuf_appends(out, "v=DKIM1; k=ed25519; p=");
                ret = b64_append(out, raw, n);
        } else {
                unsigned char *der = NULL;
                int n = i2d_PUBKEY(k->k_pkey, &der);

                if (n <= 0)
                        goto out;
                dynbuf_appends(out, "v=DKIM1; k=rsa; p=");
                ret = b64_append(out, der, (size_t)n);
                OPENSSL_free(der);
        }
out:
        ERR_clear_error();
        if (ret != 0 || dynbuf_error(out) != DYNBUF_OK) {
                dynbuf_setlen(out, start);
                return -1;
        }
        return 0;
}

/*
 * Finds the header fields of @msg whose names @k lists, in the order of the
 * message, and where the body starts. When @stuffed, a field that starts
 * with '.' starts after it (dot-stuffing).
 * @returns their number, or -1 when there are more than DKIM_FIELDS_MAX.
 */
static int fields_find(const dkim_key_t *k, const char *msg, size_t len,
                       int stuffed, struct field *fields, const char **bodyp) {
        const char *p = msg, *end = msg + len;
        int nf = 0;

        *bodyp = end;
        while (p < end) {
                const char *f, *colon, *name_end;

                if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
                        *bodyp = p + 2;
                        break;
                }
                if (stuffed && *p == '.')
                        p++;
                f = p;
                /* the field ends at a CRLF not followed by white space */
                for (;;) {
                        const char *cr = memchr(p, '\r', (size_t)(end - p));

                        if (cr == NULL) {
                                p = end;
                                break;
                        }
                        p = cr + 1;
                        if (p < end && *p == '\n') {
                                p++;
                                if (p == end || !is_wsp(*p))
                                        break;
                        }
                }
                colon = memchr(f, ':', (size_t)(p - f));
                if (colon == NULL)
                        continue;
                name_end = colon;
                while (name_end > f && is_wsp(name_end[-1]))
                        name_end--;
                for (size_t i = 0; i < k->k_nhdr; i++) {
                        const struct dkim_hname *h = &k->k_hdr[i];

                        if (h->h_len != (size_t)(name_end - f) ||
                            strncasecmp(h->h_name, f, h->h_len) != 0)
                                continue;
                        if (nf == DKIM_FIELDS_MAX)
                                return -1;
                        fields[nf].f_p = f;
                        fields[nf].f_len = (size_t)(p - f);
                        fields[nf].f_name = i;
                        nf++;
                        break;
                }
        }
        return nf;
}

/* Orders the fields to sign as h= names them: by the key's list, each
 * name's fields from the last up (RFC 6376 5.4.2), then From once more
 * (over-signed: it stands for no field).
 * @returns the number of picks. */
static size_t fields_pick(const dkim_key_t *k, const struct field *fields,
                          int nf, struct pick *picks) {
        size_t np = 0;

        for (size_t i = 0; i < k->k_nhdr; i++) {
                for (int j = nf - 1; j >= 0; j--) {
                        if (fields[j].f_name != i)
                                continue;
                        picks[np].p_field = &fields[j];
                        picks[np].p_name = i;
                        np++;
                }
        }
        picks[np].p_field = NULL;
        picks[np].p_name = k->k_from;
        return np + 1;
}

/* Signs the SHA-256 @hash of the header data with @k into @sig (room for
 * SIG_MAX bytes). @returns the signature's length, or 0. */
static size_t hash_sign(const dkim_key_t *k, EVP_MD_CTX *md,
                        const unsigned char *hash, unsigned char *sig) {
        size_t n = SIG_MAX;

        if (k->k_ed25519) {
                /* RFC 8463 3: PureEdDSA over the SHA-256 of the data */
                if (EVP_DigestSignInit_ex(md, NULL, NULL, NULL, NULL, k->k_pkey,
                                          NULL) != 1 ||
                    EVP_DigestSign(md, sig, &n, hash, HASH_LEN) != 1)
                        return 0;
        } else {
                EVP_PKEY_CTX *pc =
                        EVP_PKEY_CTX_new_from_pkey(NULL, k->k_pkey, NULL);

                if (pc == NULL)
                        return 0;
                if (EVP_PKEY_sign_init(pc) != 1 ||
                    EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) != 1 ||
                    EVP_PKEY_CTX_set_signature_md(pc, k->k_sha256) != 1 ||
                    EVP_PKEY_sign(pc, sig, &n, hash, HASH_LEN) != 1)
                        n = 0;
                EVP_PKEY_CTX_free(pc);
        }
        return n;
}

/* dkim_sign() and dkim_sign_data(): @stuffed says which. */
static int sign(const dkim_key_t *k, const char *msg, size_t msg_len,
                int stuffed, int64_t now, struct dynbuf *out, char *errstr,
                size_t errstr_size) {
        struct field fields[DKIM_FIELDS_MAX];
        struct pick picks[DKIM_FIELDS_MAX + 1];
        struct sink s = {0};
        struct fold fo = {.fo_b = out};
        unsigned char hash[HASH_LEN], sig[SIG_MAX];
        char b64[B64_LEN(SIG_MAX) + 1], w[NAME_MAX_LEN + 32];
        const char *body;
        size_t start = dynbuf_len(out), np, siglen;
        unsigned int hlen;
        int nf, ret = -1, have_from = 0;

        nf = fields_find(k, msg, msg_len, stuffed, fields, &body);
        if (nf < 0) {
                snprintf(errstr, errstr_size,
                         "more than %d header fields to sign", DKIM_FIELDS_MAX);
                return -1;
        }
        for (int i = 0; i < nf; i++)
                have_from |= fields[i].f_name == k->k_from;
        if (!have_from) {
                snprintf(errstr, errstr_size, "the message has no From field");
                return -1;
        }
        np = fields_pick(k, fields, nf, picks);
        s.s_md = EVP_MD_CTX_new();
        if (s.s_md == NULL) {
                snprintf(errstr, errstr_size, "out of memory");
                return -1;
        }

        /* body hash */
        if (EVP_DigestInit_ex2(s.s_md, k->k_sha256, NULL) != 1)
                goto ssl_err;
        canon_body(&s, body, (size_t)(msg_len - (size_t)(body - msg)), stuffed);
        sink_flush(&s);
        if (s.s_err || EVP_DigestFinal_ex(s.s_md, hash, &hlen) != 1)
                goto ssl_err;

        /* the field up to "b=" */
        dynbuf_append(out, k->k_prefix, k->k_prefix_len);
        fo.fo_col = k->k_prefix_col;
        snprintf(w, sizeof(w), "t=%" PRId64 ";", now);
        fold_words(&fo, w);
        for (size_t i = 0; i < np; i++) {
                const struct dkim_hname *h = &k->k_hdr[picks[i].p_name];
                int n = snprintf(w, sizeof(w), "%s%s%s", i == 0 ? "h=" : ":",
                                 h->h_name, i + 1 == np ? ";" : "");

                fold_word(&fo, i == 0 ? " " : "", w, (size_t)n);
        }
        memcpy(w, "bh=", 3);
        EVP_EncodeBlock((unsigned char *)w + 3, hash, HASH_LEN);
        memcpy(w + 3 + B64_LEN(HASH_LEN), ";", 2);
        fold_words(&fo, w);
        fold_words(&fo, "b=");
        if (dynbuf_error(out) != DYNBUF_OK) {
                snprintf(errstr, errstr_size,
                         "no room for the DKIM-Signature field");
                goto out;
        }

        /* header hash: the signed fields, then this field without b= */
        if (EVP_DigestInit_ex2(s.s_md, k->k_sha256, NULL) != 1)
                goto ssl_err;
        for (size_t i = 0; i < np; i++) {
                if (picks[i].p_field != NULL)
                        canon_header(&s, picks[i].p_field->f_p,
                                     picks[i].p_field->f_len, 1);
        }
        /* the signature field goes without a CRLF (RFC 6376 3.7) */
        canon_header(&s, dynbuf_ptr(out) + start, dynbuf_len(out) - start, 0);
        sink_flush(&s);
        if (s.s_err || EVP_DigestFinal_ex(s.s_md, hash, &hlen) != 1)
                goto ssl_err;

        siglen = hash_sign(k, s.s_md, hash, sig);
        if (siglen == 0)
                goto ssl_err;
        EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
        fold_b64(&fo, b64, B64_LEN(siglen));
        dynbuf_append(out, "\r\n", 2);
        if (dynbuf_error(out) != DYNBUF_OK) {
                snprintf(errstr, errstr_size,
                         "no room for the DKIM-Signature field");
                goto out;
        }
        ret = 0;
        goto out;
ssl_err:
        snprintf(errstr, errstr_size, "signing failed: %s", ssl_reason());
out:
        EVP_MD_CTX_free(s.s_md);
        if (ret != 0)
                dynbuf_setlen(out, start);
        return ret;
}

int dkim_sign(const dkim_key_t *k, const char *msg, size_t msg_len, int64_t now,
              struct dynbuf *out, char *errstr, size_t errstr_size) {
        return sign(k, msg, msg_len, 0, now, out, errstr, errstr_size);
}

int dkim_sign_data(const dkim_key_t *k, const char *data, size_t data_len,
                   int64_t now, struct dynbuf *out, char *errstr,
                   size_t errstr_size) {
        return sign(k, data, data_len, 1, now, out, errstr, errstr_size);
}

size_t dkim_key_field_max(const dkim_key_t *k) {
        size_t sig = B64_LEN(k->k_ed25519 ? 64 : ((size_t)k->k_bits + 7) / 8);
        size_t words = 4; /* t=, h=, bh=, b= */
        size_t n = k->k_prefix_len;

        n += strlen("t=;") + 20; /* a 64-bit number */
        n += strlen("h=;");
        for (size_t i = 0; i < k->k_nhdr; i++)
                n += k->k_hdr[i].h_len + 1;
        n += k->k_hdr[k->k_from].h_len + 1; /* over-signed */
        words += k->k_nhdr + 1;
        n += strlen("bh=;") + B64_LEN(HASH_LEN);
        n += strlen("b=") + sig;
        /* before each word a fold (CRLF SP) or a space; the signature
         * folded at most every LINE_SOFT - 1 characters; the last CRLF */
        n += 3 * words + 3 * (sig / (LINE_SOFT - 1) + 1) + 2;
        return n;
}
