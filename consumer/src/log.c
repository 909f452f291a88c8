#include "log.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum log_level log_threshold = LL_INFO;
int log_repeat_ms = 10000;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

int log_set_level(const char *name) {
        for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
                if (strcmp(name, log_names[i]) == 0) {
                        log_threshold = (enum log_level)i;
                        return 0;
                }
        }
        return -1;
}

int log_repeat_pass(struct log_repeat *r, int code, int64_t now_ms,
                    unsigned long *held) {
        int pick = 0, match = 0;

        /* the slot of @code, else the first unused, else the one written
         * longest ago */
        for (int i = 0; i < LOG_REPEAT_SLOTS; i++) {
                if (r->lr_slot[i].used && r->lr_slot[i].code == code) {
                        pick = i;
                        match = 1;
                        break;
                }
                if (r->lr_slot[pick].used &&
                    (!r->lr_slot[i].used ||
                     r->lr_slot[i].written_ms < r->lr_slot[pick].written_ms))
                        pick = i;
        }
        if (match && now_ms - r->lr_slot[pick].written_ms < log_repeat_ms) {
                r->lr_slot[pick].held++;
                return 0;
        }
        *held = match ? r->lr_slot[pick].held : 0;
        r->lr_slot[pick].used = 1;
        r->lr_slot[pick].code = code;
        r->lr_slot[pick].written_ms = now_ms;
        r->lr_slot[pick].held = 0;
        return 1;
}

/* ---- the line being written ---- */

struct lb {
        char *p;
        size_t len;
        size_t cap; /* bytes of p, its NUL included */
        int cut;
};

static void lb_put(struct lb *b, const char *s, size_t n) {
        size_t room = b->cap - 1 - b->len;

        if (n > room) {
                n = room;
                b->cut = 1;
        }
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = '\0';
}

/* Appends a logfmt value: bare when it is a plain token, else in double
 * quotes with '"' and '\' escaped. Control characters show as '?' either way:
 * values from requests (an id with CR/LF, an escape sequence) must not start a
 * forged line or drive a terminal. A quoted value cut short is still closed. */
static void lb_value(struct lb *b, const char *s, size_t n) {
        int quote = n == 0;

        for (size_t i = 0; i < n && !quote; i++) {
                unsigned char c = (unsigned char)s[i];

                quote = c <= ' ' || c == '"' || c == '=' || c == '\\' ||
                        c == 0x7f;
        }
        if (!quote) {
                lb_put(b, s, n);
                return;
        }
        if (b->cap - 1 - b->len < 2) {
                b->cut = 1;
                return;
        }
        b->cap--; /* room for the closing quote, whatever happens */
        lb_put(b, "\"", 1);
        for (size_t i = 0; i < n && !b->cut; i++) {
                unsigned char c = (unsigned char)s[i];
                char esc[2] = {'\\', (char)c};

                if (c == '"' || c == '\\') {
                        if (b->cap - 1 - b->len < 2) {
                                b->cut = 1;
                                break;
                        }
                        lb_put(b, esc, 2);
                } else {
                        if (c < 0x20 || c == 0x7f)
                                c = '?';
                        lb_put(b, (const char *)&c, 1);
                }
        }
        b->cap++;
        lb_put(b, "\"", 1);
}

/* ---- printf conversions, one at a time ---- */

/* Copies a conversion's width or precision at *@f into @spec (at *@sl, at
 * most up to @max): digits, or '*' taken from @ap and written as digits. */
static void log_conv_num(char *spec, size_t *sl, size_t max, const char **f,
                         va_list *ap) {
        if (**f == '*') {
                size_t room = max - *sl;
                int n = snprintf(spec + *sl, room, "%d", va_arg(*ap, int));

                if (n > 0)
                        *sl += (size_t)n < room ? (size_t)n : room - 1;
                (*f)++;
                return;
        }
        while (**f >= '0' && **f <= '9' && *sl + 1 < max)
                spec[(*sl)++] = *(*f)++;
}

/* Formats the conversion at *@fmt (just past its '%') with the next
 * argument(s) of @ap into @out, and moves *@fmt past it. @returns the length
 * written (cut to @size - 1). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static size_t log_conv(char *out, size_t size, const char **fmt, va_list *ap) {
        const char *f = *fmt;
        char spec[32];
        size_t sl = 0;
        char len[3] = "";
        int n = 0;

        spec[sl++] = '%';
        while (*f && strchr("-+ #0", *f) && sl < 8)
                spec[sl++] = *f++;
        log_conv_num(spec, &sl, 19, &f, ap);
        if (*f == '.') {
                spec[sl++] = *f++;
                log_conv_num(spec, &sl, 27, &f, ap);
        }
        for (size_t k = 0; k < 2 && *f && strchr("hlzjtL", *f); k++) {
                len[k] = *f;
                spec[sl++] = *f++;
        }
        if (*f == '\0') {
                *fmt = f;
                out[0] = '\0';
                return 0;
        }
        spec[sl++] = *f;
        spec[sl] = '\0';
        switch (*f) {
        case 'd':
        case 'i':
                if (strcmp(len, "ll") == 0)
                        n = snprintf(out, size, spec, va_arg(*ap, long long));
                else if (len[0] == 'l' || len[0] == 'z' || len[0] == 't')
                        n = snprintf(out, size, spec, va_arg(*ap, long));
                else if (len[0] == 'j')
                        n = snprintf(out, size, spec, va_arg(*ap, intmax_t));
                else
                        n = snprintf(out, size, spec, va_arg(*ap, int));
                break;
        case 'u':
        case 'x':
        case 'X':
        case 'o':
                if (strcmp(len, "ll") == 0)
                        n = snprintf(out, size, spec,
                                     va_arg(*ap, unsigned long long));
                else if (len[0] == 'l' || len[0] == 'z' || len[0] == 't')
                        n = snprintf(out, size, spec,
                                     va_arg(*ap, unsigned long));
                else if (len[0] == 'j')
                        n = snprintf(out, size, spec, va_arg(*ap, uintmax_t));
                else
                        n = snprintf(out, size, spec,
                                     va_arg(*ap, unsigned int));
                break;
        case 'c':
                n = snprintf(out, size, spec, va_arg(*ap, int));
                break;
        case 's':
                n = snprintf(out, size, spec, va_arg(*ap, const char *));
                break;
        case 'p':
                n = snprintf(out, size, spec, va_arg(*ap, void *));
                break;
        case 'e':
        case 'E':
        case 'f':
        case 'F':
        case 'g':
        case 'G':
        case 'a':
        case 'A':
                if (len[0] == 'L')
                        n = snprintf(out, size, spec, va_arg(*ap, long double));
                else
                        n = snprintf(out, size, spec, va_arg(*ap, double));
                break;
        case '%':
                n = snprintf(out, size, "%%");
                break;
        default: /* not one the project uses: shown as written */
                n = snprintf(out, size, "%s", spec);
                break;
        }
        *fmt = f + 1;
        if (n < 0) {
                out[0] = '\0';
                return 0;
        }
        return (size_t)n < size ? (size_t)n : size - 1;
}
#pragma GCC diagnostic pop

/* @returns the length of the field key at @s ("name=" with name of letters,
 * digits, '_' and '.', starting with a letter or '_'), the '=' included; 0
 * when @s does not start one. */
static size_t log_key_len(const char *s) {
        size_t i = 0;

        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              *s == '_'))
                return 0;
        while ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
               (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.')
                i++;
        return s[i] == '=' ? i + 1 : 0;
}

/* Formats @fmt from *@fmt up to the next field (" key=") or its end into
 * @out, and moves *@fmt there. @returns the length (cut to @size - 1). */
static size_t log_segment(char *out, size_t size, const char **fmt,
                          va_list *ap) {
        const char *f = *fmt;
        size_t n = 0;

        while (*f) {
                if (*f == ' ' && log_key_len(f + 1))
                        break;
                if (*f == '%') {
                        f++;
                        n += log_conv(out + n, size - n, &f, ap);
                } else if (n + 1 < size) {
                        out[n++] = *f++;
                } else {
                        f++;
                }
        }
        out[n] = '\0';
        *fmt = f;
        return n;
}

size_t log_vformat(char *out, size_t size, const char *fmt, va_list ap) {
        struct lb b = {out, 0, size, 0};
        char seg[LOG_LINE_MAX];
        va_list aq;
        size_t n;

        if (size == 0)
                return 0;
        out[0] = '\0';
        va_copy(aq, ap);
        n = log_segment(seg, sizeof(seg), &fmt, &aq);
        lb_put(&b, "msg=", 4);
        lb_value(&b, seg, n);
        while (*fmt && !b.cut) {
                size_t k = log_key_len(fmt + 1);

                lb_put(&b, fmt, k + 1); /* " key=" */
                fmt += k + 1;
                n = log_segment(seg, sizeof(seg), &fmt, &aq);
                lb_value(&b, seg, n);
        }
        va_end(aq);
        return b.len;
}

void log_write(enum log_level level, const char *fmt, ...) {
        char line[LOG_LINE_MAX];
        struct timeval tv;
        struct tm tm;
        va_list ap;
        int n;

        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000),
                     log_names[level]);
        if (n < 0 || (size_t)n >= sizeof(line))
                return;
        va_start(ap, fmt);
        log_vformat(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        /* One write per line so concurrent workers' lines do not interleave. */
        fprintf(stderr, "%s\n", line);
}

void log_rdkafka(const struct rd_kafka_s *rk, int level, const char *fac,
                 const char *buf) {
        enum log_level l = level <= 3   ? LL_ERROR
                           : level == 4 ? LL_WARN
                           : level <= 6 ? LL_INFO
                                        : LL_DEBUG;

        (void)rk;
        LOG(l, "kafka fac=%s text=%s", fac, buf);
}
