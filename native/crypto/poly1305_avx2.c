/* Multi-buffer Poly1305, 4 lanes of AVX2. */
#pragma GCC target("avx2")

#define PL_LANES 4
#define PL_FN dp_poly1305_jobs_avx2
#define PL_VMUL32(a, b) ((pl_v)_mm256_mul_epu32((__m256i)(a), (__m256i)(b)))

#include "poly1305_lanes.inc"
