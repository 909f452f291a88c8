/*
 * smtp-drive: drives the smtp module against a real server.
 *
 *   smtp-drive --url smtp://127.0.0.1:PORT --count N --inflight K
 *              --sessions S --size BYTES [--rcpts R]
 *              [--starttls off|opportunistic|required]
 *              [--user U --password P] [--ca FILE] [--insecure]
 *              [--helo NAME] [--no-pipelining] [--no-txn-pipelining]
 *              [--no-chunking]
 *              [--max-messages M] [--timeout-data MS] [--max-seconds SEC] [--log LEVEL]
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
#include <limits.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "smtp.h"
#include "tools.h"

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

/* The recipients of every message: --rcpts R takes the first R. */
#define DRIVE_MAX_RCPTS 8

static const char *drive_rcpts[DRIVE_MAX_RCPTS] = {
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

static void drive_usage(FILE *fp) {
        fprintf(fp, "usage: smtp-drive --url URL [--count N] [--inflight K] "
                    "[--sessions S] [--size BYTES] [--rcpts R]\n"
                    "       [--starttls off|opportunistic|required] [--user U "
                    "--password P] [--ca FILE] [--insecure]\n"
                    "       [--helo NAME] [--no-pipelining] "
                    "[--no-txn-pipelining] [--no-chunking] "
                    "[--max-messages M]\n"
                    "       [--timeout-data MS] [--max-seconds SEC] "
                    "[--log LEVEL]\n"
                    "       [--to ADDR]... (up to 8, replaces the default "
                    "recipients)\n");
}

/* The command line's numbers and switches; the rest goes to the smtp
 * client's configuration directly. */
struct drive_args {
        long long count;
        long long inflight;
        long long sessions;
        long long size;
        long long rcpts;
        long long max_messages;
        long long timeout_data;
        long long max_seconds;
        long long to_cnt; /* --to given so many times */
        int insecure;
        int no_pipelining;
        int no_txn_pipelining;
        int no_chunking;
};

/* --starttls: arg is the enum config_tls_mode. */
static int drive_opt_starttls(const char *value, void *arg) {
        enum config_tls_mode *mode = arg;

        if (strcmp(value, "off") == 0) {
                *mode = CONFIG_TLS_OFF;
        } else if (strcmp(value, "opportunistic") == 0) {
                *mode = CONFIG_TLS_OPPORTUNISTIC;
        } else if (strcmp(value, "required") == 0) {
                *mode = CONFIG_TLS_REQUIRED;
        } else {
                drive_usage(stderr);
                return -1;
        }
        return 0;
}

/* --log LEVEL */
static int drive_opt_log(const char *value, void *arg) {
        (void)arg;
        if (log_set_level(value) == 0)
                return 0;
        drive_usage(stderr);
        return -1;
}

/* --to ADDR: arg is the struct drive_args. */
static int drive_opt_to(const char *value, void *arg) {
        struct drive_args *da = arg;

        if (da->to_cnt == DRIVE_MAX_RCPTS) {
                drive_usage(stderr);
                return -1;
        }
        drive_rcpts[da->to_cnt++] = value;
        da->rcpts = da->to_cnt;
        return 0;
}

#define DRIVE_OPT_NUM(lname, target)                                           \
        TOOL_OPT_INT(lname, 0, target, 0, LONG_MAX,                            \
                     "--" lname ": not a number: %s")

int main(int argc, char **argv) {
        struct smtp_client_conf scc = {
                .starttls = CONFIG_TLS_OFF,
                .tls_verify = 1,
                .pipelining = 1,
                .pipelining_txns = 1,
                .chunking = 1,
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
        struct drive_args da = {
                .count = 1000,
                .inflight = 100,
                .sessions = 20,
                .size = 1024,
                .rcpts = 1,
                .max_messages = 1000000,
                .timeout_data = 60000,
        };
        const struct tool_opt opts[] = {
                TOOL_OPT_STRING("url", 0, &scc.url),
                DRIVE_OPT_NUM("count", &da.count),
                DRIVE_OPT_NUM("inflight", &da.inflight),
                DRIVE_OPT_NUM("sessions", &da.sessions),
                DRIVE_OPT_NUM("size", &da.size),
                DRIVE_OPT_NUM("rcpts", &da.rcpts),
                TOOL_OPT_CALL("starttls", 0, drive_opt_starttls, &scc.starttls),
                TOOL_OPT_STRING("user", 0, &scc.username),
                TOOL_OPT_STRING("password", 0, &scc.password),
                TOOL_OPT_STRING("ca", 0, &scc.ca_file),
                TOOL_OPT_FLAG("insecure", 0, &da.insecure),
                TOOL_OPT_STRING("helo", 0, &scc.helo_name),
                TOOL_OPT_FLAG("no-pipelining", 0, &da.no_pipelining),
                TOOL_OPT_FLAG("no-txn-pipelining", 0, &da.no_txn_pipelining),
                TOOL_OPT_FLAG("no-chunking", 0, &da.no_chunking),
                DRIVE_OPT_NUM("max-messages", &da.max_messages),
                DRIVE_OPT_NUM("timeout-data", &da.timeout_data),
                DRIVE_OPT_NUM("max-seconds", &da.max_seconds),
                TOOL_OPT_CALL("log", 0, drive_opt_log, NULL),
                TOOL_OPT_CALL("to", 0, drive_opt_to, &da),
                TOOL_OPT_END,
        };
        struct drive d;
        char errstr[256];
        struct smtp_stats st;
        loop_t *loop = NULL;
        char *msg = NULL;
        size_t msg_len = 0;
        int64_t t0, t1;
        double secs;
        int ret = 1;

        tool_set_name("smtp-drive");
        memset(&d, 0, sizeof(d));
        d.verbose_failures = 5;
        log_set_level("warn");
        if (tool_opts_parse(argc, argv, opts, 0, drive_usage) != TOOL_OPTS_RUN)
                return 2;
        if (!scc.url || optind != argc || da.inflight < 1 || da.rcpts < 1 ||
            da.rcpts > DRIVE_MAX_RCPTS) {
                drive_usage(stderr);
                return 2;
        }
        d.count = (long)da.count;
        scc.sessions_max = (int)da.sessions;
        scc.session_max_messages = (int)da.max_messages;
        scc.timeout_data_ms = (int)da.timeout_data;
        if (da.insecure)
                scc.tls_verify = 0;
        if (da.no_pipelining)
                scc.pipelining = 0;
        if (da.no_txn_pipelining)
                scc.pipelining_txns = 0;
        if (da.no_chunking)
                scc.chunking = 0;

        curl_global_init(CURL_GLOBAL_DEFAULT);
        loop = loop_new();
        msg = drive_message((size_t)da.size, &msg_len);
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
                d.jobs[i].rcpt_cnt = (size_t)da.rcpts;
                d.jobs[i].data = msg;
                d.jobs[i].data_len = msg_len;
        }

        t0 = loop_clock_ms();
        for (; d.next < d.count && d.next < da.inflight; d.next++)
                smtp_client_submit(d.sc, &d.jobs[d.next]);
        while (d.done < d.count) {
                if (loop_run_once(loop, 1000) == -1) {
                        fprintf(stderr, "smtp-drive: loop: %s\n",
                                strerror(errno));
                        break;
                }
                if (da.max_seconds > 0 &&
                    loop_clock_ms() - t0 > da.max_seconds * 1000) {
                        smtp_client_stats(d.sc, &st);
                        fprintf(stderr,
                                "smtp-drive: gave up after %lld s: "
                                "queued=%zu sessions=%zu healthy=%d "
                                "opened=%" PRIu64 " relay_failures=%" PRIu64
                                " last_error=\"%s\"\n",
                                da.max_seconds, st.jobs_queued,
                                st.sessions_open, st.relay_healthy,
                                st.sessions_opened_total,
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
