/*
 * tools: code shared by the command-line tools in producer-tools/
 * (mailer-produce, mailer-results, mailer-admin, mailer-audit,
 * mailer-replay, mailer-loadgen). The drivers in tests/tools/ use its messages and option
 * table too (tool_set_name(), tool_opts_parse()).
 *
 * A tool calls tool_init() first. Messages go to stderr prefixed with the
 * tool's name; stdout carries only the tool's output. Exit codes are the same
 * for every tool (enum tool_exit).
 *
 * The tools are single-threaded; the only state kept here is the tool's name,
 * the signal flag and the librdkafka error/log settings, which is fine for a
 * CLI and is why this is not part of kmcore.
 */
#ifndef KM_TOOLS_H
#define KM_TOOLS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

enum tool_exit {
        TOOL_EXIT_OK = 0, /* done */
        TOOL_EXIT_INPUT = 1, /* usage, bad input, timeout, condition not met */
        TOOL_EXIT_KAFKA = 2, /* Kafka error: broker, topic, delivery */
};

#define TOOL_DEFAULT_BOOTSTRAP "127.0.0.1:9092"

/* Sets the name used as the prefix of messages and installs SIGINT/SIGTERM
 * handlers that only clear the flag read by tool_running(). A second signal
 * restores the default action, so a third one kills the tool. */
void tool_init(const char *name);

/* Sets only the name, for a program that keeps the default signal actions
 * and uses no more than the messages and the option table. */
void tool_set_name(const char *name);

const char *tool_name(void);

/* Prints "<tool>: <message>\n" on stderr. */
void tool_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* @returns 0 once SIGINT or SIGTERM was received, else 1. */
int tool_running(void);

/* @returns a monotonic clock in milliseconds. */
int64_t tool_now_ms(void);

/* Parses a whole decimal integer in [min, max].
 * @returns 0 and sets *out, or -1 (nothing printed). */
int tool_parse_int(const char *s, long long min, long long max, long long *out);

/* Parses a non-negative number of seconds ("2", "0.5") into milliseconds.
 * @returns 0 and sets *out_ms, or -1 (nothing printed). */
int tool_parse_seconds(const char *s, int64_t *out_ms);

/* Parses an RFC 3339 date-time ("2026-11-28T10:00:00Z",
 * "2026-11-28T11:00:00.250+01:00"; 't' or a space may stand for 'T', and
 * fractions are cut to milliseconds) or a date alone ("2026-11-28", midnight
 * UTC) into Unix milliseconds.
 * @returns 0 and sets *out_ms, or -1 (nothing printed). */
int tool_parse_time(const char *s, int64_t *out_ms);

/*
 * Command-line options. A tool lists its options in a table, one row an
 * option made by the TOOL_OPT_*() macros below and TOOL_OPT_END last, and
 * tool_opts_parse() applies them to the rows' targets, with getopt_long()'s
 * rules and messages. In a row, lname is the NAME of --NAME or NULL, sname
 * the C of -C or 0.
 */

enum tool_opt_kind {
        TOOL_OPT_KIND_END,
        TOOL_OPT_KIND_FLAG,
        TOOL_OPT_KIND_STRING,
        TOOL_OPT_KIND_INT,
        TOOL_OPT_KIND_SECONDS,
        TOOL_OPT_KIND_CALL,
        TOOL_OPT_KIND_ACTION,
        TOOL_OPT_KIND_HELP,
};

struct tool_opt {
        const char *to_long;
        int to_short;
        enum tool_opt_kind to_kind;
        union {
                int *flag;
                const char **str;
                long long *num;
                int64_t *ms;
                void *arg;
        } to_target;
        long long to_min; /* TOOL_OPT_INT() */
        long long to_max; /* TOOL_OPT_INT() */
        /* The message printed for a bad value, in which "%s" stands for the
         * value (TOOL_OPT_INT(), TOOL_OPT_SECONDS()). */
        const char *to_err;
        /* Applies the option (TOOL_OPT_CALL(), TOOL_OPT_ACTION()).
         * @returns 0, or -1 after printing why the value is wrong. */
        int (*to_call)(const char *value, void *arg);
};

/* No value; sets *target (int) to 1. */
#define TOOL_OPT_FLAG(lname, sname, target)                                    \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_FLAG, .to_target.flag = (target)      \
        }

/* *target (const char *) = the value, which stays in argv. */
#define TOOL_OPT_STRING(lname, sname, target)                                  \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_STRING, .to_target.str = (target)     \
        }

/* *target (long long) = the value, a whole decimal number in [min, max]
 * (tool_parse_int()); else err is printed. */
#define TOOL_OPT_INT(lname, sname, target, min, max, err)                      \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_INT, .to_target.num = (target),       \
                .to_min = (min), .to_max = (max), .to_err = (err)              \
        }

/* *target (int64_t) = the value, seconds ("2", "0.5"), in milliseconds
 * (tool_parse_seconds()); else err is printed. */
#define TOOL_OPT_SECONDS(lname, sname, target, err)                            \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_SECONDS, .to_target.ms = (target),    \
                .to_err = (err)                                                \
        }

/* call(the value, data). */
#define TOOL_OPT_CALL(lname, sname, call, data)                                \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_CALL, .to_target.arg = (data),        \
                .to_call = (call)                                              \
        }

/* No value; call(NULL, data). */
#define TOOL_OPT_ACTION(lname, sname, call, data)                              \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_ACTION, .to_target.arg = (data),      \
                .to_call = (call)                                              \
        }

/* No value; prints the usage on stdout and stops (TOOL_OPTS_HELP). */
#define TOOL_OPT_HELP(lname, sname)                                            \
        {                                                                      \
                .to_long = (lname), .to_short = (sname),                       \
                .to_kind = TOOL_OPT_KIND_HELP                                  \
        }

#define TOOL_OPT_END                                                           \
        { .to_kind = TOOL_OPT_KIND_END }

/* The most rows a table may have, TOOL_OPT_END aside. */
#define TOOL_OPTS_MAX 32

/* tool_opts_parse() flag: stop at the first argument that is not an option
 * (getopt's "+"), as before a command and its own arguments. */
#define TOOL_OPTS_IN_ORDER 0x1
/* tool_opts_parse() flag: the tool takes no operands: one left over is a
 * usage error ("unexpected argument: X"). */
#define TOOL_OPTS_NO_OPERANDS 0x2

/* What tool_opts_parse() found. */
enum tool_opts_result {
        TOOL_OPTS_RUN, /* every option applied: go on */
        TOOL_OPTS_HELP, /* the usage is on stdout: exit TOOL_EXIT_OK */
        TOOL_OPTS_ERROR, /* why is on stderr: exit with a usage error */
};

/* Applies the options of argv from optind on, as opts lists them, in the
 * order they come; a bad value stops at once. getopt_long() reports an
 * unknown option or a missing value, then usage(stderr) is printed.
 * Without TOOL_OPTS_IN_ORDER the arguments that are not options are moved to
 * argv[optind..argc). Messages are prefixed with tool_name().
 * @returns what it found (enum tool_opts_result). */
enum tool_opts_result tool_opts_parse(int argc, char **argv,
                                      const struct tool_opt *opts,
                                      unsigned flags, void (*usage)(FILE *fp));

/* TOOL_OPT_CALL() callbacks of the options every Kafka tool spells the same
 * way; arg is the tool's rd_kafka_conf_t. -b BOOTSTRAP sets
 * bootstrap.servers; -X prop=value sets any property. */
int tool_opt_bootstrap(const char *value, void *arg);
int tool_opt_property(const char *value, void *arg);

/* TOOL_OPT_CALL() callback of -F FILE: sets the librdkafka properties of a
 * properties file (key=value lines; blank and '#' lines skipped; a secret's
 * <prop>.file=PATH sets <prop> to the first line of PATH) in the tool's
 * rd_kafka_conf_t arg, in order. Errors name the file and the line
 * ("-F FILE:3: ..."), never a value. */
int tool_opt_properties_file(const char *value, void *arg);

/*
 * librdkafka configuration.
 */

/* @returns a new configuration with bootstrap.servers = the default,
 * client.id = the tool's name and the tool's error and log callbacks, or NULL
 * after printing why. The caller owns it. */
rd_kafka_conf_t *tool_conf_new(void);

/* Sets one property; prints "<tool>: <what>: <librdkafka's reason>" on error.
 * @returns 0 or -1. */
int tool_conf_set(rd_kafka_conf_t *conf, const char *what, const char *name,
                  const char *value);

/* Applies "-X name=value".
 * @returns 0 or -1 after printing why. */
int tool_conf_set_kv(rd_kafka_conf_t *conf, const char *kv);

/* Creates a handle. On success the handle owns the configuration and *confp
 * is set to NULL; on failure *confp is left to the caller and the reason is
 * printed. @returns the handle or NULL. */
rd_kafka_t *tool_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t **confp);

/* While quiet, librdkafka errors and logs are not printed (mailer-admin
 * wait-ready polls a broker that may not be up yet). The last error is kept
 * either way. */
void tool_kafka_set_quiet(int quiet);

/* @returns the text of the last error reported by librdkafka's error
 * callback, or "" if there was none. */
const char *tool_kafka_last_error(void);

/* @returns 1 once librdkafka reported a fatal error (idempotent producer). */
int tool_kafka_fatal(void);

/*
 * @returns the text for a Kafka failure with error @err and librdkafka's
 * @reason (NULL: rd_kafka_err2str(@err)), when the tool needed @op ("Read",
 * "Write", "Describe"; may be NULL) on topic @topic (may be NULL): for an
 * authentication, TLS or authorization error (kcause_of()) its cause and
 * what to check ("authentication failed (SASL/SCRAM-SHA-512: check
 * sasl.username and sasl.password): <reason>", "TLS: the broker's
 * certificate is not trusted (ssl.ca.location): <reason>", "not authorized:
 * Read on topic T (missing ACL): <reason>"); for another error (transport,
 * timeout) the cause of the first such error the error callback saw, else
 * @reason. Valid until the next call.
 */
const char *tool_kafka_why(rd_kafka_resp_err_t err, const char *reason,
                           const char *op, const char *topic);

/* @returns the cause of the first authentication, TLS or authorization
 * error the error callback saw, as tool_kafka_why() words it, or "". */
const char *tool_kafka_cause(void);

/* @returns ": " and tool_kafka_cause(), or "" when there is none: the end
 * of a message about a timeout. Valid until the next call. */
const char *tool_kafka_cause_note(void);

/* @returns the exit status of a timeout: TOOL_EXIT_KAFKA when the error
 * callback saw an authentication, TLS or authorization error, else
 * TOOL_EXIT_INPUT. */
int tool_timeout_exit(void);

/* tool_kafka_why() for the consumer error @rkm (Read on its topic). */
const char *tool_consume_why(const rd_kafka_message_t *rkm);

/* tool_kafka_why() for the failed delivery report @rkm (Write on its
 * topic). */
const char *tool_delivery_why(const rd_kafka_message_t *rkm);

/* Lists the partitions of a topic from the cluster's metadata.
 * @returns RD_KAFKA_RESP_ERR_NO_ERROR with *partsp (caller frees) sorted by
 * id and *cntp set, or an error (RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART if
 * the topic does not exist) with errstr filled. */
rd_kafka_resp_err_t tool_topic_partitions(rd_kafka_t *rk, const char *topic,
                                          int timeout_ms, int32_t **partsp,
                                          int *cntp, char *errstr,
                                          size_t errstr_size);

/* @returns 1 for consumer errors after which reading cannot go on (fatal
 * error, unknown topic or partition, topic not authorized, invalid
 * argument), else 0. */
int tool_consume_err_is_fatal(rd_kafka_resp_err_t err);

/* Creates a producer whose delivery reports go to dr_cb with opaque, and
 * checks that topic exists, to fail early and clearly rather than after
 * message.timeout.ms. confp as for tool_kafka_new().
 * @returns the handle with *part_cntp (if not NULL) set to the topic's
 * partition count, or NULL after printing why. */
rd_kafka_t *tool_producer_new(rd_kafka_conf_t **confp,
                              void (*dr_cb)(rd_kafka_t *rk,
                                            const rd_kafka_message_t *rkm,
                                            void *opaque),
                              void *opaque, const char *topic, int *part_cntp);

/* What a producer's delivery reports said. */
struct tool_deliveries {
        unsigned long td_delivered;
        unsigned long td_failed;
};

/* Delivery failures printed one by one; the rest are only counted. */
#define TOOL_FAILURES_SHOWN 10

/* Counts one delivery report. The first TOOL_FAILURES_SHOWN failures are
 * for the caller to print; after them it says once that failures are only
 * counted from then on.
 * @returns 1 if err is a failure the caller should print, else 0. */
int tool_delivery_count(struct tool_deliveries *td, rd_kafka_resp_err_t err);

/* Waits until the producer's queue is empty or a signal arrives, flushing
 * step_ms at a time and calling progress(arg) (if not NULL) after each step;
 * if interrupted, gives what is in flight 2 s more.
 * @returns the number of messages still queued. */
int tool_producer_drain(rd_kafka_t *rk, int step_ms,
                        void (*progress)(void *arg), void *arg);

/*
 * End offsets: where each partition of a topic ended when the tool started,
 * and whether the tool has read up to it.
 */

struct tool_ends {
        const char *te_topic;
        int64_t *te_end; /* indexed by partition id */
        char *te_reached; /* indexed by partition id */
        int32_t te_cnt; /* array size: highest partition id + 1 */
        int32_t te_pending; /* partitions listed and not yet reached */
};

/* Sets te->te_topic to topic and queries the watermarks of the partitions
 * parts[0..cnt) (ascending, cnt > 0, as from tool_topic_partitions()),
 * retrying while a partition has no leader. A partition that holds
 * messages is pending; empty and unlisted ones are reached.
 * @returns TOOL_EXIT_OK, or an exit code after printing why. */
int tool_ends_init(rd_kafka_t *rk, struct tool_ends *te, const char *topic,
                   const int32_t *parts, int cnt, int timeout_ms);

/* Marks the partition reached once next_offset (the offset after the last
 * message read, or that of a partition EOF) is at its end. */
void tool_ends_mark(struct tool_ends *te, int32_t partition,
                    int64_t next_offset);

/* Frees the arrays; accepts a zeroed struct. */
void tool_ends_destroy(struct tool_ends *te);

/*
 * JSON-lines reader: one line at a time from a file or stdin, with its
 * number, bounded in length.
 */

struct tool_lines;

enum tool_line_status {
        TOOL_LINE_OK, /* a line, without its '\n' or "\r\n" */
        TOOL_LINE_EOF, /* no more input */
        TOOL_LINE_TOO_LONG, /* a line longer than the limit was skipped */
        TOOL_LINE_ERROR, /* read error; errno is set */
};

/* Opens path, or stdin if path is NULL or "-". max_line bounds the length of
 * a line without its newline.
 * @returns the reader or NULL with errstr filled. */
struct tool_lines *tool_lines_open(const char *path, size_t max_line,
                                   char *errstr, size_t errstr_size);

/* Closes the file (not stdin) and frees the reader. Accepts NULL. */
void tool_lines_destroy(struct tool_lines *tl);

/* Reads the next line. The line stays valid until the next call; it is not
 * NUL-terminated. */
enum tool_line_status tool_lines_next(struct tool_lines *tl, const char **linep,
                                      size_t *lenp);

/* @returns the number of the line last returned (1-based). */
unsigned long tool_lines_lineno(const struct tool_lines *tl);

/* @returns the name for messages: the path, or "<stdin>". */
const char *tool_lines_name(const struct tool_lines *tl);

/*
 * A set of strings (request ids, Message-IDs) with a count per string, for
 * counting distinct and duplicate ones.
 */

struct tool_idset;

/* @returns an empty set, or NULL if out of memory. */
struct tool_idset *tool_idset_new(void);

/* Accepts NULL. */
void tool_idset_destroy(struct tool_idset *set);

/* Adds a copy of id[0..len), or one to its count if it is there.
 * @returns 1 if it was added, 0 if it was already there, -1 if out of
 * memory. */
int tool_idset_add(struct tool_idset *set, const char *id, size_t len);

/* @returns the number of distinct strings. */
size_t tool_idset_count(const struct tool_idset *set);

/* @returns how many times id[0..len) was added, 0 if never. */
unsigned tool_idset_times(const struct tool_idset *set, const char *id,
                          size_t len);

/* Iterates over the set in its internal order: start with *pos = 0.
 * @returns 1 with *idp (NUL-terminated) and *timesp set, or 0 at the end. */
int tool_idset_next(const struct tool_idset *set, size_t *pos, const char **idp,
                    unsigned *timesp);

/*
 * Percentiles.
 */

/* Sorts v ascending. */
void tool_sort_i64(int64_t *v, size_t n);

/*
 * The end of a consuming tool's run: flushes stdout (a failure turns @rc
 * TOOL_EXIT_OK into TOOL_EXIT_INPUT), closes the consumer @rk when
 * @consuming, destroys @rk, @conf and @tpl (each may be NULL).
 * @returns the exit status.
 */
int tool_consumer_finish(rd_kafka_t *rk, int consuming, rd_kafka_conf_t *conf,
                         rd_kafka_topic_partition_list_t *tpl, int rc);

/* Nearest-rank percentile of an ascending array: the smallest value such that
 * at least p percent of the values are <= it. p is in (0, 100].
 * @returns the value, or 0 if n == 0. */
int64_t tool_percentile(const int64_t *sorted, size_t n, double p);

#endif
