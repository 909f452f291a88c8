#include "backoff.h"

int64_t backoff_ms(int64_t initial_ms, int64_t max_ms, int jitter_percent,
                   int attempt, uint64_t rnd) {
        int64_t ms = initial_ms;
        int64_t jitter;

        for (int i = 1; i < attempt && ms < max_ms && ms <= INT64_MAX / 4; i++)
                ms *= 2;
        if (ms > max_ms)
                ms = max_ms;
        /* ms * jitter_percent / 100, without overflow */
        jitter = ms / 100 * jitter_percent + ms % 100 * jitter_percent / 100;
        if (jitter > 0)
                ms += (int64_t)(rnd % (uint64_t)(2 * jitter + 1)) - jitter;
        return ms < 1 ? 1 : ms;
}
