#include "dynbuf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first allocation: most users write short texts. */
#define DYNBUF_MIN 64
/* Room past the content that dynbuf_take() leaves allocated, at most. */
#define DYNBUF_TAKE_SLACK 256

void dynbuf_init(struct dynbuf *d, size_t max) {
        d->db_p = NULL;
        d->db_len = 0;
        d->db_cap = 0;
        d->db_max = max;
        d->db_err = DYNBUF_OK;
}

void dynbuf_fini(struct dynbuf *d) {
        free(d->db_p);
        dynbuf_init(d, d->db_max);
}

void dynbuf_reset(struct dynbuf *d) {
        d->db_len = 0;
        d->db_err = DYNBUF_OK;
        if (d->db_p != NULL)
                d->db_p[0] = '\0';
}

void dynbuf_reuse(struct dynbuf *d, size_t max, size_t keep) {
        if (d->db_cap > keep || d->db_cap > max + 1) {
                free(d->db_p);
                d->db_p = NULL;
                d->db_cap = 0;
        }
        d->db_max = max;
        dynbuf_reset(d);
}

/* Makes room for @n more bytes and the NUL. @returns 0 or -1, the failure
 * remembered. */
static int dynbuf_grow(struct dynbuf *d, size_t n) {
        size_t need;
        size_t cap;
        char *p;

        if (d->db_err != DYNBUF_OK)
                return -1;
        if (n > d->db_max - d->db_len) {
                d->db_err = DYNBUF_ELIMIT;
                return -1;
        }
        need = d->db_len + n + 1;
        if (need <= d->db_cap)
                return 0;
        cap = d->db_cap ? d->db_cap : DYNBUF_MIN;
        while (cap < need && cap <= SIZE_MAX / 2)
                cap *= 2;
        if (cap < need || cap > d->db_max + 1)
                cap = d->db_max + 1; /* need is at most that */
        p = realloc(d->db_p, cap);
        if (p == NULL) {
                d->db_err = DYNBUF_ENOMEM;
                return -1;
        }
        d->db_p = p;
        d->db_cap = cap;
        return 0;
}

int dynbuf_append_grow(struct dynbuf *d, const void *p, size_t n) {
        if (dynbuf_grow(d, n) != 0)
                return -1;
        if (n > 0)
                memcpy(d->db_p + d->db_len, p, n);
        d->db_len += n;
        d->db_p[d->db_len] = '\0';
        return 0;
}

int dynbuf_vappendf(struct dynbuf *d, const char *fmt, va_list ap) {
        va_list aq;
        int n;

        if (d->db_err != DYNBUF_OK)
                return -1;
        va_copy(aq, ap);
        n = vsnprintf(d->db_p ? d->db_p + d->db_len : NULL,
                      d->db_p ? d->db_cap - d->db_len : 0, fmt, aq);
        va_end(aq);
        if (n < 0) {
                if (d->db_p != NULL)
                        d->db_p[d->db_len] = '\0';
                d->db_err = DYNBUF_ENOMEM;
                return -1;
        }
        if ((size_t)n >= (d->db_p ? d->db_cap - d->db_len : 0)) {
                if (dynbuf_grow(d, (size_t)n) != 0) {
                        if (d->db_p != NULL)
                                d->db_p[d->db_len] = '\0';
                        return -1;
                }
                vsnprintf(d->db_p + d->db_len, d->db_cap - d->db_len, fmt, ap);
        }
        /* else it fit, and db_cap is at most db_max + 1: within the limit */
        d->db_len += (size_t)n;
        return 0;
}

int dynbuf_appendf(struct dynbuf *d, const char *fmt, ...) {
        va_list ap;
        int rc;

        va_start(ap, fmt);
        rc = dynbuf_vappendf(d, fmt, ap);
        va_end(ap);
        return rc;
}

char *dynbuf_reserve(struct dynbuf *d, size_t n) {
        if (dynbuf_grow(d, n) != 0)
                return NULL;
        return d->db_p + d->db_len;
}

void dynbuf_setlen(struct dynbuf *d, size_t len) {
        if (d->db_p == NULL)
                return;
        d->db_len = len;
        d->db_p[len] = '\0';
}

size_t dynbuf_avail(const struct dynbuf *d) {
        return d->db_cap > d->db_len ? d->db_cap - d->db_len - 1 : 0;
}

void dynbuf_consume(struct dynbuf *d, size_t n) {
        if (d->db_p == NULL || n == 0)
                return;
        if (n > d->db_len)
                n = d->db_len;
        memmove(d->db_p, d->db_p + n, d->db_len - n);
        dynbuf_setlen(d, d->db_len - n);
}

const char *dynbuf_ptr(const struct dynbuf *d) {
        return d->db_p;
}

size_t dynbuf_len(const struct dynbuf *d) {
        return d->db_len;
}

size_t dynbuf_size(const struct dynbuf *d) {
        return d->db_cap;
}

void dynbuf_fail(struct dynbuf *d, enum dynbuf_err err) {
        if (d->db_err == DYNBUF_OK)
                d->db_err = err;
}

enum dynbuf_err dynbuf_error(const struct dynbuf *d) {
        return d->db_err;
}

char *dynbuf_take(struct dynbuf *d, size_t *lenp) {
        char *p;

        if (d->db_err != DYNBUF_OK) {
                dynbuf_fini(d);
                return NULL;
        }
        if (d->db_p == NULL && dynbuf_grow(d, 0) != 0)
                return NULL;
        p = d->db_p;
        p[d->db_len] = '\0';
        if (d->db_cap - (d->db_len + 1) > DYNBUF_TAKE_SLACK) {
                char *fit = realloc(p, d->db_len + 1);

                if (fit != NULL) /* else the larger block serves as well */
                        p = fit;
        }
        if (lenp != NULL)
                *lenp = d->db_len;
        dynbuf_init(d, d->db_max);
        return p;
}
