/* A WireGuard device's data path: worker threads that own the UDP sockets
 * and the TUN device, encrypt and decrypt in bursts with the batch crypto
 * API, and execute the tables the control plane installs (peers, allowed
 * IPs, keypairs). Policy stays in Python: handshakes, timers, which
 * keypair exists. The data path reports what Python must act on through an
 * event ring signalled by an eventfd.
 *
 * Threads: one control thread (Python) calls everything here except the
 * workers' own loop; calls are serialised by a device mutex, so several
 * Python threads may call them. Workers take no lock on the packet path.
 *
 * cdef-clean: plain declarations and integer #defines only.
 */
#ifndef DP_DEVICE_H
#define DP_DEVICE_H

#include <stddef.h>
#include <stdint.h>

struct dp_allowedips;
struct dp_device;
struct dp_wire; /* dp_wg_messages.h */

#define DP_DEVICE_BURST 64
/* Packets kept per peer while it has no keypair to send with. */
#define DP_DEVICE_STAGED_MAX 64
#define DP_DEVICE_MAX_WORKERS 16
/* The receiver index table has 2^index_table_log2 entries, at most half of
 * them in use (dp_tables.h); keypairs are allocated up to max_keypairs. */
#define DP_DEVICE_INDEX_LOG2_MAX 22
#define DP_DEVICE_MAX_KEYPAIRS 67108864

/* Drop reasons, counted per device. */
#define DP_DROP_MALFORMED 0       /* too short, bad type or size for its type */
#define DP_DROP_UNKNOWN_INDEX 1   /* data for a receiver index we do not hold */
#define DP_DROP_BAD_MAC 2         /* data that does not authenticate */
#define DP_DROP_REPLAY 3          /* counter seen before or out of the window */
#define DP_DROP_EXPIRED_KEY 4     /* keypair past REJECT_AFTER_TIME/MESSAGES */
#define DP_DROP_NOT_ALLOWED 5     /* inner source not in the sending peer's allowed IPs */
#define DP_DROP_INNER_MALFORMED 6 /* decrypted payload is not a sane IPv4/IPv6 packet */
#define DP_DROP_NO_ROUTE 7        /* no peer's allowed IPs hold the destination */
#define DP_DROP_NO_ENDPOINT 8     /* the peer has no endpoint to send to */
#define DP_DROP_STAGED_FULL 9     /* waiting for a handshake, and the queue is full */
#define DP_DROP_EVENTS_FULL 10    /* handshake message arrived, control plane busy */
#define DP_DROP_TOO_BIG 11        /* packet larger than the MTU allows */
#define DP_DROP_SEND_FAILED 12    /* the kernel refused a UDP or TUN write */
#define DP_DROP_JUNK 13           /* obfuscated interface: no message of any profile it serves */
#define DP_DROP_COUNT 14

/* Events for the control plane. */
#define DP_EVENT_HANDSHAKE 1         /* a type 1/2/3 message; data/len/endpoint set */
#define DP_EVENT_NEED_HANDSHAKE 2    /* peer_id has traffic but no usable keypair, or must rekey */
#define DP_EVENT_KEYPAIR_CONFIRMED 3 /* first data on a responder's keypair: now current */
#define DP_EVENT_NEED_ROUTE 4        /* XDP backend: no outer route for `endpoint` (peer_id's) */
#define DP_EVENT_MAX_DATA 148        /* DP_WG_INITIATION_LEN */

#define DP_ENDPOINT_NONE 0
#define DP_ENDPOINT_IPV4 4
#define DP_ENDPOINT_IPV6 6

/* A UDP endpoint; address in network byte order, port in host order. */
struct dp_endpoint {
    uint8_t family;
    uint8_t reserved;
    uint16_t port;
    uint32_t scope_id;
    uint8_t addr[16];
};

struct dp_event {
    uint32_t type;
    uint32_t peer_id;
    uint32_t local_index; /* KEYPAIR_CONFIRMED */
    uint32_t len;
    struct dp_endpoint endpoint;
    /* HANDSHAKE: the message's kind (DP_WG_MSG_*) and the profile it came
     * in (DP_WIRE_*); data holds it without its padding, the type field
     * as it was on the wire (the MACs cover it) */
    uint8_t message;
    uint8_t wire;
    uint8_t reserved[2];
    uint8_t data[148];
};

struct dp_device_config {
    uint32_t workers;         /* worker threads, 1 .. DP_DEVICE_MAX_WORKERS (16) */
    /* Per worker (the first `workers` entries; the device owns them): UDP
     * sockets sharing the listen port (SO_REUSEPORT), -1 for a family not
     * served, and the queues of one TUN device (IFF_MULTI_QUEUE when there
     * are several). The device makes them non-blocking. */
    int udp4_fd[16];
    int udp6_fd[16];
    int tun_fd[16];
    int tun_vnet_hdr;         /* 1: the TUN fds have IFF_VNET_HDR (and TSO/CSUM offloads) */
    uint32_t mtu;             /* of the TUN device, 68 .. 65500 */
    uint32_t max_peers;       /* peer ids are 0 .. max_peers-1 */
    /* Receiver index table: 2^n entries (4 .. DP_DEVICE_INDEX_LOG2_MAX),
     * holding up to 2^(n-1) indices, reserved or with a keypair. */
    uint32_t index_table_log2;
    uint32_t event_ring_log2;    /* event ring size; up to 16 */
    /* Keypairs allocated at most: live ones plus retired ones the workers
     * have not let go of yet. Memory for them is mapped (and locked) in
     * chunks as installs need it. 0: 3 a peer and 1024 more. */
    uint32_t max_keypairs;
    /* Anti-replay window of every keypair, in bits: a power of two,
     * DP_REPLAY_BITS_MIN .. DP_REPLAY_BITS_MAX (1024 .. 8192); 0: 8192, as
     * the Linux kernel and wireguard-go. A keypair takes about 128 bytes
     * plus bits / 8. */
    uint32_t replay_window_bits;
};

/* The control plane installs keypairs that Noise derived. */
struct dp_keypair_params {
    uint32_t peer_id;
    uint32_t local_index;  /* reserved or claimed beforehand */
    uint32_t remote_index;
    uint8_t is_initiator;  /* initiator: current at once; responder: next until confirmed */
    uint8_t wire;          /* DP_WIRE_*: the profile its messages go out in (its handshake's) */
    uint8_t reserved[2];
    uint64_t created_ns;   /* CLOCK_MONOTONIC */
    uint8_t send_key[32];
    uint8_t recv_key[32];
};

struct dp_peer_stats {
    uint64_t rx_bytes;
    uint64_t tx_bytes;
    uint64_t rx_packets;
    uint64_t tx_packets;
    uint64_t last_rx_ns;      /* any authenticated packet, CLOCK_MONOTONIC; 0 = never */
    uint64_t last_rx_data_ns; /* authenticated non-keepalive */
    uint64_t last_tx_ns;      /* any packet sent */
    uint64_t last_tx_data_ns; /* non-keepalive sent */
    uint64_t current_created_ns; /* 0 when no current keypair */
    uint64_t current_send_counter;
    uint32_t current_local_index;
    uint32_t current_is_initiator;
    uint32_t staged;          /* packets waiting for a handshake */
    uint32_t keypairs;        /* installed: previous + current + next */
};

/* A device, stopped; NULL with errno set on failure (bad config: EINVAL). */
struct dp_device *dp_device_new(const struct dp_device_config *cfg);
/* The XDP backend's outer routes: how to send to one endpoint address
 * straight out of the WAN AF_XDP port (Ethernet from src_mac to dst_mac,
 * IP from src, UDP from src_port). The control plane resolves them from
 * the kernel's routing and neighbour tables when a worker asks
 * (DP_EVENT_NEED_ROUTE) and keeps them current; until one is there, and
 * for endpoints not routed through the WAN interface, packets leave
 * through the UDP socket and the kernel's stack. Addresses as in
 * dp_endpoint. */
struct dp_route {
    uint8_t family; /* DP_ENDPOINT_IPV4 or DP_ENDPOINT_IPV6 */
    uint8_t reserved;
    uint16_t src_port;
    uint8_t dst[16];
    uint8_t src[16];
    uint8_t dst_mac[6];
    uint8_t src_mac[6];
    /* The WAN interface it leaves by (several WAN interfaces: a worker
     * sends through its own WAN port only when it is on this interface,
     * otherwise through the kernel's UDP stack); 0: any worker's port. */
    uint32_t ifindex;
};
#define DP_ROUTES_MAX 4096
/* Add or replace (0, -ENOSPC when full, -EINVAL); delete (0 or -ENOENT). */
int dp_device_route_set(struct dp_device *d, const struct dp_route *r);
int dp_device_route_del(struct dp_device *d, uint8_t family, const uint8_t *dst);

/* Where transmitted data messages went, for the XDP backend. */
struct dp_path_stats {
    uint64_t wan_xsk_tx;     /* built here and sent through the WAN AF_XDP port */
    uint64_t wan_kernel_tx;  /* sent through the UDP socket (no route yet, not a WAN, or
                              * the route's WAN interface is not the worker's) */
    uint64_t route_requests; /* DP_EVENT_NEED_ROUTE raised */
    uint64_t roams_refused;  /* an authenticated datagram from a new source that arrived
                              * through AF_XDP with a bad UDP checksum (or decrypted in
                              * place, so not checkable): the peer's endpoint stayed */
};
void dp_device_path_stats(struct dp_device *d, struct dp_path_stats *out);

/* The XDP backend, before dp_device_start: worker w gets an AF_XDP socket
 * on queue wan_queue of the WAN interface (WireGuard traffic steered there
 * by our XDP program) and one on queue inner_queue of our end of the inner
 * veth pair; what it decrypts goes out there as Ethernet from
 * inner_src_mac to inner_dst_mac (the kernel's end). The UDP sockets stay:
 * they send, and receive what XDP passes to the kernel. A device whose
 * TUN fds are -1 needs this for every worker. zerocopy: try it first.
 * 0 or -errno. */
int dp_device_attach_xsk(struct dp_device *d, uint32_t worker, const char *wan_ifname,
                         uint32_t wan_queue, const char *inner_ifname, uint32_t inner_queue,
                         const uint8_t *inner_dst_mac, const uint8_t *inner_src_mac,
                         int zerocopy);
/* The AF_XDP socket fds of worker w (for the XDP programs' XSKMAPs), -1
 * when it has none. 0 or -errno. */
int dp_device_xsk_fds(struct dp_device *d, uint32_t worker, int *wan_fd, int *inner_fd);
/* Busy polling for the XDP backend, after dp_device_attach_xsk on every
 * worker and before dp_device_start; usecs 0 turns it off. Every worker's
 * AF_XDP sockets get SO_PREFER_BUSY_POLL, SO_BUSY_POLL = usecs and
 * SO_BUSY_POLL_BUDGET = DP_DEVICE_BURST; each receive pass asks the kernel
 * to run the queue's NAPI in the worker's thread (the kernel does so where
 * the driver gives AF_XDP sockets a NAPI id: SO_INCOMING_NAPI_ID, nonzero
 * once a packet came; veth gives none); and a worker that finds nothing
 * goes on polling for usecs before it sleeps in poll(). 0, -EINVAL (over
 * DP_DEVICE_BUSY_POLL_MAX_US, or a worker without AF_XDP sockets), -EBUSY
 * (running), or the kernel's -errno (then it is off everywhere). */
#define DP_DEVICE_BUSY_POLL_MAX_US 100000
int dp_device_xsk_busy_poll(struct dp_device *d, uint32_t usecs);
/* Real-time workers: priority 1..99 starts every worker under SCHED_FIFO
 * at that priority (dp_device_start then fails with -EPERM without
 * CAP_SYS_NICE); 0 (the default) under the caller's policy. Under
 * overload a real-time worker is not preempted by the kernel's receive
 * threads that feed it, which then run when it waits for packets. Before
 * dp_device_start: 0, -EINVAL (priority out of range) or -EBUSY
 * (running). */
int dp_device_set_realtime(struct dp_device *d, uint32_t priority);
/* Start the workers; 0 or -errno. */
int dp_device_start(struct dp_device *d);
/* Stop the workers (joins them); safe to call twice. */
void dp_device_stop(struct dp_device *d);
/* Stop, wipe every key, close the fds, free. */
void dp_device_free(struct dp_device *d);

/* The interface's wire profile (struct dp_wire, dp_wg_messages.h): how
 * the workers classify what arrives, and how they pad and label what they
 * send with keypairs installed as DP_WIRE_OBFUSCATED. The workers see it
 * from their next pass. 0, or -EINVAL (a header range backwards, a padded
 * message past DP_WIRE_MAX_DATAGRAM). */
int dp_device_set_wire(struct dp_device *d, const struct dp_wire *w);
void dp_device_get_wire(struct dp_device *d, struct dp_wire *out);
/* How the workers classify a datagram under profile w: its message kind
 * (DP_WG_MSG_*) or 0 for junk, where the message starts (*off) and in
 * which profile it came (*wire, DP_WIRE_*). Pure; for tests and fuzzing. */
uint32_t dp_wire_classify(const struct dp_wire *w, const uint8_t *m, uint32_t len,
                          uint32_t *off, uint8_t *wire);

/* The TUN's MTU changed (padding follows it); 68 .. 65500. */
int dp_device_set_mtu(struct dp_device *d, uint32_t mtu);

/* Replace the UDP sockets (a new listen port), one of each family per
 * worker: the workers are stopped while they change and restarted if they
 * ran. The device owns the new fds and closes the old ones. 0 or -errno. */
int dp_device_set_udp(struct dp_device *d, const int *udp4_fd, const int *udp6_fd);

/* The allowed-IPs table the workers use (owned by the device; write to it
 * with the dp_allowedips_* calls from the control thread only). */
struct dp_allowedips *dp_device_allowedips(struct dp_device *d);

/* Readable when events are waiting; read it to clear, then drain. */
int dp_device_event_fd(struct dp_device *d);
/* Copy up to max events out; returns how many. */
int dp_device_events(struct dp_device *d, struct dp_event *out, uint32_t max);
/* Events waiting now, and the ring's size: how loaded the control plane is. */
uint32_t dp_device_event_backlog(struct dp_device *d);
uint32_t dp_device_event_capacity(struct dp_device *d);

int dp_device_peer_add(struct dp_device *d, uint32_t peer_id);
/* Removes the peer with its allowed IPs and keypairs (keys wiped). */
int dp_device_peer_remove(struct dp_device *d, uint32_t peer_id);
int dp_device_peer_set_endpoint(struct dp_device *d, uint32_t peer_id,
                                const struct dp_endpoint *ep);
int dp_device_peer_get_endpoint(struct dp_device *d, uint32_t peer_id, struct dp_endpoint *ep);
int dp_device_peer_stats(struct dp_device *d, uint32_t peer_id, struct dp_peer_stats *out);
/* Every peer's counters at once, out[id] for ids 0 .. n-1 (n capped at
 * max_peers; peers not in use read as zeros): the timer tick reads this
 * instead of one call a peer. Returns how many entries were written. */
int64_t dp_device_peer_stats_all(struct dp_device *d, struct dp_peer_stats *out, uint32_t n);
/* Drop every keypair and staged packet of the peer (keys wiped). */
int dp_device_peer_clear_keypairs(struct dp_device *d, uint32_t peer_id);
/* Send an empty data message (keepalive) with the current keypair; 0,
 * -ENOKEY without a usable keypair, -EDESTADDRREQ without an endpoint,
 * -ENOENT for no such peer, or the send's -errno (counted as a
 * DP_DROP_SEND_FAILED). */
int dp_device_peer_keepalive(struct dp_device *d, uint32_t peer_id);

/* Install a keypair on a reserved or claimed receiver index: an
 * initiator's becomes current (the old current becomes previous) and
 * staged packets go out with it; a responder's becomes next until the
 * first data arrives on it. 0 or -errno: -ENOENT (no such peer), -EEXIST
 * (local_index is not reserved, or has a keypair already), -ENOSPC
 * (max_keypairs allocated), -ENOMEM (no more locked memory: see
 * RLIMIT_MEMLOCK). On failure the reservation stays. The caller wipes its
 * copy of the keys. */
int dp_device_keypair_install(struct dp_device *d, const struct dp_keypair_params *p);

/* Receiver indices. reserve picks a random free one for our own handshake;
 * claim takes the one a control plane chose (any but 0): 0, -EINVAL for
 * 0, -EEXIST when it is reserved or has a keypair, -ENOSPC when the table
 * is full. Either way the index stays taken until a keypair installed on
 * it is retired, or it is released (0, or -ENOENT if it is not reserved
 * or already has a keypair). */
int64_t dp_device_index_reserve(struct dp_device *d);
int dp_device_index_claim(struct dp_device *d, uint32_t local_index);
int dp_device_index_release(struct dp_device *d, uint32_t local_index);
/* Retire one keypair now (unlinked at once, keys wiped after the workers
 * let go of it). */
int dp_device_keypair_retire(struct dp_device *d, uint32_t local_index);
/* Let the peer raise DP_EVENT_NEED_HANDSHAKE again (after the control
 * plane gave up on a handshake). */
int dp_device_peer_rearm(struct dp_device *d, uint32_t peer_id);
/* Housekeeping for the control plane's timer: frees and wipes retired
 * keypairs the workers are done with (and frees replaced arrays of the
 * receiver index table); returns how many still wait. */
int dp_device_maintain(struct dp_device *d);

/* Native memory the device allocated, in bytes, by table (what was
 * allocated: pages never written may not be resident), and how full the
 * keypair and index tables are. */
struct dp_device_memory {
    uint64_t peers;       /* the peer table, max_peers entries */
    uint64_t index_table; /* receiver index table (and arrays awaiting reclamation) */
    uint64_t keypairs;    /* keypair chunks mapped, and the chunk directory */
    uint64_t allowed_ips; /* trie nodes and the per-peer index */
    uint64_t event_ring;
    uint64_t bursts;      /* packet buffers of the workers and of poll_once */
    uint64_t routes;      /* the XDP backend's outer route table */
    uint64_t device;      /* the device structure itself */
    uint64_t total;       /* the sum of the above (staged packets and AF_XDP umems not counted) */
    uint64_t locked;      /* of total, mlock'd: the keypair chunks */
    uint32_t keypair_bytes;      /* one keypair with its replay window */
    uint32_t keypairs_live;      /* installed (reachable by a receiver index) */
    uint32_t keypairs_allocated; /* live plus retired ones not yet wiped */
    uint32_t keypairs_mapped;    /* room in the chunks mapped now */
    uint32_t keypair_chunk_bytes; /* one chunk: whole keypairs in whole pages, about 128 KiB */
    uint32_t keypairs_max;       /* the config's max_keypairs */
    uint32_t indices_used;       /* receiver indices reserved or with a keypair */
    uint32_t indices_max;
    uint32_t index_max_probe;    /* longest probe of a lookup now */
    uint32_t replay_window_bits;
};
void dp_device_memory(struct dp_device *d, struct dp_device_memory *out);

/* Send a handshake message through the device's sockets. */
int dp_device_send_to(struct dp_device *d, const struct dp_endpoint *ep, const uint8_t *data,
                      size_t len);

/* Per-reason drop counters (DP_DROP_COUNT entries). */
int dp_device_drops(struct dp_device *d, uint64_t *out, size_t n);

/* The data path's clock: CLOCK_MONOTONIC in ns, plus the test offset.
 * The control plane uses it too, so both sides age keys alike. */
uint64_t dp_device_now_ns(void);
/* Tests only: move that clock forward (the daemon exposes this only when
 * started with DATAPLANE_TEST_CLOCK set). */
void dp_device_test_advance_clock(uint64_t ns);

/* Run one receive pass and one send pass in the calling thread, without a
 * worker (tests drive the data path step by step with this). Returns the
 * number of packets handled. */
int dp_device_poll_once(struct dp_device *d);

/* Test and benchmark entry points into the packet path, on a stopped
 * device, in the calling thread:
 * - the receive path (classify, look up the receiver index, decrypt as a
 *   batch, replay window, roaming, allowed IPs, delivery to worker 0's
 *   TUN fd) over n <= DP_DEVICE_BURST datagrams from `from`, as one
 *   recvmmsg would hand them over;
 * - the send path (route by allowed IPs, counters, padding, encryption as
 *   a batch, sendmmsg to the peers' endpoints) over n inner packets, as
 *   reads from the TUN would hand them over;
 * - the send path's queueing of a packet for peer_id that found no usable
 *   keypair (staged until a handshake, unless a keypair has come since);
 * - the parse of an Ethernet frame from the WAN AF_XDP port: where the
 *   WireGuard message starts and how long it is, and its source.
 * The first two return n or -errno; the staging returns 0 or -EINVAL; the
 * parse returns 0, or -EINVAL for a frame that is not Ethernet/IPv4|IPv6/UDP
 * with consistent lengths. */
int dp_device_test_rx(struct dp_device *d, const uint8_t *const *msgs, const uint32_t *lens,
                      uint32_t n, const struct dp_endpoint *from);
int dp_device_test_tx(struct dp_device *d, const uint8_t *const *pkts, const uint32_t *lens,
                      uint32_t n);
int dp_device_test_stage(struct dp_device *d, uint32_t peer_id, const uint8_t *pkt, uint32_t len);
/* The peer lock under contention: `threads` threads, all on CPU `cpu`
 * (-1: anywhere), each take the lock `rounds` times and add 1 to a plain
 * counter under it; with fifo_priority > 0 every other thread runs
 * SCHED_FIFO at that priority, so that real-time waiters share a CPU with
 * holders of the default policy (the case the lock sleeps for). Returns
 * the counter (threads * rounds when the lock excludes), or -errno. */
int64_t dp_device_test_lock(uint32_t threads, uint32_t rounds, int fifo_priority, int cpu);
int dp_device_test_outer_parse(const uint8_t *frame, uint32_t len, uint32_t *payload_off,
                               uint32_t *payload_len, struct dp_endpoint *from);
/* Whether such a frame's UDP checksum lets it move a peer's endpoint: 1
 * (verifies, IPv4 0, or the pseudo-header sum of checksum offload), 0, or
 * -EINVAL for a frame the parse refuses. */
int dp_device_test_outer_checksum(const uint8_t *frame, uint32_t len);

#endif
