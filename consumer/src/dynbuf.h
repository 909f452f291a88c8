/*
 * dynbuf: a growable byte buffer with a size limit of its own.
 *
 * Embedded in its owner (dynbuf_init()/dynbuf_fini()). The first append
 * that fails (the limit would be passed, or memory ran out) leaves the
 * content as it was and makes every later append fail too, until
 * dynbuf_reset(): a writer may append many pieces and check once.
 * The content is always followed by a NUL (not counted in its length).
 */
#ifndef KM_DYNBUF_H
#define KM_DYNBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

enum dynbuf_err {
        DYNBUF_OK = 0,
        DYNBUF_ENOMEM, /* out of memory */
        DYNBUF_ELIMIT, /* the content would have passed the limit */
};

struct dynbuf {
        char *db_p; /* NULL until the first byte */
        size_t db_len;
        size_t db_cap; /* bytes allocated at db_p */
        size_t db_max; /* the limit: db_len never passes it */
        enum dynbuf_err db_err; /* the first failure since the last reset */
};

/* Prepares an empty buffer that will hold at most @max bytes (less than
 * SIZE_MAX). */
void dynbuf_init(struct dynbuf *d, size_t max);

/* Frees the content; @d is empty (and may be used) again. */
void dynbuf_fini(struct dynbuf *d);

/* Empties @d, keeping its memory, and forgets a failure. */
void dynbuf_reset(struct dynbuf *d);

/* Empties @d as dynbuf_reset() does, with the limit @max (less than
 * SIZE_MAX) from now on; its memory is kept when it holds at most @keep
 * bytes and @max + 1, else freed. */
void dynbuf_reuse(struct dynbuf *d, size_t max, size_t keep);

/* dynbuf_append() when @d has no room for @n more bytes and the NUL, or
 * has failed. */
int dynbuf_append_grow(struct dynbuf *d, const void *p, size_t n);

/* Appends @n bytes from @p. @returns 0, or -1 (see dynbuf_error()). Inline:
 * a message is built from about a hundred short pieces. */
static inline int dynbuf_append(struct dynbuf *d, const void *p, size_t n) {
        /* db_cap is at most db_max + 1: room here is within the limit */
        if (d->db_err != DYNBUF_OK || d->db_cap - d->db_len <= n)
                return dynbuf_append_grow(d, p, n);
        if (n > 0) /* @p may be NULL then */
                memcpy(d->db_p + d->db_len, p, n);
        d->db_len += n;
        d->db_p[d->db_len] = '\0';
        return 0;
}

/* Appends the NUL-terminated @s. @returns 0 or -1. */
static inline int dynbuf_appends(struct dynbuf *d, const char *s) {
        return dynbuf_append(d, s, strlen(s));
}

/* Appends the string literal @lit (its length known when compiled).
 * @returns 0 or -1. */
#define dynbuf_appendlit(d, lit) dynbuf_append((d), "" lit, sizeof(lit) - 1)

/* Appends the byte @c. @returns 0 or -1. */
static inline int dynbuf_appendc(struct dynbuf *d, char c) {
        return dynbuf_append(d, &c, 1);
}

/* Appends printf output. @returns 0 or -1 (also on a format error, as
 * DYNBUF_ENOMEM). */
int dynbuf_appendf(struct dynbuf *d, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
int dynbuf_vappendf(struct dynbuf *d, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));

/*
 * Makes room for @n more bytes, for a writer that fills them in place and
 * then calls dynbuf_setlen().
 * @returns where the next byte goes (valid until the next call that may
 * grow @d), or NULL when that would fail like an append.
 */
char *dynbuf_reserve(struct dynbuf *d, size_t n);

/* Sets the length to @len: at most what the content and the room reserved
 * last hold. Terminates the content with a NUL. */
void dynbuf_setlen(struct dynbuf *d, size_t len);

/* @returns the bytes that fit after the content without growing @d (what
 * the last dynbuf_reserve() made room for, or more). */
size_t dynbuf_avail(const struct dynbuf *d);

/* Drops the first @n bytes of the content (at most its length), moving the
 * rest to the front: for a buffer read from the front, such as a socket's
 * input. */
void dynbuf_consume(struct dynbuf *d, size_t n);

/* @returns the content (NUL-terminated; NULL while nothing was added). */
const char *dynbuf_ptr(const struct dynbuf *d);

/* @returns the length of the content. */
size_t dynbuf_len(const struct dynbuf *d);

/* @returns the bytes allocated for @d's content. */
size_t dynbuf_size(const struct dynbuf *d);

/* Marks @d failed with @err (not DYNBUF_OK) as a failed append would, for
 * a writer that met an error of its own; an earlier failure stays. */
void dynbuf_fail(struct dynbuf *d, enum dynbuf_err err);

/* @returns DYNBUF_OK, or why an append failed since the last reset. */
enum dynbuf_err dynbuf_error(const struct dynbuf *d);

/*
 * Hands the content over: @returns it (malloc'd, NUL-terminated, owned by
 * the caller from now on) with its length in *@lenp (when not NULL), and
 * leaves @d empty. Room beyond the content is given back when it is more
 * than 256 bytes: a taken buffer often lives long (a built
 * message, for as long as its request is in flight). @returns NULL after a failed append (the content is
 * freed) or when no memory is left for an empty content.
 */
char *dynbuf_take(struct dynbuf *d, size_t *lenp);

#endif
