#include "retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backoff.h"
#include "jsonparse.h"

/* Most attempts a record may claim: more is a damaged record. */
#define RETRY_ATTEMPTS_LIMIT 1000

void retry_decide(const struct retry_conf *conf, const struct retry_state *st,
                  struct retry_decision *d) {
        int64_t backoff, next;

        memset(d, 0, sizeof(*d));
        if (st->wait_ms <= 0 && st->attempts >= conf->attempts_max) {
                d->action = RETRY_FINISH;
                snprintf(d->reason, sizeof(d->reason),
                         "retries exhausted after %d attempts", st->attempts);
                return;
        }
        backoff = st->wait_ms > 0 ? st->wait_ms
                                  : backoff_ms(conf->backoff_initial_ms,
                                               conf->backoff_max_ms,
                                               conf->jitter_percent,
                                               st->attempts, st->rnd);
        /* How long after it was first consumed the next attempt comes. */
        next = st->now_ms + backoff - st->received_ms;
        if (next > conf->window_ms) {
                d->action = RETRY_FINISH;
                snprintf(d->reason, sizeof(d->reason),
                         "retry window of %d ms passed after %d attempts",
                         conf->window_ms, st->attempts);
                return;
        }
        d->delay_ms = backoff;
        d->due_ms = st->now_ms + backoff;
        /* A request some recipients have a final outcome for goes to the
         * retry topic at once: its record keeps who has the mail, where an
         * in-memory retry would leave the next owner (after a crash, stop or
         * revoke) only the request, to send to every recipient again. */
        if (st->can_hand_over &&
            (st->from_retry_topic || st->leaving || st->partial ||
             st->wait_ms > 0 || next > conf->local_window_ms))
                d->action = RETRY_HAND_OVER;
        else if (st->leaving)
                d->action = RETRY_ABANDON;
        else
                d->action = RETRY_LOCAL;
}

/* ---- the record ---- */

char *retry_record_format(const struct retry_record *r) {
        json_t *o, *arr;
        char *value;

        o = json_pack("{s:i, s:s, s:s%, s:i, s:I, s:I, s:I, s:{s:s, s:i, s:I}, "
                      "s:i, s:o}",
                      "v", 1, "id", r->id, "request", r->request,
                      r->request_len, "attempts", r->attempts, "due_ms",
                      (json_int_t)r->due_ms, "first_received_ms",
                      (json_int_t)r->first_received_ms, "request_ts_ms",
                      (json_int_t)r->request_ts_ms, "source", "topic",
                      r->source_topic, "partition", (int)r->source_partition,
                      "offset", (json_int_t)r->source_offset, "last_smtp_code",
                      r->last_smtp_code, "last_smtp_reply",
                      jsonparse_string(r->last_smtp_reply));
        if (!o)
                abort();
        if (r->rcpt_cnt > 0) {
                arr = json_array();
                if (!arr || json_object_set_new(o, "recipients", arr) != 0)
                        abort();
                for (size_t i = 0; i < r->rcpt_cnt; i++) {
                        const struct retry_rcpt *rc = &r->rcpts[i];
                        json_t *it = json_pack(
                                "{s:I, s:s, s:s, s:i, s:o}", "index",
                                (json_int_t)rc->index, "recipient",
                                rc->recipient, "status",
                                rc->sent ? "sent" : "failed", "smtp_code",
                                rc->smtp_code, "smtp_reply",
                                jsonparse_string(rc->smtp_reply));

                        /* Dropped, the recipient would be sent to again. */
                        if (!it || json_array_append_new(arr, it) != 0)
                                abort();
                }
        }
        value = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!value)
                abort();
        return value;
}

static char *retry_strdup(const char *s, size_t len) {
        char *c = malloc(len + 1);

        if (!c)
                abort();
        memcpy(c, s, len);
        c[len] = '\0';
        return c;
}

/* Reads the "recipients" array @arr into @r. @returns 0, or -1 with
 * @errstr naming the entry. */
static int retry_rcpts_parse(const json_t *arr, struct retry_record *r,
                             char *errstr, size_t errstr_size) {
        json_t *it;
        size_t i;

        if (!json_is_array(arr)) {
                snprintf(errstr, errstr_size,
                         "retry record: recipients: must be an array");
                return -1;
        }
        if (json_array_size(arr) == 0)
                return 0;
        r->rcpts = calloc(json_array_size(arr), sizeof(*r->rcpts));
        if (!r->rcpts)
                abort();
        json_array_foreach(arr, i, it) {
                struct retry_rcpt *rc = &r->rcpts[i];
                json_error_t jerr;
                json_int_t idx = 0;
                int code = 0;
                const char *addr = NULL, *st = NULL, *reply = NULL;

                if (json_unpack_ex(it, &jerr, 0, "{s:I, s:s, s:s, s?i, s?s}",
                                   "index", &idx, "recipient", &addr, "status",
                                   &st, "smtp_code", &code, "smtp_reply",
                                   &reply)) {
                        snprintf(errstr, errstr_size,
                                 "retry record: recipients[%zu]: %s", i,
                                 jerr.text);
                        return -1;
                }
                if (idx < 0) {
                        snprintf(
                                errstr, errstr_size,
                                "retry record: recipients[%zu]: negative index",
                                i);
                        return -1;
                }
                if (strcmp(st, "sent") != 0 && strcmp(st, "failed") != 0) {
                        snprintf(
                                errstr, errstr_size,
                                "retry record: recipients[%zu]: status must be "
                                "\"sent\" or \"failed\"",
                                i);
                        return -1;
                }
                rc->index = (size_t)idx;
                rc->recipient = retry_strdup(addr, strlen(addr));
                rc->sent = strcmp(st, "sent") == 0;
                rc->smtp_code = code;
                rc->smtp_reply = retry_strdup(reply ? reply : "",
                                              reply ? strlen(reply) : 0);
                r->rcpt_cnt++;
        }
        return 0;
}

int retry_record_parse(const void *buf, size_t len, struct retry_record *r,
                       char *errstr, size_t errstr_size) {
        json_error_t jerr;
        json_t *o, *src = NULL, *rcpts = NULL;
        const char *rid, *req = NULL;
        size_t req_len = 0;
        json_int_t attempts = 0, due = 0, first = 0, ts = 0, part = 0, off = 0;
        int ret = -1;

        memset(r, 0, sizeof(*r));
        o = json_loadb(buf, len, 0, &jerr);
        if (!o) {
                snprintf(errstr, errstr_size, "retry record: invalid JSON: %s",
                         jerr.text);
                return -1;
        }
        /* The id names the rejection even when the rest is damaged. */
        rid = json_string_value(json_object_get(o, "id"));
        if (rid)
                r->id = retry_strdup(rid, strlen(rid));
        if (json_unpack_ex(o, &jerr, 0,
                           "{s:s, s:s%, s:I, s:I, s:I, s?I, s:o, s?o}", "id",
                           &rid, "request", &req, &req_len, "attempts",
                           &attempts, "due_ms", &due, "first_received_ms",
                           &first, "request_ts_ms", &ts, "source", &src,
                           "recipients", &rcpts) ||
            json_unpack_ex(src, &jerr, 0, "{s:I, s:I}", "partition", &part,
                           "offset", &off)) {
                snprintf(errstr, errstr_size, "retry record: %s", jerr.text);
                goto out;
        }
        if (attempts < 0 || attempts > RETRY_ATTEMPTS_LIMIT) {
                snprintf(errstr, errstr_size,
                         "retry record: attempts: %lld out of range (0 to %d)",
                         (long long)attempts, RETRY_ATTEMPTS_LIMIT);
                goto out;
        }
        if (part < 0 || part > INT32_MAX) {
                snprintf(errstr, errstr_size,
                         "retry record: source.partition: %lld out of range",
                         (long long)part);
                goto out;
        }
        if (off < 0) {
                snprintf(errstr, errstr_size,
                         "retry record: source.offset: %lld is negative",
                         (long long)off);
                goto out;
        }
        /* null is the same as no recipients. */
        if (rcpts && !json_is_null(rcpts) &&
            retry_rcpts_parse(rcpts, r, errstr, errstr_size) != 0)
                goto out;
        r->request = retry_strdup(req, req_len);
        r->request_len = req_len;
        r->attempts = (int)attempts;
        r->due_ms = due;
        r->first_received_ms = first;
        r->request_ts_ms = ts;
        r->source_partition = (int32_t)part;
        r->source_offset = off;
        ret = 0;
out:
        json_decref(o);
        return ret;
}

void retry_record_clear(struct retry_record *r) {
        /* What parsing filled in was malloc'd here. */
        for (size_t i = 0; i < r->rcpt_cnt; i++) {
                free((char *)r->rcpts[i].recipient);
                free((char *)r->rcpts[i].smtp_reply);
        }
        free(r->rcpts);
        free((char *)r->id);
        free((char *)r->request);
        free((char *)r->source_topic);
        free((char *)r->last_smtp_reply);
        memset(r, 0, sizeof(*r));
}
