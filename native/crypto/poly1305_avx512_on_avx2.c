/* The 8-lane Poly1305 of poly1305_avx512.c built for AVX2 (each 8-lane
 * vector is a pair of ymm), so that its lane handling is tested on machines
 * without AVX-512. */
#pragma GCC target("avx2")

#define PL_LANES 8
#define PL_FN dp_poly1305_jobs_avx512_on_avx2
#define PL_SPLIT8 1
#define PL_VMUL32(a, b)                                                     \
    ({                                                                      \
        pl_v a_ = (a), b_ = (b);                                            \
        pl_v4 l_ = (pl_v4)_mm256_mul_epu32(                                 \
            (__m256i)__builtin_shufflevector(a_, a_, 0, 1, 2, 3),           \
            (__m256i)__builtin_shufflevector(b_, b_, 0, 1, 2, 3));          \
        pl_v4 h_ = (pl_v4)_mm256_mul_epu32(                                 \
            (__m256i)__builtin_shufflevector(a_, a_, 4, 5, 6, 7),           \
            (__m256i)__builtin_shufflevector(b_, b_, 4, 5, 6, 7));          \
        __builtin_shufflevector(l_, h_, 0, 1, 2, 3, 4, 5, 6, 7);            \
    })

#include "poly1305_lanes.inc"
