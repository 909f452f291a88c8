/*
 * offsets: one partition's out-of-order completion turned into a committable
 * watermark. Offsets are tracked in the increasing order the consumer sees
 * them (gaps allowed); they complete in any order; the committable offset is
 * the lowest offset not yet done (or one past the last tracked offset when all
 * are done), which is what Kafka expects to be committed.
 */
#ifndef KM_OFFSETS_H
#define KM_OFFSETS_H

#include <stdint.h>
#include <stddef.h>

typedef struct offsets offsets_t;

offsets_t *offsets_new(void);
void offsets_destroy(offsets_t *o);

/* Starts tracking @offset, which must be greater than any tracked before.
 * @returns 0, or -1 when @offset is not increasing (it is then ignored). */
int offsets_track(offsets_t *o, int64_t offset);

/* As offsets_track(), with a @tag the caller attaches to @offset (-1 when
 * none); offsets_front_tag() returns it while @offset is the committable
 * one. The worker tags each request with how far the results topic had got
 * when it was consumed. */
int offsets_track_tag(offsets_t *o, int64_t offset, int64_t tag);

/* Marks a tracked @offset done. @returns 0, or -1 when it is not tracked
 * or already done. */
int offsets_done(offsets_t *o, int64_t offset);

/* @returns the offset to commit (next to consume), or -1 when nothing has
 * been tracked yet. Does not change with repeated calls. */
int64_t offsets_committable(const offsets_t *o);

/* @returns the tag of the committable offset while it is tracked and not
 * done, or -1 when every tracked offset is done (or none was tracked). */
int64_t offsets_front_tag(const offsets_t *o);

/* @returns the number of tracked offsets not yet done. */
size_t offsets_pending(const offsets_t *o);

/* @returns how many offsets were tracked since the tracker was created. */
uint64_t offsets_tracked(const offsets_t *o);

/* @returns how many tracked offsets lie below the committable offset (done,
 * and passed by the watermark). Committing the watermark covers exactly
 * these. */
uint64_t offsets_below_watermark(const offsets_t *o);

#endif
