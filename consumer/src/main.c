/*
 * kafka-mailer: consumes email requests from Kafka, sends them over SMTP and
 * publishes one result per request. See README.md and docs/.
 */
#include <curl/curl.h>
#include <getopt.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "log.h"
#include "worker.h"

extern char **environ;

static worker_t *the_worker;
static volatile sig_atomic_t signals_seen;

/* First signal: drain and stop. Second: exit at once (offsets of unfinished
 * requests are not committed, so they are consumed again). */
static void on_signal(int sig) {
        (void)sig;
        if (++signals_seen >= 2)
                _exit(130);
        if (the_worker)
                worker_stop(the_worker);
}

/*
 * glibc's allocator, before librdkafka starts its threads. Each thread that
 * allocates gets an arena of its own (up to 8 a core), and blocks above the
 * mmap threshold, which glibc raises up to each one freed, go into the
 * arenas once one was freed: librdkafka's decompressed fetches (up to
 * about 512 KiB) then stayed in a broker thread's arena (12-17 MiB of
 * RSS at 1,000 in flight, benchmark B3). Two arenas and a fixed 128 KiB
 * threshold (such blocks are mapped and unmapped) took about 3 MiB off the
 * worker's peak. MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES
 * in the environment win.
 */
static void main_tune_malloc(void) {
#ifdef __GLIBC__
        int tunables = getenv("GLIBC_TUNABLES") != NULL;

        if (!tunables && !getenv("MALLOC_ARENA_MAX"))
                mallopt(M_ARENA_MAX, 2);
        if (!tunables && !getenv("MALLOC_MMAP_THRESHOLD_"))
                mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}

static void usage(FILE *fp) {
        fprintf(fp,
                "Usage: kafka-mailer [-c FILE] [-X key=value]... [--dump-config]\n"
                "       kafka-mailer --help | --version\n"
                "\n"
                "Consumes email requests from a Kafka topic, sends them over SMTP\n"
                "and publishes one result per request to a results topic.\n"
                "\n"
                "  -c FILE          read settings from a properties file\n"
                "  -X key=value     set one setting (after the file and the\n"
                "                   environment, KAFKA_MAILER_<KEY>)\n"
                "  --dump-config    print the effective settings and exit\n"
                "  -h, --help       print this help and every setting\n"
                "  -V, --version    print the version\n"
                "\n"
                "Settings (key, type, default, bounds):\n");
        config_print_help(fp);
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, 'V'},
                {"dump-config", no_argument, NULL, 'D'},
                {NULL, 0, NULL, 0},
        };
        struct config *conf = config_new();
        const char *file = NULL;
        char errstr[1024];
        int dump = 0;
        int opt;
        int ret = 1;
        struct sigaction sa;

        main_tune_malloc();
        if (!conf) {
                fprintf(stderr, "kafka-mailer: out of memory\n");
                return 1;
        }
        /* First pass: the file, so that the environment and -X override it. */
        while ((opt = getopt_long(argc, argv, "c:X:hV", longopts, NULL)) !=
               -1) {
                switch (opt) {
                case 'c':
                        file = optarg;
                        break;
                case 'X':
                        break;
                case 'h':
                        usage(stdout);
                        ret = 0;
                        goto out;
                case 'V':
                        printf("kafka-mailer %s (librdkafka %s, %s)\n",
                               KM_VERSION, rd_kafka_version_str(),
                               curl_version());
                        ret = 0;
                        goto out;
                case 'D':
                        dump = 1;
                        break;
                default:
                        usage(stderr);
                        goto out;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kafka-mailer: unexpected argument \"%s\"\n",
                        argv[optind]);
                goto out;
        }
        if (file && config_load_file(conf, file, errstr, sizeof(errstr)))
                goto fail;
        if (config_load_env(conf, environ, errstr, sizeof(errstr)))
                goto fail;
        optind = 1;
        while ((opt = getopt_long(argc, argv, "c:X:hV", longopts, NULL)) !=
               -1) {
                char *eq;

                if (opt != 'X')
                        continue;
                eq = strchr(optarg, '=');
                if (!eq) {
                        /* The argument is not echoed: it may hold a secret. */
                        snprintf(
                                errstr, sizeof(errstr),
                                "-X: an argument has no '=' (expected key=value)");
                        goto fail;
                }
                *eq = '\0';
                if (config_set(conf, optarg, eq + 1, "-X", errstr,
                               sizeof(errstr)))
                        goto fail;
        }
        if (config_finish(conf, errstr, sizeof(errstr)))
                goto fail;
        if (dump) {
                config_dump(conf, stdout);
                ret = 0;
                goto out;
        }
        if (log_set_level(conf->log_level) == -1) {
                snprintf(errstr, sizeof(errstr), "log.level: unknown level");
                goto fail;
        }
        log_repeat_ms = conf->log_repeat_ms;

        if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) {
                snprintf(errstr, sizeof(errstr), "curl_global_init failed");
                goto fail;
        }
        srand((unsigned)time(NULL) ^ (unsigned)getpid());
        the_worker = worker_new(conf, errstr, sizeof(errstr));
        if (!the_worker) {
                /* Among the log lines librdkafka may have written already. */
                LOG(LL_ERROR, "cannot start error=%s", errstr);
                curl_global_cleanup();
                ret = 1;
                goto out;
        }
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);

        ret = worker_run(the_worker);
        worker_destroy(the_worker);
        the_worker = NULL;
        curl_global_cleanup();
        goto out;

fail:
        fprintf(stderr, "kafka-mailer: %s\n", errstr);
        ret = 1;
out:
        config_destroy(conf);
        return ret;
}
