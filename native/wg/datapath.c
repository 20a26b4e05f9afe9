/* The packet path: receive (decap) and send (encap) passes over bursts of
 * up to DP_DEVICE_BURST packets, and the worker loop that runs them. */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto_internal.h"
#include "device_internal.h"
#include "offload.h"
#include "wire.h"
#include "xsk_port.h"

/* Random bytes made at a time: the padding and headers of a few bursts. */
#define RND_POOL 4096

/* Buffers of one thread: packets are decrypted and encrypted in place, the
 * data header in front of the payload. */
struct burst {
    size_t buf_size;
    uint8_t *buf[DP_DEVICE_BURST];
    struct mmsghdr msg[DP_DEVICE_BURST];
    struct iovec iov[DP_DEVICE_BURST];
    struct sockaddr_in6 addr[DP_DEVICE_BURST];
    struct dp_aead_msg aead[DP_DEVICE_BURST];
    struct keypair *kp[DP_DEVICE_BURST];
    uint32_t len[DP_DEVICE_BURST];
    uint32_t peer[DP_DEVICE_BURST];
    int idx[DP_DEVICE_BURST];
    /* outgoing, by family; a GSO group is one entry with several iovecs,
     * two a datagram (padding, message) where it has AmneziaWG padding */
    struct mmsghdr out[2][DP_DEVICE_BURST];
    char ctrl[2][DP_DEVICE_BURST][CMSG_SPACE(sizeof(uint16_t))];
    struct iovec out_iov[2][2 * DP_DEVICE_BURST];
    uint8_t out_step[2][DP_DEVICE_BURST]; /* iovecs a datagram of the entry */
    struct sockaddr_in6 out_addr[2][DP_DEVICE_BURST];
    /* AmneziaWG: random bytes for padding and header values, ChaCha20
     * keystream under a key of the burst's own (not a secret of anyone's:
     * it only has to look random on the wire), and the padding of the
     * messages of a send pass that take the socket path, pad_cap bytes a
     * message */
    uint8_t rnd[RND_POOL];
    uint32_t rnd_left;
    uint32_t rnd_key[8];
    uint64_t rnd_blocks;
    uint8_t *pad;
    uint32_t pad_cap;
    /* received datagrams, split where UDP GRO joined them */
    struct rx_seg {
        uint8_t *p;
        uint32_t len;
        uint16_t from; /* index into addr */
    } seg[DP_DEVICE_BURST * 64];
    char rx_ctrl[DP_DEVICE_BURST][CMSG_SPACE(sizeof(int))];
    uint8_t *gro_buf; /* a coalesced TCP group is built here */
    /* the fds of the worker that uses this burst */
    int tun_fd, udp4_fd, udp6_fd;
    /* a TSO super-packet read from the TUN, and how far it is segmented */
    uint8_t *super;
    struct vnet_hdr tso_hdr;
    size_t tso_len;
    uint32_t tso_next;
    bool tso_pending;
    /* The XDP backend: AF_XDP ports on the WAN interface (WireGuard in)
     * and on our end of the inner veth pair (clear packets in and out),
     * and the Ethernet header of what we hand to the kernel's end. */
    bool xsk;
    struct dp_xsk_port *wan, *inner;
    uint32_t wan_ifindex;  /* the interface of `wan` */
    uint8_t inner_eth[12]; /* destination MAC, source MAC */
    uint32_t ip_id;        /* IPv4 identification of what we send on the WAN */
    uint32_t busy_passes;  /* passes that found AF_XDP work, to space out socket checks */
    bool rx_xsk;           /* the segments of this receive pass are in frames[] */
    /* Decap with AF_XDP decrypts straight into a transmit frame of the
     * inner port (its address per AEAD job; NO_FRAME: in place, when no
     * frame was free), so no clear text is left in the WAN's frames and
     * nothing is copied; in_place says that some was. */
    uint64_t tx_addr[DP_DEVICE_BURST];
    bool tx_used[DP_DEVICE_BURST];
    bool in_place;
    /* Encap with AF_XDP encrypts from the inner port's receive frames
     * (pkt: the clear packets) straight into transmit frames of the WAN
     * port (wan_addr, or NO_FRAME: the message is built in buf and takes
     * the copying path) */
    uint8_t *pkt[DP_DEVICE_BURST];
    uint64_t wan_addr[DP_DEVICE_BURST];
    uint8_t *wan_frame[DP_DEVICE_BURST];
    uint32_t pad_len[DP_DEVICE_BURST]; /* AmneziaWG padding of each job */
    struct dp_xsk_frame frames[DP_DEVICE_BURST];
};

#define NO_FRAME UINT64_MAX

/* A busy XDP worker looks at its UDP sockets once every this many passes. */
#define XSK_SOCKET_PASS_EVERY 16

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
/* The kernel's UDP_MAX_SEGMENTS (64 before 6.x raised it) and a GSO
 * packet's size limit. */
#define UDP_GSO_MAX_SEGMENTS 64
#define UDP_GSO_MAX_BYTES 65000

#define ETH_HEADER 14
#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86dd
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8

struct out_state {
    int nmsg[2], niov[2];
    struct dp_endpoint ep[2]; /* of the last entry */
    size_t seg[2], last_len[2], bytes[2], pad[2];
    uint32_t nseg[2];         /* datagrams of the last entry */
};

struct burst *dp_burst_new(size_t buf_size)
{
    struct burst *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->buf_size = buf_size;
    if (getrandom(b->rnd_key, sizeof(b->rnd_key), 0) != sizeof(b->rnd_key)) {
        free(b);
        return NULL;
    }
    b->super = malloc(VNET_HDR_LEN + TUN_SUPER_MAX);
    b->gro_buf = malloc(VNET_HDR_LEN + TUN_SUPER_MAX);
    if (!b->super || !b->gro_buf) {
        free(b->super);
        free(b->gro_buf);
        free(b);
        return NULL;
    }
    for (int i = 0; i < DP_DEVICE_BURST; i++) {
        b->buf[i] = aligned_alloc(64, (buf_size + 63) & ~(size_t)63);
        if (!b->buf[i]) {
            dp_burst_free(b);
            return NULL;
        }
    }
    return b;
}

size_t dp_burst_bytes(const struct burst *b)
{
    return sizeof(*b) + 2 * (size_t)(VNET_HDR_LEN + TUN_SUPER_MAX) +
           DP_DEVICE_BURST * ((b->buf_size + 63) & ~(size_t)63) +
           (size_t)DP_DEVICE_BURST * b->pad_cap;
}

/* ---------------------------------------------------------------- AmneziaWG */

static void rnd_refill(struct burst *b)
{
    struct dp_chacha20_job job = {.dst = b->rnd, .len = RND_POOL,
                                  .counter = (uint32_t)b->rnd_blocks,
                                  .nonce = {0, (uint32_t)(b->rnd_blocks >> 32), 0}};

    memcpy(job.key, b->rnd_key, sizeof(job.key));
    dp_crypto_ops()->chacha20_jobs(&job, 1);
    dp_wipe(job.key, sizeof(job.key));
    b->rnd_blocks += RND_POOL / 64;
    b->rnd_left = RND_POOL;
}

static void rnd_fill(struct burst *b, uint8_t *dst, uint32_t n)
{
    while (n) {
        uint32_t take;

        if (!b->rnd_left)
            rnd_refill(b);
        take = n < b->rnd_left ? n : b->rnd_left;
        memcpy(dst, b->rnd + RND_POOL - b->rnd_left, take);
        b->rnd_left -= take;
        dst += take;
        n -= take;
    }
}

/* A type field from the range, uniform (the bias of a 64-bit draw scaled
 * to at most 2^32 values is below 2^-32). */
static uint32_t wire_header(struct burst *b, uint32_t lo, uint32_t hi)
{
    uint64_t r;

    if (lo == hi)
        return lo;
    rnd_fill(b, (uint8_t *)&r, sizeof(r));
    return lo + (uint32_t)(((unsigned __int128)r * ((uint64_t)hi - lo + 1)) >> 64);
}

/* Room for n bytes of padding a message in b->pad (0, or -ENOMEM). */
static int pad_room(struct burst *b, uint32_t n)
{
    uint8_t *p;

    if (n <= b->pad_cap)
        return 0;
    p = realloc(b->pad, (size_t)DP_DEVICE_BURST * n);
    if (!p)
        return -ENOMEM;
    b->pad = p;
    b->pad_cap = n;
    return 0;
}

void dp_burst_bind(struct burst *b, const struct dp_device *d, int w)
{
    b->tun_fd = d->cfg.tun_fd[w];
    b->udp4_fd = d->cfg.udp4_fd[w];
    b->udp6_fd = d->cfg.udp6_fd[w];
}

int dp_burst_attach_xsk(struct burst *b, const char *wan_ifname, uint32_t wan_queue,
                        const char *inner_ifname, uint32_t inner_queue,
                        const uint8_t *inner_dst_mac, const uint8_t *inner_src_mac, bool zerocopy)
{
    int err;

    if (b->xsk)
        return -EBUSY;
    b->wan = calloc(1, sizeof(*b->wan));
    b->inner = calloc(1, sizeof(*b->inner));
    if (!b->wan || !b->inner) {
        free(b->wan);
        free(b->inner);
        b->wan = b->inner = NULL;
        return -ENOMEM;
    }
    err = dp_xsk_port_open(b->wan, wan_ifname, wan_queue, zerocopy);
    if (!err) {
        err = dp_xsk_port_open(b->inner, inner_ifname, inner_queue, zerocopy);
        if (err)
            dp_xsk_port_close(b->wan);
    }
    if (err) {
        free(b->wan);
        free(b->inner);
        b->wan = b->inner = NULL;
        return err;
    }
    memcpy(b->inner_eth, inner_dst_mac, 6);
    memcpy(b->inner_eth + 6, inner_src_mac, 6);
    b->wan_ifindex = if_nametoindex(wan_ifname);
    b->xsk = true;
    return 0;
}

void dp_burst_xsk_fds(const struct burst *b, int *wan_fd, int *inner_fd)
{
    *wan_fd = b->xsk ? b->wan->fd : -1;
    *inner_fd = b->xsk ? b->inner->fd : -1;
}

int dp_burst_xsk_busy_poll(struct burst *b, uint32_t usecs)
{
    if (!b->xsk)
        return -EINVAL;
    return dp_xsk_ports_busy_poll(b->wan, b->inner, usecs);
}

void dp_burst_free(struct burst *b)
{
    if (!b)
        return;
    if (b->xsk) {
        dp_xsk_port_close(b->wan);
        dp_xsk_port_close(b->inner);
        free(b->wan);
        free(b->inner);
        b->xsk = false;
    }
    for (int i = 0; i < DP_DEVICE_BURST; i++) {
        if (b->buf[i]) {
            dp_wipe(b->buf[i], b->buf_size);
            free(b->buf[i]);
        }
    }
    for (uint8_t **big = (uint8_t *[]){b->super, b->gro_buf, NULL}; *big; big++) {
        dp_wipe(*big, VNET_HDR_LEN + TUN_SUPER_MAX);
        free(*big);
    }
    free(b->pad);
    dp_wipe(b->rnd_key, sizeof(b->rnd_key));
    free(b);
}

/* ---------------------------------------------------------------- endpoints */

static socklen_t endpoint_to_sockaddr(const struct dp_endpoint *ep, struct sockaddr_in6 *out)
{
    memset(out, 0, sizeof(*out));
    if (ep->family == DP_ENDPOINT_IPV4) {
        struct sockaddr_in *a = (struct sockaddr_in *)out;

        a->sin_family = AF_INET;
        a->sin_port = htons(ep->port);
        memcpy(&a->sin_addr, ep->addr, 4);
        return sizeof(*a);
    }
    out->sin6_family = AF_INET6;
    out->sin6_port = htons(ep->port);
    out->sin6_scope_id = ep->scope_id;
    memcpy(&out->sin6_addr, ep->addr, 16);
    return sizeof(*out);
}

static void sockaddr_to_endpoint(const struct sockaddr_in6 *sa, struct dp_endpoint *ep)
{
    memset(ep, 0, sizeof(*ep));
    if (sa->sin6_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;

        ep->family = DP_ENDPOINT_IPV4;
        ep->port = ntohs(a->sin_port);
        memcpy(ep->addr, &a->sin_addr, 4);
    } else {
        ep->family = DP_ENDPOINT_IPV6;
        ep->port = ntohs(sa->sin6_port);
        ep->scope_id = sa->sin6_scope_id;
        memcpy(ep->addr, &sa->sin6_addr, 16);
    }
}

int dp_udp_fd(const struct dp_device *d, int w, int family)
{
    return family == DP_ENDPOINT_IPV4 ? d->cfg.udp4_fd[w] : d->cfg.udp6_fd[w];
}

int dp_sendto(struct dp_device *d, const struct dp_endpoint *ep, const uint8_t *data, size_t len)
{
    struct sockaddr_in6 sa;
    socklen_t salen = endpoint_to_sockaddr(ep, &sa);
    int fd = dp_udp_fd(d, 0, ep->family);

    if (fd < 0)
        return -EAFNOSUPPORT;
    if (sendto(fd, data, len, 0, (struct sockaddr *)&sa, salen) < 0)
        return -errno;
    return 0;
}

/* ---------------------------------------------------------------- inner packets */

/* Length of the IP packet at p (from its header), or 0 if it is not a sane
 * IPv4/IPv6 packet within len bytes. Sets the source/destination pointers. */
static uint32_t inner_packet(const uint8_t *p, uint32_t len, int *family, const uint8_t **src,
                             const uint8_t **dst)
{
    if (len >= 20 && p[0] >> 4 == 4) {
        uint32_t ihl = (uint32_t)(p[0] & 0xf) * 4, total = (uint32_t)p[2] << 8 | p[3];

        if (ihl < 20 || total < ihl || total > len)
            return 0;
        *family = DP_FAMILY_IPV4;
        *src = p + 12;
        *dst = p + 16;
        return total;
    }
    if (len >= 40 && p[0] >> 4 == 6) {
        uint32_t total = 40 + ((uint32_t)p[4] << 8 | p[5]);

        if (total > len)
            return 0;
        *family = DP_FAMILY_IPV6;
        *src = p + 8;
        *dst = p + 24;
        return total;
    }
    return 0;
}

/* ---------------------------------------------------------------- receive */

static void handshake_event(struct dp_device *d, const uint8_t *data, uint32_t len,
                            const struct sockaddr_in6 *from, uint32_t kind, uint8_t wire)
{
    struct dp_event ev = {.type = DP_EVENT_HANDSHAKE, .peer_id = DP_PEER_NONE, .len = len,
                          .message = (uint8_t)kind, .wire = wire};

    memcpy(ev.data, data, len);
    sockaddr_to_endpoint(from, &ev.endpoint);
    dp_event_push(d, &ev);
}

/* The first authenticated data on a responder's next keypair confirms it
 * (whitepaper 6.3): it becomes current, the current one previous. */
static void confirm_next(struct dp_device *d, struct peer *p, uint32_t peer_id,
                         struct keypair *kp)
{
    struct keypair *dropped = NULL;
    bool confirmed = false, flush;

    lock_take(&p->lock);
    if (p->next == kp) {
        dropped = p->previous;
        p->previous = atomic_load(&p->current);
        atomic_store(&p->current, kp);
        p->next = NULL;
        confirmed = true;
    }
    flush = confirmed && p->staged_count > 0;
    lock_give(&p->lock);
    if (!confirmed)
        return;
    if (dropped)
        dp_orphan_keypair(d, dropped);
    dp_event_push(d, &(struct dp_event){.type = DP_EVENT_KEYPAIR_CONFIRMED, .peer_id = peer_id,
                                        .local_index = kp->local_index});
    if (flush)
        dp_flush_staged(d, peer_id);
}

static bool outer_parse(uint8_t *f, uint32_t len, uint8_t **payload, uint32_t *plen,
                        struct sockaddr_in6 *from);

/* The UDP checksum of a frame from the WAN port, which the kernel has not
 * looked at: true when it verifies, when IPv4 says there is none (0, RFC
 * 768), or when it holds just the pseudo-header's sum, which a sender on
 * this host's virtual links (veth) leaves for checksum offload (such a
 * frame never crossed a wire). A corruption that lands on either value is
 * a chance of about 2 in 65536. Sums in memory order (dp_csum_add). */
static bool outer_udp_checksum_ok(const uint8_t *f, uint32_t len)
{
    struct sockaddr_in6 from;
    uint32_t l3 = ETH_HEADER, l4, plen;
    uint16_t field, partial, proto_len[2];
    uint8_t *payload;
    uint64_t pseudo;

    if (!outer_parse((uint8_t *)f, len, &payload, &plen, &from))
        return false;
    if ((f[12] == 0x81 && f[13] == 0x00) || (f[12] == 0x88 && f[13] == 0xa8))
        l3 += 4;
    l4 = (uint32_t)(payload - f) - 8;
    memcpy(&field, f + l4 + 6, 2);
    if (from.sin6_family == AF_INET && field == 0)
        return true;
    /* addresses, then protocol and UDP length (IPv6's 32-bit fields sum
     * the same) */
    proto_len[0] = htons(IPPROTO_UDP);
    proto_len[1] = htons((uint16_t)(plen + 8));
    pseudo = from.sin6_family == AF_INET ? dp_csum_add(0, f + l3 + 12, 8)
                                         : dp_csum_add(0, f + l3 + 8, 32);
    pseudo = dp_csum_add(pseudo, (const uint8_t *)proto_len, 4);
    partial = (uint16_t)~dp_csum_fold(pseudo);
    if (field == partial)
        return true;
    return dp_csum_fold(dp_csum_add(pseudo, f + l4, plen + 8)) == 0;
}

/* Roaming: the peer follows the latest authenticated source. A datagram
 * from the WAN's AF_XDP port (`frame` set) bypassed the kernel's UDP
 * checksum check, and a source address or port corrupted in flight must
 * not move the peer: its checksum is verified first (only when the source
 * is new to the peer). `intact`: the frame still holds what arrived (not
 * decrypted in place); when it does not, nothing can be verified and the
 * peer stays (its next datagram moves it). */
static void update_endpoint(struct dp_device *d, struct peer *p, const struct sockaddr_in6 *from,
                            const struct dp_xsk_frame *frame, bool intact)
{
    struct dp_endpoint ep;
    bool moved;

    sockaddr_to_endpoint(from, &ep);
    lock_take(&p->lock);
    moved = memcmp(&p->endpoint, &ep, sizeof(ep)) != 0;
    if (moved && !frame)
        p->endpoint = ep;
    lock_give(&p->lock);
    if (!moved || !frame)
        return;
    if (!intact || !outer_udp_checksum_ok(frame->data, frame->len)) {
        stat_add(&d->roams_refused, 1);
        return;
    }
    lock_take(&p->lock);
    p->endpoint = ep;
    lock_give(&p->lock);
}

/* A clear packet to the kernel through our end of the inner veth pair:
 * Ethernet to the kernel's end, whose neighbour entries are not needed
 * (the frame is addressed to its own MAC). */
static void inner_xmit(struct dp_device *d, struct burst *b, const uint8_t *pkt, uint32_t len,
                       int family)
{
    uint64_t addr;
    uint8_t *f;

    if (len + ETH_HEADER > DP_XSK_FRAME_SIZE) {
        count_drop(d, DP_DROP_TOO_BIG, 1);
        return;
    }
    f = dp_xsk_tx_frame(b->inner, &addr);
    if (!f) {
        count_drop(d, DP_DROP_SEND_FAILED, 1);
        return;
    }
    memcpy(f, b->inner_eth, 12);
    f[12] = family == DP_FAMILY_IPV6 ? 0x86 : 0x08;
    f[13] = family == DP_FAMILY_IPV6 ? 0xdd : 0x00;
    memcpy(f + ETH_HEADER, pkt, len);
    dp_xsk_tx_queue(b->inner, addr, ETH_HEADER + len);
}

/* A clear packet already in a transmit frame of the inner port, at
 * f + ETH_HEADER: the Ethernet header goes in front, and it is queued. */
static void inner_frame_xmit(struct burst *b, uint64_t addr, uint8_t *f, uint32_t len,
                             int family)
{
    memcpy(f, b->inner_eth, 12);
    f[12] = family == DP_FAMILY_IPV6 ? 0x86 : 0x08;
    f[13] = family == DP_FAMILY_IPV6 ? 0xdd : 0x00;
    dp_xsk_tx_queue(b->inner, addr, ETH_HEADER + len);
}

/* Decrypt and deliver segments first .. first+count-1 (at most
 * DP_DEVICE_BURST) of the burst. */
static void rx_chunk(struct dp_device *d, struct burst *b, int first, int count, uint64_t now)
{
    int ndata = 0;
    struct dp_wire w;

    wire_read(d, &w);
    /* classify: handshake messages to the control plane, data to the batch */
    for (int i = first; i < first + count; i++) {
        uint8_t *m = b->seg[i].p;
        uint32_t len = b->seg[i].len, kind, off;
        const struct sockaddr_in6 *from = &b->addr[b->seg[i].from];
        uint8_t wire;

        kind = dp_wire_classify(&w, m, len, &off, &wire);
        if (!kind) {
            count_drop(d, w.obfuscated ? DP_DROP_JUNK : DP_DROP_MALFORMED, 1);
            continue;
        }
        uint64_t counter;
        struct keypair *kp = NULL;

        if (kind == DP_WG_MSG_DATA)
            kp = dp_keypair_by_index(d, dp_load_le32(m + off + 4));
        /* A plain message whose bytes at S4 happen to fall in H4 (a chance
         * of |H4| in 2^32: an initiation's ephemeral key, a transport
         * message's counter) reads as an obfuscated transport message with
         * an index nobody holds: where plain WireGuard is accepted, it is
         * read again as plain. */
        if (kind == DP_WG_MSG_DATA && !kp && wire == DP_WIRE_OBFUSCATED && w.accept_plain) {
            uint32_t plain = dp_wire_plain_kind(m, len);

            if (plain == DP_WG_MSG_DATA) {
                kp = dp_keypair_by_index(d, dp_load_le32(m + 4));
                if (kp)
                    off = 0;
            } else if (plain) {
                kind = plain;
                off = 0;
                wire = DP_WIRE_PLAIN;
            }
        }
        if (kind != DP_WG_MSG_DATA) {
            handshake_event(d, m + off, len - off, from, kind, wire);
            continue;
        }
        if (!kp) {
            count_drop(d, DP_DROP_UNKNOWN_INDEX, 1);
            continue;
        }
        m += off;
        len -= off;
        memcpy(&counter, m + 8, 8);
        counter = le64toh(counter);
        if (now - kp->created_ns >= (uint64_t)DP_WG_REJECT_AFTER_TIME * NSEC_PER_SEC ||
            counter >= DP_WG_REJECT_AFTER_MESSAGES) {
            count_drop(d, DP_DROP_EXPIRED_KEY, 1);
            continue;
        }
        uint8_t *out = m + DP_WG_DATA_HEADER_LEN;

        b->tx_addr[ndata] = NO_FRAME;
        b->tx_used[ndata] = false;
        if (b->xsk && ETH_HEADER + len - DP_WG_DATA_HEADER_LEN <= DP_XSK_FRAME_SIZE) {
            uint8_t *f = dp_xsk_tx_frame(b->inner, &b->tx_addr[ndata]);

            if (f)
                out = f + ETH_HEADER;
            else
                b->tx_addr[ndata] = NO_FRAME;
        }
        if (b->tx_addr[ndata] == NO_FRAME)
            b->in_place = true;
        b->kp[ndata] = kp;
        b->idx[ndata] = i;
        b->len[ndata] = len;
        b->aead[ndata] = (struct dp_aead_msg){
            .key = kp->recv_key, .counter = counter, .len = len - DP_WG_DATA_HEADER_LEN,
            .src = m + DP_WG_DATA_HEADER_LEN, .dst = out};
        ndata++;
    }
    if (!ndata)
        return;

    dp_aead_open_batch(b->aead, (size_t)ndata);

    struct gro_pkt gro[DP_DEVICE_BURST];
    uint32_t ngro = 0;

    for (int j = 0; j < ndata; j++) {
        struct keypair *kp = b->kp[j];
        int i = b->idx[j];
        uint32_t plen = b->len[j] - DP_WG_DATA_MIN_LEN, pkt_len;
        uint8_t *pt = b->aead[j].dst;
        const uint8_t *src, *dst;
        int family, ok;
        struct peer *p;

        if (b->aead[j].status) {
            count_drop(d, DP_DROP_BAD_MAC, 1);
            continue;
        }
        spin_lock(&kp->replay_lock);
        ok = dp_replay_check(kp_replay(kp), b->aead[j].counter);
        spin_unlock(&kp->replay_lock);
        if (!ok) {
            count_drop(d, DP_DROP_REPLAY, 1);
            continue;
        }
        p = &d->peers[kp->peer_id];
        update_endpoint(d, p, &b->addr[b->seg[i].from],
                        b->rx_xsk ? &b->frames[b->seg[i].from] : NULL,
                        b->tx_addr[j] != NO_FRAME);
        stat_add(&p->rx_bytes, b->len[j]);
        stat_add(&p->rx_packets, 1);
        stat_set(&p->last_rx_ns, now);
        if (kp->is_initiator == 0)
            confirm_next(d, p, kp->peer_id, kp);
        if (kp->is_initiator && now - kp->created_ns >= REKEY_ON_RECEIVE_AGE)
            dp_want_handshake(d, p, kp->peer_id);
        if (plen == 0)
            continue; /* keepalive */
        stat_set(&p->last_rx_data_ns, now);
        pkt_len = inner_packet(pt, plen, &family, &src, &dst);
        if (!pkt_len) {
            count_drop(d, DP_DROP_INNER_MALFORMED, 1);
            continue;
        }
        if (dp_allowedips_lookup(d->allowedips, family, src) != kp->peer_id) {
            count_drop(d, DP_DROP_NOT_ALLOWED, 1);
            continue;
        }
        if (b->tx_addr[j] != NO_FRAME) {
            inner_frame_xmit(b, b->tx_addr[j], pt - ETH_HEADER, pkt_len, family);
            b->tx_used[j] = true;
        } else if (b->xsk) {
            inner_xmit(d, b, pt, pkt_len, family);
        } else if (d->cfg.tun_vnet_hdr) {
            /* written below, coalesced where possible (GRO); authenticated,
             * so the kernel need not verify checksums */
            gro[ngro++] = (struct gro_pkt){pt, pkt_len};
        } else if (write(b->tun_fd, pt, pkt_len) != (ssize_t)pkt_len) {
            count_drop(d, DP_DROP_SEND_FAILED, 1);
        }
    }
    if (b->xsk) {
        /* frames of messages that were dropped: their clear text (if any
         * was authenticated) goes before the frame is free again */
        for (int j = 0; j < ndata; j++) {
            if (b->tx_addr[j] != NO_FRAME && !b->tx_used[j]) {
                dp_wipe(b->aead[j].dst, b->len[j] - DP_WG_DATA_HEADER_LEN);
                dp_xsk_tx_unframe(b->inner, b->tx_addr[j]);
            }
        }
        count_drop(d, DP_DROP_SEND_FAILED, dp_xsk_tx_flush(b->inner));
    }
    if (ngro)
        count_drop(d, DP_DROP_SEND_FAILED, dp_gro_write(b->tun_fd, gro, ngro, b->gro_buf));
}

/* The split segments seg[0..nseg), DP_DEVICE_BURST at a time. */
static void rx_segments(struct dp_device *d, struct burst *b, int nseg, uint64_t now)
{
    for (int first = 0; first < nseg; first += DP_DEVICE_BURST)
        rx_chunk(d, b, first, nseg - first < DP_DEVICE_BURST ? nseg - first : DP_DEVICE_BURST,
                 now);
}

#define RX_SEGS (int)(sizeof(((struct burst *)0)->seg) / sizeof(((struct burst *)0)->seg[0]))

int dp_rx_pass(struct dp_device *d, struct burst *b, int fd, int reader)
{
    uint64_t now = dp_now_ns();
    int n, nseg = 0, done = 0;

    (void)reader;
    if (fd < 0)
        return 0;
    for (int i = 0; i < DP_DEVICE_BURST; i++) {
        b->iov[i] = (struct iovec){b->buf[i], b->buf_size};
        b->msg[i].msg_hdr = (struct msghdr){.msg_name = &b->addr[i],
                                            .msg_namelen = sizeof(b->addr[i]),
                                            .msg_iov = &b->iov[i], .msg_iovlen = 1,
                                            .msg_control = b->rx_ctrl[i],
                                            .msg_controllen = sizeof(b->rx_ctrl[i])};
    }
    n = recvmmsg(fd, b->msg, DP_DEVICE_BURST, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return 0;

    /* With UDP GRO the kernel hands over runs of datagrams from one source
     * in one buffer, all gso_size long but the last: split them back. How
     * many a buffer holds is the kernel's to say (UDP_MAX_SEGMENTS, 64
     * before Linux 6.x and 128 since; a local sender's GSO datagram reaches
     * a UDP_GRO socket whole), so when seg[] is full what it holds is
     * handled first (the buffers and msg[] stay as they are) and the split
     * goes on: every datagram is seen, none written past the array. */
    for (int i = 0; i < n; i++) {
        uint32_t len = b->msg[i].msg_len, step = len;

        if (b->msg[i].msg_hdr.msg_flags & MSG_TRUNC) {
            count_drop(d, DP_DROP_MALFORMED, 1);
            continue;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&b->msg[i].msg_hdr); c;
             c = CMSG_NXTHDR(&b->msg[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int gso;

                memcpy(&gso, CMSG_DATA(c), sizeof(gso));
                if (gso > 0 && (uint32_t)gso < len)
                    step = (uint32_t)gso;
            }
        }
        for (uint32_t off = 0; off < len || (len == 0 && off == 0); off += step ? step : 1) {
            if (nseg == RX_SEGS) {
                rx_segments(d, b, nseg, now);
                done += nseg;
                nseg = 0;
            }
            b->seg[nseg++] = (struct rx_seg){b->buf[i] + off, len - off < step ? len - off : step,
                                             (uint16_t)i};
            if (len == 0)
                break;
        }
    }
    rx_segments(d, b, nseg, now);
    return done + nseg;
}

/* The UDP payload of a frame from the WAN port, and its source; false for
 * anything that is not Ethernet (one VLAN tag at most) / IPv4 or IPv6 /
 * UDP with consistent lengths (the XDP program has checked this already;
 * the frame is parsed again because nothing from the wire is trusted). */
static bool outer_parse(uint8_t *f, uint32_t len, uint8_t **payload, uint32_t *plen,
                        struct sockaddr_in6 *from)
{
    uint32_t off = ETH_HEADER, l4, ulen;
    uint16_t proto, sport;

    if (len < ETH_HEADER)
        return false;
    proto = (uint16_t)(f[12] << 8 | f[13]);
    if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        if (len < ETH_HEADER + 4)
            return false;
        proto = (uint16_t)(f[16] << 8 | f[17]);
        off += 4;
    }
    memset(from, 0, sizeof(*from));
    if (proto == ETH_P_IPV4) {
        const uint8_t *ip = f + off;
        uint32_t ihl, total;

        if (len < off + 20 || (ip[0] >> 4) != 4 || ip[9] != IPPROTO_UDP)
            return false;
        ihl = (uint32_t)(ip[0] & 15) * 4;
        total = (uint32_t)ip[2] << 8 | ip[3];
        if (ihl < 20 || total < ihl + 8 || off + total > len || (ip[6] & 0x3f) || ip[7])
            return false; /* short, or a fragment */
        struct sockaddr_in *sin = (struct sockaddr_in *)from;

        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, ip + 12, 4);
        l4 = off + ihl;
        len = off + total;
    } else if (proto == ETH_P_IPV6) {
        const uint8_t *ip = f + off;
        uint32_t total;

        uint32_t next, at;

        if (len < off + 40 || (ip[0] >> 4) != 6)
            return false;
        total = 40 + ((uint32_t)ip[4] << 8 | ip[5]);
        if (total < 48 || off + total > len)
            return false;
        /* hop-by-hop, routing and destination options may come first (the
         * XDP program steers them); a fragment never reaches here whole */
        next = ip[6];
        at = off + 40;
        for (int k = 0; k < 8 && (next == 0 || next == 43 || next == 60); k++) {
            if (at + 8 > off + total)
                return false;
            next = f[at];
            at += 8 + (uint32_t)f[at + 1] * 8;
        }
        if (next != IPPROTO_UDP || at + 8 > off + total)
            return false;
        from->sin6_family = AF_INET6;
        memcpy(&from->sin6_addr, ip + 8, 16);
        l4 = at;
        len = off + total;
    } else {
        return false;
    }
    ulen = (uint32_t)f[l4 + 4] << 8 | f[l4 + 5];
    if (ulen < 8 || l4 + ulen > len)
        return false;
    sport = (uint16_t)(f[l4] << 8 | f[l4 + 1]);
    if (from->sin6_family == AF_INET)
        ((struct sockaddr_in *)from)->sin_port = htons(sport);
    else
        from->sin6_port = htons(sport);
    *payload = f + l4 + 8;
    *plen = ulen - 8;
    return true;
}

/* Decap from the WAN AF_XDP port: WireGuard messages in frames. */
static int xsk_rx_pass(struct dp_device *d, struct burst *b)
{
    uint64_t now = dp_now_ns();
    uint32_t n = dp_xsk_rx(b->wan, b->frames, DP_DEVICE_BURST);
    int nseg = 0;

    for (uint32_t i = 0; i < n; i++) {
        uint8_t *payload;
        uint32_t plen;

        if (!outer_parse(b->frames[i].data, b->frames[i].len, &payload, &plen, &b->addr[i])) {
            count_drop(d, DP_DROP_MALFORMED, 1);
            continue;
        }
        b->seg[nseg++] = (struct rx_seg){payload, plen, (uint16_t)i};
    }
    b->in_place = false;
    b->rx_xsk = true;
    if (nseg)
        rx_chunk(d, b, 0, nseg, now);
    b->rx_xsk = false;
    /* what was decrypted in place (no transmit frame was free) leaves the
     * frames before they are reused */
    for (uint32_t i = 0; b->in_place && i < n; i++)
        dp_wipe(b->frames[i].data, b->frames[i].len);
    dp_xsk_rx_release(b->wan, b->frames, n);
    return (int)n;
}

static int tx_flush(struct dp_device *d, struct burst *b, int n, uint64_t now,
                    bool from_frames);

/* Encap from the inner AF_XDP port: the kernel routed these packets to
 * the tunnel interface. */
static int xsk_inner_pass(struct dp_device *d, struct burst *b)
{
    uint64_t now = dp_now_ns();
    uint32_t n = dp_xsk_rx(b->inner, b->frames, DP_DEVICE_BURST);
    int k = 0;

    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *f = b->frames[i].data;
        uint32_t len = b->frames[i].len;
        uint16_t proto;

        if (len <= ETH_HEADER)
            continue;
        proto = (uint16_t)(f[12] << 8 | f[13]);
        /* the kernel's own multicast (IPv6 neighbour and router
         * solicitations, MLD) has no peer behind it */
        if (f[0] & 1)
            continue;
        if ((proto != ETH_P_IPV4 && proto != ETH_P_IPV6) || len - ETH_HEADER > INNER_MAX_BYTES) {
            count_drop(d, DP_DROP_INNER_MALFORMED, 1);
            continue;
        }
        /* encrypted from here (tx_flush pads it in the frame) */
        b->pkt[k] = b->frames[i].data + ETH_HEADER;
        b->len[k++] = len - ETH_HEADER;
    }
    if (k)
        tx_flush(d, b, k, now, true);
    /* the clear text leaves the frames before they are reused */
    for (uint32_t i = 0; i < n; i++)
        dp_wipe(b->frames[i].data, b->frames[i].len);
    dp_xsk_rx_release(b->inner, b->frames, n);
    return (int)n;
}

/* ---------------------------------------------------------------- send */

/* Header, zero padding (whitepaper 5.4.6) and AEAD job for one packet of
 * plen bytes at buf + header; returns the padded plaintext length. */
static uint32_t padded_len(struct dp_device *d, uint32_t plen)
{
    uint32_t padded = (plen + DP_WG_PADDING - 1) & ~(uint32_t)(DP_WG_PADDING - 1);
    uint32_t mtu = atomic_load_explicit(&d->mtu, memory_order_relaxed);

    if (padded > mtu)
        padded = plen > mtu ? plen : mtu;
    return padded;
}

/* The same, with the clear packet at pkt (padded there) and the message
 * (header, then cipher text) written to msg. */
static uint32_t prepare_data_to(struct dp_device *d, uint8_t *msg, uint8_t *pkt, uint32_t plen,
                                struct keypair *kp, uint64_t counter, struct dp_aead_msg *job,
                                uint32_t header)
{
    uint32_t padded = padded_len(d, plen);
    uint32_t type = htole32(header), index = htole32(kp->remote_index);
    uint64_t ctr = htole64(counter);

    memset(pkt + plen, 0, padded - plen);
    memcpy(msg, &type, 4);
    memcpy(msg + 4, &index, 4);
    memcpy(msg + 8, &ctr, 8);
    *job = (struct dp_aead_msg){.key = kp->send_key, .counter = counter, .len = padded,
                                .src = pkt, .dst = msg + DP_WG_DATA_HEADER_LEN};
    return padded;
}

static uint32_t prepare_data(struct dp_device *d, uint8_t *buf, uint32_t plen,
                             struct keypair *kp, uint64_t counter, struct dp_aead_msg *job,
                             uint32_t header)
{
    return prepare_data_to(d, buf, buf + DP_WG_DATA_HEADER_LEN, plen, kp, counter, job, header);
}

/* Take a counter from kp for sending, or fail when it cannot send. */
static bool take_counter(struct keypair *kp, uint64_t now, uint64_t *counter)
{
    if (!dp_keypair_can_send(kp, now))
        return false;
    *counter = atomic_fetch_add_explicit(&kp->send_counter, 1, memory_order_relaxed);
    return *counter < DP_WG_REJECT_AFTER_MESSAGES;
}

static void maybe_rekey(struct dp_device *d, struct peer *p, uint32_t peer_id,
                        struct keypair *kp, uint64_t now, uint64_t counter)
{
    if (kp->is_initiator &&
        (now - kp->created_ns >= (uint64_t)DP_WG_REKEY_AFTER_TIME * NSEC_PER_SEC ||
         counter >= DP_WG_REKEY_AFTER_MESSAGES))
        dp_want_handshake(d, p, peer_id);
}

static void stage(struct dp_device *d, struct peer *p, uint32_t peer_id, const uint8_t *pkt,
                  uint32_t len, uint64_t now)
{
    struct staged *s = malloc(sizeof(*s) + len);
    bool full;

    if (!s) {
        count_drop(d, DP_DROP_STAGED_FULL, 1);
        return;
    }
    s->next = NULL;
    s->len = len;
    memcpy(s->data, pkt, len);
    lock_take(&p->lock);
    full = p->staged_count >= DP_DEVICE_STAGED_MAX;
    if (!full) {
        if (p->staged_tail)
            p->staged_tail->next = s;
        else
            p->staged_head = s;
        p->staged_tail = s;
        p->staged_count++;
    }
    lock_give(&p->lock);
    if (full) {
        free(s);
        count_drop(d, DP_DROP_STAGED_FULL, 1);
    }
    /* The caller found no usable keypair, but one may have been installed
     * since, and its install may have flushed the queue before this
     * packet joined it. Installs set the keypair before they flush, and
     * the lock orders that against the append above: if the keypair is
     * usable now, the packet goes with it at once. Asking for a handshake
     * instead would leave the packet waiting, and start a needless second
     * handshake that the first one's answer then races. */
    if (dp_keypair_can_send(atomic_load_explicit(&p->current, memory_order_acquire), now))
        dp_flush_staged(d, peer_id);
    else
        dp_want_handshake(d, p, peer_id);
}

/* Send the prepared messages of one family with sendmmsg. */
static void send_out(struct dp_device *d, struct burst *b, int fam, int count)
{
    int fd = fam ? b->udp6_fd : b->udp4_fd, sent = 0;

    while (sent < count) {
        int r = sendmmsg(fd, b->out[fam] + sent, (unsigned)(count - sent), MSG_DONTWAIT);

        if (r <= 0) {
            struct msghdr *m = &b->out[fam][sent].msg_hdr;

            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && m->msg_iovlen > 1 && (errno == EIO || errno == EINVAL) &&
                !d->no_udp_gso) {
                /* no UDP GSO on this path (an old kernel, or a device
                 * without checksum offload): send one by one from now on */
                size_t step = b->out_step[fam][sent];

                d->no_udp_gso = true;
                for (size_t i = 0; i < m->msg_iovlen; i += step)
                    if (sendmsg(fd, &(struct msghdr){.msg_name = m->msg_name,
                                                     .msg_namelen = m->msg_namelen,
                                                     .msg_iov = &m->msg_iov[i],
                                                     .msg_iovlen = step},
                                MSG_DONTWAIT) < 0)
                        count_drop(d, DP_DROP_SEND_FAILED, 1);
                sent++;
                continue;
            }
            for (int i = sent; i < count; i++)
                count_drop(d, DP_DROP_SEND_FAILED,
                           b->out[fam][i].msg_hdr.msg_iovlen / b->out_step[fam][i]);
            return;
        }
        sent += r;
    }
}

/* Queue a message for sending, with pad_len bytes of AmneziaWG padding
 * at pad in front (pad_len 0: none). Consecutive messages to the same
 * endpoint with the same size and padding (the segments of one TSO packet,
 * typically) share one sendmmsg entry with UDP_SEGMENT: the kernel builds
 * the datagrams (UDP GSO), one trip through the stack instead of one per
 * packet. The last datagram of a group may be shorter. */
static void queue_out(struct dp_device *d, struct burst *b, struct out_state *o,
                      const struct dp_endpoint *ep, uint8_t *pad, size_t pad_len, uint8_t *data,
                      size_t msg_len)
{
    int fam = ep->family == DP_ENDPOINT_IPV6, k = o->nmsg[fam] - 1, v = o->niov[fam];
    struct msghdr *m = k >= 0 ? &b->out[fam][k].msg_hdr : NULL;
    size_t len = pad_len + msg_len, step = pad_len ? 2 : 1;

    if (pad_len)
        b->out_iov[fam][v++] = (struct iovec){pad, pad_len};
    b->out_iov[fam][v++] = (struct iovec){data, msg_len};
    o->niov[fam] = v;
    if (m && !d->no_udp_gso && o->seg[fam] && len <= o->seg[fam] &&
        o->last_len[fam] == o->seg[fam] && o->nseg[fam] < UDP_GSO_MAX_SEGMENTS &&
        o->pad[fam] == pad_len && o->bytes[fam] + len <= UDP_GSO_MAX_BYTES &&
        !memcmp(&o->ep[fam], ep, sizeof(*ep))) {
        m->msg_iovlen += step;
        o->nseg[fam]++;
        o->bytes[fam] += len;
        o->last_len[fam] = len;
        if (o->nseg[fam] == 2) {
            struct cmsghdr *c = (struct cmsghdr *)b->ctrl[fam][k];
            uint16_t seg = (uint16_t)o->seg[fam];

            m->msg_control = b->ctrl[fam][k];
            m->msg_controllen = CMSG_SPACE(sizeof(seg));
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(seg));
            memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        }
        return;
    }
    k = o->nmsg[fam]++;
    socklen_t salen = endpoint_to_sockaddr(ep, &b->out_addr[fam][k]);

    b->out[fam][k].msg_hdr = (struct msghdr){.msg_name = &b->out_addr[fam][k],
                                             .msg_namelen = salen,
                                             .msg_iov = &b->out_iov[fam][v - step],
                                             .msg_iovlen = step};
    b->out_step[fam][k] = (uint8_t)step;
    o->ep[fam] = *ep;
    o->seg[fam] = o->last_len[fam] = o->bytes[fam] = len;
    o->pad[fam] = pad_len;
    o->nseg[fam] = 1;
}

#define IPV4_HEADER 20
#define IPV6_HEADER 40
#define UDP_HEADER 8

/* Ask the control plane for an outer route to p's endpoint, at most once a
 * second per peer. */
static void want_route(struct dp_device *d, struct peer *p, uint32_t peer_id,
                       const struct dp_endpoint *ep, uint64_t now)
{
    uint64_t last = atomic_load_explicit(&p->route_asked_ns, memory_order_relaxed);

    if (last && now - last < NSEC_PER_SEC)
        return;
    if (!atomic_compare_exchange_strong(&p->route_asked_ns, &last, now))
        return;
    stat_add(&d->route_requests, 1);
    dp_event_push(d, &(struct dp_event){.type = DP_EVENT_NEED_ROUTE, .peer_id = peer_id,
                                        .endpoint = *ep});
}

/* A transmit frame of the WAN AF_XDP port for a data message of len
 * bytes to ep, with the outer headers of its route in front: returns
 * where the message goes (its address in *addr), or NULL when it must take
 * the kernel's path (no route yet, the route leaves by another WAN
 * interface than this worker's, no free frame). wan_frame_end queues
 * it once the message is there. UDP over IPv4 goes without a checksum, as
 * IPv4 allows (the message authenticates itself); over IPv6 it has one,
 * computed by wan_frame_end. */
static uint8_t *wan_frame_begin(struct dp_device *d, struct burst *b,
                                const struct dp_endpoint *ep, uint32_t peer_id, uint32_t len,
                                uint64_t now, uint64_t *addr)
{
    struct dp_route r;
    bool v6 = ep->family == DP_ENDPOINT_IPV6;
    uint32_t ip_len = v6 ? IPV6_HEADER : IPV4_HEADER;
    uint32_t hdr = ETH_HEADER + ip_len + UDP_HEADER;
    uint16_t ulen = (uint16_t)(UDP_HEADER + len);
    uint8_t *f, *ip, *udp;

    if (!dp_route_lookup(d, ep->family, ep->addr, &r)) {
        want_route(d, &d->peers[peer_id], peer_id, ep, now);
        return NULL;
    }
    if (r.ifindex && r.ifindex != b->wan_ifindex)
        return NULL;
    if (hdr + len > DP_XSK_FRAME_SIZE || !(f = dp_xsk_tx_frame(b->wan, addr)))
        return NULL;
    memcpy(f, r.dst_mac, 6);
    memcpy(f + 6, r.src_mac, 6);
    f[12] = v6 ? 0x86 : 0x08;
    f[13] = v6 ? 0xdd : 0x00;
    ip = f + ETH_HEADER;
    udp = ip + ip_len;
    if (v6) {
        uint32_t vtf = htonl(6u << 28);
        uint16_t plen = htons(ulen);

        memcpy(ip, &vtf, 4);
        memcpy(ip + 4, &plen, 2);
        ip[6] = IPPROTO_UDP;
        ip[7] = 64;
        memcpy(ip + 8, r.src, 16);
        memcpy(ip + 24, ep->addr, 16);
    } else {
        uint16_t total = htons((uint16_t)(IPV4_HEADER + ulen)), id = htons((uint16_t)b->ip_id++);
        uint16_t csum;

        ip[0] = 0x45;
        ip[1] = 0;
        memcpy(ip + 2, &total, 2);
        memcpy(ip + 4, &id, 2);
        ip[6] = ip[7] = 0;
        ip[8] = 64;
        ip[9] = IPPROTO_UDP;
        ip[10] = ip[11] = 0;
        memcpy(ip + 12, r.src, 4);
        memcpy(ip + 16, ep->addr, 4);
        csum = dp_csum_fold(dp_csum_add(0, ip, IPV4_HEADER));
        memcpy(ip + 10, &csum, 2);
    }
    uint16_t sport = htons(r.src_port), dport = htons(ep->port), ulen_be = htons(ulen);

    memcpy(udp, &sport, 2);
    memcpy(udp + 2, &dport, 2);
    memcpy(udp + 4, &ulen_be, 2);
    udp[6] = udp[7] = 0;
    return udp + UDP_HEADER;
}

/* The message of len bytes is at msg (from wan_frame_begin): the IPv6 UDP
 * checksum, and the frame is queued. */
static void wan_frame_end(struct burst *b, uint64_t addr, uint8_t *msg, uint32_t len)
{
    uint8_t *udp = msg - UDP_HEADER, *f = xsk_umem__get_data(b->wan->area, addr);
    uint16_t ulen = (uint16_t)(UDP_HEADER + len);

    if (f[12] == 0x86) {
        /* pseudo-header: addresses, upper-layer length, next header */
        const uint8_t *ip = f + ETH_HEADER;
        uint8_t pseudo[40] = {0};
        uint16_t csum;

        memcpy(pseudo, ip + 8, 32);
        pseudo[34] = (uint8_t)(ulen >> 8);
        pseudo[35] = (uint8_t)ulen;
        pseudo[39] = IPPROTO_UDP;
        csum = dp_csum_fold(dp_csum_add(dp_csum_add(0, pseudo, sizeof(pseudo)), udp, ulen));
        if (!csum)
            csum = 0xffff;
        memcpy(udp + 6, &csum, 2);
    }
    dp_xsk_tx_queue(b->wan, addr, (uint32_t)(msg - f) + len);
}

/* Read one packet from the TUN into the burst: with the virtio-net header,
 * a TSO super-packet becomes several burst slots (b->tso_* keeps the part
 * that did not fit for the next flush). Returns slots filled, 0 at EAGAIN. */
static int tun_read(struct dp_device *d, struct burst *b, int n)
{
    uint32_t room = DP_DEVICE_BURST - (uint32_t)n, total = 0;
    uint8_t *out[DP_DEVICE_BURST];
    int got;

    if (!d->cfg.tun_vnet_hdr) {
        ssize_t r = read(b->tun_fd, b->buf[n] + DP_WG_DATA_HEADER_LEN, INNER_MAX_BYTES);

        if (r <= 0)
            return 0;
        b->len[n] = (uint32_t)r;
        return 1;
    }
    if (!b->tso_pending) {
        ssize_t r = read(b->tun_fd, b->super, VNET_HDR_LEN + TUN_SUPER_MAX);

        if (r < VNET_HDR_LEN) {
            if (r >= 0)
                count_drop(d, DP_DROP_INNER_MALFORMED, 1);
            return r < 0 ? 0 : -1;
        }
        memcpy(&b->tso_hdr, b->super, sizeof(b->tso_hdr));
        b->tso_len = (size_t)r - VNET_HDR_LEN;
        b->tso_next = 0;
        if ((b->tso_hdr.gso_type & ~VNET_GSO_ECN) == VNET_GSO_NONE) {
            uint8_t *pkt = b->super + VNET_HDR_LEN;

            if (b->tso_len > INNER_MAX_BYTES ||
                ((b->tso_hdr.flags & VNET_F_NEEDS_CSUM) &&
                 dp_offload_finish_csum(&b->tso_hdr, pkt, b->tso_len))) {
                count_drop(d, b->tso_len > INNER_MAX_BYTES ? DP_DROP_TOO_BIG
                                                           : DP_DROP_INNER_MALFORMED, 1);
                return -1;
            }
            memcpy(b->buf[n] + DP_WG_DATA_HEADER_LEN, pkt, b->tso_len);
            b->len[n] = (uint32_t)b->tso_len;
            return 1;
        }
        b->tso_pending = true;
    }
    for (uint32_t i = 0; i < room; i++)
        out[i] = b->buf[n + (int)i] + DP_WG_DATA_HEADER_LEN;
    got = dp_tso_segment(&b->tso_hdr, b->super + VNET_HDR_LEN, b->tso_len, INNER_MAX_BYTES,
                         b->tso_next, out, &b->len[n], room, &total);
    if (got < 0) {
        b->tso_pending = false;
        count_drop(d, DP_DROP_INNER_MALFORMED, 1);
        return -1;
    }
    b->tso_next += (uint32_t)got;
    if (b->tso_next >= total)
        b->tso_pending = false;
    return got;
}

static int tx_flush(struct dp_device *d, struct burst *b, int n, uint64_t now,
                    bool from_frames);

int dp_tx_pass(struct dp_device *d, struct burst *b, int reader)
{
    uint64_t now = dp_now_ns();
    int n = 0, handled = 0;

    (void)reader;
    for (;;) {
        int got = tun_read(d, b, n);

        if (got == 0 && !b->tso_pending)
            break;
        if (got > 0)
            n += got;
        if (n == DP_DEVICE_BURST) {
            handled += tx_flush(d, b, n, now, false);
            n = 0;
            if (handled >= 4 * DP_DEVICE_BURST)
                break; /* let the receive side have a turn */
        }
    }
    if (n)
        handled += tx_flush(d, b, n, now, false);
    return handled;
}

/* Classify, encrypt and send the n packets of the burst: at
 * b->buf[i] + DP_WG_DATA_HEADER_LEN, or (from_frames) at b->pkt[i], in
 * receive frames of the inner AF_XDP port with room behind them for the
 * padding. */
static int tx_flush(struct dp_device *d, struct burst *b, int n, uint64_t now, bool from_frames)
{
    struct dp_endpoint ep[DP_DEVICE_BURST];
    struct out_state out = {0};
    int njobs = 0;
    struct dp_wire w;
    bool obfuscate;

    wire_read(d, &w);
    /* messages of obfuscated keypairs get S4 random bytes and an H4 type */
    obfuscate = w.obfuscated && pad_room(b, w.padding[3]) == 0;
    for (int i = 0; i < n; i++) {
        uint8_t *pkt = from_frames ? b->pkt[i] : b->buf[i] + DP_WG_DATA_HEADER_LEN;
        const uint8_t *src, *dst;
        int family;
        uint32_t plen = inner_packet(pkt, b->len[i], &family, &src, &dst), peer_id;
        struct keypair *kp;
        struct peer *p;
        uint64_t counter;

        if (!plen) {
            count_drop(d, DP_DROP_INNER_MALFORMED, 1);
            continue;
        }
        peer_id = dp_allowedips_lookup(d->allowedips, family, dst);
        if (peer_id == DP_PEER_NONE || peer_id >= d->cfg.max_peers ||
            !d->peers[peer_id].in_use) {
            count_drop(d, DP_DROP_NO_ROUTE, 1);
            continue;
        }
        p = &d->peers[peer_id];
        lock_take(&p->lock);
        ep[njobs] = p->endpoint;
        lock_give(&p->lock);
        if (ep[njobs].family == DP_ENDPOINT_NONE ||
            (ep[njobs].family == DP_ENDPOINT_IPV4 ? b->udp4_fd : b->udp6_fd) < 0) {
            count_drop(d, DP_DROP_NO_ENDPOINT, 1);
            continue;
        }
        kp = atomic_load_explicit(&p->current, memory_order_acquire);
        if (!take_counter(kp, now, &counter)) {
            stage(d, p, peer_id, pkt, plen, now);
            continue;
        }
        maybe_rekey(d, p, peer_id, kp, now, counter);
        b->idx[njobs] = i;
        b->peer[njobs] = peer_id;
        b->wan_addr[njobs] = NO_FRAME;
        uint32_t pad = 0, header = DP_WG_MSG_DATA;

        if (kp->wire == DP_WIRE_OBFUSCATED && obfuscate) {
            pad = w.padding[3];
            header = wire_header(b, w.header_min[3], w.header_max[3]);
        }
        b->pad_len[njobs] = pad;
        /* straight into a WAN frame when the route is known and a frame
         * is free; else the message is built in buf for the kernel's path */
        uint32_t padded = padded_len(d, plen);
        uint8_t *msg = NULL;

        if (b->xsk && (!from_frames || ETH_HEADER + padded <= DP_XSK_FRAME_SIZE))
            msg = wan_frame_begin(d, b, &ep[njobs], peer_id, pad + DP_WG_DATA_MIN_LEN + padded,
                                  now, &b->wan_addr[njobs]);
        if (msg) {
            b->wan_frame[njobs] = msg;
            if (pad) {
                rnd_fill(b, msg, pad);
                msg += pad;
            }
        } else {
            b->wan_addr[njobs] = NO_FRAME;
            msg = b->buf[i];
            if (pkt != msg + DP_WG_DATA_HEADER_LEN) {
                memcpy(msg + DP_WG_DATA_HEADER_LEN, pkt, plen);
                pkt = msg + DP_WG_DATA_HEADER_LEN;
            }
        }
        if (pad && b->wan_addr[njobs] == NO_FRAME)
            rnd_fill(b, b->pad + (size_t)njobs * b->pad_cap, pad);
        b->len[i] = prepare_data_to(d, msg, pkt, plen, kp, counter, &b->aead[njobs], header);
        njobs++;
    }
    if (!njobs)
        return n;
    dp_aead_seal_batch(b->aead, (size_t)njobs);
    for (int j = 0; j < njobs; j++) {
        int i = b->idx[j];
        uint32_t wire = DP_WG_DATA_MIN_LEN + b->len[i];
        struct peer *p = &d->peers[b->peer[j]];

        if (b->wan_addr[j] != NO_FRAME) {
            wan_frame_end(b, b->wan_addr[j], b->wan_frame[j], b->pad_len[j] + wire);
            stat_add(&d->wan_xsk_tx, 1);
        } else {
            if (b->xsk)
                stat_add(&d->wan_kernel_tx, 1);
            queue_out(d, b, &out, &ep[j], b->pad + (size_t)j * b->pad_cap, b->pad_len[j],
                      b->buf[i], wire);
        }
        stat_add(&p->tx_bytes, wire);
        stat_add(&p->tx_packets, 1);
        stat_set(&p->last_tx_ns, now);
        stat_set(&p->last_tx_data_ns, now);
    }
    if (b->xsk)
        count_drop(d, DP_DROP_SEND_FAILED, dp_xsk_tx_flush(b->wan));
    for (int fam = 0; fam < 2; fam++)
        if (out.nmsg[fam])
            send_out(d, b, fam, out.nmsg[fam]);
    return n;
}

/* Staged packets and keepalives are rare: one message at a time, from
 * whichever thread installed the keypair. */
static int send_one(struct dp_device *d, uint32_t peer_id, const uint8_t *pkt, uint32_t plen)
{
    struct peer *p = &d->peers[peer_id];
    struct dp_aead_msg job;
    struct dp_endpoint ep;
    struct keypair *kp;
    uint64_t now = dp_now_ns(), counter;
    uint32_t padded, pad = 0, header = DP_WG_MSG_DATA;
    struct dp_wire w;
    uint8_t *buf;
    int err = 0;

    wire_read(d, &w);
    buf = malloc(d->buf_size + (w.obfuscated ? w.padding[3] : 0));
    if (!buf)
        return -ENOMEM;
    lock_take(&p->lock);
    ep = p->endpoint;
    lock_give(&p->lock);
    kp = atomic_load(&p->current);
    if (ep.family == DP_ENDPOINT_NONE) {
        err = -EDESTADDRREQ;
    } else if (!take_counter(kp, now, &counter)) {
        err = -ENOKEY;
    } else {
        if (kp->wire == DP_WIRE_OBFUSCATED && w.obfuscated) {
            /* rare (staged packets, keepalives): the kernel's randomness */
            pad = w.padding[3];
            if (getrandom(buf, pad, 0) != (ssize_t)pad ||
                getrandom(&header, sizeof(header), 0) != sizeof(header))
                pad = 0, err = -EIO;
            else if (w.header_min[3] != w.header_max[3])
                header = w.header_min[3] +
                         (uint32_t)(((uint64_t)header * ((uint64_t)w.header_max[3] -
                                                         w.header_min[3] + 1)) >> 32);
            else
                header = w.header_min[3];
        }
        if (plen) /* a keepalive has no packet (pkt NULL: no memcpy of it) */
            memcpy(buf + pad + DP_WG_DATA_HEADER_LEN, pkt, plen);
        padded = prepare_data(d, buf + pad, plen, kp, counter, &job, header);
        dp_aead_seal_batch(&job, 1);
        if (!err)
            err = dp_sendto(d, &ep, buf, pad + DP_WG_DATA_MIN_LEN + padded);
        if (!err) {
            stat_add(&p->tx_bytes, DP_WG_DATA_MIN_LEN + padded);
            stat_add(&p->tx_packets, 1);
            stat_set(&p->last_tx_ns, now);
            if (plen)
                stat_set(&p->last_tx_data_ns, now);
        }
    }
    dp_wipe(buf, d->buf_size + pad);
    free(buf);
    return err;
}

void dp_flush_staged(struct dp_device *d, uint32_t peer_id)
{
    struct peer *p = &d->peers[peer_id];
    struct staged *list;

    lock_take(&p->lock);
    list = p->staged_head;
    p->staged_head = p->staged_tail = NULL;
    p->staged_count = 0;
    lock_give(&p->lock);
    while (list) {
        struct staged *s = list;

        list = s->next;
        if (send_one(d, peer_id, s->data, s->len))
            count_drop(d, DP_DROP_SEND_FAILED, 1);
        dp_wipe(s->data, s->len);
        free(s);
    }
}

int dp_device_peer_keepalive(struct dp_device *d, uint32_t peer_id)
{
    int err;

    if (peer_id >= d->cfg.max_peers || !d->peers[peer_id].in_use)
        return -ENOENT;
    err = send_one(d, peer_id, NULL, 0);
    if (err < 0 && err != -ENOKEY && err != -EDESTADDRREQ && err != -ENOMEM)
        count_drop(d, DP_DROP_SEND_FAILED, 1);
    return err;
}

/* ---------------------------------------------------------------- threads */

/* A thread of the data path holds pointers into two structures the
 * control plane changes: keypairs (our own quiescent-state counters) and
 * the allowed-IPs trie (its reclamation scheme). It reports to both. */
static void reader_quiescent(struct dp_device *d, int reader)
{
    atomic_store(&d->qs_reader[reader], atomic_load(&d->qs_epoch));
    dp_allowedips_reader_quiescent(d->allowedips, d->aip_reader[reader]);
}

static void reader_online(struct dp_device *d, int reader)
{
    dp_allowedips_reader_online(d->allowedips, d->aip_reader[reader]);
    reader_quiescent(d, reader);
}

static void reader_offline(struct dp_device *d, int reader)
{
    atomic_store(&d->qs_reader[reader], 0);
    dp_allowedips_reader_offline(d->allowedips, d->aip_reader[reader]);
}

/* sockets: the UDP sockets may have something (poll() said so, or we do
 * not know). */
static int one_pass(struct dp_device *d, struct burst *b, int reader, bool sockets)
{
    int n = 0;

    reader_online(d, reader);
    if (b->xsk) {
        n += xsk_rx_pass(d, b);
        reader_quiescent(d, reader);
        n += xsk_inner_pass(d, b);
        reader_quiescent(d, reader);
        /* With XDP, the sockets get only what the program lets through,
         * which is rare: while the AF_XDP ports are busy, they are looked
         * at every XSK_SOCKET_PASS_EVERY passes, not with two empty
         * recvmmsg calls per burst; a worker about to sleep leaves them
         * to poll(), which wakes it at once if they have something. */
        if (!sockets && (!n || ++b->busy_passes % XSK_SOCKET_PASS_EVERY))
            return n;
    }
    n += dp_rx_pass(d, b, b->udp4_fd, reader);
    n += dp_rx_pass(d, b, b->udp6_fd, reader);
    reader_quiescent(d, reader);
    /* the XDP backend has no TUN */
    if (b->tun_fd >= 0) {
        n += dp_tx_pass(d, b, reader);
        reader_quiescent(d, reader);
    }
    return n;
}

int dp_device_poll_once(struct dp_device *d)
{
    int n;

    n = one_pass(d, d->bursts[POLL_READER], POLL_READER, true);
    reader_offline(d, POLL_READER);
    return n;
}

int dp_device_test_rx(struct dp_device *d, const uint8_t *const *msgs, const uint32_t *lens,
                      uint32_t n, const struct dp_endpoint *from)
{
    struct burst *b = d->bursts[POLL_READER];
    struct sockaddr_in6 sa;

    if (!msgs || !lens || !from || n > DP_DEVICE_BURST || d->running)
        return -EINVAL;
    endpoint_to_sockaddr(from, &sa);
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > b->buf_size)
            return -EINVAL;
        memcpy(b->buf[i], msgs[i], lens[i]);
        memcpy(&b->addr[i], &sa, sizeof(sa));
        b->seg[i] = (struct rx_seg){b->buf[i], lens[i], (uint16_t)i};
    }
    reader_online(d, POLL_READER);
    rx_chunk(d, b, 0, (int)n, dp_now_ns());
    reader_offline(d, POLL_READER);
    return (int)n;
}

int dp_device_test_tx(struct dp_device *d, const uint8_t *const *pkts, const uint32_t *lens,
                      uint32_t n)
{
    struct burst *b = d->bursts[POLL_READER];

    if (!pkts || !lens || n > DP_DEVICE_BURST || d->running)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > INNER_MAX_BYTES)
            return -EINVAL;
        memcpy(b->buf[i] + DP_WG_DATA_HEADER_LEN, pkts[i], lens[i]);
        b->len[i] = lens[i];
    }
    reader_online(d, POLL_READER);
    tx_flush(d, b, (int)n, dp_now_ns(), false);
    reader_offline(d, POLL_READER);
    return (int)n;
}

int dp_device_test_stage(struct dp_device *d, uint32_t peer_id, const uint8_t *pkt, uint32_t len)
{
    if (!pkt || len > INNER_MAX_BYTES || d->running || peer_id >= d->cfg.max_peers ||
        !d->peers[peer_id].in_use)
        return -EINVAL;
    reader_online(d, POLL_READER);
    stage(d, &d->peers[peer_id], peer_id, pkt, len, dp_now_ns());
    reader_offline(d, POLL_READER);
    return 0;
}

int dp_device_test_outer_checksum(const uint8_t *frame, uint32_t len)
{
    uint8_t *payload;
    uint32_t plen;
    struct sockaddr_in6 sa;

    if (!frame || !outer_parse((uint8_t *)frame, len, &payload, &plen, &sa))
        return -EINVAL;
    return outer_udp_checksum_ok(frame, len) ? 1 : 0;
}

int dp_device_test_outer_parse(const uint8_t *frame, uint32_t len, uint32_t *payload_off,
                               uint32_t *payload_len, struct dp_endpoint *from)
{
    struct sockaddr_in6 sa;
    uint8_t *payload;

    if (!frame || !payload_off || !payload_len || !from)
        return -EINVAL;
    /* outer_parse does not write to the frame */
    if (!outer_parse((uint8_t *)frame, len, &payload, payload_len, &sa))
        return -EINVAL;
    *payload_off = (uint32_t)(payload - frame);
    sockaddr_to_endpoint(&sa, from);
    return 0;
}

void *dp_worker_main(void *arg)
{
    struct worker *wk = arg;
    struct dp_device *d = wk->d;
    int w = wk->index;
    struct burst *b = d->bursts[w];
    int wan_fd, inner_fd;

    dp_burst_xsk_fds(b, &wan_fd, &inner_fd);
    struct pollfd fds[6] = {
        {.fd = d->stop_fd, .events = POLLIN},
        {.fd = b->tun_fd, .events = POLLIN},
        {.fd = b->udp4_fd, .events = POLLIN},
        {.fd = b->udp6_fd, .events = POLLIN},
        {.fd = wan_fd, .events = POLLIN},
        {.fd = inner_fd, .events = POLLIN},
    };

    bool sockets = true;
    uint64_t idle_since = 0;
    char name[16];

    /* what top -H, ps -L and perf show for this thread */
    snprintf(name, sizeof(name), "dp-worker-%d", w);
    pthread_setname_np(pthread_self(), name);
    while (!atomic_load_explicit(&d->stopping, memory_order_relaxed)) {
        /* Busy bursts go on without sleeping; an idle worker goes offline
         * so that retired keypairs need not wait for it. The stop eventfd
         * is never read here, so it wakes every sleeping worker; one that
         * never runs out of work sees d->stopping. */
        if (one_pass(d, b, w, sockets) > 0) {
            sockets = false;
            idle_since = 0;
            continue;
        }
        /* busy polling: an idle worker goes on polling for a while */
        if (d->busy_poll_ns && dp_xsk_keep_polling(&idle_since, d->busy_poll_ns))
            continue;
        reader_offline(d, w);
        int r = poll(fds, 6, -1);

        if (r < 0 && errno != EINTR)
            break;
        if (r > 0 && fds[0].revents)
            break;
        sockets = r < 0 || fds[2].revents || fds[3].revents;
    }
    reader_offline(d, w);
    return NULL;
}

int dp_readers_register(struct dp_device *d, int reader)
{
    d->aip_reader[reader] = dp_allowedips_reader_register(d->allowedips);
    if (d->aip_reader[reader] < 0)
        return d->aip_reader[reader];
    reader_offline(d, reader);
    return 0;
}

void dp_readers_unregister(struct dp_device *d, int reader)
{
    if (d->aip_reader[reader] >= 0) {
        reader_offline(d, reader);
        dp_allowedips_reader_unregister(d->allowedips, d->aip_reader[reader]);
        d->aip_reader[reader] = -1;
    }
}
