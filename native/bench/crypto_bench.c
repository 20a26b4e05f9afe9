/* ChaCha20-Poly1305 throughput: our batch API against OpenSSL's EVP, on the
 * same buffers, keys and nonces. Declared in dp_bench.h.
 *
 * Every run checks its own output (OpenSSL must accept what we seal; opened
 * plaintext must equal the original), so a broken kernel cannot report a
 * fast but meaningless figure. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "dp_bench.h"
#include "dp_crypto.h"

#define KEY_BYTES DP_CHACHA20POLY1305_KEY_BYTES
#define NONCE_BYTES DP_CHACHA20POLY1305_NONCE_BYTES
#define TAG_BYTES DP_CHACHA20POLY1305_TAG_BYTES
/* Message buffers start on cache lines, as packet buffers do. */
#define BUF_ALIGN 64
/* Warm-up (caches, branch predictors, CPU clock) before the timed part. */
#define WARMUP_MAX_NS 50000000ULL
#define WARMUP_MIN_PASSES 4
/* The clock is read once per round of passes sized to last about this long,
 * so reading it costs nothing measurable even for one 64-byte message. */
#define ROUND_NS 100000ULL

/* `batch` messages of `size` bytes; message i lives at i * stride in each
 * buffer. */
struct bench {
    int op;
    size_t size, batch, stride;
    uint64_t counter0; /* message i uses counter0 + i */
    uint8_t *keys;   /* batch * KEY_BYTES, distinct random keys */
    uint8_t *nonces; /* batch * NONCE_BYTES: 4 zero bytes || le64(counter) */
    uint8_t *plain;  /* the plaintexts */
    uint8_t *sealed; /* plaintext sealed: ciphertext || tag (input to open) */
    uint8_t *out;    /* what the timed operation writes */
    struct dp_aead_msg *msgs;
    EVP_CIPHER_CTX *ctx;
};

typedef int bench_pass_fn(struct bench *b);

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void store64_le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint8_t *msg_at(uint8_t *buf, const struct bench *b, size_t i)
{
    return buf + i * b->stride;
}

static void bench_free(struct bench *b)
{
    if (b->keys)
        dp_wipe(b->keys, b->batch * KEY_BYTES);
    free(b->keys);
    free(b->nonces);
    free(b->plain);
    free(b->sealed);
    free(b->out);
    free(b->msgs);
    EVP_CIPHER_CTX_free(b->ctx);
}

static uint8_t *alloc_msgs(const struct bench *b)
{
    void *p = NULL;

    if (posix_memalign(&p, BUF_ALIGN, b->batch * b->stride))
        return NULL;
    memset(p, 0, b->batch * b->stride);
    return p;
}

/* Buffers, random keys and plaintexts, distinct counters. */
static int bench_init(struct bench *b, int op, size_t size, size_t batch)
{
    memset(b, 0, sizeof(*b));
    if ((op != DP_BENCH_OP_SEAL && op != DP_BENCH_OP_OPEN) || size > DP_AEAD_MAX_BYTES ||
        batch == 0 || batch > DP_AEAD_BATCH_MAX)
        return -DP_EINVAL;
    b->op = op;
    b->size = size;
    b->batch = batch;
    b->stride = (size + TAG_BYTES + BUF_ALIGN - 1) / BUF_ALIGN * BUF_ALIGN;
    b->keys = malloc(batch * KEY_BYTES);
    b->nonces = calloc(batch, NONCE_BYTES);
    b->msgs = calloc(batch, sizeof(*b->msgs));
    b->plain = alloc_msgs(b);
    b->sealed = alloc_msgs(b);
    b->out = alloc_msgs(b);
    b->ctx = EVP_CIPHER_CTX_new();
    if (!b->keys || !b->nonces || !b->msgs || !b->plain || !b->sealed || !b->out || !b->ctx)
        goto fail;
    if (RAND_bytes(b->keys, (int)(batch * KEY_BYTES)) != 1 ||
        RAND_bytes((uint8_t *)&b->counter0, sizeof(b->counter0)) != 1)
        goto fail;
    for (size_t i = 0; i < batch; i++) {
        if (size && RAND_bytes(msg_at(b->plain, b, i), (int)size) != 1)
            goto fail;
        store64_le(b->nonces + i * NONCE_BYTES + 4, b->counter0 + i);
    }
    return DP_OK;
fail:
    bench_free(b);
    memset(b, 0, sizeof(*b));
    return -DP_EINVAL;
}

/* Our messages: seal plain -> out, or open sealed -> out. */
static void bench_set_msgs(struct bench *b, int op)
{
    for (size_t i = 0; i < b->batch; i++) {
        struct dp_aead_msg *m = &b->msgs[i];

        *m = (struct dp_aead_msg){.key = b->keys + i * KEY_BYTES, .counter = b->counter0 + i};
        if (op == DP_BENCH_OP_SEAL) {
            m->src = msg_at(b->plain, b, i);
            m->len = (uint32_t)b->size;
        } else {
            m->src = msg_at(b->sealed, b, i);
            m->len = (uint32_t)(b->size + TAG_BYTES);
        }
        m->dst = msg_at(b->out, b, i);
    }
}

static int openssl_seal_one(EVP_CIPHER_CTX *ctx, const uint8_t *key, const uint8_t *nonce,
                            const uint8_t *src, size_t len, uint8_t *dst)
{
    int n, fin;

    if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, dst, &n, src, (int)len) != 1 ||
        EVP_EncryptFinal_ex(ctx, dst + n, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, dst + len) != 1)
        return -DP_EINVAL;
    return DP_OK;
}

/* src is ciphertext || tag, len the ciphertext length. */
static int openssl_open_one(EVP_CIPHER_CTX *ctx, const uint8_t *key, const uint8_t *nonce,
                            const uint8_t *src, size_t len, uint8_t *dst)
{
    int n, fin;

    if (EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, (void *)(src + len)) != 1 ||
        EVP_DecryptUpdate(ctx, dst, &n, src, (int)len) != 1 ||
        EVP_DecryptFinal_ex(ctx, dst + n, &fin) != 1)
        return -DP_EINVAL;
    return DP_OK;
}

static int openssl_seal_pass(struct bench *b)
{
    for (size_t i = 0; i < b->batch; i++)
        if (openssl_seal_one(b->ctx, b->keys + i * KEY_BYTES, b->nonces + i * NONCE_BYTES,
                             msg_at(b->plain, b, i), b->size, msg_at(b->out, b, i)))
            return -DP_EINVAL;
    return DP_OK;
}

static int openssl_open_pass(struct bench *b)
{
    for (size_t i = 0; i < b->batch; i++)
        if (openssl_open_one(b->ctx, b->keys + i * KEY_BYTES, b->nonces + i * NONCE_BYTES,
                             msg_at(b->sealed, b, i), b->size, msg_at(b->out, b, i)))
            return -DP_EINVAL;
    return DP_OK;
}

static int aead_seal_pass(struct bench *b)
{
    return dp_aead_seal_batch(b->msgs, b->batch) == (int)b->batch ? DP_OK : -DP_EINVAL;
}

static int aead_open_pass(struct bench *b)
{
    return dp_aead_open_batch(b->msgs, b->batch) == (int)b->batch ? DP_OK : -DP_EINVAL;
}

/* Does OpenSSL open every message of buf (ciphertext || tag) back to the
 * plaintext? Uses its own context so b->ctx keeps its direction. */
static int openssl_check_sealed(const struct bench *b, uint8_t *buf)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t *plain = malloc(b->size ? b->size : 1);
    int err = -DP_EINVAL;

    if (!ctx || !plain ||
        EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1)
        goto out;
    for (size_t i = 0; i < b->batch; i++)
        if (openssl_open_one(ctx, b->keys + i * KEY_BYTES, b->nonces + i * NONCE_BYTES,
                             msg_at(buf, b, i), b->size, plain) ||
            memcmp(plain, msg_at(b->plain, b, i), b->size))
            goto out;
    err = DP_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(plain);
    return err;
}

/* Does out hold the plaintexts (after an open)? */
static int check_opened(const struct bench *b)
{
    for (size_t i = 0; i < b->batch; i++)
        if (memcmp(msg_at(b->out, b, i), msg_at(b->plain, b, i), b->size))
            return -DP_EINVAL;
    return DP_OK;
}

/* Warm up, then run passes until min_ns of wall-clock time have passed. */
static int bench_time(bench_pass_fn *pass, struct bench *b, uint64_t min_ns,
                      struct dp_bench_result *out)
{
    uint64_t warmup_ns = min_ns / 4 < WARMUP_MAX_NS ? min_ns / 4 : WARMUP_MAX_NS;
    uint64_t start, elapsed, passes = 0, per_round, cpu_start;
    int err;

    start = now_ns(CLOCK_MONOTONIC);
    do {
        if ((err = pass(b)))
            return err;
        passes++;
        elapsed = now_ns(CLOCK_MONOTONIC) - start;
    } while (passes < WARMUP_MIN_PASSES || elapsed < warmup_ns);
    per_round = passes * ROUND_NS / (elapsed ? elapsed : 1);
    if (per_round == 0)
        per_round = 1;

    passes = 0;
    cpu_start = now_ns(CLOCK_THREAD_CPUTIME_ID);
    start = now_ns(CLOCK_MONOTONIC);
    do {
        for (uint64_t k = 0; k < per_round; k++)
            if ((err = pass(b)))
                return err;
        passes += per_round;
        elapsed = now_ns(CLOCK_MONOTONIC) - start;
    } while (elapsed < min_ns);
    out->cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    out->ns = elapsed;
    out->messages = passes * b->batch;
    out->bytes = out->messages * b->size;
    return DP_OK;
}

int dp_bench_aead(int impl, int op, size_t size, size_t batch, uint64_t min_ns,
                  struct dp_bench_result *out)
{
    struct bench b;
    int prev, err;

    if (!out)
        return -DP_EINVAL;
    memset(out, 0, sizeof(*out));
    if (impl < 0 || impl >= DP_IMPL_COUNT)
        return -DP_EINVAL;
    if (!dp_crypto_impl_supported(impl))
        return -DP_ENOTSUP;
    if ((err = bench_init(&b, op, size, batch)))
        return err;
    prev = dp_crypto_impl_active();
    if ((err = dp_crypto_use(impl)))
        goto out;

    /* Valid ciphertexts, which OpenSSL must accept. */
    bench_set_msgs(&b, DP_BENCH_OP_SEAL);
    for (size_t i = 0; i < batch; i++)
        b.msgs[i].dst = msg_at(b.sealed, &b, i);
    if ((err = aead_seal_pass(&b)) || (err = openssl_check_sealed(&b, b.sealed)))
        goto out;

    bench_set_msgs(&b, op);
    if (op == DP_BENCH_OP_SEAL) {
        if (!(err = bench_time(aead_seal_pass, &b, min_ns, out)))
            err = openssl_check_sealed(&b, b.out);
    } else {
        if (!(err = bench_time(aead_open_pass, &b, min_ns, out)))
            err = check_opened(&b);
    }
out:
    dp_crypto_use(prev);
    bench_free(&b);
    if (err)
        memset(out, 0, sizeof(*out));
    return err;
}

int dp_bench_openssl(int op, size_t size, size_t batch, uint64_t min_ns,
                     struct dp_bench_result *out)
{
    struct bench b;
    int err;

    if (!out)
        return -DP_EINVAL;
    memset(out, 0, sizeof(*out));
    if ((err = bench_init(&b, op, size, batch)))
        return err;

    err = -DP_EINVAL;
    if (EVP_EncryptInit_ex(b.ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1)
        goto out;
    for (size_t i = 0; i < batch; i++)
        if (openssl_seal_one(b.ctx, b.keys + i * KEY_BYTES, b.nonces + i * NONCE_BYTES,
                             msg_at(b.plain, &b, i), size, msg_at(b.sealed, &b, i)))
            goto out;

    if (op == DP_BENCH_OP_SEAL) {
        if (!(err = bench_time(openssl_seal_pass, &b, min_ns, out)))
            err = openssl_check_sealed(&b, b.out);
    } else {
        err = -DP_EINVAL;
        if (EVP_DecryptInit_ex(b.ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1)
            goto out;
        if (!(err = bench_time(openssl_open_pass, &b, min_ns, out)))
            err = check_opened(&b);
    }
out:
    bench_free(&b);
    if (err)
        memset(out, 0, sizeof(*out));
    return err;
}

const char *dp_bench_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
