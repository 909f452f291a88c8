#include "dedupe.h"
#include "hash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One allocation a node: the header, the id and, once finished, what the
 * request ended with (the strings of struct dedupe_done, each
 * NUL-terminated, after the id). */
struct node {
        struct node *n_chain; /* bucket chain */
        struct node *n_older; /* finished list, towards the oldest */
        struct node *n_newer;
        uint64_t n_hash;
        void *n_leader; /* NULL once finished */
        int64_t n_finished_ms;
        int64_t n_source_offset;
        int32_t n_source_partition;
        int16_t n_status;
        int16_t n_smtp_code;
        int32_t n_attempts;
        char n_id[];
};

struct dedupe {
        struct node **d_buckets;
        size_t d_bucket_cnt; /* power of two */
        size_t d_size;
        size_t d_finished;
        size_t d_capacity;
        int64_t d_ttl_ms;
        struct node *d_oldest; /* finished nodes, oldest first */
        struct node *d_newest;
        struct dedupe_done d_scratch; /* what dedupe_claim() points to */
};

dedupe_t *dedupe_new(size_t capacity, int64_t ttl_ms) {
        dedupe_t *d = calloc(1, sizeof(*d));

        if (!d)
                return NULL;
        d->d_bucket_cnt = 1024;
        d->d_buckets = calloc(d->d_bucket_cnt, sizeof(*d->d_buckets));
        if (!d->d_buckets) {
                free(d);
                return NULL;
        }
        d->d_capacity = capacity;
        d->d_ttl_ms = ttl_ms;
        return d;
}

static struct node **dedupe_slot(dedupe_t *d, const char *id, uint64_t h) {
        struct node **pp = &d->d_buckets[h & (d->d_bucket_cnt - 1)];

        while (*pp && ((*pp)->n_hash != h || strcmp((*pp)->n_id, id) != 0))
                pp = &(*pp)->n_chain;
        return pp;
}

static void dedupe_grow(dedupe_t *d) {
        size_t n = d->d_bucket_cnt * 2;
        struct node **nb = calloc(n, sizeof(*nb));

        if (!nb)
                return; /* longer chains, still correct */
        for (size_t i = 0; i < d->d_bucket_cnt; i++) {
                struct node *x = d->d_buckets[i], *next;

                for (; x; x = next) {
                        next = x->n_chain;
                        x->n_chain = nb[x->n_hash & (n - 1)];
                        nb[x->n_hash & (n - 1)] = x;
                }
        }
        free(d->d_buckets);
        d->d_buckets = nb;
        d->d_bucket_cnt = n;
}

static void list_unlink(dedupe_t *d, struct node *x) {
        if (x->n_older)
                x->n_older->n_newer = x->n_newer;
        else
                d->d_oldest = x->n_newer;
        if (x->n_newer)
                x->n_newer->n_older = x->n_older;
        else
                d->d_newest = x->n_older;
        x->n_older = x->n_newer = NULL;
        d->d_finished--;
}

/* Unlinks and frees the node at @pp. */
static void dedupe_remove(dedupe_t *d, struct node **pp) {
        struct node *x = *pp;

        *pp = x->n_chain;
        if (!x->n_leader)
                list_unlink(d, x);
        d->d_size--;
        free(x);
}

/* Copies the next NUL-terminated string at *@pp into @dst and moves on. */
static void unpack_str(const char **pp, char *dst, size_t dst_size) {
        snprintf(dst, dst_size, "%s", *pp);
        *pp += strlen(*pp) + 1;
}

/* Drops finished ids past their time to live or over the capacity. */
static void dedupe_expire(dedupe_t *d, int64_t now_ms) {
        struct node *x;

        while ((x = d->d_oldest) != NULL &&
               (d->d_finished > d->d_capacity ||
                now_ms - x->n_finished_ms >= d->d_ttl_ms))
                dedupe_remove(d, dedupe_slot(d, x->n_id, x->n_hash));
}

enum dedupe_state dedupe_claim(dedupe_t *d, const char *id, void *leader,
                               int64_t now_ms, void **leader_out,
                               const struct dedupe_done **done) {
        uint64_t h = hash_fnv1a64_str(id);
        struct node **pp;
        struct node *x;

        dedupe_expire(d, now_ms);
        pp = dedupe_slot(d, id, h);
        x = *pp;
        if (x && x->n_leader) {
                *leader_out = x->n_leader;
                return DEDUPE_INFLIGHT;
        }
        if (x) {
                struct dedupe_done *o = &d->d_scratch;
                const char *p = x->n_id + strlen(x->n_id) + 1;

                o->status = x->n_status;
                o->smtp_code = x->n_smtp_code;
                o->attempts = x->n_attempts;
                o->source_partition = x->n_source_partition;
                o->source_offset = x->n_source_offset;
                unpack_str(&p, o->smtp_reply, sizeof(o->smtp_reply));
                unpack_str(&p, o->error, sizeof(o->error));
                unpack_str(&p, o->message_id, sizeof(o->message_id));
                unpack_str(&p, o->source_topic, sizeof(o->source_topic));
                *done = o;
                return DEDUPE_DONE;
        }
        x = calloc(1, sizeof(*x) + strlen(id) + 1);
        if (!x)
                return DEDUPE_NEW; /* not remembered: at worst a repeat is sent */
        memcpy(x->n_id, id, strlen(id) + 1);
        x->n_hash = h;
        x->n_leader = leader;
        *pp = x;
        d->d_size++;
        if (d->d_size > d->d_bucket_cnt)
                dedupe_grow(d);
        return DEDUPE_NEW;
}

void dedupe_finish(dedupe_t *d, const char *id, const struct dedupe_done *done,
                   int64_t now_ms) {
        struct node **pp = dedupe_slot(d, id, hash_fnv1a64_str(id));
        struct node *x = *pp;
        const char *parts[4] = {done->smtp_reply, done->error, done->message_id,
                                done->source_topic};
        size_t lens[4], total = 0, id_size;
        struct node *nx;
        char *q;

        if (!x || !x->n_leader)
                return;
        if (d->d_capacity == 0) {
                dedupe_remove(d, pp);
                return;
        }
        for (int i = 0; i < 4; i++) {
                lens[i] = strnlen(parts[i], 256) + 1;
                total += lens[i];
        }
        /* In flight, the node is in its bucket chain only: *pp is the one
         * pointer to it. */
        id_size = strlen(x->n_id) + 1;
        nx = realloc(x, sizeof(*x) + id_size + total);
        if (!nx) {
                dedupe_remove(d, pp);
                return;
        }
        x = *pp = nx;
        q = x->n_id + id_size;
        for (int i = 0; i < 4; i++) {
                memcpy(q, parts[i], lens[i] - 1);
                q[lens[i] - 1] = '\0';
                q += lens[i];
        }
        x->n_status = (int16_t)done->status;
        x->n_smtp_code = (int16_t)done->smtp_code;
        x->n_attempts = (int32_t)done->attempts;
        x->n_source_partition = done->source_partition;
        x->n_source_offset = done->source_offset;
        x->n_leader = NULL;
        x->n_finished_ms = now_ms;
        x->n_older = d->d_newest;
        if (d->d_newest)
                d->d_newest->n_newer = x;
        else
                d->d_oldest = x;
        d->d_newest = x;
        d->d_finished++;
        dedupe_expire(d, now_ms);
}

void dedupe_remember(dedupe_t *d, const char *id,
                     const struct dedupe_done *done, int64_t now_ms) {
        const struct dedupe_done *known;
        void *leader;

        /* The table itself stands in as the leader for the moment between
         * the two calls. */
        if (dedupe_claim(d, id, d, now_ms, &leader, &known) == DEDUPE_NEW)
                dedupe_finish(d, id, done, now_ms);
}

void dedupe_release(dedupe_t *d, const char *id) {
        struct node **pp = dedupe_slot(d, id, hash_fnv1a64_str(id));

        if (*pp && (*pp)->n_leader)
                dedupe_remove(d, pp);
}

size_t dedupe_size(const dedupe_t *d) {
        return d->d_size;
}

void dedupe_destroy(dedupe_t *d) {
        if (!d)
                return;
        for (size_t i = 0; i < d->d_bucket_cnt; i++) {
                struct node *x = d->d_buckets[i], *next;

                for (; x; x = next) {
                        next = x->n_chain;
                        free(x);
                }
        }
        free(d->d_buckets);
        free(d);
}
