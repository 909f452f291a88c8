#include "utf8.h"

#include <stdlib.h>
#include <string.h>

/* Lead byte @c: sets the sequence length, the lead's bits of the code
 * point and the range the second byte must be in (which excludes overlong
 * forms, surrogates and code points above U+10FFFF).
 * @returns 0, or -1 when @c leads no multi-byte sequence. */
static int utf8_lead(unsigned char c, size_t *len, uint32_t *bits,
                     unsigned char *lo, unsigned char *hi) {
        *lo = 0x80;
        *hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
                *len = 2;
                *bits = c & 0x1fu;
        } else if (c >= 0xe0 && c <= 0xef) {
                *len = 3;
                *bits = c & 0x0fu;
                if (c == 0xe0)
                        *lo = 0xa0; /* below: overlong */
                else if (c == 0xed)
                        *hi = 0x9f; /* above: surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
                *len = 4;
                *bits = c & 0x07u;
                if (c == 0xf0)
                        *lo = 0x90; /* below: overlong */
                else if (c == 0xf4)
                        *hi = 0x8f; /* above: beyond U+10FFFF */
        } else {
                return -1;
        }
        return 0;
}

/* @returns how many bytes from @s (@left available, the first one a lead
 * byte) form the start of a well-formed sequence, and the code point so far
 * in *@cp; that is *@len when the sequence is whole. */
static size_t utf8_scan(const unsigned char *s, size_t left, size_t *len,
                        uint32_t *cp) {
        unsigned char lo, hi;
        size_t i;

        if (utf8_lead(s[0], len, cp, &lo, &hi) != 0)
                return 0;
        for (i = 1; i < *len && i < left; i++) {
                if (s[i] < lo || s[i] > hi)
                        break;
                *cp = (*cp << 6) | (s[i] & 0x3fu);
                lo = 0x80;
                hi = 0xbf;
        }
        return i;
}

size_t utf8_decode(const unsigned char *s, size_t left, uint32_t *cp) {
        size_t len = 0;
        uint32_t v = 0;

        if (s[0] < 0x80) {
                if (cp != NULL)
                        *cp = s[0];
                return 1;
        }
        if (utf8_scan(s, left, &len, &v) != len || len == 0)
                return 0;
        if (cp != NULL)
                *cp = v;
        return len;
}

size_t utf8_invalid_len(const unsigned char *s, size_t left) {
        size_t len = 0;
        uint32_t v = 0;
        size_t n = utf8_scan(s, left, &len, &v);

        return n == 0 ? 1 : n;
}

size_t utf8_encode(char *out, uint32_t cp) {
        if (cp < 0x80) {
                out[0] = (char)cp;
                return 1;
        }
        if (cp < 0x800) {
                out[0] = (char)(0xc0 | (cp >> 6));
                out[1] = (char)(0x80 | (cp & 0x3f));
                return 2;
        }
        if (cp < 0x10000) {
                out[0] = (char)(0xe0 | (cp >> 12));
                out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[2] = (char)(0x80 | (cp & 0x3f));
                return 3;
        }
        out[0] = (char)(0xf0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        return 4;
}

size_t utf8_char_len(const char *s, size_t left) {
        unsigned char c = (unsigned char)s[0];
        size_t n = 1;

        if (c >= 0xf0)
                n = 4;
        else if (c >= 0xe0)
                n = 3;
        else if (c >= 0xc0)
                n = 2;
        return n < left ? n : left;
}

int utf8_valid(const char *s, size_t len) {
        const unsigned char *p = (const unsigned char *)s;
        size_t i = 0;

        while (i < len) {
                size_t n = utf8_decode(p + i, len - i, NULL);

                if (n == 0)
                        return 0;
                i += n;
        }
        return 1;
}

char *utf8_repair(const char *s, size_t len, size_t *out_len) {
        const unsigned char *p = (const unsigned char *)s;
        size_t need = 0;
        size_t o = 0;
        size_t i;
        char *out;

        /* A replaced part is at least 1 byte and its U+FFFD 3: count first. */
        for (i = 0; i < len;) {
                size_t n = utf8_decode(p + i, len - i, NULL);

                if (n > 0) {
                        need += n;
                        i += n;
                } else {
                        need += UTF8_REPLACEMENT_LEN;
                        i += utf8_invalid_len(p + i, len - i);
                }
        }
        out = malloc(need + 1);
        if (out == NULL)
                return NULL;
        for (i = 0; i < len;) {
                size_t n = utf8_decode(p + i, len - i, NULL);

                if (n > 0) {
                        memcpy(out + o, s + i, n);
                        o += n;
                        i += n;
                } else {
                        memcpy(out + o, UTF8_REPLACEMENT, UTF8_REPLACEMENT_LEN);
                        o += UTF8_REPLACEMENT_LEN;
                        i += utf8_invalid_len(p + i, len - i);
                }
        }
        out[o] = '\0';
        if (out_len != NULL)
                *out_len = o;
        return out;
}
