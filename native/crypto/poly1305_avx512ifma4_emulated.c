/* The 4-lane radix-2^44 Poly1305 of poly1305_avx512ifma4.c with the
 * multiply-adds emulated as in poly1305_avx512ifma_emulated.c. Tests only. */
#pragma GCC target("avx2")

#define PL_LANES 4
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma4_emulated
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
