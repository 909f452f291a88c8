/*
 * bytescan: the byte searches of the per-message path (a built message's
 * 8-bit bytes, a text body's line ends), 16 bytes at a time with SSE2 and 8
 * at a time without it.
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

#endif
