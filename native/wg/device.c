/* The device's control-plane side: lifecycle, peers, keypairs, events and
 * statistics. Packet processing is in datapath.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "device_internal.h"
#include "wire.h"

static _Atomic uint64_t clock_offset_ns;

uint64_t dp_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec +
           atomic_load_explicit(&clock_offset_ns, memory_order_relaxed);
}

uint64_t dp_device_now_ns(void)
{
    return dp_now_ns();
}

void dp_device_test_advance_clock(uint64_t ns)
{
    atomic_fetch_add(&clock_offset_ns, ns);
}

bool dp_keypair_can_send(const struct keypair *kp, uint64_t now)
{
    return kp && now - kp->created_ns < (uint64_t)DP_WG_REJECT_AFTER_TIME * NSEC_PER_SEC &&
           atomic_load_explicit(&kp->send_counter, memory_order_relaxed) <
               DP_WG_REJECT_AFTER_MESSAGES;
}

/* ---------------------------------------------------------------- events */

bool dp_event_push(struct dp_device *d, const struct dp_event *ev)
{
    uint64_t one = 1;
    bool pushed = false;
    /* Handshake messages come from anyone and may fill only part of the
     * ring; the rest stays for the data path's own requests, so that a
     * flood cannot silence them. */
    uint32_t limit = ev->type == DP_EVENT_HANDSHAKE ? d->ev_mask + 1 - (d->ev_mask + 1) / 4
                                                    : d->ev_mask + 1;

    pthread_mutex_lock(&d->ev_lock);
    if (d->ev_head - d->ev_tail < limit) {
        d->ev_ring[d->ev_head++ & d->ev_mask] = *ev;
        pushed = true;
    }
    pthread_mutex_unlock(&d->ev_lock);
    if (!pushed) {
        count_drop(d, DP_DROP_EVENTS_FULL, 1);
        return false;
    }
    if (write(d->ev_fd, &one, sizeof(one)) < 0) {
        /* the counter saturates only after 2^64-2 unread writes */
    }
    return true;
}

int dp_device_event_fd(struct dp_device *d)
{
    return d->ev_fd;
}

int dp_device_events(struct dp_device *d, struct dp_event *out, uint32_t max)
{
    uint32_t n = 0;
    uint64_t v;

    if (!out)
        return -EINVAL;
    if (read(d->ev_fd, &v, sizeof(v)) < 0) {
        /* nothing signalled (EAGAIN): the ring is drained below anyway */
    }
    pthread_mutex_lock(&d->ev_lock);
    while (n < max && d->ev_tail != d->ev_head)
        out[n++] = d->ev_ring[d->ev_tail++ & d->ev_mask];
    pthread_mutex_unlock(&d->ev_lock);
    return (int)n;
}

uint32_t dp_device_event_backlog(struct dp_device *d)
{
    uint32_t n;

    pthread_mutex_lock(&d->ev_lock);
    n = d->ev_head - d->ev_tail;
    pthread_mutex_unlock(&d->ev_lock);
    return n;
}

uint32_t dp_device_event_capacity(struct dp_device *d)
{
    return d->ev_mask + 1;
}

void dp_want_handshake(struct dp_device *d, struct peer *p, uint32_t peer_id)
{
    if (atomic_exchange(&p->handshake_wanted, true))
        return;
    if (!dp_event_push(d, &(struct dp_event){.type = DP_EVENT_NEED_HANDSHAKE, .peer_id = peer_id}))
        atomic_store(&p->handshake_wanted, false); /* ask again with the next packet */
}

/* ---------------------------------------------------------------- reclamation */

static uint64_t qs_advance(struct dp_device *d)
{
    return atomic_fetch_add(&d->qs_epoch, 1) + 1;
}

static bool qs_passed(struct dp_device *d, uint64_t epoch)
{
    for (int i = 0; i <= DP_DEVICE_MAX_WORKERS; i++) {
        uint64_t r = atomic_load(&d->qs_reader[i]);

        if (r && r < epoch)
            return false;
    }
    return true;
}

/* Hooks of the receiver index table into our quiescent states. */
static uint64_t index_retire_epoch(void *ctx)
{
    return qs_advance(ctx);
}

static int index_epoch_passed(void *ctx, uint64_t epoch)
{
    return qs_passed(ctx, epoch);
}

/* ---------------------------------------------------------------- keypair memory */

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
/* A chunk of keypairs is about this big (whole keypairs, at least 4). */
#define KP_CHUNK_TARGET_BYTES (128u << 10)
#define KP_ALIGN 64

/* Map, lock and thread one more chunk onto the free list: 0 or -errno
 * (mlock fails past RLIMIT_MEMLOCK). Keys live only in locked memory,
 * kept out of core dumps and out of forked children. */
static int kp_chunk_map(struct dp_device *d)
{
    uint32_t c = 0, per = 1u << d->kp_chunk_shift;
    uint8_t *base;

    while (c < d->kp_chunks_max && d->kp_chunks[c])
        c++; /* the first unmapped number: handles stay low and dense */
    if (c == d->kp_chunks_max)
        return -ENOSPC;
    base = mmap(NULL, d->kp_chunk_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                -1, 0);
    if (base == MAP_FAILED)
        return -errno;
    if (mlock(base, d->kp_chunk_bytes) < 0) {
        int err = errno == EAGAIN ? ENOMEM : errno;

        munmap(base, d->kp_chunk_bytes);
        return -err;
    }
    madvise(base, d->kp_chunk_bytes, MADV_DONTDUMP);
    madvise(base, d->kp_chunk_bytes, MADV_WIPEONFORK);
    d->kp_chunks[c] = base;
    d->kp_chunks_mapped++;
    d->kp_chunks_empty++;
    for (uint32_t i = per; i-- > 0;) {
        struct keypair *kp = (struct keypair *)(base + (size_t)i * d->kp_stride);

        kp->handle = c * per + i + 1;
        kp->next = d->kp_free;
        d->kp_free = kp->handle;
    }
    return 0;
}

/* A wiped keypair, or NULL with *err set (-ENOSPC at cfg.max_keypairs,
 * or why a new chunk could not be mapped and locked). */
static struct keypair *keypair_alloc(struct dp_device *d, int *err)
{
    struct keypair *kp;

    if (d->kp_allocated >= d->cfg.max_keypairs) {
        *err = -ENOSPC;
        return NULL;
    }
    if (!d->kp_free && (*err = kp_chunk_map(d)) != 0)
        return NULL;
    kp = kp_at(d, d->kp_free);
    d->kp_free = kp->next;
    kp->next = 0;
    d->kp_allocated++;
    if (d->kp_chunk_used[(kp->handle - 1) >> d->kp_chunk_shift]++ == 0)
        d->kp_chunks_empty--;
    return kp;
}

static void keypair_wipe_free(struct dp_device *d, struct keypair *kp)
{
    uint32_t handle = kp->handle;

    dp_wipe(kp, d->kp_stride);
    kp->handle = handle;
    atomic_store(&kp->state, KP_FREE);
    kp->next = d->kp_free;
    d->kp_free = handle;
    d->kp_allocated--;
    if (--d->kp_chunk_used[(handle - 1) >> d->kp_chunk_shift] == 0)
        d->kp_chunks_empty++;
}

static void kp_chunk_unmap(struct dp_device *d, uint32_t c)
{
    dp_wipe(d->kp_chunks[c], d->kp_chunk_bytes);
    munlock(d->kp_chunks[c], d->kp_chunk_bytes);
    munmap(d->kp_chunks[c], d->kp_chunk_bytes);
    d->kp_chunks[c] = NULL;
    d->kp_chunks_mapped--;
}

/* Give back chunks whose keypairs are all free (wiped, no reader can reach
 * them: every keypair a reader may still hold counts as allocated until
 * the readers let go), keeping one empty chunk so that a peer coming and
 * going at a chunk's edge does not map and unmap each time. */
static void kp_chunks_trim(struct dp_device *d)
{
    uint32_t spare = UINT32_MAX, *link = &d->kp_free;

    if (d->kp_chunks_empty < 2)
        return;
    for (uint32_t c = 0; c < d->kp_chunks_max && spare == UINT32_MAX; c++)
        if (d->kp_chunks[c] && d->kp_chunk_used[c] == 0)
            spare = c;
    /* unthread the free keypairs of the chunks going away */
    while (*link) {
        uint32_t c = (*link - 1) >> d->kp_chunk_shift;

        if (d->kp_chunk_used[c] == 0 && c != spare)
            *link = kp_at(d, *link)->next;
        else
            link = &kp_at(d, *link)->next;
    }
    for (uint32_t c = 0; c < d->kp_chunks_max; c++) {
        if (d->kp_chunks[c] && d->kp_chunk_used[c] == 0 && c != spare) {
            kp_chunk_unmap(d, c);
            d->kp_chunks_empty--;
        }
    }
}

static void kp_chunks_free(struct dp_device *d)
{
    for (uint32_t c = 0; d->kp_chunks && c < d->kp_chunks_max; c++)
        if (d->kp_chunks[c])
            kp_chunk_unmap(d, c);
    free(d->kp_chunks);
    free(d->kp_chunk_used);
    d->kp_chunks = NULL;
    d->kp_chunk_used = NULL;
}

/* Control side: kp is out of use (moved out of LIVE, no peer holds it):
 * its index goes, and it waits for the readers to let go before the wipe. */
static void retire(struct dp_device *d, struct keypair *kp)
{
    dp_index_table_remove(d->indices, kp->local_index, kp->handle);
    d->kp_live--;
    kp->retired_epoch = qs_advance(d);
    kp->next = d->retired;
    d->retired = kp->handle;
}

static void unlink_retire(struct dp_device *d, struct keypair *kp)
{
    uint8_t live = KP_LIVE;

    if (!kp)
        return;
    /* A worker may have orphaned it already (a confirmation displaced it):
     * then it is on the orphan list, and reclaim retires it. */
    if (atomic_compare_exchange_strong(&kp->state, &live, KP_RETIRED))
        retire(d, kp);
}

void dp_orphan_keypair(struct dp_device *d, struct keypair *kp)
{
    uint32_t head;
    uint8_t live = KP_LIVE;

    if (!atomic_compare_exchange_strong(&kp->state, &live, KP_ORPHANED))
        return; /* the control plane retired it meanwhile */
    /* workers only push and the control plane takes the whole list: no ABA */
    head = atomic_load(&d->orphans);
    do {
        kp->next = head;
    } while (!atomic_compare_exchange_weak(&d->orphans, &head, kp->handle));
}

static void adopt_orphans(struct dp_device *d)
{
    uint32_t h = atomic_exchange(&d->orphans, 0);

    while (h) {
        struct keypair *orphan = kp_at(d, h);

        h = orphan->next;
        retire(d, orphan);
    }
}

static int reclaim(struct dp_device *d)
{
    uint32_t *pp = &d->retired;
    int waiting = 0;

    adopt_orphans(d);
    while (*pp) {
        struct keypair *kp = kp_at(d, *pp);

        if (qs_passed(d, kp->retired_epoch)) {
            *pp = kp->next;
            keypair_wipe_free(d, kp);
        } else {
            pp = &kp->next;
            waiting++;
        }
    }
    kp_chunks_trim(d);
    return waiting + dp_index_table_reclaim(d->indices);
}

int dp_device_maintain(struct dp_device *d)
{
    int n;

    pthread_mutex_lock(&d->control);
    n = reclaim(d);
    pthread_mutex_unlock(&d->control);
    return n;
}

/* ---------------------------------------------------------------- lifecycle */

_Static_assert(sizeof(((struct dp_device_config *)0)->tun_fd) / sizeof(int) ==
                   DP_DEVICE_MAX_WORKERS,
               "the config's fd arrays hold DP_DEVICE_MAX_WORKERS entries");

static bool fds_valid(const struct dp_device_config *cfg)
{
    if (cfg->workers < 1 || cfg->workers > DP_DEVICE_MAX_WORKERS)
        return false;
    for (uint32_t w = 0; w < cfg->workers; w++) {
        /* no TUN at all is the XDP backend (its inner side is AF_XDP) */
        if ((cfg->tun_fd[w] < 0) != (cfg->tun_fd[0] < 0) ||
            (cfg->udp4_fd[w] < 0 && cfg->udp6_fd[w] < 0))
            return false;
        /* every worker serves the same families */
        if ((cfg->udp4_fd[w] < 0) != (cfg->udp4_fd[0] < 0) ||
            (cfg->udp6_fd[w] < 0) != (cfg->udp6_fd[0] < 0))
            return false;
    }
    return true;
}

/* Ask for UDP GRO: runs of datagrams from one source arrive in one buffer
 * (the receive pass splits them). Kernels without it just say no. */
static void enable_udp_gro(const int *fds, uint32_t n)
{
    int on = 1;

    for (uint32_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            setsockopt(fds[i], 17 /* SOL_UDP */, 104 /* UDP_GRO */, &on, sizeof(on));
}

/* The workers wait in poll() and never block in a read or a write: a stop
 * would otherwise wait forever on a worker in a read of a quiet fd. */
static void make_nonblocking(const int *fds, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        int flags = fds[i] >= 0 ? fcntl(fds[i], F_GETFL) : -1;

        if (flags >= 0 && !(flags & O_NONBLOCK))
            fcntl(fds[i], F_SETFL, flags | O_NONBLOCK);
    }
}

static void close_fds(int *fds, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

static bool sizes_valid(const struct dp_device_config *cfg)
{
    return cfg->mtu >= 68 && cfg->mtu <= INNER_MAX_BYTES && cfg->max_peers > 0 &&
           cfg->max_peers <= (1u << 24) && cfg->index_table_log2 >= DP_INDEX_LOG2_MIN &&
           cfg->index_table_log2 <= DP_DEVICE_INDEX_LOG2_MAX && cfg->event_ring_log2 >= 2 &&
           cfg->event_ring_log2 <= 16 && cfg->max_keypairs <= DP_DEVICE_MAX_KEYPAIRS &&
           (cfg->replay_window_bits == 0 || dp_replay_size(cfg->replay_window_bits) != 0);
}

struct dp_device *dp_device_new(const struct dp_device_config *cfg)
{
    struct dp_device *d;
    uint32_t per_chunk;
    long page = sysconf(_SC_PAGESIZE);

    if (!cfg || !fds_valid(cfg) || !sizes_valid(cfg)) {
        errno = EINVAL;
        return NULL;
    }
    d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->cfg = *cfg;
    if (!d->cfg.replay_window_bits)
        d->cfg.replay_window_bits = DP_REPLAY_BITS_DEFAULT;
    if (!d->cfg.max_keypairs) {
        uint64_t n = 3ull * cfg->max_peers + 1024;

        d->cfg.max_keypairs = n < DP_DEVICE_MAX_KEYPAIRS ? (uint32_t)n : DP_DEVICE_MAX_KEYPAIRS;
    }
    d->ev_fd = d->stop_fd = -1;
    for (int i = 0; i <= DP_DEVICE_MAX_WORKERS; i++)
        d->aip_reader[i] = -1;
    d->buf_size = PACKET_BUF_BYTES;
    atomic_store(&d->mtu, cfg->mtu);
    pthread_mutex_init(&d->control, NULL);
    pthread_mutex_init(&d->ev_lock, NULL);
    atomic_store(&d->qs_epoch, 1);
    d->peers = calloc(cfg->max_peers, sizeof(*d->peers));
    d->indices = dp_index_table_new(cfg->index_table_log2,
                                    &(struct dp_index_reclaim){.retire = index_retire_epoch,
                                                               .passed = index_epoch_passed,
                                                               .ctx = d});
    d->ev_ring = calloc((size_t)1 << cfg->event_ring_log2, sizeof(*d->ev_ring));
    d->ev_mask = (1u << cfg->event_ring_log2) - 1;
    /* keypairs: chunks of locked memory, mapped as installs need them */
    d->kp_stride = (sizeof(struct keypair) + dp_replay_size(d->cfg.replay_window_bits) +
                    KP_ALIGN - 1) & ~(size_t)(KP_ALIGN - 1);
    d->kp_chunk_shift = 2;
    while (((size_t)2 << d->kp_chunk_shift) * d->kp_stride <= KP_CHUNK_TARGET_BYTES)
        d->kp_chunk_shift++;
    per_chunk = 1u << d->kp_chunk_shift;
    d->kp_chunk_bytes = ((size_t)per_chunk * d->kp_stride + (size_t)page - 1) & ~((size_t)page - 1);
    d->kp_chunks_max = (d->cfg.max_keypairs + per_chunk - 1) / per_chunk;
    d->kp_chunks = calloc(d->kp_chunks_max, sizeof(*d->kp_chunks));
    d->kp_chunk_used = calloc(d->kp_chunks_max, sizeof(*d->kp_chunk_used));
    if (!d->peers || !d->indices || !d->ev_ring || !d->kp_chunks || !d->kp_chunk_used)
        goto fail;
    d->allowedips = dp_allowedips_new();
    if (dp_routes_init(d))
        goto fail;
    d->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    d->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!d->allowedips || d->ev_fd < 0 || d->stop_fd < 0)
        goto fail;
    d->bursts[POLL_READER] = dp_burst_new(d->buf_size);
    if (!d->bursts[POLL_READER] || dp_readers_register(d, POLL_READER))
        goto fail;
    dp_burst_bind(d->bursts[POLL_READER], d, 0);
    enable_udp_gro(cfg->udp4_fd, cfg->workers);
    enable_udp_gro(cfg->udp6_fd, cfg->workers);
    make_nonblocking(cfg->tun_fd, cfg->workers);
    make_nonblocking(cfg->udp4_fd, cfg->workers);
    make_nonblocking(cfg->udp6_fd, cfg->workers);
    for (uint32_t w = 0; w < cfg->workers; w++) {
        d->workers[w] = (struct worker){.d = d, .index = (int)w};
        d->bursts[w] = dp_burst_new(d->buf_size);
        if (!d->bursts[w])
            goto fail;
        dp_burst_bind(d->bursts[w], d, (int)w);
    }
    return d;
fail: {
    int err = errno ? errno : ENOMEM;

    /* the caller keeps its fds */
    for (int w = 0; w < DP_DEVICE_MAX_WORKERS; w++)
        d->cfg.tun_fd[w] = d->cfg.udp4_fd[w] = d->cfg.udp6_fd[w] = -1;
    d->cfg.workers = 0;
    dp_device_free(d);
    errno = err;
    return NULL;
}
}

static void join_workers(struct dp_device *d, uint32_t n)
{
    uint64_t one = 1, v;

    atomic_store(&d->stopping, true);
    if (write(d->stop_fd, &one, sizeof(one)) < 0) {
        /* cannot fail on a fresh eventfd */
    }
    for (uint32_t w = 0; w < n; w++) {
        pthread_join(d->workers[w].thread, NULL);
        dp_readers_unregister(d, (int)w);
    }
    if (read(d->stop_fd, &v, sizeof(v)) < 0) {
        /* nothing to clear */
    }
    atomic_store(&d->stopping, false);
}

int dp_device_attach_xsk(struct dp_device *d, uint32_t worker, const char *wan_ifname,
                         uint32_t wan_queue, const char *inner_ifname, uint32_t inner_queue,
                         const uint8_t *inner_dst_mac, const uint8_t *inner_src_mac,
                         int zerocopy)
{
    int err;

    if (!wan_ifname || !inner_ifname || !inner_dst_mac || !inner_src_mac)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    if (d->running)
        err = -EBUSY;
    else if (worker >= d->cfg.workers)
        err = -EINVAL;
    else
        err = dp_burst_attach_xsk(d->bursts[worker], wan_ifname, wan_queue, inner_ifname,
                                  inner_queue, inner_dst_mac, inner_src_mac, zerocopy != 0);
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_xsk_fds(struct dp_device *d, uint32_t worker, int *wan_fd, int *inner_fd)
{
    if (worker >= d->cfg.workers || !wan_fd || !inner_fd)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    dp_burst_xsk_fds(d->bursts[worker], wan_fd, inner_fd);
    pthread_mutex_unlock(&d->control);
    return 0;
}

int dp_device_xsk_busy_poll(struct dp_device *d, uint32_t usecs)
{
    uint32_t w;
    int err = 0;

    if (usecs > DP_DEVICE_BUSY_POLL_MAX_US)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    if (d->running) {
        pthread_mutex_unlock(&d->control);
        return -EBUSY;
    }
    for (w = 0; w < d->cfg.workers; w++) {
        err = dp_burst_xsk_busy_poll(d->bursts[w], usecs);
        if (err) {
            /* all or nothing: the workers before it are turned off again */
            while (w--)
                dp_burst_xsk_busy_poll(d->bursts[w], 0);
            usecs = 0;
            break;
        }
    }
    d->busy_poll_ns = (uint64_t)usecs * 1000;
    pthread_mutex_unlock(&d->control);
    return err;
}

/* Worker w's thread, real-time from its first instruction when asked
 * (dp_device_set_realtime): EPERM without CAP_SYS_NICE fails the start. */
static int start_worker(struct dp_device *d, uint32_t w)
{
    pthread_attr_t attr;
    int err;

    if (!d->rt_priority)
        return pthread_create(&d->workers[w].thread, NULL, dp_worker_main, &d->workers[w]);
    struct sched_param sp = {.sched_priority = (int)d->rt_priority};

    err = pthread_attr_init(&attr);
    if (err)
        return err;
    err = pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
    if (!err)
        err = pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
    if (!err)
        err = pthread_attr_setschedparam(&attr, &sp);
    if (!err)
        err = pthread_create(&d->workers[w].thread, &attr, dp_worker_main, &d->workers[w]);
    pthread_attr_destroy(&attr);
    return err;
}

void dp_lock_wait(struct dp_lock *l)
{
    /* a short critical section on another CPU: spin for it a while */
    for (int i = 0; i < 200; i++) {
        uint32_t free_ = 0;

        __builtin_ia32_pause();
        if (atomic_load_explicit(&l->v, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&l->v, &free_, 1, memory_order_acquire,
                                                    memory_order_relaxed))
            return;
    }
    /* then sleep; whoever takes it from here marks it as having sleepers */
    while (atomic_exchange_explicit(&l->v, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, &l->v, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void dp_lock_wake(struct dp_lock *l)
{
    syscall(SYS_futex, &l->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

int dp_device_start(struct dp_device *d)
{
    uint32_t w;
    int err = 0;

    pthread_mutex_lock(&d->control);
    if (d->running) {
        pthread_mutex_unlock(&d->control);
        return 0;
    }
    if (d->cfg.tun_fd[0] < 0) {
        /* no TUN: every worker needs its AF_XDP ports */
        for (w = 0; w < d->cfg.workers; w++) {
            int wan, inner;

            dp_burst_xsk_fds(d->bursts[w], &wan, &inner);
            if (wan < 0) {
                pthread_mutex_unlock(&d->control);
                return -ENOTCONN;
            }
        }
    }
    for (w = 0; w < d->cfg.workers && !err; w++) {
        err = -dp_readers_register(d, (int)w);
        if (!err) {
            err = start_worker(d, w);
            if (err)
                dp_readers_unregister(d, (int)w);
        }
    }
    if (err)
        join_workers(d, w - 1); /* never half started */
    else
        d->running = true;
    pthread_mutex_unlock(&d->control);
    return -err;
}

int dp_device_set_realtime(struct dp_device *d, uint32_t priority)
{
    int err = 0;

    if (priority && (priority < (uint32_t)sched_get_priority_min(SCHED_FIFO) ||
                     priority > (uint32_t)sched_get_priority_max(SCHED_FIFO)))
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    if (d->running)
        err = -EBUSY;
    else
        d->rt_priority = priority;
    pthread_mutex_unlock(&d->control);
    return err;
}

void dp_device_stop(struct dp_device *d)
{
    pthread_mutex_lock(&d->control);
    if (d->running) {
        join_workers(d, d->cfg.workers);
        d->running = false;
    }
    pthread_mutex_unlock(&d->control);
}

int dp_device_set_mtu(struct dp_device *d, uint32_t mtu)
{
    if (mtu < 68 || mtu > INNER_MAX_BYTES)
        return -EINVAL;
    atomic_store(&d->mtu, mtu);
    return 0;
}

int dp_device_set_wire(struct dp_device *d, const struct dp_wire *w)
{
    int err = dp_wire_check(w);

    if (err)
        return err;
    struct dp_wire next = *w;
    uint32_t words[DP_WIRE_WORDS];

    if (!next.obfuscated)
        next.accept_plain = 0;
    memcpy(words, &next, sizeof(words));
    pthread_mutex_lock(&d->control);
    atomic_fetch_add_explicit(&d->wire_seq, 1, memory_order_relaxed);
    /* release stores: a reader that sees a new word sees the odd seq too */
    for (int i = 0; i < DP_WIRE_WORDS; i++)
        __atomic_store_n(&d->wire_words[i], words[i], __ATOMIC_RELEASE);
    atomic_fetch_add_explicit(&d->wire_seq, 1, memory_order_release);
    pthread_mutex_unlock(&d->control);
    return 0;
}

void dp_device_get_wire(struct dp_device *d, struct dp_wire *out)
{
    wire_read(d, out);
}

int dp_device_set_udp(struct dp_device *d, const int *udp4_fd, const int *udp6_fd)
{
    struct dp_device_config next;
    bool was_running = d->running;

    if (!udp4_fd || !udp6_fd)
        return -EINVAL;
    next = d->cfg;
    memcpy(next.udp4_fd, udp4_fd, d->cfg.workers * sizeof(int));
    memcpy(next.udp6_fd, udp6_fd, d->cfg.workers * sizeof(int));
    if (!fds_valid(&next))
        return -EINVAL;
    dp_device_stop(d);
    pthread_mutex_lock(&d->control);
    close_fds(d->cfg.udp4_fd, d->cfg.workers);
    close_fds(d->cfg.udp6_fd, d->cfg.workers);
    d->cfg = next;
    enable_udp_gro(d->cfg.udp4_fd, d->cfg.workers);
    enable_udp_gro(d->cfg.udp6_fd, d->cfg.workers);
    make_nonblocking(d->cfg.udp4_fd, d->cfg.workers);
    make_nonblocking(d->cfg.udp6_fd, d->cfg.workers);
    for (uint32_t w = 0; w < d->cfg.workers; w++)
        dp_burst_bind(d->bursts[w], d, (int)w);
    dp_burst_bind(d->bursts[POLL_READER], d, 0);
    pthread_mutex_unlock(&d->control);
    return was_running ? dp_device_start(d) : 0;
}

static void staged_drop_all(struct peer *p)
{
    while (p->staged_head) {
        struct staged *s = p->staged_head;

        p->staged_head = s->next;
        dp_wipe(s->data, s->len);
        free(s);
    }
    p->staged_tail = NULL;
    p->staged_count = 0;
}

void dp_device_free(struct dp_device *d)
{
    if (!d)
        return;
    if (d->running)
        dp_device_stop(d);
    if (d->peers) {
        for (uint32_t i = 0; i < d->cfg.max_peers; i++)
            staged_drop_all(&d->peers[i]);
    }
    if (d->allowedips)
        for (int i = 0; i <= DP_DEVICE_MAX_WORKERS; i++)
            dp_readers_unregister(d, i);
    for (int i = 0; i <= DP_DEVICE_MAX_WORKERS; i++)
        dp_burst_free(d->bursts[i]);
    kp_chunks_free(d);
    dp_index_table_free(d->indices);
    if (d->allowedips)
        dp_allowedips_free(d->allowedips);
    for (int *fd = (int[]){d->ev_fd, d->stop_fd, -2}; *fd != -2; fd++)
        if (*fd >= 0)
            close(*fd);
    close_fds(d->cfg.tun_fd, d->cfg.workers);
    close_fds(d->cfg.udp4_fd, d->cfg.workers);
    close_fds(d->cfg.udp6_fd, d->cfg.workers);
    dp_routes_free(d);
    free(d->peers);
    free(d->ev_ring);
    pthread_mutex_destroy(&d->control);
    pthread_mutex_destroy(&d->ev_lock);
    free(d);
}

struct dp_allowedips *dp_device_allowedips(struct dp_device *d)
{
    return d->allowedips;
}

/* ---------------------------------------------------------------- peers */

static struct peer *peer_get(struct dp_device *d, uint32_t peer_id)
{
    if (peer_id >= d->cfg.max_peers || !d->peers[peer_id].in_use)
        return NULL;
    return &d->peers[peer_id];
}

int dp_device_peer_add(struct dp_device *d, uint32_t peer_id)
{
    int err = 0;

    pthread_mutex_lock(&d->control);
    if (peer_id >= d->cfg.max_peers)
        err = -EINVAL;
    else if (d->peers[peer_id].in_use)
        err = -EEXIST;
    else {
        struct peer *p = &d->peers[peer_id];

        /* A worker may still touch this slot for a packet of its previous
         * owner (peer slots are never freed): reset it under its lock,
         * which stays valid throughout, rather than wiping the lock too. */
        lock_take(&p->lock);
        memset(&p->endpoint, 0, sizeof(p->endpoint));
        atomic_store(&p->current, NULL);
        p->previous = p->next = NULL;
        atomic_store(&p->handshake_wanted, false);
        for (_Atomic uint64_t *c = &p->rx_bytes; c <= &p->last_tx_data_ns; c++)
            atomic_store(c, 0);
        lock_give(&p->lock);
        p->in_use = true;
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

/* Unlink every keypair of p and retire it; drop staged packets. */
static void peer_clear(struct dp_device *d, struct peer *p)
{
    struct keypair *kps[3];

    lock_take(&p->lock);
    kps[0] = atomic_exchange(&p->current, NULL);
    kps[1] = p->previous;
    kps[2] = p->next;
    p->previous = p->next = NULL;
    staged_drop_all(p);
    lock_give(&p->lock);
    for (int i = 0; i < 3; i++)
        unlink_retire(d, kps[i]);
    atomic_store(&p->handshake_wanted, false);
}

int dp_device_peer_remove(struct dp_device *d, uint32_t peer_id)
{
    struct peer *p;
    int err = 0;

    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (!p) {
        err = -ENOENT;
    } else {
        dp_allowedips_remove_peer(d->allowedips, peer_id);
        peer_clear(d, p);
        p->in_use = false;
        reclaim(d);
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_peer_clear_keypairs(struct dp_device *d, uint32_t peer_id)
{
    struct peer *p;
    int err = 0;

    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (p) {
        peer_clear(d, p);
        reclaim(d);
    } else {
        err = -ENOENT;
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_peer_rearm(struct dp_device *d, uint32_t peer_id)
{
    struct peer *p;

    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (p)
        atomic_store(&p->handshake_wanted, false);
    pthread_mutex_unlock(&d->control);
    return p ? 0 : -ENOENT;
}

static bool endpoint_valid(const struct dp_endpoint *ep)
{
    return ep && (ep->family == DP_ENDPOINT_NONE || ep->family == DP_ENDPOINT_IPV4 ||
                  ep->family == DP_ENDPOINT_IPV6);
}

int dp_device_peer_set_endpoint(struct dp_device *d, uint32_t peer_id,
                                const struct dp_endpoint *ep)
{
    struct peer *p;
    int err = 0;

    if (!endpoint_valid(ep))
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (p) {
        lock_take(&p->lock);
        p->endpoint = *ep;
        lock_give(&p->lock);
    } else {
        err = -ENOENT;
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_peer_get_endpoint(struct dp_device *d, uint32_t peer_id, struct dp_endpoint *ep)
{
    struct peer *p;

    if (!ep)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (p) {
        lock_take(&p->lock);
        *ep = p->endpoint;
        lock_give(&p->lock);
    }
    pthread_mutex_unlock(&d->control);
    return p ? 0 : -ENOENT;
}

static void peer_stats_fill(struct peer *p, struct dp_peer_stats *out)
{
    struct keypair *cur;

    memset(out, 0, sizeof(*out));
    out->rx_bytes = atomic_load(&p->rx_bytes);
    out->tx_bytes = atomic_load(&p->tx_bytes);
    out->rx_packets = atomic_load(&p->rx_packets);
    out->tx_packets = atomic_load(&p->tx_packets);
    out->last_rx_ns = atomic_load(&p->last_rx_ns);
    out->last_rx_data_ns = atomic_load(&p->last_rx_data_ns);
    out->last_tx_ns = atomic_load(&p->last_tx_ns);
    out->last_tx_data_ns = atomic_load(&p->last_tx_data_ns);
    lock_take(&p->lock);
    cur = atomic_load(&p->current);
    if (cur) {
        out->current_created_ns = cur->created_ns;
        out->current_send_counter = atomic_load(&cur->send_counter);
        out->current_local_index = cur->local_index;
        out->current_is_initiator = cur->is_initiator;
    }
    out->keypairs = !!cur + !!p->previous + !!p->next;
    out->staged = p->staged_count;
    lock_give(&p->lock);
}

int dp_device_peer_stats(struct dp_device *d, uint32_t peer_id, struct dp_peer_stats *out)
{
    struct peer *p;

    if (!out)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    p = peer_get(d, peer_id);
    if (p)
        peer_stats_fill(p, out);
    pthread_mutex_unlock(&d->control);
    return p ? 0 : -ENOENT;
}

int64_t dp_device_peer_stats_all(struct dp_device *d, struct dp_peer_stats *out, uint32_t n)
{
    if (!out)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    if (n > d->cfg.max_peers)
        n = d->cfg.max_peers;
    for (uint32_t i = 0; i < n; i++) {
        if (d->peers[i].in_use)
            peer_stats_fill(&d->peers[i], &out[i]);
        else
            memset(&out[i], 0, sizeof(out[i]));
    }
    pthread_mutex_unlock(&d->control);
    return n;
}

/* ---------------------------------------------------------------- keypairs */

/* The table's error codes are errno values (dp_tables.h). */
_Static_assert(DP_TABLES_EEXIST == EEXIST && DP_TABLES_ENOENT == ENOENT &&
                   DP_TABLES_ENOSPC == ENOSPC && DP_TABLES_ENOMEM == ENOMEM &&
                   DP_TABLES_EINVAL == EINVAL,
               "dp_tables.h error codes are errno values");

int64_t dp_device_index_reserve(struct dp_device *d)
{
    int64_t result = -ENOSPC;

    pthread_mutex_lock(&d->control);
    adopt_orphans(d);
    /* At most half the table is in use, so a random index is free with
     * odds of at least one half each try. */
    for (int tries = 0; tries < 64; tries++) {
        uint32_t r;
        int err;

        if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
            result = -errno;
            break;
        }
        if (r == 0)
            continue;
        err = dp_index_table_insert(d->indices, r, INDEX_RESERVED);
        if (err == 0) {
            result = r;
            break;
        }
        if (err != -EEXIST) {
            result = err;
            break;
        }
    }
    pthread_mutex_unlock(&d->control);
    return result;
}

int dp_device_index_claim(struct dp_device *d, uint32_t local_index)
{
    int err;

    if (local_index == 0)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    adopt_orphans(d); /* a displaced keypair lets go of its index */
    err = dp_index_table_insert(d->indices, local_index, INDEX_RESERVED);
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_index_release(struct dp_device *d, uint32_t local_index)
{
    int err;

    pthread_mutex_lock(&d->control);
    err = dp_index_table_remove(d->indices, local_index, INDEX_RESERVED);
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_keypair_install(struct dp_device *d, const struct dp_keypair_params *prm)
{
    struct keypair *kp, *dropped[2] = {NULL, NULL};
    struct peer *p;
    bool flush = false;
    int err = 0;

    if (!prm)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    p = peer_get(d, prm->peer_id);
    if (!p) {
        pthread_mutex_unlock(&d->control);
        return -ENOENT;
    }
    if (dp_index_table_lookup(d->indices, prm->local_index) != INDEX_RESERVED) {
        pthread_mutex_unlock(&d->control);
        return -EEXIST; /* not a reserved index, or it has a keypair already */
    }
    reclaim(d); /* retired keypairs the workers let go of are reusable */
    kp = keypair_alloc(d, &err);
    if (!kp) {
        pthread_mutex_unlock(&d->control);
        return err;
    }
    kp->local_index = prm->local_index;
    kp->remote_index = prm->remote_index;
    kp->peer_id = prm->peer_id;
    kp->is_initiator = prm->is_initiator ? 1 : 0;
    kp->wire = prm->wire == DP_WIRE_OBFUSCATED ? DP_WIRE_OBFUSCATED : DP_WIRE_PLAIN;
    kp->created_ns = prm->created_ns;
    atomic_store(&kp->send_counter, 0);
    atomic_flag_clear(&kp->replay_lock);
    dp_replay_init(kp_replay(kp), d->cfg.replay_window_bits);
    memcpy(kp->send_key, prm->send_key, sizeof(kp->send_key));
    memcpy(kp->recv_key, prm->recv_key, sizeof(kp->recv_key));
    atomic_store(&kp->state, KP_LIVE);
    d->kp_live++;

    /* Rotation as the kernel does it (noise.c, add_new_keypair). */
    lock_take(&p->lock);
    if (kp->is_initiator) {
        /* used at once; an unconfirmed next becomes previous instead of
         * the current one */
        if (p->next) {
            dropped[0] = atomic_load(&p->current);
            dropped[1] = p->previous;
            p->previous = p->next;
            p->next = NULL;
        } else {
            dropped[0] = p->previous;
            p->previous = atomic_load(&p->current);
        }
        atomic_store(&p->current, kp);
        flush = p->staged_count > 0;
    } else {
        /* waits as next for the initiator's first data */
        dropped[0] = p->next;
        dropped[1] = p->previous;
        p->next = kp;
        p->previous = NULL;
    }
    lock_give(&p->lock);
    /* the reservation becomes the keypair: receivable from here on */
    dp_index_table_replace(d->indices, kp->local_index, INDEX_RESERVED, kp->handle);
    for (int i = 0; i < 2; i++)
        unlink_retire(d, dropped[i]);
    atomic_store(&p->handshake_wanted, false);
    reclaim(d);
    pthread_mutex_unlock(&d->control);
    if (flush)
        dp_flush_staged(d, prm->peer_id);
    return 0;
}

int dp_device_keypair_retire(struct dp_device *d, uint32_t local_index)
{
    struct keypair *kp;
    struct peer *p;
    uint32_t h;

    pthread_mutex_lock(&d->control);
    h = dp_index_table_lookup(d->indices, local_index);
    kp = h && h != INDEX_RESERVED ? kp_at(d, h) : NULL;
    if (!kp || atomic_load(&kp->state) != KP_LIVE || kp->local_index != local_index) {
        pthread_mutex_unlock(&d->control);
        return -ENOENT;
    }
    p = peer_get(d, kp->peer_id);
    if (p) {
        lock_take(&p->lock);
        if (atomic_load(&p->current) == kp)
            atomic_store(&p->current, NULL);
        if (p->previous == kp)
            p->previous = NULL;
        if (p->next == kp)
            p->next = NULL;
        lock_give(&p->lock);
    }
    unlink_retire(d, kp);
    reclaim(d);
    pthread_mutex_unlock(&d->control);
    return 0;
}

void dp_device_memory(struct dp_device *d, struct dp_device_memory *out)
{
    struct dp_index_table_stats ix;
    int64_t aip;

    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&d->control);
    dp_index_table_stats(d->indices, &ix);
    out->peers = (uint64_t)d->cfg.max_peers * sizeof(struct peer);
    out->index_table = ix.bytes;
    out->keypairs = (uint64_t)d->kp_chunks_mapped * d->kp_chunk_bytes +
                    (uint64_t)d->kp_chunks_max * (sizeof(*d->kp_chunks) + sizeof(*d->kp_chunk_used));
    aip = dp_allowedips_bytes(d->allowedips);
    out->allowed_ips = aip > 0 ? (uint64_t)aip : 0;
    out->event_ring = ((uint64_t)d->ev_mask + 1) * sizeof(*d->ev_ring);
    for (int i = 0; i <= DP_DEVICE_MAX_WORKERS; i++)
        if (d->bursts[i])
            out->bursts += dp_burst_bytes(d->bursts[i]);
    out->routes = 2 * DP_ROUTES_MAX * sizeof(struct route_slot); /* routes.c: SLOTS */
    out->device = sizeof(*d);
    out->total = out->peers + out->index_table + out->keypairs + out->allowed_ips +
                 out->event_ring + out->bursts + out->routes + out->device;
    out->locked = (uint64_t)d->kp_chunks_mapped * d->kp_chunk_bytes;
    out->keypair_bytes = (uint32_t)d->kp_stride;
    out->keypairs_live = d->kp_live;
    out->keypairs_allocated = d->kp_allocated;
    out->keypairs_mapped = d->kp_chunks_mapped << d->kp_chunk_shift;
    out->keypair_chunk_bytes = (uint32_t)d->kp_chunk_bytes;
    out->keypairs_max = d->cfg.max_keypairs;
    out->indices_used = ix.used;
    out->indices_max = ix.capacity;
    out->index_max_probe = ix.max_probe;
    out->replay_window_bits = d->cfg.replay_window_bits;
    pthread_mutex_unlock(&d->control);
}

int dp_device_drops(struct dp_device *d, uint64_t *out, size_t n)
{
    if (!out)
        return -EINVAL;
    for (size_t i = 0; i < n && i < DP_DROP_COUNT; i++)
        out[i] = atomic_load(&d->drops[i]);
    return DP_DROP_COUNT;
}

int dp_device_send_to(struct dp_device *d, const struct dp_endpoint *ep, const uint8_t *data,
                      size_t len)
{
    if (!endpoint_valid(ep) || ep->family == DP_ENDPOINT_NONE || !data || !len)
        return -EINVAL;
    return dp_sendto(d, ep, data, len);
}

struct lock_test {
    struct dp_lock lock;
    uint64_t counter;
    uint32_t rounds;
    _Atomic uint32_t go;
};

static void *lock_test_main(void *arg)
{
    struct lock_test *t = arg;

    /* asleep until all are there (a real-time thread that spun here
     * would keep the starting thread off its CPU) */
    while (!atomic_load(&t->go))
        syscall(SYS_futex, &t->go, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    for (uint32_t i = 0; i < t->rounds; i++) {
        lock_take(&t->lock);
        uint64_t c = t->counter;

        /* a holder that gives up its CPU inside: a real-time waiter on
         * that CPU then runs while the lock is held */
        if ((i & 63) == 0)
            sched_yield();
        t->counter = c + 1;
        lock_give(&t->lock);
    }
    return NULL;
}

int64_t dp_device_test_lock(uint32_t threads, uint32_t rounds, int fifo_priority, int cpu)
{
    struct lock_test t = {.rounds = rounds};
    pthread_t tids[16];
    uint32_t started = 0;
    int err = 0;

    if (threads < 1 || threads > 16 || fifo_priority < 0 || fifo_priority > 99)
        return -EINVAL;
    for (; started < threads && !err; started++) {
        pthread_attr_t attr;
        struct sched_param sp = {.sched_priority = fifo_priority};

        pthread_attr_init(&attr);
        if (cpu >= 0) {
            cpu_set_t set;

            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
        }
        if (fifo_priority && started % 2) {
            pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
            pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
            pthread_attr_setschedparam(&attr, &sp);
        }
        err = pthread_create(&tids[started], &attr, lock_test_main, &t);
        pthread_attr_destroy(&attr);
    }
    if (err)
        started--;
    atomic_store(&t.go, 1);
    syscall(SYS_futex, &t.go, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    return err ? -err : (int64_t)t.counter;
}
