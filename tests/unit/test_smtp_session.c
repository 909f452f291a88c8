/*
 * Unit tests of the smtp sessions against a scripted peer: a small SMTP
 * server on a thread of the test, listening on 127.0.0.1 (ephemeral port),
 * that follows a script (expect a line, send a reply whole or one byte at a
 * time, read the payload, stay quiet, close, wait for the client to close).
 * The real client runs on a loop of its own and the tests check the jobs'
 * outcomes, what the peer received, and how sessions are reused, reset and
 * reopened.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dynbuf.h"
#include "log.h"
#include "loop.h"
#include "smtp.h"

#define PEER_WAIT_MS 2000 /* longest wait of the peer for the client */
#define RUN_MAX_MS 3000 /* longest run of one scenario */
#define PEER_LOG_MAX (1024 * 1024)
#define PEER_IN_MAX (256 * 1024)

enum peer_op {
        P_END = 0,
        P_ACCEPT, /* take the next connection */
        P_EXPECT, /* read one line, which must be arg (without CRLF) */
        P_SEND, /* send arg in one write */
        P_DRIBBLE, /* send arg one byte per write, 1 ms apart */
        P_DATA, /* read a payload up to and with its "\r\n.\r\n" */
        P_QUIET, /* nothing may arrive for ms */
        P_CLOSE, /* close the connection */
        P_EOF, /* the client must close the connection (nothing else) */
        P_OTHER, /* go on with the other connection (a second one) */
        P_CHUNK, /* read "BDAT <n> LAST" and n bytes of payload */
};

struct peer_step {
        enum peer_op op;
        const char *arg;
        int ms;
};

#define ACCEPT                                                                 \
        { P_ACCEPT, NULL, 0 }
#define EXPECT(line)                                                           \
        { P_EXPECT, line, 0 }
#define SEND(text)                                                             \
        { P_SEND, text, 0 }
#define DRIBBLE(text)                                                          \
        { P_DRIBBLE, text, 0 }
#define DATA                                                                   \
        { P_DATA, NULL, 0 }
#define QUIET(ms)                                                              \
        { P_QUIET, NULL, ms }
#define CLOSE                                                                  \
        { P_CLOSE, NULL, 0 }
#define CLIENT_CLOSES                                                          \
        { P_EOF, NULL, 0 }
#define END                                                                    \
        { P_END, NULL, 0 }
#define OTHER                                                                  \
        { P_OTHER, NULL, 0 }
#define CHUNK                                                                  \
        { P_CHUNK, NULL, 0 }

#define GREETING "220 peer.test ESMTP\r\n"
#define EHLO_LINE "EHLO client.test"
#define CAPS_PIPELINING "250-peer.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
#define CAPS_PLAIN "250-peer.test\r\n250 8BITMIME\r\n"
/* A connection up to the end of EHLO, with @caps as the reply to it. */
#define OPEN(caps) ACCEPT, SEND(GREETING), EXPECT(EHLO_LINE), SEND(caps)
#define BYE EXPECT("QUIT"), SEND("221 bye\r\n"), CLIENT_CLOSES

/* The scripted SMTP server. Its fields other than p_stop are read by the
 * test thread only once the peer thread has ended. */
struct peer {
        int p_lfd;
        int p_port;
        int p_fd;
        const struct peer_step *p_script;
        pthread_t p_thread;
        int p_started;
        atomic_int p_done;
        atomic_int p_stop;
        char p_in[PEER_IN_MAX];
        size_t p_in_len;
        /* the other connection (P_OTHER swaps it with the one above) */
        int p_fd2;
        char p_in2[PEER_IN_MAX];
        size_t p_in2_len;
        struct dynbuf p_log; /* each line received, then "\n" */
        struct dynbuf p_payload; /* the payloads, with their terminator */
        int p_accepts;
        char p_err[256]; /* "" unless the script failed */
};

static int64_t clock_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void peer_fail(struct peer *p, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static void peer_fail(struct peer *p, const char *fmt, ...) {
        va_list ap;

        if (p->p_err[0])
                return;
        va_start(ap, fmt);
        vsnprintf(p->p_err, sizeof(p->p_err), fmt, ap);
        va_end(ap);
}

/* Waits until @fd is readable for at most @ms, in slices so that a stopped
 * test ends the peer soon. @returns 1 when readable, 0 when not. */
static int peer_wait(struct peer *p, int fd, int ms) {
        int64_t end = clock_ms() + ms;

        while (!atomic_load(&p->p_stop)) {
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                int64_t left = end - clock_ms();

                if (left <= 0)
                        return 0;
                if (poll(&pfd, 1, left < 20 ? (int)left : 20) > 0)
                        return 1;
        }
        return 0;
}

/* Reads more input within @ms. @returns bytes read, 0 at EOF, -1 when
 * nothing came. */
static long peer_recv(struct peer *p, int ms) {
        ssize_t n;

        if (p->p_in_len == sizeof(p->p_in) || !peer_wait(p, p->p_fd, ms))
                return -1;
        n = recv(p->p_fd, p->p_in + p->p_in_len, sizeof(p->p_in) - p->p_in_len,
                 0);
        if (n < 0)
                return errno == ECONNRESET ? 0 : -1;
        p->p_in_len += (size_t)n;
        return (long)n;
}

static void peer_consume(struct peer *p, size_t n) {
        memmove(p->p_in, p->p_in + n, p->p_in_len - n);
        p->p_in_len -= n;
}

/* Reads input until it holds @delim. @returns the length up to and with
 * @delim, or 0 (the script failed). */
static size_t peer_read_until(struct peer *p, const char *delim,
                              const char *what) {
        size_t dlen = strlen(delim);

        for (;;) {
                const char *at = memmem(p->p_in, p->p_in_len, delim, dlen);
                long n;

                if (at)
                        return (size_t)(at - p->p_in) + dlen;
                n = peer_recv(p, PEER_WAIT_MS);
                if (n <= 0) {
                        peer_fail(p, "%s: %s (have \"%.*s\")", what,
                                  n == 0 ? "connection closed" : "timeout",
                                  (int)p->p_in_len, p->p_in);
                        return 0;
                }
        }
}

static int peer_send(struct peer *p, const char *text, int dribble) {
        size_t len = strlen(text);
        size_t step = dribble ? 1 : len;

        for (size_t off = 0; off < len; off += step) {
                if (send(p->p_fd, text + off, step, MSG_NOSIGNAL) !=
                    (ssize_t)step) {
                        peer_fail(p, "send \"%s\": %s", text, strerror(errno));
                        return -1;
                }
                if (dribble)
                        usleep(1000);
        }
        return 0;
}

static int peer_accept(struct peer *p) {
        int one = 1;

        if (!peer_wait(p, p->p_lfd, PEER_WAIT_MS)) {
                peer_fail(p, "no connection");
                return -1;
        }
        p->p_fd = accept(p->p_lfd, NULL, NULL);
        if (p->p_fd == -1) {
                peer_fail(p, "accept: %s", strerror(errno));
                return -1;
        }
        setsockopt(p->p_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        p->p_accepts++;
        p->p_in_len = 0;
        return 0;
}

static void peer_close(struct peer *p) {
        if (p->p_fd != -1)
                close(p->p_fd);
        p->p_fd = -1;
}

/* Runs one step. @returns 0, or -1 when the script failed. */
static int peer_step(struct peer *p, const struct peer_step *st) {
        size_t n;
        long r;

        switch (st->op) {
        case P_ACCEPT:
                peer_close(p);
                return peer_accept(p);
        case P_EXPECT:
                n = peer_read_until(p, "\r\n", st->arg);
                if (n == 0)
                        return -1;
                dynbuf_append(&p->p_log, p->p_in, n - 2);
                dynbuf_appendc(&p->p_log, '\n');
                if (n - 2 != strlen(st->arg) ||
                    memcmp(p->p_in, st->arg, n - 2) != 0) {
                        peer_fail(p, "expected \"%s\", got \"%.*s\"", st->arg,
                                  (int)(n - 2), p->p_in);
                        return -1;
                }
                peer_consume(p, n);
                return 0;
        case P_SEND:
        case P_DRIBBLE:
                return peer_send(p, st->arg, st->op == P_DRIBBLE);
        case P_DATA:
                n = peer_read_until(p, "\r\n.\r\n", "payload");
                if (n == 0)
                        return -1;
                dynbuf_append(&p->p_payload, p->p_in, n);
                dynbuf_appends(&p->p_log, "<payload>\n");
                peer_consume(p, n);
                return 0;
        case P_QUIET:
                if (p->p_in_len == 0 && peer_recv(p, st->ms) == -1)
                        return 0;
                peer_fail(p, "expected quiet, got \"%.*s\"", (int)p->p_in_len,
                          p->p_in);
                return -1;
        case P_CLOSE:
                peer_close(p);
                return 0;
        case P_CHUNK: {
                char line[64];
                size_t size;
                char tail;

                n = peer_read_until(p, "\r\n", "BDAT");
                if (n == 0)
                        return -1;
                snprintf(line, sizeof(line), "%.*s", (int)(n - 2), p->p_in);
                if (sscanf(line, "BDAT %zu LAST%c", &size, &tail) != 1) {
                        peer_fail(p, "expected BDAT <size> LAST, got \"%s\"",
                                  line);
                        return -1;
                }
                dynbuf_appends(&p->p_log, line);
                dynbuf_appends(&p->p_log, "\n<chunk>\n");
                peer_consume(p, n);
                while (p->p_in_len < size) {
                        if (peer_recv(p, PEER_WAIT_MS) <= 0) {
                                peer_fail(p, "chunk: %zu of %zu bytes",
                                          p->p_in_len, size);
                                return -1;
                        }
                }
                dynbuf_append(&p->p_payload, p->p_in, size);
                peer_consume(p, size);
                return 0;
        }
        case P_OTHER: {
                static char tmp[PEER_IN_MAX]; /* the peer thread's only */
                int fd = p->p_fd;

                p->p_fd = p->p_fd2;
                p->p_fd2 = fd;
                memcpy(tmp, p->p_in, p->p_in_len);
                memcpy(p->p_in, p->p_in2, p->p_in2_len);
                memcpy(p->p_in2, tmp, p->p_in_len);
                n = p->p_in_len;
                p->p_in_len = p->p_in2_len;
                p->p_in2_len = n;
                return 0;
        }
        case P_EOF:
                r = p->p_in_len > 0 ? 1 : peer_recv(p, PEER_WAIT_MS);
                if (r == 0) {
                        dynbuf_appends(&p->p_log, "<closed>\n");
                        peer_close(p);
                        return 0;
                }
                peer_fail(p, "expected the client to close, got %s \"%.*s\"",
                          r < 0 ? "nothing" : "input", (int)p->p_in_len,
                          p->p_in);
                return -1;
        case P_END:
                break;
        }
        return 0;
}

static void *peer_main(void *arg) {
        struct peer *p = arg;

        for (const struct peer_step *st = p->p_script; st->op != P_END; st++) {
                if (peer_step(p, st) == -1)
                        break;
        }
        peer_close(p);
        if (p->p_fd2 != -1)
                close(p->p_fd2);
        p->p_fd2 = -1;
        atomic_store(&p->p_done, 1);
        return NULL;
}

/*
 * The fixture: a loop, a client on it, the peer and up to FX_JOBS jobs.
 */

#define FX_JOBS 4

struct fx {
        loop_t *loop;
        smtp_client_t *sc;
        struct smtp_client_conf conf;
        char url[64];
        struct peer peer;
        struct smtp_job jobs[FX_JOBS];
        size_t submitted;
        size_t done;
};

static void fx_done_cb(struct smtp_job *job, void *opaque) {
        struct fx *f = opaque;

        (void)job;
        f->done++;
        if (f->done == f->submitted)
                smtp_client_close_idle(f->sc);
}

/* Binds @fd to 127.0.0.1 on a free port. @returns the port, with the
 * address in @sa. */
static int bind_loopback(int fd, struct sockaddr_in *sa) {
        socklen_t salen = sizeof(*sa);

        memset(sa, 0, sizeof(*sa));
        sa->sin_family = AF_INET;
        sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)sa, sizeof(*sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)sa, &salen), 0);
        return ntohs(sa->sin_port);
}

static int fx_setup(void **state) {
        struct fx *f = calloc(1, sizeof(*f));
        struct sockaddr_in sa;

        assert_non_null(f);
        f->loop = loop_new();
        assert_non_null(f->loop);
        f->peer.p_fd = f->peer.p_fd2 = -1;
        dynbuf_init(&f->peer.p_log, PEER_LOG_MAX);
        dynbuf_init(&f->peer.p_payload, PEER_LOG_MAX);
        f->peer.p_lfd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(f->peer.p_lfd >= 0);
        f->peer.p_port = bind_loopback(f->peer.p_lfd, &sa);
        assert_int_equal(listen(f->peer.p_lfd, 8), 0);
        snprintf(f->url, sizeof(f->url), "smtp://127.0.0.1:%d", f->peer.p_port);

        f->conf.url = f->url;
        f->conf.starttls = CONFIG_TLS_OFF;
        f->conf.tls_verify = 1;
        f->conf.helo_name = "client.test";
        f->conf.pipelining = 1;
        f->conf.pipelining_txns = 1;
        f->conf.chunking = 1;
        f->conf.sessions_max = 1;
        f->conf.session_max_messages = 100;
        f->conf.session_idle_ms = 10000;
        f->conf.timeout_connect_ms = 1000;
        f->conf.timeout_command_ms = 1000;
        f->conf.timeout_data_ms = 1000;
        f->conf.relay_backoff_initial_ms = 10;
        f->conf.relay_backoff_max_ms = 20;
        f->conf.relay_probe_ms = 10;
        *state = f;
        return 0;
}

/* Stops the peer (at once when it still waits) and waits for its end. */
static void fx_stop_peer(struct fx *f) {
        if (!f->peer.p_started)
                return;
        atomic_store(&f->peer.p_stop, 1);
        pthread_join(f->peer.p_thread, NULL);
        f->peer.p_started = 0;
}

static int fx_teardown(void **state) {
        struct fx *f = *state;

        smtp_client_destroy(f->sc);
        fx_stop_peer(f);
        close(f->peer.p_lfd);
        dynbuf_fini(&f->peer.p_log);
        dynbuf_fini(&f->peer.p_payload);
        for (size_t i = 0; i < FX_JOBS; i++)
                smtp_job_reset(&f->jobs[i]);
        loop_destroy(f->loop);
        free(f);
        return 0;
}

/* Fills job @i: from a@client.test to @rcpts (NULL-terminated), @body is
 * the dot-stuffed payload followed by its ".\r\n". */
static struct smtp_job *fx_job(struct fx *f, size_t i, const char *const *rcpts,
                               const char *body) {
        struct smtp_job *job = &f->jobs[i];
        size_t n = 0, len = strlen(body);

        while (rcpts[n])
                n++;
        assert_true(len >= 3 && strcmp(body + len - 3, ".\r\n") == 0);
        job->mail_from = "a@client.test";
        job->rcpts = rcpts;
        job->rcpt_cnt = n;
        job->data = body;
        job->data_len = len - 3;
        return job;
}

/* Starts the peer on @script and a client that is to carry @njobs jobs
 * (its idle sessions quit once they are done). */
static void fx_start(struct fx *f, const struct peer_step *script,
                     size_t njobs) {
        char errstr[256];

        f->peer.p_script = script;
        assert_int_equal(
                pthread_create(&f->peer.p_thread, NULL, peer_main, &f->peer),
                0);
        f->peer.p_started = 1;
        f->sc = smtp_client_new(f->loop, &f->conf, fx_done_cb, f, errstr,
                                sizeof(errstr));
        assert_non_null(f->sc);
        f->submitted = njobs;
}

/* Runs the loop until @ndone jobs are done (and, with @script_end, the
 * script has ended too), RUN_MAX_MS at most. */
static void fx_wait(struct fx *f, size_t ndone, int script_end) {
        int64_t end = loop_clock_ms() + RUN_MAX_MS;

        while ((f->done < ndone ||
                (script_end && !atomic_load(&f->peer.p_done))) &&
               loop_clock_ms() < end)
                assert_true(loop_run_once(f->loop, 10) >= 0);
}

/* Runs the loop until every job is done and the script has ended, then
 * checks the script ran to its end and every job is done. */
static void fx_finish(struct fx *f) {
        fx_wait(f, f->submitted, 1);
        fx_stop_peer(f);
        assert_string_equal(f->peer.p_err, "");
        assert_int_equal(f->done, f->submitted);
}

/* Starts the peer on @script and a client, submits the first @njobs jobs
 * (filled by fx_job()) and runs the loop until every job is done and the
 * script has ended, RUN_MAX_MS at most; then checks the script ran to its
 * end. */
static void fx_run(struct fx *f, const struct peer_step *script, size_t njobs) {
        fx_start(f, script, njobs);
        for (size_t i = 0; i < njobs; i++)
                smtp_client_submit(f->sc, &f->jobs[i]);
        fx_finish(f);
}

static const char *peer_log(const struct fx *f) {
        const char *s = dynbuf_ptr(&f->peer.p_log);

        return s ? s : "";
}

static void assert_outcome(const struct smtp_job *job, enum smtp_outcome o,
                           int code, const char *reply) {
        assert_int_equal(job->outcome, o);
        assert_int_equal(job->code, code);
        assert_string_equal(job->reply, reply);
}

/* @returns 1 when @s starts with @prefix. */
static int starts_with(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static const char *const rcpt1[] = {"b@peer.test", NULL};
static const char *const rcpt3[] = {"b@peer.test", "c@peer.test", "d@peer.test",
                                    NULL};
#define BODY "Subject: t\r\n\r\nhello\r\n..dot-stuffed line\r\n.\r\n"
#define BODY2 "Subject: u\r\n\r\nsecond\r\n.\r\n"

#define TXN1_PIPELINED                                                         \
        EXPECT("MAIL FROM:<a@client.test>"), EXPECT("RCPT TO:<b@peer.test>"),  \
                EXPECT("DATA")
#define TXN3_PIPELINED                                                         \
        EXPECT("MAIL FROM:<a@client.test>"), EXPECT("RCPT TO:<b@peer.test>"),  \
                EXPECT("RCPT TO:<c@peer.test>"),                               \
                EXPECT("RCPT TO:<d@peer.test>"), EXPECT("DATA")
#define LOG_TXN1 "MAIL FROM:<a@client.test>\nRCPT TO:<b@peer.test>\nDATA\n"
#define LOG_TXN3                                                               \
        "MAIL FROM:<a@client.test>\nRCPT TO:<b@peer.test>\n"                   \
        "RCPT TO:<c@peer.test>\nRCPT TO:<d@peer.test>\nDATA\n"
/* A command that must come alone (nothing after it until its reply). */
#define LOCKSTEP(cmd, reply) EXPECT(cmd), QUIET(30), SEND(reply)
#define MAIL_LOCKSTEP LOCKSTEP("MAIL FROM:<a@client.test>", "250 ok\r\n")
/* The rest of a transaction without pipelining, from DATA on, accepted. */
#define DATA_LOCKSTEP LOCKSTEP("DATA", "354 go\r\n"), DATA, SEND("250 done\r\n")
/* A whole transaction of job BODY to rcpt1 without pipelining, accepted. */
#define TXN1_LOCKSTEP                                                          \
        MAIL_LOCKSTEP, LOCKSTEP("RCPT TO:<b@peer.test>", "250 ok\r\n"),        \
                DATA_LOCKSTEP
/* A whole pipelined transaction of job BODY2 to rcpt1, accepted. */
#define TXN2_OK                                                                \
        TXN1_PIPELINED, SEND("250 ok\r\n250 ok\r\n354 go\r\n"), DATA,          \
                SEND("250 2.0.0 queued as B\r\n")

/* A session that carries job 1 (see run_two()) or a job with BODY2 to
 * rcpt1, then quits. */
static const struct peer_step next_session[] = {
        OPEN(CAPS_PIPELINING),
        TXN2_OK,
        BYE,
        END,
};

/* Copies the steps of @src (ending in END), @count at most, to
 * @dst[@n..] and ends them with END; @dst has room for @cap steps.
 * @returns the new count. */
static size_t script_add(struct peer_step *dst, size_t n, size_t cap,
                         const struct peer_step *src, size_t count) {
        for (; src->op != P_END && count > 0; src++, count--) {
                assert_true(n + 1 < cap);
                dst[n++] = *src;
        }
        dst[n] = (struct peer_step)END;
        return n;
}

/* @dst = the steps of @a then those of @b. */
static void script_join(struct peer_step *dst, size_t cap,
                        const struct peer_step *a, const struct peer_step *b) {
        script_add(dst, script_add(dst, 0, cap, a, SIZE_MAX), cap, b, SIZE_MAX);
}

/* Runs job 0 (@rcpts, @body) against @script and checks its outcome.
 * @returns the fixture, for more checks. */
static struct fx *run_one(void **state, const struct peer_step *script,
                          const char *const *rcpts, const char *body,
                          enum smtp_outcome o, int code, const char *reply) {
        struct fx *f = *state;

        fx_job(f, 0, rcpts, body);
        fx_run(f, script, 1);
        assert_outcome(&f->jobs[0], o, code, reply);
        return f;
}

/* Like run_one(), with job 1 (BODY2 to rcpt1) queued behind job 0, which
 * the peer accepts ("2.0.0 queued as B"). */
static struct fx *run_two(void **state, const struct peer_step *script,
                          const char *const *rcpts, const char *body,
                          enum smtp_outcome o, int code, const char *reply) {
        struct fx *f = *state;

        fx_job(f, 0, rcpts, body);
        fx_job(f, 1, rcpt1, BODY2);
        fx_run(f, script, 2);
        assert_outcome(&f->jobs[0], o, code, reply);
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        return f;
}

/*
 * The scenarios
 */

static void
test_pipelined_transaction_sends_one_batch_and_the_payload_as_is(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                /* every command before any reply: one batch */
                TXN3_PIPELINED,
                SEND("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                     "250 2.1.5 ok\r\n354 go ahead\r\n"),
                DATA,
                SEND("250 2.0.0 Ok: queued as A\r\n"),
                /* the next job on the same connection, no RSET */
                TXN2_OK,
                BYE,
                END,
        };

        fx_job(f, 0, rcpt3, BODY);
        fx_job(f, 1, rcpt1, BODY2);
        fx_run(f, script, 2);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 Ok: queued as A");
        assert_int_equal(f->jobs[0].rcpt_failure_cnt, 0);
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_string_equal(peer_log(f),
                            EHLO_LINE "\n" LOG_TXN3 "<payload>\n" LOG_TXN1
                                      "<payload>\nQUIT\n"
                                      "<closed>\n");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY BODY2);
        assert_int_equal(f->peer.p_accepts, 1);
}

static void
test_without_pipelining_each_command_waits_for_its_reply(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PLAIN),
                MAIL_LOCKSTEP,
                LOCKSTEP("RCPT TO:<b@peer.test>", "250 ok\r\n"),
                LOCKSTEP("RCPT TO:<c@peer.test>", "250 ok\r\n"),
                LOCKSTEP("RCPT TO:<d@peer.test>", "250 ok\r\n"),
                DATA_LOCKSTEP,
                BYE,
                END,
        };

        f = run_one(state, script, rcpt3, BODY, SMTP_OK, 250, "done");
        assert_string_equal(peer_log(f), EHLO_LINE
                            "\n" LOG_TXN3 "<payload>\nQUIT\n<closed>\n");
}

static void
test_pipelining_off_in_the_conf_is_not_used_when_offered(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_LOCKSTEP,
                BYE,
                END,
        };

        f->conf.pipelining = 0;
        run_one(state, script, rcpt1, BODY, SMTP_OK, 250, "done");
}

static void
test_replies_split_byte_by_byte_and_multi_line_are_parsed(void **state) {
        const struct peer_step script[] = {
                ACCEPT,
                DRIBBLE("220-peer.test\r\n220 ESMTP\r\n"),
                EXPECT(EHLO_LINE),
                DRIBBLE(CAPS_PIPELINING),
                TXN1_PIPELINED,
                DRIBBLE("250-2.1.0 sender\r\n250 2.1.0 ok\r\n"
                        "250 2.1.5 ok\r\n354 go\r\n"),
                DATA,
                DRIBBLE("250-2.0.0 first line\r\n250-2.0.0 second\r\n"
                        "250 2.0.0 Ok: queued as M\r\n"),
                BYE,
                END,
        };

        run_one(state, script, rcpt1, BODY, SMTP_OK, 250,
                "2.0.0 Ok: queued as M");
}

/* A session that failed to open (a relay failure) and then a new one that
 * carries the job; @failures relay failures, the last naming @error. */
static void check_reopened_after(void **state, const struct peer_step *failed,
                                 uint64_t failures, const char *error) {
        struct peer_step script[32];
        struct smtp_stats st;
        struct fx *f;
        size_t accepts = 0;

        script_join(script, 32, failed, next_session);
        for (const struct peer_step *st0 = script; st0->op != P_END; st0++)
                accepts += st0->op == P_ACCEPT;
        f = run_one(state, script, rcpt1, BODY2, SMTP_OK, 250,
                    "2.0.0 queued as B");
        smtp_client_stats(f->sc, &st);
        assert_int_equal(st.relay_failures_total, failures);
        assert_int_equal(st.sessions_opened_total, accepts);
        assert_int_equal(st.relay_healthy, 1);
        assert_non_null(strstr(st.last_relay_error, error));
        assert_int_equal(f->peer.p_accepts, accepts);
}

static void
test_greeting_554_marks_the_relay_unhealthy_then_a_new_session(void **state) {
        const struct peer_step failed[] = {
                ACCEPT,
                SEND("554 5.3.2 go away\r\n"),
                CLOSE,
                END,
        };

        check_reopened_after(state, failed, 1, "554 5.3.2 go away");
}

static void
test_ehlo_refused_falls_back_to_helo_without_pipelining(void **state) {
        const struct peer_step script[] = {
                ACCEPT,
                SEND(GREETING),
                EXPECT(EHLO_LINE),
                SEND("502 5.5.2 no EHLO here\r\n"),
                EXPECT("HELO client.test"),
                SEND("250 peer.test\r\n"),
                TXN1_LOCKSTEP,
                BYE,
                END,
        };

        run_one(state, script, rcpt1, BODY, SMTP_OK, 250, "done");
}

/* A greeting that never comes: a relay failure ("timeout") after
 * smtp.timeout.connect.ms, and the job goes on the next session. */
static void test_no_greeting_within_the_connect_timeout(void **state) {
        struct fx *f = *state;
        const struct peer_step failed[] = {
                ACCEPT,
                CLIENT_CLOSES,
                END,
        };

        f->conf.timeout_connect_ms = 300;
        check_reopened_after(state, failed, 1, "no greeting reply within 300");
}

/* Points the client at 127.0.0.1:@port (a relay that is not there to
 * talk to), with backoff and probes too long to retry within the test,
 * submits one job and runs the loop until the first relay failure (3 s at
 * most). @returns the milliseconds that took, with the stats in @st. */
static int64_t fx_first_relay_failure(struct fx *f, int port,
                                      struct smtp_stats *st) {
        char errstr[256];
        int64_t start, end;

        snprintf(f->url, sizeof(f->url), "smtp://127.0.0.1:%d", port);
        f->conf.relay_probe_ms = 60000;
        f->conf.relay_backoff_initial_ms = 60000;
        f->conf.relay_backoff_max_ms = 60000;
        f->sc = smtp_client_new(f->loop, &f->conf, fx_done_cb, f, errstr,
                                sizeof(errstr));
        assert_non_null(f->sc);
        f->submitted = 1;
        smtp_client_submit(f->sc, fx_job(f, 0, rcpt1, BODY));
        memset(st, 0, sizeof(*st));
        start = loop_clock_ms();
        end = start + 3000;
        while (st->relay_failures_total == 0 && loop_clock_ms() < end) {
                assert_true(loop_run_once(f->loop, 10) >= 0);
                smtp_client_stats(f->sc, st);
        }
        assert_int_equal(st->relay_failures_total, 1);
        assert_int_equal(st->relay_healthy, 0);
        /* A relay failure costs the job no attempt: it waits. */
        assert_int_equal(f->done, 0);
        return loop_clock_ms() - start;
}

/* A relay whose TCP handshake never completes (its accept queue is full,
 * so the kernel drops the SYN): the connect itself ends after
 * smtp.timeout.connect.ms, as a relay failure that says so. */
static void test_a_tcp_connect_that_never_completes_times_out(void **state) {
        struct fx *f = *state;
        struct sockaddr_in sa;
        struct smtp_stats st;
        int lfd, cfd[4], port;
        int64_t took;

        lfd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(lfd >= 0);
        port = bind_loopback(lfd, &sa);
        assert_int_equal(listen(lfd, 0), 0);
        /* Never accepted: the first connections fill the queue, later SYNs
         * are dropped. */
        for (size_t i = 0; i < 4; i++) {
                cfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
                assert_true(cfd[i] >= 0);
                (void)connect(cfd[i], (struct sockaddr *)&sa, sizeof(sa));
        }
        /* Until the kernel has queued one (for a listener, tcpi_unacked is
         * the accept queue's length), a SYN could still be answered. */
        for (int i = 0; i < 200; i++) {
                struct tcp_info ti;
                socklen_t tlen = sizeof(ti);

                assert_int_equal(
                        getsockopt(lfd, IPPROTO_TCP, TCP_INFO, &ti, &tlen), 0);
                if (ti.tcpi_unacked >= 1)
                        break;
                usleep(10000);
        }
        f->conf.timeout_connect_ms = 300;
        took = fx_first_relay_failure(f, port, &st);
        assert_non_null(
                strstr(st.last_relay_error, "no connection within 300"));
        assert_true(took >= 280 && took < 2000);
        for (size_t i = 0; i < 4; i++)
                close(cfd[i]);
        close(lfd);
}

/* Nothing listens on the relay's port: the refusal is a relay failure at
 * once (not after smtp.timeout.connect.ms), naming the address and why. */
static void test_a_refused_connection_fails_at_once(void **state) {
        struct fx *f = *state;
        struct sockaddr_in sa;
        struct smtp_stats st;
        int fd = socket(AF_INET, SOCK_STREAM, 0), port;
        int64_t took;

        /* A port that was free a moment ago, with nothing listening on it. */
        assert_true(fd >= 0);
        port = bind_loopback(fd, &sa);
        close(fd);
        f->conf.timeout_connect_ms = 5000;
        took = fx_first_relay_failure(f, port, &st);
        assert_non_null(strstr(st.last_relay_error, "cannot connect to"));
        assert_non_null(strstr(st.last_relay_error, "Connection refused"));
        assert_true(took < 1000);
}

/* A relay given by a host name: libcurl resolves and connects (an http://
 * URL, nothing sent), then lets go of the socket; the session greets the
 * relay itself, as with an address. */
static void
test_a_host_name_is_connected_by_libcurl_and_greeted_here(void **state) {
        struct fx *f = *state;
        struct smtp_stats st;
        const struct peer_step script[] = {
                ACCEPT,  SEND("554 5.3.2 go away\r\n"),
                CLOSE,   OPEN(CAPS_PIPELINING),
                TXN2_OK, BYE,
                END,
        };

        snprintf(f->url, sizeof(f->url), "smtp://localhost:%d", f->peer.p_port);
        run_one(state, script, rcpt1, BODY2, SMTP_OK, 250, "2.0.0 queued as B");
        smtp_client_stats(f->sc, &st);
        assert_int_equal(st.relay_failures_total, 1);
        assert_non_null(strstr(st.last_relay_error, "554 5.3.2 go away"));
        assert_int_equal(f->peer.p_accepts, 2);
}

/* An EHLO name that would break the command line is refused up front. */
static void test_an_unusable_helo_name_is_refused(void **state) {
        struct fx *f = *state;
        char errstr[256];

        f->conf.helo_name = "client.test\r\nRSET";
        assert_null(smtp_client_new(f->loop, &f->conf, fx_done_cb, f, errstr,
                                    sizeof(errstr)));
        assert_non_null(strstr(errstr, "smtp.helo.name"));
        f->conf.helo_name = "a b";
        assert_null(smtp_client_new(f->loop, &f->conf, fx_done_cb, f, errstr,
                                    sizeof(errstr)));
}

/* A drop while the session opens is a relay failure: the job waits and
 * goes on the next session. */
static void test_drop_while_opening_retries_on_a_new_connection(void **state) {
        const struct peer_step failed[] = {
                ACCEPT, CLOSE, /* before the greeting */
                ACCEPT, SEND(GREETING), EXPECT(EHLO_LINE), CLOSE, END,
        };

        check_reopened_after(state, failed, 2, "relay smtp://127.0.0.1:");
}

/* A drop before any command of the job was answered: the job goes once
 * more, on a new session (not a relay failure). */
static void test_drop_before_any_reply_requeues_the_job_once(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                CLOSE,
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                CLOSE,
                END,
        };
        struct smtp_stats st;

        f = run_one(state, script, rcpt1, BODY2, SMTP_TRANSIENT, 0,
                    "connection lost after MAIL");
        smtp_client_stats(f->sc, &st);
        assert_int_equal(st.relay_failures_total, 0);
        assert_int_equal(f->peer.p_accepts, 2);
}

/* A transaction without pipelining whose final reply is cut short. */
static const struct peer_step lockstep_cut[] = {
        OPEN(CAPS_PLAIN),
        EXPECT("MAIL FROM:<a@client.test>"),
        SEND("250 ok\r\n"),
        EXPECT("RCPT TO:<b@peer.test>"),
        SEND("250 ok\r\n"),
        EXPECT("DATA"),
        SEND("354 go\r\n"),
        DATA,
        SEND("250-2.0.0 first line of\r\n250 2.0.0 Ok"),
        END,
};

/* The peer runs the first @nsteps steps of lockstep_cut[], after the job's
 * first reply, and closes: the job is TRANSIENT with @reply (named after
 * the step whose reply was due) and the next job gets a new connection. */
static void check_drop_after(void **state, size_t nsteps, const char *reply) {
        const struct peer_step close_now[] = {CLOSE, END};
        struct peer_step script[32];
        size_t n;
        struct fx *f;

        n = script_add(script, 0, 32, lockstep_cut, nsteps);
        n = script_add(script, n, 32, close_now, SIZE_MAX);
        script_add(script, n, 32, next_session, SIZE_MAX);
        f = run_two(state, script, rcpt1, BODY, SMTP_TRANSIENT, 0, reply);
        assert_int_equal(f->peer.p_accepts, 2);
}

/* lockstep_cut[] has 4 steps of OPEN() before MAIL. */
static void test_drop_at_rcpt_is_transient(void **state) {
        check_drop_after(state, 4 + 3, "connection lost after RCPT");
}

static void test_drop_at_data_is_transient(void **state) {
        check_drop_after(state, 4 + 5, "connection lost after DATA");
}

static void test_drop_after_the_payload_is_transient(void **state) {
        check_drop_after(state, 4 + 7, "connection lost after end of data");
}

static void
test_drop_during_the_multi_line_final_reply_is_transient(void **state) {
        check_drop_after(state, 4 + 8, "connection lost after end of data");
}

/* A reply refusing the job's own command decides it; the pipelined replies
 * still due are read, RSET ends the transaction, and the session carries
 * the next job. */
static void check_refusal(void **state, const char *replies,
                          enum smtp_outcome o, int code, const char *text) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                SEND(replies),
                EXPECT("RSET"),
                SEND("250 reset\r\n"),
                TXN2_OK,
                BYE,
                END,
        };

        f = run_two(state, script, rcpt1, BODY, o, code, text);
        assert_string_equal(peer_log(f),
                            EHLO_LINE "\n" LOG_TXN1 "RSET\n" LOG_TXN1
                                      "<payload>\nQUIT\n<closed>\n");
        assert_int_equal(f->peer.p_accepts, 1);
}

static void test_mail_4xx_is_transient(void **state) {
        check_refusal(state, "451 4.3.0 try later\r\n503 no\r\n503 no\r\n",
                      SMTP_TRANSIENT, 451, "4.3.0 try later");
}

static void test_mail_5xx_is_permanent(void **state) {
        check_refusal(state, "550 5.7.1 not you\r\n503 no\r\n503 no\r\n",
                      SMTP_PERMANENT, 550, "5.7.1 not you");
}

static void test_all_rcpts_refused_5xx_is_permanent(void **state) {
        check_refusal(state, "250 ok\r\n550 5.1.1 unknown\r\n554 no rcpts\r\n",
                      SMTP_PERMANENT, 550, "5.1.1 unknown");
        assert_int_equal(((struct fx *)*state)->jobs[0].rcpt_failure_cnt, 1);
}

static void test_data_5xx_is_permanent(void **state) {
        check_refusal(state, "250 ok\r\n250 ok\r\n554 5.3.0 no data\r\n",
                      SMTP_PERMANENT, 554, "5.3.0 no data");
}

static void test_data_answered_without_354_is_transient(void **state) {
        check_refusal(state, "250 ok\r\n250 ok\r\n250 what\r\n", SMTP_TRANSIENT,
                      250, "what");
}

/* DATA accepted although every recipient was refused: the client ends the
 * data at once (an empty message) and discards its reply. */
static void
test_all_rcpts_refused_but_data_accepted_sends_an_empty_data(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                SEND("250 ok\r\n450 4.2.0 busy\r\n354 go\r\n"),
                EXPECT("."),
                SEND("554 no valid recipients\r\n"),
                EXPECT("RSET"),
                SEND("250 reset\r\n"),
                BYE,
                END,
        };

        f = run_one(state, script, rcpt1, BODY, SMTP_TRANSIENT, 450,
                    "4.2.0 busy");
        assert_int_equal(f->jobs[0].rcpt_failure_cnt, 1);
        assert_int_equal(f->jobs[0].rcpt_failures[0].code, 450);
}

static void
test_one_refused_rcpt_among_several_is_a_rcpt_failure(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN3_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n"
                     "450 4.2.1 mailbox busy\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued\r\n"),
                BYE,
                END,
        };
        const struct smtp_rcpt_failure *rf;

        f = run_one(state, script, rcpt3, BODY, SMTP_OK, 250, "2.0.0 queued");
        assert_int_equal(f->jobs[0].rcpt_failure_cnt, 2);
        rf = f->jobs[0].rcpt_failures;
        assert_int_equal(rf[0].index, 1);
        assert_string_equal(rf[0].rcpt, "c@peer.test");
        assert_int_equal(rf[0].code, 550);
        assert_string_equal(rf[0].reply, "5.1.1 no such user");
        assert_int_equal(rf[1].index, 2);
        assert_string_equal(rf[1].rcpt, "d@peer.test");
        assert_int_equal(rf[1].code, 450);
        assert_string_equal(rf[1].reply, "4.2.1 mailbox busy");
}

static void test_all_rcpts_refused_mixed_takes_the_first_4xx(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN3_PIPELINED,
                SEND("250 ok\r\n550 5.1.1 a\r\n451 4.3.0 b\r\n452 4.5.3 c\r\n"
                     "554 no valid recipients\r\n"),
                EXPECT("RSET"),
                SEND("250 reset\r\n"),
                BYE,
                END,
        };

        f = run_one(state, script, rcpt3, BODY, SMTP_TRANSIENT, 451, "4.3.0 b");
        assert_int_equal(f->jobs[0].rcpt_failure_cnt, 3);
}

static void check_final_reply(void **state, const char *reply,
                              enum smtp_outcome o, int code, const char *text) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND(reply),
                EXPECT("RSET"),
                SEND("250 reset\r\n"),
                BYE,
                END,
        };

        f = run_one(state, script, rcpt1, BODY, o, code, text);
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY);
}

static void test_final_reply_4xx_is_transient_then_rset(void **state) {
        check_final_reply(state, "451 4.3.0 queue full\r\n", SMTP_TRANSIENT,
                          451, "4.3.0 queue full");
}

static void test_final_reply_5xx_is_permanent_then_rset(void **state) {
        check_final_reply(state, "554 5.7.1 spam\r\n", SMTP_PERMANENT, 554,
                          "5.7.1 spam");
}

/* 421 closes the session: the job is TRANSIENT and the next one opens a
 * new connection. */
static void test_421_closes_the_session(void **state) {
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                SEND("421 4.3.2 shutting down\r\n"),
                CLIENT_CLOSES,
                OPEN(CAPS_PIPELINING),
                TXN2_OK,
                BYE,
                END,
        };

        f = run_two(state, script, rcpt1, BODY, SMTP_TRANSIENT, 421,
                    "4.3.2 shutting down");
        assert_int_equal(f->peer.p_accepts, 2);
}

/* A reply that never ends within the session's input bound (64 KiB): a
 * multi-line 250 of 70 KiB. The session fails as a protocol error (the job
 * is TRANSIENT, after one more try on a new connection, as for a drop
 * before any reply) instead of buffering without end. */
static void test_a_reply_past_the_input_bound_fails_the_session(void **state) {
        static char endless[70 * 1024 + 1];
        struct fx *f;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING), TXN1_PIPELINED,        SEND(endless),
                CLIENT_CLOSES,         OPEN(CAPS_PIPELINING), TXN1_PIPELINED,
                SEND(endless),         CLIENT_CLOSES,         END,
        };

        for (size_t i = 0; i + 100 <= sizeof(endless) - 1; i += 100) {
                memset(endless + i, 'x', 100);
                memcpy(endless + i, "250-", 4);
                memcpy(endless + i + 98, "\r\n", 2);
        }
        f = run_one(state, script, rcpt1, BODY2, SMTP_TRANSIENT, 0,
                    "protocol error (reply too long) after MAIL");
        assert_int_equal(f->peer.p_accepts, 2);
}

static void test_command_reply_timeout_is_transient_and_closes(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                CLIENT_CLOSES,
                END,
        };
        int64_t t0 = loop_clock_ms();

        f->conf.timeout_command_ms = 100;
        run_one(state, script, rcpt1, BODY, SMTP_TRANSIENT, 0,
                "timeout (100 ms) after MAIL");
        assert_true(loop_clock_ms() - t0 < 1000);
}

static void test_final_reply_timeout_uses_the_data_timeout(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                CLIENT_CLOSES,
                END,
        };

        f->conf.timeout_command_ms = 1000;
        f->conf.timeout_data_ms = 150;
        run_one(state, script, rcpt1, BODY, SMTP_TRANSIENT, 0,
                "timeout (150 ms) after end of data");
}

static void
test_size_is_declared_and_a_larger_message_refused_locally(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN("250-peer.test\r\n250-PIPELINING\r\n250 SIZE 30\r\n"),
                EXPECT("MAIL FROM:<a@client.test> SIZE=22"),
                EXPECT("RCPT TO:<b@peer.test>"),
                EXPECT("DATA"),
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as B\r\n"),
                BYE,
                END,
        };
        char want[128];

        fx_job(f, 0, rcpt1, BODY);
        fx_job(f, 1, rcpt1, BODY2);
        assert_int_equal(f->jobs[1].data_len, 22);
        fx_run(f, script, 2);
        snprintf(want, sizeof(want),
                 "message of %zu bytes exceeds the relay's SIZE 30",
                 f->jobs[0].data_len);
        assert_outcome(&f->jobs[0], SMTP_PERMANENT, 0, want);
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_true(starts_with(peer_log(f), EHLO_LINE "\nMAIL"));
}

/* The MAIL parameters follow the message's bytes: 8-bit text only in the
 * body asks for BODY=8BITMIME alone; raw UTF-8 in the header block (an
 * address written as RFC 6532 allows) asks for SMTPUTF8 too, and fails
 * where the relay does not offer it; an all-ASCII message asks for
 * neither. */
#define BODY_8BIT "Subject: t\r\n\r\ngr\xc3\xbc\xc3\x9f\r\n.\r\n"
#define HDR_UTF8 "Reply-To: j\xc3\xb6rg@example.org\r\n\r\nhi\r\n.\r\n"
#define CAPS_UTF8                                                              \
        "250-peer.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"

static void test_mail_parameters_follow_the_message_bytes(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_UTF8),
                EXPECT("MAIL FROM:<a@client.test> BODY=8BITMIME"),
                EXPECT("RCPT TO:<b@peer.test>"),
                EXPECT("DATA"),
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                EXPECT("MAIL FROM:<a@client.test> BODY=8BITMIME SMTPUTF8"),
                EXPECT("RCPT TO:<b@peer.test>"),
                EXPECT("DATA"),
                SEND("250 2.0.0 queued as A\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                EXPECT("MAIL FROM:<a@client.test>"),
                EXPECT("RCPT TO:<b@peer.test>"),
                EXPECT("DATA"),
                SEND("250 2.0.0 queued as B\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as C\r\n"),
                BYE,
                END,
        };

        fx_job(f, 0, rcpt1, BODY_8BIT);
        fx_job(f, 1, rcpt1, HDR_UTF8);
        fx_job(f, 2, rcpt1, BODY2);
        fx_run(f, script, 3);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 queued as A");
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as C");
}

/* 8-bit text goes without BODY=8BITMIME to a relay that does not offer it
 * (RFC 6152: the parameter is only for one that does). */
static void test_no_body_parameter_where_8bitmime_is_not_offered(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN("250-peer.test\r\n250 PIPELINING\r\n"),
                TXN1_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };

        fx_job(f, 0, rcpt1, BODY_8BIT);
        fx_run(f, script, 1);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 queued as A");
}

static void
test_a_utf8_header_fails_where_smtputf8_is_not_offered(void **state) {
        struct fx *f = *state;
        const struct peer_step script[] = {
                OPEN(CAPS_PIPELINING),
                EXPECT("MAIL FROM:<a@client.test> BODY=8BITMIME"),
                EXPECT("RCPT TO:<b@peer.test>"),
                EXPECT("DATA"),
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as B\r\n"),
                BYE,
                END,
        };

        fx_job(f, 0, rcpt1, HDR_UTF8);
        fx_job(f, 1, rcpt1, BODY_8BIT);
        fx_run(f, script, 2);
        assert_outcome(&f->jobs[0], SMTP_PERMANENT, 0,
                       "relay does not offer SMTPUTF8, needed for a UTF-8 "
                       "address");
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
}

/*
 * Pipelining across transactions (RFC 2920): job 1's MAIL, RCPT and DATA
 * follow job 0's final "." before its reply. The peer reads them before it
 * answers the ".", so a client that waited for that reply fails the script.
 */
#define TXN0_TO_DOT                                                            \
        OPEN(CAPS_PIPELINING), TXN1_PIPELINED,                                 \
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"), DATA
#define TXN1_AFTER(final0)                                                     \
        TXN1_PIPELINED, SEND(final0 "250 ok\r\n250 ok\r\n354 go\r\n"), DATA,   \
                SEND("250 2.0.0 queued as B\r\n")

static void
test_the_next_transaction_follows_the_final_dot_in_one_write(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_AFTER("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };
        struct fx *f;

        f = run_two(state, script, rcpt1, BODY, SMTP_OK, 250,
                    "2.0.0 queued as A");
        assert_string_equal(peer_log(f),
                            EHLO_LINE "\n" LOG_TXN1 "<payload>\n" LOG_TXN1
                                      "<payload>\nQUIT\n"
                                      "<closed>\n");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY BODY2);
        assert_int_equal(f->peer.p_accepts, 1);
}

/* A refused message ends its transaction: the one pipelined behind it
 * goes on, with no RSET between them. */
static void
test_a_refused_final_dot_leaves_the_pipelined_next_unharmed(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_AFTER("554 5.7.1 spam\r\n"),
                BYE,
                END,
        };
        struct fx *f;

        f = run_two(state, script, rcpt1, BODY, SMTP_PERMANENT, 554,
                    "5.7.1 spam");
        assert_null(strstr(peer_log(f), "RSET"));
}

/* 421 to the final ".": that job is TRANSIENT; the one pipelined behind
 * it had no reply, so it is not an attempt and goes on a new session. */
static void
test_421_at_the_final_dot_requeues_the_pipelined_next(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_PIPELINED,
                SEND("421 4.3.2 shutting down\r\n"),
                CLIENT_CLOSES,
                OPEN(CAPS_PIPELINING),
                TXN2_OK,
                BYE,
                END,
        };
        struct fx *f;

        f = run_two(state, script, rcpt1, BODY, SMTP_TRANSIENT, 421,
                    "4.3.2 shutting down");
        assert_int_equal(f->peer.p_accepts, 2);
}

/* The connection drops after the next transaction was pipelined: the job
 * whose "." was sent is TRANSIENT (it may have been delivered), the next
 * one goes on a new session. */
static void
test_a_drop_with_the_next_pipelined_requeues_only_the_next(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT, TXN1_PIPELINED,
                CLOSE,       OPEN(CAPS_PIPELINING),
                TXN2_OK,     BYE,
                END,
        };
        struct fx *f = *state;

        fx_job(f, 0, rcpt1, BODY);
        fx_job(f, 1, rcpt1, BODY2);
        fx_run(f, script, 2);
        assert_int_equal(f->jobs[0].outcome, SMTP_TRANSIENT);
        assert_true(starts_with(f->jobs[0].reply, "connection lost after "
                                                  "end of data"));
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->peer.p_accepts, 2);
}

/* The pipelined transaction's own MAIL is refused: its RCPT and DATA
 * replies are discarded, RSET follows, and a third job goes after it. */
static void
test_a_refused_mail_of_the_pipelined_next_is_its_own_outcome(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_PIPELINED,
                SEND("250 2.0.0 queued as A\r\n550 5.1.8 bad sender\r\n"
                     "503 5.5.1 no MAIL\r\n503 5.5.1 no valid rcpt\r\n"),
                EXPECT("RSET"),
                SEND("250 reset\r\n"),
                TXN2_OK,
                BYE,
                END,
        };
        struct fx *f = *state;

        fx_job(f, 0, rcpt1, BODY);
        fx_job(f, 1, rcpt1, BODY);
        fx_job(f, 2, rcpt1, BODY2);
        fx_run(f, script, 3);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 queued as A");
        assert_outcome(&f->jobs[1], SMTP_PERMANENT, 550, "5.1.8 bad sender");
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->peer.p_accepts, 1);
}

/* A message bigger than what is copied next to the commands: the next
 * transaction goes in the write after it, still before the final reply. */
static void
test_a_large_message_is_followed_by_the_next_transaction(void **state) {
        static char big[40 * 1024 + 32];
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_AFTER("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };
        size_t n;

        n = (size_t)snprintf(big, sizeof(big), "Subject: big\r\n\r\n");
        while (n + 80 < sizeof(big) - 8) {
                memset(big + n, 'x', 76);
                memcpy(big + n + 76, "\r\n", 2);
                n += 78;
        }
        memcpy(big + n, ".\r\n", 4);
        run_two(state, script, rcpt1, big, SMTP_OK, 250, "2.0.0 queued as A");
}

/* A relay that answers the commands pipelined after a "." before the "."
 * (smtp-sink -W does): the 354 comes where the last RCPT reply was due and
 * every reply so far was a success, so they were job 1's own replies, one
 * step early. Job 1's message goes, then both final replies come in order;
 * nothing is lost or sent twice, and the relay gets no more transactions
 * pipelined behind a ".". */
static void test_replies_ahead_of_the_final_dot_are_realigned(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN1_PIPELINED,
                SEND("250 2.1.0 sender ok\r\n250 2.1.5 rcpt ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as A\r\n"),
                /* job 2 waits for job 1's final reply */
                QUIET(50),
                SEND("250 2.0.0 queued as B\r\n"),
                TXN2_OK,
                BYE,
                END,
        };
        struct fx *f = *state;

        fx_job(f, 0, rcpt1, BODY);
        fx_job(f, 1, rcpt1, BODY2);
        fx_job(f, 2, rcpt1, BODY2);
        fx_run(f, script, 3);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 queued as A");
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->jobs[1].rcpt_failure_cnt, 0);
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as B");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY BODY2 BODY2);
        assert_int_equal(f->peer.p_accepts, 1);
}

/* Replies out of order in a way that cannot be read back (the 354 comes
 * before the last RCPT reply was due): the first job's outcome is unknown
 * (TRANSIENT: it may have been delivered), the second goes again on a new
 * session, where nothing is pipelined behind a "." any more. */
static void
test_replies_out_of_order_that_cannot_be_realigned_close(void **state) {
        const struct peer_step script[] = {
                TXN0_TO_DOT,
                TXN3_PIPELINED,
                SEND("250 2.1.0 sender ok\r\n250 2.1.5 rcpt ok\r\n354 go\r\n"),
                CLIENT_CLOSES,
                OPEN(CAPS_PIPELINING),
                TXN3_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                QUIET(50),
                SEND("250 2.0.0 queued as B\r\n"),
                TXN2_OK,
                BYE,
                END,
        };
        struct fx *f = *state;

        fx_job(f, 0, rcpt1, BODY);
        fx_job(f, 1, rcpt3, BODY2);
        fx_job(f, 2, rcpt1, BODY2);
        fx_run(f, script, 3);
        assert_int_equal(f->jobs[0].outcome, SMTP_TRANSIENT);
        assert_non_null(strstr(f->jobs[0].reply, "out of order"));
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->jobs[1].rcpt_failure_cnt, 0);
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->peer.p_accepts, 2);
}

/* Job 0 alone on a first session, the relay taking 100 ms to answer its
 * "." (slower than a session takes to open and answer MAIL..DATA); then
 * jobs 1 to @n - 1 submitted at once: job 1's commands come on that
 * session (not answered yet). */
#define SLOW_FINAL_FIRST                                                       \
        TXN0_TO_DOT, QUIET(100), SEND("250 2.0.0 queued as A\r\n"),            \
                TXN1_PIPELINED
#define TXN1_TO_DOT SEND("250 ok\r\n250 ok\r\n354 go\r\n"), DATA

/* Jobs 0 to @n - 1 against @script: job 0 alone until it is done, then the
 * others at once. */
static void run_phases(struct fx *f, const struct peer_step *script, size_t n) {
        for (size_t i = 0; i < n; i++)
                fx_job(f, i, rcpt1, i == 0 ? BODY : BODY2);
        fx_start(f, script, n);
        smtp_client_submit(f->sc, &f->jobs[0]);
        fx_wait(f, 1, 0);
        assert_int_equal(f->done, 1);
        for (size_t i = 1; i < n; i++)
                smtp_client_submit(f->sc, &f->jobs[i]);
        fx_finish(f);
}

/* Against a relay slow to answer the ".", a waiting job is not pipelined
 * behind a "." while another session frees before it: with two sessions
 * busy (jobs 1 and 2) and job 3 waiting, neither "." has job 3's MAIL
 * behind it; job 3 goes on the session that frees first. */
static void
test_a_slow_final_reply_takes_no_job_another_session_frees_for(void **state) {
        const struct peer_step script[] = {
                SLOW_FINAL_FIRST,
                /* the second session, opened for jobs 2 and 3, takes 2 */
                OTHER,
                OPEN(CAPS_PIPELINING),
                TXN1_PIPELINED,
                TXN1_TO_DOT,
                QUIET(50),
                /* job 1's "." on the first session */
                OTHER,
                TXN1_TO_DOT,
                QUIET(50),
                SEND("250 2.0.0 queued as B\r\n"),
                /* that session frees first: job 3 */
                TXN2_OK,
                OTHER,
                SEND("250 2.0.0 queued as C\r\n"),
                BYE,
                OTHER,
                BYE,
                END,
        };
        struct fx *f = *state;
        struct smtp_stats st;

        f->conf.sessions_max = 2;
        run_phases(f, script, 4);
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as C");
        assert_outcome(&f->jobs[3], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->peer.p_accepts, 2);
        smtp_client_stats(f->sc, &st);
        assert_int_equal(st.pipelined_total, 0);
}

/* The same slow relay with every session busy and nothing else to free
 * before it: job 2 is pipelined behind job 1's "." (in the same write). */
static void
test_a_slow_final_reply_takes_a_job_no_other_session_would(void **state) {
        const struct peer_step script[] = {
                SLOW_FINAL_FIRST,
                TXN1_TO_DOT,
                TXN1_AFTER("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };
        struct fx *f = *state;
        struct smtp_stats st;

        run_phases(f, script, 3);
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as A");
        assert_outcome(&f->jobs[2], SMTP_OK, 250, "2.0.0 queued as B");
        assert_int_equal(f->peer.p_accepts, 1);
        smtp_client_stats(f->sc, &st);
        assert_int_equal(st.pipelined_total, 1);
}

/*
 * CHUNKING (RFC 3030): BDAT <size> LAST and the message without its
 * dot-stuffing, no "." at its end.
 */

#define CAPS_CHUNKING "250-peer.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
#define CAPS_CHUNKING_ONLY "250-peer.test\r\n250 CHUNKING\r\n"
#define BODY_SENT "Subject: t\r\n\r\nhello\r\n.dot-stuffed line\r\n"
#define BODY2_SENT "Subject: u\r\n\r\nsecond\r\n"
#define MAIL_RCPT1                                                             \
        EXPECT("MAIL FROM:<a@client.test>"), EXPECT("RCPT TO:<b@peer.test>")
/* job 1 (BODY2 to rcpt1) with BDAT, accepted */
#define TXN2_BDAT_OK                                                           \
        MAIL_RCPT1, CHUNK, SEND("250 ok\r\n250 ok\r\n250 2.0.0 queued as B\r\n")

/* With PIPELINING, MAIL, RCPT, BDAT and the message go before any reply;
 * nothing follows until the final reply (no transaction pipelined behind a
 * BDAT); the message goes without its dot-stuffing and its size is
 * exact. */
static void
test_chunking_sends_commands_and_message_before_any_reply(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                MAIL_RCPT1,
                CHUNK,
                QUIET(50),
                SEND("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as "
                     "A\r\n"),
                TXN2_BDAT_OK,
                BYE,
                END,
        };
        struct fx *f;

        f = run_two(state, script, rcpt1, BODY, SMTP_OK, 250,
                    "2.0.0 queued as A");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload),
                            BODY_SENT BODY2_SENT);
        assert_string_equal(peer_log(f),
                            EHLO_LINE "\nMAIL FROM:<a@client.test>\n"
                                      "RCPT TO:<b@peer.test>\n"
                                      "BDAT 40 LAST\n<chunk>\n"
                                      "MAIL FROM:<a@client.test>\n"
                                      "RCPT TO:<b@peer.test>\n"
                                      "BDAT 22 LAST\n<chunk>\nQUIT\n"
                                      "<closed>\n");
}

/* Without PIPELINING each command waits for its reply; BDAT and the
 * message go together. */
static void
test_chunking_without_pipelining_waits_for_each_reply(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING_ONLY),
                MAIL_LOCKSTEP,
                LOCKSTEP("RCPT TO:<b@peer.test>", "250 ok\r\n"),
                CHUNK,
                SEND("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };
        struct fx *f;

        f = run_one(state, script, rcpt1, BODY, SMTP_OK, 250,
                    "2.0.0 queued as A");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY_SENT);
}

/* smtp.chunking=false: DATA although CHUNKING is offered. */
static void test_chunking_off_in_the_conf_uses_data(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                TXN1_PIPELINED,
                SEND("250 ok\r\n250 ok\r\n354 go\r\n"),
                DATA,
                SEND("250 2.0.0 queued as A\r\n"),
                BYE,
                END,
        };
        struct fx *f = *state;

        f->conf.chunking = 0;
        f = run_one(state, script, rcpt1, BODY, SMTP_OK, 250,
                    "2.0.0 queued as A");
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), BODY);
}

/* Every RCPT refused: the BDAT already sent is refused too (its reply is
 * read and dropped), the outcome is the RCPT's, RSET follows and the
 * session carries the next job. */
static void
test_chunking_with_every_rcpt_refused_is_the_rcpt_outcome(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                MAIL_RCPT1,
                CHUNK,
                SEND("250 ok\r\n550 5.1.1 no such user\r\n"
                     "554 5.5.1 Error: no valid recipients\r\n"),
                EXPECT("RSET"),
                SEND("250 ok\r\n"),
                TXN2_BDAT_OK,
                BYE,
                END,
        };

        run_two(state, script, rcpt1, BODY, SMTP_PERMANENT, 550,
                "5.1.1 no such user");
}

/* MAIL refused: the RCPT and BDAT replies are read and dropped, RSET. */
static void test_chunking_with_mail_refused_drains_to_rset(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                MAIL_RCPT1,
                CHUNK,
                SEND("451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n"
                     "503 5.5.1 need MAIL\r\n"),
                EXPECT("RSET"),
                SEND("250 ok\r\n"),
                TXN2_BDAT_OK,
                BYE,
                END,
        };

        run_two(state, script, rcpt1, BODY, SMTP_TRANSIENT, 451,
                "4.3.0 try later");
}

/* The BDAT refused: that is the final reply; RSET, then the next job. */
static void test_chunking_with_the_message_refused_is_final(void **state) {
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                MAIL_RCPT1,
                CHUNK,
                SEND("250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n"),
                EXPECT("RSET"),
                SEND("250 ok\r\n"),
                TXN2_BDAT_OK,
                BYE,
                END,
        };

        run_two(state, script, rcpt1, BODY, SMTP_PERMANENT, 554, "5.7.1 spam");
}

#define BIG_LINES 2000 /* of 20 bytes: 40 KB, past SMTP_DATA_COPY_MAX */

/* Fills @stuffed with a message of BIG_LINES lines, every @every-th one
 * starting with a '.' (stuffed: ".."), and @sent with what goes over the
 * wire with BDAT. */
static void big_message(char *stuffed, char *sent, int every) {
        char *p = stuffed, *q = sent;

        p += sprintf(p, "Subject: big\r\n\r\n");
        q += sprintf(q, "Subject: big\r\n\r\n");
        for (int i = 0; i < BIG_LINES; i++) {
                int dot = every && i % every == 0;

                p += sprintf(p, "%s%s%013d\r\n", dot ? ".." : "", "line ", i);
                q += sprintf(q, "%s%s%013d\r\n", dot ? "." : "", "line ", i);
        }
        strcpy(p, ".\r\n");
}

/* A message too big to be copied behind the commands goes from the job's
 * buffer, or, when it has stuffing to drop, from a copy without it. */
static void test_chunking_sends_a_big_message_whole(void **state) {
        static char stuffed[2][BIG_LINES * 24 + 64], sent[2][BIG_LINES * 24];
        const struct peer_step script[] = {
                OPEN(CAPS_CHUNKING),
                MAIL_RCPT1,
                CHUNK,
                SEND("250 ok\r\n250 ok\r\n250 2.0.0 queued as A\r\n"),
                MAIL_RCPT1,
                CHUNK,
                SEND("250 ok\r\n250 ok\r\n250 2.0.0 queued as B\r\n"),
                BYE,
                END,
        };
        struct fx *f = *state;
        char *want;

        big_message(stuffed[0], sent[0], 0);
        big_message(stuffed[1], sent[1], 7);
        assert_true(strlen(sent[0]) > 16 * 1024);
        fx_job(f, 0, rcpt1, stuffed[0]);
        fx_job(f, 1, rcpt1, stuffed[1]);
        fx_run(f, script, 2);
        assert_outcome(&f->jobs[0], SMTP_OK, 250, "2.0.0 queued as A");
        assert_outcome(&f->jobs[1], SMTP_OK, 250, "2.0.0 queued as B");
        want = malloc(strlen(sent[0]) + strlen(sent[1]) + 1);
        assert_non_null(want);
        strcpy(want, sent[0]);
        strcat(want, sent[1]);
        assert_string_equal(dynbuf_ptr(&f->peer.p_payload), want);
        free(want);
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)
        const struct CMUnitTest tests[] = {
                T(test_pipelined_transaction_sends_one_batch_and_the_payload_as_is),
                T(test_without_pipelining_each_command_waits_for_its_reply),
                T(test_pipelining_off_in_the_conf_is_not_used_when_offered),
                T(test_replies_split_byte_by_byte_and_multi_line_are_parsed),
                T(test_greeting_554_marks_the_relay_unhealthy_then_a_new_session),
                T(test_ehlo_refused_falls_back_to_helo_without_pipelining),
                T(test_drop_while_opening_retries_on_a_new_connection),
                T(test_no_greeting_within_the_connect_timeout),
                T(test_a_tcp_connect_that_never_completes_times_out),
                T(test_a_refused_connection_fails_at_once),
                T(test_a_host_name_is_connected_by_libcurl_and_greeted_here),
                T(test_an_unusable_helo_name_is_refused),
                T(test_drop_before_any_reply_requeues_the_job_once),
                T(test_drop_at_rcpt_is_transient),
                T(test_drop_at_data_is_transient),
                T(test_drop_after_the_payload_is_transient),
                T(test_drop_during_the_multi_line_final_reply_is_transient),
                T(test_mail_4xx_is_transient),
                T(test_mail_5xx_is_permanent),
                T(test_all_rcpts_refused_5xx_is_permanent),
                T(test_data_5xx_is_permanent),
                T(test_data_answered_without_354_is_transient),
                T(test_all_rcpts_refused_but_data_accepted_sends_an_empty_data),
                T(test_one_refused_rcpt_among_several_is_a_rcpt_failure),
                T(test_all_rcpts_refused_mixed_takes_the_first_4xx),
                T(test_final_reply_4xx_is_transient_then_rset),
                T(test_final_reply_5xx_is_permanent_then_rset),
                T(test_421_closes_the_session),
                T(test_a_reply_past_the_input_bound_fails_the_session),
                T(test_command_reply_timeout_is_transient_and_closes),
                T(test_final_reply_timeout_uses_the_data_timeout),
                T(test_size_is_declared_and_a_larger_message_refused_locally),
                T(test_mail_parameters_follow_the_message_bytes),
                T(test_a_utf8_header_fails_where_smtputf8_is_not_offered),
                T(test_no_body_parameter_where_8bitmime_is_not_offered),
                T(test_the_next_transaction_follows_the_final_dot_in_one_write),
                T(test_a_refused_final_dot_leaves_the_pipelined_next_unharmed),
                T(test_421_at_the_final_dot_requeues_the_pipelined_next),
                T(test_a_drop_with_the_next_pipelined_requeues_only_the_next),
                T(test_a_refused_mail_of_the_pipelined_next_is_its_own_outcome),
                T(test_a_large_message_is_followed_by_the_next_transaction),
                T(test_replies_ahead_of_the_final_dot_are_realigned),
                T(test_replies_out_of_order_that_cannot_be_realigned_close),
                T(test_a_slow_final_reply_takes_no_job_another_session_frees_for),
                T(test_a_slow_final_reply_takes_a_job_no_other_session_would),
                T(test_chunking_sends_commands_and_message_before_any_reply),
                T(test_chunking_without_pipelining_waits_for_each_reply),
                T(test_chunking_off_in_the_conf_uses_data),
                T(test_chunking_with_every_rcpt_refused_is_the_rcpt_outcome),
                T(test_chunking_with_mail_refused_drains_to_rset),
                T(test_chunking_with_the_message_refused_is_final),
                T(test_chunking_sends_a_big_message_whole),
        };
#undef T
        int rc;

        log_set_level("error");
        curl_global_init(CURL_GLOBAL_DEFAULT);
        rc = cmocka_run_group_tests(tests, NULL, NULL);
        curl_global_cleanup();
        return rc;
}
