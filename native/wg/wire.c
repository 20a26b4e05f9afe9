/* Reading the wire: WireGuard's message kinds, and AmneziaWG 2.0's padded
 * and relabelled ones (see wire.h). */
#include <errno.h>

#include "dp_device.h"
#include "wire.h"

static const uint32_t wire_base_len[4] = {DP_WG_INITIATION_LEN, DP_WG_RESPONSE_LEN,
                                          DP_WG_COOKIE_REPLY_LEN, DP_WG_DATA_MIN_LEN};

uint32_t dp_wire_plain_kind(const uint8_t *m, uint32_t len)
{
    uint32_t type;

    if (len < 4)
        return 0;
    type = dp_load_le32(m);
    if (type == DP_WG_MSG_DATA)
        return len >= DP_WG_DATA_MIN_LEN ? type : 0;
    if (type >= DP_WG_MSG_INITIATION && type <= DP_WG_MSG_COOKIE_REPLY)
        return len == wire_base_len[type - 1] ? type : 0;
    return 0;
}

int dp_wire_check(const struct dp_wire *w)
{
    if (!w)
        return -EINVAL;
    for (int k = 0; k < 4 && w->obfuscated; k++)
        if (w->header_min[k] > w->header_max[k] ||
            w->padding[k] > DP_WIRE_MAX_DATAGRAM - wire_base_len[k])
            return -EINVAL;
    return 0;
}

/* The obfuscated profile is tried first, its handshake kinds before
 * transport (as amneziawg-go does); plain WireGuard where it is the only
 * profile or accepted beside it. The sizes are compared in 64 bits, so
 * that even a profile dp_wire_check refuses cannot make it read past m. */
uint32_t dp_wire_classify(const struct dp_wire *w, const uint8_t *m, uint32_t len,
                          uint32_t *off, uint8_t *wire)
{
    if (w->obfuscated) {
        for (uint32_t k = 0; k < 4; k++) {
            uint64_t pad = w->padding[k], need = pad + wire_base_len[k];
            uint32_t h;

            if (k < 3 ? len != need : len < need)
                continue;
            h = dp_load_le32(m + pad);
            if (h >= w->header_min[k] && h <= w->header_max[k]) {
                *off = (uint32_t)pad;
                *wire = DP_WIRE_OBFUSCATED;
                return k + 1;
            }
        }
        if (!w->accept_plain)
            return 0;
    }
    *off = 0;
    *wire = DP_WIRE_PLAIN;
    return dp_wire_plain_kind(m, len);
}
