/*
 * mailer-audit: joins the requests topic with the results topic and says
 * whether any request was lost.
 *
 *   mailer-audit [-b BOOTSTRAP] --requests TOPIC --results TOPIC
 *                [--capture-dir DIR] [--json] [--list N] [--timeout S]
 *                [-F FILE]... [-X prop=value]...
 *
 * Every message of the requests topic (up to the end offsets it had when the
 * tool started) must have at least one result with a final status whose
 * "source" is that exact location {topic, partition, offset}. Results are
 * read to the end the results topic had at start. With --capture-dir (the
 * folder of deploy/local/capture-server), the Message-IDs of the captured
 * NNNNNN.eml files are counted: Message-IDs seen more than once are duplicate
 * sends, and a request whose final result is "sent" with a Message-ID that
 * was never captured is a mail that did not arrive.
 *
 * Exit: 0 nothing lost, 4 something lost, 1 usage error/timeout,
 * 2 Kafka error.
 */
#include "tools.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#define AUDIT_QUERY_TIMEOUT_MS 10000
#define AUDIT_POLL_MS 100
#define AUDIT_DEFAULT_TIMEOUT_MS 60000
#define AUDIT_DEFAULT_LIST 10
#define AUDIT_ASSIGN_GROUP "mailer-audit-nogroup"
#define AUDIT_EXIT_LOST 4
#define AUDIT_MAX_HEADER_BYTES (256 * 1024)

enum audit_status {
        ST_SENT,
        ST_FAILED,
        ST_REJECTED,
        ST_EXPIRED,
        ST_OTHER, /* missing or unknown: not final */
        ST_COUNT,
};

static const char *const audit_status_names[ST_COUNT] = {
        "sent", "failed", "rejected", "expired", "other",
};

struct audit_opts {
        const char *ao_requests;
        const char *ao_results;
        const char *ao_capture_dir;
        int ao_json;
        long long ao_list;
        int64_t ao_timeout_ms;
};

/* One request message. */
struct audit_req {
        int64_t rq_offset;
        char *rq_id; /* NULL: no string id */
        char *rq_message_id; /* from the last final "sent" result */
        unsigned rq_results; /* results whose source is this location */
        unsigned rq_final; /* of which final */
        int rq_status; /* last final status, -1 if none */
};

/* The requests read from one partition of the requests topic. */
struct audit_part {
        struct audit_req *ap_reqs; /* ascending offsets */
        size_t ap_cnt;
        size_t ap_cap;
};

/* A topic being read: where its partitions ended at start. */
struct audit_topic {
        const char *at_name;
        struct tool_ends at_ends;
        struct audit_part *at_parts; /* indexed by partition id, like at_ends */
};

struct audit_stats {
        unsigned long as_requests;
        unsigned long as_requests_no_id;
        unsigned long as_results;
        unsigned long as_results_invalid; /* not a JSON object */
        unsigned long as_results_no_source; /* no usable source */
        unsigned long as_matched; /* source is a request read */
        unsigned long as_orphans; /* source matches no request */
        unsigned long as_after_end; /* source past the requests' end */
        unsigned long as_flagged_duplicate; /* "duplicate": true */
        unsigned long as_result_status[ST_COUNT];
        /* by request location */
        unsigned long as_final;
        unsigned long as_lost;
        unsigned long as_lost_with_id_result;
        unsigned long as_dup_locations; /* locations with > 1 result */
        unsigned long as_dup_results; /* results beyond the first */
        unsigned long as_req_status[ST_COUNT];
        /* capture */
        unsigned long as_captured;
        unsigned long as_captured_no_mid;
        unsigned long as_dup_mids; /* Message-IDs seen > 1 time */
        unsigned long as_dup_sends; /* captures beyond the first */
        unsigned long as_sent_not_captured;
        unsigned long as_sent_no_mid; /* sent results without message_id */
};

static void audit_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-audit [options] --requests TOPIC --results TOPIC\n"
                "\n"
                "Joins the requests topic with the results topic by the result's source\n"
                "{topic, partition, offset} and reports requests without a final result\n"
                "(lost), duplicate results, results that match no request (orphans) and the\n"
                "status breakdown. The requests topic is read to the end it had at start,\n"
                "the results topic likewise.\n"
                "\n"
                "Options:\n"
                "  -b BOOTSTRAP        bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -X prop=value       librdkafka property (repeatable; later wins)\n"
                "  -F FILE             librdkafka properties file (key=value lines; repeatable)\n"
                "      --requests TOPIC  the requests topic (required)\n"
                "      --results TOPIC   the results topic (required)\n"
                "      --capture-dir DIR capture-server folder (NNNNNN.eml): also report\n"
                "                        duplicate sends (a Message-ID captured more than\n"
                "                        once) and sent results whose Message-ID was never\n"
                "                        captured\n"
                "      --json            print one JSON object instead of text\n"
                "      --list N          list at most N lost requests, duplicate Message-IDs\n"
                "                        and uncaptured sends (default %d)\n"
                "      --timeout S       give up reading after S seconds (default %d; exit 1)\n"
                "  -h, --help          this help\n"
                "\n"
                "Exit status: 0 nothing lost, 4 some request has no final result (or, with\n"
                "--capture-dir, some sent result's Message-ID was never captured),\n"
                "1 usage error or timeout, 2 Kafka error.\n",
                AUDIT_DEFAULT_LIST, AUDIT_DEFAULT_TIMEOUT_MS / 1000);
}

/* @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result audit_parse_args(int argc, char **argv,
                                              rd_kafka_conf_t *conf,
                                              struct audit_opts *ao) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_STRING("requests", 0, &ao->ao_requests),
                TOOL_OPT_STRING("results", 0, &ao->ao_results),
                TOOL_OPT_STRING("capture-dir", 0, &ao->ao_capture_dir),
                TOOL_OPT_FLAG("json", 0, &ao->ao_json),
                TOOL_OPT_INT("list", 0, &ao->ao_list, 0, 1000000000LL,
                             "--list %s: expected a count >= 0"),
                TOOL_OPT_SECONDS("timeout", 0, &ao->ao_timeout_ms,
                                 "--timeout %s: expected seconds"),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, TOOL_OPTS_NO_OPERANDS,
                              audit_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (ao->ao_requests == NULL || ao->ao_results == NULL) {
                tool_err("--requests and --results are required");
                audit_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        if (*ao->ao_requests == '\0' || *ao->ao_results == '\0') {
                tool_err("empty topic name");
                return TOOL_OPTS_ERROR;
        }
        if (strcmp(ao->ao_requests, ao->ao_results) == 0) {
                tool_err("--requests and --results name the same topic");
                return TOOL_OPTS_ERROR;
        }
        return TOOL_OPTS_RUN;
}

/* @returns how many times the string key was added to set. */
static unsigned audit_times(const struct tool_idset *set, const char *key) {
        return tool_idset_times(set, key, strlen(key));
}

/*
 * Kafka.
 */

static int audit_conf(rd_kafka_conf_t *conf) {
        if (tool_conf_set(conf, "defaults", "enable.partition.eof", "true") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "auto.offset.reset", "earliest") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "group.id", AUDIT_ASSIGN_GROUP) ==
                    -1)
                return -1;
        return tool_conf_set(conf, "defaults", "enable.auto.commit", "false");
}

/* Lists a topic's partitions and their current ends; adds the partitions
 * that hold messages to tpl from their beginning.
 * @returns TOOL_EXIT_OK, or an exit code after printing why. */
static int audit_topic_init(rd_kafka_t *rk, struct audit_topic *at,
                            rd_kafka_topic_partition_list_t *tpl) {
        char errstr[512];
        int32_t *parts = NULL;
        int cnt = 0;
        int rc = TOOL_EXIT_KAFKA;
        rd_kafka_resp_err_t err;

        err = tool_topic_partitions(rk, at->at_name, AUDIT_QUERY_TIMEOUT_MS,
                                    &parts, &cnt, errstr, sizeof(errstr));
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("%s", errstr);
                goto out;
        }
        rc = tool_ends_init(rk, &at->at_ends, at->at_name, parts, cnt,
                            AUDIT_QUERY_TIMEOUT_MS);
        if (rc != TOOL_EXIT_OK)
                goto out;
        at->at_parts =
                calloc((size_t)at->at_ends.te_cnt, sizeof(*at->at_parts));
        if (at->at_parts == NULL) {
                tool_err("out of memory");
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        for (int i = 0; i < cnt; i++) {
                if (!at->at_ends.te_reached[parts[i]])
                        rd_kafka_topic_partition_list_add(tpl, at->at_name,
                                                          parts[i])
                                ->offset = RD_KAFKA_OFFSET_BEGINNING;
        }
out:
        free(parts);
        return rc;
}

static int audit_status_of(const char *s) {
        if (s == NULL)
                return ST_OTHER;
        for (int i = 0; i < ST_OTHER; i++)
                if (strcmp(s, audit_status_names[i]) == 0)
                        return i;
        return ST_OTHER;
}

/* Records one request message. @returns 0, or -1 if out of memory. */
static int audit_add_request(struct audit_topic *at,
                             const rd_kafka_message_t *rkm,
                             struct audit_stats *as) {
        struct audit_part *ap;
        struct audit_req *rq;
        json_t *obj;
        json_t *id;

        if (rkm->partition < 0 || rkm->partition >= at->at_ends.te_cnt ||
            rkm->offset >= at->at_ends.te_end[rkm->partition])
                return 0; /* published after the tool started */
        ap = &at->at_parts[rkm->partition];
        if (ap->ap_cnt > 0 &&
            rkm->offset <= ap->ap_reqs[ap->ap_cnt - 1].rq_offset)
                return 0; /* seen already (never happens with assign) */
        if (ap->ap_cnt == ap->ap_cap) {
                size_t ncap = ap->ap_cap ? ap->ap_cap * 2 : 256;
                struct audit_req *n = realloc(ap->ap_reqs, ncap * sizeof(*n));

                if (n == NULL)
                        return -1;
                ap->ap_reqs = n;
                ap->ap_cap = ncap;
        }
        rq = &ap->ap_reqs[ap->ap_cnt++];
        memset(rq, 0, sizeof(*rq));
        rq->rq_offset = rkm->offset;
        rq->rq_status = -1;
        as->as_requests++;
        obj = rkm->payload != NULL ? json_loadb(rkm->payload, rkm->len, 0, NULL)
                                   : NULL;
        id = json_is_object(obj) ? json_object_get(obj, "id") : NULL;
        if (json_is_string(id)) {
                rq->rq_id = strdup(json_string_value(id));
                if (rq->rq_id == NULL) {
                        json_decref(obj);
                        return -1;
                }
        } else {
                as->as_requests_no_id++;
        }
        json_decref(obj);
        return 0;
}

/* A result as read; joined with the requests once both topics are read. */
struct audit_res {
        char *rs_src_topic; /* NULL: no usable source */
        int32_t rs_src_partition;
        int64_t rs_src_offset;
        int rs_status;
        char *rs_id;
        char *rs_message_id;
};

struct audit_results {
        struct audit_res *ar_v;
        size_t ar_cnt;
        size_t ar_cap;
};

static char *audit_strdup_json(json_t *v) {
        return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

/* Records one result. @returns 0, or -1 if out of memory. */
static int audit_add_result(struct audit_results *ar,
                            const rd_kafka_message_t *rkm,
                            struct audit_stats *as, const char *topic) {
        struct audit_res *r;
        json_t *obj;
        json_t *src;
        json_t *v;

        if (rkm->payload == NULL)
                return 0; /* tombstone */
        as->as_results++;
        obj = json_loadb(rkm->payload, rkm->len, 0, NULL);
        if (!json_is_object(obj)) {
                tool_err("%s [%" PRId32 "] offset %" PRId64
                         ": not a JSON object; skipped",
                         topic, rkm->partition, rkm->offset);
                as->as_results_invalid++;
                json_decref(obj);
                return 0;
        }
        if (ar->ar_cnt == ar->ar_cap) {
                size_t ncap = ar->ar_cap ? ar->ar_cap * 2 : 1024;
                struct audit_res *n = realloc(ar->ar_v, ncap * sizeof(*n));

                if (n == NULL) {
                        json_decref(obj);
                        return -1;
                }
                ar->ar_v = n;
                ar->ar_cap = ncap;
        }
        r = &ar->ar_v[ar->ar_cnt++];
        memset(r, 0, sizeof(*r));
        r->rs_status = audit_status_of(
                json_string_value(json_object_get(obj, "status")));
        as->as_result_status[r->rs_status]++;
        if (json_is_true(json_object_get(obj, "duplicate")))
                as->as_flagged_duplicate++;
        r->rs_id = audit_strdup_json(json_object_get(obj, "id"));
        r->rs_message_id =
                audit_strdup_json(json_object_get(obj, "message_id"));
        src = json_object_get(obj, "source");
        v = json_object_get(src, "partition");
        if (json_is_string(json_object_get(src, "topic")) &&
            json_is_integer(v) && json_integer_value(v) >= 0 &&
            json_integer_value(v) <= INT32_MAX &&
            json_is_integer(json_object_get(src, "offset"))) {
                r->rs_src_topic =
                        audit_strdup_json(json_object_get(src, "topic"));
                r->rs_src_partition = (int32_t)json_integer_value(v);
                r->rs_src_offset = (int64_t)json_integer_value(
                        json_object_get(src, "offset"));
                if (r->rs_src_topic == NULL) {
                        json_decref(obj);
                        return -1;
                }
        }
        if (json_is_string(json_object_get(obj, "id")) && r->rs_id == NULL) {
                json_decref(obj);
                return -1;
        }
        json_decref(obj);
        return 0;
}

static struct audit_req *audit_find(struct audit_topic *at, int32_t partition,
                                    int64_t offset) {
        struct audit_part *ap;
        size_t lo = 0;
        size_t hi;

        if (partition < 0 || partition >= at->at_ends.te_cnt)
                return NULL;
        ap = &at->at_parts[partition];
        hi = ap->ap_cnt;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (ap->ap_reqs[mid].rq_offset < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < ap->ap_cnt && ap->ap_reqs[lo].rq_offset == offset)
                return &ap->ap_reqs[lo];
        return NULL;
}

/* Joins results with requests and fills the per-location numbers. */
static void audit_join(struct audit_topic *req, struct audit_results *ar,
                       struct audit_stats *as) {
        for (size_t i = 0; i < ar->ar_cnt; i++) {
                struct audit_res *r = &ar->ar_v[i];
                struct audit_req *rq;

                if (r->rs_src_topic == NULL) {
                        as->as_results_no_source++;
                        as->as_orphans++;
                        continue;
                }
                if (strcmp(r->rs_src_topic, req->at_name) != 0) {
                        as->as_orphans++;
                        continue;
                }
                rq = audit_find(req, r->rs_src_partition, r->rs_src_offset);
                if (rq == NULL) {
                        if (r->rs_src_partition < req->at_ends.te_cnt &&
                            r->rs_src_offset >=
                                    req->at_ends.te_end[r->rs_src_partition])
                                as->as_after_end++;
                        else
                                as->as_orphans++;
                        continue;
                }
                as->as_matched++;
                rq->rq_results++;
                if (r->rs_status == ST_OTHER)
                        continue;
                rq->rq_final++;
                rq->rq_status = r->rs_status;
                if (r->rs_status == ST_SENT) {
                        free(rq->rq_message_id);
                        rq->rq_message_id = r->rs_message_id;
                        r->rs_message_id = NULL;
                }
        }
        for (int32_t p = 0; p < req->at_ends.te_cnt; p++) {
                struct audit_part *ap = &req->at_parts[p];

                for (size_t j = 0; j < ap->ap_cnt; j++) {
                        struct audit_req *rq = &ap->ap_reqs[j];

                        if (rq->rq_results > 1) {
                                as->as_dup_locations++;
                                as->as_dup_results += rq->rq_results - 1;
                        }
                        if (rq->rq_final == 0) {
                                as->as_lost++;
                                continue;
                        }
                        as->as_final++;
                        as->as_req_status[rq->rq_status]++;
                }
        }
}

/*
 * Capture folder.
 */

/* Extracts the Message-ID header from the header block of a message.
 * @returns a new string (trimmed, unfolded) or NULL if there is none. */
static char *audit_message_id(const char *buf, size_t len) {
        size_t pos = 0;

        while (pos < len) {
                size_t eol = pos;
                size_t end;

                while (eol < len && buf[eol] != '\n')
                        eol++;
                end = eol;
                if (end > pos && buf[end - 1] == '\r')
                        end--;
                if (end == pos)
                        return NULL; /* end of the header block */
                if (end - pos > 11 &&
                    strncasecmp(buf + pos, "Message-ID:", 11) == 0) {
                        /* value, with continuation lines */
                        size_t cap = 256;
                        size_t n = 0;
                        char *out = malloc(cap);
                        size_t s = pos + 11;
                        size_t e = end;

                        if (out == NULL)
                                return NULL;
                        for (;;) {
                                for (size_t k = s; k < e; k++) {
                                        char c = buf[k];

                                        if (c == ' ' || c == '\t')
                                                continue;
                                        if (n + 2 > cap) {
                                                char *nb =
                                                        realloc(out, cap * 2);

                                                if (nb == NULL) {
                                                        free(out);
                                                        return NULL;
                                                }
                                                out = nb;
                                                cap *= 2;
                                        }
                                        out[n++] = c;
                                }
                                pos = eol + 1;
                                if (pos >= len ||
                                    (buf[pos] != ' ' && buf[pos] != '\t'))
                                        break;
                                eol = pos;
                                while (eol < len && buf[eol] != '\n')
                                        eol++;
                                e = eol;
                                if (e > pos && buf[e - 1] == '\r')
                                        e--;
                                s = pos;
                        }
                        out[n] = '\0';
                        if (n == 0) {
                                free(out);
                                return NULL;
                        }
                        return out;
                }
                pos = eol + 1;
        }
        return NULL;
}

static int audit_is_eml_name(const char *name) {
        size_t n = strlen(name);
        size_t digits = 0;

        if (n < 5 || strcmp(name + n - 4, ".eml") != 0)
                return 0;
        while (digits < n - 4 && name[digits] >= '0' && name[digits] <= '9')
                digits++;
        return digits > 0 && digits == n - 4;
}

/* Reads every NNNNNN.eml of dir and counts its Message-IDs into mids.
 * @returns 0, or -1 after printing why. */
static int audit_read_capture(const char *dir, struct tool_idset *mids,
                              struct audit_stats *as) {
        DIR *d = opendir(dir);
        struct dirent *de;
        char *buf = malloc(AUDIT_MAX_HEADER_BYTES);
        int rc = -1;

        if (d == NULL || buf == NULL) {
                tool_err("%s: %s", dir,
                         d == NULL ? strerror(errno) : "out of memory");
                goto out;
        }
        while ((de = readdir(d)) != NULL) {
                char path[4096];
                FILE *fp;
                size_t len;
                char *mid;

                if (!audit_is_eml_name(de->d_name))
                        continue;
                if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir,
                                     de->d_name) >= sizeof(path))
                        continue;
                fp = fopen(path, "rb");
                if (fp == NULL) {
                        tool_err("%s: %s", path, strerror(errno));
                        goto out;
                }
                len = fread(buf, 1, AUDIT_MAX_HEADER_BYTES, fp);
                fclose(fp);
                as->as_captured++;
                mid = audit_message_id(buf, len);
                if (mid == NULL) {
                        as->as_captured_no_mid++;
                        continue;
                }
                if (tool_idset_add(mids, mid, strlen(mid)) == -1) {
                        free(mid);
                        tool_err("out of memory");
                        goto out;
                }
                free(mid);
        }
        rc = 0;
out:
        if (d != NULL)
                closedir(d);
        free(buf);
        return rc;
}

static void audit_capture_join(struct audit_topic *req,
                               const struct tool_idset *mids,
                               struct audit_stats *as) {
        size_t pos = 0;
        const char *mid;
        unsigned times;

        while (tool_idset_next(mids, &pos, &mid, &times)) {
                if (times < 2)
                        continue;
                as->as_dup_mids++;
                as->as_dup_sends += times - 1;
        }
        for (int32_t p = 0; p < req->at_ends.te_cnt; p++) {
                struct audit_part *ap = &req->at_parts[p];

                for (size_t j = 0; j < ap->ap_cnt; j++) {
                        struct audit_req *rq = &ap->ap_reqs[j];

                        if (rq->rq_status != ST_SENT)
                                continue;
                        if (rq->rq_message_id == NULL)
                                as->as_sent_no_mid++;
                        else if (audit_times(mids, rq->rq_message_id) == 0)
                                as->as_sent_not_captured++;
                }
        }
}

/*
 * Output.
 */

static json_t *audit_req_json(int32_t partition, const struct audit_req *rq,
                              const struct tool_idset *result_ids) {
        json_t *o = json_object();

        json_object_set_new(o, "partition", json_integer(partition));
        json_object_set_new(o, "offset", json_integer(rq->rq_offset));
        json_object_set_new(o, "id",
                            rq->rq_id ? json_string(rq->rq_id) : json_null());
        if (result_ids != NULL)
                json_object_set_new(
                        o, "id_has_result",
                        json_boolean(rq->rq_id != NULL &&
                                     audit_times(result_ids, rq->rq_id) > 0));
        if (rq->rq_message_id != NULL)
                json_object_set_new(o, "message_id",
                                    json_string(rq->rq_message_id));
        return o;
}

static json_t *audit_counts_json(const unsigned long *v) {
        json_t *o = json_object();

        for (int i = 0; i < ST_COUNT; i++)
                json_object_set_new(o, audit_status_names[i],
                                    json_integer((json_int_t)v[i]));
        return o;
}

#define JI(x) json_integer((json_int_t)(x))

static int audit_print(const struct audit_opts *ao, struct audit_topic *req,
                       const struct audit_stats *as,
                       const struct tool_idset *result_ids,
                       const struct tool_idset *mids) {
        json_t *o = json_object();
        json_t *lost = json_array();
        json_t *dup_mids = json_array();
        json_t *uncaptured = json_array();
        size_t max = (size_t)ao->ao_list;
        char *dump;
        int ret;

        for (int32_t p = 0; p < req->at_ends.te_cnt; p++) {
                struct audit_part *ap = &req->at_parts[p];

                for (size_t j = 0; j < ap->ap_cnt; j++) {
                        struct audit_req *rq = &ap->ap_reqs[j];

                        if (rq->rq_final == 0 && json_array_size(lost) < max)
                                json_array_append_new(
                                        lost,
                                        audit_req_json(p, rq, result_ids));
                        if (mids != NULL && rq->rq_status == ST_SENT &&
                            rq->rq_message_id != NULL &&
                            audit_times(mids, rq->rq_message_id) == 0 &&
                            json_array_size(uncaptured) < max)
                                json_array_append_new(
                                        uncaptured,
                                        audit_req_json(p, rq, NULL));
                }
        }
        if (mids != NULL) {
                size_t pos = 0;
                const char *mid;
                unsigned times;

                while (tool_idset_next(mids, &pos, &mid, &times)) {
                        json_t *d;

                        if (times < 2 || json_array_size(dup_mids) >= max)
                                continue;
                        d = json_object();
                        json_object_set_new(d, "message_id", json_string(mid));
                        json_object_set_new(d, "count", JI(times));
                        json_array_append_new(dup_mids, d);
                }
        }

        json_object_set_new(o, "requests_topic", json_string(ao->ao_requests));
        json_object_set_new(o, "results_topic", json_string(ao->ao_results));
        json_object_set_new(o, "requests", JI(as->as_requests));
        json_object_set_new(o, "requests_no_id", JI(as->as_requests_no_id));
        json_object_set_new(o, "final", JI(as->as_final));
        json_object_set_new(o, "lost", JI(as->as_lost));
        json_object_set_new(o, "lost_list", lost);
        json_object_set_new(o, "results", JI(as->as_results));
        json_object_set_new(o, "results_matched", JI(as->as_matched));
        json_object_set_new(o, "duplicate_results", JI(as->as_dup_results));
        json_object_set_new(o, "duplicate_locations", JI(as->as_dup_locations));
        json_object_set_new(o, "flagged_duplicate",
                            JI(as->as_flagged_duplicate));
        json_object_set_new(o, "orphans", JI(as->as_orphans));
        json_object_set_new(o, "results_no_source",
                            JI(as->as_results_no_source));
        json_object_set_new(o, "results_after_end", JI(as->as_after_end));
        json_object_set_new(o, "results_invalid", JI(as->as_results_invalid));
        json_object_set_new(o, "status", audit_counts_json(as->as_req_status));
        json_object_set_new(o, "result_status",
                            audit_counts_json(as->as_result_status));
        if (mids != NULL) {
                json_t *c = json_object();

                json_object_set_new(c, "messages", JI(as->as_captured));
                json_object_set_new(c, "message_ids",
                                    JI(tool_idset_count(mids)));
                json_object_set_new(c, "no_message_id",
                                    JI(as->as_captured_no_mid));
                json_object_set_new(c, "duplicate_message_ids",
                                    JI(as->as_dup_mids));
                json_object_set_new(c, "duplicate_sends", JI(as->as_dup_sends));
                json_object_set_new(c, "duplicate_list", dup_mids);
                json_object_set_new(c, "sent_not_captured",
                                    JI(as->as_sent_not_captured));
                json_object_set_new(c, "sent_not_captured_list", uncaptured);
                json_object_set_new(c, "sent_without_message_id",
                                    JI(as->as_sent_no_mid));
                json_object_set_new(o, "capture", c);
        } else {
                json_decref(dup_mids);
                json_decref(uncaptured);
                json_object_set_new(o, "capture", json_null());
        }

        if (ao->ao_json) {
                dump = json_dumps(o, JSON_COMPACT);
                ret = dump != NULL && puts(dump) != EOF ? 0 : -1;
                free(dump);
                json_decref(o);
                return ret;
        }

        printf("requests=%lu final=%lu lost=%lu no_id=%lu\n", as->as_requests,
               as->as_final, as->as_lost, as->as_requests_no_id);
        printf("results=%lu matched=%lu duplicate_results=%lu "
               "duplicate_locations=%lu flagged_duplicate=%lu orphans=%lu "
               "after_end=%lu invalid=%lu\n",
               as->as_results, as->as_matched, as->as_dup_results,
               as->as_dup_locations, as->as_flagged_duplicate, as->as_orphans,
               as->as_after_end, as->as_results_invalid);
        printf("status");
        for (int i = 0; i < ST_COUNT; i++)
                printf(" %s=%lu", audit_status_names[i], as->as_req_status[i]);
        printf("\n");
        lost = json_object_get(o, "lost_list");
        for (size_t i = 0; i < json_array_size(lost); i++) {
                json_t *l = json_array_get(lost, i);
                json_t *id = json_object_get(l, "id");

                printf("lost partition=%" JSON_INTEGER_FORMAT
                       " offset=%" JSON_INTEGER_FORMAT " id=%s%s\n",
                       json_integer_value(json_object_get(l, "partition")),
                       json_integer_value(json_object_get(l, "offset")),
                       json_is_string(id) ? json_string_value(id) : "-",
                       json_is_true(json_object_get(l, "id_has_result"))
                               ? " (a result with this id has another source)"
                               : "");
        }
        if (mids != NULL) {
                json_t *c = json_object_get(o, "capture");

                printf("captured=%lu message_ids=%zu duplicate_message_ids=%lu "
                       "duplicate_sends=%lu sent_not_captured=%lu "
                       "no_message_id=%lu\n",
                       as->as_captured, tool_idset_count(mids), as->as_dup_mids,
                       as->as_dup_sends, as->as_sent_not_captured,
                       as->as_captured_no_mid);
                dup_mids = json_object_get(c, "duplicate_list");
                for (size_t i = 0; i < json_array_size(dup_mids); i++) {
                        json_t *d = json_array_get(dup_mids, i);

                        printf("duplicate_send message_id=%s count=%" JSON_INTEGER_FORMAT
                               "\n",
                               json_string_value(
                                       json_object_get(d, "message_id")),
                               json_integer_value(json_object_get(d, "count")));
                }
                uncaptured = json_object_get(c, "sent_not_captured_list");
                for (size_t i = 0; i < json_array_size(uncaptured); i++) {
                        json_t *u = json_array_get(uncaptured, i);
                        json_t *id = json_object_get(u, "id");

                        printf("not_captured partition=%" JSON_INTEGER_FORMAT
                               " offset=%" JSON_INTEGER_FORMAT
                               " id=%s message_id=%s\n",
                               json_integer_value(
                                       json_object_get(u, "partition")),
                               json_integer_value(json_object_get(u, "offset")),
                               json_is_string(id) ? json_string_value(id) : "-",
                               json_string_value(
                                       json_object_get(u, "message_id")));
                }
        }
        json_decref(o);
        return 0;
}

static void audit_free(struct audit_topic *req, struct audit_topic *res,
                       struct audit_results *ar) {
        /* at_parts is NULL if reading the ends failed. */
        for (int32_t p = 0; req->at_parts != NULL && p < req->at_ends.te_cnt;
             p++) {
                struct audit_part *ap = &req->at_parts[p];

                for (size_t j = 0; j < ap->ap_cnt; j++) {
                        free(ap->ap_reqs[j].rq_id);
                        free(ap->ap_reqs[j].rq_message_id);
                }
                free(ap->ap_reqs);
        }
        free(req->at_parts);
        free(res->at_parts);
        tool_ends_destroy(&req->at_ends);
        tool_ends_destroy(&res->at_ends);
        for (size_t i = 0; i < ar->ar_cnt; i++) {
                free(ar->ar_v[i].rs_src_topic);
                free(ar->ar_v[i].rs_id);
                free(ar->ar_v[i].rs_message_id);
        }
        free(ar->ar_v);
}

int main(int argc, char **argv) {
        struct audit_opts ao = {
                .ao_list = AUDIT_DEFAULT_LIST,
                .ao_timeout_ms = AUDIT_DEFAULT_TIMEOUT_MS,
        };
        struct audit_topic req;
        struct audit_topic res;
        struct audit_results ar;
        struct audit_stats as;
        struct tool_idset *mids = NULL;
        struct tool_idset *result_ids = NULL;
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        rd_kafka_topic_partition_list_t *tpl = NULL;
        rd_kafka_resp_err_t err;
        enum tool_opts_result parsed;
        int64_t deadline;
        int rc = TOOL_EXIT_INPUT;
        int consuming = 0;

        tool_init("mailer-audit");
        memset(&req, 0, sizeof(req));
        memset(&res, 0, sizeof(res));
        memset(&ar, 0, sizeof(ar));
        memset(&as, 0, sizeof(as));
        conf = tool_conf_new();
        if (conf == NULL)
                goto out;
        parsed = audit_parse_args(argc, argv, conf, &ao);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }
        if (audit_conf(conf) == -1)
                goto out;
        mids = tool_idset_new();
        result_ids = tool_idset_new();
        if (mids == NULL || result_ids == NULL) {
                tool_err("out of memory");
                goto out;
        }
        req.at_name = ao.ao_requests;
        res.at_name = ao.ao_results;
        deadline = tool_now_ms() + ao.ao_timeout_ms;

        rc = TOOL_EXIT_KAFKA;
        rk = tool_kafka_new(RD_KAFKA_CONSUMER, &conf);
        if (rk == NULL)
                goto out;
        tpl = rd_kafka_topic_partition_list_new(16);
        rc = audit_topic_init(rk, &req, tpl);
        if (rc == TOOL_EXIT_OK)
                rc = audit_topic_init(rk, &res, tpl);
        if (rc != TOOL_EXIT_OK)
                goto out;
        rc = TOOL_EXIT_KAFKA;
        rd_kafka_poll_set_consumer(rk);
        err = rd_kafka_assign(rk, tpl);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                tool_err("cannot assign: %s", rd_kafka_err2str(err));
                goto out;
        }
        consuming = 1;

        while (tool_running() &&
               (req.at_ends.te_pending > 0 || res.at_ends.te_pending > 0) &&
               tool_now_ms() < deadline) {
                rd_kafka_message_t *rkm;
                const char *topic;
                struct audit_topic *at;

                rkm = rd_kafka_consumer_poll(rk, AUDIT_POLL_MS);
                if (rkm == NULL)
                        continue;
                topic = rkm->rkt != NULL ? rd_kafka_topic_name(rkm->rkt) : "";
                at = strcmp(topic, req.at_name) == 0 ? &req : &res;
                if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        tool_ends_mark(&at->at_ends, rkm->partition,
                                       rkm->offset);
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        tool_err("consume: %s", tool_consume_why(rkm));
                        err = rkm->err;
                        rd_kafka_message_destroy(rkm);
                        if (tool_consume_err_is_fatal(err))
                                goto out;
                        continue;
                }
                tool_ends_mark(&at->at_ends, rkm->partition, rkm->offset + 1);
                if ((at == &req ? audit_add_request(&req, rkm, &as)
                                : audit_add_result(&ar, rkm, &as,
                                                   res.at_name)) == -1) {
                        tool_err("out of memory");
                        rc = TOOL_EXIT_INPUT;
                        rd_kafka_message_destroy(rkm);
                        goto out;
                }
                rd_kafka_message_destroy(rkm);
        }
        if (!tool_running()) {
                tool_err("interrupted");
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        if (req.at_ends.te_pending > 0 || res.at_ends.te_pending > 0) {
                tool_err("timed out after %.1f s before the end of %s "
                         "(%d partitions left) and %s (%d partitions left)%s",
                         (double)ao.ao_timeout_ms / 1000.0, req.at_name,
                         req.at_ends.te_pending, res.at_name,
                         res.at_ends.te_pending, tool_kafka_cause_note());
                rc = TOOL_EXIT_INPUT;
                goto out;
        }

        for (size_t i = 0; i < ar.ar_cnt; i++) {
                if (ar.ar_v[i].rs_id != NULL &&
                    tool_idset_add(result_ids, ar.ar_v[i].rs_id,
                                   strlen(ar.ar_v[i].rs_id)) == -1) {
                        tool_err("out of memory");
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
        }
        audit_join(&req, &ar, &as);
        if (ao.ao_capture_dir != NULL) {
                if (audit_read_capture(ao.ao_capture_dir, mids, &as) == -1) {
                        rc = TOOL_EXIT_INPUT;
                        goto out;
                }
                audit_capture_join(&req, mids, &as);
        }
        if (audit_print(&ao, &req, &as, result_ids,
                        ao.ao_capture_dir != NULL ? mids : NULL) == -1) {
                tool_err("stdout: %s", strerror(errno));
                rc = TOOL_EXIT_INPUT;
                goto out;
        }
        rc = as.as_lost > 0 || as.as_sent_not_captured > 0 ? AUDIT_EXIT_LOST
                                                           : TOOL_EXIT_OK;
        if (as.as_lost > 0)
                tool_err("%lu of %lu requests have no final result", as.as_lost,
                         as.as_requests);
        if (as.as_sent_not_captured > 0)
                tool_err("%lu sent results have a Message-ID that was never "
                         "captured",
                         as.as_sent_not_captured);
out:
        rc = tool_consumer_finish(rk, consuming, conf, tpl, rc);
        audit_free(&req, &res, &ar);
        tool_idset_destroy(mids);
        tool_idset_destroy(result_ids);
        return rc;
}
