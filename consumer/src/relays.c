#include "relays.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "pacer.h"

_Static_assert(CONFIG_RELAYS_MAX <= 32, "relay masks are 32 bits");

/* Default limits are made per domain as mail for it comes, and dropped
 * once idle this long. */
#define RELAYS_DEST_IDLE_MS 60000
#define RELAYS_DEST_BUCKETS 256
#define RELAYS_TICK_MS 250
/* The rate a worker keeps to while its share of a limit is 0 (it owns no
 * partition, or the partition counts are not known yet), msgs/s: a
 * pacer's 0 would mean no limit. */
#define RELAYS_RATE_FLOOR 0.01

/* Jobs waiting in this module, linked through sj_next/sj_prev (free while
 * a job is not at a client). */
struct wq {
        struct smtp_job *head, *tail;
        size_t cnt;
};

/* A limit on recipient domains: a named one (limit.<name>.*, its domains
 * together) or the default one of a single domain. */
struct dest {
        char *d_name; /* the limit's name, or the domain */
        char *d_domains; /* named: the comma-separated list; NULL: default */
        double d_rate_max; /* for the whole group, msgs/s; 0 = none */
        int d_sessions_max; /* transactions at once; 0 = none */
        int d_busy;
        struct pacer d_pacer;
        struct wq d_q[2]; /* transactional, bulk */
        int d_listed; /* in rs_waiting */
        struct dest *d_wnext;
        struct dest *d_hnext; /* default ones: the hash chain */
        int64_t d_idle_ms; /* default ones: since when nothing uses it */
        unsigned d_refs; /* jobs that count against it (sj_dests) */
        int64_t d_booked_ms; /* slots given to jobs put off, up to here */
};

struct relay {
        relays_t *r_set;
        char *r_name;
        char *r_url; /* relay.<name>.url or smtp.url */
        smtp_client_t *r_sc;
        int r_weight;
        char *r_domains; /* route.sender.domains, NULL = any */
        enum config_route_priority r_priority;
        int r_rules; /* route rules set: the more, the more specific */
        int r_healthy; /* as the client last told */
        double r_rate_max; /* rate.max for the whole group; 0 = none */
        struct pacer r_pacer;
        struct wq r_q[2]; /* waiting for the pacer: transactional, bulk */
        int64_t r_booked_ms; /* slots given to jobs put off, up to here */
};

struct relays {
        loop_t *rs_loop;
        struct relay *rs_relays;
        size_t rs_cnt;
        smtp_done_cb *rs_done_cb;
        void *rs_opaque;
        loop_timer_t rs_move_timer; /* moves jobs after a health change */
        loop_timer_t rs_pump_timer; /* lets waiting jobs go */
        loop_timer_t rs_tick_timer; /* raises cut rates */
        uint64_t rs_rand;
        size_t rs_standby_next; /* round robin among standbys */
        struct pacer_conf rs_pc;
        int rs_queue_max_ms; /* limit.queue.max.ms */
        double rs_share; /* of the group's limits, 0..1 */
        int rs_share_known; /* set once: until then limited jobs wait, none
                               is put off by the floor rate's estimate */
        struct dest *rs_named; /* limit.<name>.* but default */
        size_t rs_named_cnt;
        int rs_default; /* limit.default has a rate or session limit */
        double rs_default_rate_max;
        int rs_default_sessions_max;
        struct dest *rs_hash[RELAYS_DEST_BUCKETS];
        size_t rs_default_cnt;
        struct dest *rs_waiting; /* limits with jobs waiting */
        struct wq rs_deferred; /* done callbacks to run */
        uint64_t rs_deferrals;
};

static void relays_pump_soon(relays_t *rs, int64_t in_ms);

static int64_t relays_now(const relays_t *rs) {
        return loop_now_ms(rs->rs_loop);
}

/* ---- queues ---- */

static void wq_push(struct wq *q, struct smtp_job *job) {
        job->sj_next = NULL;
        job->sj_prev = q->tail;
        if (q->tail)
                q->tail->sj_next = job;
        else
                q->head = job;
        q->tail = job;
        q->cnt++;
        job->sj_wq = q;
}

static void wq_remove(struct smtp_job *job) {
        struct wq *q = job->sj_wq;

        if (job->sj_prev)
                job->sj_prev->sj_next = job->sj_next;
        else
                q->head = job->sj_next;
        if (job->sj_next)
                job->sj_next->sj_prev = job->sj_prev;
        else
                q->tail = job->sj_prev;
        job->sj_next = job->sj_prev = NULL;
        job->sj_wq = NULL;
        q->cnt--;
}

/* @returns the first job of the two queues @q (transactional first). */
static struct smtp_job *wq_first(struct wq q[2]) {
        return q[0].head ? q[0].head : q[1].head;
}

/* @returns the jobs a new job of priority @prio would wait behind. */
static size_t wq_ahead(const struct wq q[2], unsigned prio) {
        return q[0].cnt + (prio ? q[1].cnt : 0);
}

static uint64_t relays_rand(relays_t *rs) {
        uint64_t x = rs->rs_rand;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rs->rs_rand = x;
        return x;
}

int relays_domain_match(const char *patterns, const char *domain) {
        size_t dlen = strlen(domain);
        const char *p = patterns;

        while (*p) {
                size_t n = strcspn(p, ",");
                const char *pat = p;
                size_t plen = n;

                while (plen > 0 && (*pat == ' ' || *pat == '\t')) {
                        pat++;
                        plen--;
                }
                while (plen > 0 &&
                       (pat[plen - 1] == ' ' || pat[plen - 1] == '\t'))
                        plen--;
                if (plen > 2 && pat[0] == '*' && pat[1] == '.') {
                        /* "*.example.com": ".example.com" ends the domain,
                         * with a label before it */
                        if (dlen > plen - 1 &&
                            strncasecmp(domain + dlen - (plen - 1), pat + 1,
                                        plen - 1) == 0)
                                return 1;
                } else if (plen > 0 && plen == dlen &&
                           strncasecmp(domain, pat, plen) == 0) {
                        return 1;
                }
                p += n;
                if (*p == ',')
                        p++;
        }
        return 0;
}

/* @returns the relays @route may use: those matching it with the most
 * rules. */
static uint32_t relays_route_mask(const relays_t *rs,
                                  const struct relay_route *route) {
        uint32_t mask = 0;
        int best = -1;

        if (rs->rs_cnt == 1)
                return 1;
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                const struct relay *r = &rs->rs_relays[i];

                if (r->r_priority != CONFIG_ROUTE_ANY &&
                    (r->r_priority == CONFIG_ROUTE_BULK) !=
                            (route->priority == MAIL_PRIORITY_BULK))
                        continue;
                if (r->r_domains &&
                    !relays_domain_match(r->r_domains, route->sender_domain))
                        continue;
                if (r->r_rules > best) {
                        best = r->r_rules;
                        mask = 0;
                }
                if (r->r_rules == best)
                        mask |= 1u << i;
        }
        return mask; /* never 0: config_finish() checks the routes */
}

/* @returns the relay of @mask to queue a job at: a healthy one of weight >
 * 0 (by weight), else a healthy standby, else any of them (by weight). */
static size_t relays_pick(relays_t *rs, uint32_t mask) {
        uint64_t total = 0, x;
        size_t i, any = 0;
        int pass;

        if (rs->rs_cnt == 1)
                return 0;
        for (pass = 0; pass < 2; pass++) {
                total = 0;
                for (i = 0; i < rs->rs_cnt; i++) {
                        const struct relay *r = &rs->rs_relays[i];

                        if ((mask & (1u << i)) && r->r_weight > 0 &&
                            (pass == 1 || r->r_healthy))
                                total += (uint64_t)r->r_weight;
                }
                if (total > 0)
                        break;
                if (pass == 0) {
                        /* a healthy standby, in turn */
                        for (size_t k = 0; k < rs->rs_cnt; k++) {
                                i = (rs->rs_standby_next + k) % rs->rs_cnt;
                                if ((mask & (1u << i)) &&
                                    rs->rs_relays[i].r_healthy) {
                                        rs->rs_standby_next = i + 1;
                                        return i;
                                }
                        }
                }
        }
        if (total == 0) {
                /* only standbys, none healthy */
                while (any < rs->rs_cnt && !(mask & (1u << any)))
                        any++;
                return any < rs->rs_cnt ? any : 0;
        }
        x = relays_rand(rs) % total;
        for (i = 0; i < rs->rs_cnt; i++) {
                const struct relay *r = &rs->rs_relays[i];

                if ((mask & (1u << i)) && r->r_weight > 0 &&
                    (pass == 1 || r->r_healthy)) {
                        if (x < (uint64_t)r->r_weight)
                                return i;
                        x -= (uint64_t)r->r_weight;
                }
        }
        return 0;
}

/* ---- deferral ---- */

/* Gives @job back to its owner as SMTP_DEFERRED (from the pump, never from
 * inside relays_submit()), due at a slot of @p's rate of its own: after
 * the @ahead jobs waiting and every slot given to jobs put off before, so
 * that they come back one after the other, not together. */
static void relays_defer(relays_t *rs, struct smtp_job *job, const char *what,
                         const char *name, struct pacer *p, int64_t *booked_ms,
                         size_t ahead) {
        int64_t now = loop_now_ms(rs->rs_loop);
        int64_t due = now + pacer_eta_ms(p, ahead);
        double rate = pacer_rate(p);

        if (*booked_ms > due)
                due = *booked_ms;
        if (rate > 0)
                due += (int64_t)(1000.0 / rate);
        *booked_ms = due;
        if (due - now < 1000)
                due = now + 1000;
        job->outcome = SMTP_DEFERRED;
        job->code = 0;
        job->defer_ms = due - now;
        snprintf(job->reply, sizeof(job->reply),
                 "waiting for %s %s: due in about %lld ms", what, name,
                 (long long)job->defer_ms);
        wq_push(&rs->rs_deferred, job);
        rs->rs_deferrals++;
        relays_pump_soon(rs, 0);
}

/* Lets the limits @job was counted against take other jobs. */
static void relays_release(relays_t *rs, struct smtp_job *job) {
        if (!job->sj_held)
                return;
        job->sj_held = 0;
        for (unsigned i = 0; i < job->sj_dest_cnt; i++) {
                struct dest *d = job->sj_dests[i];

                d->d_busy--;
        }
        /* a job waiting at another limit may need this one's slot */
        if (rs->rs_waiting)
                relays_pump_soon(rs, 0);
}

/* @job leaves this module's care (done, cancelled, put off): its limits
 * no longer count it. */
static void relays_forget(relays_t *rs, struct smtp_job *job) {
        relays_release(rs, job);
        for (unsigned i = 0; i < job->sj_dest_cnt; i++) {
                struct dest *d = job->sj_dests[i];

                if (--d->d_refs == 0 && !d->d_listed)
                        d->d_idle_ms = relays_now(rs);
        }
        job->sj_dest_cnt = 0;
}

/* ---- the relay stage ---- */

/* Gives @job to @r's client: a job a limit paced goes first, so that it
 * leaves when its limit let it, not behind unlimited ones. */
static void relays_hand(struct relay *r, struct smtp_job *job) {
        if (job->sj_held || pacer_rate(&r->r_pacer) > 0)
                smtp_client_submit_first(r->r_sc, job);
        else
                smtp_client_submit(r->r_sc, job);
}

/* Hands @job to a relay of its route: to the client at once unless the
 * relay's pacer holds it. */
static void relays_to_relay(relays_t *rs, struct smtp_job *job) {
        struct relay *r = &rs->rs_relays[relays_pick(rs, job->sj_relays)];
        int64_t now = relays_now(rs);
        size_t ahead = wq_ahead(r->r_q, job->sj_prio);

        if (ahead == 0 && pacer_wait_ms(&r->r_pacer, now) == 0) {
                pacer_take(&r->r_pacer, now);
                relays_hand(r, job);
                return;
        }
        if (rs->rs_share_known &&
            pacer_eta_ms(&r->r_pacer, ahead) > rs->rs_queue_max_ms) {
                relays_release(rs, job);
                relays_defer(rs, job, "relay", r->r_name, &r->r_pacer,
                             &r->r_booked_ms, ahead);
                return;
        }
        job->sj_enq_ms = now;
        wq_push(&r->r_q[job->sj_prio], job);
        relays_pump_soon(rs, pacer_wait_ms(&r->r_pacer, now));
}

/* ---- the limit stage ---- */

static unsigned relays_hash(const char *domain) {
        uint32_t h = 2166136261u;

        for (; *domain; domain++) {
                h ^= (unsigned char)tolower((unsigned char)*domain);
                h *= 16777619u;
        }
        return h % RELAYS_DEST_BUCKETS;
}

/* @returns this worker's part of a group-wide @rate_max (0 = none). */
static double relays_part(const relays_t *rs, double rate_max) {
        double part = rate_max * rs->rs_share;

        if (rate_max <= 0)
                return 0;
        return part > 0 ? part : RELAYS_RATE_FLOOR;
}

static void dest_init(relays_t *rs, struct dest *d, double rate_max,
                      int sessions_max) {
        d->d_rate_max = rate_max;
        d->d_sessions_max = sessions_max;
        pacer_init(&d->d_pacer, relays_part(rs, rate_max), relays_now(rs));
}

/* @returns the default limit of @domain, made when new; NULL when out of
 * memory. */
static struct dest *relays_default_dest(relays_t *rs, const char *domain) {
        unsigned h = relays_hash(domain);
        struct dest *d;

        for (d = rs->rs_hash[h]; d; d = d->d_hnext) {
                if (strcasecmp(d->d_name, domain) == 0)
                        return d;
        }
        d = calloc(1, sizeof(*d));
        if (!d || !(d->d_name = strdup(domain))) {
                free(d);
                return NULL;
        }
        dest_init(rs, d, rs->rs_default_rate_max, rs->rs_default_sessions_max);
        d->d_idle_ms = relays_now(rs);
        d->d_hnext = rs->rs_hash[h];
        rs->rs_hash[h] = d;
        rs->rs_default_cnt++;
        return d;
}

/* Fills @job's limits from its recipients' domains (four at most). */
static void relays_find_dests(relays_t *rs, struct smtp_job *job) {
        job->sj_dest_cnt = 0;
        for (size_t i = 0; i < job->rcpt_cnt; i++) {
                const char *at = strrchr(job->rcpts[i], '@');
                const char *domain = at ? at + 1 : "";
                struct dest *d = NULL;
                unsigned k;

                for (size_t n = 0; n < rs->rs_named_cnt && !d; n++) {
                        if (relays_domain_match(rs->rs_named[n].d_domains,
                                                domain))
                                d = &rs->rs_named[n];
                }
                if (!d && rs->rs_default)
                        d = relays_default_dest(rs, domain);
                if (!d)
                        continue;
                for (k = 0; k < job->sj_dest_cnt; k++) {
                        if (job->sj_dests[k] == d)
                                break;
                }
                if (k == job->sj_dest_cnt &&
                    job->sj_dest_cnt <
                            sizeof(job->sj_dests) / sizeof(job->sj_dests[0]))
                        job->sj_dests[job->sj_dest_cnt++] = d;
        }
}

/* Queues @job at its first limit. */
static void relays_to_dest(relays_t *rs, struct smtp_job *job) {
        struct dest *d = job->sj_dests[0];
        size_t ahead = wq_ahead(d->d_q, job->sj_prio);
        int64_t eta = pacer_eta_ms(&d->d_pacer, ahead);

        if (rs->rs_share_known && eta > rs->rs_queue_max_ms) {
                relays_defer(rs, job, "limit", d->d_name, &d->d_pacer,
                             &d->d_booked_ms, ahead);
                return;
        }
        job->sj_enq_ms = relays_now(rs);
        wq_push(&d->d_q[job->sj_prio], job);
        if (!d->d_listed) {
                d->d_listed = 1;
                d->d_wnext = rs->rs_waiting;
                rs->rs_waiting = d;
        }
        relays_pump_soon(rs, 0);
}

/* @returns 0 when every limit of @job lets it go now, -1 when one waits for
 * a transaction to end, else the ms until the slowest pacer lets it. */
static int64_t relays_dests_wait(relays_t *rs, struct smtp_job *job,
                                 int64_t now) {
        int64_t wait = 0;

        (void)rs;
        for (unsigned i = 0; i < job->sj_dest_cnt; i++) {
                struct dest *d = job->sj_dests[i];
                int64_t w;

                if (d->d_sessions_max > 0 && d->d_busy >= d->d_sessions_max)
                        return -1;
                w = pacer_wait_ms(&d->d_pacer, now);
                if (w > wait)
                        wait = w;
        }
        return wait;
}

/* Lets the jobs waiting at @d go while its limits allow. @returns the ms
 * until it should be looked at again, INT64_MAX when not before a change. */
static int64_t relays_pump_dest(relays_t *rs, struct dest *d, int64_t now) {
        struct smtp_job *job;

        while ((job = wq_first(d->d_q)) != NULL) {
                int64_t wait = relays_dests_wait(rs, job, now);

                if (wait != 0 && rs->rs_share_known &&
                    now - job->sj_enq_ms > rs->rs_queue_max_ms) {
                        /* held past limit.queue.max.ms (a cut rate, slow
                         * transactions): to the retry topic */
                        wq_remove(job);
                        relays_defer(rs, job, "limit", d->d_name, &d->d_pacer,
                                     &d->d_booked_ms, wq_ahead(d->d_q, 1));
                        continue;
                }
                if (wait < 0) {
                        /* waits for a transaction to end; looked at again
                         * then, and when limit.queue.max.ms has passed */
                        int64_t left =
                                job->sj_enq_ms + rs->rs_queue_max_ms + 1 - now;

                        return rs->rs_share_known && left > 0 ? left
                                                              : INT64_MAX;
                }
                if (wait != 0)
                        return wait;
                for (unsigned i = 0; i < job->sj_dest_cnt; i++) {
                        struct dest *x = job->sj_dests[i];

                        pacer_take(&x->d_pacer, now);
                        x->d_busy++;
                }
                job->sj_held = 1;
                wq_remove(job);
                relays_to_relay(rs, job);
        }
        return INT64_MAX;
}

/* Lets the jobs waiting for @r's pacer go. */
static int64_t relays_pump_relay(relays_t *rs, struct relay *r, int64_t now) {
        struct smtp_job *job;

        while ((job = wq_first(r->r_q)) != NULL) {
                int64_t wait = pacer_wait_ms(&r->r_pacer, now);

                if (wait > 0 && rs->rs_share_known &&
                    now - job->sj_enq_ms > rs->rs_queue_max_ms) {
                        wq_remove(job);
                        relays_release(rs, job);
                        relays_defer(rs, job, "relay", r->r_name, &r->r_pacer,
                                     &r->r_booked_ms, wq_ahead(r->r_q, 1));
                        continue;
                }
                if (wait > 0)
                        return wait;
                wq_remove(job);
                pacer_take(&r->r_pacer, now);
                relays_hand(r, job);
        }
        return INT64_MAX;
}

static void relays_pump_cb(loop_t *loop, void *opaque) {
        relays_t *rs = opaque;
        int64_t now = relays_now(rs), next = INT64_MAX;
        struct dest **pp = &rs->rs_waiting;
        struct smtp_job *job;

        (void)loop;
        while (*pp) {
                struct dest *d = *pp;
                int64_t w = relays_pump_dest(rs, d, now);

                if (w < next)
                        next = w;
                if (!wq_first(d->d_q)) {
                        *pp = d->d_wnext;
                        d->d_listed = 0;
                        d->d_wnext = NULL;
                        d->d_idle_ms = now;
                } else {
                        pp = &d->d_wnext;
                }
        }
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                int64_t w = relays_pump_relay(rs, &rs->rs_relays[i], now);

                if (w < next)
                        next = w;
        }
        while ((job = rs->rs_deferred.head) != NULL) {
                wq_remove(job);
                relays_forget(rs, job);
                rs->rs_done_cb(job, rs->rs_opaque);
        }
        if (next != INT64_MAX)
                relays_pump_soon(rs, next);
}

static void relays_pump_soon(relays_t *rs, int64_t in_ms) {
        loop_timer_start_within(rs->rs_loop, &rs->rs_pump_timer, in_ms);
}

void relays_submit(relays_t *rs, struct smtp_job *job,
                   const struct relay_route *route) {
        job->sj_relays = relays_route_mask(rs, route);
        job->sj_prio = route->priority == MAIL_PRIORITY_BULK;
        job->sj_held = 0;
        job->sj_wq = NULL;
        job->sj_dest_cnt = 0;
        job->defer_ms = 0;
        if (rs->rs_named_cnt > 0 || rs->rs_default)
                relays_find_dests(rs, job);
        if (job->sj_dest_cnt > 0)
                relays_to_dest(rs, job);
        else
                relays_to_relay(rs, job);
}

/* ---- outcomes ---- */

static struct relay *relays_of_job(const relays_t *rs,
                                   const struct smtp_job *job) {
        smtp_client_t *sc = smtp_job_client(job);

        for (size_t i = 0; sc && i < rs->rs_cnt; i++) {
                if (rs->rs_relays[i].r_sc == sc)
                        return &rs->rs_relays[i];
        }
        return NULL;
}

/* A throttling reply cuts @p's rate; logged once per cut. */
static void relays_throttled(relays_t *rs, struct pacer *p, const char *what,
                             const char *name, int code, const char *reply) {
        uint64_t cuts = p->p_throttled_total;

        pacer_throttled(p, &rs->rs_pc, relays_now(rs));
        if (p->p_throttled_total != cuts)
                LOG(LL_INFO,
                    "rate cut after a throttling reply %s=%s rate=%.1f "
                    "code=%d reply=%s",
                    what, name, pacer_rate(p), code, reply);
}

/* Every outcome passes here on its way to the owner: limits released,
 * throttling replies fed to the pacers. */
static void relays_done_cb(struct smtp_job *job, void *opaque) {
        relays_t *rs = opaque;
        struct relay *r = relays_of_job(rs, job);

        relays_release(rs, job);
        /* the transaction refused as a whole (not recipient by recipient:
         * those are the destinations', below) */
        if (r && job->outcome == SMTP_TRANSIENT &&
            (job->rcpt_failure_cnt == 0 || job->code == 421) &&
            pacer_is_throttle(job->code, job->reply))
                relays_throttled(rs, &r->r_pacer, "relay", r->r_name, job->code,
                                 job->reply);
        for (size_t i = 0; r && i < job->rcpt_failure_cnt; i++) {
                const struct smtp_rcpt_failure *f = &job->rcpt_failures[i];
                const char *at = strrchr(f->rcpt, '@');
                struct dest *d = NULL;

                if (!pacer_is_throttle(f->code, f->reply))
                        continue;
                /* a throttled recipient: its limit's rate if it has one,
                 * else the relay's */
                for (unsigned k = 0; at && k < job->sj_dest_cnt && !d; k++) {
                        struct dest *x = job->sj_dests[k];

                        if (x->d_domains
                                    ? relays_domain_match(x->d_domains, at + 1)
                                    : strcasecmp(x->d_name, at + 1) == 0)
                                d = x;
                }
                if (d)
                        relays_throttled(rs, &d->d_pacer, "limit", d->d_name,
                                         f->code, f->reply);
                else
                        relays_throttled(rs, &r->r_pacer, "relay", r->r_name,
                                         f->code, f->reply);
        }
        relays_forget(rs, job);
        rs->rs_done_cb(job, rs->rs_opaque);
}

/* ---- health ---- */

/* After a health change: the jobs waiting at an unhealthy relay go to a
 * healthy one of their route, where there is one. */
static void relays_move_cb(loop_t *loop, void *opaque) {
        relays_t *rs = opaque;
        int any_healthy = 0;

        (void)loop;
        for (size_t i = 0; i < rs->rs_cnt; i++)
                any_healthy |= rs->rs_relays[i].r_healthy;
        if (!any_healthy)
                return;
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                struct relay *r = &rs->rs_relays[i];
                struct wq moved = {0};
                struct smtp_job *job;

                if (r->r_healthy)
                        continue;
                /* Taken all first, then queued again: a job with no
                 * healthy relay returns to the end of this one's queue. */
                for (int p = 0; p < 2; p++) {
                        while ((job = r->r_q[p].head) != NULL) {
                                wq_remove(job);
                                wq_push(&moved, job);
                        }
                }
                while ((job = smtp_client_take_queued(r->r_sc)) != NULL)
                        wq_push(&moved, job);
                if (moved.cnt > 0)
                        LOG(LL_INFO,
                            "jobs moved off an unhealthy relay relay=%s "
                            "count=%zu",
                            r->r_name, moved.cnt);
                while ((job = moved.head) != NULL) {
                        wq_remove(job);
                        relays_to_relay(rs, job);
                }
        }
}

static void relays_health_cb(void *opaque, int healthy) {
        struct relay *r = opaque;
        relays_t *rs = r->r_set;

        r->r_healthy = healthy;
        if (!loop_timer_pending(&rs->rs_move_timer))
                loop_timer_start(rs->rs_loop, &rs->rs_move_timer, 0);
}

/* ---- rates ---- */

static void relays_dest_free(struct dest *d) {
        free(d->d_name);
        free(d->d_domains);
}

/* Raises cut rates; drops default limits no one used for a while. */
static void relays_tick_cb(loop_t *loop, void *opaque) {
        relays_t *rs = opaque;
        int64_t now = relays_now(rs);

        (void)loop;
        for (size_t i = 0; i < rs->rs_cnt; i++)
                pacer_tick(&rs->rs_relays[i].r_pacer, &rs->rs_pc, now);
        for (size_t i = 0; i < rs->rs_named_cnt; i++)
                pacer_tick(&rs->rs_named[i].d_pacer, &rs->rs_pc, now);
        for (size_t h = 0; h < RELAYS_DEST_BUCKETS; h++) {
                struct dest **pp = &rs->rs_hash[h];

                while (*pp) {
                        struct dest *d = *pp;

                        pacer_tick(&d->d_pacer, &rs->rs_pc, now);
                        if (!d->d_listed && d->d_busy == 0 && d->d_refs == 0 &&
                            d->d_pacer.p_cut_ms == 0 &&
                            now - d->d_idle_ms > RELAYS_DEST_IDLE_MS) {
                                *pp = d->d_hnext;
                                relays_dest_free(d);
                                free(d);
                                rs->rs_default_cnt--;
                                continue;
                        }
                        pp = &d->d_hnext;
                }
        }
        loop_timer_start(rs->rs_loop, &rs->rs_tick_timer, RELAYS_TICK_MS);
}

/* Restarts the wait of every waiting job at @now. */
static void relays_requeue_times(relays_t *rs, int64_t now) {
        for (struct dest *d = rs->rs_waiting; d; d = d->d_wnext) {
                for (int p = 0; p < 2; p++) {
                        for (struct smtp_job *j = d->d_q[p].head; j;
                             j = j->sj_next)
                                j->sj_enq_ms = now;
                }
        }
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                for (int p = 0; p < 2; p++) {
                        for (struct smtp_job *j = rs->rs_relays[i].r_q[p].head;
                             j; j = j->sj_next)
                                j->sj_enq_ms = now;
                }
        }
}

/* A pacer's rate changes from @from to @to msgs/s: the slots booked for
 * jobs put off (@booked_ms) stand for as many slots at the new rate.
 * Without it, slots booked while the worker's share was tiny would push
 * every later job that far too. */
static void relays_rebook(int64_t *booked_ms, double from, double to,
                          int64_t now) {
        if (*booked_ms <= now || from <= 0 || to <= 0 || from == to)
                return;
        *booked_ms = now + (int64_t)((double)(*booked_ms - now) * from / to);
}

/* Gives @p, with slots booked up to @booked_ms, its part of @rate_max at
 * the share just set. The slots were booked at the pacer's rate (a throttle
 * may have cut it below the limit, and keeps it so). */
static void relays_repart(relays_t *rs, struct pacer *p, int64_t *booked_ms,
                          double rate_max, int64_t now) {
        double before = pacer_rate(p);

        pacer_set_limit(p, relays_part(rs, rate_max), now);
        relays_rebook(booked_ms, before, pacer_rate(p), now);
}

void relays_set_share(relays_t *rs, double share) {
        int64_t now = relays_now(rs);

        if (share < 0)
                share = 0;
        if (share > 1)
                share = 1;
        if (share == rs->rs_share && rs->rs_share_known)
                return;
        rs->rs_share = share;
        if (!rs->rs_share_known) {
                /* what waited since the start is counted from now */
                rs->rs_share_known = 1;
                relays_requeue_times(rs, now);
        }
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                struct relay *r = &rs->rs_relays[i];

                if (r->r_rate_max > 0)
                        relays_repart(rs, &r->r_pacer, &r->r_booked_ms,
                                      r->r_rate_max, now);
        }
        for (size_t i = 0; i < rs->rs_named_cnt; i++) {
                struct dest *d = &rs->rs_named[i];

                if (d->d_rate_max > 0)
                        relays_repart(rs, &d->d_pacer, &d->d_booked_ms,
                                      d->d_rate_max, now);
        }
        for (size_t h = 0; h < RELAYS_DEST_BUCKETS; h++) {
                for (struct dest *d = rs->rs_hash[h]; d; d = d->d_hnext) {
                        if (d->d_rate_max > 0)
                                relays_repart(rs, &d->d_pacer, &d->d_booked_ms,
                                              d->d_rate_max, now);
                }
        }
        relays_pump_soon(rs, 0);
}

/* ---- set-up ---- */

static int relays_add_limits(relays_t *rs, const struct config *conf) {
        int64_t now = relays_now(rs);

        rs->rs_named = calloc(conf->limit_cnt ? conf->limit_cnt : 1,
                              sizeof(*rs->rs_named));
        if (!rs->rs_named)
                return -1;
        for (size_t i = 0; i < conf->limit_cnt; i++) {
                const struct config_limit *l = &conf->limits[i];
                struct dest *d;

                if (strcmp(l->name, "default") == 0) {
                        rs->rs_default = l->rate_max > 0 || l->sessions_max > 0;
                        rs->rs_default_rate_max = l->rate_max;
                        rs->rs_default_sessions_max = l->sessions_max;
                        continue;
                }
                d = &rs->rs_named[rs->rs_named_cnt++];
                d->d_name = strdup(l->name);
                d->d_domains = strdup(l->domains);
                if (!d->d_name || !d->d_domains)
                        return -1;
                dest_init(rs, d, l->rate_max, l->sessions_max);
                d->d_idle_ms = now;
        }
        return 0;
}

relays_t *relays_new(loop_t *loop, const struct config *conf,
                     smtp_done_cb *done_cb, void *opaque, char *errstr,
                     size_t errstr_size) {
        relays_t *rs = calloc(1, sizeof(*rs));

        if (!rs || conf->relay_cnt == 0) {
                snprintf(errstr, errstr_size,
                         rs ? "relays: none configured"
                            : "relays: out of memory");
                free(rs);
                return NULL;
        }
        rs->rs_loop = loop;
        rs->rs_done_cb = done_cb;
        rs->rs_opaque = opaque;
        rs->rs_rand = (uint64_t)loop_clock_ms() ^ (uint64_t)(uintptr_t)rs ^
                      0x2545f4914f6cdd1dull;
        rs->rs_share = 0; /* until the worker knows its partitions */
        rs->rs_queue_max_ms = conf->limit_queue_max_ms;
        rs->rs_pc.decrease_percent = conf->throttle_decrease_percent;
        rs->rs_pc.increase_percent = conf->throttle_increase_percent;
        rs->rs_pc.rate_min = conf->throttle_rate_min;
        loop_timer_init(&rs->rs_move_timer, relays_move_cb, rs);
        loop_timer_init(&rs->rs_pump_timer, relays_pump_cb, rs);
        loop_timer_init(&rs->rs_tick_timer, relays_tick_cb, rs);
        rs->rs_relays = calloc(conf->relay_cnt, sizeof(*rs->rs_relays));
        if (!rs->rs_relays || relays_add_limits(rs, conf) == -1) {
                snprintf(errstr, errstr_size, "relays: out of memory");
                goto err;
        }
        for (size_t i = 0; i < conf->relay_cnt; i++) {
                const struct config_relay *cr = &conf->relays[i];
                struct relay *r = &rs->rs_relays[i];
                struct smtp_client_conf scc;
                char err[256];

                r->r_set = rs;
                r->r_healthy = 1;
                r->r_weight = cr->weight;
                r->r_priority = cr->route_priority;
                r->r_rules = (cr->route_priority != CONFIG_ROUTE_ANY) +
                             (cr->route_sender_domains[0] != '\0');
                r->r_rate_max = cr->rate_max;
                pacer_init(&r->r_pacer, relays_part(rs, r->r_rate_max),
                           relays_now(rs));
                r->r_name = strdup(cr->name);
                r->r_url = strdup(cr->smtp->smtp_url);
                r->r_domains = cr->route_sender_domains[0]
                                       ? strdup(cr->route_sender_domains)
                                       : NULL;
                rs->rs_cnt++;
                if (!r->r_name || !r->r_url ||
                    (cr->route_sender_domains[0] && !r->r_domains)) {
                        snprintf(errstr, errstr_size, "relays: out of memory");
                        goto err;
                }
                smtp_client_conf_from_config(&scc, cr->smtp);
                if (conf->relay_cnt > 1) {
                        scc.health_cb = relays_health_cb;
                        scc.health_opaque = r;
                        scc.probe_idle = 1;
                }
                r->r_sc = smtp_client_new(loop, &scc, relays_done_cb, rs, err,
                                          sizeof(err));
                if (!r->r_sc) {
                        snprintf(errstr, errstr_size, "relay %s: %s", r->r_name,
                                 err);
                        goto err;
                }
        }
        loop_timer_start(loop, &rs->rs_tick_timer, RELAYS_TICK_MS);
        return rs;

err:
        relays_destroy(rs);
        return NULL;
}

void relays_destroy(relays_t *rs) {
        if (!rs)
                return;
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                smtp_client_destroy(rs->rs_relays[i].r_sc);
                free(rs->rs_relays[i].r_name);
                free(rs->rs_relays[i].r_url);
                free(rs->rs_relays[i].r_domains);
        }
        for (size_t i = 0; i < rs->rs_named_cnt; i++)
                relays_dest_free(&rs->rs_named[i]);
        for (size_t h = 0; h < RELAYS_DEST_BUCKETS; h++) {
                struct dest *d;

                while ((d = rs->rs_hash[h]) != NULL) {
                        rs->rs_hash[h] = d->d_hnext;
                        relays_dest_free(d);
                        free(d);
                }
        }
        loop_timer_stop(rs->rs_loop, &rs->rs_move_timer);
        loop_timer_stop(rs->rs_loop, &rs->rs_pump_timer);
        loop_timer_stop(rs->rs_loop, &rs->rs_tick_timer);
        free(rs->rs_named);
        free(rs->rs_relays);
        free(rs);
}

int relays_cancel(relays_t *rs, struct smtp_job *job) {
        smtp_client_t *sc;

        if (job->sj_wq) {
                /* waiting here, or its deferral not yet told */
                wq_remove(job);
                relays_forget(rs, job);
                return 0;
        }
        sc = smtp_job_client(job);
        if (sc && smtp_client_cancel(sc, job) == 0) {
                relays_forget(rs, job);
                return 0;
        }
        return -1;
}

const char *relays_job_relay(const relays_t *rs, const struct smtp_job *job) {
        const struct relay *r = relays_of_job(rs, job);

        return r ? r->r_name : NULL;
}

const char *relays_job_url(const relays_t *rs, const struct smtp_job *job) {
        const struct relay *r = relays_of_job(rs, job);

        return r ? r->r_url : NULL;
}

void relays_close_idle(relays_t *rs) {
        for (size_t i = 0; i < rs->rs_cnt; i++)
                smtp_client_close_idle(rs->rs_relays[i].r_sc);
}

size_t relays_count(const relays_t *rs) {
        return rs->rs_cnt;
}

const char *relays_stats(const relays_t *rs, size_t i, struct smtp_stats *st) {
        smtp_client_stats(rs->rs_relays[i].r_sc, st);
        return rs->rs_relays[i].r_name;
}

void relays_stats_total(const relays_t *rs, struct smtp_stats *st) {
        struct smtp_stats one;

        memset(st, 0, sizeof(*st));
        for (size_t i = 0; i < rs->rs_cnt; i++) {
                smtp_client_stats(rs->rs_relays[i].r_sc, &one);
                st->sessions_open += one.sessions_open;
                st->sessions_busy += one.sessions_busy;
                st->transactions += one.transactions;
                st->jobs_queued += one.jobs_queued;
                st->relay_healthy |= one.relay_healthy;
                st->sessions_opened_total += one.sessions_opened_total;
                st->relay_failures_total += one.relay_failures_total;
                st->pipelined_total += one.pipelined_total;
                if (one.last_relay_error[0])
                        memcpy(st->last_relay_error, one.last_relay_error,
                               sizeof(st->last_relay_error));
        }
}

static void relays_pacing_of(const struct pacer *pc, const struct wq q[2],
                             struct relays_pacing *p) {
        p->rate = pacer_rate(pc);
        p->limit = pc->p_limit;
        p->throttled_total = pc->p_throttled_total;
        p->waiting = q[0].cnt + q[1].cnt;
}

void relays_relay_pacing(const relays_t *rs, size_t i,
                         struct relays_pacing *p) {
        const struct relay *r = &rs->rs_relays[i];

        memset(p, 0, sizeof(*p));
        relays_pacing_of(&r->r_pacer, r->r_q, p);
}

size_t relays_limit_count(const relays_t *rs) {
        return rs->rs_named_cnt + (rs->rs_default ? 1 : 0);
}

const char *relays_limit_pacing(const relays_t *rs, size_t i,
                                struct relays_pacing *p) {
        memset(p, 0, sizeof(*p));
        if (i < rs->rs_named_cnt) {
                const struct dest *d = &rs->rs_named[i];

                relays_pacing_of(&d->d_pacer, d->d_q, p);
                p->busy = d->d_busy;
                return d->d_name;
        }
        p->limit = relays_part(rs, rs->rs_default_rate_max);
        p->rate = p->limit;
        for (size_t h = 0; h < RELAYS_DEST_BUCKETS; h++) {
                for (const struct dest *d = rs->rs_hash[h]; d; d = d->d_hnext) {
                        struct relays_pacing one;

                        relays_pacing_of(&d->d_pacer, d->d_q, &one);
                        p->throttled_total += one.throttled_total;
                        p->waiting += one.waiting;
                        p->busy += d->d_busy;
                }
        }
        return "default";
}

uint64_t relays_deferrals(const relays_t *rs) {
        return rs->rs_deferrals;
}
