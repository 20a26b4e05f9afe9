/* Which implementation runs: the best one this CPU supports, unless a test
 * or benchmark forces another with dp_crypto_use(). */
#include <stdatomic.h>

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
#endif

static const struct dp_crypto_impl_ops impls[DP_IMPL_COUNT] = {
    [DP_IMPL_PORTABLE] = {"portable", dp_chacha20_jobs_portable, dp_poly1305_jobs_portable},
#if defined(__x86_64__)
    [DP_IMPL_AVX2] = {"avx2", dp_chacha20_jobs_avx2, poly1305_jobs_avx2_best},
    [DP_IMPL_AVX512] = {"avx512", dp_chacha20_jobs_avx512, dp_poly1305_jobs_avx512},
    [DP_IMPL_AVX512_ON_AVX2] = {"avx512-on-avx2", dp_chacha20_jobs_avx512_on_avx2,
                                dp_poly1305_jobs_avx512_on_avx2},
#else
    [DP_IMPL_AVX2] = {"avx2", NULL, NULL},
    [DP_IMPL_AVX512] = {"avx512", NULL, NULL},
    [DP_IMPL_AVX512_ON_AVX2] = {"avx512-on-avx2", NULL, NULL},
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
        return __builtin_cpu_supports("avx2");
    case DP_IMPL_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw");
#endif
    default:
        return 0;
    }
}

static int best_impl(void)
{
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
