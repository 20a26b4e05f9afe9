/* libFuzzer harness for dp_wire_classify (native/wg/wire.c), the first
 * code that reads every datagram arriving at an exit node's port.
 *
 * Input: a profile (struct dp_wire's bytes, paddings folded to 0..511 so
 * that they meet the datagram sizes the fuzzer makes) then the datagram,
 * copied into a buffer of exactly its size so that AddressSanitizer sees
 * any read past it. What the harness checks, restated from the wire format
 * (AmneziaWG 2.0 over WireGuard) rather than from the code:
 *  - a kind is 0 (junk) or 1..4, with an offset and a profile;
 *  - obfuscated: the profile is on, the offset is that kind's padding, the
 *    size is the kind's (handshakes exactly, transport at least) and the
 *    header at the offset lies in the kind's range, and no kind tried
 *    before it (1, 2, 3 then 4) would also have matched;
 *  - plain: the profile is off or accepts plain WireGuard beside it, no
 *    obfuscated kind matched, the type field is the kind and its size the
 *    kind's;
 *  - junk: no kind of either profile matches;
 *  - the same answer twice.
 * Any miss aborts, which libFuzzer reports with the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_device.h"
#include "wire.h"

static const uint32_t base_len[4] = {DP_WG_INITIATION_LEN, DP_WG_RESPONSE_LEN,
                                     DP_WG_COOKIE_REPLY_LEN, DP_WG_DATA_MIN_LEN};

static int size_fits(uint32_t k, uint64_t len, uint64_t pad)
{
    return k < 3 ? len == pad + base_len[k] : len >= pad + base_len[k];
}

static int obfuscated_match(const struct dp_wire *w, const uint8_t *m, uint32_t len, uint32_t k)
{
    uint32_t h;

    if (!size_fits(k, len, w->padding[k]))
        return 0;
    h = dp_load_le32(m + w->padding[k]);
    return h >= w->header_min[k] && h <= w->header_max[k];
}

static int plain_match(const uint8_t *m, uint32_t len, uint32_t k)
{
    return len >= 4 && dp_load_le32(m) == k + 1 && size_fits(k, len, 0);
}

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dp_wire w;
    uint32_t kind, off = 0xffffffff, off2 = 0xffffffff, len;
    uint8_t wire = 0xff, wire2 = 0xff, *m;

    if (size < sizeof(w))
        return 0;
    memcpy(&w, data, sizeof(w));
    for (int k = 0; k < 4; k++)
        w.padding[k] &= 0x1ff;
    w.obfuscated &= 1;
    w.accept_plain &= 1;
    len = (uint32_t)(size - sizeof(w));
    m = malloc(len ? len : 1);
    if (!m)
        return 0;
    memcpy(m, data + sizeof(w), len);

    kind = dp_wire_classify(&w, m, len, &off, &wire);
    CHECK(kind <= 4);
    CHECK(dp_wire_classify(&w, m, len, &off2, &wire2) == kind);
    int any_obf = 0, any_plain = 0;
    for (uint32_t k = 0; k < 4; k++) {
        any_obf |= w.obfuscated && obfuscated_match(&w, m, len, k);
        any_plain |= plain_match(m, len, k);
    }
    if (kind == 0) {
        CHECK(!any_obf);
        CHECK(!any_plain || (w.obfuscated && !w.accept_plain));
    } else if (wire == DP_WIRE_OBFUSCATED) {
        CHECK(w.obfuscated && off == w.padding[kind - 1]);
        CHECK(obfuscated_match(&w, m, len, kind - 1));
        for (uint32_t k = 0; k + 1 < kind; k++)
            CHECK(!obfuscated_match(&w, m, len, k));
    } else {
        CHECK(wire == DP_WIRE_PLAIN && off == 0);
        CHECK(!w.obfuscated || w.accept_plain);
        CHECK(!any_obf);
        CHECK(plain_match(m, len, kind - 1));
    }
    if (kind)
        CHECK(off2 == off && wire2 == wire);
    free(m);
    return 0;
}
