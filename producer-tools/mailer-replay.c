/*
 * mailer-replay: selects results from the results topic, fetches the
 * original requests they name and publishes them again under new ids.
 *
 *   mailer-replay [-b BOOTSTRAP] --results TOPIC --requests TOPIC
 *                 [--status LIST] [--since TIME] [--until TIME]
 *                 [--error-contains TEXT] [--id ID]... [--ids-file FILE]
 *                 [--publish [--yes]] [--to TOPIC] [--id-suffix S]
 *                 [--list N] [--max N] [--timeout S] [-F FILE]... [-X prop=value]...
 *
 * The results topic is read from its beginning to the end it had at start;
 * the latest final result of each id is kept, then selected. The request a
 * selected result names by its source {topic, partition, offset} is read
 * back; one below its partition's low watermark is past retention and is
 * reported by id. Without --publish nothing is published (dry run). With it,
 * each request found is published to --to (default --requests) with the id
 * <base>.<S><N> and metadata.replay_of = the old id (see docs/tools.md).
 *
 * Exit: 0 done, 4 some selected request cannot be replayed, 1 usage
 * error/timeout/not confirmed, 2 Kafka error.
 */
#include "tools.h"

#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#define REPLAY_QUERY_TIMEOUT_MS 10000
#define REPLAY_POLL_MS 100
#define REPLAY_DEFAULT_TIMEOUT_MS 60000
#define REPLAY_DEFAULT_LIST 10
#define REPLAY_DEFAULT_MAX 10000
#define REPLAY_DEFAULT_SUFFIX "r"
#define REPLAY_SUFFIX_MAX 16
#define REPLAY_ID_MAX 200
#define REPLAY_ASSIGN_GROUP "mailer-replay-nogroup"
#define REPLAY_HEADER "replay-of"
#define REPLAY_META_KEY "replay_of"
#define REPLAY_EXIT_UNREPLAYABLE 4
#define REPLAY_MAX_ID_LINE 4096

enum replay_status {
        RS_SENT,
        RS_FAILED,
        RS_REJECTED,
        RS_EXPIRED,
        RS_COUNT,
};

static const char *const replay_status_names[RS_COUNT] = {
        "sent",
        "failed",
        "rejected",
        "expired",
};

/* What became of a selected result. */
enum replay_state {
        ST_UNREAD, /* its request was not read (yet) */
        ST_FOUND, /* read and rewritten: to be published */
        ST_SUPERSEDED, /* a later replay of it has a result */
        ST_PAST_RETENTION, /* below the partition's low watermark */
        ST_MISSING, /* not on the topic (past its end, or compacted) */
        ST_UNREADABLE, /* not a JSON object, or another id */
        ST_TOO_LONG, /* the new id would exceed 200 characters */
        ST_DELIVERED,
        ST_FAILED,
};

struct replay_opts {
        const char *ro_results;
        const char *ro_requests;
        const char *ro_to; /* NULL: ro_requests */
        const char *ro_suffix;
        const char *ro_error;
        const char *ro_ids_file;
        unsigned ro_statuses; /* bit per enum replay_status */
        int64_t ro_since_ms; /* INT64_MIN: none */
        int64_t ro_until_ms; /* INT64_MAX: none */
        struct tool_idset *ro_ids; /* --id and --ids-file; empty: any id */
        int ro_publish;
        int ro_yes;
        long long ro_list;
        long long ro_max;
        int64_t ro_timeout_ms;
};

/* The latest final result of one id, as far as it was read. */
struct replay_item {
        char *ri_id;
        char *ri_base; /* ri_id without a trailing ".<S><N>" */
        long ri_n; /* that N, 0 if none */
        int ri_status;
        int64_t ri_completed_ms; /* INT64_MIN if missing */
        uint64_t ri_seq; /* order read, to break ties */
        int ri_match; /* the result matched the selection */
        char *ri_src_topic;
        int32_t ri_src_partition;
        int64_t ri_src_offset;
        /* selected items only */
        enum replay_state ri_state;
        char *ri_new_id;
        char *ri_request; /* the request to publish */
        char *ri_note; /* why not replayable, for the report */
};

struct replay_items {
        struct replay_item *rv_v;
        size_t rv_cnt;
        size_t rv_cap;
};

static void replay_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-replay [options] --results TOPIC --requests TOPIC\n"
                "\n"
                "Selects results (the latest final result of each id), reads back the\n"
                "requests they name by their source {topic, partition, offset} and, with\n"
                "--publish, publishes them again with new ids that link to the old ones.\n"
                "Without --publish it is a dry run: it only says what it would publish.\n"
                "\n"
                "Options:\n"
                "  -b BOOTSTRAP          bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -X prop=value         librdkafka property (repeatable; later wins)\n"
                "  -F FILE               librdkafka properties file (key=value lines; repeatable)\n"
                "      --results TOPIC   the results topic (required)\n"
                "      --requests TOPIC  the requests topic (required)\n"
                "      --status LIST     statuses to select, comma-separated: sent, failed,\n"
                "                        rejected, expired (default failed)\n"
                "      --since TIME      results completed at or after TIME (RFC 3339, or\n"
                "                        YYYY-MM-DD for midnight UTC)\n"
                "      --until TIME      results completed before TIME\n"
                "      --error-contains TEXT\n"
                "                        results whose error or smtp_reply contains TEXT\n"
                "      --id ID           only this id (repeatable)\n"
                "      --ids-file FILE   only the ids in FILE, one a line (- for stdin)\n"
                "      --publish         publish (default: dry run)\n"
                "      --yes             publish without asking (needed when stdin is not\n"
                "                        a terminal)\n"
                "      --to TOPIC        publish to TOPIC (default: the requests topic)\n"
                "      --id-suffix S     new ids are <id>.<S><N> (default " REPLAY_DEFAULT_SUFFIX
                ")\n"
                "      --list N          list at most N of the requests to publish\n"
                "                        (default %d; problems are always listed)\n"
                "      --max N           refuse to go on when more than N results are\n"
                "                        selected (default %d)\n"
                "      --timeout S       give up reading after S seconds (default %d)\n"
                "  -h, --help            this help\n"
                "\n"
                "A new request is the old one with \"id\" = <base>.<S><N> (<base> is the old\n"
                "id without a trailing .<S><N>, N one more than the highest in use) and\n"
                "metadata." REPLAY_META_KEY
                " = the old id; its key is the new id and its header\n" REPLAY_HEADER
                " the old id.\n"
                "\n"
                "Exit status: 0 done, 4 some selected request cannot be replayed (past\n"
                "retention, not found, unreadable), 1 usage error, timeout or not\n"
                "confirmed, 2 Kafka error (also: some request not delivered).\n",
                REPLAY_DEFAULT_LIST, REPLAY_DEFAULT_MAX,
                REPLAY_DEFAULT_TIMEOUT_MS / 1000);
}

static int replay_status_of(const char *s, size_t len) {
        for (int i = 0; i < RS_COUNT; i++)
                if (strlen(replay_status_names[i]) == len &&
                    strncmp(s, replay_status_names[i], len) == 0)
                        return i;
        return -1;
}

/* --status LIST: arg is struct replay_opts. */
static int replay_opt_status(const char *value, void *arg) {
        struct replay_opts *ro = arg;
        const char *p = value;
        unsigned mask = 0;

        for (;;) {
                size_t len = strcspn(p, ",");
                int st = replay_status_of(p, len);

                if (st < 0) {
                        tool_err("--status %s: expected a comma-separated list "
                                 "of sent, failed, rejected, expired",
                                 value);
                        return -1;
                }
                mask |= 1u << st;
                if (p[len] == '\0')
                        break;
                p += len + 1;
        }
        ro->ro_statuses = mask;
        return 0;
}

static int replay_opt_since(const char *value, void *arg) {
        if (tool_parse_time(value, arg) == -1) {
                tool_err("--since %s: expected an RFC 3339 date-time "
                         "(2026-11-28T10:00:00Z) or a date",
                         value);
                return -1;
        }
        return 0;
}

static int replay_opt_until(const char *value, void *arg) {
        if (tool_parse_time(value, arg) == -1) {
                tool_err("--until %s: expected an RFC 3339 date-time "
                         "(2026-11-28T10:00:00Z) or a date",
                         value);
                return -1;
        }
        return 0;
}

/* --id ID: arg is the id set. */
static int replay_opt_id(const char *value, void *arg) {
        size_t len = strlen(value);

        if (len == 0 || len > REPLAY_ID_MAX) {
                tool_err("--id: expected 1 to %d characters", REPLAY_ID_MAX);
                return -1;
        }
        if (tool_idset_add(arg, value, len) == -1) {
                tool_err("out of memory");
                return -1;
        }
        return 0;
}

/* Adds the ids of path, one a line (blank lines skipped).
 * @returns 0, or -1 after printing why. */
static int replay_read_ids(const char *path, struct tool_idset *ids) {
        char errstr[512];
        struct tool_lines *tl;
        const char *line;
        size_t len;
        int ret = -1;

        tl = tool_lines_open(path, REPLAY_MAX_ID_LINE, errstr, sizeof(errstr));
        if (tl == NULL) {
                tool_err("--ids-file: %s", errstr);
                return -1;
        }
        for (;;) {
                enum tool_line_status st = tool_lines_next(tl, &line, &len);

                if (st == TOOL_LINE_EOF)
                        break;
                if (st == TOOL_LINE_ERROR) {
                        tool_err("%s: %s", tool_lines_name(tl),
                                 strerror(errno));
                        goto out;
                }
                if (st == TOOL_LINE_TOO_LONG) {
                        tool_err("%s:%lu: line too long for an id",
                                 tool_lines_name(tl), tool_lines_lineno(tl));
                        goto out;
                }
                while (len > 0 &&
                       (line[len - 1] == ' ' || line[len - 1] == '\t'))
                        len--;
                while (len > 0 && (*line == ' ' || *line == '\t')) {
                        line++;
                        len--;
                }
                if (len == 0)
                        continue;
                if (len > REPLAY_ID_MAX) {
                        tool_err("%s:%lu: an id has at most %d characters",
                                 tool_lines_name(tl), tool_lines_lineno(tl),
                                 REPLAY_ID_MAX);
                        goto out;
                }
                if (tool_idset_add(ids, line, len) == -1) {
                        tool_err("out of memory");
                        goto out;
                }
        }
        ret = 0;
out:
        tool_lines_destroy(tl);
        return ret;
}

/* @returns 1 if s is a usable --id-suffix: letters, '-' or '_' (no digits,
 * so that <S><N> reads back unambiguously; no dots). */
static int replay_suffix_ok(const char *s) {
        size_t len = strlen(s);

        if (len == 0 || len > REPLAY_SUFFIX_MAX)
                return 0;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      c == '-' || c == '_'))
                        return 0;
        }
        return 1;
}

/* @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result replay_parse_args(int argc, char **argv,
                                               rd_kafka_conf_t *conf,
                                               struct replay_opts *ro) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_STRING("results", 0, &ro->ro_results),
                TOOL_OPT_STRING("requests", 0, &ro->ro_requests),
                TOOL_OPT_CALL("status", 0, replay_opt_status, ro),
                TOOL_OPT_CALL("since", 0, replay_opt_since, &ro->ro_since_ms),
                TOOL_OPT_CALL("until", 0, replay_opt_until, &ro->ro_until_ms),
                TOOL_OPT_STRING("error-contains", 0, &ro->ro_error),
                TOOL_OPT_CALL("id", 0, replay_opt_id, ro->ro_ids),
                TOOL_OPT_STRING("ids-file", 0, &ro->ro_ids_file),
                TOOL_OPT_FLAG("publish", 0, &ro->ro_publish),
                TOOL_OPT_FLAG("yes", 0, &ro->ro_yes),
                TOOL_OPT_STRING("to", 0, &ro->ro_to),
                TOOL_OPT_STRING("id-suffix", 0, &ro->ro_suffix),
                TOOL_OPT_INT("list", 0, &ro->ro_list, 0, 1000000000LL,
                             "--list %s: expected a count >= 0"),
                TOOL_OPT_INT("max", 0, &ro->ro_max, 1, 100000000LL,
                             "--max %s: expected a count >= 1"),
                TOOL_OPT_SECONDS("timeout", 0, &ro->ro_timeout_ms,
                                 "--timeout %s: expected seconds"),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, TOOL_OPTS_NO_OPERANDS,
                              replay_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (ro->ro_results == NULL || ro->ro_requests == NULL) {
                tool_err("--results and --requests are required");
                replay_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_to == NULL)
                ro->ro_to = ro->ro_requests;
        if (*ro->ro_results == '\0' || *ro->ro_requests == '\0' ||
            *ro->ro_to == '\0') {
                tool_err("empty topic name");
                return TOOL_OPTS_ERROR;
        }
        if (strcmp(ro->ro_results, ro->ro_requests) == 0 ||
            strcmp(ro->ro_results, ro->ro_to) == 0) {
                tool_err("the results topic cannot be a requests topic");
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_since_ms >= ro->ro_until_ms) {
                tool_err("--since must come before --until");
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_error != NULL && *ro->ro_error == '\0') {
                tool_err("--error-contains: empty text");
                return TOOL_OPTS_ERROR;
        }
        if (!replay_suffix_ok(ro->ro_suffix)) {
                tool_err("--id-suffix %s: expected 1 to %d letters, '-' or '_'",
                         ro->ro_suffix, REPLAY_SUFFIX_MAX);
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_yes && !ro->ro_publish) {
                tool_err("--yes only goes with --publish");
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_publish && !ro->ro_yes &&
            !(isatty(STDIN_FILENO) && isatty(STDERR_FILENO))) {
                tool_err("--publish asks for confirmation on a terminal; "
                         "add --yes to publish without asking");
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_ids_file != NULL &&
            replay_read_ids(ro->ro_ids_file, ro->ro_ids) == -1)
                return TOOL_OPTS_ERROR;
        return TOOL_OPTS_RUN;
}

/*
 * Ids: <base>.<S><N>
 */

/* Splits id into its base and replay number: "a.b.r3" -> "a.b", 3 for
 * suffix "r"; an id without a trailing ".<S><N>" (N from 1, no leading 0) is
 * its own base with 0.
 * @returns the length of the base. */
static size_t replay_split_id(const char *id, const char *suffix, long *np) {
        size_t len = strlen(id);
        size_t slen = strlen(suffix);
        size_t d = len;
        long n = 0;

        *np = 0;
        while (d > 0 && id[d - 1] >= '0' && id[d - 1] <= '9')
                d--;
        if (d == len || len - d > 9 || id[d] == '0' || d < slen + 2 ||
            strncmp(id + d - slen, suffix, slen) != 0 ||
            id[d - slen - 1] != '.')
                return len;
        for (size_t i = d; i < len; i++)
                n = n * 10 + (id[i] - '0');
        *np = n;
        return d - slen - 1;
}

/*
 * Reading the results.
 */

static int replay_conf(rd_kafka_conf_t *conf) {
        if (tool_conf_set(conf, "defaults", "enable.partition.eof", "true") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "auto.offset.reset", "earliest") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "group.id", REPLAY_ASSIGN_GROUP) ==
                    -1)
                return -1;
        return tool_conf_set(conf, "defaults", "enable.auto.commit", "false");
}

/* @returns 1 if the result obj matches the selection. */
static int replay_matches(const struct replay_opts *ro, json_t *obj,
                          const char *id, int status, int64_t completed_ms) {
        if (!(ro->ro_statuses & (1u << status)))
                return 0;
        if (tool_idset_count(ro->ro_ids) > 0 &&
            tool_idset_times(ro->ro_ids, id, strlen(id)) == 0)
                return 0;
        if (ro->ro_since_ms != INT64_MIN || ro->ro_until_ms != INT64_MAX) {
                if (completed_ms == INT64_MIN ||
                    completed_ms < ro->ro_since_ms ||
                    completed_ms >= ro->ro_until_ms)
                        return 0;
        }
        if (ro->ro_error != NULL) {
                const char *e =
                        json_string_value(json_object_get(obj, "error"));
                const char *r =
                        json_string_value(json_object_get(obj, "smtp_reply"));

                if ((e == NULL || strstr(e, ro->ro_error) == NULL) &&
                    (r == NULL || strstr(r, ro->ro_error) == NULL))
                        return 0;
        }
        return 1;
}

/* Records one result: final, with a string id and a usable source, and
 * not a repeated request's (a "duplicate" result names the earlier one's
 * outcome). @returns 0, or -1 if out of memory. */
static int replay_add_result(const struct replay_opts *ro,
                             struct replay_items *rv,
                             const rd_kafka_message_t *rkm) {
        struct replay_item *ri;
        json_t *obj;
        json_t *src;
        json_t *part;
        json_t *off;
        const char *id;
        const char *status;
        const char *completed;
        int st;
        int ret = 0;

        if (rkm->payload == NULL)
                return 0;
        obj = json_loadb(rkm->payload, rkm->len, 0, NULL);
        id = json_string_value(json_object_get(obj, "id"));
        status = json_string_value(json_object_get(obj, "status"));
        src = json_object_get(obj, "source");
        part = json_object_get(src, "partition");
        off = json_object_get(src, "offset");
        if (id == NULL || *id == '\0' || status == NULL ||
            json_is_true(json_object_get(obj, "duplicate")) ||
            !json_is_string(json_object_get(src, "topic")) ||
            !json_is_integer(part) || json_integer_value(part) < 0 ||
            json_integer_value(part) > INT32_MAX || !json_is_integer(off) ||
            json_integer_value(off) < 0)
                goto out;
        st = replay_status_of(status, strlen(status));
        if (st < 0)
                goto out;
        if (rv->rv_cnt == rv->rv_cap) {
                size_t ncap = rv->rv_cap ? rv->rv_cap * 2 : 1024;
                struct replay_item *n = realloc(rv->rv_v, ncap * sizeof(*n));

                if (n == NULL) {
                        ret = -1;
                        goto out;
                }
                rv->rv_v = n;
                rv->rv_cap = ncap;
        }
        ri = &rv->rv_v[rv->rv_cnt];
        memset(ri, 0, sizeof(*ri));
        ri->ri_status = st;
        ri->ri_seq = rv->rv_cnt;
        completed = json_string_value(json_object_get(obj, "completed_at"));
        if (completed == NULL ||
            tool_parse_time(completed, &ri->ri_completed_ms) == -1)
                ri->ri_completed_ms = INT64_MIN;
        ri->ri_match = replay_matches(ro, obj, id, st, ri->ri_completed_ms);
        ri->ri_src_partition = (int32_t)json_integer_value(part);
        ri->ri_src_offset = json_integer_value(off);
        ri->ri_id = strdup(id);
        ri->ri_src_topic =
                strdup(json_string_value(json_object_get(src, "topic")));
        if (ri->ri_id == NULL || ri->ri_src_topic == NULL) {
                free(ri->ri_id);
                free(ri->ri_src_topic);
                ret = -1;
                goto out;
        }
        rv->rv_cnt++;
out:
        json_decref(obj);
        return ret;
}

/* Reads what tpl assigns, passing each message and partition EOF to
 * on_msg(rkm, arg), until *pending (which on_msg counts down) is 0.
 * @returns TOOL_EXIT_OK, or an exit code after printing why. */
static int
replay_consume(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *tpl,
               const int32_t *pending, const char *what, int64_t deadline,
               int (*on_msg)(const rd_kafka_message_t *rkm, void *arg),
               void *arg) {
        rd_kafka_resp_err_t err;
        int rc = TOOL_EXIT_OK;

        err = rd_kafka_assign(rk, tpl);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("cannot assign: %s", rd_kafka_err2str(err));
                return TOOL_EXIT_KAFKA;
        }
        while (*pending > 0 && tool_running() && tool_now_ms() < deadline) {
                rd_kafka_message_t *rkm;
                int ret = 0;

                rkm = rd_kafka_consumer_poll(rk, REPLAY_POLL_MS);
                if (rkm == NULL)
                        continue;
                if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR ||
                    rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        ret = on_msg(rkm, arg);
                } else {
                        tool_err("consume: %s", tool_consume_why(rkm));
                        err = rkm->err;
                        if (tool_consume_err_is_fatal(err))
                                rc = TOOL_EXIT_KAFKA;
                }
                rd_kafka_message_destroy(rkm);
                if (ret == -1) {
                        tool_err("out of memory");
                        rc = TOOL_EXIT_INPUT;
                }
                if (rc != TOOL_EXIT_OK)
                        break;
        }
        rd_kafka_assign(rk, NULL);
        if (rc != TOOL_EXIT_OK)
                return rc;
        if (!tool_running()) {
                tool_err("interrupted");
                return TOOL_EXIT_INPUT;
        }
        if (*pending > 0) {
                tool_err("timed out reading %s (%" PRId32
                         " partitions left; see --timeout)%s",
                         what, *pending, tool_kafka_cause_note());
                return tool_timeout_exit();
        }
        return TOOL_EXIT_OK;
}

struct replay_results_ctx {
        const struct replay_opts *rc_ro;
        struct replay_items *rc_rv;
        struct tool_ends *rc_ends;
};

static int replay_on_result(const rd_kafka_message_t *rkm, void *arg) {
        struct replay_results_ctx *rc = arg;

        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                tool_ends_mark(rc->rc_ends, rkm->partition, rkm->offset);
                return 0;
        }
        tool_ends_mark(rc->rc_ends, rkm->partition, rkm->offset + 1);
        return replay_add_result(rc->rc_ro, rc->rc_rv, rkm);
}

/* Reads the whole results topic into rv. @returns an exit code. */
static int replay_read_results(rd_kafka_t *rk, const struct replay_opts *ro,
                               struct replay_items *rv, int64_t deadline) {
        struct tool_ends ends;
        struct replay_results_ctx rc = {
                .rc_ro = ro, .rc_rv = rv, .rc_ends = &ends};
        rd_kafka_topic_partition_list_t *tpl = NULL;
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        int rc_exit = TOOL_EXIT_KAFKA;

        memset(&ends, 0, sizeof(ends));
        if (tool_topic_partitions(rk, ro->ro_results, REPLAY_QUERY_TIMEOUT_MS,
                                  &parts, &cnt, errstr, sizeof(errstr)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("%s", errstr);
                goto out;
        }
        rc_exit = tool_ends_init(rk, &ends, ro->ro_results, parts, cnt,
                                 REPLAY_QUERY_TIMEOUT_MS);
        if (rc_exit != TOOL_EXIT_OK)
                goto out;
        tpl = rd_kafka_topic_partition_list_new(cnt);
        for (int i = 0; i < cnt; i++)
                if (!ends.te_reached[parts[i]])
                        rd_kafka_topic_partition_list_add(tpl, ro->ro_results,
                                                          parts[i])
                                ->offset = RD_KAFKA_OFFSET_BEGINNING;
        rc_exit = replay_consume(rk, tpl, &ends.te_pending, ro->ro_results,
                                 deadline, replay_on_result, &rc);
out:
        if (tpl != NULL)
                rd_kafka_topic_partition_list_destroy(tpl);
        tool_ends_destroy(&ends);
        free(parts);
        return rc_exit;
}

/*
 * Choosing: the latest result of each id, then the selection.
 */

static int replay_cmp_id(const void *a, const void *b) {
        const struct replay_item *x = a;
        const struct replay_item *y = b;
        int c = strcmp(x->ri_id, y->ri_id);

        if (c != 0)
                return c;
        if (x->ri_completed_ms != y->ri_completed_ms)
                return x->ri_completed_ms < y->ri_completed_ms ? -1 : 1;
        return x->ri_seq < y->ri_seq ? -1 : x->ri_seq > y->ri_seq;
}

static int replay_cmp_base(const void *a, const void *b) {
        const struct replay_item *x = *(struct replay_item *const *)a;
        const struct replay_item *y = *(struct replay_item *const *)b;
        int c = strcmp(x->ri_base, y->ri_base);

        if (c != 0)
                return c;
        return (x->ri_n > y->ri_n) - (x->ri_n < y->ri_n);
}

static int replay_cmp_source(const void *a, const void *b) {
        const struct replay_item *x = *(struct replay_item *const *)a;
        const struct replay_item *y = *(struct replay_item *const *)b;
        int c = strcmp(x->ri_src_topic, y->ri_src_topic);

        if (c != 0)
                return c;
        if (x->ri_src_partition != y->ri_src_partition)
                return x->ri_src_partition < y->ri_src_partition ? -1 : 1;
        return (x->ri_src_offset > y->ri_src_offset) -
               (x->ri_src_offset < y->ri_src_offset);
}

/* @returns the highest N of the ids "<base>.<S><N>" in rv (sorted by id),
 * 0 if none. */
static long replay_highest(const struct replay_items *rv, const char *base,
                           const char *suffix) {
        char prefix[REPLAY_ID_MAX + REPLAY_SUFFIX_MAX + 2];
        size_t blen = strlen(base);
        size_t plen;
        size_t lo = 0;
        size_t hi = rv->rv_cnt;
        long best = 0;

        /* The ids that start with "<base>.<S>" form one run of the sorted
         * array. */
        snprintf(prefix, sizeof(prefix), "%s.%s", base, suffix);
        plen = strlen(prefix);
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (strncmp(rv->rv_v[mid].ri_id, prefix, plen) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (size_t i = lo;
             i < rv->rv_cnt && strncmp(rv->rv_v[i].ri_id, prefix, plen) == 0;
             i++) {
                long n;
                size_t b = replay_split_id(rv->rv_v[i].ri_id, suffix, &n);

                if (b == blen && n > best)
                        best = n;
        }
        return best;
}

static int replay_set_note(struct replay_item *ri, enum replay_state st,
                           const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Sets the state and the note shown in the report.
 * @returns 0, or -1 if out of memory. */
static int replay_set_note(struct replay_item *ri, enum replay_state st,
                           const char *fmt, ...) {
        va_list ap;
        char buf[512];

        ri->ri_state = st;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        free(ri->ri_note);
        ri->ri_note = strdup(buf);
        return ri->ri_note != NULL ? 0 : -1;
}

/* Keeps the latest result of each id (rv sorted and compacted), selects
 * the matching ones into *selp (pointers into rv), names their new ids and
 * marks those a later replay superseded.
 * @returns 0, or -1 if out of memory. */
static int replay_select(const struct replay_opts *ro, struct replay_items *rv,
                         struct replay_item ***selp, size_t *nselp) {
        struct replay_item **sel = NULL;
        size_t nsel = 0;
        size_t w = 0;
        size_t suflen = strlen(ro->ro_suffix);

        qsort(rv->rv_v, rv->rv_cnt, sizeof(*rv->rv_v), replay_cmp_id);
        for (size_t i = 0; i < rv->rv_cnt; i++) {
                if (i + 1 < rv->rv_cnt &&
                    strcmp(rv->rv_v[i].ri_id, rv->rv_v[i + 1].ri_id) == 0) {
                        free(rv->rv_v[i].ri_id);
                        free(rv->rv_v[i].ri_src_topic);
                        continue;
                }
                rv->rv_v[w++] = rv->rv_v[i];
        }
        rv->rv_cnt = w;
        for (size_t i = 0; i < rv->rv_cnt; i++)
                nsel += rv->rv_v[i].ri_match != 0;
        *selp = NULL;
        *nselp = nsel;
        if (nsel == 0)
                return 0;
        if ((long long)nsel > ro->ro_max)
                return 0; /* the caller refuses */
        sel = calloc(nsel, sizeof(*sel));
        if (sel == NULL)
                return -1;
        nsel = 0;
        for (size_t i = 0; i < rv->rv_cnt; i++) {
                struct replay_item *ri = &rv->rv_v[i];
                size_t blen;

                if (!ri->ri_match)
                        continue;
                sel[nsel++] = ri;
                blen = replay_split_id(ri->ri_id, ro->ro_suffix, &ri->ri_n);
                ri->ri_base = strndup(ri->ri_id, blen);
                if (ri->ri_base == NULL)
                        goto oom;
        }
        *selp = sel;
        /* Per base, only the latest link of a chain is replayed. */
        qsort(sel, nsel, sizeof(*sel), replay_cmp_base);
        for (size_t i = 0; i < nsel;) {
                size_t j = i;
                long highest =
                        replay_highest(rv, sel[i]->ri_base, ro->ro_suffix);
                char latest[REPLAY_ID_MAX + 32];

                snprintf(latest, sizeof(latest), "%s.%s%ld", sel[i]->ri_base,
                         ro->ro_suffix, highest);
                while (j < nsel &&
                       strcmp(sel[j]->ri_base, sel[i]->ri_base) == 0)
                        j++;
                for (size_t k = i; k < j; k++) {
                        struct replay_item *ri = sel[k];
                        size_t nlen;

                        if (ri->ri_n < highest) {
                                if (replay_set_note(ri, ST_SUPERSEDED,
                                                    "replayed already as %s",
                                                    latest) == -1)
                                        goto oom;
                                continue;
                        }
                        nlen = strlen(ri->ri_base) + 2 + suflen +
                               (size_t)snprintf(NULL, 0, "%ld", highest + 1);
                        if (nlen > REPLAY_ID_MAX) {
                                if (replay_set_note(ri, ST_TOO_LONG,
                                                    "a new id would have %zu "
                                                    "characters (at most %d)",
                                                    nlen, REPLAY_ID_MAX) == -1)
                                        goto oom;
                                continue;
                        }
                        ri->ri_new_id = malloc(nlen + 1);
                        if (ri->ri_new_id == NULL)
                                goto oom;
                        snprintf(ri->ri_new_id, nlen + 1, "%s.%s%ld",
                                 ri->ri_base, ro->ro_suffix, highest + 1);
                }
                i = j;
        }
        return 0;
oom:
        return -1;
}

/*
 * Fetching the requests.
 */

/* One partition to read requests from: sel[rf_first..rf_end) ascending by
 * offset, of which rf_next is the next one not yet settled. */
struct replay_fetch {
        const char *rf_topic;
        int32_t rf_partition;
        size_t rf_first;
        size_t rf_end;
        size_t rf_next;
        int rf_done;
};

struct replay_fetch_ctx {
        struct replay_item **fc_sel;
        struct replay_fetch *fc_fetch;
        size_t fc_nfetch;
        int32_t fc_pending; /* fetches not done */
};

/* The new request: obj with "id" = the new id and metadata.replay_of = the
 * old id (an object's key is set; null or absent becomes an object; any other
 * value moves to metadata.original).
 * @returns 0, or -1 if out of memory. */
static int replay_rewrite(struct replay_item *ri, json_t *obj) {
        json_t *meta = json_object_get(obj, "metadata");
        json_t *nmeta;
        char *dump;

        if (json_is_object(meta)) {
                nmeta = json_deep_copy(meta);
        } else {
                nmeta = json_object();
                if (nmeta != NULL && meta != NULL && !json_is_null(meta))
                        json_object_set(nmeta, "original", meta);
        }
        if (nmeta == NULL ||
            json_object_set_new(nmeta, REPLAY_META_KEY,
                                json_string(ri->ri_id)) == -1 ||
            json_object_set_new(obj, "metadata", nmeta) == -1 ||
            json_object_set_new(obj, "id", json_string(ri->ri_new_id)) == -1)
                return -1;
        dump = json_dumps(obj, JSON_COMPACT);
        if (dump == NULL)
                return -1;
        ri->ri_request = dump;
        ri->ri_state = ST_FOUND;
        return 0;
}

/* Settles one request read back at its source.
 * @returns 0, or -1 if out of memory. */
static int replay_found(struct replay_item *ri, const rd_kafka_message_t *rkm) {
        json_t *obj = NULL;
        const char *id;
        int ret;

        if (rkm->payload != NULL)
                obj = json_loadb(rkm->payload, rkm->len, JSON_REJECT_DUPLICATES,
                                 NULL);
        if (!json_is_object(obj)) {
                json_decref(obj);
                return replay_set_note(ri, ST_UNREADABLE,
                                       "the record is not a JSON object");
        }
        id = json_string_value(json_object_get(obj, "id"));
        if (id == NULL || strcmp(id, ri->ri_id) != 0) {
                ret = replay_set_note(ri, ST_UNREADABLE,
                                      "the record holds id %s",
                                      id != NULL ? id : "(none)");
                json_decref(obj);
                return ret;
        }
        if (ri->ri_new_id == NULL) {
                json_decref(obj);
                return 0; /* superseded or too long: only checked */
        }
        ret = replay_rewrite(ri, obj);
        json_decref(obj);
        return ret;
}

static int replay_on_request(const rd_kafka_message_t *rkm, void *arg) {
        struct replay_fetch_ctx *fc = arg;
        const char *topic = rd_kafka_topic_name(rkm->rkt);
        struct replay_fetch *rf = NULL;
        int eof = rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;

        for (size_t i = 0; i < fc->fc_nfetch; i++) {
                if (fc->fc_fetch[i].rf_partition == rkm->partition &&
                    strcmp(fc->fc_fetch[i].rf_topic, topic) == 0) {
                        rf = &fc->fc_fetch[i];
                        break;
                }
        }
        if (rf == NULL || rf->rf_done)
                return 0;
        for (; rf->rf_next < rf->rf_end; rf->rf_next++) {
                struct replay_item *ri = fc->fc_sel[rf->rf_next];
                int ret;

                if (ri->ri_state != ST_UNREAD)
                        continue; /* settled before reading */
                if (eof)
                        ret = replay_set_note(ri, ST_MISSING,
                                              "not on the partition, which "
                                              "ends at %" PRId64,
                                              rkm->offset);
                else if (ri->ri_src_offset > rkm->offset)
                        break;
                else if (ri->ri_src_offset < rkm->offset)
                        ret = replay_set_note(ri, ST_MISSING,
                                              "no record at that offset "
                                              "(compacted or aborted)");
                else
                        ret = replay_found(ri, rkm);
                if (ret == -1)
                        return -1;
        }
        if (rf->rf_next == rf->rf_end) {
                rf->rf_done = 1;
                fc->fc_pending--;
        }
        return 0;
}

/* Reads back the requests of sel[0..nsel) (ascending by source) and settles
 * each: past retention, missing, unreadable or rewritten.
 * @returns an exit code. */
static int replay_fetch(rd_kafka_t *rk, struct replay_item **sel, size_t nsel,
                        int64_t deadline) {
        struct replay_fetch_ctx fc;
        rd_kafka_topic_partition_list_t *tpl;
        int rc = TOOL_EXIT_OK;

        memset(&fc, 0, sizeof(fc));
        fc.fc_sel = sel;
        fc.fc_fetch = calloc(nsel, sizeof(*fc.fc_fetch));
        tpl = rd_kafka_topic_partition_list_new(16);
        if (fc.fc_fetch == NULL) {
                tool_err("out of memory");
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        for (size_t i = 0; i < nsel;) {
                struct replay_fetch *rf = &fc.fc_fetch[fc.fc_nfetch];
                int64_t lo = 0;
                int64_t hi = 0;
                rd_kafka_resp_err_t err;
                size_t j = i;

                while (j < nsel &&
                       strcmp(sel[j]->ri_src_topic, sel[i]->ri_src_topic) ==
                               0 &&
                       sel[j]->ri_src_partition == sel[i]->ri_src_partition)
                        j++;
                err = rd_kafka_query_watermark_offsets(
                        rk, sel[i]->ri_src_topic, sel[i]->ri_src_partition, &lo,
                        &hi, REPLAY_QUERY_TIMEOUT_MS);
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("%s [%" PRId32 "]: cannot get offsets: %s",
                                 sel[i]->ri_src_topic, sel[i]->ri_src_partition,
                                 tool_kafka_why(err, NULL, "Describe",
                                                sel[i]->ri_src_topic));
                        rc = TOOL_EXIT_KAFKA;
                        goto out;
                }
                rf->rf_topic = sel[i]->ri_src_topic;
                rf->rf_partition = sel[i]->ri_src_partition;
                rf->rf_end = i;
                for (size_t k = i; k < j; k++) {
                        struct replay_item *ri = sel[k];
                        int bad;

                        if (ri->ri_src_offset < lo)
                                bad = replay_set_note(
                                        ri, ST_PAST_RETENTION,
                                        "below the low watermark %" PRId64, lo);
                        else if (ri->ri_src_offset >= hi)
                                bad = replay_set_note(
                                        ri, ST_MISSING,
                                        "past the end of the partition "
                                        "(%" PRId64 ")",
                                        hi);
                        else
                                continue;
                        if (bad == -1) {
                                tool_err("out of memory");
                                rc = TOOL_EXIT_INPUT;
                                goto out;
                        }
                }
                rf->rf_first = j;
                for (size_t k = i; k < j; k++) {
                        if (sel[k]->ri_state != ST_UNREAD)
                                continue;
                        if (rf->rf_first == j)
                                rf->rf_first = k;
                        rf->rf_end = k + 1;
                }
                rf->rf_next = rf->rf_first;
                if (rf->rf_end > rf->rf_first) {
                        rd_kafka_topic_partition_list_add(tpl, rf->rf_topic,
                                                          rf->rf_partition)
                                ->offset = sel[rf->rf_first]->ri_src_offset;
                        fc.fc_nfetch++;
                }
                i = j;
        }
        fc.fc_pending = (int32_t)fc.fc_nfetch;
        if (fc.fc_nfetch > 0)
                rc = replay_consume(rk, tpl, &fc.fc_pending, "the requests",
                                    deadline, replay_on_request, &fc);
out:
        rd_kafka_topic_partition_list_destroy(tpl);
        free(fc.fc_fetch);
        return rc;
}

/*
 * Report and publishing.
 */

static const char *replay_state_name(enum replay_state st) {
        switch (st) {
        case ST_SUPERSEDED:
                return "superseded";
        case ST_PAST_RETENTION:
                return "past_retention";
        case ST_MISSING:
                return "missing";
        case ST_UNREADABLE:
                return "unreadable";
        case ST_TOO_LONG:
                return "too_long";
        default:
                return "unread";
        }
}

/* Prints what was selected and what would be published.
 * @returns the number of selected requests that cannot be replayed. */
static size_t replay_report(const struct replay_opts *ro,
                            struct replay_item **sel, size_t nsel,
                            size_t *to_publish) {
        size_t counts[ST_FAILED + 1];
        size_t listed = 0;
        size_t bad = 0;

        memset(counts, 0, sizeof(counts));
        for (size_t i = 0; i < nsel; i++)
                counts[sel[i]->ri_state]++;
        *to_publish = counts[ST_FOUND];
        printf("selected=%zu to_publish=%zu superseded=%zu past_retention=%zu "
               "missing=%zu unreadable=%zu too_long=%zu\n",
               nsel, counts[ST_FOUND], counts[ST_SUPERSEDED],
               counts[ST_PAST_RETENTION],
               counts[ST_MISSING] + counts[ST_UNREAD], counts[ST_UNREADABLE],
               counts[ST_TOO_LONG]);
        for (size_t i = 0; i < nsel; i++) {
                const struct replay_item *ri = sel[i];

                if (ri->ri_state == ST_FOUND) {
                        if (listed++ < (size_t)ro->ro_list)
                                printf("replay id=%s new_id=%s status=%s "
                                       "source=%s:%" PRId32 ":%" PRId64 "\n",
                                       ri->ri_id, ri->ri_new_id,
                                       replay_status_names[ri->ri_status],
                                       ri->ri_src_topic, ri->ri_src_partition,
                                       ri->ri_src_offset);
                        continue;
                }
                if (ri->ri_state != ST_SUPERSEDED)
                        bad++;
                printf("%s id=%s status=%s source=%s:%" PRId32 ":%" PRId64
                       " reason: %s\n",
                       replay_state_name(ri->ri_state), ri->ri_id,
                       replay_status_names[ri->ri_status], ri->ri_src_topic,
                       ri->ri_src_partition, ri->ri_src_offset,
                       ri->ri_note != NULL ? ri->ri_note : "not read");
        }
        if (listed > (size_t)ro->ro_list)
                printf("... and %zu more to publish (--list)\n",
                       listed - (size_t)ro->ro_list);
        return bad;
}

/* Asks on the terminal. @returns 1 if the answer is yes. */
static int replay_confirm(const struct replay_opts *ro, size_t n) {
        char answer[16];

        fflush(stdout);
        fprintf(stderr, "%s: publish %zu requests to %s? [y/N] ", tool_name(),
                n, ro->ro_to);
        if (fgets(answer, sizeof(answer), stdin) == NULL)
                return 0;
        return strcmp(answer, "y\n") == 0 || strcmp(answer, "yes\n") == 0 ||
               strcmp(answer, "Y\n") == 0;
}

/* Runs from rd_kafka_poll()/rd_kafka_flush() on the main thread. */
static void replay_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                         void *opaque) {
        struct replay_item *ri = rkm->_private;

        (void)rk;
        ri->ri_state = rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR ? ST_DELIVERED
                                                              : ST_FAILED;
        if (tool_delivery_count(opaque, rkm->err))
                tool_err("%s: delivery failed: %s", ri->ri_new_id,
                         tool_delivery_why(rkm));
}

/* Publishes the rewritten requests, keyed by their new ids, with the header
 * replay-of. *confp as for tool_kafka_new().
 * @returns an exit code. */
static int replay_publish(const struct replay_opts *ro, rd_kafka_conf_t **confp,
                          struct replay_item **sel, size_t nsel) {
        struct tool_deliveries td;
        rd_kafka_t *rk;
        int left;
        int failed = 0;

        memset(&td, 0, sizeof(td));
        rk = tool_producer_new(confp, replay_dr_cb, &td, ro->ro_to, NULL);
        if (rk == NULL)
                return TOOL_EXIT_KAFKA;
        for (size_t i = 0; i < nsel && tool_running() && !failed; i++) {
                struct replay_item *ri = sel[i];
                rd_kafka_resp_err_t err;

                if (ri->ri_state != ST_FOUND)
                        continue;
                for (;;) {
                        err = rd_kafka_producev(
                                rk, RD_KAFKA_V_TOPIC(ro->ro_to),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_KEY(ri->ri_new_id,
                                               strlen(ri->ri_new_id)),
                                RD_KAFKA_V_VALUE(ri->ri_request,
                                                 strlen(ri->ri_request)),
                                RD_KAFKA_V_HEADER(REPLAY_HEADER, ri->ri_id,
                                                  (ssize_t)strlen(ri->ri_id)),
                                RD_KAFKA_V_OPAQUE(ri), RD_KAFKA_V_END);
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL ||
                            !tool_running())
                                break;
                        rd_kafka_poll(rk, 100);
                }
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("%s: cannot produce: %s", ri->ri_new_id,
                                 tool_kafka_why(err, NULL, "Write", NULL));
                        ri->ri_state = ST_FAILED;
                        td.td_failed++;
                        failed = 1;
                }
                rd_kafka_poll(rk, 0);
                if (td.td_failed > 0 || tool_kafka_fatal())
                        failed = 1;
        }
        left = tool_producer_drain(rk, 500, NULL, NULL);
        rd_kafka_destroy(rk);
        printf("published=%lu failed=%lu\n", td.td_delivered,
               td.td_failed + (unsigned long)left);
        for (size_t i = 0; i < nsel; i++) {
                if (sel[i]->ri_state == ST_FOUND)
                        printf("not_published id=%s new_id=%s\n", sel[i]->ri_id,
                               sel[i]->ri_new_id);
        }
        if (td.td_failed > 0 || left > 0 || tool_kafka_fatal())
                return TOOL_EXIT_KAFKA;
        if (!tool_running()) {
                tool_err("interrupted");
                return TOOL_EXIT_INPUT;
        }
        return TOOL_EXIT_OK;
}

static void replay_free(struct replay_items *rv, struct replay_item **sel) {
        for (size_t i = 0; i < rv->rv_cnt; i++) {
                struct replay_item *ri = &rv->rv_v[i];

                free(ri->ri_id);
                free(ri->ri_base);
                free(ri->ri_src_topic);
                free(ri->ri_new_id);
                free(ri->ri_request);
                free(ri->ri_note);
        }
        free(rv->rv_v);
        free(sel);
}

int main(int argc, char **argv) {
        struct replay_opts ro = {
                .ro_suffix = REPLAY_DEFAULT_SUFFIX,
                .ro_statuses = 1u << RS_FAILED,
                .ro_since_ms = INT64_MIN,
                .ro_until_ms = INT64_MAX,
                .ro_list = REPLAY_DEFAULT_LIST,
                .ro_max = REPLAY_DEFAULT_MAX,
                .ro_timeout_ms = REPLAY_DEFAULT_TIMEOUT_MS,
        };
        struct replay_items rv;
        struct replay_item **sel = NULL;
        size_t nsel = 0;
        size_t bad = 0;
        size_t unmatched = 0;
        size_t to_publish = 0;
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_conf_t *pconf = NULL;
        rd_kafka_t *rk = NULL;
        enum tool_opts_result parsed;
        int64_t deadline;
        int rc = TOOL_EXIT_INPUT;
        int consuming = 0;

        tool_init("mailer-replay");
        memset(&rv, 0, sizeof(rv));
        ro.ro_ids = tool_idset_new();
        conf = tool_conf_new();
        if (conf == NULL || ro.ro_ids == NULL)
                goto out;
        parsed = replay_parse_args(argc, argv, conf, &ro);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }
        /* The producer gets the same -b/-X, plus its own defaults first. */
        pconf = rd_kafka_conf_dup(conf);
        if (tool_conf_set(pconf, "defaults", "enable.idempotence", "true") ==
                    -1 ||
            tool_conf_set(pconf, "defaults", "linger.ms", "5") == -1 ||
            replay_conf(conf) == -1)
                goto out;
        deadline = tool_now_ms() + ro.ro_timeout_ms;

        rc = TOOL_EXIT_KAFKA;
        rk = tool_kafka_new(RD_KAFKA_CONSUMER, &conf);
        if (rk == NULL)
                goto out;
        rd_kafka_poll_set_consumer(rk);
        consuming = 1;
        rc = replay_read_results(rk, &ro, &rv, deadline);
        if (rc != TOOL_EXIT_OK)
                goto out;
        if (replay_select(&ro, &rv, &sel, &nsel) == -1) {
                tool_err("out of memory");
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        if ((long long)nsel > ro.ro_max) {
                tool_err("%zu results selected, more than --max %lld; narrow "
                         "the selection or raise --max",
                         nsel, ro.ro_max);
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        if (tool_idset_count(ro.ro_ids) > nsel) {
                size_t pos = 0;
                const char *id;
                unsigned times;

                while (tool_idset_next(ro.ro_ids, &pos, &id, &times)) {
                        int found = 0;

                        for (size_t i = 0; i < nsel && !found; i++)
                                found = strcmp(sel[i]->ri_id, id) == 0;
                        if (!found) {
                                tool_err("--id %s: its latest final result on "
                                         "%s does not match, or it has none",
                                         id, ro.ro_results);
                                unmatched++;
                        }
                }
        }
        qsort(sel, nsel, sizeof(*sel), replay_cmp_source);
        rc = replay_fetch(rk, sel, nsel, deadline);
        if (rc != TOOL_EXIT_OK)
                goto out;
        bad = replay_report(&ro, sel, nsel, &to_publish);
        if (!ro.ro_publish) {
                tool_err("dry run: nothing published; --publish would publish "
                         "%zu requests to %s",
                         to_publish, ro.ro_to);
        } else if (to_publish > 0) {
                if (!ro.ro_yes && !replay_confirm(&ro, to_publish)) {
                        tool_err("not confirmed; nothing published");
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
                rc = replay_publish(&ro, &pconf, sel, nsel);
                if (rc != TOOL_EXIT_OK)
                        goto out;
        }
        if (bad > 0)
                tool_err("%zu selected requests cannot be replayed", bad);
        if (bad > 0 || unmatched > 0)
                rc = REPLAY_EXIT_UNREPLAYABLE;
out:
        rc = tool_consumer_finish(rk, consuming, conf, NULL, rc);
        if (pconf != NULL)
                rd_kafka_conf_destroy(pconf);
        replay_free(&rv, sel);
        tool_idset_destroy(ro.ro_ids);
        return rc;
}
