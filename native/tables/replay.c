/* Anti-replay window: a ring bitmap as in RFC 6479, sized as WireGuard
 * sizes it. See dp_tables.h for what is accepted. */
#include <string.h>

#include "dp_tables.h"

_Static_assert(DP_REPLAY_BITMAP_WORDS * DP_REPLAY_WORD_BITS == DP_REPLAY_BITMAP_BITS,
               "bitmap words and bits disagree");
_Static_assert((DP_REPLAY_BITMAP_WORDS & (DP_REPLAY_BITMAP_WORDS - 1)) == 0,
               "the ring index is masked, so its length must be a power of two");
_Static_assert(DP_REPLAY_WINDOW == DP_REPLAY_BITMAP_BITS - DP_REPLAY_WORD_BITS,
               "one word of the ring is the spare that a jump clears");
_Static_assert(DP_REPLAY_REJECT_AFTER_MESSAGES == UINT64_MAX - 8192,
               "WireGuard's REJECT_AFTER_MESSAGES is 2^64 - 2^13 - 1");

#define WORD_SHIFT 6 /* log2(DP_REPLAY_WORD_BITS) */
#define RING_MASK (DP_REPLAY_BITMAP_WORDS - 1)

void dp_replay_init(struct dp_replay *r)
{
    if (r)
        memset(r, 0, sizeof(*r));
}

int dp_replay_check(struct dp_replay *r, uint64_t counter)
{
    if (__builtin_expect(!r || counter >= DP_REPLAY_REJECT_AFTER_MESSAGES, 0))
        return 0;

    /* Work in "counter + 1" so that r->counter == 0 can mean "nothing seen"
     * and counter 0 still lands above it. No overflow: counter is below the
     * reject limit. */
    uint64_t next = counter + 1;
    if (__builtin_expect(next + DP_REPLAY_WINDOW < r->counter, 0))
        return 0; /* more than DP_REPLAY_WINDOW below the highest */

    uint64_t word = next >> WORD_SHIFT;
    if (next > r->counter) {
        /* New highest: the words between the old highest and this one now
         * stand for counters nobody has sent yet. Clearing the whole ring at
         * most bounds the work of a huge jump. */
        uint64_t current = r->counter >> WORD_SHIFT;
        uint64_t skipped = word - current;
        if (skipped > DP_REPLAY_BITMAP_WORDS)
            skipped = DP_REPLAY_BITMAP_WORDS;
        for (uint64_t i = 1; i <= skipped; i++)
            r->bitmap[(current + i) & RING_MASK] = 0;
        r->counter = next;
    }

    uint64_t bit = (uint64_t)1 << (next & (DP_REPLAY_WORD_BITS - 1));
    uint64_t *slot = &r->bitmap[word & RING_MASK];
    if (*slot & bit)
        return 0; /* seen before */
    *slot |= bit;
    return 1;
}
