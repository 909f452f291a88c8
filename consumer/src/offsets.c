#include "offsets.h"

#include <stdlib.h>
#include <string.h>

/*
 * A ring buffer of (offset, done) entries in increasing offset order. The
 * front entry is never done: done entries are popped off the front as soon
 * as they reach it, so the committable offset is the front's offset. Offsets
 * are sorted, so offsets_done() finds its entry by binary search.
 */

#define OFFSETS_INITIAL_CAP 64 /* a power of two */

struct offsets_entry {
        int64_t off;
        int64_t tag; /* the caller's, given at offsets_track_tag() */
        int done;
};

struct offsets {
        struct offsets_entry *o_ring;
        size_t o_cap; /* a power of two */
        size_t o_head; /* index of the front entry */
        size_t o_cnt; /* entries in the ring */
        size_t o_pending; /* entries not done */
        uint64_t o_tracked; /* offsets tracked since creation */
        int64_t o_last; /* last offset tracked, -1 before any */
};

offsets_t *offsets_new(void) {
        offsets_t *o;

        o = calloc(1, sizeof(*o));
        if (!o)
                return NULL;
        o->o_ring = calloc(OFFSETS_INITIAL_CAP, sizeof(*o->o_ring));
        if (!o->o_ring) {
                free(o);
                return NULL;
        }
        o->o_cap = OFFSETS_INITIAL_CAP;
        o->o_last = -1;
        return o;
}

void offsets_destroy(offsets_t *o) {
        if (!o)
                return;
        free(o->o_ring);
        free(o);
}

static struct offsets_entry *offsets_at(const offsets_t *o, size_t i) {
        return &o->o_ring[(o->o_head + i) & (o->o_cap - 1)];
}

/* Doubles the ring, unwrapping it so the front is at index 0.
 * @returns 0 or -1 when out of memory. */
static int offsets_grow(offsets_t *o) {
        struct offsets_entry *ring;
        size_t cap = o->o_cap * 2;
        size_t first;

        if (cap < o->o_cap || cap > SIZE_MAX / sizeof(*ring))
                return -1;
        ring = malloc(cap * sizeof(*ring));
        if (!ring)
                return -1;
        first = o->o_cap - o->o_head;
        if (first > o->o_cnt)
                first = o->o_cnt;
        memcpy(ring, o->o_ring + o->o_head, first * sizeof(*ring));
        memcpy(ring + first, o->o_ring, (o->o_cnt - first) * sizeof(*ring));
        free(o->o_ring);
        o->o_ring = ring;
        o->o_cap = cap;
        o->o_head = 0;
        return 0;
}

/* Offsets below 0 are not Kafka offsets; INT64_MAX has no next offset to
 * commit. Both are refused, as is running out of memory. */
int offsets_track(offsets_t *o, int64_t offset) {
        return offsets_track_tag(o, offset, -1);
}

int offsets_track_tag(offsets_t *o, int64_t offset, int64_t tag) {
        struct offsets_entry *e;

        if (offset <= o->o_last || offset < 0 || offset == INT64_MAX)
                return -1;
        if (o->o_cnt == o->o_cap && offsets_grow(o) == -1)
                return -1;
        e = offsets_at(o, o->o_cnt);
        e->off = offset;
        e->tag = tag;
        e->done = 0;
        o->o_cnt++;
        o->o_pending++;
        o->o_tracked++;
        o->o_last = offset;
        return 0;
}

int offsets_done(offsets_t *o, int64_t offset) {
        struct offsets_entry *e;
        size_t lo = 0, hi = o->o_cnt;

        /* First entry whose offset is >= @offset. */
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (offsets_at(o, mid)->off < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == o->o_cnt)
                return -1;
        e = offsets_at(o, lo);
        if (e->off != offset || e->done)
                return -1;
        e->done = 1;
        o->o_pending--;
        while (o->o_cnt > 0 && offsets_at(o, 0)->done) {
                o->o_head = (o->o_head + 1) & (o->o_cap - 1);
                o->o_cnt--;
        }
        return 0;
}

int64_t offsets_committable(const offsets_t *o) {
        if (o->o_cnt > 0)
                return offsets_at(o, 0)->off;
        if (o->o_last < 0)
                return -1;
        return o->o_last + 1;
}

int64_t offsets_front_tag(const offsets_t *o) {
        return o->o_cnt > 0 ? offsets_at(o, 0)->tag : -1;
}

size_t offsets_pending(const offsets_t *o) {
        return o->o_pending;
}

uint64_t offsets_tracked(const offsets_t *o) {
        return o->o_tracked;
}

uint64_t offsets_below_watermark(const offsets_t *o) {
        return o->o_tracked - o->o_cnt;
}
