/*
 * bytescan: the byte searches of the per-message path (a built message's
 * 8-bit bytes, a text body's line ends, the bytes of a JSON string that
 * need a look), 16 bytes at a time with SSE2 (every x86-64 has it) and 8 at
 * a time without it.
 */
#ifndef KM_BYTESCAN_H
#define KM_BYTESCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* @returns whether any of @len bytes at @p has its high bit set. */
static inline int bytescan_has_8bit(const char *p, size_t len) {
        size_t i = 0;
        uint64_t acc = 0;

#ifdef __SSE2__
        for (; i + 64 <= len; i += 64) {
                __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
                __m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
                __m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
                __m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));

                if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b),
                                                   _mm_or_si128(c, d))) != 0)
                        return 1;
        }
        for (; i + 16 <= len; i += 16)
                if (_mm_movemask_epi8(
                            _mm_loadu_si128((const __m128i *)(p + i))) != 0)
                        return 1;
#endif
        for (; i + 8 <= len; i += 8) {
                uint64_t w;

                memcpy(&w, p + i, 8);
                acc |= w;
        }
        for (; i < len; i++)
                acc |= (unsigned char)p[i];
        return (acc & UINT64_C(0x8080808080808080)) != 0;
}

/* @returns the index of the first CR or LF of @len bytes at @p, or @len. */
static inline size_t bytescan_eol(const char *p, size_t len) {
        size_t i = 0;

#ifdef __SSE2__
        const __m128i cr = _mm_set1_epi8('\r');
        const __m128i lf = _mm_set1_epi8('\n');

        for (; i + 16 <= len; i += 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
                int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr),
                                                       _mm_cmpeq_epi8(v, lf)));

                if (m != 0)
                        return i + (size_t)__builtin_ctz((unsigned)m);
        }
#endif
        for (; i < len; i++)
                if (p[i] == '\r' || p[i] == '\n')
                        return i;
        return len;
}

/* @returns whether none of the 8 bytes at @p ends a plain run of a JSON
 * string: a control byte, a byte of 0x80 or more, a quote or a backslash. */
static inline int bytescan_word_json_plain(const unsigned char *p) {
        const uint64_t ones = 0x0101010101010101u;
        const uint64_t highs = 0x8080808080808080u;
        uint64_t w, q, b, hit;

        memcpy(&w, p, 8);
        q = w ^ (ones * '"');
        b = w ^ (ones * '\\');
        /* Each term has a high bit set when some byte is below 0x20, is 0x80
         * or more, is a quote (q has a zero byte), is a backslash. */
        hit = ((w - ones * 0x20) & ~w) | w | ((q - ones) & ~q) |
              ((b - ones) & ~b);
        return (hit & highs) == 0;
}

/* @returns how many bytes from @p on (at most @max) need no look in a JSON
 * string, read or written: none is a control byte, a byte of 0x80 or more,
 * a quote or a backslash. */
static inline size_t bytescan_json_plain(const unsigned char *p, size_t max) {
        size_t i = 0;

#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"');
        const __m128i bslash = _mm_set1_epi8('\\');
        const __m128i space = _mm_set1_epi8(0x20);

        for (; max - i >= 16; i += 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
                /* signed: a byte of 0x80 or more is below 0x20 too */
                __m128i hit =
                        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                  _mm_cmpeq_epi8(v, bslash)),
                                     _mm_cmplt_epi8(v, space));
                unsigned mask = (unsigned)_mm_movemask_epi8(hit);

                if (mask)
                        return i + (size_t)__builtin_ctz(mask);
        }
#endif
        for (; max - i >= 8 && bytescan_word_json_plain(p + i); i += 8)
                ;
        return i;
}

#endif
