/*
 * smtp: a pool of persistent SMTP sessions to one relay. See smtp.h.
 *
 * A session is a libcurl easy handle with CURLOPT_CONNECT_ONLY on the
 * client's multi handle: libcurl runs greeting, EHLO, STARTTLS and AUTH
 * inside the loop (socket and timer callbacks), then CURLMSG_DONE hands the
 * authenticated connection over. From then on this module watches the socket
 * itself and runs transactions with curl_easy_send()/curl_easy_recv().
 *
 * Facts about libcurl 7.88.1 this relies on (lib/multi.c, lib/url.c):
 * - curl_multi_remove_handle() closes a CONNECT_ONLY connection at once, so
 *   the easy handle stays on the multi handle until the session is closed;
 * - the first curl_easy_send()/recv() attaches the connection to the handle
 *   again, which keeps the connection-cache pruning away from it; before
 *   that, pruning may close a connection whose peer hung up: the
 *   CURLOPT_CLOSESOCKETFUNCTION below notices when that is one of ours;
 * - connections idle longer than CURLOPT_MAXAGE_CONN are pruned too, so it
 *   is set far beyond any session lifetime.
 *
 * - curl_easy_send()/recv() find the handle's connection by scanning the
 *   connection cache of its multi handle (Curl_getconnectinfo()): one
 *   multi handle for 5,000 sessions made each call walk 5,000 connections,
 *   half of the worker's CPU. Sessions are therefore spread over multi
 *   handles of at most SMTP_MULTI_SESSIONS each.
 *
 * A plain relay without AUTH is driven without libcurl's protocol code
 * (direct sessions, see ss_direct): the session connects by itself to an IP
 * address, or lets libcurl resolve and connect a host name (an http:// URL,
 * CONNECT_ONLY, nothing sent) and keeps the socket when the handle goes;
 * it reads the greeting and runs EHLO itself. No easy handle stays with it.
 *
 * Sessions are freed only from the client's kick timer (closed sessions wait
 * on a zombie list), so a done callback may call back into this module
 * (submit, cancel, close_idle, stats) while a session further up the stack
 * is being closed. It must not destroy the client.
 */
#include "smtp.h"
#include "bytescan.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backoff.h"
#include "dynbuf.h"
#include "log.h"

#define SMTP_LINE_MAX 2048 /* longest reply line, without CRLF */
#define SMTP_IN_MAX (64 * 1024) /* input buffer of a session, at most */
/* Bytes read at once, into the reader's stack: replies are short, and a
 * session holds input only while a reply is incomplete (session_take_input) */
#define SMTP_READ_BUF 4096
/*
 * Output buffer of a session, at most. It holds what is not sent yet of
 * one pipelined batch: MAIL, a RCPT per recipient and DATA (or a lone RSET,
 * QUIT or "."). A command line is under SMTP_CMD_MAX bytes (addresses are
 * at most 254 bytes, request.c; MAIL with all its parameters is about 320).
 * A transaction has at most smtp.transaction.max.recipients recipients
 * (default 1000: a batch of about 270 KB), and never more than a request
 * may have (request.max.recipients, at most SMTP_RCPTS_MAX).
 */
#define SMTP_CMD_MAX 512
#define SMTP_RCPTS_MAX 10000
#define SMTP_OUT_MAX ((size_t)SMTP_CMD_MAX * (SMTP_RCPTS_MAX + 2))
#define SMTP_QUIT_WAIT_MS 1000 /* how long to wait for the reply to QUIT */
/*
 * A message up to this size (with its ".\r\n") is copied into the output
 * buffer when the next transaction's commands follow it in the same write
 * (RFC 2920 pipelining across transactions); a bigger one is sent from the
 * job's buffer, and the next commands go in the write after it.
 */
#define SMTP_DATA_COPY_MAX (16 * 1024)
/*
 * Against a relay slow to give its final replies, a job is pipelined behind
 * a "." only when no session would take it sooner (client_pipeline_pays()).
 * The times compared are counted in the loop's milliseconds: this much is
 * the same as none.
 */
#define SMTP_PIPELINE_SLACK_MS 2
/* weight of a new sample in the client's running averages of the time a
 * session takes to open, to answer MAIL..DATA and to give a final reply */
#define SMTP_EWMA_WEIGHT 0.125
#define SMTP_MAXAGE_CONN_S (10L * 365 * 24 * 3600)
/* Sessions per libcurl multi handle: bounds the connection-cache scan of
 * every curl_easy_send()/recv(); a multi handle costs about 25 KB. */
#define SMTP_MULTI_SESSIONS 32
/* Least gap between two "relay unhealthy" warnings for the same error. */
#define SMTP_RELAY_WARN_MS 30000
/* The wait before a relay is tried again is spread by +/- this much. */
#define SMTP_RELAY_JITTER_PERCENT 20

/* job->sj_state */
#define SJ_IDLE 0
#define SJ_QUEUED 1
#define SJ_ACTIVE 2
#define SJ_STATE_MASK 0xff
#define SJ_F_REQUEUED 0x100 /* handed back once after a dead session */

/* A session's state; it changes only through session_set_state(), which
 * allows the transitions in ss_transitions[] and nothing else. */
enum ss_state {
        SS_CONNECTING, /* libcurl is connecting */
        SS_IDLE, /* connected, no job */
        SS_TXN, /* a transaction of ss_job */
        SS_DRAIN, /* job decided; discarding replies still pipelined */
        SS_RSET, /* waiting for the reply to RSET */
        SS_QUIT, /* QUIT sent, waiting for 221 or EOF */
        SS_DEAD, /* closed, on the zombie list */
};

#define SS_BIT(st) (1u << (st))

/* The states each state may go to. Every state may close (SS_DEAD) except
 * SS_DEAD itself; a session enters SS_CONNECTING only when it is created. */
static const unsigned ss_transitions[] = {
        [SS_CONNECTING] = SS_BIT(SS_IDLE) | SS_BIT(SS_DEAD),
        [SS_IDLE] = SS_BIT(SS_TXN) | SS_BIT(SS_QUIT) | SS_BIT(SS_DEAD),
        [SS_TXN] = SS_BIT(SS_IDLE) | SS_BIT(SS_DRAIN) | SS_BIT(SS_RSET) |
                   SS_BIT(SS_DEAD),
        [SS_DRAIN] = SS_BIT(SS_RSET) | SS_BIT(SS_DEAD),
        [SS_RSET] = SS_BIT(SS_IDLE) | SS_BIT(SS_DEAD),
        [SS_QUIT] = SS_BIT(SS_DEAD),
        [SS_DEAD] = 0,
};

static const char *const ss_names[] = {
        [SS_CONNECTING] = "connecting",
        [SS_IDLE] = "idle",
        [SS_TXN] = "transaction",
        [SS_DRAIN] = "drain",
        [SS_RSET] = "rset",
        [SS_QUIT] = "quit",
        [SS_DEAD] = "dead",
};

/* A libcurl multi handle and the sessions opened on it. */
struct smtp_multi {
        smtp_client_t *m_client;
        CURLM *m_multi;
        loop_timer_t m_timer;
        size_t m_sessions;
        struct smtp_multi *m_next;
};

/* What a session libcurl connects keeps for its errors: the last reply line
 * seen while connecting, and libcurl's CURLOPT_ERRORBUFFER. */
struct session_curl_text {
        char last_line[256];
        char errbuf[CURL_ERROR_SIZE];
};

struct smtp_session {
        smtp_client_t *ss_client;
        struct smtp_multi *ss_multi;
        struct smtp_session *ss_next; /* sc_sessions or sc_zombies */
        struct smtp_session *ss_prev;
        struct smtp_session *ss_idle_next; /* sc_idle */
        struct smtp_session *ss_idle_prev;
        int ss_in_idle;
        enum ss_state ss_state;
        CURL *ss_easy;
        int ss_fd; /* watched by this session; -1 when none */
        unsigned ss_watch; /* LOOP_* events asked for on ss_fd */
        int ss_probe; /* opened while the relay was unhealthy */
        int ss_sock_gone; /* libcurl closed the socket under us */
        /* a plain connection: send() and recv() on ss_fd, not through
         * libcurl (whose calls look the connection up in its multi
         * handle's cache every time); set after the first libcurl read,
         * which attaches the connection to the handle for good */
        int ss_raw;
        /* A direct session (sc_direct): libcurl made the TCP connection
         * only and let go of it; the session reads the greeting and runs
         * EHLO itself (ss_greet), and closes the socket itself. */
        int ss_direct;
        int ss_detaching; /* in curl_multi_remove_handle(): keep the fd */
        int ss_detach_fd; /* the fd to keep */
        int ss_kept; /* libcurl let go of the fd without closing it */
        int ss_tcp_connecting; /* connect() of an address under way */
        int ss_connect_errno; /* connect() failed at once with this */
        int64_t ss_open_ms; /* loop_now_ms() when the session was opened */
        /* loop_now_ms() when ss_job's MAIL was written on this idle session
         * and when its message was queued (354); -1 when not to be timed */
        int64_t ss_txn_ms;
        int64_t ss_data_ms;
        enum { GREET_WAIT, GREET_EHLO, GREET_HELO } ss_greet;
        loop_timer_t ss_timer;
        unsigned ss_messages; /* transactions started */

        /* EHLO capabilities (reset on every 220 line) */
        int ss_cap_pipelining;
        int ss_cap_chunking;
        int ss_cap_size;
        uint64_t ss_size_max; /* 0: no limit given */
        int ss_cap_8bitmime;
        int ss_cap_smtputf8;
        int ss_cap_auth;
        /* a session that libcurl connects: for its errors (NULL for a
         * session that connects by itself) */
        struct session_curl_text *ss_text;

        /* the transaction whose reply comes next */
        struct smtp_job *ss_job;
        /* The transaction pipelined behind ss_job (whose "." was written or
         * queued): its MAIL, RCPT and DATA are written, no reply came yet.
         * Replies come in order, so it becomes ss_job at ss_job's final
         * reply, whatever that reply is (the final "." ends a transaction,
         * RFC 5321 4.1.1.4). */
        struct smtp_job *ss_pnext;
        /* The transaction before ss_job, when ss_job was pipelined behind
         * it: its final reply came and is in its fields, reported once
         * ss_job's DATA is answered. A relay that answers the pipelined
         * commands before the "." (a 354 to MAIL or RCPT) has its replies
         * out of order: that reply was not the final one. */
        struct smtp_job *ss_held;
        /* ss_pnext's DATA was answered already and its message queued,
         * ending at ss_pnext_data_end (see session_out_of_order()) */
        int ss_pnext_at_data;
        uint64_t ss_pnext_data_end;
        int ss_pipelined;
        /* ss_job's message goes with "BDAT <size> LAST" (RFC 3030) instead
         * of DATA: its reply is the final one, at step n + 2 (there is no
         * step n + 1), and nothing is pipelined behind it */
        int ss_bdat;
        char *ss_unstuffed; /* a message copied without its dot-stuffing */
        size_t ss_step; /* command whose reply comes next: 0 MAIL,
                         * 1..n RCPT, n+1 DATA, n+2 end of data */
        size_t ss_sent; /* commands sent so far */
        size_t ss_drain; /* SS_DRAIN: replies still to discard */
        size_t ss_rcpt_ok;
        int ss_rcpt_4xx;
        int ss_acked; /* a reply of this transaction arrived */

        /* output: ss_out from ss_out_pos, then ss_data[pos..len): the
         * job's payload and its ".\r\n", sent from the job's buffer */
        struct dynbuf ss_out; /* SMTP_OUT_MAX at most */
        size_t ss_out_pos;
        const char *ss_data;
        size_t ss_data_len;
        size_t ss_data_pos;
        /* bytes queued and written in the session's life, and the position
         * of the end of ss_job's ".\r\n" (0 until queued): its final reply
         * counts only once all of it is written */
        uint64_t ss_out_queued;
        uint64_t ss_out_written;
        uint64_t ss_data_end;

        struct dynbuf ss_in; /* input, SMTP_IN_MAX at most */
};

struct smtp_client {
        loop_t *sc_loop;
        struct smtp_multi *sc_multis;
        int sc_multi_emptied; /* a multi handle lost its last session */
        struct smtp_client_conf sc_conf; /* strings point to copies below */
        char *sc_url; /* the URL given to libcurl (HELO name as path) */
        char *sc_relay; /* scheme://host:port, for messages */
        char *sc_username;
        char *sc_password;
        char *sc_ca_file;
        char *sc_helo_name;
        smtp_done_cb *sc_done_cb;
        void *sc_opaque;

        struct smtp_job *sc_q_head;
        struct smtp_job *sc_q_tail;
        struct smtp_job *sc_q_paced; /* the last paced job (submit_first):
                                        they go ahead of the others, in the
                                        order they came */
        size_t sc_queued;

        struct smtp_session *sc_sessions;
        size_t sc_session_cnt;
        size_t sc_connecting;
        size_t sc_busy;
        size_t sc_pnext_cnt; /* sessions with a transaction behind ss_job */
        struct smtp_session *sc_idle;
        struct smtp_session *sc_zombies;

        loop_timer_t sc_kick_timer;
        loop_timer_t sc_retry_timer;
        int sc_healthy;
        int sc_closing;
        int sc_plain; /* smtp:// without STARTTLS: no TLS on any session */
        /* plain and without AUTH: sessions are direct (see ss_direct);
         * libcurl connects to sc_tcp_url, an http:// URL of the relay's
         * host and port with CURLOPT_CONNECT_ONLY: resolve and connect,
         * nothing sent */
        int sc_direct;
        char *sc_tcp_url;
        /* the relay's host is an IP address: direct sessions connect to
         * sc_addr themselves, without libcurl at all */
        int sc_direct_ip;
        struct sockaddr_storage sc_addr;
        socklen_t sc_addrlen;
        char *sc_ehlo_line; /* "EHLO <name>" */
        char *sc_helo_line; /* "HELO <name>" */
        /* the relay answered commands pipelined after a "." before the
         * "." itself: no more transactions are pipelined behind a "." */
        int sc_no_txn_pipelining;
        int sc_relay_failures; /* failures in a row, 0 while healthy */
        int64_t sc_warned_ms; /* last "relay unhealthy" warning, 0: none */
        const char *sc_warned_what; /* the kind of failure it named */
        uint64_t sc_failures_quiet; /* failures since that warning */
        uint64_t sc_rand;
        uint64_t sc_opened_total;
        uint64_t sc_failures_total;
        uint64_t sc_pipelined_total; /* jobs pipelined behind a "." */
        char sc_last_error[256];
        /* running averages (SMTP_EWMA_WEIGHT), in ms, and their counts of
         * samples: session set-up (opened -> ready), MAIL..DATA (MAIL
         * written on an idle session -> 354), final reply (message queued ->
         * its reply) */
        double sc_setup_avg_ms, sc_cmd_avg_ms, sc_final_avg_ms;
        uint64_t sc_setup_n, sc_cmd_n, sc_final_n;

        /* fds libcurl watches through us: the multi handle of each */
        struct smtp_multi **sc_curl_fds;
        size_t sc_curl_fds_cnt;
};

static void session_next(struct smtp_session *s);
static void session_read(struct smtp_session *s);
static void session_greet_failed(struct smtp_session *s, const char *what,
                                 const char *detail, int unreachable);
static void session_greet_reply(struct smtp_session *s, int code,
                                const char *text);
static void session_cap_reply(struct smtp_session *s, const char *p,
                              size_t len);
static void session_tcp_connected(struct smtp_session *s);
static int session_pipeline_next(struct smtp_session *s);

/* @returns 1 when the first queued job has no session to go to now: none is
 * idle and those being opened are spoken for. (Whether one more may be
 * opened is left out: against a quick relay fewer sessions, each with the
 * next transaction pipelined, do the work, and the pool need not grow to
 * smtp.sessions.max first.) */
static int client_job_would_wait(const smtp_client_t *sc) {
        return sc->sc_q_head && !sc->sc_idle &&
               sc->sc_queued > sc->sc_connecting;
}

/*
 * A job that would wait for a session (client_job_would_wait()) may be
 * pipelined behind the "." just queued on a session: it then starts when
 * that message's final reply comes, without a round trip of its own. That
 * pays against a relay whose final replies come about as soon as a new
 * session opens and answers MAIL..DATA. Against one slower to answer the
 * "." (content checks, a delay per message: seconds), the job would wait
 * that long behind it while another session frees or opens sooner; it is
 * pipelined only when more jobs wait than the sessions that may take one
 * in the meantime: those busy with no job behind their own (each frees at
 * its final reply, all before the one just queued), and those that may
 * still be opened. @returns whether the job at the head of the queue
 * should go behind the "." just queued on a busy session.
 */
static int client_pipeline_pays(const smtp_client_t *sc) {
        size_t freeing = 0, waiting;

        if (sc->sc_final_n == 0 ||
            sc->sc_final_avg_ms <= sc->sc_setup_avg_ms + sc->sc_cmd_avg_ms +
                                           SMTP_PIPELINE_SLACK_MS)
                return 1;
        /* @s is busy, with no job behind its own yet */
        if (sc->sc_busy > sc->sc_pnext_cnt + 1)
                freeing = sc->sc_busy - sc->sc_pnext_cnt - 1;
        if (sc->sc_healthy &&
            sc->sc_session_cnt < (size_t)sc->sc_conf.sessions_max)
                freeing +=
                        (size_t)sc->sc_conf.sessions_max - sc->sc_session_cnt;
        waiting = sc->sc_queued > sc->sc_connecting
                          ? sc->sc_queued - sc->sc_connecting
                          : 0;
        return waiting > freeing;
}

/* Adds @sample (ms) to the running average *@avg of *@n samples. */
static void client_average(double *avg, uint64_t *n, int64_t sample) {
        double v = sample > 0 ? (double)sample : 0.0;

        *avg = (*n)++ == 0 ? v : *avg + SMTP_EWMA_WEIGHT * (v - *avg);
}

static void client_kick(smtp_client_t *sc);

/*
 * Reply parsing
 */

long smtp_reply_parse(const char *buf, size_t len, int *code, char *text,
                      size_t text_size) {
        size_t off = 0;

        for (;;) {
                const char *line = buf + off;
                size_t avail = len - off;
                size_t scan, line_len, tlen;
                const char *nl;

                for (size_t i = 0; i < 3 && i < avail; i++) {
                        if (line[i] < '0' || line[i] > '9')
                                return -1;
                }
                if (avail >= 1 && (line[0] < '2' || line[0] > '5'))
                        return -1;
                if (avail >= 4 && line[3] != ' ' && line[3] != '-' &&
                    line[3] != '\r' && line[3] != '\n')
                        return -1;
                scan = avail < SMTP_LINE_MAX + 2 ? avail : SMTP_LINE_MAX + 2;
                nl = memchr(line, '\n', scan);
                if (!nl)
                        return avail >= SMTP_LINE_MAX + 2 ? -1 : 0;
                line_len = (size_t)(nl - line);
                if (line_len > 0 && line[line_len - 1] == '\r')
                        line_len--;
                if (line_len < 3 || line_len > SMTP_LINE_MAX)
                        return -1;
                off += (size_t)(nl - line) + 1;
                if (line_len > 3 && line[3] == '-')
                        continue;

                *code = (line[0] - '0') * 100 + (line[1] - '0') * 10 +
                        (line[2] - '0');
                if (text_size > 0) {
                        tlen = line_len > 4 ? line_len - 4 : 0;
                        if (tlen > text_size - 1)
                                tlen = text_size - 1;
                        for (size_t i = 0; i < tlen; i++) {
                                unsigned char ch = (unsigned char)line[4 + i];

                                text[i] = (ch < 0x20 && ch != '\t') ? '?'
                                                                    : (char)ch;
                        }
                        text[tlen] = '\0';
                }
                return (long)off;
        }
}

/*
 * Small helpers
 */

/* Writes @v in decimal at @dst (room for 20 digits). @returns its length. */
static size_t fmt_u64(char *dst, uint64_t v) {
        char tmp[20];
        size_t n = 0;

        do {
                tmp[n++] = (char)('0' + v % 10);
                v /= 10;
        } while (v > 0);
        for (size_t i = 0; i < n; i++)
                dst[i] = tmp[n - 1 - i];
        return n;
}

static char *smtp_strdup0(const char *s) {
        return (s && *s) ? strdup(s) : NULL;
}

static uint64_t client_rand(smtp_client_t *sc) {
        uint64_t x = sc->sc_rand;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sc->sc_rand = x;
        return x;
}

/* Copies @src into @dst (size @dst_size) with every occurrence of the
 * password replaced by "***". */
static void client_redact(const smtp_client_t *sc, char *dst, size_t dst_size,
                          const char *src) {
        const char *pw = sc->sc_password;
        size_t pwlen = pw ? strlen(pw) : 0;
        size_t o = 0;

        if (dst_size == 0)
                return;
        while (*src && o + 1 < dst_size) {
                if (pwlen >= 3 && strncmp(src, pw, pwlen) == 0) {
                        for (int i = 0; i < 3 && o + 1 < dst_size; i++)
                                dst[o++] = '*';
                        src += pwlen;
                        continue;
                }
                dst[o++] = *src++;
        }
        dst[o] = '\0';
}

/* @returns 1 when @addr may go between <> in MAIL/RCPT: no control
 * characters (CR/LF injection), no angle brackets. */
static int smtp_addr_ok(const char *addr, int *non_ascii) {
        for (const unsigned char *p = (const unsigned char *)addr; *p; p++) {
                if (*p < 0x20 || *p == 0x7f || *p == '<' || *p == '>')
                        return 0;
                if (*p >= 0x80)
                        *non_ascii = 1;
        }
        return 1;
}

/* @returns 1 when the header block of @data (up to the first empty line)
 * holds a byte above 0x7f: a UTF-8 address written raw (RFC 6532), which
 * needs SMTPUTF8 like one in the envelope. */
static int smtp_header_block_utf8(const char *data, size_t len) {
        const char *end = memmem(data, len, "\r\n\r\n", 4);
        size_t hlen = end != NULL ? (size_t)(end - data) : len;

        for (size_t i = 0; i < hlen; i++) {
                if ((unsigned char)data[i] & 0x80)
                        return 1;
        }
        return 0;
}

/*
 * The queue
 */

enum queue_where {
        QUEUE_BACK = 0,
        QUEUE_FRONT, /* a job to try again at once */
        QUEUE_PACED /* behind the paced jobs, ahead of the others */
};

/* Links @job after @prev (NULL: at the head). */
static void queue_link_after(smtp_client_t *sc, struct smtp_job *job,
                             struct smtp_job *prev) {
        job->sj_prev = prev;
        job->sj_next = prev ? prev->sj_next : sc->sc_q_head;
        if (job->sj_next)
                job->sj_next->sj_prev = job;
        else
                sc->sc_q_tail = job;
        if (prev)
                prev->sj_next = job;
        else
                sc->sc_q_head = job;
}

static void queue_push(smtp_client_t *sc, struct smtp_job *job,
                       enum queue_where where) {
        job->sj_session = NULL;
        job->sj_state = (job->sj_state & ~SJ_STATE_MASK) | SJ_QUEUED;
        switch (where) {
        case QUEUE_FRONT:
                queue_link_after(sc, job, NULL);
                break;
        case QUEUE_PACED:
                queue_link_after(sc, job, sc->sc_q_paced);
                sc->sc_q_paced = job;
                break;
        case QUEUE_BACK:
                queue_link_after(sc, job, sc->sc_q_tail);
                break;
        }
        sc->sc_queued++;
}

static void queue_unlink(smtp_client_t *sc, struct smtp_job *job) {
        if (sc->sc_q_paced == job)
                sc->sc_q_paced = job->sj_prev;
        if (job->sj_prev)
                job->sj_prev->sj_next = job->sj_next;
        else
                sc->sc_q_head = job->sj_next;
        if (job->sj_next)
                job->sj_next->sj_prev = job->sj_prev;
        else
                sc->sc_q_tail = job->sj_prev;
        job->sj_next = job->sj_prev = NULL;
        job->sj_state &= ~SJ_STATE_MASK;
        sc->sc_queued--;
}

/* Sets the outcome of @job (already detached from any session) and runs the
 * done callback. @text may be job->reply itself. */
static void job_complete(smtp_client_t *sc, struct smtp_job *job,
                         enum smtp_outcome outcome, int code,
                         const char *text) {
        job->outcome = outcome;
        job->code = code;
        if (text != job->reply)
                snprintf(job->reply, sizeof(job->reply), "%s", text);
        job->sj_state = SJ_IDLE;
        job->sj_session = NULL;
        sc->sc_done_cb(job, sc->sc_opaque);
}

static void job_add_rcpt_failure(struct smtp_job *job, size_t idx, int code,
                                 const char *text) {
        struct smtp_rcpt_failure *f;

        if (job->rcpt_failure_cnt >= job->rcpt_cnt)
                return; /* not reset since the last submit */
        if (!job->rcpt_failures) {
                job->rcpt_failures =
                        calloc(job->rcpt_cnt, sizeof(*job->rcpt_failures));
                if (!job->rcpt_failures)
                        abort(); /* a refusal lost would count as accepted */
                job->rcpt_failure_cnt = 0;
        }
        f = &job->rcpt_failures[job->rcpt_failure_cnt];
        f->rcpt = strdup(job->rcpts[idx]);
        f->index = idx;
        f->code = code;
        f->reply = strdup(text);
        if (!f->rcpt || !f->reply)
                abort();
        job->rcpt_failure_cnt++;
}

void smtp_job_reset(struct smtp_job *job) {
        for (size_t i = 0; i < job->rcpt_failure_cnt; i++) {
                free(job->rcpt_failures[i].rcpt);
                free(job->rcpt_failures[i].reply);
        }
        free(job->rcpt_failures);
        job->rcpt_failures = NULL;
        job->rcpt_failure_cnt = 0;
        job->outcome = SMTP_OK;
        job->code = 0;
        job->reply[0] = '\0';
        job->sj_next = job->sj_prev = NULL;
        job->sj_session = NULL;
        job->sj_state = SJ_IDLE;
}

/*
 * Session lists
 */

static void idle_add(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        if (s->ss_in_idle)
                return;
        s->ss_idle_prev = NULL;
        s->ss_idle_next = sc->sc_idle;
        if (sc->sc_idle)
                sc->sc_idle->ss_idle_prev = s;
        sc->sc_idle = s;
        s->ss_in_idle = 1;
}

static void idle_remove(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        if (!s->ss_in_idle)
                return;
        if (s->ss_idle_prev)
                s->ss_idle_prev->ss_idle_next = s->ss_idle_next;
        else
                sc->sc_idle = s->ss_idle_next;
        if (s->ss_idle_next)
                s->ss_idle_next->ss_idle_prev = s->ss_idle_prev;
        s->ss_idle_next = s->ss_idle_prev = NULL;
        s->ss_in_idle = 0;
}

static void list_insert(struct smtp_session **head, struct smtp_session *s) {
        s->ss_prev = NULL;
        s->ss_next = *head;
        if (*head)
                (*head)->ss_prev = s;
        *head = s;
}

static void list_remove(struct smtp_session **head, struct smtp_session *s) {
        if (s->ss_prev)
                s->ss_prev->ss_next = s->ss_next;
        else
                *head = s->ss_next;
        if (s->ss_next)
                s->ss_next->ss_prev = s->ss_prev;
        s->ss_next = s->ss_prev = NULL;
}

/*
 * libcurl's own sockets (while sessions connect)
 */

static int smtp_curl_fd_owned(const smtp_client_t *sc, int fd) {
        return fd >= 0 && (size_t)fd < sc->sc_curl_fds_cnt &&
               sc->sc_curl_fds[fd];
}

static int smtp_curl_fd_set(smtp_client_t *sc, int fd, struct smtp_multi *v) {
        if ((size_t)fd >= sc->sc_curl_fds_cnt) {
                size_t cnt = sc->sc_curl_fds_cnt ? sc->sc_curl_fds_cnt : 64;
                struct smtp_multi **p;

                if (!v)
                        return 0;
                while (cnt <= (size_t)fd)
                        cnt *= 2;
                p = realloc(sc->sc_curl_fds, cnt * sizeof(*p));
                if (!p)
                        return -1;
                memset(p + sc->sc_curl_fds_cnt, 0,
                       (cnt - sc->sc_curl_fds_cnt) * sizeof(*p));
                sc->sc_curl_fds = p;
                sc->sc_curl_fds_cnt = cnt;
        }
        sc->sc_curl_fds[fd] = v;
        return 0;
}

static void smtp_curl_fd_release(smtp_client_t *sc, int fd) {
        if (!smtp_curl_fd_owned(sc, fd))
                return;
        loop_io_del(sc->sc_loop, fd);
        sc->sc_curl_fds[fd] = NULL;
}

static void client_check_multi(struct smtp_multi *m);

static void smtp_curl_io_cb(loop_t *loop, int fd, unsigned events,
                            void *opaque) {
        struct smtp_multi *m = opaque;
        int flags = 0, running;

        (void)loop;
        if (events & LOOP_READ)
                flags |= CURL_CSELECT_IN;
        if (events & LOOP_WRITE)
                flags |= CURL_CSELECT_OUT;
        if (events & LOOP_ERROR)
                flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(m->m_multi, fd, flags, &running);
        client_check_multi(m);
}

static int smtp_curl_socket_cb(CURL *easy, curl_socket_t fd, int what,
                               void *userp, void *socketp) {
        struct smtp_multi *m = userp;
        smtp_client_t *sc = m->m_client;
        unsigned events = 0;

        (void)easy;
        (void)socketp;
        if (what == CURL_POLL_REMOVE) {
                smtp_curl_fd_release(sc, fd);
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= LOOP_READ;
        if (what & CURL_POLL_OUT)
                events |= LOOP_WRITE;
        if (smtp_curl_fd_owned(sc, fd)) {
                sc->sc_curl_fds[fd] = m;
                if (loop_io_mod(sc->sc_loop, fd, events) == -1)
                        LOG(LL_ERROR, "smtp: epoll mod failed fd=%d error=%s",
                            fd, strerror(errno));
                return 0;
        }
        if (smtp_curl_fd_set(sc, fd, m) == -1 ||
            loop_io_add(sc->sc_loop, fd, events, smtp_curl_io_cb, m) == -1) {
                LOG(LL_ERROR, "smtp: cannot watch libcurl fd=%d error=%s", fd,
                    strerror(errno));
                smtp_curl_fd_set(sc, fd, NULL);
                return -1;
        }
        return 0;
}

static int smtp_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
        struct smtp_multi *m = userp;

        (void)multi;
        if (timeout_ms < 0)
                loop_timer_stop(m->m_client->sc_loop, &m->m_timer);
        else
                loop_timer_start(m->m_client->sc_loop, &m->m_timer, timeout_ms);
        return 0;
}

static void smtp_curl_timeout_fire(loop_t *loop, void *opaque) {
        struct smtp_multi *m = opaque;
        int running;

        (void)loop;
        curl_multi_socket_action(m->m_multi, CURL_SOCKET_TIMEOUT, 0, &running);
        client_check_multi(m);
}

/* @returns a multi handle with room for one more session, or NULL. */
static struct smtp_multi *client_multi_for_session(smtp_client_t *sc) {
        struct smtp_multi *m;

        for (m = sc->sc_multis; m; m = m->m_next)
                if (m->m_sessions < SMTP_MULTI_SESSIONS)
                        return m;
        m = calloc(1, sizeof(*m));
        if (!m)
                return NULL;
        m->m_multi = curl_multi_init();
        if (!m->m_multi) {
                free(m);
                return NULL;
        }
        m->m_client = sc;
        loop_timer_init(&m->m_timer, smtp_curl_timeout_fire, m);
        curl_multi_setopt(m->m_multi, CURLMOPT_SOCKETFUNCTION,
                          smtp_curl_socket_cb);
        curl_multi_setopt(m->m_multi, CURLMOPT_SOCKETDATA, m);
        curl_multi_setopt(m->m_multi, CURLMOPT_TIMERFUNCTION,
                          smtp_curl_timer_cb);
        curl_multi_setopt(m->m_multi, CURLMOPT_TIMERDATA, m);
        m->m_next = sc->sc_multis;
        sc->sc_multis = m;
        return m;
}

/*
 * Session state
 */

/*
 * Moves @s to state @to (@why names the event, for the error on a
 * transition ss_transitions[] does not allow: a bug, which aborts a debug
 * build). Keeps the client's counts of connecting and busy sessions and
 * the idle list in step with the states.
 */
static void session_set_state(struct smtp_session *s, enum ss_state to,
                              const char *why) {
        smtp_client_t *sc = s->ss_client;
        enum ss_state from = s->ss_state;

        if (!(ss_transitions[from] & SS_BIT(to))) {
                LOG(LL_ERROR,
                    "smtp: invalid session state change from=%s to=%s "
                    "event=%s relay=%s",
                    ss_names[from], ss_names[to], why, sc->sc_relay);
#ifndef NDEBUG
                abort();
#endif
        }
        if (from == SS_CONNECTING)
                sc->sc_connecting--;
        else if (from == SS_IDLE)
                idle_remove(s);
        else if (from == SS_TXN)
                sc->sc_busy--;
        if (to == SS_TXN)
                sc->sc_busy++;
        s->ss_state = to;
}

/* Sets the transaction pipelined behind ss_job (NULL: none), keeping the
 * client's count of them. */
static void session_set_pnext(struct smtp_session *s, struct smtp_job *job) {
        smtp_client_t *sc = s->ss_client;

        if (s->ss_pnext && !job)
                sc->sc_pnext_cnt--;
        else if (!s->ss_pnext && job)
                sc->sc_pnext_cnt++;
        s->ss_pnext = job;
}

/*
 * Session output
 */

/*
 * Reads @len bytes at most into @p: with recv() on a plain connection the
 * session reads itself (ss_raw), else through libcurl. @returns 1 with
 * *@n bytes read (0 at EOF), 0 when nothing is there (again), -1 on an
 * error.
 */
static int session_recv(struct smtp_session *s, char *p, size_t len,
                        size_t *n) {
        if (s->ss_raw) {
                ssize_t r = recv(s->ss_fd, p, len, 0);

                if (r >= 0) {
                        *n = (size_t)r;
                        return 1;
                }
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
                               ? 0
                               : -1;
        }
        switch (curl_easy_recv(s->ss_easy, p, len, n)) {
        case CURLE_OK:
                return 1;
        case CURLE_AGAIN:
                return 0;
        default:
                return -1;
        }
}

/* Writes @len bytes at most from @p (see session_recv()). @returns 1 with
 * *@n bytes written, 0 when the socket is full, -1 on an error (@err set). */
static int session_send(struct smtp_session *s, const char *p, size_t len,
                        size_t *n, const char **err) {
        CURLcode rc;

        if (s->ss_raw) {
                ssize_t r = send(s->ss_fd, p, len, MSG_NOSIGNAL);

                if (r >= 0) {
                        *n = (size_t)r;
                        return 1;
                }
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                        return 0;
                *err = strerror(errno);
                return -1;
        }
        rc = curl_easy_send(s->ss_easy, p, len, n);
        if (rc == CURLE_OK)
                return 1;
        if (rc == CURLE_AGAIN)
                return 0;
        *err = curl_easy_strerror(rc);
        return -1;
}

/* Starts an output batch: the buffer is emptied when all of it was
 * written. @returns its length, for session_out_end(). */
static size_t session_out_begin(struct smtp_session *s) {
        if (s->ss_out_pos == dynbuf_len(&s->ss_out)) {
                dynbuf_reset(&s->ss_out);
                s->ss_out_pos = 0;
        }
        return dynbuf_len(&s->ss_out);
}

/* Ends a batch begun at length @from (appends may fail and check once).
 * @returns 0 or -1 (out of memory, or SMTP_OUT_MAX reached). */
static int session_out_end(struct smtp_session *s, size_t from) {
        if (dynbuf_error(&s->ss_out) != DYNBUF_OK)
                return -1;
        s->ss_out_queued += dynbuf_len(&s->ss_out) - from;
        return 0;
}

/* Appends a command line (CRLF added) to the output buffer.
 * @returns 0 or -1 (out of memory, or SMTP_OUT_MAX reached). */
static int session_cmd(struct smtp_session *s, const char *line) {
        size_t from = session_out_begin(s);

        dynbuf_appends(&s->ss_out, line);
        dynbuf_append(&s->ss_out, "\r\n", 2);
        return session_out_end(s, from);
}

/* Appends "<@verb><@addr>>" and what @params holds, then CRLF: MAIL and
 * RCPT without printf. @returns 0 or -1. */
static int session_cmd_addr(struct smtp_session *s, const char *verb,
                            const char *addr, const char *params) {
        size_t from = session_out_begin(s);

        dynbuf_appends(&s->ss_out, verb);
        dynbuf_appends(&s->ss_out, addr);
        dynbuf_appendc(&s->ss_out, '>');
        if (params)
                dynbuf_appends(&s->ss_out, params);
        dynbuf_append(&s->ss_out, "\r\n", 2);
        return session_out_end(s, from);
}

/* @returns why session_cmd() failed, for session_fail(). */
static const char *session_cmd_error(const struct smtp_session *s) {
        return dynbuf_error(&s->ss_out) == DYNBUF_ELIMIT
                       ? "too many commands for the output buffer"
                       : "out of memory";
}

static int session_out_pending(const struct smtp_session *s) {
        return s->ss_out_pos < dynbuf_len(&s->ss_out) ||
               s->ss_data_pos < s->ss_data_len;
}

static void session_watch(struct smtp_session *s, unsigned events) {
        if (s->ss_fd == -1 || s->ss_watch == events)
                return;
        if (loop_io_mod(s->ss_client->sc_loop, s->ss_fd, events) == 0)
                s->ss_watch = events;
}

static const char *session_step_name(const struct smtp_session *s,
                                     size_t step) {
        size_t n;

        switch (s->ss_state) {
        case SS_TXN:
                break;
        case SS_RSET:
                return "RSET";
        case SS_QUIT:
                return "QUIT";
        case SS_DRAIN:
                return "a failed transaction";
        default:
                return "idle";
        }
        n = s->ss_job->rcpt_cnt;
        if (step == 0)
                return "MAIL";
        if (step <= n)
                return "RCPT";
        if (step == n + 1)
                return "DATA";
        return "end of data";
}

/* @returns how long a session in a transaction waits for its next reply:
 * smtp.timeout.data.ms for the final one, and for any once a BDAT message
 * is queued (the relay may answer its MAIL and RCPT only once it has read
 * it), else smtp.timeout.command.ms. */
static int session_txn_timeout_ms(const struct smtp_session *s) {
        const struct smtp_client_conf *c = &s->ss_client->sc_conf;

        return s->ss_step == s->ss_job->rcpt_cnt + 2 ||
                               (s->ss_bdat && s->ss_data_end > 0)
                       ? c->timeout_data_ms
                       : c->timeout_command_ms;
}

/* (Re)arms the session timer for the current state. */
static void session_arm(struct smtp_session *s) {
        const struct smtp_client_conf *c = &s->ss_client->sc_conf;
        loop_t *loop = s->ss_client->sc_loop;
        int64_t ms;

        switch (s->ss_state) {
        case SS_IDLE:
                ms = c->session_idle_ms;
                break;
        case SS_TXN:
                ms = session_txn_timeout_ms(s);
                break;
        case SS_DRAIN:
        case SS_RSET:
                ms = c->timeout_command_ms;
                break;
        case SS_QUIT:
                ms = c->timeout_command_ms < SMTP_QUIT_WAIT_MS
                             ? c->timeout_command_ms
                             : SMTP_QUIT_WAIT_MS;
                break;
        default:
                return;
        }
        loop_timer_start(loop, &s->ss_timer, ms);
}

/*
 * Session teardown
 */

/*
 * @job's session closed before any of its commands was answered: it goes
 * to the front of the queue, once; the second time it is TRANSIENT with
 * @reason.
 */
static void job_retry_or_fail(smtp_client_t *sc, struct smtp_job *job,
                              const char *reason) {
        if (!(job->sj_state & SJ_F_REQUEUED)) {
                job->sj_state |= SJ_F_REQUEUED;
                queue_push(sc, job, QUEUE_FRONT);
                client_kick(sc);
                return;
        }
        job_complete(sc, job, SMTP_TRANSIENT, 0, reason);
}

/* Reports the held transaction (see ss_held) with the final reply it got. */
static void session_release_held(struct smtp_session *s) {
        struct smtp_job *job = s->ss_held;

        if (!job)
                return;
        s->ss_held = NULL;
        job_complete(s->ss_client, job, job->outcome, job->code, job->reply);
}

static void session_close(struct smtp_session *s);

/* Closes the connection and moves @s to the zombie list (freed by the kick
 * timer). A job still attached must have been taken off by the caller. */
static void session_close(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        if (s->ss_state == SS_DEAD)
                return;
        session_set_state(s, SS_DEAD, "closed");
        loop_timer_stop(sc->sc_loop, &s->ss_timer);
        if (s->ss_fd != -1) {
                loop_io_del(sc->sc_loop, s->ss_fd);
                if (s->ss_direct && !s->ss_easy)
                        close(s->ss_fd); /* a direct session's own */
                s->ss_fd = -1;
        }
        list_remove(&sc->sc_sessions, s);
        sc->sc_session_cnt--;
        if (s->ss_easy) {
                /* closes a CONNECT_ONLY connection at once */
                curl_multi_remove_handle(s->ss_multi->m_multi, s->ss_easy);
                curl_easy_cleanup(s->ss_easy);
                s->ss_easy = NULL;
                if (--s->ss_multi->m_sessions == 0)
                        sc->sc_multi_emptied = 1;
        }
        dynbuf_fini(&s->ss_in);
        dynbuf_fini(&s->ss_out);
        s->ss_out_pos = 0;
        free(s->ss_unstuffed);
        s->ss_unstuffed = NULL;
        list_insert(&sc->sc_zombies, s);
        client_kick(sc);
        session_release_held(s);
        if (s->ss_pnext) {
                /* pipelined: not an attempt, unless its message went */
                struct smtp_job *next = s->ss_pnext;

                session_set_pnext(s, NULL);
                if (s->ss_pnext_at_data) {
                        s->ss_pnext_at_data = 0;
                        job_complete(sc, next, SMTP_TRANSIENT, 0,
                                     "connection closed after end of data");
                } else {
                        job_retry_or_fail(sc, next,
                                          "connection closed before a reply");
                }
        }
}

/* Detaches the job from @s (which stays busy until it leaves SS_TXN).
 * @returns it, or NULL. */
static struct smtp_job *session_take_job(struct smtp_session *s) {
        struct smtp_job *job = s->ss_job;

        s->ss_job = NULL;
        return job;
}

/*
 * The connection broke (EOF, I/O error, timeout, protocol error): the job,
 * if any, is TRANSIENT with @reason, or queued again when none of its
 * commands was answered yet (once per job). The session is closed.
 */
static void session_fail(struct smtp_session *s, const char *reason) {
        smtp_client_t *sc = s->ss_client;
        struct smtp_job *job;
        char msg[sizeof(job->reply)];

        if (s->ss_state == SS_CONNECTING) {
                /* a direct session opening */
                session_greet_failed(s, "session setup failed", reason, 0);
                return;
        }
        snprintf(msg, sizeof(msg), "%s after %s", reason,
                 session_step_name(s, s->ss_step));
        LOG(LL_DEBUG, "smtp session closed relay=%s reason=%s", sc->sc_relay,
            msg);
        job = session_take_job(s);
        session_close(s);
        if (!job)
                return;
        if (!s->ss_acked) {
                job_retry_or_fail(sc, job, msg);
                return;
        }
        job_complete(sc, job, SMTP_TRANSIENT, 0, msg);
}

/* Sends what is pending. @returns 0, or -1 when the session failed. */
static int session_flush(struct smtp_session *s) {
        int progress = 0;

        for (;;) {
                const char *p, *err = NULL;
                size_t len, n = 0, *pos;
                int rc;

                if (s->ss_out_pos < dynbuf_len(&s->ss_out)) {
                        p = dynbuf_ptr(&s->ss_out) + s->ss_out_pos;
                        len = dynbuf_len(&s->ss_out) - s->ss_out_pos;
                        pos = &s->ss_out_pos;
                } else if (s->ss_data_pos < s->ss_data_len) {
                        p = s->ss_data + s->ss_data_pos;
                        len = s->ss_data_len - s->ss_data_pos;
                        pos = &s->ss_data_pos;
                } else {
                        /* all written; a message sent from the job's
                         * buffer is followed by the next transaction */
                        if (s->ss_pnext || s->ss_data_end == 0 ||
                            !s->ss_client->sc_q_head)
                                break;
                        if (session_pipeline_next(s) == -1)
                                return -1;
                        if (!session_out_pending(s))
                                break;
                        continue;
                }
                rc = session_send(s, p, len, &n, &err);
                if (rc == 0)
                        break;
                if (rc < 0) {
                        session_fail(s, err);
                        return -1;
                }
                *pos += n;
                s->ss_out_written += n;
                progress = 1;
        }
        if (progress && s->ss_state == SS_TXN)
                session_arm(s);
        session_watch(s, LOOP_READ | (session_out_pending(s) ? LOOP_WRITE : 0));
        return 0;
}

static void session_quit(struct smtp_session *s) {
        session_set_state(s, SS_QUIT, "quit");
        if (session_cmd(s, "QUIT") == -1) {
                session_close(s);
                return;
        }
        session_arm(s);
        session_flush(s);
}

static void session_rset(struct smtp_session *s) {
        session_set_state(s, SS_RSET, "reset");
        if (session_cmd(s, "RSET") == -1) {
                session_close(s);
                return;
        }
        session_arm(s);
        session_flush(s);
}

/*
 * Transactions
 */

/* The job's outcome is decided before its transaction ended normally:
 * discard the replies still in the pipeline, then RSET. The session must
 * not be used by the caller afterwards. */
static void session_abort_txn(struct smtp_session *s, enum smtp_outcome outcome,
                              int code, const char *text) {
        smtp_client_t *sc = s->ss_client;
        struct smtp_job *job;

        session_release_held(s);
        s->ss_drain = s->ss_sent > s->ss_step ? s->ss_sent - s->ss_step : 0;
        if (s->ss_bdat && s->ss_drain > 0 &&
            s->ss_step <= s->ss_job->rcpt_cnt + 1 &&
            s->ss_sent == s->ss_job->rcpt_cnt + 3)
                s->ss_drain--; /* BDAT queued: no step n + 1 to answer */
        job = session_take_job(s);
        if (s->ss_drain > 0) {
                session_set_state(s, SS_DRAIN, "transaction aborted");
                session_arm(s);
        } else {
                session_rset(s);
        }
        job_complete(sc, job, outcome, code, text);
}

static enum smtp_outcome smtp_outcome_of(int code) {
        if (code >= 500)
                return SMTP_PERMANENT;
        return SMTP_TRANSIENT;
}

/*
 * Checks @job against what the relay offers before any command is sent.
 * @returns NULL, or why it cannot go (written to @msg when it names a
 * figure). Sets the MAIL parameters the job needs in @params.
 */
static const char *session_check_job(const struct smtp_session *s,
                                     const struct smtp_job *job, char *params,
                                     size_t params_size, char *msg,
                                     size_t msg_size) {
        int non_ascii = 0, eightbit = 0;
        char *p = params;

        if (job->rcpt_cnt == 0)
                return "no recipients";
        if (!smtp_addr_ok(job->mail_from ? job->mail_from : "", &non_ascii))
                return "invalid sender address";
        for (size_t i = 0; i < job->rcpt_cnt; i++) {
                if (!job->rcpts[i][0] ||
                    !smtp_addr_ok(job->rcpts[i], &non_ascii))
                        return "invalid recipient address";
        }
        /* One pass over the message finds most of them all ASCII; only
         * one with 8-bit bytes has its header block looked at. */
        eightbit = bytescan_has_8bit(job->data, job->data_len);
        if (!non_ascii && eightbit)
                non_ascii = smtp_header_block_utf8(job->data, job->data_len);
        if (non_ascii && !s->ss_cap_smtputf8)
                return "relay does not offer SMTPUTF8, needed for a UTF-8 "
                       "address";
        if (s->ss_cap_size && s->ss_size_max > 0 &&
            job->data_len > s->ss_size_max) {
                snprintf(msg, msg_size,
                         "message of %zu bytes exceeds the relay's SIZE %llu",
                         job->data_len, (unsigned long long)s->ss_size_max);
                return msg;
        }
        if (!s->ss_cap_8bitmime)
                eightbit = 0;

        /* " SIZE=<n> BODY=8BITMIME SMTPUTF8": 44 bytes at most */
        if (params_size < 48)
                return "internal error: MAIL parameters";
        if (s->ss_cap_size) {
                memcpy(p, " SIZE=", 6);
                p += 6;
                p += fmt_u64(p, (uint64_t)job->data_len);
        }
        if (eightbit) {
                memcpy(p, " BODY=8BITMIME", 14);
                p += 14;
        }
        if (non_ascii) {
                memcpy(p, " SMTPUTF8", 9);
                p += 9;
        }
        *p = '\0';
        return NULL;
}

/* Queues MAIL, and with pipelining every RCPT and DATA, of @job with the
 * MAIL parameters @params. @returns the commands queued (replies to come),
 * or 0 when the output buffer failed. */
static size_t session_queue_txn(struct smtp_session *s,
                                const struct smtp_job *job,
                                const char *params) {
        if (session_cmd_addr(s, "MAIL FROM:<",
                             job->mail_from ? job->mail_from : "",
                             params) == -1)
                return 0;
        if (!s->ss_pipelined)
                return 1;
        for (size_t i = 0; i < job->rcpt_cnt; i++) {
                if (session_cmd_addr(s, "RCPT TO:<", job->rcpts[i], NULL) == -1)
                        return 0;
        }
        if (s->ss_bdat)
                return job->rcpt_cnt + 1; /* BDAT follows */
        if (session_cmd(s, "DATA") == -1)
                return 0;
        return job->rcpt_cnt + 2;
}

/* Queues @len bytes at @p to be written from there, once the output buffer
 * is (@p must live until they are). @returns the output position where
 * they end. */
static uint64_t session_queue_from(struct smtp_session *s, const char *p,
                                   size_t len) {
        s->ss_data = p;
        s->ss_data_len = len;
        s->ss_data_pos = 0;
        s->ss_out_queued += len;
        return s->ss_out_queued;
}

/* Copies the @len bytes of dot-stuffed message at @src to @dst without the
 * stuffing: a '.' that starts the message or follows a CRLF is dropped (as
 * message.c writes it and dkim.c reads it). With @dst NULL, only counts.
 * @returns the length without the stuffing. */
static size_t smtp_unstuff(char *dst, const char *src, size_t len) {
        size_t out = 0, i = len > 0 && src[0] == '.';

        while (i < len) {
                const char *at = memmem(src + i, len - i, "\r\n.", 3);
                size_t n = at ? (size_t)(at - (src + i)) + 2 : len - i;

                if (dst)
                        memcpy(dst + out, src + i, n);
                out += n;
                i += n + (at != NULL);
        }
        return out;
}

/*
 * Queues "BDAT <size> LAST" and @job's message without its dot-stuffing
 * (RFC 3030: the size, not a ".", says where it ends): copied behind the
 * command when small, else sent from the job's buffer, or from a copy when
 * it has stuffing to drop. @returns the output position where it ends, or
 * 0 when the output buffer (or the copy) failed.
 */
static uint64_t session_queue_bdat(struct smtp_session *s,
                                   const struct smtp_job *job) {
        size_t len = smtp_unstuff(NULL, job->data, job->data_len);
        char line[40] = "BDAT ";
        size_t n = 5, from;
        char *p;

        n += fmt_u64(line + n, len);
        memcpy(line + n, " LAST", sizeof(" LAST"));
        if (session_cmd(s, line) == -1)
                return 0;
        free(s->ss_unstuffed);
        s->ss_unstuffed = NULL;
        if (len <= SMTP_DATA_COPY_MAX) {
                from = session_out_begin(s);
                p = dynbuf_reserve(&s->ss_out, len);
                if (!p)
                        return 0;
                smtp_unstuff(p, job->data, job->data_len);
                dynbuf_setlen(&s->ss_out, dynbuf_len(&s->ss_out) + len);
                if (session_out_end(s, from) == -1)
                        return 0;
                return s->ss_out_queued;
        }
        if (len == job->data_len)
                return session_queue_from(s, job->data, len);
        s->ss_unstuffed = malloc(len);
        if (!s->ss_unstuffed)
                return 0;
        smtp_unstuff(s->ss_unstuffed, job->data, job->data_len);
        return session_queue_from(s, s->ss_unstuffed, len);
}

/* Queues "BDAT <size> LAST" and ss_job's message, whose reply is the final
 * one (step n + 2). @returns 0, or -1 when the session failed. */
static int session_start_bdat(struct smtp_session *s) {
        const struct smtp_job *job = s->ss_job;

        s->ss_data_ms = loop_now_ms(s->ss_client->sc_loop);
        s->ss_data_end = session_queue_bdat(s, job);
        if (s->ss_data_end == 0) {
                session_fail(s, session_cmd_error(s));
                return -1;
        }
        s->ss_sent = job->rcpt_cnt + 3;
        return 0;
}

/* Marks @job as running on @s. */
static void job_activate(struct smtp_session *s, struct smtp_job *job) {
        job->sj_state = (job->sj_state & ~SJ_STATE_MASK) | SJ_ACTIVE;
        job->sj_session = s;
        job->code = 0;
        job->reply[0] = '\0';
        s->ss_messages++;
}

/* Resets the per-transaction counts for ss_job, whose first @sent
 * commands are queued. */
static void session_txn_begin(struct smtp_session *s, size_t sent) {
        s->ss_txn_ms = s->ss_data_ms = -1;
        s->ss_step = 0;
        s->ss_sent = sent;
        s->ss_rcpt_ok = 0;
        s->ss_rcpt_4xx = 0;
        s->ss_acked = 0;
        s->ss_data_end = 0;
}

/* Starts @job on idle session @s. @returns 0 when it started, 1 when the
 * job was decided locally (its callback ran; @s is still usable unless its
 * state changed). */
static int session_start_job(struct smtp_session *s, struct smtp_job *job) {
        smtp_client_t *sc = s->ss_client;
        char params[64], msg[sizeof(job->reply)];
        const char *why;
        size_t sent;

        idle_remove(s);
        loop_timer_stop(sc->sc_loop, &s->ss_timer);
        why = session_check_job(s, job, params, sizeof(params), msg,
                                sizeof(msg));
        if (why) {
                job_complete(sc, job, SMTP_PERMANENT, 0, why);
                return 1;
        }
        job_activate(s, job);
        s->ss_job = job;
        session_set_state(s, SS_TXN, "job started");
        s->ss_pipelined = sc->sc_conf.pipelining && s->ss_cap_pipelining;
        s->ss_bdat = sc->sc_conf.chunking && s->ss_cap_chunking;
        s->ss_data = NULL;
        s->ss_data_len = s->ss_data_pos = 0;
        sent = session_queue_txn(s, job, params);
        session_txn_begin(s, sent);
        s->ss_txn_ms = loop_now_ms(sc->sc_loop);
        if (sent == 0) {
                session_fail(s, session_cmd_error(s));
                return 0;
        }
        if (s->ss_bdat && s->ss_pipelined && session_start_bdat(s) == -1)
                return 0;
        session_arm(s);
        session_flush(s);
        return 0;
}

/*
 * Pipelines the next queued job behind ss_job, whose ".\r\n" is queued
 * (RFC 2920: the final "." ends a transaction, the next MAIL may follow it
 * in the same write). Jobs decided locally complete here, and the next one
 * is tried. @returns 0, or -1 when the session failed.
 *
 * Only a job that would otherwise wait for a session goes there (see
 * client_job_would_wait()), and against a relay slow to give final replies
 * only one that no other session would take sooner (client_pipeline_pays()).
 */
static int session_pipeline_next(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        while (s->ss_state == SS_TXN && s->ss_pipelined && !s->ss_bdat &&
               !sc->sc_no_txn_pipelining && !s->ss_pnext &&
               s->ss_data_pos ==
                       s->ss_data_len && /* none from a job's buffer */
               s->ss_data_end > 0 &&
               client_job_would_wait(sc) && client_pipeline_pays(sc) &&
               s->ss_messages < (unsigned)sc->sc_conf.session_max_messages) {
                struct smtp_job *job = sc->sc_q_head;
                char params[64], msg[sizeof(job->reply)];
                const char *why;

                queue_unlink(sc, job);
                why = session_check_job(s, job, params, sizeof(params), msg,
                                        sizeof(msg));
                if (why) {
                        job_complete(sc, job, SMTP_PERMANENT, 0, why);
                        continue;
                }
                job_activate(s, job);
                session_set_pnext(s, job);
                sc->sc_pipelined_total++;
                if (session_queue_txn(s, job, params) == 0) {
                        session_fail(s, session_cmd_error(s));
                        return -1;
                }
        }
        return 0;
}

/* Sends command @step (non-pipelined mode). @returns 0 or -1 (failed). */
static int session_send_step(struct smtp_session *s, size_t step) {
        const struct smtp_job *job = s->ss_job;
        int rc;

        if (step <= job->rcpt_cnt)
                rc = session_cmd_addr(s, "RCPT TO:<", job->rcpts[step - 1],
                                      NULL);
        else if (s->ss_bdat)
                return session_start_bdat(s) == -1 ? -1 : session_flush(s);
        else
                rc = session_cmd(s, "DATA");
        if (rc == -1) {
                session_fail(s, session_cmd_error(s));
                return -1;
        }
        s->ss_sent = step + 1;
        return session_flush(s);
}

/* Queues @job's message and its ".\r\n": copied behind what is queued
 * when @copy and it is small, else written from the job's buffer once the
 * output buffer is. @returns the output position where it ends, or 0 when
 * the output buffer failed. */
static uint64_t session_queue_data(struct smtp_session *s,
                                   const struct smtp_job *job, int copy) {
        size_t len = job->data_len + 3; /* with its ".\r\n" */

        if (copy && len <= SMTP_DATA_COPY_MAX) {
                size_t from = session_out_begin(s);

                dynbuf_append(&s->ss_out, job->data, len);
                if (session_out_end(s, from) == -1)
                        return 0;
                return s->ss_out_queued;
        }
        return session_queue_from(s, job->data, len);
}

/* DATA was answered 354: queue the message and its ".\r\n", and the next
 * transaction behind it when there is one. */
static void session_start_data(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;
        const struct smtp_job *job = s->ss_job;
        int follow = s->ss_pipelined && !sc->sc_no_txn_pipelining &&
                     sc->sc_q_head != NULL;

        int64_t now = loop_now_ms(sc->sc_loop);

        if (s->ss_txn_ms >= 0)
                client_average(&sc->sc_cmd_avg_ms, &sc->sc_cmd_n,
                               now - s->ss_txn_ms);
        s->ss_data_ms = now;
        s->ss_sent = job->rcpt_cnt + 3;
        s->ss_data_end = session_queue_data(s, job, follow);
        if (s->ss_data_end == 0) {
                session_fail(s, session_cmd_error(s));
                return;
        }
        if (follow && session_pipeline_next(s) == -1)
                return;
        session_arm(s);
        session_flush(s);
}

/* ss_job's final reply came: ss_pnext, if any, takes its place. */
static void session_promote_next(struct smtp_session *s) {
        struct smtp_job *next = s->ss_pnext;
        size_t n = next->rcpt_cnt;

        session_set_pnext(s, NULL);
        s->ss_job = next;
        if (s->ss_pnext_at_data) {
                /* only its final reply is still to come */
                session_txn_begin(s, n + 3);
                s->ss_step = n + 2;
                s->ss_rcpt_ok = n;
                s->ss_acked = 1;
                s->ss_data_end = s->ss_pnext_data_end;
                s->ss_pnext_at_data = 0;
        } else {
                session_txn_begin(s, n + 2);
        }
        session_arm(s);
}

static void job_clear_rcpt_failures(struct smtp_job *job) {
        for (size_t i = 0; i < job->rcpt_failure_cnt; i++) {
                free(job->rcpt_failures[i].rcpt);
                free(job->rcpt_failures[i].reply);
        }
        free(job->rcpt_failures);
        job->rcpt_failures = NULL;
        job->rcpt_failure_cnt = 0;
}

/*
 * The relay answered the commands pipelined behind a "." before the "."
 * itself: a 354 came where ss_job's RCPT reply @step was due, while the
 * transaction before it (ss_held) waits. No more transactions go behind a
 * "." to this relay.
 *
 * When every reply so far was a success and the 354 came at the last RCPT,
 * the replies were those of ss_job's own commands, one step early
 * (smtp-sink -W does that: it holds the reply to "." and answers what
 * follows): the "final reply" held was ss_job's MAIL reply. Then the
 * session goes on as the server sees it: ss_held waits for its real final
 * reply, and ss_job's message is sent now, its final reply after that.
 *
 * Otherwise the held transaction's outcome is unknown: TRANSIENT (it may
 * have been delivered); ss_job saw no message go out and is queued again;
 * the session closes.
 */
static void session_out_of_order(struct smtp_session *s, size_t step) {
        smtp_client_t *sc = s->ss_client;
        struct smtp_job *held = s->ss_held, *job = s->ss_job;
        size_t n = job->rcpt_cnt;
        int realign = step == n && s->ss_rcpt_ok + 1 == n &&
                      held->outcome == SMTP_OK && job->rcpt_failure_cnt == 0;

        if (!sc->sc_no_txn_pipelining)
                LOG(LL_WARN,
                    "smtp relay answers pipelined commands out of order; "
                    "no more transactions pipelined after end of data "
                    "relay=%s replies=%s",
                    sc->sc_relay, realign ? "realigned" : "unknown");
        sc->sc_no_txn_pipelining = 1;
        s->ss_held = NULL;
        if (realign) {
                s->ss_job = held;
                session_set_pnext(s, job);
                session_txn_begin(s, held->rcpt_cnt + 3);
                s->ss_step = held->rcpt_cnt + 2;
                s->ss_acked = 1;
                s->ss_data_end = s->ss_out_written; /* all of it went */
                s->ss_pnext_at_data = 1;
                s->ss_pnext_data_end = session_queue_data(s, job, 1);
                if (s->ss_pnext_data_end == 0) {
                        session_fail(s, session_cmd_error(s));
                        return;
                }
                session_arm(s);
                session_flush(s);
                return;
        }
        s->ss_job = NULL;
        session_close(s);
        job_clear_rcpt_failures(job);
        job->sj_state &= ~SJ_STATE_MASK;
        job->sj_session = NULL;
        queue_push(sc, job, QUEUE_FRONT);
        client_kick(sc);
        job_complete(sc, held, SMTP_TRANSIENT, 0,
                     "relay answered pipelined commands out of order after "
                     "end of data (the message may have been delivered)");
}

/* Handles one reply of a transaction. */
static void session_txn_reply(struct smtp_session *s, int code,
                              const char *text) {
        smtp_client_t *sc = s->ss_client;
        struct smtp_job *job = s->ss_job;
        size_t n = job->rcpt_cnt;
        size_t step = s->ss_step;
        int klass = code / 100;

        if (step >= s->ss_sent ||
            (step == n + 2 && s->ss_out_written < s->ss_data_end)) {
                /* a reply nobody asked for yet, e.g. a rejection while
                 * the message is still being sent */
                job = session_take_job(s);
                session_close(s);
                job_complete(sc, job,
                             klass == 2 ? SMTP_TRANSIENT
                                        : smtp_outcome_of(code),
                             code, text);
                return;
        }
        if (s->ss_held) {
                if (code == 354 && step <= n) {
                        session_out_of_order(s, step);
                        return;
                }
                if (step == n + 1 || code == 421)
                        session_release_held(s);
        }
        s->ss_acked = 1;
        s->ss_step++;

        if (code == 421) {
                job = session_take_job(s);
                session_close(s);
                job_complete(sc, job, SMTP_TRANSIENT, code, text);
                return;
        }

        if (step == 0) { /* MAIL */
                if (klass != 2) {
                        session_abort_txn(s, smtp_outcome_of(code), code, text);
                        return;
                }
                if (!s->ss_pipelined)
                        session_send_step(s, 1);
                else
                        session_arm(s);
                return;
        }

        if (step <= n) { /* RCPT */
                if (klass == 2) {
                        s->ss_rcpt_ok++;
                } else {
                        job_add_rcpt_failure(job, step - 1, code, text);
                        /* the deciding reply when all fail: the first 4xx,
                         * else the last 5xx */
                        if (klass == 4 && !s->ss_rcpt_4xx) {
                                s->ss_rcpt_4xx = 1;
                                job->code = code;
                                snprintf(job->reply, sizeof(job->reply), "%s",
                                         text);
                        } else if (!s->ss_rcpt_4xx) {
                                job->code = code;
                                snprintf(job->reply, sizeof(job->reply), "%s",
                                         text);
                        }
                }
                if (step == n && s->ss_rcpt_ok == 0) {
                        session_abort_txn(s,
                                          s->ss_rcpt_4xx ? SMTP_TRANSIENT
                                                         : SMTP_PERMANENT,
                                          job->code, job->reply);
                        return;
                }
                if (step == n && s->ss_bdat) {
                        /* no DATA: the BDAT reply is the final one */
                        s->ss_step = n + 2;
                        if (!s->ss_pipelined)
                                session_send_step(s, n + 1);
                        else
                                session_arm(s);
                        return;
                }
                if (!s->ss_pipelined)
                        session_send_step(s, step + 1);
                else
                        session_arm(s);
                return;
        }

        if (step == n + 1) { /* DATA */
                if (code == 354) {
                        session_start_data(s);
                        return;
                }
                session_abort_txn(
                        s, klass == 2 ? SMTP_TRANSIENT : smtp_outcome_of(code),
                        code, text);
                return;
        }

        /* end of data: the transaction is over whatever the reply */
        free(s->ss_unstuffed); /* all of it was written */
        s->ss_unstuffed = NULL;
        if (s->ss_data_ms >= 0)
                client_average(&sc->sc_final_avg_ms, &sc->sc_final_n,
                               loop_now_ms(sc->sc_loop) - s->ss_data_ms);
        job = session_take_job(s);
        if (s->ss_pnext && s->ss_pnext_at_data) {
                session_promote_next(s);
                job_complete(sc, job,
                             klass == 2   ? SMTP_OK
                             : klass == 5 ? SMTP_PERMANENT
                                          : SMTP_TRANSIENT,
                             code, text);
                return;
        }
        if (s->ss_pnext) {
                job->outcome = klass == 2   ? SMTP_OK
                               : klass == 5 ? SMTP_PERMANENT
                                            : SMTP_TRANSIENT;
                job->code = code;
                snprintf(job->reply, sizeof(job->reply), "%s", text);
                s->ss_held = job;
                session_promote_next(s);
                return;
        }
        if (klass == 2) {
                session_set_state(s, SS_IDLE, "message accepted");
                job_complete(sc, job, SMTP_OK, code, text);
                if (s->ss_state == SS_IDLE)
                        session_next(s);
                return;
        }
        session_rset(s);
        job_complete(sc, job, klass == 5 ? SMTP_PERMANENT : SMTP_TRANSIENT,
                     code, text);
}

/* Dispatches one complete reply by session state. */
static void session_on_reply(struct smtp_session *s, int code,
                             const char *text) {
        switch (s->ss_state) {
        case SS_CONNECTING:
                session_greet_reply(s, code, text);
                break;
        case SS_TXN:
                session_txn_reply(s, code, text);
                break;
        case SS_DRAIN:
                if (code == 421) {
                        session_close(s);
                        break;
                }
                s->ss_drain--;
                if (code == 354) {
                        /* DATA accepted although the transaction failed:
                         * end it empty, its reply is discarded too */
                        if (session_cmd(s, ".") == -1) {
                                session_close(s);
                                break;
                        }
                        s->ss_drain++;
                        if (session_flush(s) == -1)
                                break;
                }
                if (s->ss_drain == 0)
                        session_rset(s);
                else
                        session_arm(s);
                break;
        case SS_RSET:
                if (code / 100 != 2) {
                        session_close(s);
                        break;
                }
                session_set_state(s, SS_IDLE, "reset done");
                session_next(s);
                break;
        case SS_IDLE:
        case SS_QUIT:
        default:
                /* QUIT's reply, or something unsolicited (a 421 before an
                 * idle close): either way the session is over */
                session_close(s);
                break;
        }
}

/* Handles the complete replies in @len bytes at @in. @returns the bytes they
 * took, or -1 when the session is closed. */
static long session_process_replies(struct smtp_session *s, const char *in,
                                    size_t len) {
        size_t off = 0;

        while (off < len) {
                char text[sizeof(((struct smtp_job *)0)->reply)];
                int code = 0;
                long r;

                r = smtp_reply_parse(in + off, len - off, &code, text,
                                     sizeof(text));
                if (r == 0)
                        break;
                if (r < 0) {
                        session_fail(s, "protocol error (not an SMTP reply)");
                        return -1;
                }
                if (s->ss_state == SS_CONNECTING)
                        session_cap_reply(s, in + off, (size_t)r);
                off += (size_t)r;
                session_on_reply(s, code, text);
                if (s->ss_state == SS_DEAD)
                        return -1;
        }
        return (long)off;
}

/*
 * Takes @n bytes read into @p (the reader's buffer): the complete replies
 * are handled from there when nothing was left over before, and only the
 * start of a reply still coming waits in ss_in, which holds no memory the
 * rest of the time (SMTP_IN_MAX at most). @returns 0, or -1 when the
 * session is closed.
 */
static int session_take_input(struct smtp_session *s, const char *p, size_t n) {
        long used;

        if (dynbuf_len(&s->ss_in) == 0) {
                used = session_process_replies(s, p, n);
                if (used < 0)
                        return -1;
                p += used;
                n -= (size_t)used;
                if (n == 0)
                        return 0;
        }
        if (dynbuf_append(&s->ss_in, p, n) == -1) {
                session_fail(s, dynbuf_error(&s->ss_in) == DYNBUF_ENOMEM
                                        ? "out of memory"
                                        : "protocol error (reply too long)");
                return -1;
        }
        used = session_process_replies(s, dynbuf_ptr(&s->ss_in),
                                       dynbuf_len(&s->ss_in));
        if (used < 0)
                return -1;
        dynbuf_consume(&s->ss_in, (size_t)used);
        if (dynbuf_len(&s->ss_in) == 0)
                dynbuf_fini(&s->ss_in);
        return 0;
}

/* Reads until there is nothing more (through libcurl: until CURLE_AGAIN,
 * TLS may hold decrypted bytes the socket no longer shows; a plain socket
 * read short is drained, the loop's level-triggered wake says when more
 * comes) and handles every complete reply. Never called while replies are
 * being handled. */
static void session_read(struct smtp_session *s) {
        char buf[SMTP_READ_BUF];

        for (;;) {
                size_t n = 0;
                int rc = session_recv(s, buf, sizeof(buf), &n);

                if (rc == 0)
                        return;
                if (rc < 0) {
                        session_fail(s, "connection lost");
                        return;
                }
                if (n == 0) {
                        if (s->ss_state == SS_QUIT) {
                                session_close(s);
                                return;
                        }
                        session_fail(s, "connection lost");
                        return;
                }
                if (session_take_input(s, buf, n) == -1)
                        return;
                if (s->ss_raw && n < sizeof(buf))
                        return;
        }
}

static void session_io_cb(loop_t *loop, int fd, unsigned events, void *opaque) {
        struct smtp_session *s = opaque;

        (void)loop;
        (void)fd;
        if (s->ss_tcp_connecting) {
                session_tcp_connected(s);
                return;
        }
        if ((events & LOOP_WRITE) && session_out_pending(s)) {
                if (session_flush(s) == -1)
                        return;
        }
        if (events & (LOOP_READ | LOOP_ERROR))
                session_read(s);
}

static void session_timer_cb(loop_t *loop, void *opaque) {
        struct smtp_session *s = opaque;
        const struct smtp_client_conf *c = &s->ss_client->sc_conf;
        char reason[96];

        (void)loop;
        if (s->ss_sock_gone) {
                session_fail(s, "connection closed");
                return;
        }
        switch (s->ss_state) {
        case SS_CONNECTING: /* a direct session's connect, greeting, EHLO */
                if (s->ss_connect_errno) {
                        session_tcp_connected(s);
                        break;
                }
                if (s->ss_tcp_connecting) {
                        snprintf(reason, sizeof(reason),
                                 "no connection within %d ms",
                                 c->timeout_connect_ms);
                        session_greet_failed(s, "timeout", reason, 1);
                        break;
                }
                snprintf(reason, sizeof(reason), "no %s reply within %d ms",
                         s->ss_greet == GREET_WAIT   ? "greeting"
                         : s->ss_greet == GREET_EHLO ? "EHLO"
                                                     : "HELO",
                         c->timeout_connect_ms);
                session_greet_failed(s, "timeout", reason,
                                     s->ss_greet == GREET_WAIT);
                break;
        case SS_IDLE:
                session_quit(s);
                break;
        case SS_TXN:
                snprintf(reason, sizeof(reason), "timeout (%d ms)",
                         session_txn_timeout_ms(s));
                /* a timeout is an attempt: the server saw the command */
                s->ss_acked = 1;
                session_fail(s, reason);
                break;
        default:
                session_close(s);
                break;
        }
}

/* Gives @s the next queued job, or QUITs it, or leaves it idle. */
static void session_next(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        while (s->ss_state == SS_IDLE) {
                if (s->ss_messages >=
                    (unsigned)sc->sc_conf.session_max_messages) {
                        session_quit(s);
                        return;
                }
                if (sc->sc_q_head) {
                        struct smtp_job *job = sc->sc_q_head;

                        queue_unlink(sc, job);
                        if (session_start_job(s, job) == 0)
                                return;
                        continue;
                }
                if (sc->sc_closing) {
                        session_quit(s);
                        return;
                }
                idle_add(s);
                session_arm(s);
                return;
        }
}

/*
 * Connecting
 */

/* Takes one reply line (its CRLF optional) seen while the session opens:
 * kept for errors, and its EHLO capability noted. */
static void session_cap_line(struct smtp_session *s, const char *buf,
                             size_t l) {
        const char *kw;
        size_t kwlen;

        while (l > 0 && (buf[l - 1] == '\r' || buf[l - 1] == '\n'))
                l--;
        if (s->ss_text) {
                char *last = s->ss_text->last_line;
                size_t k = l < sizeof(s->ss_text->last_line)
                                   ? l
                                   : sizeof(s->ss_text->last_line) - 1;

                memcpy(last, buf, k);
                last[k] = '\0';
                for (size_t i = 0; i < k; i++) {
                        if ((unsigned char)last[i] < 0x20)
                                last[i] = '?';
                }
        }

        if (l >= 3 && memcmp(buf, "220", 3) == 0) {
                /* greeting, or ready for TLS: EHLO follows again */
                s->ss_cap_pipelining = s->ss_cap_size = 0;
                s->ss_cap_chunking = 0;
                s->ss_cap_8bitmime = s->ss_cap_smtputf8 = 0;
                s->ss_cap_auth = 0;
                s->ss_size_max = 0;
                return;
        }
        if (l < 5 || memcmp(buf, "250", 3) != 0 ||
            (buf[3] != '-' && buf[3] != ' '))
                return;
        kw = buf + 4;
        kwlen = 0;
        while (4 + kwlen < l && kw[kwlen] != ' ' && kw[kwlen] != '=')
                kwlen++;
#define KW_IS(name)                                                            \
        (kwlen == sizeof(name) - 1 && strncasecmp(kw, name, kwlen) == 0)
        if (KW_IS("PIPELINING")) {
                s->ss_cap_pipelining = 1;
        } else if (KW_IS("CHUNKING")) {
                s->ss_cap_chunking = 1;
        } else if (KW_IS("SIZE")) {
                uint64_t v = 0;

                s->ss_cap_size = 1;
                for (size_t i = 4 + kwlen + 1; i < l; i++) {
                        if (buf[i] < '0' || buf[i] > '9')
                                break;
                        if (v < UINT64_MAX / 10)
                                v = v * 10 + (uint64_t)(buf[i] - '0');
                }
                s->ss_size_max = v;
        } else if (KW_IS("8BITMIME")) {
                s->ss_cap_8bitmime = 1;
        } else if (KW_IS("SMTPUTF8")) {
                s->ss_cap_smtputf8 = 1;
        } else if (KW_IS("AUTH")) {
                s->ss_cap_auth = 1;
        }
#undef KW_IS
}

/* Captures reply lines and EHLO capabilities while libcurl connects. */
static size_t session_header_cb(char *buf, size_t size, size_t nitems,
                                void *userdata) {
        size_t len = size * nitems;

        session_cap_line(userdata, buf, len);
        return len;
}

/* Takes the lines of one complete reply of @len bytes at @p (a direct
 * session opening). */
static void session_cap_reply(struct smtp_session *s, const char *p,
                              size_t len) {
        while (len > 0) {
                const char *nl = memchr(p, '\n', len);
                size_t l = nl ? (size_t)(nl - p) + 1 : len;

                session_cap_line(s, p, l);
                p += l;
                len -= l;
        }
}

/* libcurl closes a socket: when it is the one a session drives (libcurl
 * pruned the connection as dead), the session must let go of it first. */
static int session_closesocket_cb(void *clientp, curl_socket_t fd) {
        struct smtp_session *s = clientp;
        smtp_client_t *sc = s->ss_client;

        if (s->ss_detaching && fd == s->ss_detach_fd) {
                /* a direct session takes the connection over */
                s->ss_kept = 1;
                smtp_curl_fd_release(sc, fd);
                return 0;
        }
        if (s->ss_state != SS_DEAD && s->ss_fd == fd) {
                loop_io_del(sc->sc_loop, fd);
                s->ss_fd = -1;
                s->ss_sock_gone = 1;
                idle_remove(s);
                loop_timer_start(sc->sc_loop, &s->ss_timer, 0);
        } else {
                smtp_curl_fd_release(sc, fd);
        }
        return close(fd);
}

/* A session could not be opened: the relay is unhealthy; the next attempt
 * waits for the backoff, or at most relay_probe_ms when the relay could not
 * be reached at all (@unreachable), since trying to connect costs a relay
 * that is down nothing. */
static void client_relay_failed(smtp_client_t *sc, struct smtp_session *s,
                                const char *what, const char *detail,
                                int unreachable) {
        char raw[sizeof(sc->sc_last_error)];
        int64_t delay, now = loop_now_ms(sc->sc_loop);

        sc->sc_failures_total++;
        snprintf(raw, sizeof(raw), "relay %s: %s: %s", sc->sc_relay, what,
                 detail);
        client_redact(sc, sc->sc_last_error, sizeof(sc->sc_last_error), raw);
        if (!sc->sc_healthy && !s->ss_probe) {
                /* one of several sessions opened together failed the same
                 * way: the failure was counted and logged already */
                LOG(LL_DEBUG, "smtp session failed error=%s",
                    sc->sc_last_error);
                return;
        }
        if (sc->sc_healthy && sc->sc_conf.health_cb)
                sc->sc_conf.health_cb(sc->sc_conf.health_opaque, 0);
        sc->sc_healthy = 0;
        if (sc->sc_relay_failures < INT_MAX)
                sc->sc_relay_failures++;
        delay = backoff_ms(sc->sc_conf.relay_backoff_initial_ms,
                           sc->sc_conf.relay_backoff_max_ms,
                           SMTP_RELAY_JITTER_PERCENT, sc->sc_relay_failures,
                           client_rand(sc));
        if (unreachable && delay > sc->sc_conf.relay_probe_ms)
                delay = sc->sc_conf.relay_probe_ms;
        if (delay < 1)
                delay = 1;
        loop_timer_start(sc->sc_loop, &sc->sc_retry_timer, delay);
        /* One warning when the relay turns unhealthy or fails another way,
         * then one every SMTP_RELAY_WARN_MS: a relay down for an hour and
         * probed every second does not fill the log. */
        if (sc->sc_warned_ms && now - sc->sc_warned_ms < SMTP_RELAY_WARN_MS &&
            sc->sc_warned_what && strcmp(sc->sc_warned_what, what) == 0) {
                sc->sc_failures_quiet++;
                LOG(LL_DEBUG, "relay still unhealthy relay=%s retry_in_ms=%lld",
                    sc->sc_relay, (long long)delay);
                return;
        }
        LOG(LL_WARN,
            "relay unhealthy relay=%s retry_in_ms=%lld queued=%zu "
            "failures_since_last_warning=%llu error=%s",
            sc->sc_relay, (long long)delay, sc->sc_queued,
            (unsigned long long)sc->sc_failures_quiet, sc->sc_last_error);
        sc->sc_warned_ms = now;
        sc->sc_failures_quiet = 0;
        sc->sc_warned_what = what; /* a string literal */
}

static void session_connect_failed(struct smtp_session *s, CURLcode res) {
        smtp_client_t *sc = s->ss_client;
        long code = 0;
        const char *what;
        char detail[CURL_ERROR_SIZE + 64];

        curl_easy_getinfo(s->ss_easy, CURLINFO_RESPONSE_CODE, &code);
        switch (res) {
        case CURLE_LOGIN_DENIED:
                what = "AUTH failed";
                break;
        case CURLE_USE_SSL_FAILED:
                what = "STARTTLS failed";
                break;
        case CURLE_COULDNT_RESOLVE_HOST:
                what = "cannot resolve host";
                break;
        case CURLE_COULDNT_CONNECT:
                what = "connect failed";
                break;
        case CURLE_OPERATION_TIMEDOUT:
                what = "timeout";
                break;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
                what = "TLS failed";
                break;
        case CURLE_WEIRD_SERVER_REPLY:
                what = "unexpected reply";
                break;
        default:
                what = "session setup failed";
                break;
        }
        if (code >= 400 && code <= 599 &&
            strtol(s->ss_text->last_line, NULL, 10) == code)
                snprintf(detail, sizeof(detail), "%s", s->ss_text->last_line);
        else if (s->ss_text->errbuf[0])
                snprintf(detail, sizeof(detail), "%s", s->ss_text->errbuf);
        else
                snprintf(detail, sizeof(detail), "%s", curl_easy_strerror(res));
        /* No reply from the relay at all: down, not refusing us. */
        client_relay_failed(sc, s, what, detail,
                            code == 0 && (res == CURLE_COULDNT_CONNECT ||
                                          res == CURLE_COULDNT_RESOLVE_HOST ||
                                          res == CURLE_OPERATION_TIMEDOUT));
        session_close(s);
}

/* Makes @fd the session's socket, watched for reading. @returns 0, or -1
 * (logged) with the session closed. */
static int session_take_fd(struct smtp_session *s, int fd) {
        smtp_client_t *sc = s->ss_client;

        s->ss_fd = fd;
        if (loop_io_add(sc->sc_loop, fd, LOOP_READ, session_io_cb, s) == -1) {
                LOG(LL_ERROR, "smtp: cannot watch session fd=%d error=%s", fd,
                    strerror(errno));
                session_close(s);
                return -1;
        }
        s->ss_watch = LOOP_READ;
        return 0;
}

/* The session is open (greeting, EHLO, STARTTLS and AUTH done): idle, the
 * relay healthy again. */
static void session_ready(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;

        session_set_state(s, SS_IDLE, "connected");
        client_average(&sc->sc_setup_avg_ms, &sc->sc_setup_n,
                       loop_now_ms(sc->sc_loop) - s->ss_open_ms);
        if (!sc->sc_healthy) {
                sc->sc_healthy = 1;
                sc->sc_relay_failures = 0;
                sc->sc_warned_ms = 0;
                sc->sc_failures_quiet = 0;
                loop_timer_stop(sc->sc_loop, &sc->sc_retry_timer);
                LOG(LL_INFO, "relay healthy relay=%s", sc->sc_relay);
                client_kick(sc);
                if (sc->sc_conf.health_cb)
                        sc->sc_conf.health_cb(sc->sc_conf.health_opaque, 1);
        }
        LOG(LL_DEBUG,
            "smtp session connected relay=%s fd=%d pipelining=%d chunking=%d "
            "size=%llu",
            sc->sc_relay, s->ss_fd, s->ss_cap_pipelining, s->ss_cap_chunking,
            (unsigned long long)s->ss_size_max);
}

/* A direct session's opening failed: a relay failure (@unreachable: no
 * reply came at all). */
static void session_greet_failed(struct smtp_session *s, const char *what,
                                 const char *detail, int unreachable) {
        client_relay_failed(s->ss_client, s, what, detail, unreachable);
        session_close(s);
}

/* Writes "EHLO <name>" or "HELO <name>" of a direct session. */
static void session_greet_send(struct smtp_session *s, const char *line) {
        if (session_cmd(s, line) == -1) {
                session_greet_failed(s, "session setup failed", "out of memory",
                                     0);
                return;
        }
        (void)session_flush(s);
}

/*
 * A reply while a direct session opens: the greeting (220), then EHLO's
 * (250 with the capabilities), or HELO's when EHLO was refused (as libcurl
 * does). Anything else is a relay failure naming the reply.
 */
static void session_greet_reply(struct smtp_session *s, int code,
                                const char *text) {
        smtp_client_t *sc = s->ss_client;
        char detail[sizeof(((struct smtp_job *)0)->reply) + 8];

        if (code == 220 && s->ss_greet == GREET_WAIT) {
                s->ss_greet = GREET_EHLO;
                session_greet_send(s, sc->sc_ehlo_line);
                return;
        }
        if (code == 250 && s->ss_greet != GREET_WAIT) {
                loop_timer_stop(sc->sc_loop, &s->ss_timer);
                session_ready(s);
                session_next(s);
                return;
        }
        if (s->ss_greet == GREET_EHLO && code != 421 && code / 100 != 2) {
                /* no capabilities: the 220 reset them, a refusal sets none */
                s->ss_greet = GREET_HELO;
                session_greet_send(s, sc->sc_helo_line);
                return;
        }
        snprintf(detail, sizeof(detail), "%d %s", code, text);
        session_greet_failed(s, "unexpected reply", detail, 0);
}

/*
 * libcurl connected a direct session: it lets go of the connection (the
 * socket is the session's from now on, libcurl's handle is freed) and the
 * session waits for the greeting, within smtp.timeout.connect.ms.
 */
static void session_detach(struct smtp_session *s, int fd) {
        smtp_client_t *sc = s->ss_client;
        struct smtp_multi *m = s->ss_multi;
        int64_t left;

        s->ss_detaching = 1;
        s->ss_detach_fd = fd;
        curl_multi_remove_handle(m->m_multi, s->ss_easy);
        s->ss_detaching = 0;
        if (!s->ss_kept) {
                /* libcurl kept the connection after all: not expected */
                session_greet_failed(s, "session setup failed",
                                     "libcurl did not let go of the socket", 0);
                return;
        }
        curl_easy_cleanup(s->ss_easy);
        s->ss_easy = NULL;
        free(s->ss_text);
        s->ss_text = NULL;
        if (--m->m_sessions == 0)
                sc->sc_multi_emptied = 1;
        s->ss_raw = 1;
        s->ss_greet = GREET_WAIT;
        if (session_take_fd(s, fd) == -1)
                return;
        /* what is left of smtp.timeout.connect.ms */
        left = sc->sc_conf.timeout_connect_ms -
               (loop_now_ms(sc->sc_loop) - s->ss_open_ms);
        loop_timer_start(sc->sc_loop, &s->ss_timer, left > 1 ? left : 1);
}

/* libcurl finished greeting..AUTH (a direct session: the TCP connection):
 * take the connection over. */
static void session_connected(struct smtp_session *s) {
        smtp_client_t *sc = s->ss_client;
        curl_socket_t fd = CURL_SOCKET_BAD;

        if (curl_easy_getinfo(s->ss_easy, CURLINFO_ACTIVESOCKET, &fd) !=
                    CURLE_OK ||
            fd == CURL_SOCKET_BAD) {
                session_connect_failed(s, CURLE_RECV_ERROR);
                return;
        }
        if (s->ss_direct) {
                session_detach(s, fd);
                return;
        }
        if (sc->sc_username && !s->ss_cap_auth) {
                client_relay_failed(sc, s, "AUTH failed",
                                    "server offers no AUTH", 0);
                session_close(s);
                return;
        }
        /* libcurl said CURL_POLL_REMOVE for it already; be sure */
        smtp_curl_fd_release(sc, fd);
        if (session_take_fd(s, fd) == -1)
                return;
        session_ready(s);
        /* the first recv re-attaches the connection to the handle (no
         * pruning from now on) and notices a server that hung up */
        session_read(s);
        if (s->ss_state != SS_DEAD)
                s->ss_raw = sc->sc_plain;
        if (s->ss_state == SS_IDLE)
                session_next(s);
}

static void client_check_multi(struct smtp_multi *m) {
        CURLMsg *msg;
        int left;

        for (;;) {
                struct smtp_session *s = NULL;

                msg = curl_multi_info_read(m->m_multi, &left);
                if (!msg)
                        break;
                if (msg->msg != CURLMSG_DONE)
                        continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &s);
                if (!s || s->ss_state != SS_CONNECTING)
                        continue;
                if (msg->data.result == CURLE_OK)
                        session_connected(s);
                else
                        session_connect_failed(s, msg->data.result);
        }
}

/*
 * Opens direct session @s to the relay's address: a non-blocking connect()
 * watched for writing (session_io_cb() then waits for the greeting), all of
 * it within smtp.timeout.connect.ms. TCP_NODELAY and keep-alive as libcurl
 * sets them. A connect() that fails at once fails from the timer, not from
 * inside the caller. @returns 0, or -1 (@s freed).
 */
static int session_open_ip(smtp_client_t *sc, struct smtp_session *s) {
        const struct smtp_client_conf *c = &sc->sc_conf;
        int one = 1, fd, idle = 60;

        fd = socket(sc->sc_addr.ss_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
                LOG(LL_ERROR, "smtp: cannot open a socket error=%s",
                    strerror(errno));
                free(s);
                return -1;
        }
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle));
        if (loop_io_add(sc->sc_loop, fd, LOOP_WRITE, session_io_cb, s) == -1) {
                LOG(LL_ERROR, "smtp: cannot watch session fd=%d error=%s", fd,
                    strerror(errno));
                close(fd);
                free(s);
                return -1;
        }
        s->ss_direct = 1;
        s->ss_raw = 1;
        s->ss_fd = fd;
        s->ss_watch = LOOP_WRITE;
        s->ss_tcp_connecting = 1;
        list_insert(&sc->sc_sessions, s);
        sc->sc_session_cnt++;
        sc->sc_connecting++;
        sc->sc_opened_total++;
        if (connect(fd, (const struct sockaddr *)&sc->sc_addr,
                    sc->sc_addrlen) == -1 &&
            errno != EINPROGRESS) {
                s->ss_connect_errno = errno;
                loop_timer_start(sc->sc_loop, &s->ss_timer, 0);
                return 0;
        }
        loop_timer_start(sc->sc_loop, &s->ss_timer, c->timeout_connect_ms);
        return 0;
}

/* The connect() of direct session @s ended: it waits for the greeting, or
 * the relay is unreachable. */
static void session_tcp_connected(struct smtp_session *s) {
        int err = s->ss_connect_errno;
        socklen_t len = sizeof(err);
        char detail[128];

        s->ss_tcp_connecting = 0;
        if (err == 0 &&
            getsockopt(s->ss_fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
                err = errno;
        if (err != 0) {
                snprintf(detail, sizeof(detail), "cannot connect to %s: %s",
                         s->ss_client->sc_relay, strerror(err));
                session_greet_failed(s, "connect failed", detail, 1);
                return;
        }
        s->ss_greet = GREET_WAIT;
        session_watch(s, LOOP_READ);
}

static int session_open(smtp_client_t *sc) {
        const struct smtp_client_conf *c = &sc->sc_conf;
        struct smtp_session *s;
        CURL *e;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -1;
        s->ss_client = sc;
        s->ss_fd = -1;
        dynbuf_init(&s->ss_out, SMTP_OUT_MAX);
        dynbuf_init(&s->ss_in, SMTP_IN_MAX);
        s->ss_state = SS_CONNECTING; /* counted in sc_connecting below */
        s->ss_probe = !sc->sc_healthy;
        s->ss_open_ms = loop_now_ms(sc->sc_loop);
        loop_timer_init(&s->ss_timer, session_timer_cb, s);
        if (sc->sc_direct_ip)
                return session_open_ip(sc, s);
        s->ss_text = calloc(1, sizeof(*s->ss_text));
        s->ss_multi = s->ss_text ? client_multi_for_session(sc) : NULL;
        e = s->ss_multi ? curl_easy_init() : NULL;
        if (!e) {
                free(s->ss_text);
                free(s);
                return -1;
        }
        s->ss_easy = e;
        s->ss_multi->m_sessions++;
        s->ss_direct = sc->sc_direct;
        if (s->ss_direct) {
                /* an http:// URL only to resolve and connect: no proxy */
                curl_easy_setopt(e, CURLOPT_URL, sc->sc_tcp_url);
                curl_easy_setopt(e, CURLOPT_PROXY, "");
        } else {
                curl_easy_setopt(e, CURLOPT_URL, sc->sc_url);
        }
        curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
        /* libcurl reads only the greeting, EHLO and AUTH replies (lines of
         * at most 512 octets, RFC 5321 4.5.3.1.5): its 16 KiB default
         * buffer per session is mostly unused. 1 KiB is libcurl's least. */
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PRIVATE, s);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->ss_text->errbuf);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, session_header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION,
                         session_closesocket_cb);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, s);
        curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, SMTP_MAXAGE_CONN_S);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)c->timeout_connect_ms);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_connect_ms);
        switch (c->starttls) {
        case CONFIG_TLS_REQUIRED:
                curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
                break;
        case CONFIG_TLS_OPPORTUNISTIC:
                curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
                break;
        default:
                curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_NONE);
                break;
        }
        if (sc->sc_username) {
                curl_easy_setopt(e, CURLOPT_USERNAME, sc->sc_username);
                curl_easy_setopt(e, CURLOPT_PASSWORD,
                                 sc->sc_password ? sc->sc_password : "");
        }
        if (sc->sc_ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, sc->sc_ca_file);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->tls_verify ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->tls_verify ? 2L : 0L);
        curl_easy_setopt(e, CURLOPT_SSLVERSION,
                         c->tls_min_version == CONFIG_TLS_V1_3
                                 ? (long)CURL_SSLVERSION_TLSv1_3
                                 : (long)CURL_SSLVERSION_TLSv1_2);

        list_insert(&sc->sc_sessions, s);
        sc->sc_session_cnt++;
        sc->sc_connecting++;
        sc->sc_opened_total++;
        if (curl_multi_add_handle(s->ss_multi->m_multi, e) != CURLM_OK) {
                session_close(s);
                return -1;
        }
        return 0;
}

/*
 * The client
 */

static void client_free_zombies(smtp_client_t *sc) {
        while (sc->sc_zombies) {
                struct smtp_session *s = sc->sc_zombies;

                list_remove(&sc->sc_zombies, s);
                loop_timer_stop(sc->sc_loop, &s->ss_timer);
                free(s->ss_text);
                free(s);
        }
}

/* Frees @m, which holds no session. */
static void multi_free(smtp_client_t *sc, struct smtp_multi *m) {
        curl_multi_cleanup(m->m_multi);
        loop_timer_stop(sc->sc_loop, &m->m_timer);
        for (size_t fd = 0; fd < sc->sc_curl_fds_cnt; fd++) {
                if (sc->sc_curl_fds[fd] == m) {
                        loop_io_del(sc->sc_loop, (int)fd);
                        sc->sc_curl_fds[fd] = NULL;
                }
        }
        free(m);
}

/* Frees the multi handles that hold no session, but one kept for the next
 * sessions: each costs about 25 KB and a socket pair, and a worker that
 * once had 5,000 sessions would keep 157 of them. Runs (from the kick timer,
 * once a session has left a multi handle empty) before the zombies
 * are freed, as in smtp_client_destroy(): a connection closed here reaches
 * session_closesocket_cb(). */
static void client_free_empty_multis(smtp_client_t *sc) {
        struct smtp_multi **pp = &sc->sc_multis;
        int spare = 0;

        while (*pp) {
                struct smtp_multi *m = *pp;

                if (m->m_sessions == 0 && spare) {
                        *pp = m->m_next;
                        multi_free(sc, m);
                        continue;
                }
                if (m->m_sessions == 0)
                        spare = 1;
                pp = &m->m_next;
        }
}

static void client_kick_cb(loop_t *loop, void *opaque) {
        smtp_client_t *sc = opaque;
        size_t want;

        (void)loop;
        if (sc->sc_multi_emptied) {
                sc->sc_multi_emptied = 0;
                client_free_empty_multis(sc);
        }
        client_free_zombies(sc);

        while (sc->sc_q_head && sc->sc_idle)
                session_next(sc->sc_idle);

        if (sc->sc_closing)
                return;
        if (sc->sc_queued <= sc->sc_connecting) {
                /* nothing to send: an unhealthy relay is still probed when
                 * other relays carry its traffic */
                if (sc->sc_conf.probe_idle && !sc->sc_healthy &&
                    !loop_timer_pending(&sc->sc_retry_timer) &&
                    sc->sc_connecting == 0)
                        session_open(sc);
                return;
        }
        want = sc->sc_queued - sc->sc_connecting;
        if (sc->sc_healthy) {
                while (want > 0 &&
                       sc->sc_session_cnt < (size_t)sc->sc_conf.sessions_max) {
                        if (session_open(sc) == -1)
                                break;
                        want--;
                }
        } else if (!loop_timer_pending(&sc->sc_retry_timer) &&
                   sc->sc_connecting == 0 &&
                   sc->sc_session_cnt < (size_t)sc->sc_conf.sessions_max) {
                session_open(sc); /* the probe */
        }
}

static void client_kick(smtp_client_t *sc) {
        if (!loop_timer_pending(&sc->sc_kick_timer))
                loop_timer_start(sc->sc_loop, &sc->sc_kick_timer, 0);
}

static void client_retry_cb(loop_t *loop, void *opaque) {
        (void)loop;
        client_kick(opaque);
}

void smtp_client_conf_from_config(struct smtp_client_conf *scc,
                                  const struct config *conf) {
        memset(scc, 0, sizeof(*scc));
        scc->url = conf->smtp_url;
        scc->starttls = conf->smtp_starttls;
        scc->username = conf->smtp_username;
        scc->password = conf->smtp_password;
        scc->ca_file = conf->smtp_ca_file;
        scc->tls_verify = conf->smtp_tls_verify;
        scc->tls_min_version = conf->smtp_tls_min_version;
        scc->helo_name = conf->smtp_helo_name;
        scc->pipelining = conf->smtp_pipelining;
        scc->pipelining_txns = conf->smtp_pipelining_txns;
        scc->chunking = conf->smtp_chunking;
        scc->sessions_max = conf->smtp_sessions_max;
        scc->session_max_messages = conf->smtp_session_max_messages;
        scc->session_idle_ms = conf->smtp_session_idle_ms;
        scc->timeout_connect_ms = conf->smtp_timeout_connect_ms;
        scc->timeout_command_ms = conf->smtp_timeout_command_ms;
        scc->timeout_data_ms = conf->smtp_timeout_data_ms;
        scc->relay_backoff_initial_ms = conf->smtp_relay_backoff_initial_ms;
        scc->relay_backoff_max_ms = conf->smtp_relay_backoff_max_ms;
        scc->relay_probe_ms = conf->smtp_relay_probe_ms;
}

/* Builds the libcurl URL (HELO name as the path) and the display name
 * scheme://host:port (no credentials). @returns 0 or -1 with @errstr. */
/* @returns "<verb> <name>", or NULL when out of memory. */
static char *client_greet_line(const char *verb, const char *name) {
        size_t vl = strlen(verb), nl = strlen(name);
        char *p = malloc(vl + 1 + nl + 1);

        if (!p)
                return NULL;
        memcpy(p, verb, vl);
        p[vl] = ' ';
        memcpy(p + vl + 1, name, nl + 1);
        return p;
}

/* Sets sc_addr when the host of sc_relay ("smtp://host:port") is an IPv4
 * or IPv6 ("[...]") address. */
static void client_direct_addr(smtp_client_t *sc) {
        const char *h = sc->sc_relay + 7, *colon = strrchr(h, ':');
        char host[64];
        size_t hl;
        long port;
        char *end;

        if (!colon)
                return;
        port = strtol(colon + 1, &end, 10);
        if (*end || port < 1 || port > 65535)
                return;
        hl = (size_t)(colon - h);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
                h++;
                hl -= 2;
        }
        if (hl == 0 || hl >= sizeof(host))
                return;
        memcpy(host, h, hl);
        host[hl] = '\0';
        memset(&sc->sc_addr, 0, sizeof(sc->sc_addr));
        {
                struct sockaddr_in *a4 = (struct sockaddr_in *)&sc->sc_addr;
                struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&sc->sc_addr;

                if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
                        a4->sin_family = AF_INET;
                        a4->sin_port = htons((uint16_t)port);
                        sc->sc_addrlen = sizeof(*a4);
                        sc->sc_direct_ip = 1;
                } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
                        a6->sin6_family = AF_INET6;
                        a6->sin6_port = htons((uint16_t)port);
                        sc->sc_addrlen = sizeof(*a6);
                        sc->sc_direct_ip = 1;
                }
        }
}

/*
 * Checks the EHLO name and, for a plain relay without AUTH, prepares the
 * direct sessions: the http:// URL libcurl connects to and the EHLO and
 * HELO lines. The name is smtp.helo.name, else the host name up to its
 * first dot (as libcurl does), else "localhost". @returns 0 or -1
 * (@errstr set).
 */
static int client_direct_setup(smtp_client_t *sc, char *errstr,
                               size_t errstr_size) {
        char host[256];
        const char *name = sc->sc_helo_name;
        size_t len;

        if (name) {
                for (const char *p = name; *p; p++) {
                        if ((unsigned char)*p <= 0x20 ||
                            (unsigned char)*p >= 0x7f) {
                                snprintf(errstr, errstr_size,
                                         "smtp.helo.name: only printable "
                                         "ASCII without spaces");
                                return -1;
                        }
                }
        }
        sc->sc_direct = sc->sc_plain && !sc->sc_username;
        if (!sc->sc_direct)
                return 0;
        if (!name) {
                char *dot;

                if (gethostname(host, sizeof(host)) != 0)
                        host[0] = '\0';
                host[sizeof(host) - 1] = '\0';
                dot = strchr(host, '.');
                if (dot)
                        *dot = '\0';
                for (char *p = host; *p; p++) {
                        if ((unsigned char)*p <= 0x20 ||
                            (unsigned char)*p >= 0x7f) {
                                host[0] = '\0';
                                break;
                        }
                }
                name = host[0] ? host : "localhost";
        }
        client_direct_addr(sc);
        /* sc_relay is "smtp://host:port" */
        len = strlen(sc->sc_relay);
        sc->sc_tcp_url = malloc(len + 2);
        if (sc->sc_tcp_url) {
                memcpy(sc->sc_tcp_url, "http", 4);
                memcpy(sc->sc_tcp_url + 4, sc->sc_relay + 4, len - 4);
                memcpy(sc->sc_tcp_url + len, "/", 2);
        }
        sc->sc_ehlo_line = client_greet_line("EHLO", name);
        sc->sc_helo_line = client_greet_line("HELO", name);
        if (!sc->sc_tcp_url || !sc->sc_ehlo_line || !sc->sc_helo_line) {
                snprintf(errstr, errstr_size, "smtp: out of memory");
                return -1;
        }
        return 0;
}

static int client_parse_url(smtp_client_t *sc, const char *url,
                            const char *helo, char *errstr,
                            size_t errstr_size) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *port = NULL, *full = NULL;
        char *path = NULL;
        int ret = -1;

        if (!u) {
                snprintf(errstr, errstr_size, "smtp.url: out of memory");
                goto out;
        }
        if (!url || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) !=
                    CURLUE_OK) {
                snprintf(errstr, errstr_size, "smtp.url: not a valid URL");
                goto out;
        }
        if (strcmp(scheme, "smtp") != 0 && strcmp(scheme, "smtps") != 0) {
                snprintf(errstr, errstr_size,
                         "smtp.url: scheme must be smtp:// or smtps://");
                goto out;
        }
        if (helo && *helo) {
                size_t len = strlen(helo) + 2;

                path = malloc(len);
                if (!path)
                        goto oom;
                snprintf(path, len, "/%s", helo);
                if (curl_url_set(u, CURLUPART_PATH, path, CURLU_URLENCODE) !=
                    CURLUE_OK) {
                        snprintf(errstr, errstr_size,
                                 "smtp.helo.name: not usable in a URL");
                        goto out;
                }
        }
        if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK)
                goto oom;
        sc->sc_url = strdup(full);
        {
                size_t len = strlen(scheme) + strlen(host) + strlen(port) + 5;

                sc->sc_relay = malloc(len);
                if (sc->sc_relay)
                        snprintf(sc->sc_relay, len, "%s://%s:%s", scheme, host,
                                 port);
        }
        if (!sc->sc_url || !sc->sc_relay)
                goto oom;
        ret = 0;
        goto out;
oom:
        snprintf(errstr, errstr_size, "smtp: out of memory");
out:
        free(path);
        curl_free(full);
        curl_free(port);
        curl_free(host);
        curl_free(scheme);
        curl_url_cleanup(u);
        return ret;
}

smtp_client_t *smtp_client_new(loop_t *loop, const struct smtp_client_conf *scc,
                               smtp_done_cb *done_cb, void *opaque,
                               char *errstr, size_t errstr_size) {
        smtp_client_t *sc;

        if (scc->sessions_max < 1 || scc->session_max_messages < 1 ||
            scc->session_idle_ms < 0 || scc->timeout_connect_ms < 1 ||
            scc->timeout_command_ms < 1 || scc->timeout_data_ms < 1 ||
            scc->relay_backoff_initial_ms < 1 ||
            scc->relay_backoff_max_ms < scc->relay_backoff_initial_ms ||
            scc->relay_probe_ms < 1) {
                snprintf(errstr, errstr_size,
                         "smtp: invalid client settings (limits, timeouts "
                         "or backoff out of range)");
                return NULL;
        }
        sc = calloc(1, sizeof(*sc));
        if (!sc) {
                snprintf(errstr, errstr_size, "smtp: out of memory");
                return NULL;
        }
        sc->sc_loop = loop;
        sc->sc_done_cb = done_cb;
        sc->sc_opaque = opaque;
        sc->sc_conf = *scc;
        sc->sc_no_txn_pipelining = !scc->pipelining_txns;
        sc->sc_healthy = 1;
        sc->sc_rand = (uint64_t)loop_clock_ms() ^ (uint64_t)(uintptr_t)sc ^
                      0x9e3779b97f4a7c15ull;
        loop_timer_init(&sc->sc_kick_timer, client_kick_cb, sc);
        loop_timer_init(&sc->sc_retry_timer, client_retry_cb, sc);

        if (client_parse_url(sc, scc->url, scc->helo_name, errstr,
                             errstr_size) == -1)
                goto err;
        sc->sc_plain = strncmp(sc->sc_relay, "smtp://", 7) == 0 &&
                       scc->starttls == CONFIG_TLS_OFF;
        sc->sc_username = smtp_strdup0(scc->username);
        sc->sc_password = smtp_strdup0(scc->password);
        sc->sc_ca_file = smtp_strdup0(scc->ca_file);
        sc->sc_helo_name = smtp_strdup0(scc->helo_name);
        if ((scc->username && *scc->username && !sc->sc_username) ||
            (scc->password && *scc->password && !sc->sc_password) ||
            (scc->ca_file && *scc->ca_file && !sc->sc_ca_file) ||
            (scc->helo_name && *scc->helo_name && !sc->sc_helo_name)) {
                snprintf(errstr, errstr_size, "smtp: out of memory");
                goto err;
        }
        if (client_direct_setup(sc, errstr, errstr_size) == -1)
                goto err;
        sc->sc_conf.url = sc->sc_url;
        sc->sc_conf.username = sc->sc_username;
        sc->sc_conf.password = sc->sc_password;
        sc->sc_conf.ca_file = sc->sc_ca_file;
        sc->sc_conf.helo_name = sc->sc_helo_name;
        return sc;

err:
        smtp_client_destroy(sc);
        return NULL;
}

void smtp_client_destroy(smtp_client_t *sc) {
        if (!sc)
                return;
        while (sc->sc_sessions) {
                struct smtp_session *s = sc->sc_sessions;

                if (s->ss_job) {
                        s->ss_job->sj_state = SJ_IDLE;
                        s->ss_job->sj_session = NULL;
                        session_take_job(s);
                }
                if (s->ss_pnext) {
                        s->ss_pnext->sj_state = SJ_IDLE;
                        s->ss_pnext->sj_session = NULL;
                        session_set_pnext(s, NULL);
                        s->ss_pnext_at_data = 0;
                }
                if (s->ss_held) {
                        s->ss_held->sj_state = SJ_IDLE;
                        s->ss_held->sj_session = NULL;
                        s->ss_held = NULL;
                }
                session_close(s);
        }
        while (sc->sc_q_head)
                queue_unlink(sc, sc->sc_q_head);
        /* before the zombies go: a socket closed here reaches
         * session_closesocket_cb() */
        while (sc->sc_multis) {
                struct smtp_multi *m = sc->sc_multis;

                sc->sc_multis = m->m_next;
                multi_free(sc, m);
        }
        client_free_zombies(sc);
        loop_timer_stop(sc->sc_loop, &sc->sc_kick_timer);
        loop_timer_stop(sc->sc_loop, &sc->sc_retry_timer);
        free(sc->sc_curl_fds);
        free(sc->sc_url);
        free(sc->sc_relay);
        free(sc->sc_username);
        free(sc->sc_password);
        free(sc->sc_ca_file);
        free(sc->sc_helo_name);
        free(sc->sc_tcp_url);
        free(sc->sc_ehlo_line);
        free(sc->sc_helo_line);
        free(sc);
}

void smtp_client_submit(smtp_client_t *sc, struct smtp_job *job) {
        job->sj_state = SJ_IDLE;
        job->sj_client = sc;
        queue_push(sc, job, QUEUE_BACK);
        client_kick(sc);
}

void smtp_client_submit_first(smtp_client_t *sc, struct smtp_job *job) {
        job->sj_state = SJ_IDLE;
        job->sj_client = sc;
        queue_push(sc, job, QUEUE_PACED);
        client_kick(sc);
}

int smtp_client_cancel(smtp_client_t *sc, struct smtp_job *job) {
        if ((job->sj_state & SJ_STATE_MASK) != SJ_QUEUED)
                return -1;
        queue_unlink(sc, job);
        return 0;
}

struct smtp_job *smtp_client_take_queued(smtp_client_t *sc) {
        struct smtp_job *job = sc->sc_q_head;

        if (job)
                queue_unlink(sc, job);
        return job;
}

smtp_client_t *smtp_job_client(const struct smtp_job *job) {
        return job->sj_client;
}

void smtp_client_close_idle(smtp_client_t *sc) {
        sc->sc_closing = 1;
        while (sc->sc_idle)
                session_quit(sc->sc_idle);
}

void smtp_client_stats(const smtp_client_t *sc, struct smtp_stats *st) {
        memset(st, 0, sizeof(*st));
        st->sessions_open = sc->sc_session_cnt;
        st->sessions_busy = sc->sc_busy;
        for (const struct smtp_session *s = sc->sc_sessions; s; s = s->ss_next)
                st->transactions += (s->ss_job != NULL) +
                                    (s->ss_pnext != NULL) +
                                    (s->ss_held != NULL);
        st->jobs_queued = sc->sc_queued;
        st->relay_healthy = sc->sc_healthy;
        st->sessions_opened_total = sc->sc_opened_total;
        st->relay_failures_total = sc->sc_failures_total;
        st->pipelined_total = sc->sc_pipelined_total;
        snprintf(st->last_relay_error, sizeof(st->last_relay_error), "%s",
                 sc->sc_last_error);
}
