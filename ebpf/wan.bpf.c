/* XDP program of a WAN interface: WireGuard messages to the listen port go
 * to the AF_XDP socket of their RX queue; malformed ones and handshake
 * floods are dropped here; everything else goes to the kernel untouched.
 *
 * Every frame is counted once (dp_xdp_kern_user.h lists the counters).
 * Lengths and fragments are judged only for the listen port: other traffic
 * is the kernel's business. Frames whose headers are cut short or do not
 * parse (wrong IP version, IHL < 5) cannot be matched to a port and are
 * dropped for every port: the kernel would drop them too. Datagrams to the
 * port for an address that is not this host's are the kernel's to forward.
 */
#include "parsing.h"
#include "steering.h"

/* Set by the loader before the program loads (.rodata); a host build
 * (fuzz/wan_xdp.c) writes them itself. */
#ifdef DP_XDP_HOST
struct dp_xdp_settings dp_settings;
#else
const volatile struct dp_xdp_settings dp_settings = {};
#endif

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

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, DP_XDP_MAX_LOCAL_ADDRS);
    __type(key, struct dp_xdp_local_key);
    __type(value, __u8);
} local SEC(".maps");

/* The destination is one of this host's addresses (the `local` map). */
static __always_inline int addressed_here(__u32 family, const __u8 *daddr)
{
    struct dp_xdp_local_key key = { .family = family };

    if (family == 4)
        __builtin_memcpy(key.addr, daddr, 4);
    else
        __builtin_memcpy(key.addr, daddr, 16);
    return bpf_map_lookup_elem(&local, &key) != NULL;
}

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

/* The AmneziaWG profile (all zeros: plain WireGuard), written by the
 * loader when the control plane changes it. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct dp_xdp_wire);
} wire SEC(".maps");

#define DP_XDP_WIRE_MAX_OFFSET 0x3fff

/* The little-endian word at offset `off` of the payload at the cursor:
 * 1 with *out set, 0 when it is not all in the frame. */
static __always_inline int word_at(const struct cursor *c, __u32 off, __u32 *out)
{
    const __u8 *p;

    /* Bounds the offset for the verifier, which marks a packet pointer
     * readable only while its largest offset stays within 0xffff. XDP
     * sees one page of a frame at most, so a message behind more padding
     * than this never reaches it whole anyway. */
    if (off > DP_XDP_WIRE_MAX_OFFSET)
        return 0;
    p = (const __u8 *)c->pos + off;
    if ((const void *)(p + 4) > c->end)
        return 0;
    *out = (__u32)p[0] | (__u32)p[1] << 8 | (__u32)p[2] << 16 | (__u32)p[3] << 24;
    return 1;
}

/* A handshake message: floods stop here (each costs the control plane a
 * Curve25519 operation). */
static __always_inline int wan_handshake(const struct xdp_md *ctx, __u32 counter, __u32 family,
                                         const __u8 *saddr)
{
    if ((dp_settings.flags & DP_XDP_SETTINGS_RATELIMIT) && !ratelimit_resting() &&
        !ratelimit_admit(family, saddr))
        return drop(DP_XDP_WAN_DROP_RATELIMITED);
    return steer(ctx, counter, DP_XDP_WAN_STEER_NO_SOCKET);
}

/* No message of any profile the interface serves: one of its own signature
 * packets (by size and leading bytes), or junk. Neither reaches userspace. */
static __always_inline int wan_junk(const struct xdp_md *ctx, const struct cursor *c,
                                    __u32 msg_len, const struct dp_xdp_wire *w)
{
    __u8 head[DP_XDP_SIG_PREFIX] = {};
    __u32 n = msg_len < DP_XDP_SIG_PREFIX ? msg_len : DP_XDP_SIG_PREFIX;
    __u32 off = (__u32)((const __u8 *)c->pos - (const __u8 *)(long)ctx->data);

    if (n == 0 || bpf_xdp_load_bytes((struct xdp_md *)ctx, off, head, n) < 0)
        return drop(DP_XDP_WAN_DROP_JUNK);
#pragma unroll
    for (int i = 0; i < DP_XDP_MAX_SIGNATURES; i++) {
        int same = 1;

        if (i >= w->n_signatures || msg_len != w->sig_len[i])
            continue;
#pragma unroll
        for (int j = 0; j < DP_XDP_SIG_PREFIX; j++)
            if (j < w->sig_prefix_len[i] && head[j] != w->sig_prefix[i][j])
                same = 0;
        if (same)
            return drop(DP_XDP_WAN_DROP_SIGNATURE);
    }
    return drop(DP_XDP_WAN_DROP_JUNK);
}

/* The steering counter of a plain WireGuard handshake message of this
 * type (a little-endian word: one byte, three zeros) and size, or 0. */
static __always_inline __u32 plain_handshake(__u32 type, __u32 msg_len)
{
    if (type == DP_XDP_WG_INITIATION && msg_len == DP_XDP_WG_INITIATION_LEN)
        return DP_XDP_WAN_STEER_INITIATION;
    if (type == DP_XDP_WG_RESPONSE && msg_len == DP_XDP_WG_RESPONSE_LEN)
        return DP_XDP_WAN_STEER_RESPONSE;
    if (type == DP_XDP_WG_COOKIE_REPLY && msg_len == DP_XDP_WG_COOKIE_REPLY_LEN)
        return DP_XDP_WAN_STEER_COOKIE_REPLY;
    return 0;
}

/* A message of the AmneziaWG profile, steered; -1 when it is none. Kinds
 * are tried in order, handshakes before transport, as the workers and
 * amneziawg-go do. */
static __always_inline int wan_obfuscated(const struct xdp_md *ctx, const struct cursor *c,
                                          __u32 msg_len, __u32 family, const __u8 *saddr,
                                          const struct dp_xdp_wire *w)
{
#pragma unroll
    for (int k = 0; k < 4; k++) {
        /* constants once the loop is unrolled (no tables: .rodata holds
         * the settings alone) */
        __u32 base = k == 0 ? DP_XDP_WG_INITIATION_LEN : k == 1 ? DP_XDP_WG_RESPONSE_LEN
                   : k == 2 ? DP_XDP_WG_COOKIE_REPLY_LEN : DP_XDP_WG_DATA_MIN_LEN;
        __u32 steered = k == 0 ? DP_XDP_WAN_STEER_INITIATION : k == 1 ? DP_XDP_WAN_STEER_RESPONSE
                      : k == 2 ? DP_XDP_WAN_STEER_COOKIE_REPLY : DP_XDP_WAN_STEER_DATA;
        __u32 pad = w->padding[k], h;

        if (k < 3 ? msg_len != pad + base : msg_len < pad + base)
            continue;
        if (!word_at(c, pad, &h) || h < w->header_min[k] || h > w->header_max[k])
            continue;
        if (k == 3) {
            /* A plain handshake whose bytes at S4 fall in H4 reads as
             * obfuscated transport; the workers read it again as plain
             * (datapath.c), so where plain is accepted it keeps the
             * handshakes' rate limit. */
            __u32 type, plain = 0;

            if (w->accept_plain && word_at(c, 0, &type))
                plain = plain_handshake(type, msg_len);
            if (plain)
                return wan_handshake(ctx, plain, family, saddr);
            count(DP_XDP_WAN_STEER_OBFUSCATED);
            return steer(ctx, steered, DP_XDP_WAN_STEER_NO_SOCKET);
        }
        count(DP_XDP_WAN_STEER_OBFUSCATED);
        return wan_handshake(ctx, steered, family, saddr);
    }
    return -1;
}

/* The UDP payload, msg_len bytes (all inside the frame: the IP and UDP
 * lengths were checked against it), at the cursor. With an AmneziaWG
 * profile, what fits no profile the interface serves is junk. */
static __always_inline int wan_message(const struct xdp_md *ctx, struct cursor *c, __u32 msg_len,
                                       __u32 family, const __u8 *saddr)
{
    __u32 key = 0, type, counter;
    const struct dp_xdp_wire *w = bpf_map_lookup_elem(&wire, &key);
    int obfuscated = w && w->obfuscated;

    if (obfuscated) {
        int verdict = wan_obfuscated(ctx, c, msg_len, family, saddr, w);

        if (verdict >= 0)
            return verdict;
        if (!w->accept_plain)
            return wan_junk(ctx, c, msg_len, w);
    }
    if (msg_len < 4 || !word_at(c, 0, &type))
        return obfuscated ? wan_junk(ctx, c, msg_len, w) : drop(DP_XDP_WAN_DROP_TRUNC_WG);

    if (type == DP_XDP_WG_DATA && msg_len >= DP_XDP_WG_DATA_MIN_LEN)
        return steer(ctx, DP_XDP_WAN_STEER_DATA, DP_XDP_WAN_STEER_NO_SOCKET);
    counter = plain_handshake(type, msg_len);
    if (counter)
        return wan_handshake(ctx, counter, family, saddr);
    if (obfuscated)
        return wan_junk(ctx, c, msg_len, w);
    /* a known type at the wrong size, or no known type */
    return drop(type >= DP_XDP_WG_INITIATION && type <= DP_XDP_WG_DATA
                    ? DP_XDP_WAN_DROP_WG_BAD_SIZE : DP_XDP_WAN_DROP_WG_BAD_TYPE);
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
    if (!addressed_here(4, (const __u8 *)&ip->daddr))
        return pass(DP_XDP_WAN_PASS_NOT_LOCAL);

    total_len = bpf_ntohs(ip->tot_len);
    if (total_len < header_len + sizeof(*udp) || (void *)ip + total_len > c->end)
        return drop(DP_XDP_WAN_DROP_BAD_IP_LEN);
    /* A first fragment: the message is not whole. The kernel reassembles
     * it (the later fragments went to it above) and the daemon's UDP
     * socket receives it, as on the socket backend: peers behind links
     * with a small MTU send fragmented datagrams. */
    if (frag & DP_IPV4_MF)
        return pass(DP_XDP_WAN_PASS_FIRST_FRAGMENT);
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
    if (!addressed_here(6, (const __u8 *)&ip->daddr))
        return pass(DP_XDP_WAN_PASS_NOT_LOCAL);

    /* Payload length 0 (a jumbogram) is never a WireGuard message. */
    payload_len = bpf_ntohs(ip->payload_len);
    if (payload_len < ext.len + sizeof(*udp) || (void *)(ip + 1) + payload_len > c->end)
        return drop(DP_XDP_WAN_DROP_BAD_IP_LEN);
    /* Any fragment header, first or atomic (RFC 6946): for the kernel,
     * which reassembles (or takes the atomic one as it is) and hands the
     * datagram to the daemon's UDP socket. */
    if (ext.fragment)
        return pass(DP_XDP_WAN_PASS_FIRST_FRAGMENT);
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
