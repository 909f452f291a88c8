/*
 * slow_sink: an SMTP sink for the benchmarks that delays replies without
 * blocking other sessions, and scales to tens of thousands of sessions on
 * one thread (epoll, level-triggered; the delays are two FIFO queues, since
 * every entry of a queue has the same delay).
 *
 *   slow_sink [--delay-ms MS] [--rtt-ms MS] [--backlog N] [--chunking] ADDR:PORT
 *
 * --delay-ms MS  delay the reply to the final "." of DATA by MS (default
 *                1000), like `smtp-sink -W .:1`. Input that the client
 *                pipelined after the "." waits until that reply is sent.
 * --rtt-ms MS    emulate a network round trip of MS (default 0): every chunk
 *                read from a client is processed MS later (a delay line on
 *                the input; the replies go out at once). Used by B6 when the
 *                kernel has no netem.
 * --backlog N    listen backlog (default 65535).
 * --chunking     also advertise CHUNKING and take BDAT <size> [LAST] (RFC
 *                3030); the reply to the LAST chunk is delayed as the one to
 *                a final "." is.
 *
 * Speaks EHLO/HELO (advertising PIPELINING, 8BITMIME, SIZE), MAIL, RCPT,
 * DATA, RSET, NOOP, QUIT; anything else gets 502. Bodies are discarded.
 * Prints "slow_sink: listening on ADDR:PORT" once listening and, on
 * SIGTERM/SIGINT, "slow_sink: messages=N sessions=S max_sessions=M" on stdout.
 *
 * Build: cc -O2 -o slow_sink bench/slow_sink.c (the benchmarks do this).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_CMD, ST_DATA, ST_BDAT };

struct conn {
        int fd;
        int state;
        int waiting; /* final reply pending in the delay queue */
        int dead; /* closed; freed when refs reaches 0 */
        int refs; /* entries in the queues that point here */
        int want_out; /* EPOLLOUT registered */
        unsigned long long bdat_left; /* ST_BDAT: bytes of the chunk to come */
        int bdat_last; /* ST_BDAT: the chunk is the LAST one */
        char *in;
        size_t inlen, incap;
        char *out;
        size_t outlen, outcap;
        struct conn *grave_next; /* freed at the end of the loop iteration */
};

struct qent { /* an entry of a delay queue */
        struct qent *next;
        int64_t due_us;
        struct conn *c;
        size_t len; /* input chunk (rtt queue); 0 for the final-reply queue */
        char data[];
};

struct queue {
        struct qent *head, *tail;
};

static int64_t delay_us = 1000000, rtt_us = 0;
static int chunking;
static struct queue final_q, input_q;
static int epfd;
static volatile sig_atomic_t stop;
static unsigned long long messages, sessions, cur_sessions, max_sessions;

static int64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *xrealloc(void *p, size_t n) {
        p = realloc(p, n);
        if (!p) {
                fprintf(stderr, "slow_sink: out of memory\n");
                exit(1);
        }
        return p;
}

static void q_push(struct queue *q, struct qent *e) {
        e->next = NULL;
        if (q->tail)
                q->tail->next = e;
        else
                q->head = e;
        q->tail = e;
}

static struct qent *q_pop(struct queue *q) {
        struct qent *e = q->head;
        q->head = e->next;
        if (!q->head)
                q->tail = NULL;
        return e;
}

static struct conn *graveyard;

static void conn_unref(struct conn *c) {
        if (--c->refs == 0 && c->dead) {
                c->grave_next = graveyard;
                graveyard = c;
        }
}

static void free_graveyard(void) {
        while (graveyard) {
                struct conn *c = graveyard;
                graveyard = c->grave_next;
                free(c->in);
                free(c->out);
                free(c);
        }
}

static void conn_close(struct conn *c) {
        if (c->dead)
                return;
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->dead = 1;
        cur_sessions--;
        conn_unref(c); /* the socket's reference */
}

enum io_next { IO_AGAIN, IO_WAIT, IO_CLOSED };

/* After a send() or recv() on @c that returned @n <= 0: interrupted (try
 * again), nothing to move now (wait for the socket), or the connection is
 * done (closed here). */
static enum io_next io_after(struct conn *c, ssize_t n) {
        if (n < 0 && errno == EINTR)
                return IO_AGAIN;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return IO_WAIT;
        conn_close(c);
        return IO_CLOSED;
}

static void flush_out(struct conn *c) {
        while (c->outlen > 0) {
                ssize_t n = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
                if (n > 0) {
                        memmove(c->out, c->out + n, c->outlen - n);
                        c->outlen -= n;
                } else {
                        enum io_next next = io_after(c, n);
                        if (next == IO_CLOSED)
                                return;
                        if (next == IO_WAIT)
                                break;
                }
        }
        int want = c->outlen > 0;
        if (want != c->want_out) {
                struct epoll_event ev = {.events = EPOLLIN |
                                                   (want ? EPOLLOUT : 0),
                                         .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = want;
        }
}

static void reply(struct conn *c, const char *s) {
        size_t n = strlen(s);
        if (c->outlen + n > c->outcap) {
                c->outcap = (c->outlen + n) * 2;
                c->out = xrealloc(c->out, c->outcap);
        }
        memcpy(c->out + c->outlen, s, n);
        c->outlen += n;
}

static void final_reply(struct conn *c) {
        messages++;
        reply(c, "250 2.0.0 Ok: queued\r\n");
}

/* The message is in: its final reply now or after the delay. */
static void message_end(struct conn *c) {
        c->state = ST_CMD;
        if (delay_us > 0) {
                struct qent *e = xrealloc(NULL, sizeof *e);
                e->due_us = now_us() + delay_us;
                e->c = c;
                e->len = 0;
                c->refs++;
                c->waiting = 1;
                q_push(&final_q, e);
        } else {
                final_reply(c);
        }
}

/* Processes the complete lines (and BDAT chunks) of c->in until it must
 * wait. */
static void process(struct conn *c) {
        size_t off = 0;
        while (!c->dead && !c->waiting && off < c->inlen) {
                if (c->state == ST_BDAT) {
                        size_t n = c->inlen - off;
                        if (n > c->bdat_left)
                                n = c->bdat_left;
                        off += n;
                        c->bdat_left -= n;
                        if (c->bdat_left > 0)
                                break;
                        if (c->bdat_last) {
                                message_end(c);
                        } else {
                                c->state = ST_CMD;
                                reply(c, "250 2.0.0 Ok: chunk\r\n");
                        }
                        continue;
                }
                char *line = c->in + off;
                char *nl = memchr(line, '\n', c->inlen - off);
                if (!nl)
                        break;
                size_t len = nl - line + 1;
                off += len;
                if (c->state == ST_DATA) {
                        if ((len == 3 && line[0] == '.' && line[1] == '\r') ||
                            (len == 2 && line[0] == '.'))
                                message_end(c);
                        continue;
                }
                if (len < 4) {
                        reply(c, "500 5.5.2 Error: bad syntax\r\n");
                } else if (!strncasecmp(line, "EHLO", 4)) {
                        reply(c,
                              "250-slow-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                        if (chunking)
                                reply(c, "250-CHUNKING\r\n");
                        reply(c, "250 SIZE 104857600\r\n");
                } else if (chunking && len > 5 &&
                           !strncasecmp(line, "BDAT ", 5)) {
                        char *end;
                        c->bdat_left = strtoull(line + 5, &end, 10);
                        c->bdat_last = !strncasecmp(end, " LAST", 5);
                        if (end == line + 5) {
                                reply(c,
                                      "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
                        } else if (c->bdat_left == 0) {
                                if (c->bdat_last)
                                        message_end(c);
                                else
                                        reply(c, "250 2.0.0 Ok: chunk\r\n");
                        } else {
                                c->state = ST_BDAT;
                        }
                } else if (!strncasecmp(line, "HELO", 4)) {
                        reply(c, "250 slow-sink\r\n");
                } else if (!strncasecmp(line, "MAIL", 4)) {
                        reply(c, "250 2.1.0 Ok\r\n");
                } else if (!strncasecmp(line, "RCPT", 4)) {
                        reply(c, "250 2.1.5 Ok\r\n");
                } else if (!strncasecmp(line, "DATA", 4)) {
                        reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
                        c->state = ST_DATA;
                } else if (!strncasecmp(line, "RSET", 4) ||
                           !strncasecmp(line, "NOOP", 4)) {
                        reply(c, "250 2.0.0 Ok\r\n");
                } else if (!strncasecmp(line, "QUIT", 4)) {
                        reply(c, "221 2.0.0 Bye\r\n");
                        flush_out(c);
                        conn_close(c);
                        return;
                } else {
                        reply(c, "502 5.5.2 Error: command not recognized\r\n");
                }
        }
        if (c->dead)
                return;
        if (off > 0) {
                memmove(c->in, c->in + off, c->inlen - off);
                c->inlen -= off;
        }
        flush_out(c);
}

static void append_input(struct conn *c, const char *data, size_t n) {
        if (c->inlen + n > c->incap) {
                c->incap = (c->inlen + n) * 2 + 512;
                c->in = xrealloc(c->in, c->incap);
        }
        memcpy(c->in + c->inlen, data, n);
        c->inlen += n;
}

static void on_readable(struct conn *c) {
        char buf[65536];
        for (;;) {
                ssize_t n = recv(c->fd, buf, sizeof buf, 0);
                if (n > 0) {
                        if (rtt_us > 0) {
                                struct qent *e = xrealloc(NULL, sizeof *e + n);
                                e->due_us = now_us() + rtt_us;
                                e->c = c;
                                e->len = n;
                                memcpy(e->data, buf, n);
                                c->refs++;
                                q_push(&input_q, e);
                        } else {
                                append_input(c, buf, n);
                        }
                        if ((size_t)n < sizeof buf)
                                break;
                } else {
                        enum io_next next = io_after(c, n);
                        if (next == IO_CLOSED)
                                return;
                        if (next == IO_WAIT)
                                break;
                }
        }
        if (rtt_us == 0)
                process(c);
}

static void on_accept(int lfd) {
        for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EMFILE || errno == ENFILE)
                                fprintf(stderr, "slow_sink: accept: %s\n",
                                        strerror(errno));
                        return;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct conn *c = xrealloc(NULL, sizeof *c);
                memset(c, 0, sizeof *c);
                c->fd = fd;
                c->refs = 1; /* the open socket */
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                sessions++;
                if (++cur_sessions > max_sessions)
                        max_sessions = cur_sessions;
                reply(c, "220 slow-sink ESMTP\r\n");
                flush_out(c);
        }
}

static void run_queues(void) {
        int64_t now = now_us();
        while (input_q.head && input_q.head->due_us <= now) {
                struct qent *e = q_pop(&input_q);
                struct conn *c = e->c;
                if (!c->dead) {
                        append_input(c, e->data, e->len);
                        process(c);
                }
                free(e);
                conn_unref(c);
        }
        while (final_q.head && final_q.head->due_us <= now) {
                struct qent *e = q_pop(&final_q);
                struct conn *c = e->c;
                if (!c->dead) {
                        c->waiting = 0;
                        final_reply(c);
                        process(c); /* what was pipelined after the "." */
                }
                free(e);
                conn_unref(c);
        }
}

static int next_timeout_ms(void) {
        int64_t due = INT64_MAX;
        if (input_q.head)
                due = input_q.head->due_us;
        if (final_q.head && final_q.head->due_us < due)
                due = final_q.head->due_us;
        if (due == INT64_MAX)
                return 1000;
        int64_t d = due - now_us();
        if (d <= 0)
                return 0;
        return (int)((d + 999) / 1000);
}

static void on_signal(int sig) {
        (void)sig;
        stop = 1;
}

static void usage(void) {
        fprintf(stderr,
                "usage: slow_sink [--delay-ms MS] [--rtt-ms MS] [--backlog N] "
                "[--chunking] ADDR:PORT\n");
        exit(2);
}

int main(int argc, char **argv) {
        int backlog = 65535;
        const char *addr = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--delay-ms") && i + 1 < argc)
                        delay_us = atoll(argv[++i]) * 1000;
                else if (!strcmp(argv[i], "--rtt-ms") && i + 1 < argc)
                        rtt_us = atoll(argv[++i]) * 1000;
                else if (!strcmp(argv[i], "--backlog") && i + 1 < argc)
                        backlog = atoi(argv[++i]);
                else if (!strcmp(argv[i], "--chunking"))
                        chunking = 1;
                else if (argv[i][0] == '-' || addr)
                        usage();
                else
                        addr = argv[i];
        }
        if (!addr)
                usage();
        char host[256];
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof host)
                usage();
        memcpy(host, addr, colon - addr);
        host[colon - addr] = 0;
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons(atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
                usage();

        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        signal(SIGPIPE, SIG_IGN);
        struct sigaction sact = {.sa_handler = on_signal};
        sigaction(SIGTERM, &sact, NULL);
        sigaction(SIGINT, &sact, NULL);

        int lfd =
                socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
            listen(lfd, backlog) < 0) {
                fprintf(stderr, "slow_sink: %s: %s\n", addr, strerror(errno));
                return 1;
        }
        epfd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
        printf("slow_sink: listening on %s (delay %lld ms, rtt %lld ms)\n",
               addr, (long long)(delay_us / 1000), (long long)(rtt_us / 1000));
        fflush(stdout);

        struct epoll_event evs[1024];
        while (!stop) {
                int n = epoll_wait(epfd, evs, 1024, next_timeout_ms());
                if (n < 0 && errno != EINTR) {
                        perror("slow_sink: epoll_wait");
                        return 1;
                }
                for (int i = 0; i < n; i++) {
                        struct conn *c = evs[i].data.ptr;
                        if (!c) {
                                on_accept(lfd);
                                continue;
                        }
                        if (c->dead)
                                continue;
                        if (evs[i].events & EPOLLOUT)
                                flush_out(c);
                        if (!c->dead &&
                            (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                                on_readable(c);
                }
                run_queues();
                free_graveyard();
        }
        printf("slow_sink: messages=%llu sessions=%llu max_sessions=%llu\n",
               messages, sessions, max_sessions);
        return 0;
}
