/* Shared between the crypto implementations; not part of the API. */
#ifndef DP_CRYPTO_INTERNAL_H
#define DP_CRYPTO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dp_crypto.h"

#define CHACHA20_BLOCK_BYTES 64
#define POLY1305_BLOCK_BYTES 16
#define POLY1305_KEY_BYTES 32

static inline uint32_t load32_le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t load64_le(const uint8_t *p)
{
    return (uint64_t)load32_le(p) | (uint64_t)load32_le(p + 4) << 32;
}

static inline void store32_le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void store64_le(uint8_t *p, uint64_t v)
{
    store32_le(p, (uint32_t)v);
    store32_le(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t rotl32(uint32_t v, int c)
{
    return (v << c) | (v >> (32 - c));
}

/* A run of ChaCha20 keystream: dst = src XOR keystream(key, nonce, counter..)
 * for len bytes; with src == NULL, dst receives the raw keystream.
 * With head set, the block at `counter` first gives head_len (<= 64) bytes
 * of raw keystream to head, and the data starts one block later: the AEAD's
 * Poly1305 key and its message in one run of consecutive blocks. */
struct dp_chacha20_job {
    const uint8_t *src;
    uint8_t *dst;
    size_t len;
    uint8_t *head;
    uint32_t head_len;
    uint32_t key[8];
    uint32_t counter;
    uint32_t nonce[3];
};

static inline size_t dp_chacha20_job_blocks(const struct dp_chacha20_job *j)
{
    return (j->head ? 1 : 0) + (j->len + CHACHA20_BLOCK_BYTES - 1) / CHACHA20_BLOCK_BYTES;
}

/* One Poly1305 MAC over up to POLY1305_MAX_SEGS runs of whole 16-byte
 * blocks (every block gets the 2^128 bit, as in the AEAD construction where
 * everything is padded). key is the 32-byte one-time key r || s. */
#define POLY1305_MAX_SEGS 5
struct dp_poly1305_seg {
    const uint8_t *p;
    size_t blocks;
};
struct dp_poly1305_job {
    const uint8_t *key;
    uint8_t *tag;
    unsigned nsegs;
    struct dp_poly1305_seg seg[POLY1305_MAX_SEGS];
};

typedef void dp_chacha20_jobs_fn(const struct dp_chacha20_job *jobs, size_t n);
typedef void dp_poly1305_jobs_fn(const struct dp_poly1305_job *jobs, size_t n);

struct dp_crypto_impl_ops {
    const char *name;
    dp_chacha20_jobs_fn *chacha20_jobs;
    dp_poly1305_jobs_fn *poly1305_jobs;
};

/* Portable reference pieces, used by every implementation for odd ends. */
void dp_chacha20_block(const uint32_t key[8], uint32_t counter,
                       const uint32_t nonce[3], uint8_t out[64]);
void dp_hchacha20(uint8_t out[32], const uint8_t key[32], const uint8_t nonce[16]);
dp_chacha20_jobs_fn dp_chacha20_jobs_portable;
dp_poly1305_jobs_fn dp_poly1305_jobs_portable;

/* Scalar Poly1305 state, radix 2^44 limbs (donna-64 layout). */
struct dp_poly1305_state {
    uint64_t r[3];
    uint64_t h[3];
    uint64_t s[2];
};
void dp_poly1305_init(struct dp_poly1305_state *st, const uint8_t key[32]);
void dp_poly1305_blocks(struct dp_poly1305_state *st, const uint8_t *p, size_t blocks);
/* Writes the tag and wipes the state. */
void dp_poly1305_finish(struct dp_poly1305_state *st, uint8_t tag[16]);

#if defined(__x86_64__)
dp_chacha20_jobs_fn dp_chacha20_jobs_avx2;
dp_chacha20_jobs_fn dp_chacha20_jobs_avx512;
dp_chacha20_jobs_fn dp_chacha20_jobs_avx512_on_avx2;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx2;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512_on_avx2;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512ifma;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512ifma4;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512ifma_emulated;
dp_poly1305_jobs_fn dp_poly1305_jobs_avx512ifma4_emulated;
#endif

/* The implementation in use, and a given one (NULL if this CPU lacks it). */
const struct dp_crypto_impl_ops *dp_crypto_ops(void);
const struct dp_crypto_impl_ops *dp_crypto_impl_ops(int impl);

#endif
