/* Header-only packet parsing for the XDP programs, around one cursor that
 * walks the frame. Every helper checks the frame's end before it reads and
 * returns NULL (or a negative DP_PARSE_*) when the frame is cut short, so
 * the verifier sees a bounds check in front of every access.
 */
#ifndef DP_XDP_PARSING_H
#define DP_XDP_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "dp_xdp_kern_user.h"

/* IPv4 frag_off (host order): more-fragments flag and offset (RFC 791). */
#define DP_IPV4_MF 0x2000
#define DP_IPV4_OFFSET_MASK 0x1fff
/* IPv6 fragment header offset field (RFC 8200 4.5): offset << 3 | M. */
#define DP_IPV6_FRAG_OFFSET_MASK 0xfff8

/* No header is longer (IPv6 extension headers: 2048 bytes). */
#define DP_CURSOR_MAX_PULL 2048

#define DP_PARSE_TRUNCATED (-1)
#define DP_PARSE_TOO_DEEP (-2)

struct dp_vlan_hdr {
    __be16 tci;
    __be16 encapsulated_proto;
};

struct dp_ipv6_frag_hdr {
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off;
    __be32 identification;
};

struct cursor {
    void *pos;
    void *end;
};

static __always_inline void cursor_init(struct cursor *c, const struct xdp_md *ctx)
{
    c->pos = (void *)(long)ctx->data;
    c->end = (void *)(long)ctx->data_end;
}

/* The `len` bytes at the cursor, which moves past them; NULL when fewer
 * remain. With a variable len the verifier learns nothing about the bytes
 * returned: pull a header's fixed part first, read it, then skip the rest. */
static __always_inline void *cursor_pull(struct cursor *c, __u32 len)
{
    void *p = c->pos;

    /* Bounds len for the verifier (a no-op for constant lengths). */
    if (len > DP_CURSOR_MAX_PULL)
        return NULL;
    if (p + len > c->end)
        return NULL;
    c->pos = p + len;
    return p;
}

/* Ethernet with at most one 802.1Q/802.1ad tag. Sets *proto to the
 * (network order) EtherType after the tag; a second tag is left in *proto
 * for the caller to treat as "not IP". */
static __always_inline int parse_ethernet(struct cursor *c, __be16 *proto)
{
    struct ethhdr *eth = cursor_pull(c, sizeof(*eth));
    struct dp_vlan_hdr *vlan;

    if (!eth)
        return DP_PARSE_TRUNCATED;
    *proto = eth->h_proto;
    if (*proto == bpf_htons(ETH_P_8021Q) || *proto == bpf_htons(ETH_P_8021AD)) {
        vlan = cursor_pull(c, sizeof(*vlan));
        if (!vlan)
            return DP_PARSE_TRUNCATED;
        *proto = vlan->encapsulated_proto;
    }
    return 0;
}

/* What the walk over IPv6 extension headers found. */
struct ipv6_ext_walk {
    __u32 len;          /* bytes of extension headers walked */
    __u8 fragment;      /* a fragment header was seen */
    __u8 non_first;     /* ... with a non-zero offset: the walk stopped there */
};

/* Walks hop-by-hop, routing, destination options and fragment headers
 * from `nexthdr` (the IPv6 header's) and returns the upper-layer protocol
 * with the cursor on its header, DP_PARSE_TRUNCATED, or DP_PARSE_TOO_DEEP
 * when more than DP_XDP_MAX_IPV6_EXT_HEADERS come first. After a non-first fragment header
 * the walk stops: what follows is the middle of a payload. Other extension
 * headers (AH, ESP, mobility, ...) are returned as the upper layer. */
static __always_inline int ipv6_skip_ext(struct cursor *c, __u8 nexthdr, struct ipv6_ext_walk *w)
{
    struct ipv6_opt_hdr *opt;
    struct dp_ipv6_frag_hdr *frag;
    __u32 extra;
    int i;

    w->len = 0;
    w->fragment = 0;
    w->non_first = 0;
    for (i = 0; i < DP_XDP_MAX_IPV6_EXT_HEADERS; i++) {
        switch (nexthdr) {
        case IPPROTO_HOPOPTS:
        case IPPROTO_ROUTING:
        case IPPROTO_DSTOPTS:
            /* Length in 8-byte units, not counting the first 8 (RFC 8200 4.3). */
            opt = cursor_pull(c, 8);
            if (!opt)
                return DP_PARSE_TRUNCATED;
            nexthdr = opt->nexthdr;
            extra = (__u32)opt->hdrlen * 8;
            if (!cursor_pull(c, extra))
                return DP_PARSE_TRUNCATED;
            w->len += 8 + extra;
            break;
        case IPPROTO_FRAGMENT:
            frag = cursor_pull(c, sizeof(*frag));
            if (!frag)
                return DP_PARSE_TRUNCATED;
            nexthdr = frag->nexthdr;
            w->len += sizeof(*frag);
            w->fragment = 1;
            if (bpf_ntohs(frag->frag_off) & DP_IPV6_FRAG_OFFSET_MASK) {
                w->non_first = 1;
                return nexthdr;
            }
            break;
        default:
            return nexthdr;
        }
    }
    switch (nexthdr) {
    case IPPROTO_HOPOPTS:
    case IPPROTO_ROUTING:
    case IPPROTO_DSTOPTS:
    case IPPROTO_FRAGMENT:
        return DP_PARSE_TOO_DEEP;
    }
    return nexthdr;
}

#endif
