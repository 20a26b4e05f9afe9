/* libFuzzer harness for the TUN offloads (native/wg/offload.c): TCP
 * segmentation (dp_tso_segment), checksum completion
 * (dp_offload_finish_csum) and receive coalescing (dp_gro_write), checked
 * against packets the harness builds itself and a checksum of its own
 * (RFC 1071 in big-endian words), not offload.c's.
 *
 * What is checked against what:
 *  - TSO: a super-packet is well formed (IPv4 with its options or IPv6,
 *    per gso_type, then a whole TCP header, gso_size > 0, header plus
 *    gso_size within the mtu) or -1 comes back. Else *total is
 *    ceil(payload / gso_size) (1 for no payload), one call writes
 *    min(max, total - first) segments (0 from `first` past the end), and
 *    segment i is hdr + its share of the payload long (within the mtu),
 *    with the super-packet's headers but: the IP length, the IPv4 ID
 *    (first ID + i, as Linux numbers TSO segments), a valid IPv4 header
 *    checksum; seq + i * gso_size; FIN and PSH on the last segment only,
 *    CWR on the first only (Linux's tcp_gso_segment), every other flag as
 *    given; a valid TCP checksum. The payloads end to end are the
 *    super-packet's. The kernel hands over only TCPV4 and TCPV6 (with ECN
 *    or not: the TUN's offloads are CSUM, TSO4 and TSO6), so no other
 *    gso_type is tried.
 *  - Checksum completion: -1 exactly when the field lies past the packet;
 *    else only the field changes, and for a field an even distance from
 *    csum_start (every protocol's) the stored value completes the sum the
 *    field held (the receiver's check adds up to 0xffff). Built TCP and UDP
 *    packets carrying the pseudo-header sum, as the kernel leaves them,
 *    then verify; a UDP checksum that computes to 0 goes out as 0xffff
 *    (RFC 768: 0 means "none", and IPv6 receivers drop it, RFC 8200 8.1;
 *    Linux's skb_checksum_help does the same).
 *  - GRO: packets of up to four flows go through dp_gro_write into one end
 *    of an AF_UNIX SOCK_SEQPACKET pair and come back one message per write.
 *    A model groups them as offload.c's contract says: a group is a TCP
 *    segment GRO handles (IPv4 without options or fragments, IPv6 without
 *    extension headers) with payload, followed by segments with the same
 *    headers but lengths, checksums, IPv4 ID, seq and PSH, carrying on its
 *    sequence numbers, none longer than the first, every one but the last
 *    as long as the first and without PSH, no SYN, FIN, RST, URG, CWR or
 *    ECE, at most offload.c's 64 segments and 65495 bytes. A group of one
 *    is written as it came, with a DATA_VALID header; a larger one as a
 *    TCPV4/TCPV6 super-packet (NEEDS_CSUM, csum_start at TCP, hdr_len,
 *    gso_size the first's payload) whose checksum field, completed as the
 *    kernel would, gives a valid checksum (as dp_offload_finish_csum's
 *    does), and which dp_tso_segment cuts (checked as above) back
 *    into exactly the packets that went in (IPv4 IDs numbered from the
 *    first: GRO does not compare them). Nothing fails to write; as many
 *    packets come out as went in. The harness gives GRO what the datapath
 *    does (inner_packet()): IP packets of version 4 or 6 whose length is
 *    their header's, and valid TCP checksums (GRO does not verify them: the
 *    packets were authenticated, and plain ones go out DATA_VALID).
 * Any difference aborts, with a line on stderr saying what differed.
 *
 * Input: byte 0 picks the part (mod 3: TSO, checksum, GRO). Packets come
 * from 8-byte specs: [0] bit 0 IPv6, bits 1-4 IPv4 option words (above 10:
 * none), bits 5-7 TCP option words (0 3 3 1 2 5 8 10); [1] TCP flags;
 * [2..3] the seed of everything else (addresses, ports, ack, window, tos,
 * DF, TTL, flow label, IPv4 ID, option bytes, payload); [4..7] seq.
 * Numbers are little-endian.
 *  TSO: [1..8] spec; [9] bits 0-1 gso_type (0-2 the packet's family's,
 *   3 the other's), bit 2 ECN, bit 3 NEEDS_CSUM (the TCP checksum field
 *   holds the pseudo-header sum, else a full checksum), bits 4-7 damage
 *   (0-7 none; 8 version := arg, 9 IHL := arg, 10 protocol := arg, 11 TCP
 *   data offset := arg, 12 cut to arg bytes, 13 byte arg xor arg >> 8,
 *   14 cut 1..8 bytes into the headers, 15 the IP length field := arg);
 *   [10..11] gso_size; [12..13] payload length (mod what fits 64 KiB);
 *   [14..15] mtu; [16] first: bit 7 counts back from the segment count;
 *   [17] max (mod 65); [18..19] the damage's arg. One call with those,
 *   then every segment again from 0 (max 64 when max is 0).
 *  Checksum: [1] 0 TCP, 1 UDP, 2-3 raw; [2..9] spec; [10..11] payload
 *   length; raw: [12..13] csum_start, [14..15] csum_offset, the packet is
 *   the rest of the input.
 *  GRO: [1] bits 0-1 flows - 1; per flow a spec and [8..9] its MSS (1 +
 *   mod 9216); then 3-byte packets until the input ends (at most 256, and
 *   what the socket holds): [0] bits 0-1 flow, bits 2-4 payload (0-4 the
 *   MSS, 5 1..MSS, 6 none, 7 over the MSS), bits 5-7 flags (0-3 the flow's
 *   without FIN and PSH, 4 with PSH, 5 with FIN, 6 with flag bit arg % 8,
 *   7 arg); [1] bits 0-3 change (0-7 none, 8 seq moved by (int8)arg,
 *   9 IPv4 ID jumps, 10 an IP header field, 11 a TCP header field, its
 *   data offset, or its option length (bits 4-7 pick), 12 IPv4 options / an IPv6 hop-by-hop
 *   next header, 13 an IPv4 fragment / an IPv6 fragment header, 14 not
 *   TCP, 15 cut to arg bytes past the IP header); [2] arg. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "offload.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80
#define TCP_ENDS_GROUP (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR | TCP_ECE)
#define PROTO_TCP 6
#define PROTO_UDP 17
#define HDR_MAX 120      /* 60 bytes of IPv4 header and 60 of TCP */
#define SEG_ROOM 65700   /* more than any segment: a header and a 16-bit MSS */
#define SPEC_LEN 8
/* offload.c's limits on a GRO group (not in offload.h) */
#define GRO_SEGMENTS_MAX 64
#define GRO_BYTES_MAX (65535 - 40)
#define GRO_PACKETS_MAX 256
#define GRO_MSS_MAX 9216
#define GRO_INPUT_BYTES (128 << 10) /* two full groups: more is only slower */

static void fail(const char *what, long a, long b)
{
    fprintf(stderr, "offload_roundtrip: %s (%ld, expected %ld)\n", what, a, b);
    abort();
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16; }
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v);
}

/* ------------------------------------------------ reference checksum */

/* RFC 1071 the plain way: big-endian 16-bit words from p, an odd last
 * byte padded with zero, carries folded at the end (offload.c adds native
 * 64-bit words). Eight bytes a load and without coverage counters: the
 * harness's loops are not what the fuzzer should explore, and byte by
 * byte they took a third of the time. */
__attribute__((no_sanitize("coverage"))) static uint64_t ref_sum(uint64_t sum, const uint8_t *p,
                                                                 size_t len)
{
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t w;

        memcpy(&w, p + i, 8);
        w = be64toh(w);
        sum += (w >> 48) + (w >> 32 & 0xffff) + (w >> 16 & 0xffff) + (w & 0xffff);
    }
    for (; i + 1 < len; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    return sum;
}

static uint16_t ref_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint64_t ref_pseudo(const uint8_t *ip, int v6, uint8_t proto, uint32_t l4_len)
{
    uint8_t tail[4];

    put32(tail, l4_len);
    if (v6)
        return ref_sum(ref_sum(ref_sum(0, ip + 8, 32), tail, 4), (uint8_t[]){0, proto}, 2);
    return ref_sum(ref_sum(ref_sum(0, ip + 12, 8), tail + 2, 2), (uint8_t[]){0, proto}, 2);
}

/* The L4 checksum of the packet at ip (its L4 header at l4) verifies. */
static int l4_valid(const uint8_t *ip, int v6, uint8_t proto, const uint8_t *l4, uint32_t l4_len)
{
    return ref_fold(ref_sum(ref_pseudo(ip, v6, proto, l4_len), l4, l4_len)) == 0xffff;
}

/* Equal, or the two zeros of one's complement (a TCP checksum may be
 * either; Linux stores 0xffff for 0) */
static int same_checksum(uint16_t a, uint16_t b)
{
    return a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0);
}

static int ipv4_header_valid(const uint8_t *ip, uint32_t iphl)
{
    return ref_fold(ref_sum(0, ip, iphl)) == 0xffff;
}

/* ------------------------------------------------------ packets built */

static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static uint32_t rng_seed(uint32_t seed)
{
    uint32_t s = (seed + 1) * 0x9e3779b9u;

    return s ? s : 1;
}

__attribute__((no_sanitize("coverage"))) static void rng_fill(uint32_t *s, uint8_t *p, size_t len)
{
    size_t i = 0;

    for (; i + 4 <= len; i += 4) {
        uint32_t v = rng_next(s);

        memcpy(p + i, &v, 4);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(rng_next(s) >> 11);
}

/* A flow: what the spec gives, and the fields every packet of it shares. */
struct flow {
    int v6;
    uint32_t ip_opt, tcp_opt; /* option words */
    uint8_t flags;
    uint32_t seq, rng;
    uint16_t id;
    uint32_t mss; /* GRO only */
    uint8_t ip[60], tcp[60];
};

static void flow_init(struct flow *f, const uint8_t *spec)
{
    static const uint8_t tcp_words[8] = {0, 3, 3, 1, 2, 5, 8, 10};

    memset(f, 0, sizeof(*f));
    f->v6 = spec[0] & 1;
    f->ip_opt = f->v6 || ((spec[0] >> 1) & 15) > 10 ? 0 : (spec[0] >> 1) & 15;
    f->tcp_opt = tcp_words[spec[0] >> 5];
    f->flags = spec[1];
    f->rng = rng_seed(le16(spec + 2));
    f->seq = le32(spec + 4);
    rng_fill(&f->rng, f->ip, sizeof(f->ip));
    rng_fill(&f->rng, f->tcp, sizeof(f->tcp));
    f->id = be16(f->ip + 4);
    f->ip[6] &= 0x40;   /* DF or not; no fragments */
    f->tcp[12] &= 0x01; /* NS or not */
}

/* Writes a TCP packet of f (with ip_opt, tcp_opt option words) to p and
 * returns its length; checksums valid, or the TCP one left as the
 * pseudo-header sum (partial: the kernel's NEEDS_CSUM). */
static uint32_t build(uint8_t *p, const struct flow *f, uint32_t ip_opt, uint32_t tcp_opt,
                      uint8_t flags, uint32_t seq, uint16_t id, uint32_t plen, uint32_t pay_seed,
                      int partial)
{
    uint32_t iphl = f->v6 ? 40 : 20 + 4 * ip_opt, tcphl = 20 + 4 * tcp_opt;
    uint32_t len = iphl + tcphl + plen, rng = rng_seed(pay_seed);
    uint8_t *tcp = p + iphl;

    if (f->v6) {
        memcpy(p, f->ip, 4);
        p[0] = (uint8_t)(0x60 | (p[0] & 15));
        put16(p + 4, tcphl + plen);
        p[6] = PROTO_TCP;
        p[7] = f->ip[7];
        memcpy(p + 8, f->ip + 8, 32);
    } else {
        memcpy(p, f->ip, iphl);
        p[0] = (uint8_t)(0x40 | iphl / 4);
        put16(p + 2, len);
        put16(p + 4, id);
        p[7] = 0;
        p[9] = PROTO_TCP;
        put16(p + 10, 0);
        put16(p + 10, (uint16_t)~ref_fold(ref_sum(0, p, iphl)));
    }
    memcpy(tcp, f->tcp, tcphl);
    put32(tcp + 4, seq);
    tcp[12] = (uint8_t)((tcphl / 4) << 4 | (f->tcp[12] & 1));
    tcp[13] = flags;
    rng_fill(&rng, tcp + tcphl, plen);
    put16(tcp + 16, 0);
    if (partial)
        put16(tcp + 16, ref_fold(ref_pseudo(p, f->v6, PROTO_TCP, tcphl + plen)));
    else
        put16(tcp + 16, (uint16_t)~ref_fold(ref_sum(ref_pseudo(p, f->v6, PROTO_TCP, tcphl + plen),
                                                    tcp, tcphl + plen)));
    return len;
}

/* After a change to a built packet: its IPv4 header checksum and, where
 * its TCP header is whole, its TCP checksum valid again. */
static void resum(uint8_t *p, uint32_t len)
{
    int v6 = p[0] >> 4 == 6;
    uint32_t iphl = v6 ? 40 : (uint32_t)(p[0] & 15) * 4;

    if (!v6) {
        put16(p + 10, 0);
        put16(p + 10, (uint16_t)~ref_fold(ref_sum(0, p, iphl)));
    }
    if (p[v6 ? 6 : 9] != PROTO_TCP || len < iphl + 20 || iphl + (p[iphl + 12] >> 4) * 4u > len)
        return;
    put16(p + iphl + 16, 0);
    put16(p + iphl + 16, (uint16_t)~ref_fold(ref_sum(ref_pseudo(p, v6, PROTO_TCP, len - iphl),
                                                     p + iphl, len - iphl)));
}

/* ------------------------------------------------------------- TSO */

/* A super-packet as the contract reads it. */
struct super {
    const uint8_t *pkt;
    uint32_t len, mtu;
    int v6;
    uint32_t iphl, tcphl, hdr, mss, payload, nseg, seq;
    uint16_t id;
    uint8_t flags;
};

/* 1 when pkt is a well-formed TCP super-packet for gso_type whose
 * segments fit the mtu (the MSS's worth, whatever the payload). */
static int super_read(const struct vnet_hdr *vh, const uint8_t *pkt, uint32_t len, uint32_t mtu,
                      struct super *s)
{
    memset(s, 0, sizeof(*s));
    s->pkt = pkt;
    s->len = len;
    s->mtu = mtu;
    s->v6 = (vh->gso_type & ~VNET_GSO_ECN) == VNET_GSO_TCPV6;
    s->mss = vh->gso_size;
    if (s->mss == 0 || len < 40)
        return 0;
    if (s->v6) {
        if (pkt[0] >> 4 != 6 || pkt[6] != PROTO_TCP || len < 60)
            return 0;
        s->iphl = 40;
    } else {
        s->iphl = (uint32_t)(pkt[0] & 15) * 4;
        if (pkt[0] >> 4 != 4 || s->iphl < 20 || pkt[9] != PROTO_TCP || len < s->iphl + 20)
            return 0;
        s->id = be16(pkt + 4);
    }
    s->tcphl = (uint32_t)(pkt[s->iphl + 12] >> 4) * 4;
    s->hdr = s->iphl + s->tcphl;
    if (s->tcphl < 20 || s->hdr > len || (uint64_t)s->hdr + s->mss > mtu)
        return 0;
    s->payload = len - s->hdr;
    s->nseg = s->payload ? (s->payload + s->mss - 1) / s->mss : 1;
    s->seq = be32(pkt + s->iphl + 4);
    s->flags = pkt[s->iphl + 13];
    return 1;
}

/* Segment i of s, as dp_tso_segment wrote it. */
static void check_segment(const struct super *s, uint32_t i, const uint8_t *seg, uint32_t seg_len)
{
    const uint8_t *pt = s->pkt + s->iphl, *t = seg + s->iphl;
    uint32_t off = i * s->mss, take = s->payload - off < s->mss ? s->payload - off : s->mss;
    uint8_t flags = s->flags;

    if (seg_len != s->hdr + take)
        fail("TSO: a segment's length", seg_len, s->hdr + take);
    if (seg_len > s->mtu)
        fail("TSO: a segment over the mtu", seg_len, s->mtu);
    if (s->v6) {
        if (memcmp(seg, s->pkt, 4) || memcmp(seg + 6, s->pkt + 6, 34))
            fail("TSO: an IPv6 header field changed, segment", i, -1);
        if (be16(seg + 4) != seg_len - 40)
            fail("TSO: IPv6 payload length", be16(seg + 4), seg_len - 40);
    } else {
        if (memcmp(seg, s->pkt, 2) || memcmp(seg + 6, s->pkt + 6, 4) ||
            memcmp(seg + 12, s->pkt + 12, s->iphl - 12))
            fail("TSO: an IPv4 header field changed, segment", i, -1);
        if (be16(seg + 2) != seg_len)
            fail("TSO: IPv4 total length", be16(seg + 2), seg_len);
        if (be16(seg + 4) != (uint16_t)(s->id + i))
            fail("TSO: IPv4 ID", be16(seg + 4), (uint16_t)(s->id + i));
        if (!ipv4_header_valid(seg, s->iphl))
            fail("TSO: IPv4 header checksum, segment", i, -1);
    }
    if (memcmp(t, pt, 4) || memcmp(t + 8, pt + 8, 5) || memcmp(t + 14, pt + 14, 2) ||
        memcmp(t + 18, pt + 18, s->tcphl - 18))
        fail("TSO: a TCP header field changed, segment", i, -1);
    if (be32(t + 4) != s->seq + off)
        fail("TSO: sequence number", be32(t + 4), s->seq + off);
    if (i + 1 < s->nseg)
        flags &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (i > 0)
        flags &= (uint8_t)~TCP_CWR;
    if (t[13] != flags)
        fail("TSO: TCP flags", t[13], flags);
    if (!l4_valid(seg, s->v6, PROTO_TCP, t, seg_len - s->iphl))
        fail("TSO: TCP checksum, segment", i, -1);
    if (memcmp(seg + s->hdr, s->pkt + s->hdr + off, take))
        fail("TSO: payload, segment", i, -1);
}

struct seg_bufs {
    uint8_t *out[64];
    uint32_t out_len[64];
};

/* 64 buffers of size bytes, each the end of its own allocation so that
 * AddressSanitizer sees a write past it; allocated once (fresh ones per
 * input, 64 of up to 64 KiB, took most of the time in page faults). */
static void bufs_get(struct seg_bufs *b, uint32_t size)
{
    static uint8_t *pool[64];

    for (uint32_t i = 0; i < 64; i++) {
        if (!pool[i] && !(pool[i] = malloc(SEG_ROOM)))
            abort();
        b->out[i] = pool[i] + SEG_ROOM - size;
    }
}

/* Segments s (valid) from `first`, max at a time, checking every call and
 * segment; the payloads end to end go to joined (when not NULL). */
static void tso_sweep(const struct vnet_hdr *vh, const struct super *s, struct seg_bufs *b,
                      uint32_t first, uint32_t max, uint8_t *joined)
{
    for (;;) {
        uint32_t total = 0xdeadbeef, want = first < s->nseg ? s->nseg - first : 0;
        int got = dp_tso_segment(vh, s->pkt, s->len, s->mtu, first, b->out, b->out_len, max,
                                 &total);

        if (want > max)
            want = max;
        if (got != (int)want)
            fail("TSO: segments written", got, want);
        if (total != s->nseg)
            fail("TSO: *total", total, s->nseg);
        for (uint32_t k = 0; k < want; k++) {
            check_segment(s, first + k, b->out[k], b->out_len[k]);
            if (joined)
                memcpy(joined + (size_t)(first + k) * s->mss, b->out[k] + s->hdr,
                       b->out_len[k] - s->hdr);
        }
        if (!want)
            return;
        first += want;
    }
}

static void fuzz_tso(const uint8_t *d, size_t size)
{
    static uint8_t built[TUN_SUPER_MAX], copy[TUN_SUPER_MAX], joined[TUN_SUPER_MAX];
    uint8_t in[20] = {0}, *pkt;
    struct flow f;
    struct vnet_hdr vh = {0};
    struct super s;
    struct seg_bufs b;
    uint32_t room, plen, len, mtu, first, max, total = 0, arg;
    int ok, got;

    memcpy(in, d, size < sizeof(in) ? size : sizeof(in));
    flow_init(&f, in + 1);
    room = TUN_SUPER_MAX - (f.v6 ? 40 : 20 + 4 * f.ip_opt) - (20 + 4 * f.tcp_opt);
    plen = le16(in + 12) % (room + 1);
    vh.gso_type = (uint8_t)(((in[9] & 3) == 3) != f.v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4);
    vh.gso_type |= in[9] & 4 ? VNET_GSO_ECN : 0;
    vh.flags = in[9] & 8 ? VNET_F_NEEDS_CSUM : 0;
    vh.gso_size = le16(in + 10);
    mtu = le16(in + 14);
    arg = le16(in + 18);
    pkt = built;
    len = build(pkt, &f, f.ip_opt, f.tcp_opt, f.flags, f.seq, f.id, plen, le16(in + 3) ^ 0x5a5a,
                in[9] & 8);
    vh.hdr_len = (uint16_t)(len - plen);
    vh.csum_start = (uint16_t)(f.v6 ? 40 : 20 + 4 * f.ip_opt);
    vh.csum_offset = 16;
    switch (in[9] >> 4) {
    case 8:
        pkt[0] = (uint8_t)((arg << 4) | (pkt[0] & 15));
        break;
    case 9:
        pkt[0] = (uint8_t)((pkt[0] & 0xf0) | (arg & 15));
        break;
    case 10:
        pkt[f.v6 ? 6 : 9] = (uint8_t)arg;
        break;
    case 11:
        pkt[vh.csum_start + 12] = (uint8_t)((arg << 4) | (pkt[vh.csum_start + 12] & 15));
        break;
    case 12:
        len = arg % (len + 1);
        break;
    case 13:
        pkt[arg % len] ^= (uint8_t)((arg >> 8) | 1);
        break;
    case 14:
        len = vh.hdr_len - 1 - arg % 8;
        break;
    case 15:
        put16(pkt + (f.v6 ? 4 : 2), arg);
        break;
    }
    /* the packet in a buffer of exactly its length */
    if (!(pkt = malloc(len ? len : 1)))
        abort();
    memcpy(pkt, built, len);
    memcpy(copy, built, len);
    ok = super_read(&vh, pkt, len, mtu, &s);
    first = in[16] & 0x80 ? (ok ? s.nseg : 0) - (in[16] & 0x7f) : in[16];
    max = in[17] % 65;
    bufs_get(&b, mtu < SEG_ROOM ? mtu : SEG_ROOM);
    got = dp_tso_segment(&vh, pkt, len, mtu, first, b.out, b.out_len, max, &total);
    if (!ok) {
        if (got != -1)
            fail("TSO: a malformed super-packet (or one over the mtu) taken, segments", got, -1);
    } else {
        tso_sweep(&vh, &s, &b, first, max, NULL);
        tso_sweep(&vh, &s, &b, 0, max ? max : 64, joined);
        if (memcmp(joined, pkt + s.hdr, s.payload))
            fail("TSO: the payloads end to end differ from the super-packet's", s.payload, -1);
    }
    if (memcmp(copy, pkt, len))
        fail("TSO: the super-packet changed", len, -1);
    free(pkt);
}

/* --------------------------------------------------------- checksum */

static void fuzz_csum(const uint8_t *d, size_t size)
{
    /* built with room for the TCP header a UDP one replaces */
    static uint8_t built[TUN_SUPER_MAX + HDR_MAX], before[TUN_SUPER_MAX];
    uint8_t in[16] = {0}, *pkt;
    struct vnet_hdr vh = {.flags = VNET_F_NEEDS_CSUM};
    struct flow f;
    uint32_t len, kind, field;
    int got;

    memcpy(in, d, size < sizeof(in) ? size : sizeof(in));
    kind = in[1] & 3;
    flow_init(&f, in + 2);
    if (kind < 2) {
        uint32_t iphl = f.v6 ? 40 : 20 + 4 * f.ip_opt;
        uint32_t l4hl = kind == 0 ? 20 + 4 * f.tcp_opt : 8;
        uint32_t plen = le16(in + 10) % (TUN_SUPER_MAX - iphl - l4hl + 1);

        pkt = built;
        len = build(pkt, &f, f.ip_opt, f.tcp_opt, f.flags, f.seq, f.id, plen, le16(in + 4), 1);
        if (kind == 1) { /* the TCP header's place taken by a UDP one */
            len = iphl + l4hl + plen;
            memmove(pkt + iphl + 8, pkt + iphl + 20 + 4 * f.tcp_opt, plen);
            pkt[f.v6 ? 6 : 9] = PROTO_UDP;
            put16(pkt + (f.v6 ? 4 : 2), f.v6 ? len - 40 : len);
            if (!f.v6)
                resum(pkt, len);
            put16(pkt + iphl + 4, len - iphl);
            put16(pkt + iphl + 6, ref_fold(ref_pseudo(pkt, f.v6, PROTO_UDP, len - iphl)));
        }
        vh.csum_start = (uint16_t)iphl;
        vh.csum_offset = kind == 0 ? 16 : 6;
        if (!(pkt = malloc(len))) /* exactly its length */
            abort();
        memcpy(pkt, built, len);
    } else {
        len = size > 16 ? (uint32_t)(size - 16) : 0;
        len = len < TUN_SUPER_MAX ? len : TUN_SUPER_MAX;
        if (!(pkt = malloc(len ? len : 1)))
            abort();
        memcpy(pkt, d + 16, len);
        vh.csum_start = le16(in + 12);
        vh.csum_offset = le16(in + 14);
    }
    memcpy(before, pkt, len);
    field = (uint32_t)vh.csum_start + vh.csum_offset;
    got = dp_offload_finish_csum(&vh, pkt, len);
    if (got != (field + 2 > len ? -1 : 0))
        fail("checksum: finish returned", got, field + 2 > len ? -1 : 0);
    if (got == 0) {
        if (memcmp(pkt, before, field) || memcmp(pkt + field + 2, before + field + 2,
                                                 len - field - 2))
            fail("checksum: bytes beside the field changed, field at", field, -1);
        if (!(vh.csum_offset & 1) &&
            ref_fold(ref_sum(be16(before + field), pkt + vh.csum_start,
                             len - vh.csum_start)) != 0xffff)
            fail("checksum: the stored value does not complete the sum, field at", field, -1);
        if (kind < 2 && !l4_valid(pkt, f.v6, kind ? PROTO_UDP : PROTO_TCP, pkt + vh.csum_start,
                                  len - vh.csum_start))
            fail("checksum: a finished TCP/UDP checksum does not verify, length", len, -1);
        if (kind == 1 && be16(pkt + field) == 0)
            fail("checksum: a UDP checksum stored as 0 (no checksum; must be 0xffff), length",
                 len, -1);
    } else if (memcmp(pkt, before, len)) {
        fail("checksum: a refused packet changed", len, -1);
    }
    free(pkt);
}

/* -------------------------------------------------------------- GRO */

struct view {
    int ok, v6;
    uint32_t iphl, tcphl, hdr, payload, seq;
    uint8_t flags;
};

/* A TCP segment GRO may merge, as offload.h says which. */
static void gro_view(const uint8_t *p, uint32_t len, struct view *v)
{
    memset(v, 0, sizeof(*v));
    if (p[0] == 0x45) {
        if (len < 40 || p[9] != PROTO_TCP || (be16(p + 6) & 0x3fff))
            return;
        v->iphl = 20;
    } else if (p[0] >> 4 == 6) {
        if (len < 60 || p[6] != PROTO_TCP)
            return;
        v->v6 = 1;
        v->iphl = 40;
    } else {
        return;
    }
    v->tcphl = (uint32_t)(p[v->iphl + 12] >> 4) * 4;
    v->hdr = v->iphl + v->tcphl;
    if (v->tcphl < 20 || v->hdr > len)
        return;
    v->payload = len - v->hdr;
    v->seq = be32(p + v->iphl + 4);
    v->flags = p[v->iphl + 13];
    v->ok = 1;
}

/* a and b have the same headers (v's layout) but lengths, checksums,
 * IPv4 ID, seq and PSH */
static int same_headers(const uint8_t *a, const uint8_t *b, const struct view *v)
{
    for (uint32_t i = 0; i < v->hdr; i++) {
        uint32_t t = i - v->iphl;
        uint8_t mask = 0xff;

        if (i < v->iphl && (v->v6 ? i == 4 || i == 5 : (i >= 2 && i < 6) || i == 10 || i == 11))
            continue;
        if (i >= v->iphl && ((t >= 4 && t < 8) || t == 16 || t == 17))
            continue;
        if (i >= v->iphl && t == 13)
            mask = (uint8_t)~TCP_PSH;
        if ((a[i] ^ b[i]) & mask)
            return 0;
    }
    return 1;
}

/* The model's groups: sizes[g] packets each; returns how many groups. */
static uint32_t gro_model(uint8_t **pkts, const uint32_t *lens, uint32_t n, uint32_t *sizes)
{
    static struct view views[GRO_PACKETS_MAX];
    uint32_t ng = 0;

    for (uint32_t i = 0; i < n; i++)
        gro_view(pkts[i], lens[i], &views[i]);
    for (uint32_t i = 0; i < n;) {
        const struct view *v = &views[i];
        uint32_t count = 1, bytes = v->payload;

        while (v->ok && v->payload && !(v->flags & TCP_ENDS_GROUP) && i + count < n &&
               count < GRO_SEGMENTS_MAX) {
            const struct view *prev = &views[i + count - 1], *q = &views[i + count];

            if (!q->ok || q->iphl != v->iphl || q->tcphl != v->tcphl || q->payload == 0 ||
                q->payload > v->payload || prev->payload != v->payload ||
                (prev->flags & TCP_PSH) || v->hdr + bytes + q->payload > GRO_BYTES_MAX ||
                q->seq != v->seq + bytes || !same_headers(pkts[i], pkts[i + count], v))
                break;
            bytes += q->payload;
            count++;
        }
        sizes[ng++] = count;
        i += count;
    }
    return ng;
}

static int gro_fds[2] = {-1, -1};
static size_t gro_budget;

/* One socket pair for every input: SEQPACKET keeps each write a message;
 * the writing end does not block (a full buffer fails the write instead
 * of hanging), and an input's packets are kept within what it holds. */
static void gro_socket(void)
{
    int big = 8 << 20, got = 0;
    socklen_t l = sizeof(got);

    if (gro_fds[0] >= 0)
        return;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, gro_fds))
        fail("socketpair", errno, 0);
    if (setsockopt(gro_fds[0], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)))
        setsockopt(gro_fds[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    getsockopt(gro_fds[0], SOL_SOCKET, SO_SNDBUF, &got, &l);
    fcntl(gro_fds[0], F_SETFL, O_NONBLOCK);
    /* half, for each message's overhead (the kernel's skb, counted below) */
    gro_budget = (size_t)got / 2;
}

/* The message GRO wrote for group g (size packets from pkts[j]). */
static void check_group(uint8_t *msg, uint32_t mlen, uint8_t **pkts, const uint32_t *lens,
                        uint32_t j, uint32_t size)
{
    static const uint8_t plain[VNET_HDR_LEN] = {VNET_F_DATA_VALID};
    struct vnet_hdr vh;
    struct view v;
    struct super s;
    struct seg_bufs b;
    static uint8_t mine[TUN_SUPER_MAX];
    uint8_t *pkt = msg + VNET_HDR_LEN;
    uint32_t len = mlen - VNET_HDR_LEN, field;

    if (mlen < VNET_HDR_LEN)
        fail("GRO: a message shorter than its virtio-net header", mlen, VNET_HDR_LEN);
    memcpy(&vh, msg, sizeof(vh));
    if (vh.gso_type == VNET_GSO_NONE) {
        if (size != 1)
            fail("GRO: packets written one by one, the model's group", 1, size);
        if (memcmp(msg, plain, VNET_HDR_LEN))
            fail("GRO: a plain packet's virtio-net header, packet", j, -1);
        if (len != lens[j] || memcmp(pkt, pkts[j], len))
            fail("GRO: a packet written changed, packet", j, -1);
        return;
    }
    gro_view(pkts[j], lens[j], &v);
    if (size < 2 || !v.ok)
        fail("GRO: a super-packet where the model has a group of", size, -1);
    if (vh.flags != VNET_F_NEEDS_CSUM ||
        vh.gso_type != (v.v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4) || vh.hdr_len != v.hdr ||
        vh.gso_size != v.payload || vh.csum_start != v.iphl || vh.csum_offset != 16)
        fail("GRO: a super-packet's virtio-net header, packet", j, -1);
    if (v.v6 ? be16(pkt + 4) != len - 40 : be16(pkt + 2) != len)
        fail("GRO: a super-packet's IP length", len, -1);
    if (!v.v6 && !ipv4_header_valid(pkt, 20))
        fail("GRO: a super-packet's IPv4 header checksum, packet", j, -1);
    /* the kernel completes the checksum: ours, then offload.c's */
    if (len > sizeof(mine))
        fail("GRO: a super-packet over 64 KiB", len, sizeof(mine));
    memcpy(mine, pkt, len);
    field = v.iphl + 16;
    put16(mine + field, (uint16_t)~ref_fold(ref_sum(0, mine + v.iphl, len - v.iphl)));
    if (!l4_valid(mine, v.v6, PROTO_TCP, mine + v.iphl, len - v.iphl))
        fail("GRO: a super-packet's partial TCP checksum, packet", j, -1);
    /* offload.c's completion: the same, or the other zero (0, 0xffff) */
    if (dp_offload_finish_csum(&vh, pkt, len) || memcmp(mine, pkt, field) ||
        memcmp(mine + field + 2, pkt + field + 2, len - field - 2) ||
        !same_checksum(be16(pkt + field), be16(mine + field)))
        fail("GRO: dp_offload_finish_csum's completion of a super-packet, packet", j, -1);
    if (!super_read(&vh, pkt, len, len, &s))
        fail("GRO: a super-packet TSO refuses, packet", j, -1);
    if (s.nseg != size)
        fail("GRO: segments in a super-packet, the model's group", s.nseg, size);
    bufs_get(&b, s.hdr + s.mss);
    s.mtu = s.hdr + s.mss;
    tso_sweep(&vh, &s, &b, 0, size, NULL);
    for (uint32_t k = 0; k < size; k++) {
        uint8_t *want = pkts[j + k];

        if (b.out_len[k] != lens[j + k])
            fail("GRO then TSO: a packet's length", b.out_len[k], lens[j + k]);
        if (!v.v6 && be16(want + 4) != (uint16_t)(be16(pkts[j] + 4) + k)) {
            /* GRO does not compare IDs; segments are numbered from the first */
            if (!(want = malloc(lens[j + k])))
                abort();
            memcpy(want, pkts[j + k], lens[j + k]);
            put16(want + 4, (uint16_t)(be16(pkts[j] + 4) + k));
            resum(want, lens[j + k]);
        }
        if (memcmp(b.out[k], want, lens[j + k]))
            fail("GRO then TSO: a packet differs from the one that went in, packet", j + k, -1);
        if (want != pkts[j + k])
            free(want);
    }
}

static void fuzz_gro(const uint8_t *d, size_t size)
{
    static uint8_t *bufs[GRO_PACKETS_MAX], *copies[GRO_PACKETS_MAX];
    static uint32_t lens[GRO_PACKETS_MAX], sizes[GRO_PACKETS_MAX];
    static struct gro_pkt pkts[GRO_PACKETS_MAX];
    static uint8_t scratch[VNET_HDR_LEN + TUN_SUPER_MAX], msg[VNET_HDR_LEN + 65536 + 1];
    static uint8_t arena[GRO_INPUT_BYTES]; /* the copies */
    uint8_t tmp[HDR_MAX + GRO_MSS_MAX + 256 + 8];
    struct flow flows[4];
    uint32_t nflows, n = 0, ng, failed, j = 0, g = 0;
    size_t at, used = 0, socket_used = 0;

    gro_socket();
    if (size < 2)
        return;
    nflows = (d[1] & 3) + 1;
    at = 2;
    for (uint32_t k = 0; k < nflows; k++, at += SPEC_LEN + 2) {
        uint8_t spec[SPEC_LEN + 2] = {0};

        if (at < size)
            memcpy(spec, d + at, size - at < sizeof(spec) ? size - at : sizeof(spec));
        flow_init(&flows[k], spec);
        flows[k].mss = 1 + le16(spec + SPEC_LEN) % GRO_MSS_MAX;
        flows[k].seq ^= k << 24;
    }
    for (; at + 3 <= size && n < GRO_PACKETS_MAX; at += 3) {
        const uint8_t *op = d + at;
        struct flow *f = &flows[(op[0] & 3) % nflows];
        uint32_t plen, ip_opt = f->ip_opt, tcp_opt = f->tcp_opt, len, iphl, tcphl;
        uint8_t flags, arg = op[2], which = op[1] >> 4;
        int resum_needed = 0;

        switch ((op[0] >> 2) & 7) {
        case 5:
            plen = 1 + arg % f->mss;
            break;
        case 6:
            plen = 0;
            break;
        case 7:
            plen = f->mss + 1 + arg;
            break;
        default:
            plen = f->mss;
        }
        switch (op[0] >> 5) {
        case 4:
            flags = f->flags | TCP_PSH;
            break;
        case 5:
            flags = f->flags | TCP_FIN;
            break;
        case 6:
            flags = (uint8_t)(f->flags | 1 << (arg % 8));
            break;
        case 7:
            flags = arg;
            break;
        default:
            flags = f->flags & (uint8_t)~(TCP_FIN | TCP_PSH);
        }
        switch (op[1] & 15) {
        case 8:
            f->seq += arg ? (uint32_t)(int8_t)arg : 1;
            break;
        case 9:
            f->id = (uint16_t)(f->id + 1 + arg);
            break;
        case 11:
            if (which == 7)
                tcp_opt = (tcp_opt + 1 + arg % 10) % 11;
            break;
        case 12:
            if (!f->v6)
                ip_opt = ip_opt < 10 ? ip_opt + 1 : 0;
            break;
        }
        iphl = f->v6 ? 40 : 20 + 4 * ip_opt;
        tcphl = 20 + 4 * tcp_opt;
        if (socket_used + iphl + tcphl + plen + 1024 > gro_budget ||
            used + iphl + tcphl + plen > GRO_INPUT_BYTES)
            break;
        len = build(tmp, f, ip_opt, tcp_opt, flags, f->seq, f->id, plen,
                    f->seq ^ (uint32_t)n << 20, 0);
        f->seq += plen;
        f->id++;
        if ((op[1] & 15) >= 10)
            resum_needed = 1;
        switch (op[1] & 15) {
        case 10: /* an IP header field */
            if (f->v6)
                tmp[(const uint8_t[]){1, 2, 3, 7, 8, 23, 24, 39}[which & 7]] ^= arg | 1;
            else if ((which & 3) == 0)
                tmp[6] ^= 0x40; /* DF */
            else if ((which & 3) == 1)
                tmp[6] ^= 0x80; /* the reserved bit */
            else
                tmp[(const uint8_t[]){1, 8, 12, 19}[which >> 2 & 3]] ^= arg | 1;
            break;
        case 11: /* a TCP header field */
            if (which == 6) /* the data offset (arg >= 128), else NS or a reserved bit */
                tmp[iphl + 12] ^= arg & 0x80 ? (arg & 0x70) | 0x10 : 1 << (arg % 4);
            else if (which != 7)
                tmp[iphl + (const uint8_t[]){0, 3, 8, 11, 14, 15, 18, 19,
                                             20, 23, 27, 31, 35, 39, 50, 59}[(which + arg) &
                                                                              15] %
                                 tcphl] ^= arg | 1;
            break;
        case 12: /* IPv4 options were added above */
            if (f->v6)
                tmp[6] = 0; /* hop-by-hop options */
            break;
        case 13:
            if (f->v6)
                tmp[6] = 44;
            else if (arg & 1)
                tmp[6] |= 0x20; /* more fragments */
            else
                tmp[7] = arg | 1;
            break;
        case 14:
            tmp[f->v6 ? 6 : 9] = arg == PROTO_TCP ? PROTO_UDP : arg;
            break;
        case 15: /* cut, the IP length still the packet's */
            len = iphl + arg % (len - iphl);
            put16(tmp + (f->v6 ? 4 : 2), f->v6 ? len - 40 : len);
            break;
        }
        if (resum_needed)
            resum(tmp, len);
        if (!(bufs[n] = malloc(VNET_HDR_LEN + len)))
            abort();
        copies[n] = arena + used;
        memcpy(bufs[n] + VNET_HDR_LEN, tmp, len);
        memcpy(copies[n], tmp, len);
        pkts[n] = (struct gro_pkt){bufs[n] + VNET_HDR_LEN, len};
        lens[n++] = len;
        used += len;
        socket_used += len + 1024;
    }
    ng = gro_model(copies, lens, n, sizes);
    failed = dp_gro_write(gro_fds[0], pkts, n, scratch);
    if (failed)
        fail("GRO: packets that failed to write", failed, 0);
    for (;;) {
        ssize_t r = recv(gro_fds[1], msg, sizeof(msg), MSG_DONTWAIT | MSG_TRUNC);

        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r < 0 || (size_t)r > sizeof(msg))
            fail("GRO: reading back a message", r, errno);
        if (g == ng)
            fail("GRO: more messages than the model's groups", g + 1, ng);
        check_group(msg, (uint32_t)r, copies, lens, j, sizes[g]);
        j += sizes[g++];
    }
    if (g != ng || j != n)
        fail("GRO: packets out", j, n);
    for (uint32_t k = 0; k < n; k++) {
        if (memcmp(pkts[k].data, copies[k], lens[k]))
            fail("GRO: a packet given changed in its buffer, packet", k, -1);
        free(bufs[k]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_tso(data, size);
        break;
    case 1:
        fuzz_csum(data, size);
        break;
    default:
        fuzz_gro(data, size);
    }
    return 0;
}
