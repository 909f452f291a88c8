#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum log_level log_threshold = LOG_INFO;

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

void log_write(enum log_level level, const char *fmt, ...) {
        char line[2048];
        struct timeval tv;
        struct tm tm;
        va_list ap;
        int n;

        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000),
                     log_names[level]);
        if (n < 0 || (size_t)n >= sizeof(line))
                return;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        /* Values from requests (an id with CR/LF, an escape sequence) must not
         * start a forged line or drive a terminal: control characters show as
         * '?'. */
        for (char *p = line + n; *p != '\0'; p++) {
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        *p = '?';
        }
        /* One write per line so concurrent workers' lines do not interleave. */
        fprintf(stderr, "%s\n", line);
}

void log_rdkafka(const struct rd_kafka_s *rk, int level, const char *fac,
                 const char *buf) {
        enum log_level l = level <= 3   ? LOG_ERROR
                           : level == 4 ? LOG_WARN
                           : level <= 6 ? LOG_INFO
                                        : LOG_DEBUG;

        (void)rk;
        LOG(l, "kafka fac=%s \"%s\"", fac, buf);
}
