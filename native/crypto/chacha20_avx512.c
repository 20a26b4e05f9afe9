/* ChaCha20, 16 blocks at a time, built for avx512f. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2")
#define LANES 16
#define FN dp_chacha20_jobs_avx512
#include "chacha20_lanes.inc"
#endif
