/* The load generator of `dataplane bench`: emulated WireGuard peers that
 * send sealed transport messages (or plain UDP, for the no-tunnel ceiling
 * and for the far side's reverse traffic) as fast as they can or at a set
 * rate, and receivers that open, check, count and time what arrives.
 *
 * Sessions come from the Noise handshake in Python (dataplane.noise), so the
 * generator works against any WireGuard implementation. Every inner packet
 * is IPv4/UDP and carries a payload header (magic, flow, sequence number,
 * send time on CLOCK_MONOTONIC), so loss, reordering and latency are
 * measured where the packet lands. Namespaces share CLOCK_MONOTONIC.
 * Transport messages are WireGuard's, or an AmneziaWG profile's (wire_*).
 *
 * Threads: one thread runs one dp_lg_send or dp_lg_recv call; a sender and
 * a receiver may share a socket and a peer table (the sender writes only
 * send counters, the receiver only reads keys).
 *
 * cdef-clean: plain declarations and integer #defines only.
 */
#ifndef DP_LOADGEN_H
#define DP_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

#define DP_LG_MODE_SEALED 0 /* transport messages to/from the tunnel under test */
#define DP_LG_MODE_PLAIN 1  /* the inner packet's UDP payload, sent by the kernel */
/* Send only: datagrams of random bytes (a junk flood at the tunnel's port);
 * sizes are the datagrams' lengths, 1..DP_LG_INNER_MAX, and peers may be
 * NULL. */
#define DP_LG_MODE_JUNK 2

#define DP_LG_BURST 64
#define DP_LG_MAX_FLOWS 64
#define DP_LG_MAX_SIZES 64
/* Inner IPv4 packet sizes: IPv4 20 + UDP 8 + our payload header 24. */
#define DP_LG_INNER_MIN 52
#define DP_LG_INNER_MAX 9000
#define DP_LG_PAYLOAD_MAGIC 0x64704c47
#define DP_LG_HIST_BUCKETS 1280

struct dp_lg_peers;

/* A table of n emulated peers, in locked memory; receiver index of peer i
 * (the index the tunnel under test addresses us with) is index_base + i.
 * NULL when out of memory. Free wipes every key. */
struct dp_lg_peers *dp_lg_peers_new(uint32_t n, uint32_t index_base);
void dp_lg_peers_free(struct dp_lg_peers *peers);
/* Peer i's session: keys (32 bytes each; NULL for plain mode), the index
 * the tunnel under test knows the session by (its receiver index), the
 * next counter to send with, and the peer's inner IPv4 address (network
 * byte order: the source of what it sends, the destination of what the far
 * side sends it). Returns 0 or -1 (i out of range). */
int dp_lg_peer_set(struct dp_lg_peers *peers, uint32_t i, const uint8_t *send_key,
                   const uint8_t *recv_key, uint32_t remote_index, uint64_t next_counter,
                   uint32_t inner_addr);
/* The counter peer i sends with next (it keeps increasing across runs). */
uint64_t dp_lg_peer_counter(const struct dp_lg_peers *peers, uint32_t i);

/* AmneziaWG transport profile, sealed mode only (the wire_* fields of
 * both configs): wire_padding (S4) random bytes in front of every transport
 * message, and its type field drawn afresh for each message from
 * wire_header_min..wire_header_max (H4, both ends in; both 0 mean
 * WireGuard's 4, so all 0 is plain WireGuard). A receiver counts a datagram
 * that is too short for the padding or whose header is outside the range
 * as `foreign`, as it counts a handshake. wire_padding is at most
 * DP_LG_WIRE_PADDING_MAX, and a sent message must still fit a datagram. */
#define DP_LG_WIRE_PADDING_MAX 65475 /* the largest UDP payload, 65507, less 32 */

struct dp_lg_send_config {
    int fd;        /* UDP socket; connected, except in plain mode */
    int mode;      /* DP_LG_MODE_* */
    int cpu;       /* pin the calling thread to this CPU, or -1 */
    uint32_t flow; /* < DP_LG_MAX_FLOWS, written into every payload */
    /* Sealed: the inner packet's destination (network order) and UDP
     * ports. Plain: sent to each peer's inner address at dst_port. */
    uint32_t dst_addr;
    uint16_t src_port;
    uint16_t dst_port;
    /* Inner IPv4 packet sizes, used in turn (one entry, or an IMIX cycle). */
    const uint16_t *sizes;
    uint32_t n_sizes;
    /* Sealed: plaintext is zero-padded to 16 bytes, but not beyond this
     * (the tunnel's MTU), as WireGuard pads. */
    uint32_t mtu;
    uint64_t rate_pps;    /* 0: as fast as possible */
    uint64_t duration_ns; /* stop after this long (or when *stop is set) */
    /* Sealed: an AmneziaWG transport profile (see below). All 0: plain. */
    uint32_t wire_padding;
    uint32_t wire_header_min;
    uint32_t wire_header_max;
};

struct dp_lg_send_stats {
    uint64_t packets;     /* handed to the kernel */
    uint64_t bytes;       /* inner packet bytes of those */
    uint64_t send_errors; /* packets the kernel refused (counted, not retried) */
    uint64_t next_seq;    /* sequence numbers 0 .. next_seq-1 were used */
    uint64_t ns;          /* wall time of the run */
    uint64_t cpu_ns;      /* the thread's CPU time */
};

/* Sends until duration_ns has passed or *stop is non-zero. Peers are used
 * round-robin (peers may be NULL in junk mode). Returns 0, or -1 with *out
 * untouched when the config is bad (bad fd, sizes, flow, mode, wire
 * profile). */
int dp_lg_send(const struct dp_lg_send_config *cfg, struct dp_lg_peers *peers,
               volatile int *stop, struct dp_lg_send_stats *out);

struct dp_lg_recv_config {
    int fd;
    int mode; /* DP_LG_MODE_* */
    int cpu;  /* pin the calling thread to this CPU, or -1 */
    /* 0: wait in poll() for each datagram (the lowest latency). Else
     * never wait on the socket: read whatever has arrived, and sleep this
     * many ns after a read that did not fill a burst. A receiver asleep
     * on the socket is woken by whoever delivers to it, and with the
     * sender's CPU under test that wakeup (an IPI) is charged to it. */
    uint64_t poll_ns;
    /* Sealed: the transport profile to accept (see above). All 0: plain. */
    uint32_t wire_padding;
    uint32_t wire_header_min;
    uint32_t wire_header_max;
};

struct dp_lg_recv_stats {
    uint64_t packets;    /* inner packets of ours received intact */
    uint64_t bytes;      /* inner packet bytes of those */
    uint64_t rejected;   /* sealed messages that did not open (unknown index, bad tag) */
    uint64_t foreign;    /* datagrams that are not ours (handshakes, keepalives, other magic,
                          * a header or size outside the transport profile) */
    uint64_t reordered;  /* arrived after a later sequence number of the same flow */
    uint64_t duplicates; /* a sequence number already seen (within the window kept) */
    uint64_t max_seq[DP_LG_MAX_FLOWS]; /* highest seen + 1, per flow (0: none) */
    uint64_t lat_count;
    uint64_t lat_sum_ns;
    uint64_t lat_max_ns;
    uint64_t hist[DP_LG_HIST_BUCKETS]; /* latency histogram, see dp_lg_bucket_low */
    uint64_t cpu_ns;
};

/* Receives until *stop is non-zero (checked at least every 20 ms).
 * `peers` may be NULL in plain mode. Returns 0 or -1 (bad config, a wire
 * profile in plain mode). */
int dp_lg_recv(const struct dp_lg_recv_config *cfg, struct dp_lg_peers *peers,
               volatile int *stop, struct dp_lg_recv_stats *out);

/* Sets *stop for a dp_lg_send or dp_lg_recv running in another thread (an
 * atomic store: the flag is shared between threads). */
void dp_lg_stop(volatile int *stop);

/* The packets a dp_lg_recv running in another thread has counted so far
 * (an atomic load of out->packets). */
uint64_t dp_lg_recv_packets(const struct dp_lg_recv_stats *st);

/* The smallest latency (ns) that falls into histogram bucket b; buckets
 * are 1 ns wide below 64 ns and 1/32 of a power of two above. */
uint64_t dp_lg_bucket_low(uint32_t b);
/* The bucket a latency falls into (exposed for tests). */
uint32_t dp_lg_bucket(uint64_t ns);

#endif
