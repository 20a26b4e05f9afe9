/* XDP program of a WAN interface: WireGuard messages to the listen port go
 * to the AF_XDP socket of their RX queue; malformed ones and handshake
 * floods are dropped here; everything else goes to the kernel untouched.
 *
 * Every frame is counted once (dp_xdp_kern_user.h lists the counters).
 * Lengths and fragments are judged only for the listen port: other traffic
 * is the kernel's business. Frames whose headers are cut short or do not
 * parse (wrong IP version, IHL < 5) cannot be matched to a port and are
 * dropped for every port: the kernel would drop them too.
 */
#include "parsing.h"
#include "steering.h"

const volatile struct dp_xdp_settings dp_settings = {};

DP_XDP_STEERING_MAPS(DP_XDP_WAN_COUNT)

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, DP_XDP_MAX_RATELIMIT_SOURCES);
    __type(key, struct dp_xdp_rl_key);
    __type(value, struct dp_xdp_rl_bucket);
} ratelimit SEC(".maps");

/* Written by the control plane: non-zero while it is not under load, and
 * then the handshake rate limit rests, as the kernel's WireGuard limits
 * only under load (clients behind one NAT address must not wait on each
 * other). Zero, the value at load, keeps the limit on. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} ratelimit_rest SEC(".maps");

static __always_inline int ratelimit_resting(void)
{
    __u32 key = 0, *rest = bpf_map_lookup_elem(&ratelimit_rest, &key);

    return rest && *rest;
}

static __always_inline int pass(__u32 counter)
{
    count(counter);
    return XDP_PASS;
}

static __always_inline int drop(__u32 counter)
{
    count(counter);
    return XDP_DROP;
}

/* Token bucket per source (see struct dp_xdp_rl_bucket): 1 to admit a
 * handshake message from saddr (4 bytes of IPv4, or the first 8 of IPv6). */
static __always_inline int ratelimit_admit(__u32 family, const __u8 *saddr)
{
    struct dp_xdp_rl_key key = { .family = family };
    struct dp_xdp_rl_bucket *bucket, fresh;
    __u64 now = bpf_ktime_get_ns();
    __u64 tat;

    if (family == DP_XDP_RL_FAMILY_IPV4)
        __builtin_memcpy(key.prefix, saddr, 4);
    else
        __builtin_memcpy(key.prefix, saddr, 8);

    bucket = bpf_map_lookup_elem(&ratelimit, &key);
    if (!bucket) {
        /* A new source: admitted. If another CPU inserted it meanwhile,
         * its entry stays and this message went uncounted (one extra). */
        fresh.tat_ns = now + dp_settings.handshake_interval_ns;
        bpf_map_update_elem(&ratelimit, &key, &fresh, BPF_NOEXIST);
        return 1;
    }
    tat = bucket->tat_ns;
    if (tat < now)
        tat = now;
    if (tat - now > dp_settings.handshake_tolerance_ns)
        return 0;
    bucket->tat_ns = tat + dp_settings.handshake_interval_ns;
    return 1;
}

/* The UDP payload, msg_len bytes (all inside the frame: the IP and UDP
 * lengths were checked against it), at the cursor. */
static __always_inline int wan_message(const struct xdp_md *ctx, struct cursor *c, __u32 msg_len,
                                       __u32 family, const __u8 *saddr)
{
    const __u8 *type;
    __u32 counter;

    if (msg_len < 4)
        return drop(DP_XDP_WAN_DROP_TRUNC_WG);
    type = cursor_pull(c, 4);
    if (!type)
        return drop(DP_XDP_WAN_DROP_TRUNC_WG);
    /* The type is a little-endian 32-bit word: one byte, three zeros. */
    if (type[1] | type[2] | type[3])
        return drop(DP_XDP_WAN_DROP_WG_BAD_TYPE);

    switch (type[0]) {
    case DP_XDP_WG_INITIATION:
        if (msg_len != DP_XDP_WG_INITIATION_LEN)
            return drop(DP_XDP_WAN_DROP_WG_BAD_SIZE);
        counter = DP_XDP_WAN_STEER_INITIATION;
        break;
    case DP_XDP_WG_RESPONSE:
        if (msg_len != DP_XDP_WG_RESPONSE_LEN)
            return drop(DP_XDP_WAN_DROP_WG_BAD_SIZE);
        counter = DP_XDP_WAN_STEER_RESPONSE;
        break;
    case DP_XDP_WG_COOKIE_REPLY:
        if (msg_len != DP_XDP_WG_COOKIE_REPLY_LEN)
            return drop(DP_XDP_WAN_DROP_WG_BAD_SIZE);
        counter = DP_XDP_WAN_STEER_COOKIE_REPLY;
        break;
    case DP_XDP_WG_DATA:
        if (msg_len < DP_XDP_WG_DATA_MIN_LEN)
            return drop(DP_XDP_WAN_DROP_WG_BAD_SIZE);
        return steer(ctx, DP_XDP_WAN_STEER_DATA, DP_XDP_WAN_STEER_NO_SOCKET);
    default:
        return drop(DP_XDP_WAN_DROP_WG_BAD_TYPE);
    }

    /* Handshake messages cost the control plane a Curve25519 operation:
     * floods stop here. */
    if ((dp_settings.flags & DP_XDP_SETTINGS_RATELIMIT) && !ratelimit_resting() &&
        !ratelimit_admit(family, saddr))
        return drop(DP_XDP_WAN_DROP_RATELIMITED);
    return steer(ctx, counter, DP_XDP_WAN_STEER_NO_SOCKET);
}

/* The UDP header of a datagram to the listen port; ip_payload_len is what
 * the IP layer says follows its headers. */
static __always_inline int wan_udp(const struct xdp_md *ctx, struct cursor *c,
                                   const struct udphdr *udp, __u32 ip_payload_len,
                                   __u32 family, const __u8 *saddr)
{
    __u32 udp_len = bpf_ntohs(udp->len);

    /* Shorter than the IP payload is allowed: the kernel trims the rest. */
    if (udp_len < sizeof(*udp) || udp_len > ip_payload_len)
        return drop(DP_XDP_WAN_DROP_BAD_UDP_LEN);
    return wan_message(ctx, c, udp_len - sizeof(*udp), family, saddr);
}

static __always_inline int wan_ipv4(const struct xdp_md *ctx, struct cursor *c)
{
    struct iphdr *ip = cursor_pull(c, sizeof(*ip));
    struct udphdr *udp;
    __u32 header_len, total_len;
    __u16 frag;

    if (!ip)
        return drop(DP_XDP_WAN_DROP_TRUNC_IPV4);
    if (ip->version != 4 || ip->ihl < 5)
        return drop(DP_XDP_WAN_DROP_BAD_IP_HEADER);
    header_len = ip->ihl * 4;
    if (!cursor_pull(c, header_len - sizeof(*ip)))
        return drop(DP_XDP_WAN_DROP_TRUNC_IPV4);
    frag = bpf_ntohs(ip->frag_off);
    if (frag & DP_IPV4_OFFSET_MASK)
        return pass(DP_XDP_WAN_PASS_FRAGMENT);
    if (ip->protocol != IPPROTO_UDP)
        return pass(DP_XDP_WAN_PASS_NOT_UDP);

    udp = cursor_pull(c, sizeof(*udp));
    if (!udp)
        return drop(DP_XDP_WAN_DROP_TRUNC_UDP);
    if (udp->dest != bpf_htons(dp_settings.listen_port))
        return pass(DP_XDP_WAN_PASS_OTHER_PORT);

    total_len = bpf_ntohs(ip->tot_len);
    if (total_len < header_len + sizeof(*udp) || (void *)ip + total_len > c->end)
        return drop(DP_XDP_WAN_DROP_BAD_IP_LEN);
    /* A first fragment: the message is not whole, and reassembly is the
     * kernel's job, which this port bypasses. */
    if (frag & DP_IPV4_MF)
        return drop(DP_XDP_WAN_DROP_FRAGMENT);
    return wan_udp(ctx, c, udp, total_len - header_len, DP_XDP_RL_FAMILY_IPV4,
                   (const __u8 *)&ip->saddr);
}

static __always_inline int wan_ipv6(const struct xdp_md *ctx, struct cursor *c)
{
    struct ipv6hdr *ip = cursor_pull(c, sizeof(*ip));
    struct ipv6_ext_walk ext;
    struct udphdr *udp;
    __u32 payload_len;
    int proto;

    if (!ip)
        return drop(DP_XDP_WAN_DROP_TRUNC_IPV6);
    if (ip->version != 6)
        return drop(DP_XDP_WAN_DROP_BAD_IP_HEADER);
    proto = ipv6_skip_ext(c, ip->nexthdr, &ext);
    if (proto == DP_PARSE_TRUNCATED)
        return drop(DP_XDP_WAN_DROP_TRUNC_IPV6);
    if (proto == DP_PARSE_TOO_DEEP)
        return pass(DP_XDP_WAN_PASS_EXT_LIMIT);
    if (ext.non_first)
        return pass(DP_XDP_WAN_PASS_FRAGMENT);
    if (proto != IPPROTO_UDP)
        return pass(DP_XDP_WAN_PASS_NOT_UDP);

    udp = cursor_pull(c, sizeof(*udp));
    if (!udp)
        return drop(DP_XDP_WAN_DROP_TRUNC_UDP);
    if (udp->dest != bpf_htons(dp_settings.listen_port))
        return pass(DP_XDP_WAN_PASS_OTHER_PORT);

    /* Payload length 0 (a jumbogram) is never a WireGuard message. */
    payload_len = bpf_ntohs(ip->payload_len);
    if (payload_len < ext.len + sizeof(*udp) || (void *)(ip + 1) + payload_len > c->end)
        return drop(DP_XDP_WAN_DROP_BAD_IP_LEN);
    /* Any fragment header, first or atomic (RFC 6946): the message is not
     * whole, or comes in a form no WireGuard peer sends. */
    if (ext.fragment)
        return drop(DP_XDP_WAN_DROP_FRAGMENT);
    return wan_udp(ctx, c, udp, payload_len - ext.len, DP_XDP_RL_FAMILY_IPV6,
                   (const __u8 *)&ip->saddr);
}

SEC("xdp")
int dp_xdp_wan(struct xdp_md *ctx)
{
    struct cursor c;
    __be16 proto;

    cursor_init(&c, ctx);
    if (parse_ethernet(&c, &proto) < 0)
        return drop(DP_XDP_WAN_DROP_TRUNC_ETH);
    if (proto == bpf_htons(ETH_P_IP))
        return wan_ipv4(ctx, &c);
    if (proto == bpf_htons(ETH_P_IPV6))
        return wan_ipv6(ctx, &c);
    return pass(DP_XDP_WAN_PASS_NOT_IP);
}

char LICENSE[] SEC("license") = "Apache-2.0";
