#include "results.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "log.h"

/* How often records librdkafka refused (queue full) are offered again, and
 * how often delivery reports are served when no wake-up came. */
#define RESULTS_RETRY_MS 50
#define RESULTS_POLL_MS 100

/* A record waiting to be handed to librdkafka. */
struct backlog {
        struct backlog *next;
        char *topic;
        void *key;
        size_t key_len;
        void *value;
        size_t value_len;
        rd_kafka_headers_t *headers; /* owned, NULL when none */
        void *opaque;
};

struct results {
        loop_t *r_loop;
        rd_kafka_t *r_rk;
        rd_kafka_queue_t *r_mainq;
        int r_pipe[2]; /* librdkafka writes here when reports are queued */
        loop_timer_t r_timer;
        results_ack_cb *r_ack_cb;
        char *r_topic_results;
        char *r_topic_deadletter;
        char *r_topic_retry;
        char *r_relay;
        char *r_worker;
        struct backlog *r_backlog_head;
        struct backlog *r_backlog_tail;
        size_t r_backlog_cnt;
        size_t r_inflight; /* produced, not yet reported */
};

static const char *const status_names[] = {"sent", "failed", "rejected",
                                           "expired"};

const char *result_status_name(enum result_status st) {
        return status_names[st];
}

int64_t results_wall_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void results_format_time(int64_t unix_ms, char *buf, size_t buf_size) {
        time_t secs = (time_t)(unix_ms / 1000);
        struct tm tm;

        gmtime_r(&secs, &tm);
        snprintf(buf, buf_size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

static void backlog_free(struct backlog *b) {
        free(b->topic);
        free(b->key);
        free(b->value);
        if (b->headers)
                rd_kafka_headers_destroy(b->headers);
        free(b);
}

/* Hands one record to librdkafka. @headers is taken on success only.
 * @returns the librdkafka error. */
static rd_kafka_resp_err_t results_produce(results_t *r, const char *topic,
                                           const void *key, size_t key_len,
                                           const void *value, size_t value_len,
                                           rd_kafka_headers_t *headers,
                                           void *opaque) {
        rd_kafka_resp_err_t err;

        if (headers)
                err = rd_kafka_producev(
                    r->r_rk, RD_KAFKA_V_TOPIC(topic),
                    RD_KAFKA_V_KEY(key, key_len),
                    RD_KAFKA_V_VALUE((void *)value, value_len),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(opaque),
                    RD_KAFKA_V_END);
        else
                err = rd_kafka_producev(
                    r->r_rk, RD_KAFKA_V_TOPIC(topic),
                    RD_KAFKA_V_KEY(key, key_len),
                    RD_KAFKA_V_VALUE((void *)value, value_len),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
        if (!err)
                r->r_inflight++;
        return err;
}

/* Keeps a record librdkafka could not take; copies everything. @headers is
 * taken. */
static void results_backlog_add(results_t *r, const char *topic,
                                const void *key, size_t key_len,
                                const void *value, size_t value_len,
                                rd_kafka_headers_t *headers, void *opaque) {
        struct backlog *b = calloc(1, sizeof(*b));

        if (!b)
                abort();
        b->topic = strdup(topic);
        b->key = key_len ? malloc(key_len) : NULL;
        b->value = malloc(value_len ? value_len : 1);
        if (!b->topic || (key_len && !b->key) || !b->value)
                abort();
        if (key_len)
                memcpy(b->key, key, key_len);
        memcpy(b->value, value, value_len);
        b->key_len = key_len;
        b->value_len = value_len;
        b->headers = headers;
        b->opaque = opaque;
        if (r->r_backlog_tail)
                r->r_backlog_tail->next = b;
        else
                r->r_backlog_head = b;
        r->r_backlog_tail = b;
        r->r_backlog_cnt++;
}

/* Offers a record to librdkafka, keeping it when refused. @headers is
 * taken. */
static void results_send(results_t *r, const char *topic, const void *key,
                         size_t key_len, const void *value, size_t value_len,
                         rd_kafka_headers_t *headers, void *opaque) {
        rd_kafka_resp_err_t err;

        if (!r->r_backlog_head) {
                err = results_produce(r, topic, key, key_len, value, value_len,
                                      headers, opaque);
                if (!err)
                        return;
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        LOG(LOG_WARN, "result produce failed topic=%s err=\"%s\"",
                            topic, rd_kafka_err2str(err));
        }
        results_backlog_add(r, topic, key, key_len, value, value_len, headers,
                            opaque);
}

/* Offers the backlog to librdkafka in order, stopping at the first refusal. */
static void results_backlog_drain(results_t *r) {
        struct backlog *b;
        rd_kafka_resp_err_t err;

        while ((b = r->r_backlog_head) != NULL) {
                err = results_produce(r, b->topic, b->key, b->key_len,
                                      b->value, b->value_len, b->headers,
                                      b->opaque);
                if (err)
                        return;
                b->headers = NULL; /* taken by librdkafka */
                r->r_backlog_head = b->next;
                if (!r->r_backlog_head)
                        r->r_backlog_tail = NULL;
                r->r_backlog_cnt--;
                backlog_free(b);
        }
}

static void results_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                          void *conf_opaque) {
        results_t *r = conf_opaque;
        rd_kafka_headers_t *hdrs = NULL;
        rd_kafka_headers_t *copy = NULL;

        (void)rk;
        r->r_inflight--;
        if (!m->err) {
                r->r_ack_cb(m->_private);
                return;
        }
        /* Not delivered: offer the same bytes again. The request stays
         * uncommitted until a copy is acknowledged. */
        LOG(LOG_WARN, "result delivery failed, retrying topic=%s err=\"%s\"",
            rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
                copy = rd_kafka_headers_copy(hdrs);
        results_backlog_add(r, rd_kafka_topic_name(m->rkt), m->key, m->key_len,
                            m->payload, m->len, copy, m->_private);
}

static void results_error_cb(rd_kafka_t *rk, int err, const char *reason,
                             void *opaque) {
        (void)rk;
        (void)opaque;
        LOG(LOG_WARN, "results producer error err=%s reason=\"%s\"",
            rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

void results_poll(results_t *r) {
        rd_kafka_poll(r->r_rk, 0);
        if (r->r_backlog_head)
                results_backlog_drain(r);
}

static void results_on_pipe(loop_t *loop, int fd, unsigned events,
                            void *opaque) {
        char buf[64];

        (void)loop;
        (void)events;
        while (read(fd, buf, sizeof(buf)) > 0)
                ;
        results_poll(opaque);
}

static void results_on_timer(loop_t *loop, void *opaque) {
        results_t *r = opaque;

        results_poll(r);
        loop_timer_start(loop, &r->r_timer,
                         r->r_backlog_head ? RESULTS_RETRY_MS : RESULTS_POLL_MS);
}

static int results_conf_set(rd_kafka_conf_t *kc, const char *key,
                            const char *value, char *errstr,
                            size_t errstr_size) {
        char rderr[256];

        if (rd_kafka_conf_set(kc, key, value, rderr, sizeof(rderr)) !=
            RD_KAFKA_CONF_OK) {
                snprintf(errstr, errstr_size, "kafka.producer.%s: %s", key,
                         rderr);
                return -1;
        }
        return 0;
}

results_t *results_new(loop_t *loop, const struct config *conf,
                       results_ack_cb *ack_cb, char *errstr,
                       size_t errstr_size) {
        /* Defaults first; kafka.* settings may replace any of them except
         * idempotence, which the contract needs. */
        static const char *const defaults[][2] = {
            {"linger.ms", "5"},
            {"message.timeout.ms", "0"},
            {"queue.buffering.max.messages", "1000000"},
            {"compression.type", "lz4"},
        };
        rd_kafka_conf_t *kc = NULL;
        results_t *r = NULL;
        char rderr[512];

        r = calloc(1, sizeof(*r));
        if (!r) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r->r_pipe[0] = r->r_pipe[1] = -1;
        r->r_loop = loop;
        r->r_ack_cb = ack_cb;
        loop_timer_init(&r->r_timer, results_on_timer, r);
        r->r_topic_results = strdup(conf->topic_results);
        r->r_topic_deadletter = strdup(conf->topic_deadletter);
        r->r_topic_retry = strdup(conf->topic_retry);
        r->r_worker = strdup(conf->worker_id);
        r->r_relay = strdup(conf->smtp_url); /* config refuses credentials in it */
        if (!r->r_topic_results || !r->r_topic_deadletter ||
            !r->r_topic_retry || !r->r_worker ||
            !r->r_relay)
                goto fail;

        kc = rd_kafka_conf_new();
        for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
                if (results_conf_set(kc, defaults[i][0], defaults[i][1], errstr,
                                     errstr_size))
                        goto fail_set;
        for (size_t i = 0; i < conf->kafka_producer_cnt; i++)
                /* kafka.group.id reaches both clients; the producer has none. */
                if (strcmp(conf->kafka_producer[i].key, "group.id") != 0 &&
                    results_conf_set(kc, conf->kafka_producer[i].key,
                                     conf->kafka_producer[i].value, errstr,
                                     errstr_size))
                        goto fail_set;
        if (results_conf_set(kc, "enable.idempotence", "true", errstr,
                             errstr_size))
                goto fail_set;
        rd_kafka_conf_set_dr_msg_cb(kc, results_dr_cb);
        rd_kafka_conf_set_error_cb(kc, results_error_cb);
        rd_kafka_conf_set_log_cb(kc, log_rdkafka);
        rd_kafka_conf_set_opaque(kc, r);

        r->r_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, rderr, sizeof(rderr));
        if (!r->r_rk) {
                snprintf(errstr, errstr_size, "results producer: %s", rderr);
                goto fail_set;
        }
        kc = NULL; /* owned by r_rk now */

        if (pipe2(r->r_pipe, O_NONBLOCK | O_CLOEXEC) == -1) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail_set;
        }
        r->r_mainq = rd_kafka_queue_get_main(r->r_rk);
        rd_kafka_queue_io_event_enable(r->r_mainq, r->r_pipe[1], "1", 1);
        if (loop_io_add(loop, r->r_pipe[0], LOOP_READ, results_on_pipe, r)) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail_set;
        }
        loop_timer_start(loop, &r->r_timer, RESULTS_POLL_MS);
        return r;

fail:
        snprintf(errstr, errstr_size, "out of memory");
fail_set:
        if (kc)
                rd_kafka_conf_destroy(kc);
        results_destroy(r, 0);
        return NULL;
}

void results_destroy(results_t *r, int timeout_ms) {
        struct backlog *b;
        int64_t deadline;

        if (!r)
                return;
        if (r->r_rk) {
                deadline = loop_clock_ms() + timeout_ms;
                while ((r->r_backlog_head || r->r_inflight) &&
                       loop_clock_ms() < deadline) {
                        results_backlog_drain(r);
                        rd_kafka_poll(r->r_rk, 50);
                }
                if (r->r_backlog_cnt || rd_kafka_outq_len(r->r_rk) > 0)
                        LOG(LOG_WARN,
                            "results not acknowledged at exit count=%zu "
                            "(their requests stay uncommitted)",
                            r->r_backlog_cnt +
                                (size_t)rd_kafka_outq_len(r->r_rk));
        }
        loop_timer_stop(r->r_loop, &r->r_timer);
        if (r->r_pipe[0] != -1) {
                loop_io_del(r->r_loop, r->r_pipe[0]);
                close(r->r_pipe[0]);
        }
        if (r->r_mainq) {
                rd_kafka_queue_io_event_enable(r->r_mainq, -1, NULL, 0);
                rd_kafka_queue_destroy(r->r_mainq);
        }
        if (r->r_rk)
                rd_kafka_destroy(r->r_rk);
        if (r->r_pipe[1] != -1)
                close(r->r_pipe[1]);
        while ((b = r->r_backlog_head) != NULL) {
                r->r_backlog_head = b->next;
                backlog_free(b);
        }
        free(r->r_topic_results);
        free(r->r_topic_deadletter);
        free(r->r_topic_retry);
        free(r->r_relay);
        free(r->r_worker);
        free(r);
}

size_t results_pending(const results_t *r) {
        return r->r_backlog_cnt + r->r_inflight;
}

static json_t *json_str_or_null(const char *s) {
        return s ? json_string(s) : json_null();
}

int results_publish(results_t *r, const struct result_rec *rec, void *opaque) {
        char received[40], completed[40];
        json_t *o, *src;
        char *value;
        int64_t latency;

        results_format_time(rec->received_ms, received, sizeof(received));
        results_format_time(rec->completed_ms, completed, sizeof(completed));
        latency = rec->request_ts_ms > 0 ? rec->completed_ms - rec->request_ts_ms
                                         : rec->completed_ms - rec->received_ms;
        if (latency < 0)
                latency = 0;

        src = json_pack("{s:s, s:i, s:I}", "topic", rec->source.topic,
                        "partition", (int)rec->source.partition, "offset",
                        (json_int_t)rec->source.offset);
        o = json_object();
        if (!src || !o)
                abort();
        json_object_set_new(o, "v", json_integer(1));
        json_object_set_new(o, "id", json_str_or_null(rec->id));
        json_object_set_new(o, "status",
                            json_string(result_status_name(rec->status)));
        json_object_set_new(o, "attempts", json_integer(rec->attempts));
        json_object_set_new(o, "smtp_code", rec->smtp_code
                                                ? json_integer(rec->smtp_code)
                                                : json_null());
        json_object_set_new(o, "smtp_reply", json_str_or_null(rec->smtp_reply));
        json_object_set_new(o, "message_id", json_str_or_null(rec->message_id));
        json_object_set_new(o, "relay", json_str_or_null(r->r_relay));
        json_object_set_new(o, "error", json_str_or_null(rec->error));
        if (rec->failed_recipients)
                json_object_set(o, "failed_recipients", rec->failed_recipients);
        if (rec->duplicate_of) {
                json_object_set_new(o, "duplicate", json_true());
                json_object_set_new(
                    o, "duplicate_of",
                    json_pack("{s:s, s:i, s:I}", "topic", rec->duplicate_of->topic,
                              "partition", (int)rec->duplicate_of->partition,
                              "offset", (json_int_t)rec->duplicate_of->offset));
        }
        json_object_set_new(o, "source", src);
        json_object_set_new(o, "received_at", json_string(received));
        json_object_set_new(o, "completed_at", json_string(completed));
        json_object_set_new(o, "latency_ms", json_integer(latency));
        json_object_set_new(o, "worker", json_string(r->r_worker));
        json_object_set(o, "metadata",
                        rec->metadata ? rec->metadata : json_null());

        value = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!value)
                abort();
        results_send(r, r->r_topic_results, rec->id,
                     rec->id ? strlen(rec->id) : 0, value, strlen(value), NULL,
                     opaque);
        free(value);
        return 0;
}

int results_deadletter(results_t *r, const void *key, size_t key_len,
                       const void *value, size_t value_len, const char *reason,
                       const struct result_source *src, void *opaque) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(5);
        char num[32];

        rd_kafka_header_add(h, "km.reason", -1, reason, -1);
        rd_kafka_header_add(h, "km.source.topic", -1, src->topic, -1);
        snprintf(num, sizeof(num), "%d", (int)src->partition);
        rd_kafka_header_add(h, "km.source.partition", -1, num, -1);
        snprintf(num, sizeof(num), "%lld", (long long)src->offset);
        rd_kafka_header_add(h, "km.source.offset", -1, num, -1);
        rd_kafka_header_add(h, "km.worker", -1, r->r_worker, -1);
        if (!r->r_backlog_head &&
            results_produce(r, r->r_topic_deadletter, key, key_len, value,
                            value_len, h, opaque) == RD_KAFKA_RESP_ERR_NO_ERROR)
                return 0;
        results_backlog_add(r, r->r_topic_deadletter, key, key_len, value,
                            value_len, h, opaque);
        return 0;
}

int results_handoff(results_t *r, const char *key, const char *value,
                    size_t value_len, void *opaque) {
        results_send(r, r->r_topic_retry, key, strlen(key), value, value_len, NULL,
                     opaque);
        return 0;
}
