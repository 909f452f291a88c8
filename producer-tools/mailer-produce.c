/*
 * mailer-produce: publishes email requests, one JSON object per input line,
 * to the requests topic, keyed by the request's "id".
 *
 *   mailer-produce [-b BOOTSTRAP] [-t TOPIC] [-F FILE]... [-X prop=value]...
 *                  [--raw] [--partitions-by-key] [FILE]
 *
 * Bad lines are reported with their file:line and skipped; the good ones are
 * still published. Exit: 0 all published, 1 some lines skipped (or usage or
 * input error), 2 Kafka error (some messages not delivered).
 */
#include "tools.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define PRODUCE_DEFAULT_TOPIC "email.requests"
#define PRODUCE_MAX_LINE (16 * 1024 * 1024)

struct produce_opts {
        const char *po_topic;
        const char *po_path; /* NULL: stdin */
        int po_raw;
};

struct produce_state {
        const char *ps_input; /* input name for messages */
        struct tool_deliveries ps_dr;
};

static void produce_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-produce [options] [FILE]\n"
                "\n"
                "Publishes email requests, one JSON object per line of FILE (or stdin), to\n"
                "a Kafka topic. Each message's key is the request's \"id\" (when it is a\n"
                "string), so one id always goes to the same partition.\n"
                "\n"
                "Options:\n"
                "  -b BOOTSTRAP          bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -t TOPIC              topic (default " PRODUCE_DEFAULT_TOPIC
                ")\n"
                "  -X prop=value         librdkafka property (repeatable; later wins)\n"
                "  -F FILE               librdkafka properties file (key=value lines; repeatable)\n"
                "      --raw             publish every non-blank line as it is, without\n"
                "                        checking it is JSON (no key); for tests\n"
                "      --partitions-by-key\n"
                "                        pick partitions with murmur2, as the Java client\n"
                "                        does, so keys land where Java producers put them\n"
                "  -h, --help            this help\n"
                "\n"
                "The producer is idempotent (enable.idempotence=true, linger.ms=5).\n"
                "Blank lines are ignored; lines may be up to 16 MiB (raise\n"
                "message.max.bytes with -X, and on the broker, for messages over 1 MB).\n"
                "\n"
                "Prints \"produced=N skipped=M\" on stderr at the end.\n"
                "Exit status: 0 all lines published, 1 some lines skipped or a usage or\n"
                "input error, 2 Kafka error (messages not delivered).\n");
}

/* Runs from rd_kafka_poll()/rd_kafka_flush() on the main thread. */
static void produce_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                          void *opaque) {
        struct produce_state *ps = opaque;
        unsigned long lineno = (unsigned long)(uintptr_t)rkm->_private;

        (void)rk;
        if (tool_delivery_count(&ps->ps_dr, rkm->err))
                tool_err("%s:%lu: delivery failed: %s", ps->ps_input, lineno,
                         tool_delivery_why(rkm));
}

static int produce_is_blank(const char *line, size_t len) {
        for (size_t i = 0; i < len; i++) {
                if (line[i] != ' ' && line[i] != '\t')
                        return 0;
        }
        return 1;
}

/* @returns why jansson refused a line, in words about the input (jansson's
 * own text for syntax errors, which already says what it expected where). */
static const char *produce_json_reason(const json_error_t *jerr, char *buf,
                                       size_t size) {
        switch (json_error_code(jerr)) {
        case json_error_null_character:
        case json_error_null_byte_in_key:
                return "a string holds \\u0000 (a NUL character), which no "
                       "request field may contain";
        case json_error_invalid_utf8:
                return "the line is not valid UTF-8";
        case json_error_premature_end_of_input:
                return "the line ends before the JSON value does (one request "
                       "per line: is it spread over several lines?)";
        case json_error_end_of_input_expected:
                return "more text after the JSON value (one request per line)";
        case json_error_stack_overflow:
                return "arrays or objects nested too deeply";
        case json_error_numeric_overflow:
                return "a number too large to represent";
        case json_error_duplicate_key:
                return "a key appears twice in one object";
        case json_error_out_of_memory:
                return "out of memory";
        default:
                snprintf(buf, size, "not valid JSON: %s", jerr->text);
                return buf;
        }
}

/* Validates one line and finds its key.
 * @returns the parsed object (caller releases it) with *keyp and *keylenp set
 * (NULL/0 if there is no string "id"), or NULL after reporting why. */
static json_t *produce_parse(const struct tool_lines *tl, const char *line,
                             size_t len, const char **keyp, size_t *keylenp) {
        json_error_t jerr;
        json_t *obj;
        json_t *id;

        obj = json_loadb(line, len, JSON_DECODE_ANY, &jerr);
        if (obj == NULL) {
                char buf[JSON_ERROR_TEXT_LENGTH + 32];

                tool_err("%s:%lu: column %d: %s", tool_lines_name(tl),
                         tool_lines_lineno(tl), jerr.column,
                         produce_json_reason(&jerr, buf, sizeof(buf)));
                return NULL;
        }
        if (!json_is_object(obj)) {
                tool_err("%s:%lu: a request is a JSON object ({...}), not %s",
                         tool_lines_name(tl), tool_lines_lineno(tl),
                         json_is_array(obj)    ? "an array"
                         : json_is_string(obj) ? "a string"
                         : json_is_number(obj) ? "a number"
                                               : "true, false or null");
                json_decref(obj);
                return NULL;
        }
        id = json_object_get(obj, "id");
        *keyp = NULL;
        *keylenp = 0;
        if (json_is_string(id) && json_string_length(id) > 0) {
                *keyp = json_string_value(id);
                *keylenp = json_string_length(id);
        }
        return obj;
}

/* Enqueues one message, serving delivery reports while the queue is full.
 * @returns RD_KAFKA_RESP_ERR_NO_ERROR or the error. */
static rd_kafka_resp_err_t produce_one(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                                       const char *line, size_t len,
                                       const char *key, size_t keylen,
                                       unsigned long lineno) {
        for (;;) {
                if (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA,
                                     RD_KAFKA_MSG_F_COPY, (void *)line, len,
                                     key, keylen,
                                     (void *)(uintptr_t)lineno) == 0)
                        return RD_KAFKA_RESP_ERR_NO_ERROR;
                if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        return rd_kafka_last_error();
                /* Wait for deliveries to make room; never drop a line. */
                rd_kafka_poll(rk, 100);
                if (!tool_running() || tool_kafka_fatal())
                        return RD_KAFKA_RESP_ERR__QUEUE_FULL;
        }
}

/* --partitions-by-key: arg is the configuration. */
static int produce_opt_by_key(const char *value, void *arg) {
        (void)value;
        return tool_conf_set(arg, "--partitions-by-key", "partitioner",
                             "murmur2_random");
}

/* @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result produce_parse_args(int argc, char **argv,
                                                rd_kafka_conf_t *conf,
                                                struct produce_opts *po) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_STRING(NULL, 't', &po->po_topic),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_FLAG("raw", 0, &po->po_raw),
                TOOL_OPT_ACTION("partitions-by-key", 0, produce_opt_by_key,
                                conf),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, 0, produce_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (argc - optind > 1) {
                tool_err("at most one input file");
                produce_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        if (optind < argc)
                po->po_path = argv[optind];
        if (*po->po_topic == '\0') {
                tool_err("-t: empty topic name");
                return TOOL_OPTS_ERROR;
        }
        return TOOL_OPTS_RUN;
}

int main(int argc, char **argv) {
        struct produce_opts po = {.po_topic = PRODUCE_DEFAULT_TOPIC};
        struct produce_state ps;
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        rd_kafka_topic_t *rkt = NULL;
        struct tool_lines *tl = NULL;
        enum tool_opts_result parsed;
        char errstr[512];
        unsigned long skipped = 0;
        int kafka_failed = 0;
        int input_failed = 0;
        int left = 0;
        int rc = TOOL_EXIT_INPUT;

        tool_init("mailer-produce");
        memset(&ps, 0, sizeof(ps));
        conf = tool_conf_new();
        if (conf == NULL ||
            tool_conf_set(conf, "defaults", "enable.idempotence", "true") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "linger.ms", "5") == -1)
                goto out;
        parsed = produce_parse_args(argc, argv, conf, &po);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }

        tl = tool_lines_open(po.po_path, PRODUCE_MAX_LINE, errstr,
                             sizeof(errstr));
        if (tl == NULL) {
                tool_err("%s", errstr);
                goto out;
        }
        ps.ps_input = tool_lines_name(tl);

        rc = TOOL_EXIT_KAFKA;
        rk = tool_producer_new(&conf, produce_dr_cb, &ps, po.po_topic, NULL);
        if (rk == NULL)
                goto out;
        rkt = rd_kafka_topic_new(rk, po.po_topic, NULL);
        if (rkt == NULL) {
                tool_err("topic %s: %s", po.po_topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
                goto out;
        }

        while (tool_running() && !tool_kafka_fatal()) {
                enum tool_line_status st;
                const char *line = NULL;
                const char *key = NULL;
                size_t len = 0;
                size_t keylen = 0;
                rd_kafka_resp_err_t err;
                json_t *obj;

                st = tool_lines_next(tl, &line, &len);
                if (st == TOOL_LINE_EOF)
                        break;
                if (st == TOOL_LINE_ERROR) {
                        tool_err("%s: read error after line %lu: %s",
                                 tool_lines_name(tl), tool_lines_lineno(tl),
                                 strerror(errno));
                        input_failed = 1;
                        break;
                }
                if (st == TOOL_LINE_TOO_LONG) {
                        tool_err("%s:%lu: line longer than %d bytes",
                                 tool_lines_name(tl), tool_lines_lineno(tl),
                                 PRODUCE_MAX_LINE);
                        skipped++;
                        continue;
                }
                if (produce_is_blank(line, len))
                        continue;
                if (po.po_raw) {
                        /* Published as they are: for testing what the worker
                         * does with bytes that are not a valid request. */
                        obj = NULL;
                        key = NULL;
                        keylen = 0;
                } else {
                        obj = produce_parse(tl, line, len, &key, &keylen);
                        if (obj == NULL) {
                                skipped++;
                                continue;
                        }
                }
                err = produce_one(rk, rkt, line, len, key, keylen,
                                  tool_lines_lineno(tl));
                json_decref(obj);
                if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
                        tool_err("%s:%lu: %zu bytes is over message.max.bytes; "
                                 "skipped",
                                 tool_lines_name(tl), tool_lines_lineno(tl),
                                 len);
                        skipped++;
                        continue;
                }
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                tool_err("%s:%lu: cannot produce: %s",
                                         tool_lines_name(tl),
                                         tool_lines_lineno(tl),
                                         tool_kafka_why(err, NULL, "Write",
                                                        po.po_topic));
                        kafka_failed = 1;
                        break;
                }
                rd_kafka_poll(rk, 0);
                /* Kafka is failing: pushing more lines into it would only
                 * make more of them fail. */
                if (ps.ps_dr.td_failed > 0) {
                        tool_err("stopped reading after %s:%lu: delivery "
                                 "failures",
                                 tool_lines_name(tl), tool_lines_lineno(tl));
                        break;
                }
        }
        if (!tool_running())
                tool_err("interrupted after %s:%lu", tool_lines_name(tl),
                         tool_lines_lineno(tl));

        left = tool_producer_drain(rk, 500, NULL, NULL);
        if (left > 0) {
                tool_err("%d messages not delivered before exit", left);
                kafka_failed = 1;
        }
        if (ps.ps_dr.td_failed > 0 || tool_kafka_fatal())
                kafka_failed = 1;

        if (ps.ps_dr.td_failed > 0 || left > 0)
                fprintf(stderr, "produced=%lu skipped=%lu failed=%lu\n",
                        ps.ps_dr.td_delivered, skipped,
                        ps.ps_dr.td_failed + (unsigned long)left);
        else
                fprintf(stderr, "produced=%lu skipped=%lu\n",
                        ps.ps_dr.td_delivered, skipped);

        if (kafka_failed)
                rc = TOOL_EXIT_KAFKA;
        else if (skipped > 0 || input_failed || !tool_running())
                rc = TOOL_EXIT_INPUT;
        else
                rc = TOOL_EXIT_OK;
out:
        if (rkt != NULL)
                rd_kafka_topic_destroy(rkt);
        if (rk != NULL)
                rd_kafka_destroy(rk);
        if (conf != NULL)
                rd_kafka_conf_destroy(conf);
        tool_lines_destroy(tl);
        return rc;
}
