/* libFuzzer harness for the device's WAN receive path (native/wg/datapath.c
 * through dp_device_test_rx: classify, receiver index, batch decrypt,
 * replay window, roaming, allowed IPs, delivery to worker 0's TUN fd)
 * against a reference model written from the contracts in dp_device.h,
 * dp_tables.h and dp_wg_messages.h; and of the XDP backend's WAN frame
 * parse and UDP checksum (dp_device_test_outer_parse / _checksum) against
 * a reference parser and an RFC 1071 checksum.
 *
 * Set up once: two stopped devices (one writing plain packets to its TUN
 * fd, one with IFF_VNET_HDR, whose writes are coalesced TCP groups), each
 * with three peers and fixed allowed IPs (nested and overlapping, both
 * families); the TUN fd is one end of a socketpair the harness reads. A
 * replay window of 1024 bits (960 counters).
 *
 * Input: 4 header bytes, then operations.
 *   h[0]: bit 0 the device (plain or vnet); bits 1-2 the wire profile
 *         (plain; AmneziaWG fixed; fixed + accept_plain; ranges + accept_plain).
 *   h[1..3]: peer p's keypairs, installed in order on fixed receiver
 *         indices with fixed keys: bits 0-1 how many (0..3), bit 2+s
 *         install s is a responder's, bits 5-6 the last one's age (fresh,
 *         170 s: rekey on receive, 190 s: expired), bit 7 the earlier
 *         ones 190 s old.
 *   Operations, by first byte K % 8:
 *   0-3 a transport message sealed here (20 bytes): which peer and
 *       keypair (or an index never installed) and in which format; a
 *       counter (next, a replay, around the window's edge, a jump, near
 *       the reject limit, any); an inner IPv4/IPv6 packet (source from
 *       address stems inside and outside each peer's allowed IPs; UDP,
 *       segments of TCP flows that coalesce, keepalive, junk, jumbo;
 *       optionally a lying length, version or header length); then
 *       optionally mutated (bit flip anywhere or in the header, truncated,
 *       extended, type field or padding changed).
 *   4   raw bytes (12 + L bytes), optionally behind a data header with a
 *       live index, an obfuscated one, or an initiation's type.
 *   5   end of the burst: it came from this endpoint (20 bytes).
 *   6   an Ethernet frame for the outer parse (20 bytes): VLAN, IPv4
 *       options or IPv6 extension headers, a checksum (valid, partial,
 *       zero, any), one corruption.
 *   7   a copy of an earlier datagram of the input (3 bytes).
 * A burst goes to dp_device_test_rx at op 5, at DP_DEVICE_BURST datagrams
 * and at the end.
 *
 * Model: classification by the profile; the keypairs each peer holds
 * (rotation on install and on a responder's first data) and which indices
 * lead to one; key age and counter limits; authentication (each datagram
 * opened on its own with dp_aead_open, and anything that authenticates
 * must be a sealed message's authenticated bytes unchanged); a replay
 * window per keypair from its contract (a set of accepted counters); the
 * peer following the latest authenticated source; the inner packet check;
 * allowed IPs as a list searched for the longest prefix; the event ring's
 * room. After every burst: what was written to the TUN is exactly the
 * model's deliveries in order (for the vnet device, plain writes or TCP
 * groups that split back into them, with valid lengths and checksums);
 * every drop counter moved by the model's count; each peer's rx counters,
 * endpoint, keypair count and current index; the events, byte for byte.
 * Frames: the parse and the checksum agree with the references, and
 * frames built well-formed parse to what was built. Any difference
 * aborts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "dp_crypto.h"
#include "dp_device.h"
#include "dp_tables.h"
#include "dp_wg_messages.h"

#define PEERS 3
#define SLOTS 3               /* keypairs installed per peer, at most */
#define WINDOW_BITS 1024
#define WINDOW (WINDOW_BITS - 64)
#define RING_LOG2 6
#define RING (1u << RING_LOG2)
#define HANDSHAKE_ROOM (RING - RING / 4) /* handshake events may fill this much */
#define MAX_DGRAMS 512
#define ARENA_BYTES (24u << 20)
#define INNER_MAX 8192
#define DGRAM_MAX (128 + DP_WG_DATA_MIN_LEN + INNER_MAX + 64)
#define NSEC 1000000000ULL
#define REKEY_ON_RECEIVE_NS ((uint64_t)(DP_WG_REJECT_AFTER_TIME - DP_WG_KEEPALIVE_TIMEOUT - \
                                        DP_WG_REKEY_TIMEOUT) * NSEC)
#define EXPIRED_NS ((uint64_t)DP_WG_REJECT_AFTER_TIME * NSEC)
#define VNET_HDR 10
#define TCP_PSH 0x08
#define TCP_ACK 0x10

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "device_rx: " __VA_ARGS__);                       \
            fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__);                \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* ---------------------------------------------------------------- fixed world */

struct prefix {
    int family;
    uint8_t addr[16];
    int cidr;
    uint32_t peer;
};

static const struct prefix allowed[] = {
    {DP_FAMILY_IPV4, {10, 0, 0, 0}, 24, 0},
    {DP_FAMILY_IPV4, {10, 2, 3, 4}, 32, 0},
    {DP_FAMILY_IPV6, {0xfd, 0}, 64, 0},
    {DP_FAMILY_IPV6, {0x20, 0x01, 0x0d, 0xb8, [15] = 1}, 128, 0},
    {DP_FAMILY_IPV4, {10, 0, 1, 0}, 24, 1},
    {DP_FAMILY_IPV4, {10, 0, 0, 128}, 25, 1},
    {DP_FAMILY_IPV6, {0xfd, 0, 0, 1}, 64, 1},
    {DP_FAMILY_IPV6, {0xfd, 0, [8] = 0x80}, 65, 1},
    {DP_FAMILY_IPV4, {10, 2, 0, 0}, 16, 2},
    {DP_FAMILY_IPV6, {0x20, 0x01, 0x0d, 0xb8}, 32, 2},
};
#define NALLOWED (int)(sizeof(allowed) / sizeof(allowed[0]))

/* Source address stems: the input's host bytes go at `at` (n bytes). */
struct stem {
    uint8_t addr[16];
    uint8_t at, n;
};

static const struct stem stems[2][8] = {
    {{{10, 0, 0, 0}, 3, 1},       /* peer 0 below .128, peer 1 above */
     {{10, 0, 1, 0}, 3, 1},       /* peer 1 */
     {{10, 2, 0, 0}, 2, 2},       /* peer 2, 10.2.3.4 peer 0 */
     {{10, 2, 3, 0}, 3, 1},
     {{10, 3, 0, 0}, 2, 2},       /* nobody */
     {{10, 0, 0, 0}, 2, 2},       /* peers 0 and 1, and nobody */
     {{192, 0, 2, 0}, 3, 1},      /* nobody */
     {{0, 0, 0, 1}, 0, 2}},       /* anywhere */
    {{{0xfd, 0}, 14, 2},          /* peer 0 */
     {{0xfd, 0, 0, 1}, 14, 2},    /* peer 1 */
     {{0xfd, 0, [8] = 0x80}, 14, 2},
     {{0x20, 0x01, 0x0d, 0xb8}, 14, 2}, /* peer 2, ::1 peer 0 */
     {{0x20, 0x01, 0x0d, 0xb8}, 4, 2},
     {{0xfe, 0x80}, 14, 2},       /* nobody */
     {{0xfd, 0}, 2, 2},           /* peer 0, 1, nobody */
     {{0, 0, [15] = 1}, 0, 2}},
};

static const uint8_t far4[4] = {10, 9, 9, 9};
static const uint8_t far6[16] = {0xfd, 0x09, [15] = 9};

/* The wire profiles (as fuzz/seeds.py's "fixed" and "ranges"). */
static const struct dp_wire profiles[4] = {
    {.obfuscated = 0},
    {{17, 23, 9, 3}, {1322545867, 2079419829, 864123995, 3355713651},
     {1322545867, 2079419829, 864123995, 3355713651}, 1, 0, {0}},
    {{17, 23, 9, 3}, {1322545867, 2079419829, 864123995, 3355713651},
     {1322545867, 2079419829, 864123995, 3355713651}, 1, 1, {0}},
    {{77, 31, 25, 13}, {100000000, 200000000, 300000000, 400000000},
     {100999999, 200000063, 300999999, 499999999}, 1, 1, {0}},
};
static const uint32_t base_len[4] = {DP_WG_INITIATION_LEN, DP_WG_RESPONSE_LEN,
                                     DP_WG_COOKIE_REPLY_LEN, DP_WG_DATA_MIN_LEN};

struct device {
    struct dp_device *d;
    int tun;  /* our end of the TUN socketpair */
    int vnet;
};

static struct device devices[2];
/* DEVICE_RX_VERBOSE set: what the model expected of each burst, on stderr */
static int verbose;
static uint8_t tun_buf[VNET_HDR + 65536 + 64];

static uint32_t local_index(int peer, int slot)
{
    return 0x01000000u * (uint32_t)(peer + 1) + 0x100u * (uint32_t)(slot + 1) + 0x11;
}

static void fixed_key(uint8_t key[32], int peer, int slot)
{
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(0x40 * peer + 0x11 * slot + 7 * i + 1);
}

/* The TUN: a socketpair keeps each write a message; big buffers hold a
 * burst of jumbo packets (64 x 8 KiB). Returns the device's end. */
static int socket_pair(int *ours)
{
    int sv[2], big = 8 << 20;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    }
    *ours = sv[0];
    return sv[1];
}

static void device_setup(struct device *dev, int vnet)
{
    struct dp_device_config cfg = {.workers = 1, .tun_vnet_hdr = vnet, .mtu = 1420,
                                   .max_peers = PEERS + 1, .index_table_log2 = 8,
                                   .event_ring_log2 = RING_LOG2,
                                   .replay_window_bits = WINDOW_BITS};
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    for (int w = 0; w < DP_DEVICE_MAX_WORKERS; w++)
        cfg.udp4_fd[w] = cfg.udp6_fd[w] = cfg.tun_fd[w] = -1;
    CHECK(udp >= 0 && bind(udp, (struct sockaddr *)&lo, sizeof(lo)) == 0, "UDP socket: %s",
          strerror(errno));
    cfg.udp4_fd[0] = udp;
    cfg.tun_fd[0] = socket_pair(&dev->tun);
    CHECK(cfg.tun_fd[0] >= 0, "socketpair: %s", strerror(errno));
    dev->d = dp_device_new(&cfg);
    CHECK(dev->d, "dp_device_new: %s", strerror(errno));
    dev->vnet = vnet;
    for (int p = 0; p < PEERS; p++)
        CHECK(dp_device_peer_add(dev->d, (uint32_t)p) == 0, "peer_add %d", p);
    for (int i = 0; i < NALLOWED; i++)
        CHECK(dp_allowedips_insert(dp_device_allowedips(dev->d), allowed[i].family,
                                   allowed[i].addr, allowed[i].cidr, allowed[i].peer) == 0,
              "allowed IP %d", i);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    verbose = getenv("DEVICE_RX_VERBOSE") != NULL;
    device_setup(&devices[0], 0);
    device_setup(&devices[1], 1);
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_be16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void pattern(uint8_t *p, uint32_t n, uint32_t seed)
{
    for (uint32_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* RFC 1071, big-endian words */
static uint64_t sum16(uint64_t s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1)
        s += (uint32_t)p[n - 1] << 8;
    return s;
}

static uint16_t fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

static uint64_t pseudo_sum(int v6, const uint8_t *src, const uint8_t *dst, int proto,
                           uint32_t len)
{
    uint64_t s = sum16(sum16(0, src, v6 ? 16 : 4), dst, v6 ? 16 : 4);

    return s + (uint32_t)proto + (len & 0xffff) + (len >> 16);
}

static int prefix_contains(const struct prefix *p, int family, const uint8_t *a)
{
    int bytes = family == DP_FAMILY_IPV4 ? 4 : 16;

    if (p->family != family)
        return 0;
    for (int i = 0; i < bytes; i++) {
        int keep = p->cidr - 8 * i;
        uint8_t m = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));

        if ((a[i] & m) != p->addr[i])
            return 0;
    }
    return 1;
}

static uint32_t owner(int family, const uint8_t *a)
{
    int best = -1;

    for (int i = 0; i < NALLOWED; i++)
        if (prefix_contains(&allowed[i], family, a) &&
            (best < 0 || allowed[i].cidr > allowed[best].cidr))
            best = i;
    return best < 0 ? DP_PEER_NONE : allowed[best].peer;
}

/* ---------------------------------------------------------------- the model */

struct mkp {
    int installed, live;
    uint32_t index;
    int responder;
    uint64_t age_ns;
    uint8_t key[32];
    /* the replay window's contract: counters accepted, the highest */
    int have;
    uint64_t highest;
    int nseen;
    uint64_t seen[MAX_DGRAMS];
    /* the sender's side */
    uint64_t next_counter, max_sealed;
    int nsealed;
    uint64_t sealed[MAX_DGRAMS];
};

struct mpeer {
    int cur, prev, next; /* slots, -1: none */
    int wanted;          /* NEED_HANDSHAKE raised, not rearmed */
    struct dp_endpoint ep;
    uint64_t rx_bytes, rx_packets;
};

struct dgram {
    uint8_t *m;
    uint32_t len;
    int peer, slot;        /* the keypair it was sealed with; -1: raw */
    const uint8_t *sealed; /* the message as sealed, before any mutation */
    uint32_t sealed_len, sealed_off;
    const uint8_t *inner;  /* the plaintext sealed (padded) */
    uint32_t inner_len;
};

static struct {
    struct device *dev;
    struct dp_wire wire;
    struct mkp kp[PEERS][SLOTS];
    struct mpeer peer[PEERS];
    struct dgram dg[MAX_DGRAMS];
    int ndg;
    uint8_t *arena;
    size_t used;
    /* TCP flows' next sequence numbers: family, stem, flow */
    uint32_t seq[2][8][2];
    struct dp_endpoint from;
    /* a burst being gathered */
    int batch[DP_DEVICE_BURST];
    int nbatch;
} M;

static uint8_t *arena_take(size_t n)
{
    uint8_t *p;

    if (M.used + n > ARENA_BYTES)
        return NULL;
    p = M.arena + M.used;
    M.used += (n + 63) & ~(size_t)63;
    return p;
}

static int slot_of_index(uint32_t index, int *peer)
{
    for (int p = 0; p < PEERS; p++)
        for (int s = 0; s < SLOTS; s++)
            if (M.kp[p][s].live && M.kp[p][s].index == index) {
                *peer = p;
                return s;
            }
    return -1;
}

static void model_kill(int peer, int slot)
{
    if (slot >= 0)
        M.kp[peer][slot].live = 0;
}

/* Rotation as dp_device.h states it (and the kernel's noise.c does it):
 * an initiator's keypair is current at once, the old current previous
 * (an unconfirmed next becomes previous instead, current and previous
 * go); a responder's waits as next, and the previous goes. */
static void model_install(int peer, int slot)
{
    struct mpeer *p = &M.peer[peer];

    if (!M.kp[peer][slot].responder) {
        if (p->next >= 0) {
            model_kill(peer, p->cur);
            model_kill(peer, p->prev);
            p->prev = p->next;
            p->next = -1;
        } else {
            model_kill(peer, p->prev);
            p->prev = p->cur;
        }
        p->cur = slot;
    } else {
        model_kill(peer, p->next);
        model_kill(peer, p->prev);
        p->next = slot;
        p->prev = -1;
    }
    p->wanted = 0;
}

static int model_replay_ok(struct mkp *k, uint64_t c)
{
    if (c >= DP_REPLAY_REJECT_AFTER_MESSAGES)
        return 0;
    if (k->have && c <= k->highest) {
        if (k->highest - c > WINDOW)
            return 0;
        for (int i = 0; i < k->nseen; i++)
            if (k->seen[i] == c)
                return 0;
    }
    if (!k->have || c > k->highest)
        k->highest = c;
    k->have = 1;
    CHECK(k->nseen < MAX_DGRAMS, "model: too many counters");
    k->seen[k->nseen++] = c;
    return 1;
}

/* WireGuard's own: type 1..3 at its exact size, 4 from DP_WG_DATA_MIN_LEN. */
static uint32_t model_plain_kind(const uint8_t *m, uint32_t len)
{
    uint32_t t = len >= 4 ? le32(m) : 0;

    if (t == DP_WG_MSG_DATA)
        return len >= DP_WG_DATA_MIN_LEN ? t : 0;
    if (t >= 1 && t <= 3)
        return len == base_len[t - 1] ? t : 0;
    return 0;
}

/* The message kind under profile w (dp_wg_messages.h's description), its
 * offset and format. */
static uint32_t model_classify(const struct dp_wire *w, const uint8_t *m, uint32_t len,
                               uint32_t *off, uint8_t *fmt)
{
    if (w->obfuscated) {
        for (uint32_t k = 0; k < 4; k++) {
            uint64_t need = (uint64_t)w->padding[k] + base_len[k];
            uint32_t h;

            if (k < 3 ? len != need : len < need)
                continue;
            h = le32(m + w->padding[k]);
            if (h >= w->header_min[k] && h <= w->header_max[k]) {
                *off = w->padding[k];
                *fmt = DP_WIRE_OBFUSCATED;
                return k + 1;
            }
        }
        if (!w->accept_plain)
            return 0;
    }
    *off = 0;
    *fmt = DP_WIRE_PLAIN;
    return model_plain_kind(m, len);
}

/* The inner packet's length, or 0 when it is not a sane IPv4/IPv6 packet
 * within len bytes (IPv4: header length at least 20, total length between
 * it and len; IPv6: 40 + payload length within len). */
static uint32_t model_inner(const uint8_t *p, uint32_t len, int *family, const uint8_t **src)
{
    if (len >= 20 && p[0] >> 4 == 4) {
        uint32_t ihl = (p[0] & 15u) * 4, total = (uint32_t)p[2] << 8 | p[3];

        if (ihl < 20 || total < ihl || total > len)
            return 0;
        *family = DP_FAMILY_IPV4;
        *src = p + 12;
        return total;
    }
    if (len >= 40 && p[0] >> 4 == 6) {
        uint32_t total = 40 + ((uint32_t)p[4] << 8 | p[5]);

        if (total > len)
            return 0;
        *family = DP_FAMILY_IPV6;
        *src = p + 8;
        return total;
    }
    return 0;
}

/* ---------------------------------------------------------------- building */

static uint32_t build_ipv4_header(uint8_t *p, uint32_t total, int proto, const uint8_t *src,
                                  uint16_t id)
{
    memset(p, 0, 20);
    p[0] = 0x45;
    put_be16(p + 2, total);
    put_be16(p + 4, id);
    p[6] = 0x40; /* DF */
    p[8] = 64;
    p[9] = (uint8_t)proto;
    memcpy(p + 12, src, 4);
    memcpy(p + 16, far4, 4);
    put_be16(p + 10, (uint16_t)~fold(sum16(0, p, 20)));
    return 20;
}

static uint32_t build_ipv6_header(uint8_t *p, uint32_t total, int proto, const uint8_t *src)
{
    memset(p, 0, 40);
    p[0] = 0x60;
    put_be16(p + 4, total - 40);
    p[6] = (uint8_t)proto;
    p[7] = 64;
    memcpy(p + 8, src, 16);
    memcpy(p + 24, far6, 16);
    return 40;
}

/* The inner packet of a sealed record (r[11..15]) at p; returns its length. */
static uint32_t build_inner(uint8_t *p, const uint8_t *r)
{
    int v6 = r[11] & 1, st = r[11] >> 1 & 7, proto = r[11] >> 4 & 3, bad = r[11] >> 6;
    uint32_t size = le16(r + 12), host = le16(r + 14), hl = v6 ? 40 : 20, len;
    const struct stem *s = &stems[v6][st];
    uint8_t src[16];

    memcpy(src, s->addr, 16);
    if (proto == 1 || proto == 2) { /* a TCP flow: its own fixed host */
        uint32_t flow = host & 1, mss = v6 ? 1200 : 1000;
        uint32_t pay = size & 0x8000 ? (size & 0x7ff) % mss : mss;
        uint32_t *seq = &M.seq[v6][st][flow];

        for (int i = 0; i < s->n; i++)
            src[s->at + i] = (uint8_t)(i == s->n - 1 ? 1 + flow : 0);
        len = hl + 20 + pay;
        if (v6)
            build_ipv6_header(p, len, 6, src);
        else
            build_ipv4_header(p, len, 6, src, (uint16_t)*seq);
        uint8_t *t = p + hl;

        memset(t, 0, 20);
        put_be16(t, 40000 + flow);
        put_be16(t + 2, 443);
        t[4] = (uint8_t)(*seq >> 24);
        t[5] = (uint8_t)(*seq >> 16);
        t[6] = (uint8_t)(*seq >> 8);
        t[7] = (uint8_t)*seq;
        t[11] = 1; /* ack */
        t[12] = 5 << 4;
        t[13] = (uint8_t)(TCP_ACK | (proto == 2 ? TCP_PSH : 0));
        put_be16(t + 14, 0xffff);
        pattern(t + 20, pay, *seq ^ (uint32_t)(v6 << 8 | st << 1 | flow));
        *seq += pay;
    } else {
        for (int i = 0; i < s->n; i++)
            src[s->at + i] = (uint8_t)(host >> (8 * i));
        if (proto == 3 && (size & 3) == 0)
            return 0; /* a keepalive: nothing inside */
        if (proto == 3 && (size & 3) == 1) {
            len = (size >> 2) % 64; /* junk, maybe IP-looking */
            pattern(p, len, host);
            return len;
        }
        len = proto == 3 && (size & 3) == 3 ? (size >> 2) % INNER_MAX : size & 0x7ff;
        if (len < hl + 8)
            len = hl + 8;
        if (v6)
            build_ipv6_header(p, len, proto == 3 && (size & 3) == 2 ? 58 : 17, src);
        else
            build_ipv4_header(p, len, proto == 3 && (size & 3) == 2 ? 1 : 17, src,
                              (uint16_t)host);
        put_be16(p + hl, 1000);
        put_be16(p + hl + 2, 2000);
        put_be16(p + hl + 4, len - hl);
        pattern(p + hl + 8, len - hl - 8, size * 31u + host);
    }
    switch (bad) {
    case 1: /* a length that says more than there is (or only the padding) */
        if (v6)
            put_be16(p + 4, len - 40 + 1 + (host >> 8 & 31));
        else
            put_be16(p + 2, len + 1 + (host >> 8 & 31));
        break;
    case 2: /* another version */
        p[0] = (uint8_t)((p[0] & 15) | ((host >> 8 & 15) << 4));
        break;
    case 3: /* IPv4: any header length; IPv6: any payload length */
        if (v6)
            put_be16(p + 4, host);
        else
            p[0] = (uint8_t)(0x40 | (host >> 8 & 15));
        break;
    }
    return len;
}

static uint64_t pick_counter(struct mkp *k, const uint8_t *r)
{
    uint64_t v = le64(r + 3), c;

    switch (r[2] & 7) {
    case 0: /* the next */
        c = k->next_counter++;
        break;
    case 1: /* one sent before */
        c = k->nsealed ? k->sealed[v % (uint64_t)k->nsealed] : 0;
        break;
    case 2: /* around the window's edge below the highest sent */
        c = k->max_sealed - (WINDOW - 4 + v % 9);
        break;
    case 3: /* a jump forward */
        c = k->max_sealed + 1 + v % 5000;
        k->next_counter = c + 1;
        break;
    case 4: /* near the reject limit */
        c = DP_WG_REJECT_AFTER_MESSAGES - 2 + v % 4;
        break;
    case 5: /* anything */
        c = v;
        break;
    case 6: /* a little below the highest: reordering */
        c = k->max_sealed - v % 64;
        break;
    default: /* the next one again, with other contents */
        c = k->next_counter;
    }
    return c;
}

static struct dgram *new_dgram(void)
{
    struct dgram *g;

    if (M.ndg == MAX_DGRAMS)
        return NULL;
    g = &M.dg[M.ndg];
    memset(g, 0, sizeof(*g));
    g->peer = g->slot = -1;
    return g;
}

/* Op 0-3. 0, or -1 when out of room. */
static int op_sealed(const uint8_t *r)
{
    static uint8_t plain[INNER_MAX + 64];
    int peer = (r[1] & 3) % PEERS, slot = r[1] >> 2 & 3, fmt = r[1] >> 4 & 3;
    struct mkp *k = slot < SLOTS ? &M.kp[peer][slot] : NULL;
    const struct dp_wire *ow = M.wire.obfuscated ? &M.wire : &profiles[1];
    uint8_t key[32];
    uint32_t index = k ? k->index : 0x7f000000u + (uint32_t)peer, ilen, plen, pad = 0, off;
    uint64_t counter;
    struct dgram *g = new_dgram();
    int obf;

    if (!g)
        return -1;
    fixed_key(key, peer, slot);
    counter = k ? pick_counter(k, r) : le64(r + 3) & 0xffff;
    ilen = build_inner(plain, r);
    plen = (ilen + DP_WG_PADDING - 1) & ~(uint32_t)(DP_WG_PADDING - 1);
    memset(plain + ilen, 0, plen - ilen);
    /* the profile's format, plain, or obfuscated (the fixed profile's when
     * the interface has none) */
    obf = fmt == 3 || (fmt < 2 && M.wire.obfuscated);
    if (obf)
        pad = ow->padding[3];
    off = pad;
    uint8_t *m = arena_take(off + DP_WG_DATA_MIN_LEN + plen + 64);
    uint8_t *inner = arena_take(plen + 1);

    if (!m || !inner)
        return -1;
    memcpy(inner, plain, plen);
    pattern(m, off, r[19] * 7919u + 1);
    if (obf) {
        uint64_t span = (uint64_t)ow->header_max[3] - ow->header_min[3] + 1;

        put_le32(m + off, ow->header_min[3] + (uint32_t)((r[19] * 2654435761u) % span));
    } else {
        put_le32(m + off, DP_WG_MSG_DATA);
    }
    put_le32(m + off + 4, index);
    put_le64(m + off + 8, counter);
    uint8_t nonce[12] = {0};

    put_le64(nonce + 4, counter);
    CHECK(dp_aead_seal(m + off + DP_WG_DATA_HEADER_LEN, plain, plen, NULL, 0, nonce, key) == 0,
          "seal");
    if (k) {
        if (k->nsealed < MAX_DGRAMS)
            k->sealed[k->nsealed++] = counter;
        if (counter > k->max_sealed)
            k->max_sealed = counter;
    }
    g->m = m;
    g->len = off + DP_WG_DATA_MIN_LEN + plen;
    g->peer = peer;
    g->slot = slot < SLOTS ? slot : -1;
    g->sealed_len = g->len;
    g->sealed_off = off;
    g->inner = inner;
    g->inner_len = plen;
    /* keep the message as sealed; mutate a copy */
    uint32_t mp = le16(r + 17), mutation = r[16] & 15;

    if (mutation >= 10) {
        uint8_t *c = arena_take(g->len + 64);

        if (!c)
            return -1;
        memcpy(c, m, g->len);
        g->sealed = m;
        g->m = c;
        switch (mutation) {
        case 10: /* a bit anywhere */
            c[mp % g->len] ^= (uint8_t)(1u << (r[19] & 7));
            break;
        case 11: /* shorter */
            g->len = mp % g->len;
            break;
        case 12: /* longer */
            pattern(c + g->len, 1 + mp % 48, mp);
            g->len += 1 + mp % 48;
            break;
        case 13: /* a bit of the header */
            c[off + mp % DP_WG_DATA_HEADER_LEN] ^= (uint8_t)(1u << (r[19] & 7));
            break;
        case 14: /* another type field */
            put_le32(c + off, le32(c + off) + mp - 0x8000);
            break;
        default: /* a bit of the padding, or of the tag */
            c[off ? mp % off : g->len - 1 - mp % 16] ^= (uint8_t)(1u << (r[19] & 7));
        }
    } else {
        g->sealed = m;
    }
    M.ndg++;
    return 0;
}

/* Op 4: 12 + L bytes; returns how many it took, or -1. */
static long op_raw(const uint8_t *r, size_t left)
{
    uint32_t l = r[1], take = left - 12 < l ? (uint32_t)(left - 12) : l, pre = 0;
    int peer = (r[3] & 3) % PEERS, slot = r[3] >> 2 & 3;
    uint32_t index = slot < SLOTS ? M.kp[peer][slot].index : 0x7f000000u;
    const struct dp_wire *w = M.wire.obfuscated ? &M.wire : &profiles[1];
    struct dgram *g = new_dgram();
    uint8_t *m;

    if (!g || !(m = arena_take(128 + take)))
        return -1;
    switch (r[2] & 3) {
    case 1: /* a plain data header */
        put_le32(m, DP_WG_MSG_DATA);
        put_le32(m + 4, index);
        memcpy(m + 8, r + 4, 8);
        pre = 16;
        break;
    case 2: /* an obfuscated one */
        pattern(m, w->padding[3], r[3]);
        put_le32(m + w->padding[3], w->header_min[3]);
        put_le32(m + w->padding[3] + 4, index);
        memcpy(m + w->padding[3] + 8, r + 4, 8);
        pre = w->padding[3] + 16;
        break;
    case 3: /* a handshake's type */
        put_le32(m, 1 + r[4] % 3);
        pre = 4;
        break;
    }
    memcpy(m + pre, r + 12, take);
    g->m = m;
    g->len = pre + take;
    M.ndg++;
    return 12 + (long)take;
}

/* ---------------------------------------------------------------- one burst */

struct expect {
    const uint8_t *p;
    uint32_t len;
};

static struct expect want_tun[DP_DEVICE_BURST];
static struct dp_event want_ev[2 * DP_DEVICE_BURST];
static struct dp_event got_ev[4 * DP_DEVICE_BURST];

/* Compare the TCP group `w` (a vnet write of len bytes) with expected
 * packets from *next on. */
static void check_group(const uint8_t *w, uint32_t wlen, int nwant, int *next)
{
    const uint8_t *s = w + VNET_HDR;
    uint32_t len = wlen - VNET_HDR, hdr_len = le16(w + 2), mss = le16(w + 4);
    int v6 = s[0] >> 4 == 6, gso = w[1];
    uint32_t iphl = v6 ? 40 : 20, tcphl, pay, nseg;

    CHECK(len >= 40 && ((gso == 1 && s[0] == 0x45) || (gso == 4 && v6)),
          "TUN: a GSO write of %u bytes, type %d, version %d", len, gso, s[0] >> 4);
    tcphl = (uint32_t)(s[iphl + 12] >> 4) * 4;
    CHECK(w[0] == 1 && hdr_len == iphl + tcphl && le16(w + 6) == iphl && le16(w + 8) == 16 &&
              mss > 0 && len > hdr_len,
          "TUN: a GSO header (flags %d, hdr_len %u, gso_size %u, csum %u+%u)", w[0], hdr_len,
          mss, le16(w + 6), le16(w + 8));
    if (v6)
        CHECK(((uint32_t)s[4] << 8 | s[5]) == len - 40, "TUN: a group's IPv6 length");
    else
        CHECK(((uint32_t)s[2] << 8 | s[3]) == len && fold(sum16(0, s, 20)) == 0xffff,
              "TUN: a group's IPv4 length or header checksum");
    CHECK(((uint32_t)s[iphl + 16] << 8 | s[iphl + 17]) ==
              fold(pseudo_sum(v6, s + (v6 ? 8 : 12), s + (v6 ? 24 : 16), 6, len - iphl)),
          "TUN: a group's TCP checksum is not the pseudo-header's sum");
    pay = len - hdr_len;
    nseg = (pay + mss - 1) / mss;
    CHECK(nseg >= 2 && nseg <= 64, "TUN: a group of %u segments", nseg);
    for (uint32_t k = 0; k < nseg; k++) {
        uint32_t seg = pay - k * mss < mss ? pay - k * mss : mss;
        const struct expect *e;
        uint32_t seq0 = (uint32_t)s[iphl + 4] << 24 | (uint32_t)s[iphl + 5] << 16 |
                        (uint32_t)s[iphl + 6] << 8 | s[iphl + 7];

        CHECK(*next < nwant, "TUN: a group holds more than was delivered");
        e = &want_tun[(*next)++];
        CHECK(e->len == hdr_len + seg, "TUN: segment %u of a group is %u bytes, delivered %u",
              k, hdr_len + seg, e->len);
        for (uint32_t i = 0; i < hdr_len; i++) {
            int ignored = v6 ? (i == 4 || i == 5)
                             : (i == 2 || i == 3 || i == 4 || i == 5 || i == 10 || i == 11);
            uint8_t mask = 0xff;

            if (i >= iphl) {
                uint32_t t = i - iphl;

                ignored = (t >= 4 && t <= 7) || t == 16 || t == 17;
                if (t == 13)
                    mask = (uint8_t)~TCP_PSH;
            }
            CHECK(ignored || ((e->p[i] ^ s[i]) & mask) == 0,
                  "TUN: header byte %u of segment %u differs from its group's", i, k);
        }
        CHECK(((uint32_t)e->p[iphl + 4] << 24 | (uint32_t)e->p[iphl + 5] << 16 |
               (uint32_t)e->p[iphl + 6] << 8 | e->p[iphl + 7]) == seq0 + k * mss,
              "TUN: segment %u's sequence number", k);
        CHECK(k == nseg - 1 ? (e->p[iphl + 13] & TCP_PSH) == (s[iphl + 13] & TCP_PSH)
                            : !(e->p[iphl + 13] & TCP_PSH),
              "TUN: PSH of segment %u", k);
        CHECK(!memcmp(e->p + hdr_len, s + hdr_len + k * mss, seg),
              "TUN: payload of segment %u differs", k);
    }
}

/* Returns how many TCP groups the device wrote. */
static int check_tun(struct device *dev, int nwant)
{
    int next = 0, groups = 0;
    ssize_t r;

    while ((r = recv(dev->tun, tun_buf, sizeof(tun_buf), MSG_DONTWAIT)) >= 0) {
        uint32_t len = (uint32_t)r;

        if (!dev->vnet) {
            CHECK(next < nwant, "TUN: a packet of %u bytes that the model did not deliver",
                  len);
            CHECK(want_tun[next].len == len && !memcmp(want_tun[next].p, tun_buf, len),
                  "TUN: packet %d (%u bytes) is not the model's packet %d (%u bytes)", next,
                  len, next, want_tun[next].len);
            next++;
            continue;
        }
        CHECK(len >= VNET_HDR, "TUN: a write of %u bytes", len);
        if (tun_buf[1] == 0) {
            CHECK(tun_buf[0] == 2 && !memcmp(tun_buf + 2, "\0\0\0\0\0\0\0\0", 8),
                  "TUN: a plain write's virtio-net header");
            CHECK(next < nwant, "TUN: a packet of %u bytes that the model did not deliver",
                  len - VNET_HDR);
            CHECK(want_tun[next].len == len - VNET_HDR &&
                      !memcmp(want_tun[next].p, tun_buf + VNET_HDR, len - VNET_HDR),
                  "TUN: packet %d (%u bytes) is not the model's packet %d (%u bytes)", next,
                  len - VNET_HDR, next, want_tun[next].len);
            next++;
        } else {
            check_group(tun_buf, len, nwant, &next);
            groups++;
        }
    }
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "TUN read: %s", strerror(errno));
    CHECK(next == nwant, "TUN: %d packets written, the model delivered %d", next, nwant);
    return groups;
}

static void burst(void)
{
    static uint8_t pt[DP_DEVICE_BURST][DGRAM_MAX];
    struct dp_device *d = M.dev->d;
    const uint8_t *msgs[DP_DEVICE_BURST];
    uint32_t lens[DP_DEVICE_BURST];
    uint64_t drops0[DP_DROP_COUNT], drops1[DP_DROP_COUNT], want_drops[DP_DROP_COUNT] = {0};
    struct dp_peer_stats st[PEERS];
    int n = M.nbatch, nwant = 0, nev = 0, backlog = 0, rc, groups;
    struct {
        int g, peer, slot;
        uint64_t counter;
        uint32_t off;
    } job[DP_DEVICE_BURST];
    int njob = 0;

    if (!n)
        return;
    M.nbatch = 0;
    for (int i = 0; i < n; i++) {
        msgs[i] = M.dg[M.batch[i]].m;
        lens[i] = M.dg[M.batch[i]].len;
    }
    dp_device_drops(d, drops0, DP_DROP_COUNT);

    /* the model: classification and lookup first, as one pass ... */
    for (int i = 0; i < n; i++) {
        const uint8_t *m = msgs[i];
        uint32_t len = lens[i], off, kind;
        uint8_t fmt;
        int peer = -1, slot;

        kind = model_classify(&M.wire, m, len, &off, &fmt);
        if (!kind) {
            want_drops[M.wire.obfuscated ? DP_DROP_JUNK : DP_DROP_MALFORMED]++;
            continue;
        }
        slot = -1;
        if (kind == DP_WG_MSG_DATA)
            slot = slot_of_index(le32(m + off + 4), &peer);
        /* a plain message that reads as an obfuscated transport message
         * with an index nobody holds is read again as plain, where plain
         * is accepted */
        if (kind == DP_WG_MSG_DATA && slot < 0 && fmt == DP_WIRE_OBFUSCATED &&
            M.wire.accept_plain) {
            uint32_t plain = model_plain_kind(m, len);

            if (plain == DP_WG_MSG_DATA) {
                if ((slot = slot_of_index(le32(m + 4), &peer)) >= 0)
                    off = 0;
            } else if (plain) {
                kind = plain;
                off = 0;
                fmt = DP_WIRE_PLAIN;
            }
        }
        if (kind != DP_WG_MSG_DATA) {
            if (backlog < (int)HANDSHAKE_ROOM) {
                struct dp_event *e = &want_ev[nev++];

                memset(e, 0, sizeof(*e));
                e->type = DP_EVENT_HANDSHAKE;
                e->peer_id = DP_PEER_NONE;
                e->len = len - off;
                e->endpoint = M.from;
                e->message = (uint8_t)kind;
                e->wire = fmt;
                memcpy(e->data, m + off, len - off);
                backlog++;
            } else {
                want_drops[DP_DROP_EVENTS_FULL]++;
            }
            continue;
        }
        if (slot < 0) {
            want_drops[DP_DROP_UNKNOWN_INDEX]++;
            continue;
        }
        uint64_t c = le64(m + off + 8);

        if (M.kp[peer][slot].age_ns >= EXPIRED_NS || c >= DP_WG_REJECT_AFTER_MESSAGES) {
            want_drops[DP_DROP_EXPIRED_KEY]++;
            continue;
        }
        job[njob].g = i;
        job[njob].peer = peer;
        job[njob].slot = slot;
        job[njob].counter = c;
        job[njob].off = off;
        njob++;
    }
    /* ... then each data message in turn */
    for (int j = 0; j < njob; j++) {
        const struct dgram *g = &M.dg[M.batch[job[j].g]];
        struct mkp *k = &M.kp[job[j].peer][job[j].slot];
        struct mpeer *p = &M.peer[job[j].peer];
        const uint8_t *m = msgs[job[j].g] + job[j].off;
        uint32_t len = lens[job[j].g] - job[j].off, plen = len - DP_WG_DATA_MIN_LEN, ilen;
        uint8_t nonce[12] = {0};
        const uint8_t *src;
        int family;

        put_le64(nonce + 4, job[j].counter);
        if (dp_aead_open(pt[j], m + DP_WG_DATA_HEADER_LEN, len - DP_WG_DATA_HEADER_LEN, NULL,
                         0, nonce, k->key) != 0) {
            want_drops[DP_DROP_BAD_MAC]++;
            continue;
        }
        /* only what was sealed here authenticates, and only unchanged */
        CHECK(g->sealed && g->peer == job[j].peer && g->slot == job[j].slot &&
                  len == g->sealed_len - g->sealed_off &&
                  !memcmp(m + 8, g->sealed + g->sealed_off + 8, len - 8) &&
                  plen == g->inner_len && !memcmp(pt[j], g->inner, plen),
              "a datagram that was not sealed with keypair %d/%d authenticates under it",
              job[j].peer, job[j].slot);
        if (!model_replay_ok(k, job[j].counter)) {
            want_drops[DP_DROP_REPLAY]++;
            continue;
        }
        p->ep = M.from;
        p->rx_bytes += len;
        p->rx_packets++;
        if (k->responder && p->next == job[j].slot) {
            model_kill(job[j].peer, p->prev);
            p->prev = p->cur;
            p->cur = job[j].slot;
            p->next = -1;
            if (backlog < (int)RING) {
                want_ev[nev++] = (struct dp_event){.type = DP_EVENT_KEYPAIR_CONFIRMED,
                                                   .peer_id = (uint32_t)job[j].peer,
                                                   .local_index = k->index};
                backlog++;
            } else {
                want_drops[DP_DROP_EVENTS_FULL]++;
            }
        }
        if (!k->responder && k->age_ns >= REKEY_ON_RECEIVE_NS && !p->wanted) {
            if (backlog < (int)RING) {
                want_ev[nev++] = (struct dp_event){.type = DP_EVENT_NEED_HANDSHAKE,
                                                   .peer_id = (uint32_t)job[j].peer};
                backlog++;
                p->wanted = 1;
            } else {
                want_drops[DP_DROP_EVENTS_FULL]++;
            }
        }
        if (plen == 0)
            continue; /* keepalive */
        ilen = model_inner(pt[j], plen, &family, &src);
        if (!ilen) {
            want_drops[DP_DROP_INNER_MALFORMED]++;
            continue;
        }
        if (owner(family, src) != (uint32_t)job[j].peer) {
            want_drops[DP_DROP_NOT_ALLOWED]++;
            continue;
        }
        want_tun[nwant++] = (struct expect){pt[j], ilen};
    }

    /* the device */
    rc = dp_device_test_rx(d, msgs, lens, (uint32_t)n, &M.from);
    CHECK(rc == n, "dp_device_test_rx returned %d for %d datagrams", rc, n);
    groups = check_tun(M.dev, nwant);
    dp_device_drops(d, drops1, DP_DROP_COUNT);
    for (int r = 0; r < DP_DROP_COUNT; r++)
        CHECK(drops1[r] - drops0[r] == want_drops[r],
              "drop reason %d counted %llu times, the model %llu", r,
              (unsigned long long)(drops1[r] - drops0[r]), (unsigned long long)want_drops[r]);
    CHECK(dp_device_peer_stats_all(d, st, PEERS) == PEERS, "peer stats");
    for (int p = 0; p < PEERS; p++) {
        struct mpeer *mp = &M.peer[p];
        struct dp_endpoint ep;

        CHECK(st[p].rx_packets == mp->rx_packets && st[p].rx_bytes == mp->rx_bytes,
              "peer %d: rx %llu packets %llu bytes, the model %llu %llu", p,
              (unsigned long long)st[p].rx_packets, (unsigned long long)st[p].rx_bytes,
              (unsigned long long)mp->rx_packets, (unsigned long long)mp->rx_bytes);
        CHECK(st[p].keypairs == (uint32_t)((mp->cur >= 0) + (mp->prev >= 0) + (mp->next >= 0)),
              "peer %d holds %u keypairs, the model %d", p, st[p].keypairs,
              (mp->cur >= 0) + (mp->prev >= 0) + (mp->next >= 0));
        CHECK(st[p].current_local_index ==
                  (mp->cur >= 0 ? M.kp[p][mp->cur].index : 0),
              "peer %d's current keypair is %#x", p, st[p].current_local_index);
        CHECK(dp_device_peer_get_endpoint(d, (uint32_t)p, &ep) == 0 &&
                  !memcmp(&ep, &mp->ep, sizeof(ep)),
              "peer %d's endpoint (family %d port %u), the model's (family %d port %u)", p,
              ep.family, ep.port, mp->ep.family, mp->ep.port);
    }
    rc = dp_device_events(d, got_ev, sizeof(got_ev) / sizeof(got_ev[0]));
    CHECK(rc == nev, "%d events, the model %d", rc, nev);
    for (int e = 0; e < nev; e++)
        CHECK(!memcmp(&got_ev[e], &want_ev[e], sizeof(got_ev[e])),
              "event %d (type %u peer %u) differs from the model's (type %u peer %u)", e,
              got_ev[e].type, got_ev[e].peer_id, want_ev[e].type, want_ev[e].peer_id);
    if (verbose) {
        fprintf(stderr, "burst of %d: %d delivered (%d TCP groups), %d events, drops", n, nwant,
                groups, nev);
        for (int r = 0; r < DP_DROP_COUNT; r++)
            if (want_drops[r])
                fprintf(stderr, " %d:%llu", r, (unsigned long long)want_drops[r]);
        fprintf(stderr, "\n");
    }
}

static void queue(int g)
{
    M.batch[M.nbatch++] = g;
    if (M.nbatch == DP_DEVICE_BURST)
        burst();
}

/* ---------------------------------------------------------------- frames */

struct parsed {
    int ok;
    uint32_t off, len, l3, l4;
    int v6;
    struct dp_endpoint from;
};

/* Ethernet (one 802.1Q or 802.1ad tag at most), then IPv4 (not a
 * fragment, lengths consistent) or IPv6 (hop-by-hop, routing and
 * destination options headers, up to 8, before UDP), then UDP whose
 * length lies within the IP packet. */
static void ref_parse(const uint8_t *f, uint32_t len, struct parsed *r)
{
    uint32_t l3 = 14, end, l4, ulen;
    uint32_t type;

    memset(r, 0, sizeof(*r));
    if (len < 14)
        return;
    type = (uint32_t)f[12] << 8 | f[13];
    if (type == 0x8100 || type == 0x88a8) {
        if (len < 18)
            return;
        type = (uint32_t)f[16] << 8 | f[17];
        l3 = 18;
    }
    if (type == 0x0800) {
        uint32_t ihl, total;

        if (len < l3 + 20 || f[l3] >> 4 != 4 || f[l3 + 9] != 17)
            return;
        ihl = (f[l3] & 15u) * 4;
        total = (uint32_t)f[l3 + 2] << 8 | f[l3 + 3];
        if (ihl < 20 || total < ihl + 8 || l3 + total > len || (f[l3 + 6] & 0x3f) ||
            f[l3 + 7])
            return;
        l4 = l3 + ihl;
        end = l3 + total;
        r->from.family = DP_ENDPOINT_IPV4;
        memcpy(r->from.addr, f + l3 + 12, 4);
    } else if (type == 0x86dd) {
        uint32_t total, next;
        int k;

        if (len < l3 + 40 || f[l3] >> 4 != 6)
            return;
        total = 40 + ((uint32_t)f[l3 + 4] << 8 | f[l3 + 5]);
        if (total < 48 || l3 + total > len)
            return;
        end = l3 + total;
        next = f[l3 + 6];
        l4 = l3 + 40;
        for (k = 0; k < 8 && (next == 0 || next == 43 || next == 60); k++) {
            if (l4 + 8 > end)
                return;
            next = f[l4];
            l4 += 8 + 8u * f[l4 + 1];
        }
        if (next != 17 || l4 + 8 > end)
            return;
        r->v6 = 1;
        r->from.family = DP_ENDPOINT_IPV6;
        memcpy(r->from.addr, f + l3 + 8, 16);
    } else {
        return;
    }
    ulen = (uint32_t)f[l4 + 4] << 8 | f[l4 + 5];
    if (ulen < 8 || l4 + ulen > end)
        return;
    r->from.port = (uint16_t)((uint32_t)f[l4] << 8 | f[l4 + 1]);
    r->ok = 1;
    r->l3 = l3;
    r->l4 = l4;
    r->off = l4 + 8;
    r->len = ulen - 8;
}

/* RFC 768 / 8200: a checksum that verifies, IPv4's "none" (0), or the
 * pseudo-header's sum that checksum offload leaves on a virtual link. */
static int ref_checksum(const uint8_t *f, const struct parsed *r)
{
    const uint8_t *ip = f + r->l3;
    uint32_t field = (uint32_t)f[r->l4 + 6] << 8 | f[r->l4 + 7];
    uint64_t pseudo = pseudo_sum(r->v6, ip + (r->v6 ? 8 : 12), ip + (r->v6 ? 24 : 16), 17,
                                 r->len + 8);

    if (!r->v6 && field == 0)
        return 1;
    if (field == fold(pseudo))
        return 1;
    return fold(sum16(pseudo, f + r->l4, r->len + 8)) == 0xffff;
}

static void op_frame(const uint8_t *r)
{
    static uint8_t f[2048];
    int v6 = r[1] & 1, vlan = r[1] >> 1 & 1, nopt = r[1] >> 3 & 7, csum = r[1] >> 6;
    int corrupt = r[2] & 15;
    uint32_t param = le16(r + 3), pay = le16(r + 5) % 1473, l3, l4, len, ip_len;
    uint8_t src[16] = {0x20, 0x01, 0x0d, 0xb8};
    struct parsed ref;
    uint32_t off, plen;
    struct dp_endpoint from;
    int rc;

    memcpy(f, "\x02\0\0\0\0\x01\x02\0\0\0\0\x02", 12);
    l3 = 14;
    if (vlan) {
        put_be16(f + 12, r[1] & 4 ? 0x88a8 : 0x8100);
        put_be16(f + 14, 7);
        l3 = 18;
    }
    put_be16(f + l3 - 2, v6 ? 0x86dd : 0x0800);
    if (v6) {
        memcpy(src + 12, r + 8, 4);
        memset(f + l3, 0, 40);
        f[l3] = 0x60;
        f[l3 + 7] = 64;
        memcpy(f + l3 + 8, src, 16);
        memcpy(f + l3 + 24, far6, 16);
        l4 = l3 + 40;
        uint8_t *nh = f + l3 + 6;

        for (int k = 0; k < nopt; k++) {
            static const uint8_t kinds[3] = {0, 43, 60};
            uint32_t words = r[14 + k % 6] >> 2 & 1;

            *nh = corrupt == 8 && k == nopt - 1 ? 44 : kinds[r[14 + k % 6] % 3];
            memset(f + l4, 0, 8 + 8 * words);
            f[l4 + 1] = (uint8_t)words;
            nh = f + l4;
            l4 += 8 + 8 * words;
        }
        *nh = 17;
    } else {
        memcpy(src, r + 8, 4);
        memset(f + l3, 0, 20 + 4 * nopt);
        f[l3] = (uint8_t)(0x45 + nopt);
        f[l3 + 6] = 0x40;
        f[l3 + 8] = 64;
        f[l3 + 9] = 17;
        memcpy(f + l3 + 12, src, 4);
        memcpy(f + l3 + 16, far4, 4);
        l4 = l3 + 20 + 4 * nopt;
    }
    put_be16(f + l4, le16(r + 12));
    put_be16(f + l4 + 2, 51820);
    put_be16(f + l4 + 4, pay + 8);
    put_be16(f + l4 + 6, 0);
    pattern(f + l4 + 8, pay, param);
    ip_len = l4 + 8 + pay - l3;
    if (v6) {
        put_be16(f + l3 + 4, ip_len - 40);
    } else {
        put_be16(f + l3 + 2, ip_len);
        put_be16(f + l3 + 10, (uint16_t)~fold(sum16(0, f + l3, l4 - l3)));
    }
    uint64_t pseudo = pseudo_sum(v6, f + l3 + (v6 ? 8 : 12), f + l3 + (v6 ? 24 : 16), 17,
                                 pay + 8);
    uint32_t field = csum == 0 ? (uint16_t)~fold(sum16(pseudo, f + l4, pay + 8))
                   : csum == 1 ? fold(pseudo)
                   : csum == 2 ? 0
                               : le16(r + 18);

    if (csum == 0 && field == 0)
        field = 0xffff;
    put_be16(f + l4 + 6, field);
    len = l4 + 8 + pay;
    uint32_t trail = r[7] & 31;

    pattern(f + len, trail, r[7]);
    len += trail;
    switch (corrupt) {
    case 6:
        if (v6)
            put_be16(f + l3 + 4, ip_len - 40 + (int8_t)param);
        else
            put_be16(f + l3 + 2, ip_len + (int8_t)param);
        break;
    case 7:
        put_be16(f + l4 + 4, pay + 8 + (int8_t)param);
        break;
    case 8:
        if (!v6)
            put_be16(f + l3 + 6, param);
        else if (!nopt)
            f[l3 + 6] = 44;
        break;
    case 9:
        len = param % (len + 1);
        break;
    case 10:
        put_be16(f + l3 - 2, param);
        break;
    case 11:
        f[l3] = (uint8_t)((f[l3] & 15) | (param & 15) << 4);
        break;
    case 12:
        f[l3 + (v6 ? 6 : 9)] = (uint8_t)param;
        break;
    case 13:
        if (v6 && nopt)
            f[l3 + 41] = (uint8_t)param;
        else if (!v6)
            f[l3] = (uint8_t)(0x40 | (param & 15));
        break;
    case 14:
        f[param % len] ^= (uint8_t)((param >> 8) | 1);
        break;
    case 15:
        len = 14 + param % 30;
        break;
    }
    /* an exact-size copy: a read past the frame is ASan's to see */
    uint8_t *frame = malloc(len ? len : 1);

    CHECK(frame, "malloc");
    memcpy(frame, f, len);
    ref_parse(frame, len, &ref);
    rc = dp_device_test_outer_parse(frame, len, &off, &plen, &from);
    CHECK((rc == 0) == ref.ok, "outer parse: %d, the reference %s (a frame of %u bytes)", rc,
          ref.ok ? "parses it" : "refuses it", len);
    if (ref.ok) {
        CHECK(off == ref.off && plen == ref.len && !memcmp(&from, &ref.from, sizeof(from)),
              "outer parse: payload at %u, %u bytes; the reference at %u, %u bytes", off, plen,
              ref.off, ref.len);
        CHECK(off + plen <= len && off >= 14 + 20 + 8, "outer parse: payload outside the frame");
    }
    if (corrupt <= 5) { /* built well-formed */
        CHECK(ref.ok && ref.off == l4 + 8 && ref.len == pay && ref.from.port == le16(r + 12) &&
                  !memcmp(ref.from.addr, src, v6 ? 16 : 4),
              "a well-formed frame is not parsed to what was built");
    }
    rc = dp_device_test_outer_checksum(frame, len);
    if (!ref.ok) {
        CHECK(rc == -EINVAL, "outer checksum of a refused frame: %d", rc);
    } else {
        CHECK(rc == ref_checksum(frame, &ref), "outer checksum: %d, the reference %d", rc,
              ref_checksum(frame, &ref));
        if (corrupt <= 5 && (csum < 2 || (csum == 2 && !v6)))
            CHECK(rc == 1, "the checksum of a well-formed frame does not verify");
    }
    free(frame);
}

/* ---------------------------------------------------------------- per input */

static void reset(const uint8_t *h)
{
    struct dp_device *d;
    uint64_t now = dp_device_now_ns();
    struct dp_event ev[64];

    M.dev = &devices[h[0] & 1];
    d = M.dev->d;
    M.wire = profiles[h[0] >> 1 & 3];
    CHECK(dp_device_set_wire(d, &M.wire) == 0, "set_wire");
    for (int p = 0; p < PEERS; p++) {
        CHECK(dp_device_peer_clear_keypairs(d, (uint32_t)p) == 0, "clear_keypairs");
        CHECK(dp_device_peer_set_endpoint(d, (uint32_t)p,
                                          &(struct dp_endpoint){.family = DP_ENDPOINT_NONE}) == 0,
              "set_endpoint");
    }
    CHECK(dp_device_maintain(d) == 0, "keypairs wait for reclamation");
    while (dp_device_events(d, ev, 64) > 0) {
    }
    while (recv(M.dev->tun, tun_buf, sizeof(tun_buf), MSG_DONTWAIT) >= 0) {
    }
    memset(M.peer, 0, sizeof(M.peer));
    memset(M.seq, 0, sizeof(M.seq));
    M.ndg = 0;
    M.used = 0;
    M.nbatch = 0;
    M.from = (struct dp_endpoint){.family = DP_ENDPOINT_IPV4, .port = 51820,
                                  .addr = {192, 0, 2, 1}};
    for (int p = 0; p < PEERS; p++) {
        struct dp_peer_stats st;
        int count = h[1 + p] & 3;

        M.peer[p].cur = M.peer[p].prev = M.peer[p].next = -1;
        CHECK(dp_device_peer_stats(d, (uint32_t)p, &st) == 0, "peer_stats");
        M.peer[p].rx_bytes = st.rx_bytes;
        M.peer[p].rx_packets = st.rx_packets;
        for (int s = 0; s < SLOTS; s++) {
            struct mkp *k = &M.kp[p][s];
            int age = s == count - 1 ? h[1 + p] >> 5 & 3 : h[1 + p] >> 7 ? 3 : 0;
            struct dp_keypair_params prm = {.peer_id = (uint32_t)p,
                                            .local_index = local_index(p, s),
                                            .remote_index = 0x500 + (uint32_t)(p * 4 + s)};

            k->installed = k->live = s < count;
            k->index = local_index(p, s);
            k->responder = h[1 + p] >> (2 + s) & 1;
            k->age_ns = age == 2 ? 170 * NSEC : age == 3 ? 190 * NSEC : 0;
            fixed_key(k->key, p, s);
            k->have = 0;
            k->nseen = 0;
            k->next_counter = k->max_sealed = 0;
            k->nsealed = 0;
            if (s >= count)
                continue;
            prm.is_initiator = (uint8_t)!k->responder;
            prm.created_ns = now - k->age_ns;
            memcpy(prm.recv_key, k->key, 32);
            CHECK(dp_device_index_claim(d, prm.local_index) == 0, "index_claim %#x",
                  prm.local_index);
            CHECK(dp_device_keypair_install(d, &prm) == 0, "keypair_install %#x",
                  prm.local_index);
            model_install(p, s);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *arena;
    size_t at = 4;

    if (size < 4)
        return 0;
    if (!arena) {
        arena = malloc(ARENA_BYTES);
        CHECK(arena, "malloc arena");
    }
    M.arena = arena;
    reset(data);
    while (at < size) {
        const uint8_t *r = data + at;
        size_t left = size - at;

        switch (r[0] & 7) {
        case 0:
        case 1:
        case 2:
        case 3:
            if (left < 20 || op_sealed(r) < 0)
                goto done;
            queue(M.ndg - 1);
            at += 20;
            break;
        case 4: {
            long took;

            if (left < 12 || (took = op_raw(r, left)) < 0)
                goto done;
            queue(M.ndg - 1);
            at += (size_t)took;
            break;
        }
        case 5:
            if (left < 20)
                goto done;
            burst();
            memset(&M.from, 0, sizeof(M.from));
            M.from.family = r[1] & 1 ? DP_ENDPOINT_IPV6 : DP_ENDPOINT_IPV4;
            memcpy(M.from.addr, r + 2, r[1] & 1 ? 16 : 4);
            M.from.port = (uint16_t)le16(r + 18);
            at += 20;
            break;
        case 6:
            if (left < 20)
                goto done;
            op_frame(r);
            at += 20;
            break;
        default: {
            struct dgram *g;

            if (left < 3 || !M.ndg || !(g = new_dgram()))
                goto done;
            *g = M.dg[le16(r + 1) % (uint32_t)M.ndg];
            M.ndg++;
            queue(M.ndg - 1);
            at += 3;
        }
        }
    }
done:
    burst();
    return 0;
}
