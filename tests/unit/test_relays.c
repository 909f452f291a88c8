/* relays: the relay.<name>.* settings, routes, weights and domain patterns.
 * No session is opened: the loop never runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "config.h"
#include "loop.h"
#include "relays.h"

/* The jobs whose outcome came, in order. */
struct outcomes {
        struct smtp_job *jobs[64];
        size_t cnt;
};

static void done_cb(struct smtp_job *job, void *opaque) {
        struct outcomes *o = opaque;

        if (o && o->cnt < 64)
                o->jobs[o->cnt++] = job;
}

/* @returns a finished config of "key=value" pairs (NULL-terminated), or
 * NULL with @err. */
static struct config *conf_of(const char *const *kv, char *err, size_t size) {
        struct config *c = config_new();

        assert_non_null(c);
        for (size_t i = 0; kv[i]; i++) {
                char key[128];
                const char *eq = strchr(kv[i], '=');

                assert_non_null(eq);
                snprintf(key, sizeof(key), "%.*s", (int)(eq - kv[i]), kv[i]);
                if (config_set(c, key, eq + 1, "-X", err, size) == -1)
                        goto fail;
        }
        if (config_finish(c, err, size) == -1)
                goto fail;
        return c;
fail:
        config_destroy(c);
        return NULL;
}

static void test_domain_patterns(void **state) {
        static const struct {
                const char *patterns, *domain;
                int match;
        } cases[] = {
                {"shop.example", "shop.example", 1},
                {"shop.example", "SHOP.Example", 1},
                {"shop.example", "news.shop.example", 0},
                {"*.shop.example", "news.shop.example", 1},
                {"*.shop.example", "a.b.shop.example", 1},
                {"*.shop.example", "shop.example", 0},
                {"*.shop.example", "xshop.example", 0},
                {"a.example, shop.example ,b.example", "shop.example", 1},
                {"a.example,,b.example", "", 0},
                {"", "shop.example", 0},
                {"shop.example", "shop.exampl", 0},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                assert_int_equal(
                        relays_domain_match(cases[i].patterns, cases[i].domain),
                        cases[i].match);
}

static void test_without_relay_keys_smtp_is_the_one_relay(void **state) {
        static const char *const kv[] = {"smtp.url=smtp://127.0.0.1:2525",
                                         "smtp.username=u", "smtp.password=p",
                                         NULL};
        char err[256] = "";
        struct config *c = conf_of(kv, err, sizeof(err));

        (void)state;
        assert_non_null(c);
        assert_int_equal(c->relay_cnt, 1);
        assert_string_equal(c->relays[0].name, "default");
        assert_string_equal(c->relays[0].smtp->smtp_url,
                            "smtp://127.0.0.1:2525");
        assert_string_equal(c->relays[0].smtp->smtp_password, "p");
        config_destroy(c);
}

static void
test_a_relay_falls_back_on_smtp_but_not_for_credentials(void **state) {
        static const char *const kv[] = {"relay.a.url=smtps://a.example:465",
                                         "smtp.sessions.max=7",
                                         "smtp.username=u",
                                         "smtp.password=secret",
                                         "relay.b.url=smtp://b.example",
                                         "relay.b.sessions.max=9",
                                         "relay.b.username=bu",
                                         "relay.b.password=bp",
                                         "relay.b.weight=0",
                                         NULL};
        char err[256] = "";
        struct config *c = conf_of(kv, err, sizeof(err));

        (void)state;
        assert_non_null(c);
        assert_int_equal(c->relay_cnt, 2);
        assert_string_equal(c->relays[0].name, "a");
        /* smtp.sessions.max set after relay.a.url still applies */
        assert_int_equal(c->relays[0].smtp->smtp_sessions_max, 7);
        assert_string_equal(c->relays[0].smtp->smtp_username, "");
        assert_string_equal(c->relays[0].smtp->smtp_password, "");
        assert_int_equal(c->relays[0].weight, 1);
        assert_int_equal(c->relays[1].smtp->smtp_sessions_max, 9);
        assert_string_equal(c->relays[1].smtp->smtp_username, "bu");
        assert_int_equal(c->relays[1].weight, 0);
        config_destroy(c);
}

static void test_bad_relay_settings_are_refused_by_name(void **state) {
        static const struct {
                const char *kv[4];
                const char *err;
        } cases[] = {
                {{"relay.A.url=smtp://x", NULL},
                 "-X: relay.A.url: expected relay.<name>.<setting>"},
                {{"relay..url=smtp://x", NULL},
                 "-X: relay..url: expected relay.<name>.<setting>"},
                {{"relay.a=smtp://x", NULL},
                 "-X: relay.a: expected relay.<name>.<setting>"},
                {{"relay.a.urk=smtp://x", NULL},
                 "-X: unknown key \"relay.a.urk\""},
                {{"relay.a.transaction.max.recipients=5", NULL},
                 "-X: unknown key \"relay.a.transaction.max.recipients\""},
                {{"relay.a.weight=1001", NULL},
                 "-X: relay.a.weight: 1001 is above the maximum 1000"},
                {{"relay.a.sessions.max=0", NULL},
                 "-X: relay.a.sessions.max: 0 is below the minimum 1"},
                {{"relay.a.route.priority=urgent", NULL},
                 "-X: relay.a.route.priority: \"urgent\" is not one of any, "
                 "transactional, bulk"},
                {{"relay.a.url=ftp://x", NULL},
                 "relay.a.url: \"ftp://x\" must start with smtp:// or "
                 "smtps://"},
                {{"relay.a.url=smtp://x", "relay.a.username=u", NULL},
                 "relay.a.username: set without relay.a.password or "
                 "relay.a.password.file"},
                {{"relay.a.url=smtp://x", "relay.a.route.priority=bulk", NULL},
                 "relay.*: no relay takes transactional requests from every "
                 "sender domain"},
                {{"relay.a.url=smtp://x", "relay.a.route.sender.domains=x.y",
                  NULL},
                 "relay.*: no relay takes transactional requests"},
                {{"limit.g.rate.max=10", NULL},
                 "limit.g.domains: must not be empty"},
                {{"limit.default.domains=a.example", NULL},
                 "limit.default.domains: not allowed"},
                {{"limit.g.speed=1", NULL},
                 "-X: unknown key \"limit.g.speed\""},
                {{"limit.g.rate.max=-1", NULL},
                 "-X: limit.g.rate.max: -1 is below the minimum 0"},
                {{"limit.g.sessions.max=100001", NULL},
                 "-X: limit.g.sessions.max: 100001 is above the maximum 100000"},
                {{"relay.a.rate.max=1000001", NULL},
                 "-X: relay.a.rate.max: 1000001 is above the maximum 1000000"},
                {{"limit.queue.max.ms=3600001", NULL},
                 "-X: limit.queue.max.ms: 3600001 is above the maximum"},
                {{"throttle.decrease.percent=91", NULL},
                 "-X: throttle.decrease.percent: 91 is above the maximum 90"},
                {{"throttle.increase.percent=0", NULL},
                 "-X: throttle.increase.percent: 0 is below the minimum 1"},
                {{"throttle.rate.min=0", NULL},
                 "-X: throttle.rate.min: 0 is below the minimum 1"},
        };

        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char err[256] = "";

                assert_null(conf_of(cases[i].kv, err, sizeof(err)));
                if (strncmp(err, cases[i].err, strlen(cases[i].err)) != 0)
                        fail_msg("case %zu: \"%s\" does not start with "
                                 "\"%s\"",
                                 i, err, cases[i].err);
        }
}

static void test_routes_pick_the_most_specific_relays_by_weight(void **state) {
        static const char *const kv[] = {
                "relay.tx.url=smtp://127.0.0.1:1",
                "relay.tx.weight=3",
                "relay.spare.url=smtp://127.0.0.1:1",
                "relay.standby.url=smtp://127.0.0.1:1",
                "relay.standby.weight=0",
                "relay.bulk.url=smtp://127.0.0.1:1",
                "relay.bulk.route.priority=bulk",
                "relay.news.url=smtp://127.0.0.1:1",
                "relay.news.route.sender.domains=*.shop.example",
                "relay.newsbulk.url=smtp://127.0.0.1:1",
                "relay.newsbulk.route.sender.domains=*.shop.example",
                "relay.newsbulk.route.priority=bulk",
                NULL};
        static const struct {
                const char *domain;
                enum mail_priority prio;
                const char *only; /* the one relay, or NULL: tx or spare */
        } cases[] = {
                {"shop.example", MAIL_PRIORITY_BULK, "bulk"},
                {"news.shop.example", MAIL_PRIORITY_TRANSACTIONAL, "news"},
                {"news.shop.example", MAIL_PRIORITY_BULK, "newsbulk"},
                {"shop.example", MAIL_PRIORITY_TRANSACTIONAL, NULL},
        };
        char err[256] = "";
        struct config *c = conf_of(kv, err, sizeof(err));
        loop_t *loop = loop_new();
        relays_t *rs;
        static struct smtp_job jobs[400];

        (void)state;
        assert_non_null(c);
        assert_non_null(loop);
        rs = relays_new(loop, c, done_cb, NULL, err, sizeof(err));
        assert_non_null(rs);
        assert_int_equal(relays_count(rs), 6);
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                struct relay_route route = {cases[k].domain, cases[k].prio};
                size_t tx = 0, spare = 0;

                for (size_t i = 0; i < 400; i++) {
                        const char *name;

                        memset(&jobs[i], 0, sizeof(jobs[i]));
                        relays_submit(rs, &jobs[i], &route);
                        name = relays_job_relay(rs, &jobs[i]);
                        assert_non_null(name);
                        if (cases[k].only)
                                assert_string_equal(name, cases[k].only);
                        else if (strcmp(name, "tx") == 0)
                                tx++;
                        else if (strcmp(name, "spare") == 0)
                                spare++;
                        else
                                fail_msg("went to %s", name);
                }
                /* weights 3:1 (the standby, 0, takes none while both are
                 * healthy): 300 expected at tx, far inside 240..360 */
                if (!cases[k].only)
                        assert_true(tx > 240 && tx < 360 && tx + spare == 400);
                for (size_t i = 0; i < 400; i++)
                        assert_int_equal(relays_cancel(rs, &jobs[i]), 0);
        }
        relays_destroy(rs);
        loop_destroy(loop);
        config_destroy(c);
}

static const char *const slow_rcpt[] = {"a@slow.example", NULL};
static const char *const both_rcpts[] = {"a@slow.example", "b@other.example",
                                         NULL};
/* slow.example limited to 2 msgs/s, a wait of 1 s at most */
static const char *const slow_limit[] = {
        "smtp.url=smtp://127.0.0.1:1", "limit.slow.domains=slow.example",
        "limit.slow.rate.max=2", "limit.queue.max.ms=1000", NULL};

/* Submits jobs[@from..@to) to slow.example, one recipient each. */
static void submit_slow(relays_t *rs, struct smtp_job *jobs, size_t from,
                        size_t to, const struct relay_route *route) {
        for (size_t i = from; i < to; i++) {
                memset(&jobs[i], 0, sizeof(jobs[i]));
                jobs[i].rcpts = slow_rcpt;
                jobs[i].rcpt_cnt = 1;
                relays_submit(rs, &jobs[i], route);
        }
}

/* A limit of 2 msgs/s and limit.queue.max.ms=1000: the first goes at once
 * (a full bucket), two wait (500 and 1000 ms ahead), the rest are put off, each at a slot of its own, without
 * an attempt; a limit's queue is transactional first; cancel takes a job
 * off a limit's queue. */
static void
test_a_limit_queues_then_puts_off_at_slots_of_their_own(void **state) {
        char err[256] = "";
        struct config *c = conf_of(slow_limit, err, sizeof(err));
        loop_t *loop = loop_new();
        struct outcomes o = {0};
        static struct smtp_job jobs[10];
        struct relay_route route = {"shop.example",
                                    MAIL_PRIORITY_TRANSACTIONAL};
        relays_t *rs;
        struct relays_pacing p;

        (void)state;
        assert_non_null(c);
        rs = relays_new(loop, c, done_cb, &o, err, sizeof(err));
        assert_non_null(rs);
        relays_set_share(rs, 1.0);
        for (size_t i = 0; i < 10; i++) {
                memset(&jobs[i], 0, sizeof(jobs[i]));
                jobs[i].rcpts = i == 9 ? both_rcpts : slow_rcpt;
                jobs[i].rcpt_cnt = i == 9 ? 2 : 1;
                relays_submit(rs, &jobs[i], &route);
        }
        assert_int_equal(o.cnt, 0); /* never from inside relays_submit() */
        for (int i = 0; i < 20 && o.cnt < 7; i++)
                loop_run_once(loop, 50);
        /* seven are put off (the last one's second recipient has no limit:
         * the first counts) */
        assert_int_equal(o.cnt, 7);
        for (size_t i = 0; i < o.cnt; i++) {
                assert_int_equal(o.jobs[i]->outcome, SMTP_DEFERRED);
                assert_true(o.jobs[i]->defer_ms >= 1000);
                if (i > 0)
                        assert_int_equal(o.jobs[i]->defer_ms -
                                                 o.jobs[i - 1]->defer_ms,
                                         500);
                assert_non_null(strstr(o.jobs[i]->reply, "limit slow"));
        }
        assert_int_equal(relays_deferrals(rs), 7);
        assert_int_equal(relays_limit_count(rs), 1);
        assert_string_equal(relays_limit_pacing(rs, 0, &p), "slow");
        assert_true(p.rate == 2.0);
        assert_int_equal(p.waiting, 2);
        /* the waiting ones can be cancelled */
        for (size_t i = 1; i < 3; i++)
                if (jobs[i].sj_wq)
                        assert_int_equal(relays_cancel(rs, &jobs[i]), 0);
        relays_limit_pacing(rs, 0, &p);
        assert_int_equal(p.waiting, 0);
        relays_destroy(rs);
        loop_destroy(loop);
        config_destroy(c);
}

/* Jobs put off while the worker's share of a limit is near nothing (before
 * its partitions are counted right) book slots far apart; once the share is
 * right, later jobs are put off at slots of the new rate, not behind those
 * (the bookings are rescaled to the new rate). */
static void
test_slots_booked_at_a_tiny_share_are_rescaled_when_it_grows(void **state) {
        char err[256] = "";
        struct config *c = conf_of(slow_limit, err, sizeof(err));
        loop_t *loop = loop_new();
        struct outcomes o = {0};
        static struct smtp_job jobs[12];
        struct relay_route route = {"shop.example",
                                    MAIL_PRIORITY_TRANSACTIONAL};
        relays_t *rs;

        (void)state;
        assert_non_null(c);
        rs = relays_new(loop, c, done_cb, &o, err, sizeof(err));
        assert_non_null(rs);
        relays_set_share(rs, 0.0); /* the floor: 0.01 msgs/s */
        submit_slow(rs, jobs, 0, 6, &route);
        for (int i = 0; i < 20 && o.cnt < 5; i++)
                loop_run_once(loop, 50);
        /* the first took the bucket's token; five are put off, 100 s
         * apart at 0.01 msgs/s */
        assert_int_equal(o.cnt, 5);
        assert_true(o.jobs[4]->defer_ms >= 400000);
        relays_set_share(rs, 1.0); /* 2 msgs/s */
        submit_slow(rs, jobs, 6, 12, &route);
        for (int i = 0; i < 40 && o.cnt < 8; i++)
                loop_run_once(loop, 50);
        /* of the six, at most one goes and two wait in the queue; the
         * rest are put off within seconds, not after the five before */
        assert_true(o.cnt >= 8);
        for (size_t i = 5; i < o.cnt; i++) {
                if (o.jobs[i]->outcome != SMTP_DEFERRED)
                        continue;
                assert_true(o.jobs[i]->defer_ms < 10000);
        }
        for (size_t i = 0; i < 12; i++)
                if (jobs[i].sj_wq)
                        assert_int_equal(relays_cancel(rs, &jobs[i]), 0);
        relays_destroy(rs);
        loop_destroy(loop);
        config_destroy(c);
}

static void run_ms(loop_t *loop, int ms) {
        int64_t end = loop_clock_ms() + ms;

        while (loop_clock_ms() < end)
                loop_run_once(loop, 50);
}

/* limit.default.sessions.max=1: a job to a.example and b.example waits at
 * a.example while b.example's one transaction is under way; b.example's
 * default limit (made for it, never queued at) stays while the job counts
 * against it, and the end of b.example's transaction lets the job go. */
static void
test_a_job_waiting_for_its_second_limit_goes_when_it_frees(void **state) {
        static const char *const kv[] = {"smtp.url=smtp://127.0.0.1:1",
                                         "limit.default.sessions.max=1",
                                         "limit.queue.max.ms=600000", NULL};
        static const char *const rcpt_b[] = {"x@b.example", NULL};
        static const char *const rcpt_ab[] = {"x@a.example", "y@b.example",
                                              NULL};
        char err[256] = "";
        struct config *c = conf_of(kv, err, sizeof(err));
        loop_t *loop = loop_new();
        static struct smtp_job j1, j2;
        struct relay_route route = {"shop.example",
                                    MAIL_PRIORITY_TRANSACTIONAL};
        relays_t *rs;

        (void)state;
        assert_non_null(c);
        rs = relays_new(loop, c, done_cb, NULL, err, sizeof(err));
        assert_non_null(rs);
        relays_set_share(rs, 1.0);
        j1.rcpts = rcpt_b;
        j1.rcpt_cnt = 1;
        relays_submit(rs, &j1, &route); /* b.example: 1 under way */
        run_ms(loop, 100);
        assert_null(j1.sj_wq);
        j2.rcpts = rcpt_ab;
        j2.rcpt_cnt = 2;
        relays_submit(rs, &j2, &route); /* waits at a.example for b */
        run_ms(loop, 700); /* ticks go by: b.example's limit stays */
        assert_non_null(j2.sj_wq);
        assert_int_equal(relays_cancel(rs, &j1), 0); /* b.example frees */
        run_ms(loop, 300);
        assert_null(j2.sj_wq); /* went to the relay */
        relays_destroy(rs);
        loop_destroy(loop);
        config_destroy(c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_domain_patterns),
                cmocka_unit_test(test_without_relay_keys_smtp_is_the_one_relay),
                cmocka_unit_test(
                        test_a_relay_falls_back_on_smtp_but_not_for_credentials),
                cmocka_unit_test(test_bad_relay_settings_are_refused_by_name),
                cmocka_unit_test(
                        test_routes_pick_the_most_specific_relays_by_weight),
                cmocka_unit_test(
                        test_a_limit_queues_then_puts_off_at_slots_of_their_own),
                cmocka_unit_test(
                        test_slots_booked_at_a_tiny_share_are_rescaled_when_it_grows),
                cmocka_unit_test(
                        test_a_job_waiting_for_its_second_limit_goes_when_it_frees),
        };
        int r;

        curl_global_init(CURL_GLOBAL_DEFAULT);
        r = cmocka_run_group_tests(tests, NULL, NULL);
        curl_global_cleanup();
        return r;
}
