/* The API's bulk path (dp_bulk.h): a strict NDJSON reader for the four
 * bulk operations, their digests, and one call that installs a checked
 * batch. What the reader accepts it must read exactly as
 * dataplane.api.model does; whatever it is unsure of, it declines. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dp_bulk.h"
#include "dp_crypto.h"
#include "dp_device.h"
#include "dp_tables.h"
#include "dp_wg_messages.h"

struct cursor {
    const uint8_t *p, *end;
};

struct text {
    const uint8_t *s;
    size_t n;
};

/* Fields of a line, any operation; `seen` has a bit per field. */
enum field {
    F_OP, F_PUBLIC_KEY, F_GENERATION, F_PRESHARED_KEY, F_ALLOWED_IPS, F_ENDPOINT,
    F_KEEPALIVE, F_REPLACE, F_SESSION, F_RECEIVER_INDEX, F_SENDER_INDEX, F_SEND_KEY,
    F_RECEIVE_KEY, F_LIFETIME, F_ACTIVATE, F_COUNT
};

static const char *const field_names[F_COUNT] = {
    [F_OP] = "op", [F_PUBLIC_KEY] = "public_key", [F_GENERATION] = "generation",
    [F_PRESHARED_KEY] = "preshared_key", [F_ALLOWED_IPS] = "allowed_ips",
    [F_ENDPOINT] = "endpoint", [F_KEEPALIVE] = "persistent_keepalive", [F_REPLACE] = "replace",
    [F_SESSION] = "session", [F_RECEIVER_INDEX] = "receiver_index",
    [F_SENDER_INDEX] = "sender_index", [F_SEND_KEY] = "send_key",
    [F_RECEIVE_KEY] = "receive_key", [F_LIFETIME] = "lifetime", [F_ACTIVATE] = "activate",
};

#define BIT(f) (1u << (f))
#define SESSION_FIELDS                                                                    \
    (BIT(F_RECEIVER_INDEX) | BIT(F_SENDER_INDEX) | BIT(F_SEND_KEY) | BIT(F_RECEIVE_KEY) | \
     BIT(F_LIFETIME) | BIT(F_ACTIVATE) | BIT(F_GENERATION))
#define SESSION_REQUIRED \
    (BIT(F_RECEIVER_INDEX) | BIT(F_SENDER_INDEX) | BIT(F_SEND_KEY) | BIT(F_RECEIVE_KEY))
#define PEER_FIELDS                                                                        \
    (BIT(F_OP) | BIT(F_PUBLIC_KEY) | BIT(F_GENERATION) | BIT(F_PRESHARED_KEY) |            \
     BIT(F_ALLOWED_IPS) | BIT(F_ENDPOINT) | BIT(F_KEEPALIVE) | BIT(F_REPLACE) | BIT(F_SESSION))

/* A line's prefixes are compared one by one up to this many, then through
 * a table of PREFIX_SLOTS (at least twice DP_BULK_PREFIXES_MAX). */
#define PREFIXES_HASHED 16
#define PREFIX_SLOTS 2048
_Static_assert(PREFIX_SLOTS >= 2 * DP_BULK_PREFIXES_MAX && (PREFIX_SLOTS & (PREFIX_SLOTS - 1)) == 0,
               "the table keeps free slots for a line's every prefix");

struct reader {
    struct cursor c;
    const uint8_t *digest_key;
    const uint8_t *low_order;
    size_t n_low_order;
    struct dp_bulk *b;
    size_t prefixes_cap;
    uint32_t why;
    const struct dp_bulk_op *hashed_line; /* whose prefixes `slots` holds */
    uint16_t slots[PREFIX_SLOTS];          /* index + 1 into the line's prefixes; 0: free */
};

/* ------------------------------------------------------------ scanning */

static void skip_ws(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

static bool expect(struct cursor *c, uint8_t ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool peek(struct cursor *c, uint8_t ch)
{
    skip_ws(c);
    return c->p < c->end && *c->p == ch;
}

/* A string of printable ASCII without escapes (the only strings a valid
 * operation has). */
static bool string(struct cursor *c, struct text *t)
{
    if (!expect(c, '"'))
        return false;
    t->s = c->p;
    while (c->p < c->end && *c->p != '"') {
        if (*c->p < 0x20 || *c->p > 0x7e || *c->p == '\\')
            return false;
        c->p++;
    }
    if (c->p == c->end)
        return false;
    t->n = (size_t)(c->p - t->s);
    c->p++;
    return true;
}

/* What may follow a number or a literal (strchr alone would take NUL). */
static bool ends_value(uint8_t ch)
{
    return ch && strchr(" \t\r,}]", ch);
}

/* The literal `word` at the cursor, which moves past it; on false the
 * cursor stays before it (so that "truefalse" is not true, then false). */
static bool literal(struct cursor *c, const char *word)
{
    size_t n = strlen(word);

    skip_ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return false;
    /* a literal ends where a value may end */
    if (c->p + n != c->end && !ends_value(c->p[n]))
        return false;
    c->p += n;
    return true;
}

static bool is_null(struct cursor *c)
{
    struct cursor save = *c;

    if (literal(c, "null"))
        return true;
    *c = save;
    return false;
}

/* A JSON integer 0 .. max without sign, fraction or exponent (which the
 * model refuses, or reads as a float it refuses). */
static bool integer(struct cursor *c, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    const uint8_t *start;

    skip_ws(c);
    start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        uint64_t d = (uint64_t)(*c->p - '0');

        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
        c->p++;
    }
    if (c->p == start || (*start == '0' && c->p - start > 1))
        return false;
    if (c->p < c->end && !ends_value(*c->p))
        return false; /* '.', 'e', ... */
    *out = v;
    return true;
}

/* ------------------------------------------------------------ values */

/* base64 digit values; 0xff: not a digit */
static const uint8_t b64[256] = {
    ['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,
    ['H'] = 7,  ['I'] = 8,  ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13,
    ['O'] = 14, ['P'] = 15, ['Q'] = 16, ['R'] = 17, ['S'] = 18, ['T'] = 19, ['U'] = 20,
    ['V'] = 21, ['W'] = 22, ['X'] = 23, ['Y'] = 24, ['Z'] = 25, ['a'] = 26, ['b'] = 27,
    ['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31, ['g'] = 32, ['h'] = 33, ['i'] = 34,
    ['j'] = 35, ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39, ['o'] = 40, ['p'] = 41,
    ['q'] = 42, ['r'] = 43, ['s'] = 44, ['t'] = 45, ['u'] = 46, ['v'] = 47, ['w'] = 48,
    ['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53, ['2'] = 54, ['3'] = 55,
    ['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['+'] = 62,
    ['/'] = 63,
};
/* which bytes are base64 digits ('A' maps to 0 like the unset entries) */
static bool is_b64(uint8_t ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

/* A key as `wg` prints it: 43 base64 characters whose last has zero
 * padding bits, then '=' (model._KEY_TEXT). */
static bool key(const struct text *t, uint8_t out[32])
{
    const uint8_t *s = t->s;
    uint32_t v;
    bool ok = true;

    if (t->n != 44 || s[43] != '=')
        return false;
    for (size_t i = 0; i < 43; i++)
        ok &= is_b64(s[i]);
    if (!ok)
        return false;
    for (size_t i = 0, o = 0; i < 40; i += 4, o += 3) {
        v = (uint32_t)b64[s[i]] << 18 | (uint32_t)b64[s[i + 1]] << 12 |
            (uint32_t)b64[s[i + 2]] << 6 | b64[s[i + 3]];
        out[o] = (uint8_t)(v >> 16);
        out[o + 1] = (uint8_t)(v >> 8);
        out[o + 2] = (uint8_t)v;
    }
    /* the last 3 digits: 18 bits, 16 of them bytes 30 and 31 */
    v = (uint32_t)b64[s[40]] << 12 | (uint32_t)b64[s[41]] << 6 | b64[s[42]];
    out[30] = (uint8_t)(v >> 10);
    out[31] = (uint8_t)(v >> 2);
    return (v & 3u) == 0;
}

static bool low_order(const struct reader *r, const uint8_t pk[32])
{
    for (size_t i = 0; i < r->n_low_order; i++) {
        const uint8_t *lo = r->low_order + 32 * i;

        if (memcmp(pk, lo, 31) == 0 && (pk[31] & 0x7f) == lo[31])
            return true;
    }
    return false;
}

/* inet_pton on a text (which holds no NUL: string() takes printable
 * characters only). */
static bool pton(int family, const uint8_t *s, size_t n, uint8_t *out)
{
    char buf[64];

    if (n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    return inet_pton(family, buf, out) == 1;
}

static bool all_digits(const uint8_t *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* model.prefix: ADDRESS[/LENGTH], the family by a ':' in the address,
 * host bits cleared. */
static bool prefix(const struct text *t, struct dp_bulk_prefix *p)
{
    const uint8_t *slash = memchr(t->s, '/', t->n);
    size_t alen = slash ? (size_t)(slash - t->s) : t->n;
    bool v6 = memchr(t->s, ':', alen) != NULL;
    unsigned bits = v6 ? 128 : 32, cidr = bits;

    memset(p, 0, sizeof(*p));
    if (!pton(v6 ? AF_INET6 : AF_INET, t->s, alen, p->addr))
        return false;
    if (slash) {
        const uint8_t *l = slash + 1;
        size_t ln = t->n - alen - 1;

        if (!all_digits(l, ln) || ln > 3)
            return false;
        cidr = 0;
        for (size_t i = 0; i < ln; i++)
            cidr = cidr * 10 + (unsigned)(l[i] - '0');
        if (cidr > bits)
            return false;
    }
    for (unsigned i = 0; i < 16; i++) {
        unsigned keep = cidr > i * 8 ? (cidr - i * 8 >= 8 ? 8 : cidr - i * 8) : 0;

        p->addr[i] &= (uint8_t)(0xff00u >> keep);
    }
    p->version = v6 ? 6 : 4;
    p->cidr = (uint8_t)cidr;
    return true;
}

/* model.endpoint: IPV4:PORT or [IPV6]:PORT, literal addresses, port
 * 1..65535 (any number of leading zeros, as int() reads them). */
static bool endpoint(const struct text *t, struct dp_bulk_op *op)
{
    const uint8_t *host, *port;
    size_t hn, pn;
    int family;
    unsigned long v = 0;

    if (t->n > 0 && t->s[0] == '[') {
        const uint8_t *s = t->s + 1, *sep = NULL;
        size_t n = t->n - 1;

        for (size_t i = 0; i + 1 < n; i++)
            if (s[i] == ']' && s[i + 1] == ':') {
                sep = s + i;
                break;
            }
        if (!sep)
            return false;
        host = s;
        hn = (size_t)(sep - s);
        port = sep + 2;
        pn = n - hn - 2;
        family = AF_INET6;
    } else {
        const uint8_t *sep = NULL;

        for (size_t i = t->n; i-- > 0;)
            if (t->s[i] == ':') {
                sep = t->s + i;
                break;
            }
        if (!sep)
            return false;
        host = t->s;
        hn = (size_t)(sep - t->s);
        port = sep + 1;
        pn = t->n - hn - 1;
        family = AF_INET;
    }
    if (!all_digits(port, pn))
        return false;
    for (size_t i = 0; i < pn; i++) {
        v = v * 10 + (unsigned long)(port[i] - '0');
        if (v > 65535)
            return false;
    }
    if (v == 0 || !pton(family, host, hn, op->endpoint_addr))
        return false;
    op->endpoint_family = family == AF_INET6 ? 6 : 4;
    op->endpoint_port = (uint16_t)v;
    return true;
}

/* ------------------------------------------------------------ lines */

static bool text_is(const struct text *t, const char *word)
{
    return strlen(word) == t->n && memcmp(word, t->s, t->n) == 0;
}

static bool field_name(struct cursor *c, enum field *f)
{
    struct text t;

    if (!string(c, &t) || !expect(c, ':'))
        return false;
    for (int i = 0; i < F_COUNT; i++)
        if (text_is(&t, field_names[i])) {
            *f = (enum field)i;
            return true;
        }
    return false;
}

static uint32_t prefix_hash(const struct dp_bulk_prefix *p)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    const uint8_t *bytes = (const uint8_t *)p;

    for (size_t i = 0; i < sizeof(*p); i++)
        h = (h ^ bytes[i]) * 16777619u;
    return h;
}

static bool same_prefix(const struct dp_bulk_prefix *a, const struct dp_bulk_prefix *b)
{
    return a->version == b->version && a->cidr == b->cidr && memcmp(a->addr, b->addr, 16) == 0;
}

/* Prefix i of op's into the table. */
static void slot_insert(struct reader *r, const struct dp_bulk_op *op, uint32_t i)
{
    uint32_t mask = PREFIX_SLOTS - 1;
    uint32_t h = prefix_hash(&r->b->prefixes[op->first_prefix + i]) & mask;

    while (r->slots[h])
        h = (h + 1) & mask;
    r->slots[h] = (uint16_t)(i + 1);
}

/* Is p one of the line's prefixes already? A few are compared one by one;
 * from PREFIXES_HASHED on, a hash table of the line's prefixes answers, so
 * that a line of 1024 costs 1024 probes, not half a million comparisons. */
static bool repeated(struct reader *r, const struct dp_bulk_op *op,
                     const struct dp_bulk_prefix *p)
{
    const struct dp_bulk_prefix *mine;
    uint32_t n = op->n_prefixes, mask = PREFIX_SLOTS - 1;

    if (n == 0) /* the line's first prefix (and maybe no array yet: no NULL + 0) */
        return false;
    mine = r->b->prefixes + op->first_prefix;
    if (n < PREFIXES_HASHED) {
        for (uint32_t i = 0; i < n; i++)
            if (same_prefix(&mine[i], p))
                return true;
        return false;
    }
    if (r->hashed_line != op) { /* the table is built once the line has enough */
        memset(r->slots, 0, sizeof(r->slots));
        for (uint32_t i = 0; i < n; i++)
            slot_insert(r, op, i);
        r->hashed_line = op;
    }
    for (uint32_t h = prefix_hash(p) & mask; r->slots[h]; h = (h + 1) & mask)
        if (same_prefix(&mine[r->slots[h] - 1], p))
            return true;
    return false;
}

/* A new prefix i of op's: into the table, if op's prefixes are hashed. */
static void remember(struct reader *r, const struct dp_bulk_op *op, uint32_t i)
{
    if (r->hashed_line == op)
        slot_insert(r, op, i);
}

static bool add_prefix(struct reader *r, struct dp_bulk_op *op, const struct dp_bulk_prefix *p)
{
    struct dp_bulk *b = r->b;

    if (repeated(r, op, p)) /* a repeat: the first one stays */
        return true;
    if (b->n_prefixes == r->prefixes_cap) {
        size_t cap = r->prefixes_cap ? r->prefixes_cap * 2 : 1024;
        struct dp_bulk_prefix *grown = realloc(b->prefixes, cap * sizeof(*grown));

        if (!grown) {
            r->why = DP_BULK_DECLINED_MEMORY;
            return false;
        }
        b->prefixes = grown;
        r->prefixes_cap = cap;
    }
    b->prefixes[b->n_prefixes++] = *p;
    remember(r, op, op->n_prefixes);
    op->n_prefixes++;
    return true;
}

static bool allowed_ips(struct reader *r, struct dp_bulk_op *op)
{
    struct cursor *c = &r->c;
    uint32_t given = 0;

    op->first_prefix = r->b->n_prefixes;
    if (!expect(c, '['))
        return false;
    if (expect(c, ']'))
        return true;
    do {
        struct text t;
        struct dp_bulk_prefix p;

        if (!string(c, &t))
            return false;
        if (++given > DP_BULK_PREFIXES_MAX || !prefix(&t, &p)) {
            r->why = DP_BULK_DECLINED_VALUE;
            return false;
        }
        if (!add_prefix(r, op, &p))
            return false;
    } while (expect(c, ','));
    return expect(c, ']');
}

/* The fields of a session object (or of a put_session line); `seen`
 * collects them. */
static bool session_field(struct reader *r, enum field f, struct dp_bulk_op *op,
                          bool in_put_session)
{
    struct cursor *c = &r->c;
    struct text t;
    uint64_t v;

    r->why = DP_BULK_DECLINED_VALUE;
    switch (f) {
    case F_RECEIVER_INDEX:
        if (!integer(c, UINT32_MAX, &v) || v == 0)
            return false;
        op->receiver_index = (uint32_t)v;
        return true;
    case F_SENDER_INDEX:
        if (!integer(c, UINT32_MAX, &v))
            return false;
        op->sender_index = (uint32_t)v;
        return true;
    case F_SEND_KEY:
        return string(c, &t) && key(&t, op->send_key);
    case F_RECEIVE_KEY:
        return string(c, &t) && key(&t, op->recv_key);
    case F_LIFETIME:
        if (!integer(c, DP_BULK_LIFETIME_MAX, &v) || v == 0)
            return false;
        op->lifetime = (uint32_t)v;
        return true;
    case F_ACTIVATE:
        if (!string(c, &t))
            return false;
        if (text_is(&t, "now"))
            op->flags |= DP_BULK_ACTIVATE_NOW;
        else if (!text_is(&t, "on_receive"))
            return false;
        return true;
    case F_GENERATION:
        if (is_null(c))
            return true;
        if (!integer(c, INT64_MAX, &v))
            return false;
        if (in_put_session) {
            op->generation = v;
            op->flags |= DP_BULK_HAS_GENERATION;
        } else {
            op->session_generation = v;
            op->flags |= DP_BULK_SESSION_HAS_GENERATION;
        }
        return true;
    default:
        return false;
    }
}

static bool session_object(struct reader *r, struct dp_bulk_op *op)
{
    struct cursor *c = &r->c;
    uint32_t seen = 0;

    if (!expect(c, '{'))
        return false;
    if (!peek(c, '}')) {
        do {
            enum field f;

            if (!field_name(c, &f) || !(BIT(f) & SESSION_FIELDS) || (seen & BIT(f))) {
                r->why = DP_BULK_DECLINED_FIELD;
                return false;
            }
            seen |= BIT(f);
            if (!session_field(r, f, op, false))
                return false;
        } while (expect(c, ','));
    }
    if (!expect(c, '}'))
        return false;
    if ((seen & SESSION_REQUIRED) != SESSION_REQUIRED) {
        r->why = DP_BULK_DECLINED_FIELD;
        return false;
    }
    op->flags |= DP_BULK_HAS_SESSION;
    return true;
}

static void settings_digest(const uint8_t *digest_key, const struct dp_bulk_op *op,
                            const struct dp_bulk_prefix *prefixes, uint8_t *out);
static void session_digest(const uint8_t *digest_key, const uint8_t *send_key,
                           const uint8_t *recv_key, uint8_t *out);

/* One line: an object whose fields may come in any order, the operation
 * among them; which fields it may have is checked once it is known. */
static bool line(struct reader *r, struct dp_bulk_op *op)
{
    struct cursor *c = &r->c;
    uint32_t seen = 0;
    struct text t;
    uint64_t v;

    if (!expect(c, '{'))
        return false;
    if (!peek(c, '}')) {
        do {
            enum field f;

            if (!field_name(c, &f) || (seen & BIT(f))) {
                r->why = DP_BULK_DECLINED_FIELD;
                return false;
            }
            seen |= BIT(f);
            r->why = DP_BULK_DECLINED_VALUE;
            switch (f) {
            case F_OP:
                if (!string(c, &t))
                    return false;
                if (text_is(&t, "put_peer"))
                    op->op = DP_BULK_PUT_PEER;
                else if (text_is(&t, "delete_peer"))
                    op->op = DP_BULK_DELETE_PEER;
                else if (text_is(&t, "put_session"))
                    op->op = DP_BULK_PUT_SESSION;
                else if (text_is(&t, "delete_session"))
                    op->op = DP_BULK_DELETE_SESSION;
                else
                    return false;
                break;
            case F_PUBLIC_KEY:
                if (!string(c, &t) || !key(&t, op->public_key) || low_order(r, op->public_key))
                    return false;
                break;
            case F_PRESHARED_KEY:
                if (is_null(c))
                    break;
                if (!string(c, &t) || !key(&t, op->preshared_key))
                    return false;
                break;
            case F_ALLOWED_IPS:
                if (!allowed_ips(r, op))
                    return false;
                break;
            case F_ENDPOINT:
                if (is_null(c))
                    break;
                if (!string(c, &t) || !endpoint(&t, op))
                    return false;
                break;
            case F_KEEPALIVE:
                if (!integer(c, 65535, &v))
                    return false;
                op->keepalive = (uint32_t)v;
                break;
            case F_REPLACE:
                if (literal(c, "true"))
                    op->flags |= DP_BULK_REPLACE;
                else if (!literal(c, "false"))
                    return false;
                break;
            case F_SESSION:
                if (is_null(c))
                    break;
                if (!session_object(r, op))
                    return false;
                break;
            case F_GENERATION:
                if (is_null(c))
                    break;
                if (!integer(c, INT64_MAX, &v))
                    return false;
                op->generation = v;
                op->flags |= DP_BULK_HAS_GENERATION;
                break;
            default:
                if (!session_field(r, f, op, true))
                    return false;
            }
        } while (expect(c, ','));
    }
    if (!expect(c, '}'))
        return false;
    skip_ws(c);
    if (c->p != c->end)
        return false;
    r->why = DP_BULK_DECLINED_FIELD;
    if (!(seen & BIT(F_OP)) || !(seen & BIT(F_PUBLIC_KEY)))
        return false;
    switch (op->op) {
    case DP_BULK_PUT_PEER:
        if (seen & ~PEER_FIELDS)
            return false;
        break;
    case DP_BULK_PUT_SESSION:
        if (seen & ~(SESSION_FIELDS | BIT(F_OP) | BIT(F_PUBLIC_KEY)))
            return false;
        if ((seen & SESSION_REQUIRED) != SESSION_REQUIRED)
            return false;
        op->flags |= DP_BULK_HAS_SESSION;
        break;
    default:
        if (seen & ~(BIT(F_OP) | BIT(F_PUBLIC_KEY) | BIT(F_GENERATION)))
            return false;
    }
    if (op->flags & DP_BULK_HAS_SESSION) {
        if (!op->lifetime)
            op->lifetime = DP_BULK_LIFETIME_MAX;
        session_digest(r->digest_key, op->send_key, op->recv_key, op->session_digest);
    }
    if (op->op == DP_BULK_PUT_PEER) {
        static const uint8_t zero[32];

        /* an all-zero preshared key is none, as `wg` has it */
        if ((seen & BIT(F_PRESHARED_KEY)) && memcmp(op->preshared_key, zero, 32) != 0)
            op->flags |= DP_BULK_HAS_PSK;
        else
            dp_wipe(op->preshared_key, 32);
        if (!(seen & BIT(F_ALLOWED_IPS)))
            op->first_prefix = r->b->n_prefixes;
        settings_digest(r->digest_key, op, r->b->prefixes, op->settings_digest);
    }
    return true;
}

static bool blank(const uint8_t *s, size_t n)
{
    /* bytes.strip()'s whitespace */
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\v\f", s[i]) || s[i] == 0)
            return false;
    return true;
}

/* A body this large is read by two threads, one half each (this machine
 * class has two cores, and the daemon's loop waits for the parse). */
#define PARALLEL_MIN_BYTES (1u << 20)

/* The lines of [p, end), numbered from first_line, into b.ops (a window of
 * the batch's records) with prefixes of its own. */
struct part {
    struct reader r;
    struct dp_bulk b;
    const uint8_t *p, *end;
    uint32_t first_line;
    bool declined;
};

static void *parse_part(void *arg)
{
    struct part *pt = arg;
    const uint8_t *p = pt->p, *end = pt->end;
    uint32_t number = pt->first_line - 1;

    pt->r.b = &pt->b;
    while (p <= end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *stop = nl ? nl : end;

        number++;
        if (!blank(p, (size_t)(stop - p))) {
            struct dp_bulk_op *op = &pt->b.ops[pt->b.n_ops];

            pt->r.c.p = p;
            pt->r.c.end = stop;
            pt->r.why = DP_BULK_DECLINED_SYNTAX;
            op->line = number;
            if (!line(&pt->r, op)) {
                pt->declined = true;
                pt->b.declined_line = number;
                pt->b.declined_why = pt->r.why ? pt->r.why : DP_BULK_DECLINED_SYNTAX;
                return NULL;
            }
            pt->b.n_ops++;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    return NULL;
}

static size_t count_lines(const uint8_t *p, const uint8_t *end)
{
    size_t n = 1;

    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    return n;
}

int dp_bulk_parse(const uint8_t *body, size_t len, const uint8_t *digest_key,
                  const uint8_t *low_order_keys, size_t n_low_order, struct dp_bulk *out)
{
    const uint8_t *end = body + len, *mid = NULL;
    struct part parts[2];
    size_t lines, first_lines, bytes;
    int n_parts = 1;
    pthread_t helper;
    bool threaded = false;
    void *mem;

    memset(out, 0, sizeof(*out));
    memset(parts, 0, sizeof(parts));
    lines = count_lines(body, end);
    if (lines > UINT32_MAX / 2) {
        out->declined_why = DP_BULK_DECLINED_VALUE;
        return 1;
    }
    bytes = lines * sizeof(struct dp_bulk_op);
    bytes = (bytes + 4095) & ~(size_t)4095;
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return -ENOMEM;
    if (mlock(mem, bytes) < 0) {
        munmap(mem, bytes);
        return -ENOMEM;
    }
    madvise(mem, bytes, MADV_DONTDUMP);
    madvise(mem, bytes, MADV_WIPEONFORK);
    out->ops = mem;
    out->bytes = bytes;

    if (len >= PARALLEL_MIN_BYTES)
        mid = memchr(body + len / 2, '\n', (size_t)(end - (body + len / 2)));
    first_lines = mid ? count_lines(body, mid) : lines; /* lines before mid's '\n' */
    for (int i = 0; i < 2; i++) {
        parts[i].r = (struct reader){.digest_key = digest_key, .low_order = low_order_keys,
                                     .n_low_order = n_low_order};
    }
    parts[0].p = body;
    parts[0].end = mid ? mid : end;
    parts[0].first_line = 1;
    parts[0].b.ops = out->ops;
    if (mid) {
        n_parts = 2;
        parts[1].p = mid + 1;
        parts[1].end = end;
        parts[1].first_line = (uint32_t)first_lines + 1;
        parts[1].b.ops = out->ops + first_lines;
        threaded = pthread_create(&helper, NULL, parse_part, &parts[1]) == 0;
    }
    parse_part(&parts[0]);
    if (n_parts == 2) {
        if (threaded)
            pthread_join(helper, NULL);
        else
            parse_part(&parts[1]);
    }

    for (int i = 0; i < n_parts; i++)
        if (parts[i].declined) {
            for (int j = 0; j < n_parts; j++)
                free(parts[j].b.prefixes);
            dp_bulk_free(out);
            out->declined_line = parts[i].b.declined_line;
            out->declined_why = parts[i].b.declined_why;
            return 1;
        }
    /* the halves joined: ops closed up, prefixes appended */
    out->n_ops = parts[0].b.n_ops;
    out->prefixes = parts[0].b.prefixes;
    out->n_prefixes = parts[0].b.n_prefixes;
    if (n_parts == 2) {
        uint32_t n1 = parts[1].b.n_ops, np1 = parts[1].b.n_prefixes;

        if (out->n_ops != first_lines)
            memmove(out->ops + out->n_ops, parts[1].b.ops, n1 * sizeof(struct dp_bulk_op));
        for (uint32_t k = 0; k < n1; k++)
            out->ops[out->n_ops + k].first_prefix += out->n_prefixes;
        if (np1) {
            struct dp_bulk_prefix *all =
                realloc(out->prefixes, (out->n_prefixes + np1) * sizeof(*all));

            if (!all) {
                free(parts[1].b.prefixes);
                dp_bulk_free(out);
                out->declined_why = DP_BULK_DECLINED_MEMORY;
                return 1;
            }
            memcpy(all + out->n_prefixes, parts[1].b.prefixes, np1 * sizeof(*all));
            out->prefixes = all;
            out->n_prefixes += np1;
        }
        free(parts[1].b.prefixes);
        out->n_ops += n1;
    }
    if (out->n_ops == 0) {
        dp_bulk_free(out);
        out->declined_why = DP_BULK_DECLINED_EMPTY;
        return 1;
    }
    return 0;
}

void dp_bulk_free(struct dp_bulk *b)
{
    if (b->ops) {
        dp_wipe(b->ops, b->bytes);
        munmap(b->ops, b->bytes);
    }
    free(b->prefixes);
    b->ops = NULL;
    b->prefixes = NULL;
    b->n_ops = b->n_prefixes = 0;
    b->bytes = 0;
}

/* ------------------------------------------------------------ digests */

static void settings_digest(const uint8_t *digest_key, const struct dp_bulk_op *op,
                            const struct dp_bulk_prefix *prefixes, uint8_t *out)
{
    struct dp_blake2s_state st;
    uint8_t buf[64];
    size_t o = 0, alen = op->endpoint_family == 6 ? 16 : op->endpoint_family == 4 ? 4 : 0;

    /* The preshared key (zeros: none), keepalive, endpoint family, port
     * and address (4, 16 or no bytes), the number of prefixes (big
     * endian), then each prefix: version, length, address (4 or 16
     * bytes). One peer with one prefix fits a block. Digests of settings
     * and of sessions are compared only with their own kind. */
    memcpy(buf, op->preshared_key, 32); /* zeros unless DP_BULK_HAS_PSK */
    o = 32;
    buf[o++] = (uint8_t)(op->keepalive >> 8);
    buf[o++] = (uint8_t)op->keepalive;
    buf[o++] = op->endpoint_family;
    buf[o++] = (uint8_t)(op->endpoint_port >> 8);
    buf[o++] = (uint8_t)op->endpoint_port;
    memcpy(buf + o, op->endpoint_addr, alen);
    o += alen;
    buf[o++] = (uint8_t)(op->n_prefixes >> 8);
    buf[o++] = (uint8_t)op->n_prefixes;
    dp_blake2s_init(&st, DP_BULK_DIGEST_BYTES, digest_key, 32);
    for (uint32_t i = 0; i < op->n_prefixes; i++) {
        const struct dp_bulk_prefix *p = &prefixes[op->first_prefix + i];
        size_t plen = p->version == 6 ? 16 : 4;

        if (o + 2 + plen > sizeof(buf)) {
            dp_blake2s_update(&st, buf, o);
            o = 0;
        }
        buf[o++] = p->version;
        buf[o++] = p->cidr;
        memcpy(buf + o, p->addr, plen);
        o += plen;
    }
    dp_blake2s_update(&st, buf, o);
    dp_wipe(buf, sizeof(buf));
    dp_blake2s_final(&st, out);
}

static void session_digest(const uint8_t *digest_key, const uint8_t *send_key,
                           const uint8_t *recv_key, uint8_t *out)
{
    struct dp_blake2s_state st;

    dp_blake2s_init(&st, DP_BULK_DIGEST_BYTES, digest_key, 32);
    dp_blake2s_update(&st, send_key, 32);
    dp_blake2s_update(&st, recv_key, 32);
    dp_blake2s_final(&st, out);
}

/* ------------------------------------------------------------ applying */

uint32_t dp_device_bulk_apply(struct dp_device *d, const struct dp_bulk *b,
                              const uint32_t *peer_ids, const uint8_t *actions,
                              uint64_t now_ns, int *err)
{
    struct dp_allowedips *aip = dp_device_allowedips(d);
    uint32_t i, claimed;
    bool created = false;
    struct dp_wire wire;
    int e = 0;

    /* pushed sessions speak the interface's profile */
    dp_device_get_wire(d, &wire);

    /* Every receiver index first: one already in use stops the batch
     * before anything changed. */
    for (claimed = 0; claimed < b->n_ops; claimed++) {
        if (!(actions[claimed] & DP_BULK_DO_SESSION))
            continue;
        e = dp_device_index_claim(d, b->ops[claimed].receiver_index);
        if (e < 0)
            break;
    }
    if (e < 0) {
        for (uint32_t j = 0; j < claimed; j++)
            if (actions[j] & DP_BULK_DO_SESSION)
                dp_device_index_release(d, b->ops[j].receiver_index);
        *err = e;
        return 0;
    }
    for (i = 0; i < b->n_ops; i++) {
        const struct dp_bulk_op *op = &b->ops[i];
        uint32_t id = peer_ids[i];
        uint8_t act = actions[i];

        created = false;
        if (act & DP_BULK_DO_CREATE) {
            e = dp_device_peer_add(d, id);
            if (e < 0)
                break;
            created = true;
        }
        if (act & DP_BULK_DO_SETTINGS) {
            if (op->endpoint_family) {
                struct dp_endpoint ep = {.family = op->endpoint_family,
                                         .port = op->endpoint_port};

                static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

                if (ep.family == 6 && memcmp(op->endpoint_addr, mapped, 12) == 0) {
                    ep.family = 4; /* ::ffff:a.b.c.d is a.b.c.d, as the model has it */
                    memcpy(ep.addr, op->endpoint_addr + 12, 4);
                } else {
                    memcpy(ep.addr, op->endpoint_addr, 16);
                }
                e = dp_device_peer_set_endpoint(d, id, &ep);
            }
            for (uint32_t k = 0; e == 0 && k < op->n_prefixes; k++) {
                const struct dp_bulk_prefix *p = &b->prefixes[op->first_prefix + k];

                e = dp_allowedips_insert(aip, p->version, p->addr, p->cidr, id);
            }
            if (e < 0)
                break;
        }
        if (act & DP_BULK_DO_SESSION) {
            struct dp_keypair_params prm = {
                .peer_id = id,
                .local_index = op->receiver_index,
                .remote_index = op->sender_index,
                .is_initiator = (op->flags & DP_BULK_ACTIVATE_NOW) ? 1 : 0,
                .wire = wire.obfuscated ? DP_WIRE_OBFUSCATED : DP_WIRE_PLAIN,
                .created_ns = now_ns - (uint64_t)(DP_WG_REJECT_AFTER_TIME - op->lifetime) *
                                           1000000000ull,
            };

            memcpy(prm.send_key, op->send_key, 32);
            memcpy(prm.recv_key, op->recv_key, 32);
            e = dp_device_keypair_install(d, &prm);
            dp_wipe(&prm, sizeof(prm));
            if (e < 0)
                break;
            dp_device_peer_rearm(d, id);
        }
    }
    *err = e;
    if (e < 0) {
        /* The failed operation leaves nothing of itself; this one's and
         * later ones' indices are released. The caller undoes the ones
         * done whole. */
        if (created)
            dp_device_peer_remove(d, peer_ids[i]); /* its allowed IPs go with it */
        for (uint32_t j = i; j < b->n_ops; j++)
            if (actions[j] & DP_BULK_DO_SESSION)
                dp_device_index_release(d, b->ops[j].receiver_index);
    }
    return i;
}
