/* Which implementation runs: the best one this CPU supports, unless a test
 * or benchmark forces another with dp_crypto_use(). */
#include <stdatomic.h>
#include <stdbool.h>

#include "crypto_internal.h"

#if defined(__x86_64__)
/* On AVX2, Poly1305 over many messages runs faster as 8 lanes in pairs of
 * ymm registers (two independent multiply chains hide each other's
 * latency: measured 20-30% on Zen 3); few messages use the 4-lane kernel,
 * whose single-message path is cheaper. */
static void poly1305_jobs_avx2_best(const struct dp_poly1305_job *jobs, size_t n)
{
    if (n >= 8)
        dp_poly1305_jobs_avx512_on_avx2(jobs, n);
    else
        dp_poly1305_jobs_avx2(jobs, n);
}

/* A 16-lane vector costs two 8-lane ones where AVX-512 runs on 256-bit
 * units (Zen 4), and a lone short message fills few lanes: with 8 blocks
 * or fewer in all (messages up to 448 bytes alone, the usual burst of one
 * at low load) the 8-lane kernel does the same work for half the price
 * (64-byte open alone on Zen 4: 389 ns with the 16-lane kernel, 340 with
 * the 8-lane one). The count depends on lengths only. */
#define CHACHA20_AVX2_MAX_BLOCKS 8

static void chacha20_jobs_avx512_best(const struct dp_chacha20_job *jobs, size_t n)
{
    size_t blocks = 0;

    for (size_t i = 0; i < n && blocks <= CHACHA20_AVX2_MAX_BLOCKS; i++)
        blocks += dp_chacha20_job_blocks(&jobs[i]);
    if (blocks <= CHACHA20_AVX2_MAX_BLOCKS)
        dp_chacha20_jobs_avx2(jobs, n);
    else
        dp_chacha20_jobs_avx512(jobs, n);
}

/* Poly1305 for a few short messages: four of them fill the 4-lane kernel
 * and leave half of the 8-lane one idle, and one alone of 16 to 31 blocks
 * runs on 4 lanes with powers of r where 8 lanes would need 32 (fewer go
 * to the scalar code): 448-byte open alone on Zen 4, 615 ns with 8 lanes,
 * 469 with 4. A long message is faster on 8 lanes, even alone (1420-byte
 * open of two: 866 ns against 975). Lengths only. */
#define POLY1305_AVX2_MAX_JOBS 4
#define POLY1305_AVX512_ALONE_MIN_BLOCKS 32 /* PL_ALONE_MIN of the 8-lane kernel */

static void poly1305_jobs_avx512_best(const struct dp_poly1305_job *jobs, size_t n)
{
    bool short_ones = n <= POLY1305_AVX2_MAX_JOBS;

    for (size_t i = 0; i < n && short_ones; i++) {
        size_t blocks = 0;

        for (unsigned s = 0; s < jobs[i].nsegs; s++)
            blocks += jobs[i].seg[s].blocks;
        short_ones = blocks < POLY1305_AVX512_ALONE_MIN_BLOCKS;
    }
    if (short_ones)
        dp_poly1305_jobs_avx2(jobs, n);
    else
        dp_poly1305_jobs_avx512(jobs, n);
}

/* With IFMA, up to 4 messages of any length run on 4 lanes (ymm), more on
 * 8 (Zen 4, Poly1305 alone, ns a message, 4 lanes against 8: one of 464
 * bytes 114 against 343, of 1440 bytes 209 against 254; four of 1440
 * bytes 159 against 254; six of 1440 bytes 177 against 173, eight 157
 * against 131). The count only. */
#define POLY1305_IFMA4_MAX_JOBS 4

static void poly1305_jobs_avx512ifma_best(const struct dp_poly1305_job *jobs, size_t n)
{
    if (n <= POLY1305_IFMA4_MAX_JOBS)
        dp_poly1305_jobs_avx512ifma4(jobs, n);
    else
        dp_poly1305_jobs_avx512ifma(jobs, n);
}

/* The same choice on the emulated kernels. */
static void poly1305_jobs_avx512ifma_emulated_best(const struct dp_poly1305_job *jobs, size_t n)
{
    if (n <= POLY1305_IFMA4_MAX_JOBS)
        dp_poly1305_jobs_avx512ifma4_emulated(jobs, n);
    else
        dp_poly1305_jobs_avx512ifma_emulated(jobs, n);
}
#endif

static const struct dp_crypto_impl_ops impls[DP_IMPL_COUNT] = {
    [DP_IMPL_PORTABLE] = {"portable", dp_chacha20_jobs_portable, dp_poly1305_jobs_portable},
#if defined(__x86_64__)
    [DP_IMPL_AVX2] = {"avx2", dp_chacha20_jobs_avx2, poly1305_jobs_avx2_best},
    [DP_IMPL_AVX512] = {"avx512", chacha20_jobs_avx512_best, poly1305_jobs_avx512_best},
    [DP_IMPL_AVX512_ON_AVX2] = {"avx512-on-avx2", dp_chacha20_jobs_avx512_on_avx2,
                                dp_poly1305_jobs_avx512_on_avx2},
    [DP_IMPL_AVX512_IFMA] = {"avx512-ifma", chacha20_jobs_avx512_best,
                             poly1305_jobs_avx512ifma_best},
    [DP_IMPL_AVX512_IFMA_EMULATED] = {"avx512-ifma-emulated", dp_chacha20_jobs_avx2,
                                      poly1305_jobs_avx512ifma_emulated_best},
#else
    [DP_IMPL_AVX2] = {"avx2", NULL, NULL},
    [DP_IMPL_AVX512] = {"avx512", NULL, NULL},
    [DP_IMPL_AVX512_ON_AVX2] = {"avx512-on-avx2", NULL, NULL},
    [DP_IMPL_AVX512_IFMA] = {"avx512-ifma", NULL, NULL},
    [DP_IMPL_AVX512_IFMA_EMULATED] = {"avx512-ifma-emulated", NULL, NULL},
#endif
};

static _Atomic(const struct dp_crypto_impl_ops *) active;

const char *dp_crypto_impl_name(int impl)
{
    return impl >= 0 && impl < DP_IMPL_COUNT ? impls[impl].name : NULL;
}

int dp_crypto_impl_supported(int impl)
{
    switch (impl) {
    case DP_IMPL_PORTABLE:
        return 1;
#if defined(__x86_64__)
    case DP_IMPL_AVX2:
    case DP_IMPL_AVX512_ON_AVX2:
    case DP_IMPL_AVX512_IFMA_EMULATED:
        return __builtin_cpu_supports("avx2");
    case DP_IMPL_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw");
    case DP_IMPL_AVX512_IFMA:
        return dp_crypto_impl_supported(DP_IMPL_AVX512) &&
               __builtin_cpu_supports("avx512ifma");
#endif
    default:
        return 0;
    }
}

static int best_impl(void)
{
    if (dp_crypto_impl_supported(DP_IMPL_AVX512_IFMA))
        return DP_IMPL_AVX512_IFMA;
    if (dp_crypto_impl_supported(DP_IMPL_AVX512))
        return DP_IMPL_AVX512;
    if (dp_crypto_impl_supported(DP_IMPL_AVX2))
        return DP_IMPL_AVX2;
    return DP_IMPL_PORTABLE;
}

const struct dp_crypto_impl_ops *dp_crypto_ops(void)
{
    const struct dp_crypto_impl_ops *ops = atomic_load_explicit(&active, memory_order_acquire);

    if (!ops) {
        ops = &impls[best_impl()];
        atomic_store_explicit(&active, ops, memory_order_release);
    }
    return ops;
}

const struct dp_crypto_impl_ops *dp_crypto_impl_ops(int impl)
{
    return dp_crypto_impl_supported(impl) ? &impls[impl] : NULL;
}

int dp_crypto_impl_active(void)
{
    return (int)(dp_crypto_ops() - impls);
}

int dp_crypto_use(int impl)
{
    if (impl < 0 || impl >= DP_IMPL_COUNT)
        return -DP_EINVAL;
    if (!dp_crypto_impl_supported(impl))
        return -DP_ENOTSUP;
    atomic_store_explicit(&active, &impls[impl], memory_order_release);
    return DP_OK;
}
