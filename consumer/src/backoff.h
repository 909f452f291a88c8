/*
 * backoff: exponential backoff with jitter, for retries of anything (a
 * request, a relay, a Kafka record). Pure: the caller supplies the random
 * value, so the same inputs give the same delay.
 */
#ifndef KM_BACKOFF_H
#define KM_BACKOFF_H

#include <stdint.h>

/*
 * The delay before retry number @attempt (1: the first; 0 counts as 1):
 * @initial_ms doubled once for each attempt after the first, until it
 * reaches @max_ms, and at most @max_ms; then spread evenly over +/-
 * @jitter_percent (0 to 100) of itself by @rnd, any random value (the same
 * value gives the same delay; 0 gives the least). @initial_ms and @max_ms
 * are positive and at most INT64_MAX / 4.
 * @returns the delay in milliseconds, at least 1.
 */
int64_t backoff_ms(int64_t initial_ms, int64_t max_ms, int jitter_percent,
                   int attempt, uint64_t rnd);

#endif
