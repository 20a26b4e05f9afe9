/* dataplane crypto core: ChaCha20-Poly1305 (RFC 8439) as WireGuard uses it,
 * XChaCha20-Poly1305 and BLAKE2s.
 *
 * This header is also the cffi cdef: keep it to plain declarations and
 * integer #defines (the build strips the include guard and #include lines).
 *
 * Buffers: dst may equal src (in place); otherwise they must not overlap.
 * Every function that takes a key wipes its copies of key material and
 * keystream before it returns.
 */
#ifndef DP_CRYPTO_H
#define DP_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define DP_CHACHA20POLY1305_KEY_BYTES 32
#define DP_CHACHA20POLY1305_NONCE_BYTES 12
#define DP_CHACHA20POLY1305_TAG_BYTES 16
#define DP_XCHACHA20POLY1305_NONCE_BYTES 24
#define DP_BLAKE2S_OUT_BYTES 32
#define DP_BLAKE2S_KEY_BYTES 32
#define DP_BLAKE2S_BLOCK_BYTES 64
/* Largest plaintext one AEAD call takes: 2^32 - 1 blocks of keystream less
 * the block used for the Poly1305 key (RFC 8439 section 2.8), capped so that
 * a length plus tag fits in 32 bits everywhere else. */
#define DP_AEAD_MAX_BYTES 0x7fffffef
/* Most messages one batch call takes. */
#define DP_AEAD_BATCH_MAX 256

/* Error codes (negative returns). */
#define DP_OK 0
#define DP_EINVAL 22
#define DP_ENOTSUP 95
#define DP_EAUTH 74

/* Implementations. */
#define DP_IMPL_PORTABLE 0
#define DP_IMPL_AVX2 1
#define DP_IMPL_AVX512 2
/* AVX-512's 16-lane ChaCha20 and 8-lane Poly1305 logic built for AVX2, so
 * that machines without AVX-512 still test that code's lane handling. */
#define DP_IMPL_AVX512_ON_AVX2 3
/* avx512 with Poly1305 in radix 2^44 on AVX-512 IFMA's 52-bit multiply-adds
 * (Ice Lake, Zen 4 and later). */
#define DP_IMPL_AVX512_IFMA 4
/* avx512-ifma's Poly1305 logic with the 52-bit multiply-adds emulated, and
 * the AVX2 ChaCha20, so that machines without IFMA test that logic. */
#define DP_IMPL_AVX512_IFMA_EMULATED 5
#define DP_IMPL_COUNT 6

const char *dp_crypto_impl_name(int impl);
/* 1 if this CPU can run impl, 0 if not. */
int dp_crypto_impl_supported(int impl);
/* The implementation in use now (the best supported one unless forced). */
int dp_crypto_impl_active(void);
/* Force impl for the whole process; -DP_ENOTSUP if the CPU lacks it. */
int dp_crypto_use(int impl);

/* ChaCha20-Poly1305 with a 96-bit nonce.
 * seal: dst receives src_len bytes of ciphertext then the 16-byte tag.
 * open: src is ciphertext || tag (src_len >= 16); dst receives
 *       src_len - 16 bytes. The tag is checked in constant time; on failure
 *       dst is zeroed and -DP_EAUTH returned. When dst overlaps what the
 *       MAC reads (in place, dst == src, or over the tag or the AD),
 *       nothing is written before the check; a dst apart from them is
 *       decrypted in the same pass that makes the MAC key, and zeroed
 *       again on failure.
 */
int dp_aead_seal(uint8_t *dst, const uint8_t *src, size_t src_len,
                 const uint8_t *ad, size_t ad_len,
                 const uint8_t *nonce, const uint8_t *key);
int dp_aead_open(uint8_t *dst, const uint8_t *src, size_t src_len,
                 const uint8_t *ad, size_t ad_len,
                 const uint8_t *nonce, const uint8_t *key);

/* XChaCha20-Poly1305: HChaCha20 subkey from the first 16 nonce bytes, then
 * ChaCha20-Poly1305 with nonce 0^4 || nonce[16..24]. */
int dp_xaead_seal(uint8_t *dst, const uint8_t *src, size_t src_len,
                  const uint8_t *ad, size_t ad_len,
                  const uint8_t *nonce, const uint8_t *key);
int dp_xaead_open(uint8_t *dst, const uint8_t *src, size_t src_len,
                  const uint8_t *ad, size_t ad_len,
                  const uint8_t *nonce, const uint8_t *key);

/* One message of a batch, WireGuard style: nonce = 0^32 || le64(counter).
 * For seal, len is the plaintext length and dst has room for len + 16.
 * For open, len is ciphertext + tag and dst has room for len - 16.
 * status is written by the call: DP_OK or a negative error. */
struct dp_aead_msg {
    const uint8_t *key;
    uint64_t counter;
    const uint8_t *ad;
    uint32_t ad_len;
    uint32_t len;
    const uint8_t *src;
    uint8_t *dst;
    int status;
};

/* Seal or open n independent messages (n <= DP_AEAD_BATCH_MAX).
 * Returns how many succeeded, or -DP_EINVAL if the batch itself is bad
 * (then no message is touched). A message that fails gets its status set
 * and, for open, its dst zeroed; the others are unaffected. The messages'
 * buffers must not overlap one another's. */
int dp_aead_seal_batch(struct dp_aead_msg *msgs, size_t n);
int dp_aead_open_batch(struct dp_aead_msg *msgs, size_t n);

/* BLAKE2s (RFC 7693), out_len 1..32, key_len 0..32. */
struct dp_blake2s_state {
    uint32_t h[8];
    uint32_t t[2];
    uint32_t f[2];
    uint8_t buf[64];
    uint32_t buf_len;
    uint32_t out_len;
};
int dp_blake2s_init(struct dp_blake2s_state *st, size_t out_len,
                    const uint8_t *key, size_t key_len);
void dp_blake2s_update(struct dp_blake2s_state *st, const uint8_t *in, size_t in_len);
/* Writes st->out_len bytes and wipes the state. */
void dp_blake2s_final(struct dp_blake2s_state *st, uint8_t *out);
int dp_blake2s(uint8_t *out, size_t out_len, const uint8_t *in, size_t in_len,
               const uint8_t *key, size_t key_len);

/* Overwrite n bytes at p with zeros in a way the compiler cannot drop. */
void dp_wipe(void *p, size_t n);

#endif
