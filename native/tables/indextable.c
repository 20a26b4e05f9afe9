/* Receiver index table: open addressing, linear probing, tombstones, and
 * rebuild-and-publish for the one writer while readers look up without
 * locks. See dp_tables.h for the bounds and the concurrency contract. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "dp_tables.h"

#define CACHE_LINE 64
#define EMPTY 0u
#define TOMBSTONE 0xffffffffu
/* Rebuild when entries and tombstones pass 5/8 of the array; at that load
 * linear probing's longest run stays far below DP_INDEX_PROBE_LIMIT. */
#define CROWDED_NUM 5
#define CROWDED_DEN 8
#define REBUILD_SEEDS 4

_Static_assert(DP_INDEX_VALUE_MAX == TOMBSTONE - 1, "values stop below the tombstone");

/* One array. An entry is index | value << 32; value EMPTY is a never-used
 * entry (a probe stops there), TOMBSTONE a removed one (a probe goes on). */
struct slots {
    uint32_t mask;
    uint32_t seed;
    _Atomic uint32_t max_probe;
    uint64_t retired_epoch;
    struct slots *next_retired;
    _Alignas(CACHE_LINE) _Atomic uint64_t e[];
};

struct dp_index_table {
    struct slots *_Atomic cur;
    uint32_t log2;
    uint32_t used, tombstones, rebuilds;
    struct slots *limbo;
    struct dp_index_reclaim reclaim;
    int has_reclaim;
};

static inline uint64_t entry(uint32_t index, uint32_t value)
{
    return (uint64_t)value << 32 | index;
}

/* murmur3's finaliser: a bijection that spreads runs of indices (1, 2, 3,
 * ...) over the whole array. The seed is random per array. */
static inline uint32_t home(const struct slots *s, uint32_t index)
{
    uint32_t h = index ^ s->seed;

    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h & s->mask;
}

static uint32_t random_seed(void)
{
    uint32_t seed;

    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
        seed = (uint32_t)(uintptr_t)&seed * 2654435761u;
    return seed;
}

static struct slots *slots_new(uint32_t log2)
{
    size_t n = (size_t)1 << log2, bytes = sizeof(struct slots) + n * sizeof(uint64_t);
    struct slots *s = aligned_alloc(CACHE_LINE, (bytes + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1));

    if (!s)
        return NULL;
    memset(s, 0, bytes);
    s->mask = (uint32_t)(n - 1);
    s->seed = random_seed();
    return s;
}

static size_t slots_bytes(uint32_t log2)
{
    size_t bytes = sizeof(struct slots) + ((size_t)1 << log2) * sizeof(uint64_t);

    return (bytes + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1);
}

struct dp_index_table *dp_index_table_new(uint32_t log2, const struct dp_index_reclaim *reclaim)
{
    struct dp_index_table *t;

    if (log2 < DP_INDEX_LOG2_MIN || log2 > DP_INDEX_LOG2_MAX)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->log2 = log2;
    if (reclaim && reclaim->retire && reclaim->passed) {
        t->reclaim = *reclaim;
        t->has_reclaim = 1;
    }
    atomic_store_explicit(&t->cur, slots_new(log2), memory_order_release);
    if (!atomic_load_explicit(&t->cur, memory_order_relaxed)) {
        free(t);
        return NULL;
    }
    return t;
}

void dp_index_table_free(struct dp_index_table *t)
{
    if (!t)
        return;
    while (t->limbo) {
        struct slots *s = t->limbo;

        t->limbo = s->next_retired;
        free(s);
    }
    free(atomic_load_explicit(&t->cur, memory_order_relaxed));
    free(t);
}

uint32_t dp_index_table_lookup(const struct dp_index_table *t, uint32_t index)
{
    const struct slots *s;
    uint32_t i, n;

    if (!t)
        return 0;
    s = atomic_load_explicit(&t->cur, memory_order_acquire);
    i = home(s, index);
    n = atomic_load_explicit(&s->max_probe, memory_order_acquire);
    for (uint32_t k = 0; k <= n; k++, i = (i + 1) & s->mask) {
        uint64_t w = atomic_load_explicit(&s->e[i], memory_order_acquire);
        uint32_t v = (uint32_t)(w >> 32);

        if (v == EMPTY)
            return 0;
        if ((uint32_t)w == index && v != TOMBSTONE)
            return v;
    }
    return 0;
}

/* Writer: the position of index in s, or -1. */
static int64_t find(const struct slots *s, uint32_t index)
{
    uint32_t i = home(s, index), n = atomic_load_explicit(&s->max_probe, memory_order_relaxed);

    for (uint32_t k = 0; k <= n; k++, i = (i + 1) & s->mask) {
        uint64_t w = atomic_load_explicit(&s->e[i], memory_order_relaxed);
        uint32_t v = (uint32_t)(w >> 32);

        if (v == EMPTY)
            return -1;
        if ((uint32_t)w == index && v != TOMBSTONE)
            return i;
    }
    return -1;
}

/* Writer: where index would go (the first empty or tombstone entry of its
 * run) and how far that is from its home, or -1 past the probe limit. */
static int64_t place(const struct slots *s, uint32_t index, uint32_t *distance)
{
    uint32_t i = home(s, index);

    for (uint32_t k = 0; k <= DP_INDEX_PROBE_LIMIT; k++, i = (i + 1) & s->mask) {
        uint32_t v = (uint32_t)(atomic_load_explicit(&s->e[i], memory_order_relaxed) >> 32);

        if (v == EMPTY || v == TOMBSTONE) {
            *distance = k;
            return i;
        }
    }
    return -1;
}

static void retire_slots(struct dp_index_table *t, struct slots *old)
{
    if (!t->has_reclaim) {
        free(old);
        return;
    }
    old->retired_epoch = t->reclaim.retire(t->reclaim.ctx);
    old->next_retired = t->limbo;
    t->limbo = old;
}

/* Copy every stored index into a fresh array without tombstones, under a
 * fresh seed (another one if some index would land past the probe limit),
 * and publish it. */
static int rebuild(struct dp_index_table *t)
{
    struct slots *old = atomic_load_explicit(&t->cur, memory_order_relaxed);

    for (int attempt = 0; attempt < REBUILD_SEEDS; attempt++) {
        struct slots *s = slots_new(t->log2);
        uint32_t longest = 0;
        int fits = 1;

        if (!s)
            return -DP_TABLES_ENOMEM;
        for (uint32_t i = 0; i <= old->mask && fits; i++) {
            uint64_t w = atomic_load_explicit(&old->e[i], memory_order_relaxed);
            uint32_t v = (uint32_t)(w >> 32), distance;
            int64_t at;

            if (v == EMPTY || v == TOMBSTONE)
                continue;
            at = place(s, (uint32_t)w, &distance);
            if (at < 0) {
                fits = 0;
                break;
            }
            atomic_store_explicit(&s->e[at], w, memory_order_relaxed);
            if (distance > longest)
                longest = distance;
        }
        if (!fits) {
            free(s);
            continue;
        }
        atomic_store_explicit(&s->max_probe, longest, memory_order_relaxed);
        atomic_store_explicit(&t->cur, s, memory_order_release);
        t->tombstones = 0;
        t->rebuilds++;
        retire_slots(t, old);
        dp_index_table_reclaim(t);
        return 0;
    }
    return -DP_TABLES_ENOSPC;
}

int dp_index_table_insert(struct dp_index_table *t, uint32_t index, uint32_t value)
{
    struct slots *s;
    uint32_t distance, entries;
    int64_t at;
    int err;

    if (!t || index == 0 || value == EMPTY || value > DP_INDEX_VALUE_MAX)
        return -DP_TABLES_EINVAL;
    s = atomic_load_explicit(&t->cur, memory_order_relaxed);
    if (find(s, index) >= 0)
        return -DP_TABLES_EEXIST;
    entries = s->mask + 1;
    if (t->used >= entries / 2)
        return -DP_TABLES_ENOSPC;
    if ((uint64_t)(t->used + t->tombstones + 1) * CROWDED_DEN > (uint64_t)entries * CROWDED_NUM) {
        err = rebuild(t);
        if (err)
            return err;
        s = atomic_load_explicit(&t->cur, memory_order_relaxed);
    }
    at = place(s, index, &distance);
    if (at < 0) {
        /* a run this long under a half-full array: try another seed */
        err = rebuild(t);
        if (err)
            return err;
        s = atomic_load_explicit(&t->cur, memory_order_relaxed);
        at = place(s, index, &distance);
        if (at < 0)
            return -DP_TABLES_ENOSPC;
    }
    if ((uint32_t)(atomic_load_explicit(&s->e[at], memory_order_relaxed) >> 32) == TOMBSTONE)
        t->tombstones--;
    /* Readers may stop early until the entry is published; never late. */
    if (distance > atomic_load_explicit(&s->max_probe, memory_order_relaxed))
        atomic_store_explicit(&s->max_probe, distance, memory_order_release);
    atomic_store_explicit(&s->e[at], entry(index, value), memory_order_release);
    t->used++;
    return 0;
}

/* Where index is, if its value is `expected` (0: any value); -1 if not. */
static int64_t find_expected(struct slots *s, uint32_t index, uint32_t expected)
{
    int64_t at = index ? find(s, index) : -1;

    if (at >= 0 && expected &&
        (uint32_t)(atomic_load_explicit(&s->e[at], memory_order_relaxed) >> 32) != expected)
        return -1;
    return at;
}

int dp_index_table_replace(struct dp_index_table *t, uint32_t index, uint32_t expected,
                           uint32_t value)
{
    struct slots *s;
    int64_t at;

    if (!t || value == EMPTY || value > DP_INDEX_VALUE_MAX)
        return -DP_TABLES_EINVAL;
    s = atomic_load_explicit(&t->cur, memory_order_relaxed);
    at = find_expected(s, index, expected);
    if (at < 0)
        return -DP_TABLES_ENOENT;
    atomic_store_explicit(&s->e[at], entry(index, value), memory_order_release);
    return 0;
}

int dp_index_table_remove(struct dp_index_table *t, uint32_t index, uint32_t expected)
{
    struct slots *s;
    int64_t at;

    if (!t)
        return -DP_TABLES_EINVAL;
    s = atomic_load_explicit(&t->cur, memory_order_relaxed);
    at = find_expected(s, index, expected);
    if (at < 0)
        return -DP_TABLES_ENOENT;
    /* The index bits go too: a tombstone matches no lookup (0 is never
     * stored). */
    atomic_store_explicit(&s->e[at], entry(0, TOMBSTONE), memory_order_release);
    t->used--;
    t->tombstones++;
    return 0;
}

int dp_index_table_reclaim(struct dp_index_table *t)
{
    struct slots **pp;
    int waiting = 0;

    if (!t)
        return 0;
    pp = &t->limbo;
    while (*pp) {
        struct slots *s = *pp;

        if (t->reclaim.passed(t->reclaim.ctx, s->retired_epoch)) {
            *pp = s->next_retired;
            free(s);
        } else {
            pp = &s->next_retired;
            waiting++;
        }
    }
    return waiting;
}

void dp_index_table_stats(const struct dp_index_table *t, struct dp_index_table_stats *out)
{
    const struct slots *s;

    if (!t || !out)
        return;
    s = atomic_load_explicit(&t->cur, memory_order_relaxed);
    memset(out, 0, sizeof(*out));
    out->used = t->used;
    out->entries = s->mask + 1;
    out->capacity = out->entries / 2;
    out->tombstones = t->tombstones;
    out->max_probe = atomic_load_explicit(&s->max_probe, memory_order_relaxed);
    out->rebuilds = t->rebuilds;
    out->bytes = sizeof(*t) + slots_bytes(t->log2);
    for (const struct slots *r = t->limbo; r; r = r->next_retired)
        out->bytes += slots_bytes(t->log2);
}
