/*
 * smtp: a pool of persistent SMTP sessions to one relay, driven by the loop.
 *
 * libcurl 7.88 blocks its whole multi loop while it waits for the reply to
 * the final "." of DATA (smtp_done() -> smtp_block_statemach()), so messages
 * are not sent as libcurl transfers. A session is opened with
 * CURLOPT_CONNECT_ONLY on the multi handle: libcurl does the greeting, EHLO,
 * STARTTLS, EHLO and AUTH without blocking, then leaves the authenticated
 * connection to this module, which runs MAIL/RCPT/DATA itself with
 * curl_easy_send()/curl_easy_recv() on the socket from CURLINFO_ACTIVESOCKET,
 * pipelined (RFC 2920) when the server offers PIPELINING. A slow reply on one
 * session never stalls another.
 *
 * Jobs are queued and given to idle sessions; sessions are opened on demand
 * up to sessions_max. A failure while opening a session (connect, TLS,
 * greeting, EHLO, STARTTLS, AUTH) is about the relay, not a message: the relay
 * is marked unhealthy, no session is opened until its backoff has passed
 * (doubling from relay_backoff_initial_ms to relay_backoff_max_ms), and the
 * queued jobs wait. A relay that cannot be reached at all (connection
 * refused, host unknown, connect timeout) is tried again every
 * relay_probe_ms at most, so that sending resumes soon after it is back; one
 * that answers and refuses the session backs off in full. A failure inside a
 * transaction is the job's outcome.
 */
#ifndef KM_SMTP_H
#define KM_SMTP_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"

typedef struct smtp_client smtp_client_t;

enum smtp_outcome {
        SMTP_OK = 0, /* 2xx to the final "." (some recipients may have been
                        refused: rcpt_failures) */
        SMTP_PERMANENT, /* 5xx to MAIL, to every RCPT, to DATA or to the final
                           "."; or, with code 0, refused before MAIL because
                           of what the relay advertised (no SMTPUTF8 for a
                           UTF-8 address, a message over its SIZE) */
        SMTP_TRANSIENT, /* 4xx, timeout, disconnect or I/O error in the transaction */
        SMTP_DEFERRED, /* not tried: a rate or session limit would hold it
                          longer than limit.queue.max.ms (relays.h); send
                          it again in about defer_ms, no attempt counted */
};

/* A recipient the relay refused (RCPT answered 4xx or 5xx). */
struct smtp_rcpt_failure {
        char *rcpt;
        size_t index; /* in the job's rcpts */
        int code;
        char *reply;
};

/*
 * One message transaction. Owned by the caller, who must keep it and the
 * strings it points to alive until its done callback has run (or it was
 * cancelled).
 */
struct smtp_job {
        /* input */
        const char *mail_from;
        const char *const *rcpts;
        size_t rcpt_cnt;
        /* The dot-stuffed payload, empty or ending in CRLF; data_len does
         * not count the terminating ".\r\n", which must follow it in
         * memory (data[data_len..data_len+3)): the session sends both
         * straight from here, without a copy. */
        const char *data;
        size_t data_len;
        void *opaque; /* the caller's */

        /* output, valid in the done callback */
        enum smtp_outcome outcome;
        int code; /* SMTP reply code of the deciding reply, 0 when none */
        char reply[512]; /* its text ("2.0.0 Ok: queued as X"), or an error */
        /* Every recipient the relay refused, whatever the outcome (a
         * refusal of all of them ends the transaction before DATA); freed
         * by smtp_job_reset(). */
        struct smtp_rcpt_failure *rcpt_failures;
        size_t rcpt_failure_cnt;
        int64_t defer_ms; /* SMTP_DEFERRED: when it may go, from now */

        /* private to smtp.c */
        struct smtp_job *sj_next;
        struct smtp_job *sj_prev;
        void *sj_session;
        void *sj_client; /* the client it was submitted to */
        /* relays.c's, while the job is in its care */
        uint32_t sj_relays; /* the relays it may go to */
        void *sj_dests[4]; /* the limits it is counted against */
        unsigned char sj_dest_cnt;
        unsigned char sj_prio; /* 0 transactional, 1 bulk */
        unsigned char sj_held; /* counted in its limits' transactions */
        void *sj_wq; /* the queue it waits in, NULL when none */
        int64_t sj_enq_ms; /* when it began to wait */
        int sj_state;
};

/* Called on the loop thread when a submitted job has an outcome. */
typedef void(smtp_done_cb)(struct smtp_job *job, void *opaque);

/* Called on the loop thread when the relay turns unhealthy (a session's
 * set-up failed) or healthy again (a session opened). */
typedef void(smtp_health_cb)(void *opaque, int healthy);

/* Settings of one relay, taken from struct config. */
struct smtp_client_conf {
        const char *url; /* smtp://host:port or smtps://host:port */
        enum config_tls_mode starttls;
        const char *username; /* NULL or "": no AUTH */
        const char *password;
        const char *ca_file; /* NULL or "": system store */
        int tls_verify;
        enum config_tls_version
                tls_min_version; /* oldest TLS version accepted */
        const char *helo_name; /* NULL or "": libcurl's default */
        int pipelining;
        int pipelining_txns; /* the next MAIL right after a "." */
        int chunking; /* BDAT when the relay offers CHUNKING */
        int sessions_max;
        int session_max_messages;
        int session_idle_ms;
        int timeout_connect_ms;
        int timeout_command_ms;
        int timeout_data_ms;
        int relay_backoff_initial_ms;
        int relay_backoff_max_ms;
        int relay_probe_ms; /* longest wait while the relay is unreachable */
        /* Optional: told of health changes. */
        smtp_health_cb *health_cb;
        void *health_opaque;
        /* 1: an unhealthy relay is probed (a session opened without a job)
         * after each backoff even with no job queued, so that it is seen
         * to recover while other relays carry its traffic. */
        int probe_idle;
};

/* Fills @scc from @conf (pointers into @conf). */
void smtp_client_conf_from_config(struct smtp_client_conf *scc,
                                  const struct config *conf);

/* @returns a client for one relay, or NULL with @errstr. Strings in @scc are
 * copied. curl_global_init() must have been called. */
smtp_client_t *smtp_client_new(loop_t *loop, const struct smtp_client_conf *scc,
                               smtp_done_cb *done_cb, void *opaque,
                               char *errstr, size_t errstr_size);

/* Closes every session at once (no QUIT wait) and frees the client. Jobs not
 * done are dropped without callbacks. NULL ok. */
void smtp_client_destroy(smtp_client_t *sc);

/* Queues @job. Its done callback runs later, never from inside this call. */
void smtp_client_submit(smtp_client_t *sc, struct smtp_job *job);

/* Like smtp_client_submit(), at the head of the queue: for a job whose
 * time was chosen (paced by a rate limit), which should not wait behind
 * others for a session. */
void smtp_client_submit_first(smtp_client_t *sc, struct smtp_job *job);

/* Removes @job if it is still queued (not yet given to a session).
 * @returns 0 when removed (no callback will run), -1 when it is already in a
 * transaction (its callback will run). */
int smtp_client_cancel(smtp_client_t *sc, struct smtp_job *job);

/* Takes the oldest job still queued (not yet given to a session) off the
 * queue, for another client to send. @returns it, or NULL when none is. No
 * callback runs for it. */
struct smtp_job *smtp_client_take_queued(smtp_client_t *sc);

/* @returns the client @job was last submitted to. */
smtp_client_t *smtp_job_client(const struct smtp_job *job);

/* Frees a job's output (rcpt_failures) so it can be submitted again. */
void smtp_job_reset(struct smtp_job *job);

/* Sends QUIT on idle sessions and stops opening new ones; sessions with a job
 * finish it first. */
void smtp_client_close_idle(smtp_client_t *sc);

struct smtp_stats {
        size_t sessions_open; /* connected or connecting */
        size_t sessions_busy; /* in a transaction */
        size_t transactions; /* under way: a session may carry two (one
                                pipelined behind the other's ".") */
        size_t jobs_queued; /* waiting for a session */
        int relay_healthy; /* 0 while backing off after a relay failure */
        uint64_t sessions_opened_total;
        uint64_t relay_failures_total;
        uint64_t pipelined_total; /* jobs pipelined behind a "." */
        char last_relay_error[256]; /* "" when none */
};

void smtp_client_stats(const smtp_client_t *sc, struct smtp_stats *st);

/*
 * Parses SMTP reply lines accumulated in @buf (@len bytes). When a complete
 * reply (possibly multi-line "250-...\r\n250 ...\r\n") is at the start, sets
 * *@code, copies the text of its last line (after "NNN ") into @text
 * (truncated, NUL-terminated) and @returns the number of bytes it used;
 * @returns 0 when more bytes are needed and -1 when the bytes are not an SMTP
 * reply (or a line is over 2048 bytes).
 */
long smtp_reply_parse(const char *buf, size_t len, int *code, char *text,
                      size_t text_size);

#endif
