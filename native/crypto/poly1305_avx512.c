/* Multi-buffer Poly1305, 8 lanes of AVX-512. */
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2")

#define PL_LANES 8
#define PL_FN dp_poly1305_jobs_avx512
#define PL_VMUL32(a, b) ((pl_v)_mm512_mul_epu32((__m512i)(a), (__m512i)(b)))

#include "poly1305_lanes.inc"
