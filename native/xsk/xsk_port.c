/* AF_XDP ports (see xsk_port.h). */
#define _GNU_SOURCE
#include "xsk_port.h"

#include <errno.h>
#include <linux/if_xdp.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RX_FRAMES (DP_XSK_FRAMES / 2)
#define RING_SIZE 2048

static void reclaim(struct dp_xsk_port *p)
{
    uint32_t idx = 0, n = xsk_ring_cons__peek(&p->comp, RING_SIZE, &idx);

    for (uint32_t i = 0; i < n; i++)
        p->free_tx[p->n_free_tx++] = *xsk_ring_cons__comp_addr(&p->comp, idx + i) &
                                     ~(uint64_t)(DP_XSK_FRAME_SIZE - 1);
    if (n)
        xsk_ring_cons__release(&p->comp, n);
}

static int bind_socket(struct dp_xsk_port *p, const char *ifname, uint32_t queue, uint16_t mode)
{
    struct xsk_socket_config cfg = {
        .rx_size = RING_SIZE,
        .tx_size = RING_SIZE,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = 0,
        .bind_flags = (uint16_t)(mode | XDP_USE_NEED_WAKEUP),
    };

    return xsk_socket__create(&p->xsk, ifname, queue, p->umem, &p->rx, &p->tx, &cfg);
}

int dp_xsk_port_open(struct dp_xsk_port *p, const char *ifname, uint32_t queue, bool zerocopy)
{
    struct xsk_umem_config ucfg = {
        .fill_size = RING_SIZE,
        .comp_size = RING_SIZE,
        .frame_size = DP_XSK_FRAME_SIZE,
        .frame_headroom = 0,
        .flags = 0,
    };
    uint32_t idx = 0;
    int err;

    memset(p, 0, sizeof(*p));
    p->fd = -1;
    p->area_len = (size_t)DP_XSK_FRAMES * DP_XSK_FRAME_SIZE;
    p->area = mmap(NULL, p->area_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->area == MAP_FAILED) {
        p->area = NULL;
        return -errno;
    }
    /* Packets hold inner traffic in the clear: keep them out of core dumps. */
    madvise(p->area, p->area_len, MADV_DONTDUMP);
    err = xsk_umem__create(&p->umem, p->area, p->area_len, &p->fill, &p->comp, &ucfg);
    if (err) {
        p->umem = NULL;
        dp_xsk_port_close(p);
        return err < 0 ? err : -err;
    }
    err = -EOPNOTSUPP;
    if (zerocopy)
        err = bind_socket(p, ifname, queue, XDP_ZEROCOPY);
    p->zerocopy = err == 0;
    if (err)
        err = bind_socket(p, ifname, queue, XDP_COPY);
    if (err) {
        p->xsk = NULL;
        dp_xsk_port_close(p);
        return err < 0 ? err : -err;
    }
    p->fd = xsk_socket__fd(p->xsk);

    /* the first half of the frames receive, the second half transmit */
    if (xsk_ring_prod__reserve(&p->fill, RX_FRAMES, &idx) != RX_FRAMES) {
        dp_xsk_port_close(p);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < RX_FRAMES; i++)
        *xsk_ring_prod__fill_addr(&p->fill, idx + i) = (uint64_t)i * DP_XSK_FRAME_SIZE;
    xsk_ring_prod__submit(&p->fill, RX_FRAMES);
    for (uint32_t i = 0; i < DP_XSK_FRAMES / 2; i++)
        p->free_tx[i] = (uint64_t)(RX_FRAMES + i) * DP_XSK_FRAME_SIZE;
    p->n_free_tx = DP_XSK_FRAMES / 2;
    return 0;
}

void dp_xsk_port_close(struct dp_xsk_port *p)
{
    if (p->xsk)
        xsk_socket__delete(p->xsk);
    if (p->umem)
        xsk_umem__delete(p->umem);
    if (p->area) {
        explicit_bzero(p->area, p->area_len);
        munmap(p->area, p->area_len);
    }
    memset(p, 0, sizeof(*p));
    p->fd = -1;
}

int dp_xsk_port_busy_poll(struct dp_xsk_port *p, uint32_t usecs)
{
    int on = usecs > 0, us = (int)usecs, budget = usecs ? DP_XSK_BURST : 0, err = 0;

    if (usecs > INT32_MAX)
        return -EINVAL;
    if (setsockopt(p->fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof(budget)) ||
        setsockopt(p->fd, SOL_SOCKET, SO_BUSY_POLL, &us, sizeof(us)) ||
        setsockopt(p->fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &on, sizeof(on))) {
        err = -errno;
        if (on)
            dp_xsk_port_busy_poll(p, 0); /* nothing left half set */
        return err;
    }
    p->busy_poll = on;
    return 0;
}

int dp_xsk_ports_busy_poll(struct dp_xsk_port *a, struct dp_xsk_port *b, uint32_t usecs)
{
    int err = dp_xsk_port_busy_poll(a, usecs);

    if (!err) {
        err = dp_xsk_port_busy_poll(b, usecs);
        if (err)
            dp_xsk_port_busy_poll(a, 0);
    }
    return err;
}

bool dp_xsk_keep_polling(uint64_t *idle_since, uint64_t window_ns)
{
    struct timespec ts;
    uint64_t now;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (!*idle_since)
        *idle_since = now;
    if (now - *idle_since < window_ns)
        return true;
    *idle_since = 0;
    return false;
}

uint32_t dp_xsk_rx(struct dp_xsk_port *p, struct dp_xsk_frame *out, uint32_t max)
{
    uint32_t idx = 0, n;

    /* busy polling: the kernel receives into the ring now, in this call */
    if (p->busy_poll)
        recvfrom(p->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    n = xsk_ring_cons__peek(&p->rx, max, &idx);
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&p->rx, idx + i);

        out[i].addr = d->addr;
        out[i].data = xsk_umem__get_data(p->area, d->addr);
        out[i].len = d->len;
    }
    if (n == 0 && !p->busy_poll && xsk_ring_prod__needs_wakeup(&p->fill))
        recvfrom(p->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    return n;
}

void dp_xsk_rx_release(struct dp_xsk_port *p, const struct dp_xsk_frame *f, uint32_t n)
{
    uint32_t idx = 0;

    if (!n)
        return;
    xsk_ring_cons__release(&p->rx, n);
    /* The fill ring has room for every receive frame, so this succeeds:
     * frames only circulate between it and the rx ring. */
    while (xsk_ring_prod__reserve(&p->fill, n, &idx) != n)
        ;
    for (uint32_t i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&p->fill, idx + i) = f[i].addr &
                                                      ~(uint64_t)(DP_XSK_FRAME_SIZE - 1);
    xsk_ring_prod__submit(&p->fill, n);
}

uint8_t *dp_xsk_tx_frame(struct dp_xsk_port *p, uint64_t *addr)
{
    if (!p->n_free_tx)
        reclaim(p);
    if (!p->n_free_tx && p->n_pend) {
        dp_xsk_tx_flush(p);
        reclaim(p);
    }
    if (!p->n_free_tx) {
        p->tx_no_frame++;
        return NULL;
    }
    *addr = p->free_tx[--p->n_free_tx];
    return xsk_umem__get_data(p->area, *addr);
}

void dp_xsk_tx_queue(struct dp_xsk_port *p, uint64_t addr, uint32_t len)
{
    p->pend_addr[p->n_pend] = addr;
    p->pend_len[p->n_pend] = len;
    if (++p->n_pend == DP_XSK_BURST)
        dp_xsk_tx_flush(p);
}

void dp_xsk_tx_unframe(struct dp_xsk_port *p, uint64_t addr)
{
    /* it came out of free_tx, so there is room for it */
    p->free_tx[p->n_free_tx++] = addr;
}

uint32_t dp_xsk_tx_flush(struct dp_xsk_port *p)
{
    uint32_t idx = 0, n = p->n_pend, dropped = 0;

    if (!n)
        return 0;
    p->n_pend = 0;
    if (xsk_ring_prod__reserve(&p->tx, n, &idx) != n) {
        /* the ring is full: the kernel is behind; drop this burst */
        for (uint32_t i = 0; i < n; i++)
            p->free_tx[p->n_free_tx++] = p->pend_addr[i];
        dropped = n;
    } else {
        for (uint32_t i = 0; i < n; i++) {
            struct xdp_desc *d = xsk_ring_prod__tx_desc(&p->tx, idx + i);

            d->addr = p->pend_addr[i];
            d->len = p->pend_len[i];
            d->options = 0;
        }
        xsk_ring_prod__submit(&p->tx, n);
    }
    /* Copy mode transmits in sendto(), a budget of descriptors (32) per
     * call, saying EAGAIN while more are left: call until the ring is
     * empty, or the data would wait in it until the next burst (hundreds
     * of milliseconds behind under load). Zero-copy drivers ask with
     * need_wakeup and drain the ring themselves. */
    if (p->zerocopy) {
        if (xsk_ring_prod__needs_wakeup(&p->tx))
            sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
    } else {
        for (int k = 0; k < RING_SIZE / 32 + 2; k++) {
            if (sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0 ||
                (errno != EAGAIN && errno != EBUSY && errno != EINTR))
                break;
            if (xsk_prod_nb_free(&p->tx, RING_SIZE) == RING_SIZE)
                break;
        }
    }
    reclaim(p);
    return dropped;
}
