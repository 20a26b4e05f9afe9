/* The 4-lane radix-2^44 Poly1305 of poly1305_avx512ifma4.c with the
 * multiply-adds emulated as in poly1305_avx512ifma_emulated.c. Tests only. */
#pragma GCC target("avx2")

#define PL_LANES 4
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma4_emulated
#include "poly1305_madd52_emulated.h"

#include "poly1305_lanes.inc"
