#include "relays.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

_Static_assert(CONFIG_RELAYS_MAX <= 32, "relay masks are 32 bits");

struct relay {
        relays_t *r_set;
        char *r_name;
        smtp_client_t *r_sc;
        int r_weight;
        char *r_domains; /* route.sender.domains, NULL = any */
        enum config_route_priority r_priority;
        int r_rules; /* route rules set: the more, the more specific */
        int r_healthy; /* as the client last told */
};

struct relays {
        loop_t *rs_loop;
        struct relay *rs_relays;
        size_t rs_cnt;
        smtp_done_cb *rs_done_cb;
        void *rs_opaque;
        loop_timer_t rs_move_timer; /* moves jobs after a health change */
        uint64_t rs_rand;
        size_t rs_standby_next; /* round robin among standbys */
};

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

static void relays_queue(relays_t *rs, struct smtp_job *job) {
        size_t i = relays_pick(rs, job->sj_relays);

        smtp_client_submit(rs->rs_relays[i].r_sc, job);
}

void relays_submit(relays_t *rs, struct smtp_job *job,
                   const struct relay_route *route) {
        job->sj_relays = relays_route_mask(rs, route);
        relays_queue(rs, job);
}

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
                struct smtp_job *moved = NULL, **tail = &moved, *job;
                size_t n = 0;

                if (r->r_healthy)
                        continue;
                /* Taken all first, then queued again: a job with no
                 * healthy relay returns to the end of this one's queue. */
                while ((job = smtp_client_take_queued(r->r_sc)) != NULL) {
                        *tail = job;
                        tail = &job->sj_next;
                        n++;
                }
                *tail = NULL;
                if (n > 0)
                        LOG(LL_INFO,
                            "jobs moved off an unhealthy relay relay=%s "
                            "count=%zu",
                            r->r_name, n);
                while ((job = moved) != NULL) {
                        moved = job->sj_next;
                        job->sj_next = NULL;
                        relays_queue(rs, job);
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
        loop_timer_init(&rs->rs_move_timer, relays_move_cb, rs);
        rs->rs_relays = calloc(conf->relay_cnt, sizeof(*rs->rs_relays));
        if (!rs->rs_relays) {
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
                r->r_name = strdup(cr->name);
                r->r_domains = cr->route_sender_domains[0]
                                       ? strdup(cr->route_sender_domains)
                                       : NULL;
                rs->rs_cnt++;
                if (!r->r_name ||
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
                r->r_sc = smtp_client_new(loop, &scc, done_cb, opaque, err,
                                          sizeof(err));
                if (!r->r_sc) {
                        snprintf(errstr, errstr_size, "relay %s: %s", r->r_name,
                                 err);
                        goto err;
                }
        }
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
                free(rs->rs_relays[i].r_domains);
        }
        loop_timer_stop(rs->rs_loop, &rs->rs_move_timer);
        free(rs->rs_relays);
        free(rs);
}

int relays_cancel(relays_t *rs, struct smtp_job *job) {
        smtp_client_t *sc = smtp_job_client(job);

        (void)rs;
        return sc ? smtp_client_cancel(sc, job) : -1;
}

const char *relays_job_relay(const relays_t *rs, const struct smtp_job *job) {
        smtp_client_t *sc = smtp_job_client(job);

        for (size_t i = 0; sc && i < rs->rs_cnt; i++) {
                if (rs->rs_relays[i].r_sc == sc)
                        return rs->rs_relays[i].r_name;
        }
        return NULL;
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
                st->jobs_queued += one.jobs_queued;
                st->relay_healthy |= one.relay_healthy;
                st->sessions_opened_total += one.sessions_opened_total;
                st->relay_failures_total += one.relay_failures_total;
                if (one.last_relay_error[0])
                        memcpy(st->last_relay_error, one.last_relay_error,
                               sizeof(st->last_relay_error));
        }
}
