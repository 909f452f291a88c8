/*
 * Unit tests of metrics: the HTTP endpoint on 127.0.0.1, driven from this
 * one thread. Clients are non-blocking sockets; the tests run the loop until
 * the server has answered and closed (bounded by a deadline).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "metrics.h"

#define WAIT_MS 3000 /* longest any step may take */
#define CONN_MAX 64 /* the server's connection limit */
#define LARGE_CNT 18000 /* samples in a response still under the cap */

enum render_mode { RENDER_SAMPLES, RENDER_LARGE, RENDER_HUGE };

struct fx {
        loop_t *loop;
        metrics_t *m;
        int port;
        enum render_mode mode;
        int healthy;
        const char *reason;
};

static void fx_render(metrics_out_t *out, void *opaque) {
        struct fx *fx = opaque;

        if (fx->mode != RENDER_SAMPLES) {
                int cnt = fx->mode == RENDER_HUGE ? 40000 : LARGE_CNT;
                char labels[64];

                /* about 50 bytes a line: 2 MB for HUGE, under 1 MiB else */
                for (int i = 0; i < cnt; i++) {
                        snprintf(labels, sizeof(labels),
                                 "topic=\"t\",partition=\"%d\"", i);
                        metrics_sample(out, "km_huge_total", "counter", "Huge.",
                                       labels, (double)i);
                }
                return;
        }
        metrics_sample(out, "km_sent_total", "counter", "Messages sent.",
                       "status=\"sent\"", 3);
        metrics_sample(out, "km_sent_total", "counter", "Messages sent.",
                       "status=\"failed\"", 2);
        metrics_sample(out, "km_inflight", "gauge", "In flight.", NULL, 1.5);
        metrics_sample(out, "km_lag", "gauge", "Lag.", "", -7);
        metrics_sample(out, "km_big", "gauge", "Big.", NULL, 1e20);
        metrics_sample(out, "km_tenth", "gauge", "A tenth.", NULL, 0.1);
        metrics_sample(out, "km_odd", "gauge", "Odd values.", "v=\"nan\"", NAN);
        metrics_sample(out, "km_odd", "gauge", "Odd values.", "v=\"inf\"",
                       INFINITY);
        metrics_sample(out, "km_odd", "gauge", "Odd values.", "v=\"-inf\"",
                       -INFINITY);
        {
                struct metrics_hist h;

                memset(&h, 0, sizeof(h));
                metrics_hist_observe(&h, 0.003);
                metrics_hist_observe(&h, 0.25); /* on a bound: in it */
                metrics_hist_observe(&h, 0.3);
                metrics_hist_observe(&h, 9000); /* past the last: +Inf */
                metrics_histogram(out, "km_took_seconds", "Took.", &h);
        }
        metrics_sample(out, "km_after", "gauge", "After.", NULL, 1);
}

static int fx_health(char *reason, size_t reason_size, void *opaque) {
        struct fx *fx = opaque;

        if (fx->healthy)
                return 1;
        snprintf(reason, reason_size, "%s", fx->reason);
        return 0;
}

static int fx_setup(void **state) {
        char err[256];
        struct fx *fx = calloc(1, sizeof(*fx));

        assert_non_null(fx);
        fx->loop = loop_new();
        assert_non_null(fx->loop);
        fx->m = metrics_new(fx->loop, "127.0.0.1:0", fx_render, fx_health, fx,
                            err, sizeof(err));
        if (!fx->m)
                fail_msg("metrics_new: %s", err);
        fx->port = metrics_port(fx->m);
        assert_true(fx->port > 0);
        fx->healthy = 1;
        *state = fx;
        return 0;
}

static int fx_teardown(void **state) {
        struct fx *fx = *state;

        metrics_destroy(fx->m);
        loop_destroy(fx->loop);
        free(fx);
        return 0;
}

static int client_connect(int port) {
        struct sockaddr_in sin;
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
                assert_int_equal(errno, EINPROGRESS);
        return fd;
}

/* Sends all of @data, running the loop while the socket would block. */
static void client_send(struct fx *fx, int fd, const char *data, size_t len) {
        int64_t end = loop_clock_ms() + WAIT_MS;
        size_t off = 0;

        while (off < len) {
                ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL);

                if (n > 0) {
                        off += (size_t)n;
                        continue;
                }
                assert_true(n == -1 && (errno == EAGAIN || errno == EINTR));
                assert_true(loop_clock_ms() < end);
                assert_true(loop_run_once(fx->loop, 10) >= 0);
        }
}

/* Reads until the server closes, running the loop in between. @returns the
 * bytes read (NUL-terminated in @buf); fails the test after WAIT_MS. */
static size_t client_read_to_eof(struct fx *fx, int fd, char *buf, size_t cap) {
        int64_t end = loop_clock_ms() + WAIT_MS;
        size_t len = 0;

        for (;;) {
                ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);

                if (n > 0) {
                        len += (size_t)n;
                        assert_true(len < cap - 1);
                        continue;
                }
                if (n == 0 || errno == ECONNRESET)
                        break;
                assert_true(errno == EAGAIN || errno == EINTR);
                if (loop_clock_ms() >= end)
                        fail_msg("no EOF after %d ms (read %zu bytes)", WAIT_MS,
                                 len);
                assert_true(loop_run_once(fx->loop, 10) >= 0);
        }
        buf[len] = '\0';
        return len;
}

/* Runs the loop for about @ms. */
static void run_for(struct fx *fx, int ms) {
        int64_t end = loop_clock_ms() + ms;

        while (loop_clock_ms() < end)
                assert_true(loop_run_once(fx->loop, 5) >= 0);
}

/* @returns non-zero when @fd has nothing to read and is not closed. */
static int client_is_waiting(int fd) {
        char c;

        return recv(fd, &c, 1, MSG_PEEK) == -1 && errno == EAGAIN;
}

/* One request on a fresh connection; the response goes to @buf. */
static size_t request(struct fx *fx, const char *req, char *buf, size_t cap) {
        int fd = client_connect(fx->port);
        size_t len;

        client_send(fx, fd, req, strlen(req));
        len = client_read_to_eof(fx, fd, buf, cap);
        close(fd);
        return len;
}

/* @returns the body of the response in @resp (after the blank line). */
static const char *body_of(const char *resp) {
        const char *p = strstr(resp, "\r\n\r\n");

        assert_non_null(p);
        return p + 4;
}

static void assert_status(const char *resp, int status) {
        char want[32];

        snprintf(want, sizeof(want), "HTTP/1.1 %d ", status);
        if (strncmp(resp, want, strlen(want)) != 0)
                fail_msg("want \"%s\", got \"%.40s\"", want, resp);
}

/* Sends @req; the response (in @resp) must have @status. */
static void request_status(struct fx *fx, const char *req, char *resp,
                           size_t resp_size, int status) {
        request(fx, req, resp, resp_size);
        assert_status(resp, status);
}

static void assert_header(const char *resp, const char *line) {
        const char *end = strstr(resp, "\r\n\r\n");
        const char *p = strstr(resp, line);

        if (!p || p > end)
                fail_msg("header \"%s\" missing in:\n%s", line, resp);
}

static const char expected_body[] = "# HELP km_sent_total Messages sent.\n"
                                    "# TYPE km_sent_total counter\n"
                                    "km_sent_total{status=\"sent\"} 3\n"
                                    "km_sent_total{status=\"failed\"} 2\n"
                                    "# HELP km_inflight In flight.\n"
                                    "# TYPE km_inflight gauge\n"
                                    "km_inflight 1.5\n"
                                    "# HELP km_lag Lag.\n"
                                    "# TYPE km_lag gauge\n"
                                    "km_lag -7\n"
                                    "# HELP km_big Big.\n"
                                    "# TYPE km_big gauge\n"
                                    "km_big 1e+20\n"
                                    "# HELP km_tenth A tenth.\n"
                                    "# TYPE km_tenth gauge\n"
                                    "km_tenth 0.10000000000000001\n"
                                    "# HELP km_odd Odd values.\n"
                                    "# TYPE km_odd gauge\n"
                                    "km_odd{v=\"nan\"} NaN\n"
                                    "km_odd{v=\"inf\"} +Inf\n"
                                    "km_odd{v=\"-inf\"} -Inf\n"
                                    "# HELP km_took_seconds Took.\n"
                                    "# TYPE km_took_seconds histogram\n"
                                    "km_took_seconds_bucket{le=\"0.005\"} 1\n"
                                    "km_took_seconds_bucket{le=\"0.01\"} 1\n"
                                    "km_took_seconds_bucket{le=\"0.025\"} 1\n"
                                    "km_took_seconds_bucket{le=\"0.05\"} 1\n"
                                    "km_took_seconds_bucket{le=\"0.1\"} 1\n"
                                    "km_took_seconds_bucket{le=\"0.25\"} 2\n"
                                    "km_took_seconds_bucket{le=\"0.5\"} 3\n"
                                    "km_took_seconds_bucket{le=\"1\"} 3\n"
                                    "km_took_seconds_bucket{le=\"2.5\"} 3\n"
                                    "km_took_seconds_bucket{le=\"5\"} 3\n"
                                    "km_took_seconds_bucket{le=\"10\"} 3\n"
                                    "km_took_seconds_bucket{le=\"30\"} 3\n"
                                    "km_took_seconds_bucket{le=\"60\"} 3\n"
                                    "km_took_seconds_bucket{le=\"300\"} 3\n"
                                    "km_took_seconds_bucket{le=\"1800\"} 3\n"
                                    "km_took_seconds_bucket{le=\"7200\"} 3\n"
                                    "km_took_seconds_bucket{le=\"+Inf\"} 4\n"
                                    "km_took_seconds_sum 9000.5529999999999\n"
                                    "km_took_seconds_count 4\n"
                                    "# HELP km_after After.\n"
                                    "# TYPE km_after gauge\n"
                                    "km_after 1\n";

static void test_get_metrics_serves_exposition_text(void **state) {
        struct fx *fx = *state;
        char resp[8192], cl[64];

        request_status(
                fx, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
                resp, sizeof(resp), 200);
        assert_header(resp, "\r\nContent-Type: text/plain; version=0.0.4; "
                            "charset=utf-8\r\n");
        assert_header(resp, "\r\nConnection: close\r\n");
        snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n",
                 strlen(expected_body));
        assert_header(resp, cl);
        assert_string_equal(body_of(resp), expected_body);
}

static void test_help_and_type_once_per_consecutive_name(void **state) {
        struct fx *fx = *state;
        char resp[8192];
        const char *body, *p;
        int help = 0;

        request(fx, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
        body = body_of(resp);
        for (p = body; (p = strstr(p, "# HELP km_sent_total ")); p++)
                help++;
        assert_int_equal(help, 1);
}

static void test_head_metrics_has_length_but_no_body(void **state) {
        struct fx *fx = *state;
        char resp[8192], cl[64];

        request_status(fx, "HEAD /metrics HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       200);
        snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n",
                 strlen(expected_body));
        assert_header(resp, cl);
        assert_string_equal(body_of(resp), "");
}

static void test_query_string_is_ignored(void **state) {
        struct fx *fx = *state;
        char resp[8192];

        request_status(fx, "GET /metrics?x=1 HTTP/1.1\r\n\r\n", resp,
                       sizeof(resp), 200);
}

static void test_healthz_ok(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        request_status(fx, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       200);
        assert_header(resp, "\r\nContent-Length: 3\r\n");
        assert_string_equal(body_of(resp), "ok\n");
}

static void test_healthz_unhealthy_is_503_with_reason(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        fx->healthy = 0;
        fx->reason = "kafka: all brokers down";
        request_status(fx, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       503);
        assert_string_equal(body_of(resp), "kafka: all brokers down\n");
}

static void test_unknown_path_is_404(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        request_status(fx, "GET /metricsx HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       404);
        request_status(fx, "GET / HTTP/1.1\r\n\r\n", resp, sizeof(resp), 404);
}

static void test_other_method_is_405(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        request_status(
                fx, "POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
                resp, sizeof(resp), 405);
        assert_header(resp, "\r\nAllow: GET, HEAD\r\n");
        request_status(fx, "DELETE /healthz HTTP/1.1\r\n\r\n", resp,
                       sizeof(resp), 405);
}

static void test_malformed_request_line_is_400(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        request_status(fx, "garbage\r\n\r\n", resp, sizeof(resp), 400);
        request_status(fx, "GET /metrics SPDY/3\r\n\r\n", resp, sizeof(resp),
                       400);
}

static void test_bare_newlines_end_the_head(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        request_status(fx, "GET /healthz HTTP/1.1\nHost: x\n\n", resp,
                       sizeof(resp), 200);
}

static void test_oversize_request_is_431_and_closed(void **state) {
        struct fx *fx = *state;
        static const char start[] = "GET /metrics HTTP/1.1\r\nX-Pad: ";
        char req[9000], resp[1024];

        memset(req, 'a', sizeof(req));
        memcpy(req, start, strlen(start));
        {
                int fd = client_connect(fx->port);

                client_send(fx, fd, req, sizeof(req));
                client_read_to_eof(fx, fd, resp, sizeof(resp));
                close(fd);
        }
        assert_status(resp, 431);
        assert_header(resp, "\r\nConnection: close\r\n");
}

static void test_input_after_the_response_is_bounded(void **state) {
        struct fx *fx = *state;
        static char junk[128 * 1024];
        char resp[1024];
        int64_t end;
        size_t off = 0;
        int fd;

        memset(junk, 'j', sizeof(junk));
        fd = client_connect(fx->port);
        client_send(fx, fd, "GET /healthz HTTP/1.1\r\n\r\n", 25);
        client_read_to_eof(fx, fd, resp, sizeof(resp));
        assert_status(resp, 200);
        /* the server drops what follows, up to a limit, then resets */
        end = loop_clock_ms() + WAIT_MS;
        for (;;) {
                ssize_t n =
                        send(fd, junk + off, sizeof(junk) - off, MSG_NOSIGNAL);

                if (n > 0) {
                        off = (off + (size_t)n) % sizeof(junk);
                        continue;
                }
                if (n == -1 && (errno == EPIPE || errno == ECONNRESET))
                        break;
                assert_true(n == -1 && errno == EAGAIN);
                if (loop_clock_ms() >= end)
                        fail_msg("the server kept reading");
                assert_true(loop_run_once(fx->loop, 10) >= 0);
        }
        close(fd);
}

static void test_silent_client_is_closed_after_timeout(void **state) {
        struct fx *fx = *state;
        char resp[64];
        int64_t start;
        int fd;

        metrics_set_timeout_ms(fx->m, 100);
        start = loop_clock_ms();
        fd = client_connect(fx->port);
        assert_int_equal(client_read_to_eof(fx, fd, resp, sizeof(resp)), 0);
        assert_true(loop_clock_ms() - start >= 90);
        close(fd);
}

static void test_trickling_client_does_not_extend_the_timeout(void **state) {
        struct fx *fx = *state;
        int64_t start, end;
        int fd, closed = 0;

        metrics_set_timeout_ms(fx->m, 200);
        start = loop_clock_ms();
        end = start + WAIT_MS;
        fd = client_connect(fx->port);
        client_send(fx, fd, "GET /metrics HTTP/1.1\r\n", 23);
        while (!closed && loop_clock_ms() < end) {
                char c;
                ssize_t n;

                /* one header byte every 20 ms, never the blank line */
                (void)send(fd, "x", 1, MSG_NOSIGNAL);
                run_for(fx, 20);
                n = recv(fd, &c, 1, 0);
                closed = n == 0 || (n == -1 && errno == ECONNRESET);
        }
        assert_true(closed);
        assert_true(loop_clock_ms() - start < 1000);
        close(fd);
}

static void test_request_in_two_writes(void **state) {
        struct fx *fx = *state;
        char resp[8192];
        int fd;

        fd = client_connect(fx->port);
        client_send(fx, fd, "GET /metr", 9);
        run_for(fx, 50);
        assert_true(client_is_waiting(fd));
        client_send(fx, fd, "ics HTTP/1.1\r\nHost: x\r", 22);
        run_for(fx, 50);
        assert_true(client_is_waiting(fd));
        client_send(fx, fd, "\n\r\n", 3);
        client_read_to_eof(fx, fd, resp, sizeof(resp));
        close(fd);
        assert_status(resp, 200);
        assert_string_equal(body_of(resp), expected_body);
}

static void test_connections_over_the_limit_are_closed(void **state) {
        struct fx *fx = *state;
        char resp[1024];
        int fds[CONN_MAX];
        int extra;

        for (int i = 0; i < CONN_MAX; i++) {
                fds[i] = client_connect(fx->port);
                run_for(fx, 1);
        }
        run_for(fx, 20);
        extra = client_connect(fx->port);
        /* accepted and closed at once, without a response */
        assert_int_equal(client_read_to_eof(fx, extra, resp, sizeof(resp)), 0);
        close(extra);
        for (int i = 0; i < CONN_MAX; i++)
                assert_true(client_is_waiting(fds[i]));

        /* the ones within the limit are still served */
        client_send(fx, fds[0], "GET /healthz HTTP/1.1\r\n\r\n", 25);
        client_read_to_eof(fx, fds[0], resp, sizeof(resp));
        assert_status(resp, 200);

        /* once they are gone, new connections are served again */
        for (int i = 0; i < CONN_MAX; i++)
                close(fds[i]);
        run_for(fx, 50);
        request_status(fx, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       200);
}

/* Finds the metrics listener on @port among this process's fds and gives
 * it a small send buffer. */
static void shrink_listener_sndbuf(int port) {
        int sndbuf = 4096;

        for (int fd = 3; fd < 1024; fd++) {
                struct sockaddr_in sin;
                socklen_t len = sizeof(sin);
                int acc = 0;
                socklen_t acc_len = sizeof(acc);

                if (getsockname(fd, (struct sockaddr *)&sin, &len) == -1 ||
                    sin.sin_family != AF_INET || ntohs(sin.sin_port) != port)
                        continue;
                if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &acc_len) ==
                            -1 ||
                    !acc)
                        continue;
                assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf,
                                            sizeof(sndbuf)),
                                 0);
                return;
        }
        fail_msg("no listener on port %d", port);
}

static void test_large_response_is_written_in_parts(void **state) {
        struct fx *fx = *state;
        static char resp[2 * 1024 * 1024];
        const char *body, *last;
        char cl[64], want[64];
        int rcvbuf = 4096;
        int fd;

        fx->mode = RENDER_LARGE;
        /* Small buffers on both sides make the server's send() return
         * short: accepted sockets inherit the listener's SO_SNDBUF. */
        shrink_listener_sndbuf(fx->port);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)),
                0);
        {
                struct sockaddr_in sin;

                memset(&sin, 0, sizeof(sin));
                sin.sin_family = AF_INET;
                sin.sin_port = htons((uint16_t)fx->port);
                sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
                        assert_int_equal(errno, EINPROGRESS);
        }
        client_send(fx, fd, "GET /metrics HTTP/1.1\r\n\r\n", 25);
        run_for(fx, 50); /* the server fills the window and waits */
        client_read_to_eof(fx, fd, resp, sizeof(resp));
        close(fd);
        assert_status(resp, 200);
        body = body_of(resp);
        assert_true(strlen(body) > 512 * 1024);
        snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", strlen(body));
        assert_header(resp, cl);
        snprintf(want, sizeof(want),
                 "km_huge_total{topic=\"t\",partition=\"%d\"} %d\n",
                 LARGE_CNT - 1, LARGE_CNT - 1);
        last = body + strlen(body) - strlen(want);
        assert_string_equal(last, want);
}

static void test_metrics_over_the_cap_is_500(void **state) {
        struct fx *fx = *state;
        char resp[1024];

        fx->mode = RENDER_HUGE;
        request_status(fx, "GET /metrics HTTP/1.1\r\n\r\n", resp, sizeof(resp),
                       500);
}

static void test_destroy_closes_open_connections(void **state) {
        struct fx *fx = *state;
        char resp[64];
        int fd[3];

        for (int i = 0; i < 3; i++) {
                fd[i] = client_connect(fx->port);
                client_send(fx, fd[i], "GET /me", 7);
        }
        run_for(fx, 20);
        for (int i = 0; i < 3; i++)
                assert_true(client_is_waiting(fd[i]));
        metrics_destroy(fx->m);
        fx->m = NULL;
        for (int i = 0; i < 3; i++) {
                assert_int_equal(
                        client_read_to_eof(fx, fd[i], resp, sizeof(resp)), 0);
                close(fd[i]);
        }
}

static void test_accept_pauses_when_out_of_fds(void **state) {
        struct fx *fx = *state;
        struct rlimit saved, low;
        char resp[1024];
        int fd, lowest;

        fd = client_connect(fx->port);
        /* no fd left for accept() */
        lowest = dup(0);
        assert_true(lowest >= 0);
        close(lowest);
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
        low = saved;
        low.rlim_cur = (rlim_t)lowest;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        run_for(fx, 30);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
        assert_true(client_is_waiting(fd));
        /* accepted once the pause is over */
        client_send(fx, fd, "GET /healthz HTTP/1.1\r\n\r\n", 25);
        client_read_to_eof(fx, fd, resp, sizeof(resp));
        close(fd);
        assert_status(resp, 200);
}

static void assert_listen_error(loop_t *loop, const char *addr,
                                const char *want) {
        char err[256];
        metrics_t *m;

        m = metrics_new(loop, addr, NULL, NULL, NULL, err, sizeof(err));
        assert_null(m);
        assert_string_equal(err, want);
}

static void test_bad_listen_addresses_are_named(void **state) {
        struct fx *fx = *state;
        char addr[64], want[128];

        assert_listen_error(fx->loop, "127.0.0.1:99999",
                            "metrics.listen 127.0.0.1:99999: bad port");
        assert_listen_error(
                fx->loop, "127.0.0.1:", "metrics.listen 127.0.0.1:: bad port");
        assert_listen_error(fx->loop, "127.0.0.1:80x",
                            "metrics.listen 127.0.0.1:80x: bad port");
        assert_listen_error(fx->loop, "9100",
                            "metrics.listen 9100: bad address (expected IPv4 "
                            "host:port or [IPv6]:port)");
        assert_listen_error(fx->loop, "::1:9100",
                            "metrics.listen ::1:9100: bad address (expected "
                            "IPv4 host:port or [IPv6]:port)");
        assert_listen_error(fx->loop, "localhost:9100",
                            "metrics.listen localhost:9100: bad address "
                            "(expected IPv4 host:port or [IPv6]:port)");
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", fx->port);
        snprintf(want, sizeof(want),
                 "metrics.listen %s: bind: Address already in use", addr);
        assert_listen_error(fx->loop, addr, want);
}

static void test_ipv6_listen(void **state) {
        struct fx *fx = *state;
        char err[256];
        metrics_t *m;

        m = metrics_new(fx->loop, "[::1]:0", NULL, NULL, NULL, err,
                        sizeof(err));
        if (!m) {
                /* no IPv6 loopback here: the error still names the address */
                assert_true(strncmp(err, "metrics.listen [::1]:0: ", 24) == 0);
                skip();
        }
        assert_true(metrics_port(m) > 0);
        metrics_destroy(m);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
        const struct CMUnitTest tests[] = {
                T(test_get_metrics_serves_exposition_text),
                T(test_help_and_type_once_per_consecutive_name),
                T(test_head_metrics_has_length_but_no_body),
                T(test_query_string_is_ignored),
                T(test_healthz_ok),
                T(test_healthz_unhealthy_is_503_with_reason),
                T(test_unknown_path_is_404),
                T(test_other_method_is_405),
                T(test_malformed_request_line_is_400),
                T(test_bare_newlines_end_the_head),
                T(test_oversize_request_is_431_and_closed),
                T(test_input_after_the_response_is_bounded),
                T(test_silent_client_is_closed_after_timeout),
                T(test_trickling_client_does_not_extend_the_timeout),
                T(test_request_in_two_writes),
                T(test_connections_over_the_limit_are_closed),
                T(test_large_response_is_written_in_parts),
                T(test_metrics_over_the_cap_is_500),
                T(test_destroy_closes_open_connections),
                T(test_accept_pauses_when_out_of_fds),
                T(test_bad_listen_addresses_are_named),
                T(test_ipv6_listen),
        };
#undef T

        /* KM_TEST_LOG=debug shows every connection */
        if (getenv("KM_TEST_LOG"))
                (void)log_set_level(getenv("KM_TEST_LOG"));
        else
                (void)log_set_level("warn");
        return cmocka_run_group_tests(tests, NULL, NULL);
}
