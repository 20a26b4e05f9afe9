/* ChaCha20 (RFC 8439 section 2.3) and HChaCha20, portable reference. */
#include "crypto_internal.h"

#define QUARTERROUND(a, b, c, d)                   \
    do {                                           \
        a += b; d ^= a; d = rotl32(d, 16);         \
        c += d; b ^= c; b = rotl32(b, 12);         \
        a += b; d ^= a; d = rotl32(d, 8);          \
        c += d; b ^= c; b = rotl32(b, 7);          \
    } while (0)

static const uint32_t sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};

static void chacha20_rounds(uint32_t x[16])
{
    for (int i = 0; i < 10; i++) {
        QUARTERROUND(x[0], x[4], x[8], x[12]);
        QUARTERROUND(x[1], x[5], x[9], x[13]);
        QUARTERROUND(x[2], x[6], x[10], x[14]);
        QUARTERROUND(x[3], x[7], x[11], x[15]);
        QUARTERROUND(x[0], x[5], x[10], x[15]);
        QUARTERROUND(x[1], x[6], x[11], x[12]);
        QUARTERROUND(x[2], x[7], x[8], x[13]);
        QUARTERROUND(x[3], x[4], x[9], x[14]);
    }
}

void dp_chacha20_block(const uint32_t key[8], uint32_t counter,
                       const uint32_t nonce[3], uint8_t out[64])
{
    uint32_t in[16], x[16];

    memcpy(in, sigma, sizeof(sigma));
    memcpy(in + 4, key, 32);
    in[12] = counter;
    memcpy(in + 13, nonce, 12);
    memcpy(x, in, sizeof(in));
    chacha20_rounds(x);
    for (int i = 0; i < 16; i++)
        store32_le(out + 4 * i, x[i] + in[i]);
    dp_wipe(in, sizeof(in));
    dp_wipe(x, sizeof(x));
}

void dp_hchacha20(uint8_t out[32], const uint8_t key[32], const uint8_t nonce[16])
{
    uint32_t x[16];

    memcpy(x, sigma, sizeof(sigma));
    for (int i = 0; i < 8; i++)
        x[4 + i] = load32_le(key + 4 * i);
    for (int i = 0; i < 4; i++)
        x[12 + i] = load32_le(nonce + 4 * i);
    chacha20_rounds(x);
    for (int i = 0; i < 4; i++) {
        store32_le(out + 4 * i, x[i]);
        store32_le(out + 16 + 4 * i, x[12 + i]);
    }
    dp_wipe(x, sizeof(x));
}

void dp_chacha20_jobs_portable(const struct dp_chacha20_job *jobs, size_t n)
{
    uint8_t ks[CHACHA20_BLOCK_BYTES];

    for (size_t i = 0; i < n; i++) {
        const struct dp_chacha20_job *j = &jobs[i];
        uint32_t counter = j->counter;

        if (j->head) {
            dp_chacha20_block(j->key, counter++, j->nonce, ks);
            memcpy(j->head, ks, j->head_len);
        }
        for (size_t off = 0; off < j->len; off += CHACHA20_BLOCK_BYTES) {
            size_t take = j->len - off < CHACHA20_BLOCK_BYTES ? j->len - off : CHACHA20_BLOCK_BYTES;

            dp_chacha20_block(j->key, counter++, j->nonce, ks);
            if (j->src) {
                for (size_t b = 0; b < take; b++)
                    j->dst[off + b] = j->src[off + b] ^ ks[b];
            } else {
                memcpy(j->dst + off, ks, take);
            }
        }
    }
    dp_wipe(ks, sizeof(ks));
}
