/*
 * hash: FNV-1a, 64 bit (http://www.isthe.com/chongo/tech/comp/fnv/). Not a
 * cryptographic hash: for hash tables and stable identifiers derived from
 * a string (the same input gives the same value on every run and host).
 */
#ifndef KM_HASH_H
#define KM_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV1A64_OFFSET 0xcbf29ce484222325ull
#define HASH_FNV1A64_PRIME 0x100000001b3ull

/* @returns the FNV-1a 64-bit hash of the @len bytes at @data. */
static inline uint64_t hash_fnv1a64(const void *data, size_t len) {
        const unsigned char *p = data;
        uint64_t h = HASH_FNV1A64_OFFSET;

        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= HASH_FNV1A64_PRIME;
        }
        return h;
}

/* @returns the FNV-1a 64-bit hash of the NUL-terminated @s (without the
 * NUL): the same as hash_fnv1a64(s, strlen(s)). */
static inline uint64_t hash_fnv1a64_str(const char *s) {
        uint64_t h = HASH_FNV1A64_OFFSET;

        for (; *s != '\0'; s++) {
                h ^= (unsigned char)*s;
                h *= HASH_FNV1A64_PRIME;
        }
        return h;
}

#endif
