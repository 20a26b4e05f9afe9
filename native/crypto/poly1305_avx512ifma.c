/* Multi-buffer Poly1305, 8 lanes of AVX-512 in radix 2^44 with IFMA's
 * 52-bit multiply-adds. */
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512ifma,avx2")

#define PL_LANES 8
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma
#define PL_MADD52LO(c, a, b)                                                \
    ((pl_v)_mm512_madd52lo_epu64((__m512i)(c), (__m512i)(a), (__m512i)(b)))
#define PL_MADD52HI(c, a, b)                                                \
    ((pl_v)_mm512_madd52hi_epu64((__m512i)(c), (__m512i)(a), (__m512i)(b)))

#include "poly1305_lanes.inc"
