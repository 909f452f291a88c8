#include "ledger.h"

#include <stdlib.h>
#include <string.h>

#include "offsets.h"
#include "recall.h"

struct ledger_part {
        int32_t lp_partition;
        offsets_t *lp_offsets;
        int64_t lp_offered; /* last offset offered in a commit, -1 none */
        int64_t lp_sent_offset; /* offset of the last commit offered */
        uint64_t lp_sent_below; /* offsets_below_watermark() it covered */
        uint64_t lp_acked_below; /* ... of the last commit Kafka confirmed */
        size_t lp_entries; /* live requests */
        int lp_draining; /* being revoked: nothing new starts */
        int lp_released; /* detached: completions no longer commit */
        int lp_held; /* until the results topic was read (lp_seq) */
        uint64_t lp_seq;
        /* Where its requests' results go (-1: by key) and, from the read at
         * assignment, a lower bound of that partition's end (-1: none). */
        int32_t lp_results_partition;
        int64_t lp_results_base;
        /* Requests below lp_inherit_until may have been finished by an
         * earlier owner, whose results lie at or past lp_inherit_floor (-1:
         * not known): their commits store that floor. */
        int64_t lp_inherit_until;
        int64_t lp_inherit_floor;
};

struct ledger {
        ledger_part_t **l_parts; /* indexed by partition id */
        size_t l_parts_size;
        size_t l_inflight;
        size_t l_held;
        size_t l_limit;
        size_t l_resume_at;
        ledger_results_end_cb *l_results_end;
        void *l_opaque;
};

ledger_t *ledger_new(const struct ledger_conf *conf) {
        ledger_t *l = calloc(1, sizeof(*l));

        if (!l)
                return NULL;
        l->l_limit = conf->limit;
        l->l_resume_at = conf->limit * (size_t)conf->resume_percent / 100;
        /* Below the limit: resuming at it took one request over. */
        if (l->l_resume_at >= l->l_limit)
                l->l_resume_at = l->l_limit - 1;
        l->l_results_end = conf->results_end;
        l->l_opaque = conf->opaque;
        return l;
}

static void ledger_part_free(ledger_part_t *p) {
        offsets_destroy(p->lp_offsets);
        free(p);
}

void ledger_destroy(ledger_t *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->l_parts_size; i++)
                if (l->l_parts[i])
                        ledger_part_free(l->l_parts[i]);
        free(l->l_parts);
        free(l);
}

ledger_part_t *ledger_part_get(const ledger_t *l, int32_t partition) {
        if (partition < 0 || (size_t)partition >= l->l_parts_size)
                return NULL;
        return l->l_parts[partition];
}

ledger_part_t *ledger_part_add(ledger_t *l, int32_t partition) {
        ledger_part_t *p;

        if ((size_t)partition >= l->l_parts_size) {
                size_t n = (size_t)partition + 16;
                ledger_part_t **np = realloc(l->l_parts, n * sizeof(*np));

                if (!np)
                        abort();
                memset(np + l->l_parts_size, 0,
                       (n - l->l_parts_size) * sizeof(*np));
                l->l_parts = np;
                l->l_parts_size = n;
        }
        if (l->l_parts[partition])
                return l->l_parts[partition];
        p = calloc(1, sizeof(*p));
        if (!p)
                abort();
        p->lp_partition = partition;
        p->lp_offsets = offsets_new();
        if (!p->lp_offsets)
                abort();
        p->lp_offered = -1;
        p->lp_results_partition = -1;
        p->lp_results_base = -1;
        p->lp_inherit_until = -1;
        p->lp_inherit_floor = -1;
        l->l_parts[partition] = p;
        return p;
}

void ledger_part_release(ledger_t *l, ledger_part_t *p) {
        l->l_held -=
                (size_t)(offsets_tracked(p->lp_offsets) - p->lp_acked_below);
        l->l_parts[p->lp_partition] = NULL;
        p->lp_released = 1;
        if (p->lp_entries == 0)
                ledger_part_free(p);
}

void ledger_release_all(ledger_t *l) {
        for (size_t i = 0; i < l->l_parts_size; i++)
                if (l->l_parts[i])
                        ledger_part_release(l, l->l_parts[i]);
}

int32_t ledger_part_partition(const ledger_part_t *p) {
        return p->lp_partition;
}

void ledger_part_enter(ledger_t *l, ledger_part_t *p) {
        p->lp_entries++;
        l->l_inflight++;
}

int ledger_part_leave(ledger_t *l, ledger_part_t *p) {
        l->l_inflight--;
        p->lp_entries--;
        if (p->lp_released && p->lp_entries == 0) {
                ledger_part_free(p);
                return 1;
        }
        return 0;
}

size_t ledger_part_entries(const ledger_part_t *p) {
        return p->lp_entries;
}

void ledger_part_hold(ledger_part_t *p, uint64_t seq) {
        p->lp_held = 1;
        p->lp_seq = seq;
}

int ledger_part_let_through(ledger_part_t *p, uint64_t seq,
                            int32_t results_partition, int64_t results_base,
                            int64_t inherit_floor, int64_t inherit_until) {
        if (!p->lp_held || p->lp_seq != seq || p->lp_draining)
                return -1;
        p->lp_held = 0;
        p->lp_results_partition = results_partition;
        p->lp_results_base = results_base;
        p->lp_inherit_floor = inherit_floor;
        p->lp_inherit_until = inherit_until;
        return 0;
}

size_t ledger_parts_held(const ledger_t *l) {
        size_t n = 0;

        for (size_t i = 0; i < l->l_parts_size; i++)
                n += l->l_parts[i] && l->l_parts[i]->lp_held;
        return n;
}

size_t ledger_part_count(const ledger_t *l) {
        size_t n = 0;

        for (size_t i = 0; i < l->l_parts_size; i++)
                n += l->l_parts[i] != NULL;
        return n;
}

int32_t ledger_part_results_partition(const ledger_part_t *p) {
        return p->lp_results_partition;
}

/* @returns the results offset from which every result of a request of @p
 * consumed from now on will lie: the end of its results partition as last
 * known (read at assignment, or past this worker's own acknowledged
 * results); -1 when not known. */
static int64_t ledger_results_floor(const ledger_t *l, const ledger_part_t *p) {
        int64_t end;

        if (p->lp_results_partition < 0)
                return -1;
        end = l->l_results_end(l->l_opaque, p->lp_results_partition);
        if (p->lp_results_base > end)
                end = p->lp_results_base;
        return p->lp_results_base < 0 && end == 0 ? -1 : end;
}

/* @returns the results floor of the request at @offset of @p (see
 * ledger_results_floor()): below the end its partition had at assignment,
 * the floor the earlier owner stored, since what it finished there may not
 * have been consumed here yet. */
static int64_t ledger_floor_at(const ledger_t *l, const ledger_part_t *p,
                               int64_t offset) {
        if (offset < p->lp_inherit_until)
                return p->lp_inherit_floor;
        return ledger_results_floor(l, p);
}

int ledger_track(ledger_t *l, ledger_part_t *p, int64_t offset) {
        if (offsets_track_tag(p->lp_offsets, offset,
                              ledger_floor_at(l, p, offset)) != 0)
                return -1;
        l->l_held++;
        return 0;
}

int ledger_done(ledger_t *l, ledger_part_t *p, int64_t offset) {
        (void)l;
        if (p->lp_released)
                return -1;
        return offsets_done(p->lp_offsets, offset);
}

/* Fills @c with the watermark of @p when it moved since its last offer.
 * @returns 1 when it did (now recorded as offered), else 0. */
static int ledger_part_offer(const ledger_t *l, ledger_part_t *p,
                             struct ledger_commit *c) {
        int64_t off = offsets_committable(p->lp_offsets);
        int64_t floor;

        if (off < 0 || off <= p->lp_offered)
                return 0;
        memset(c, 0, sizeof(*c));
        c->partition = p->lp_partition;
        c->offset = off;
        /* Where the next owner starts reading the results topic: the floor
         * tagged on the request at the watermark; with every request done,
         * the floor of the next one to come. */
        floor = offsets_pending(p->lp_offsets) > 0
                        ? offsets_front_tag(p->lp_offsets)
                        : ledger_floor_at(l, p, off);
        if (floor >= 0)
                c->metadata_len =
                        recall_meta_format(c->metadata, sizeof(c->metadata),
                                           p->lp_results_partition, floor);
        p->lp_offered = off;
        p->lp_sent_offset = off;
        p->lp_sent_below = offsets_below_watermark(p->lp_offsets);
        return 1;
}

size_t ledger_commit_take(ledger_t *l, const int32_t *partitions, size_t cnt,
                          struct ledger_commit **out) {
        struct ledger_commit *c;
        size_t n = 0;

        if (!partitions)
                cnt = l->l_parts_size;
        *out = NULL;
        if (cnt == 0)
                return 0;
        c = calloc(cnt, sizeof(*c));
        if (!c)
                abort();
        for (size_t i = 0; i < cnt; i++) {
                ledger_part_t *p = partitions
                                           ? ledger_part_get(l, partitions[i])
                                           : l->l_parts[i];

                if (p && ledger_part_offer(l, p, &c[n]))
                        n++;
        }
        if (n == 0) {
                free(c);
                return 0;
        }
        *out = c;
        return n;
}

void ledger_committed(ledger_t *l, int32_t partition, int64_t offset) {
        ledger_part_t *p = ledger_part_get(l, partition);

        if (!p || offset != p->lp_sent_offset ||
            p->lp_acked_below >= p->lp_sent_below)
                return;
        l->l_held -= (size_t)(p->lp_sent_below - p->lp_acked_below);
        p->lp_acked_below = p->lp_sent_below;
}

void ledger_commit_failed(ledger_t *l, int32_t partition) {
        ledger_part_t *p = ledger_part_get(l, partition);

        if (p)
                p->lp_offered = -1;
}

void ledger_commit_failed_all(ledger_t *l) {
        for (size_t i = 0; i < l->l_parts_size; i++)
                if (l->l_parts[i])
                        l->l_parts[i]->lp_offered = -1;
}

void ledger_part_drain(ledger_part_t *p) {
        p->lp_draining = 1;
        p->lp_offered = -1;
}

int ledger_part_draining(const ledger_part_t *p) {
        return p->lp_draining;
}

int ledger_part_released(const ledger_part_t *p) {
        return p->lp_released;
}

size_t ledger_inflight(const ledger_t *l) {
        return l->l_inflight;
}

size_t ledger_held(const ledger_t *l) {
        return l->l_held;
}

size_t ledger_limit(const ledger_t *l) {
        return l->l_limit;
}

enum ledger_pressure ledger_pressure(const ledger_t *l, int paused) {
        size_t held = l->l_held > l->l_inflight ? l->l_held : l->l_inflight;

        if (!paused && held >= l->l_limit)
                return LEDGER_PAUSE;
        if (paused && held <= l->l_resume_at)
                return LEDGER_RESUME;
        return LEDGER_KEEP;
}

int ledger_commit_urgent(const ledger_t *l) {
        return l->l_held * 2 >= l->l_limit;
}

int ledger_commit_outstanding(const ledger_t *l) {
        for (size_t i = 0; i < l->l_parts_size; i++) {
                const ledger_part_t *p = l->l_parts[i];

                if (p && !p->lp_released &&
                    p->lp_sent_below > p->lp_acked_below)
                        return 1;
        }
        return 0;
}
