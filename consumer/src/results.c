#include "results.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "backoff.h"
#include "bytescan.h"
#include "civil.h"
#include "dynbuf.h"
#include "kconf.h"
#include "log.h"
#include "utf8.h"

/* How errors name the producer's settings. */
#define RESULTS_SCOPE "kafka.producer"
/* How often records librdkafka refused (queue full) are offered again, and
 * how often delivery reports are served when no wake-up came. */
#define RESULTS_RETRY_MS 50
#define RESULTS_POLL_MS 100
/* A record Kafka refused for another reason is offered again after a delay
 * doubling from the first to the second. */
#define RESULTS_REOFFER_MIN_MS 1000
#define RESULTS_REOFFER_MAX_MS 60000
/* A dead-letter copy too large for the topic is cut to this size. */
#define RESULTS_DEADLETTER_CUT 65536
/* A result too large for the topic loses its metadata and long texts. */
#define RESULTS_REPLY_CUT 512
/* The longest result record formatted: far above what its parts can
 * make (the request's metadata is at most request.max.bytes, 100 MiB at
 * most; a reply at most an SMTP session's input buffer, 6 bytes a byte
 * escaped; recipients request.max.recipients, at most 10000). */
#define RESULTS_RECORD_MAX (256u * 1024 * 1024)
/* The largest formatting buffer kept between two results. */
#define RESULTS_FMT_KEEP 65536

/* What a record is, which decides what happens when Kafka refuses it. */
enum rec_kind {
        REC_RESULT = 0,
        REC_DEADLETTER,
        REC_HANDOFF,
};

/* A record waiting to be handed to librdkafka. */
struct backlog {
        struct backlog *next;
        enum rec_kind kind;
        char *topic;
        int32_t partition; /* RD_KAFKA_PARTITION_UA: by key */
        void *key;
        size_t key_len;
        void *value;
        size_t value_len;
        rd_kafka_headers_t *headers; /* owned, NULL when none */
        void *opaque;
        int64_t not_before_ms; /* loop clock; 0 = at once */
        int tries;
};

/* One librdkafka producer: the results' own, and the one it replaced
 * (results_renew()) until it has given back what it held. */
struct results_client {
        rd_kafka_t *rk;
        rd_kafka_queue_t *mainq;
        /* Handles of the three topics, made at start so that librdkafka
         * fetches their metadata before the first result: on first use it
         * took about 0.5 s, which held the first sends' offsets that long. */
        rd_kafka_topic_t *rkt[3];
};

struct results {
        loop_t *r_loop;
        const struct config *r_conf;
        struct results_client r_client;
        struct results_client r_old; /* rk NULL: none */
        uint64_t r_reports; /* delivery reports served */
        int r_renewals; /* results_renew() calls */
        int r_pipe[2]; /* librdkafka writes here when reports are queued */
        struct log_repeat r_errors; /* log.repeat.ms */
        loop_timer_t r_timer;
        results_ack_cb *r_ack_cb;
        results_ack_cb *r_nack_cb;
        char *r_topic_results;
        char *r_topic_deadletter;
        char *r_topic_retry;
        char *r_relay;
        char *r_worker;
        struct backlog *r_backlog_head;
        struct backlog *r_backlog_tail;
        size_t r_backlog_cnt;
        size_t r_inflight; /* produced, not yet reported */
        /* Per results partition, one past the highest offset Kafka
         * acknowledged for this producer (0: none yet). */
        int64_t *r_end;
        size_t r_end_cnt;
        int r_fatal;
        kstatus_t *r_ks; /* where access errors go (not owned) */
        /* Where results_publish() formats a record: kept from one record
         * to the next unless it grew past RESULTS_FMT_KEEP. */
        struct dynbuf r_fmt;
};

static void results_old_check(results_t *r);

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

/* Writes the @width low decimal digits of @v (0 <= @v), zero-padded, at
 * @p. @returns the byte past them. */
static char *results_put_digits(char *p, int v, int width) {
        for (int i = width - 1; i >= 0; i--) {
                p[i] = (char)('0' + v % 10);
                v /= 10;
        }
        return p + width;
}

void results_format_time(int64_t unix_ms, char *buf, size_t buf_size) {
        struct civil c;
        char *p = buf;

        /* The seconds as gmtime_r() of unix_ms / 1000 has them. */
        civil_from_unix(unix_ms / 1000, &c);
        if (unix_ms < 0 || c.year > 9999 || buf_size < 25) {
                snprintf(buf, buf_size, "%04lld-%02d-%02dT%02d:%02d:%02d.%03dZ",
                         (long long)c.year, c.month, c.day, c.hour, c.min,
                         c.sec, (int)(unix_ms % 1000));
                return;
        }
        /* The common case without printf: YYYY-MM-DDTHH:MM:SS.mmmZ */
        p = results_put_digits(p, (int)c.year, 4);
        *p++ = '-';
        p = results_put_digits(p, c.month, 2);
        *p++ = '-';
        p = results_put_digits(p, c.day, 2);
        *p++ = 'T';
        p = results_put_digits(p, c.hour, 2);
        *p++ = ':';
        p = results_put_digits(p, c.min, 2);
        *p++ = ':';
        p = results_put_digits(p, c.sec, 2);
        *p++ = '.';
        p = results_put_digits(p, (int)(unix_ms % 1000), 3);
        *p++ = 'Z';
        *p = '\0';
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
static rd_kafka_resp_err_t
results_produce(results_t *r, const char *topic, int32_t partition,
                const void *key, size_t key_len, const void *value,
                size_t value_len, rd_kafka_headers_t *headers, void *opaque) {
        rd_kafka_vu_t vu[7];
        size_t n = 0;
        rd_kafka_error_t *error;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

        vu[n].vtype = RD_KAFKA_VTYPE_TOPIC;
        vu[n++].u.cstr = topic;
        vu[n].vtype = RD_KAFKA_VTYPE_PARTITION;
        vu[n++].u.i32 = partition;
        vu[n].vtype = RD_KAFKA_VTYPE_KEY;
        vu[n].u.mem.ptr = (void *)key;
        vu[n++].u.mem.size = key_len;
        vu[n].vtype = RD_KAFKA_VTYPE_VALUE;
        vu[n].u.mem.ptr = (void *)value;
        vu[n++].u.mem.size = value_len;
        vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
        vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
        vu[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
        vu[n++].u.ptr = opaque;
        if (headers) {
                vu[n].vtype = RD_KAFKA_VTYPE_HEADERS;
                vu[n++].u.headers = headers;
        }
        error = rd_kafka_produceva(r->r_client.rk, vu, n);
        if (error) {
                err = rd_kafka_error_code(error);
                rd_kafka_error_destroy(error);
        }
        if (!err)
                r->r_inflight++;
        return err;
}

/* Keeps a record librdkafka could not take; copies everything. @headers is
 * taken. */
static struct backlog *results_backlog_add(results_t *r, enum rec_kind kind,
                                           const char *topic, int32_t partition,
                                           const void *key, size_t key_len,
                                           const void *value, size_t value_len,
                                           rd_kafka_headers_t *headers,
                                           void *opaque) {
        struct backlog *b = calloc(1, sizeof(*b));

        if (!b)
                abort();
        b->kind = kind;
        b->topic = strdup(topic);
        b->partition = partition;
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
        return b;
}

/* Makes a result record that Kafka found too large smaller: metadata,
 * the per-recipient lists and long texts go, "truncated" says so. @returns a new
 * value (caller frees) or NULL when it cannot be made smaller. */
static char *results_shrink_result(const void *value, size_t len) {
        json_t *o = json_loadb(value, len, 0, NULL);
        const char *fields[] = {"smtp_reply", "error"};
        char *out = NULL;

        if (!o)
                return NULL;
        if (json_object_get(o, "truncated") == NULL) {
                json_object_set_new(o, "metadata", json_null());
                json_object_del(o, "failed_recipients");
                json_object_del(o, "recipients"); /* "delivered" stays */
                for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]);
                     i++) {
                        json_t *v = json_object_get(o, fields[i]);

                        if (json_is_string(v) &&
                            json_string_length(v) > RESULTS_REPLY_CUT)
                                json_object_set_new(
                                        o, fields[i],
                                        json_stringn(json_string_value(v),
                                                     RESULTS_REPLY_CUT));
                }
                json_object_set_new(o, "truncated", json_true());
                out = json_dumps(o, JSON_COMPACT);
        }
        json_decref(o);
        return out;
}

/* Kafka refused a record (before or after taking it) with @err: keeps it to
 * offer again, smaller when it was too large, or gives a hand-over back to
 * its owner. @headers is taken. Never drops a result or a dead-letter
 * copy. */
static void results_refused(results_t *r, enum rec_kind kind, const char *topic,
                            int32_t partition, const void *key, size_t key_len,
                            const void *value, size_t value_len,
                            rd_kafka_headers_t *headers, void *opaque,
                            int tries, rd_kafka_resp_err_t err) {
        struct backlog *b;
        char *small = NULL;
        char num[32];
        int64_t delay;

        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                b = results_backlog_add(r, kind, topic, partition, key, key_len,
                                        value, value_len, headers, opaque);
                b->tries = tries;
                return;
        }
        if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
                switch (kind) {
                case REC_HANDOFF:
                        LOG(LL_WARN,
                            "retry record too large, retrying in memory "
                            "instead topic=%s",
                            topic);
                        if (headers)
                                rd_kafka_headers_destroy(headers);
                        r->r_nack_cb(opaque);
                        return;
                case REC_DEADLETTER:
                        if (value_len > RESULTS_DEADLETTER_CUT) {
                                LOG(LL_WARN,
                                    "dead-letter copy too large, cut "
                                    "topic=%s bytes=%zu cut_to=%d",
                                    topic, value_len, RESULTS_DEADLETTER_CUT);
                                if (!headers)
                                        headers = rd_kafka_headers_new(1);
                                snprintf(num, sizeof(num), "%zu", value_len);
                                rd_kafka_header_add(headers, "km.truncated", -1,
                                                    num, -1);
                                value_len = RESULTS_DEADLETTER_CUT;
                        }
                        break;
                case REC_RESULT:
                        small = results_shrink_result(value, value_len);
                        if (small) {
                                LOG(LL_WARN,
                                    "result too large, sent without "
                                    "metadata topic=%s bytes=%zu",
                                    topic, value_len);
                                value = small;
                                value_len = strlen(small);
                        }
                        break;
                }
        }
        /* Offered again after a growing delay: the cause (size, rights,
         * a missing topic) may be fixed by an operator meanwhile. */
        delay = backoff_ms(RESULTS_REOFFER_MIN_MS, RESULTS_REOFFER_MAX_MS, 0,
                           tries + 1, 0);
        if (tries == 0 || tries % 10 == 0)
                LOG(LL_ERROR,
                    "Kafka refused a record, offering it again (its "
                    "request stays uncommitted) topic=%s err=%s tries=%d "
                    "retry_in_ms=%lld",
                    topic, rd_kafka_err2str(err), tries + 1, (long long)delay);
        b = results_backlog_add(r, kind, topic, partition, key, key_len, value,
                                value_len, headers, opaque);
        b->tries = tries + 1;
        b->not_before_ms = loop_clock_ms() + delay;
        free(small);
}

/* Offers a record to librdkafka, keeping it when refused. @headers is
 * taken. */
static void results_send(results_t *r, enum rec_kind kind, const char *topic,
                         int32_t partition, const void *key, size_t key_len,
                         const void *value, size_t value_len,
                         rd_kafka_headers_t *headers, void *opaque) {
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__QUEUE_FULL;

        if (!r->r_backlog_head) {
                err = results_produce(r, topic, partition, key, key_len, value,
                                      value_len, headers, opaque);
                if (!err)
                        return;
        }
        results_refused(r, kind, topic, partition, key, key_len, value,
                        value_len, headers, opaque, 0, err);
}

/* Offers the backlog to librdkafka in order, skipping records not yet due
 * and stopping when librdkafka's queue is full. */
static void results_backlog_drain(results_t *r) {
        struct backlog **pp = &r->r_backlog_head;
        struct backlog *b, *last = NULL;
        int64_t now = loop_clock_ms();
        rd_kafka_resp_err_t err;

        while ((b = *pp) != NULL) {
                if (b->not_before_ms > now) {
                        last = b;
                        pp = &b->next;
                        continue;
                }
                err = results_produce(r, b->topic, b->partition, b->key,
                                      b->key_len, b->value, b->value_len,
                                      b->headers, b->opaque);
                if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        break;
                *pp = b->next;
                r->r_backlog_cnt--;
                if (err) {
                        /* Refused for another reason: handled as new. */
                        rd_kafka_headers_t *h = b->headers;

                        b->headers = NULL;
                        results_refused(r, b->kind, b->topic, b->partition,
                                        b->key, b->key_len, b->value,
                                        b->value_len, h, b->opaque, b->tries,
                                        err);
                } else {
                        b->headers = NULL; /* taken by librdkafka */
                }
                backlog_free(b);
        }
        /* The tail may have moved (removed, or added by results_refused). */
        for (last = r->r_backlog_head; last && last->next; last = last->next)
                ;
        r->r_backlog_tail = last;
}

static enum rec_kind results_kind_of(const results_t *r, const char *topic) {
        if (strcmp(topic, r->r_topic_deadletter) == 0)
                return REC_DEADLETTER;
        if (strcmp(topic, r->r_topic_retry) == 0)
                return REC_HANDOFF;
        return REC_RESULT;
}

/* Kafka holds a result of results partition @partition below @end. */
static void results_note_end(results_t *r, int32_t partition, int64_t end) {
        if ((size_t)partition >= r->r_end_cnt) {
                size_t n = (size_t)partition + 16;
                int64_t *ne = realloc(r->r_end, n * sizeof(*ne));

                if (!ne)
                        return; /* not known: a later read starts lower */
                memset(ne + r->r_end_cnt, 0, (n - r->r_end_cnt) * sizeof(*ne));
                r->r_end = ne;
                r->r_end_cnt = n;
        }
        if (end > r->r_end[partition])
                r->r_end[partition] = end;
}

int64_t results_end(const results_t *r, int32_t partition) {
        if (partition < 0 || (size_t)partition >= r->r_end_cnt)
                return 0;
        return r->r_end[partition];
}

static void results_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                          void *conf_opaque) {
        results_t *r = conf_opaque;
        rd_kafka_headers_t *hdrs = NULL;
        rd_kafka_headers_t *copy = NULL;
        const char *topic = rd_kafka_topic_name(m->rkt);
        enum rec_kind kind;
        int32_t partition;

        r->r_inflight--;
        r->r_reports++;
        if (!m->err) {
                if (m->partition >= 0 && m->offset >= 0 &&
                    results_kind_of(r, topic) == REC_RESULT)
                        results_note_end(r, m->partition, m->offset + 1);
                r->r_ack_cb(m->_private);
                return;
        }
        kind = results_kind_of(r, topic);
        if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
                copy = rd_kafka_headers_copy(hdrs);
        partition = kind == REC_RESULT ? m->partition : RD_KAFKA_PARTITION_UA;
        if (rk != r->r_client.rk) {
                /* Given back (purged) by the producer results_renew()
                 * replaced: offered to the new one at once, as it was. */
                results_backlog_add(r, kind, topic, partition, m->key,
                                    m->key_len, m->payload, m->len, copy,
                                    m->_private);
                return;
        }
        /* Not stored: the request stays uncommitted until a copy is. */
        kstatus_error(r->r_ks, loop_clock_ms(), "results producer", m->err,
                      rd_kafka_err2str(m->err));
        LOG(LL_WARN, "record delivery failed topic=%s err=%s", topic,
            rd_kafka_err2str(m->err));
        results_refused(r, kind, topic, partition, m->key, m->key_len,
                        m->payload, m->len, copy, m->_private, 0,
                        m->err == RD_KAFKA_RESP_ERR__QUEUE_FULL
                                ? RD_KAFKA_RESP_ERR__FAIL
                                : m->err);
}

static void results_error_cb(rd_kafka_t *rk, int err, const char *reason,
                             void *opaque) {
        results_t *r = opaque;
        char fatal[512];
        unsigned long held;

        if (rk != r->r_client.rk) {
                /* The producer results_renew() replaced: nothing of it
                 * matters but the records it gives back. */
                LOG(LL_DEBUG,
                    "replaced results producer error err=%s reason=%s",
                    rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
                return;
        }
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                kstatus_error(r->r_ks, loop_clock_ms(), "results producer",
                              rd_kafka_fatal_error(rk, fatal, sizeof(fatal)),
                              fatal);
                LOG(LL_ERROR,
                    "results producer failed for good, stopping "
                    "(unfinished requests stay uncommitted) reason=%s",
                    fatal);
                r->r_fatal = 1;
                return;
        }
        kstatus_error(r->r_ks, loop_clock_ms(), "results producer",
                      (rd_kafka_resp_err_t)err, reason);
        if (log_repeat_pass(&r->r_errors, err, loop_clock_ms(), &held))
                LOG(LL_WARN,
                    "results producer error err=%s reason=%s repeated=%lu",
                    rd_kafka_err2name((rd_kafka_resp_err_t)err), reason, held);
}

int results_fatal(const results_t *r) {
        return r->r_fatal;
}

void results_poll(results_t *r) {
        rd_kafka_poll(r->r_client.rk, 0);
        results_old_check(r);
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
                         r->r_backlog_head ? RESULTS_RETRY_MS
                                           : RESULTS_POLL_MS);
}

/* @returns whether the producer takes the user's setting of @key:
 * kafka.group.id reaches both clients; the producer has none. */
static int results_conf_takes(const char *key) {
        return strcmp(key, "group.id") != 0;
}

/* @returns whether the kafka.* settings of the producer set @key. */
static int results_conf_has(const struct config *conf, const char *key) {
        for (size_t i = 0; i < conf->kafka_producer_cnt; i++)
                if (strcmp(conf->kafka_producer[i].key, key) == 0)
                        return 1;
        return 0;
}

/* Makes a producer for @r into @c: the settings, callbacks, the wake-up
 * of the loop and the topics' handles. @returns 0, or -1 with @errstr. */
static int results_client_new(results_t *r, struct results_client *c,
                              char *errstr, size_t errstr_size) {
        /* Defaults first; kafka.* settings may replace any of them except
         * idempotence, which the contract needs. */
        static const char *const defaults[][2] = {
                {"linger.ms", "5"},
                {"message.timeout.ms", "0"},
                {"queue.buffering.max.messages", "1000000"},
                {"compression.type", "lz4"},
        };
        const struct config *conf = r->r_conf;
        const char *topics[] = {r->r_topic_results, r->r_topic_deadletter,
                                r->r_topic_retry};
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        char rderr[512];

        memset(c, 0, sizeof(*c));
        if (kconf_set_table(kc, RESULTS_SCOPE, defaults,
                            sizeof(defaults) / sizeof(defaults[0]), errstr,
                            errstr_size) ||
            kconf_set_kvs(kc, RESULTS_SCOPE, conf->kafka_producer,
                          conf->kafka_producer_cnt, results_conf_takes, errstr,
                          errstr_size) ||
            kconf_set(kc, RESULTS_SCOPE, "enable.idempotence", "true", errstr,
                      errstr_size))
                goto fail;
        if (!results_conf_has(conf, "message.max.bytes")) {
                /* Room for the dead-letter copy or retry record of the
                 * largest request accepted (a retry record escapes it). */
                long max = 2L * conf->request_max_bytes + 65536;
                char num[32];

                snprintf(num, sizeof(num), "%ld",
                         max < 1000000 ? 1000000 : max);
                if (kconf_set(kc, RESULTS_SCOPE, "message.max.bytes", num,
                              errstr, errstr_size))
                        goto fail;
        }
        rd_kafka_conf_set_dr_msg_cb(kc, results_dr_cb);
        rd_kafka_conf_set_error_cb(kc, results_error_cb);
        rd_kafka_conf_set_log_cb(kc, log_rdkafka);
        rd_kafka_conf_set_opaque(kc, r);

        c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, rderr, sizeof(rderr));
        if (!c->rk) {
                snprintf(errstr, errstr_size, "results producer: %s", rderr);
                goto fail;
        }
        c->mainq = rd_kafka_queue_get_main(c->rk);
        rd_kafka_queue_io_event_enable(c->mainq, r->r_pipe[1], "1", 1);
        for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
                c->rkt[i] = rd_kafka_topic_new(c->rk, topics[i], NULL);
        return 0;

fail:
        rd_kafka_conf_destroy(kc);
        return -1;
}

static void results_client_destroy(struct results_client *c) {
        if (c->mainq) {
                rd_kafka_queue_io_event_enable(c->mainq, -1, NULL, 0);
                rd_kafka_queue_destroy(c->mainq);
        }
        for (size_t i = 0; i < sizeof(c->rkt) / sizeof(c->rkt[0]); i++)
                if (c->rkt[i])
                        rd_kafka_topic_destroy(c->rkt[i]);
        if (c->rk)
                rd_kafka_destroy(c->rk);
        memset(c, 0, sizeof(*c));
}

results_t *results_new(loop_t *loop, const struct config *conf,
                       results_ack_cb *ack_cb, results_ack_cb *nack_cb,
                       kstatus_t *ks, char *errstr, size_t errstr_size) {
        results_t *r = calloc(1, sizeof(*r));

        if (!r) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r->r_pipe[0] = r->r_pipe[1] = -1;
        dynbuf_init(&r->r_fmt, RESULTS_RECORD_MAX);
        r->r_loop = loop;
        r->r_conf = conf;
        r->r_ks = ks;
        r->r_ack_cb = ack_cb;
        r->r_nack_cb = nack_cb;
        loop_timer_init(&r->r_timer, results_on_timer, r);
        r->r_topic_results = strdup(conf->topic_results);
        r->r_topic_deadletter = strdup(conf->topic_deadletter);
        r->r_topic_retry = strdup(conf->topic_retry);
        r->r_worker = strdup(conf->worker_id);
        r->r_relay =
                strdup(conf->smtp_url); /* config refuses credentials in it */
        if (!r->r_topic_results || !r->r_topic_deadletter ||
            !r->r_topic_retry || !r->r_worker || !r->r_relay) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        if (pipe2(r->r_pipe, O_NONBLOCK | O_CLOEXEC) == -1) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        if (results_client_new(r, &r->r_client, errstr, errstr_size))
                goto fail;
        if (loop_io_add(loop, r->r_pipe[0], LOOP_READ, results_on_pipe, r)) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail;
        }
        loop_timer_start(loop, &r->r_timer, RESULTS_POLL_MS);
        return r;

fail:
        results_destroy(r, 0);
        return NULL;
}

/* Gives up the producer replaced by results_renew() once it holds nothing:
 * what it held came back as delivery reports (purged) and was offered to
 * the new one. */
static void *results_client_reap(void *arg) {
        results_client_destroy(arg);
        free(arg);
        return NULL;
}

static void results_old_check(results_t *r) {
        struct results_client *c;
        pthread_attr_t attr;
        pthread_t tid;
        int rc = -1;

        if (!r->r_old.rk)
                return;
        rd_kafka_poll(r->r_old.rk, 0);
        if (rd_kafka_outq_len(r->r_old.rk) > 0)
                return;
        LOG(LL_INFO, "replaced results producer closed");
        /* No more wake-ups from it. Destroyed on a thread of its own: the
         * loop does not wait for the threads of a producer that was
         * stuck. */
        rd_kafka_queue_io_event_enable(r->r_old.mainq, -1, NULL, 0);
        c = malloc(sizeof(*c));
        if (c && pthread_attr_init(&attr) == 0) {
                *c = r->r_old;
                pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                rc = pthread_create(&tid, &attr, results_client_reap, c);
                pthread_attr_destroy(&attr);
        }
        if (rc != 0) {
                free(c);
                results_client_destroy(&r->r_old);
        }
        memset(&r->r_old, 0, sizeof(r->r_old));
}

int results_renew(results_t *r, char *errstr, size_t errstr_size) {
        struct results_client c;
        int held;

        if (r->r_old.rk) {
                snprintf(errstr, errstr_size,
                         "the producer replaced before still holds %d "
                         "records",
                         rd_kafka_outq_len(r->r_old.rk));
                return -1;
        }
        if (results_client_new(r, &c, errstr, errstr_size))
                return -1;
        held = rd_kafka_outq_len(r->r_client.rk);
        r->r_old = r->r_client;
        r->r_client = c;
        /* Each record it held comes back with a delivery report saying so
         * (results_dr_cb()) and goes to the new producer; one that was
         * under way may be stored twice. */
        rd_kafka_purge(r->r_old.rk, RD_KAFKA_PURGE_F_QUEUE |
                                            RD_KAFKA_PURGE_F_INFLIGHT |
                                            RD_KAFKA_PURGE_F_NON_BLOCKING);
        r->r_renewals++;
        LOG(LL_INFO, "results producer replaced held=%d", held);
        results_old_check(r);
        return 0;
}

uint64_t results_reports(const results_t *r) {
        return r->r_reports;
}

size_t results_unreported(const results_t *r) {
        return r->r_inflight;
}

int results_renewals(const results_t *r) {
        return r->r_renewals;
}

void results_destroy(results_t *r, int timeout_ms) {
        struct backlog *b;
        int64_t deadline;

        if (!r)
                return;
        if (r->r_client.rk) {
                deadline = loop_clock_ms() + timeout_ms;
                while ((r->r_backlog_head || r->r_inflight) &&
                       loop_clock_ms() < deadline) {
                        results_old_check(r);
                        results_backlog_drain(r);
                        rd_kafka_poll(r->r_client.rk, 50);
                }
                if (r->r_backlog_cnt || r->r_inflight > 0)
                        LOG(LL_WARN,
                            "results not acknowledged at exit (their "
                            "requests stay uncommitted) count=%zu",
                            r->r_backlog_cnt + r->r_inflight);
        }
        loop_timer_stop(r->r_loop, &r->r_timer);
        if (r->r_pipe[0] != -1) {
                loop_io_del(r->r_loop, r->r_pipe[0]);
                close(r->r_pipe[0]);
        }
        results_client_destroy(&r->r_old);
        results_client_destroy(&r->r_client);
        if (r->r_pipe[1] != -1)
                close(r->r_pipe[1]);
        while ((b = r->r_backlog_head) != NULL) {
                r->r_backlog_head = b->next;
                backlog_free(b);
        }
        dynbuf_fini(&r->r_fmt);
        free(r->r_end);
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

/* Result records are written by hand (jb_*()): building a jansson object
 * per result cost more than the rest of the result path.
 *
 * Writes @s as a JSON string, or null when NULL. Text that is not UTF-8
 * (a relay's reply may hold any) is repaired as utf8_repair() does: each
 * ill-formed part becomes one U+FFFD. */
static void jb_str(struct dynbuf *b, const char *s) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = (const unsigned char *)s;
        size_t n, run = 0;

        if (!s) {
                dynbuf_appendlit(b, "null");
                return;
        }
        n = strlen(s);
        dynbuf_append(b, "\"", 1);
        for (size_t i = 0; i < n;) {
                unsigned char c;
                size_t len;
                char esc[6];

                len = bytescan_json_plain(p + i, n - i);
                run += len;
                i += len;
                if (i >= n)
                        break;
                c = p[i];
                if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
                        run++;
                        i++;
                        continue;
                }
                dynbuf_append(b, (const char *)p + i - run, run);
                run = 0;
                if (c == '"' || c == '\\') {
                        esc[0] = '\\';
                        esc[1] = (char)c;
                        dynbuf_append(b, esc, 2);
                        i++;
                } else if (c < 0x20) {
                        memcpy(esc, "\\u00", 4);
                        esc[4] = hex[c >> 4];
                        esc[5] = hex[c & 15];
                        dynbuf_append(b, esc, 6);
                        i++;
                } else if ((len = utf8_decode(p + i, n - i, NULL)) > 0) {
                        dynbuf_append(b, (const char *)p + i, len);
                        i += len;
                } else {
                        dynbuf_appendlit(b, "\\ufffd");
                        i += utf8_invalid_len(p + i, n - i);
                }
        }
        dynbuf_append(b, (const char *)p + n - run, run);
        dynbuf_append(b, "\"", 1);
}

static void jb_int(struct dynbuf *b, long long v) {
        char num[24];
        char *p = num + sizeof(num);
        /* As unsigned: the lowest value has no positive counterpart. */
        unsigned long long u =
                v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;

        do {
                *--p = (char)('0' + u % 10);
                u /= 10;
        } while (u > 0);
        if (v < 0)
                *--p = '-';
        dynbuf_append(b, p, (size_t)(num + sizeof(num) - p));
}

/* Writes a jansson value (metadata, failed recipients) compactly. */
static void jb_json(struct dynbuf *b, const json_t *v) {
        char *text;

        if (!v) {
                dynbuf_appendlit(b, "null");
                return;
        }
        text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
                abort();
        dynbuf_appends(b, text);
        free(text);
}

static void jb_source(struct dynbuf *b, const struct result_source *src) {
        dynbuf_appendlit(b, "{\"topic\":");
        jb_str(b, src->topic);
        dynbuf_appendlit(b, ",\"partition\":");
        jb_int(b, src->partition);
        dynbuf_appendlit(b, ",\"offset\":");
        jb_int(b, src->offset);
        dynbuf_appendlit(b, "}");
}

/* Appends the result record's JSON text to @bp (results_format()). */
static void results_format_into(struct dynbuf *bp, const struct result_rec *rec,
                                const char *relay, const char *worker) {
        char received[40], completed[40];
        int64_t latency;

        results_format_time(rec->received_ms, received, sizeof(received));
        results_format_time(rec->completed_ms, completed, sizeof(completed));
        latency = rec->request_ts_ms > 0
                          ? rec->completed_ms - rec->request_ts_ms
                          : rec->completed_ms - rec->received_ms;
        if (latency < 0)
                latency = 0;

        dynbuf_appendlit(bp, "{\"v\":1,\"id\":");
        jb_str(bp, rec->id);
        if (rec->id && rec->id_from_key)
                dynbuf_appendlit(bp, ",\"id_from\":\"key\"");
        dynbuf_appendlit(bp, ",\"status\":\"");
        dynbuf_appends(bp, result_status_name(rec->status));
        dynbuf_appendlit(bp, "\",\"delivered\":\"");
        dynbuf_appends(bp, rec->delivered               ? rec->delivered
                           : rec->status == RESULT_SENT ? "all"
                                                        : "none");
        dynbuf_appendlit(bp, "\",\"attempts\":");
        jb_int(bp, rec->attempts);
        dynbuf_appendlit(bp, ",\"smtp_code\":");
        if (rec->smtp_code)
                jb_int(bp, rec->smtp_code);
        else
                dynbuf_appendlit(bp, "null");
        dynbuf_appendlit(bp, ",\"smtp_reply\":");
        jb_str(bp, rec->smtp_reply);
        dynbuf_appendlit(bp, ",\"message_id\":");
        jb_str(bp, rec->message_id);
        dynbuf_appendlit(bp, ",\"relay\":");
        jb_str(bp, rec->relay ? rec->relay : relay);
        dynbuf_appendlit(bp, ",\"error\":");
        jb_str(bp, rec->error);
        if (rec->failed_recipients) {
                dynbuf_appendlit(bp, ",\"failed_recipients\":");
                jb_json(bp, rec->failed_recipients);
        }
        if (rec->recipients) {
                dynbuf_appendlit(bp, ",\"recipients\":");
                jb_json(bp, rec->recipients);
        }
        if (rec->duplicate_of) {
                dynbuf_appendlit(bp, ",\"duplicate\":true,\"duplicate_of\":");
                jb_source(bp, rec->duplicate_of);
        }
        dynbuf_appendlit(bp, ",\"source\":");
        jb_source(bp, &rec->source);
        dynbuf_appendlit(bp, ",\"received_at\":\"");
        dynbuf_appends(bp, received);
        dynbuf_appendlit(bp, "\",\"completed_at\":\"");
        dynbuf_appends(bp, completed);
        dynbuf_appendlit(bp, "\",\"latency_ms\":");
        jb_int(bp, latency);
        dynbuf_appendlit(bp, ",\"worker\":");
        jb_str(bp, worker);
        dynbuf_appendlit(bp, ",\"metadata\":");
        jb_json(bp, rec->metadata);
        dynbuf_appendlit(bp, "}");
}

char *results_format(const struct result_rec *rec, const char *relay,
                     const char *worker, size_t *lenp) {
        struct dynbuf b;
        char *out;

        dynbuf_init(&b, RESULTS_RECORD_MAX);
        results_format_into(&b, rec, relay, worker);
        /* Cannot fail but for memory: the parts are bounded (see
         * RESULTS_RECORD_MAX); as elsewhere, out of memory aborts. */
        out = dynbuf_take(&b, lenp);
        if (!out)
                abort();
        return out;
}

int results_publish(results_t *r, const struct result_rec *rec, void *opaque) {
        struct dynbuf *b = &r->r_fmt;

        /* Formatted into the buffer kept for it, from which librdkafka
         * copies the record (or the backlog does). */
        dynbuf_reset(b);
        results_format_into(b, rec, r->r_relay, r->r_worker);
        /* Cannot fail but for memory: the parts are bounded (see
         * RESULTS_RECORD_MAX); as elsewhere, out of memory aborts. */
        if (dynbuf_error(b) != DYNBUF_OK)
                abort();
        results_send(r, REC_RESULT, r->r_topic_results,
                     rec->results_partition >= 0 ? rec->results_partition
                                                 : RD_KAFKA_PARTITION_UA,
                     rec->id, rec->id ? strlen(rec->id) : 0, dynbuf_ptr(b),
                     dynbuf_len(b), NULL, opaque);
        if (dynbuf_len(b) > RESULTS_FMT_KEEP)
                dynbuf_fini(b);
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
        results_send(r, REC_DEADLETTER, r->r_topic_deadletter,
                     RD_KAFKA_PARTITION_UA, key, key_len, value, value_len, h,
                     opaque);
        return 0;
}

int results_handoff(results_t *r, const char *key, const char *value,
                    size_t value_len, void *opaque) {
        results_send(r, REC_HANDOFF, r->r_topic_retry, RD_KAFKA_PARTITION_UA,
                     key, strlen(key), value, value_len, NULL, opaque);
        return 0;
}
