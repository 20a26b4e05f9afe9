/* ChaCha20, 16 blocks at a time, built for avx2 (AVX-512 lane count, for tests). */
#if defined(__x86_64__)
#pragma GCC target("avx2")
#define LANES 16
#define FN dp_chacha20_jobs_avx512_on_avx2
#include "chacha20_lanes.inc"
#endif
