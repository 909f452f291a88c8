/*
 * pacer: how fast sends may go through one relay or to one destination. A
 * token bucket at a rate that the replies adjust (AIMD): a throttling reply
 * cuts the rate by a share (at most once a second), each second without one
 * raises it by a fixed step, up to the configured limit. With no limit the
 * rate is unlimited until the first throttling reply, which cuts from the
 * rate sends went at in the last second; a long quiet period makes it
 * unlimited again.
 *
 * Pure: no clock of its own, no I/O; the caller gives the times (ms).
 */
#ifndef KM_PACER_H
#define KM_PACER_H

#include <stdint.h>

/* AIMD settings (throttle.* keys). */
struct pacer_conf {
        int decrease_percent; /* cut on a throttling reply, in percent */
        int increase_percent; /* raise per second, in percent of the rate
                                 before the last cut */
        double rate_min; /* never below this, msgs/s */
};

struct pacer {
        double p_limit; /* msgs/s allowed at most; 0 = none */
        double p_rate; /* msgs/s now; 0 = unlimited */
        double p_tokens;
        int64_t p_last_ms; /* tokens counted up to here */
        int64_t p_cut_ms; /* last cut; 0 = none */
        int64_t p_tick_ms; /* last raise */
        double p_step; /* raise per second after the last cut */
        int64_t p_win_ms; /* start of the current one-second window */
        uint32_t p_win_cnt; /* sends in it */
        uint32_t p_prev_cnt; /* sends in the one before */
        uint64_t p_throttled_total; /* cuts made */
};

/* Sets @p up with @limit msgs/s (0 = none) at @now_ms. */
void pacer_init(struct pacer *p, double limit, int64_t now_ms);

/* Changes the limit (the worker's share of a group-wide limit changed); a
 * rate above the new limit comes down to it, an unthrottled one follows
 * it. */
void pacer_set_limit(struct pacer *p, double limit, int64_t now_ms);

/* @returns 0 when a send may go now, else the ms until it may. */
int64_t pacer_wait_ms(struct pacer *p, int64_t now_ms);

/* Counts a send (takes a token when limited). */
void pacer_take(struct pacer *p, int64_t now_ms);

/* A throttling reply came: cuts the rate (not twice within a second). */
void pacer_throttled(struct pacer *p, const struct pacer_conf *c,
                     int64_t now_ms);

/* Raises a cut rate by its step for the time since the last call, from a
 * second after the cut on; call it a few times a second. */
void pacer_tick(struct pacer *p, const struct pacer_conf *c, int64_t now_ms);

/* @returns the rate now, msgs/s; 0 = unlimited. */
double pacer_rate(const struct pacer *p);

/* @returns the ms a send queued behind @ahead others would wait at the rate
 * now (0 when unlimited). */
int64_t pacer_eta_ms(const struct pacer *p, uint64_t ahead);

/* @returns 1 when @code and @reply (the text after the code) signal that
 * the sender goes too fast: 421, or 450/451/454 with an enhanced code 4.7.x
 * or words of rate and throttling ("rate", "throttl", "too many", "too
 * fast", "slow down"). */
int pacer_is_throttle(int code, const char *reply);

#endif
