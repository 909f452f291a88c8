/*
 * mailer-admin: small Kafka chores for running and testing kafka-mailer.
 *
 *   mailer-admin [-b BOOTSTRAP] [-F FILE]... [-X prop=value]... COMMAND [ARGS]
 *
 *   create-topics NAME:PARTITIONS...   create topics (replication 1) and wait
 *                                      until every partition has a leader
 *   offsets GROUP TOPIC                committed offset, end and lag per
 *                                      partition; exit 3 if any lag
 *   wait-ready [--timeout S]           wait until the broker answers
 *   count TOPIC                        number of messages in the topic
 */
#include "tools.h"

#include <unistd.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ADMIN_QUERY_TIMEOUT_MS 10000
#define ADMIN_CREATE_TIMEOUT_MS 30000
#define ADMIN_READY_TIMEOUT_MS 30000
#define ADMIN_MAX_PARTITIONS 100000
/* Exit status of "offsets" when some partition has a lag. */
#define ADMIN_EXIT_LAG 3

/* offsets --wait: the pause between two queries. */
#define ADMIN_WAIT_INTERVAL_MS 50
/* offsets --wait: how often progress goes to stderr. */
#define ADMIN_WAIT_PROGRESS_MS 2000

struct admin_opts {
        int64_t ao_timeout_ms; /* -1: the command's default */
        int64_t ao_wait_ms; /* offsets: query until no lag for this long; 0: once */
        const char *ao_cmd;
        int ao_argc; /* the command's arguments */
        char **ao_argv;
};

/* Queries a partition's watermarks, retrying for a while on the errors a
 * newly created topic gives until its leader is known everywhere. */
static rd_kafka_resp_err_t admin_watermarks(rd_kafka_t *rk, const char *topic,
                                            int32_t partition, int64_t *lo,
                                            int64_t *hi, int timeout_ms) {
        rd_kafka_resp_err_t err;

        for (int attempt = 0; attempt < 20; attempt++) {
                err = rd_kafka_query_watermark_offsets(rk, topic, partition, lo,
                                                       hi, timeout_ms);
                if (err != RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
                    err != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE &&
                    err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                        return err;
                usleep(250 * 1000);
        }
        return err;
}

static void admin_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-admin [options] COMMAND [ARGS]\n"
                "\n"
                "Commands:\n"
                "  create-topics NAME:PARTITIONS [NAME:PARTITIONS...]\n"
                "        create topics with replication factor 1; a topic that exists with\n"
                "        the same partition count is fine. Waits until the metadata shows\n"
                "        every partition with a leader (--timeout, default 30 s).\n"
                "  offsets GROUP TOPIC [--wait S]\n"
                "        print \"partition=P committed=C end=E lag=L\" per partition and a\n"
                "        total line; exit 0 if every lag is 0, 3 otherwise. With --wait,\n"
                "        query every 50 ms until every lag is 0 or S seconds passed (the\n"
                "        lag goes to stderr every 2 s), then print the last answer and\n"
                "        \"caught_up_ms=T\": when the query that found no lag was sent\n"
                "        (Unix time in ms; the group's last commit came before it).\n"
                "  wait-ready [--timeout S]\n"
                "        wait until the broker answers a metadata request (default 30 s);\n"
                "        exit 0 when it does, 1 on timeout.\n"
                "  count TOPIC\n"
                "        print the number of messages in TOPIC (sum of high - low\n"
                "        watermarks over its partitions).\n"
                "\n"
                "Options (before or after COMMAND):\n"
                "  -b BOOTSTRAP      bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -X prop=value     librdkafka property (repeatable; later wins)\n"
                "  -F FILE           librdkafka properties file (key=value lines; repeatable)\n"
                "      --timeout S   how long to wait (default 30 s for create-topics and\n"
                "                    wait-ready, 10 s for each query otherwise)\n"
                "  -h, --help        this help\n"
                "\n"
                "Exit status: 0 ok, 1 usage error or timeout, 2 Kafka error,\n"
                "3 (offsets) some partition has a lag.\n");
}

/* --wait S: arg is the int64_t of milliseconds. */
static int admin_opt_wait(const char *value, void *arg) {
        char *end;
        double sec = strtod(value, &end);

        if (end == value || *end != '\0' || !(sec > 0) || sec > 86400) {
                tool_err("--wait: expected seconds in (0, 86400], got \"%s\"",
                         value);
                return -1;
        }
        *(int64_t *)arg = (int64_t)(sec * 1000);
        return 0;
}

/* Parses the options found before and after the command, and finds the
 * command and its arguments.
 * @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result admin_parse_args(int argc, char **argv,
                                              rd_kafka_conf_t *conf,
                                              struct admin_opts *ao) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_SECONDS("timeout", 0, &ao->ao_timeout_ms,
                                 "--timeout %s: expected seconds"),
                TOOL_OPT_CALL("wait", 0, admin_opt_wait, &ao->ao_wait_ms),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, TOOL_OPTS_IN_ORDER,
                              admin_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (optind >= argc) {
                tool_err("expected a command");
                admin_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        ao->ao_cmd = argv[optind];
        /* Options may also follow the command. In the command's own argv
         * (the command is its argv[0]) getopt moves them before the
         * arguments, which end up at argv[optind..]. */
        argc -= optind;
        argv += optind;
        optind = 0;
        res = tool_opts_parse(argc, argv, opts, 0, admin_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        ao->ao_argc = argc - optind;
        ao->ao_argv = argv + optind;
        return TOOL_OPTS_RUN;
}

static int admin_timeout(const struct admin_opts *ao, int dflt_ms) {
        if (ao->ao_timeout_ms < 0)
                return dflt_ms;
        if (ao->ao_timeout_ms > INT32_MAX)
                return INT32_MAX;
        return (int)ao->ao_timeout_ms;
}

/*
 * create-topics
 */

struct admin_topic {
        char *at_name;
        int at_partitions;
        char *at_configs; /* "key=value,key=value" or NULL */
};

/* Parses "NAME:PARTITIONS[,key=value...]" into *at (strings owned by the
 * caller). Topic names cannot hold ':' or ','. @returns 0 or -1 after
 * printing why. */
static int admin_topic_parse(const char *arg, struct admin_topic *at) {
        const char *colon = strchr(arg, ':');
        const char *comma = colon ? strchr(colon, ',') : NULL;
        char num[16];
        long long n;

        if (colon != NULL && (size_t)((comma ? comma : colon + strlen(colon)) -
                                      (colon + 1)) < sizeof(num)) {
                size_t len = (size_t)((comma ? comma : colon + strlen(colon)) -
                                      (colon + 1));

                memcpy(num, colon + 1, len);
                num[len] = '\0';
        } else {
                num[0] = '\0';
        }
        if (colon == NULL || colon == arg ||
            tool_parse_int(num, 1, ADMIN_MAX_PARTITIONS, &n) == -1) {
                tool_err("%s: expected NAME:PARTITIONS[,key=value...] "
                         "(1..%d partitions)",
                         arg, ADMIN_MAX_PARTITIONS);
                return -1;
        }
        at->at_name = strndup(arg, (size_t)(colon - arg));
        at->at_configs = comma ? strdup(comma + 1) : NULL;
        if (at->at_name == NULL || (comma && at->at_configs == NULL)) {
                tool_err("out of memory");
                return -1;
        }
        at->at_partitions = (int)n;
        return 0;
}

/* Sets the "key=value,..." topic configs of @at on @nt.
 * @returns 0 or -1 after printing why. */
static int admin_topic_configs(const struct admin_topic *at,
                               rd_kafka_NewTopic_t *nt) {
        char *copy, *save = NULL, *kv;
        int ret = 0;

        if (at->at_configs == NULL)
                return 0;
        copy = strdup(at->at_configs);
        if (copy == NULL)
                return -1;
        for (kv = strtok_r(copy, ",", &save); kv && ret == 0;
             kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');

                if (eq == NULL || eq == kv) {
                        tool_err("topic %s: \"%s\": expected key=value",
                                 at->at_name, kv);
                        ret = -1;
                        break;
                }
                *eq = '\0';
                if (rd_kafka_NewTopic_set_config(nt, kv, eq + 1) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("topic %s: config %s refused", at->at_name,
                                 kv);
                        ret = -1;
                }
        }
        free(copy);
        return ret;
}

/* Checks the metadata of one topic.
 * @returns 1 if it exists and every partition has a leader, 0 if not yet,
 * -1 if it exists with another partition count (printed). */
static int admin_topic_ready(rd_kafka_t *rk, const struct admin_topic *at,
                             int timeout_ms) {
        const struct rd_kafka_metadata *md = NULL;
        const rd_kafka_metadata_topic_t *mt;
        rd_kafka_topic_t *rkt;
        int ret = 0;

        rkt = rd_kafka_topic_new(rk, at->at_name, NULL);
        if (rkt == NULL)
                return 0;
        if (rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
                goto out;
        if (md->topic_cnt != 1)
                goto out;
        mt = &md->topics[0];
        if (mt->err != RD_KAFKA_RESP_ERR_NO_ERROR || mt->partition_cnt == 0)
                goto out;
        if (mt->partition_cnt != at->at_partitions) {
                tool_err("topic %s exists with %d partitions, not %d",
                         at->at_name, mt->partition_cnt, at->at_partitions);
                ret = -1;
                goto out;
        }
        for (int i = 0; i < mt->partition_cnt; i++) {
                if (mt->partitions[i].err != RD_KAFKA_RESP_ERR_NO_ERROR ||
                    mt->partitions[i].leader < 0)
                        goto out;
        }
        ret = 1;
out:
        if (md != NULL)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return ret;
}

/* @returns the exit code for a topic the broker refused to create. */
static int admin_create_exit(rd_kafka_resp_err_t err) {
        switch (err) {
        case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        case RD_KAFKA_RESP_ERR_INVALID_PARTITIONS:
        case RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
                return TOOL_EXIT_INPUT; /* a bad name or count */
        default:
                return TOOL_EXIT_KAFKA;
        }
}

/* Sends one CreateTopics request for every topic and reports each result.
 * @returns TOOL_EXIT_OK or an exit code. */
static int admin_create_request(rd_kafka_t *rk, struct admin_topic *topics,
                                int cnt, int timeout_ms) {
        rd_kafka_NewTopic_t **nts = NULL;
        rd_kafka_AdminOptions_t *opts = NULL;
        rd_kafka_queue_t *q = NULL;
        rd_kafka_event_t *ev = NULL;
        const rd_kafka_CreateTopics_result_t *res;
        const rd_kafka_topic_result_t **trs;
        char errstr[512];
        size_t tr_cnt = 0;
        int rc = TOOL_EXIT_KAFKA;

        nts = calloc((size_t)cnt, sizeof(*nts));
        if (nts == NULL) {
                tool_err("out of memory");
                goto out;
        }
        for (int i = 0; i < cnt; i++) {
                nts[i] = rd_kafka_NewTopic_new(topics[i].at_name,
                                               topics[i].at_partitions, 1,
                                               errstr, sizeof(errstr));
                if (nts[i] == NULL) {
                        tool_err("topic %s: %s", topics[i].at_name, errstr);
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
                if (admin_topic_configs(&topics[i], nts[i]) == -1) {
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
        }
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
        if (rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, errstr,
                                                      sizeof(errstr)) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR ||
            rd_kafka_AdminOptions_set_operation_timeout(
                    opts, timeout_ms, errstr, sizeof(errstr)) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("admin options: %s", errstr);
                goto out;
        }
        q = rd_kafka_queue_new(rk);
        rd_kafka_CreateTopics(rk, nts, (size_t)cnt, opts, q);
        /* The request times out on its own; wait a little longer. */
        ev = rd_kafka_queue_poll(q, timeout_ms + 5000);
        if (ev == NULL) {
                tool_err("CreateTopics: no reply");
                goto out;
        }
        if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("CreateTopics: %s", rd_kafka_event_error_string(ev));
                goto out;
        }
        res = rd_kafka_event_CreateTopics_result(ev);
        if (res == NULL) {
                tool_err("CreateTopics: unexpected %s event",
                         rd_kafka_event_name(ev));
                goto out;
        }
        trs = rd_kafka_CreateTopics_result_topics(res, &tr_cnt);
        rc = TOOL_EXIT_OK;
        for (size_t i = 0; i < tr_cnt; i++) {
                rd_kafka_resp_err_t err = rd_kafka_topic_result_error(trs[i]);
                const char *name = rd_kafka_topic_result_name(trs[i]);

                if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                        fprintf(stderr, "%s: created %s\n", tool_name(), name);
                } else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                        fprintf(stderr, "%s: %s already exists\n", tool_name(),
                                name);
                } else {
                        const char *msg =
                                rd_kafka_topic_result_error_string(trs[i]);

                        tool_err("cannot create %s: %s", name,
                                 tool_kafka_why(err, msg, "Create", name));
                        rc = admin_create_exit(err);
                }
        }
out:
        if (ev != NULL)
                rd_kafka_event_destroy(ev);
        if (q != NULL)
                rd_kafka_queue_destroy(q);
        if (opts != NULL)
                rd_kafka_AdminOptions_destroy(opts);
        if (nts != NULL) {
                for (int i = 0; i < cnt; i++) {
                        if (nts[i] != NULL)
                                rd_kafka_NewTopic_destroy(nts[i]);
                }
                free(nts);
        }
        return rc;
}

static int admin_create_topics(rd_kafka_t *rk, int argc, char **argv,
                               const struct admin_opts *ao) {
        struct admin_topic *topics = NULL;
        int timeout_ms = admin_timeout(ao, ADMIN_CREATE_TIMEOUT_MS);
        int64_t deadline;
        int rc = TOOL_EXIT_INPUT;
        int cnt = 0;

        if (argc < 1) {
                tool_err("create-topics: expected NAME:PARTITIONS...");
                return TOOL_EXIT_INPUT;
        }
        topics = calloc((size_t)argc, sizeof(*topics));
        if (topics == NULL) {
                tool_err("out of memory");
                goto out;
        }
        for (cnt = 0; cnt < argc; cnt++) {
                if (admin_topic_parse(argv[cnt], &topics[cnt]) == -1)
                        goto out;
        }
        deadline = tool_now_ms() + timeout_ms;
        rc = admin_create_request(rk, topics, cnt, timeout_ms);
        if (rc != TOOL_EXIT_OK)
                goto out;

        /* The topics exist on the controller; wait until the broker's
         * metadata shows them with leaders, so producers can use them. */
        for (int i = 0; i < cnt; i++) {
                int ready = 0;

                while (tool_running()) {
                        ready = admin_topic_ready(rk, &topics[i], 2000);
                        if (ready != 0 || tool_now_ms() >= deadline)
                                break;
                        rd_kafka_poll(rk, 200);
                }
                if (ready == -1) {
                        rc = TOOL_EXIT_KAFKA;
                        goto out;
                }
                if (ready == 0) {
                        tool_err("topic %s: no leaders after %d ms",
                                 topics[i].at_name, timeout_ms);
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
        }
        rc = TOOL_EXIT_OK;
out:
        if (topics != NULL) {
                for (int i = 0; i < argc; i++) {
                        free(topics[i].at_name);
                        free(topics[i].at_configs);
                }
                free(topics);
        }
        return rc;
}

/*
 * offsets
 */

/* One query of @group's committed offsets and @topic's end offsets.
 * @returns 0 with the lines for stdout in @out (freed by the caller) and
 * the totals, or -1 after printing why. */
static int admin_offsets_query(rd_kafka_t *rk, const char *group,
                               const char *topic, const int32_t *parts, int cnt,
                               int timeout_ms, char **out, int64_t *total_end,
                               int64_t *total_lag) {
        rd_kafka_topic_partition_list_t *tpl;
        rd_kafka_resp_err_t err;
        char *text = NULL;
        size_t text_len = 0;
        FILE *fp;
        int lagging = 0;
        int rc = -1;

        fp = open_memstream(&text, &text_len);
        if (fp == NULL) {
                tool_err("out of memory");
                return -1;
        }
        *total_end = *total_lag = 0;
        tpl = rd_kafka_topic_partition_list_new(cnt);
        for (int i = 0; i < cnt; i++)
                rd_kafka_topic_partition_list_add(tpl, topic, parts[i]);
        err = rd_kafka_committed(rk, tpl, timeout_ms);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("committed offsets of group %s: %s", group,
                         tool_kafka_why(err, NULL, "Describe", topic));
                goto out;
        }
        for (int i = 0; i < tpl->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &tpl->elems[i];
                int64_t lo = 0;
                int64_t hi = 0;
                int64_t lag;

                if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("%s [%" PRId32 "]: %s", topic, tp->partition,
                                 tool_kafka_why(tp->err, NULL, "Describe",
                                                topic));
                        goto out;
                }
                err = admin_watermarks(rk, topic, tp->partition, &lo, &hi,
                                       timeout_ms);
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("%s [%" PRId32 "]: end offset: %s", topic,
                                 tp->partition,
                                 tool_kafka_why(err, NULL, "Describe", topic));
                        goto out;
                }
                if (tp->offset >= 0) {
                        lag = hi - tp->offset;
                        if (lag < 0)
                                lag = 0;
                        fprintf(fp,
                                "partition=%" PRId32 " committed=%" PRId64
                                " end=%" PRId64 " lag=%" PRId64 "\n",
                                tp->partition, tp->offset, hi, lag);
                } else {
                        /* Nothing committed: everything still there is
                         * unconsumed. */
                        lag = hi - lo;
                        fprintf(fp,
                                "partition=%" PRId32 " committed=none"
                                " end=%" PRId64 " lag=%" PRId64 "\n",
                                tp->partition, hi, lag);
                }
                *total_end += hi;
                *total_lag += lag;
                if (lag > 0)
                        lagging++;
        }
        fprintf(fp,
                "total partitions=%d end=%" PRId64 " lag=%" PRId64
                " lagging=%d\n",
                tpl->cnt, *total_end, *total_lag, lagging);
        rc = 0;
out:
        fclose(fp);
        rd_kafka_topic_partition_list_destroy(tpl);
        if (rc == 0)
                *out = text;
        else
                free(text);
        return rc;
}

static int admin_offsets(rd_kafka_conf_t **confp, int argc, char **argv,
                         const struct admin_opts *ao) {
        rd_kafka_t *rk = NULL;
        int timeout_ms = admin_timeout(ao, ADMIN_QUERY_TIMEOUT_MS);
        const char *group;
        const char *topic;
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        int64_t total_end = 0;
        int64_t total_lag = 0;
        int64_t sent_ms = 0; /* Unix time, ms */
        int64_t deadline;
        int64_t next_progress;
        char *text = NULL;
        int rc = TOOL_EXIT_INPUT;

        if (argc != 2) {
                tool_err("offsets: expected GROUP TOPIC");
                goto out;
        }
        group = argv[0];
        topic = argv[1];
        /* A consumer with the group's id that never subscribes: it reads the
         * group's committed offsets without joining or disturbing it. */
        if (tool_conf_set(*confp, "group", "group.id", group) == -1 ||
            tool_conf_set(*confp, "defaults", "enable.auto.commit", "false") ==
                    -1)
                goto out;
        rc = TOOL_EXIT_KAFKA;
        rk = tool_kafka_new(RD_KAFKA_CONSUMER, confp);
        if (rk == NULL)
                goto out;
        if (tool_topic_partitions(rk, topic, timeout_ms, &parts, &cnt, errstr,
                                  sizeof(errstr)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("%s", errstr);
                goto out;
        }
        deadline = tool_now_ms() + ao->ao_wait_ms;
        next_progress = tool_now_ms() + ADMIN_WAIT_PROGRESS_MS;
        for (;;) {
                free(text);
                text = NULL;
                {
                        struct timespec ts;

                        clock_gettime(CLOCK_REALTIME, &ts);
                        sent_ms = (int64_t)ts.tv_sec * 1000 +
                                  ts.tv_nsec / 1000000;
                }
                if (admin_offsets_query(rk, group, topic, parts, cnt,
                                        timeout_ms, &text, &total_end,
                                        &total_lag) == -1)
                        goto out;
                if (total_lag == 0 || ao->ao_wait_ms == 0 ||
                    tool_now_ms() >= deadline || !tool_running())
                        break;
                if (tool_now_ms() >= next_progress) {
                        fprintf(stderr,
                                "mailer-admin: lag=%" PRId64 " of %" PRId64
                                "\n",
                                total_lag, total_end);
                        next_progress = tool_now_ms() + ADMIN_WAIT_PROGRESS_MS;
                }
                usleep(ADMIN_WAIT_INTERVAL_MS * 1000);
        }
        fputs(text, stdout);
        if (ao->ao_wait_ms > 0 && total_lag == 0)
                printf("caught_up_ms=%" PRId64 "\n", sent_ms);
        rc = total_lag > 0 ? ADMIN_EXIT_LAG : TOOL_EXIT_OK;
out:
        free(text);
        free(parts);
        if (rk != NULL) {
                rd_kafka_consumer_close(rk);
                rd_kafka_destroy(rk);
        }
        return rc;
}

/*
 * wait-ready
 */

static int admin_wait_ready(rd_kafka_t *rk, const struct admin_opts *ao) {
        int timeout_ms = admin_timeout(ao, ADMIN_READY_TIMEOUT_MS);
        int64_t deadline = tool_now_ms() + timeout_ms;

        tool_kafka_set_quiet(1);
        while (tool_running()) {
                const struct rd_kafka_metadata *md = NULL;
                int64_t left = deadline - tool_now_ms();
                rd_kafka_resp_err_t err;
                int brokers;

                if (left <= 0)
                        break;
                err = rd_kafka_metadata(rk, 0, NULL, &md,
                                        left < 1000 ? (int)left : 1000);
                if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                        brokers = md->broker_cnt;
                        rd_kafka_metadata_destroy(md);
                        if (brokers > 0) {
                                tool_kafka_set_quiet(0);
                                return TOOL_EXIT_OK;
                        }
                }
                rd_kafka_poll(rk, 100);
        }
        tool_kafka_set_quiet(0);
        if (*tool_kafka_cause() != '\0') {
                tool_err("broker not ready after %.1f s%s",
                         (double)timeout_ms / 1000.0, tool_kafka_cause_note());
                return TOOL_EXIT_KAFKA;
        }
        tool_err("broker not ready after %.1f s%s%s",
                 (double)timeout_ms / 1000.0,
                 *tool_kafka_last_error() != '\0' ? ": " : "",
                 tool_kafka_last_error());
        return TOOL_EXIT_INPUT;
}

/*
 * count
 */

static int admin_count(rd_kafka_t *rk, int argc, char **argv,
                       const struct admin_opts *ao) {
        int timeout_ms = admin_timeout(ao, ADMIN_QUERY_TIMEOUT_MS);
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        int64_t total = 0;
        int rc = TOOL_EXIT_KAFKA;

        if (argc != 1) {
                tool_err("count: expected TOPIC");
                return TOOL_EXIT_INPUT;
        }
        if (tool_topic_partitions(rk, argv[0], timeout_ms, &parts, &cnt, errstr,
                                  sizeof(errstr)) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("%s", errstr);
                goto out;
        }
        for (int i = 0; i < cnt; i++) {
                int64_t lo = 0;
                int64_t hi = 0;
                rd_kafka_resp_err_t err;

                err = admin_watermarks(rk, argv[0], parts[i], &lo, &hi,
                                       timeout_ms);
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err(
                                "%s [%" PRId32 "]: %s", argv[0], parts[i],
                                tool_kafka_why(err, NULL, "Describe", argv[0]));
                        goto out;
                }
                total += hi - lo;
        }
        printf("%" PRId64 "\n", total);
        rc = TOOL_EXIT_OK;
out:
        free(parts);
        return rc;
}

int main(int argc, char **argv) {
        struct admin_opts ao = {.ao_timeout_ms = -1};
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        enum tool_opts_result parsed;
        int rc = TOOL_EXIT_INPUT;

        tool_init("mailer-admin");
        conf = tool_conf_new();
        if (conf == NULL)
                goto out;
        /* Never create a topic by asking for its metadata. */
        if (tool_conf_set(conf, "defaults", "allow.auto.create.topics",
                          "false") == -1)
                goto out;
        parsed = admin_parse_args(argc, argv, conf, &ao);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }

        if (strcmp(ao.ao_cmd, "offsets") == 0) {
                rc = admin_offsets(&conf, ao.ao_argc, ao.ao_argv, &ao);
                goto out;
        }
        if (strcmp(ao.ao_cmd, "create-topics") != 0 &&
            strcmp(ao.ao_cmd, "wait-ready") != 0 &&
            strcmp(ao.ao_cmd, "count") != 0) {
                tool_err("unknown command: %s", ao.ao_cmd);
                admin_usage(stderr);
                goto out;
        }
        rc = TOOL_EXIT_KAFKA;
        rk = tool_kafka_new(RD_KAFKA_PRODUCER, &conf);
        if (rk == NULL)
                goto out;
        if (strcmp(ao.ao_cmd, "create-topics") == 0)
                rc = admin_create_topics(rk, ao.ao_argc, ao.ao_argv, &ao);
        else if (strcmp(ao.ao_cmd, "wait-ready") == 0)
                rc = admin_wait_ready(rk, &ao);
        else
                rc = admin_count(rk, ao.ao_argc, ao.ao_argv, &ao);
out:
        if (rk != NULL)
                rd_kafka_destroy(rk);
        if (conf != NULL)
                rd_kafka_conf_destroy(conf);
        return rc;
}
