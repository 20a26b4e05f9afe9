/* The load generator of `dataplane bench` (see dp_loadgen.h). */
#define _GNU_SOURCE
#include "dp_loadgen.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <poll.h>
#include <time.h>

#include "dp_crypto.h"
#include "dp_wg_messages.h"
#include "offload.h" /* checksum helpers of the data path */

struct dp_lg_peer {
    uint8_t send_key[DP_WG_KEY_LEN];
    uint8_t recv_key[DP_WG_KEY_LEN];
    uint64_t send_counter;
    uint32_t remote_index;
    uint32_t inner_addr;
};

struct dp_lg_peers {
    uint32_t n;
    uint32_t index_base;
    size_t map_len;
    struct dp_lg_peer peer[];
};

/* Our payload header, right after the inner UDP header. */
struct lg_payload {
    uint32_t magic;
    uint32_t flow;
    uint64_t seq;
    uint64_t sent_ns;
};

#define IPV4_HEADER 20
#define UDP_HEADER 8
#define INNER_HEADERS (IPV4_HEADER + UDP_HEADER)
#define SEALED_OVERHEAD (DP_WG_DATA_HEADER_LEN + DP_WG_TAG_LEN)
#define SLOT (DP_LG_INNER_MAX + SEALED_OVERHEAD + 64)
/* Junk mode: leading bytes of each datagram made afresh. */
#define JUNK_FRESH 128
/* Seen-sequence window per flow, for duplicate detection. */
#define SEEN_BITS 65536

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void put32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put64le(uint8_t *p, uint64_t v)
{
    put32le(p, (uint32_t)v);
    put32le(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------------ wire profile */

/* A config's AmneziaWG transport profile, checked. */
struct wire {
    uint32_t padding;
    uint32_t header_min;
    uint64_t header_span; /* how many headers the range holds: 1 .. 2^32 */
    /* Where a message starts in its buffer slot: its padding fits in front,
     * and the message (and the crypto's output) keeps the alignment it has
     * without padding. */
    size_t offset;
};

static int wire_init(struct wire *w, uint32_t padding, uint32_t lo, uint32_t hi)
{
    if (lo == 0 && hi == 0)
        lo = hi = DP_WG_MSG_DATA;
    if (lo > hi || padding > DP_LG_WIRE_PADDING_MAX)
        return -1;
    w->padding = padding;
    w->header_min = lo;
    w->header_span = (uint64_t)(hi - lo) + 1;
    w->offset = ((size_t)padding + 63) & ~(size_t)63;
    return 0;
}

static int wire_is_plain(const struct wire *w)
{
    return w->padding == 0 && w->header_min == DP_WG_MSG_DATA && w->header_span == 1;
}

/* wyrand (Wang Yi, public domain). Padding and headers only have to look
 * random to a classifier, not resist prediction, and a load generator must
 * not spend a getrandom() call per message on them; the seed comes from
 * getrandom() once per call. */
static uint64_t wyrand(uint64_t *state)
{
    *state += 0xa0761d6478bd642full;
    __uint128_t t = (__uint128_t)*state * (*state ^ 0xe7037ed1a0b428dbull);
    return (uint64_t)(t >> 64) ^ (uint64_t)t;
}

static uint64_t wyrand_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
        seed = now_ns(CLOCK_MONOTONIC) ^ (uint64_t)(uintptr_t)&seed;
    return seed;
}

static void fill_random(uint8_t *p, uint32_t n, uint64_t *rng)
{
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t r = wyrand(rng);
        memcpy(p, &r, 8);
    }
    if (n) {
        uint64_t r = wyrand(rng);
        memcpy(p, &r, n);
    }
}

/* A type field from the profile's range (multiply-shift: the bias is at
 * most span / 2^32, nothing a receiver's range check can see). */
static uint32_t wire_header(const struct wire *w, uint64_t *rng)
{
    if (w->header_span == 1)
        return w->header_min;
    return w->header_min + (uint32_t)(((wyrand(rng) >> 32) * w->header_span) >> 32);
}

static int wire_accepts(const struct wire *w, uint32_t header)
{
    return (uint64_t)(header - w->header_min) < w->header_span;
}

/* ------------------------------------------------------------ peers */

struct dp_lg_peers *dp_lg_peers_new(uint32_t n, uint32_t index_base)
{
    if (n == 0 || n > (1u << 24))
        return NULL;
    size_t len = sizeof(struct dp_lg_peers) + (size_t)n * sizeof(struct dp_lg_peer);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    mlock(p, len); /* best effort: a bench must run where memlock is small, too */
    madvise(p, len, MADV_DONTDUMP);
    struct dp_lg_peers *peers = p;
    peers->n = n;
    peers->index_base = index_base;
    peers->map_len = len;
    return peers;
}

void dp_lg_peers_free(struct dp_lg_peers *peers)
{
    if (!peers)
        return;
    size_t len = peers->map_len;
    explicit_bzero(peers, len);
    munlock(peers, len);
    munmap(peers, len);
}

int dp_lg_peer_set(struct dp_lg_peers *peers, uint32_t i, const uint8_t *send_key,
                   const uint8_t *recv_key, uint32_t remote_index, uint64_t next_counter,
                   uint32_t inner_addr)
{
    if (!peers || i >= peers->n)
        return -1;
    struct dp_lg_peer *p = &peers->peer[i];
    if (send_key)
        memcpy(p->send_key, send_key, DP_WG_KEY_LEN);
    else
        explicit_bzero(p->send_key, DP_WG_KEY_LEN);
    if (recv_key)
        memcpy(p->recv_key, recv_key, DP_WG_KEY_LEN);
    else
        explicit_bzero(p->recv_key, DP_WG_KEY_LEN);
    p->remote_index = remote_index;
    p->send_counter = next_counter;
    p->inner_addr = inner_addr;
    return 0;
}

uint64_t dp_lg_peer_counter(const struct dp_lg_peers *peers, uint32_t i)
{
    return peers && i < peers->n ? peers->peer[i].send_counter : 0;
}

/* ------------------------------------------------------------ inner packets */

/* An IPv4/UDP packet of `size` bytes with our payload header; bytes after
 * it up to `size` are zero. UDP checksum 0 (none), as IPv4 allows. */
static void build_inner(uint8_t *pkt, uint32_t size, uint32_t src, uint32_t dst,
                        uint16_t sport, uint16_t dport, uint16_t id,
                        const struct lg_payload *pl)
{
    uint8_t *ip = pkt, *udp = pkt + IPV4_HEADER;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2] = (uint8_t)(size >> 8);
    ip[3] = (uint8_t)size;
    ip[4] = (uint8_t)(id >> 8);
    ip[5] = (uint8_t)id;
    ip[6] = 0x40; /* DF */
    ip[7] = 0;
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[10] = ip[11] = 0;
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    uint16_t csum = dp_csum_fold(dp_csum_add(0, ip, IPV4_HEADER));
    memcpy(ip + 10, &csum, 2); /* computed in memory order: stored back the same way */
    uint16_t ulen = (uint16_t)(size - IPV4_HEADER);
    udp[0] = (uint8_t)(sport >> 8);
    udp[1] = (uint8_t)sport;
    udp[2] = (uint8_t)(dport >> 8);
    udp[3] = (uint8_t)dport;
    udp[4] = (uint8_t)(ulen >> 8);
    udp[5] = (uint8_t)ulen;
    udp[6] = udp[7] = 0;
    memcpy(udp + UDP_HEADER, pl, sizeof(*pl));
    memset(udp + UDP_HEADER + sizeof(*pl), 0, size - INNER_HEADERS - sizeof(*pl));
}

/* ------------------------------------------------------------ sender */

struct send_state {
    uint8_t (*plain)[SLOT];
    uint8_t *sealed; /* DP_LG_BURST slots of `stride` bytes */
    struct mmsghdr mm[DP_LG_BURST];
    struct iovec iov[DP_LG_BURST];
    struct sockaddr_in dest[DP_LG_BURST];
    struct dp_aead_msg msgs[DP_LG_BURST];
};

static int send_burst(int fd, struct mmsghdr *mm, unsigned n, struct dp_lg_send_stats *st,
                      const uint32_t *sizes)
{
    unsigned done = 0;
    while (done < n) {
        int r = sendmmsg(fd, mm + done, n - done, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            st->send_errors++; /* e.g. ENOBUFS or ECONNREFUSED: drop this one */
            done++;
            continue;
        }
        for (int k = 0; k < r; k++) {
            st->packets++;
            st->bytes += sizes[done + k];
        }
        done += (unsigned)r;
    }
    return 0;
}

int dp_lg_send(const struct dp_lg_send_config *cfg, struct dp_lg_peers *peers,
               volatile int *stop, struct dp_lg_send_stats *out)
{
    const int junk = cfg && cfg->mode == DP_LG_MODE_JUNK;
    if (!cfg || (!peers && !junk) || !out || cfg->fd < 0 || cfg->flow >= DP_LG_MAX_FLOWS ||
        !cfg->sizes || cfg->n_sizes == 0 || cfg->n_sizes > DP_LG_MAX_SIZES ||
        (cfg->mode != DP_LG_MODE_SEALED && cfg->mode != DP_LG_MODE_PLAIN && !junk))
        return -1;
    struct wire wire;
    if (wire_init(&wire, cfg->wire_padding, cfg->wire_header_min, cfg->wire_header_max) != 0 ||
        (cfg->mode != DP_LG_MODE_SEALED && !wire_is_plain(&wire)))
        return -1;
    for (uint32_t i = 0; i < cfg->n_sizes; i++) {
        uint32_t size = cfg->sizes[i];
        if (size < (junk ? 1 : DP_LG_INNER_MIN) || size > DP_LG_INNER_MAX)
            return -1;
        uint32_t padded = (size + DP_WG_PADDING - 1) & ~(uint32_t)(DP_WG_PADDING - 1);
        if (padded > cfg->mtu)
            padded = size > cfg->mtu ? size : cfg->mtu;
        if ((uint64_t)wire.padding + SEALED_OVERHEAD + padded > DP_WIRE_MAX_DATAGRAM)
            return -1;
    }
    const size_t stride = wire.offset + SLOT;
    struct send_state *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->plain = aligned_alloc(64, (size_t)DP_LG_BURST * SLOT);
    s->sealed = aligned_alloc(64, (size_t)DP_LG_BURST * stride);
    if (!s->plain || !s->sealed) {
        free(s->plain);
        free(s->sealed);
        free(s);
        return -1;
    }
    pin(cfg->cpu);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    memset(out, 0, sizeof(*out));

    const int sealed = cfg->mode == DP_LG_MODE_SEALED;
    uint64_t rng = wyrand_seed();
    if (junk)
        fill_random(&s->plain[0][0], DP_LG_BURST * SLOT, &rng);
    uint32_t sizes[DP_LG_BURST];
    uint32_t next_peer = 0, next_size = 0;
    uint64_t seq = 0;
    const uint64_t start = now_ns(CLOCK_MONOTONIC);
    const uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    const uint64_t end = start + cfg->duration_ns;

    for (;;) {
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= end || (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)))
            break;
        unsigned burst = DP_LG_BURST;
        if (cfg->rate_pps) {
            /* Packets due by now; sleep until the next one is due. */
            uint64_t due = (uint64_t)((__uint128_t)(now - start) * cfg->rate_pps / 1000000000ull) + 1;
            if (due <= seq) {
                uint64_t at = start + (uint64_t)((__uint128_t)seq * 1000000000ull / cfg->rate_pps);
                if (at > end)
                    at = end;
                struct timespec ts = {.tv_sec = (time_t)(at / 1000000000ull),
                                      .tv_nsec = (long)(at % 1000000000ull)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                continue;
            }
            if (due - seq < burst)
                burst = (unsigned)(due - seq);
        }
        for (unsigned k = 0; k < burst; k++) {
            struct dp_lg_peer *p = junk ? NULL : &peers->peer[next_peer];
            if (!junk && ++next_peer == peers->n)
                next_peer = 0;
            uint32_t size = cfg->sizes[next_size];
            if (++next_size == cfg->n_sizes)
                next_size = 0;
            sizes[k] = size;
            struct lg_payload pl = {DP_LG_PAYLOAD_MAGIC, cfg->flow, seq++, now};
            if (sealed) {
                uint32_t padded = (size + DP_WG_PADDING - 1) & ~(uint32_t)(DP_WG_PADDING - 1);
                if (padded > cfg->mtu)
                    padded = size > cfg->mtu ? size : cfg->mtu;
                build_inner(s->plain[k], size, p->inner_addr, cfg->dst_addr, cfg->src_port,
                            cfg->dst_port, (uint16_t)pl.seq, &pl);
                memset(s->plain[k] + size, 0, padded - size);
                uint8_t *msg = s->sealed + k * stride + wire.offset;
                fill_random(msg - wire.padding, wire.padding, &rng);
                put32le(msg, wire_header(&wire, &rng));
                put32le(msg + 4, p->remote_index);
                put64le(msg + 8, p->send_counter);
                s->msgs[k] = (struct dp_aead_msg){
                    .key = p->send_key, .counter = p->send_counter++, .ad = NULL, .ad_len = 0,
                    .len = padded, .src = s->plain[k], .dst = msg + DP_WG_DATA_HEADER_LEN};
                s->iov[k] = (struct iovec){msg - wire.padding, wire.padding +
                                           DP_WG_DATA_HEADER_LEN + padded + DP_WG_TAG_LEN};
                s->mm[k].msg_hdr = (struct msghdr){.msg_iov = &s->iov[k], .msg_iovlen = 1};
            } else if (junk) {
                /* Fresh bytes where a receiver looks (the type field at any
                 * padding a profile may have); refilling whole datagrams
                 * would cost the flood's rate, and the rest was random from
                 * the start. */
                fill_random(s->plain[k], size < JUNK_FRESH ? size : JUNK_FRESH, &rng);
                s->iov[k] = (struct iovec){s->plain[k], size};
                s->mm[k].msg_hdr = (struct msghdr){.msg_iov = &s->iov[k], .msg_iovlen = 1};
            } else {
                /* The kernel adds IPv4 and UDP: we give it the UDP payload. */
                uint8_t *udp_payload = s->plain[k];
                memcpy(udp_payload, &pl, sizeof(pl));
                memset(udp_payload + sizeof(pl), 0, size - INNER_HEADERS - sizeof(pl));
                s->dest[k] = (struct sockaddr_in){.sin_family = AF_INET,
                                                  .sin_port = htons(cfg->dst_port),
                                                  .sin_addr.s_addr = p->inner_addr};
                s->iov[k] = (struct iovec){udp_payload, size - INNER_HEADERS};
                s->mm[k].msg_hdr = (struct msghdr){.msg_name = &s->dest[k],
                                                   .msg_namelen = sizeof(s->dest[k]),
                                                   .msg_iov = &s->iov[k], .msg_iovlen = 1};
            }
        }
        if (sealed && dp_aead_seal_batch(s->msgs, burst) != (int)burst) {
            out->send_errors += burst; /* cannot happen with valid keys: a bug */
            continue;
        }
        send_burst(cfg->fd, s->mm, burst, out, sizes);
    }
    out->next_seq = seq;
    out->ns = now_ns(CLOCK_MONOTONIC) - start;
    out->cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    explicit_bzero(s->plain, (size_t)DP_LG_BURST * SLOT);
    free(s->plain);
    free(s->sealed);
    free(s);
    return 0;
}

/* ------------------------------------------------------------ receiver */

uint32_t dp_lg_bucket(uint64_t ns)
{
    if (ns < 64)
        return (uint32_t)ns;
    unsigned e = 63 - (unsigned)__builtin_clzll(ns); /* >= 6 */
    uint32_t b = 64 + (e - 6) * 32 + (uint32_t)((ns >> (e - 5)) & 31);
    return b < DP_LG_HIST_BUCKETS ? b : DP_LG_HIST_BUCKETS - 1;
}

uint64_t dp_lg_bucket_low(uint32_t b)
{
    if (b < 64)
        return b;
    if (b >= DP_LG_HIST_BUCKETS)
        b = DP_LG_HIST_BUCKETS - 1;
    unsigned e = (b - 64) / 32 + 6, sub = (b - 64) % 32;
    return (uint64_t)(32 + sub) << (e - 5);
}

struct recv_state {
    uint8_t *buf; /* DP_LG_BURST slots of `stride` bytes */
    uint8_t (*plain)[SLOT];
    struct mmsghdr mm[DP_LG_BURST];
    struct iovec iov[DP_LG_BURST];
    struct dp_aead_msg msgs[DP_LG_BURST];
    uint8_t *seen; /* DP_LG_MAX_FLOWS x SEEN_BITS */
};

static void account(struct dp_lg_recv_stats *st, uint8_t *seen, const uint8_t *payload,
                    uint32_t inner_len, uint64_t now)
{
    struct lg_payload pl;
    memcpy(&pl, payload, sizeof(pl));
    if (pl.magic != DP_LG_PAYLOAD_MAGIC || pl.flow >= DP_LG_MAX_FLOWS) {
        st->foreign++;
        return;
    }
    uint8_t *bits = seen + (size_t)pl.flow * (SEEN_BITS / 8);
    uint64_t *max = &st->max_seq[pl.flow];
    if (pl.seq >= *max) {
        if (pl.seq - *max >= SEEN_BITS)
            memset(bits, 0, SEEN_BITS / 8);
        else
            for (uint64_t s = *max; s < pl.seq; s++)
                bits[(s % SEEN_BITS) / 8] &= (uint8_t)~(1u << (s % 8));
        *max = pl.seq + 1;
    } else if (*max - pl.seq <= SEEN_BITS) {
        if (bits[(pl.seq % SEEN_BITS) / 8] & (1u << (pl.seq % 8))) {
            st->duplicates++;
            return;
        }
        st->reordered++;
    } else {
        st->reordered++;
    }
    bits[(pl.seq % SEEN_BITS) / 8] |= (uint8_t)(1u << (pl.seq % 8));
    /* read by another thread (dp_lg_recv_packets) while this one runs */
    __atomic_store_n(&st->packets, st->packets + 1, __ATOMIC_RELAXED);
    st->bytes += inner_len;
    uint64_t lat = now > pl.sent_ns ? now - pl.sent_ns : 0;
    st->lat_count++;
    st->lat_sum_ns += lat;
    if (lat > st->lat_max_ns)
        st->lat_max_ns = lat;
    st->hist[dp_lg_bucket(lat)]++;
}

/* A decrypted inner packet: ours if it is IPv4/UDP with our payload. */
static void account_inner(struct dp_lg_recv_stats *st, uint8_t *seen, const uint8_t *pkt,
                          uint32_t len, uint64_t now)
{
    if (len < DP_LG_INNER_MIN || (pkt[0] >> 4) != 4 || pkt[9] != IPPROTO_UDP) {
        st->foreign++;
        return;
    }
    uint32_t ihl = (uint32_t)(pkt[0] & 15) * 4;
    uint32_t total = (uint32_t)pkt[2] << 8 | pkt[3];
    if (ihl < IPV4_HEADER || total > len || total < ihl + UDP_HEADER + sizeof(struct lg_payload)) {
        st->foreign++;
        return;
    }
    account(st, seen, pkt + ihl + UDP_HEADER, total, now);
}

int dp_lg_recv(const struct dp_lg_recv_config *cfg, struct dp_lg_peers *peers,
               volatile int *stop, struct dp_lg_recv_stats *out)
{
    if (!cfg || !out || !stop || cfg->fd < 0 ||
        (cfg->mode != DP_LG_MODE_SEALED && cfg->mode != DP_LG_MODE_PLAIN) ||
        (cfg->mode == DP_LG_MODE_SEALED && !peers))
        return -1;
    struct wire wire;
    if (wire_init(&wire, cfg->wire_padding, cfg->wire_header_min, cfg->wire_header_max) != 0 ||
        (cfg->mode == DP_LG_MODE_PLAIN && !wire_is_plain(&wire)))
        return -1;
    const size_t stride = wire.offset + SLOT;
    struct recv_state *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->buf = aligned_alloc(64, (size_t)DP_LG_BURST * stride);
    s->plain = aligned_alloc(64, (size_t)DP_LG_BURST * SLOT);
    s->seen = calloc(DP_LG_MAX_FLOWS, SEEN_BITS / 8);
    if (!s->buf || !s->plain || !s->seen) {
        free(s->buf);
        free(s->plain);
        free(s->seen);
        free(s);
        return -1;
    }
    pin(cfg->cpu);
    memset(out, 0, sizeof(*out));
    const uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    const int sealed = cfg->mode == DP_LG_MODE_SEALED;

    const struct timespec nap = {.tv_sec = (time_t)(cfg->poll_ns / 1000000000ull),
                                 .tv_nsec = (long)(cfg->poll_ns % 1000000000ull)};
    int last = DP_LG_BURST;

    if (cfg->poll_ns)
        prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        if (cfg->poll_ns) {
            /* a short read means the socket is drained: nap, then read */
            if (last < DP_LG_BURST)
                nanosleep(&nap, NULL);
        } else {
            struct pollfd pfd = {.fd = cfg->fd, .events = POLLIN};
            if (poll(&pfd, 1, 20) <= 0)
                continue;
        }
        for (unsigned k = 0; k < DP_LG_BURST; k++) {
            /* the padding lands in front of the message's aligned place */
            s->iov[k] = (struct iovec){s->buf + k * stride + wire.offset - wire.padding,
                                       wire.padding + SLOT};
            s->mm[k].msg_hdr = (struct msghdr){.msg_iov = &s->iov[k], .msg_iovlen = 1};
        }
        int r = recvmmsg(cfg->fd, s->mm, DP_LG_BURST, MSG_DONTWAIT, NULL);
        last = r < 0 ? 0 : r;
        if (r <= 0)
            continue;
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (!sealed) {
            for (int k = 0; k < r; k++) {
                uint32_t len = s->mm[k].msg_len;
                if (len < sizeof(struct lg_payload)) {
                    out->foreign++;
                    continue;
                }
                account(out, s->seen, s->buf + k * stride, len + INNER_HEADERS, now);
            }
            continue;
        }
        unsigned n = 0;
        for (int k = 0; k < r; k++) {
            const uint8_t *m = s->buf + k * stride + wire.offset;
            uint32_t len = s->mm[k].msg_len;
            if (len < wire.padding + DP_WG_DATA_MIN_LEN || !wire_accepts(&wire, get32le(m))) {
                out->foreign++;
                continue;
            }
            len -= wire.padding;
            if (len == DP_WG_DATA_MIN_LEN) {
                out->foreign++; /* a keepalive */
                continue;
            }
            uint32_t i = get32le(m + 4) - peers->index_base;
            if (i >= peers->n) {
                out->rejected++;
                continue;
            }
            uint64_t counter = (uint64_t)get32le(m + 8) | (uint64_t)get32le(m + 12) << 32;
            s->msgs[n] = (struct dp_aead_msg){
                .key = peers->peer[i].recv_key, .counter = counter, .ad = NULL, .ad_len = 0,
                .len = len - DP_WG_DATA_HEADER_LEN, .src = m + DP_WG_DATA_HEADER_LEN,
                .dst = s->plain[n]};
            n++;
        }
        if (n == 0)
            continue;
        dp_aead_open_batch(s->msgs, n);
        for (unsigned j = 0; j < n; j++) {
            if (s->msgs[j].status != 0) {
                out->rejected++;
                continue;
            }
            account_inner(out, s->seen, s->plain[j], s->msgs[j].len - DP_WG_TAG_LEN, now);
        }
    }
    out->cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    explicit_bzero(s->plain, (size_t)DP_LG_BURST * SLOT);
    free(s->buf);
    free(s->plain);
    free(s->seen);
    free(s);
    return 0;
}

void dp_lg_stop(volatile int *stop)
{
    __atomic_store_n(stop, 1, __ATOMIC_RELEASE);
}

uint64_t dp_lg_recv_packets(const struct dp_lg_recv_stats *st)
{
    return __atomic_load_n(&st->packets, __ATOMIC_RELAXED);
}
