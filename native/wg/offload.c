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
