/* IFMA's 52-bit multiply-adds done lane by lane in scalar code, for the
 * test-only builds of the radix-2^44 Poly1305 (poly1305_lanes.inc with
 * PL_R44) on machines without AVX-512 IFMA: c plus the low (high) 52 bits
 * of the 104-bit product of the low 52 bits of a and b, in each lane.
 * Expanded inside the template, where pl_v and pl_u128 exist. */
#ifndef DP_POLY1305_MADD52_EMULATED_H
#define DP_POLY1305_MADD52_EMULATED_H

#define PL_M52_ 0xfffffffffffffULL
#define PL_MADD52(c, a, b, hi)                                              \
    ({                                                                      \
        pl_v c_ = (c), a_ = (a), b_ = (b);                                  \
        for (int k_ = 0; k_ < PL_LANES; k_++) {                             \
            pl_u128 p_ = (pl_u128)(a_[k_] & PL_M52_) * (b_[k_] & PL_M52_);  \
            c_[k_] += (hi) ? (uint64_t)(p_ >> 52) : (uint64_t)p_ & PL_M52_; \
        }                                                                   \
        c_;                                                                 \
    })
#define PL_MADD52LO(c, a, b) PL_MADD52(c, a, b, 0)
#define PL_MADD52HI(c, a, b) PL_MADD52(c, a, b, 1)

#endif
