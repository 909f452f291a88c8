/*
 * mailer-loadgen: publishes N synthetic, valid v1 email requests to the
 * requests topic as fast as it can (or at a given rate), for benchmarks.
 *
 *   mailer-loadgen -b BOOTSTRAP -t TOPIC -n N [--size BYTES] [--rcpts K]
 *                  [--html] [--attachment BYTES] [--rate R]
 *                  [--id-prefix P] [-F FILE]... [-X prop=value]...
 *
 * Each request has the id "<prefix>.<seq>" (also its key, so the requests
 * spread over the partitions), one From, K recipients in "to", a subject, a
 * text body (and an HTML body with --html) of about BYTES bytes in all, and
 * optionally one attachment of BYTES raw bytes. The JSON of every request is
 * laid out once; only the id and the subject change from one to the next, so
 * generating a request costs a memcpy.
 *
 * Progress goes to stderr every second; at the end
 * "produced=N seconds=S rate=R" (S from the first produce to the last
 * delivery report). Exit: 0 all delivered, 1 usage error or interrupted,
 * 2 Kafka error (some messages not delivered).
 */
#include "tools.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOADGEN_DEFAULT_TOPIC "email.requests"
/* Longest id-prefix: the id is at most 200 characters and the ".<seq>"
 * suffix takes at most 21. */
#define LOADGEN_MAX_PREFIX 160

struct loadgen_opts {
        const char *lo_topic;
        const char *lo_prefix; /* NULL: lg<unix time> */
        long long lo_count; /* -1: not given */
        long long lo_size;
        long long lo_rcpts;
        long long lo_attachment; /* -1: none */
        long long lo_rate; /* 0: as fast as possible */
        int lo_html;
};

struct loadgen_state {
        struct tool_deliveries ls_dr;
        int64_t ls_last_dr_ms; /* monotonic time of the last delivery report */
        unsigned long ls_queued;
        int64_t ls_start_ms;
        int64_t ls_next_progress_ms;
};

/* A buffer that grows; the tool exits when memory runs out. */
struct lg_buf {
        char *b_data;
        size_t b_len;
        size_t b_cap;
};

static void lg_buf_add(struct lg_buf *b, const char *s, size_t n) {
        if (b->b_len + n + 1 > b->b_cap) {
                size_t cap = b->b_cap ? b->b_cap : 256;
                char *p;

                while (b->b_len + n + 1 > cap)
                        cap *= 2;
                p = realloc(b->b_data, cap);
                if (p == NULL) {
                        tool_err("out of memory");
                        exit(TOOL_EXIT_INPUT);
                }
                b->b_data = p;
                b->b_cap = cap;
        }
        memcpy(b->b_data + b->b_len, s, n);
        b->b_len += n;
        b->b_data[b->b_len] = '\0';
}

static void lg_buf_str(struct lg_buf *b, const char *s) {
        lg_buf_add(b, s, strlen(s));
}

static void loadgen_usage(FILE *fp) {
        fprintf(fp,
                "Usage: mailer-loadgen -n N [options]\n"
                "\n"
                "Publishes N synthetic, valid v1 email requests to a Kafka topic, keyed by\n"
                "their id (so they spread over the partitions), for benchmarks.\n"
                "\n"
                "Options:\n"
                "  -b BOOTSTRAP          bootstrap servers (default " TOOL_DEFAULT_BOOTSTRAP
                ")\n"
                "  -t TOPIC              topic (default " LOADGEN_DEFAULT_TOPIC
                ")\n"
                "  -n N                  number of requests (required)\n"
                "      --size BYTES      body size: text, or text + HTML with --html\n"
                "                        (default 1024)\n"
                "      --rcpts K         recipients in \"to\" (default 1)\n"
                "      --html            add an HTML body (multipart/alternative); the\n"
                "                        body size is split between text and HTML\n"
                "      --attachment BYTES\n"
                "                        add one attachment of BYTES raw bytes\n"
                "      --rate R          requests per second; 0 = as fast as possible\n"
                "                        (default 0)\n"
                "      --id-prefix P     ids are P.1 .. P.N (default lg<unix time>)\n"
                "  -X prop=value         librdkafka property (repeatable; later wins)\n"
                "  -F FILE               librdkafka properties file (key=value lines; repeatable)\n"
                "  -h, --help            this help\n"
                "\n"
                "Producer defaults: enable.idempotence=true, linger.ms=20,\n"
                "batch.size=1000000, batch.num.messages=10000, compression.type=lz4,\n"
                "queue.buffering.max.messages=1000000 (override with -X).\n"
                "\n"
                "Progress on stderr every second; at the end\n"
                "\"produced=N seconds=S rate=R\" on stderr.\n"
                "Exit status: 0 all delivered, 1 usage error or interrupted, 2 Kafka error\n"
                "(messages not delivered).\n");
}

/* Runs from rd_kafka_poll()/rd_kafka_flush() on the main thread. */
static void loadgen_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                          void *opaque) {
        struct loadgen_state *ls = opaque;

        (void)rk;
        ls->ls_last_dr_ms = tool_now_ms();
        if (tool_delivery_count(&ls->ls_dr, rkm->err))
                tool_err("%.*s: delivery failed: %s", (int)rkm->key_len,
                         (const char *)rkm->key, tool_delivery_why(rkm));
}

/* RFC 5322 atext plus '.', as the request id allows. */
static int loadgen_id_char(unsigned char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9'))
                return 1;
        /* '"' and '\\' are not atext, so the id never needs JSON escaping. */
        return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

static int loadgen_valid_prefix(const char *p) {
        size_t n = strlen(p);

        if (n == 0 || n > LOADGEN_MAX_PREFIX || p[0] == '.' ||
            p[n - 1] == '.' || strstr(p, "..") != NULL)
                return 0;
        for (size_t i = 0; i < n; i++) {
                if (!loadgen_id_char((unsigned char)p[i]))
                        return 0;
        }
        return 1;
}

static const char *const loadgen_words[] = {
        "order",        "receipt", "shipping",  "account",  "invoice",
        "payment",      "thanks",  "delivery",  "package",  "tracking",
        "update",       "welcome", "reset",     "password", "confirm",
        "subscription", "renewal", "notice",    "summary",  "weekly",
        "report",       "balance", "statement", "reminder",
};

/* Appends about @n bytes of words and newlines, JSON-escaped ("\n" as the
 * two characters '\' 'n', counted as one body byte). @seed varies the
 * words. */
static void loadgen_text(struct lg_buf *b, size_t n, unsigned seed) {
        const size_t nwords = sizeof(loadgen_words) / sizeof(loadgen_words[0]);
        size_t body = 0;
        size_t col = 0;
        unsigned x = seed * 2654435761u + 12345u;

        while (body < n) {
                const char *w;
                size_t wl;

                x = x * 1103515245u + 12345u;
                w = loadgen_words[(x >> 16) % nwords];
                wl = strlen(w);
                if (body + wl + 1 > n) {
                        /* Pad to the exact size with letters. */
                        while (body < n) {
                                lg_buf_add(b, "x", 1);
                                body++;
                        }
                        break;
                }
                if (col + wl + 1 > 72) {
                        lg_buf_str(b, "\\n");
                        body++;
                        col = 0;
                        continue;
                }
                lg_buf_add(b, w, wl);
                lg_buf_add(b, " ", 1);
                body += wl + 1;
                col += wl + 1;
        }
}

static void loadgen_base64(struct lg_buf *b, size_t n) {
        static const char tbl[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        unsigned char in[3];
        unsigned x = 0x9e3779b9u;
        char out[4];

        for (size_t i = 0; i < n; i += 3) {
                size_t k = n - i < 3 ? n - i : 3;

                for (size_t j = 0; j < 3; j++) {
                        x = x * 1664525u + 1013904223u;
                        in[j] = j < k ? (unsigned char)(x >> 24) : 0;
                }
                out[0] = tbl[in[0] >> 2];
                out[1] = tbl[((in[0] & 3) << 4) | (in[1] >> 4)];
                out[2] = k > 1 ? tbl[((in[1] & 15) << 2) | (in[2] >> 6)] : '=';
                out[3] = k > 2 ? tbl[in[2] & 63] : '=';
                lg_buf_add(b, out, 4);
        }
}

/* The part of every request after the subject: bodies and attachment. */
static void loadgen_tail(struct lg_buf *b, size_t size, int html,
                         long long attachment) {
        size_t text_n = html ? size / 2 : size;

        lg_buf_str(b, ",\"text\":\"");
        loadgen_text(b, text_n, 1);
        lg_buf_str(b, "\"");
        if (html) {
                size_t html_n = size - text_n;
                static const char open[] = "<html><body><p>";
                static const char close[] = "</p></body></html>";
                size_t wrap = sizeof(open) - 1 + sizeof(close) - 1;

                lg_buf_str(b, ",\"html\":\"");
                lg_buf_str(b, open);
                loadgen_text(b, html_n > wrap ? html_n - wrap : 0, 2);
                lg_buf_str(b, close);
                lg_buf_str(b, "\"");
        }
        if (attachment >= 0) {
                lg_buf_str(b, ",\"attachments\":[{\"filename\":\"data.bin\","
                              "\"content_type\":\"application/octet-stream\","
                              "\"content_base64\":\"");
                loadgen_base64(b, (size_t)attachment);
                lg_buf_str(b, "\"}]");
        }
        lg_buf_str(b, "}");
}

/* The part before the id: version and envelope. */
static void loadgen_head(struct lg_buf *b, long long rcpts) {
        char addr[64];

        lg_buf_str(b, "{\"v\":1,\"from\":\"Load Generator "
                      "<loadgen@bench.example>\",\"to\":[");
        for (long long i = 0; i < rcpts; i++) {
                snprintf(addr, sizeof(addr), "%s\"user%lld@sink.example\"",
                         i > 0 ? "," : "", i + 1);
                lg_buf_str(b, addr);
        }
        lg_buf_str(b, "],\"id\":\"");
}

/* Prints the progress line if a second has passed since the last one. */
static void loadgen_progress(struct loadgen_state *ls, int64_t now_ms) {
        double secs = (double)(now_ms - ls->ls_start_ms) / 1000.0;

        if (now_ms < ls->ls_next_progress_ms)
                return;
        tool_err("queued=%lu delivered=%lu failed=%lu seconds=%.1f rate=%.0f",
                 ls->ls_queued, ls->ls_dr.td_delivered, ls->ls_dr.td_failed,
                 secs, secs > 0 ? (double)ls->ls_dr.td_delivered / secs : 0.0);
        ls->ls_next_progress_ms = now_ms + 1000;
}

/* tool_producer_drain()'s progress callback. */
static void loadgen_drain_progress(void *arg) {
        loadgen_progress(arg, tool_now_ms());
}

/* @returns what the command line asks (enum tool_opts_result). */
static enum tool_opts_result loadgen_parse_args(int argc, char **argv,
                                                rd_kafka_conf_t *conf,
                                                struct loadgen_opts *lo) {
        const struct tool_opt opts[] = {
                TOOL_OPT_CALL(NULL, 'b', tool_opt_bootstrap, conf),
                TOOL_OPT_STRING(NULL, 't', &lo->lo_topic),
                TOOL_OPT_INT(NULL, 'n', &lo->lo_count, 0, 1000000000000LL,
                             "-n: expected a count >= 0, got \"%s\""),
                TOOL_OPT_INT("size", 0, &lo->lo_size, 1, 64LL * 1024 * 1024,
                             "--size: expected 1..67108864 bytes, got \"%s\""),
                TOOL_OPT_INT("rcpts", 0, &lo->lo_rcpts, 1, 10000,
                             "--rcpts: expected 1..10000, got \"%s\""),
                TOOL_OPT_FLAG("html", 0, &lo->lo_html),
                TOOL_OPT_INT("attachment", 0, &lo->lo_attachment, 0,
                             64LL * 1024 * 1024,
                             "--attachment: expected 0..67108864 bytes, got "
                             "\"%s\""),
                TOOL_OPT_INT("rate", 0, &lo->lo_rate, 0, 100000000,
                             "--rate: expected requests per second >= 0, got "
                             "\"%s\""),
                TOOL_OPT_STRING("id-prefix", 0, &lo->lo_prefix),
                TOOL_OPT_CALL(NULL, 'X', tool_opt_property, conf),
                TOOL_OPT_CALL(NULL, 'F', tool_opt_properties_file, conf),
                TOOL_OPT_HELP("help", 'h'),
                TOOL_OPT_END,
        };
        enum tool_opts_result res;

        res = tool_opts_parse(argc, argv, opts, 0, loadgen_usage);
        if (res != TOOL_OPTS_RUN)
                return res;
        if (optind < argc) {
                tool_err("unexpected argument \"%s\"", argv[optind]);
                loadgen_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        if (lo->lo_count < 0) {
                tool_err("-n N is required");
                loadgen_usage(stderr);
                return TOOL_OPTS_ERROR;
        }
        if (*lo->lo_topic == '\0') {
                tool_err("-t: empty topic name");
                return TOOL_OPTS_ERROR;
        }
        return TOOL_OPTS_RUN;
}

int main(int argc, char **argv) {
        struct loadgen_opts lo = {
                .lo_topic = LOADGEN_DEFAULT_TOPIC,
                .lo_count = -1,
                .lo_size = 1024,
                .lo_rcpts = 1,
                .lo_attachment = -1,
        };
        struct loadgen_state ls;
        struct lg_buf head = {0};
        struct lg_buf tail = {0};
        struct lg_buf msg = {0};
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        enum tool_opts_result parsed;
        char prefix_buf[32];
        int part_cnt = 0;
        int64_t end_ms;
        int kafka_failed = 0;
        int left;
        int rc = TOOL_EXIT_INPUT;

        tool_init("mailer-loadgen");
        memset(&ls, 0, sizeof(ls));
        conf = tool_conf_new();
        if (conf == NULL ||
            tool_conf_set(conf, "defaults", "enable.idempotence", "true") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "linger.ms", "20") == -1 ||
            tool_conf_set(conf, "defaults", "batch.size", "1000000") == -1 ||
            tool_conf_set(conf, "defaults", "batch.num.messages", "10000") ==
                    -1 ||
            tool_conf_set(conf, "defaults", "compression.type", "lz4") == -1 ||
            tool_conf_set(conf, "defaults", "queue.buffering.max.messages",
                          "1000000") == -1)
                goto out;
        parsed = loadgen_parse_args(argc, argv, conf, &lo);
        if (parsed != TOOL_OPTS_RUN) {
                rc = parsed == TOOL_OPTS_HELP ? TOOL_EXIT_OK : TOOL_EXIT_INPUT;
                goto out;
        }
        if (lo.lo_prefix == NULL) {
                snprintf(prefix_buf, sizeof(prefix_buf), "lg%lld",
                         (long long)time(NULL));
                lo.lo_prefix = prefix_buf;
        }
        if (!loadgen_valid_prefix(lo.lo_prefix)) {
                tool_err("--id-prefix: \"%s\" is not a valid id start (1 to "
                         "%d characters of atext and dots, no dot at either "
                         "end, no two dots in a row)",
                         lo.lo_prefix, LOADGEN_MAX_PREFIX);
                goto out;
        }

        loadgen_head(&head, lo.lo_rcpts);
        loadgen_tail(&tail, (size_t)lo.lo_size, lo.lo_html, lo.lo_attachment);

        rc = TOOL_EXIT_KAFKA;
        rk = tool_producer_new(&conf, loadgen_dr_cb, &ls, lo.lo_topic,
                               &part_cnt);
        if (rk == NULL)
                goto out;
        tool_err("topic %s: %d partitions; %lld requests of about %zu bytes "
                 "(id prefix %s)",
                 lo.lo_topic, part_cnt, lo.lo_count,
                 head.b_len + tail.b_len + 2 * strlen(lo.lo_prefix) + 40,
                 lo.lo_prefix);

        ls.ls_start_ms = tool_now_ms();
        ls.ls_next_progress_ms = ls.ls_start_ms + 1000;
        ls.ls_last_dr_ms = ls.ls_start_ms;
        for (long long i = 1; i <= lo.lo_count; i++) {
                char idbuf[LOADGEN_MAX_PREFIX + 32];
                char subj[LOADGEN_MAX_PREFIX + 64];
                int idlen;
                int subjlen;
                rd_kafka_resp_err_t err;
                int64_t now;

                if (!tool_running() || tool_kafka_fatal())
                        break;
                if (ls.ls_dr.td_failed > 0) {
                        tool_err("stopped after %lu requests: delivery "
                                 "failures",
                                 ls.ls_queued);
                        break;
                }
                now = tool_now_ms();
                if (lo.lo_rate > 0) {
                        /* Request i is due at start + (i - 1) / rate. */
                        int64_t due =
                                ls.ls_start_ms + (i - 1) * 1000 / lo.lo_rate;

                        while (now < due && tool_running()) {
                                rd_kafka_poll(rk, (int)(due - now));
                                now = tool_now_ms();
                        }
                }
                loadgen_progress(&ls, now);

                idlen = snprintf(idbuf, sizeof(idbuf), "%s.%lld", lo.lo_prefix,
                                 i);
                subjlen = snprintf(subj, sizeof(subj),
                                   "\",\"subject\":\"Load test %s\"", idbuf);
                msg.b_len = 0;
                lg_buf_add(&msg, head.b_data, head.b_len);
                lg_buf_add(&msg, idbuf, (size_t)idlen);
                lg_buf_add(&msg, subj, (size_t)subjlen);
                lg_buf_add(&msg, tail.b_data, tail.b_len);

                for (;;) {
                        err = rd_kafka_producev(
                                rk, RD_KAFKA_V_TOPIC(lo.lo_topic),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_KEY(idbuf, (size_t)idlen),
                                RD_KAFKA_V_VALUE(msg.b_data, msg.b_len),
                                RD_KAFKA_V_END);
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                break;
                        rd_kafka_poll(rk, 10);
                        if (!tool_running() || tool_kafka_fatal())
                                break;
                }
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                tool_err("cannot produce request %lld: %s", i,
                                         tool_kafka_why(err, NULL, "Write",
                                                        NULL));
                        kafka_failed = 1;
                        break;
                }
                ls.ls_queued++;
                /* Serve delivery reports now and then, not per message. */
                if ((ls.ls_queued & 1023) == 0)
                        rd_kafka_poll(rk, 0);
        }

        left = tool_producer_drain(rk, 200, loadgen_drain_progress, &ls);
        end_ms = ls.ls_dr.td_delivered > 0 ? ls.ls_last_dr_ms : tool_now_ms();
        if (left > 0) {
                tool_err("%d messages not delivered before exit", left);
                kafka_failed = 1;
        }
        if (!tool_running())
                tool_err("interrupted after %lu requests", ls.ls_queued);
        if (ls.ls_dr.td_failed > 0 || tool_kafka_fatal())
                kafka_failed = 1;

        {
                double secs = (double)(end_ms - ls.ls_start_ms) / 1000.0;
                double r =
                        secs > 0 ? (double)ls.ls_dr.td_delivered / secs : 0.0;

                if (ls.ls_dr.td_failed > 0 || left > 0)
                        fprintf(stderr,
                                "produced=%lu seconds=%.3f rate=%.0f "
                                "failed=%lu\n",
                                ls.ls_dr.td_delivered, secs, r,
                                ls.ls_dr.td_failed + (unsigned long)left);
                else
                        fprintf(stderr, "produced=%lu seconds=%.3f rate=%.0f\n",
                                ls.ls_dr.td_delivered, secs, r);
        }

        if (kafka_failed)
                rc = TOOL_EXIT_KAFKA;
        else if (!tool_running())
                rc = TOOL_EXIT_INPUT;
        else
                rc = TOOL_EXIT_OK;
out:
        free(head.b_data);
        free(tail.b_data);
        free(msg.b_data);
        if (rk != NULL)
                rd_kafka_destroy(rk);
        if (conf != NULL)
                rd_kafka_conf_destroy(conf);
        return rc;
}
