#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "consumer.h"
#include "log.h"
#include "loop.h"
#include "message.h"
#include "offsets.h"
#include "request.h"
#include "results.h"
#include "smtp.h"

/* How long one loop iteration may wait when nothing happens. */
#define WORKER_IDLE_WAIT_MS 1000
/* How often a drain (revoke, shutdown) re-checks what is left. */
#define WORKER_DRAIN_STEP_MS 50

/* Where a request is in its life. */
enum entry_state {
        ENTRY_SENDING = 0, /* submitted to the SMTP pool */
        ENTRY_WAITING, /* waiting for its retry timer */
        ENTRY_PUBLISHING, /* final; waiting for Kafka to acknowledge */
};

/* One assigned partition of the requests topic. */
struct part {
        int32_t p_partition;
        offsets_t *p_offsets;
        int64_t p_committed; /* last offset committed, -1 none */
        size_t p_entries; /* live entries of this partition */
        int p_revoked; /* released: completions no longer commit */
};

/* One request from consume to acknowledged result. */
struct entry {
        struct entry *e_next;
        struct entry *e_prev;
        worker_t *e_worker;
        struct part *e_part;
        int64_t e_offset;
        enum entry_state e_state;
        int e_acks_pending;
        int e_attempts;
        struct mail_request *e_req;
        struct message *e_msg;
        struct smtp_job e_job;
        loop_timer_t e_timer;
        int64_t e_request_ts_ms;
        int64_t e_received_ms;
};

struct worker {
        const struct config *w_conf;
        loop_t *w_loop;
        consumer_t *w_consumer;
        results_t *w_results;
        smtp_client_t *w_smtp;
        struct request_limits w_limits;

        struct part **w_parts; /* indexed by partition id */
        size_t w_parts_size;

        struct entry *w_entries; /* every live entry */
        size_t w_inflight;
        size_t w_resume_at; /* resume consuming at or below this */

        loop_timer_t w_commit_timer;
        uint64_t w_commit_errors_seen;

        volatile sig_atomic_t w_stop;
        int w_stopping;

        struct worker_stats w_stats;
};

static void entry_start(struct entry *e);
static void entry_on_retry_timer(loop_t *loop, void *opaque);

/* ---- partitions ---- */

static struct part *part_get(worker_t *w, int32_t partition) {
        if (partition < 0 || (size_t)partition >= w->w_parts_size)
                return NULL;
        return w->w_parts[partition];
}

static struct part *part_add(worker_t *w, int32_t partition) {
        struct part *p;

        if ((size_t)partition >= w->w_parts_size) {
                size_t n = (size_t)partition + 16;
                struct part **np = realloc(w->w_parts, n * sizeof(*np));

                if (!np)
                        abort();
                memset(np + w->w_parts_size, 0,
                       (n - w->w_parts_size) * sizeof(*np));
                w->w_parts = np;
                w->w_parts_size = n;
        }
        if (w->w_parts[partition])
                return w->w_parts[partition];
        p = calloc(1, sizeof(*p));
        if (!p)
                abort();
        p->p_partition = partition;
        p->p_offsets = offsets_new();
        if (!p->p_offsets)
                abort();
        p->p_committed = -1;
        w->w_parts[partition] = p;
        return p;
}

static void part_free(struct part *p) {
        offsets_destroy(p->p_offsets);
        free(p);
}

/* Detaches @p from the assignment; it is freed with its last entry. */
static void part_release(worker_t *w, struct part *p) {
        w->w_parts[p->p_partition] = NULL;
        p->p_revoked = 1;
        if (p->p_entries == 0)
                part_free(p);
}

/* ---- back-pressure ---- */

static void worker_check_pressure(worker_t *w) {
        if (w->w_stopping)
                return;
        if (!consumer_paused(w->w_consumer) &&
            w->w_inflight >= (size_t)w->w_conf->inflight_max) {
                LOG(LOG_DEBUG, "in-flight limit reached inflight=%zu, pausing",
                    w->w_inflight);
                consumer_set_paused(w->w_consumer, 1);
        } else if (consumer_paused(w->w_consumer) &&
                   w->w_inflight <= w->w_resume_at) {
                LOG(LOG_DEBUG, "below low-water mark inflight=%zu, resuming",
                    w->w_inflight);
                consumer_set_paused(w->w_consumer, 0);
        }
}

/* ---- entries ---- */

static struct entry *entry_new(worker_t *w, struct part *p, int64_t offset) {
        struct entry *e = calloc(1, sizeof(*e));

        if (!e)
                abort();
        e->e_worker = w;
        e->e_part = p;
        e->e_offset = offset;
        e->e_received_ms = results_wall_ms();
        loop_timer_init(&e->e_timer, entry_on_retry_timer, e);
        e->e_next = w->w_entries;
        if (w->w_entries)
                w->w_entries->e_prev = e;
        w->w_entries = e;
        p->p_entries++;
        w->w_inflight++;
        return e;
}

/* Frees @e. @final: its result was acknowledged, so its offset is done. */
static void entry_destroy(struct entry *e, int final) {
        worker_t *w = e->e_worker;
        struct part *p = e->e_part;

        loop_timer_stop(w->w_loop, &e->e_timer);
        if (final && !p->p_revoked &&
            offsets_done(p->p_offsets, e->e_offset) == -1)
                LOG(LOG_ERROR, "offset not tracked partition=%d offset=%lld",
                    (int)p->p_partition, (long long)e->e_offset);
        if (e->e_prev)
                e->e_prev->e_next = e->e_next;
        else
                w->w_entries = e->e_next;
        if (e->e_next)
                e->e_next->e_prev = e->e_prev;
        p->p_entries--;
        if (p->p_revoked && p->p_entries == 0)
                part_free(p);
        smtp_job_reset(&e->e_job);
        message_destroy(e->e_msg);
        request_destroy(e->e_req);
        free(e);
        w->w_inflight--;
        worker_check_pressure(w);
}

/* Results ack callback: one of the entry's records is in Kafka. */
static void worker_on_ack(void *opaque) {
        struct entry *e = opaque;

        if (--e->e_acks_pending == 0)
                entry_destroy(e, 1);
}

static json_t *entry_failed_rcpts(const struct smtp_job *job) {
        json_t *arr;

        if (job->rcpt_failure_cnt == 0)
                return NULL;
        arr = json_array();
        for (size_t i = 0; i < job->rcpt_failure_cnt; i++)
                json_array_append_new(
                    arr, json_pack("{s:s, s:i, s:s}", "recipient",
                                   job->rcpt_failures[i].rcpt, "smtp_code",
                                   job->rcpt_failures[i].code, "smtp_reply",
                                   job->rcpt_failures[i].reply
                                       ? job->rcpt_failures[i].reply
                                       : ""));
        return arr;
}

/* Publishes the final result of @e. @code/@reply: the deciding SMTP reply
 * (0/NULL when none); @error: why it was not sent. */
static void entry_finish(struct entry *e, enum result_status status, int code,
                         const char *reply, const char *error) {
        worker_t *w = e->e_worker;
        struct result_rec rec;
        json_t *failed = NULL;

        memset(&rec, 0, sizeof(rec));
        rec.id = e->e_req ? e->e_req->id : NULL;
        rec.status = status;
        rec.attempts = e->e_attempts;
        rec.smtp_code = code;
        rec.smtp_reply = reply;
        rec.message_id = e->e_msg ? e->e_msg->message_id : NULL;
        rec.error = error;
        if (status == RESULT_SENT)
                failed = entry_failed_rcpts(&e->e_job);
        rec.failed_recipients = failed;
        rec.source.topic = w->w_conf->topic_requests;
        rec.source.partition = e->e_part->p_partition;
        rec.source.offset = e->e_offset;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.received_ms = e->e_received_ms;
        rec.completed_ms = results_wall_ms();
        rec.metadata = e->e_req ? e->e_req->metadata : NULL;

        switch (status) {
        case RESULT_SENT:
                w->w_stats.sent++;
                break;
        case RESULT_FAILED:
                w->w_stats.failed++;
                LOG(LOG_INFO, "request failed id=%s code=%d reason=\"%s\"",
                    rec.id, code, error ? error : (reply ? reply : ""));
                break;
        case RESULT_REJECTED:
                w->w_stats.rejected++;
                break;
        case RESULT_EXPIRED:
                w->w_stats.expired++;
                break;
        }
        e->e_state = ENTRY_PUBLISHING;
        e->e_acks_pending++;
        results_publish(w->w_results, &rec, e);
        json_decref(failed);
}

/* Milliseconds to wait before attempt number @attempts + 1. */
static int64_t worker_backoff_ms(const struct config *conf, int attempts) {
        double ms = conf->retry_backoff_initial_ms;
        double jitter;

        for (int i = 1; i < attempts && ms < conf->retry_backoff_max_ms; i++)
                ms *= 2;
        if (ms > conf->retry_backoff_max_ms)
                ms = conf->retry_backoff_max_ms;
        /* Spread retries by +/- retry.jitter.percent. */
        jitter = ms * conf->retry_jitter_percent / 100.0;
        ms += jitter * (2.0 * ((double)rand() / RAND_MAX) - 1.0);
        return ms < 1 ? 1 : (int64_t)ms;
}

static void entry_on_retry_timer(loop_t *loop, void *opaque) {
        struct entry *e = opaque;

        (void)loop;
        entry_start(e);
}

static void worker_on_smtp_done(struct smtp_job *job, void *opaque) {
        struct entry *e = job->opaque;
        worker_t *w = opaque;
        char why[600];

        e->e_attempts++;
        switch (job->outcome) {
        case SMTP_OK:
                entry_finish(e, RESULT_SENT, job->code, job->reply, NULL);
                return;
        case SMTP_PERMANENT:
                entry_finish(e, RESULT_FAILED, job->code, job->reply,
                             "permanent SMTP rejection");
                return;
        case SMTP_TRANSIENT:
                break;
        }
        if (e->e_attempts >= w->w_conf->retry_attempts_max) {
                snprintf(why, sizeof(why), "retries exhausted after %d attempts",
                         e->e_attempts);
                entry_finish(e, RESULT_FAILED, job->code, job->reply, why);
                return;
        }
        w->w_stats.retries++;
        LOG(LOG_DEBUG, "retrying id=%s attempt=%d code=%d reply=\"%s\"",
            e->e_req->id, e->e_attempts, job->code, job->reply);
        e->e_state = ENTRY_WAITING;
        loop_timer_start(w->w_loop, &e->e_timer,
                         worker_backoff_ms(w->w_conf, e->e_attempts));
}

/* Sends @e (first attempt or retry) unless its deadline has passed. */
static void entry_start(struct entry *e) {
        worker_t *w = e->e_worker;

        if (e->e_req->deadline_ms && results_wall_ms() >= e->e_req->deadline_ms) {
                entry_finish(e, RESULT_EXPIRED, 0, NULL,
                             "deadline passed before sending");
                return;
        }
        smtp_job_reset(&e->e_job);
        e->e_state = ENTRY_SENDING;
        smtp_client_submit(w->w_smtp, &e->e_job);
}

/* Takes @e out of the pipeline without a result (its request is consumed
 * again by whoever owns the partition next). @returns 0, or -1 when it is in
 * an SMTP transaction and must finish. */
static int entry_abandon(struct entry *e) {
        worker_t *w = e->e_worker;

        switch (e->e_state) {
        case ENTRY_WAITING:
                entry_destroy(e, 0);
                return 0;
        case ENTRY_SENDING:
                if (smtp_client_cancel(w->w_smtp, &e->e_job) == 0) {
                        entry_destroy(e, 0);
                        return 0;
                }
                return -1;
        case ENTRY_PUBLISHING:
                break;
        }
        return -1;
}

/* ---- consumer handlers ---- */

static void worker_reject(worker_t *w, struct entry *e,
                          const rd_kafka_message_t *m, const char *id,
                          const char *reason) {
        struct result_source src;
        struct result_rec rec;

        src.topic = w->w_conf->topic_requests;
        src.partition = m->partition;
        src.offset = m->offset;
        LOG(LOG_INFO, "request rejected partition=%d offset=%lld id=%s reason=\"%s\"",
            (int)m->partition, (long long)m->offset, id[0] ? id : "-", reason);
        e->e_state = ENTRY_PUBLISHING;
        e->e_acks_pending = 2;
        results_deadletter(w->w_results, m->key, m->key_len,
                           m->payload ? m->payload : "", m->len, reason, &src, e);
        memset(&rec, 0, sizeof(rec));
        rec.id = id[0] ? id : NULL;
        rec.status = RESULT_REJECTED;
        rec.error = reason;
        rec.source = src;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.received_ms = e->e_received_ms;
        rec.completed_ms = results_wall_ms();
        w->w_stats.rejected++;
        results_publish(w->w_results, &rec, e);
}

static void worker_on_message(void *opaque, const rd_kafka_message_t *m) {
        worker_t *w = opaque;
        struct part *p = part_get(w, m->partition);
        rd_kafka_timestamp_type_t tstype;
        struct message_opts mo;
        struct entry *e;
        char id[256];
        char errstr[512];

        if (!p)
                p = part_add(w, m->partition);
        if (offsets_track(p->p_offsets, m->offset) == -1) {
                /* Seen already in this assignment: still in flight or done. */
                LOG(LOG_DEBUG, "offset seen already partition=%d offset=%lld",
                    (int)m->partition, (long long)m->offset);
                return;
        }
        w->w_stats.consumed++;
        e = entry_new(w, p, m->offset);
        e->e_request_ts_ms = rd_kafka_message_timestamp(m, &tstype);
        if (e->e_request_ts_ms < 0)
                e->e_request_ts_ms = 0;

        id[0] = '\0';
        if (!m->payload || m->len == 0) {
                worker_reject(w, e, m, id, "empty value");
                goto out;
        }
        e->e_req = request_parse(m->payload, m->len, &w->w_limits, id,
                                 sizeof(id), errstr, sizeof(errstr));
        if (!e->e_req) {
                worker_reject(w, e, m, id, errstr);
                goto out;
        }
        mo.message_id_domain = w->w_conf->message_id_domain;
        mo.date_ms = e->e_received_ms;
        e->e_msg = message_build(e->e_req, &mo, errstr, sizeof(errstr));
        if (!e->e_msg) {
                worker_reject(w, e, m, id, errstr);
                goto out;
        }
        e->e_job.mail_from = e->e_msg->mail_from;
        e->e_job.rcpts = (const char *const *)e->e_msg->rcpts;
        e->e_job.rcpt_cnt = e->e_msg->rcpt_cnt;
        e->e_job.data = e->e_msg->data;
        e->e_job.data_len = e->e_msg->data_len;
        e->e_job.opaque = e;
        entry_start(e);
out:
        worker_check_pressure(w);
}

static void worker_on_assign(void *opaque,
                             const rd_kafka_topic_partition_list_t *parts) {
        worker_t *w = opaque;

        for (int i = 0; i < parts->cnt; i++)
                if (strcmp(parts->elems[i].topic, w->w_conf->topic_requests) == 0)
                        part_add(w, parts->elems[i].partition);
}

/* Commits the watermark of every partition in @parts (all assigned ones when
 * NULL) that moved since its last commit. */
static void worker_commit(worker_t *w, const rd_kafka_topic_partition_list_t *parts,
                          int async) {
        rd_kafka_topic_partition_list_t *offs;
        uint64_t errors = consumer_commit_errors(w->w_consumer);

        if (errors != w->w_commit_errors_seen) {
                /* A commit failed: offer every partition's watermark again. */
                w->w_commit_errors_seen = errors;
                for (size_t i = 0; i < w->w_parts_size; i++)
                        if (w->w_parts[i])
                                w->w_parts[i]->p_committed = -1;
        }
        offs = rd_kafka_topic_partition_list_new(16);
        for (size_t i = 0; i < w->w_parts_size; i++) {
                struct part *p = w->w_parts[i];
                int64_t off;
                int wanted = parts == NULL;

                if (!p)
                        continue;
                for (int j = 0; parts && j < parts->cnt && !wanted; j++)
                        wanted = parts->elems[j].partition == p->p_partition &&
                                 strcmp(parts->elems[j].topic,
                                        w->w_conf->topic_requests) == 0;
                off = offsets_committable(p->p_offsets);
                if (!wanted || off < 0 || off <= p->p_committed)
                        continue;
                rd_kafka_topic_partition_list_add(offs, w->w_conf->topic_requests,
                                                  p->p_partition)
                    ->offset = off;
                p->p_committed = off;
        }
        if (offs->cnt > 0) {
                LOG(LOG_DEBUG, "committing partitions=%d async=%d", offs->cnt,
                    async);
                if (consumer_commit(w->w_consumer, offs, async) == -1)
                        for (int j = 0; j < offs->cnt; j++) {
                                struct part *p = part_get(w, offs->elems[j].partition);

                                if (p)
                                        p->p_committed = -1;
                        }
        }
        rd_kafka_topic_partition_list_destroy(offs);
}

static void worker_on_commit_timer(loop_t *loop, void *opaque) {
        worker_t *w = opaque;

        worker_commit(w, NULL, 1);
        loop_timer_start(loop, &w->w_commit_timer, w->w_conf->commit_interval_ms);
}

/* @returns the live entries of the partitions in @parts (all when NULL). */
static size_t worker_entries_of(worker_t *w,
                                const rd_kafka_topic_partition_list_t *parts) {
        size_t n = 0;

        if (!parts)
                return w->w_inflight;
        for (int i = 0; i < parts->cnt; i++) {
                struct part *p = part_get(w, parts->elems[i].partition);

                if (p && strcmp(parts->elems[i].topic, w->w_conf->topic_requests) == 0)
                        n += p->p_entries;
        }
        return n;
}

/* Abandons what has not started and runs the loop until the entries of
 * @parts (all when NULL) are done or @timeout_ms passed. @returns what is
 * left. */
static size_t worker_drain(worker_t *w, const rd_kafka_topic_partition_list_t *parts,
                           int timeout_ms) {
        int64_t deadline = loop_clock_ms() + timeout_ms;
        struct entry *e, *next;
        size_t left;

        for (e = w->w_entries; e; e = next) {
                int wanted = parts == NULL;

                next = e->e_next;
                for (int j = 0; parts && j < parts->cnt && !wanted; j++)
                        wanted = part_get(w, parts->elems[j].partition) == e->e_part;
                if (wanted)
                        entry_abandon(e);
        }
        while ((left = worker_entries_of(w, parts)) > 0 &&
               loop_clock_ms() < deadline)
                loop_run_once(w->w_loop, WORKER_DRAIN_STEP_MS);
        return left;
}

static void worker_on_revoke(void *opaque,
                             const rd_kafka_topic_partition_list_t *parts,
                             int lost) {
        worker_t *w = opaque;
        size_t left = 0;

        if (!lost) {
                left = worker_drain(w, parts,
                                    w->w_stopping ? 0
                                                  : w->w_conf->rebalance_drain_timeout_ms);
                worker_commit(w, parts, 0);
        } else {
                worker_drain(w, parts, 0);
        }
        if (left > 0)
                LOG(LOG_WARN,
                    "revoked partitions still had sends in flight count=%zu "
                    "(they may be sent again by the next owner)",
                    left);
        for (int i = 0; i < parts->cnt; i++) {
                struct part *p = part_get(w, parts->elems[i].partition);

                if (p && strcmp(parts->elems[i].topic, w->w_conf->topic_requests) == 0)
                        part_release(w, p);
        }
}

/* ---- life cycle ---- */

worker_t *worker_new(const struct config *conf, char *errstr,
                     size_t errstr_size) {
        static const struct consumer_handlers handlers = {
            .on_message = worker_on_message,
            .on_assign = worker_on_assign,
            .on_revoke = worker_on_revoke,
        };
        struct smtp_client_conf scc;
        worker_t *w = calloc(1, sizeof(*w));

        if (!w) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        w->w_conf = conf;
        w->w_limits.max_bytes = (size_t)conf->request_max_bytes;
        w->w_limits.max_recipients = (size_t)conf->request_max_recipients;
        w->w_resume_at = (size_t)conf->inflight_max *
                         (size_t)conf->inflight_resume_percent / 100;
        loop_timer_init(&w->w_commit_timer, worker_on_commit_timer, w);
        w->w_loop = loop_new();
        if (!w->w_loop) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail;
        }
        smtp_client_conf_from_config(&scc, conf);
        w->w_smtp = smtp_client_new(w->w_loop, &scc, worker_on_smtp_done, w,
                                    errstr, errstr_size);
        if (!w->w_smtp)
                goto fail;
        w->w_results = results_new(w->w_loop, conf, worker_on_ack, errstr,
                                   errstr_size);
        if (!w->w_results)
                goto fail;
        w->w_consumer = consumer_new(w->w_loop, conf, &handlers, w, errstr,
                                     errstr_size);
        if (!w->w_consumer)
                goto fail;
        loop_timer_start(w->w_loop, &w->w_commit_timer, conf->commit_interval_ms);
        return w;

fail:
        worker_destroy(w);
        return NULL;
}

void worker_stop(worker_t *w) {
        w->w_stop = 1;
        loop_wakeup(w->w_loop);
}

int worker_run(worker_t *w) {
        size_t left;

        LOG(LOG_INFO, "worker started id=%s topic=%s relay=%s inflight.max=%d",
            w->w_conf->worker_id, w->w_conf->topic_requests,
            w->w_conf->smtp_url, w->w_conf->inflight_max);
        while (!w->w_stop)
                loop_run_once(w->w_loop, WORKER_IDLE_WAIT_MS);

        LOG(LOG_INFO, "stopping: draining in-flight sends inflight=%zu",
            w->w_inflight);
        consumer_set_paused(w->w_consumer, 1);
        w->w_stopping = 1;
        left = worker_drain(w, NULL, w->w_conf->shutdown_timeout_ms);
        worker_commit(w, NULL, 0);
        consumer_close(w->w_consumer);
        w->w_consumer = NULL;
        LOG(LOG_INFO,
            "stopped consumed=%llu sent=%llu failed=%llu rejected=%llu "
            "expired=%llu left=%zu",
            (unsigned long long)w->w_stats.consumed,
            (unsigned long long)w->w_stats.sent,
            (unsigned long long)w->w_stats.failed,
            (unsigned long long)w->w_stats.rejected,
            (unsigned long long)w->w_stats.expired, left);
        return left > 0 ? 1 : 0;
}

void worker_get_stats(const worker_t *w, struct worker_stats *st) {
        *st = w->w_stats;
        st->inflight = w->w_inflight;
}

void worker_destroy(worker_t *w) {
        struct entry *e;

        if (!w)
                return;
        w->w_stopping = 1;
        if (w->w_consumer)
                consumer_close(w->w_consumer);
        /* Entries left are not final: their requests were not committed. */
        smtp_client_destroy(w->w_smtp);
        w->w_smtp = NULL;
        /* Acknowledgements served while flushing still find their entries. */
        results_destroy(w->w_results, 1000);
        w->w_results = NULL;
        for (size_t i = 0; i < w->w_parts_size; i++)
                if (w->w_parts[i])
                        part_release(w, w->w_parts[i]);
        while ((e = w->w_entries) != NULL)
                entry_destroy(e, 0);
        free(w->w_parts);
        if (w->w_loop)
                loop_timer_stop(w->w_loop, &w->w_commit_timer);
        loop_destroy(w->w_loop);
        free(w);
}
