#include "pacer.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* A bucket holds a tenth of a second of sends (at least one): sends stay
 * paced, and a one-second window sees the rate and little more. */
#define PACER_BURST_S 0.1
/* The least raise per second, msgs/s: a cut after a quiet second (little
 * went) does not take minutes to undo. */
#define PACER_STEP_MIN 1.0
/* One cut per this long: the replies to sends made before a cut are not
 * a reason for another. */
#define PACER_CUT_GAP_MS 1000
/* Without a limit, a rate raised to this many times what was sent is taken
 * off again (unlimited) after PACER_FREE_MS without a cut. */
#define PACER_FREE_FACTOR 4.0
#define PACER_FREE_MS 60000

static double pacer_burst(double rate) {
        double b = rate * PACER_BURST_S;

        return b < 1.0 ? 1.0 : b;
}

/* Moves the one-second window of counted sends to @now_ms. */
static void pacer_window(struct pacer *p, int64_t now_ms) {
        if (now_ms - p->p_win_ms < 1000)
                return;
        p->p_prev_cnt = now_ms - p->p_win_ms < 2000 ? p->p_win_cnt : 0;
        p->p_win_cnt = 0;
        p->p_win_ms = now_ms;
}

static void pacer_refill(struct pacer *p, int64_t now_ms) {
        double burst;

        if (p->p_rate <= 0)
                return;
        burst = pacer_burst(p->p_rate);
        if (now_ms > p->p_last_ms)
                p->p_tokens +=
                        p->p_rate * (double)(now_ms - p->p_last_ms) / 1000.0;
        if (p->p_tokens > burst)
                p->p_tokens = burst;
        p->p_last_ms = now_ms;
}

void pacer_init(struct pacer *p, double limit, int64_t now_ms) {
        memset(p, 0, sizeof(*p));
        p->p_limit = limit > 0 ? limit : 0;
        p->p_rate = p->p_limit;
        p->p_tokens = p->p_rate > 0 ? pacer_burst(p->p_rate) : 0;
        p->p_last_ms = now_ms;
        p->p_tick_ms = now_ms;
        p->p_win_ms = now_ms;
}

void pacer_set_limit(struct pacer *p, double limit, int64_t now_ms) {
        limit = limit > 0 ? limit : 0;
        pacer_refill(p, now_ms);
        if (p->p_cut_ms == 0 || (limit > 0 && p->p_rate > limit) ||
            p->p_rate == 0)
                p->p_rate = limit;
        p->p_limit = limit;
        if (p->p_rate > 0 && p->p_tokens > pacer_burst(p->p_rate))
                p->p_tokens = pacer_burst(p->p_rate);
        p->p_last_ms = now_ms;
}

int64_t pacer_wait_ms(struct pacer *p, int64_t now_ms) {
        double ms;

        if (p->p_rate <= 0)
                return 0;
        pacer_refill(p, now_ms);
        if (p->p_tokens >= 1.0)
                return 0;
        ms = (1.0 - p->p_tokens) * 1000.0 / p->p_rate;
        return ms < 1.0 ? 1 : (int64_t)ms + 1;
}

void pacer_take(struct pacer *p, int64_t now_ms) {
        pacer_window(p, now_ms);
        p->p_win_cnt++;
        if (p->p_rate > 0) {
                pacer_refill(p, now_ms);
                p->p_tokens -= 1.0;
        }
}

void pacer_throttled(struct pacer *p, const struct pacer_conf *c,
                     int64_t now_ms) {
        double sent, before, base, rate;

        if (p->p_cut_ms && now_ms - p->p_cut_ms < PACER_CUT_GAP_MS)
                return;
        pacer_window(p, now_ms);
        /* what went through in the last second: the rate the other side
         * found too fast */
        sent = p->p_prev_cnt > p->p_win_cnt ? p->p_prev_cnt : p->p_win_cnt;
        /* the rate before the cut: the one allowed, or (unlimited) what
         * went */
        before = p->p_rate > 0 ? p->p_rate : sent;
        if (before < c->rate_min)
                before = c->rate_min;
        /* cut from what the other side saw, when less went than allowed */
        base = sent >= c->rate_min && sent < before ? sent : before;
        rate = base * (100 - c->decrease_percent) / 100.0;
        if (rate < c->rate_min)
                rate = c->rate_min;
        if (p->p_limit > 0 && rate > p->p_limit)
                rate = p->p_limit;
        pacer_refill(p, now_ms);
        p->p_rate = rate;
        p->p_step = before * c->increase_percent / 100.0;
        if (p->p_step < PACER_STEP_MIN)
                p->p_step = PACER_STEP_MIN;
        if (p->p_tokens > pacer_burst(rate))
                p->p_tokens = pacer_burst(rate);
        p->p_cut_ms = now_ms;
        p->p_tick_ms = now_ms;
        p->p_throttled_total++;
}

void pacer_tick(struct pacer *p, const struct pacer_conf *c, int64_t now_ms) {
        int64_t from = p->p_tick_ms;

        (void)c;
        p->p_tick_ms = now_ms;
        pacer_window(p, now_ms);
        if (p->p_cut_ms == 0 || p->p_rate <= 0)
                return;
        if (from < p->p_cut_ms + PACER_CUT_GAP_MS)
                from = p->p_cut_ms + PACER_CUT_GAP_MS;
        if (now_ms <= from)
                return;
        pacer_refill(p, now_ms);
        p->p_rate += p->p_step * (double)(now_ms - from) / 1000.0;
        if (p->p_limit > 0 && p->p_rate >= p->p_limit) {
                p->p_rate = p->p_limit;
                p->p_cut_ms = 0; /* back at the limit: not throttled */
        } else if (p->p_limit == 0 && now_ms - p->p_cut_ms > PACER_FREE_MS &&
                   p->p_rate > PACER_FREE_FACTOR * (p->p_prev_cnt + 1)) {
                p->p_rate = 0; /* far above what is sent: unlimited again */
                p->p_cut_ms = 0;
        }
}

double pacer_rate(const struct pacer *p) {
        return p->p_rate;
}

int64_t pacer_eta_ms(const struct pacer *p, uint64_t ahead) {
        double ms;

        if (p->p_rate <= 0)
                return 0;
        ms = ((double)ahead + 1.0 - p->p_tokens) * 1000.0 / p->p_rate;
        return ms <= 0 ? 0 : (int64_t)ms;
}

/* @returns 1 when a word of @s starts with @word, ASCII case ignored. */
static int has_word(const char *s, const char *word) {
        size_t n = strlen(word);

        for (const char *p = s; *p; p++) {
                if ((p == s || !isalpha((unsigned char)p[-1])) &&
                    strncasecmp(p, word, n) == 0)
                        return 1;
        }
        return 0;
}

int pacer_is_throttle(int code, const char *reply) {
        static const char *const words[] = {"rate", "throttl", "too many",
                                            "too fast", "slow down"};

        if (code == 421)
                return 1;
        if (code != 450 && code != 451 && code != 454)
                return 0;
        if (reply == NULL)
                return 0;
        /* an enhanced status code 4.7.x: a policy refusal, throttling
         * among them (RFC 3463) */
        if (reply[0] == '4' && reply[1] == '.' && reply[2] == '7' &&
            reply[3] == '.' && isdigit((unsigned char)reply[4]))
                return 1;
        for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
                if (has_word(reply, words[i]))
                        return 1;
        }
        return 0;
}
