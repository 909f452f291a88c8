/*
 * metrics: a small HTTP/1.1 endpoint on the loop serving GET /metrics
 * (Prometheus text exposition format 0.0.4) and GET /healthz. Requests are
 * read and answered without blocking; each connection is bounded in size and
 * time and closed after one response.
 */
#ifndef KM_METRICS_H
#define KM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct metrics metrics_t;

/* Where a render callback writes the exposition text. */
typedef struct metrics_out metrics_out_t;

/* Writes the owner's metrics for one /metrics request. */
typedef void(metrics_render_cb)(metrics_out_t *out, void *opaque);

/* @returns 1 when healthy, 0 when not, with a short reason in @reason
 * (shown in the /healthz body). */
typedef int(metrics_health_cb)(char *reason, size_t reason_size, void *opaque);

/*
 * Listens on @listen ("host:port", IPv4 or "[v6]:port"; numeric addresses,
 * an empty host is every IPv4 address; port 0 picks a free one). @render and @health may be NULL (an empty /metrics body; always
 * healthy). @returns the endpoint or NULL with @errstr naming the address.
 */
metrics_t *metrics_new(loop_t *loop, const char *listen,
                       metrics_render_cb *render, metrics_health_cb *health,
                       void *opaque, char *errstr, size_t errstr_size);

/* Closes the listener and every open connection. NULL ok. Call before
 * loop_destroy(). */
void metrics_destroy(metrics_t *m);

/* Serves /readyz with @ready (NULL: /readyz answers as /healthz does): 200
 * "ready", or 503 with the reason. */
void metrics_set_ready(metrics_t *m, metrics_health_cb *ready);

/* @returns the port actually listened on. */
int metrics_port(const metrics_t *m);

/* Sets how long a connection may live, from accept to close, for
 * connections accepted from now on (default 5000 ms). */
void metrics_set_timeout_ms(metrics_t *m, int timeout_ms);

/* Writes "# HELP", "# TYPE" and one sample. @labels is NULL or the text
 * inside the braces, e.g. "status=\"sent\"". @type: "counter" or "gauge".
 * HELP/TYPE lines are written once per name even when called for several
 * label sets in a row. */
void metrics_sample(metrics_out_t *out, const char *name, const char *type,
                    const char *help, const char *labels, double value);

/* The buckets of the latency histograms, in seconds (upper bounds; +Inf
 * follows). */
#define METRICS_LATENCY_BUCKETS 16
extern const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS];

/* A histogram of latencies over metrics_latency_bounds. Zero it to start. */
struct metrics_hist {
        uint64_t mh_counts[METRICS_LATENCY_BUCKETS + 1]; /* per bucket, the
                                                          last +Inf */
        uint64_t mh_count;
        double mh_sum; /* seconds */
};

/* Counts one observation of @seconds. */
void metrics_hist_observe(struct metrics_hist *h, double seconds);

/* Writes @h as a Prometheus histogram @name (its _bucket, _sum and _count
 * series; buckets cumulative). */
void metrics_histogram(metrics_out_t *out, const char *name, const char *help,
                       const struct metrics_hist *h);

#endif
