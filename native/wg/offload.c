/* TUN offloads (see offload.h). */
#include "offload.h"

#include <arpa/inet.h>
#include <string.h>

#define IPPROTO_TCP_ 6
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

uint64_t dp_csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
    /* 64-bit words with end-around carry; byte order does not matter as
     * long as the result is stored back in the same order (RFC 1071). */
    while (len >= 8) {
        uint64_t v;

        memcpy(&v, p, 8);
        sum += v;
        sum += sum < v;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t v;

        memcpy(&v, p, 4);
        sum += v;
        sum += sum < v;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t v;

        memcpy(&v, p, 2);
        sum += v;
        sum += sum < v;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t v = 0;

        memcpy(&v, p, 1);
        sum += v;
        sum += sum < v;
    }
    return sum;
}

uint16_t dp_csum_fold(uint64_t sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int dp_offload_finish_csum(const struct vnet_hdr *vh, uint8_t *pkt, size_t len)
{
    size_t start = vh->csum_start, field = (size_t)vh->csum_start + vh->csum_offset;
    uint16_t c;

    if (field + 2 > len || start > len)
        return -1;
    /* the field holds the pseudo-header sum; summing over it completes it */
    c = dp_csum_fold(dp_csum_add(0, pkt + start, len - start));
    /* a sum of 0 is sent as 0xffff: in UDP, 0 means "no checksum" (and
     * IPv6 receivers drop it); the same value for TCP */
    if (c == 0)
        c = 0xffff;
    memcpy(pkt + field, &c, 2);
    return 0;
}

static uint64_t pseudo_header(const uint8_t *ip, int v6, uint32_t l4_len)
{
    uint16_t proto = htons(IPPROTO_TCP_);
    uint64_t sum;

    if (v6) {
        uint32_t l = htonl(l4_len);

        sum = dp_csum_add(0, ip + 8, 32);
        sum = dp_csum_add(sum, (const uint8_t *)&l, 4);
    } else {
        uint16_t l = htons((uint16_t)l4_len);

        sum = dp_csum_add(0, ip + 12, 8);
        sum = dp_csum_add(sum, (const uint8_t *)&l, 2);
    }
    return dp_csum_add(sum, (const uint8_t *)&proto, 2);
}

int dp_tso_segment(const struct vnet_hdr *vh, const uint8_t *pkt, size_t len, uint32_t mtu,
                   uint32_t first, uint8_t **out, uint32_t *out_len, uint32_t max,
                   uint32_t *total)
{
    int v6 = (vh->gso_type & ~VNET_GSO_ECN) == VNET_GSO_TCPV6;
    size_t iphl, tcphl, hdr, payload, mss = vh->gso_size;
    uint32_t nseg, seq0, written = 0;
    uint16_t id0 = 0;

    if (len < 20 || mss == 0)
        return -1;
    if (v6) {
        if (len < 60 || pkt[0] >> 4 != 6 || pkt[6] != IPPROTO_TCP_)
            return -1;
        iphl = 40;
    } else {
        iphl = (size_t)(pkt[0] & 0xf) * 4;
        if (pkt[0] >> 4 != 4 || iphl < 20 || len < iphl + 20 || pkt[9] != IPPROTO_TCP_)
            return -1;
        memcpy(&id0, pkt + 4, 2);
        id0 = ntohs(id0);
    }
    tcphl = (size_t)(pkt[iphl + 12] >> 4) * 4;
    hdr = iphl + tcphl;
    if (tcphl < 20 || hdr > len || hdr + mss > mtu)
        return -1;
    payload = len - hdr;
    nseg = (uint32_t)((payload + mss - 1) / mss);
    if (nseg == 0)
        nseg = 1;
    *total = nseg;
    memcpy(&seq0, pkt + iphl + 4, 4);
    seq0 = ntohl(seq0);

    for (uint32_t i = first; i < nseg && written < max; i++, written++) {
        size_t off = (size_t)i * mss, take = payload - off < mss ? payload - off : mss;
        uint8_t *o = out[written], *tcp = o + iphl;
        uint32_t seq = htonl(seq0 + (uint32_t)off);
        uint16_t c;

        memcpy(o, pkt, hdr);
        memcpy(o + hdr, pkt + hdr + off, take);
        if (v6) {
            uint16_t plen = htons((uint16_t)(tcphl + take));

            memcpy(o + 4, &plen, 2);
        } else {
            uint16_t tot = htons((uint16_t)(hdr + take)), id = htons((uint16_t)(id0 + i)),
                     zero = 0;

            memcpy(o + 2, &tot, 2);
            memcpy(o + 4, &id, 2);
            memcpy(o + 10, &zero, 2);
            c = dp_csum_fold(dp_csum_add(0, o, iphl));
            memcpy(o + 10, &c, 2);
        }
        memcpy(tcp + 4, &seq, 4);
        if (i + 1 < nseg)
            tcp[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i > 0)
            tcp[13] &= (uint8_t)~TCP_CWR;
        memset(tcp + 16, 0, 2);
        c = dp_csum_fold(dp_csum_add(pseudo_header(o, v6, (uint32_t)(tcphl + take)), tcp,
                                     tcphl + take));
        memcpy(tcp + 16, &c, 2);
        out_len[written] = (uint32_t)(hdr + take);
    }
    return (int)written;
}

/* ---------------------------------------------------------------- GRO */

#include <unistd.h>

#define GRO_MAX_SEGMENTS 64
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_URG 0x20
#define TCP_ECE 0x40

struct tcp_view {
    int v6;
    uint32_t iphl, tcphl, payload;
    uint32_t seq;
    uint8_t flags;
};

/* A TCP segment we know how to merge: IPv4 without options or fragments,
 * or IPv6 without extension headers. */
static int tcp_view(const uint8_t *p, uint32_t len, struct tcp_view *v)
{
    if (len < 40)
        return 0;
    if (p[0] >> 4 == 4) {
        if ((p[0] & 0xf) != 5 || p[9] != IPPROTO_TCP_ || (p[6] & 0x3f) || p[7])
            return 0; /* options, not TCP, MF set or a fragment offset */
        v->v6 = 0;
        v->iphl = 20;
    } else {
        if (p[0] >> 4 != 6 || len < 60 || p[6] != IPPROTO_TCP_)
            return 0;
        v->v6 = 1;
        v->iphl = 40;
    }
    v->tcphl = (uint32_t)(p[v->iphl + 12] >> 4) * 4;
    if (v->tcphl < 20 || v->iphl + v->tcphl > len)
        return 0;
    v->payload = len - v->iphl - v->tcphl;
    memcpy(&v->seq, p + v->iphl + 4, 4);
    v->seq = ntohl(v->seq);
    v->flags = p[v->iphl + 13];
    return 1;
}

/* Can q follow the group that starts with p (seen so far: `bytes` of
 * payload in segments of `mss`, the last `last` long)? */
static int mergeable(const uint8_t *p, const struct tcp_view *pv, const uint8_t *q,
                     const struct tcp_view *qv, uint32_t bytes, uint32_t mss, uint32_t last)
{
    if (qv->v6 != pv->v6 || qv->tcphl != pv->tcphl || qv->payload == 0 || qv->payload > mss ||
        last != mss || pv->iphl + pv->tcphl + bytes + qv->payload > 65535 - 40 ||
        qv->seq != pv->seq + bytes)
        return 0;
    if ((pv->flags | qv->flags) & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR | TCP_ECE))
        return 0;
    if (pv->flags & TCP_PSH)
        return 0; /* a pushed segment ends its group */
    if (pv->v6) {
        /* version/class/flow label, next header, hop limit, addresses */
        if (memcmp(p, q, 4) || memcmp(p + 6, q + 6, 34))
            return 0;
    } else {
        /* tos, DF, ttl, protocol, addresses */
        if (p[1] != q[1] || p[6] != q[6] || p[8] != q[8] || memcmp(p + 12, q + 12, 8))
            return 0;
    }
    /* ports, ack, flags but PSH, window, urgent pointer, options: equal */
    const uint8_t *pt = p + pv->iphl, *qt = q + qv->iphl;

    return !memcmp(pt, qt, 4) && !memcmp(pt + 8, qt + 8, 5) &&
           (pt[13] & ~TCP_PSH) == (qt[13] & ~TCP_PSH) && !memcmp(pt + 14, qt + 14, 2) &&
           !memcmp(pt + 18, qt + 18, qv->tcphl - 18);
}

static int write_one(int fd, uint8_t *pkt, uint32_t len, const struct vnet_hdr *vh)
{
    memcpy(pkt - VNET_HDR_LEN, vh, VNET_HDR_LEN);
    return write(fd, pkt - VNET_HDR_LEN, len + VNET_HDR_LEN) == (ssize_t)(len + VNET_HDR_LEN)
               ? 0
               : -1;
}

/* Finish the group built in p's buffer: lengths, IPv4 checksum, and the
 * TCP checksum left partial for the kernel (CHECKSUM_PARTIAL). */
static int write_group(int fd, uint8_t *p, const struct tcp_view *v, uint32_t bytes,
                       uint32_t mss)
{
    uint32_t hdr = v->iphl + v->tcphl, total = hdr + bytes;
    struct vnet_hdr vh = {.flags = VNET_F_NEEDS_CSUM,
                          .gso_type = v->v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4,
                          .hdr_len = (uint16_t)hdr, .gso_size = (uint16_t)mss,
                          .csum_start = (uint16_t)v->iphl, .csum_offset = 16};
    uint16_t c;

    if (v->v6) {
        uint16_t plen = htons((uint16_t)(total - 40));

        memcpy(p + 4, &plen, 2);
    } else {
        uint16_t tot = htons((uint16_t)total), zero = 0;

        memcpy(p + 2, &tot, 2);
        memcpy(p + 10, &zero, 2);
        c = dp_csum_fold(dp_csum_add(0, p, 20));
        memcpy(p + 10, &c, 2);
    }
    c = (uint16_t)~dp_csum_fold(pseudo_header(p, v->v6, v->tcphl + bytes));
    memcpy(p + v->iphl + 16, &c, 2);
    return write_one(fd, p, total, &vh);
}

uint32_t dp_gro_write(int tun_fd, struct gro_pkt *pkts, uint32_t n, uint8_t *scratch)
{
    const struct vnet_hdr plain = {.flags = VNET_F_DATA_VALID};
    uint32_t failed = 0, i = 0;

    while (i < n) {
        struct gro_pkt *g = &pkts[i];
        struct tcp_view gv, qv;
        uint32_t count = 1, bytes, mss, last;
        uint8_t psh;

        if (!tcp_view(g->data, g->len, &gv) || gv.payload == 0) {
            failed += write_one(tun_fd, g->data, g->len, &plain) != 0;
            i++;
            continue;
        }
        bytes = mss = last = gv.payload;
        psh = gv.flags & TCP_PSH;
        while (i + count < n && count < GRO_MAX_SEGMENTS) {
            struct gro_pkt *q = &pkts[i + count];

            gv.flags = (uint8_t)((gv.flags & ~TCP_PSH) | psh);
            if (!tcp_view(q->data, q->len, &qv) ||
                !mergeable(g->data, &gv, q->data, &qv, bytes, mss, last))
                break;
            psh = qv.flags & TCP_PSH;
            bytes += qv.payload;
            last = qv.payload;
            count++;
        }
        if (count == 1) {
            failed += write_one(tun_fd, g->data, g->len, &plain) != 0;
            i++;
            continue;
        }
        /* build the group in scratch: the packets' own buffers may be parts
         * of one received buffer (UDP GRO), with no room between them */
        uint8_t *out = scratch + VNET_HDR_LEN;
        uint32_t off = g->len;

        memcpy(out, g->data, g->len);
        for (uint32_t k = 1; k < count; k++) {
            struct gro_pkt *q = &pkts[i + k];

            tcp_view(q->data, q->len, &qv);
            memcpy(out + off, q->data + qv.iphl + qv.tcphl, qv.payload);
            off += qv.payload;
        }
        out[gv.iphl + 13] |= psh;
        failed += write_group(tun_fd, out, &gv, bytes, mss) ? count : 0;
        i += count;
    }
    return failed;
}
