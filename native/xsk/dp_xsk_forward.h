/* The raw AF_XDP forwarding ceiling of `dataplane bench` (DUT
 * xsk-forward): two AF_XDP ports (native/xsk/xsk_port.c, the ports the XDP
 * backend's workers use) and one thread that moves frames between them in
 * bursts, in both directions, without crypto. Each frame gets the
 * Ethernet addresses of the port it leaves by; nothing else is touched.
 * It measures what the XDP backend's I/O costs here, so its loop has the
 * worker's shape: receive a burst, copy each frame into a transmit frame
 * of the other port, flush, and sleep in poll() when both are idle.
 *
 * Threads: dp_xsk_fwd_run on one thread; dp_xsk_fwd_stop from any.
 * cdef-clean: plain declarations and integer #defines only.
 */
#ifndef DP_XSK_FORWARD_H
#define DP_XSK_FORWARD_H

#include <stdint.h>

struct dp_xsk_fwd;

/* Port indices. */
#define DP_XSK_FWD_A 0
#define DP_XSK_FWD_B 1

struct dp_xsk_fwd_stats {
    uint64_t rx[2];       /* frames received on port A, B */
    uint64_t tx[2];       /* frames placed on port A's, B's transmit ring */
    uint64_t dropped[2];  /* frames for port A, B that found no transmit frame or room */
    uint64_t skipped[2];  /* frames received on A, B not forwarded (runt, multicast) */
    uint64_t polls;       /* times the thread slept in poll() */
};

/* Opens an AF_XDP port on queue `queue` of each interface (a_ifname,
 * b_ifname). a_macs and b_macs are 12 bytes each: the destination and
 * source MAC written into frames that leave by port A and by port B.
 * Returns 0 with *out set (owned by the caller: dp_xsk_fwd_close), or
 * -errno (no such interface, no AF_XDP, no memory). */
int dp_xsk_fwd_open(const char *a_ifname, const char *b_ifname, uint32_t queue,
                    const uint8_t *a_macs, const uint8_t *b_macs, struct dp_xsk_fwd **out);
/* Busy polling, as the XDP backend's workers do it (dp_device_xsk_busy_poll):
 * both sockets get SO_PREFER_BUSY_POLL, SO_BUSY_POLL = usecs and a budget
 * of one burst, every receive asks the kernel to run the queue's NAPI, and
 * the idle thread polls for usecs before it sleeps. 0 turns it off. Before
 * dp_xsk_fwd_run. 0, -EINVAL (over DP_XSK_FWD_BUSY_POLL_MAX_US) or the
 * kernel's -errno (then it is off). */
#define DP_XSK_FWD_BUSY_POLL_MAX_US 100000
int dp_xsk_fwd_busy_poll(struct dp_xsk_fwd *f, uint32_t usecs);
/* The AF_XDP socket of port DP_XSK_FWD_A or _B (for an XSKMAP), or -1. */
int dp_xsk_fwd_fd(const struct dp_xsk_fwd *f, int port);
/* Forwards until dp_xsk_fwd_stop; pins the calling thread to `cpu`
 * unless it is negative. Fills *out at the end. 0, or -EINVAL. */
int dp_xsk_fwd_run(struct dp_xsk_fwd *f, int cpu, struct dp_xsk_fwd_stats *out);
/* Makes dp_xsk_fwd_run return (within its poll timeout, 50 ms). */
void dp_xsk_fwd_stop(struct dp_xsk_fwd *f);
/* Closes both ports. NULL is a no-op. */
void dp_xsk_fwd_close(struct dp_xsk_fwd *f);

#endif
