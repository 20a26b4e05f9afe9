/* The radix-2^44 Poly1305 of poly1305_avx512ifma.c with IFMA's 52-bit
 * multiply-adds done lane by lane in scalar code, so that its lane logic is
 * tested on machines without AVX-512 IFMA. Slow; tests only. */
#pragma GCC target("avx2")

#define PL_LANES 8
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma_emulated
#define PL_MADD52(c, a, b, hi)                                              \
    ({                                                                      \
        pl_v c_ = (c), a_ = (a), b_ = (b);                                  \
        for (int k_ = 0; k_ < PL_LANES; k_++) {                             \
            pl_u128 p_ = (pl_u128)(a_[k_] & 0xfffffffffffffULL) *           \
                         (b_[k_] & 0xfffffffffffffULL);                     \
            c_[k_] += (hi) ? (uint64_t)(p_ >> 52)                           \
                           : (uint64_t)p_ & 0xfffffffffffffULL;             \
        }                                                                   \
        c_;                                                                 \
    })
#define PL_MADD52LO(c, a, b) PL_MADD52(c, a, b, 0)
#define PL_MADD52HI(c, a, b) PL_MADD52(c, a, b, 1)

#include "poly1305_lanes.inc"
