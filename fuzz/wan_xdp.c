/* libFuzzer harness for the WAN XDP program (ebpf/wan.bpf.c), built for
 * the host (fuzz/xdp_host/ stands in for libbpf's helpers: the maps are
 * plain globals, the helpers are defined here), against the C code the
 * workers run on what it steers to them: the AF_XDP frame parse
 * (dp_device_test_outer_parse, native/wg/datapath.c) and the classifier
 * (dp_wire_classify, native/wg/wire.c), on every input.
 *
 * Input: a 94-byte header, then a payload.
 *   [0] bit 0 an AmneziaWG profile, 1 plain WireGuard accepted beside it,
 *       2 an AF_XDP socket on the queue, 3 the handshake rate limit on,
 *       4 ... resting (control plane not under load), 5 the payload is the
 *       whole frame (raw), 6 IPv6, 7 to an address that is not this host's
 *   [1] bit 0 a VLAN tag, 1-2 the IP length (exact, short, long, any),
 *       3-4 the UDP length (same), 5 another port, 6 not UDP, 7 frame cut
 *   [2] IPv4: bits 0-3 option words (mod 11), 4-5 fragment (none, MF,
 *       offset, both); IPv6: bits 0-2 extension headers, 3 longer ones,
 *       4-5 fragment header (none, atomic, first, later)
 *   [3] bits 0-2 how many times the frame arrives (1..8), 3-7 the clock
 *       step between arrivals (x 10 ms)
 *   [4] the length delta (short, long, cut), [5] the source host
 *   [6..93] the profile: S1..S4 (u16, mod 512), H1..H4 low ends (u32) and
 *       spans (u16), then signatures: how many (mod 6), each a length
 *       (u16 mod 1500), a prefix length (mod 9) and 8 prefix bytes
 *
 * Checked on every arrival (any miss aborts):
 *  - the program counts each frame once (one counter besides STEER_NO_SOCKET
 *    and STEER_OBFUSCATED), and its verdict is the counter's: steered
 *    frames go to the socket (XDP_REDIRECT) or, with none on the queue, to
 *    the kernel with STEER_NO_SOCKET; drops drop; passes pass;
 *  - whatever the program judged at the WireGuard layer (steered,
 *    rate-limited, junk, a signature, a bad type or size) is a datagram
 *    the C parse accepts, and the C classifier gives it the kind the
 *    program steered it as (in the same profile: STEER_OBFUSCATED exactly
 *    when the classifier says DP_WIRE_OBFUSCATED), junk (0) for what the
 *    program dropped as junk, a signature or a bad message, a handshake
 *    for what it rate-limited. The one allowed difference: a plain
 *    handshake whose bytes at S4 fall in H4 is obfuscated transport to the
 *    classifier and a handshake to the program; the workers read it again
 *    as plain (datapath.c), so where plain is accepted both end there;
 *  - what the program dropped for its IP or UDP length, or passed as a
 *    fragment, the C parse refuses;
 *  - arrivals of one frame get the same verdict, but for the rate limit,
 *    which admits at least min(arrivals, burst) handshakes and at most
 *    burst + elapsed / interval, and none is limited when it is off or
 *    resting. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpf/bpf_helpers.h" /* fuzz/xdp_host: the host's stand-in */
#include "dp_xdp_kern_user.h"
#include "dp_device.h"
#include "dp_wg_messages.h"
#include "wire.h"

/* ebpf/wan.bpf.c, another translation unit: the program, its settings and
 * its maps (named by their addresses only) */
int dp_xdp_wan(struct xdp_md *ctx);
extern struct dp_xdp_settings dp_settings;
extern char xsks, counters, ratelimit, ratelimit_rest, local, wire;

#define PORT 51820
#define RATE 20u  /* handshakes a second a source */
#define BURST 5u
#define INTERVAL_NS (1000000000ull / RATE)
#define HEADER 94
#define MAX_PAYLOAD 2048
#define RL_ENTRIES 16

static uint64_t counter_values[DP_XDP_WAN_COUNT];
static struct dp_xdp_wire host_wire;
static uint32_t rest_value;
static uint8_t local_value = 1;
static struct dp_xdp_local_key locals[2];
static struct {
    struct dp_xdp_rl_key key;
    struct dp_xdp_rl_bucket bucket;
} rl[RL_ENTRIES];
static uint32_t rl_used;
static uint64_t now_ns;
static bool socket_on_queue;

/* What the last arrival was judged, for the report of a failed check. */
static struct {
    uint32_t primary, kind, plen;
    int action, c_ok;
} seen;

__attribute__((noreturn)) static void fail(const char *what)
{
    fprintf(stderr, "wan_xdp: %s (program: counter %u, action %d; C parse %s, %u bytes, "
                    "kind %u)\n", what, seen.primary, seen.action, seen.c_ok ? "takes it" : "refuses it",
            seen.plen, seen.kind);
    abort();
}

void *bpf_map_lookup_elem(void *map, const void *key)
{
    uint32_t k;

    if (map == &counters || map == &wire || map == &ratelimit_rest) {
        memcpy(&k, key, 4);
        if (map == &counters)
            return k < DP_XDP_WAN_COUNT ? &counter_values[k] : NULL;
        if (k != 0)
            return NULL;
        return map == &wire ? (void *)&host_wire : (void *)&rest_value;
    }
    if (map == &local) {
        for (uint32_t i = 0; i < 2; i++)
            if (!memcmp(key, &locals[i], sizeof(locals[i])))
                return &local_value;
        return NULL;
    }
    if (map == &ratelimit) {
        for (uint32_t i = 0; i < rl_used; i++)
            if (!memcmp(key, &rl[i].key, sizeof(rl[i].key)))
                return &rl[i].bucket;
        return NULL;
    }
    fail("a map the program does not have");
    return NULL;
}

long bpf_map_update_elem(void *map, const void *key, const void *value, uint64_t flags)
{
    if (map != &ratelimit || flags != BPF_NOEXIST)
        abort();
    if (bpf_map_lookup_elem(map, key))
        return -EEXIST;
    if (rl_used == RL_ENTRIES)
        fail("one source an input: never");
    memcpy(&rl[rl_used].key, key, sizeof(rl[rl_used].key));
    memcpy(&rl[rl_used].bucket, value, sizeof(rl[rl_used].bucket));
    rl_used++;
    return 0;
}

uint64_t bpf_ktime_get_ns(void)
{
    return now_ns;
}

long bpf_xdp_load_bytes(struct xdp_md *ctx, uint32_t off, void *buf, uint32_t len)
{
    uint64_t size = ctx->data_end - ctx->data;

    if (len == 0 || off > size || len > size - off)
        return -EFAULT;
    memcpy(buf, (const void *)ctx->data + off, len);
    return 0;
}

long bpf_redirect_map(void *map, uint64_t key, uint64_t flags)
{
    if (map != &xsks || key != 0)
        abort();
    return socket_on_queue ? XDP_REDIRECT : (long)flags;
}

/* ------------------------------------------------------------ the input */


struct reader {
    const uint8_t *p;
    size_t left;
};

static uint32_t take(struct reader *r, size_t n)
{
    uint32_t v = 0;

    for (size_t i = 0; i < n; i++) {
        uint32_t b = 0;
        if (r->left) {
            b = *r->p++;
            r->left--;
        }
        v |= b << (8 * i);
    }
    return v;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t with_mode(uint32_t exact, uint32_t mode, uint32_t delta)
{
    switch (mode) {
    case 1:
        return exact > delta ? exact - delta : 0;
    case 2:
        return exact + delta;
    case 3:
        return delta << 8 | delta;
    }
    return exact;
}

/* The frame the header describes around the payload; its length. */
static uint32_t build_frame(uint8_t *f, const uint8_t *h, const uint8_t *payload, uint32_t plen)
{
    const bool v6 = h[0] & 0x40, local_dst = !(h[0] & 0x80);
    const uint32_t delta = h[4];
    uint32_t at = 12, ip, l4, ulen = 8 + plen, iplen;

    memset(f, 0, 12);
    f[0] = 0x02;
    f[6] = 0x02;
    f[11] = 1;
    if (h[1] & 1) {
        put16(f + at, 0x8100);
        put16(f + at + 2, 7);
        at += 4;
    }
    put16(f + at, v6 ? 0x86dd : 0x0800);
    ip = at + 2;
    if (!v6) {
        uint32_t ihl = 5 + (h[2] & 15) % 11;
        static const uint16_t frags[4] = {0x4000, 0x2000, 0x0010, 0x2010};

        l4 = ip + ihl * 4;
        memset(f + ip, 0, ihl * 4);
        f[ip] = (uint8_t)(0x40 | ihl);
        iplen = with_mode(ihl * 4 + ulen, h[1] >> 1 & 3, delta);
        put16(f + ip + 2, iplen & 0xffff);
        put16(f + ip + 6, frags[h[2] >> 4 & 3]);
        f[ip + 8] = 64;
        f[ip + 9] = h[1] & 0x40 ? 6 : 17;
        f[ip + 12] = 192, f[ip + 13] = 0, f[ip + 14] = 2, f[ip + 15] = h[5];
        memcpy(f + ip + 16, locals[0].addr, 4);
        if (!local_dst)
            f[ip + 19] ^= 0x80;
    } else {
        uint32_t n_ext = h[2] & 7, ext_len = h[2] & 8 ? 16 : 8, frag = h[2] >> 4 & 3;
        uint8_t *next = f + ip + 6;
        uint32_t x = ip + 40;

        memset(f + ip, 0, 40);
        f[ip] = 0x60;
        f[ip + 7] = 64;
        f[ip + 8] = 0x20, f[ip + 9] = 0x01, f[ip + 10] = 0x0d, f[ip + 11] = 0xb8;
        f[ip + 23] = h[5];
        memcpy(f + ip + 24, locals[1].addr, 16);
        if (!local_dst)
            f[ip + 39] ^= 0x80;
        for (uint32_t i = 0; i < n_ext; i++) {
            *next = (uint8_t)(i == 0 ? 0 : i % 2 ? 60 : 43);
            memset(f + x, 0, ext_len);
            f[x + 1] = (uint8_t)(ext_len / 8 - 1);
            next = f + x;
            x += ext_len;
        }
        if (frag) {
            static const uint16_t offs[4] = {0, 0, 1, 0x0008};

            *next = 44;
            memset(f + x, 0, 8);
            put16(f + x + 2, offs[frag]);
            f[x + 7] = h[5];
            next = f + x;
            x += 8;
        }
        *next = h[1] & 0x40 ? 6 : 17;
        l4 = x;
        iplen = with_mode(x - ip - 40 + ulen, h[1] >> 1 & 3, delta);
        put16(f + ip + 4, iplen & 0xffff);
    }
    put16(f + l4, 40000u + h[5]);
    put16(f + l4 + 2, h[1] & 0x20 ? PORT + 1 : PORT);
    put16(f + l4 + 4, with_mode(ulen, h[1] >> 3 & 3, delta) & 0xffff);
    put16(f + l4 + 6, 0);
    memcpy(f + l4 + 8, payload, plen);
    at = l4 + 8 + plen;
    if (h[1] & 0x80)
        at -= delta % (at + 1);
    return at;
}

static void read_profile(struct reader *r, bool obfuscated, bool accept_plain, struct dp_wire *cw,
                         struct dp_xdp_wire *xw)
{
    memset(cw, 0, sizeof(*cw));
    memset(xw, 0, sizeof(*xw));
    for (int k = 0; k < 4; k++)
        cw->padding[k] = take(r, 2) % 512;
    for (int k = 0; k < 4; k++)
        cw->header_min[k] = take(r, 4);
    for (int k = 0; k < 4; k++) {
        uint64_t hi = (uint64_t)cw->header_min[k] + take(r, 2);

        cw->header_max[k] = hi > UINT32_MAX ? UINT32_MAX : (uint32_t)hi;
    }
    xw->n_signatures = (uint8_t)(take(r, 1) % (DP_XDP_MAX_SIGNATURES + 1));
    for (int i = 0; i < DP_XDP_MAX_SIGNATURES; i++) {
        xw->sig_len[i] = take(r, 2) % 1500;
        xw->sig_prefix_len[i] = (uint8_t)(take(r, 1) % (DP_XDP_SIG_PREFIX + 1));
        for (int j = 0; j < DP_XDP_SIG_PREFIX; j++)
            xw->sig_prefix[i][j] = (uint8_t)take(r, 1);
    }
    if (!obfuscated) {
        /* the loader's plain profile: nothing but zeros */
        memset(cw, 0, sizeof(*cw));
        memset(xw, 0, sizeof(*xw));
        return;
    }
    cw->obfuscated = xw->obfuscated = 1;
    cw->accept_plain = xw->accept_plain = accept_plain;
    memcpy(xw->padding, cw->padding, sizeof(xw->padding));
    memcpy(xw->header_min, cw->header_min, sizeof(xw->header_min));
    memcpy(xw->header_max, cw->header_max, sizeof(xw->header_max));
}

/* ------------------------------------------------------------ the checks */

static bool is_steer(uint32_t c)
{
    return c >= DP_XDP_WAN_STEER_INITIATION && c <= DP_XDP_WAN_STEER_DATA;
}

static bool is_drop(uint32_t c)
{
    return (c >= DP_XDP_WAN_DROP_TRUNC_ETH && c <= DP_XDP_WAN_DROP_BAD_UDP_LEN) ||
           (c >= DP_XDP_WAN_DROP_WG_BAD_TYPE && c <= DP_XDP_WAN_DROP_SIGNATURE);
}

static bool is_handshake_steer(uint32_t c)
{
    return c >= DP_XDP_WAN_STEER_INITIATION && c <= DP_XDP_WAN_STEER_COOKIE_REPLY;
}

/* The classifier's reading of a plain handshake as obfuscated transport,
 * which the workers read again as plain (datapath.c): kind `want` (1..3). */
static bool reread_as_plain(const struct dp_wire *cw, uint32_t kind, uint8_t in_wire,
                            const uint8_t *m, uint32_t len, uint32_t want)
{
    return kind == DP_WG_MSG_DATA && in_wire == DP_WIRE_OBFUSCATED && cw->accept_plain &&
           want >= 1 && want <= 3 && dp_wire_plain_kind(m, len) == want;
}

/* One arrival: the program's counter (primary), checked. */
static uint32_t arrive(const uint8_t *frame, uint32_t len, const struct dp_wire *cw)
{
    uint8_t *buf = malloc(len ? len : 1); /* exactly the frame: reads past it are ASan's */
    struct xdp_md ctx;
    uint32_t primary = DP_XDP_WAN_COUNT, n = 0, off = 0, plen = 0;
    struct dp_endpoint from;
    bool obf, no_socket, c_ok;
    int action;

    if (!buf)
        abort();
    memcpy(buf, frame, len);
    memset(counter_values, 0, sizeof(counter_values));
    memset(&ctx, 0, sizeof(ctx));
    ctx.data = (uintptr_t)buf;
    ctx.data_end = (uintptr_t)buf + len;
    action = dp_xdp_wan(&ctx);

    memset(&seen, 0, sizeof(seen));
    seen.action = action;
    seen.primary = DP_XDP_WAN_COUNT;
    for (uint32_t i = 0; i < DP_XDP_WAN_COUNT; i++) {
        if (counter_values[i] > 1)
            fail("a counter moved twice for one frame");
        if (i == DP_XDP_WAN_STEER_NO_SOCKET || i == DP_XDP_WAN_STEER_OBFUSCATED)
            continue;
        if (counter_values[i]) {
            primary = i;
            n++;
        }
    }
    seen.primary = primary;
    if (n != 1)
        fail("a frame not counted, or counted twice");
    obf = counter_values[DP_XDP_WAN_STEER_OBFUSCATED];
    no_socket = counter_values[DP_XDP_WAN_STEER_NO_SOCKET];
    if (is_steer(primary)) {
        if (action != (socket_on_queue ? XDP_REDIRECT : XDP_PASS) || no_socket == socket_on_queue)
            fail("a steered frame's verdict is not the socket's, or the kernel's without one");
    } else if (no_socket || action != (is_drop(primary) ? XDP_DROP : XDP_PASS)) {
        fail("the verdict is not the counter's");
    }
    if (obf && !(cw->obfuscated && (is_steer(primary) || primary == DP_XDP_WAN_DROP_RATELIMITED)))
        fail("counted as obfuscated what was not steered in the profile");

    c_ok = dp_device_test_outer_parse(buf, len, &off, &plen, &from) == 0;
    seen.c_ok = c_ok;
    seen.plen = plen;
    switch (primary) {
    case DP_XDP_WAN_STEER_INITIATION:
    case DP_XDP_WAN_STEER_RESPONSE:
    case DP_XDP_WAN_STEER_COOKIE_REPLY:
    case DP_XDP_WAN_STEER_DATA:
    case DP_XDP_WAN_DROP_RATELIMITED:
    case DP_XDP_WAN_DROP_TRUNC_WG:
    case DP_XDP_WAN_DROP_WG_BAD_TYPE:
    case DP_XDP_WAN_DROP_WG_BAD_SIZE:
    case DP_XDP_WAN_DROP_JUNK:
    case DP_XDP_WAN_DROP_SIGNATURE: {
        uint32_t moff = 0, kind;
        uint8_t in_wire = 0;

        if (!c_ok)
            fail("the workers refuse a datagram the program found sound");
        kind = dp_wire_classify(cw, buf + off, plen, &moff, &in_wire);
        seen.kind = kind;
        if (is_steer(primary)) {
            uint32_t want = primary - DP_XDP_WAN_STEER_INITIATION + 1;

            if (kind == want) {
                if ((in_wire == DP_WIRE_OBFUSCATED) != obf)
                    fail("steered in the other profile");
            } else if (!(reread_as_plain(cw, kind, in_wire, buf + off, plen, want) && !obf)) {
                fail("steered as another kind than the workers read");
            }
        } else if (primary == DP_XDP_WAN_DROP_RATELIMITED) {
            if (!(kind >= 1 && kind <= 3) && !(kind == DP_WG_MSG_DATA &&
                                               dp_wire_plain_kind(buf + off, plen) >= 1 &&
                                               dp_wire_plain_kind(buf + off, plen) <= 3 &&
                                               cw->accept_plain))
                fail("rate-limited what is no handshake");
        } else if (kind != 0) {
            fail("dropped a message the workers would take");
        }
        break;
    }
    case DP_XDP_WAN_DROP_BAD_IP_LEN:
    case DP_XDP_WAN_DROP_BAD_UDP_LEN:
    case DP_XDP_WAN_PASS_FIRST_FRAGMENT:
    case DP_XDP_WAN_PASS_FRAGMENT:
        if (c_ok)
            fail("the C parse takes what the program found broken or partial");
        break;
    }
    free(buf);
    return primary;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t frame[MAX_PAYLOAD + 512];
    struct reader r = {data, size};
    uint8_t h[6];
    struct dp_wire cw;
    uint32_t len, arrivals, step_ns, admitted = 0, limited = 0, first;
    const uint8_t *payload;
    uint32_t plen;

    if (size < HEADER)
        return 0;
    for (int i = 0; i < 6; i++)
        h[i] = (uint8_t)take(&r, 1);
    read_profile(&r, h[0] & 1, h[0] & 2, &cw, &host_wire);
    if (dp_wire_check(&cw) != 0)
        fail("the profiles built here are all valid");
    payload = r.p;
    plen = r.left > MAX_PAYLOAD ? MAX_PAYLOAD : (uint32_t)r.left;

    memset(&dp_settings, 0, sizeof(dp_settings));
    dp_settings.listen_port = PORT;
    dp_settings.flags = h[0] & 8 ? DP_XDP_SETTINGS_RATELIMIT : 0;
    dp_settings.handshake_rate = RATE;
    dp_settings.handshake_burst = BURST;
    dp_settings.handshake_interval_ns = INTERVAL_NS;
    dp_settings.handshake_tolerance_ns = (BURST - 1) * INTERVAL_NS;
    rest_value = h[0] & 0x10 ? 1 : 0;
    socket_on_queue = h[0] & 4;
    memset(locals, 0, sizeof(locals));
    locals[0].family = 4;
    memcpy(locals[0].addr, "\x0a\x00\x00\x01", 4);
    locals[1].family = 6;
    memcpy(locals[1].addr, "\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01", 16);
    rl_used = 0;
    now_ns = 1000000000000ull;

    if (h[0] & 0x20) {
        memcpy(frame, payload, plen);
        len = plen;
    } else {
        len = build_frame(frame, h, payload, plen);
    }
    arrivals = 1 + (h[3] & 7);
    step_ns = (uint32_t)(h[3] >> 3) * 10000000u;
    first = arrive(frame, len, &cw);
    for (uint32_t a = 0; a < arrivals; a++) {
        uint32_t c = a == 0 ? first : arrive(frame, len, &cw);

        if (is_handshake_steer(c) || c == DP_XDP_WAN_DROP_RATELIMITED) {
            if (!(is_handshake_steer(first) || first == DP_XDP_WAN_DROP_RATELIMITED))
                fail("the same frame judged otherwise");
            admitted += c != DP_XDP_WAN_DROP_RATELIMITED;
            limited += c == DP_XDP_WAN_DROP_RATELIMITED;
        } else if (c != first) {
            fail("the same frame judged otherwise");
        }
        now_ns += step_ns;
    }
    if (limited && (!(dp_settings.flags & DP_XDP_SETTINGS_RATELIMIT) || rest_value))
        fail("limited with the limit off or resting");
    if (admitted + limited && (dp_settings.flags & DP_XDP_SETTINGS_RATELIMIT) && !rest_value) {
        uint64_t elapsed = (uint64_t)step_ns * (arrivals - 1);
        uint32_t least = arrivals < BURST ? arrivals : BURST;

        if (admitted < least || admitted > BURST + elapsed / INTERVAL_NS)
            fail("the token bucket admitted too few or too many");
    }
    return 0;
}
