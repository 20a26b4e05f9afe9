/* ChaCha20, 8 blocks at a time, built for avx2. */
#if defined(__x86_64__)
#pragma GCC target("avx2")
#define LANES 8
#define FN dp_chacha20_jobs_avx2
#include "chacha20_lanes.inc"
#endif
