/*
 * utf8: decoding, encoding, checking and repairing UTF-8 (RFC 3629).
 *
 * Well-formed means what RFC 3629 and jansson accept: the shortest form of
 * each code point, no surrogate (U+D800..U+DFFF), nothing above U+10FFFF.
 */
#ifndef KM_UTF8_H
#define KM_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* U+FFFD REPLACEMENT CHARACTER, in UTF-8. */
#define UTF8_REPLACEMENT "\xef\xbf\xbd"
#define UTF8_REPLACEMENT_LEN 3

/*
 * Decodes the sequence at @s (@left >= 1 bytes available); an ASCII byte is
 * a sequence of 1.
 * @returns its length (1 to 4) with the code point in *@cp (when @cp is not
 * NULL), or 0 when it is not well-formed: a stray continuation byte, a lead
 * byte that never starts one (0xC0, 0xC1, 0xF5..0xFF), truncated, overlong,
 * a surrogate, above U+10FFFF.
 */
size_t utf8_decode(const unsigned char *s, size_t left, uint32_t *cp);

/*
 * The bytes at @s (@left >= 1 available) start no well-formed sequence.
 * @returns how many of them one U+FFFD stands for (1 to 3): the longest
 * start of a well-formed sequence there ("maximal subpart", Unicode 15
 * section 3.9, as the WHATWG decoder does), at least 1.
 */
size_t utf8_invalid_len(const unsigned char *s, size_t left);

/* Writes @cp (at most U+10FFFF) to @out, which has room for 4 bytes.
 * @returns the number of bytes written (1 to 4). */
size_t utf8_encode(char *out, uint32_t cp);

/* @returns the length (1 to 4, at most @left) of the character whose lead
 * byte is @s[0], from that byte alone: for stepping through text that is
 * known to be well-formed. */
size_t utf8_char_len(const char *s, size_t left);

/* @returns 1 when the @len bytes at @s are well-formed UTF-8, else 0. */
int utf8_valid(const char *s, size_t len);

/*
 * Repairs the @len bytes at @s: each ill-formed part (utf8_invalid_len())
 * becomes one U+FFFD, everything else (well-formed UTF-8, ASCII controls
 * included) is kept as it is.
 * @returns the result, malloc'd and NUL-terminated, owned by the caller,
 * with its length in *@out_len (when not NULL); NULL when out of memory.
 */
char *utf8_repair(const char *s, size_t len, size_t *out_len);

#endif
