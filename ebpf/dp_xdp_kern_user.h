/* What the XDP programs in ebpf/ share with their loader (native/xdp):
 * program names, map layouts, counter indices, the rate-limit key and
 * bucket, and the settings the loader writes into .rodata before load.
 * Included by BPF (clang -target bpf) and by C; <linux/types.h> types only.
 */
#ifndef DP_XDP_KERN_USER_H
#define DP_XDP_KERN_USER_H

#include <linux/types.h>

/* Program (function) names. The kernel keeps 15 characters of a program's
 * name; the loader recognises its own programs, including stale ones left
 * on an interface, by these. */
#define DP_XDP_WAN_PROG_NAME "dp_xdp_wan"
#define DP_XDP_INNER_PROG_NAME "dp_xdp_inner"
#define DP_XDP_FORWARD_PROG_NAME "dp_xdp_forward"

/* ---- Limits (a build may override them with -D) ---- */

/* Entries of the XSKMAP `xsks`: RX queues 0 .. DP_XDP_MAX_QUEUES-1 can be
 * served; frames of higher queues go to the kernel. */
#ifndef DP_XDP_MAX_QUEUES
#define DP_XDP_MAX_QUEUES 64
#endif
/* Sources (IPv4 address or IPv6 /64) whose handshake rate is tracked; the
 * least recently seen is forgotten first. */
#ifndef DP_XDP_MAX_RATELIMIT_SOURCES
#define DP_XDP_MAX_RATELIMIT_SOURCES 65536
#endif
/* IPv6 extension headers walked before the UDP header; a packet with more
 * is passed to the kernel. */
#ifndef DP_XDP_MAX_IPV6_EXT_HEADERS
#define DP_XDP_MAX_IPV6_EXT_HEADERS 6
#endif

/* Addresses of this host the WAN program steers datagrams for (the
 * `local` map). */
#ifndef DP_XDP_MAX_LOCAL_ADDRS
#define DP_XDP_MAX_LOCAL_ADDRS 1024
#endif

/* ---- Maps ----
 * xsks       XSKMAP, key __u32 RX queue, value __u32 AF_XDP socket fd
 *            (written by the loader), DP_XDP_MAX_QUEUES entries.
 * counters   PERCPU_ARRAY, key __u32 counter index, value __u64,
 *            DP_XDP_WAN_COUNT or DP_XDP_INNER_COUNT entries.
 * ratelimit  LRU_HASH (WAN only), key struct dp_xdp_rl_key, value
 *            struct dp_xdp_rl_bucket, DP_XDP_MAX_RATELIMIT_SOURCES entries.
 * wire       ARRAY (WAN only), one struct dp_xdp_wire: the AmneziaWG
 *            profile, written by the loader whenever the control plane
 *            changes it (all zeros, the value at load: plain WireGuard).
 * local      HASH (WAN only), key struct dp_xdp_local_key, value __u8:
 *            this host's addresses, kept by the control plane as they
 *            change. Datagrams to the port for any other address (an exit
 *            node that also routes: IPv6 routed to clients, a NAT'd flow
 *            whose source port equals our listen port, nested WireGuard)
 *            are the kernel's to forward; with the map empty, all are.
 */

/* ---- Counters of the WAN program ----
 * Every frame is counted exactly once in PASS_*, STEER_<type> or DROP_*;
 * STEER_NO_SOCKET additionally counts steered frames whose RX queue had no
 * AF_XDP socket (bpf_redirect_map fell back to XDP_PASS).
 * Drops of frames that cannot be matched to a port (cut short, or headers
 * that do not parse) are frames the kernel would drop too. */
#define DP_XDP_WAN_PASS_NOT_IP 0         /* not IPv4/IPv6 (ARP, LLDP, a second VLAN tag) */
#define DP_XDP_WAN_PASS_NOT_UDP 1        /* IP, but TCP, ICMP, ESP, ... */
#define DP_XDP_WAN_PASS_OTHER_PORT 2     /* UDP to another port */
#define DP_XDP_WAN_PASS_FRAGMENT 3       /* non-first fragment (any protocol): no port to match */
#define DP_XDP_WAN_PASS_EXT_LIMIT 4      /* more than DP_XDP_MAX_IPV6_EXT_HEADERS */
#define DP_XDP_WAN_STEER_INITIATION 5
#define DP_XDP_WAN_STEER_RESPONSE 6
#define DP_XDP_WAN_STEER_COOKIE_REPLY 7
#define DP_XDP_WAN_STEER_DATA 8
#define DP_XDP_WAN_STEER_NO_SOCKET 9     /* also counted in STEER_<type> */
#define DP_XDP_WAN_DROP_TRUNC_ETH 10     /* Ethernet header or VLAN tag cut short */
#define DP_XDP_WAN_DROP_TRUNC_IPV4 11    /* IPv4 header (with options) cut short */
#define DP_XDP_WAN_DROP_TRUNC_IPV6 12    /* IPv6 header or an extension header cut short */
#define DP_XDP_WAN_DROP_TRUNC_UDP 13     /* UDP header cut short */
#define DP_XDP_WAN_DROP_TRUNC_WG 14      /* to the port, shorter than a message type */
#define DP_XDP_WAN_DROP_BAD_IP_HEADER 15 /* wrong IP version, IPv4 IHL < 5 */
#define DP_XDP_WAN_DROP_BAD_IP_LEN 16    /* to the port: IP length past the frame or short of UDP */
#define DP_XDP_WAN_DROP_BAD_UDP_LEN 17   /* to the port: UDP length < 8 or past the IP payload */
/* to the port: IPv4 first fragment, any IPv6 fragment (first or atomic):
 * the kernel reassembles it and hands it to the daemon's UDP socket */
#define DP_XDP_WAN_PASS_FIRST_FRAGMENT 18
#define DP_XDP_WAN_DROP_WG_BAD_TYPE 19   /* unknown type, or its three reserved bytes not zero */
#define DP_XDP_WAN_DROP_WG_BAD_SIZE 20   /* wrong size for its type */
#define DP_XDP_WAN_DROP_RATELIMITED 21   /* handshake message over its source's rate */
/* AmneziaWG (the `wire` map says obfuscated): to the port, but no message
 * of any profile the interface serves */
#define DP_XDP_WAN_DROP_JUNK 22
#define DP_XDP_WAN_DROP_SIGNATURE 23     /* ... with the size and leading bytes of one of I1..I5 */
#define DP_XDP_WAN_STEER_OBFUSCATED 24   /* also counted in STEER_<type>: in the AmneziaWG profile */
#define DP_XDP_WAN_PASS_NOT_LOCAL 25     /* UDP to the port for an address not this host's */
#define DP_XDP_WAN_COUNT 26

/* ---- Counters of the inner program ---- */
#define DP_XDP_INNER_STEER 0           /* every frame */
#define DP_XDP_INNER_STEER_NO_SOCKET 1 /* no AF_XDP socket on the queue: passed */
#define DP_XDP_INNER_COUNT 2

/* ---- Counters of the forwarding ceiling's program (forward.bpf.c; the
 * bench's xsk-forward DUT, not the data plane) ---- */
#define DP_XDP_FORWARD_STEER 0           /* UDP over IPv4/IPv6 */
#define DP_XDP_FORWARD_STEER_NO_SOCKET 1 /* ... on a queue without a socket: passed */
#define DP_XDP_FORWARD_PASS 2            /* everything else */
#define DP_XDP_FORWARD_COUNT 3

/* ---- WireGuard message sizes (whitepaper 5.4), as in
 * native/wg/dp_wg_messages.h; the loader checks at compile time that the
 * two agree. The BPF build cannot include that header (it needs libc's
 * <stdint.h>). */
#define DP_XDP_WG_INITIATION 1
#define DP_XDP_WG_RESPONSE 2
#define DP_XDP_WG_COOKIE_REPLY 3
#define DP_XDP_WG_DATA 4
#define DP_XDP_WG_INITIATION_LEN 148
#define DP_XDP_WG_RESPONSE_LEN 92
#define DP_XDP_WG_COOKIE_REPLY_LEN 64
#define DP_XDP_WG_DATA_MIN_LEN 32

/* ---- AmneziaWG wire profile (the `wire` map) ----
 * As struct dp_wire of native/wg/dp_wg_messages.h: padding[k] random
 * bytes before message type k+1, whose type field falls in
 * header_min[k]..header_max[k]. Junk that has the size of one of the
 * interface's own signature packets (I1..I5, sig_len) and starts with its
 * fixed bytes (the first sig_prefix_len[i] of sig_prefix[i]) is counted
 * apart. An update is not atomic for a program running meanwhile: a
 * datagram may be judged by half of the old profile and half of the new,
 * at the moment the operator changes it. */
#define DP_XDP_WIRE_MAP "wire"
/* The largest UDP payload over IPv4: no padded message is longer. */
#define DP_XDP_WIRE_MAX_DATAGRAM 65507
#define DP_XDP_MAX_SIGNATURES 5
#define DP_XDP_SIG_PREFIX 8

#define DP_XDP_LOCAL_MAP "local"

/* family 4: the address in addr[0..3], the rest zero; family 6: all 16 */
struct dp_xdp_local_key {
    __u32 family;
    __u8 addr[16];
};

struct dp_xdp_wire {
    __u32 padding[4];
    __u32 header_min[4];
    __u32 header_max[4];
    __u8 obfuscated;
    __u8 accept_plain;
    __u8 n_signatures;
    __u8 reserved;
    __u32 sig_len[DP_XDP_MAX_SIGNATURES];
    __u8 sig_prefix_len[DP_XDP_MAX_SIGNATURES];
    __u8 reserved2[3];
    __u8 sig_prefix[DP_XDP_MAX_SIGNATURES][DP_XDP_SIG_PREFIX];
};

/* ---- Handshake rate limit ----
 * A token bucket per source, kept as the theoretical arrival time of the
 * generic cell rate algorithm (ITU-T I.371; one word of state instead of
 * tokens and a timestamp):
 * a message arriving at `now` is admitted when tat - now <= tolerance, and
 * then tat = max(tat, now) + interval. `burst` messages pass back to back,
 * then one per interval. The state is one 64-bit word written without a
 * lock: two CPUs racing on one source may each admit a message, so a
 * source can exceed its rate by at most one message per racing CPU. */
#define DP_XDP_RL_FAMILY_IPV4 4
#define DP_XDP_RL_FAMILY_IPV6 6

struct dp_xdp_rl_key {
    __u32 family;     /* DP_XDP_RL_FAMILY_* */
    __u8 prefix[8];   /* IPv4: the address, then zeros; IPv6: the /64 prefix */
};

struct dp_xdp_rl_bucket {
    __u64 tat_ns;     /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
};

/* ---- Settings: `const volatile struct dp_xdp_settings dp_settings` in the
 * WAN program's .rodata, written by the loader before load (frozen after). */
#define DP_XDP_SETTINGS_VAR "dp_settings"
#define DP_XDP_SETTINGS_RATELIMIT 1   /* flags: rate-limit handshake messages */

struct dp_xdp_settings {
    __u16 listen_port;              /* host order; the loader refuses 0 */
    __u16 flags;                    /* DP_XDP_SETTINGS_* */
    __u32 handshake_rate;           /* messages per second per source */
    __u32 handshake_burst;          /* messages back to back per source */
    __u32 reserved;
    /* Derived by the loader, so the program divides nothing per packet. */
    __u64 handshake_interval_ns;    /* 1e9 / handshake_rate */
    __u64 handshake_tolerance_ns;   /* (handshake_burst - 1) * interval */
};

#endif
