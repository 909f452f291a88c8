#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "consumer.h"
#include "cstr.h"
#include "dedupe.h"
#include "jsonparse.h"
#include "kstatus.h"
#include "ledger.h"
#include "log.h"
#include "loop.h"
#include "message.h"
#include "metrics.h"
#include "recall.h"
#include "request.h"
#include "results.h"
#include "retry.h"
#include "relays.h"
#include "signer.h"
#include "smtp.h"

/* How long one loop iteration may wait when nothing happens. */
#define WORKER_IDLE_WAIT_MS 1000
/* How often a drain (revoke, shutdown) re-checks what is left. */
#define WORKER_DRAIN_STEP_MS 50
/* The longest a stopping worker waits for the group's round after a revoke
 * before it closes its consumers (worker_settle_before_close()). */
#define WORKER_SETTLE_MAX_MS 3000
/* Shortest gap between commits asked for early by back-pressure. */
#define WORKER_COMMIT_MIN_GAP_MS 20

/* Kafka error codes of the KIP-848 protocol (FENCED_MEMBER_EPOCH,
 * STALE_MEMBER_EPOCH). */
#define WORKER_ERR_FENCED_MEMBER_EPOCH 110
#define WORKER_ERR_STALE_MEMBER_EPOCH 113

/* Counters since start (served on /metrics). */
struct worker_stats {
        uint64_t consumed;
        uint64_t sent;
        uint64_t failed;
        uint64_t rejected;
        uint64_t expired;
        uint64_t retries; /* transient failures retried */
        uint64_t deferrals; /* sends a limit put off (to the retry topic) */
        /* first consumed -> sent, failed or expired */
        struct metrics_hist request_latency;
        /* a transaction handed to the relays -> its outcome */
        struct metrics_hist send_latency;
        uint64_t handoffs; /* requests moved to the retry topic */
        uint64_t duplicates; /* repeated ids answered from an earlier result */
        uint64_t recalled; /* final outcomes read from the results topic */
        uint64_t recall_incomplete; /* partitions released before read fully */
        uint64_t
                commits_unanswered; /* async commits offered again unanswered */
        uint64_t commits_answered; /* async commits Kafka confirmed */
        uint64_t stalls; /* stall.warn.ms periods with work held, no progress */
};

/* The topics a worker consumes, each with a consumer of its own. */
enum { TOPIC_REQUESTS = 0, TOPIC_RETRY = 1, WORKER_TOPICS_MAX };

/* Where a request is in its life. */
enum entry_state {
        ENTRY_SENDING = 0, /* submitted to the SMTP pool */
        ENTRY_WAITING, /* waiting for its retry timer (or its due time) */
        ENTRY_FOLLOWING, /* same id as a request in flight: waits for it */
        ENTRY_PUBLISHING, /* final or handed over; waiting for Kafka's ack */
};

/* One request from consume to acknowledged result (or hand-over to the retry
 * topic). */
/* Where one envelope recipient of a request stands. */
enum rcpt_status {
        RCPT_PENDING = 0, /* to be sent (again: its last refusal was 4xx) */
        RCPT_SENT, /* in a transaction the relay accepted */
        RCPT_FAILED, /* refused for good (5xx), or out of tries */
};

struct rcpt_state {
        enum rcpt_status st;
        int code; /* the reply that decided it (last one while pending) */
        char *reply; /* its text, NULL when none */
        int in_job; /* in the transaction being answered (entry_rcpts_apply) */
};

struct entry {
        struct entry *e_next; /* every live entry */
        struct entry *e_prev;
        worker_t *e_worker;
        struct worker_topic *e_topic; /* where it was consumed */
        ledger_part_t *e_part; /* its partition, in e_topic's ledger */
        int64_t e_offset;
        enum entry_state e_state;
        int e_acks_pending;
        int e_attempts;
        int e_leader; /* holds its id in the dedupe table */
        int e_no_handoff; /* its retry record was too large: retry here */
        int e_sent_unacked; /* sent; its result not yet acknowledged */
        int e_handed_over; /* published to the retry topic */
        struct entry *e_followers; /* requests with the same id, waiting */
        struct entry *e_follow_next;
        struct entry *e_following; /* the leader this one waits for */
        char *e_raw; /* the request's JSON text, for the retry topic */
        size_t e_raw_len;
        /* Room for a copy of the request after the entry, in its
         * allocation (entry_new()); NULL when none. */
        char *e_raw_room;
        struct mail_request *e_req;
        struct message *e_msg;
        struct smtp_job e_job;
        /* Per recipient, in e_msg->rcpts order: NULL while every recipient
         * goes in each transaction and none has an outcome of its own (one
         * transaction for all, the common case). */
        struct rcpt_state *e_rcpts;
        const char **e_job_rcpts; /* the current transaction's recipients */
        size_t *e_job_idx; /* their indexes in e_msg->rcpts */
        /* The retry record it was read from, its request moved to e_raw:
         * its final recipients are applied once the message is built. */
        struct retry_record e_retry;
        loop_timer_t e_timer;
        int32_t e_origin_partition; /* where the request was first consumed */
        int64_t e_origin_offset;
        int64_t e_request_ts_ms;
        int64_t e_received_ms; /* first consumed (wall clock) */
        int64_t e_send_ms; /* the transaction under way was handed over
                              (loop clock) */
        int64_t e_due_ms; /* when to send: retry-topic entries, retries */
};

/* Emptying partitions before they are released (worker_drain_start()). */
struct drain {
        int64_t d_deadline_ms;
        int64_t d_give_up_ms; /* queued requests go to the retry topic */
        int d_hand_over;
        int d_given_up;
        size_t d_retries; /* waiting retries handed over */
        size_t d_queued; /* queued requests handed over */
};

/* A revoke being emptied through the loop before its partitions are given
 * back (consumer_revoke_done()). */
struct worker_revoke {
        struct drain rv_drain; /* of consumer_revoking_parts() */
        loop_timer_t rv_timer; /* worker_on_revoke_timer() */
};

/*
 * A count that moves while work is done (commits stored, delivery reports
 * served) watched while work waits on it: how long it has stood still,
 * counted from a moment Kafka answered (not through an outage, after which
 * Kafka clients take a few seconds to resume). stall_watch_check().
 */
struct stall_watch {
        uint64_t sw_seen; /* the count at the last look */
        int64_t sw_since_ms; /* stood still since (0: moving, or no work) */
};

/* One consumed topic: its consumer, its partitions' ledger and its commits.
 * Also what the consumer's callbacks are given. */
struct worker_topic {
        worker_t *wt_worker;
        int wt_index; /* TOPIC_REQUESTS, TOPIC_RETRY */
        const char *wt_name;
        /* Each topic has a consumer in its own group, so that the group
         * balances each topic's partitions on its own. */
        consumer_t *wt_consumer;
        ledger_t *wt_ledger;
        struct worker_revoke wt_revoke;
        uint64_t wt_commit_errors_seen;
        /* After a failed commit (likely a rebalance in progress), async
         * commits wait until then: committing during a cooperative rebalance
         * makes librdkafka 2.0.2 lose the assignment (librdkafka issue
         * 4059). */
        int64_t wt_commit_hold_until;
        /* When the async commit still unanswered was sent (0: none): one at
         * a time, so that a rebalance meets one commit, not a queue. */
        int64_t wt_commit_sent_ms;
        /* commit.stall.exit.ms (worker_watch_commits()): partitions' commits
         * stored so far, watched while offers are outstanding */
        uint64_t wt_commits_stored;
        struct stall_watch wt_commit_watch;
};

struct worker {
        const struct config *w_conf;
        loop_t *w_loop;
        struct worker_topic w_topics[WORKER_TOPICS_MAX];
        int w_topic_cnt;
        char *w_retry_group;
        results_t *w_results;
        relays_t *w_relays;
        dedupe_t *w_dedupe; /* NULL when dedupe.capacity is 0 */
        signer_t *w_signer; /* the DKIM keys (none: signs nothing) */
        /* NULL when dedupe is off or dedupe.recall.timeout.ms is 0. */
        recall_t *w_recall;
        uint64_t w_assign_seq;
        size_t w_sent_unacked; /* entries with e_sent_unacked */
        metrics_t *w_metrics; /* NULL when metrics.listen is "" */
        kstatus_t *w_kstatus; /* access to Kafka, for /readyz */
        struct request_limits w_limits;
        struct retry_conf w_retry;

        struct entry *w_entries; /* every live entry */

        loop_timer_t w_commit_timer;
        int64_t w_last_commit_ms;
        /* Progress (worker_watch_progress()): the sum of the counters that
         * move when work moves, and when it last changed. */
        uint64_t w_progress_mark;
        int64_t w_progress_ms;
        size_t w_with_deadline; /* live entries whose request has a deadline */

        volatile sig_atomic_t w_stop;
        int w_exit_status; /* worker_run()'s, when not 0 */
        int64_t w_kafka_answered_ms; /* when Kafka was last seen ready */
        /* results.stall.ms (worker_watch_results()): the producer's
         * delivery reports, watched while records wait for one */
        struct stall_watch w_results_watch;
        /* the buffers messages are built in (worker_on_message()) */
        struct message_scratch w_msg_scratch;
        int w_stopping;
        int64_t w_stop_deadline_ms; /* loop_clock_ms() by which to exit */

        struct worker_stats w_stats;
};

static void entry_start(struct entry *e);
static void worker_update_share(worker_t *w);
static void entry_on_timer(loop_t *loop, void *opaque);
static void entry_finish(struct entry *e, enum result_status status, int code,
                         const char *reply, const char *error);

/* ---- partitions ---- */

/* @returns the consumed topic named @topic, or NULL. */
static struct worker_topic *worker_topic_of(worker_t *w, const char *topic) {
        for (int t = 0; t < w->w_topic_cnt; t++)
                if (strcmp(w->w_topics[t].wt_name, topic) == 0)
                        return &w->w_topics[t];
        return NULL;
}

/* @returns the partition of @parts' element @i when it is one of ours, or
 * NULL. */
static ledger_part_t *
part_of_elem(worker_t *w, const rd_kafka_topic_partition_list_t *parts, int i) {
        struct worker_topic *wt = worker_topic_of(w, parts->elems[i].topic);

        return wt ? ledger_part_get(wt->wt_ledger, parts->elems[i].partition)
                  : NULL;
}

/* The ledger's view of the results producer (ledger_results_end_cb). */
static int64_t worker_results_end(void *opaque, int32_t partition) {
        const worker_t *w = opaque;

        return results_end(w->w_results, partition);
}

/* ---- back-pressure ---- */

/* Stops taking requests of a topic at its in-flight limit and takes them again
 * at or below its low-water mark. */
static void worker_check_pressure(worker_t *w) {
        if (w->w_stopping)
                return;
        for (int t = 0; t < w->w_topic_cnt; t++) {
                struct worker_topic *wt = &w->w_topics[t];

                if (!wt->wt_consumer)
                        continue;
                switch (ledger_pressure(wt->wt_ledger,
                                        consumer_paused(wt->wt_consumer))) {
                case LEDGER_PAUSE:
                        consumer_set_paused(wt->wt_consumer, 1);
                        break;
                case LEDGER_RESUME:
                        consumer_set_paused(wt->wt_consumer, 0);
                        break;
                case LEDGER_KEEP:
                        break;
                }
        }
}

/* Commits soon (at most every WORKER_COMMIT_MIN_GAP_MS) instead of at the
 * next commit.interval.ms: what is held waits only for commits. While intake
 * of @wt is stopped, at once: each millisecond is a slot idle (one
 * async commit is out at a time, so this is one commit per round trip). */
static void worker_commit_soon(worker_t *w, const struct worker_topic *wt) {
        int64_t now = loop_now_ms(w->w_loop);
        int64_t wait = w->w_last_commit_ms + WORKER_COMMIT_MIN_GAP_MS - now;

        if (wait < 0 || (wt->wt_consumer && consumer_paused(wt->wt_consumer)))
                wait = 0;
        loop_timer_start_within(w->w_loop, &w->w_commit_timer, wait);
}

/* ---- entries ---- */

/* @returns a new entry for @offset, with @raw_room bytes after it for a copy
 * of its request (one allocation a request instead of two). */
static struct entry *entry_new(worker_t *w, struct worker_topic *wt,
                               ledger_part_t *p, int64_t offset,
                               size_t raw_room) {
        struct entry *e = malloc(sizeof(*e) + raw_room);

        if (!e)
                abort();
        memset(e, 0, sizeof(*e));
        e->e_raw_room = raw_room > 0 ? (char *)(e + 1) : NULL;
        e->e_worker = w;
        e->e_topic = wt;
        e->e_part = p;
        e->e_offset = offset;
        e->e_origin_partition = ledger_part_partition(p);
        e->e_origin_offset = offset;
        e->e_received_ms = loop_wall_ms(w->w_loop);
        loop_timer_init(&e->e_timer, entry_on_timer, e);
        e->e_next = w->w_entries;
        if (w->w_entries)
                w->w_entries->e_prev = e;
        w->w_entries = e;
        ledger_part_enter(wt->wt_ledger, p);
        return e;
}

/* Frees @e. @done: its result (or hand-over) was acknowledged, so its offset
 * is done. */
static void entry_destroy(struct entry *e, int done) {
        worker_t *w = e->e_worker;
        struct worker_topic *wt = e->e_topic;
        ledger_part_t *p = e->e_part;
        int draining = ledger_part_draining(p) && !ledger_part_released(p);

        loop_timer_stop(w->w_loop, &e->e_timer);
        if (done && !ledger_part_released(p)) {
                if (ledger_done(wt->wt_ledger, p, e->e_offset) == -1)
                        LOG(LL_ERROR,
                            "offset not tracked topic=%s partition=%d offset=%lld",
                            wt->wt_name, (int)ledger_part_partition(p),
                            (long long)e->e_offset);
                /* Also when this was the last entry: an idle worker
                 * commits what it did now, not at the next interval. And
                 * after a hand-over: until the watermark passing it is
                 * committed, a crash would have the request sent both by the
                 * partition's next owner and from the retry topic (the
                 * results topic the next owner reads does not know it). */
                if (ledger_commit_urgent(wt->wt_ledger) ||
                    ledger_inflight(wt->wt_ledger) == 1 || e->e_handed_over)
                        worker_commit_soon(w, wt);
        }
        if (e->e_prev)
                e->e_prev->e_next = e->e_next;
        else
                w->w_entries = e->e_next;
        if (e->e_next)
                e->e_next->e_prev = e->e_prev;
        /* @p may be freed here (released, and this was its last entry). */
        ledger_part_leave(wt->wt_ledger, p);
        e->e_part = NULL;
        if (draining && wt->wt_consumer &&
            consumer_revoking_parts(wt->wt_consumer))
                /* Its revoke may be done now. */
                loop_timer_start(w->w_loop, &wt->wt_revoke.rv_timer, 0);
        if (e->e_req && e->e_req->deadline_ms)
                w->w_with_deadline--;
        if (e->e_sent_unacked)
                w->w_sent_unacked--;
        smtp_job_reset(&e->e_job);
        if (e->e_rcpts)
                for (size_t i = 0; i < e->e_msg->rcpt_cnt; i++)
                        free(e->e_rcpts[i].reply);
        free(e->e_rcpts);
        free(e->e_job_rcpts);
        free(e->e_job_idx);
        retry_record_clear(&e->e_retry);
        message_destroy(e->e_msg);
        request_destroy(e->e_req);
        if (e->e_raw != e->e_raw_room)
                free(e->e_raw);
        free(e);
        worker_check_pressure(w);
}

/* Results ack callback: one of the entry's records is in Kafka. */
static void worker_on_ack(void *opaque) {
        struct entry *e = opaque;

        if (--e->e_acks_pending == 0)
                entry_destroy(e, 1);
}

/* Results nack callback: @e's retry record could not be stored (too large
 * for the retry topic); it is retried in memory instead. */
static void worker_on_nack(void *opaque) {
        struct entry *e = opaque;
        worker_t *w = e->e_worker;

        e->e_acks_pending--;
        e->e_no_handoff = 1;
        e->e_handed_over = 0;
        e->e_state = ENTRY_WAITING;
        loop_timer_start(w->w_loop, &e->e_timer,
                         w->w_conf->retry_backoff_max_ms);
}

/* ---- duplicates ---- */

/* Takes the first follower off @e's list. @returns it, or NULL. */
static struct entry *entry_pop_follower(struct entry *e) {
        struct entry *f = e->e_followers;

        if (f) {
                e->e_followers = f->e_follow_next;
                f->e_following = NULL;
                f->e_follow_next = NULL;
        }
        return f;
}

/* Takes @f off its leader's list of followers. */
static void entry_unfollow(struct entry *f) {
        struct entry **pp = &f->e_following->e_followers;

        while (*pp && *pp != f)
                pp = &(*pp)->e_follow_next;
        if (*pp)
                *pp = f->e_follow_next;
        f->e_following = NULL;
        f->e_follow_next = NULL;
}

/* Publishes the result of a repeated request from what its earlier request
 * ended with. */
static void entry_finish_duplicate(struct entry *e,
                                   const struct dedupe_done *d) {
        worker_t *w = e->e_worker;
        struct result_source src, dup;
        struct result_rec rec;

        memset(&rec, 0, sizeof(rec));
        rec.id = e->e_req->id;
        rec.status = (enum result_status)d->status;
        rec.delivered = d->delivered == 1   ? "some"
                        : d->delivered == 2 ? "none"
                                            : "all";
        rec.attempts = 0;
        rec.smtp_code = d->smtp_code;
        rec.smtp_reply = d->smtp_reply[0] ? d->smtp_reply : NULL;
        rec.message_id = d->message_id[0] ? d->message_id : NULL;
        rec.error = d->error[0] ? d->error : NULL;
        src.topic = w->w_conf->topic_requests;
        src.partition = e->e_origin_partition;
        src.offset = e->e_origin_offset;
        rec.source = src;
        dup.topic = d->source_topic;
        dup.partition = d->source_partition;
        dup.offset = d->source_offset;
        rec.duplicate_of = &dup;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.received_ms = e->e_received_ms;
        rec.completed_ms = loop_wall_ms(w->w_loop);
        rec.metadata = e->e_req->metadata;
        rec.results_partition = ledger_part_results_partition(e->e_part);
        w->w_stats.duplicates++;
        LOG(LL_INFO, "repeated request not sent again id=%s status=%s", rec.id,
            result_status_name(rec.status));
        e->e_state = ENTRY_PUBLISHING;
        e->e_acks_pending++;
        results_publish(w->w_results, &rec, e);
}

/* Claims @e's id. @returns 1 when @e may be sent, 0 when it was handled as a
 * repeat (following a request in flight, or finished from an earlier
 * result). */
static int entry_claim(struct entry *e) {
        worker_t *w = e->e_worker;
        const struct dedupe_done *done = NULL;
        void *leader = NULL;
        struct entry *l;

        if (!w->w_dedupe)
                return 1;
        switch (dedupe_claim(w->w_dedupe, e->e_req->id, e,
                             loop_wall_ms(w->w_loop), &leader, &done)) {
        case DEDUPE_NEW:
                e->e_leader = 1;
                return 1;
        case DEDUPE_INFLIGHT:
                l = leader;
                e->e_state = ENTRY_FOLLOWING;
                e->e_following = l;
                e->e_follow_next = l->e_followers;
                l->e_followers = e;
                return 0;
        case DEDUPE_DONE:
                entry_finish_duplicate(e, done);
                return 0;
        }
        return 1;
}

/* @e gives up its id without a final result: its followers claim it again
 * (the first becomes the leader and is sent). */
static void entry_release(struct entry *e) {
        worker_t *w = e->e_worker;
        struct entry *f;

        if (!e->e_leader)
                return;
        e->e_leader = 0;
        dedupe_release(w->w_dedupe, e->e_req->id);
        while ((f = entry_pop_follower(e)) != NULL) {
                if (entry_claim(f))
                        entry_start(f);
        }
}

/* ---- recipients ---- */

static void rcpt_set(struct rcpt_state *r, enum rcpt_status st, int code,
                     const char *reply) {
        char *copy = NULL;

        if (reply && reply[0]) {
                copy = strdup(reply);
                if (!copy)
                        abort();
        }
        free(r->reply);
        r->st = st;
        r->code = code;
        r->reply = copy;
}

/* Gives @e per-recipient state, every recipient pending. A transaction
 * under way had every recipient, in order. */
static void entry_rcpts_init(struct entry *e) {
        size_t n = e->e_msg->rcpt_cnt;

        if (e->e_rcpts)
                return;
        e->e_rcpts = calloc(n, sizeof(*e->e_rcpts));
        e->e_job_rcpts = calloc(n, sizeof(*e->e_job_rcpts));
        e->e_job_idx = calloc(n, sizeof(*e->e_job_idx));
        if (!e->e_rcpts || !e->e_job_rcpts || !e->e_job_idx)
                abort();
        for (size_t i = 0; i < n; i++)
                e->e_job_idx[i] = i;
}

/* @returns how many recipients of @e have no final outcome yet. */
static size_t entry_rcpts_pending(const struct entry *e) {
        size_t n = 0;

        if (!e->e_rcpts)
                return e->e_msg->rcpt_cnt;
        for (size_t i = 0; i < e->e_msg->rcpt_cnt; i++)
                n += e->e_rcpts[i].st == RCPT_PENDING;
        return n;
}

/* @returns whether any recipient of @e has a final outcome. */
static int entry_rcpts_any_final(const struct entry *e) {
        return e->e_rcpts && entry_rcpts_pending(e) < e->e_msg->rcpt_cnt;
}

/* Puts the next transaction's recipients in e_job: those pending, at most
 * smtp.transaction.max.recipients. */
static void entry_rcpts_to_job(struct entry *e) {
        size_t max =
                (size_t)e->e_worker->w_conf->smtp_transaction_max_recipients;
        size_t m = 0;

        if (!e->e_rcpts && e->e_msg->rcpt_cnt <= max) {
                e->e_job.rcpts = (const char *const *)e->e_msg->rcpts;
                e->e_job.rcpt_cnt = e->e_msg->rcpt_cnt;
                return;
        }
        entry_rcpts_init(e);
        for (size_t i = 0; i < e->e_msg->rcpt_cnt && m < max; i++) {
                if (e->e_rcpts[i].st != RCPT_PENDING)
                        continue;
                e->e_job_rcpts[m] = e->e_msg->rcpts[i];
                e->e_job_idx[m] = i;
                m++;
        }
        e->e_job.rcpts = e->e_job_rcpts;
        e->e_job.rcpt_cnt = m;
}

/* Applies @job's outcome to each of its recipients: a 5xx refusal of its
 * RCPT is final and a 4xx one leaves it pending; the others share the
 * transaction's outcome (sent; refused for good; pending after a temporary
 * failure). A refusal of the message itself is final for every recipient
 * still pending. @returns whether the rest can go in the next transaction
 * at once: the relay accepted the message, and every recipient it left
 * pending was refused with 452, too many recipients (RFC 5321
 * 4.5.3.1.10), or was not in this transaction; or it refused each
 * recipient of this one for good. */
static int entry_rcpts_apply(struct entry *e, const struct smtp_job *job) {
        int all_452 = 1;

        entry_rcpts_init(e);
        for (size_t k = 0; k < job->rcpt_cnt; k++)
                e->e_rcpts[e->e_job_idx[k]].in_job = 1;
        for (size_t i = 0; i < job->rcpt_failure_cnt; i++) {
                const struct smtp_rcpt_failure *f = &job->rcpt_failures[i];
                struct rcpt_state *r;

                if (f->index >= job->rcpt_cnt)
                        continue;
                r = &e->e_rcpts[e->e_job_idx[f->index]];
                r->in_job = 0;
                if (f->code / 100 == 5) {
                        rcpt_set(r, RCPT_FAILED, f->code, f->reply);
                } else {
                        rcpt_set(r, RCPT_PENDING, f->code, f->reply);
                        if (f->code != 452)
                                all_452 = 0;
                }
        }
        for (size_t k = 0; k < job->rcpt_cnt; k++) {
                struct rcpt_state *r = &e->e_rcpts[e->e_job_idx[k]];

                if (!r->in_job)
                        continue;
                r->in_job = 0;
                switch (job->outcome) {
                case SMTP_OK:
                        rcpt_set(r, RCPT_SENT, job->code, job->reply);
                        break;
                case SMTP_PERMANENT:
                        rcpt_set(r, RCPT_FAILED, job->code, job->reply);
                        break;
                case SMTP_TRANSIENT:
                case SMTP_DEFERRED:
                        rcpt_set(r, RCPT_PENDING, job->code, job->reply);
                        all_452 = 0;
                        break;
                }
        }
        if (job->outcome == SMTP_PERMANENT &&
            job->rcpt_failure_cnt < job->rcpt_cnt) {
                /* The message itself was refused (MAIL, DATA or the final
                 * "." answered 5xx; over the relay's SIZE; SMTPUTF8): so it
                 * is for the recipients not tried yet. */
                for (size_t i = 0; i < e->e_msg->rcpt_cnt; i++)
                        if (e->e_rcpts[i].st == RCPT_PENDING)
                                rcpt_set(&e->e_rcpts[i], RCPT_FAILED, job->code,
                                         job->reply);
                return 0;
        }
        /* Every RCPT refused for good is about those recipients: the others
         * may go at once too. */
        return (job->outcome == SMTP_OK && all_452) ||
               job->outcome == SMTP_PERMANENT;
}

/* Marks what @e's retry record says is final (recipient index and address
 * must match the request's), after its message is built. */
static void entry_rcpts_from_retry(struct entry *e) {
        const struct retry_record *r = &e->e_retry;

        for (size_t i = 0; i < r->rcpt_cnt; i++) {
                const struct retry_rcpt *rc = &r->rcpts[i];

                if (rc->index >= e->e_msg->rcpt_cnt ||
                    strcmp(e->e_msg->rcpts[rc->index], rc->recipient) != 0)
                        continue;
                entry_rcpts_init(e);
                rcpt_set(&e->e_rcpts[rc->index],
                         rc->sent ? RCPT_SENT : RCPT_FAILED, rc->smtp_code,
                         rc->smtp_reply);
        }
        retry_record_clear(&e->e_retry);
}

/* @returns @e's recipients with a final outcome, for its retry record, with
 * their count in *@cnt (NULL and 0 when none). The strings are @e's: the
 * array lives until @e changes. */
static struct retry_rcpt *entry_rcpts_final(const struct entry *e,
                                            size_t *cnt) {
        struct retry_rcpt *arr = NULL;
        size_t n = 0;

        *cnt = 0;
        if (!e->e_rcpts)
                return NULL;
        for (size_t i = 0; i < e->e_msg->rcpt_cnt; i++) {
                const struct rcpt_state *r = &e->e_rcpts[i];

                if (r->st == RCPT_PENDING)
                        continue;
                if (!arr) {
                        arr = calloc(e->e_msg->rcpt_cnt, sizeof(*arr));
                        if (!arr)
                                abort();
                }
                arr[n].index = i;
                arr[n].recipient = e->e_msg->rcpts[i];
                arr[n].sent = r->st == RCPT_SENT;
                arr[n].smtp_code = r->code;
                arr[n].smtp_reply = r->reply;
                n++;
        }
        *cnt = n;
        return arr;
}

/* Fills @rec's recipient fields from @e: "delivered", and with
 * per-recipient state "recipients" and "failed_recipients" (new
 * references in *@all, *@failed; NULL when none). A recipient still pending
 * takes the request's final status. */
static void entry_rcpts_result(const struct entry *e, struct result_rec *rec,
                               json_t **all, json_t **failed) {
        size_t sent = 0, n = e->e_msg ? e->e_msg->rcpt_cnt : 0;

        *all = NULL;
        *failed = NULL;
        if (!e->e_rcpts) {
                rec->delivered = rec->status == RESULT_SENT ? "all" : "none";
                return;
        }
        *all = json_array();
        for (size_t i = 0; i < n; i++) {
                const struct rcpt_state *r = &e->e_rcpts[i];
                const char *st = r->st == RCPT_SENT ? "sent"
                                 : r->st == RCPT_FAILED
                                         ? "failed"
                                         : result_status_name(rec->status);
                json_t *o = json_pack("{s:s, s:s}", "recipient",
                                      e->e_msg->rcpts[i], "status", st);

                json_object_set_new(o, "smtp_code",
                                    r->code ? json_integer(r->code)
                                            : json_null());
                json_object_set_new(o, "smtp_reply",
                                    r->reply ? jsonparse_string(r->reply)
                                             : json_null());
                if (r->st == RCPT_SENT) {
                        sent++;
                } else if (rec->status == RESULT_SENT) {
                        if (!*failed)
                                *failed = json_array();
                        json_array_append(*failed, o);
                }
                json_array_append_new(*all, o);
        }
        rec->delivered = sent == n ? "all" : sent > 0 ? "some" : "none";
        rec->recipients = *all;
        rec->failed_recipients = *failed;
}

/* ---- final results ---- */

/* Publishes the final result of @e and of the requests following it.
 * @code/@reply: the deciding SMTP reply (0/NULL when none); @error: why it
 * was not sent. */
static void entry_finish(struct entry *e, enum result_status status, int code,
                         const char *reply, const char *error) {
        worker_t *w = e->e_worker;
        struct result_rec rec;
        struct dedupe_done done;
        json_t *all = NULL, *failed = NULL;
        struct entry *f;

        memset(&rec, 0, sizeof(rec));
        rec.id = e->e_req->id;
        rec.status = status;
        rec.attempts = e->e_attempts;
        rec.smtp_code = code;
        rec.smtp_reply = reply;
        rec.message_id = e->e_msg ? e->e_msg->message_id : NULL;
        rec.relay = e->e_attempts > 0 ? relays_job_url(w->w_relays, &e->e_job)
                                      : NULL;
        rec.error = error;
        entry_rcpts_result(e, &rec, &all, &failed);
        rec.source.topic = w->w_conf->topic_requests;
        rec.source.partition = e->e_origin_partition;
        rec.source.offset = e->e_origin_offset;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.received_ms = e->e_received_ms;
        rec.completed_ms = loop_wall_ms(w->w_loop);
        rec.metadata = e->e_req->metadata;
        rec.results_partition = ledger_part_results_partition(e->e_part);

        if (status != RESULT_REJECTED)
                metrics_hist_observe(
                        &w->w_stats.request_latency,
                        (double)(rec.completed_ms - rec.received_ms) / 1000.0);
        switch (status) {
        case RESULT_SENT:
                w->w_stats.sent++;
                e->e_sent_unacked = 1;
                w->w_sent_unacked++;
                break;
        case RESULT_FAILED:
                w->w_stats.failed++;
                LOG(LL_INFO, "request failed id=%s code=%d reason=%s", rec.id,
                    code, error ? error : (reply ? reply : ""));
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
        json_decref(all);
        json_decref(failed);

        if (!e->e_leader)
                return;
        memset(&done, 0, sizeof(done));
        done.status = (int)status;
        done.delivered = strcmp(rec.delivered, "all") == 0    ? 0
                         : strcmp(rec.delivered, "some") == 0 ? 1
                                                              : 2;
        done.smtp_code = code;
        done.attempts = e->e_attempts;
        cstr_copy(done.smtp_reply, sizeof(done.smtp_reply), reply ? reply : "");
        cstr_copy(done.error, sizeof(done.error), error ? error : "");
        cstr_copy(done.message_id, sizeof(done.message_id),
                  rec.message_id ? rec.message_id : "");
        cstr_copy(done.source_topic, sizeof(done.source_topic),
                  rec.source.topic);
        done.source_partition = rec.source.partition;
        done.source_offset = rec.source.offset;
        dedupe_finish(w->w_dedupe, e->e_req->id, &done, rec.completed_ms);
        e->e_leader = 0;
        while ((f = entry_pop_follower(e)) != NULL) {
                entry_finish_duplicate(f, &done);
        }
}

/* ---- retries ---- */

/* @returns whether requests can be handed to the retry topic: there is one,
 * and the producer still works. */
static int worker_can_hand_over(const worker_t *w) {
        return w->w_topic_cnt > TOPIC_RETRY && !results_fatal(w->w_results);
}

/* Writes @e to the retry topic, to be sent at @due_ms; its offset is done
 * once Kafka has the record. */
static void entry_handoff(struct entry *e, int64_t due_ms, int code,
                          const char *reply) {
        worker_t *w = e->e_worker;
        struct retry_record rec;
        char *value;
        struct entry *f;

        memset(&rec, 0, sizeof(rec));
        rec.id = e->e_req->id;
        rec.request = e->e_raw;
        rec.request_len = e->e_raw_len;
        rec.attempts = e->e_attempts;
        rec.due_ms = due_ms;
        rec.first_received_ms = e->e_received_ms;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.source_topic = w->w_conf->topic_requests;
        rec.source_partition = e->e_origin_partition;
        rec.source_offset = e->e_origin_offset;
        rec.last_smtp_code = code;
        rec.last_smtp_reply = reply;
        rec.rcpts = entry_rcpts_final(e, &rec.rcpt_cnt);
        value = retry_record_format(&rec);
        free(rec.rcpts);
        w->w_stats.handoffs++;
        LOG(LL_DEBUG, "moved to the retry topic id=%s attempts=%d",
            e->e_req->id, e->e_attempts);
        e->e_state = ENTRY_PUBLISHING;
        e->e_acks_pending++;
        e->e_handed_over = 1;
        results_handoff(w->w_results, e->e_req->id, value, strlen(value), e);
        free(value);

        /* Requests with the same id go along: the retry topic keeps one
         * partition per id, so they meet again there. */
        if (e->e_leader) {
                e->e_leader = 0;
                dedupe_release(w->w_dedupe, e->e_req->id);
        }
        while ((f = entry_pop_follower(e)) != NULL) {
                entry_handoff(f, due_ms, code, reply);
        }
}

static void entry_on_timer(loop_t *loop, void *opaque) {
        struct entry *e = opaque;

        (void)loop;
        if (e->e_worker->w_stopping || ledger_part_draining(e->e_part) ||
            ledger_part_released(e->e_part)) {
                entry_release(e);
                entry_destroy(e, 0);
                return;
        }
        entry_start(e);
}

/* Publishes @e as failed after @job, the last transaction: @why, or the
 * relay's permanent refusal, or the worker's own reason when the relay was
 * not asked (code 0: SIZE, SMTPUTF8). */
static void entry_finish_failed(struct entry *e, const struct smtp_job *job,
                                const char *why) {
        if (why)
                entry_finish(e, RESULT_FAILED, job->code, job->reply, why);
        else if (job->code == 0)
                entry_finish(e, RESULT_FAILED, 0, NULL, job->reply);
        else
                entry_finish(e, RESULT_FAILED, job->code, job->reply,
                             "permanent SMTP rejection");
}

/* Publishes @e from its recipients' outcomes once none is to be tried
 * again (@why: why those still pending are not): sent when any recipient
 * got it, with the reply that accepted the last of them. */
static void entry_finish_rcpts(struct entry *e, const struct smtp_job *job,
                               const char *why) {
        const struct rcpt_state *last_sent = NULL;

        if (e->e_rcpts) {
                for (size_t i = 0; i < e->e_msg->rcpt_cnt; i++) {
                        struct rcpt_state *r = &e->e_rcpts[i];

                        if (r->st == RCPT_PENDING)
                                r->st = RCPT_FAILED; /* with its last reply */
                        else if (r->st == RCPT_SENT)
                                last_sent = r;
                }
        }
        if (last_sent)
                entry_finish(e, RESULT_SENT, last_sent->code, last_sent->reply,
                             NULL);
        else
                entry_finish_failed(e, job, why);
}

/* Applies the outcome of a transaction tried for @e. @returns 1 when that
 * settled @e (finished, or its next transaction started), 0 when a
 * transient failure leaves it to the retry policy. */
static int worker_on_attempt(struct entry *e, struct smtp_job *job) {
        e->e_attempts++;
        if (!e->e_rcpts && job->rcpt_failure_cnt == 0 &&
            job->rcpt_cnt == e->e_msg->rcpt_cnt) {
                /* Every recipient in one transaction, none refused on its
                 * own: they all share its outcome. */
                switch (job->outcome) {
                case SMTP_OK:
                        entry_finish(e, RESULT_SENT, job->code, job->reply,
                                     NULL);
                        return 1;
                case SMTP_PERMANENT:
                        entry_finish_failed(e, job, NULL);
                        return 1;
                case SMTP_TRANSIENT:
                case SMTP_DEFERRED:
                        break;
                }
        } else {
                int next_at_once = entry_rcpts_apply(e, job);

                if (entry_rcpts_pending(e) == 0) {
                        entry_finish_rcpts(e, job, NULL);
                        return 1;
                }
                if (next_at_once && !ledger_part_released(e->e_part)) {
                        /* The relay took what it could in this one: the
                         * rest goes in the next transaction at once, on the
                         * same try. */
                        e->e_attempts--;
                        entry_start(e);
                        return 1;
                }
        }
        return 0;
}

static void worker_on_smtp_done(struct smtp_job *job, void *opaque) {
        struct entry *e = job->opaque;
        worker_t *w = opaque;
        struct retry_state st;
        struct retry_decision d;

        if (job->outcome != SMTP_DEFERRED)
                metrics_hist_observe(
                        &w->w_stats.send_latency,
                        (double)(loop_now_ms(w->w_loop) - e->e_send_ms) /
                                1000.0);
        if (job->outcome == SMTP_DEFERRED) {
                /* Not tried: a limit would hold it too long. No attempt
                 * counts; it goes when the limit lets it. */
                if (e->e_rcpts)
                        entry_rcpts_apply(e, job);
                w->w_stats.deferrals++;
        } else if (worker_on_attempt(e, job)) {
                return;
        }
        if (ledger_part_released(e->e_part)) {
                /* Its partition is someone else's already: the next owner
                 * consumes it again. */
                entry_release(e);
                entry_destroy(e, 0);
                return;
        }
        st.attempts = e->e_attempts;
        st.now_ms = results_wall_ms();
        st.received_ms = e->e_received_ms;
        st.rnd = (uint64_t)rand();
        st.partial = entry_rcpts_any_final(e);
        st.can_hand_over = worker_can_hand_over(w) && !e->e_no_handoff;
        st.from_retry_topic = e->e_topic->wt_index == TOPIC_RETRY;
        st.leaving = w->w_stopping || ledger_part_draining(e->e_part);
        st.wait_ms = job->outcome == SMTP_DEFERRED ? job->defer_ms : 0;
        retry_decide(&w->w_retry, &st, &d);
        if (d.action == RETRY_FINISH) {
                entry_finish_rcpts(e, job, d.reason);
                return;
        }
        if (job->outcome != SMTP_DEFERRED)
                w->w_stats.retries++;
        switch (d.action) {
        case RETRY_HAND_OVER:
                entry_handoff(e, d.due_ms, job->code, job->reply);
                return;
        case RETRY_ABANDON:
                /* Its partition is being given up and there is no retry
                 * topic: the next owner consumes it again. */
                entry_release(e);
                entry_destroy(e, 0);
                return;
        case RETRY_LOCAL:
        case RETRY_FINISH:
                break;
        }
        LOG(LL_DEBUG, "retrying id=%s attempt=%d code=%d reply=%s",
            e->e_req->id, e->e_attempts, job->code, job->reply);
        e->e_state = ENTRY_WAITING;
        e->e_due_ms = d.due_ms; /* for a hand-over before then */
        loop_timer_start(w->w_loop, &e->e_timer, d.delay_ms);
}

/* Sends @e (first attempt, retry or due retry-topic request) unless its
 * deadline has passed. */
static void entry_start(struct entry *e) {
        worker_t *w = e->e_worker;
        int64_t now = loop_wall_ms(w->w_loop);
        struct relay_route route;

        if (e->e_req->deadline_ms && now >= e->e_req->deadline_ms) {
                entry_finish(e, RESULT_EXPIRED, 0, NULL,
                             "deadline passed before sending");
                return;
        }
        if (e->e_due_ms > now) {
                e->e_state = ENTRY_WAITING;
                loop_timer_start(w->w_loop, &e->e_timer, e->e_due_ms - now);
                return;
        }
        smtp_job_reset(&e->e_job);
        if (e->e_rcpts && entry_rcpts_pending(e) == 0) {
                /* A retry record whose every recipient was final. */
                entry_finish_rcpts(e, &e->e_job, "no recipient left to try");
                return;
        }
        entry_rcpts_to_job(e);
        e->e_state = ENTRY_SENDING;
        route.sender_domain = strrchr(e->e_req->from.addr, '@');
        route.sender_domain =
                route.sender_domain ? route.sender_domain + 1 : "";
        route.priority = e->e_req->priority;
        e->e_send_ms = loop_now_ms(w->w_loop);
        relays_submit(w->w_relays, &e->e_job, &route);
}

/* Takes @e out of the pipeline without a result (its request is consumed
 * again by whoever owns the partition next). @returns 0, or -1 when it is in
 * an SMTP transaction or being published and must finish. */
static int entry_abandon(struct entry *e) {
        worker_t *w = e->e_worker;

        switch (e->e_state) {
        case ENTRY_FOLLOWING:
                entry_unfollow(e);
                entry_destroy(e, 0);
                return 0;
        case ENTRY_WAITING:
                entry_release(e);
                entry_destroy(e, 0);
                return 0;
        case ENTRY_SENDING:
                if (relays_cancel(w->w_relays, &e->e_job) == 0) {
                        entry_release(e);
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
                          const rd_kafka_message_t *m, char *id,
                          const char *reason) {
        struct result_source src;
        struct result_rec rec;
        int id_from_key = 0;

        if (!id[0] && request_id_valid(m->key, m->key_len)) {
                /* The value gave no id (too large, not JSON, no "id"): the
                 * key is the id publishers are asked to set (at most
                 * 200 bytes, @id holds 256). */
                memcpy(id, m->key, m->key_len);
                id[m->key_len] = '\0';
                id_from_key = 1;
        }
        src.topic = e->e_topic->wt_name;
        src.partition = m->partition;
        src.offset = m->offset;
        LOG(LL_INFO,
            "request rejected topic=%s partition=%d offset=%lld id=%s "
            "reason=%s",
            src.topic, (int)m->partition, (long long)m->offset,
            id[0] ? id : "-", reason);
        e->e_state = ENTRY_PUBLISHING;
        e->e_acks_pending = 2;
        results_deadletter(w->w_results, m->key, m->key_len,
                           m->payload ? m->payload : "", m->len, reason, &src,
                           e);
        if (e->e_topic->wt_index == TOPIC_RETRY) {
                /* Report it where the request came from when that is known. */
                src.topic = w->w_conf->topic_requests;
                src.partition = e->e_origin_partition;
                src.offset = e->e_origin_offset;
        }
        memset(&rec, 0, sizeof(rec));
        rec.id = id[0] ? id : NULL;
        rec.id_from_key = id_from_key;
        rec.status = RESULT_REJECTED;
        rec.error = reason;
        rec.source = src;
        rec.request_ts_ms = e->e_request_ts_ms;
        rec.received_ms = e->e_received_ms;
        rec.completed_ms = loop_wall_ms(w->w_loop);
        rec.results_partition = ledger_part_results_partition(e->e_part);
        w->w_stats.rejected++;
        results_publish(w->w_results, &rec, e);
}

/* Reads a retry record into @e: the request's text, attempts, due time,
 * origin and final recipients. @returns 0 or -1 with @errstr. */
static int entry_read_retry(struct entry *e, const rd_kafka_message_t *m,
                            char *id, size_t id_size, char *errstr,
                            size_t errstr_size) {
        struct retry_record *r = &e->e_retry;

        if (retry_record_parse(m->payload, m->len, r, errstr, errstr_size) !=
            0) {
                snprintf(id, id_size, "%s", r->id ? r->id : "");
                retry_record_clear(r);
                return -1;
        }
        snprintf(id, id_size, "%s", r->id);
        /* The request's text moves to the entry. */
        e->e_raw = (char *)r->request;
        e->e_raw_len = r->request_len;
        r->request = NULL;
        e->e_attempts = r->attempts;
        e->e_due_ms = r->due_ms;
        e->e_received_ms = r->first_received_ms;
        e->e_request_ts_ms = r->request_ts_ms;
        e->e_origin_partition = r->source_partition;
        e->e_origin_offset = r->source_offset;
        return 0;
}

static void worker_on_message(void *opaque, const rd_kafka_message_t *m) {
        struct worker_topic *wt = opaque;
        worker_t *w = wt->wt_worker;
        ledger_part_t *p = ledger_part_get(wt->wt_ledger, m->partition);
        rd_kafka_timestamp_type_t tstype;
        struct message_opts mo;
        struct entry *e;
        char id[256];
        char errstr[512];

        if (!p)
                p = ledger_part_add(wt->wt_ledger, m->partition);
        if (ledger_track(wt->wt_ledger, p, m->offset) != 0) {
                /* Seen already in this assignment (the consumer went back):
                 * still in flight, or done and committed or about to be. */
                LOG(LL_WARN,
                    "offset seen already topic=%s partition=%d offset=%lld",
                    wt->wt_name, (int)m->partition, (long long)m->offset);
                return;
        }
        w->w_stats.consumed++;
        e = entry_new(w, wt, p, m->offset,
                      wt->wt_index == TOPIC_RETRY || !m->payload ? 0 : m->len);
        e->e_request_ts_ms = rd_kafka_message_timestamp(m, &tstype);
        if (e->e_request_ts_ms < 0)
                e->e_request_ts_ms = 0;

        id[0] = '\0';
        if (!m->payload || m->len == 0) {
                worker_reject(w, e, m, id, "empty value");
                goto out;
        }
        if (wt->wt_index == TOPIC_RETRY) {
                if (entry_read_retry(e, m, id, sizeof(id), errstr,
                                     sizeof(errstr))) {
                        worker_reject(w, e, m, id, errstr);
                        goto out;
                }
        } else {
                e->e_raw = e->e_raw_room;
                memcpy(e->e_raw, m->payload, m->len);
                e->e_raw_len = m->len;
        }
        e->e_req = request_parse(e->e_raw, e->e_raw_len, &w->w_limits, id,
                                 sizeof(id), errstr, sizeof(errstr));
        if (!e->e_req) {
                worker_reject(w, e, m, id, errstr);
                goto out;
        }
        if (e->e_req->deadline_ms)
                w->w_with_deadline++;
        mo.message_id_domain = w->w_conf->message_id_domain;
        mo.date_ms = e->e_received_ms;
        mo.headroom = signer_headroom(w->w_signer, e->e_req->from.addr);
        mo.scratch = &w->w_msg_scratch;
        e->e_msg = message_build(e->e_req, &mo, errstr, sizeof(errstr));
        if (!e->e_msg) {
                if (e->e_req->deadline_ms)
                        w->w_with_deadline--;
                request_destroy(e->e_req);
                e->e_req = NULL;
                worker_reject(w, e, m, id, errstr);
                goto out;
        }
        if (mo.headroom > 0)
                signer_sign(w->w_signer, e->e_msg, e->e_req->from.addr,
                            results_wall_ms() / 1000, id);
        /* The message holds the body now; e_raw keeps the request's text
         * for the retry topic. */
        request_drop_content(e->e_req);
        e->e_job.mail_from = e->e_msg->mail_from;
        entry_rcpts_from_retry(e);
        e->e_job.data = e->e_msg->data;
        e->e_job.data_len = e->e_msg->data_len;
        e->e_job.opaque = e;
        if (entry_claim(e))
                entry_start(e);
out:
        worker_check_pressure(w);
}

static void worker_on_assign(void *opaque,
                             const rd_kafka_topic_partition_list_t *parts) {
        struct worker_topic *wt = opaque;
        worker_t *w = wt->wt_worker;
        int32_t *ids;
        uint64_t *seqs;
        int n = 0;

        ids = malloc((size_t)(parts->cnt + 1) * sizeof(*ids));
        seqs = malloc((size_t)(parts->cnt + 1) * sizeof(*seqs));
        if (!ids || !seqs)
                abort();
        for (int i = 0; i < parts->cnt; i++) {
                ledger_part_t *p = ledger_part_add(wt->wt_ledger,
                                                   parts->elems[i].partition);

                if (!w->w_recall)
                        continue;
                /* The consumer holds it (consumer_hold_assigned()) until the
                 * answer. */
                ids[n] = ledger_part_partition(p);
                seqs[n] = ++w->w_assign_seq;
                ledger_part_hold(p, seqs[n]);
                n++;
        }
        if (n > 0)
                recall_ask(w->w_recall, wt->wt_consumer, wt->wt_index,
                           wt->wt_name, ids, seqs, n);
        free(ids);
        free(seqs);
        worker_update_share(w);
}

/* What the results topic says about partitions assigned: their finished
 * requests are remembered as such, then their messages are let through. */
static void worker_on_recall(void *opaque, const struct recall_answer *a) {
        worker_t *w = opaque;
        int64_t now = results_wall_ms();
        struct worker_topic *wt = &w->w_topics[a->topic];
        int released = 0, incomplete = 0, floors = 0;
        uint64_t records = 0;

        for (size_t i = 0; i < a->item_cnt; i++)
                dedupe_remember(w->w_dedupe, a->items[i].id, &a->items[i].done,
                                now);
        w->w_stats.recalled += a->item_cnt;
        for (int i = 0; i < a->part_cnt; i++) {
                const struct recall_part *ap = &a->parts[i];
                ledger_part_t *p =
                        ledger_part_get(wt->wt_ledger, ap->partition);

                if (!p ||
                    ledger_part_let_through(p, ap->seq, ap->results_partition,
                                            ap->results_end, ap->stored_floor,
                                            ap->consumed_end) != 0)
                        continue; /* revoked meanwhile */
                consumer_release(wt->wt_consumer, wt->wt_name, ap->partition);
                released++;
                records += ap->records;
                floors += ap->stored_floor >= 0;
                if (!ap->complete) {
                        incomplete++;
                        w->w_stats.recall_incomplete++;
                }
        }
        if (released == 0)
                return;
        if (incomplete > 0)
                LOG(LL_WARN,
                    "results topic not fully read at assignment "
                    "(requests finished by an earlier owner may be sent "
                    "again) topic=%s partitions=%d incomplete=%d reason=%s",
                    wt->wt_name, released, incomplete, a->note);
        LOG(LL_INFO,
            "results read at assignment topic=%s partitions=%d "
            "with_results_offset=%d records=%llu final_ids=%zu took_ms=%lld",
            wt->wt_name, released, floors, (unsigned long long)records,
            a->item_cnt, (long long)a->took_ms);
}

/* @returns whether a commit was refused because the group moved on to a new
 * generation (or member epoch) while it was out: offered again at once for
 * the partitions still owned, it goes through. */
static int worker_generation_moved(rd_kafka_resp_err_t err) {
        switch ((int)err) {
        case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
        case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
        case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
        /* KIP-848's codes, by number: librdkafka before 2.4 lacks their
         * names. */
        case WORKER_ERR_FENCED_MEMBER_EPOCH:
        case WORKER_ERR_STALE_MEMBER_EPOCH:
                return 1;
        default:
                return 0;
        }
}

/* A commit finished: what it covered is no longer held. */
static void worker_on_commit(void *opaque,
                             const rd_kafka_topic_partition_list_t *offsets,
                             rd_kafka_resp_err_t err) {
        struct worker_topic *wt = opaque;
        worker_t *w = wt->wt_worker;

        wt->wt_commit_sent_ms = 0;
        if (err || !offsets) {
                /* Refused (the generation moved on in a rebalance, the
                 * coordinator moved): the partitions still owned are offered
                 * again at once where librdkafka allows it (worker_commit()). */
                if (worker_generation_moved(err) && wt->wt_consumer &&
                    !consumer_holds_commits(wt->wt_consumer))
                        worker_commit_soon(w, wt);
                worker_check_pressure(w);
                return;
        }
        w->w_stats.commits_answered++;
        for (int i = 0; i < offsets->cnt; i++) {
                struct worker_topic *of =
                        worker_topic_of(w, offsets->elems[i].topic);

                if (of && !offsets->elems[i].err) {
                        ledger_committed(of->wt_ledger,
                                         offsets->elems[i].partition,
                                         offsets->elems[i].offset);
                        of->wt_commits_stored++;
                }
        }
        worker_check_pressure(w);
        /* Completions that came while this commit was out may be waiting. */
        if (ledger_commit_urgent(wt->wt_ledger) ||
            (ledger_held(wt->wt_ledger) > 0 &&
             ledger_inflight(wt->wt_ledger) == 0))
                worker_commit_soon(w, wt);
}

/* Adds @c, one partition's watermark of @wt, to @offs. */
static void worker_commit_add(const struct worker_topic *wt,
                              const struct ledger_commit *c,
                              rd_kafka_topic_partition_list_t *offs) {
        rd_kafka_topic_partition_t *rktpar;

        rktpar = rd_kafka_topic_partition_list_add(offs, wt->wt_name,
                                                   c->partition);
        rktpar->offset = c->offset;
        if (c->metadata_len > 0) {
                rktpar->metadata = malloc(c->metadata_len);
                if (!rktpar->metadata)
                        abort();
                memcpy(rktpar->metadata, c->metadata, c->metadata_len);
                rktpar->metadata_size = c->metadata_len;
        }
}

/* @returns the milliseconds left before a stopping worker must exit (>= 0). */
static int worker_stop_left_ms(const worker_t *w) {
        int64_t left = w->w_stop_deadline_ms - loop_clock_ms();

        return left > 0 ? (int)left : 0;
}

/* @returns the part of shutdown.timeout.ms kept for the last commits. */
static int worker_stop_reserve_ms(const struct config *conf) {
        int quarter = conf->shutdown_timeout_ms / 4;

        return quarter < conf->commit_timeout_ms ? quarter
                                                 : conf->commit_timeout_ms;
}

/* @returns how long a stopping worker may still empty partitions: until
 * the part of shutdown.timeout.ms kept for the last commits (>= 0). */
static int worker_stop_drain_left_ms(const worker_t *w) {
        int left = worker_stop_left_ms(w) - worker_stop_reserve_ms(w->w_conf);

        return left > 0 ? left : 0;
}

/* @returns how long a revoke that comes while the worker is stopping may
 * be emptied: rebalance.drain.timeout.ms, within what is left of the stop's
 * drain. */
static int worker_revoke_stopping_ms(const worker_t *w) {
        int left = worker_stop_drain_left_ms(w);

        return left < w->w_conf->rebalance_drain_timeout_ms
                       ? left
                       : w->w_conf->rebalance_drain_timeout_ms;
}

/* @returns how long a synchronous commit may wait for its answer:
 * commit.timeout.ms, and on SIGTERM no longer than shutdown.timeout.ms
 * allows. */
static int worker_commit_wait_ms(const worker_t *w) {
        int left;

        if (!w->w_stopping)
                return w->w_conf->commit_timeout_ms;
        left = worker_stop_left_ms(w);
        return left < w->w_conf->commit_timeout_ms
                       ? left
                       : w->w_conf->commit_timeout_ms;
}

/* Commits the watermark of every partition of @wt in @parts (all its
 * assigned ones when NULL) that moved since its last commit. */
static void worker_commit(worker_t *w, struct worker_topic *wt,
                          const rd_kafka_topic_partition_list_t *parts,
                          int async) {
        rd_kafka_topic_partition_list_t *offs;
        struct ledger_commit *commits;
        int32_t *ids = NULL;
        size_t n, id_cnt = 0;
        uint64_t errors;
        int unanswered = 0;

        if (!wt->wt_consumer)
                return;
        errors = consumer_commit_errors(wt->wt_consumer);
        if (async && wt->wt_commit_sent_ms &&
            loop_now_ms(w->w_loop) - wt->wt_commit_sent_ms >=
                    w->w_conf->commit_timeout_ms) {
                /* No answer (librdkafka may keep a commit for a session
                 * timeout while the coordinator is away): what it carried
                 * is offered again, or what waits for it (held) could wait
                 * for ever. */
                LOG(LL_WARN,
                    "offset commit not answered within "
                    "commit.timeout.ms (%d ms), offered again topic=%s",
                    w->w_conf->commit_timeout_ms, wt->wt_name);
                wt->wt_commit_sent_ms = 0;
                w->w_stats.commits_unanswered++;
                unanswered = 1;
        }
        if (errors != wt->wt_commit_errors_seen || unanswered) {
                /* A commit failed or went unanswered: offer every
                 * partition's watermark again, after a pause. */
                wt->wt_commit_errors_seen = errors;
                wt->wt_commit_hold_until =
                        consumer_holds_commits(wt->wt_consumer)
                                ? loop_now_ms(w->w_loop) +
                                          w->w_conf->commit_interval_ms
                                : 0;
                ledger_commit_failed_all(wt->wt_ledger);
        }
        if (async &&
            (loop_now_ms(w->w_loop) < wt->wt_commit_hold_until ||
             consumer_rebalancing(wt->wt_consumer) || wt->wt_commit_sent_ms))
                return;
        if (parts) {
                ids = malloc((size_t)(parts->cnt + 1) * sizeof(*ids));
                if (!ids)
                        abort();
                for (int i = 0; i < parts->cnt; i++)
                        if (strcmp(parts->elems[i].topic, wt->wt_name) == 0)
                                ids[id_cnt++] = parts->elems[i].partition;
        }
        n = ledger_commit_take(wt->wt_ledger, ids, id_cnt, &commits);
        free(ids);
        if (n == 0)
                return;
        offs = rd_kafka_topic_partition_list_new((int)n);
        for (size_t i = 0; i < n; i++)
                worker_commit_add(wt, &commits[i], offs);
        LOG(LL_DEBUG, "committing topic=%s partitions=%d async=%d", wt->wt_name,
            offs->cnt, async);
        if (async)
                wt->wt_commit_sent_ms = loop_now_ms(w->w_loop);
        if (consumer_commit(wt->wt_consumer, offs,
                            async ? -1 : worker_commit_wait_ms(w)) == -1)
                for (size_t i = 0; i < n; i++)
                        ledger_commit_failed(wt->wt_ledger,
                                             commits[i].partition);
        free(commits);
        rd_kafka_topic_partition_list_destroy(offs);
}

/* Expires requests whose deadline passed while they waited for a retry or
 * for an SMTP session (the relay may be backed off for minutes). */
static void worker_expire_waiting(worker_t *w) {
        int64_t now = results_wall_ms();
        struct entry *e, *next;

        for (e = w->w_entries; e && w->w_with_deadline > 0; e = next) {
                next = e->e_next;
                if (!e->e_req || !e->e_req->deadline_ms ||
                    now < e->e_req->deadline_ms)
                        continue;
                if (e->e_state == ENTRY_WAITING) {
                        loop_timer_stop(w->w_loop, &e->e_timer);
                } else if (e->e_state != ENTRY_SENDING ||
                           relays_cancel(w->w_relays, &e->e_job) != 0) {
                        continue; /* following, publishing, or in a transaction */
                }
                entry_finish(e, RESULT_EXPIRED, 0, NULL,
                             "deadline passed while waiting to be sent");
        }
}

/* Warns when requests are held and nothing has moved (nothing consumed,
 * finished or committed) for stall.warn.ms, with what the worker waits on,
 * and again every such period while it lasts. */
static void worker_watch_progress(worker_t *w) {
        const struct worker_stats *st = &w->w_stats;
        const struct worker_topic *rq = &w->w_topics[TOPIC_REQUESTS];
        const struct worker_topic *rt =
                w->w_topic_cnt > TOPIC_RETRY ? &w->w_topics[TOPIC_RETRY] : NULL;
        int64_t now = loop_now_ms(w->w_loop);
        uint64_t mark = st->consumed + st->sent + st->failed + st->rejected +
                        st->expired + st->handoffs + st->duplicates +
                        st->commits_answered;
        struct smtp_stats ss;
        size_t held = 0;
        int waiting_recall = 0;

        for (int t = 0; t < w->w_topic_cnt; t++)
                held += ledger_held(w->w_topics[t].wt_ledger);
        if (mark != w->w_progress_mark || held == 0 ||
            w->w_conf->stall_warn_ms == 0) {
                w->w_progress_mark = mark;
                w->w_progress_ms = now;
                return;
        }
        if (now - w->w_progress_ms < w->w_conf->stall_warn_ms)
                return;
        w->w_progress_ms = now;
        w->w_stats.stalls++;
        for (int t = 0; t < w->w_topic_cnt; t++)
                waiting_recall +=
                        (int)ledger_parts_held(w->w_topics[t].wt_ledger);
        relays_stats_total(w->w_relays, &ss);
        LOG(LL_WARN,
            "no progress for stall.warn.ms (%d ms) with requests held "
            "inflight=%zu held=%zu limit=%zu paused=%d commit_out_ms=%lld "
            "retry_inflight=%zu retry_held=%zu results_unacknowledged=%zu "
            "smtp_sessions=%zu smtp_busy=%zu smtp_queued=%zu relay_healthy=%d "
            "partitions_waiting_for_results_read=%d",
            w->w_conf->stall_warn_ms, ledger_inflight(rq->wt_ledger),
            ledger_held(rq->wt_ledger), ledger_limit(rq->wt_ledger),
            rq->wt_consumer ? consumer_paused(rq->wt_consumer) : 0,
            rq->wt_commit_sent_ms ? (long long)(now - rq->wt_commit_sent_ms)
                                  : -1LL,
            rt ? ledger_inflight(rt->wt_ledger) : 0,
            rt ? ledger_held(rt->wt_ledger) : 0, results_pending(w->w_results),
            ss.sessions_open, ss.sessions_busy, ss.jobs_queued,
            ss.relay_healthy, waiting_recall);
}

/* Gives the relays this worker's share of the group's rate limits: the
 * partitions it owns of the requests and retry topics together (a topic
 * whose partition count is not known is left out; none known: kept). */
static void worker_update_share(worker_t *w) {
        size_t owned = 0;
        int64_t total = 0;

        for (int t = 0; t < w->w_topic_cnt; t++) {
                const struct worker_topic *wt = &w->w_topics[t];
                int32_t n = wt->wt_consumer
                                    ? consumer_partition_count(wt->wt_consumer)
                                    : 0;

                if (n <= 0) {
                        /* Not known (yet): left out, unless some of it is
                         * owned: the share would then be too small (0 with
                         * the other topic's count known and none of it
                         * owned), and a limit's part with it. */
                        if (ledger_part_count(wt->wt_ledger) > 0)
                                return;
                        continue;
                }
                total += n;
                owned += ledger_part_count(wt->wt_ledger);
        }
        /* Owning nothing, the worker has no traffic to pace: its share is
         * left as it was (before the first assignment, not known: limited
         * jobs wait for it). */
        if (total > 0 && owned > 0)
                relays_set_share(w->w_relays, (double)owned / (double)total);
}

/*
 * Looks at @sw's @count while @waiting (work waits on the count moving):
 * @returns 1 when it has stood still for @limit ms (0: never), counted from
 * a moment Kafka answered (@answered_ms == @now), and starts counting anew.
 */
static int stall_watch_check(struct stall_watch *sw, uint64_t count,
                             int waiting, int64_t answered_ms, int64_t now,
                             int limit) {
        if (limit == 0 || !waiting || count != sw->sw_seen) {
                sw->sw_seen = count;
                sw->sw_since_ms = 0;
                return 0;
        }
        if (sw->sw_since_ms == 0 && answered_ms == now)
                sw->sw_since_ms = now;
        if (sw->sw_since_ms == 0 || now - sw->sw_since_ms < limit)
                return 0;
        sw->sw_since_ms = 0;
        return 1;
}

/*
 * commit.stall.exit.ms: a topic whose offers to commit have been
 * outstanding that long, none stored, counted from a moment Kafka answered
 * (its metadata requests, kstatus), has a Kafka client that will not
 * recover by itself (librdkafka after an outage, seen waiting for its
 * group coordinator for minutes). The worker stops as on SIGTERM and exits
 * with status 3: a new process joins the group afresh, and the results
 * topic it reads at assignment keeps it from sending anything again.
 */
static void worker_watch_commits(worker_t *w, int64_t now) {
        int limit = w->w_conf->commit_stall_exit_ms;

        for (int t = 0; t < w->w_topic_cnt; t++) {
                struct worker_topic *wt = &w->w_topics[t];

                if (!stall_watch_check(
                            &wt->wt_commit_watch, wt->wt_commits_stored,
                            !w->w_stop &&
                                    ledger_commit_outstanding(wt->wt_ledger),
                            w->w_kafka_answered_ms, now, limit))
                        continue;
                LOG(LL_ERROR,
                    "offsets not committed for commit.stall.exit.ms (%d ms) "
                    "while Kafka answers: stopping, for the worker to be "
                    "started anew (exit status 3) topic=%s",
                    limit, wt->wt_name);
                w->w_exit_status = 3;
                worker_stop(w);
                return;
        }
}

/*
 * results.stall.ms: records handed to the results producer and no delivery
 * report for that long, counted from a moment Kafka answered, mean a
 * producer that will not recover by itself (seen once: librdkafka 2.14's
 * idempotent producer after a 25 s outage, 200 results unacknowledged for
 * minutes while everything else worked). Its requests would stay held and
 * uncommitted for ever. A new producer takes over its records; no mail is
 * sent again. When that cannot be done the worker stops as on SIGTERM and
 * exits with status 3.
 */
static void worker_watch_results(worker_t *w, int64_t now) {
        int limit = w->w_conf->results_stall_ms;
        uint64_t reports = results_reports(w->w_results);
        size_t waiting = results_unreported(w->w_results);
        char errstr[256];

        if (!stall_watch_check(&w->w_results_watch, reports,
                               !w->w_stop && waiting > 0,
                               w->w_kafka_answered_ms, now, limit))
                return;
        LOG(LL_ERROR,
            "no delivery report from the results producer for "
            "results.stall.ms (%d ms) while Kafka answers: replacing it "
            "records=%zu",
            limit, waiting);
        if (results_renew(w->w_results, errstr, sizeof(errstr)) == 0)
                return;
        LOG(LL_ERROR,
            "results producer not replaced: stopping, for the worker to be "
            "started anew (exit status 3) reason=%s",
            errstr);
        w->w_exit_status = 3;
        worker_stop(w);
}

static void worker_on_commit_timer(loop_t *loop, void *opaque) {
        worker_t *w = opaque;

        worker_watch_progress(w);
        worker_update_share(w);
        /* The log lines when readiness changes, also with no one asking. */
        if (kstatus_ready(w->w_kstatus, loop_clock_ms(), NULL, NULL, 0))
                w->w_kafka_answered_ms = loop_now_ms(loop);
        worker_watch_commits(w, loop_now_ms(loop));
        worker_watch_results(w, loop_now_ms(loop));
        w->w_last_commit_ms = loop_now_ms(loop);
        if (w->w_with_deadline > 0)
                worker_expire_waiting(w);
        for (int t = 0; t < w->w_topic_cnt; t++)
                worker_commit(w, &w->w_topics[t], NULL, 1);
        loop_timer_start(loop, &w->w_commit_timer,
                         w->w_conf->commit_interval_ms);
}

/* @returns whether @e belongs to one of @parts (every entry when NULL). */
static int entry_in(worker_t *w, const struct entry *e,
                    const rd_kafka_topic_partition_list_t *parts) {
        if (!parts)
                return 1;
        for (int i = 0; i < parts->cnt; i++)
                if (part_of_elem(w, parts, i) == e->e_part)
                        return 1;
        return 0;
}

/* @returns the live entries of the partitions in @parts (all when NULL). */
static size_t worker_entries_of(worker_t *w,
                                const rd_kafka_topic_partition_list_t *parts) {
        size_t n = 0;

        if (!parts) {
                for (int t = 0; t < w->w_topic_cnt; t++)
                        n += ledger_inflight(w->w_topics[t].wt_ledger);
                return n;
        }
        for (int i = 0; i < parts->cnt; i++) {
                ledger_part_t *p = part_of_elem(w, parts, i);

                if (p)
                        n += ledger_part_entries(p);
        }
        return n;
}

/* Hands the entries of @parts (all when NULL) that wait for a retry to the
 * retry topic, with their due time and attempts: their offsets become
 * committable, so the next owner of the partition does not consume again
 * what was finished after them. @returns how many. */
static size_t
worker_hand_over_waiting(worker_t *w,
                         const rd_kafka_topic_partition_list_t *parts) {
        struct entry *e, *next;
        size_t n = 0;

        if (!worker_can_hand_over(w))
                return 0;
        for (e = w->w_entries; e; e = next) {
                next = e->e_next;
                if (e->e_state != ENTRY_WAITING || e->e_no_handoff ||
                    !entry_in(w, e, parts))
                        continue;
                loop_timer_stop(w->w_loop, &e->e_timer);
                /* Its followers go along (entry_handoff()). */
                entry_handoff(e, e->e_due_ms, e->e_job.code, e->e_job.reply);
                n++;
        }
        return n;
}

/* Takes the entries of @parts (all when NULL) that have not started out of
 * the pipeline: requests queued for a session go to the retry topic to be
 * sent at once (@hand_over, when there is one), else they are abandoned and
 * consumed again by the partition's next owner; requests waiting for a
 * request with the same id are abandoned. @returns how many were handed
 * over. */
static size_t
worker_give_up_queued(worker_t *w, const rd_kafka_topic_partition_list_t *parts,
                      int hand_over) {
        struct entry *e, *next;
        size_t n = 0;

        hand_over = hand_over && worker_can_hand_over(w);
        for (e = w->w_entries; e; e = next) {
                next = e->e_next;
                if (e->e_state != ENTRY_SENDING || !entry_in(w, e, parts) ||
                    e->e_no_handoff || !hand_over ||
                    relays_cancel(w->w_relays, &e->e_job) != 0)
                        continue;
                entry_handoff(e, results_wall_ms(), e->e_job.code,
                              e->e_job.reply);
                n++;
        }
        /* Followers first: abandoning a leader hands its id to them. */
        for (e = w->w_entries; e; e = next) {
                next = e->e_next;
                if (e->e_state == ENTRY_FOLLOWING && entry_in(w, e, parts))
                        entry_abandon(e);
        }
        for (e = w->w_entries; e; e = next) {
                next = e->e_next;
                if (entry_in(w, e, parts))
                        entry_abandon(e);
        }
        return n;
}

/* Starts emptying the partitions in @parts (all when NULL) within
 * @timeout_ms. With @hand_over (they are not lost): requests waiting for a
 * retry go to the retry topic at once, requests queued for a session are
 * sent while the relay is healthy, and those not started by four fifths of
 * the time (at once when the relay is unhealthy) go to the retry topic too;
 * so the partitions' watermarks pass everything the worker finished, and
 * their next owner sends none of it again. Without: what has not started is
 * abandoned. worker_drain_step() goes on. */
static void worker_drain_start(worker_t *w, struct drain *d,
                               const rd_kafka_topic_partition_list_t *parts,
                               int timeout_ms, int hand_over) {
        int64_t start = loop_clock_ms();

        memset(d, 0, sizeof(*d));
        d->d_deadline_ms = start + timeout_ms;
        d->d_give_up_ms = start + (int64_t)timeout_ms * 4 / 5;
        d->d_hand_over = hand_over;
        if (hand_over)
                d->d_retries = worker_hand_over_waiting(w, parts);
}

/* One step of @d: gives up the queued requests when it is time. @returns
 * what is left of @parts (in an SMTP transaction, or not yet
 * acknowledged); *@done when nothing is or the time is up. */
static size_t worker_drain_step(worker_t *w, struct drain *d,
                                const rd_kafka_topic_partition_list_t *parts,
                                int *done) {
        size_t left = worker_entries_of(w, parts);
        struct smtp_stats ss;

        if (left > 0 && !d->d_given_up) {
                relays_stats_total(w->w_relays, &ss);
                if (!d->d_hand_over || !ss.relay_healthy ||
                    loop_clock_ms() >= d->d_give_up_ms) {
                        d->d_queued =
                                worker_give_up_queued(w, parts, d->d_hand_over);
                        d->d_given_up = 1;
                        left = worker_entries_of(w, parts);
                }
        }
        *done = left == 0 || loop_clock_ms() >= d->d_deadline_ms;
        if (*done && d->d_retries + d->d_queued > 0)
                LOG(LL_INFO,
                    "moved to the retry topic before release "
                    "waiting_retries=%zu not_started=%zu",
                    d->d_retries, d->d_queued);
        return left;
}

/* Empties @parts (all when NULL) within @timeout_ms, running the loop: for
 * the top of the program (shutdown), or with no time at all (no loop run).
 * @returns what is left. */
static size_t worker_drain(worker_t *w,
                           const rd_kafka_topic_partition_list_t *parts,
                           int timeout_ms, int hand_over) {
        struct drain d;
        size_t left;
        int done;

        worker_drain_start(w, &d, parts, timeout_ms, hand_over);
        while (left = worker_drain_step(w, &d, parts, &done), !done)
                loop_run_once(w->w_loop, WORKER_DRAIN_STEP_MS);
        return left;
}

/* Ends the handling of @parts of @wt, revoked: commits their
 * watermarks (unless @lost), says what is left, releases them. */
static void worker_revoke_end(worker_t *w, struct worker_topic *wt,
                              const rd_kafka_topic_partition_list_t *parts,
                              int lost) {
        size_t left = worker_entries_of(w, parts);

        if (!lost)
                worker_commit(w, wt, parts, 0);
        if (left > 0 && !lost)
                LOG(LL_WARN,
                    "revoked partitions still had sends in flight (they "
                    "may be sent again by the next owner) count=%zu",
                    left);
        for (int i = 0; i < parts->cnt; i++) {
                struct worker_topic *of =
                        worker_topic_of(w, parts->elems[i].topic);
                ledger_part_t *p =
                        of ? ledger_part_get(of->wt_ledger,
                                             parts->elems[i].partition)
                           : NULL;

                if (p)
                        ledger_part_release(of->wt_ledger, p);
        }
        /* What the released partitions held no longer counts: consumption
         * may have been stopped by it. */
        worker_check_pressure(w);
}

/* Finishes the revoke of @wt being emptied: commits, releases and gives
 * the partitions back to the consumer. */
static void worker_revoke_finish(worker_t *w, struct worker_topic *wt) {
        const rd_kafka_topic_partition_list_t *parts =
                consumer_revoking_parts(wt->wt_consumer);

        if (!parts)
                return;
        loop_timer_stop(w->w_loop, &wt->wt_revoke.rv_timer);
        worker_revoke_end(w, wt, parts, 0);
        consumer_revoke_done(wt->wt_consumer);
        worker_update_share(w);
}

/* The revoke of a topic being emptied: a step every WORKER_DRAIN_STEP_MS,
 * and when an entry of its partitions ends. */
static void worker_on_revoke_timer(loop_t *loop, void *opaque) {
        struct worker_topic *wt = opaque;
        worker_t *w = wt->wt_worker;
        struct worker_revoke *rv = &wt->wt_revoke;
        const rd_kafka_topic_partition_list_t *parts =
                consumer_revoking_parts(wt->wt_consumer);
        int done;

        if (!parts)
                return;
        worker_drain_step(w, &rv->rv_drain, parts, &done);
        if (done)
                worker_revoke_finish(w, wt);
        else
                loop_timer_start(loop, &rv->rv_timer, WORKER_DRAIN_STEP_MS);
}

/* Runs in librdkafka's rebalance callback: never runs the loop. A revoke
 * the consumer defers is emptied through the loop (worker_on_revoke_timer())
 * and finished by worker_revoke_finish(); one it does not (lost
 * partitions, the consumer closing, a revoke beside another) is handled at
 * once with what can be done without waiting. */
static void worker_on_revoke(void *opaque,
                             const rd_kafka_topic_partition_list_t *parts,
                             int lost, int deferred) {
        struct worker_topic *wt = opaque;
        worker_t *w = wt->wt_worker;
        struct worker_revoke *rv = &wt->wt_revoke;

        for (int i = 0; i < parts->cnt; i++) {
                ledger_part_t *p = part_of_elem(w, parts, i);

                /* The last watermark is committed synchronously at the end
                 * even when an async commit of it is still open and may fail
                 * in this rebalance. */
                if (p)
                        ledger_part_drain(p);
        }
        if (deferred) {
                /* The consumer keeps @parts (consumer_revoking_parts()). */
                /* A stopping worker empties them like the rest, within
                 * what is left of its drain: released earlier, their sends
                 * under way would be consumed again by the next owner. */
                worker_drain_start(
                        w, &rv->rv_drain, parts,
                        w->w_stopping ? worker_revoke_stopping_ms(w)
                                      : w->w_conf->rebalance_drain_timeout_ms,
                        1);
                loop_timer_start(w->w_loop, &rv->rv_timer, 0);
                return;
        }
        /* One revoke at a time: one still being emptied ends first. */
        worker_revoke_finish(w, wt);
        /* Lost: someone else owns them already, and a hand-over would send
         * them twice. */
        worker_drain(w, parts, 0, !lost);
        worker_revoke_end(w, wt, parts, lost);
}

/* ---- metrics ---- */

/* One family of per-relay or per-limit series. */
struct worker_family {
        const char *name, *type, *help;
};

/* The per-relay and per-limit series, each family's samples together. */
static void worker_render_relays(metrics_out_t *out, const relays_t *rs) {
        static const struct worker_family relay[] = {
                {"kafka_mailer_relay_up", "gauge",
                 "1 while this relay takes mail, 0 while it is backed off and "
                 "probed"},
                {"kafka_mailer_relay_sessions", "gauge",
                 "SMTP sessions open to this relay"},
                {"kafka_mailer_relay_queued", "gauge",
                 "transactions waiting for a session of this relay or for its "
                 "rate"},
                {"kafka_mailer_relay_session_failures_total", "counter",
                 "session set-ups this relay refused or that failed"},
                {"kafka_mailer_relay_rate", "gauge",
                 "msgs/s this worker may send through this relay now (its "
                 "share of rate.max, lower after throttling), 0 = no limit"},
                {"kafka_mailer_relay_throttled_total", "counter",
                 "rate cuts after replies that said this relay was sent to "
                 "too fast"},
        };
        static const struct worker_family limit[] = {
                {"kafka_mailer_limit_rate", "gauge",
                 "msgs/s this worker may send to this limit's domains now, 0 = "
                 "no limit"},
                {"kafka_mailer_limit_waiting", "gauge",
                 "transactions waiting for this limit"},
                {"kafka_mailer_limit_sessions", "gauge",
                 "transactions to this limit's domains under way"},
                {"kafka_mailer_limit_throttled_total", "counter",
                 "rate cuts after replies that said these domains were sent "
                 "to too fast"},
        };
        char label[80];

        for (size_t f = 0; f < sizeof(relay) / sizeof(relay[0]); f++) {
                for (size_t i = 0; i < relays_count(rs); i++) {
                        struct smtp_stats ss;
                        struct relays_pacing p;
                        const char *name = relays_stats(rs, i, &ss);
                        double v[6];

                        relays_relay_pacing(rs, i, &p);
                        v[0] = ss.relay_healthy;
                        v[1] = (double)ss.sessions_open;
                        v[2] = (double)(ss.jobs_queued + p.waiting);
                        v[3] = (double)ss.relay_failures_total;
                        v[4] = p.rate;
                        v[5] = (double)p.throttled_total;
                        snprintf(label, sizeof(label), "relay=\"%s\"", name);
                        metrics_sample(out, relay[f].name, relay[f].type,
                                       relay[f].help, label, v[f]);
                }
        }
        for (size_t f = 0; f < sizeof(limit) / sizeof(limit[0]); f++) {
                for (size_t i = 0; i < relays_limit_count(rs); i++) {
                        struct relays_pacing p;
                        const char *name = relays_limit_pacing(rs, i, &p);
                        double v[4] = {p.rate, (double)p.waiting,
                                       (double)p.busy,
                                       (double)p.throttled_total};

                        snprintf(label, sizeof(label), "limit=\"%s\"", name);
                        metrics_sample(out, limit[f].name, limit[f].type,
                                       limit[f].help, label, v[f]);
                }
        }
        metrics_sample(out, "kafka_mailer_limit_deferrals_total", "counter",
                       "sends a rate or session limit put off to the retry "
                       "topic (limit.queue.max.ms)",
                       NULL, (double)relays_deferrals(rs));
}

static void worker_render_kafka(metrics_out_t *out, kstatus_t *ks);

/* The label of each topic's samples, by TOPIC_REQUESTS / TOPIC_RETRY. */
static const char *const topic_labels[] = {"topic=\"requests\"",
                                           "topic=\"retry\""};

/* A counter of each topic's consumer, 0 for a topic without one. */
static void worker_sample_consumers(metrics_out_t *out, const worker_t *w,
                                    const char *name, const char *help,
                                    uint64_t (*get)(const consumer_t *)) {
        for (int t = 0; t < w->w_topic_cnt; t++)
                metrics_sample(out, name, "counter", t == 0 ? help : NULL,
                               topic_labels[t],
                               w->w_topics[t].wt_consumer
                                       ? (double)get(w->w_topics[t].wt_consumer)
                                       : 0);
}

static void worker_render_metrics(metrics_out_t *out, void *opaque) {
        worker_t *w = opaque;
        struct smtp_stats ss;
        const struct worker_stats *st = &w->w_stats;

        relays_stats_total(w->w_relays, &ss);
        metrics_sample(out, "kafka_mailer_requests_consumed_total", "counter",
                       "requests consumed (both topics)", NULL,
                       (double)st->consumed);
        metrics_sample(
                out, "kafka_mailer_results_total", "counter",
                "requests this worker finished, by status (repeats are in duplicates_total)",
                "status=\"sent\"", (double)st->sent);
        metrics_sample(out, "kafka_mailer_results_total", "counter", NULL,
                       "status=\"failed\"", (double)st->failed);
        metrics_sample(out, "kafka_mailer_results_total", "counter", NULL,
                       "status=\"rejected\"", (double)st->rejected);
        metrics_sample(out, "kafka_mailer_results_total", "counter", NULL,
                       "status=\"expired\"", (double)st->expired);
        metrics_sample(out, "kafka_mailer_retries_total", "counter",
                       "transient failures retried", NULL, (double)st->retries);
        metrics_sample(out, "kafka_mailer_retry_handoffs_total", "counter",
                       "requests moved to the retry topic", NULL,
                       (double)st->handoffs);
        metrics_sample(out, "kafka_mailer_duplicates_total", "counter",
                       "repeated request ids answered from an earlier result",
                       NULL, (double)st->duplicates);
        for (int t = 0; t < w->w_topic_cnt; t++)
                metrics_sample(
                        out, "kafka_mailer_inflight", "gauge",
                        t == 0 ? "requests held, by topic" : NULL,
                        topic_labels[t],
                        (double)ledger_inflight(w->w_topics[t].wt_ledger));
        for (int t = 0; t < w->w_topic_cnt; t++)
                metrics_sample(out, "kafka_mailer_inflight_limit", "gauge",
                               t == 0 ? "in-flight limit, by topic" : NULL,
                               topic_labels[t],
                               (double)ledger_limit(w->w_topics[t].wt_ledger));
        for (int t = 0; t < w->w_topic_cnt; t++)
                metrics_sample(out, "kafka_mailer_held", "gauge",
                               t == 0 ? "requests consumed and not yet covered "
                                        "by a confirmed commit, by topic"
                                      : NULL,
                               topic_labels[t],
                               (double)ledger_held(w->w_topics[t].wt_ledger));
        for (int t = 0; t < w->w_topic_cnt; t++)
                metrics_sample(
                        out, "kafka_mailer_consumption_paused", "gauge",
                        t == 0 ? "1 while the in-flight limit stops "
                                 "consumption, by topic"
                               : NULL,
                        topic_labels[t],
                        w->w_topics[t].wt_consumer
                                ? consumer_paused(w->w_topics[t].wt_consumer)
                                : 0);
        worker_sample_consumers(out, w, "kafka_mailer_fetch_nudges_total",
                                "fetch nudges sent (fetch.nudge.ms), by topic",
                                consumer_nudges);
        worker_sample_consumers(out, w, "kafka_mailer_fetch_restarts_total",
                                "partitions that delivered nothing for "
                                "fetch.stall.ms while behind their end, their "
                                "fetch restarted, by topic",
                                consumer_fetch_restarts);
        metrics_histogram(out, "kafka_mailer_request_duration_seconds",
                          "from a request's first consumption to its final "
                          "outcome (sent, failed or expired; retries "
                          "included)",
                          &st->request_latency);
        metrics_histogram(out, "kafka_mailer_send_duration_seconds",
                          "from handing a transaction to the relays to its "
                          "outcome (waits for limits and sessions included)",
                          &st->send_latency);
        metrics_sample(out, "kafka_mailer_outcome_unknown", "gauge",
                       "sends whose outcome a crash now would lose: SMTP "
                       "transactions under way plus mail sent whose result "
                       "Kafka has not acknowledged (what a kill may repeat)",
                       NULL, (double)(ss.transactions + w->w_sent_unacked));
        metrics_sample(out, "kafka_mailer_recalled_total", "counter",
                       "final outcomes read from the results topic at "
                       "assignment",
                       NULL, (double)st->recalled);
        metrics_sample(out, "kafka_mailer_recall_incomplete_total", "counter",
                       "partitions let through before the results topic was "
                       "read to its end (dedupe.recall.timeout.ms, "
                       "dedupe.capacity)",
                       NULL, (double)st->recall_incomplete);
        metrics_sample(out, "kafka_mailer_stalls_total", "counter",
                       "stall.warn.ms periods in which requests were held and "
                       "nothing was consumed, finished or committed",
                       NULL, (double)st->stalls);
        metrics_sample(out, "kafka_mailer_commits_unanswered_total", "counter",
                       "offset commits not answered within commit.timeout.ms; "
                       "what they carried was offered again",
                       NULL, (double)st->commits_unanswered);
        metrics_sample(out, "kafka_mailer_results_unacknowledged", "gauge",
                       "result records not yet acknowledged by Kafka", NULL,
                       (double)results_pending(w->w_results));
        metrics_sample(out, "kafka_mailer_results_producer_replaced_total",
                       "counter",
                       "results producers replaced after results.stall.ms "
                       "with no delivery report while Kafka answered",
                       NULL, (double)results_renewals(w->w_results));
        metrics_sample(out, "kafka_mailer_smtp_sessions", "gauge",
                       "SMTP sessions open (connecting or connected)", NULL,
                       (double)ss.sessions_open);
        metrics_sample(out, "kafka_mailer_smtp_sessions_busy", "gauge",
                       "SMTP sessions in a transaction", NULL,
                       (double)ss.sessions_busy);
        metrics_sample(out, "kafka_mailer_smtp_queued", "gauge",
                       "messages waiting for an SMTP session", NULL,
                       (double)ss.jobs_queued);
        metrics_sample(out, "kafka_mailer_smtp_sessions_opened_total",
                       "counter", "SMTP sessions opened", NULL,
                       (double)ss.sessions_opened_total);
        metrics_sample(out, "kafka_mailer_smtp_pipelined_total", "counter",
                       "messages whose MAIL, RCPT and DATA were written "
                       "behind the end of data of the message before on the "
                       "same session",
                       NULL, (double)ss.pipelined_total);
        metrics_sample(
                out, "kafka_mailer_relay_healthy", "gauge",
                "0 while the relay is backed off after refusing a session",
                NULL, ss.relay_healthy);
        metrics_sample(out, "kafka_mailer_relay_failures_total", "counter",
                       "session set-ups the relay refused or that failed", NULL,
                       (double)ss.relay_failures_total);
        worker_render_relays(out, w->w_relays);
        signer_render(w->w_signer, out);
        worker_render_kafka(out, w->w_kstatus);
}

/* /readyz: Kafka answers and has refused nothing lately (kstatus). */
static int worker_ready(char *reason, size_t reason_size, void *opaque) {
        worker_t *w = opaque;

        if (w->w_stop || w->w_stopping) {
                snprintf(reason, reason_size, "stopping");
                return 0;
        }
        return kstatus_ready(w->w_kstatus, loop_clock_ms(), NULL, reason,
                             reason_size);
}

static void worker_render_kafka(metrics_out_t *out, kstatus_t *ks) {
        static const char *const labels[KCAUSE_CNT] = {
                NULL, "cause=\"authentication\"", "cause=\"tls\"",
                "cause=\"authorization\"", "cause=\"transport\""};

        metrics_sample(out, "kafka_mailer_kafka_ready", "gauge",
                       "1 when Kafka answers and refused nothing lately "
                       "(as /readyz)",
                       NULL, kstatus_ready(ks, loop_clock_ms(), NULL, NULL, 0));
        for (int c = KCAUSE_AUTHENTICATION; c < KCAUSE_CNT; c++)
                metrics_sample(
                        out, "kafka_mailer_kafka_errors_total", "counter",
                        c == KCAUSE_AUTHENTICATION
                                ? "errors from Kafka that refuse the "
                                  "worker access, by cause"
                                : NULL,
                        labels[c], (double)kstatus_errors(ks, (enum kcause)c));
}

static int worker_health(char *reason, size_t reason_size, void *opaque) {
        worker_t *w = opaque;

        if (w->w_stop || w->w_stopping) {
                snprintf(reason, reason_size, "stopping");
                return 0;
        }
        return 1;
}

/* ---- life cycle ---- */

worker_t *worker_new(const struct config *conf, char *errstr,
                     size_t errstr_size) {
        static const struct consumer_handlers handlers = {
                .on_message = worker_on_message,
                .on_assign = worker_on_assign,
                .on_revoke = worker_on_revoke,
                .on_commit = worker_on_commit,
        };
        worker_t *w = calloc(1, sizeof(*w));

        if (!w) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        w->w_conf = conf;
        message_scratch_init(&w->w_msg_scratch);
        if (conf->topic_requests[0] == '^' || conf->topic_retry[0] == '^') {
                /* A pattern would subscribe to topics the worker cannot tell
                 * apart, and their messages would be dropped. */
                snprintf(errstr, errstr_size,
                         "topic.requests, topic.retry: topic patterns (^...) "
                         "are not supported");
                free(w);
                return NULL;
        }
        w->w_limits.max_bytes = (size_t)conf->request_max_bytes;
        w->w_limits.max_recipients = (size_t)conf->request_max_recipients;
        w->w_limits.max_subject_bytes = (size_t)conf->request_max_subject_bytes;
        w->w_limits.max_header_bytes = (size_t)conf->request_max_header_bytes;
        w->w_retry.attempts_max = conf->retry_attempts_max;
        w->w_retry.backoff_initial_ms = conf->retry_backoff_initial_ms;
        w->w_retry.backoff_max_ms = conf->retry_backoff_max_ms;
        w->w_retry.jitter_percent = conf->retry_jitter_percent;
        w->w_retry.window_ms = conf->retry_window_ms;
        w->w_retry.local_window_ms = conf->retry_local_window_ms;
        w->w_topics[TOPIC_REQUESTS].wt_name = conf->topic_requests;
        w->w_topic_cnt = 1;
        if (conf->topic_retry[0]) {
                const char *group = "kafka-mailer";
                size_t n;

                for (size_t i = 0; i < conf->kafka_consumer_cnt; i++)
                        if (strcmp(conf->kafka_consumer[i].key, "group.id") ==
                            0)
                                group = conf->kafka_consumer[i].value;
                n = strlen(group) + sizeof(".retry");
                w->w_retry_group = malloc(n);
                if (!w->w_retry_group) {
                        free(w);
                        snprintf(errstr, errstr_size, "out of memory");
                        return NULL;
                }
                snprintf(w->w_retry_group, n, "%s.retry", group);
                w->w_topics[TOPIC_RETRY].wt_name = conf->topic_retry;
                w->w_topic_cnt = 2;
        }
        loop_timer_init(&w->w_commit_timer, worker_on_commit_timer, w);
        for (int t = 0; t < WORKER_TOPICS_MAX; t++) {
                struct worker_topic *wt = &w->w_topics[t];

                wt->wt_worker = w;
                wt->wt_index = t;
                loop_timer_init(&wt->wt_revoke.rv_timer, worker_on_revoke_timer,
                                wt);
        }
        for (int t = 0; t < w->w_topic_cnt; t++) {
                struct ledger_conf lc;

                lc.limit = (size_t)(t == TOPIC_RETRY ? conf->retry_inflight_max
                                                     : conf->inflight_max);
                lc.resume_percent = conf->inflight_resume_percent;
                lc.results_end = worker_results_end;
                lc.opaque = w;
                w->w_topics[t].wt_ledger = ledger_new(&lc);
                if (!w->w_topics[t].wt_ledger) {
                        snprintf(errstr, errstr_size, "out of memory");
                        goto fail;
                }
        }
        w->w_loop = loop_new();
        if (!w->w_loop) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail;
        }
        if (conf->dedupe_capacity > 0) {
                w->w_dedupe = dedupe_new((size_t)conf->dedupe_capacity,
                                         conf->dedupe_ttl_ms);
                if (!w->w_dedupe) {
                        snprintf(errstr, errstr_size, "out of memory");
                        goto fail;
                }
        }
        w->w_signer = signer_new(conf, errstr, errstr_size);
        if (!w->w_signer)
                goto fail;
        w->w_relays = relays_new(w->w_loop, conf, worker_on_smtp_done, w,
                                 errstr, errstr_size);
        if (!w->w_relays)
                goto fail;
        w->w_kstatus = kstatus_new(conf->ready_error_window_ms);
        if (!w->w_kstatus) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
        }
        w->w_results =
                results_new(w->w_loop, conf, worker_on_ack, worker_on_nack,
                            w->w_kstatus, errstr, errstr_size);
        if (!w->w_results)
                goto fail;
        if (w->w_dedupe && conf->dedupe_recall_timeout_ms > 0) {
                w->w_recall = recall_new(
                        w->w_loop, conf, (size_t)conf->dedupe_capacity,
                        worker_on_recall, w, errstr, errstr_size);
                if (!w->w_recall)
                        goto fail;
        }
        for (int t = 0; t < w->w_topic_cnt; t++) {
                struct worker_topic *wt = &w->w_topics[t];

                wt->wt_consumer = consumer_new(
                        w->w_loop, conf,
                        t == TOPIC_RETRY ? w->w_retry_group : NULL, wt->wt_name,
                        &handlers, wt, w->w_kstatus, errstr, errstr_size);
                if (!wt->wt_consumer)
                        goto fail;
                if (w->w_recall)
                        consumer_hold_assigned(wt->wt_consumer);
        }
        if (conf->metrics_listen[0]) {
                w->w_metrics = metrics_new(w->w_loop, conf->metrics_listen,
                                           worker_render_metrics, worker_health,
                                           w, errstr, errstr_size);
                if (!w->w_metrics)
                        goto fail;
                metrics_set_ready(w->w_metrics, worker_ready);
        }
        loop_timer_start(w->w_loop, &w->w_commit_timer,
                         conf->commit_interval_ms);
        return w;

fail:
        worker_destroy(w);
        return NULL;
}

void worker_stop(worker_t *w) {
        w->w_stop = 1;
        loop_wakeup(w->w_loop);
}

/* @returns why a consumer cannot go on, or NULL. */
static const char *worker_consumer_fatal(const worker_t *w) {
        for (int t = 0; t < w->w_topic_cnt; t++) {
                const char *why = consumer_fatal(w->w_topics[t].wt_consumer);

                if (why)
                        return why;
        }
        return NULL;
}

/* @returns whether a consumer of @w is emptying a revoke, or is between an
 * incremental unassign and the assignment callback after it. */
static int worker_consumers_moving(const worker_t *w) {
        for (int t = 0; t < w->w_topic_cnt; t++) {
                const consumer_t *c = w->w_topics[t].wt_consumer;

                if ((c && consumer_revoking_parts(c)) ||
                    consumer_awaits_assignment(c))
                        return 1;
        }
        return 0;
}

/* Before the consumers close: runs the loop until none is emptying a revoke
 * (one may come during the drain's last commits) or waiting for the
 * assignment callback after its unassign, for at most half of what is left
 * of shutdown.timeout.ms and WORKER_SETTLE_MAX_MS; then finishes what is
 * still being emptied. Closed in between, librdkafka's closing unassign was
 * seen to wait for ever (consumer_awaits_assignment()). */
static void worker_settle_before_close(worker_t *w) {
        int left = worker_stop_left_ms(w) / 2;
        int64_t until =
                loop_clock_ms() +
                (left < WORKER_SETTLE_MAX_MS ? left : WORKER_SETTLE_MAX_MS);

        while (worker_consumers_moving(w) && loop_clock_ms() < until)
                loop_run_once(w->w_loop, WORKER_DRAIN_STEP_MS);
        for (int t = 0; t < w->w_topic_cnt; t++)
                worker_revoke_finish(w, &w->w_topics[t]);
}

int worker_run(worker_t *w) {
        size_t left;
        int fatal;

        LOG(LL_INFO,
            "worker started id=%s version=%s librdkafka=%s "
            "group.protocol=%s topic=%s retry_topic=%s relay=%s inflight.max=%d",
            w->w_conf->worker_id, KM_VERSION, rd_kafka_version_str(),
            w->w_conf->group_protocol == CONFIG_GROUP_CONSUMER ? "consumer"
                                                               : "classic",
            w->w_conf->topic_requests,
            w->w_topic_cnt > 1 ? w->w_conf->topic_retry : "-",
            w->w_conf->smtp_url, w->w_conf->inflight_max);
        while (!w->w_stop && !results_fatal(w->w_results) &&
               !worker_consumer_fatal(w))
                loop_run_once(w->w_loop, WORKER_IDLE_WAIT_MS);
        fatal = results_fatal(w->w_results) || worker_consumer_fatal(w);

        LOG(LL_INFO, "stopping: draining in-flight sends inflight=%zu",
            worker_entries_of(w, NULL));
        for (int t = 0; t < w->w_topic_cnt; t++)
                consumer_set_paused(w->w_topics[t].wt_consumer, 1);
        w->w_stopping = 1;
        w->w_stop_deadline_ms =
                loop_clock_ms() + w->w_conf->shutdown_timeout_ms;
        /* The drain leaves the commits and the group's goodbye part of
         * shutdown.timeout.ms: a quarter, at most commit.timeout.ms. Without
         * a producer no result can be acknowledged: nothing to wait for. */
        left = worker_drain(w, NULL,
                            results_fatal(w->w_results)
                                    ? 0
                                    : w->w_conf->shutdown_timeout_ms -
                                              worker_stop_reserve_ms(w->w_conf),
                            1);
        for (int t = 0; t < w->w_topic_cnt; t++) {
                worker_revoke_finish(w, &w->w_topics[t]);
                worker_commit(w, &w->w_topics[t], NULL, 0);
        }
        worker_settle_before_close(w);
        /* Its thread reads committed offsets through the consumers. */
        recall_destroy(w->w_recall);
        w->w_recall = NULL;
        for (int t = 0; t < w->w_topic_cnt; t++) {
                consumer_close(w->w_topics[t].wt_consumer,
                               worker_stop_left_ms(w));
                w->w_topics[t].wt_consumer = NULL;
        }
        LOG(LL_INFO,
            "stopped consumed=%llu sent=%llu failed=%llu rejected=%llu "
            "expired=%llu duplicates=%llu commits=%llu left=%zu",
            (unsigned long long)w->w_stats.consumed,
            (unsigned long long)w->w_stats.sent,
            (unsigned long long)w->w_stats.failed,
            (unsigned long long)w->w_stats.rejected,
            (unsigned long long)w->w_stats.expired,
            (unsigned long long)w->w_stats.duplicates,
            (unsigned long long)w->w_stats.commits_answered, left);
        if (fatal)
                return 2;
        if (w->w_exit_status)
                return w->w_exit_status;
        return left > 0 ? 1 : 0;
}

void worker_destroy(worker_t *w) {
        struct entry *e;

        if (!w)
                return;
        w->w_stopping = 1;
        metrics_destroy(w->w_metrics);
        w->w_metrics = NULL;
        recall_destroy(w->w_recall);
        w->w_recall = NULL;
        for (int t = 0; t < WORKER_TOPICS_MAX; t++) {
                /* A revoke not finished: its partitions go back
                 * uncommitted (consumer_close()). */
                if (w->w_loop)
                        loop_timer_stop(w->w_loop,
                                        &w->w_topics[t].wt_revoke.rv_timer);
                consumer_close(w->w_topics[t].wt_consumer,
                               w->w_conf->commit_timeout_ms);
                w->w_topics[t].wt_consumer = NULL;
        }
        /* Entries left are not final: their requests were not committed. */
        relays_destroy(w->w_relays);
        w->w_relays = NULL;
        /* Acknowledgements served while flushing still find their entries. */
        results_destroy(w->w_results, 1000);
        w->w_results = NULL;
        for (int t = 0; t < WORKER_TOPICS_MAX; t++)
                if (w->w_topics[t].wt_ledger)
                        ledger_release_all(w->w_topics[t].wt_ledger);
        while ((e = w->w_entries) != NULL) {
                e->e_followers = NULL;
                e->e_following = NULL;
                entry_destroy(e, 0);
        }
        /* After the entries: the last of a partition's frees it. */
        for (int t = 0; t < WORKER_TOPICS_MAX; t++) {
                ledger_destroy(w->w_topics[t].wt_ledger);
                w->w_topics[t].wt_ledger = NULL;
        }
        dedupe_destroy(w->w_dedupe);
        message_scratch_fini(&w->w_msg_scratch);
        signer_destroy(w->w_signer);
        free(w->w_retry_group);
        if (w->w_loop)
                loop_timer_stop(w->w_loop, &w->w_commit_timer);
        loop_destroy(w->w_loop);
        kstatus_destroy(w->w_kstatus);
        free(w);
}
