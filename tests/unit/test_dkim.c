/*
 * Unit tests of dkim: relaxed canonicalisation as RFC 6376 gives it, the
 * RFC 8463 appendix A example (its body hash, its signature checked
 * against our canonicalisation, a signature made with its key), and
 * signatures of both algorithms checked by another implementation:
 * dkimpy (Debian's python3-dkim), run as tests/unit/dkim_verify.py.
 *
 * The keys are made at test time (RSA 2048, Ed25519, and some that must be
 * refused) in a temporary folder; the RFC 8463 key is the one the RFC
 * publishes. KM_DKIM_BENCH=1 makes the last test print the cost of one
 * signature of each algorithm.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "dkim.h"
#include "dynbuf.h"

extern char **environ;

/* RFC 8463 appendix A: the key pair, the message and its ed25519
 * signature. */
static const char rfc_seed_b64[] =
        "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
static const char rfc_record[] =
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
static const char rfc_bh[] = "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=";
static const char rfc_b[] = "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwh"
                            "EIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";
/* its DKIM-Signature field with the b= value taken out (RFC 6376 3.7) */
static const char rfc_sig_field[] =
        "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
        " d=football.example.com; i=@football.example.com;\r\n"
        " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
        " subject : date : message-id : from : subject : date;\r\n"
        " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
        " b=";
static const char *const rfc_fields[] = {
        "From: Joe SixPack <joe@football.example.com>\r\n",
        "To: Suzie Q <suzie@shopping.example.net>\r\n",
        "Subject: Is dinner ready?\r\n",
        "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n",
        "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n",
};
static const char rfc_body[] =
        "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";

/* The keys made for these tests, in a temporary folder. */
static char tmpdir[256];
static char rsa_path[300], ed_path[300], rfc_path[300];

#define DOMAIN "shop.example"

static void b64_decode(const char *s, unsigned char *out, size_t *len) {
        int n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)strlen(s));
        size_t l = strlen(s);

        assert_true(n >= 0);
        *len = (size_t)n;
        while (l > 0 && s[l - 1] == '=') {
                (*len)--;
                l--;
        }
}

static void write_file(const char *path, const void *p, size_t n) {
        FILE *f = fopen(path, "wb");

        assert_non_null(f);
        assert_int_equal(fwrite(p, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
}

static void key_write(EVP_PKEY *pk, const char *path, int traditional,
                      const char *passphrase) {
        FILE *f = fopen(path, "w");
        int ok;

        assert_non_null(f);
        if (traditional) {
                BIO *b = BIO_new_fp(f, BIO_NOCLOSE);

                assert_non_null(b);
                ok = PEM_write_bio_PrivateKey_traditional(b, pk, NULL, NULL, 0,
                                                          NULL, NULL);
                BIO_free(b);
        } else if (passphrase != NULL)
                ok = PEM_write_PKCS8PrivateKey(f, pk, EVP_aes_256_cbc(), NULL,
                                               0, NULL, (void *)passphrase);
        else
                ok = PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
        assert_int_equal(ok, 1);
        assert_int_equal(fclose(f), 0);
}

/* Makes a key with EVP_PKEY_Q_keygen()'s arguments and writes it to @path
 * (see key_write()). */
#define key_make(path, traditional, passphrase, ...)                           \
        do {                                                                   \
                EVP_PKEY *pk_ = EVP_PKEY_Q_keygen(NULL, NULL, __VA_ARGS__);    \
                                                                               \
                assert_non_null(pk_);                                          \
                key_write(pk_, path, traditional, passphrase);                 \
                EVP_PKEY_free(pk_);                                            \
        } while (0)

static void path_in_tmp(char *out, size_t size, const char *name) {
        snprintf(out, size, "%s/%s", tmpdir, name);
}

static int setup(void **state) {
        const char *base = getenv("TMPDIR");
        unsigned char seed[48];
        size_t seed_len;
        EVP_PKEY *pk;

        (void)state;
        snprintf(tmpdir, sizeof(tmpdir), "%s/km-dkim-XXXXXX",
                 base != NULL ? base : "/tmp");
        if (mkdtemp(tmpdir) == NULL)
                return -1;
        path_in_tmp(rsa_path, sizeof(rsa_path), "rsa2048.pem");
        path_in_tmp(ed_path, sizeof(ed_path), "ed25519.pem");
        path_in_tmp(rfc_path, sizeof(rfc_path), "rfc8463.pem");
        key_make(rsa_path, 0, NULL, "RSA", (size_t)2048);
        key_make(ed_path, 0, NULL, "ED25519");
        b64_decode(rfc_seed_b64, seed, &seed_len);
        assert_int_equal(seed_len, 32);
        pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
        key_write(pk, rfc_path, 0, NULL);
        EVP_PKEY_free(pk);
        return 0;
}

static int teardown(void **state) {
        char cmd[400];

        (void)state;
        if (getenv("KM_KEEP_TMP") == NULL) {
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
                if (system(cmd) != 0)
                        return -1;
        }
        return 0;
}

static dkim_key_t *key_load(const char *path, const char *selector,
                            const char *headers) {
        char err[256];
        dkim_key_t *k =
                dkim_key_new(DOMAIN, selector, path, headers, err, sizeof(err));

        if (k == NULL)
                fail_msg("dkim_key_new: %s", err);
        return k;
}

/* Signs @msg with @k at @now. @returns the DKIM-Signature field
 * (malloc'd). */
static char *sign(const dkim_key_t *k, const char *msg, size_t len,
                  int64_t now) {
        struct dynbuf out;
        char err[256];

        dynbuf_init(&out, 1 << 16);
        if (dkim_sign(k, msg, len, now, &out, err, sizeof(err)) != 0)
                fail_msg("dkim_sign: %s", err);
        return dynbuf_take(&out, NULL);
}

/* @returns @f unfolded (each CRLF before white space taken out),
 * malloc'd. */
static char *unfold(const char *f) {
        char *u = malloc(strlen(f) + 1), *w = u;

        assert_non_null(u);
        for (; *f != '\0'; f++) {
                if (f[0] == '\r' && f[1] == '\n' && f[2] == ' ')
                        f++;
                else
                        *w++ = *f;
        }
        *w = '\0';
        return u;
}

/* Checks that the h= tag of the field @f is @want (white space taken
 * out). */
static void h_tag_is(const char *f, const char *want) {
        const char *p = strstr(f, " h=");
        char got[1024];
        size_t n = 0;

        assert_non_null(p);
        for (p += 3; *p != ';' && *p != '\0' && n + 1 < sizeof(got); p++) {
                if (*p != ' ' && *p != '\r' && *p != '\n')
                        got[n++] = *p;
        }
        got[n] = '\0';
        assert_string_equal(got, want);
}

/* @returns 1 when the unfolded field @f has @s. */
static int field_has(const char *f, const char *s) {
        char *u = unfold(f);
        int ret = strstr(u, s) != NULL;

        free(u);
        return ret;
}

/* Checks the shape of a DKIM-Signature field made at @now. */
static void check_field(const char *f, int64_t now) {
        char t[40];
        size_t n = strlen(f);

        assert_true(strncmp(f, "DKIM-Signature: v=1; a=", 23) == 0);
        assert_true(n > 2 && strcmp(f + n - 2, "\r\n") == 0);
        for (const char *line = f; *line != '\0';) {
                const char *eol = strstr(line, "\r\n");

                assert_non_null(eol);
                if ((size_t)(eol - line) > 78)
                        fail_msg("a line of %zu characters: %.*s",
                                 (size_t)(eol - line), (int)(eol - line), line);
                assert_null(memchr(line, '\n', (size_t)(eol - line)));
                line = eol + 2;
                if (*line != '\0')
                        assert_true(*line == ' ');
        }
        snprintf(t, sizeof(t), " t=%lld;", (long long)now);
        assert_true(field_has(f, t));
        assert_false(field_has(f, " x="));
        assert_true(field_has(f, " c=relaxed/relaxed;"));
        assert_true(field_has(f, " d=" DOMAIN ";"));
}

/* Runs dkim_verify.py on @field + @msg with @record served for @name.
 * @returns its exit status. */
static int py_verify(const char *field, const char *msg, size_t len,
                     const char *record, const char *name) {
        const char *dir = getenv("KM_UNIT_DIR");
        char script[512], msg_path[300], rec_path[300];
        char *argv[6];
        FILE *f;
        pid_t pid;
        int status;

        snprintf(script, sizeof(script), "%s/dkim_verify.py",
                 dir != NULL ? dir : "tests/unit");
        path_in_tmp(msg_path, sizeof(msg_path), "message.eml");
        path_in_tmp(rec_path, sizeof(rec_path), "record.txt");
        f = fopen(msg_path, "wb");
        assert_non_null(f);
        fputs(field, f);
        fwrite(msg, 1, len, f);
        assert_int_equal(fclose(f), 0);
        write_file(rec_path, record, strlen(record));
        argv[0] = "/usr/bin/python3";
        argv[1] = script;
        argv[2] = msg_path;
        argv[3] = rec_path;
        argv[4] = (char *)name;
        argv[5] = NULL;
        assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ),
                         0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

/* Signs @msg with @k, checks the field, and has dkimpy verify it with the
 * key record of @k. @returns the field (malloc'd). */
static char *sign_verified(const dkim_key_t *k, const char *msg) {
        int64_t now = (int64_t)time(NULL);
        char *field = sign(k, msg, strlen(msg), now);
        struct dynbuf rec;
        char name[300];

        check_field(field, now);
        dynbuf_init(&rec, 4096);
        assert_int_equal(dkim_key_dns_record(k, &rec), 0);
        snprintf(name, sizeof(name), "%s._domainkey.%s", dkim_key_selector(k),
                 dkim_key_domain(k));
        if (py_verify(field, msg, strlen(msg), dynbuf_ptr(&rec), name) != 0)
                fail_msg("dkimpy did not verify %s over:\n%s%s",
                         dkim_key_algorithm(k), field, msg);
        dynbuf_fini(&rec);
        return field;
}

static void canon_header_is(const char *in, const char *want) {
        struct dynbuf b;

        dynbuf_init(&b, 1 << 20);
        assert_int_equal(dkim_canon_header(in, strlen(in), &b), 0);
        assert_string_equal(dynbuf_ptr(&b) ? dynbuf_ptr(&b) : "", want);
        dynbuf_fini(&b);
}

static void canon_body_is(const char *in, size_t len, const char *want) {
        struct dynbuf b;

        dynbuf_init(&b, 1 << 20);
        assert_int_equal(dkim_canon_body(in, len, &b), 0);
        assert_int_equal(dynbuf_len(&b), strlen(want));
        if (dynbuf_len(&b) > 0)
                assert_memory_equal(dynbuf_ptr(&b), want, strlen(want));
        dynbuf_fini(&b);
}

static void test_relaxed_header_canonicalisation_follows_rfc6376(void **state) {
        (void)state;
        /* RFC 6376 3.4.5 */
        canon_header_is("A: X\r\n", "a:X\r\n");
        canon_header_is("B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n");
        /* the final CRLF is optional; names in any case */
        canon_header_is("SUBJECT:   hi \t there  ", "subject:hi there\r\n");
        canon_header_is("X-Empty:   \r\n", "x-empty:\r\n");
        canon_header_is("To: a@x,\r\n b@y,\r\n\t c@z\r\n",
                        "to:a@x, b@y, c@z\r\n");
}

static void test_relaxed_body_canonicalisation_follows_rfc6376(void **state) {
        static const char rfc[] = " C \r\nD \t E\r\n\r\n\r\n";

        (void)state;
        /* RFC 6376 3.4.5 */
        canon_body_is(rfc, strlen(rfc), " C\r\nD E\r\n");
        /* trailing white space and trailing empty lines go, inner ones
         * stay */
        canon_body_is("a \t\r\n \t \r\n\r\nb\r\n \r\n\r\n", 20,
                      "a\r\n\r\n\r\nb\r\n");
        /* empty bodies stay empty (RFC 6376 errata 1384) */
        canon_body_is("", 0, "");
        canon_body_is("\r\n\r\n", 4, "");
        canon_body_is("  \r\n\t\r\n", 7, "");
        /* a last line without CRLF gets one */
        canon_body_is("abc", 3, "abc\r\n");
        canon_body_is("abc  ", 5, "abc\r\n");
        /* a bare CR or LF is content */
        canon_body_is("a\rb\nc\r\n", 7, "a\rb\nc\r\n");
}

static void
test_body_canonicalisation_of_a_large_body_in_one_pass(void **state) {
        struct dynbuf in, want;

        (void)state;
        dynbuf_init(&in, 1 << 24);
        dynbuf_init(&want, 1 << 24);
        for (int i = 0; i < 20001; i++) {
                dynbuf_appendf(&in, "line %d  \tof  text %s\r\n", i,
                               i % 7 == 0 ? " \r\n\r\n" : "");
                dynbuf_appendf(&want, "line %d of text\r\n%s", i,
                               i % 7 == 0 ? "\r\n\r\n" : "");
        }
        dynbuf_appends(&in, "\r\n \r\n\r\n");
        canon_body_is(dynbuf_ptr(&in), dynbuf_len(&in), dynbuf_ptr(&want));
        dynbuf_fini(&in);
        dynbuf_fini(&want);
}

static void sha256_b64(const void *p, size_t n, char *out) {
        unsigned char h[32];
        unsigned int hl;

        assert_int_equal(EVP_Digest(p, n, h, &hl, EVP_sha256(), NULL), 1);
        EVP_EncodeBlock((unsigned char *)out, h, (int)hl);
}

static void test_rfc8463_body_hash_and_signature_check_out(void **state) {
        struct dynbuf b;
        char bh[64];
        unsigned char hash[32], sig[128], pub[48];
        unsigned int hl;
        size_t sig_len, pub_len;
        EVP_PKEY *pk;
        EVP_MD_CTX *md;

        (void)state;
        dynbuf_init(&b, 1 << 16);
        assert_int_equal(dkim_canon_body(rfc_body, strlen(rfc_body), &b), 0);
        sha256_b64(dynbuf_ptr(&b), dynbuf_len(&b), bh);
        assert_string_equal(bh, rfc_bh);

        /* The RFC's own signature verifies over our canonical header
         * data: h=from:to:subject:date:message-id (the second from,
         * subject and date stand for no field), then the signature field
         * without b= and without a CRLF. */
        dynbuf_reset(&b);
        for (size_t i = 0; i < sizeof(rfc_fields) / sizeof(rfc_fields[0]); i++)
                assert_int_equal(dkim_canon_header(rfc_fields[i],
                                                   strlen(rfc_fields[i]), &b),
                                 0);
        assert_int_equal(
                dkim_canon_header(rfc_sig_field, strlen(rfc_sig_field), &b), 0);
        dynbuf_setlen(&b, dynbuf_len(&b) - 2);
        assert_int_equal(EVP_Digest(dynbuf_ptr(&b), dynbuf_len(&b), hash, &hl,
                                    EVP_sha256(), NULL),
                         1);
        b64_decode(strstr(rfc_record, "p=") + 2, pub, &pub_len);
        assert_int_equal(pub_len, 32);
        b64_decode(rfc_b, sig, &sig_len);
        assert_int_equal(sig_len, 64);
        pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
        assert_non_null(pk);
        md = EVP_MD_CTX_new();
        assert_int_equal(
                EVP_DigestVerifyInit_ex(md, NULL, NULL, NULL, NULL, pk, NULL),
                1);
        assert_int_equal(EVP_DigestVerify(md, sig, sig_len, hash, hl), 1);
        /* and not over other data */
        hash[0] ^= 1;
        assert_int_not_equal(EVP_DigestVerify(md, sig, sig_len, hash, hl), 1);
        EVP_MD_CTX_free(md);
        EVP_PKEY_free(pk);
        dynbuf_fini(&b);
}

static void test_rfc8463_message_signed_with_its_key_verifies(void **state) {
        char err[256], *field, msg[1024], want_bh[64];
        struct dynbuf rec;
        dkim_key_t *k;

        (void)state;
        k = dkim_key_new("football.example.com", "brisbane", rfc_path,
                         "from:to:subject:date:message-id", err, sizeof(err));
        if (k == NULL)
                fail_msg("%s", err);
        assert_string_equal(dkim_key_algorithm(k), "ed25519-sha256");
        dynbuf_init(&rec, 4096);
        assert_int_equal(dkim_key_dns_record(k, &rec), 0);
        assert_string_equal(dynbuf_ptr(&rec), rfc_record);
        dynbuf_fini(&rec);

        msg[0] = '\0';
        for (size_t i = 0; i < sizeof(rfc_fields) / sizeof(rfc_fields[0]); i++)
                strcat(msg, rfc_fields[i]);
        strcat(msg, "\r\n");
        strcat(msg, rfc_body);
        field = sign(k, msg, strlen(msg), 1528637909);
        snprintf(want_bh, sizeof(want_bh), "bh=%s;", rfc_bh);
        assert_true(field_has(field, want_bh));
        h_tag_is(field, "from:to:subject:date:message-id:from");
        assert_int_equal(py_verify(field, msg, strlen(msg), rfc_record,
                                   "brisbane._domainkey.football.example.com"),
                         0);
        free(field);
        dkim_key_destroy(k);
}

static const char msg_simple[] = "From: Shop <no-reply@shop.example>\r\n"
                                 "To: Ann <ann@example.com>\r\n"
                                 "Subject: Your receipt\r\n"
                                 "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                                 "Message-ID: <7f3c@shop.example>\r\n"
                                 "MIME-Version: 1.0\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "Content-Transfer-Encoding: 7bit\r\n"
                                 "X-Not-Signed: anything\r\n"
                                 "\r\n"
                                 "Hello Ann,\r\n"
                                 "\r\n"
                                 "thanks  for your order.   \r\n"
                                 ".a line that SMTP will dot-stuff\r\n"
                                 "\r\n"
                                 "\r\n";

static const char msg_unicode[] =
        "From: =?UTF-8?B?TcO8bGxlciAmIFPDtmhuZQ==?= <no-reply@shop.example>\r\n"
        "To: =?UTF-8?Q?Ren=C3=A9e_=C3=85berg?= <renee@example.com>\r\n"
        "Subject: =?UTF-8?B?SWhyZSBCZXN0ZWxsdW5nIOKCrCA0MiwwMCDinJM=?=\r\n"
        " =?UTF-8?B?IOaXpeacrOiqnuOBruS7tuWQjQ==?=\r\n"
        "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <unicode-1@shop.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Gr\xc3\xbc\xc3\x9f"
        "e \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\r\n";

static const char msg_folded[] =
        "fROM: Shop <no-reply@shop.example>\r\n"
        "to: a1@example.com, a2@example.com, a3@example.com,\r\n"
        "  a4@example.com,   a5@example.com, a6@example.com,\r\n"
        "\ta7@example.com, a8@example.com, a9@example.com, a10@example.com,\r\n"
        "  a11@example.com, a12@example.com, a13@example.com\r\n"
        "Cc:  b1@example.com  \r\n"
        "SUBJECT: A subject that goes on and on, longer than one line of\r\n"
        "   seventy-eight characters, folded   with spaces\r\n"
        "\tand a tab  \r\n"
        "References: <r1@shop.example> <r2@shop.example> <r3@shop.example>\r\n"
        " <r4@shop.example> <r5@shop.example> <r6@shop.example>\r\n"
        "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <folded-1@shop.example>\r\n"
        "\r\n"
        "Body.\r\n";

static const char msg_empty_body[] = "From: Shop <no-reply@shop.example>\r\n"
                                     "To: Ann <ann@example.com>\r\n"
                                     "Subject: nothing to say\r\n"
                                     "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                                     "Message-ID: <empty-1@shop.example>\r\n"
                                     "\r\n";

/* A multipart/mixed message: a text part and a base64 attachment. */
static char *msg_multipart(void) {
        struct dynbuf b;
        unsigned char raw[3000];
        char line[80];

        for (size_t i = 0; i < sizeof(raw); i++)
                raw[i] = (unsigned char)(i * 7 + i / 13);
        dynbuf_init(&b, 1 << 20);
        dynbuf_appends(&b, "From: Shop <no-reply@shop.example>\r\n"
                           "To: Ann <ann@example.com>\r\n"
                           "Subject: Your invoice\r\n"
                           "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                           "Message-ID: <multi-1@shop.example>\r\n"
                           "MIME-Version: 1.0\r\n"
                           "Content-Type: multipart/mixed;\r\n"
                           " boundary=\"=_km_b1\"\r\n"
                           "\r\n"
                           "This is a multi-part message in MIME format.\r\n"
                           "--=_km_b1\r\n"
                           "Content-Type: text/plain; charset=utf-8\r\n"
                           "Content-Transfer-Encoding: quoted-printable\r\n"
                           "\r\n"
                           "Your invoice is attached.=20\r\n"
                           "\r\n"
                           "--=_km_b1\r\n"
                           "Content-Type: application/pdf; name=\"r.pdf\"\r\n"
                           "Content-Transfer-Encoding: base64\r\n"
                           "Content-Disposition: attachment; "
                           "filename=\"r.pdf\"\r\n"
                           "\r\n");
        for (size_t i = 0; i < sizeof(raw); i += 57) {
                size_t n = sizeof(raw) - i < 57 ? sizeof(raw) - i : 57;

                EVP_EncodeBlock((unsigned char *)line, raw + i, (int)n);
                dynbuf_appendf(&b, "%s\r\n", line);
        }
        dynbuf_appends(&b, "\r\n--=_km_b1--\r\n");
        assert_int_equal(dynbuf_error(&b), DYNBUF_OK);
        return dynbuf_take(&b, NULL);
}

static void verify_all_messages(const char *path, const char *selector) {
        dkim_key_t *k = key_load(path, selector, NULL);
        char *multi = msg_multipart();
        const char *msgs[] = {msg_simple, msg_unicode, msg_folded, multi,
                              msg_empty_body};

        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
                free(sign_verified(k, msgs[i]));
        free(multi);
        dkim_key_destroy(k);
}

static void test_rsa_sha256_signatures_verify_with_dkimpy(void **state) {
        (void)state;
        verify_all_messages(rsa_path, "rsa2026");
}

static void test_ed25519_sha256_signatures_verify_with_dkimpy(void **state) {
        (void)state;
        verify_all_messages(ed_path, "ed2026");
}

static void test_a_changed_message_does_not_verify(void **state) {
        const char *paths[] = {rsa_path, ed_path};

        (void)state;
        for (size_t i = 0; i < 2; i++) {
                dkim_key_t *k = key_load(paths[i], "sel", NULL);
                char *field = sign_verified(k, msg_simple);
                char *copy = strdup(msg_simple);
                struct dynbuf rec;

                dynbuf_init(&rec, 4096);
                assert_int_equal(dkim_key_dns_record(k, &rec), 0);
                /* the body */
                *strstr(copy, "order") = 'O';
                assert_int_not_equal(py_verify(field, copy, strlen(copy),
                                               dynbuf_ptr(&rec),
                                               "sel._domainkey." DOMAIN),
                                     0);
                /* a signed field */
                strcpy(copy, msg_simple);
                *strstr(copy, "receipt") = 'R';
                assert_int_not_equal(py_verify(field, copy, strlen(copy),
                                               dynbuf_ptr(&rec),
                                               "sel._domainkey." DOMAIN),
                                     0);
                free(copy);
                free(field);
                dynbuf_fini(&rec);
                dkim_key_destroy(k);
        }
}

static void test_repeated_fields_are_signed_from_the_bottom_up(void **state) {
        static const char msg[] = "X-Tag: first\r\n"
                                  "From: Shop <no-reply@shop.example>\r\n"
                                  "x-TAG: second\r\n"
                                  "Subject: tags\r\n"
                                  "X-tag:   third\r\n"
                                  "\r\n"
                                  "Body\r\n";
        const char *paths[] = {rsa_path, ed_path};

        (void)state;
        for (size_t i = 0; i < 2; i++) {
                dkim_key_t *k =
                        key_load(paths[i], "tags", "From:x-tag : Subject:to");
                char *field = sign_verified(k, msg);

                h_tag_is(field, "from:x-tag:x-tag:x-tag:subject:from");
                free(field);
                dkim_key_destroy(k);
        }
}

static void test_an_empty_body_is_hashed_as_nothing(void **state) {
        /* SHA-256 of no bytes */
        static const char empty_bh[] =
                "bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;";
        static const char no_blank_line[] = "From: a@shop.example\r\n"
                                            "Subject: s\r\n";
        dkim_key_t *k;
        char *field;

        (void)state;
        k = key_load(ed_path, "sel", NULL);
        field = sign(k, msg_empty_body, strlen(msg_empty_body), 1);
        assert_true(field_has(field, empty_bh));
        free(field);
        field = sign(k, no_blank_line, strlen(no_blank_line), 1);
        assert_true(field_has(field, empty_bh));
        h_tag_is(field, "from:subject:from");
        free(field);
        field = sign(k, "From: a@shop.example\r\n\r\n\r\n \r\n", 29, 1);
        assert_true(field_has(field, empty_bh));
        free(field);
        dkim_key_destroy(k);
}

static void
test_the_field_is_appended_and_failures_leave_the_buffer(void **state) {
        dkim_key_t *k;
        struct dynbuf out;
        char err[256];

        (void)state;
        k = key_load(rsa_path, "sel", NULL);
        dynbuf_init(&out, 1 << 16);
        dynbuf_appends(&out, "Before\r\n");
        assert_int_equal(dkim_sign(k, msg_simple, strlen(msg_simple), 7, &out,
                                   err, sizeof(err)),
                         0);
        assert_true(strncmp(dynbuf_ptr(&out),
                            "Before\r\nDKIM-Signature: ", 24) == 0);
        check_field(dynbuf_ptr(&out) + 8, 7);

        dynbuf_reset(&out);
        dynbuf_appends(&out, "Before\r\n");
        assert_int_equal(dkim_sign(k, "To: a@b\r\n\r\nx\r\n", 14, 7, &out, err,
                                   sizeof(err)),
                         -1);
        assert_string_equal(err, "the message has no From field");
        assert_string_equal(dynbuf_ptr(&out), "Before\r\n");
        dynbuf_fini(&out);

        /* a buffer too small: failed as dynbuf does, its content kept */
        dynbuf_init(&out, 200);
        dynbuf_appends(&out, "Before\r\n");
        assert_int_equal(dkim_sign(k, msg_simple, strlen(msg_simple), 7, &out,
                                   err, sizeof(err)),
                         -1);
        assert_non_null(strstr(err, "no room"));
        assert_int_equal(dynbuf_len(&out), 8);
        assert_memory_equal(dynbuf_ptr(&out), "Before\r\n", 8);
        assert_int_not_equal(dynbuf_error(&out), DYNBUF_OK);
        dynbuf_fini(&out);
        dkim_key_destroy(k);
}

/* @returns @msg dot-stuffed as SMTP DATA sends it (malloc'd). */
static char *stuff(const char *msg) {
        struct dynbuf b;

        dynbuf_init(&b, 1 << 20);
        for (const char *p = msg; *p != '\0';) {
                const char *eol = strstr(p, "\r\n");
                size_t n = eol != NULL ? (size_t)(eol - p) + 2 : strlen(p);

                if (*p == '.')
                        dynbuf_appendc(&b, '.');
                dynbuf_append(&b, p, n);
                p += n;
        }
        assert_int_equal(dynbuf_error(&b), DYNBUF_OK);
        return dynbuf_take(&b, NULL);
}

static void test_dot_stuffed_data_is_signed_as_the_message(void **state) {
        static const char dotted[] =
                ".X-Dot: a field that starts with a dot\r\n"
                "From: Shop <no-reply@shop.example>\r\n"
                "Subject: dots\r\n"
                "\r\n"
                ".first line\r\n"
                "..two dots\r\n"
                ".\r\n"
                ". \t\r\n"
                "a . in the middle\r\n"
                "\r\n"
                ".\r\n";
        const char *paths[] = {rsa_path, ed_path};
        const char *msgs[] = {dotted, msg_simple, msg_empty_body};

        (void)state;
        for (size_t i = 0; i < 2; i++) {
                dkim_key_t *k =
                        key_load(paths[i], "sel", "from:subject:.x-dot");

                for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
                        char *field = sign_verified(k, msgs[m]);
                        char *data = stuff(msgs[m]);
                        struct dynbuf out;
                        char err[256];
                        int64_t now;

                        /* the same signature (both algorithms are
                         * deterministic) at the same t= */
                        now = strtoll(strstr(field, " t=") + 3, NULL, 10);
                        dynbuf_init(&out, 1 << 16);
                        assert_int_equal(dkim_sign_data(k, data, strlen(data),
                                                        now, &out, err,
                                                        sizeof(err)),
                                         0);
                        assert_string_equal(dynbuf_ptr(&out), field);
                        assert_true(dynbuf_len(&out) <= dkim_key_field_max(k));
                        if (m == 0)
                                h_tag_is(field, "from:subject:.x-dot:from");
                        dynbuf_fini(&out);
                        free(data);
                        free(field);
                }
                dkim_key_destroy(k);
        }
}

static void test_the_field_fits_the_room_the_key_asks_for(void **state) {
        static const char *const selectors[] = {
                "s", "a-very-long-selector-name-of-sixty-three-characters-"
                     "xxxxxxxxxxx"};
        const char *paths[] = {rsa_path, ed_path};
        char *multi = msg_multipart();

        (void)state;
        for (size_t i = 0; i < 2; i++) {
                for (size_t j = 0; j < 2; j++) {
                        dkim_key_t *k = key_load(paths[i], selectors[j], NULL);
                        char *field = sign(k, multi, strlen(multi), INT64_MAX);

                        assert_true(strlen(field) <= dkim_key_field_max(k));
                        /* and no more than twice what it needs */
                        assert_true(dkim_key_field_max(k) < 2 * strlen(field));
                        free(field);
                        dkim_key_destroy(k);
                }
        }
        free(multi);
}

static void test_too_many_fields_to_sign_are_refused(void **state) {
        dkim_key_t *k;
        struct dynbuf msg, out;
        char err[256];

        (void)state;
        k = key_load(ed_path, "sel", "from:received");
        dynbuf_init(&msg, 1 << 20);
        dynbuf_init(&out, 1 << 16);
        dynbuf_appends(&msg, "From: a@shop.example\r\n");
        for (int i = 0; i < DKIM_FIELDS_MAX; i++)
                dynbuf_appendf(&msg, "Received: hop %d\r\n", i);
        dynbuf_appends(&msg, "\r\nbody\r\n");
        assert_int_equal(dkim_sign(k, dynbuf_ptr(&msg), dynbuf_len(&msg), 1,
                                   &out, err, sizeof(err)),
                         -1);
        assert_non_null(strstr(err, "more than"));
        assert_int_equal(dynbuf_len(&out), 0);
        dynbuf_fini(&msg);
        dynbuf_fini(&out);
        dkim_key_destroy(k);
}

/* @returns the error of loading @path, checked to hold none of the file's
 * base64 lines. */
static const char *load_error(const char *domain, const char *selector,
                              const char *path, const char *headers) {
        static char err[512];
        dkim_key_t *k;
        size_t len;
        char *pem = NULL;
        FILE *f;

        err[0] = '\0';
        k = dkim_key_new(domain, selector, path, headers, err, sizeof(err));
        assert_null(k);
        assert_true(err[0] != '\0');
        assert_null(strstr(err, "-----"));
        f = fopen(path, "rb");
        if (f != NULL) {
                pem = calloc(1, 1 << 16);
                len = fread(pem, 1, (1 << 16) - 1, f);
                fclose(f);
                pem[len] = '\0';
                for (char *line = strtok(pem, "\n"); line != NULL;
                     line = strtok(NULL, "\n")) {
                        if (strlen(line) >= 16 && line[0] != '-') {
                                line[16] = '\0';
                                assert_null(strstr(err, line));
                        }
                }
                free(pem);
        }
        return err;
}

static void
test_keys_that_cannot_sign_are_refused_without_showing_them(void **state) {
        char small[300], ec[300], enc[300], junk[300], missing[300];
        char pkcs1[300];
        dkim_key_t *k;

        (void)state;
        path_in_tmp(small, sizeof(small), "rsa512.pem");
        path_in_tmp(pkcs1, sizeof(pkcs1), "rsa1024-pkcs1.pem");
        path_in_tmp(ec, sizeof(ec), "p256.pem");
        path_in_tmp(enc, sizeof(enc), "encrypted.pem");
        path_in_tmp(junk, sizeof(junk), "junk.pem");
        path_in_tmp(missing, sizeof(missing), "missing.pem");

        key_make(small, 0, NULL, "RSA", (size_t)512);
        assert_non_null(strstr(load_error(DOMAIN, "s", small, NULL),
                               "512 bits: 1024 to 4096 bits are accepted"));

        /* 1024 bits is the least accepted, also as PKCS#1 */
        key_make(pkcs1, 1, NULL, "RSA", (size_t)1024);
        k = key_load(pkcs1, "s", NULL);
        assert_int_equal(dkim_key_bits(k), 1024);
        assert_string_equal(dkim_key_algorithm(k), "rsa-sha256");
        dkim_key_destroy(k);

        key_make(ec, 0, NULL, "EC", "P-256");
        assert_non_null(strstr(load_error(DOMAIN, "s", ec, NULL),
                               "not an RSA or Ed25519 key"));

        key_make(enc, 0, "secret", "ED25519");
        assert_non_null(
                strstr(load_error(DOMAIN, "s", enc, NULL), "encrypted"));

        write_file(junk, "-----BEGIN PRIVATE KEY-----\nnot a key\n", 39);
        assert_non_null(strstr(load_error(DOMAIN, "s", junk, NULL),
                               "no PEM private key"));
        assert_non_null(strstr(load_error(DOMAIN, "s", missing, NULL),
                               "missing.pem: No such file"));
        assert_non_null(
                strstr(load_error(DOMAIN, "s", tmpdir, NULL), "regular file"));
}

static void test_names_and_header_lists_are_checked(void **state) {
        dkim_key_t *k;

        (void)state;
        assert_non_null(strstr(load_error("shop example", "s", ed_path, NULL),
                               "is not a DNS name"));
        assert_non_null(strstr(load_error("shop..example", "s", ed_path, NULL),
                               "is not a DNS name"));
        assert_non_null(strstr(load_error(DOMAIN, "s;x=1", ed_path, NULL),
                               "is not a DNS name"));
        assert_non_null(strstr(load_error(DOMAIN, "", ed_path, NULL),
                               "is not a DNS name"));
        assert_non_null(strstr(load_error(DOMAIN, "s", ed_path, "to:subject"),
                               "from is missing"));
        assert_non_null(strstr(load_error(DOMAIN, "s", ed_path, "from:to:From"),
                               "\"from\" is listed twice"));
        assert_non_null(strstr(load_error(DOMAIN, "s", ed_path, "from::to"),
                               "an empty name"));
        assert_non_null(strstr(load_error(DOMAIN, "s", ed_path, "from:"),
                               "an empty name"));
        assert_non_null(strstr(load_error(DOMAIN, "s", ed_path, "from:a b"),
                               "is not a header field name"));
        /* selectors may have dots; names any case, spaces around them */
        k = key_load(ed_path, "mail.2026", " From : TO ");
        assert_string_equal(dkim_key_selector(k), "mail.2026");
        dkim_key_destroy(k);
}

static void test_dns_records_publish_the_public_keys(void **state) {
        dkim_key_t *k;
        struct dynbuf rec;

        (void)state;
        dynbuf_init(&rec, 4096);
        k = key_load(ed_path, "sel", NULL);
        assert_int_equal(dkim_key_dns_record(k, &rec), 0);
        assert_true(strncmp(dynbuf_ptr(&rec), "v=DKIM1; k=ed25519; p=", 22) ==
                    0);
        assert_int_equal(dynbuf_len(&rec), 22 + 44);
        assert_int_equal(dkim_key_bits(k), 256);
        dkim_key_destroy(k);
        dynbuf_reset(&rec);
        k = key_load(rsa_path, "sel", NULL);
        assert_int_equal(dkim_key_dns_record(k, &rec), 0);
        /* SubjectPublicKeyInfo of RSA 2048: 294 bytes */
        assert_true(strncmp(dynbuf_ptr(&rec), "v=DKIM1; k=rsa; p=MIIBIjAN",
                            26) == 0);
        assert_int_equal(dynbuf_len(&rec), 18 + 392);
        assert_int_equal(dkim_key_bits(k), 2048);
        dkim_key_destroy(k);
        dynbuf_fini(&rec);
}

static double bench_us(const dkim_key_t *k, const char *msg, int n) {
        struct dynbuf out;
        struct timespec a, b;
        char err[256];

        dynbuf_init(&out, 1 << 16);
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < n; i++) {
                dynbuf_reset(&out);
                assert_int_equal(dkim_sign(k, msg, strlen(msg), 1, &out, err,
                                           sizeof(err)),
                                 0);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        dynbuf_fini(&out);
        return ((double)(b.tv_sec - a.tv_sec) * 1e6 +
                (double)(b.tv_nsec - a.tv_nsec) / 1e3) /
               n;
}

/* KM_DKIM_BENCH=1: prints the cost of one signature (a 4 KB message). */
static void test_bench_when_asked(void **state) {
        dkim_key_t *rsa, *ed;
        char *multi;

        (void)state;
        if (getenv("KM_DKIM_BENCH") == NULL)
                return;
        multi = msg_multipart();
        rsa = key_load(rsa_path, "sel", NULL);
        ed = key_load(ed_path, "sel", NULL);
        bench_us(ed, multi, 200); /* warm up */
        printf("dkim bench (%zu-byte message): rsa-sha256 2048: %.1f us, "
               "ed25519-sha256: %.1f us\n",
               strlen(multi), bench_us(rsa, multi, 2000),
               bench_us(ed, multi, 20000));
        dkim_key_destroy(rsa);
        dkim_key_destroy(ed);
        free(multi);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(
                        test_relaxed_header_canonicalisation_follows_rfc6376),
                cmocka_unit_test(
                        test_relaxed_body_canonicalisation_follows_rfc6376),
                cmocka_unit_test(
                        test_body_canonicalisation_of_a_large_body_in_one_pass),
                cmocka_unit_test(
                        test_rfc8463_body_hash_and_signature_check_out),
                cmocka_unit_test(
                        test_rfc8463_message_signed_with_its_key_verifies),
                cmocka_unit_test(test_rsa_sha256_signatures_verify_with_dkimpy),
                cmocka_unit_test(
                        test_ed25519_sha256_signatures_verify_with_dkimpy),
                cmocka_unit_test(test_a_changed_message_does_not_verify),
                cmocka_unit_test(
                        test_repeated_fields_are_signed_from_the_bottom_up),
                cmocka_unit_test(test_an_empty_body_is_hashed_as_nothing),
                cmocka_unit_test(
                        test_the_field_is_appended_and_failures_leave_the_buffer),
                cmocka_unit_test(
                        test_dot_stuffed_data_is_signed_as_the_message),
                cmocka_unit_test(test_the_field_fits_the_room_the_key_asks_for),
                cmocka_unit_test(test_too_many_fields_to_sign_are_refused),
                cmocka_unit_test(
                        test_keys_that_cannot_sign_are_refused_without_showing_them),
                cmocka_unit_test(test_names_and_header_lists_are_checked),
                cmocka_unit_test(test_dns_records_publish_the_public_keys),
                cmocka_unit_test(test_bench_when_asked),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
