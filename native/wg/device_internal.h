/* The device's internals, shared by device.c (control plane side) and
 * datapath.c (workers). */
#ifndef DP_DEVICE_INTERNAL_H
#define DP_DEVICE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "dp_crypto.h"
#include "dp_device.h"
#include "dp_tables.h"
#include "dp_wg_messages.h"

#define NSEC_PER_SEC 1000000000ULL

/* A lock that sleeps when it must wait long (lock_take, lock_give below). */
struct dp_lock {
    _Atomic uint32_t v;
};

/* A receiving initiator rekeys when its keypair nears REJECT_AFTER_TIME
 * (whitepaper 6.2): 180 - 10 - 5 seconds. */
#define REKEY_ON_RECEIVE_AGE \
    ((uint64_t)(DP_WG_REJECT_AFTER_TIME - DP_WG_KEEPALIVE_TIMEOUT - DP_WG_REKEY_TIMEOUT) * NSEC_PER_SEC)
/* Reader slot used by dp_device_poll_once. */
#define POLL_READER DP_DEVICE_MAX_WORKERS
/* struct dp_wire as 32-bit words (struct dp_device's copy, wire_read) */
#define DP_WIRE_WORDS ((int)(sizeof(struct dp_wire) / sizeof(uint32_t)))
_Static_assert(sizeof(struct dp_wire) % sizeof(uint32_t) == 0, "dp_wire is whole words");

/* A keypair's life: FREE in its chunk's free list; LIVE while its receiver
 * index leads to it; then RETIRED by the control plane, or ORPHANED by a
 * worker (a confirmation displaced it; the control plane retires it
 * later), until the readers let go of it and it is wiped and FREE again.
 * Whoever moves it out of LIVE (one compare-and-swap) owns that step. */
enum kp_state { KP_FREE = 0, KP_LIVE, KP_RETIRED, KP_ORPHANED };

/* Receiver index table values: a keypair's handle (its number + 1), or
 * an index reserved for a handshake that has no keypair yet. */
#define INDEX_RESERVED DP_INDEX_VALUE_MAX

struct keypair {
    uint32_t local_index;
    uint32_t remote_index;
    uint32_t peer_id;
    uint32_t handle;       /* its value in the index table; kept across wipes */
    uint32_t next;         /* handle of the next in the retired, orphan or free list */
    uint8_t is_initiator;
    _Atomic uint8_t state;
    atomic_flag replay_lock;
    uint8_t wire;          /* DP_WIRE_*: what its messages go out as */
    uint64_t created_ns;
    uint64_t retired_epoch;
    _Atomic uint64_t send_counter;
    uint8_t send_key[DP_WG_KEY_LEN];
    uint8_t recv_key[DP_WG_KEY_LEN];
    /* followed by its struct dp_replay, sized for the device's window
     * (kp_replay) */
};
/* With its replay header, a keypair is two cache lines and its bitmap. */
_Static_assert(sizeof(struct keypair) + sizeof(struct dp_replay) == 128,
               "a keypair's fixed part is 128 bytes");

struct staged {
    struct staged *next;
    uint32_t len;
    uint8_t data[];
};

struct peer {
    bool in_use;
    struct dp_lock lock; /* keypair triple, endpoint, staged queue */
    struct dp_endpoint endpoint;
    _Atomic(struct keypair *) current;
    struct keypair *previous;
    struct keypair *next;
    atomic_bool handshake_wanted;
    struct staged *staged_head, *staged_tail;
    uint32_t staged_count;
    /* counters, in this order (dp_device_peer_add resets rx_bytes ..
     * last_tx_data_ns as one run) */
    _Atomic uint64_t rx_bytes, tx_bytes, rx_packets, tx_packets;
    _Atomic uint64_t last_rx_ns, last_rx_data_ns, last_tx_ns, last_tx_data_ns;
    /* XDP backend: when a worker last asked for an outer route for it */
    _Atomic uint64_t route_asked_ns;
};

/* A slot of the outer route table (routes.c). */
struct route_slot {
    _Atomic uint32_t seq;
    uint8_t state;
    struct dp_route r;
};

/* Packet buffers hold a data message of any size a peer may send (the
 * kernel and wireguard-go limit only what they send by their own MTU),
 * and any packet our TUN may hand over after its MTU was raised. */
#define PACKET_BUF_BYTES (DP_WG_DATA_HEADER_LEN + 65536 + DP_WG_PADDING + DP_WG_TAG_LEN)
#define INNER_MAX_BYTES (PACKET_BUF_BYTES - DP_WG_DATA_MIN_LEN - DP_WG_PADDING)

struct dp_device {
    struct dp_device_config cfg;
    size_t buf_size;           /* PACKET_BUF_BYTES */
    _Atomic uint32_t mtu;      /* the TUN's, for padding; follows dp_device_set_mtu */
    bool no_udp_gso;           /* set once the kernel refused UDP_SEGMENT */
    pthread_mutex_t control;   /* serialises control-plane calls */

    struct peer *peers;
    /* receiver index -> keypair handle or INDEX_RESERVED */
    struct dp_index_table *indices;
    /* Keypairs live in chunks of locked memory mapped as needed, up to
     * cfg.max_keypairs, and unmapped when all their keypairs are free;
     * handle h is keypair h-1: chunk (h-1) >> kp_chunk_shift (NULL while
     * unmapped). */
    uint8_t **kp_chunks;
    uint32_t *kp_chunk_used;    /* allocated keypairs per chunk */
    uint32_t kp_chunks_max, kp_chunks_mapped, kp_chunks_empty;
    uint32_t kp_chunk_shift;
    size_t kp_stride;           /* bytes of one keypair with its replay window */
    size_t kp_chunk_bytes;      /* mapped per chunk (whole pages) */
    uint32_t kp_free;           /* wiped, ready for reuse (a handle; 0: none) */
    uint32_t kp_allocated;      /* live, retired and orphaned */
    uint32_t kp_live;
    struct dp_allowedips *allowedips;
    int aip_reader[DP_DEVICE_MAX_WORKERS + 1];

    /* quiescent-state tracking of the workers (0 = offline) */
    _Atomic uint64_t qs_epoch;
    _Atomic uint64_t qs_reader[DP_DEVICE_MAX_WORKERS + 1];
    uint32_t retired;           /* handles waiting for the readers, control side */
    _Atomic uint32_t orphans;   /* taken out of use by workers, handed to control */

    /* events to the control plane */
    pthread_mutex_t ev_lock;
    struct dp_event *ev_ring;
    uint32_t ev_mask, ev_head, ev_tail;
    int ev_fd;

    _Atomic uint64_t drops[DP_DROP_COUNT];

    /* The wire profile (struct dp_wire's bytes), under a sequence lock:
     * the control plane writes it (odd seq while it does), workers copy it
     * once per pass. Word by word with release stores and acquire loads
     * rather than fences, which ThreadSanitizer does not model. */
    _Atomic uint32_t wire_seq;
    uint32_t wire_words[DP_WIRE_WORDS];

    /* the XDP backend's outer routes and where data messages went */
    struct route_slot *routes;
    uint32_t n_routes;
    _Atomic uint64_t wan_xsk_tx, wan_kernel_tx, route_requests, roams_refused;

    /* the workers */
    struct worker {
        struct dp_device *d;
        int index;
        pthread_t thread;
    } workers[DP_DEVICE_MAX_WORKERS];
    bool running;
    /* Set before the stop eventfd is written: a worker that never runs
     * out of work (a flood, busy polling) never reaches poll() to see
     * that, so it looks here on every pass. */
    atomic_bool stopping;
    int stop_fd;
    /* the XDP backend's busy polling: how long an idle worker polls
     * before it sleeps; 0: off (set before start) */
    uint64_t busy_poll_ns;
    uint32_t rt_priority;      /* workers' SCHED_FIFO priority; 0: the default policy */
    struct burst *bursts[DP_DEVICE_MAX_WORKERS + 1];
};

static inline struct keypair *kp_at(const struct dp_device *d, uint32_t handle)
{
    uint32_t n = handle - 1;

    return (struct keypair *)(d->kp_chunks[n >> d->kp_chunk_shift] +
                              (size_t)(n & ((1u << d->kp_chunk_shift) - 1)) * d->kp_stride);
}

static inline struct dp_replay *kp_replay(struct keypair *kp)
{
    return (struct dp_replay *)(kp + 1);
}

/* The data path's lookup: the live keypair of a receiver index, or NULL.
 * Lock-free; the caller is an online reader (the keypair stays valid
 * until its next quiescent state). */
static inline struct keypair *dp_keypair_by_index(const struct dp_device *d, uint32_t index)
{
    uint32_t h = dp_index_table_lookup(d->indices, index);
    struct keypair *kp;

    if (h == 0 || h == INDEX_RESERVED)
        return NULL;
    kp = kp_at(d, h);
    if (kp->local_index != index ||
        atomic_load_explicit(&kp->state, memory_order_acquire) != KP_LIVE)
        return NULL;
    return kp;
}

/* A keypair's replay lock: only workers take it, for a few instructions,
 * and never while they could sleep. Workers of one device share a
 * scheduling policy, so a holder is never preempted by a waiter that
 * spins (real-time workers of the same priority do not preempt each
 * other). */
static inline void spin_lock(atomic_flag *f)
{
    while (atomic_flag_test_and_set_explicit(f, memory_order_acquire))
        __builtin_ia32_pause();
}

static inline void spin_unlock(atomic_flag *f)
{
    atomic_flag_clear_explicit(f, memory_order_release);
}

/* A peer's lock, which the control plane takes too: a waiter spins a
 * little, then sleeps on a futex. A pure spin lock would let a real-time
 * worker (dp_device_set_realtime) spin for as long as the kernel's RT
 * throttling allows (most of a second) while the control-plane thread
 * that holds the lock waits for the same CPU. v: 0 free, 1 held, 2 held
 * with sleepers (zeroed memory is a free lock). */
void dp_lock_wait(struct dp_lock *l);
void dp_lock_wake(struct dp_lock *l);

static inline void lock_take(struct dp_lock *l)
{
    uint32_t free_ = 0;

    if (!atomic_compare_exchange_strong_explicit(&l->v, &free_, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        dp_lock_wait(l);
}

static inline void lock_give(struct dp_lock *l)
{
    if (atomic_exchange_explicit(&l->v, 0, memory_order_release) == 2)
        dp_lock_wake(l);
}

/* The workers' copy of the wire profile (a pass works with one). */
static inline void wire_read(const struct dp_device *d, struct dp_wire *out)
{
    uint32_t s1, s2;

    uint32_t words[DP_WIRE_WORDS];

    do {
        s1 = atomic_load_explicit(&d->wire_seq, memory_order_acquire);
        /* acquire loads: the second read of seq cannot move before them */
        for (int i = 0; i < DP_WIRE_WORDS; i++)
            words[i] = __atomic_load_n(&d->wire_words[i], __ATOMIC_ACQUIRE);
        s2 = atomic_load_explicit(&d->wire_seq, memory_order_relaxed);
    } while ((s1 & 1) || s1 != s2);
    memcpy(out, words, sizeof(*out));
}

static inline void count_drop(struct dp_device *d, int reason, uint64_t n)
{
    atomic_fetch_add_explicit(&d->drops[reason], n, memory_order_relaxed);
}

static inline void stat_add(_Atomic uint64_t *s, uint64_t v)
{
    atomic_fetch_add_explicit(s, v, memory_order_relaxed);
}

static inline void stat_set(_Atomic uint64_t *s, uint64_t v)
{
    atomic_store_explicit(s, v, memory_order_relaxed);
}

uint64_t dp_now_ns(void);
/* false when the ring had no room (counted as DP_DROP_EVENTS_FULL) */
bool dp_event_push(struct dp_device *d, const struct dp_event *ev);
void dp_want_handshake(struct dp_device *d, struct peer *p, uint32_t peer_id);
/* Worker side: take kp out of use (its index finds it no more) and hand
 * it to the control plane, which removes the index and retires it. */
void dp_orphan_keypair(struct dp_device *d, struct keypair *kp);
/* Encrypt and send the peer's staged packets with its current keypair. */
void dp_flush_staged(struct dp_device *d, uint32_t peer_id);
/* Usable for sending: exists, young enough, counter not exhausted. */
bool dp_keypair_can_send(const struct keypair *kp, uint64_t now);

/* Per-thread buffers and the worker passes (datapath.c). */
struct burst *dp_burst_new(size_t buf_size);
/* Bytes a burst allocated (for dp_device_memory). */
size_t dp_burst_bytes(const struct burst *b);
/* The fds of worker w (POLL_READER and the control plane use worker 0's). */
void dp_burst_bind(struct burst *b, const struct dp_device *d, int w);
void dp_burst_free(struct burst *b);
/* The XDP backend: AF_XDP ports for the burst's worker (0 or -errno). */
int dp_burst_attach_xsk(struct burst *b, const char *wan_ifname, uint32_t wan_queue,
                        const char *inner_ifname, uint32_t inner_queue,
                        const uint8_t *inner_dst_mac, const uint8_t *inner_src_mac, bool zerocopy);
void dp_burst_xsk_fds(const struct burst *b, int *wan_fd, int *inner_fd);
/* Busy polling on both AF_XDP ports (dp_xsk_port_busy_poll); -EINVAL
 * without ports. 0 or -errno (then it is off on both). */
int dp_burst_xsk_busy_poll(struct burst *b, uint32_t usecs);
int dp_rx_pass(struct dp_device *d, struct burst *b, int fd, int reader);
int dp_udp_fd(const struct dp_device *d, int w, int family);
int dp_tx_pass(struct dp_device *d, struct burst *b, int reader);
void *dp_worker_main(void *arg);
/* Register reader slot `reader` (a worker, or POLL_READER) with the tables
 * it reads; it starts offline. 0 or -error. */
int dp_readers_register(struct dp_device *d, int reader);
void dp_readers_unregister(struct dp_device *d, int reader);
int dp_sendto(struct dp_device *d, const struct dp_endpoint *ep, const uint8_t *data, size_t len);
int dp_routes_init(struct dp_device *d);
void dp_routes_free(struct dp_device *d);
/* The worker's lookup: true with *out filled when there is a route. */
bool dp_route_lookup(struct dp_device *d, uint8_t family, const uint8_t *dst, struct dp_route *out);

#endif
