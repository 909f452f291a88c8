/*
 * retry: what to do with a request after a transient failure, and the retry
 * record that carries it over the retry topic (docs/wire-format.md, "Retry
 * record"). Pure: no Kafka, no SMTP, no clock; the caller gives the times
 * and the random value for the jitter.
 */
#ifndef KM_RETRY_H
#define KM_RETRY_H

#include <stddef.h>
#include <stdint.h>

/* The limits of retry.* (config keys of the same names). */
struct retry_conf {
        int attempts_max; /* retry.attempts.max: total attempts */
        int backoff_initial_ms; /* retry.backoff.initial.ms */
        int backoff_max_ms; /* retry.backoff.max.ms */
        int jitter_percent; /* retry.jitter.percent */
        int window_ms; /* retry.window.ms, counted from first consumed */
        int local_window_ms; /* retry.local.window.ms */
};

/* Where a request stands after a transient failure. */
struct retry_state {
        int attempts; /* SMTP transactions tried, the failed one included */
        int64_t now_ms; /* wall clock */
        int64_t received_ms; /* first consumed (wall clock) */
        uint64_t rnd; /* any random value, for the jitter */
        /* Some recipients have a final outcome: only a retry record keeps
         * who has the mail. */
        int partial;
        /* It may go to the retry topic: there is one, the producer works,
         * and its record is not too large for it. */
        int can_hand_over;
        /* It came from the retry topic: it goes back there, not into a
         * local wait. */
        int from_retry_topic;
        /* Its partition is being given up (revoke, shutdown). */
        int leaving;
        /* 0: an attempt failed (@attempts counts it; the backoff applies).
         * > 0: not tried, a rate or session limit lets it go in this many
         * ms: no attempt counted, and it goes to the retry topic when it
         * may (a limit's wait holds no partition's commits). */
        int64_t wait_ms;
};

enum retry_action {
        RETRY_FINISH = 0, /* final: failed, for decision.reason */
        RETRY_LOCAL, /* wait decision.delay_ms here, then send again */
        RETRY_HAND_OVER, /* to the retry topic, due at decision.due_ms */
        RETRY_ABANDON, /* leave it uncommitted: the next owner consumes it */
};

struct retry_decision {
        enum retry_action action;
        int64_t delay_ms; /* the backoff; 0 for RETRY_FINISH */
        int64_t due_ms; /* now_ms + delay_ms; 0 for RETRY_FINISH */
        char reason[128]; /* RETRY_FINISH only, else "" */
};

/*
 * Decides what follows a transient failure of a request in @st under @conf:
 * failed once retry.attempts.max attempts were made or when the next one
 * (after its backoff) would fall past retry.window.ms; else to the retry
 * topic when it may go there and it came from there, its partition is being
 * given up, some recipients are final, or the next attempt falls past
 * retry.local.window.ms; else abandoned when its partition is being given up;
 * else a local retry after the backoff. A wait for a limit (@st->wait_ms)
 * takes the place of the attempt count and the backoff.
 */
void retry_decide(const struct retry_conf *conf, const struct retry_state *st,
                  struct retry_decision *d);

/* One recipient with a final outcome, in a retry record. */
struct retry_rcpt {
        size_t index; /* in envelope order: to, cc, bcc */
        const char *recipient;
        int sent; /* 1: sent, 0: failed */
        int smtp_code;
        const char *smtp_reply; /* "" when none; never NULL once parsed */
};

/*
 * A retry record. Built by the caller with borrowed strings for
 * retry_record_format(); filled by retry_record_parse() with strings it owns
 * (retry_record_clear() frees them).
 */
struct retry_record {
        const char *id;
        const char
                *request; /* the original request's JSON text, not NUL-ended */
        size_t request_len;
        int attempts;
        int64_t due_ms;
        int64_t first_received_ms;
        int64_t request_ts_ms;
        const char *source_topic; /* NULL after parsing: not read */
        int32_t source_partition;
        int64_t source_offset;
        int last_smtp_code;
        const char
                *last_smtp_reply; /* NULL: ""; NULL after parsing: not read */
        struct retry_rcpt *rcpts; /* NULL when none */
        size_t rcpt_cnt;
};

/* @returns @r as the record's value (compact JSON, malloc'd, NUL-ended,
 * owned by the caller). Replies that are not UTF-8 are repaired
 * (jsonparse_string()). Aborts when out of memory. */
char *retry_record_format(const struct retry_record *r);

/*
 * Reads the record value @buf (@len bytes) into @r (zeroed first).
 * Unknown fields are ignored; "v", "source.topic", "last_smtp_code" and
 * "last_smtp_reply" are not read.
 * @returns 0, or -1 with @errstr ("retry record: <why>") and, when the
 * record had a string "id", a copy of it in r->id (retry_record_clear() it
 * either way).
 */
int retry_record_parse(const void *buf, size_t len, struct retry_record *r,
                       char *errstr, size_t errstr_size);

/* Frees what retry_record_parse() put in @r and zeroes it. */
void retry_record_clear(struct retry_record *r);

#endif
