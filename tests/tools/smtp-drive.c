/*
 * smtp-drive: drives the smtp module against a real server.
 *
 *   smtp-drive --url smtp://127.0.0.1:PORT --count N --inflight K
 *              --sessions S --size BYTES [--rcpts R]
 *              [--starttls off|opportunistic|required]
 *              [--user U --password P] [--ca FILE] [--insecure]
 *              [--helo NAME] [--no-pipelining] [--max-messages M]
 *              [--timeout-data MS] [--max-seconds SEC] [--log LEVEL]
 *              [--to ADDR]...
 *
 * Submits N jobs keeping K in flight and prints one line on stdout:
 *   sent=N permanent=P transient=T seconds=S rate=R
 * Exit status 0 when every job was sent, 1 when some were not (or
 * --max-seconds passed), 2 on usage errors.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "smtp.h"

struct drive {
        smtp_client_t *sc;
        struct smtp_job *jobs;
        long count;
        long next;
        long done;
        long sent;
        long permanent;
        long transient;
        long requeue_limit;
        int verbose_failures;
};

static const char *drive_rcpts[8] = {
        "a@sink.example", "b@sink.example", "c@sink.example", "d@sink.example",
        "e@sink.example", "f@sink.example", "g@sink.example", "h@sink.example"};

static void drive_done(struct smtp_job *job, void *opaque) {
        struct drive *d = opaque;

        d->done++;
        switch (job->outcome) {
        case SMTP_OK:
                d->sent++;
                break;
        case SMTP_PERMANENT:
                d->permanent++;
                break;
        default:
                d->transient++;
                break;
        }
        if ((job->outcome != SMTP_OK || job->rcpt_failure_cnt) &&
            d->verbose_failures-- > 0) {
                for (size_t i = 0; i < job->rcpt_failure_cnt; i++)
                        fprintf(stderr, "job %ld: rcpt %s: %d %s\n",
                                (long)(job - d->jobs),
                                job->rcpt_failures[i].rcpt,
                                job->rcpt_failures[i].code,
                                job->rcpt_failures[i].reply);
                fprintf(stderr,
                        "job %ld: %s code=%d reply=\"%s\" "
                        "rcpt_failures=%zu\n",
                        (long)(job - d->jobs),
                        job->outcome == SMTP_OK          ? "sent"
                        : job->outcome == SMTP_PERMANENT ? "permanent"
                                                         : "transient",
                        job->code, job->reply, job->rcpt_failure_cnt);
        }
        if (d->next < d->count) {
                smtp_client_submit(d->sc, &d->jobs[d->next]);
                d->next++;
        }
}

/* @returns a message of about @size bytes: headers, then 76-character
 * lines, CRLF line ends, no line starting with '.'. */
static char *drive_message(size_t size, size_t *lenp) {
        const char *hdr = "From: drive@example.com\r\n"
                          "To: sink@sink.example\r\n"
                          "Subject: smtp-drive\r\n"
                          "Message-ID: <drive@example.com>\r\n"
                          "\r\n";
        size_t hlen = strlen(hdr), len = 0, cap = size + hlen + 80;
        char *m = malloc(cap);

        if (!m)
                return NULL;
        memcpy(m, hdr, hlen);
        len = hlen;
        while (len < size) {
                for (int i = 0; i < 76; i++, len++)
                        m[len] = (char)('a' + (len % 26));
                m[len++] = '\r';
                m[len++] = '\n';
        }
        memcpy(m + len, ".\r\n", 3); /* follows the payload (struct smtp_job) */
        *lenp = len;
        return m;
}

static long drive_long(const char *s, const char *name) {
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < 0) {
                fprintf(stderr, "smtp-drive: %s: not a number: %s\n", name, s);
                exit(2);
        }
        return v;
}

static void drive_usage(void) {
        fprintf(stderr,
                "usage: smtp-drive --url URL [--count N] [--inflight K] "
                "[--sessions S] [--size BYTES] [--rcpts R]\n"
                "       [--starttls off|opportunistic|required] [--user U "
                "--password P] [--ca FILE] [--insecure]\n"
                "       [--helo NAME] [--no-pipelining] [--max-messages M] "
                "[--timeout-data MS] [--max-seconds SEC] [--log LEVEL]\n"
                "       [--to ADDR]... (up to 8, replaces the default "
                "recipients)\n");
        exit(2);
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                {"url", required_argument, NULL, 'u'},
                {"count", required_argument, NULL, 'n'},
                {"inflight", required_argument, NULL, 'k'},
                {"sessions", required_argument, NULL, 's'},
                {"size", required_argument, NULL, 'z'},
                {"rcpts", required_argument, NULL, 'r'},
                {"starttls", required_argument, NULL, 't'},
                {"user", required_argument, NULL, 'U'},
                {"password", required_argument, NULL, 'P'},
                {"ca", required_argument, NULL, 'C'},
                {"insecure", no_argument, NULL, 'I'},
                {"helo", required_argument, NULL, 'H'},
                {"no-pipelining", no_argument, NULL, 'N'},
                {"max-messages", required_argument, NULL, 'm'},
                {"timeout-data", required_argument, NULL, 'D'},
                {"max-seconds", required_argument, NULL, 'x'},
                {"log", required_argument, NULL, 'l'},
                {"to", required_argument, NULL, 'T'},
                {NULL, 0, NULL, 0},
        };
        struct smtp_client_conf scc = {
                .starttls = CONFIG_TLS_OFF,
                .tls_verify = 1,
                .pipelining = 1,
                .sessions_max = 20,
                .session_max_messages = 1000000,
                .session_idle_ms = 10000,
                .timeout_connect_ms = 10000,
                .timeout_command_ms = 30000,
                .timeout_data_ms = 60000,
                .relay_backoff_initial_ms = 500,
                .relay_backoff_max_ms = 10000,
                .relay_probe_ms = 1000,
        };
        struct drive d;
        long inflight = 100, size = 1024, rcpts = 1, max_seconds = 0;
        long to_cnt = 0;
        char errstr[256];
        struct smtp_stats st;
        loop_t *loop = NULL;
        char *msg = NULL;
        size_t msg_len = 0;
        int64_t t0, t1;
        double secs;
        int c, ret = 1;

        memset(&d, 0, sizeof(d));
        d.count = 1000;
        d.verbose_failures = 5;
        log_set_level("warn");
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (c) {
                case 'u':
                        scc.url = optarg;
                        break;
                case 'n':
                        d.count = drive_long(optarg, "--count");
                        break;
                case 'k':
                        inflight = drive_long(optarg, "--inflight");
                        break;
                case 's':
                        scc.sessions_max =
                                (int)drive_long(optarg, "--sessions");
                        break;
                case 'z':
                        size = drive_long(optarg, "--size");
                        break;
                case 'r':
                        rcpts = drive_long(optarg, "--rcpts");
                        break;
                case 't':
                        if (strcmp(optarg, "off") == 0)
                                scc.starttls = CONFIG_TLS_OFF;
                        else if (strcmp(optarg, "opportunistic") == 0)
                                scc.starttls = CONFIG_TLS_OPPORTUNISTIC;
                        else if (strcmp(optarg, "required") == 0)
                                scc.starttls = CONFIG_TLS_REQUIRED;
                        else
                                drive_usage();
                        break;
                case 'U':
                        scc.username = optarg;
                        break;
                case 'P':
                        scc.password = optarg;
                        break;
                case 'C':
                        scc.ca_file = optarg;
                        break;
                case 'I':
                        scc.tls_verify = 0;
                        break;
                case 'H':
                        scc.helo_name = optarg;
                        break;
                case 'N':
                        scc.pipelining = 0;
                        break;
                case 'm':
                        scc.session_max_messages =
                                (int)drive_long(optarg, "--max-messages");
                        break;
                case 'D':
                        scc.timeout_data_ms =
                                (int)drive_long(optarg, "--timeout-data");
                        break;
                case 'x':
                        max_seconds = drive_long(optarg, "--max-seconds");
                        break;
                case 'T':
                        if (to_cnt == 8)
                                drive_usage();
                        drive_rcpts[to_cnt++] = optarg;
                        rcpts = to_cnt;
                        break;
                case 'l':
                        if (log_set_level(optarg) == -1)
                                drive_usage();
                        break;
                default:
                        drive_usage();
                }
        }
        if (!scc.url || optind != argc || inflight < 1 || rcpts < 1 ||
            rcpts > (long)(sizeof(drive_rcpts) / sizeof(drive_rcpts[0])))
                drive_usage();

        curl_global_init(CURL_GLOBAL_DEFAULT);
        loop = loop_new();
        msg = drive_message((size_t)size, &msg_len);
        d.jobs = calloc((size_t)d.count + 1, sizeof(*d.jobs));
        if (!loop || !msg || !d.jobs) {
                fprintf(stderr, "smtp-drive: out of memory\n");
                goto out;
        }
        d.sc = smtp_client_new(loop, &scc, drive_done, &d, errstr,
                               sizeof(errstr));
        if (!d.sc) {
                fprintf(stderr, "smtp-drive: %s\n", errstr);
                goto out;
        }
        for (long i = 0; i < d.count; i++) {
                d.jobs[i].mail_from = "drive@example.com";
                d.jobs[i].rcpts = drive_rcpts;
                d.jobs[i].rcpt_cnt = (size_t)rcpts;
                d.jobs[i].data = msg;
                d.jobs[i].data_len = msg_len;
        }

        t0 = loop_clock_ms();
        for (; d.next < d.count && d.next < inflight; d.next++)
                smtp_client_submit(d.sc, &d.jobs[d.next]);
        while (d.done < d.count) {
                if (loop_run_once(loop, 1000) == -1) {
                        fprintf(stderr, "smtp-drive: loop: %s\n",
                                strerror(errno));
                        break;
                }
                if (max_seconds > 0 &&
                    loop_clock_ms() - t0 > max_seconds * 1000) {
                        smtp_client_stats(d.sc, &st);
                        fprintf(stderr,
                                "smtp-drive: gave up after %ld s: "
                                "queued=%zu sessions=%zu healthy=%d "
                                "opened=%" PRIu64 " relay_failures=%" PRIu64
                                " last_error=\"%s\"\n",
                                max_seconds, st.jobs_queued, st.sessions_open,
                                st.relay_healthy, st.sessions_opened_total,
                                st.relay_failures_total, st.last_relay_error);
                        break;
                }
        }
        t1 = loop_clock_ms();
        secs = (double)(t1 - t0) / 1000.0;
        smtp_client_stats(d.sc, &st);
        fprintf(stderr,
                "smtp-drive: sessions_opened=%" PRIu64
                " relay_failures=%" PRIu64 "\n",
                st.sessions_opened_total, st.relay_failures_total);
        printf("sent=%ld permanent=%ld transient=%ld seconds=%.2f rate=%.1f\n",
               d.sent, d.permanent, d.transient, secs,
               secs > 0 ? (double)d.sent / secs : 0.0);
        ret = d.sent == d.count ? 0 : 1;

        /* QUIT politely, briefly */
        smtp_client_close_idle(d.sc);
        t0 = loop_clock_ms();
        while (loop_clock_ms() - t0 < 1500) {
                smtp_client_stats(d.sc, &st);
                if (st.sessions_open == 0)
                        break;
                loop_run_once(loop, 100);
        }
out:
        smtp_client_destroy(d.sc);
        if (d.jobs) {
                for (long i = 0; i < d.count; i++)
                        smtp_job_reset(&d.jobs[i]);
        }
        loop_destroy(loop);
        free(d.jobs);
        free(msg);
        curl_global_cleanup();
        return ret;
}
