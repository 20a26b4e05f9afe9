/* libFuzzer harness for the API's bulk path (native/wg/bulk.c, dp_bulk.h):
 * the NDJSON parser, and dp_device_bulk_apply with the undo its contract
 * leaves to the caller.
 *
 * Checked on every input:
 * - the body parsed whole against each of its lines parsed alone (a line
 *   means the same wherever it stands): the same records in the same order,
 *   or the body declined at the first line declined alone, for the same
 *   reason; blank lines (bytes.strip()'s whitespace) skipped but counted;
 * - each record against a reference read here from its line's text: only
 *   the fields its operation may have, each once; keys through a base64
 *   decoder of our own, refused when low-order; prefixes and the endpoint
 *   through inet_pton with host bits cleared bit by bit and repeats found by
 *   comparing each prefix with all before it; numbers within their bounds;
 *   the digests recomputed over the encoding dataplane/api/bulk.py
 *   documents; then the whole record compared byte for byte;
 * - the accepted batch applied to a device that is never started, as the
 *   controller's fast lane plans it (new peers with their settings and
 *   sessions, sessions on peers that were there; no prefix or receiver
 *   index twice), failing where the harness predicts (a new peer's id in
 *   use, a receiver index taken, no keypair left); what was done is checked
 *   on the device, then undone as dp_bulk.h tells the caller to, and the
 *   device must be as before: the same peers, endpoints, allowed IPs,
 *   indices and keypairs.
 * On one input in SPLIT_EVERY (by a hash of the input, so that a reproducer
 * run alone does the same), the body is also read by two threads: padded
 * with blank lines past bulk.c's PARALLEL_MIN_BYTES so that the split falls
 * where the input says, it must give what the whole parse gave, line numbers
 * one further. Not on every input: reading the megabyte of padding takes
 * ~15 ms of CPU under the fuzzer's instrumentation (three traced compares a
 * byte), the rest of an input ~0.3 ms.
 *
 * Input: an option byte (bit 0: a new peer's id is one in use, so the apply
 * fails there; bit 1: a session's receiver index is taken beforehand, so
 * it fails before anything; bits 2-7: from which operation on), two bytes
 * placing the split (a fraction of the body, little endian), then the body.
 * Any difference aborts. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dp_bulk.h"
#include "dp_crypto.h"
#include "dp_device.h"
#include "dp_tables.h"

#define HEADER 3
#define SPLIT_EVERY 64
#define SPLIT_HALF (1u << 19)           /* the padded body: 2 * (SPLIT_HALF + 1) bytes */
#define PADDED (2 * (SPLIT_HALF + 1))   /* > bulk.c's PARALLEL_MIN_BYTES (1 MiB) */
#define LIFETIME_REJECT 180             /* REJECT_AFTER_TIME, seconds */
#define NOW_NS (1000 * 1000000000ull)

#define BASE_PEERS 4     /* peers 0..3 are there before every batch */
#define MAX_PEERS 128
#define MAX_KEYPAIRS 12  /* a batch of more sessions fails with -ENOSPC on the 13th */

static const uint8_t DIGEST_KEY[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                       11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                       22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* dataplane.keys.LOW_ORDER_POINTS: u = 0, 1, two points of order 8, p - 1,
 * p, p + 1 (little endian) */
#define LOW_ORDERS 7
static const uint8_t LOW_ORDER[LOW_ORDERS][32] = {
    {0},
    {1},
    {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3,
     0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32,
     0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
    {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1,
     0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c,
     0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
};

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("bulk_ndjson: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ------------------------------------------------------------ parsing */

static int parse(const uint8_t *body, size_t len, struct dp_bulk *b)
{
    int rc = dp_bulk_parse(body, len, DIGEST_KEY, LOW_ORDER[0], LOW_ORDERS, b);

    if (rc < 0 || (rc == 1 && b->declined_why == DP_BULK_DECLINED_MEMORY))
        fail("out of (locked) memory on a %zu-byte body: raise RLIMIT_MEMLOCK (ulimit -l)", len);
    if (rc == 1 && (b->declined_why < DP_BULK_DECLINED_SYNTAX ||
                    b->declined_why > DP_BULK_DECLINED_EMPTY || b->ops || b->prefixes))
        fail("a declined body with reason %u, ops %p", b->declined_why, (void *)b->ops);
    return rc;
}

/* bytes.strip()'s whitespace, as the API splits a body */
static bool blank(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\v' && s[i] != '\f')
            return false;
    return true;
}

/* Op a of batch A and op b of batch B mean the same: every byte alike but
 * the line number, first_prefix compared through the prefixes it points at
 * (an op without prefixes points nowhere: where depends on the reading,
 * e.g. a delete read by the second thread has that half's offset, 0 when
 * read by one). */
static bool same_op(const struct dp_bulk *A, const struct dp_bulk_op *a, const struct dp_bulk *B,
                    const struct dp_bulk_op *b)
{
    struct dp_bulk_op x = *a, y = *b;

    if (x.n_prefixes == y.n_prefixes && x.n_prefixes &&
        memcmp(A->prefixes + x.first_prefix, B->prefixes + y.first_prefix,
               x.n_prefixes * sizeof(struct dp_bulk_prefix)) != 0)
        return false;
    x.line = y.line = 0;
    x.first_prefix = y.first_prefix = 0;
    return memcmp(&x, &y, sizeof(x)) == 0;
}

/* ------------------------------------------------------------ the reference */

enum { R_OP, R_PUBLIC_KEY, R_GENERATION, R_PRESHARED_KEY, R_ALLOWED_IPS, R_ENDPOINT,
       R_KEEPALIVE, R_REPLACE, R_SESSION, R_RECEIVER_INDEX, R_SENDER_INDEX, R_SEND_KEY,
       R_RECEIVE_KEY, R_LIFETIME, R_ACTIVATE, R_FIELDS };

static const char *const NAMES[R_FIELDS] = {
    "op", "public_key", "generation", "preshared_key", "allowed_ips", "endpoint",
    "persistent_keepalive", "replace", "session", "receiver_index", "sender_index",
    "send_key", "receive_key", "lifetime", "activate"};

#define B(f) (1u << (f))
#define SESSION_SET (B(R_RECEIVER_INDEX) | B(R_SENDER_INDEX) | B(R_SEND_KEY) | \
                     B(R_RECEIVE_KEY) | B(R_LIFETIME) | B(R_ACTIVATE) | B(R_GENERATION))
#define SESSION_NEEDS (B(R_RECEIVER_INDEX) | B(R_SENDER_INDEX) | B(R_SEND_KEY) | B(R_RECEIVE_KEY))
#define PEER_SET (B(R_OP) | B(R_PUBLIC_KEY) | B(R_GENERATION) | B(R_PRESHARED_KEY) | \
                  B(R_ALLOWED_IPS) | B(R_ENDPOINT) | B(R_KEEPALIVE) | B(R_REPLACE) | B(R_SESSION))

/* Where each field's value starts, at depth 1 (the line's object) and 2
 * (a put_peer's session). */
struct fields {
    const uint8_t *at[3][R_FIELDS];
    uint32_t seen[3];
};

/* The keys of an accepted line: strings right after '{' or ',' in an
 * object, followed by ':'. Strings hold no '"' or '\\' (the line was
 * checked for those), so a quote always ends one. */
static void walk(const uint8_t *s, size_t n, struct fields *f)
{
    char stack[8];
    int sp = 0;
    bool want_key = false;

    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];

        if (c == '"') {
            size_t j = i + 1, k;

            while (j < n && s[j] != '"')
                j++;
            if (j == n)
                fail("an accepted line with an open string");
            if (want_key && sp > 0 && stack[sp - 1] == '{') {
                int which = -1;

                for (int x = 0; x < R_FIELDS; x++)
                    if (strlen(NAMES[x]) == j - i - 1 &&
                        memcmp(NAMES[x], s + i + 1, j - i - 1) == 0)
                        which = x;
                for (k = j + 1; k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'); k++)
                    ;
                if (which < 0 || k == n || s[k] != ':')
                    fail("an accepted line with the key %.*s", (int)(j - i - 1), s + i + 1);
                if (sp > 2 || (f->seen[sp] & B(which)))
                    fail("an accepted line with %s twice, or at depth %d", NAMES[which], sp);
                f->seen[sp] |= B(which);
                for (k++; k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'); k++)
                    ;
                f->at[sp][which] = s + k;
                want_key = false;
            }
            i = j;
        } else if (c == '{' || c == '[') {
            if (sp == (int)sizeof(stack))
                fail("an accepted line nested %d deep", sp);
            stack[sp++] = (char)c;
            want_key = c == '{';
        } else if (c == '}' || c == ']') {
            if (sp == 0)
                fail("an accepted line that closes more than it opens");
            sp--;
            want_key = false;
        } else if (c == ',') {
            want_key = sp > 0 && stack[sp - 1] == '{';
        }
    }
}

static const uint8_t *skip(const uint8_t *p, const uint8_t *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

static bool ends_value(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == ',' || c == '}' || c == ']';
}

static bool word(const uint8_t *v, const uint8_t *end, const char *w)
{
    size_t n = strlen(w);

    return (size_t)(end - v) >= n && memcmp(v, w, n) == 0 && (v + n == end || ends_value(v[n]));
}

/* A JSON string's contents (no escapes in an accepted line). */
static size_t text(const uint8_t *v, const uint8_t *end, const uint8_t **s)
{
    const uint8_t *q;

    if (v >= end || *v != '"' || !(q = memchr(v + 1, '"', (size_t)(end - v - 1))))
        fail("an accepted line with a string value that is not one");
    *s = v + 1;
    return (size_t)(q - v - 1);
}

static uint64_t number(const uint8_t *v, const uint8_t *end, uint64_t low, uint64_t high,
                       const char *what)
{
    unsigned __int128 x = 0;
    const uint8_t *p = v;

    while (p < end && *p >= '0' && *p <= '9' && p - v < 25)
        x = x * 10 + (unsigned)(*p++ - '0');
    if (p == v || (p < end && !ends_value(*p)) || (*v == '0' && p - v > 1) || x < low || x > high)
        fail("%s accepted as %.*s", what, (int)(end - v < 25 ? end - v : 25), v);
    return (uint64_t)x;
}

static int b64(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* 43 base64 digits then '=': 258 bits, the last 2 zero. */
static void key(const uint8_t *v, const uint8_t *end, uint8_t out[32], const char *what)
{
    const uint8_t *s;
    size_t n = text(v, end, &s), o = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (n != 44 || s[43] != '=')
        fail("%s accepted with %zu characters", what, n);
    for (size_t i = 0; i < 43; i++) {
        int d = b64(s[i]);

        if (d < 0)
            fail("%s accepted with the character %c", what, s[i]);
        acc = acc << 6 | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            out[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    if (o != 32 || bits != 2 || (acc & 3))
        fail("%s accepted with padding bits set: %.44s", what, s);
}

static bool pton(int family, const uint8_t *s, size_t n, uint8_t out[16])
{
    char buf[64];

    memset(out, 0, 16);
    if (n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    return inet_pton(family, buf, out) == 1;
}

/* model.prefix */
static void prefix(const uint8_t *s, size_t n, struct dp_bulk_prefix *p)
{
    const uint8_t *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    bool v6 = memchr(s, ':', alen) != NULL;
    unsigned bits = v6 ? 128 : 32, cidr = bits;

    memset(p, 0, sizeof(*p));
    if (!pton(v6 ? AF_INET6 : AF_INET, s, alen, p->addr))
        fail("the prefix %.*s accepted", (int)n, s);
    if (slash) {
        size_t ln = n - alen - 1;

        cidr = 0;
        for (size_t i = 0; i < ln; i++) {
            if (slash[1 + i] < '0' || slash[1 + i] > '9')
                fail("the prefix %.*s accepted", (int)n, s);
            cidr = cidr * 10 + (unsigned)(slash[1 + i] - '0');
        }
        if (ln == 0 || ln > 3 || cidr > bits)
            fail("the prefix %.*s accepted", (int)n, s);
    }
    for (unsigned bit = cidr; bit < bits; bit++)
        p->addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    p->version = v6 ? 6 : 4;
    p->cidr = (uint8_t)cidr;
}

/* model.peer's allowed_ips: an array of prefix strings, repeats dropped
 * (each compared with all before it), at most DP_BULK_PREFIXES_MAX given. */
static uint32_t allowed_ips(const uint8_t *p, const uint8_t *end, struct dp_bulk_prefix *out,
                            uint32_t line)
{
    uint32_t given = 0, n = 0;

    if (*p != '[')
        fail("line %u accepted with allowed_ips not an array", line);
    p = skip(p + 1, end);
    if (p < end && *p == ']')
        return 0;
    for (;;) {
        const uint8_t *s;
        size_t len = text(p, end, &s); /* the first, or one after a ',' */
        bool again = false;

        if (++given > DP_BULK_PREFIXES_MAX)
            fail("line %u accepted with more than %d prefixes", line, DP_BULK_PREFIXES_MAX);
        prefix(s, len, &out[n]);
        for (uint32_t k = 0; k < n && !again; k++)
            again = memcmp(&out[k], &out[n], sizeof(out[n])) == 0;
        n += !again;
        p = skip(s + len + 1, end);
        if (p < end && *p == ']')
            return n;
        if (p == end || *p != ',')
            fail("line %u accepted with allowed_ips not an array of strings", line);
        p = skip(p + 1, end);
    }
}

/* model.endpoint */
static void endpoint(const uint8_t *s, size_t n, struct dp_bulk_op *w)
{
    const uint8_t *host = s, *port = NULL;
    size_t hn = 0, pn = 0;
    int family = AF_INET;
    uint32_t v = 0;

    if (n > 0 && s[0] == '[') {
        for (size_t i = 1; i + 1 < n; i++)
            if (s[i] == ']' && s[i + 1] == ':') {
                host = s + 1;
                hn = i - 1;
                port = s + i + 2;
                break;
            }
        family = AF_INET6;
    } else {
        for (size_t i = n; i-- > 0;)
            if (s[i] == ':') {
                hn = i;
                port = s + i + 1;
                break;
            }
    }
    if (port)
        pn = (size_t)(s + n - port);
    for (size_t i = 0; i < pn && v <= 65535; i++)
        v = port[i] >= '0' && port[i] <= '9' ? v * 10 + (uint32_t)(port[i] - '0') : 65536;
    if (!port || pn == 0 || v == 0 || v > 65535 || !pton(family, host, hn, w->endpoint_addr))
        fail("the endpoint %.*s accepted", (int)n, s);
    w->endpoint_family = family == AF_INET6 ? 6 : 4;
    w->endpoint_port = (uint16_t)v;
}

/* The session fields of object depth d (1 for put_session, 2 for a
 * put_peer's session) into w. */
static void session(const struct fields *f, int d, const uint8_t *end, struct dp_bulk_op *w)
{
    const uint8_t *const *at = f->at[d];
    uint8_t keys[64];

    if ((f->seen[d] & SESSION_NEEDS) != SESSION_NEEDS)
        fail("a session accepted without every field it needs (%#x)", f->seen[d]);
    w->flags |= DP_BULK_HAS_SESSION;
    w->receiver_index =
        (uint32_t)number(at[R_RECEIVER_INDEX], end, 1, UINT32_MAX, "receiver_index");
    w->sender_index = (uint32_t)number(at[R_SENDER_INDEX], end, 0, UINT32_MAX, "sender_index");
    key(at[R_SEND_KEY], end, w->send_key, "send_key");
    key(at[R_RECEIVE_KEY], end, w->recv_key, "receive_key");
    w->lifetime = at[R_LIFETIME] ? (uint32_t)number(at[R_LIFETIME], end, 1, DP_BULK_LIFETIME_MAX,
                                                    "lifetime")
                                 : DP_BULK_LIFETIME_MAX;
    if (at[R_ACTIVATE]) {
        const uint8_t *s;
        size_t n = text(at[R_ACTIVATE], end, &s);

        if (n == 3 && memcmp(s, "now", 3) == 0)
            w->flags |= DP_BULK_ACTIVATE_NOW;
        else if (n != 10 || memcmp(s, "on_receive", 10) != 0)
            fail("activate accepted as %.*s", (int)n, s);
    }
    if (at[R_GENERATION] && !word(at[R_GENERATION], end, "null")) {
        uint64_t g = number(at[R_GENERATION], end, 0, INT64_MAX, "generation");

        if (d == 1) {
            w->generation = g;
            w->flags |= DP_BULK_HAS_GENERATION;
        } else {
            w->session_generation = g;
            w->flags |= DP_BULK_SESSION_HAS_GENERATION;
        }
    }
    memcpy(keys, w->send_key, 32);
    memcpy(keys + 32, w->recv_key, 32);
    dp_blake2s(w->session_digest, DP_BULK_DIGEST_BYTES, keys, 64, DIGEST_KEY, 32);
}

/* bulk.settings_digest: the preshared key (or zeros), keepalive, the
 * endpoint (family, port, 4 or 16 address bytes; or three zero bytes), the
 * number of prefixes, then each (version, length, 4 or 16 bytes); 16-bit
 * numbers big endian. */
static void settings_digest(struct dp_bulk_op *w, const struct dp_bulk_prefix *p)
{
    static uint8_t buf[32 + 5 + 16 + 2 + DP_BULK_PREFIXES_MAX * 18];
    size_t o = 32;

    memcpy(buf, w->preshared_key, 32);
    buf[o++] = (uint8_t)(w->keepalive >> 8);
    buf[o++] = (uint8_t)w->keepalive;
    buf[o++] = w->endpoint_family;
    buf[o++] = (uint8_t)(w->endpoint_port >> 8);
    buf[o++] = (uint8_t)w->endpoint_port;
    if (w->endpoint_family) {
        memcpy(buf + o, w->endpoint_addr, w->endpoint_family == 6 ? 16 : 4);
        o += w->endpoint_family == 6 ? 16 : 4;
    }
    buf[o++] = (uint8_t)(w->n_prefixes >> 8);
    buf[o++] = (uint8_t)w->n_prefixes;
    for (uint32_t i = 0; i < w->n_prefixes; i++) {
        buf[o++] = p[i].version;
        buf[o++] = p[i].cidr;
        memcpy(buf + o, p[i].addr, p[i].version == 6 ? 16 : 4);
        o += p[i].version == 6 ? 16 : 4;
    }
    dp_blake2s(w->settings_digest, DP_BULK_DIGEST_BYTES, buf, o, DIGEST_KEY, 32);
}

static bool low_order(const uint8_t k[32])
{
    for (int i = 0; i < LOW_ORDERS; i++)
        if (memcmp(k, LOW_ORDER[i], 31) == 0 && (k[31] & 0x7f) == LOW_ORDER[i][31])
            return true;
    return false;
}

/* The record of an accepted line (its text without the newline), and its
 * prefixes, as read here; they must be got's, byte for byte. */
static void check_record(const uint8_t *line, size_t n, const struct dp_bulk *b,
                         const struct dp_bulk_op *got)
{
    static struct dp_bulk_prefix want_p[DP_BULK_PREFIXES_MAX];
    const uint8_t *end = line + n, *s;
    const uint8_t *const *at;
    struct dp_bulk_op w;
    struct fields f;
    size_t i = 0, j = n, len;

    for (size_t k = 0; k < n; k++)
        if ((line[k] < 0x20 && line[k] != '\t' && line[k] != '\r') || line[k] > 0x7e ||
            line[k] == '\\')
            fail("line %u accepted with the byte %#x", got->line, line[k]);
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
        i++;
    while (j > i && (line[j - 1] == ' ' || line[j - 1] == '\t' || line[j - 1] == '\r'))
        j--;
    if (j - i < 2 || line[i] != '{' || line[j - 1] != '}')
        fail("line %u accepted, not one object", got->line);
    walk(line, n, &f);
    at = f.at[1];
    memset(&w, 0, sizeof(w));
    if (!at[R_OP] || !at[R_PUBLIC_KEY])
        fail("line %u accepted without op or public_key", got->line);
    len = text(at[R_OP], end, &s);
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(s, lit, len) == 0)
    w.op = IS("put_peer")      ? DP_BULK_PUT_PEER
           : IS("delete_peer") ? DP_BULK_DELETE_PEER
           : IS("put_session") ? DP_BULK_PUT_SESSION
           : IS("delete_session") ? DP_BULK_DELETE_SESSION : 0;
#undef IS
    key(at[R_PUBLIC_KEY], end, w.public_key, "public_key");
    if (low_order(w.public_key))
        fail("line %u accepted with a low-order public key", got->line);
    switch (w.op) {
    case DP_BULK_PUT_PEER:
        if ((f.seen[1] & ~PEER_SET) || (f.seen[2] & ~SESSION_SET))
            fail("line %u, a put_peer, accepted with fields %#x, session %#x", got->line,
                 f.seen[1], f.seen[2]);
        if (at[R_GENERATION] && !word(at[R_GENERATION], end, "null")) {
            w.generation = number(at[R_GENERATION], end, 0, INT64_MAX, "generation");
            w.flags |= DP_BULK_HAS_GENERATION;
        }
        if (at[R_PRESHARED_KEY] && !word(at[R_PRESHARED_KEY], end, "null")) {
            static const uint8_t zero[32];

            key(at[R_PRESHARED_KEY], end, w.preshared_key, "preshared_key");
            if (memcmp(w.preshared_key, zero, 32) != 0)
                w.flags |= DP_BULK_HAS_PSK;
        }
        if (at[R_ALLOWED_IPS])
            w.n_prefixes = allowed_ips(at[R_ALLOWED_IPS], end, want_p, got->line);
        if (at[R_ENDPOINT] && !word(at[R_ENDPOINT], end, "null")) {
            len = text(at[R_ENDPOINT], end, &s);
            endpoint(s, len, &w);
        }
        if (at[R_KEEPALIVE])
            w.keepalive = (uint32_t)number(at[R_KEEPALIVE], end, 0, 65535, "persistent_keepalive");
        if (at[R_REPLACE]) {
            if (word(at[R_REPLACE], end, "true"))
                w.flags |= DP_BULK_REPLACE;
            else if (!word(at[R_REPLACE], end, "false"))
                fail("line %u accepted with replace not true or false", got->line);
        }
        if (at[R_SESSION] && !word(at[R_SESSION], end, "null"))
            session(&f, 2, end, &w);
        else if (f.seen[2])
            fail("line %u accepted with session fields outside a session", got->line);
        settings_digest(&w, want_p);
        break;
    case DP_BULK_PUT_SESSION:
        if ((f.seen[1] & ~(SESSION_SET | B(R_OP) | B(R_PUBLIC_KEY))) || f.seen[2])
            fail("line %u, a put_session, accepted with fields %#x", got->line, f.seen[1]);
        session(&f, 1, end, &w);
        break;
    case DP_BULK_DELETE_PEER:
    case DP_BULK_DELETE_SESSION:
        if ((f.seen[1] & ~(B(R_OP) | B(R_PUBLIC_KEY) | B(R_GENERATION))) || f.seen[2])
            fail("line %u, a delete, accepted with fields %#x", got->line, f.seen[1]);
        if (at[R_GENERATION] && !word(at[R_GENERATION], end, "null")) {
            w.generation = number(at[R_GENERATION], end, 0, INT64_MAX, "generation");
            w.flags |= DP_BULK_HAS_GENERATION;
        }
        break;
    default:
        fail("line %u accepted with the op %.*s", got->line, (int)len, s);
    }
    w.line = got->line;
    w.first_prefix = got->first_prefix;
    if (w.n_prefixes != got->n_prefixes ||
        (w.n_prefixes && memcmp(want_p, b->prefixes + got->first_prefix,
                                w.n_prefixes * sizeof(*want_p)) != 0))
        fail("line %u: %u prefixes read, the reference has %u (or other ones)", got->line,
             got->n_prefixes, w.n_prefixes);
    if (memcmp(&w, got, sizeof(w)) != 0) {
        size_t k = 0;

        while (((const uint8_t *)&w)[k] == ((const uint8_t *)got)[k])
            k++;
        fail("line %u read otherwise than the reference, from byte %zu of the record", got->line,
             k);
    }
}

/* ------------------------------------------------------------ the device */

static struct dp_device *dev;

/* What the harness checks is back after an undo. */
struct state {
    uint8_t in_use[MAX_PEERS];
    struct dp_endpoint endpoint[BASE_PEERS];
    uint32_t keypairs[BASE_PEERS];
    struct dp_allowedips_entry ips[BASE_PEERS][4];
    int64_t n_ips[BASE_PEERS];
    int64_t prefixes;
    uint32_t keypairs_live, keypairs_allocated, indices_used;
};

static void snapshot(struct state *s)
{
    struct dp_allowedips *aip = dp_device_allowedips(dev);
    struct dp_device_memory m;

    memset(s, 0, sizeof(*s));
    for (uint32_t id = 0; id < MAX_PEERS; id++) {
        struct dp_peer_stats st;

        s->in_use[id] = dp_device_peer_stats(dev, id, &st) == 0;
        if (id < BASE_PEERS) {
            s->keypairs[id] = st.keypairs;
            dp_device_peer_get_endpoint(dev, id, &s->endpoint[id]);
            s->n_ips[id] = dp_allowedips_list_peer(aip, id, s->ips[id], 4);
        }
    }
    s->prefixes = dp_allowedips_count(aip, 0);
    dp_device_memory(dev, &m);
    s->keypairs_live = m.keypairs_live;
    s->keypairs_allocated = m.keypairs_allocated;
    s->indices_used = m.indices_used;
}

static struct state before;

/* A stopped device with BASE_PEERS peers, each with an endpoint and two
 * prefixes, no keypairs. */
static void device_init(void)
{
    struct dp_device_config cfg = {.workers = 1, .mtu = 1420, .max_peers = MAX_PEERS,
                                   .index_table_log2 = 12, .event_ring_log2 = 4,
                                   .max_keypairs = MAX_KEYPAIRS, .replay_window_bits = 1024};
    struct dp_allowedips *aip;

    for (int w = 0; w < DP_DEVICE_MAX_WORKERS; w++)
        cfg.udp4_fd[w] = cfg.udp6_fd[w] = cfg.tun_fd[w] = -1;
    cfg.udp4_fd[0] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    dev = cfg.udp4_fd[0] >= 0 ? dp_device_new(&cfg) : NULL;
    if (!dev)
        fail("no device to apply batches to");
    aip = dp_device_allowedips(dev);
    for (uint32_t id = 0; id < BASE_PEERS; id++) {
        struct dp_endpoint ep = {.family = 4, .port = 51820, .addr = {192, 0, 2, (uint8_t)id}};
        uint8_t v4[4] = {10, 255, (uint8_t)id, 0}, v6[16] = {0xfd, 0, 0xff, 0xff};

        v6[15] = (uint8_t)id;
        if (dp_device_peer_add(dev, id) || dp_device_peer_set_endpoint(dev, id, &ep) ||
            dp_allowedips_insert(aip, DP_FAMILY_IPV4, v4, 24, id) ||
            dp_allowedips_insert(aip, DP_FAMILY_IPV6, v6, 128, id))
            fail("setting up peer %u", id);
    }
    snapshot(&before);
}

static bool base_prefix(const struct dp_bulk_prefix *p)
{
    for (uint32_t id = 0; id < BASE_PEERS; id++)
        for (int64_t k = 0; k < before.n_ips[id]; k++) {
            const struct dp_allowedips_entry *e = &before.ips[id][k];

            if (e->family == p->version && e->cidr == p->cidr &&
                memcmp(e->addr, p->addr, p->version == 6 ? 16 : 4) == 0)
                return true;
        }
    return false;
}

static bool same_prefix(const struct dp_bulk_prefix *a, const struct dp_bulk_prefix *b)
{
    return a->version == b->version && a->cidr == b->cidr && memcmp(a->addr, b->addr, 16) == 0;
}

/* One operation's effect on the device, checked after the apply. */
static void check_done(const struct dp_bulk *b, uint32_t i, uint32_t id, uint8_t act)
{
    static struct dp_allowedips_entry listed[DP_BULK_PREFIXES_MAX + 1];
    const struct dp_bulk_op *op = &b->ops[i];
    struct dp_peer_stats st;

    if (dp_device_peer_stats(dev, id, &st) != 0)
        fail("op %u (line %u): peer %u is not there", i, op->line, id);
    if (act & DP_BULK_DO_SETTINGS) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        struct dp_endpoint ep;
        bool v4m = op->endpoint_family == 6 && memcmp(op->endpoint_addr, mapped, 12) == 0;
        int64_t n = dp_allowedips_list_peer(dp_device_allowedips(dev), id, listed,
                                            DP_BULK_PREFIXES_MAX + 1);

        dp_device_peer_get_endpoint(dev, id, &ep);
        if (ep.family != (v4m ? 4 : op->endpoint_family) ||
            (op->endpoint_family && ep.port != op->endpoint_port) ||
            memcmp(ep.addr, v4m ? op->endpoint_addr + 12 : op->endpoint_addr,
                   ep.family == 6 ? 16 : ep.family == 4 ? 4 : 0) != 0)
            fail("op %u (line %u): peer %u's endpoint is not the line's", i, op->line, id);
        if (n != op->n_prefixes)
            fail("op %u (line %u): peer %u has %lld prefixes, not %u", i, op->line, id,
                 (long long)n, op->n_prefixes);
        for (uint32_t k = 0; k < op->n_prefixes; k++) {
            const struct dp_bulk_prefix *p = &b->prefixes[op->first_prefix + k];

            if (listed[k].family != p->version || listed[k].cidr != p->cidr ||
                memcmp(listed[k].addr, p->addr, p->version == 6 ? 16 : 4) != 0)
                fail("op %u (line %u): peer %u's prefix %u is not the line's", i, op->line, id, k);
        }
    }
    if (act & DP_BULK_DO_SESSION) {
        bool now = op->flags & DP_BULK_ACTIVATE_NOW;

        if (st.keypairs != 1 || st.current_is_initiator != now ||
            (now && (st.current_local_index != op->receiver_index ||
                     st.current_created_ns !=
                         NOW_NS - (uint64_t)(LIFETIME_REJECT - op->lifetime) * 1000000000ull)))
            fail("op %u (line %u): peer %u's session is not the line's", i, op->line, id);
    }
}

/* The batch applied as the controller's fast lane plans one, checked, and
 * undone; the device must be as it was. */
static void apply_and_undo(const struct dp_bulk *b, uint8_t options)
{
    static uint32_t ids[65536];
    static uint8_t actions[65536];
    uint32_t n = b->n_ops, next_id = BASE_PEERS, from = (uint32_t)(options >> 2) % n;
    uint32_t planned_sessions = 0, taken_index = 0, fail_at = n, done;
    uint8_t base_session[BASE_PEERS] = {0};
    int want_err = 0, err = 0;
    struct state after;

    if (n > sizeof(ids) / sizeof(ids[0]))
        return;
    for (uint32_t i = 0; i < n; i++) {
        const struct dp_bulk_op *op = &b->ops[i];
        uint8_t act = 0;
        bool clash = false, peer = false;

        ids[i] = 0;
        if (op->op == DP_BULK_PUT_PEER && next_id < MAX_PEERS) {
            /* no prefix of a peer there or of an earlier op (the controller
             * refuses those batches: a prefix would move between peers) */
            for (uint32_t k = 0; k < op->n_prefixes && !clash; k++) {
                const struct dp_bulk_prefix *p = &b->prefixes[op->first_prefix + k];

                clash = base_prefix(p);
                for (uint32_t e = 0; e < i && !clash; e++)
                    if (actions[e] & DP_BULK_DO_SETTINGS)
                        for (uint32_t q = 0; q < b->ops[e].n_prefixes && !clash; q++)
                            clash = same_prefix(p, &b->prefixes[b->ops[e].first_prefix + q]);
            }
            if (!clash) {
                act = DP_BULK_DO_CREATE | DP_BULK_DO_SETTINGS;
                ids[i] = next_id++;
                peer = true;
            }
        } else if (op->op == DP_BULK_PUT_SESSION) {
            /* a peer that was there, one session each (a key once a batch) */
            uint32_t id = op->public_key[0] % BASE_PEERS;

            if (!base_session[id]) {
                base_session[id] = 1;
                ids[i] = id;
                peer = true;
            }
        }
        if (peer && (op->flags & DP_BULK_HAS_SESSION)) {
            for (uint32_t e = 0; e < i && !clash; e++)
                clash = (actions[e] & DP_BULK_DO_SESSION) &&
                        b->ops[e].receiver_index == op->receiver_index;
            if (!clash)
                act |= DP_BULK_DO_SESSION;
        }
        actions[i] = act;
    }

    /* where it must fail: an index taken first (before anything), a new
     * peer's id in use, or the (MAX_KEYPAIRS+1)th keypair */
    if (options & 2)
        for (uint32_t i = from; i < n && !taken_index; i++)
            if (actions[i] & DP_BULK_DO_SESSION) {
                taken_index = b->ops[i].receiver_index;
                if (dp_device_index_claim(dev, taken_index) != 0)
                    fail("claiming index %u on the device", taken_index);
                fail_at = 0;
                want_err = -EEXIST;
            }
    if (options & 1)
        for (uint32_t i = from; i < n; i++)
            if (actions[i] & DP_BULK_DO_CREATE) {
                ids[i] = 0;
                if (!taken_index) {
                    fail_at = i;
                    want_err = -EEXIST;
                }
                break;
            }
    for (uint32_t i = 0; i < fail_at && !taken_index; i++)
        if ((actions[i] & DP_BULK_DO_SESSION) && ++planned_sessions > MAX_KEYPAIRS) {
            fail_at = i;
            want_err = -ENOSPC;
        }

    done = dp_device_bulk_apply(dev, b, ids, actions, NOW_NS, &err);
    if (done != fail_at || err != want_err)
        fail("the apply did %u of %u operations with error %d; %u and %d were due", done, n, err,
             fail_at, want_err);
    for (uint32_t i = 0; i < done; i++)
        if (actions[i])
            check_done(b, i, ids[i], actions[i]);
    snapshot(&after);
    {
        uint32_t created = 0, sessions = 0;
        int64_t prefixes = before.prefixes;

        for (uint32_t i = 0; i < done; i++) {
            created += (actions[i] & DP_BULK_DO_CREATE) != 0;
            sessions += (actions[i] & DP_BULK_DO_SESSION) != 0;
            if (actions[i] & DP_BULK_DO_SETTINGS)
                prefixes += b->ops[i].n_prefixes;
        }
        for (uint32_t id = 0; id < MAX_PEERS; id++)
            created -= after.in_use[id] && !before.in_use[id];
        if (created || after.prefixes != prefixes ||
            after.keypairs_live != before.keypairs_live + sessions ||
            after.indices_used != before.indices_used + sessions + (taken_index != 0))
            fail("after %u operations: %u peers too many or few, %lld prefixes (%lld due), "
                 "%u keypairs and %u indices (%u sessions)", done, created,
                 (long long)after.prefixes, (long long)prefixes, after.keypairs_live,
                 after.indices_used, sessions);
    }

    /* dp_bulk.h's undo: created peers removed, sessions on peers that were
     * there dropped with the peer's keypairs */
    for (uint32_t i = 0; i < done; i++) {
        int e = 0;

        if (actions[i] & DP_BULK_DO_CREATE)
            e = dp_device_peer_remove(dev, ids[i]);
        else if (actions[i] & DP_BULK_DO_SESSION)
            e = dp_device_peer_clear_keypairs(dev, ids[i]);
        if (e)
            fail("undoing op %u: %d", i, e);
    }
    if (taken_index && dp_device_index_release(dev, taken_index) != 0)
        fail("index %u, taken before the apply, is not there to release", taken_index);
    dp_device_maintain(dev);
    snapshot(&after);
    if (memcmp(&after, &before, sizeof(after)) != 0)
        fail("the device is not as it was after undoing %u operations (peers %d, prefixes "
             "%lld/%lld, keypairs %u/%u, indices %u)", done,
             memcmp(after.in_use, before.in_use, sizeof(after.in_use)) != 0,
             (long long)after.prefixes, (long long)before.prefixes, after.keypairs_live,
             after.keypairs_allocated, after.indices_used);
}

/* ------------------------------------------------------------ the input */

/* The body padded to PADDED bytes: a blank line before it and blank lines
 * after, so that bulk.c's half-way point is at byte `at` of the body. */
static const uint8_t *padded(const uint8_t *body, size_t len, size_t at)
{
    static uint8_t buf[PADDED];
    size_t pre = SPLIT_HALF + 1 - at;

    memset(buf, ' ', pre - 1);
    buf[pre - 1] = '\n';
    memcpy(buf + pre, body, len);
    buf[pre + len] = '\n';
    memset(buf + pre + len + 1, ' ', PADDED - pre - len - 1);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *body = data + HEADER, *end, *p;
    size_t len;
    struct dp_bulk whole, alone;
    uint32_t number = 0, k = 0, hash = 2166136261u;
    int rc;

    if (!dev)
        device_init();
    if (size < HEADER)
        return 0;
    len = size - HEADER;
    end = body + len;
    rc = parse(body, len, &whole);
    if (rc == 0) {
        uint32_t sum = 0;

        for (uint32_t i = 0; i < whole.n_ops; i++) {
            const struct dp_bulk_op *op = &whole.ops[i];

            if (op->n_prefixes ? op->first_prefix != sum : op->first_prefix > whole.n_prefixes)
                fail("op %u's prefixes start at %u, after %u", i, op->first_prefix, sum);
            sum += op->n_prefixes;
        }
        if (sum != whole.n_prefixes || whole.n_ops == 0)
            fail("%u prefixes in the batch, %u in its ops", whole.n_prefixes, sum);
    }

    /* line by line */
    for (p = body; p <= end; p++) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *stop = nl ? nl : end;

        number++;
        if (!blank(p, (size_t)(stop - p))) {
            if (parse(p, (size_t)(stop - p), &alone) != 0) {
                if (alone.declined_why == DP_BULK_DECLINED_EMPTY)
                    fail("line %u, not blank, declined as empty", number);
                if (rc == 0 || whole.declined_line != number ||
                    whole.declined_why != alone.declined_why)
                    fail("line %u declined alone (%u); the body: %s at line %u (%u)", number,
                         alone.declined_why, rc ? "declined" : "accepted", whole.declined_line,
                         whole.declined_why);
                break;
            }
            if (alone.n_ops != 1 || alone.ops[0].line != 1)
                fail("line %u alone: %u records", number, alone.n_ops);
            if (rc == 0 && (k >= whole.n_ops || whole.ops[k].line != number ||
                            !same_op(&whole, &whole.ops[k], &alone, &alone.ops[0])))
                fail("line %u: the body's record %u is not the line's alone", number, k);
            if (rc == 0)
                check_record(p, (size_t)(stop - p), &whole, &whole.ops[k]);
            else /* a line before the one that declines the body */
                check_record(p, (size_t)(stop - p), &alone, &alone.ops[0]);
            k++;
            dp_bulk_free(&alone);
        }
        if (!nl) {
            if (rc == 0 && k != whole.n_ops)
                fail("%u records for %u lines", whole.n_ops, k);
            if (rc != 0 && (whole.declined_why != DP_BULK_DECLINED_EMPTY || k))
                fail("the body declined at line %u (%u), no line is alone",
                     whole.declined_line, whole.declined_why);
            break;
        }
        p = nl;
    }

    for (size_t i = 0; i < size; i++)
        hash = (hash ^ data[i]) * 16777619u;
    if (hash % SPLIT_EVERY == 0 && len <= SPLIT_HALF) {
        size_t at = (size_t)(data[1] | data[2] << 8) * (len + 1) >> 16;
        struct dp_bulk two;

        if (parse(padded(body, len, at), PADDED, &two) != rc)
            fail("read by two threads (split at %zu), the body is %s", at,
                 rc ? "accepted" : "declined");
        if (rc != 0 && (two.declined_why != whole.declined_why ||
                        two.declined_line != whole.declined_line + (whole.declined_line != 0)))
            fail("read by two threads (split at %zu), declined at line %u (%u), not %u (%u)", at,
                 two.declined_line, two.declined_why, whole.declined_line, whole.declined_why);
        if (rc == 0) {
            if (two.n_ops != whole.n_ops || two.n_prefixes != whole.n_prefixes)
                fail("read by two threads (split at %zu), %u records, not %u", at, two.n_ops,
                     whole.n_ops);
            for (uint32_t i = 0; i < whole.n_ops; i++)
                if (two.ops[i].line != whole.ops[i].line + 1 ||
                    !same_op(&two, &two.ops[i], &whole, &whole.ops[i]))
                    fail("read by two threads (split at %zu), record %u differs", at, i);
            dp_bulk_free(&two);
        }
    }

    if (rc == 0) {
        apply_and_undo(&whole, data[0]);
        dp_bulk_free(&whole);
    }
    return 0;
}
