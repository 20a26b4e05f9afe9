/* Anti-replay window: a ring bitmap as in RFC 6479, sized per window (8192
 * bits as WireGuard sizes it, by default). See dp_tables.h for what is
 * accepted. */
#include <string.h>

#include "dp_tables.h"

_Static_assert(DP_REPLAY_REJECT_AFTER_MESSAGES == UINT64_MAX - 8192,
               "WireGuard's REJECT_AFTER_MESSAGES is 2^64 - 2^13 - 1");
_Static_assert((DP_REPLAY_BITS_MIN & (DP_REPLAY_BITS_MIN - 1)) == 0 &&
                   (DP_REPLAY_BITS_MAX & (DP_REPLAY_BITS_MAX - 1)) == 0 &&
                   DP_REPLAY_BITS_MIN >= 2 * DP_REPLAY_WORD_BITS,
               "window sizes are powers of two of at least two words (one is the spare)");

#define WORD_SHIFT 6 /* log2(DP_REPLAY_WORD_BITS) */

static int bits_valid(uint32_t bits)
{
    return bits >= DP_REPLAY_BITS_MIN && bits <= DP_REPLAY_BITS_MAX && !(bits & (bits - 1));
}

size_t dp_replay_size(uint32_t bits)
{
    return bits_valid(bits) ? sizeof(struct dp_replay) + bits / 8 : 0;
}

uint64_t dp_replay_window(uint32_t bits)
{
    return bits_valid(bits) ? bits - DP_REPLAY_WORD_BITS : 0;
}

int dp_replay_init(struct dp_replay *r, uint32_t bits)
{
    if (!r || !bits_valid(bits))
        return -DP_TABLES_EINVAL;
    r->words = bits / DP_REPLAY_WORD_BITS;
    dp_replay_reset(r);
    return 0;
}

void dp_replay_reset(struct dp_replay *r)
{
    if (!r)
        return;
    r->counter = 0;
    r->reserved = 0;
    memset(r->bitmap, 0, r->words * sizeof(r->bitmap[0]));
}

int dp_replay_check(struct dp_replay *r, uint64_t counter)
{
    if (__builtin_expect(!r || counter >= DP_REPLAY_REJECT_AFTER_MESSAGES, 0))
        return 0;

    const uint64_t words = r->words, ring_mask = words - 1;
    const uint64_t window = words * DP_REPLAY_WORD_BITS - DP_REPLAY_WORD_BITS;
    /* Work in "counter + 1" so that r->counter == 0 can mean "nothing seen"
     * and counter 0 still lands above it. No overflow: counter is below the
     * reject limit. */
    uint64_t next = counter + 1;
    if (__builtin_expect(next + window < r->counter, 0))
        return 0; /* more than the window below the highest */

    uint64_t word = next >> WORD_SHIFT;
    if (next > r->counter) {
        /* New highest: the words between the old highest and this one now
         * stand for counters nobody has sent yet. Clearing the whole ring at
         * most bounds the work of a huge jump. */
        uint64_t current = r->counter >> WORD_SHIFT;
        uint64_t skipped = word - current;
        if (skipped > words)
            skipped = words;
        for (uint64_t i = 1; i <= skipped; i++)
            r->bitmap[(current + i) & ring_mask] = 0;
        r->counter = next;
    }

    uint64_t bit = (uint64_t)1 << (next & (DP_REPLAY_WORD_BITS - 1));
    uint64_t *slot = &r->bitmap[word & ring_mask];
    if (*slot & bit)
        return 0; /* seen before */
    *slot |= bit;
    return 1;
}
