/*
 * relays: the SMTP relays a worker sends through (struct config_relay), one
 * smtp client each. A job goes to one of the relays its route selects: those
 * whose rules (sender domain, priority) match it, the ones with the most
 * rules first. Among those the healthy relays of weight > 0 share the jobs
 * in proportion to their weights; a standby (weight 0) takes jobs only while
 * none of them is healthy. When no relay for a job is healthy the job waits
 * at one of them.
 *
 * A relay whose session set-up fails (connection refused, TLS, greeting,
 * AUTH) turns unhealthy (smtp.h): the jobs waiting at it move to a healthy
 * relay of their route, and it is probed after each backoff, without a job,
 * until a session opens again; then it takes its share again. With a single
 * relay nothing moves and nothing is probed without a job: the jobs wait for
 * it as before.
 */
#ifndef KM_RELAYS_H
#define KM_RELAYS_H

#include <stddef.h>

#include "config.h"
#include "loop.h"
#include "request.h"
#include "smtp.h"

typedef struct relays relays_t;

/* What a job's relay is chosen by. */
struct relay_route {
        const char *sender_domain; /* the From address's domain */
        enum mail_priority priority;
};

/* @returns the relays of @conf (conf->relays), each with its smtp client,
 * or NULL with @errstr. @done_cb runs for every job, whichever relay took
 * it. */
relays_t *relays_new(loop_t *loop, const struct config *conf,
                     smtp_done_cb *done_cb, void *opaque, char *errstr,
                     size_t errstr_size);

/* Closes every session at once and frees everything; jobs not done are
 * dropped without callbacks. NULL ok. */
void relays_destroy(relays_t *rs);

/* Queues @job at a relay of @route (read during the call only). */
void relays_submit(relays_t *rs, struct smtp_job *job,
                   const struct relay_route *route);

/* Like smtp_client_cancel(), at whichever relay holds @job. */
int relays_cancel(relays_t *rs, struct smtp_job *job);

/* Sets the worker's share of the group-wide limits (relay.<name>.rate.max,
 * limit.<name>.rate.max): the partitions it owns over all partitions, 0..1
 * (1 at first). */
void relays_set_share(relays_t *rs, double share);

/* @returns the name of the relay @job was last queued at, NULL when none. */
const char *relays_job_relay(const relays_t *rs, const struct smtp_job *job);

/* @returns the URL of the relay @job was last queued at (never with
 * credentials: the configuration refuses them), NULL when none. */
const char *relays_job_url(const relays_t *rs, const struct smtp_job *job);

/* smtp_client_close_idle() on every relay. */
void relays_close_idle(relays_t *rs);

/* @returns the number of relays (>= 1). */
size_t relays_count(const relays_t *rs);

/* @returns the name of relay @i and fills @st with its figures. */
const char *relays_stats(const relays_t *rs, size_t i, struct smtp_stats *st);

/* Fills @st with the sums over every relay; relay_healthy is 1 when a relay
 * is healthy, last_relay_error that of the last relay with one. */
void relays_stats_total(const relays_t *rs, struct smtp_stats *st);

/* How fast one relay or limit goes. */
struct relays_pacing {
        double rate; /* msgs/s allowed now (after throttling); 0 = none */
        double limit; /* this worker's share of the configured rate; 0 =
                         none */
        uint64_t throttled_total; /* rate cuts after throttling replies */
        size_t waiting; /* jobs waiting for it */
        int busy; /* limits: transactions under way */
};

/* Fills @p for relay @i. */
void relays_relay_pacing(const relays_t *rs, size_t i, struct relays_pacing *p);

/* @returns the number of limits: the named ones, then "default" when it
 * limits anything. */
size_t relays_limit_count(const relays_t *rs);

/* @returns the name of limit @i and fills @p; for "default", the sums over
 * the domains it covers now (rate and limit: those of one domain). */
const char *relays_limit_pacing(const relays_t *rs, size_t i,
                                struct relays_pacing *p);

/* @returns the sends limits put off so far (SMTP_DEFERRED). */
uint64_t relays_deferrals(const relays_t *rs);

/* @returns 1 when @domain matches the comma-separated @patterns (ASCII case
 * ignored; "*.example.com" matches the subdomains of example.com, not
 * example.com itself), 0 otherwise. Exposed for the unit tests. */
int relays_domain_match(const char *patterns, const char *domain);

#endif
