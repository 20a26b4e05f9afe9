/* The wire format's reading side, shared by the workers and the fuzz
 * harness (fuzz/wire_classify.c): which message a datagram holds under an
 * interface's profiles (dp_wire_classify, declared in dp_device.h), and
 * whether a profile may be installed. Depends on nothing but the message
 * definitions, so that it builds alone. */
#ifndef DP_WIRE_H
#define DP_WIRE_H

#include <stdint.h>

#include "dp_wg_messages.h"

static inline uint32_t dp_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The plain WireGuard message kind (DP_WG_MSG_*) of a datagram, or 0. */
uint32_t dp_wire_plain_kind(const uint8_t *m, uint32_t len);

/* 0 if the profile may be installed, -EINVAL if not: a header range
 * backwards, or a padded message longer than DP_WIRE_MAX_DATAGRAM. */
int dp_wire_check(const struct dp_wire *w);

#endif
