/*
 * worker: one consumer-group member's pipeline on one loop. Takes requests
 * from the consumer, validates and builds them, sends them through the SMTP
 * session pool with retries, publishes one final result per request, and
 * commits each partition's contiguous watermark of requests whose results
 * Kafka acknowledged. Owns back-pressure (pause above inflight.max, resume
 * below the low-water mark), the revoke drain and the shutdown sequence.
 */
#ifndef KM_WORKER_H
#define KM_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct worker worker_t;

/* @returns a worker connected to nothing yet, or NULL with @errstr. @conf
 * must outlive the worker. */
worker_t *worker_new(const struct config *conf, char *errstr,
                     size_t errstr_size);

/* Runs until worker_stop() is called, then stops consuming, drains in-flight
 * sends (bounded by shutdown.timeout.ms), flushes results, commits and leaves
 * the group. @returns 0 on a clean stop, 1 when something was left undone
 * (those requests stay uncommitted and are consumed again), 2 when the
 * results producer failed for good. */
int worker_run(worker_t *w);

/* Asks a running worker to stop. Async-signal-safe. */
void worker_stop(worker_t *w);

void worker_destroy(worker_t *w);

#endif
