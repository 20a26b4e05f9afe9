/* Multi-buffer Poly1305, 4 lanes (ymm) of AVX-512 IFMA in radix 2^44: for
 * a few messages, or one alone, where 8 lanes would idle or need more
 * powers of r. */
#pragma GCC target("avx512f,avx512vl,avx512ifma,avx2")

#define PL_LANES 4
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma4
#define PL_MADD52LO(c, a, b)                                                \
    ((pl_v)_mm256_madd52lo_epu64((__m256i)(c), (__m256i)(a), (__m256i)(b)))
#define PL_MADD52HI(c, a, b)                                                \
    ((pl_v)_mm256_madd52hi_epu64((__m256i)(c), (__m256i)(a), (__m256i)(b)))

#include "poly1305_lanes.inc"
