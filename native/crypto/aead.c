/* ChaCha20-Poly1305 (RFC 8439 section 2.8) and XChaCha20-Poly1305, one-shot
 * and batched. A batch is cut into chunks; each chunk goes through the
 * implementation's multi-buffer ChaCha20, then its multi-buffer Poly1305,
 * so short messages from different peers share vector lanes. */
#include "crypto_internal.h"

#define CHUNK 64

struct aead_req {
    const uint8_t *key;
    uint32_t nonce[3];
    const uint8_t *ad;
    size_t ad_len;
    const uint8_t *src;
    uint8_t *dst;
    size_t len; /* plaintext length */
    int *status;
};

/* Scratch for one chunk; holds key material and is wiped after use. */
struct aead_scratch {
    struct dp_chacha20_job cj[CHUNK];
    struct dp_poly1305_job pj[CHUNK];
    uint8_t poly_key[CHUNK][CHACHA20_BLOCK_BYTES];
    uint8_t ad_tail[CHUNK][POLY1305_BLOCK_BYTES];
    uint8_t ct_tail[CHUNK][POLY1305_BLOCK_BYTES];
    uint8_t lengths[CHUNK][POLY1305_BLOCK_BYTES];
    uint8_t tag[CHUNK][DP_CHACHA20POLY1305_TAG_BYTES];
};

void dp_wipe(void *p, size_t n)
{
    explicit_bzero(p, n);
}

static int tag_equal(const uint8_t *a, const uint8_t *b)
{
    uint32_t d = 0;

    for (int i = 0; i < DP_CHACHA20POLY1305_TAG_BYTES; i++)
        d |= (uint32_t)(a[i] ^ b[i]);
    return (int)(1 & ((d - 1) >> 8));
}

static void chacha_job(struct dp_chacha20_job *j, const struct aead_req *r, uint32_t counter,
                       const uint8_t *src, uint8_t *dst, size_t len)
{
    for (int w = 0; w < 8; w++)
        j->key[w] = load32_le(r->key + 4 * w);
    memcpy(j->nonce, r->nonce, sizeof(j->nonce));
    j->counter = counter;
    j->src = src;
    j->dst = dst;
    j->len = len;
    j->head = NULL;
    j->head_len = 0;
}

/* Poly1305 job for pad16(ad) || pad16(ct) || le64(ad_len) || le64(ct_len). */
static void poly_job(struct aead_scratch *s, size_t i, const struct aead_req *r,
                     const uint8_t *ct, uint8_t *tag)
{
    struct dp_poly1305_job *j = &s->pj[i];
    size_t ad_full = r->ad_len / POLY1305_BLOCK_BYTES, ad_rest = r->ad_len % POLY1305_BLOCK_BYTES;
    size_t ct_full = r->len / POLY1305_BLOCK_BYTES, ct_rest = r->len % POLY1305_BLOCK_BYTES;
    unsigned k = 0;

    j->key = s->poly_key[i];
    j->tag = tag;
    j->seg[k++] = (struct dp_poly1305_seg){r->ad, ad_full};
    if (ad_rest) {
        memset(s->ad_tail[i], 0, POLY1305_BLOCK_BYTES);
        memcpy(s->ad_tail[i], r->ad + ad_full * POLY1305_BLOCK_BYTES, ad_rest);
        j->seg[k++] = (struct dp_poly1305_seg){s->ad_tail[i], 1};
    }
    j->seg[k++] = (struct dp_poly1305_seg){ct, ct_full};
    if (ct_rest) {
        memset(s->ct_tail[i], 0, POLY1305_BLOCK_BYTES);
        memcpy(s->ct_tail[i], ct + ct_full * POLY1305_BLOCK_BYTES, ct_rest);
        j->seg[k++] = (struct dp_poly1305_seg){s->ct_tail[i], 1};
    }
    store64_le(s->lengths[i], r->ad_len);
    store64_le(s->lengths[i] + 8, r->len);
    j->seg[k++] = (struct dp_poly1305_seg){s->lengths[i], 1};
    j->nsegs = k;
}

static void seal_chunk(const struct dp_crypto_impl_ops *ops, struct aead_scratch *s,
                       const struct aead_req *r, size_t n)
{
    size_t nc = 0;

    /* block 0 is the Poly1305 key, blocks 1.. the message: one run */
    for (size_t i = 0; i < n; i++) {
        chacha_job(&s->cj[nc], &r[i], 0, r[i].src, r[i].dst, r[i].len);
        s->cj[nc].head = s->poly_key[i];
        s->cj[nc++].head_len = POLY1305_KEY_BYTES;
    }
    ops->chacha20_jobs(s->cj, nc);
    for (size_t i = 0; i < n; i++)
        poly_job(s, i, &r[i], r[i].dst, r[i].dst + r[i].len);
    ops->poly1305_jobs(s->pj, n);
    for (size_t i = 0; i < n; i++)
        *r[i].status = DP_OK;
    dp_wipe(s->cj, nc * sizeof(s->cj[0]));
    dp_wipe(s->poly_key, n * sizeof(s->poly_key[0]));
}

/* Whether [a, a+an) and [b, b+bn) share a byte. */
static int overlaps(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;

    return an && bn && x < y + bn && y < x + an;
}

/* A message whose dst is apart from what its MAC reads (ciphertext, tag
 * and AD) is opened in one ChaCha20 run (block 0 the Poly1305 key, blocks
 * 1.. the plaintext, as seal does): the separate one-block run for the
 * key would fill one vector lane of a job in a short burst. Its plaintext
 * is zeroed again if the tag fails. A message whose dst overlaps any of
 * those (in place, or over its own tag or header) is MACed first and
 * decrypted only when its tag is good. */
static size_t open_chunk(const struct dp_crypto_impl_ops *ops, struct aead_scratch *s,
                         const struct aead_req *r, size_t n)
{
    size_t nc = 0, ok = 0;
    uint8_t later[CHUNK];

    for (size_t i = 0; i < n; i++) {
        later[i] = (uint8_t)(overlaps(r[i].dst, r[i].len, r[i].src,
                                      r[i].len + DP_CHACHA20POLY1305_TAG_BYTES) ||
                             overlaps(r[i].dst, r[i].len, r[i].ad, r[i].ad_len));
        if (later[i]) {
            chacha_job(&s->cj[i], &r[i], 0, NULL, s->poly_key[i], POLY1305_KEY_BYTES);
        } else {
            chacha_job(&s->cj[i], &r[i], 0, r[i].src, r[i].dst, r[i].len);
            s->cj[i].head = s->poly_key[i];
            s->cj[i].head_len = POLY1305_KEY_BYTES;
        }
    }
    ops->chacha20_jobs(s->cj, n);
    for (size_t i = 0; i < n; i++)
        poly_job(s, i, &r[i], r[i].src, s->tag[i]);
    ops->poly1305_jobs(s->pj, n);
    for (size_t i = 0; i < n; i++) {
        if (tag_equal(s->tag[i], r[i].src + r[i].len)) {
            *r[i].status = DP_OK;
            ok++;
            if (later[i] && r[i].len)
                chacha_job(&s->cj[nc++], &r[i], 1, r[i].src, r[i].dst, r[i].len);
        } else {
            *r[i].status = -DP_EAUTH;
            if (r[i].len)
                explicit_bzero(r[i].dst, r[i].len);
        }
    }
    if (nc)
        ops->chacha20_jobs(s->cj, nc);
    dp_wipe(s->cj, n * sizeof(s->cj[0]));
    dp_wipe(s->poly_key, n * sizeof(s->poly_key[0]));
    dp_wipe(s->tag, n * sizeof(s->tag[0]));
    return ok;
}

static size_t run_chunks(const struct aead_req *r, size_t n, int open)
{
    const struct dp_crypto_impl_ops *ops = dp_crypto_ops();
    struct aead_scratch s;
    size_t ok = 0;

    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;

        if (open) {
            ok += open_chunk(ops, &s, r + off, m);
        } else {
            seal_chunk(ops, &s, r + off, m);
            ok += m;
        }
    }
    return ok;
}

static int one_shot(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                    size_t ad_len, const uint8_t *nonce, const uint8_t *key, int open)
{
    struct aead_req r;
    int status = -DP_EINVAL;
    size_t len = src_len;

    if (!key || !nonce || (ad_len && !ad) || (src_len && !src))
        return -DP_EINVAL;
    if (open) {
        if (src_len < DP_CHACHA20POLY1305_TAG_BYTES)
            return -DP_EINVAL;
        len -= DP_CHACHA20POLY1305_TAG_BYTES;
    }
    if (len > DP_AEAD_MAX_BYTES || ad_len > DP_AEAD_MAX_BYTES || (!dst && (len || !open)))
        return -DP_EINVAL;
    r = (struct aead_req){.key = key, .ad = ad, .ad_len = ad_len, .src = src, .dst = dst,
                          .len = len, .status = &status};
    for (int w = 0; w < 3; w++)
        r.nonce[w] = load32_le(nonce + 4 * w);
    run_chunks(&r, 1, open);
    return status;
}

int dp_aead_seal(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                 size_t ad_len, const uint8_t *nonce, const uint8_t *key)
{
    return one_shot(dst, src, src_len, ad, ad_len, nonce, key, 0);
}

int dp_aead_open(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                 size_t ad_len, const uint8_t *nonce, const uint8_t *key)
{
    return one_shot(dst, src, src_len, ad, ad_len, nonce, key, 1);
}

static int xaead(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                 size_t ad_len, const uint8_t *nonce, const uint8_t *key, int open)
{
    uint8_t subkey[DP_CHACHA20POLY1305_KEY_BYTES], n12[DP_CHACHA20POLY1305_NONCE_BYTES] = {0};
    int err;

    if (!key || !nonce)
        return -DP_EINVAL;
    dp_hchacha20(subkey, key, nonce);
    memcpy(n12 + 4, nonce + 16, 8);
    err = one_shot(dst, src, src_len, ad, ad_len, n12, subkey, open);
    dp_wipe(subkey, sizeof(subkey));
    return err;
}

int dp_xaead_seal(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                  size_t ad_len, const uint8_t *nonce, const uint8_t *key)
{
    return xaead(dst, src, src_len, ad, ad_len, nonce, key, 0);
}

int dp_xaead_open(uint8_t *dst, const uint8_t *src, size_t src_len, const uint8_t *ad,
                  size_t ad_len, const uint8_t *nonce, const uint8_t *key)
{
    return xaead(dst, src, src_len, ad, ad_len, nonce, key, 1);
}

/* Checks every message; the good ones become requests, the bad ones get
 * -DP_EINVAL and are left alone. */
static int batch(struct dp_aead_msg *msgs, size_t n, int open)
{
    struct aead_req reqs[DP_AEAD_BATCH_MAX];
    size_t nr = 0;

    if (n > DP_AEAD_BATCH_MAX || (n && !msgs))
        return -DP_EINVAL;
    for (size_t i = 0; i < n; i++) {
        struct dp_aead_msg *m = &msgs[i];
        size_t len = m->len;

        if (open) {
            if (len < DP_CHACHA20POLY1305_TAG_BYTES) {
                m->status = -DP_EINVAL;
                continue;
            }
            len -= DP_CHACHA20POLY1305_TAG_BYTES;
        }
        if (!m->key || (m->ad_len && !m->ad) || (m->len && !m->src) ||
            (!m->dst && (len || !open)) || len > DP_AEAD_MAX_BYTES) {
            m->status = -DP_EINVAL;
            continue;
        }
        reqs[nr] = (struct aead_req){.key = m->key, .nonce = {0, (uint32_t)m->counter,
                                                              (uint32_t)(m->counter >> 32)},
                                     .ad = m->ad, .ad_len = m->ad_len, .src = m->src,
                                     .dst = m->dst, .len = len, .status = &m->status};
        nr++;
    }
    return (int)run_chunks(reqs, nr, open);
}

int dp_aead_seal_batch(struct dp_aead_msg *msgs, size_t n)
{
    return batch(msgs, n, 0);
}

int dp_aead_open_batch(struct dp_aead_msg *msgs, size_t n)
{
    return batch(msgs, n, 1);
}
