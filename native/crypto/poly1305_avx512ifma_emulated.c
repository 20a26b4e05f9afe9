/* The radix-2^44 Poly1305 of poly1305_avx512ifma.c with IFMA's 52-bit
 * multiply-adds done lane by lane in scalar code, so that its lane logic is
 * tested on machines without AVX-512 IFMA. Slow; tests only. */
#pragma GCC target("avx2")

#define PL_LANES 8
#define PL_R44 1
#define PL_FN dp_poly1305_jobs_avx512ifma_emulated
#include "poly1305_madd52_emulated.h"

#include "poly1305_lanes.inc"
