/* Test hooks: the raw primitives on a chosen implementation, so tests can
 * check each kernel against an independent library. Not for production use.
 * Also part of the cffi cdef (plain declarations only). */
#ifndef DP_CRYPTO_TESTING_H
#define DP_CRYPTO_TESTING_H

#include <stddef.h>
#include <stdint.h>

/* n ChaCha20 streams: dst[i] = src[i] XOR keystream (src[i] may be NULL
 * for raw keystream). keys: n*32 bytes, nonces: n*12 bytes. */
int dp_test_chacha20(int impl, size_t n, uint8_t **dst, const uint8_t **src,
                     const size_t *len, const uint8_t *keys, const uint8_t *nonces,
                     const uint32_t *counters);
/* n Poly1305 tags over messages whose lengths are multiples of 16. */
int dp_test_poly1305(int impl, size_t n, const uint8_t **msgs, const size_t *len,
                     const uint8_t *keys, uint8_t *tags);
/* HChaCha20 (the portable one; every implementation uses it). */
void dp_test_hchacha20(uint8_t *out, const uint8_t *key, const uint8_t *nonce);

#endif
