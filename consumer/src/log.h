/*
 * log: one line per event on stderr, "ts=... level=... msg=..." followed by
 * structured key=value fields. The level is tested before anything is
 * formatted. stdout is never used by the worker.
 */
#ifndef KM_LOG_H
#define KM_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern enum log_level log_threshold;

/* @returns 0 and sets the threshold from "error|warn|info|debug", or -1. */
int log_set_level(const char *name);

void log_write(enum log_level level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* A librdkafka log callback (rd_kafka_conf_set_log_cb) writing through
 * log_write: syslog levels 0-3 as error, 4 warn, 5-6 info, 7 debug. */
struct rd_kafka_s;
void log_rdkafka(const struct rd_kafka_s *rk, int level, const char *fac,
                 const char *buf);

/* The message is printf-formatted; put key=value fields in the format:
 *   LOG(LOG_WARN, "relay unhealthy relay=%s code=%d", url, code); */
#define LOG(level, ...)                                                        \
        do {                                                                   \
                if ((level) <= log_threshold)                                  \
                        log_write((level), __VA_ARGS__);                       \
        } while (0)

#endif
