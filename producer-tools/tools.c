#include "tools.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "kcause.h"
#include "props.h"

#define TOOL_METADATA_TIMEOUT_MS 10000

static const char *tool_prog = "mailer-tool";
static volatile sig_atomic_t tool_run = 1;

static int tool_quiet;
static int tool_fatal_seen;
static char tool_last_error[1024];

/* The first authentication, TLS or authorization error librdkafka
 * reported, which names the cause of later failures. */
static struct {
        rd_kafka_resp_err_t tc_err; /* NO_ERROR while none was seen */
        char tc_reason[512];
        char tc_mechanism[64]; /* sasl.mechanisms then */
} tool_cause;
static char tool_group[256]; /* the consumer's group.id, or "" */

static void tool_on_signal(int sig) {
        if (!tool_run)
                signal(sig, SIG_DFL);
        tool_run = 0;
}

void tool_set_name(const char *name) {
        tool_prog = name;
}

void tool_init(const char *name) {
        struct sigaction sa;

        tool_set_name(name);
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = tool_on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
}

const char *tool_name(void) {
        return tool_prog;
}

void tool_err(const char *fmt, ...) {
        char line[4096];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        fprintf(stderr, "%s: %s\n", tool_prog, line);
}

int tool_running(void) {
        return tool_run != 0;
}

int64_t tool_now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tool_parse_int(const char *s, long long min, long long max,
                   long long *out) {
        char *end = NULL;
        long long v;

        if (*s == '\0')
                return -1;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || *end != '\0' || v < min || v > max)
                return -1;
        *out = v;
        return 0;
}

int tool_parse_seconds(const char *s, int64_t *out_ms) {
        char *end = NULL;
        double v;

        if (*s == '\0')
                return -1;
        errno = 0;
        v = strtod(s, &end);
        /* Ten years is more than any tool should wait. */
        if (errno != 0 || *end != '\0' || !(v >= 0.0) || v > 315360000.0)
                return -1;
        *out_ms = (int64_t)llround(v * 1000.0);
        return 0;
}

/* Reads exactly n digits at *sp into *out and moves *sp past them.
 * @returns 0 or -1. */
static int tool_digits(const char **sp, int n, int *out) {
        int v = 0;

        for (int i = 0; i < n; i++) {
                if ((*sp)[i] < '0' || (*sp)[i] > '9')
                        return -1;
                v = v * 10 + ((*sp)[i] - '0');
        }
        *sp += n;
        *out = v;
        return 0;
}

/* @returns the days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t tool_days_from_civil(int y, int m, int d) {
        int64_t era;
        int64_t yoe;
        int64_t doy;

        y -= m <= 2;
        era = (y >= 0 ? y : y - 399) / 400;
        yoe = y - era * 400;
        doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

int tool_parse_time(const char *s, int64_t *out_ms) {
        static const int mdays[] = {31, 29, 31, 30, 31, 30,
                                    31, 31, 30, 31, 30, 31};
        int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
        int64_t off_min = 0;

        if (tool_digits(&s, 4, &y) == -1 || *s++ != '-' ||
            tool_digits(&s, 2, &mo) == -1 || *s++ != '-' ||
            tool_digits(&s, 2, &d) == -1)
                return -1;
        if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
            (mo == 2 && d == 29 &&
             (y % 4 != 0 || (y % 100 == 0 && y % 400 != 0))))
                return -1;
        if (*s != '\0') {
                if (*s != 'T' && *s != 't' && *s != ' ')
                        return -1;
                s++;
                if (tool_digits(&s, 2, &h) == -1 || *s++ != ':' ||
                    tool_digits(&s, 2, &mi) == -1 || *s++ != ':' ||
                    tool_digits(&s, 2, &sec) == -1 || h > 23 || mi > 59 ||
                    sec > 60)
                        return -1;
                if (*s == '.') {
                        int scale = 100;

                        s++;
                        if (*s < '0' || *s > '9')
                                return -1;
                        for (; *s >= '0' && *s <= '9'; s++, scale /= 10)
                                ms += (*s - '0') * scale;
                }
                if (*s == 'Z' || *s == 'z') {
                        s++;
                } else if (*s == '+' || *s == '-') {
                        int sign = *s++ == '-' ? -1 : 1;
                        int oh, om;

                        if (tool_digits(&s, 2, &oh) == -1 || *s++ != ':' ||
                            tool_digits(&s, 2, &om) == -1 || oh > 23 || om > 59)
                                return -1;
                        off_min = sign * (oh * 60 + om);
                } else {
                        return -1;
                }
                if (*s != '\0')
                        return -1;
        }
        *out_ms = ((tool_days_from_civil(y, mo, d) * 86400 + h * 3600 +
                    mi * 60 + sec - off_min * 60) *
                   1000) +
                  ms;
        return 0;
}

/*
 * Command-line options
 */

/* getopt_long()'s value for the long option of row i that has no short
 * one: above every char. */
#define TOOL_OPT_LONG_ONLY 256

static int tool_opt_has_value(enum tool_opt_kind kind) {
        return kind == TOOL_OPT_KIND_STRING || kind == TOOL_OPT_KIND_INT ||
               kind == TOOL_OPT_KIND_SECONDS || kind == TOOL_OPT_KIND_CALL;
}

/* @returns the row getopt_long() returned val for, or NULL ('?'). */
static const struct tool_opt *tool_opt_find(const struct tool_opt *opts,
                                            int val) {
        if (val >= TOOL_OPT_LONG_ONLY)
                return &opts[val - TOOL_OPT_LONG_ONLY];
        for (size_t i = 0; opts[i].to_kind != TOOL_OPT_KIND_END; i++) {
                if (opts[i].to_short == val)
                        return &opts[i];
        }
        return NULL;
}

/* Prints the row's to_err with value in place of its "%s". */
static void tool_opt_bad_value(const struct tool_opt *o, const char *value) {
        const char *at = strstr(o->to_err, "%s");

        if (at == NULL)
                tool_err("%s", o->to_err);
        else
                tool_err("%.*s%s%s", (int)(at - o->to_err), o->to_err, value,
                         at + 2);
}

/* Applies one option other than TOOL_OPT_HELP().
 * @returns 0, or -1 after printing why the value is wrong. */
static int tool_opt_apply(const struct tool_opt *o, const char *value) {
        switch (o->to_kind) {
        case TOOL_OPT_KIND_FLAG:
                *o->to_target.flag = 1;
                return 0;
        case TOOL_OPT_KIND_STRING:
                *o->to_target.str = value;
                return 0;
        case TOOL_OPT_KIND_INT:
                if (tool_parse_int(value, o->to_min, o->to_max,
                                   o->to_target.num) == 0)
                        return 0;
                break;
        case TOOL_OPT_KIND_SECONDS:
                if (tool_parse_seconds(value, o->to_target.ms) == 0)
                        return 0;
                break;
        case TOOL_OPT_KIND_CALL:
        case TOOL_OPT_KIND_ACTION:
                return o->to_call(value, o->to_target.arg);
        default:
                return 0;
        }
        tool_opt_bad_value(o, value);
        return -1;
}

enum tool_opts_result tool_opts_parse(int argc, char **argv,
                                      const struct tool_opt *opts,
                                      unsigned flags, void (*usage)(FILE *fp)) {
        struct option longopts[TOOL_OPTS_MAX + 1];
        /* "+", then "C:" for each row, then the NUL */
        char shortopts[1 + 2 * TOOL_OPTS_MAX + 1];
        size_t nlong = 0;
        size_t nshort = 0;
        int val;

        if (flags & TOOL_OPTS_IN_ORDER)
                shortopts[nshort++] = '+';
        for (size_t i = 0; opts[i].to_kind != TOOL_OPT_KIND_END; i++) {
                const struct tool_opt *o = &opts[i];
                int has_value = tool_opt_has_value(o->to_kind);

                if (i == TOOL_OPTS_MAX) {
                        tool_err("more than %d options", TOOL_OPTS_MAX);
                        return TOOL_OPTS_ERROR;
                }
                if (o->to_short != 0) {
                        shortopts[nshort++] = (char)o->to_short;
                        if (has_value)
                                shortopts[nshort++] = ':';
                }
                if (o->to_long != NULL) {
                        longopts[nlong].name = o->to_long;
                        longopts[nlong].has_arg =
                                has_value ? required_argument : no_argument;
                        longopts[nlong].flag = NULL;
                        longopts[nlong].val =
                                o->to_short != 0 ? o->to_short
                                                 : TOOL_OPT_LONG_ONLY + (int)i;
                        nlong++;
                }
        }
        shortopts[nshort] = '\0';
        memset(&longopts[nlong], 0, sizeof(longopts[nlong]));

        while ((val = getopt_long(argc, argv, shortopts, longopts, NULL)) !=
               -1) {
                const struct tool_opt *o = tool_opt_find(opts, val);

                if (o == NULL) {
                        usage(stderr);
                        return TOOL_OPTS_ERROR;
                }
                if (o->to_kind == TOOL_OPT_KIND_HELP) {
                        usage(stdout);
                        return TOOL_OPTS_HELP;
                }
                if (tool_opt_apply(o, optarg) == -1)
                        return TOOL_OPTS_ERROR;
        }
        if ((flags & TOOL_OPTS_NO_OPERANDS) && optind < argc) {
                tool_err("unexpected argument: %s", argv[optind]);
                usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        return TOOL_OPTS_RUN;
}

int tool_opt_bootstrap(const char *value, void *arg) {
        return tool_conf_set(arg, "-b", "bootstrap.servers", value);
}

int tool_opt_property(const char *value, void *arg) {
        return tool_conf_set_kv(arg, value);
}

/* props_read_file()'s callback for -F: sets one property of the
 * rd_kafka_conf_t @arg; <secret>.file=PATH sets <secret> to PATH's first
 * line. */
static int tool_props_set(const char *key, const char *value,
                          const char *source, void *arg, char *errstr,
                          size_t errstr_size) {
        char prop[256];
        char secret[PROPS_SECRET_MAX + 2];
        char why[512];
        size_t len = props_secret_file_key(key);
        int r = -1;

        secret[0] = '\0';
        if (len > 0) {
                memcpy(prop, key, len);
                prop[len] = '\0';
                if (props_read_secret(key, value, secret, sizeof(secret), why,
                                      sizeof(why)) == -1) {
                        snprintf(errstr, errstr_size, "%s: %s", source, why);
                        goto out;
                }
                key = prop;
                value = secret;
        }
        if (rd_kafka_conf_set(arg, key, value, why, sizeof(why)) !=
            RD_KAFKA_CONF_OK) {
                if (props_is_secret(key) && strstr(why, value) != NULL)
                        snprintf(why, sizeof(why), "invalid value (not shown)");
                snprintf(errstr, errstr_size, "%s: %s: %s", source, key, why);
                goto out;
        }
        r = 0;

out:
        explicit_bzero(secret, sizeof(secret));
        return r;
}

int tool_opt_properties_file(const char *value, void *arg) {
        char errstr[1024];

        if (props_read_file(value, tool_props_set, arg, errstr,
                            sizeof(errstr)) == -1) {
                tool_err("-F %s", errstr);
                return -1;
        }
        return 0;
}

/*
 * librdkafka
 */

/* Notes @err with @reason as the cause of later failures when it is the
 * first authentication, TLS or authorization error. */
static void tool_cause_note(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            const char *reason) {
        enum kcause c = kcause_of(err);
        size_t size = sizeof(tool_cause.tc_mechanism);

        if (tool_cause.tc_err != RD_KAFKA_RESP_ERR_NO_ERROR ||
            c == KCAUSE_NONE || c == KCAUSE_TRANSPORT)
                return;
        tool_cause.tc_err = err;
        snprintf(tool_cause.tc_reason, sizeof(tool_cause.tc_reason), "%s",
                 reason);
        if (rd_kafka_conf_get(rd_kafka_conf(rk), "sasl.mechanisms",
                              tool_cause.tc_mechanism,
                              &size) != RD_KAFKA_CONF_OK)
                tool_cause.tc_mechanism[0] = '\0';
}

/* Runs on librdkafka's threads; only writes to stderr and simple flags. */
static void tool_error_cb(rd_kafka_t *rk, int err, const char *reason,
                          void *opaque) {
        (void)opaque;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                char fatal[256];
                rd_kafka_resp_err_t ferr;

                ferr = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
                snprintf(tool_last_error, sizeof(tool_last_error),
                         "fatal error: %s: %s", rd_kafka_err2name(ferr), fatal);
                tool_fatal_seen = 1;
                tool_cause_note(rk, ferr, fatal);
        } else {
                snprintf(tool_last_error, sizeof(tool_last_error), "%s: %s",
                         rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
                tool_cause_note(rk, (rd_kafka_resp_err_t)err, reason);
        }
        if (!tool_quiet)
                fprintf(stderr, "%s: kafka: %s\n", tool_prog, tool_last_error);
}

/* Errors also arrive on the error callback; only warnings and worse that
 * are not the log twin of an error are printed. */
static void tool_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                        const char *buf) {
        (void)rk;
        if (tool_quiet || level > LOG_WARNING)
                return;
        if (strcmp(fac, "FAIL") == 0 || strcmp(fac, "ERROR") == 0)
                return;
        fprintf(stderr, "%s: librdkafka: %s: %s\n", tool_prog, fac, buf);
}

int tool_conf_set(rd_kafka_conf_t *conf, const char *what, const char *name,
                  const char *value) {
        char errstr[512];

        if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK) {
                tool_err("%s: %s", what, errstr);
                return -1;
        }
        return 0;
}

rd_kafka_conf_t *tool_conf_new(void) {
        rd_kafka_conf_t *conf;

        conf = rd_kafka_conf_new();
        if (tool_conf_set(conf, "bootstrap", "bootstrap.servers",
                          TOOL_DEFAULT_BOOTSTRAP) == -1 ||
            tool_conf_set(conf, "client.id", "client.id", tool_prog) == -1) {
                rd_kafka_conf_destroy(conf);
                return NULL;
        }
        rd_kafka_conf_set_error_cb(conf, tool_error_cb);
        rd_kafka_conf_set_log_cb(conf, tool_log_cb);
        return conf;
}

int tool_conf_set_kv(rd_kafka_conf_t *conf, const char *kv) {
        char name[256];
        const char *eq;
        size_t len;
        char what[300];

        eq = strchr(kv, '=');
        if (eq == NULL || eq == kv) {
                tool_err("-X %s: expected property=value", kv);
                return -1;
        }
        len = (size_t)(eq - kv);
        if (len >= sizeof(name)) {
                tool_err("-X %s: property name too long", kv);
                return -1;
        }
        memcpy(name, kv, len);
        name[len] = '\0';
        snprintf(what, sizeof(what), "-X %s", name);
        return tool_conf_set(conf, what, name, eq + 1);
}

rd_kafka_t *tool_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t **confp) {
        char errstr[512];
        rd_kafka_t *rk;

        if (type == RD_KAFKA_CONSUMER) {
                size_t size = sizeof(tool_group);

                if (rd_kafka_conf_get(*confp, "group.id", tool_group, &size) !=
                    RD_KAFKA_CONF_OK)
                        tool_group[0] = '\0';
        }
        rk = rd_kafka_new(type, *confp, errstr, sizeof(errstr));
        if (rk == NULL) {
                tool_err("cannot create the Kafka client: %s", errstr);
                return NULL;
        }
        *confp = NULL; /* now owned by rk */
        return rk;
}

void tool_kafka_set_quiet(int quiet) {
        tool_quiet = quiet;
}

const char *tool_kafka_last_error(void) {
        return tool_last_error;
}

int tool_kafka_fatal(void) {
        return tool_fatal_seen;
}

/* What to check for a SASL mechanism's refusal. */
static const char *tool_sasl_hint(const char *mechanism) {
        if (strcmp(mechanism, "OAUTHBEARER") == 0)
                return "check the sasl.oauthbearer.* settings";
        if (strcmp(mechanism, "GSSAPI") == 0)
                return "check sasl.kerberos.principal and the keytab";
        return "check sasl.username and sasl.password";
}

/* Writes the words for error @err of cause @c (authentication, TLS or
 * authorization) with librdkafka's @reason to @buf; @op and @topic as for
 * tool_kafka_why(). */
static void tool_cause_text(enum kcause c, rd_kafka_resp_err_t err,
                            const char *reason, const char *mechanism,
                            const char *op, const char *topic, char *buf,
                            size_t size) {
        char what[384];

        if (c == KCAUSE_AUTHENTICATION) {
                snprintf(buf, size, "authentication failed (SASL%s%s: %s): %s",
                         *mechanism != '\0' ? "/" : "", mechanism,
                         tool_sasl_hint(mechanism), reason);
                return;
        }
        if (c == KCAUSE_TLS) {
                if (strstr(reason, "certificate verify failed") != NULL ||
                    strstr(reason, "unable to get local issuer") != NULL ||
                    strstr(reason, "self-signed") != NULL ||
                    strstr(reason, "self signed") != NULL)
                        snprintf(buf, size,
                                 "TLS: the broker's certificate is not trusted "
                                 "(ssl.ca.location): %s",
                                 reason);
                else
                        snprintf(buf, size,
                                 "TLS: the handshake failed (check "
                                 "security.protocol and the ssl.* settings): "
                                 "%s",
                                 reason);
                return;
        }
        switch (err) {
        case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
                snprintf(what, sizeof(what), "group %s",
                         tool_group[0] != '\0' ? tool_group : "(group.id)");
                break;
        case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
                snprintf(what, sizeof(what), "the cluster");
                break;
        case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                snprintf(what, sizeof(what), "the transactional id");
                break;
        default:
                snprintf(what, sizeof(what), "topic %s",
                         topic != NULL ? topic : "(unknown)");
                break;
        }
        snprintf(buf, size, "not authorized: %s%son %s (missing ACL): %s",
                 op != NULL ? op : "", op != NULL ? " " : "", what, reason);
}

const char *tool_kafka_why(rd_kafka_resp_err_t err, const char *reason,
                           const char *op, const char *topic) {
        static char buf[1024];
        enum kcause c = kcause_of(err);

        if (reason == NULL)
                reason = rd_kafka_err2str(err);
        if (c != KCAUSE_NONE && c != KCAUSE_TRANSPORT) {
                tool_cause_text(c, err, reason, tool_cause.tc_mechanism, op,
                                topic, buf, sizeof(buf));
        } else if (tool_cause.tc_err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_cause_text(kcause_of(tool_cause.tc_err), tool_cause.tc_err,
                                tool_cause.tc_reason, tool_cause.tc_mechanism,
                                op, topic, buf, sizeof(buf));
        } else {
                snprintf(buf, sizeof(buf), "%s", reason);
        }
        return buf;
}

const char *tool_consume_why(const rd_kafka_message_t *rkm) {
        return tool_kafka_why(rkm->err, rd_kafka_message_errstr(rkm), "Read",
                              rkm->rkt != NULL ? rd_kafka_topic_name(rkm->rkt)
                                               : NULL);
}

const char *tool_delivery_why(const rd_kafka_message_t *rkm) {
        return tool_kafka_why(rkm->err, NULL, "Write",
                              rkm->rkt != NULL ? rd_kafka_topic_name(rkm->rkt)
                                               : NULL);
}

const char *tool_kafka_cause_note(void) {
        static char buf[1040];
        const char *cause = tool_kafka_cause();

        snprintf(buf, sizeof(buf), "%s%s", *cause != '\0' ? ": " : "", cause);
        return buf;
}

int tool_timeout_exit(void) {
        return *tool_kafka_cause() != '\0' ? TOOL_EXIT_KAFKA : TOOL_EXIT_INPUT;
}

const char *tool_kafka_cause(void) {
        static char buf[1024];

        if (tool_cause.tc_err == RD_KAFKA_RESP_ERR_NO_ERROR)
                return "";
        tool_cause_text(kcause_of(tool_cause.tc_err), tool_cause.tc_err,
                        tool_cause.tc_reason, tool_cause.tc_mechanism, NULL,
                        NULL, buf, sizeof(buf));
        return buf;
}

/* Queries the metadata of @rkt for up to @timeout_ms, serving the
 * callbacks of @rk every second, so that a refused login or handshake ends
 * the wait early. Only for a handle that is not consuming yet.
 * @returns as rd_kafka_metadata(). */
static rd_kafka_resp_err_t tool_metadata(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                                         int timeout_ms,
                                         const struct rd_kafka_metadata **mdp) {
        int64_t deadline = tool_now_ms() + timeout_ms;
        rd_kafka_resp_err_t err;

        for (;;) {
                int64_t left = deadline - tool_now_ms();

                err = rd_kafka_metadata(rk, 0, rkt, mdp,
                                        left > 1000 ? 1000
                                        : left > 0  ? (int)left
                                                    : 0);
                if (err != RD_KAFKA_RESP_ERR__TIMED_OUT &&
                    err != RD_KAFKA_RESP_ERR__TRANSPORT)
                        return err;
                rd_kafka_poll(rk, 0);
                if (tool_cause.tc_err != RD_KAFKA_RESP_ERR_NO_ERROR ||
                    tool_now_ms() >= deadline || !tool_running())
                        return err;
        }
}

static int tool_cmp_i32(const void *a, const void *b) {
        int32_t x = *(const int32_t *)a;
        int32_t y = *(const int32_t *)b;

        return (x > y) - (x < y);
}

rd_kafka_resp_err_t tool_topic_partitions(rd_kafka_t *rk, const char *topic,
                                          int timeout_ms, int32_t **partsp,
                                          int *cntp, char *errstr,
                                          size_t errstr_size) {
        const struct rd_kafka_metadata *md = NULL;
        const rd_kafka_metadata_topic_t *mt;
        rd_kafka_topic_t *rkt;
        rd_kafka_resp_err_t err;
        int32_t *parts = NULL;

        rkt = rd_kafka_topic_new(rk, topic, NULL);
        if (rkt == NULL) {
                err = rd_kafka_last_error();
                snprintf(errstr, errstr_size, "topic %s: %s", topic,
                         rd_kafka_err2str(err));
                return err;
        }
        err = tool_metadata(rk, rkt, timeout_ms, &md);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                snprintf(errstr, errstr_size,
                         "cannot reach Kafka (metadata for topic %s): %s",
                         topic, tool_kafka_why(err, NULL, "Describe", topic));
                goto out;
        }
        if (md->topic_cnt != 1 || strcmp(md->topics[0].topic, topic) != 0) {
                err = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
                snprintf(errstr, errstr_size,
                         "metadata for topic %s has no such topic", topic);
                goto out;
        }
        mt = &md->topics[0];
        if (mt->err == RD_KAFKA_RESP_ERR_NO_ERROR && mt->partition_cnt == 0)
                err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        else
                err = mt->err;
        if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
                snprintf(errstr, errstr_size, "topic %s does not exist", topic);
                goto out;
        }
        if (kcause_of(err) == KCAUSE_AUTHORIZATION) {
                snprintf(errstr, errstr_size, "%s",
                         tool_kafka_why(err, NULL, "Describe", topic));
                goto out;
        }
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                snprintf(errstr, errstr_size, "topic %s: %s", topic,
                         rd_kafka_err2str(err));
                goto out;
        }
        parts = calloc((size_t)mt->partition_cnt, sizeof(*parts));
        if (parts == NULL) {
                err = RD_KAFKA_RESP_ERR__FAIL;
                snprintf(errstr, errstr_size, "out of memory");
                goto out;
        }
        for (int i = 0; i < mt->partition_cnt; i++)
                parts[i] = mt->partitions[i].id;
        qsort(parts, (size_t)mt->partition_cnt, sizeof(*parts), tool_cmp_i32);
        *partsp = parts;
        *cntp = mt->partition_cnt;
        parts = NULL;
out:
        free(parts);
        if (md != NULL)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return err;
}

int tool_consume_err_is_fatal(rd_kafka_resp_err_t err) {
        switch (err) {
        case RD_KAFKA_RESP_ERR__FATAL:
        case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
        case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
        case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        case RD_KAFKA_RESP_ERR__INVALID_ARG:
                return 1;
        default:
                return 0;
        }
}

rd_kafka_t *tool_producer_new(rd_kafka_conf_t **confp,
                              void (*dr_cb)(rd_kafka_t *rk,
                                            const rd_kafka_message_t *rkm,
                                            void *opaque),
                              void *opaque, const char *topic, int *part_cntp) {
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        rd_kafka_t *rk;

        rd_kafka_conf_set_opaque(*confp, opaque);
        rd_kafka_conf_set_dr_msg_cb(*confp, dr_cb);
        rk = tool_kafka_new(RD_KAFKA_PRODUCER, confp);
        if (rk == NULL)
                return NULL;
        if (tool_topic_partitions(rk, topic, TOOL_METADATA_TIMEOUT_MS, &parts,
                                  &cnt, errstr, sizeof(errstr)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("%s", errstr);
                rd_kafka_destroy(rk);
                return NULL;
        }
        free(parts);
        if (part_cntp != NULL)
                *part_cntp = cnt;
        return rk;
}

int tool_delivery_count(struct tool_deliveries *td, rd_kafka_resp_err_t err) {
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                td->td_delivered++;
                return 0;
        }
        td->td_failed++;
        if (td->td_failed <= TOOL_FAILURES_SHOWN)
                return 1;
        if (td->td_failed == TOOL_FAILURES_SHOWN + 1)
                tool_err("more delivery failures; only counting them now");
        return 0;
}

int tool_producer_drain(rd_kafka_t *rk, int step_ms,
                        void (*progress)(void *arg), void *arg) {
        while (rd_kafka_outq_len(rk) > 0 && tool_running()) {
                rd_kafka_flush(rk, step_ms);
                if (progress != NULL)
                        progress(arg);
        }
        /* Interrupted: a last short chance for what is in flight. */
        if (rd_kafka_outq_len(rk) > 0)
                rd_kafka_flush(rk, 2000);
        return rd_kafka_outq_len(rk);
}

/*
 * End offsets
 */

int tool_ends_init(rd_kafka_t *rk, struct tool_ends *te, const char *topic,
                   const int32_t *parts, int cnt, int timeout_ms) {
        rd_kafka_resp_err_t err;

        te->te_topic = topic;
        te->te_cnt = parts[cnt - 1] + 1;
        te->te_end = calloc((size_t)te->te_cnt, sizeof(*te->te_end));
        te->te_reached = calloc((size_t)te->te_cnt, 1);
        if (te->te_end == NULL || te->te_reached == NULL) {
                tool_err("out of memory");
                return TOOL_EXIT_INPUT;
        }
        /* Ids missing from the listing (never seen in practice) are done. */
        memset(te->te_reached, 1, (size_t)te->te_cnt);
        for (int i = 0; i < cnt; i++) {
                int64_t lo = 0;
                int64_t hi = 0;

                err = RD_KAFKA_RESP_ERR_NO_ERROR;
                for (int attempt = 0; attempt < 20; attempt++) {
                        err = rd_kafka_query_watermark_offsets(
                                rk, topic, parts[i], &lo, &hi, timeout_ms);
                        if (err != RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
                            err != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
                                break;
                        rd_kafka_poll(rk, 250);
                }
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("%s [%" PRId32 "]: cannot get offsets: %s",
                                 topic, parts[i],
                                 tool_kafka_why(err, NULL, "Describe", topic));
                        return TOOL_EXIT_KAFKA;
                }
                te->te_end[parts[i]] = hi;
                if (hi > lo) {
                        te->te_reached[parts[i]] = 0;
                        te->te_pending++;
                }
        }
        return TOOL_EXIT_OK;
}

void tool_ends_mark(struct tool_ends *te, int32_t partition,
                    int64_t next_offset) {
        if (partition < 0 || partition >= te->te_cnt ||
            te->te_reached[partition] || next_offset < te->te_end[partition])
                return;
        te->te_reached[partition] = 1;
        te->te_pending--;
}

void tool_ends_destroy(struct tool_ends *te) {
        free(te->te_end);
        free(te->te_reached);
        te->te_end = NULL;
        te->te_reached = NULL;
}

/*
 * JSON-lines reader
 */

#define TOOL_LINES_CHUNK (64 * 1024)

struct tool_lines {
        int tl_fd;
        int tl_owned; /* tl_fd is ours to close */
        char *tl_name;
        char *tl_buf;
        size_t tl_cap;
        size_t tl_start; /* unconsumed data is tl_buf[tl_start..tl_end) */
        size_t tl_end;
        size_t tl_scanned; /* bytes after tl_start known to hold no '\n' */
        size_t tl_max;
        unsigned long tl_lineno;
        int tl_eof;
        int tl_discarding; /* inside a line that is too long */
};

struct tool_lines *tool_lines_open(const char *path, size_t max_line,
                                   char *errstr, size_t errstr_size) {
        struct tool_lines *tl;

        tl = calloc(1, sizeof(*tl));
        if (tl == NULL)
                goto nomem;
        tl->tl_max = max_line;
        tl->tl_cap = TOOL_LINES_CHUNK;
        tl->tl_buf = malloc(tl->tl_cap);
        if (tl->tl_buf == NULL)
                goto nomem;
        if (path == NULL || strcmp(path, "-") == 0) {
                tl->tl_fd = STDIN_FILENO;
                tl->tl_name = strdup("<stdin>");
        } else {
                tl->tl_name = strdup(path);
                tl->tl_fd = open(path, O_RDONLY | O_CLOEXEC);
                if (tl->tl_fd == -1) {
                        snprintf(errstr, errstr_size, "%s: %s", path,
                                 strerror(errno));
                        goto fail;
                }
                tl->tl_owned = 1;
        }
        if (tl->tl_name == NULL)
                goto nomem;
        return tl;

nomem:
        snprintf(errstr, errstr_size, "out of memory");
fail:
        tool_lines_destroy(tl);
        return NULL;
}

void tool_lines_destroy(struct tool_lines *tl) {
        if (tl == NULL)
                return;
        if (tl->tl_owned)
                close(tl->tl_fd);
        free(tl->tl_name);
        free(tl->tl_buf);
        free(tl);
}

/* Makes room for more input: moves unconsumed data to the front, grows the
 * buffer up to what a line of the maximum length needs.
 * @returns 0, or -1 if out of memory. */
static int tool_lines_make_room(struct tool_lines *tl) {
        size_t used = tl->tl_end - tl->tl_start;
        size_t want;
        char *nbuf;

        if (tl->tl_start > 0) {
                memmove(tl->tl_buf, tl->tl_buf + tl->tl_start, used);
                tl->tl_start = 0;
                tl->tl_end = used;
        }
        if (tl->tl_end < tl->tl_cap)
                return 0;
        want = tl->tl_cap * 2;
        if (want > tl->tl_max + TOOL_LINES_CHUNK)
                want = tl->tl_max + TOOL_LINES_CHUNK;
        if (want <= tl->tl_cap)
                return 0;
        nbuf = realloc(tl->tl_buf, want);
        if (nbuf == NULL)
                return -1;
        tl->tl_buf = nbuf;
        tl->tl_cap = want;
        return 0;
}

enum tool_line_status tool_lines_next(struct tool_lines *tl, const char **linep,
                                      size_t *lenp) {
        for (;;) {
                char *start = tl->tl_buf + tl->tl_start;
                size_t avail = tl->tl_end - tl->tl_start;
                char *nl = NULL;
                size_t len;
                ssize_t n;

                if (tl->tl_scanned < avail)
                        nl = memchr(start + tl->tl_scanned, '\n',
                                    avail - tl->tl_scanned);
                if (nl != NULL || (tl->tl_eof && avail > 0)) {
                        len = nl != NULL ? (size_t)(nl - start) : avail;
                        tl->tl_start += nl != NULL ? len + 1 : len;
                        tl->tl_scanned = 0;
                        tl->tl_lineno++;
                        if (tl->tl_discarding) {
                                tl->tl_discarding = 0;
                                return TOOL_LINE_TOO_LONG;
                        }
                        if (len > 0 && start[len - 1] == '\r')
                                len--;
                        if (len > tl->tl_max)
                                return TOOL_LINE_TOO_LONG;
                        *linep = start;
                        *lenp = len;
                        return TOOL_LINE_OK;
                }
                if (tl->tl_eof) {
                        if (tl->tl_discarding) {
                                tl->tl_discarding = 0;
                                tl->tl_lineno++;
                                return TOOL_LINE_TOO_LONG;
                        }
                        return TOOL_LINE_EOF;
                }
                tl->tl_scanned = avail;
                /* The line so far is longer than allowed (one more byte for
                 * a '\r'): drop it and skip to its end. */
                if (avail > tl->tl_max + 1) {
                        tl->tl_discarding = 1;
                        tl->tl_start = 0;
                        tl->tl_end = 0;
                        tl->tl_scanned = 0;
                }
                if (tool_lines_make_room(tl) == -1) {
                        errno = ENOMEM;
                        return TOOL_LINE_ERROR;
                }
                /* read(2), not fread(): a line from a pipe is handled as
                 * soon as it arrives, not when a whole buffer is full. */
                n = read(tl->tl_fd, tl->tl_buf + tl->tl_end,
                         tl->tl_cap - tl->tl_end);
                if (n == -1 && errno == EINTR) {
                        /* A signal: go on, or stop if the tool stops. */
                        if (tool_running())
                                continue;
                        return TOOL_LINE_EOF;
                }
                if (n == -1)
                        return TOOL_LINE_ERROR;
                if (n == 0)
                        tl->tl_eof = 1;
                tl->tl_end += (size_t)n;
        }
}

unsigned long tool_lines_lineno(const struct tool_lines *tl) {
        return tl->tl_lineno;
}

const char *tool_lines_name(const struct tool_lines *tl) {
        return tl->tl_name;
}

/*
 * String set: open addressing with linear probing, FNV-1a hashes.
 */

struct tool_idset_slot {
        uint64_t ts_hash;
        char *ts_id; /* NULL: empty slot; NUL-terminated copy */
        size_t ts_len;
        unsigned ts_times;
};

struct tool_idset {
        struct tool_idset_slot *is_slots;
        size_t is_cap; /* power of two */
        size_t is_cnt;
};

static uint64_t tool_hash(const char *s, size_t len) {
        uint64_t h = 1469598103934665603ULL;

        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char)s[i];
                h *= 1099511628211ULL;
        }
        return h;
}

struct tool_idset *tool_idset_new(void) {
        struct tool_idset *set;

        set = calloc(1, sizeof(*set));
        if (set == NULL)
                return NULL;
        set->is_cap = 1024;
        set->is_slots = calloc(set->is_cap, sizeof(*set->is_slots));
        if (set->is_slots == NULL) {
                free(set);
                return NULL;
        }
        return set;
}

void tool_idset_destroy(struct tool_idset *set) {
        if (set == NULL)
                return;
        for (size_t i = 0; i < set->is_cap; i++)
                free(set->is_slots[i].ts_id);
        free(set->is_slots);
        free(set);
}

static int tool_idset_grow(struct tool_idset *set) {
        size_t ncap = set->is_cap * 2;
        struct tool_idset_slot *nslots;

        nslots = calloc(ncap, sizeof(*nslots));
        if (nslots == NULL)
                return -1;
        for (size_t i = 0; i < set->is_cap; i++) {
                struct tool_idset_slot *s = &set->is_slots[i];
                size_t j;

                if (s->ts_id == NULL)
                        continue;
                j = (size_t)s->ts_hash & (ncap - 1);
                while (nslots[j].ts_id != NULL)
                        j = (j + 1) & (ncap - 1);
                nslots[j] = *s;
        }
        free(set->is_slots);
        set->is_slots = nslots;
        set->is_cap = ncap;
        return 0;
}

/* @returns the slot holding id[0..len) with hash h, or the empty slot where
 * it would go. */
static struct tool_idset_slot *tool_idset_slot(const struct tool_idset *set,
                                               uint64_t h, const char *id,
                                               size_t len) {
        size_t i = (size_t)h & (set->is_cap - 1);

        for (;;) {
                struct tool_idset_slot *s = &set->is_slots[i];

                if (s->ts_id == NULL || (s->ts_hash == h && s->ts_len == len &&
                                         memcmp(s->ts_id, id, len) == 0))
                        return s;
                i = (i + 1) & (set->is_cap - 1);
        }
}

int tool_idset_add(struct tool_idset *set, const char *id, size_t len) {
        uint64_t h = tool_hash(id, len);
        struct tool_idset_slot *s;
        char *copy;

        /* Keep the load factor under 7/10. */
        if ((set->is_cnt + 1) * 10 >= set->is_cap * 7 &&
            tool_idset_grow(set) == -1)
                return -1;
        s = tool_idset_slot(set, h, id, len);
        if (s->ts_id != NULL) {
                s->ts_times++;
                return 0;
        }
        copy = malloc(len + 1);
        if (copy == NULL)
                return -1;
        memcpy(copy, id, len);
        copy[len] = '\0';
        s->ts_hash = h;
        s->ts_id = copy;
        s->ts_len = len;
        s->ts_times = 1;
        set->is_cnt++;
        return 1;
}

size_t tool_idset_count(const struct tool_idset *set) {
        return set->is_cnt;
}

unsigned tool_idset_times(const struct tool_idset *set, const char *id,
                          size_t len) {
        const struct tool_idset_slot *s;

        s = tool_idset_slot(set, tool_hash(id, len), id, len);
        return s->ts_id != NULL ? s->ts_times : 0;
}

int tool_idset_next(const struct tool_idset *set, size_t *pos, const char **idp,
                    unsigned *timesp) {
        while (*pos < set->is_cap) {
                const struct tool_idset_slot *s = &set->is_slots[(*pos)++];

                if (s->ts_id == NULL)
                        continue;
                *idp = s->ts_id;
                *timesp = s->ts_times;
                return 1;
        }
        return 0;
}

/*
 * Percentiles
 */

static int tool_cmp_i64(const void *a, const void *b) {
        int64_t x = *(const int64_t *)a;
        int64_t y = *(const int64_t *)b;

        return (x > y) - (x < y);
}

void tool_sort_i64(int64_t *v, size_t n) {
        if (n > 1)
                qsort(v, n, sizeof(*v), tool_cmp_i64);
}

int64_t tool_percentile(const int64_t *sorted, size_t n, double p) {
        double rank;
        size_t idx;

        if (n == 0)
                return 0;
        if (p <= 0.0)
                return sorted[0];
        /* The epsilon keeps 90% of 10 at rank 9 despite rounding. */
        rank = ceil(p * (double)n / 100.0 - 1e-9);
        if (rank < 1.0)
                rank = 1.0;
        idx = (size_t)rank - 1;
        if (idx >= n)
                idx = n - 1;
        return sorted[idx];
}

int tool_consumer_finish(rd_kafka_t *rk, int consuming, rd_kafka_conf_t *conf,
                         rd_kafka_topic_partition_list_t *tpl, int rc) {
        rd_kafka_resp_err_t err;

        if (fflush(stdout) == EOF && rc == TOOL_EXIT_OK) {
                tool_err("stdout: %s", strerror(errno));
                rc = TOOL_EXIT_INPUT;
        }
        if (rk != NULL) {
                if (consuming) {
                        err = rd_kafka_consumer_close(rk);
                        if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
                                tool_err("close: %s", rd_kafka_err2str(err));
                }
                rd_kafka_destroy(rk);
        }
        if (conf != NULL)
                rd_kafka_conf_destroy(conf);
        if (tpl != NULL)
                rd_kafka_topic_partition_list_destroy(tpl);
        return rc;
}
