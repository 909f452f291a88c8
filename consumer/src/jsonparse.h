/*
 * jsonparse: a fast path for reading requests into jansson values.
 *
 * jansson's parser reads its input one byte at a time through a stream
 * callback, checks UTF-8 a byte at a time and grows a buffer per string:
 * about a quarter of the worker's CPU per request (benchmark B1). This
 * parser scans strings in runs, copies an unescaped string straight from
 * the input and builds the same jansson values.
 *
 * It accepts a subset of what json_loadb() accepts, with the same result:
 * whatever it does not handle itself (real numbers, integers of more than
 * 18 digits, nesting deeper than JSONPARSE_MAX_DEPTH, a NUL in an object
 * key) and every error make it return NULL, and the caller then asks
 * json_loadb(), which gives the value or the error message. The fuzz target
 * fuzz_jsonparse checks the agreement.
 */
#ifndef KM_JSONPARSE_H
#define KM_JSONPARSE_H

#include <jansson.h>
#include <stddef.h>

/* Nesting beyond this is left to jansson (which allows 2048). */
#define JSONPARSE_MAX_DEPTH 64

/* Parses @len bytes at @buf as json_loadb(buf, len, JSON_REJECT_DUPLICATES |
 * JSON_DECODE_ANY | JSON_ALLOW_NUL, ...) would.
 * @returns a new reference (the caller owns it), or NULL when the input is
 * not valid JSON or uses something this parser leaves to jansson. */
json_t *jsonparse_loadb(const char *buf, size_t len);

/* Parses @len bytes at @buf, a JSON object, into the values of its members
 * (jsonparse_loadb()'s values) without the object: out[i] is a new reference
 * to the value of the key @names[i], NULL when the key is not there. A
 * request is read this way: no hash table, no lookups.
 * @returns 0, or -1 (every out[i] NULL) when the input is not an object, has
 * a key not among the @n @names or one twice, is not valid JSON or uses
 * something this parser leaves to jansson: json_loadb() decides then. No
 * name may be empty. */
int jsonparse_fields(const char *buf, size_t len, const char *const *names,
                     size_t n, json_t **out);

/* @returns a new JSON string of @s (NULL: ""): text that is not UTF-8, such
 * as a relay's 8-bit reply, which jansson refuses, is repaired first
 * (utf8_repair(): U+FFFD for each bad sequence). Aborts when out of
 * memory. */
json_t *jsonparse_string(const char *s);

#endif
