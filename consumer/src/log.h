/*
 * log: one logfmt line per event on stderr:
 *   ts=2026-12-02T16:00:00.000Z level=warn msg="relay unhealthy" relay=smtp://... code=451
 * The level is tested before anything is formatted. stdout is never used by
 * the worker.
 */
#ifndef KM_LOG_H
#define KM_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Levels; LL_ (not LOG_) so that <syslog.h> can be included alongside. */
enum log_level { LL_ERROR = 0, LL_WARN, LL_INFO, LL_DEBUG };

/* The longest line written, its NUL included: longer ones are cut (a quoted
 * value cut short is still closed). */
#define LOG_LINE_MAX 2048

extern enum log_level log_threshold;

/* @returns 0 and sets the threshold from "error|warn|info|debug", or -1. */
int log_set_level(const char *name);

/* log.repeat.ms: an error of a Kafka client repeated within this long is
 * counted instead of written (0: every one is written). */
extern int log_repeat_ms;

/* The errors of one source (a Kafka client's error callback), by code: one
 * seen again within log_repeat_ms of the last written is counted, not
 * written. A few codes are followed at once (librdkafka alternates two or
 * three while a broker is away); a new one takes the slot used longest
 * ago. */
#define LOG_REPEAT_SLOTS 8
struct log_repeat {
        struct {
                int code;
                int used;
                int64_t written_ms;
                unsigned long held;
        } lr_slot[LOG_REPEAT_SLOTS];
};

/* @returns 1 when an error with @code seen at @now_ms is to be written, with
 * *@held set to how many like it were counted since the last one written;
 * 0 when it is only counted. */
int log_repeat_pass(struct log_repeat *r, int code, int64_t now_ms,
                    unsigned long *held);

void log_write(enum log_level level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* Formats @fmt as the logfmt fields of a line into @out (@size bytes, always
 * NUL-terminated): the text before the first " key=" is msg, quoted; each
 * field's value (what its conversions and text give, up to the next " key=")
 * is bare when it is a plain token, else quoted with '"' and '\' escaped;
 * control characters show as '?'. @returns the length written. */
size_t log_vformat(char *out, size_t size, const char *fmt, va_list ap);

/* A librdkafka log callback (rd_kafka_conf_set_log_cb) writing through
 * log_write: syslog levels 0-3 as error, 4 warn, 5-6 info, 7 debug. */
struct rd_kafka_s;
void log_rdkafka(const struct rd_kafka_s *rk, int level, const char *fac,
                 const char *buf);

/* The format is the message, then " key=value" fields whose values are
 * printf conversions, never quoted by hand (log_vformat() quotes them):
 *   LOG(LL_WARN, "relay unhealthy relay=%s code=%d reply=%s", url, code, reply); */
#define LOG(level, ...)                                                        \
        do {                                                                   \
                if ((level) <= log_threshold)                                  \
                        log_write((level), __VA_ARGS__);                       \
        } while (0)

#endif
