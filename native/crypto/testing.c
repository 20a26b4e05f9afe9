/* Test hooks declared in dp_crypto_testing.h. */
#include <stdlib.h>

#include "crypto_internal.h"
#include "dp_crypto_testing.h"

int dp_test_chacha20(int impl, size_t n, uint8_t **dst, const uint8_t **src,
                     const size_t *len, const uint8_t *keys, const uint8_t *nonces,
                     const uint32_t *counters)
{
    const struct dp_crypto_impl_ops *ops = dp_crypto_impl_ops(impl);
    struct dp_chacha20_job *jobs;

    if (!ops)
        return -DP_ENOTSUP;
    jobs = calloc(n ? n : 1, sizeof(*jobs));
    if (!jobs)
        return -DP_EINVAL;
    for (size_t i = 0; i < n; i++) {
        for (int w = 0; w < 8; w++)
            jobs[i].key[w] = load32_le(keys + 32 * i + 4 * w);
        for (int w = 0; w < 3; w++)
            jobs[i].nonce[w] = load32_le(nonces + 12 * i + 4 * w);
        jobs[i].counter = counters[i];
        jobs[i].src = src[i];
        jobs[i].dst = dst[i];
        jobs[i].len = len[i];
    }
    ops->chacha20_jobs(jobs, n);
    dp_wipe(jobs, n * sizeof(*jobs));
    free(jobs);
    return DP_OK;
}

int dp_test_poly1305(int impl, size_t n, const uint8_t **msgs, const size_t *len,
                     const uint8_t *keys, uint8_t *tags)
{
    const struct dp_crypto_impl_ops *ops = dp_crypto_impl_ops(impl);
    struct dp_poly1305_job *jobs;

    if (!ops)
        return -DP_ENOTSUP;
    for (size_t i = 0; i < n; i++)
        if (len[i] % POLY1305_BLOCK_BYTES)
            return -DP_EINVAL;
    jobs = calloc(n ? n : 1, sizeof(*jobs));
    if (!jobs)
        return -DP_EINVAL;
    for (size_t i = 0; i < n; i++) {
        /* split into two segments to exercise segment changes */
        size_t blocks = len[i] / POLY1305_BLOCK_BYTES, first = blocks / 3;

        jobs[i].key = keys + 32 * i;
        jobs[i].tag = tags + 16 * i;
        jobs[i].nsegs = 2;
        jobs[i].seg[0] = (struct dp_poly1305_seg){msgs[i], first};
        jobs[i].seg[1] = (struct dp_poly1305_seg){msgs[i] + first * POLY1305_BLOCK_BYTES,
                                                  blocks - first};
    }
    ops->poly1305_jobs(jobs, n);
    free(jobs);
    return DP_OK;
}

void dp_test_hchacha20(uint8_t *out, const uint8_t *key, const uint8_t *nonce)
{
    dp_hchacha20(out, key, nonce);
}
