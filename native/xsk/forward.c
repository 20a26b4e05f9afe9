/* The raw AF_XDP forwarding ceiling (see dp_xsk_forward.h). */
#define _GNU_SOURCE
#include "dp_xsk_forward.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "xsk_port.h"

#define ETH_HEADER 14
#define ETH_ADDRS 12
#define POLL_TIMEOUT_MS 50

struct dp_xsk_fwd {
    struct dp_xsk_port port[2];
    uint8_t macs[2][ETH_ADDRS]; /* written into frames leaving by port i */
    atomic_int stop;
    uint64_t busy_poll_ns; /* how long an idle thread polls before it sleeps */
    struct dp_xsk_fwd_stats stats;
    struct dp_xsk_frame frames[DP_XSK_BURST];
};

int dp_xsk_fwd_open(const char *a_ifname, const char *b_ifname, uint32_t queue,
                    const uint8_t *a_macs, const uint8_t *b_macs, struct dp_xsk_fwd **out)
{
    struct dp_xsk_fwd *f;
    int err;

    if (!a_ifname || !b_ifname || !a_macs || !b_macs || !out)
        return -EINVAL;
    f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    err = dp_xsk_port_open(&f->port[DP_XSK_FWD_A], a_ifname, queue, true);
    if (err) {
        free(f);
        return err;
    }
    err = dp_xsk_port_open(&f->port[DP_XSK_FWD_B], b_ifname, queue, true);
    if (err) {
        dp_xsk_port_close(&f->port[DP_XSK_FWD_A]);
        free(f);
        return err;
    }
    memcpy(f->macs[DP_XSK_FWD_A], a_macs, ETH_ADDRS);
    memcpy(f->macs[DP_XSK_FWD_B], b_macs, ETH_ADDRS);
    *out = f;
    return 0;
}

int dp_xsk_fwd_fd(const struct dp_xsk_fwd *f, int port)
{
    if (!f || (port != DP_XSK_FWD_A && port != DP_XSK_FWD_B))
        return -1;
    return f->port[port].fd;
}

int dp_xsk_fwd_busy_poll(struct dp_xsk_fwd *f, uint32_t usecs)
{
    int err;

    if (!f || usecs > DP_XSK_FWD_BUSY_POLL_MAX_US)
        return -EINVAL;
    err = dp_xsk_ports_busy_poll(&f->port[DP_XSK_FWD_A], &f->port[DP_XSK_FWD_B], usecs);
    f->busy_poll_ns = err ? 0 : (uint64_t)usecs * 1000;
    return err;
}

/* One burst from port `from` to the other; returns frames received. */
static uint32_t forward_burst(struct dp_xsk_fwd *f, int from)
{
    int to = !from;
    struct dp_xsk_port *rx = &f->port[from], *tx = &f->port[to];
    uint32_t n = dp_xsk_rx(rx, f->frames, DP_XSK_BURST), sent = 0;

    for (uint32_t i = 0; i < n; i++) {
        const struct dp_xsk_frame *in = &f->frames[i];
        uint64_t addr;
        uint8_t *out;

        /* runts, and the kernel's multicast (neighbour discovery, MLD) */
        if (in->len <= ETH_HEADER || (in->data[0] & 1)) {
            f->stats.skipped[from]++;
            continue;
        }
        out = dp_xsk_tx_frame(tx, &addr);
        if (!out) {
            f->stats.dropped[to]++;
            continue;
        }
        memcpy(out, f->macs[to], ETH_ADDRS);
        memcpy(out + ETH_ADDRS, in->data + ETH_ADDRS, in->len - ETH_ADDRS);
        dp_xsk_tx_queue(tx, addr, in->len);
        sent++;
    }
    dp_xsk_rx_release(rx, f->frames, n);
    if (sent) {
        uint32_t dropped = dp_xsk_tx_flush(tx);

        f->stats.dropped[to] += dropped;
        f->stats.tx[to] += sent - dropped;
    }
    f->stats.rx[from] += n;
    return n;
}

int dp_xsk_fwd_run(struct dp_xsk_fwd *f, int cpu, struct dp_xsk_fwd_stats *out)
{
    if (!f || !out)
        return -EINVAL;
    pthread_setname_np(pthread_self(), "xsk-forward");
    if (cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }
    struct pollfd fds[2] = {
        {.fd = f->port[DP_XSK_FWD_A].fd, .events = POLLIN},
        {.fd = f->port[DP_XSK_FWD_B].fd, .events = POLLIN},
    };

    uint64_t idle_since = 0;

    while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
        uint32_t n = forward_burst(f, DP_XSK_FWD_A);

        n += forward_burst(f, DP_XSK_FWD_B);
        if (n) {
            idle_since = 0;
            continue;
        }
        if (f->busy_poll_ns && dp_xsk_keep_polling(&idle_since, f->busy_poll_ns))
            continue;
        f->stats.polls++;
        if (poll(fds, 2, POLL_TIMEOUT_MS) < 0 && errno != EINTR)
            break;
    }
    *out = f->stats;
    return 0;
}

void dp_xsk_fwd_stop(struct dp_xsk_fwd *f)
{
    if (f)
        atomic_store(&f->stop, 1);
}

void dp_xsk_fwd_close(struct dp_xsk_fwd *f)
{
    if (!f)
        return;
    dp_xsk_port_close(&f->port[DP_XSK_FWD_A]);
    dp_xsk_port_close(&f->port[DP_XSK_FWD_B]);
    free(f);
}
