#include "consumer.h"

#include <errno.h>
#include <time.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kconf.h"
#include "ledger.h"
#include "log.h"

/* Messages handled per wake-up before other fds get a turn. */
#define CONSUMER_BATCH 1000
/* How errors name the consumer's settings. */
#define CONSUMER_SCOPE "kafka.consumer"
/* librdkafka needs rd_kafka_consumer_poll() well within max.poll.interval.ms
 * even while every partition is paused. */
#define CONSUMER_POLL_MS 100
/* Longest a cooperative rebalance is assumed to last between its rounds
 * (librdkafka before 2.10 only, see consumer_new()). */
#define CONSUMER_REBALANCE_MAX_MS 10000
/* librdkafka versions (rd_kafka_version()) whose behaviour the consumer
 * follows. */
#define CONSUMER_RDK_FETCH_BACKOFF 0x020200ff /* fetch.queue.backoff.ms */
#define CONSUMER_RDK_REBALANCE_COMMIT 0x020a00ff /* commits in a rebalance ok */
#define CONSUMER_RDK_KIP848 0x020c00ff /* group.protocol=consumer GA */
/* librdkafka's own log level (syslog), without debug lines. */
#define CONSUMER_RDK_LOG_INFO 6
/* What fetch.nudge.ms=-1 means before CONSUMER_RDK_FETCH_BACKOFF. */
#define CONSUMER_NUDGE_DEFAULT_MS 50
/* librdkafka's debug line (context cgrp) that says the broker lacks the
 * KIP-848 protocol; librdkafka itself only retries, silently. */
#define CONSUMER_NO_KIP848                                                     \
        "ConsumerGroupHeartbeatRequest not supported by broker"
/* librdkafka's debug lines (context cgrp) for a JoinGroup request sent
 * (facility "JOIN") and for its response (facility "JOINGROUP"). */
#define CONSUMER_JOIN_SENT "Joining group"
#define CONSUMER_JOIN_FAC "JOIN"
#define CONSUMER_JOINED_FAC "JOINGROUP"
/* How long the nudger waits for the end offsets it asked for (only the
 * request matters; this bounds how long closing waits for the thread). */
#define CONSUMER_NUDGE_WAIT_MS 500
/* The partition count: how long one metadata request may wait, and how
 * often it is asked again (partitions can be added). */
#define CONSUMER_COUNT_WAIT_MS 1000
#define CONSUMER_COUNT_SLICE_MS 100 /* one metadata request waits this long */
/* The same request is the readiness probe (kstatus): it is sent every
 * CONSUMER_PROBE_S seconds. */
#define CONSUMER_PROBE_S 3
/* How long after a partition's queue was forwarded to its topic's queue it
 * is forwarded again on each timer tick. librdkafka's fetch stop, which a
 * broker thread runs some time after an unassignment, clears the
 * forwarding of the partition's queue (rd_kafka_toppar_fetch_stop()): a
 * stop still pending from an earlier assignment of the same partition would
 * undo a newer forward, and the partition's messages would stay in its own
 * queue for good. A forward again is a no-op when nothing undid it. The
 * stop can come much later (a broker thread that was reconnecting through
 * an outage runs it once the broker is back): after that, the partition is
 * forwarded again every CONSUMER_REFORWARD_SLOW_MS for as long as it is
 * assigned (until it is held or revoked). */
#define CONSUMER_REFORWARD_MS 5000
#define CONSUMER_REFORWARD_SLOW_MS 1000
/* How often the fetch watch (fetch.stall.ms) looks at the partitions. */
#define CONSUMER_WATCH_MS 1000
/* Consumers that may be left to the process's exit (consumer_close()): a
 * worker has two. */
#define CONSUMER_LEFT_RUNNING_MAX 4

/*
 * The fetch nudger. librdkafka 2.0.2 stops fetching a partition while the
 * prefetch queue is above queued.max.messages.kbytes and looks again only
 * when its broker thread wakes up: at the latest a second later, or when a
 * request is queued for that broker. A worker that empties the queue faster
 * than that waited, idle, for the rest of the second (benchmark B1: half
 * its rate). When the queue has run dry while Kafka holds more, a helper
 * thread asks the partitions' leaders for their end offsets
 * (rd_kafka_offsets_for_times(), which blocks, hence the thread): one
 * ListOffsets request per leader, which wakes its broker thread.
 */
struct consumer_nudger {
        pthread_t n_thread;
        pthread_mutex_t n_lock;
        pthread_cond_t n_cond;
        rd_kafka_topic_partition_list_t *n_parts; /* to ask about, or NULL */
        int n_stop;
        int n_started;
        int n_count_wanted; /* the topic's partition count, asked for */
        _Atomic int32_t n_count; /* the last one learnt, 0 = none yet */
};

/* The messages of the subscribed topic. */
struct consumer_mq {
        char *mq_topic;
        rd_kafka_queue_t *mq_queue; /* every assigned partition forwards here */
        int mq_pipe[2];
        int mq_paused;
};

/* A partition forwarded to the topic's queue and still assigned: forwarded
 * again on each tick until f_until_ms (CONSUMER_REFORWARD_MS), then at
 * f_next_ms (every CONSUMER_REFORWARD_SLOW_MS). The fetch watch keeps the
 * worker's position in it as last reported, and how long a partition behind
 * its end has delivered nothing while the worker waited for messages. */
struct consumer_fwd {
        int32_t f_partition;
        int64_t f_until_ms;
        int64_t f_next_ms;
        int64_t f_pos;
        int64_t f_idle_ms;
};

struct consumer {
        loop_t *c_loop;
        rd_kafka_t *c_rk;
        rd_kafka_queue_t *c_queue; /* events: rebalances, errors, commits */
        int c_pipe[2];
        struct consumer_mq c_mq;
        loop_timer_t c_timer;
        struct consumer_handlers c_h;
        void *c_opaque;
        uint64_t c_commit_errors;
        int c_meta_refused_told; /* OFFSET_METADATA_TOO_LARGE was logged */
        /* Loop time of a cooperative revoke whose second round has not
         * ended yet (0: none), and the assignment callbacks still to come
         * before it has: one closes the revoke's round, one the next. */
        int64_t c_revoked_ms;
        int c_rounds_left;
        /* A revoke the owner is emptying (consumer_revoke_done() gives the
         * partitions back), or NULL; and whether it is incremental. */
        rd_kafka_topic_partition_list_t *c_revoking;
        int c_revoking_coop;
        /* An incremental unassign was made and the assignment callback
         * librdkafka serves after it has not come yet. */
        int c_await_assign;
        int c_closing;
        int c_hold_assigned; /* consumer_hold_assigned() */
        int c_group_consumer; /* group.protocol=consumer (KIP-848) */
        /* Commits between the two rounds of a cooperative rebalance fail and
         * make librdkafka before 2.10 drop the assignment as lost: hold
         * them (classic protocol on such a librdkafka only). */
        int c_hold_in_rebalance;
        /* On such a librdkafka, also from the moment librdkafka sends a
         * JoinGroup request (its debug line, seen on its thread) until the
         * response: a commit sent behind the request is answered after the
         * broker moved to the next generation, and the assignment is
         * dropped as lost. 0: no join under way. Bounded by
         * max.poll.interval.ms, the longest the broker holds a join. */
        atomic_llong c_join_ms;
        int64_t c_join_max_ms;
        atomic_int c_no_kip848; /* set from librdkafka's threads */
        /* The worker turned librdkafka's debug lines on: to watch for
         * CONSUMER_NO_KIP848, off again at the first assignment; to watch
         * for JoinGroup requests (c_hold_in_rebalance), kept on. */
        int c_debug_ours;
        const char *c_fatal; /* why the consumer cannot go on, or NULL */
        kstatus_t *c_ks; /* where access errors and probes go (not owned) */
        const char *c_client; /* how c_ks names this consumer */
        struct log_repeat c_errors; /* log.repeat.ms */
        int c_stall_ms; /* fetch.stall.ms; 0: no fetch watch */
        int64_t c_watch_next_ms;
        uint64_t c_fetch_restarts;
        int c_nudge_ms; /* fetch.nudge.ms; 0: no nudger */
        int64_t c_nudge_last_ms;
        uint64_t c_nudges;
        struct consumer_nudger c_nudger;
        struct consumer_fwd *c_fwd;
        size_t c_fwd_cnt;
        size_t c_fwd_cap;
};

static void consumer_drain(consumer_t *c);

/* @returns whether @topic is the one subscribed. */
static int consumer_ours(const consumer_t *c, const char *topic) {
        return c->c_mq.mq_topic && strcmp(c->c_mq.mq_topic, topic) == 0;
}

/* Sends the messages of @parts to the topic's message queue, which is read
 * only while the worker takes work, so that back-pressure needs
 * no pause/resume (after a resume librdkafka 2.0.2 was measured to take about
 * 1 s to deliver again, which capped a worker near inflight.max messages per
 * second). */
static void consumer_forward_one(consumer_t *c, int32_t partition) {
        rd_kafka_queue_t *pq = rd_kafka_queue_get_partition(
                c->c_rk, c->c_mq.mq_topic, partition);

        if (!pq)
                return;
        rd_kafka_queue_forward(pq, c->c_mq.mq_queue);
        rd_kafka_queue_destroy(pq);
}

/* Drops partition @partition from the list forwarded again. */
static void consumer_fwd_forget(consumer_t *c, int32_t partition) {
        for (size_t i = 0; i < c->c_fwd_cnt; i++)
                if (c->c_fwd[i].f_partition == partition)
                        c->c_fwd[i--] = c->c_fwd[--c->c_fwd_cnt];
}

static void consumer_forward(consumer_t *c,
                             const rd_kafka_topic_partition_list_t *parts) {
        int64_t until = loop_now_ms(c->c_loop) + CONSUMER_REFORWARD_MS;

        for (int i = 0; i < parts->cnt; i++) {
                int32_t partition = parts->elems[i].partition;

                if (!consumer_ours(c, parts->elems[i].topic))
                        continue;
                consumer_forward_one(c, partition);
                if (c->c_closing)
                        continue;
                consumer_fwd_forget(c, partition);
                if (c->c_fwd_cnt == c->c_fwd_cap) {
                        size_t cap = c->c_fwd_cap ? c->c_fwd_cap * 2 : 16;
                        struct consumer_fwd *n =
                                realloc(c->c_fwd, cap * sizeof(*n));

                        if (!n)
                                abort();
                        c->c_fwd = n;
                        c->c_fwd_cap = cap;
                }
                c->c_fwd[c->c_fwd_cnt].f_partition = partition;
                c->c_fwd[c->c_fwd_cnt].f_until_ms = until;
                c->c_fwd[c->c_fwd_cnt].f_next_ms = until;
                c->c_fwd[c->c_fwd_cnt].f_pos = RD_KAFKA_OFFSET_INVALID;
                c->c_fwd[c->c_fwd_cnt].f_idle_ms = 0;
                c->c_fwd_cnt++;
        }
}

/* Forwards again the partitions forwarded in the last CONSUMER_REFORWARD_MS,
 * and the others that are due (see CONSUMER_REFORWARD_SLOW_MS). */
static void consumer_reforward(consumer_t *c) {
        int64_t now = loop_now_ms(c->c_loop);

        for (size_t i = 0; i < c->c_fwd_cnt; i++) {
                struct consumer_fwd *f = &c->c_fwd[i];

                if (f->f_until_ms < now) {
                        if (f->f_next_ms > now)
                                continue;
                        f->f_next_ms = now + CONSUMER_REFORWARD_SLOW_MS;
                }
                consumer_forward_one(c, f->f_partition);
        }
}

/* Restarts the fetch of a partition that delivers nothing: its queue is
 * forwarded again (a no-op unless something undid it), then a seek to the
 * worker's position @pos makes librdkafka fetch it anew from there. What was
 * fetched for the old position and not consumed is dropped by librdkafka
 * (the seek's op version), also from the topic's queue, and fetched again:
 * nothing is skipped or seen twice. */
static void consumer_restart_fetch(consumer_t *c, struct consumer_fwd *f,
                                   int64_t pos, int64_t end, int64_t idle_ms) {
        rd_kafka_queue_t *pq = rd_kafka_queue_get_partition(
                c->c_rk, c->c_mq.mq_topic, f->f_partition);
        /* the partition's own queue when its forward was undone, else the
         * topic's queue it forwards to (empty when the watch counts) */
        size_t queued = pq ? rd_kafka_queue_length(pq) : 0;
        rd_kafka_topic_partition_list_t *one;
        rd_kafka_error_t *error;

        if (pq)
                rd_kafka_queue_destroy(pq);
        c->c_fetch_restarts++;
        LOG(LL_WARN,
            "partition delivers nothing while behind its end (fetch.stall.ms)"
            " topic=%s partition=%d position=%lld end=%lld idle_ms=%lld "
            "queued=%zu restarts=%llu",
            c->c_mq.mq_topic, (int)f->f_partition, (long long)pos,
            (long long)end, (long long)idle_ms, queued,
            (unsigned long long)c->c_fetch_restarts);
        consumer_forward_one(c, f->f_partition);
        one = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(one, c->c_mq.mq_topic, f->f_partition)
                ->offset = pos;
        /* timeout 0: asynchronous, the loop does not wait */
        error = rd_kafka_seek_partitions(c->c_rk, one, 0);
        rd_kafka_topic_partition_list_destroy(one);
        if (error) {
                LOG(LL_WARN, "seek failed topic=%s partition=%d err=%s",
                    c->c_mq.mq_topic, (int)f->f_partition,
                    rd_kafka_error_string(error));
                rd_kafka_error_destroy(error);
        }
}

/* The fetch watch, every CONSUMER_WATCH_MS: a forwarded partition whose
 * position (the next offset the worker takes) is below its end as of the
 * last fetch, and that delivered nothing during fetch.stall.ms of the worker
 * waiting for messages (the ticks at which consumption was not paused by
 * the in-flight limit and the topic's queue was empty: only they count),
 * has its fetch restarted (consumer_restart_fetch()), and again after each
 * further such period while it lasts. librdkafka reports no position for a
 * partition until a message of it is consumed, also after a seek: the last
 * one it reported stands until then (none yet: not watched). A broker that
 * is down or frozen shows the same (a seek then does no harm); librdkafka
 * was seen, rarely, to fetch a partition no more after the broker came back,
 * without a word. */
static void consumer_watch_fetch(consumer_t *c) {
        int64_t now = loop_now_ms(c->c_loop);
        int64_t step;
        int waiting;
        rd_kafka_topic_partition_list_t *pos;

        if (c->c_stall_ms <= 0 || c->c_fwd_cnt == 0 || c->c_closing ||
            now < c->c_watch_next_ms)
                return;
        waiting = !c->c_mq.mq_paused &&
                  rd_kafka_queue_length(c->c_mq.mq_queue) == 0;
        /* a tick late (a busy loop) counts as one */
        step = c->c_watch_next_ms ? CONSUMER_WATCH_MS : 0;
        c->c_watch_next_ms = now + CONSUMER_WATCH_MS;
        pos = rd_kafka_topic_partition_list_new((int)c->c_fwd_cnt);
        for (size_t i = 0; i < c->c_fwd_cnt; i++)
                rd_kafka_topic_partition_list_add(pos, c->c_mq.mq_topic,
                                                  c->c_fwd[i].f_partition);
        if (rd_kafka_position(c->c_rk, pos) != RD_KAFKA_RESP_ERR_NO_ERROR) {
                rd_kafka_topic_partition_list_destroy(pos);
                return;
        }
        for (size_t i = 0; i < c->c_fwd_cnt; i++) {
                struct consumer_fwd *f = &c->c_fwd[i];
                int64_t at = pos->elems[i].offset, lo, hi;

                if (at >= 0 && at != f->f_pos) {
                        f->f_pos = at; /* moved: delivering */
                        f->f_idle_ms = 0;
                        continue;
                }
                if (f->f_pos < 0 ||
                    rd_kafka_get_watermark_offsets(c->c_rk, c->c_mq.mq_topic,
                                                   f->f_partition, &lo,
                                                   &hi) != 0 ||
                    hi <= f->f_pos) {
                        f->f_idle_ms = 0; /* unknown, or nothing to take */
                        continue;
                }
                if (!waiting)
                        continue; /* the worker is busy: not counted */
                f->f_idle_ms += step;
                if (f->f_idle_ms < c->c_stall_ms)
                        continue;
                consumer_restart_fetch(c, f, f->f_pos, hi, f->f_idle_ms);
                f->f_idle_ms = 0;
        }
        rd_kafka_topic_partition_list_destroy(pos);
}

/* Keeps the messages of @parts in their partitions' own queues:
 * forwarding to nothing also stops librdkafka from forwarding them to the
 * consumer queue when fetching starts (RD_KAFKA_Q_F_FWD_APP). */
static void consumer_hold(consumer_t *c,
                          const rd_kafka_topic_partition_list_t *parts) {
        for (int i = 0; i < parts->cnt; i++) {
                rd_kafka_queue_t *pq;

                if (!consumer_ours(c, parts->elems[i].topic))
                        continue;
                /* Held means held: not forwarded again either. */
                consumer_fwd_forget(c, parts->elems[i].partition);
                pq = rd_kafka_queue_get_partition(c->c_rk,
                                                  parts->elems[i].topic,
                                                  parts->elems[i].partition);
                if (!pq)
                        continue;
                rd_kafka_queue_forward(pq, NULL);
                rd_kafka_queue_destroy(pq);
        }
}

void consumer_hold_assigned(consumer_t *c) {
        c->c_hold_assigned = 1;
}

void consumer_release(consumer_t *c, const char *topic, int32_t partition) {
        rd_kafka_topic_partition_list_t *one =
                rd_kafka_topic_partition_list_new(1);

        rd_kafka_topic_partition_list_add(one, topic, partition);
        /* Messages already held move to the topic's queue with it. */
        consumer_forward(c, one);
        rd_kafka_topic_partition_list_destroy(one);
        loop_timer_start(c->c_loop, &c->c_timer, 0);
}

rd_kafka_resp_err_t consumer_committed(consumer_t *c,
                                       rd_kafka_topic_partition_list_t *parts,
                                       int timeout_ms) {
        return rd_kafka_committed(c->c_rk, parts, timeout_ms);
}

/* Logs a failed assignment change (the incremental call's @error, which it
 * destroys, or the eager call's @ret). */
static void consumer_assign_result(rd_kafka_error_t *error,
                                   rd_kafka_resp_err_t ret) {
        if (error) {
                LOG(LL_ERROR, "assignment change failed err=%s",
                    rd_kafka_error_string(error));
                rd_kafka_error_destroy(error);
        } else if (ret) {
                LOG(LL_ERROR, "assignment change failed err=%s",
                    rd_kafka_err2str(ret));
        }
}

/* Takes @parts out of the assignment: incrementally under a cooperative
 * protocol, else the whole assignment. */
static void consumer_unassign(consumer_t *c,
                              const rd_kafka_topic_partition_list_t *parts,
                              int cooperative) {
        rd_kafka_error_t *error = NULL;
        rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;

        if (cooperative) {
                error = rd_kafka_incremental_unassign(c->c_rk, parts);
                c->c_await_assign = !error && !c->c_closing;
                /* Under the classic protocol a second round follows; a
                 * commit sent before it ends fails with an old generation,
                 * and librdkafka before 2.10 then drops the whole
                 * assignment as lost. KIP-848 has one round. */
                if (c->c_hold_in_rebalance) {
                        c->c_revoked_ms = loop_clock_ms();
                        c->c_rounds_left = 2;
                }
        } else {
                ret = rd_kafka_assign(c->c_rk, NULL);
        }
        consumer_assign_result(error, ret);
}

void consumer_revoke_done(consumer_t *c) {
        rd_kafka_topic_partition_list_t *parts = c->c_revoking;

        if (!parts)
                return;
        c->c_revoking = NULL;
        consumer_unassign(c, parts, c->c_revoking_coop);
        rd_kafka_topic_partition_list_destroy(parts);
}

const rd_kafka_topic_partition_list_t *
consumer_revoking_parts(const consumer_t *c) {
        return c->c_revoking;
}

/* @returns whether partition @partition is being revoked: its messages
 * still queued are not handed over. */
static int consumer_revoking(const consumer_t *c, int32_t partition) {
        const rd_kafka_topic_partition_list_t *r = c->c_revoking;

        for (int i = 0; r && i < r->cnt; i++)
                if (r->elems[i].partition == partition &&
                    consumer_ours(c, r->elems[i].topic))
                        return 1;
        return 0;
}

static void consumer_want_count(consumer_t *c);

/* librdkafka's rebalance callback, run from rd_kafka_consumer_poll() in
 * consumer_drain(). A revoke is handed to the owner to empty the partitions
 * through the loop (deferred), not here: librdkafka waits for the unassign
 * (consumer_revoke_done()) and keeps the membership alive meanwhile. */
static void consumer_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                  rd_kafka_topic_partition_list_t *parts,
                                  void *opaque) {
        consumer_t *c = opaque;
        int cooperative =
                c->c_group_consumer ||
                strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
        rd_kafka_error_t *error = NULL;
        rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;

        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && c->c_debug_ours &&
            !c->c_hold_in_rebalance) {
                /* The broker speaks KIP-848: nothing left to watch for. The
                 * level check comes before librdkafka formats a line. */
                rd_kafka_set_log_level(rk, CONSUMER_RDK_LOG_INFO);
                c->c_debug_ours = 0;
        }
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                LOG(LL_INFO,
                    "partitions assigned topic=%s count=%d cooperative=%d",
                    c->c_mq.mq_topic, parts->cnt, cooperative);
                c->c_await_assign = 0;
                atomic_store(&c->c_join_ms, 0);
                /* Before the assignment: once fetching starts, librdkafka
                 * forwards a partition queue the application has not. */
                if (c->c_hold_assigned)
                        consumer_hold(c, parts);
                if (cooperative)
                        error = rd_kafka_incremental_assign(rk, parts);
                else
                        ret = rd_kafka_assign(rk, parts);
                if (!error && !ret) {
                        if (!c->c_hold_assigned)
                                consumer_forward(c, parts);
                        c->c_h.on_assign(c->c_opaque, parts);
                }
                consumer_want_count(c);
                if (c->c_rounds_left > 0 && --c->c_rounds_left == 0)
                        c->c_revoked_ms = 0;
                consumer_assign_result(error, ret);
        } else {
                int lost = err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS ||
                           rd_kafka_assignment_lost(rk);
                /* Not while closing (rd_kafka_consumer_close() waits for the
                 * unassign) nor beside a revoke still being emptied. */
                int deferred = !lost && !c->c_closing && !c->c_revoking;

                if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
                        LOG(LL_INFO,
                            "partitions revoked topic=%s count=%d lost=%d",
                            c->c_mq.mq_topic, parts->cnt, lost);
                else {
                        kstatus_error(c->c_ks, loop_clock_ms(), c->c_client,
                                      err, "rebalance failed");
                        LOG(LL_ERROR, "rebalance error err=%s",
                            rd_kafka_err2str(err));
                }
                /* Their messages stay in their own queues, dropped with
                 * the partitions. */
                consumer_hold(c, parts);
                if (deferred) {
                        c->c_revoking =
                                rd_kafka_topic_partition_list_copy(parts);
                        c->c_revoking_coop = cooperative;
                }
                c->c_h.on_revoke(c->c_opaque, parts, lost, deferred);
                if (!deferred)
                        consumer_unassign(c, parts, cooperative);
        }
}

/* A broker whose offset.metadata.max.bytes is below the worker's commit
 * metadata (LEDGER_META_MAX at most, docs/wire-format.md) refuses every
 * commit whose metadata is longer, and the metadata grows with the results
 * offset it names: says so once, in words an operator can act on. */
static void
consumer_check_meta_refused(consumer_t *c,
                            const rd_kafka_topic_partition_list_t *offsets,
                            rd_kafka_resp_err_t err) {
        int refused = err == RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE;

        for (int i = 0; !refused && offsets && i < offsets->cnt; i++)
                refused = offsets->elems[i].err ==
                          RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE;
        if (!refused || c->c_meta_refused_told)
                return;
        c->c_meta_refused_told = 1;
        LOG(LL_ERROR,
            "Kafka refuses the offset commit metadata as too large: the "
            "broker's offset.metadata.max.bytes must be at least %d (the "
            "worker's commit metadata, docs/wire-format.md); commits whose "
            "metadata is longer are not stored until it is raised topic=%s",
            LEDGER_META_MAX, c->c_mq.mq_topic);
}

static void consumer_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                               rd_kafka_topic_partition_list_t *offsets,
                               void *opaque) {
        consumer_t *c = opaque;

        (void)rk;
        consumer_check_meta_refused(c, offsets, err);
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
                c->c_commit_errors++;
                kstatus_error(c->c_ks, loop_clock_ms(), c->c_client, err,
                              "offset commit failed");
                LOG(LL_WARN, "offset commit failed err=%s partitions=%d",
                    rd_kafka_err2str(err), offsets ? offsets->cnt : 0);
        }
        c->c_h.on_commit(c->c_opaque, offsets, err);
}

/* librdkafka's log lines: written through log_rdkafka(), and watched for the
 * one that says the broker lacks the KIP-848 protocol and, where commits
 * are held in a rebalance, for a JoinGroup request and its response. Runs
 * on librdkafka's threads: it only sets atomic values the loop reads. */
static void consumer_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                            const char *buf) {
        consumer_t *c = rd_kafka_opaque(rk);

        if (c && c->c_group_consumer && strstr(buf, CONSUMER_NO_KIP848))
                atomic_store(&c->c_no_kip848, 1);
        if (c && c->c_hold_in_rebalance) {
                if (strcmp(fac, CONSUMER_JOIN_FAC) == 0 &&
                    strstr(buf, CONSUMER_JOIN_SENT))
                        atomic_store(&c->c_join_ms, loop_clock_ms());
                else if (strcmp(fac, CONSUMER_JOINED_FAC) == 0)
                        atomic_store(&c->c_join_ms, 0);
        }
        log_rdkafka(rk, level, fac, buf);
}

static void consumer_error_cb(rd_kafka_t *rk, int err, const char *reason,
                              void *opaque) {
        consumer_t *c = opaque;
        unsigned long held;

        (void)rk;
        kstatus_error(c->c_ks, loop_clock_ms(), c->c_client,
                      (rd_kafka_resp_err_t)err, reason);
        if (log_repeat_pass(&c->c_errors, err, loop_clock_ms(), &held))
                LOG(LL_WARN, "consumer error err=%s reason=%s repeated=%lu",
                    rd_kafka_err2name((rd_kafka_resp_err_t)err), reason, held);
}

/* Handles one message or error. */
static void consumer_dispatch(consumer_t *c, rd_kafka_message_t *m) {
        if (m->err) {
                kstatus_error(c->c_ks, loop_clock_ms(), c->c_client, m->err,
                              rd_kafka_message_errstr(m));
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        LOG(LL_WARN, "consume error err=%s",
                            rd_kafka_message_errstr(m));
        } else if (!m->rkt || !consumer_ours(c, rd_kafka_topic_name(m->rkt))) {
                LOG(LL_ERROR, "message of a topic not subscribed topic=%s",
                    rd_kafka_topic_name(m->rkt));
        } else if (c->c_revoking && consumer_revoking(c, m->partition)) {
                /* Queued before its partition's revoke: the next owner
                 * consumes it. */
        } else {
                c->c_h.on_message(c->c_opaque, m);
        }
        rd_kafka_message_destroy(m);
}

/* Learns the topic's partition count (the metadata request blocks), and
 * tells c_ks whether the broker answered (the readiness probe). */
static int consumer_nudger_stopping(struct consumer_nudger *n) {
        int stop;

        pthread_mutex_lock(&n->n_lock);
        stop = n->n_stop;
        pthread_mutex_unlock(&n->n_lock);
        return stop;
}

static void consumer_learn_count(consumer_t *c, rd_kafka_topic_t *rkt) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;

        if (!rkt)
                return;
        /* in slices, so that a stop (which joins this thread) waits for
         * one slice at most while no broker answers */
        for (int waited = 0;; waited += CONSUMER_COUNT_SLICE_MS) {
                err = rd_kafka_metadata(c->c_rk, 0, rkt, &md,
                                        CONSUMER_COUNT_SLICE_MS);
                if (err != RD_KAFKA_RESP_ERR__TIMED_OUT ||
                    waited + CONSUMER_COUNT_SLICE_MS >=
                            CONSUMER_COUNT_WAIT_MS ||
                    consumer_nudger_stopping(&c->c_nudger))
                        break;
        }
        kstatus_probe(c->c_ks, loop_clock_ms(), err == 0);
        if (err)
                return;
        if (md->topic_cnt == 1 && md->topics[0].err)
                kstatus_error(c->c_ks, loop_clock_ms(), c->c_client,
                              md->topics[0].err, "topic metadata refused");
        if (md->topic_cnt == 1 && !md->topics[0].err &&
            md->topics[0].partition_cnt > 0)
                c->c_nudger.n_count = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
}

/* The helper thread: fetch nudges, and the partition count now and then
 * (partitions can be added). */
static void *consumer_nudger_main(void *arg) {
        consumer_t *c = arg;
        struct consumer_nudger *n = &c->c_nudger;
        rd_kafka_topic_t *rkt =
                rd_kafka_topic_new(c->c_rk, c->c_mq.mq_topic, NULL);

        struct timespec until;

        clock_gettime(CLOCK_REALTIME, &until);
        pthread_mutex_lock(&n->n_lock);
        for (;;) {
                rd_kafka_topic_partition_list_t *parts;

                while (!n->n_stop && !n->n_parts && !n->n_count_wanted) {
                        if (pthread_cond_timedwait(&n->n_cond, &n->n_lock,
                                                   &until) == ETIMEDOUT)
                                n->n_count_wanted = 1;
                }
                if (n->n_stop)
                        break;
                if (n->n_count_wanted) {
                        n->n_count_wanted = 0;
                        pthread_mutex_unlock(&n->n_lock);
                        consumer_learn_count(c, rkt);
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_sec += CONSUMER_PROBE_S;
                        pthread_mutex_lock(&n->n_lock);
                        continue;
                }
                parts = n->n_parts;
                n->n_parts = NULL;
                pthread_mutex_unlock(&n->n_lock);
                /* The answer does not matter: the request woke the
                 * leaders' broker threads. */
                rd_kafka_offsets_for_times(c->c_rk, parts,
                                           CONSUMER_NUDGE_WAIT_MS);
                rd_kafka_topic_partition_list_destroy(parts);
                pthread_mutex_lock(&n->n_lock);
        }
        pthread_mutex_unlock(&n->n_lock);
        if (rkt)
                rd_kafka_topic_destroy(rkt);
        return NULL;
}

/* Asks the helper thread for the partition count. */
static void consumer_want_count(consumer_t *c) {
        if (!c->c_nudger.n_started)
                return;
        pthread_mutex_lock(&c->c_nudger.n_lock);
        c->c_nudger.n_count_wanted = 1;
        pthread_cond_signal(&c->c_nudger.n_cond);
        pthread_mutex_unlock(&c->c_nudger.n_lock);
}

int32_t consumer_partition_count(const consumer_t *c) {
        return c->c_nudger.n_count;
}

/* Called when the message queue ran dry: nudges the fetcher (at most every
 * fetch.nudge.ms) when an assigned partition has more in Kafka than the
 * worker took, by the high watermark of the last fetch. */
static void consumer_nudge(consumer_t *c) {
        rd_kafka_topic_partition_list_t *parts = NULL;
        rd_kafka_topic_partition_list_t *lagging = NULL;
        int64_t now = loop_now_ms(c->c_loop);

        if (c->c_nudge_ms <= 0 || now - c->c_nudge_last_ms < c->c_nudge_ms)
                return;
        c->c_nudge_last_ms = now;
        if (rd_kafka_assignment(c->c_rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
                return;
        if (parts->cnt > 0 &&
            rd_kafka_position(c->c_rk, parts) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                for (int i = 0; i < parts->cnt; i++) {
                        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
                        int64_t lo, hi;

                        if (tp->offset < 0 ||
                            rd_kafka_get_watermark_offsets(
                                    c->c_rk, tp->topic, tp->partition, &lo,
                                    &hi) != RD_KAFKA_RESP_ERR_NO_ERROR ||
                            hi <= tp->offset)
                                continue;
                        if (!lagging)
                                lagging = rd_kafka_topic_partition_list_new(
                                        parts->cnt);
                        rd_kafka_topic_partition_list_add(lagging, tp->topic,
                                                          tp->partition)
                                ->offset = RD_KAFKA_OFFSET_END;
                }
        }
        rd_kafka_topic_partition_list_destroy(parts);
        if (!lagging)
                return;
        c->c_nudges++;
        pthread_mutex_lock(&c->c_nudger.n_lock);
        if (c->c_nudger.n_parts)
                rd_kafka_topic_partition_list_destroy(c->c_nudger.n_parts);
        c->c_nudger.n_parts = lagging;
        pthread_cond_signal(&c->c_nudger.n_cond);
        pthread_mutex_unlock(&c->c_nudger.n_lock);
}

static void consumer_nudger_stop(consumer_t *c) {
        struct consumer_nudger *n = &c->c_nudger;

        if (!n->n_started)
                return;
        pthread_mutex_lock(&n->n_lock);
        n->n_stop = 1;
        pthread_cond_signal(&n->n_cond);
        pthread_mutex_unlock(&n->n_lock);
        pthread_join(n->n_thread, NULL);
        n->n_started = 0;
        if (n->n_parts)
                rd_kafka_topic_partition_list_destroy(n->n_parts);
        n->n_parts = NULL;
        pthread_cond_destroy(&n->n_cond);
        pthread_mutex_destroy(&n->n_lock);
}

/* Serves the event queue always and the message queue while not paused. */
static void consumer_drain(consumer_t *c) {
        rd_kafka_message_t *m;
        int i;

        if (c->c_closing)
                return;
        /* Events (rebalance callbacks run in here); a message only shows up
         * here before its partition's queue was forwarded. */
        while ((m = rd_kafka_consumer_poll(c->c_rk, 0)) != NULL)
                consumer_dispatch(c, m);
        for (i = 0; i < CONSUMER_BATCH && !c->c_mq.mq_paused; i++) {
                m = rd_kafka_consume_queue(c->c_mq.mq_queue, 0);
                if (!m) {
                        consumer_nudge(c);
                        break;
                }
                consumer_dispatch(c, m);
        }
        if (i == CONSUMER_BATCH)
                /* More may be queued: come back on the next iteration. */
                loop_timer_start(c->c_loop, &c->c_timer, 0);
}

static void consumer_on_pipe(loop_t *loop, int fd, unsigned events,
                             void *opaque) {
        char buf[64];

        (void)loop;
        (void)events;
        while (read(fd, buf, sizeof(buf)) > 0)
                ;
        consumer_drain(opaque);
}

static void consumer_on_timer(loop_t *loop, void *opaque) {
        consumer_t *c = opaque;

        if (!c->c_fatal && atomic_load(&c->c_no_kip848)) {
                c->c_fatal = "the broker does not support group.protocol="
                             "consumer (KIP-848 needs Kafka 4.0 or newer): "
                             "set group.protocol=classic";
                LOG(LL_ERROR,
                    "consumer group cannot be joined topic=%s "
                    "reason=%s",
                    c->c_mq.mq_topic ? c->c_mq.mq_topic : "-", c->c_fatal);
        }

        if (c->c_fwd_cnt > 0 && !c->c_closing) {
                consumer_reforward(c);
                consumer_watch_fetch(c);
        }
        /* Also keeps the membership alive while every partition is
         * paused and no event wakes the loop. */
        loop_timer_start(loop, &c->c_timer, CONSUMER_POLL_MS);
        consumer_drain(c);
}

/* Adds librdkafka's debug context "cgrp" to those already set: its debug
 * lines are the only sign that a broker lacks the KIP-848 protocol, and
 * that a classic member sent a JoinGroup request (consumer_log_cb()). They
 * are logged at level debug only; for the KIP-848 watch, when the user set
 * no debug context of their own, they stop at the first assignment. */
static int consumer_debug_cgrp(consumer_t *c, rd_kafka_conf_t *kc, char *errstr,
                               size_t errstr_size) {
        char debug[512], value[560];
        size_t n = sizeof(debug);

        if (rd_kafka_conf_get(kc, "debug", debug, &n) != RD_KAFKA_CONF_OK)
                debug[0] = '\0';
        if (strstr(debug, "cgrp") || strstr(debug, "all"))
                return 0;
        c->c_debug_ours = debug[0] == '\0';
        snprintf(value, sizeof(value), "%s%scgrp", debug, debug[0] ? "," : "");
        return kconf_set(kc, CONSUMER_SCOPE, "debug", value, errstr,
                         errstr_size);
}

/* Reads max.poll.interval.ms, the rebalance timeout a classic member sends
 * with its JoinGroup request: the broker answers the request within it. */
static int consumer_join_max(consumer_t *c, rd_kafka_conf_t *kc, char *errstr,
                             size_t errstr_size) {
        char value[32];
        size_t n = sizeof(value);

        if (rd_kafka_conf_get(kc, "max.poll.interval.ms", value, &n) !=
            RD_KAFKA_CONF_OK) {
                snprintf(errstr, errstr_size,
                         "kafka.consumer.max.poll.interval.ms: not readable");
                return -1;
        }
        c->c_join_max_ms = strtoll(value, NULL, 10);
        return 0;
}

/* librdkafka refuses a fetch.max.bytes below message.max.bytes: a larger
 * message.max.bytes (kafka.message.max.bytes reaches both clients) raises
 * the default fetch.max.bytes with it. */
static int consumer_fetch_fit(rd_kafka_conf_t *kc, char *errstr,
                              size_t errstr_size) {
        char msg_max[32], fetch_max[32];
        size_t n1 = sizeof(msg_max), n2 = sizeof(fetch_max);

        if (rd_kafka_conf_get(kc, "message.max.bytes", msg_max, &n1) !=
                    RD_KAFKA_CONF_OK ||
            rd_kafka_conf_get(kc, "fetch.max.bytes", fetch_max, &n2) !=
                    RD_KAFKA_CONF_OK ||
            strtoll(fetch_max, NULL, 10) >= strtoll(msg_max, NULL, 10))
                return 0;
        return kconf_set(kc, CONSUMER_SCOPE, "fetch.max.bytes", msg_max, errstr,
                         errstr_size);
}

consumer_t *consumer_new(loop_t *loop, const struct config *conf,
                         const char *group_id, const char *topic,
                         const struct consumer_handlers *h, void *opaque,
                         kstatus_t *ks, char *errstr, size_t errstr_size) {
        static const char *const defaults[][2] = {
                {"auto.offset.reset", "earliest"},
                /* 2 MiB: at 1,000 in flight on a backlog 3 MiB less than
                 * 4 MiB (benchmark B3), and B1's rate the same within its
                 * noise; the queue is refilled 20 ms after it was full
                 * (fetch.queue.backoff.ms below). */
                {"queued.max.messages.kbytes", "2048"},
                /* A fetch response stays in memory while any of its messages
                 * is queued: with librdkafka's defaults (1 MiB a partition,
                 * 50 MiB a fetch) the worker held about 60 MiB of prefetched
                 * requests on a backlog, whatever queued.max.messages.kbytes
                 * said. The fetch sizes count compressed bytes, and the queue
                 * passes its limit by about one fetch, decompressed: with
                 * 256 KiB fetches of lz4 requests librdkafka's decompressed
                 * batches took 11-15 MiB of the heap at 1,000 in flight,
                 * with 64 KiB 6.5 MiB (benchmark B3 under heaptrack).
                 * librdkafka wants fetch.max.bytes >= message.max.bytes,
                 * which bounds only the consumer's own requests. */
                {"max.partition.fetch.bytes", "65536"},
                {"message.max.bytes", "65536"},
                {"fetch.max.bytes", "65536"},
                /* A topic the consumer was refused (a missing ACL) is
                 * looked at again at the next metadata refresh: every 10 s
                 * instead of librdkafka's 5 minutes, so that access given
                 * back is used within seconds. */
                {"topic.metadata.refresh.interval.ms", "10000"},
        };
        /* Settings the delivery contract depends on: not overridable. */
        static const char *const fixed[][2] = {
                {"enable.auto.commit", "false"},
                {"enable.auto.offset.store", "false"},
                {"enable.partition.eof", "false"},
        };
        rd_kafka_conf_t *kc = NULL;
        rd_kafka_topic_partition_list_t *topics = NULL;
        rd_kafka_resp_err_t err;
        consumer_t *c;
        char rderr[512];

        c = calloc(1, sizeof(*c));
        if (!c) {
                snprintf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        c->c_loop = loop;
        c->c_h = *h;
        c->c_opaque = opaque;
        c->c_ks = ks;
        c->c_client = "consumer";
        c->c_pipe[0] = c->c_pipe[1] = -1;
        c->c_mq.mq_pipe[0] = c->c_mq.mq_pipe[1] = -1;
        loop_timer_init(&c->c_timer, consumer_on_timer, c);

        c->c_group_consumer = conf->group_protocol == CONFIG_GROUP_CONSUMER;
        if (c->c_group_consumer && rd_kafka_version() < CONSUMER_RDK_KIP848) {
                snprintf(errstr, errstr_size,
                         "group.protocol=consumer needs librdkafka 2.12 or "
                         "newer; this worker runs librdkafka %s",
                         rd_kafka_version_str());
                goto fail;
        }
        c->c_hold_in_rebalance =
                !c->c_group_consumer &&
                rd_kafka_version() < CONSUMER_RDK_REBALANCE_COMMIT;

        kc = rd_kafka_conf_new();
        if (kconf_set_table(kc, CONSUMER_SCOPE, defaults,
                            sizeof(defaults) / sizeof(defaults[0]), errstr,
                            errstr_size))
                goto fail;
        /* From librdkafka 2.2 on, a partition whose prefetch queue was full
         * is fetched again only after fetch.queue.backoff.ms (1 s by
         * default), whatever empties the queue sooner: the worker idled
         * half a second at a time (benchmark B1). */
        if (rd_kafka_version() >= CONSUMER_RDK_FETCH_BACKOFF &&
            kconf_set(kc, CONSUMER_SCOPE, "fetch.queue.backoff.ms", "20",
                      errstr, errstr_size))
                goto fail;
        if (c->c_group_consumer) {
                if (kconf_set(kc, CONSUMER_SCOPE, "group.protocol", "consumer",
                              errstr, errstr_size))
                        goto fail;
        } else if (kconf_set(kc, CONSUMER_SCOPE,
                             "partition.assignment.strategy",
                             "cooperative-sticky", errstr, errstr_size) ||
                   /* The second round of a cooperative rebalance starts
                    * when every member has seen, in its next heartbeat,
                    * that the first one ended; commits wait for it. 1 s
                    * instead of librdkafka's 3 s. */
                   kconf_set(kc, CONSUMER_SCOPE, "heartbeat.interval.ms",
                             "1000", errstr, errstr_size)) {
                goto fail;
        }
        if (kconf_set_kvs(kc, CONSUMER_SCOPE, conf->kafka_consumer,
                          conf->kafka_consumer_cnt, NULL, errstr, errstr_size))
                goto fail;
        if (group_id && kconf_set(kc, CONSUMER_SCOPE, "group.id", group_id,
                                  errstr, errstr_size))
                goto fail;
        if (consumer_fetch_fit(kc, errstr, errstr_size))
                goto fail;
        if ((c->c_group_consumer || c->c_hold_in_rebalance) &&
            consumer_debug_cgrp(c, kc, errstr, errstr_size))
                goto fail;
        if (c->c_hold_in_rebalance &&
            consumer_join_max(c, kc, errstr, errstr_size))
                goto fail;
        if (kconf_set_table(kc, CONSUMER_SCOPE, fixed,
                            sizeof(fixed) / sizeof(fixed[0]), errstr,
                            errstr_size))
                goto fail;
        rd_kafka_conf_set_rebalance_cb(kc, consumer_rebalance_cb);
        rd_kafka_conf_set_offset_commit_cb(kc, consumer_commit_cb);
        rd_kafka_conf_set_error_cb(kc, consumer_error_cb);
        rd_kafka_conf_set_log_cb(kc, consumer_log_cb);
        rd_kafka_conf_set_opaque(kc, c);

        c->c_rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, rderr, sizeof(rderr));
        if (!c->c_rk) {
                snprintf(errstr, errstr_size, "consumer: %s", rderr);
                goto fail;
        }
        kc = NULL; /* owned by c_rk now */
        rd_kafka_poll_set_consumer(c->c_rk);

        if (pipe2(c->c_pipe, O_NONBLOCK | O_CLOEXEC) == -1) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        c->c_queue = rd_kafka_queue_get_consumer(c->c_rk);
        if (!c->c_queue) {
                snprintf(errstr, errstr_size,
                         "kafka.group.id: a consumer group id "
                         "is required");
                goto fail;
        }
        rd_kafka_queue_io_event_enable(c->c_queue, c->c_pipe[1], "1", 1);
        if (loop_io_add(loop, c->c_pipe[0], LOOP_READ, consumer_on_pipe, c)) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail;
        }
        c->c_mq.mq_topic = strdup(topic);
        if (!c->c_mq.mq_topic ||
            pipe2(c->c_mq.mq_pipe, O_NONBLOCK | O_CLOEXEC) == -1) {
                snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto fail;
        }
        c->c_mq.mq_queue = rd_kafka_queue_new(c->c_rk);
        rd_kafka_queue_io_event_enable(c->c_mq.mq_queue, c->c_mq.mq_pipe[1],
                                       "1", 1);
        if (loop_io_add(loop, c->c_mq.mq_pipe[0], LOOP_READ, consumer_on_pipe,
                        c)) {
                snprintf(errstr, errstr_size, "loop: %s", strerror(errno));
                goto fail;
        }
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
        c->c_stall_ms = conf->fetch_stall_ms;
        c->c_nudge_ms = conf->fetch_nudge_ms;
        if (c->c_nudge_ms < 0)
                c->c_nudge_ms = rd_kafka_version() < CONSUMER_RDK_FETCH_BACKOFF
                                        ? CONSUMER_NUDGE_DEFAULT_MS
                                        : 0;
        {
                pthread_mutex_init(&c->c_nudger.n_lock, NULL);
                pthread_cond_init(&c->c_nudger.n_cond, NULL);
                c->c_nudger.n_count_wanted = 1; /* before the thread reads it */
                if (pthread_create(&c->c_nudger.n_thread, NULL,
                                   consumer_nudger_main, c) != 0) {
                        pthread_cond_destroy(&c->c_nudger.n_cond);
                        pthread_mutex_destroy(&c->c_nudger.n_lock);
                        snprintf(errstr, errstr_size,
                                 "consumer: cannot start its helper thread");
                        goto fail;
                }
                c->c_nudger.n_started = 1;
        }
        err = rd_kafka_subscribe(c->c_rk, topics);
        if (err) {
                snprintf(errstr, errstr_size, "subscribe: %s",
                         rd_kafka_err2str(err));
                goto fail;
        }
        rd_kafka_topic_partition_list_destroy(topics);
        topics = NULL;
        loop_timer_start(loop, &c->c_timer, CONSUMER_POLL_MS);
        return c;

fail:
        if (kc)
                rd_kafka_conf_destroy(kc);
        if (topics)
                rd_kafka_topic_partition_list_destroy(topics);
        c->c_closing = 1;
        consumer_close(c, 0);
        return NULL;
}

/* Consumers that could not leave their group in time: librdkafka's
 * rd_kafka_destroy() would wait for the group (40 s and more with Kafka
 * away), so their handles, and the consumers their callbacks point to, are
 * left to the process's exit. */
static consumer_t *consumer_left_running[CONSUMER_LEFT_RUNNING_MAX];

void consumer_close(consumer_t *c, int timeout_ms) {
        rd_kafka_queue_t *q;
        rd_kafka_error_t *error;
        int closing;
        int64_t deadline = loop_clock_ms() + (timeout_ms > 0 ? timeout_ms : 0);

        if (!c)
                return;
        loop_timer_stop(c->c_loop, &c->c_timer);
        if (c->c_pipe[0] != -1) {
                loop_io_del(c->c_loop, c->c_pipe[0]);
                close(c->c_pipe[0]);
                c->c_pipe[0] = -1;
        }
        if (c->c_mq.mq_pipe[0] != -1) {
                loop_io_del(c->c_loop, c->c_mq.mq_pipe[0]);
                close(c->c_mq.mq_pipe[0]);
                c->c_mq.mq_pipe[0] = -1;
        }
        if (c->c_queue) {
                rd_kafka_queue_io_event_enable(c->c_queue, -1, NULL, 0);
                rd_kafka_queue_destroy(c->c_queue);
        }
        if (c->c_mq.mq_queue) {
                rd_kafka_queue_io_event_enable(c->c_mq.mq_queue, -1, NULL, 0);
                rd_kafka_queue_destroy(c->c_mq.mq_queue);
        }
        consumer_nudger_stop(c);
        if (c->c_rk) {
                /* A revoke still being emptied: the close waits for it. */
                consumer_revoke_done(c);
                if (c->c_await_assign) {
                        /* Closed now, librdkafka's closing unassign could
                         * wait for ever (consumer_awaits_assignment()): the
                         * handle goes without leaving the group. */
                        LOG(LL_WARN,
                            "consumer closed between an unassign and the "
                            "assignment after it, without leaving the group: "
                            "its partitions move when the member's session "
                            "times out topic=%s",
                            c->c_mq.mq_topic);
                        rd_kafka_destroy_flags(
                                c->c_rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
                        c->c_rk = NULL;
                }
        }
        if (c->c_rk) {
                /* Leaves the group, serving the final revoke through the
                 * rebalance callback, for at most @timeout_ms: with Kafka
                 * away rd_kafka_consumer_close() waited 40 s. */
                c->c_closing = 1;
                q = rd_kafka_queue_new(c->c_rk);
                error = rd_kafka_consumer_close_queue(c->c_rk, q);
                closing = error == NULL;
                if (error) {
                        LOG(LL_WARN, "consumer close err=%s",
                            rd_kafka_error_string(error));
                        rd_kafka_error_destroy(error);
                }
                while (closing && !rd_kafka_consumer_closed(c->c_rk)) {
                        int64_t left = deadline - loop_clock_ms();

                        if (left <= 0)
                                break;
                        rd_kafka_queue_poll_callback(
                                q, left < CONSUMER_POLL_MS ? (int)left
                                                           : CONSUMER_POLL_MS);
                }
                rd_kafka_queue_destroy(q);
                if (!closing || rd_kafka_consumer_closed(c->c_rk)) {
                        rd_kafka_destroy(c->c_rk);
                } else {
                        LOG(LL_WARN,
                            "consumer group not left within %d ms: "
                            "its partitions move when the member's "
                            "session times out",
                            timeout_ms);
                        for (size_t i = 0;
                             i < sizeof(consumer_left_running) /
                                         sizeof(consumer_left_running[0]);
                             i++) {
                                if (!consumer_left_running[i]) {
                                        consumer_left_running[i] = c;
                                        return;
                                }
                        }
                        rd_kafka_destroy_flags(
                                c->c_rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
                }
        }
        if (c->c_pipe[1] != -1)
                close(c->c_pipe[1]);
        if (c->c_mq.mq_pipe[1] != -1)
                close(c->c_mq.mq_pipe[1]);
        free(c->c_mq.mq_topic);
        free(c->c_fwd);
        free(c);
}

void consumer_set_paused(consumer_t *c, int paused) {
        struct consumer_mq *mq = &c->c_mq;

        if (mq->mq_paused == paused)
                return;
        mq->mq_paused = paused;
        LOG(LL_DEBUG, "consumption %s topic=%s", paused ? "paused" : "resumed",
            mq->mq_topic);
        if (!paused)
                loop_timer_start(c->c_loop, &c->c_timer, 0);
}

int consumer_paused(const consumer_t *c) {
        return c->c_mq.mq_paused;
}

/* The answer to a commit consumer_commit() waits for. */
struct consumer_commit_wait {
        int cw_done;
        rd_kafka_resp_err_t cw_err;
};

static void consumer_commit_wait_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                    rd_kafka_topic_partition_list_t *offsets,
                                    void *opaque) {
        struct consumer_commit_wait *cw = opaque;

        (void)rk;
        (void)offsets;
        cw->cw_done = 1;
        cw->cw_err = err;
}

int consumer_commit(consumer_t *c,
                    const rd_kafka_topic_partition_list_t *offsets,
                    int wait_ms) {
        struct consumer_commit_wait cw = {0, RD_KAFKA_RESP_ERR_NO_ERROR};
        int64_t deadline = loop_clock_ms() + (wait_ms > 0 ? wait_ms : 0);
        rd_kafka_queue_t *q;
        rd_kafka_resp_err_t err;

        if (wait_ms < 0) {
                rd_kafka_commit(c->c_rk, offsets, 1);
                return 0;
        }
        /* rd_kafka_commit(.., 0) waits as long as librdkafka likes: with
         * the coordinator away, a session timeout (45 s) on SIGTERM. The
         * answer comes on a queue of our own, waited for at most @wait_ms. */
        q = rd_kafka_queue_new(c->c_rk);
        err = rd_kafka_commit_queue(c->c_rk, offsets, q,
                                    consumer_commit_wait_cb, &cw);
        while (!err && !cw.cw_done) {
                int64_t left = deadline - loop_clock_ms();
                rd_kafka_event_t *ev;

                if (left <= 0)
                        break;
                ev = rd_kafka_queue_poll(q, (int)left);
                if (ev &&
                    rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT) {
                        cw.cw_done = 1;
                        cw.cw_err = rd_kafka_event_error(ev);
                }
                if (ev)
                        rd_kafka_event_destroy(ev);
        }
        rd_kafka_queue_destroy(q);
        if (!err && !cw.cw_done) {
                LOG(LL_WARN,
                    "offset commit not answered within %d ms "
                    "partitions=%d",
                    wait_ms, offsets->cnt);
                return -1;
        }
        if (!err)
                err = cw.cw_err;
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
                LOG(LL_WARN, "offset commit failed err=%s",
                    rd_kafka_err2str(err));
                return -1;
        }
        if (!err)
                /* The owner learns of it now (handlers must accept hearing
                 * of the same commit twice). */
                c->c_h.on_commit(c->c_opaque, offsets, err);
        return 0;
}

const char *consumer_fatal(const consumer_t *c) {
        return c->c_fatal;
}

int consumer_awaits_assignment(const consumer_t *c) {
        return c && c->c_rk && c->c_await_assign;
}

int consumer_rebalancing(const consumer_t *c) {
        int64_t now = loop_clock_ms(), join = atomic_load(&c->c_join_ms);

        return (c->c_revoked_ms != 0 &&
                now - c->c_revoked_ms < CONSUMER_REBALANCE_MAX_MS) ||
               (join != 0 && now - join < c->c_join_max_ms);
}

int consumer_holds_commits(const consumer_t *c) {
        return c->c_hold_in_rebalance;
}

uint64_t consumer_commit_errors(const consumer_t *c) {
        return c->c_commit_errors;
}

uint64_t consumer_nudges(const consumer_t *c) {
        return c->c_nudges;
}

uint64_t consumer_fetch_restarts(const consumer_t *c) {
        return c->c_fetch_restarts;
}
