#include "kstatus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define KSTATUS_REASON_MAX 384

struct kstatus {
        pthread_mutex_t ks_lock;
        int ks_window_ms;
        uint64_t ks_errors[KCAUSE_CNT];
        /* the last error that names a cause other than transport, and the
         * last one of any cause */
        enum kcause ks_last_cause;
        int64_t ks_last_ms;
        char ks_last_reason[KSTATUS_REASON_MAX];
        enum kcause ks_any_cause;
        char ks_any_reason[KSTATUS_REASON_MAX];
        int ks_probe_ok; /* the last probe's outcome; -1 before the first */
        /* the cause last logged as not ready, KCAUSE_NONE while ready */
        enum kcause ks_logged;
};

kstatus_t *kstatus_new(int window_ms) {
        kstatus_t *ks = calloc(1, sizeof(*ks));

        if (!ks)
                return NULL;
        pthread_mutex_init(&ks->ks_lock, NULL);
        ks->ks_window_ms = window_ms;
        ks->ks_probe_ok = -1;
        return ks;
}

void kstatus_destroy(kstatus_t *ks) {
        if (!ks)
                return;
        pthread_mutex_destroy(&ks->ks_lock);
        free(ks);
}

void kstatus_error(kstatus_t *ks, int64_t now_ms, const char *client,
                   rd_kafka_resp_err_t err, const char *reason) {
        enum kcause cause = kcause_of(err);
        char text[KSTATUS_REASON_MAX];

        if (cause == KCAUSE_NONE)
                return;
        snprintf(text, sizeof(text), "%s: %s", client,
                 reason ? reason : rd_kafka_err2str(err));
        pthread_mutex_lock(&ks->ks_lock);
        ks->ks_errors[cause]++;
        ks->ks_any_cause = cause;
        snprintf(ks->ks_any_reason, sizeof(ks->ks_any_reason), "%s", text);
        if (cause != KCAUSE_TRANSPORT) {
                ks->ks_last_cause = cause;
                ks->ks_last_ms = now_ms;
                snprintf(ks->ks_last_reason, sizeof(ks->ks_last_reason), "%s",
                         text);
        }
        pthread_mutex_unlock(&ks->ks_lock);
}

void kstatus_probe(kstatus_t *ks, int64_t now_ms, int ok) {
        (void)now_ms;
        pthread_mutex_lock(&ks->ks_lock);
        ks->ks_probe_ok = ok;
        pthread_mutex_unlock(&ks->ks_lock);
}

int kstatus_ready(kstatus_t *ks, int64_t now_ms, enum kcause *cause,
                  char *reason, size_t reason_size) {
        enum kcause c = KCAUSE_NONE;
        const char *why = "";
        int ready, log_down = 0, log_up = 0;

        pthread_mutex_lock(&ks->ks_lock);
        if (ks->ks_last_cause != KCAUSE_NONE &&
            now_ms - ks->ks_last_ms < ks->ks_window_ms) {
                c = ks->ks_last_cause;
                why = ks->ks_last_reason;
        } else if (ks->ks_probe_ok == 0) {
                /* A broker that does not answer: the last error that said
                 * why, when there was one. */
                c = ks->ks_last_cause != KCAUSE_NONE  ? ks->ks_last_cause
                    : ks->ks_any_cause != KCAUSE_NONE ? ks->ks_any_cause
                                                      : KCAUSE_TRANSPORT;
                why = ks->ks_last_cause != KCAUSE_NONE  ? ks->ks_last_reason
                      : ks->ks_any_cause != KCAUSE_NONE ? ks->ks_any_reason
                                                        : "no broker answered";
        } else if (ks->ks_probe_ok < 0) {
                c = KCAUSE_TRANSPORT;
                why = "no broker answered yet";
        }
        ready = c == KCAUSE_NONE;
        if (reason_size > 0) {
                if (ready)
                        reason[0] = '\0';
                else
                        snprintf(reason, reason_size, "%s: %s", kcause_name(c),
                                 why);
        }
        /* One line when the cause changes (not for the start-up wait). */
        if (!ready && c != ks->ks_logged && ks->ks_probe_ok >= 0) {
                ks->ks_logged = c;
                log_down = 1;
        } else if (ready && ks->ks_logged != KCAUSE_NONE) {
                ks->ks_logged = KCAUSE_NONE;
                log_up = 1;
        }
        if (log_down)
                LOG(LL_WARN, "kafka not ready cause=%s reason=%s",
                    kcause_name(c), why);
        pthread_mutex_unlock(&ks->ks_lock);
        if (cause)
                *cause = c;
        if (log_up)
                LOG(LL_INFO, "kafka ready again");
        return ready;
}

uint64_t kstatus_errors(kstatus_t *ks, enum kcause cause) {
        uint64_t n;

        pthread_mutex_lock(&ks->ks_lock);
        n = cause < KCAUSE_CNT ? ks->ks_errors[cause] : 0;
        pthread_mutex_unlock(&ks->ks_lock);
        return n;
}
