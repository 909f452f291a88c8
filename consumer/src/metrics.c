/*
 * metrics: a minimal HTTP/1.1 server on the loop. See metrics.h.
 *
 * A connection goes through three states: reading the request head (at most
 * METRICS_REQ_MAX bytes), writing its one response, then draining: the write
 * side is shut down and whatever the client still sends is read and dropped
 * until it closes, so that our close() does not reset the connection under a
 * response the client has not read yet (a 431 leaves unread input behind).
 * One deadline, set at accept and never extended, bounds all three states,
 * so a client trickling bytes cannot hold a connection open.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dynbuf.h"
#include "log.h"

#define METRICS_REQ_MAX 8192 /* request head (request line + headers) */
#define METRICS_CONN_MAX 64 /* open connections; more are closed at once */
#define METRICS_TIMEOUT_MS 5000 /* life of a connection, from accept */
#define METRICS_BACKLOG 64
#define METRICS_OUT_INIT (16 * 1024)
#define METRICS_OUT_MAX (1024 * 1024) /* exposition text of one response */
#define METRICS_DRAIN_MAX (64 * 1024) /* input dropped after the response */
#define METRICS_ACCEPT_PAUSE_MS 100 /* after EMFILE and the like */
#define METRICS_REASON_MAX 256 /* /healthz reason, with its NUL */

#define METRICS_CTYPE_PROM "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_CTYPE_TEXT "text/plain; charset=utf-8"

struct metrics_out {
        struct dynbuf mo_text; /* failed (over METRICS_OUT_MAX or out of
                                * memory): the text is incomplete and is
                                * not served */
        size_t mo_name_off; /* the last sample's name in mo_text ... */
        size_t mo_name_len; /* ... and its length; 0: none yet */
};

enum mc_state {
        MC_READ, /* reading the request head */
        MC_WRITE, /* writing mc_out */
        MC_DRAIN, /* response sent, write side shut, discarding input */
};

struct metrics_conn {
        metrics_t *mc_m;
        struct metrics_conn *mc_prev;
        struct metrics_conn *mc_next;
        int mc_fd;
        enum mc_state mc_state;
        loop_timer_t mc_timer; /* the connection's deadline */
        char *mc_out; /* the response, owned */
        size_t mc_out_len;
        size_t mc_out_off; /* bytes of mc_out written */
        size_t mc_drained; /* bytes discarded in MC_DRAIN */
        size_t mc_in_len;
        size_t mc_scan; /* next byte of mc_in to look at for a newline */
        size_t mc_line; /* start of the current line in mc_in */
        char mc_in[METRICS_REQ_MAX];
};

struct metrics {
        loop_t *m_loop;
        int m_fd; /* listener */
        int m_port;
        int m_timeout_ms;
        metrics_render_cb *m_render;
        metrics_health_cb *m_health;
        metrics_health_cb *m_ready; /* /readyz, NULL: as /healthz */
        void *m_opaque;
        loop_timer_t m_accept_timer; /* resumes accepting after a pause */
        struct metrics_conn *m_conns; /* open connections */
        size_t m_conn_cnt;
};

/*
 * metrics_out_t
 */

/* Formats a sample value: integral values as integers, NaN and infinities
 * the Prometheus way, anything else with full precision. */
static void metrics_format_value(char *buf, size_t size, double v) {
        if (isnan(v))
                snprintf(buf, size, "NaN");
        else if (isinf(v))
                snprintf(buf, size, "%s", v > 0 ? "+Inf" : "-Inf");
        else if (v >= -9223372036854775808.0 && v < 9223372036854775808.0 &&
                 (double)(int64_t)v == v)
                snprintf(buf, size, "%" PRId64, (int64_t)v);
        else
                snprintf(buf, size, "%.17g", v);
}

void metrics_sample(metrics_out_t *out, const char *name, const char *type,
                    const char *help, const char *labels, double value) {
        size_t name_len = strlen(name);
        size_t off;
        char num[32];

        /* The previous sample's line starts with its name: compare in place. */
        if (out->mo_name_len == 0 || out->mo_name_len != name_len ||
            memcmp(dynbuf_ptr(&out->mo_text) + out->mo_name_off, name,
                   name_len) != 0)
                dynbuf_appendf(&out->mo_text, "# HELP %s %s\n# TYPE %s %s\n",
                               name, help, name, type);
        metrics_format_value(num, sizeof(num), value);
        off = dynbuf_len(&out->mo_text);
        if (labels && labels[0] != '\0')
                dynbuf_appendf(&out->mo_text, "%s{%s} %s\n", name, labels, num);
        else
                dynbuf_appendf(&out->mo_text, "%s %s\n", name, num);
        if (dynbuf_error(&out->mo_text) != DYNBUF_OK) {
                out->mo_name_len = 0;
                return;
        }
        out->mo_name_off = off;
        out->mo_name_len = name_len;
}

const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS] = {
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,  1,
        2.5,   5,    10,    30,   60,  300,  1800, 7200};

void metrics_hist_observe(struct metrics_hist *h, double seconds) {
        size_t i = 0;

        while (i < METRICS_LATENCY_BUCKETS &&
               seconds > metrics_latency_bounds[i])
                i++;
        h->mh_counts[i]++;
        h->mh_count++;
        h->mh_sum += seconds;
}

void metrics_histogram(metrics_out_t *out, const char *name, const char *help,
                       const struct metrics_hist *h) {
        uint64_t cum = 0;
        char num[32];

        dynbuf_appendf(&out->mo_text, "# HELP %s %s\n# TYPE %s histogram\n",
                       name, help, name);
        for (size_t i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
                cum += h->mh_counts[i];
                if (i < METRICS_LATENCY_BUCKETS)
                        snprintf(num, sizeof(num), "%g",
                                 metrics_latency_bounds[i]);
                dynbuf_appendf(&out->mo_text, "%s_bucket{le=\"%s\"} %llu\n",
                               name, i < METRICS_LATENCY_BUCKETS ? num : "+Inf",
                               (unsigned long long)cum);
        }
        metrics_format_value(num, sizeof(num), h->mh_sum);
        dynbuf_appendf(&out->mo_text, "%s_sum %s\n%s_count %llu\n", name, num,
                       name, (unsigned long long)h->mh_count);
        out->mo_name_len = 0; /* the next sample writes its own HELP */
}

/*
 * Connections
 */

static void metrics_conn_close(struct metrics_conn *c, const char *why) {
        metrics_t *m = c->mc_m;

        LOG(LL_DEBUG, "metrics connection closed fd=%d reason=%s", c->mc_fd,
            why);
        loop_timer_stop(m->m_loop, &c->mc_timer);
        loop_io_del(m->m_loop, c->mc_fd);
        close(c->mc_fd);
        if (c->mc_prev)
                c->mc_prev->mc_next = c->mc_next;
        else
                m->m_conns = c->mc_next;
        if (c->mc_next)
                c->mc_next->mc_prev = c->mc_prev;
        m->m_conn_cnt--;
        free(c->mc_out);
        free(c);
}

static void metrics_conn_timeout_cb(loop_t *loop, void *opaque) {
        struct metrics_conn *c = opaque;

        (void)loop;
        metrics_conn_close(c,
                           c->mc_state == MC_DRAIN ? "linger over" : "timeout");
}

/* Writes what is left of the response; when it is all out, shuts the write
 * side and starts draining. May close @c. */
static void metrics_conn_write(struct metrics_conn *c) {
        metrics_t *m = c->mc_m;

        while (c->mc_out_off < c->mc_out_len) {
                ssize_t n = send(c->mc_fd, c->mc_out + c->mc_out_off,
                                 c->mc_out_len - c->mc_out_off, MSG_NOSIGNAL);

                if (n >= 0) {
                        c->mc_out_off += (size_t)n;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        if (c->mc_state != MC_WRITE) {
                                c->mc_state = MC_WRITE;
                                if (loop_io_mod(m->m_loop, c->mc_fd,
                                                LOOP_WRITE) == -1)
                                        metrics_conn_close(c, "epoll mod");
                        }
                        return;
                }
                metrics_conn_close(c, strerror(errno));
                return;
        }
        free(c->mc_out);
        c->mc_out = NULL;
        c->mc_state = MC_DRAIN;
        if (shutdown(c->mc_fd, SHUT_WR) == -1) {
                metrics_conn_close(c, "response sent");
                return;
        }
        if (loop_io_mod(m->m_loop, c->mc_fd, LOOP_READ) == -1)
                metrics_conn_close(c, "epoll mod");
}

/* Builds the response in c->mc_out and starts writing it. @allow: the Allow
 * header's value or NULL. May close @c. */
static void metrics_conn_respond(struct metrics_conn *c, int status,
                                 const char *ctype, const char *body,
                                 size_t body_len, int head_only,
                                 const char *allow) {
        const char *reason;
        char head[512];
        size_t send_len;
        int n;

        switch (status) {
        case 200:
                reason = "OK";
                break;
        case 400:
                reason = "Bad Request";
                break;
        case 404:
                reason = "Not Found";
                break;
        case 405:
                reason = "Method Not Allowed";
                break;
        case 431:
                reason = "Request Header Fields Too Large";
                break;
        case 503:
                reason = "Service Unavailable";
                break;
        default:
                reason = "Internal Server Error";
                break;
        }
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "%s%s%s"
                     "\r\n",
                     status, reason, ctype, body_len, allow ? "Allow: " : "",
                     allow ? allow : "", allow ? "\r\n" : "");
        if (n < 0 || (size_t)n >= sizeof(head)) {
                metrics_conn_close(c, "response head too long");
                return;
        }
        send_len = head_only ? 0 : body_len;
        c->mc_out = malloc((size_t)n + send_len);
        if (!c->mc_out) {
                metrics_conn_close(c, "out of memory");
                return;
        }
        memcpy(c->mc_out, head, (size_t)n);
        if (send_len > 0)
                memcpy(c->mc_out + n, body, send_len);
        c->mc_out_len = (size_t)n + send_len;
        c->mc_out_off = 0;
        LOG(LL_DEBUG, "metrics response fd=%d status=%d bytes=%zu", c->mc_fd,
            status, c->mc_out_len);
        metrics_conn_write(c);
}

static void metrics_conn_respond_text(struct metrics_conn *c, int status,
                                      const char *text, int head_only,
                                      const char *allow) {
        metrics_conn_respond(c, status, METRICS_CTYPE_TEXT, text, strlen(text),
                             head_only, allow);
}

static void metrics_serve_metrics(struct metrics_conn *c, int head_only) {
        metrics_t *m = c->mc_m;
        metrics_out_t out;

        memset(&out, 0, sizeof(out));
        dynbuf_init(&out.mo_text, METRICS_OUT_MAX - 1); /* and a NUL */
        (void)dynbuf_reserve(&out.mo_text, METRICS_OUT_INIT);
        if (m->m_render)
                m->m_render(&out, m->m_opaque);
        if (dynbuf_error(&out.mo_text) != DYNBUF_OK) {
                LOG(LL_WARN,
                    "metrics text over its limit or out of memory limit=%d",
                    METRICS_OUT_MAX);
                metrics_conn_respond_text(c, 500, "metrics unavailable\n",
                                          head_only, NULL);
        } else {
                metrics_conn_respond(c, 200, METRICS_CTYPE_PROM,
                                     dynbuf_ptr(&out.mo_text),
                                     dynbuf_len(&out.mo_text), head_only, NULL);
        }
        dynbuf_fini(&out.mo_text);
}

/* Answers /healthz (@ready 0) or /readyz (@ready 1). */
static void metrics_serve_health(struct metrics_conn *c, int head_only,
                                 int ready) {
        metrics_t *m = c->mc_m;
        metrics_health_cb *cb = ready && m->m_ready ? m->m_ready : m->m_health;
        char reason[METRICS_REASON_MAX];
        char body[METRICS_REASON_MAX + 1];
        int ok = 1;

        reason[0] = '\0';
        if (cb)
                ok = cb(reason, sizeof(reason), m->m_opaque);
        if (ok) {
                metrics_conn_respond_text(c, 200, ready ? "ready\n" : "ok\n",
                                          head_only, NULL);
                return;
        }
        reason[sizeof(reason) - 1] = '\0';
        snprintf(body, sizeof(body), "%s\n",
                 reason[0] != '\0' ? reason
                 : ready           ? "not ready"
                                   : "unhealthy");
        metrics_conn_respond_text(c, 503, body, head_only, NULL);
}

static int metrics_token_is(const char *s, size_t len, const char *lit) {
        return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/* Answers the request whose head is complete in c->mc_in. Only the request
 * line is looked at. May close @c. */
static void metrics_conn_handle(struct metrics_conn *c) {
        const char *line = c->mc_in;
        const char *method, *target, *version, *sp, *end;
        size_t method_len, target_len, path_len;
        int get, head;

        end = memchr(line, '\n', c->mc_in_len);
        if (end > line && end[-1] == '\r')
                end--;
        method = line;
        sp = memchr(method, ' ', (size_t)(end - method));
        if (!sp || sp == method)
                goto bad;
        method_len = (size_t)(sp - method);
        target = sp + 1;
        sp = memchr(target, ' ', (size_t)(end - target));
        if (!sp || sp == target)
                goto bad;
        target_len = (size_t)(sp - target);
        version = sp + 1;
        if (end - version != 8 || memcmp(version, "HTTP/1.", 7) != 0 ||
            version[7] < '0' || version[7] > '9')
                goto bad;

        sp = memchr(target, '?', target_len);
        path_len = sp ? (size_t)(sp - target) : target_len;
        get = metrics_token_is(method, method_len, "GET");
        head = metrics_token_is(method, method_len, "HEAD");
        LOG(LL_DEBUG, "metrics request fd=%d method=%.*s path_len=%zu",
            c->mc_fd, (get || head) ? (int)method_len : 5,
            (get || head) ? method : "other", path_len);

        if (metrics_token_is(target, path_len, "/metrics")) {
                if (get || head)
                        metrics_serve_metrics(c, head);
                else
                        metrics_conn_respond_text(
                                c, 405, "method not allowed\n", 0, "GET, HEAD");
        } else if (metrics_token_is(target, path_len, "/healthz") ||
                   metrics_token_is(target, path_len, "/readyz")) {
                if (get || head)
                        metrics_serve_health(
                                c, head,
                                metrics_token_is(target, path_len, "/readyz"));
                else
                        metrics_conn_respond_text(
                                c, 405, "method not allowed\n", 0, "GET, HEAD");
        } else {
                metrics_conn_respond_text(c, 404, "not found\n", head, NULL);
        }
        return;

bad:
        metrics_conn_respond_text(c, 400, "bad request\n", 0, NULL);
}

/* @returns the length of the request head in c->mc_in, through the blank
 * line that ends it, or 0 while it is incomplete. Scans each byte once. */
static size_t metrics_conn_head_len(struct metrics_conn *c) {
        for (; c->mc_scan < c->mc_in_len; c->mc_scan++) {
                size_t n;

                if (c->mc_in[c->mc_scan] != '\n')
                        continue;
                n = c->mc_scan - c->mc_line;
                if (n == 0 || (n == 1 && c->mc_in[c->mc_line] == '\r'))
                        return c->mc_scan + 1;
                c->mc_line = c->mc_scan + 1;
        }
        return 0;
}

/* Reads the request head until it is complete, full, or the socket would
 * block. May close @c. */
static void metrics_conn_read(struct metrics_conn *c) {
        for (;;) {
                size_t room = sizeof(c->mc_in) - c->mc_in_len;
                ssize_t n;

                if (room == 0) {
                        metrics_conn_respond_text(c, 431, "request too large\n",
                                                  0, NULL);
                        return;
                }
                n = recv(c->mc_fd, c->mc_in + c->mc_in_len, room, 0);
                if (n > 0) {
                        c->mc_in_len += (size_t)n;
                        if (metrics_conn_head_len(c) > 0) {
                                metrics_conn_handle(c);
                                return;
                        }
                        continue;
                }
                if (n == 0) {
                        metrics_conn_close(c, c->mc_in_len > 0
                                                      ? "closed by peer "
                                                        "mid-request"
                                                      : "closed by peer");
                        return;
                }
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return;
                metrics_conn_close(c, strerror(errno));
                return;
        }
}

/* Discards input after the response until the peer closes. May close @c. */
static void metrics_conn_drain(struct metrics_conn *c) {
        char buf[4096];

        for (;;) {
                ssize_t n = recv(c->mc_fd, buf, sizeof(buf), 0);

                if (n > 0) {
                        c->mc_drained += (size_t)n;
                        if (c->mc_drained > METRICS_DRAIN_MAX) {
                                metrics_conn_close(c, "too much input");
                                return;
                        }
                        continue;
                }
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                metrics_conn_close(c, n == 0 ? "done" : strerror(errno));
                return;
        }
}

static void metrics_conn_io_cb(loop_t *loop, int fd, unsigned events,
                               void *opaque) {
        struct metrics_conn *c = opaque;

        (void)loop;
        (void)fd;
        (void)events; /* LOOP_ERROR shows up as a failing recv/send */
        switch (c->mc_state) {
        case MC_READ:
                metrics_conn_read(c);
                break;
        case MC_WRITE:
                metrics_conn_write(c);
                break;
        case MC_DRAIN:
                metrics_conn_drain(c);
                break;
        }
}

/* Takes over the accepted socket @fd (closed on failure). */
static void metrics_conn_new(metrics_t *m, int fd) {
        struct metrics_conn *c;

        c = malloc(sizeof(*c));
        if (!c) {
                LOG(LL_WARN, "metrics: out of memory for a connection");
                close(fd);
                return;
        }
        c->mc_m = m;
        c->mc_prev = NULL;
        c->mc_next = NULL;
        c->mc_fd = fd;
        c->mc_state = MC_READ;
        c->mc_out = NULL;
        c->mc_out_len = 0;
        c->mc_out_off = 0;
        c->mc_drained = 0;
        c->mc_in_len = 0;
        c->mc_scan = 0;
        c->mc_line = 0;
        loop_timer_init(&c->mc_timer, metrics_conn_timeout_cb, c);
        if (loop_io_add(m->m_loop, fd, LOOP_READ, metrics_conn_io_cb, c) ==
            -1) {
                LOG(LL_WARN, "metrics: cannot watch connection fd=%d error=%s",
                    fd, strerror(errno));
                close(fd);
                free(c);
                return;
        }
        c->mc_next = m->m_conns;
        if (m->m_conns)
                m->m_conns->mc_prev = c;
        m->m_conns = c;
        m->m_conn_cnt++;
        loop_timer_start(m->m_loop, &c->mc_timer, m->m_timeout_ms);
        LOG(LL_DEBUG, "metrics connection accepted fd=%d open=%zu", fd,
            m->m_conn_cnt);
}

static void metrics_accept_resume_cb(loop_t *loop, void *opaque) {
        metrics_t *m = opaque;

        if (loop_io_mod(loop, m->m_fd, LOOP_READ) == -1)
                LOG(LL_ERROR,
                    "metrics: cannot watch the listener again error=%s",
                    strerror(errno));
}

static void metrics_accept_cb(loop_t *loop, int fd, unsigned events,
                              void *opaque) {
        metrics_t *m = opaque;

        (void)events;
        for (;;) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (cfd == -1) {
                        switch (errno) {
                        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
                        case EWOULDBLOCK:
#endif
                                return;
                        case EINTR:
                        case ECONNABORTED:
                        case EPROTO:
                        case ENETDOWN:
                        case ENOPROTOOPT:
                        case EHOSTDOWN:
                        case EHOSTUNREACH:
                        case ENETUNREACH:
                        case EOPNOTSUPP:
                                continue; /* that connection is gone */
                        default:
                                /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the
                                 * listener stays readable, so pause instead
                                 * of spinning. */
                                LOG(LL_WARN,
                                    "metrics: accept failed, pausing "
                                    "error=%s pause_ms=%d",
                                    strerror(errno), METRICS_ACCEPT_PAUSE_MS);
                                (void)loop_io_mod(loop, fd, 0);
                                loop_timer_start(loop, &m->m_accept_timer,
                                                 METRICS_ACCEPT_PAUSE_MS);
                                return;
                        }
                }
                if (m->m_conn_cnt >= METRICS_CONN_MAX) {
                        LOG(LL_DEBUG,
                            "metrics connection refused fd=%d open=%zu", cfd,
                            m->m_conn_cnt);
                        close(cfd);
                        continue;
                }
                metrics_conn_new(m, cfd);
        }
}

/*
 * Listener
 */

/* Parses "host:port" (IPv4 host, empty for any) or "[v6]:port" into @ss.
 * @returns 0, or -1 with @errstr. */
static int metrics_parse_listen(const char *addr, struct sockaddr_storage *ss,
                                socklen_t *sslen, char *errstr,
                                size_t errstr_size) {
        char host[INET6_ADDRSTRLEN];
        const char *h, *colon;
        size_t host_len, digits;
        long port = 0;
        int v6;

        v6 = addr[0] == '[';
        if (v6) {
                const char *close_br = strchr(addr, ']');

                if (!close_br || close_br[1] != ':')
                        goto bad_addr;
                h = addr + 1;
                host_len = (size_t)(close_br - h);
                colon = close_br + 1;
        } else {
                colon = strrchr(addr, ':');
                if (!colon)
                        goto bad_addr;
                h = addr;
                host_len = (size_t)(colon - h);
                if (memchr(h, ':', host_len))
                        goto bad_addr; /* IPv6 without brackets */
        }
        if (host_len >= sizeof(host))
                goto bad_addr;
        memcpy(host, h, host_len);
        host[host_len] = '\0';

        digits = strspn(colon + 1, "0123456789");
        if (digits == 0 || digits > 5 || colon[1 + digits] != '\0')
                goto bad_port;
        for (size_t i = 0; i < digits; i++)
                port = port * 10 + (colon[1 + i] - '0');
        if (port > 65535)
                goto bad_port;

        memset(ss, 0, sizeof(*ss));
        if (v6) {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons((uint16_t)port);
                if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
                        goto bad_addr;
                *sslen = sizeof(*sin6);
        } else {
                struct sockaddr_in *sin = (struct sockaddr_in *)ss;

                sin->sin_family = AF_INET;
                sin->sin_port = htons((uint16_t)port);
                if (host_len == 0)
                        sin->sin_addr.s_addr = htonl(INADDR_ANY);
                else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
                        goto bad_addr;
                *sslen = sizeof(*sin);
        }
        return 0;

bad_port:
        snprintf(errstr, errstr_size, "metrics.listen %s: bad port", addr);
        return -1;
bad_addr:
        snprintf(errstr, errstr_size,
                 "metrics.listen %s: bad address (expected IPv4 host:port or "
                 "[IPv6]:port)",
                 addr);
        return -1;
}

metrics_t *metrics_new(loop_t *loop, const char *addr,
                       metrics_render_cb *render, metrics_health_cb *health,
                       void *opaque, char *errstr, size_t errstr_size) {
        struct sockaddr_storage ss, bound;
        socklen_t sslen = 0, bound_len = sizeof(bound);
        metrics_t *m = NULL;
        const char *what;
        int fd = -1;
        int one = 1;

        if (metrics_parse_listen(addr, &ss, &sslen, errstr, errstr_size) == -1)
                goto err;
        m = calloc(1, sizeof(*m));
        if (!m) {
                snprintf(errstr, errstr_size,
                         "metrics.listen %s: out of memory", addr);
                goto err;
        }
        m->m_loop = loop;
        m->m_fd = -1;
        m->m_timeout_ms = METRICS_TIMEOUT_MS;
        m->m_render = render;
        m->m_health = health;
        m->m_opaque = opaque;
        loop_timer_init(&m->m_accept_timer, metrics_accept_resume_cb, m);

        what = "socket";
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
        if (fd == -1)
                goto err_sys;
        what = "setsockopt";
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
                goto err_sys;
        what = "bind";
        if (bind(fd, (struct sockaddr *)&ss, sslen) == -1)
                goto err_sys;
        what = "listen";
        if (listen(fd, METRICS_BACKLOG) == -1)
                goto err_sys;
        what = "getsockname";
        if (getsockname(fd, (struct sockaddr *)&bound, &bound_len) == -1)
                goto err_sys;
        if (bound.ss_family == AF_INET6)
                m->m_port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        else
                m->m_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        what = "watch";
        if (loop_io_add(loop, fd, LOOP_READ, metrics_accept_cb, m) == -1)
                goto err_sys;
        m->m_fd = fd;
        LOG(LL_INFO, "metrics listening listen=%s port=%d", addr, m->m_port);
        return m;

err_sys:
        snprintf(errstr, errstr_size, "metrics.listen %s: %s: %s", addr, what,
                 strerror(errno));
err:
        if (fd != -1)
                close(fd);
        free(m);
        return NULL;
}

void metrics_destroy(metrics_t *m) {
        if (!m)
                return;
        while (m->m_conns)
                metrics_conn_close(m->m_conns, "shutdown");
        loop_timer_stop(m->m_loop, &m->m_accept_timer);
        loop_io_del(m->m_loop, m->m_fd);
        close(m->m_fd);
        free(m);
}

void metrics_set_ready(metrics_t *m, metrics_health_cb *ready) {
        m->m_ready = ready;
}

int metrics_port(const metrics_t *m) {
        return m->m_port;
}

void metrics_set_timeout_ms(metrics_t *m, int timeout_ms) {
        m->m_timeout_ms = timeout_ms;
}
