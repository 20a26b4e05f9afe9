/* libFuzzer harness for the anti-replay window (native/tables/replay.c)
 * against a reference model written from its contract in dp_tables.h: a
 * counter is accepted when it is below the reject limit, was not accepted
 * before, and is at most `bits - 64` below the highest accepted so far
 * (anything above the highest is new).
 *
 * Input: the first byte picks the window (1024 << 0..3 bits) and whether
 * the window is reset halfway; then 9-byte operations: a kind byte and 8
 * bytes of value, giving a counter a little above the highest, a little or
 * far below it (around the window's edge), anywhere, or near the reject
 * limit. The model keeps every counter it accepted within reach of the
 * window in a hash set; the window's answer must be the model's, each
 * time. Any difference aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_tables.h"

#define SET_SLOTS 65536 /* > the operations an input holds (4096 / 9) many times */

struct model {
    uint64_t window;
    int have;
    uint64_t highest;
    uint64_t used[SET_SLOTS];
    uint8_t full[SET_SLOTS];
};

static uint32_t slot_of(uint64_t c)
{
    c ^= c >> 33;
    c *= 0xff51afd7ed558ccdULL;
    c ^= c >> 33;
    return (uint32_t)(c & (SET_SLOTS - 1));
}

static int seen(const struct model *m, uint64_t c)
{
    for (uint32_t s = slot_of(c); m->full[s]; s = (s + 1) & (SET_SLOTS - 1))
        if (m->used[s] == c)
            return 1;
    return 0;
}

static void remember(struct model *m, uint64_t c)
{
    uint32_t s = slot_of(c);

    while (m->full[s])
        s = (s + 1) & (SET_SLOTS - 1);
    m->full[s] = 1;
    m->used[s] = c;
}

static int model_check(struct model *m, uint64_t c)
{
    if (c >= DP_REPLAY_REJECT_AFTER_MESSAGES)
        return 0;
    if (m->have && c <= m->highest && (m->highest - c > m->window || seen(m, c)))
        return 0;
    if (!m->have || c > m->highest)
        m->highest = c;
    m->have = 1;
    remember(m, c);
    return 1;
}

static void model_reset(struct model *m)
{
    m->have = 0;
    m->highest = 0;
    memset(m->full, 0, sizeof(m->full));
}

static struct model model;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint64_t storage[(sizeof(struct dp_replay) + DP_REPLAY_BITS_MAX / 8) / 8 + 1];
    struct dp_replay *r = (struct dp_replay *)storage;
    uint32_t bits;
    size_t ops, reset_at;

    if (size < 1)
        return 0;
    bits = DP_REPLAY_BITS_MIN << (data[0] & 3);
    if (dp_replay_size(bits) > sizeof(storage) || dp_replay_init(r, bits) != 0)
        abort();
    model.window = dp_replay_window(bits);
    if (model.window != bits - 64)
        abort();
    model_reset(&model);
    ops = (size - 1) / 9;
    reset_at = data[0] & 4 ? ops / 2 : SIZE_MAX;
    for (size_t i = 0; i < ops; i++) {
        const uint8_t *op = data + 1 + 9 * i;
        uint64_t v, c, base = model.have ? model.highest : 0;

        if (i == reset_at) {
            dp_replay_reset(r);
            model_reset(&model);
            base = 0;
        }
        memcpy(&v, op + 1, 8);
        switch (op[0] & 7) {
        case 0: /* just above the highest */
            c = base + (v & 0xff);
            break;
        case 1: /* below it, around the window's edge */
            c = base - (v % (model.window + 130));
            break;
        case 2: /* far below */
            c = base - (v & 0xffffff);
            break;
        case 3: /* a jump forward past the whole ring */
            c = base + (v & 0xffff);
            break;
        case 4: /* near the reject limit */
            c = DP_REPLAY_REJECT_AFTER_MESSAGES - 64 + (v & 0x7f);
            break;
        default:
            c = v;
        }
        if (dp_replay_check(r, c) != model_check(&model, c))
            abort();
    }
    return 0;
}
