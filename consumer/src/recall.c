#include "recall.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "kconf.h"
#include "log.h"

/* Longest one blocking Kafka call of the reader thread may take: it checks
 * whether to stop between calls, so this bounds recall_destroy(). */
#define RECALL_STEP_MS 500
/* How errors name the settings of the results reader. */
#define RECALL_SCOPE "kafka.consumer"
/* Commit metadata prefix (recall_meta_format()). */
#define RECALL_META_PREFIX "kafka-mailer/1 results="

/* One recall_ask(). */
struct recall_job {
        struct recall_job *next;
        consumer_t *c;
        int topic_idx;
        char *topic;
        int cnt;
        int32_t *partitions;
        uint64_t *seqs;
};

/* An answer waiting for the loop. */
struct recall_done {
        struct recall_done *next;
        struct recall_answer a;
};

struct recall {
        loop_t *r_loop;
        rd_kafka_t *r_rk; /* the reader: a consumer without a group */
        rd_kafka_topic_t *r_rkt; /* the results topic */
        char *r_topic;
        int r_timeout_ms;
        size_t r_max_items;
        recall_cb *r_cb;
        void *r_opaque;
        int r_pipe[2]; /* the thread writes a byte when an answer is ready */
        pthread_t r_thread;
        int r_started;
        pthread_mutex_t r_lock;
        pthread_cond_t r_cond;
        struct recall_job *r_jobs; /* oldest first */
        struct recall_done *r_done; /* newest first */
        int r_stop;
};

static int64_t recall_clock_ms(void) {
        return loop_clock_ms();
}

size_t recall_meta_format(char *buf, size_t buf_size, int32_t rp, int64_t off) {
        int n = snprintf(buf, buf_size,
                         RECALL_META_PREFIX "%" PRId32 "@%" PRId64, rp, off);

        return n < 0 ? 0 : (size_t)n;
}

int recall_meta_parse(const void *meta, size_t len, int32_t *rp, int64_t *off) {
        size_t plen = sizeof(RECALL_META_PREFIX) - 1;
        char buf[64], *end;
        long long p, o;

        if (!meta || len <= plen || len >= sizeof(buf) ||
            memcmp(meta, RECALL_META_PREFIX, plen) != 0)
                return -1;
        memcpy(buf, meta, len);
        buf[len] = '\0';
        if (buf[plen] < '0' || buf[plen] > '9')
                return -1;
        errno = 0;
        p = strtoll(buf + plen, &end, 10);
        if (errno || *end != '@' || p > INT32_MAX || end[1] < '0' ||
            end[1] > '9')
                return -1;
        o = strtoll(end + 1, &end, 10);
        if (errno || *end != '\0')
                return -1;
        *rp = (int32_t)p;
        *off = (int64_t)o;
        return 0;
}

/* Copies @s (NULL: "") into @dst. */
static void recall_copy(char *dst, size_t dst_size, const char *s) {
        snprintf(dst, dst_size, "%s", s ? s : "");
}

int recall_parse_result(const void *value, size_t len,
                        struct recall_item *item) {
        static const char *const statuses[] = {"sent", "failed", "rejected",
                                               "expired"};
        json_t *o, *src;
        const char *id, *status, *dlv;
        int st = -1;
        int ret = -1;

        memset(item, 0, sizeof(*item));
        o = json_loadb(value, len, 0, NULL);
        if (!o || !json_is_object(o))
                goto out;
        id = json_string_value(json_object_get(o, "id"));
        status = json_string_value(json_object_get(o, "status"));
        if (!id || !id[0] || !status)
                goto out;
        for (int i = 0; i < 4; i++)
                if (strcmp(status, statuses[i]) == 0)
                        st = i;
        if (st < 0)
                goto out;
        item->done.status = st;
        /* Results before "delivered" existed: all when sent. */
        dlv = json_string_value(json_object_get(o, "delivered"));
        item->done.delivered = dlv && strcmp(dlv, "some") == 0   ? 1
                               : dlv && strcmp(dlv, "none") == 0 ? 2
                               : dlv && strcmp(dlv, "all") == 0  ? 0
                               : st == 0                         ? 0
                                                                 : 2;
        item->done.smtp_code =
                (int)json_integer_value(json_object_get(o, "smtp_code"));
        item->done.attempts =
                (int)json_integer_value(json_object_get(o, "attempts"));
        recall_copy(item->done.smtp_reply, sizeof(item->done.smtp_reply),
                    json_string_value(json_object_get(o, "smtp_reply")));
        recall_copy(item->done.error, sizeof(item->done.error),
                    json_string_value(json_object_get(o, "error")));
        recall_copy(item->done.message_id, sizeof(item->done.message_id),
                    json_string_value(json_object_get(o, "message_id")));
        /* A repeat's own result names the request that was sent. */
        src = json_object_get(o, "duplicate_of");
        if (!json_is_object(src))
                src = json_object_get(o, "source");
        recall_copy(item->done.source_topic, sizeof(item->done.source_topic),
                    json_string_value(json_object_get(src, "topic")));
        item->done.source_partition =
                (int32_t)json_integer_value(json_object_get(src, "partition"));
        item->done.source_offset =
                json_integer_value(json_object_get(src, "offset"));
        item->id = strdup(id);
        if (!item->id)
                abort();
        ret = 0;
out:
        json_decref(o);
        return ret;
}

static void recall_answer_free(struct recall_answer *a) {
        for (size_t i = 0; i < a->item_cnt; i++)
                free(a->items[i].id);
        free(a->items);
        free(a->parts);
}

static void recall_job_free(struct recall_job *j) {
        free(j->topic);
        free(j->partitions);
        free(j->seqs);
        free(j);
}

/* ---- the reader thread ---- */

static int recall_stopping(recall_t *r) {
        int stop;

        pthread_mutex_lock(&r->r_lock);
        stop = r->r_stop;
        pthread_mutex_unlock(&r->r_lock);
        return stop;
}

/* @returns the milliseconds a blocking call may take before @deadline, at
 * most RECALL_STEP_MS, or 0 when the time is up. */
static int recall_step_ms(int64_t deadline) {
        int64_t left = deadline - recall_clock_ms();

        if (left <= 0)
                return 0;
        return left < RECALL_STEP_MS ? (int)left : RECALL_STEP_MS;
}

/* Learns the results topic's partition count. @returns it, or 0. */
static int32_t recall_partition_count(recall_t *r, int64_t deadline, char *note,
                                      size_t note_size) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
        int32_t n = 0;
        int step;

        while ((step = recall_step_ms(deadline)) > 0 && !recall_stopping(r)) {
                err = rd_kafka_metadata(r->r_rk, 0, r->r_rkt, &md, step);
                if (!err)
                        break;
        }
        if (err) {
                snprintf(note, note_size, "results topic metadata: %s",
                         rd_kafka_err2str(err));
                return 0;
        }
        if (md->topic_cnt == 1 && !md->topics[0].err)
                n = md->topics[0].partition_cnt;
        else
                snprintf(note, note_size, "results topic metadata: %s",
                         rd_kafka_err2str(
                                 md->topic_cnt == 1
                                         ? md->topics[0].err
                                         : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
        rd_kafka_metadata_destroy(md);
        return n;
}

/* Where reading one results partition stands. */
struct recall_read {
        int32_t rp;
        int64_t start; /* first offset to read */
        int64_t end; /* high watermark when asked; -1 not known */
        int started;
        int done;
        uint64_t records;
};

/* Reads @reads (results partitions from start to end) into @a's items
 * until all are done or @deadline. */
static void recall_read_tails(recall_t *r, struct recall_read *reads, int cnt,
                              struct recall_answer *a, size_t *cap,
                              int64_t deadline) {
        rd_kafka_queue_t *q = rd_kafka_queue_new(r->r_rk);
        int left = 0;
        int step;

        for (int i = 0; i < cnt; i++) {
                if (reads[i].done)
                        continue;
                if (rd_kafka_consume_start_queue(r->r_rkt, reads[i].rp,
                                                 reads[i].start, q) == -1) {
                        snprintf(a->note, sizeof(a->note),
                                 "reading results partition %d: %s",
                                 (int)reads[i].rp,
                                 rd_kafka_err2str(rd_kafka_last_error()));
                        continue;
                }
                reads[i].started = 1;
                left++;
        }
        while (left > 0 && (step = recall_step_ms(deadline)) > 0 &&
               !recall_stopping(r)) {
                rd_kafka_message_t *m = rd_kafka_consume_queue(q, step);
                struct recall_read *rd = NULL;

                if (!m)
                        continue;
                for (int i = 0; i < cnt; i++)
                        if (reads[i].started && reads[i].rp == m->partition)
                                rd = &reads[i];
                if (!rd || rd->done) {
                        rd_kafka_message_destroy(m);
                        continue;
                }
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        rd->done = 1;
                        left--;
                } else if (m->err) {
                        snprintf(a->note, sizeof(a->note),
                                 "reading results partition %d: %s",
                                 (int)rd->rp, rd_kafka_message_errstr(m));
                } else {
                        rd->records++;
                        if (a->item_cnt == *cap && *cap < r->r_max_items) {
                                size_t n = *cap ? *cap * 2 : 256;
                                struct recall_item *ni;

                                if (n > r->r_max_items)
                                        n = r->r_max_items;
                                ni = realloc(a->items, n * sizeof(*ni));
                                if (!ni)
                                        abort();
                                a->items = ni;
                                *cap = n;
                        }
                        if (a->item_cnt < *cap) {
                                if (recall_parse_result(
                                            m->payload, m->len,
                                            &a->items[a->item_cnt]) == 0)
                                        a->item_cnt++;
                        } else if (!a->note[0]) {
                                snprintf(a->note, sizeof(a->note),
                                         "more results than dedupe.capacity "
                                         "(%zu) on partition %d",
                                         r->r_max_items, (int)rd->rp);
                        }
                        if (m->offset + 1 >= rd->end) {
                                rd->done = 1;
                                left--;
                        }
                }
                rd_kafka_message_destroy(m);
        }
        if (left > 0 && !a->note[0])
                snprintf(a->note, sizeof(a->note),
                         "results topic not read to its end within "
                         "dedupe.recall.timeout.ms (%d ms)",
                         r->r_timeout_ms);
        for (int i = 0; i < cnt; i++)
                if (reads[i].started)
                        rd_kafka_consume_stop(r->r_rkt, reads[i].rp);
        rd_kafka_queue_destroy(q);
}

/* Answers @j: committed offsets and their metadata, the results
 * partitions' ends, and what lies between. */
static void recall_run_job(recall_t *r, const struct recall_job *j,
                           struct recall_answer *a) {
        int64_t start = recall_clock_ms();
        int64_t deadline = start + r->r_timeout_ms;
        rd_kafka_topic_partition_list_t *committed;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
        struct recall_read *reads;
        size_t cap = 0;
        int32_t n;
        int step;

        a->topic = j->topic_idx;
        a->part_cnt = j->cnt;
        a->parts = calloc((size_t)j->cnt, sizeof(*a->parts));
        reads = calloc((size_t)j->cnt, sizeof(*reads));
        if (!a->parts || !reads)
                abort();
        for (int i = 0; i < j->cnt; i++) {
                a->parts[i].partition = j->partitions[i];
                a->parts[i].seq = j->seqs[i];
                a->parts[i].results_partition = -1;
                a->parts[i].results_end = -1;
                a->parts[i].stored_floor = -1;
                a->parts[i].consumed_end = -1;
        }
        n = recall_partition_count(r, deadline, a->note, sizeof(a->note));
        if (n <= 0)
                goto out;

        committed = rd_kafka_topic_partition_list_new(j->cnt);
        for (int i = 0; i < j->cnt; i++)
                rd_kafka_topic_partition_list_add(committed, j->topic,
                                                  j->partitions[i]);
        while ((step = recall_step_ms(deadline)) > 0 && !recall_stopping(r)) {
                err = consumer_committed(j->c, committed, step);
                if (!err)
                        break;
        }
        if (err)
                snprintf(a->note, sizeof(a->note), "committed offsets: %s",
                         rd_kafka_err2str(err));

        for (int i = 0; i < j->cnt; i++) {
                struct recall_part *ap = &a->parts[i];
                struct recall_read *rd = &reads[i];
                const rd_kafka_topic_partition_t *cp =
                        rd_kafka_topic_partition_list_find(committed, j->topic,
                                                           j->partitions[i]);
                int32_t rp = -1;
                int64_t floor = -1, lo = 0, hi = 0;
                rd_kafka_resp_err_t werr = RD_KAFKA_RESP_ERR__TIMED_OUT;

                ap->results_partition = j->partitions[i] % n;
                rd->rp = ap->results_partition;
                rd->done = 1;
                if (!err && cp && !cp->err && cp->offset >= 0 &&
                    recall_meta_parse(cp->metadata, cp->metadata_size, &rp,
                                      &floor) == 0 &&
                    rp == ap->results_partition)
                        ap->stored_floor = floor;
                if (!err && cp && !cp->err && cp->offset >= 0) {
                        int64_t clo = 0, chi = 0;

                        while ((step = recall_step_ms(deadline)) > 0 &&
                               !recall_stopping(r))
                                if (rd_kafka_query_watermark_offsets(
                                            r->r_rk, j->topic, j->partitions[i],
                                            &clo, &chi, step) ==
                                    RD_KAFKA_RESP_ERR_NO_ERROR) {
                                        ap->consumed_end = chi;
                                        break;
                                }
                }
                while ((step = recall_step_ms(deadline)) > 0 &&
                       !recall_stopping(r)) {
                        werr = rd_kafka_query_watermark_offsets(
                                r->r_rk, r->r_topic, rd->rp, &lo, &hi, step);
                        if (!werr)
                                break;
                }
                if (werr) {
                        snprintf(a->note, sizeof(a->note),
                                 "results partition %d end: %s", (int)rd->rp,
                                 rd_kafka_err2str(werr));
                        if (ap->stored_floor >= 0)
                                ap->results_end = ap->stored_floor;
                        continue;
                }
                ap->results_end = hi;
                if (err) /* what was committed is not known */
                        continue;
                ap->complete = 1; /* unless the read below falls short */
                if (ap->stored_floor < 0)
                        continue;
                rd->start = ap->stored_floor > lo ? ap->stored_floor : lo;
                rd->end = hi;
                rd->done = rd->start >= hi;
        }
        rd_kafka_topic_partition_list_destroy(committed);
        /* Two asked partitions on one results partition read it once. */
        for (int i = 0; i < j->cnt; i++)
                for (int k = 0; k < i; k++)
                        if (!reads[i].done && !reads[k].done &&
                            reads[i].rp == reads[k].rp) {
                                if (reads[i].start < reads[k].start)
                                        reads[k].start = reads[i].start;
                                reads[i].done = 1;
                        }
        recall_read_tails(r, reads, j->cnt, a, &cap, deadline);
        for (int i = 0; i < j->cnt; i++)
                for (int k = 0; k < j->cnt; k++)
                        if (reads[k].rp == a->parts[i].results_partition) {
                                if (reads[k].started && !reads[k].done)
                                        a->parts[i].complete = 0;
                                a->parts[i].records += reads[k].records;
                        }
        if (a->note[0] && a->item_cnt >= r->r_max_items)
                for (int i = 0; i < j->cnt; i++)
                        a->parts[i].complete = 0;
out:
        a->took_ms = recall_clock_ms() - start;
        free(reads);
}

static void *recall_main(void *arg) {
        recall_t *r = arg;

        for (;;) {
                struct recall_job *j;
                struct recall_done *d;

                pthread_mutex_lock(&r->r_lock);
                while (!r->r_stop && !r->r_jobs)
                        pthread_cond_wait(&r->r_cond, &r->r_lock);
                if (r->r_stop) {
                        pthread_mutex_unlock(&r->r_lock);
                        break;
                }
                j = r->r_jobs;
                r->r_jobs = j->next;
                pthread_mutex_unlock(&r->r_lock);

                d = calloc(1, sizeof(*d));
                if (!d)
                        abort();
                recall_run_job(r, j, &d->a);
                recall_job_free(j);
                pthread_mutex_lock(&r->r_lock);
                d->next = r->r_done;
                r->r_done = d;
                pthread_mutex_unlock(&r->r_lock);
                if (write(r->r_pipe[1], "1", 1) == -1 && errno != EAGAIN)
                        LOG(LL_WARN, "recall: cannot wake the loop error=%s",
                            strerror(errno));
        }
        return NULL;
}

/* ---- the loop side ---- */

static void recall_on_pipe(loop_t *loop, int fd, unsigned events,
                           void *opaque) {
        recall_t *r = opaque;
        struct recall_done *list, *rev = NULL, *d;
        char buf[64];

        (void)loop;
        (void)events;
        while (read(fd, buf, sizeof(buf)) > 0)
                ;
        pthread_mutex_lock(&r->r_lock);
        list = r->r_done;
        r->r_done = NULL;
        pthread_mutex_unlock(&r->r_lock);
        while ((d = list) != NULL) { /* oldest first */
                list = d->next;
                d->next = rev;
                rev = d;
        }
        while ((d = rev) != NULL) {
                rev = d->next;
                r->r_cb(r->r_opaque, &d->a);
                recall_answer_free(&d->a);
                free(d);
        }
}

/* @returns whether a kafka.* consumer setting is for the reader too: group
 * settings are not (the reader has no group). */
static int recall_conf_takes(const char *key) {
        static const char *const skip[] = {"partition.assignment.strategy",
                                           "session.timeout.ms",
                                           "heartbeat.interval.ms",
                                           "max.poll.interval.ms",
                                           "enable.auto.commit",
                                           "enable.auto.offset.store",
                                           "auto.commit.interval.ms",
                                           "enable.partition.eof"};

        if (strncmp(key, "group.", 6) == 0)
                return 0;
        for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
                if (strcmp(key, skip[i]) == 0)
                        return 0;
        return 1;
}

recall_t *recall_new(loop_t *loop, const struct config *conf, size_t max_items,
                     recall_cb *cb, void *opaque, char *errstr,
                     size_t errstr_size) {
        /* Settings the reading of the results topic depends on. */
        static const char *const fixed[][2] = {
                {"enable.partition.eof", "true"},
                {"queued.max.messages.kbytes", "8192"},
        };
        rd_kafka_conf_t *kc;
        recall_t *r;
        char rderr[512];

        r = calloc(1, sizeof(*r));
        if (!r) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r->r_loop = loop;
        r->r_cb = cb;
        r->r_opaque = opaque;
        r->r_timeout_ms = conf->dedupe_recall_timeout_ms;
        r->r_max_items = max_items;
        r->r_pipe[0] = r->r_pipe[1] = -1;
        pthread_mutex_init(&r->r_lock, NULL);
        pthread_cond_init(&r->r_cond, NULL);
        r->r_topic = strdup(conf->topic_results);
        if (!r->r_topic) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        kc = rd_kafka_conf_new();
        if (kconf_set_kvs(kc, RECALL_SCOPE, conf->kafka_consumer,
                          conf->kafka_consumer_cnt, recall_conf_takes, errstr,
                          errstr_size) ||
            kconf_set_table(kc, RECALL_SCOPE, fixed,
                            sizeof(fixed) / sizeof(fixed[0]), errstr,
                            errstr_size)) {
                rd_kafka_conf_destroy(kc);
                goto fail;
        }
        rd_kafka_conf_set_log_cb(kc, log_rdkafka);
        r->r_rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, rderr, sizeof(rderr));
        if (!r->r_rk) {
                rd_kafka_conf_destroy(kc);
                snprintf(errstr, errstr_size, "results reader: %s", rderr);
                goto fail;
        }
        r->r_rkt = rd_kafka_topic_new(r->r_rk, r->r_topic, NULL);
        if (!r->r_rkt) {
                snprintf(errstr, errstr_size, "results reader: %s",
                         rd_kafka_err2str(rd_kafka_last_error()));
                goto fail;
        }
        if (pipe2(r->r_pipe, O_NONBLOCK | O_CLOEXEC) == -1 ||
            loop_io_add(loop, r->r_pipe[0], LOOP_READ, recall_on_pipe, r) ==
                    -1) {
                snprintf(errstr, errstr_size, "results reader: %s",
                         strerror(errno));
                goto fail;
        }
        if (pthread_create(&r->r_thread, NULL, recall_main, r) != 0) {
                snprintf(errstr, errstr_size,
                         "results reader: cannot start its "
                         "thread");
                goto fail;
        }
        r->r_started = 1;
        return r;

fail:
        recall_destroy(r);
        return NULL;
}

void recall_ask(recall_t *r, consumer_t *c, int topic_idx, const char *topic,
                const int32_t *partitions, const uint64_t *seqs, int cnt) {
        struct recall_job *j = calloc(1, sizeof(*j)), **pp;

        if (!j)
                abort();
        j->c = c;
        j->topic_idx = topic_idx;
        j->topic = strdup(topic);
        j->cnt = cnt;
        j->partitions = malloc((size_t)cnt * sizeof(*j->partitions));
        j->seqs = malloc((size_t)cnt * sizeof(*j->seqs));
        if (!j->topic || !j->partitions || !j->seqs)
                abort();
        memcpy(j->partitions, partitions, (size_t)cnt * sizeof(*partitions));
        memcpy(j->seqs, seqs, (size_t)cnt * sizeof(*seqs));
        pthread_mutex_lock(&r->r_lock);
        for (pp = &r->r_jobs; *pp; pp = &(*pp)->next)
                ;
        *pp = j;
        pthread_cond_signal(&r->r_cond);
        pthread_mutex_unlock(&r->r_lock);
}

void recall_destroy(recall_t *r) {
        struct recall_job *j;
        struct recall_done *d;

        if (!r)
                return;
        if (r->r_started) {
                pthread_mutex_lock(&r->r_lock);
                r->r_stop = 1;
                pthread_cond_signal(&r->r_cond);
                pthread_mutex_unlock(&r->r_lock);
                pthread_join(r->r_thread, NULL);
        }
        while ((j = r->r_jobs) != NULL) {
                r->r_jobs = j->next;
                recall_job_free(j);
        }
        while ((d = r->r_done) != NULL) {
                r->r_done = d->next;
                recall_answer_free(&d->a);
                free(d);
        }
        if (r->r_pipe[0] != -1) {
                loop_io_del(r->r_loop, r->r_pipe[0]);
                close(r->r_pipe[0]);
        }
        if (r->r_pipe[1] != -1)
                close(r->r_pipe[1]);
        if (r->r_rkt)
                rd_kafka_topic_destroy(r->r_rkt);
        if (r->r_rk)
                rd_kafka_destroy(r->r_rk);
        pthread_cond_destroy(&r->r_cond);
        pthread_mutex_destroy(&r->r_lock);
        free(r->r_topic);
        free(r);
}
