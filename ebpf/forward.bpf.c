/* XDP program of the raw AF_XDP forwarding ceiling (`dataplane bench`, DUT
 * xsk-forward): UDP over IPv4 or IPv6 goes to the AF_XDP socket of its RX
 * queue, everything else (ARP, neighbour discovery, ...) to the kernel.
 * It measures the I/O path of the XDP backend without WireGuard, so it
 * parses no further than the UDP header and judges nothing.
 */
#include "parsing.h"
#include "steering.h"

DP_XDP_STEERING_MAPS(DP_XDP_FORWARD_COUNT)

static __always_inline int pass(void)
{
    count(DP_XDP_FORWARD_PASS);
    return XDP_PASS;
}

SEC("xdp")
int dp_xdp_forward(struct xdp_md *ctx)
{
    struct cursor c;
    struct iphdr *ip4;
    struct ipv6hdr *ip6;
    __be16 proto;
    __u8 l4;

    cursor_init(&c, ctx);
    if (parse_ethernet(&c, &proto) < 0)
        return pass();
    if (proto == bpf_htons(ETH_P_IP)) {
        ip4 = cursor_pull(&c, sizeof(*ip4));
        if (!ip4 || ip4->frag_off & bpf_htons(DP_IPV4_MF | DP_IPV4_OFFSET_MASK))
            return pass();
        l4 = ip4->protocol;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        ip6 = cursor_pull(&c, sizeof(*ip6));
        if (!ip6)
            return pass();
        l4 = ip6->nexthdr;
    } else {
        return pass();
    }
    if (l4 != IPPROTO_UDP)
        return pass();
    return steer(ctx, DP_XDP_FORWARD_STEER, DP_XDP_FORWARD_STEER_NO_SOCKET);
}

char LICENSE[] SEC("license") = "Apache-2.0";
