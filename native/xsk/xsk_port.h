/* An AF_XDP port: one XDP socket on one queue of one interface, with a UMEM
 * of its own, through libxdp's xsk API. Half of the frames feed the fill
 * ring (receive), half are kept for transmit and come back through the
 * completion ring. Used by one worker thread; nothing here is shared.
 * Internal to the native layer (not part of the cffi cdef). */
#ifndef DP_XSK_PORT_H
#define DP_XSK_PORT_H

#include <stdbool.h>
#include <stdint.h>
#include <xdp/xsk.h>

#ifndef DP_XSK_FRAMES
#define DP_XSK_FRAMES 4096
#endif
#define DP_XSK_FRAME_SIZE 4096
/* Headroom we keep in front of a transmitted frame's data. */
#define DP_XSK_BURST 64

struct dp_xsk_port {
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fill, tx;
    struct xsk_ring_cons comp, rx;
    uint8_t *area;
    size_t area_len;
    int fd;
    bool zerocopy;
    /* transmit frames not in flight */
    uint64_t free_tx[DP_XSK_FRAMES / 2];
    uint32_t n_free_tx;
    /* transmit descriptors built and not yet submitted */
    uint64_t pend_addr[DP_XSK_BURST];
    uint32_t pend_len[DP_XSK_BURST];
    uint32_t n_pend;
    uint64_t tx_no_frame; /* transmit frames ran out: packet dropped */
    bool busy_poll;       /* dp_xsk_rx runs the queue's NAPI (see dp_xsk_port_busy_poll) */
};

/* A received frame. */
struct dp_xsk_frame {
    uint64_t addr;
    uint8_t *data;
    uint32_t len;
};

/* Opens the port; 0 or -errno (the port is then closed). zerocopy: try a
 * zero-copy bind first, fall back to copy mode. The XDP program and the
 * XSKMAP entry are the caller's (the loader's) business. */
int dp_xsk_port_open(struct dp_xsk_port *p, const char *ifname, uint32_t queue, bool zerocopy);
void dp_xsk_port_close(struct dp_xsk_port *p);
/* Busy polling: usecs > 0 sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL = usecs
 * and SO_BUSY_POLL_BUDGET = DP_XSK_BURST on the socket, and from then on
 * every dp_xsk_rx first asks the kernel (recvfrom) to run the queue's NAPI
 * in the caller's context. The kernel does that only where the driver
 * gives the socket a NAPI id (SO_INCOMING_NAPI_ID after the first packet;
 * veth here gives none). usecs 0 clears all three. 0 or -errno. */
int dp_xsk_port_busy_poll(struct dp_xsk_port *p, uint32_t usecs);
/* The same on the two ports a thread serves: both or neither. */
int dp_xsk_ports_busy_poll(struct dp_xsk_port *a, struct dp_xsk_port *b, uint32_t usecs);
/* A busy-polling thread that found nothing: whether it should go on
 * polling, as it has been idle for less than window_ns. *idle_since is
 * the thread's own (0 whenever it finds work). */
bool dp_xsk_keep_polling(uint64_t *idle_since, uint64_t window_ns);

/* Up to max received frames; hand them back with dp_xsk_rx_release. */
uint32_t dp_xsk_rx(struct dp_xsk_port *p, struct dp_xsk_frame *out, uint32_t max);
/* Returns n received frames (all of the last dp_xsk_rx) to the fill ring. */
void dp_xsk_rx_release(struct dp_xsk_port *p, const struct dp_xsk_frame *f, uint32_t n);

/* A transmit frame to write up to DP_XSK_FRAME_SIZE bytes into, or NULL
 * when none is free (reclaims completions first). Queue it with
 * dp_xsk_tx_queue, which sends when DP_XSK_BURST are pending. */
uint8_t *dp_xsk_tx_frame(struct dp_xsk_port *p, uint64_t *addr);
void dp_xsk_tx_queue(struct dp_xsk_port *p, uint64_t addr, uint32_t len);
/* Hands back a frame of dp_xsk_tx_frame that is not to be sent. */
void dp_xsk_tx_unframe(struct dp_xsk_port *p, uint64_t addr);
/* Submits what is queued and wakes the kernel when it asks for it.
 * Returns how many packets could not be placed on the TX ring (dropped,
 * their frames reclaimed). */
uint32_t dp_xsk_tx_flush(struct dp_xsk_port *p);

#endif
