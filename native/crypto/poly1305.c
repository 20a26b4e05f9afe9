/* Poly1305 (RFC 8439 section 2.5), portable reference: three limbs of
 * 44/44/42 bits and 64x64->128 multiplies. Constant time: no branch or
 * index depends on the key or the data. */
#include "crypto_internal.h"

typedef unsigned __int128 u128;

#define MASK44 0xfffffffffffULL
#define MASK42 0x3ffffffffffULL

void dp_poly1305_init(struct dp_poly1305_state *st, const uint8_t key[32])
{
    uint64_t t0 = load64_le(key), t1 = load64_le(key + 8);

    /* r &= 0xffffffc0ffffffc0ffffffc0fffffff (clamp) */
    st->r[0] = t0 & 0xffc0fffffffULL;
    st->r[1] = ((t0 >> 44) | (t1 << 20)) & 0xfffffc0ffffULL;
    st->r[2] = (t1 >> 24) & 0x00ffffffc0fULL;
    st->h[0] = st->h[1] = st->h[2] = 0;
    st->s[0] = load64_le(key + 16);
    st->s[1] = load64_le(key + 24);
}

void dp_poly1305_blocks(struct dp_poly1305_state *st, const uint8_t *p, size_t blocks)
{
    const uint64_t hibit = 1ULL << 40; /* 2^128 in the top limb */
    uint64_t r0 = st->r[0], r1 = st->r[1], r2 = st->r[2];
    uint64_t s1 = r1 * (5 << 2), s2 = r2 * (5 << 2);
    uint64_t h0 = st->h[0], h1 = st->h[1], h2 = st->h[2];

    while (blocks--) {
        uint64_t t0 = load64_le(p), t1 = load64_le(p + 8);
        u128 d0, d1, d2;
        uint64_t c;

        h0 += t0 & MASK44;
        h1 += ((t0 >> 44) | (t1 << 20)) & MASK44;
        h2 += ((t1 >> 24) & MASK42) | hibit;

        d0 = (u128)h0 * r0 + (u128)h1 * s2 + (u128)h2 * s1;
        d1 = (u128)h0 * r1 + (u128)h1 * r0 + (u128)h2 * s2;
        d2 = (u128)h0 * r2 + (u128)h1 * r1 + (u128)h2 * r0;

        c = (uint64_t)(d0 >> 44);
        h0 = (uint64_t)d0 & MASK44;
        d1 += c;
        c = (uint64_t)(d1 >> 44);
        h1 = (uint64_t)d1 & MASK44;
        d2 += c;
        c = (uint64_t)(d2 >> 42);
        h2 = (uint64_t)d2 & MASK42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= MASK44;
        h1 += c;
        p += POLY1305_BLOCK_BYTES;
    }
    st->h[0] = h0;
    st->h[1] = h1;
    st->h[2] = h2;
}

void dp_poly1305_finish(struct dp_poly1305_state *st, uint8_t tag[16])
{
    uint64_t h0 = st->h[0], h1 = st->h[1], h2 = st->h[2];
    uint64_t c, g0, g1, g2, mask, t0, t1;

    /* full carry */
    c = h1 >> 44; h1 &= MASK44;
    h2 += c; c = h2 >> 42; h2 &= MASK42;
    h0 += c * 5; c = h0 >> 44; h0 &= MASK44;
    h1 += c; c = h1 >> 44; h1 &= MASK44;
    h2 += c; c = h2 >> 42; h2 &= MASK42;
    h0 += c * 5; c = h0 >> 44; h0 &= MASK44;
    h1 += c;

    /* g = h + 5 - 2^130; take g if it did not borrow */
    g0 = h0 + 5; c = g0 >> 44; g0 &= MASK44;
    g1 = h1 + c; c = g1 >> 44; g1 &= MASK44;
    g2 = h2 + c - (1ULL << 42);
    mask = (g2 >> 63) - 1; /* all ones when no borrow */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    h2 = (h2 & ~mask) | (g2 & mask);

    /* h + s mod 2^128 */
    t0 = st->s[0];
    t1 = st->s[1];
    h0 += t0 & MASK44; c = h0 >> 44; h0 &= MASK44;
    h1 += (((t0 >> 44) | (t1 << 20)) & MASK44) + c; c = h1 >> 44; h1 &= MASK44;
    h2 += ((t1 >> 24) & MASK42) + c;

    store64_le(tag, h0 | (h1 << 44));
    store64_le(tag + 8, (h1 >> 20) | (h2 << 24));
    dp_wipe(st, sizeof(*st));
}

void dp_poly1305_jobs_portable(const struct dp_poly1305_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct dp_poly1305_state st;

        dp_poly1305_init(&st, jobs[i].key);
        for (unsigned s = 0; s < jobs[i].nsegs; s++)
            dp_poly1305_blocks(&st, jobs[i].seg[s].p, jobs[i].seg[s].blocks);
        dp_poly1305_finish(&st, jobs[i].tag);
    }
}
