#include "jsonparse.h"
#include "bytescan.h"
#include "utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Integers of more digits than this are left to jansson (overflow). */
#define JSONPARSE_INT_DIGITS 18
/* The scratch buffer on the stack: most requests need no other. */
#define JSONPARSE_STACK_SCRATCH 4096

struct jp {
        const unsigned char *p;
        const unsigned char *end;
        char *scratch; /* decoded escaped strings */
        size_t scratch_cap;
        int scratch_heap; /* scratch was allocated (else on the stack) */
        int depth;
};

static json_t *jp_value(struct jp *jp);

static void jp_ws(struct jp *jp) {
        while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' ||
                                   *jp->p == '\n' || *jp->p == '\r'))
                jp->p++;
}

static int jp_hex4(const unsigned char *p, uint32_t *out) {
        uint32_t v = 0;

        for (int i = 0; i < 4; i++) {
                unsigned char c = p[i];

                v <<= 4;
                if (c >= '0' && c <= '9')
                        v |= (uint32_t)(c - '0');
                else if (c >= 'a' && c <= 'f')
                        v |= (uint32_t)(c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                        v |= (uint32_t)(c - 'A' + 10);
                else
                        return -1;
        }
        *out = v;
        return 0;
}

/* Reads the string whose opening quote is at jp->p. Unescaped, it is left
 * in the input; escaped, it is decoded into jp->scratch.
 * @returns 0 with *s and *n set, or -1. */
static int jp_string(struct jp *jp, const char **s, size_t *n) {
        const unsigned char *p = jp->p + 1;
        const unsigned char *start = p;
        size_t o = 0;
        int escaped = 0;

        for (;;) {
                const unsigned char *run = p;
                size_t len;

                /* the run up to a quote, a backslash or a byte to check */
                while (p < jp->end) {
                        p += bytescan_json_plain(p, (size_t)(jp->end - p));
                        if (p >= jp->end || *p < 0x20 || *p >= 0x80 ||
                            *p == '"' || *p == '\\')
                                break;
                        p++;
                }
                if (escaped) {
                        memcpy(jp->scratch + o, run, (size_t)(p - run));
                        o += (size_t)(p - run);
                }
                if (p >= jp->end || *p < 0x20)
                        return -1;
                if (*p == '"')
                        break;
                if (*p >= 0x80) {
                        len = utf8_decode(p, (size_t)(jp->end - p), NULL);
                        if (len == 0)
                                return -1;
                        if (escaped) {
                                memcpy(jp->scratch + o, p, len);
                                o += len;
                        }
                        p += len;
                        continue;
                }
                /* a backslash */
                if (!escaped) {
                        /* Decoded, the string is never longer than in the
                         * input. */
                        size_t need = (size_t)(jp->end - start);

                        if (need > jp->scratch_cap) {
                                /* Nothing in it is needed any more. */
                                char *ns = malloc(need);

                                if (!ns)
                                        return -1;
                                if (jp->scratch_heap)
                                        free(jp->scratch);
                                jp->scratch = ns;
                                jp->scratch_cap = need;
                                jp->scratch_heap = 1;
                        }
                        o = (size_t)(p - start);
                        memcpy(jp->scratch, start, o);
                        escaped = 1;
                }
                if (jp->end - p < 2)
                        return -1;
                switch (p[1]) {
                case '"':
                case '\\':
                case '/':
                        jp->scratch[o++] = (char)p[1];
                        p += 2;
                        break;
                case 'b':
                        jp->scratch[o++] = '\b';
                        p += 2;
                        break;
                case 'f':
                        jp->scratch[o++] = '\f';
                        p += 2;
                        break;
                case 'n':
                        jp->scratch[o++] = '\n';
                        p += 2;
                        break;
                case 'r':
                        jp->scratch[o++] = '\r';
                        p += 2;
                        break;
                case 't':
                        jp->scratch[o++] = '\t';
                        p += 2;
                        break;
                case 'u': {
                        uint32_t cp, lo;

                        if (jp->end - p < 6 || jp_hex4(p + 2, &cp) != 0)
                                return -1;
                        p += 6;
                        if (cp >= 0xDC00 && cp <= 0xDFFF)
                                return -1;
                        if (cp >= 0xD800 && cp <= 0xDBFF) {
                                if (jp->end - p < 6 || p[0] != '\\' ||
                                    p[1] != 'u' || jp_hex4(p + 2, &lo) != 0 ||
                                    lo < 0xDC00 || lo > 0xDFFF)
                                        return -1;
                                p += 6;
                                cp = 0x10000 + ((cp - 0xD800) << 10) +
                                     (lo - 0xDC00);
                        }
                        o += utf8_encode(jp->scratch + o, cp);
                        break;
                }
                default:
                        return -1;
                }
        }
        if (escaped) {
                *s = jp->scratch;
                *n = o;
        } else {
                *s = (const char *)start;
                *n = (size_t)(p - start);
        }
        jp->p = p + 1;
        return 0;
}

static json_t *jp_number(struct jp *jp) {
        const unsigned char *p = jp->p;
        int neg = 0;
        size_t digits = 0;
        json_int_t v = 0;

        if (*p == '-') {
                neg = 1;
                p++;
        }
        if (p >= jp->end || *p < '0' || *p > '9')
                return NULL;
        if (*p == '0') {
                p++;
                digits = 1;
                if (p < jp->end && *p >= '0' && *p <= '9')
                        return NULL;
        } else {
                while (p < jp->end && *p >= '0' && *p <= '9') {
                        if (++digits > JSONPARSE_INT_DIGITS)
                                return NULL;
                        v = v * 10 + (*p - '0');
                        p++;
                }
        }
        /* real numbers are left to jansson */
        if (p < jp->end && (*p == '.' || *p == 'e' || *p == 'E'))
                return NULL;
        jp->p = p;
        return json_integer(neg ? -v : v);
}

static int jp_literal(struct jp *jp, const char *word, size_t n) {
        if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
                return -1;
        jp->p += n;
        return 0;
}

/* Reads the members of the object at jp->p (its '{'), calling @member
 * for each with jp->p at the value and the member's key, which the value's
 * own strings may overwrite when it is in the scratch buffer. @returns 0
 * after the '}', -1 on invalid JSON or when @member returns non-zero. */
static int jp_members(struct jp *jp,
                      int (*member)(struct jp *jp, const char *key,
                                    size_t key_len, void *arg),
                      void *arg) {
        jp->p++; /* '{' */
        jp_ws(jp);
        if (jp->p < jp->end && *jp->p == '}') {
                jp->p++;
                return 0;
        }
        for (;;) {
                const char *key;
                size_t key_len;

                if (jp->p >= jp->end || *jp->p != '"' ||
                    jp_string(jp, &key, &key_len) != 0)
                        return -1;
                jp_ws(jp);
                if (jp->p >= jp->end || *jp->p != ':')
                        return -1;
                jp->p++;
                jp_ws(jp);
                if (member(jp, key, key_len, arg) != 0)
                        return -1;
                jp_ws(jp);
                if (jp->p >= jp->end)
                        return -1;
                if (*jp->p == '}') {
                        jp->p++;
                        return 0;
                }
                if (*jp->p != ',')
                        return -1;
                jp->p++;
                jp_ws(jp);
        }
}

/* jp_members() for jp_object(): @arg is the object. */
static int jp_object_member(struct jp *jp, const char *key, size_t key_len,
                            void *arg) {
        json_t *obj = arg;
        char *key_copy = NULL;
        json_t *v;
        int ret = -1;

        if (memchr(key, '\0', key_len) != NULL ||
            json_object_getn(obj, key, key_len) != NULL)
                return -1;
        if (key == jp->scratch) {
                /* The value may reuse the scratch buffer. */
                key_copy = malloc(key_len ? key_len : 1);
                if (!key_copy)
                        return -1;
                memcpy(key_copy, key, key_len);
                key = key_copy;
        }
        v = jp_value(jp);
        if (v && json_object_setn_new_nocheck(obj, key, key_len, v) == 0)
                ret = 0;
        free(key_copy);
        return ret;
}

static json_t *jp_object(struct jp *jp) {
        json_t *obj = json_object();

        if (obj && jp_members(jp, jp_object_member, obj) != 0) {
                json_decref(obj);
                obj = NULL;
        }
        return obj;
}

static json_t *jp_array(struct jp *jp) {
        json_t *arr = json_array();

        if (!arr)
                return NULL;
        jp->p++; /* '[' */
        jp_ws(jp);
        if (jp->p < jp->end && *jp->p == ']') {
                jp->p++;
                return arr;
        }
        for (;;) {
                json_t *v = jp_value(jp);

                if (!v || json_array_append_new(arr, v) != 0)
                        goto fail;
                jp_ws(jp);
                if (jp->p >= jp->end)
                        goto fail;
                if (*jp->p == ']') {
                        jp->p++;
                        return arr;
                }
                if (*jp->p != ',')
                        goto fail;
                jp->p++;
                jp_ws(jp);
        }
fail:
        json_decref(arr);
        return NULL;
}

/* Reads the value at jp->p (white space before it already skipped). */
static json_t *jp_value(struct jp *jp) {
        json_t *v = NULL;
        const char *s;
        size_t n;

        if (jp->p >= jp->end)
                return NULL;
        switch (*jp->p) {
        case '{':
        case '[':
                if (++jp->depth > JSONPARSE_MAX_DEPTH)
                        return NULL;
                v = *jp->p == '{' ? jp_object(jp) : jp_array(jp);
                jp->depth--;
                return v;
        case '"':
                if (jp_string(jp, &s, &n) != 0)
                        return NULL;
                return json_stringn_nocheck(s, n);
        case 't':
                return jp_literal(jp, "true", 4) == 0 ? json_true() : NULL;
        case 'f':
                return jp_literal(jp, "false", 5) == 0 ? json_false() : NULL;
        case 'n':
                return jp_literal(jp, "null", 4) == 0 ? json_null() : NULL;
        default:
                return jp_number(jp);
        }
}

json_t *jsonparse_loadb(const char *buf, size_t len) {
        char stack[JSONPARSE_STACK_SCRATCH];
        struct jp jp = {.p = (const unsigned char *)buf,
                        .end = (const unsigned char *)buf + len,
                        .scratch = stack,
                        .scratch_cap = sizeof(stack)};
        json_t *v;

        jp_ws(&jp);
        v = jp_value(&jp);
        if (v) {
                jp_ws(&jp);
                if (jp.p != jp.end) {
                        json_decref(v);
                        v = NULL;
                }
        }
        if (jp.scratch_heap)
                free(jp.scratch);
        return v;
}

/* @returns the index of the @key_len bytes at @key among the @n @names, or
 * -1. */
static int jp_name_index(const char *key, size_t key_len,
                         const char *const *names, size_t n) {
        if (key_len == 0)
                return -1; /* no name is empty */
        for (size_t i = 0; i < n; i++)
                if (names[i][0] == key[0] && strlen(names[i]) == key_len &&
                    memcmp(names[i], key, key_len) == 0)
                        return (int)i;
        return -1;
}

/* The known fields jsonparse_fields() reads into. */
struct jp_fields {
        const char *const *names;
        size_t n;
        json_t **out;
};

/* jp_members() for jsonparse_fields(): @arg is the struct jp_fields. */
static int jp_field_member(struct jp *jp, const char *key, size_t key_len,
                           void *arg) {
        struct jp_fields *f = arg;
        /* matched before the value may reuse the scratch buffer */
        int k = jp_name_index(key, key_len, f->names, f->n);

        if (k < 0 || f->out[k] != NULL)
                return -1;
        f->out[k] = jp_value(jp);
        return f->out[k] ? 0 : -1;
}

int jsonparse_fields(const char *buf, size_t len, const char *const *names,
                     size_t n, json_t **out) {
        char stack[JSONPARSE_STACK_SCRATCH];
        struct jp jp = {.p = (const unsigned char *)buf,
                        .end = (const unsigned char *)buf + len,
                        .scratch = stack,
                        .scratch_cap = sizeof(stack),
                        .depth = 1}; /* in the object, as jp_object() is */
        struct jp_fields f = {.names = names, .n = n, .out = out};
        int ok;

        for (size_t i = 0; i < n; i++)
                out[i] = NULL;
        jp_ws(&jp);
        ok = jp.p < jp.end && *jp.p == '{' &&
             jp_members(&jp, jp_field_member, &f) == 0;
        if (ok) {
                jp_ws(&jp);
                ok = jp.p == jp.end;
        }
        if (!ok)
                for (size_t i = 0; i < n; i++) {
                        json_decref(out[i]);
                        out[i] = NULL;
                }
        if (jp.scratch_heap)
                free(jp.scratch);
        return ok ? 0 : -1;
}

json_t *jsonparse_string(const char *s) {
        json_t *v = json_string(s ? s : "");
        char *fixed;
        size_t len;

        if (v)
                return v;
        fixed = utf8_repair(s, strlen(s), &len);
        if (!fixed)
                abort();
        v = json_stringn(fixed, len);
        free(fixed);
        if (!v)
                abort();
        return v;
}
