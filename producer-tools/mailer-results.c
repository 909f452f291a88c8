/*
 * mailer-results: reads the results topic, prints each result as a JSON line
 * or a summary, and can wait until a number of requests have a final result.
 *
 *   mailer-results [-b BOOTSTRAP] [-t TOPIC] [-g GROUP] [--summary]
 *                  [--wait N] [--timeout S] [--follow] [-F FILE]... [-X prop=value]...
 *
 * Without -g, every partition is assigned at its beginning (no group, no
 * commits). With -g, the tool subscribes as a member of GROUP and goes on
 * from the group's committed offsets. It stops at the end the topic had when
 * the tool started, or, with --wait N, once N distinct ids have a final
 * result, or never with --follow.
 */
#include "tools.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define RESULTS_DEFAULT_TOPIC "email.results"
#define RESULTS_QUERY_TIMEOUT_MS 10000
#define RESULTS_PROGRESS_MS 2000
#define RESULTS_POLL_MS 100
#define RESULTS_ASSIGN_GROUP "mailer-results-nogroup"

struct results_opts {
        const char *ro_topic;
        const char *ro_group; /* NULL: assign() from the beginning */
        int ro_summary;
        long long ro_wait; /* 0: not waiting for a count */
        int64_t ro_timeout_ms; /* -1: none */
        int ro_follow;
};

struct results_stats {
        unsigned long rs_total;
        unsigned long rs_sent;
        unsigned long rs_failed;
        unsigned long rs_rejected;
        unsigned long rs_expired;
        unsigned long rs_delivered[3]; /* "delivered": all, some, none */
        unsigned long rs_other;
        unsigned long rs_invalid; /* not a JSON object */
        unsigned long rs_no_id;
        unsigned long rs_with_id;
        struct tool_idset *rs_ids;
        struct tool_idset *rs_final_ids;
        int64_t *rs_lat; /* latency_ms of sent results */
        size_t rs_lat_cnt;
        size_t rs_lat_cap;
};

static void results_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-results [options]\n"
                "\n"
                "Reads delivery results from a Kafka topic and prints each one as a JSON\n"
                "line on stdout, from the beginning of the topic to the end it had at start.\n"
                "\n"
                "Options:\n"
                "  -b BOOTSTRAP      bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -t TOPIC          topic (default " RESULTS_DEFAULT_TOPIC
                ")\n"
                "  -g GROUP          consume as a member of GROUP, from its committed\n"
                "                    offsets (earliest if none), and commit; without -g all\n"
                "                    partitions are read from the beginning, nothing committed\n"
                "  -X prop=value     librdkafka property (repeatable; later wins)\n"
                "  -F FILE           librdkafka properties file (key=value lines; repeatable)\n"
                "      --summary     print counts by status, distinct and duplicate ids and\n"
                "                    latency percentiles (sent only) instead of the results\n"
                "      --wait N      read until N distinct ids have a final result\n"
                "                    (sent, failed, rejected, expired); progress on stderr\n"
                "      --timeout S   give up after S seconds (exit 1; with --follow: stop, exit 0)\n"
                "      --follow      keep reading new results until interrupted\n"
                "  -h, --help        this help\n"
                "\n"
                "Exit status: 0 done, 1 usage error, timeout or interrupted before done,\n"
                "2 Kafka error (no such topic, broker unreachable).\n");
}

/* @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result results_parse_args(int argc, char **argv,
                                                rd_kafka_conf_t *conf,
                                                struct results_opts *ro) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_STRING(NULL, 't', &ro->ro_topic),
                TOOL_OPT_STRING(NULL, 'g', &ro->ro_group),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_FLAG("summary", 0, &ro->ro_summary),
                TOOL_OPT_INT("wait", 0, &ro->ro_wait, 1, 1000000000LL,
                             "--wait %s: expected a count >= 1"),
                TOOL_OPT_SECONDS("timeout", 0, &ro->ro_timeout_ms,
                                 "--timeout %s: expected seconds"),
                TOOL_OPT_FLAG("follow", 0, &ro->ro_follow),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, TOOL_OPTS_NO_OPERANDS,
                              results_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (*ro->ro_topic == '\0' ||
            (ro->ro_group != NULL && *ro->ro_group == '\0')) {
                tool_err("empty topic or group name");
                return TOOL_OPTS_ERROR;
        }
        if (ro->ro_follow && ro->ro_wait > 0) {
                tool_err("--follow and --wait cannot be combined");
                return TOOL_OPTS_ERROR;
        }
        return TOOL_OPTS_RUN;
}

/* Builds the consumer's configuration on top of the -X properties. */
static int results_conf(rd_kafka_conf_t *conf, const struct results_opts *ro) {
        if (tool_conf_set(conf, "defaults", "enable.partition.eof", "true") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "auto.offset.reset", "earliest") ==
                    -1)
                return -1;
        if (ro->ro_group != NULL)
                return tool_conf_set(conf, "-g", "group.id", ro->ro_group);
        /* librdkafka 2.0 needs a group.id even for assign(); this one is
         * never joined and nothing is committed to it. */
        if (tool_conf_set(conf, "defaults", "group.id", RESULTS_ASSIGN_GROUP) ==
            -1)
                return -1;
        return tool_conf_set(conf, "defaults", "enable.auto.commit", "false");
}

/* Lists the topic's partitions and their current ends; every partition is
 * put in *assignp from its beginning. Waiting modes retry until the topic
 * exists, bounded by the deadline.
 * @returns TOOL_EXIT_OK, or an exit code after printing why. */
static int results_ends_init(rd_kafka_t *rk, const struct results_opts *ro,
                             int64_t deadline, struct tool_ends *re,
                             rd_kafka_topic_partition_list_t **assignp) {
        rd_kafka_topic_partition_list_t *tpl = NULL;
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        int rc = TOOL_EXIT_KAFKA;
        rd_kafka_resp_err_t err;
        int said = 0;

        for (;;) {
                err = tool_topic_partitions(rk, ro->ro_topic,
                                            RESULTS_QUERY_TIMEOUT_MS, &parts,
                                            &cnt, errstr, sizeof(errstr));
                if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
                        break;
                if (err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                    (ro->ro_wait == 0 && !ro->ro_follow)) {
                        tool_err("%s", errstr);
                        goto out;
                }
                if (!said) {
                        tool_err("%s yet; waiting for it", errstr);
                        said = 1;
                }
                if (!tool_running() ||
                    (deadline >= 0 && tool_now_ms() >= deadline)) {
                        tool_err("%s", errstr);
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
                rd_kafka_poll(rk, 1000);
        }

        rc = tool_ends_init(rk, re, ro->ro_topic, parts, cnt,
                            RESULTS_QUERY_TIMEOUT_MS);
        if (rc != TOOL_EXIT_OK)
                goto out;
        tpl = rd_kafka_topic_partition_list_new(cnt);
        for (int i = 0; i < cnt; i++)
                rd_kafka_topic_partition_list_add(tpl, ro->ro_topic, parts[i])
                        ->offset = RD_KAFKA_OFFSET_BEGINNING;
        *assignp = tpl;
out:
        free(parts);
        return rc;
}

static int results_lat_add(struct results_stats *rs, int64_t v) {
        if (rs->rs_lat_cnt == rs->rs_lat_cap) {
                size_t ncap = rs->rs_lat_cap ? rs->rs_lat_cap * 2 : 1024;
                int64_t *n = realloc(rs->rs_lat, ncap * sizeof(*n));

                if (n == NULL)
                        return -1;
                rs->rs_lat = n;
                rs->rs_lat_cap = ncap;
        }
        rs->rs_lat[rs->rs_lat_cnt++] = v;
        return 0;
}

/* Accounts for one result object.
 * @returns 0, or -1 if out of memory. */
static int results_count(struct results_stats *rs, json_t *obj) {
        const char *status = json_string_value(json_object_get(obj, "status"));
        json_t *id = json_object_get(obj, "id");
        json_t *lat = json_object_get(obj, "latency_ms");
        int final = 1;

        const char *delivered =
                json_string_value(json_object_get(obj, "delivered"));

        rs->rs_total++;
        if (delivered && strcmp(delivered, "all") == 0)
                rs->rs_delivered[0]++;
        else if (delivered && strcmp(delivered, "some") == 0)
                rs->rs_delivered[1]++;
        else if (delivered && strcmp(delivered, "none") == 0)
                rs->rs_delivered[2]++;
        if (status == NULL) {
                rs->rs_other++;
                final = 0;
        } else if (strcmp(status, "sent") == 0) {
                rs->rs_sent++;
                if (json_is_number(lat) &&
                    results_lat_add(rs, (int64_t)json_number_value(lat)) == -1)
                        return -1;
        } else if (strcmp(status, "failed") == 0) {
                rs->rs_failed++;
        } else if (strcmp(status, "rejected") == 0) {
                rs->rs_rejected++;
        } else if (strcmp(status, "expired") == 0) {
                rs->rs_expired++;
        } else {
                rs->rs_other++;
                final = 0;
        }

        if (!json_is_string(id)) {
                rs->rs_no_id++;
                return 0;
        }
        rs->rs_with_id++;
        if (tool_idset_add(rs->rs_ids, json_string_value(id),
                           json_string_length(id)) == -1)
                return -1;
        if (final && tool_idset_add(rs->rs_final_ids, json_string_value(id),
                                    json_string_length(id)) == -1)
                return -1;
        return 0;
}

/* Prints one result as a single line; values the worker wrote are already
 * compact, anything else is re-encoded so one result stays one line.
 * @returns 0 or -1 on a write error. */
static int results_print(const rd_kafka_message_t *rkm, json_t *obj) {
        const char *v = rkm->payload;
        char *dump;
        int ret;

        if (memchr(v, '\n', rkm->len) == NULL &&
            memchr(v, '\r', rkm->len) == NULL) {
                if (fwrite(v, 1, rkm->len, stdout) != rkm->len ||
                    putchar('\n') == EOF)
                        return -1;
                return 0;
        }
        dump = json_dumps(obj, JSON_COMPACT);
        if (dump == NULL)
                return -1;
        ret = puts(dump) == EOF ? -1 : 0;
        free(dump);
        return ret;
}

static void results_summary(struct results_stats *rs) {
        size_t ids = tool_idset_count(rs->rs_ids);

        tool_sort_i64(rs->rs_lat, rs->rs_lat_cnt);
        printf("results=%lu sent=%lu failed=%lu rejected=%lu expired=%lu "
               "other=%lu\n",
               rs->rs_total, rs->rs_sent, rs->rs_failed, rs->rs_rejected,
               rs->rs_expired, rs->rs_other);
        printf("delivered all=%lu some=%lu none=%lu\n", rs->rs_delivered[0],
               rs->rs_delivered[1], rs->rs_delivered[2]);
        printf("ids=%zu final_ids=%zu duplicates=%lu no_id=%lu invalid=%lu\n",
               ids, tool_idset_count(rs->rs_final_ids),
               rs->rs_with_id - (unsigned long)ids, rs->rs_no_id,
               rs->rs_invalid);
        if (rs->rs_lat_cnt == 0) {
                printf("latency_ms n=0\n");
                return;
        }
        printf("latency_ms n=%zu p50=%" PRId64 " p90=%" PRId64 " p99=%" PRId64
               " max=%" PRId64 "\n",
               rs->rs_lat_cnt, tool_percentile(rs->rs_lat, rs->rs_lat_cnt, 50),
               tool_percentile(rs->rs_lat, rs->rs_lat_cnt, 90),
               tool_percentile(rs->rs_lat, rs->rs_lat_cnt, 99),
               rs->rs_lat[rs->rs_lat_cnt - 1]);
}

int main(int argc, char **argv) {
        struct results_opts ro = {
                .ro_topic = RESULTS_DEFAULT_TOPIC,
                .ro_timeout_ms = -1,
        };
        struct tool_ends re;
        struct results_stats rs;
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        rd_kafka_topic_partition_list_t *tpl = NULL;
        rd_kafka_resp_err_t err;
        enum tool_opts_result parsed;
        int64_t deadline = -1;
        int64_t next_progress;
        int rc = TOOL_EXIT_INPUT;
        int done = 0;
        int consuming = 0;

        tool_init("mailer-results");
        memset(&re, 0, sizeof(re));
        memset(&rs, 0, sizeof(rs));
        conf = tool_conf_new();
        if (conf == NULL)
                goto out;
        parsed = results_parse_args(argc, argv, conf, &ro);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }
        if (results_conf(conf, &ro) == -1)
                goto out;
        rs.rs_ids = tool_idset_new();
        rs.rs_final_ids = tool_idset_new();
        if (rs.rs_ids == NULL || rs.rs_final_ids == NULL) {
                tool_err("out of memory");
                goto out;
        }
        if (ro.ro_timeout_ms >= 0)
                deadline = tool_now_ms() + ro.ro_timeout_ms;

        rc = TOOL_EXIT_KAFKA;
        rk = tool_kafka_new(RD_KAFKA_CONSUMER, &conf);
        if (rk == NULL)
                goto out;
        rc = results_ends_init(rk, &ro, deadline, &re, &tpl);
        if (rc != TOOL_EXIT_OK)
                goto out;
        rc = TOOL_EXIT_KAFKA;
        rd_kafka_poll_set_consumer(rk);
        if (ro.ro_group != NULL) {
                rd_kafka_topic_partition_list_t *sub;

                sub = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(sub, ro.ro_topic,
                                                  RD_KAFKA_PARTITION_UA);
                err = rd_kafka_subscribe(rk, sub);
                rd_kafka_topic_partition_list_destroy(sub);
        } else {
                err = rd_kafka_assign(rk, tpl);
        }
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("cannot %s %s: %s",
                         ro.ro_group != NULL ? "subscribe to" : "assign",
                         ro.ro_topic, rd_kafka_err2str(err));
                goto out;
        }
        consuming = 1;

        next_progress = tool_now_ms() + RESULTS_PROGRESS_MS;
        while (tool_running()) {
                rd_kafka_message_t *rkm;
                json_t *obj;
                int64_t now;

                if (ro.ro_wait > 0) {
                        done = tool_idset_count(rs.rs_final_ids) >=
                               (size_t)ro.ro_wait;
                } else if (!ro.ro_follow) {
                        done = re.te_pending == 0;
                }
                if (done)
                        break;
                now = tool_now_ms();
                if (deadline >= 0 && now >= deadline)
                        break;
                if (ro.ro_wait > 0 && now >= next_progress) {
                        fprintf(stderr, "results: %zu/%lld\n",
                                tool_idset_count(rs.rs_final_ids), ro.ro_wait);
                        next_progress = now + RESULTS_PROGRESS_MS;
                }

                rkm = rd_kafka_consumer_poll(rk, RESULTS_POLL_MS);
                if (rkm == NULL)
                        continue;
                if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        tool_ends_mark(&re, rkm->partition, rkm->offset);
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("consume: %s", tool_consume_why(rkm));
                        err = rkm->err;
                        rd_kafka_message_destroy(rkm);
                        /* With -g the group's authorization matters too. */
                        if (tool_consume_err_is_fatal(err) ||
                            err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED)
                                goto out;
                        continue;
                }
                tool_ends_mark(&re, rkm->partition, rkm->offset + 1);
                if (rkm->payload == NULL) {
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                obj = json_loadb(rkm->payload, rkm->len, 0, NULL);
                if (!json_is_object(obj)) {
                        tool_err("%s [%" PRId32 "] offset %" PRId64
                                 ": not a JSON object; skipped",
                                 ro.ro_topic, rkm->partition, rkm->offset);
                        rs.rs_invalid++;
                        json_decref(obj);
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                if (results_count(&rs, obj) == -1) {
                        tool_err("out of memory");
                        rc = TOOL_EXIT_INPUT;
                        json_decref(obj);
                        rd_kafka_message_destroy(rkm);
                        goto out;
                }
                if (!ro.ro_summary && results_print(rkm, obj) == -1) {
                        tool_err("stdout: %s", strerror(errno));
                        rc = TOOL_EXIT_INPUT;
                        json_decref(obj);
                        rd_kafka_message_destroy(rkm);
                        goto out;
                }
                json_decref(obj);
                rd_kafka_message_destroy(rkm);
        }

        if (ro.ro_wait > 0)
                fprintf(stderr, "results: %zu/%lld\n",
                        tool_idset_count(rs.rs_final_ids), ro.ro_wait);
        if (ro.ro_summary)
                results_summary(&rs);
        if (done || (ro.ro_follow && ro.ro_wait == 0)) {
                rc = TOOL_EXIT_OK;
        } else if (!tool_running()) {
                tool_err("interrupted");
                rc = TOOL_EXIT_INPUT;
        } else if (ro.ro_wait > 0) {
                tool_err("timed out after %.1f s: %zu of %lld results "
                         "arrived%s",
                         (double)ro.ro_timeout_ms / 1000.0,
                         tool_idset_count(rs.rs_final_ids), ro.ro_wait,
                         tool_kafka_cause_note());
                rc = tool_timeout_exit();
        } else {
                tool_err("timed out after %.1f s before the end of %s "
                         "(%d partitions left)%s",
                         (double)ro.ro_timeout_ms / 1000.0, ro.ro_topic,
                         re.te_pending, tool_kafka_cause_note());
                rc = tool_timeout_exit();
        }
out:
        rc = tool_consumer_finish(rk, consuming, conf, tpl, rc);
        tool_ends_destroy(&re);
        free(rs.rs_lat);
        tool_idset_destroy(rs.rs_ids);
        tool_idset_destroy(rs.rs_final_ids);
        return rc;
}
