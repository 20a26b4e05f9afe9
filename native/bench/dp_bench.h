/* Crypto benchmark loops, run in C so Python's overhead is not measured.
 * Also part of the cffi cdef (plain declarations only). */
#ifndef DP_BENCH_H
#define DP_BENCH_H

#include <stddef.h>
#include <stdint.h>

#define DP_BENCH_OP_SEAL 0
#define DP_BENCH_OP_OPEN 1

struct dp_bench_result {
    uint64_t messages; /* messages processed in the timed part */
    uint64_t bytes;    /* plaintext bytes processed in the timed part */
    uint64_t ns;       /* wall-clock nanoseconds of the timed part */
    uint64_t cpu_ns;   /* thread CPU nanoseconds of the timed part */
};

/* Run op over `batch` messages of `size` bytes (distinct keys and counters,
 * like packets of different peers) until at least min_ns have passed.
 * dp_bench_aead uses our implementation `impl` with one batch call per
 * `batch` messages; dp_bench_openssl uses libcrypto's EVP
 * ChaCha20-Poly1305 with one call sequence per message, on the same
 * buffers. Both check their output (OpenSSL must open what we seal; opened
 * plaintext must match). Returns 0, -DP_ENOTSUP (impl not on this CPU) or
 * -DP_EINVAL (bad op, size > DP_AEAD_MAX_BYTES, batch not in
 * 1..DP_AEAD_BATCH_MAX, out of memory, or a message that failed to seal,
 * open or verify: a bug). */
int dp_bench_aead(int impl, int op, size_t size, size_t batch, uint64_t min_ns,
                  struct dp_bench_result *out);
int dp_bench_openssl(int op, size_t size, size_t batch, uint64_t min_ns,
                     struct dp_bench_result *out);
/* The version string of the libcrypto these benchmarks run against. */
const char *dp_bench_openssl_version(void);

#endif
