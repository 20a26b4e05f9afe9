/* BLAKE2s (RFC 7693), keyed and unkeyed, 1..32 byte digests. */
#include "crypto_internal.h"

static const uint32_t blake2s_iv[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static const uint8_t blake2s_sigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint32_t rotr32(uint32_t v, int c)
{
    return (v >> c) | (v << (32 - c));
}

#define G(a, b, c, d, x, y)                        \
    do {                                           \
        a = a + b + x; d = rotr32(d ^ a, 16);      \
        c = c + d;     b = rotr32(b ^ c, 12);      \
        a = a + b + y; d = rotr32(d ^ a, 8);       \
        c = c + d;     b = rotr32(b ^ c, 7);       \
    } while (0)

static void blake2s_compress(struct dp_blake2s_state *st, const uint8_t block[64],
                             uint32_t inc)
{
    uint32_t m[16], v[16];

    st->t[0] += inc;
    st->t[1] += st->t[0] < inc;
    for (int i = 0; i < 16; i++)
        m[i] = load32_le(block + 4 * i);
    memcpy(v, st->h, 32);
    memcpy(v + 8, blake2s_iv, 32);
    v[12] ^= st->t[0];
    v[13] ^= st->t[1];
    v[14] ^= st->f[0];
    v[15] ^= st->f[1];
    for (int r = 0; r < 10; r++) {
        const uint8_t *s = blake2s_sigma[r];

        G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        st->h[i] ^= v[i] ^ v[i + 8];
    dp_wipe(m, sizeof(m));
    dp_wipe(v, sizeof(v));
}

int dp_blake2s_init(struct dp_blake2s_state *st, size_t out_len,
                    const uint8_t *key, size_t key_len)
{
    if (out_len < 1 || out_len > DP_BLAKE2S_OUT_BYTES || key_len > DP_BLAKE2S_KEY_BYTES ||
        (key_len && !key))
        return -DP_EINVAL;
    memset(st, 0, sizeof(*st));
    memcpy(st->h, blake2s_iv, sizeof(st->h));
    /* parameter block: digest length, key length, fanout 1, depth 1 */
    st->h[0] ^= 0x01010000u ^ ((uint32_t)key_len << 8) ^ (uint32_t)out_len;
    st->out_len = (uint32_t)out_len;
    if (key_len) {
        memcpy(st->buf, key, key_len);
        st->buf_len = DP_BLAKE2S_BLOCK_BYTES; /* the zero-padded key is block one */
    }
    return DP_OK;
}

void dp_blake2s_update(struct dp_blake2s_state *st, const uint8_t *in, size_t in_len)
{
    /* The last block is compressed in final with the finalization flag, so a
     * full buffer is only compressed once more input arrives. */
    while (in_len) {
        if (st->buf_len == DP_BLAKE2S_BLOCK_BYTES) {
            blake2s_compress(st, st->buf, DP_BLAKE2S_BLOCK_BYTES);
            st->buf_len = 0;
        }
        if (st->buf_len == 0) {
            while (in_len > DP_BLAKE2S_BLOCK_BYTES) {
                blake2s_compress(st, in, DP_BLAKE2S_BLOCK_BYTES);
                in += DP_BLAKE2S_BLOCK_BYTES;
                in_len -= DP_BLAKE2S_BLOCK_BYTES;
            }
        }
        size_t take = DP_BLAKE2S_BLOCK_BYTES - st->buf_len;

        if (take > in_len)
            take = in_len;
        memcpy(st->buf + st->buf_len, in, take);
        st->buf_len += (uint32_t)take;
        in += take;
        in_len -= take;
    }
}

void dp_blake2s_final(struct dp_blake2s_state *st, uint8_t *out)
{
    uint8_t digest[DP_BLAKE2S_OUT_BYTES];

    memset(st->buf + st->buf_len, 0, DP_BLAKE2S_BLOCK_BYTES - st->buf_len);
    st->f[0] = 0xffffffffu;
    blake2s_compress(st, st->buf, st->buf_len);
    for (int i = 0; i < 8; i++)
        store32_le(digest + 4 * i, st->h[i]);
    memcpy(out, digest, st->out_len);
    dp_wipe(digest, sizeof(digest));
    dp_wipe(st, sizeof(*st));
}

int dp_blake2s(uint8_t *out, size_t out_len, const uint8_t *in, size_t in_len,
               const uint8_t *key, size_t key_len)
{
    struct dp_blake2s_state st;
    int err = dp_blake2s_init(&st, out_len, key, key_len);

    if (err)
        return err;
    dp_blake2s_update(&st, in, in_len);
    dp_blake2s_final(&st, out);
    return DP_OK;
}
