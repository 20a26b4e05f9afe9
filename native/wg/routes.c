/* The XDP backend's outer routes (dp_device.h): endpoint address -> the
 * Ethernet and IP source and next hop to send it from the WAN AF_XDP port.
 *
 * An open-addressing table written by the control plane (under the device
 * mutex) and read by the workers without locks: every slot has a sequence
 * counter that is odd while the slot is being written, so a reader that
 * sees it change (or odd) reads again, or treats the lookup as a miss,
 * which only sends that packet through the kernel. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "device_internal.h"

#define SLOTS (DP_ROUTES_MAX * 2)
#define PROBES 32

enum { SLOT_EMPTY = 0, SLOT_LIVE, SLOT_DEAD };

static uint32_t route_hash(uint8_t family, const uint8_t *dst)
{
    uint32_t h = 2166136261u ^ family;

    for (int i = 0; i < (family == DP_ENDPOINT_IPV6 ? 16 : 4); i++)
        h = (h ^ dst[i]) * 16777619u;
    return h;
}

static bool same_key(const struct dp_route *r, uint8_t family, const uint8_t *dst)
{
    return r->family == family && !memcmp(r->dst, dst, family == DP_ENDPOINT_IPV6 ? 16 : 4);
}

int dp_routes_init(struct dp_device *d)
{
    d->routes = calloc(SLOTS, sizeof(*d->routes));
    return d->routes ? 0 : -ENOMEM;
}

void dp_routes_free(struct dp_device *d)
{
    free(d->routes);
    d->routes = NULL;
}

static void slot_write(struct route_slot *s, uint8_t state, const struct dp_route *r)
{
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_acq_rel); /* odd: being written */
    atomic_thread_fence(memory_order_release);
    s->state = state;
    if (r)
        s->r = *r;
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_release);
}

int dp_device_route_set(struct dp_device *d, const struct dp_route *r)
{
    int err = -ENOSPC;

    if (!r || (r->family != DP_ENDPOINT_IPV4 && r->family != DP_ENDPOINT_IPV6) || !r->src_port)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    uint32_t h = route_hash(r->family, r->dst);
    struct route_slot *free_slot = NULL;

    for (uint32_t i = 0; i < PROBES; i++) {
        struct route_slot *s = &d->routes[(h + i) % SLOTS];

        if (s->state == SLOT_LIVE && same_key(&s->r, r->family, r->dst)) {
            slot_write(s, SLOT_LIVE, r);
            err = 0;
            break;
        }
        if (s->state != SLOT_LIVE && !free_slot)
            free_slot = s;
        if (s->state == SLOT_EMPTY)
            break;
    }
    if (err && free_slot && d->n_routes < DP_ROUTES_MAX) {
        slot_write(free_slot, SLOT_LIVE, r);
        d->n_routes++;
        err = 0;
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

int dp_device_route_del(struct dp_device *d, uint8_t family, const uint8_t *dst)
{
    int err = -ENOENT;

    if (!dst)
        return -EINVAL;
    pthread_mutex_lock(&d->control);
    uint32_t h = route_hash(family, dst);

    for (uint32_t i = 0; i < PROBES; i++) {
        struct route_slot *s = &d->routes[(h + i) % SLOTS];

        if (s->state == SLOT_EMPTY)
            break;
        if (s->state == SLOT_LIVE && same_key(&s->r, family, dst)) {
            slot_write(s, SLOT_DEAD, NULL);
            d->n_routes--;
            err = 0;
            break;
        }
    }
    pthread_mutex_unlock(&d->control);
    return err;
}

bool dp_route_lookup(struct dp_device *d, uint8_t family, const uint8_t *dst, struct dp_route *out)
{
    uint32_t h = route_hash(family, dst);

    for (uint32_t i = 0; i < PROBES; i++) {
        struct route_slot *s = &d->routes[(h + i) % SLOTS];
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        uint8_t state;

        if (seq & 1)
            return false; /* being written: this packet takes the kernel's path */
        state = s->state;
        memcpy(out, &s->r, sizeof(*out));
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) != seq)
            return false;
        if (state == SLOT_EMPTY)
            return false;
        if (state == SLOT_LIVE && same_key(out, family, dst))
            return true;
    }
    return false;
}

void dp_device_path_stats(struct dp_device *d, struct dp_path_stats *out)
{
    out->wan_xsk_tx = atomic_load(&d->wan_xsk_tx);
    out->wan_kernel_tx = atomic_load(&d->wan_kernel_tx);
    out->route_requests = atomic_load(&d->route_requests);
    out->roams_refused = atomic_load(&d->roams_refused);
}
