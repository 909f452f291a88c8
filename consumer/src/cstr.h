/*
 * cstr: NUL-terminated strings in fixed-size buffers, without printf (the
 * per-request path copies several ids and replies each time).
 */
#ifndef KM_CSTR_H
#define KM_CSTR_H

#include <stddef.h>
#include <string.h>

/* Copies @src into @dst of @size bytes (at least 1), cut to @size - 1
 * bytes, always NUL-terminated: what snprintf(dst, size, "%s", src) writes.
 * @returns the bytes copied (without the NUL). */
static inline size_t cstr_copy(char *dst, size_t size, const char *src) {
        size_t n = strnlen(src, size - 1);

        memcpy(dst, src, n);
        dst[n] = '\0';
        return n;
}

#endif
